"""GUI fixtures: an isolated main window, a generated pyramid, an installed tiny model.

Every test fails if it leaves a tile reader, an analysis worker or a main window running.
"""

from __future__ import annotations

import gc
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("PySide6")

from PySide6.QtCore import QEvent, QSettings, QThreadPool
from PySide6.QtWidgets import QApplication

from tests.conftest import he_like_slide
from wsiviewer.core.exports.pyramid_tiff import write_pyramid_tiff
from wsiviewer.gui.main_window import MainWindow
from wsiviewer.gui.tiles import TileLoader

#: Level-0 µm/px of the generated slide: 20x, so the 4 µm/px grid has 400 px cells.
GENERATED_MPP = 0.5


@pytest.fixture(scope="session", autouse=True)
def collect_garbage_between_tests() -> Iterator[None]:
    """Python's cyclic collector off while GUI tests run, as the viewer does (gui/app.py):
    run at an arbitrary allocation (in a tile reader's thread, or inside a signal), it frees
    an earlier test's window there and Qt crashes or deadlocks. :func:`no_workers_left`
    collects after each test instead."""
    gc.disable()
    yield
    gc.enable()


@pytest.fixture(autouse=True)
def no_workers_left() -> Iterator[None]:
    yield
    pool = QThreadPool.globalInstance()
    still_running = pool.activeThreadCount()
    pool.waitForDone(10_000)
    # The test's windows and dialogs go now, between tests, in the GUI thread.
    QApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
    gc.collect()
    assert still_running == 0, f"{still_running} worker(s) still running after the test"
    running_loaders = [loader for loader in TileLoader.live if loader.running]
    assert not running_loaders, f"{len(running_loaders)} tile loader(s) left running"
    windows = [w for w in QApplication.topLevelWidgets() if isinstance(w, MainWindow)]
    assert not [w for w in windows if w.isVisible()], "a main window was left open"


@pytest.fixture(scope="session")
def generated_slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3200 x 2400 px generic pyramidal TIFF at 0.5 µm/px (levels 1, 4, 16), two blobs."""
    path = tmp_path_factory.mktemp("gui-slides") / "generated-slide.tif"
    return write_pyramid_tiff(
        path, he_like_slide((2400, 3200)), mpp=GENERATED_MPP, downsamples=(1, 4, 16), tile=256
    )


@pytest.fixture
def settings(tmp_path: Path) -> QSettings:
    return QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)


@pytest.fixture
def window(qtbot, settings: QSettings) -> Iterator[MainWindow]:  # type: ignore[no-untyped-def]
    main_window = MainWindow(settings=settings)
    qtbot.addWidget(main_window)
    main_window.resize(1200, 800)
    main_window.show()
    qtbot.waitExposed(main_window)
    yield main_window
    main_window.close()


@pytest.fixture(autouse=True)
def without_shipped_models(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """GUI tests choose their models: the shipped ones are hidden unless a test is marked
    ``shipped_models``."""
    if "shipped_models" not in request.keywords:
        monkeypatch.setattr("wsiviewer.core.model.cards.shipped_models_dir", lambda: None)


@pytest.fixture
def installed_model(tiny_model_card: Path, isolated_data_dir: Path) -> Path:
    """The tiny random CancerNet, copied into this test's user models folder."""
    folder = isolated_data_dir / "models"
    folder.mkdir(exist_ok=True)
    shutil.copy2(tiny_model_card.with_suffix(".safetensors"), folder)
    return Path(shutil.copy2(tiny_model_card, folder))


def wait_settled(qtbot, main_window: MainWindow, timeout: int = 10_000) -> None:  # type: ignore[no-untyped-def]
    """Wait until every tile the view needs is loaded."""
    qtbot.waitUntil(lambda: main_window.view.settled, timeout=timeout)
