"""The layering of STYLE.md, enforced: core and training never import Qt or the GUI."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO


def test_import_linter_contracts_hold() -> None:
    lint_imports = shutil.which("lint-imports", path=str(sys.prefix + "/bin"))
    if lint_imports is None:
        pytest.fail("lint-imports (import-linter) is not installed in this environment")
    result = subprocess.run([lint_imports], cwd=REPO, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


def test_core_imports_with_qt_unavailable() -> None:
    """Every core and training module imports with PySide6, pyqtgraph and superqt blocked."""
    code = (
        "import sys, pkgutil, importlib\n"
        "for name in ('PySide6', 'pyqtgraph', 'superqt'):\n"
        "    sys.modules[name] = None\n"
        "import wsiviewer.core, wsiviewer.training, wsiviewer.cli\n"
        "for package in (wsiviewer.core, wsiviewer.training):\n"
        "    for info in pkgutil.iter_modules(package.__path__, package.__name__ + '.'):\n"
        "        importlib.import_module(info.name)\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
