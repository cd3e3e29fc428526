"""The layering of STYLE.md, enforced: core and training never import Qt or the GUI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import QT_MODULES, REPO, WITHOUT_QT_ENV, he_like_slide


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


def test_core_tests_pass_with_qt_absent() -> None:
    """Core's own tests pass on an install without the GUI extra: Qt cannot be imported."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-x",
            "-p",
            "no:pytest-qt",
            "-p",
            "no:cacheprovider",
            "tests/core",
        ],
        cwd=REPO,
        env={**os.environ, WITHOUT_QT_ENV: "1"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert " passed" in result.stdout
    assert " failed" not in result.stdout


def test_the_cli_works_without_qt_and_says_what_the_viewer_needs(
    tmp_path: Path, tiny_model_card: Path
) -> None:
    """``pip install wsiviewer`` without the GUI extra: every command but the viewer works."""
    from wsiviewer.core.exports.pyramid_tiff import write_pyramid_tiff

    slide = write_pyramid_tiff(
        tmp_path / "slide.tif", he_like_slide((1200, 1600)), mpp=0.5, downsamples=(1, 4)
    )
    blocker = "; ".join(f"sys.modules[{name!r}] = None" for name in QT_MODULES)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        code = f"import sys; {blocker}; from wsiviewer.cli import main; sys.exit(main({args!r}))"
        return subprocess.run(
            [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False
        )

    analysed = run(
        "analyze",
        str(slide),
        "--out",
        str(tmp_path / "out"),
        "--model",
        str(tiny_model_card),
        "--quiet",
    )
    assert analysed.returncode == 0, analysed.stderr
    assert (tmp_path / "out" / "regions.geojson").is_file()
    viewer = run("gui")
    assert viewer.returncode == 1
    assert "wsiviewer[gui]" in viewer.stderr
    assert "Traceback" not in viewer.stderr
    assert viewer.stderr.count("\n") == 1
