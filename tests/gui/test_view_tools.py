"""Issue 13 in the window: the ruler and "Save view as image"; the zoom stops at twice the
scan's magnification (item 9); Esc and quitting do not wait for the model to load (item 9);
the µm/px dialog is not prefilled with a guess (item 9); a missing system library of Qt is
named in one line (item 10)."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtGui import QWheelEvent

from tests.gui.conftest import GENERATED_MPP, wait_settled
from tests.gui.test_threshold_and_history import open_and_wait, store_map
from wsiviewer import RESEARCH_USE_NOTICE, cli
from wsiviewer.gui import app as app_module
from wsiviewer.gui import platform_check
from wsiviewer.gui.analysis import wait_for_model_loads
from wsiviewer.gui.main_window import MainWindow
from wsiviewer.gui.mpp_dialog import MppDialog
from wsiviewer.gui.slide_view import MAGNIFICATION_PRESETS
from wsiviewer.gui.view_tools import length_text


def test_the_ruler_measures_in_micrometres(
    qtbot, window: MainWindow, generated_slide: Path
) -> None:  # type: ignore[no-untyped-def]
    window.open_slide(generated_slide)
    wait_settled(qtbot, window)
    view = window.view
    window.ruler_action.trigger()
    assert window.ruler.active
    start = view.map_l0_to_view((400, 400)).toPoint()
    end = view.map_l0_to_view((2400, 400)).toPoint()
    qtbot.mousePress(view.viewport(), Qt.MouseButton.LeftButton, pos=start)
    qtbot.mouseMove(view.viewport(), end)
    with qtbot.waitSignal(window.ruler.measured) as measured:
        qtbot.mouseRelease(view.viewport(), Qt.MouseButton.LeftButton, pos=end)
    length = measured.args[0]
    assert length == pytest.approx(2000, abs=3 * view.l0_per_screen_px)
    assert window.ruler.text == length_text(length, GENERATED_MPP)
    assert window.ruler.text.endswith("mm") or window.ruler.text.endswith("µm")
    assert "Length: " in window.statusBar().currentMessage()
    # Esc ends the ruler (before the window's cancel-analysis shortcut).
    qtbot.keyClick(view, Qt.Key.Key_Escape)
    assert not window.ruler.active
    assert window.ruler.text == ""
    assert length_text(2000, 0.5) == "1 mm"
    assert length_text(90, 0.5) == "45 µm"
    assert length_text(980, None) == "980 px"


def test_save_view_as_image_writes_a_png_with_scale_and_notice(
    qtbot, window: MainWindow, generated_slide: Path, tiny_model_card: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    store_map(generated_slide, tiny_model_card)
    open_and_wait(qtbot, window, generated_slide)
    wait_settled(qtbot, window)
    path = window.save_view_image(tmp_path / "view.png")
    assert path == tmp_path / "view.png"
    with Image.open(path) as image:
        assert image.mode == "RGB"
        assert image.size[0] >= window.view.viewport().width()
        assert image.text["Disclaimer"] == RESEARCH_USE_NOTICE
        assert float(image.text["Micrometres per image px"]) > 0
        pixels = np.asarray(image)
    # The scale bar's box (white) and bar (black) at the bottom left, the legend at the right.
    height = pixels.shape[0]
    corner = pixels[height - 40 : height - 5, 10:60]
    assert (corner == 0).all(axis=-1).any()
    assert window.view._legend_image is not None
    assert window.settings.value("review/export_dir") == str(tmp_path)


def test_zoom_stops_at_twice_the_scan_and_presets_at_the_scan(
    qtbot, window: MainWindow, generated_slide: Path
) -> None:  # type: ignore[no-untyped-def]
    window.open_slide(generated_slide)
    view = window.view
    centre = QPointF(view.viewport().rect().center())
    for _ in range(60):
        event = QWheelEvent(
            centre,
            view.mapToGlobal(centre),
            QPoint(),
            QPoint(0, 120),
            Qt.MouseButton.NoButton,
            Qt.KeyboardModifier.NoModifier,
            Qt.ScrollPhase.NoScrollPhase,
            False,
        )
        view.wheelEvent(event)
    native = 10 / GENERATED_MPP  # 20x
    assert view.magnification == pytest.approx(2 * native)
    enabled = [a.isEnabled() for a in window.magnification_actions]
    assert enabled == [preset <= native for preset in MAGNIFICATION_PRESETS]


def test_esc_and_quitting_do_not_wait_for_the_model_to_load(
    qtbot,
    window: MainWindow,
    installed_model: Path,
    generated_slide: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # type: ignore[no-untyped-def]
    """The model load is held until the end: Cancel still stops the worker at once."""
    from wsiviewer.core.model import predictor as predictor_module

    loading = threading.Event()
    release = threading.Event()
    original = predictor_module.Predictor.__init__

    def slow_init(self: object, *args: object, **kwargs: object) -> None:
        loading.set()
        release.wait(30)
        original(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(predictor_module.Predictor, "__init__", slow_init)
    window.reload_models()
    window.open_slide(generated_slide)
    with qtbot.waitSignal(window.runner.analysis_cancelled, timeout=5_000):
        assert window.analyze()
        qtbot.waitUntil(loading.is_set)
        window.cancel_action.trigger()
    qtbot.waitUntil(lambda: not window.runner.running, timeout=5_000)
    assert not release.is_set()  # stopped while the model was still loading
    # The same for closing the window: it does not wait for the load (this one queues behind
    # the first, still held: loads run one at a time).
    stages: list[str] = []
    window.runner.analysis_progressed.connect(lambda update: stages.append(update.stage))
    assert window.analyze()
    qtbot.waitUntil(lambda: stages.count("loading model") >= 3)
    started = time.perf_counter()
    window.close()
    closed_in = time.perf_counter() - started
    assert not release.is_set()
    release.set()
    assert not window.runner.running
    print(f"closed in {closed_in:.3f} s while the model was loading")
    # The abandoned loads end in the background, one at a time (torch's export is not
    # thread-safe); the app waits for them after its window is gone.
    assert wait_for_model_loads(60)


def test_the_mpp_dialog_starts_empty_unless_the_power_gives_a_guess(
    qtbot, window: MainWindow, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    empty = MppDialog("why", None)
    qtbot.addWidget(empty)
    assert empty.field.text() == ""
    assert empty.value is None
    assert not empty.buttons.button(empty.buttons.StandardButton.Ok).isEnabled()
    empty.field.setText("0.2527")
    assert empty.value == pytest.approx(0.2527)
    assert empty.buttons.button(empty.buttons.StandardButton.Ok).isEnabled()
    empty.field.setText("99")  # implausible: refused
    assert empty.value is None
    guessed = MppDialog("why", 0.5)
    qtbot.addWidget(guessed)
    assert guessed.value == 0.5
    # The window passes its guess only when the objective power gave it.
    shown: list[float | None] = []

    def exec_(self: MppDialog) -> int:
        shown.append(self.value)
        return MppDialog.DialogCode.Rejected

    monkeypatch.setattr(MppDialog, "exec", exec_)
    assert window.ask_mpp(0.25, guessed_from_power=False) is None
    assert window.ask_mpp(0.5, guessed_from_power=True) is None
    assert shown == [None, 0.5]


def test_a_missing_qt_system_library_is_named_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ldd = tmp_path / "ldd"
    ldd.write_text(
        "#!/bin/sh\necho '\tlibQt6Gui.so.6 => /x/libQt6Gui.so.6 (0x1)'\n"
        "echo '\tlibxcb-icccm.so.4 => not found'\necho '\tlibxcb-keysyms.so.1 => not found'\n"
    )
    ldd.chmod(0o755)
    plugin = tmp_path / "libqxcb.so"
    plugin.write_bytes(b"")
    monkeypatch.setattr(platform_check.shutil, "which", lambda name: str(ldd))
    missing = platform_check.missing_libraries(plugin)
    assert missing == ["libxcb-icccm.so.4", "libxcb-keysyms.so.1"]
    message = platform_check.missing_message(missing)
    assert "\n" not in message
    assert "apt-get install libxcb-icccm4 libxcb-keysyms1" in message
    # The viewer says it and stops (exit status 1) instead of Qt aborting.
    monkeypatch.setattr(app_module, "platform_problem", lambda: message)
    assert app_module.run() == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "libxcb-icccm.so.4" in err
    # Qt libraries that cannot load (PySide6 itself missing a library) are named too.
    monkeypatch.delitem(sys.modules, "wsiviewer.gui.app")

    class Refuse:
        def find_spec(self, name: str, *args: object) -> None:
            if name == "wsiviewer.gui.app":
                raise ImportError(
                    "libEGL.so.1: cannot open shared object file: No such file or directory",
                    name="PySide6.QtGui",
                )

    monkeypatch.setattr(sys, "meta_path", [Refuse(), *sys.meta_path])
    assert cli.main(["gui"]) == cli.EXIT_FAILED
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "libEGL.so.1" in err
    assert "apt-get install libegl1" in err
    # On this machine nothing is missing.
    monkeypatch.setattr(sys, "meta_path", sys.meta_path[1:])
    monkeypatch.undo()
    assert platform_check.missing_libraries() == []
