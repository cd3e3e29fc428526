"""`wsiviewer` opens the viewer; the window is up before torch is imported."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from wsiviewer import cli


@pytest.fixture
def launched(monkeypatch: pytest.MonkeyPatch) -> list[Path | None]:
    calls: list[Path | None] = []

    def fake_run(slide: Path | None = None) -> int:
        calls.append(slide)
        return 0

    monkeypatch.setattr("wsiviewer.gui.app.run", fake_run)
    return calls


@pytest.mark.parametrize(
    ("argv", "slide"),
    [
        ([], None),
        (["slide.svs"], Path("slide.svs")),
        (["gui"], None),
        (["gui", "slide.svs"], Path("slide.svs")),
    ],
)
def test_no_subcommand_opens_the_viewer(
    launched: list[Path | None], argv: list[str], slide: Path | None
) -> None:
    assert cli.main(argv) == 0
    assert launched == [slide]


def test_subcommands_do_not_open_the_viewer(
    launched: list[Path | None], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["models"]) == 0
    assert launched == []
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["slide.svs", "extra"])
    assert exit_info.value.code == 2
    assert launched == []


def test_window_appears_before_torch_is_imported() -> None:
    code = (
        "import sys\n"
        "from wsiviewer.gui.app import application\n"
        "from wsiviewer.gui.main_window import MainWindow\n"
        "app = application()\n"
        "window = MainWindow()\n"
        "window.show()\n"
        "app.processEvents()\n"
        "print(window.isVisible(), 'torch' in sys.modules)\n"
        "window.close()\n"
    )
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env=env, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "False"]
