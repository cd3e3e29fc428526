"""The main window on real and generated slides: open, zoom, pan, overview, errors, state."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtGui import QWheelEvent
from PySide6.QtWidgets import QApplication, QTableWidget

from tests.gui.conftest import wait_settled
from wsiviewer import RESEARCH_USE_NOTICE
from wsiviewer.core.slides import open_slide
from wsiviewer.gui.main_window import MainWindow, ShortcutsDialog


def _wheel(view, view_pos: QPointF, notches: int) -> None:  # type: ignore[no-untyped-def]
    event = QWheelEvent(
        view_pos,
        view.viewport().mapToGlobal(view_pos),
        QPoint(0, 0),
        QPoint(0, 120 * notches),
        Qt.MouseButton.NoButton,
        Qt.KeyboardModifier.NoModifier,
        Qt.ScrollPhase.NoScrollPhase,
        False,
    )
    QApplication.sendEvent(view.viewport(), event)


def _view_pixel(window: MainWindow, view_xy: QPointF) -> np.ndarray:
    image = window.view.viewport().grab().toImage()
    color = image.pixelColor(round(view_xy.x()), round(view_xy.y()))
    return np.array([color.red(), color.green(), color.blue()])


def test_real_slide_opens_zooms_and_pans(qtbot, window: MainWindow, wsi_dir: Path) -> None:  # type: ignore[no-untyped-def]
    with qtbot.waitSignal(window.slide_opened):
        assert window.open_slide(wsi_dir / "cmu-1-small-region.svs")
    wait_settled(qtbot, window)
    view = window.view
    assert view.magnification == pytest.approx(10 / (0.499 * view.l0_per_screen_px), rel=1e-2)
    assert window.magnification_label.text().endswith("x")

    # Wheel zoom keeps the slide point under the cursor.
    cursor = QPointF(300, 200)
    before = view.viewportTransform().inverted()[0].map(cursor)
    scale = view.transform().m11()
    _wheel(view, cursor, 2)
    assert view.transform().m11() == pytest.approx(scale * 1.25**2)
    after = view.viewportTransform().inverted()[0].map(cursor)
    assert (after - before).manhattanLength() < 2 * view.l0_per_screen_px

    # Arrow keys pan a quarter of the view.
    centre = view.view_center_l0()
    view.setFocus()
    qtbot.keyClick(view, Qt.Key.Key_Right)
    moved = view.view_center_l0() - centre
    assert moved.x() == pytest.approx(
        0.25 * view.viewport().width() * view.l0_per_screen_px, rel=0.05
    )
    assert abs(moved.y()) < 1

    # 0 fits; 2 is 5x; 5 (40x) is not offered on a 20x slide.
    window.fit_action.trigger()
    assert view.visible_l0_rect().contains(view.slide_rect)
    window.magnification_actions[1].trigger()
    assert view.magnification == pytest.approx(5.0, rel=1e-3)
    assert window.magnification_actions[3].isEnabled()
    assert not window.magnification_actions[4].isEnabled()
    wait_settled(qtbot, window)

    # Slide information: resolution and its source; identifying data hidden until asked.
    text = window.info_panel.plain_text()
    assert "0.499" in text
    assert "metadata" in text
    assert "aperio" in text
    assert "Filename" not in text
    assert "label" not in text.split("Associated images")[1].split("\n")[0]
    window.info_panel.show_identifying.setChecked(True)
    assert "Filename" in window.info_panel.plain_text()
    window.info_panel.show_identifying.setChecked(False)
    assert "Filename" not in window.info_panel.plain_text()


def test_tiles_are_drawn_where_the_slide_has_them(
    qtbot, window: MainWindow, generated_slide: Path
) -> None:  # type: ignore[no-untyped-def]
    """At three zooms (two pyramid levels, and between them from reduced tiles), the screen
    shows the slide's pixels at that place."""
    window.open_slide(generated_slide)
    view = window.view
    with open_slide(generated_slide) as slide:
        for magnification, grid in ((20.0, (0, 1)), (4.0, (1, 1)), (2.0, (1, 2))):
            view.set_magnification(magnification)
            view.center_on_l0(960, 840)  # inside the first tissue blob
            wait_settled(qtbot, window)
            assert view.target_grid == grid
            # Up to 240 px either side of the centre, inside the blob and the (docked) view.
            visible = view.visible_l0_rect()
            reach = min(240.0, 0.4 * visible.width(), 0.4 * visible.height())
            for l0_xy in ((960.0, 840.0), (960.0 - reach, 840.0 - reach), (960 + reach, 840.0)):
                expected = slide.read_l0_box((l0_xy[0] - 8, l0_xy[1] - 8, 16, 16), (1, 1))[0, 0]
                shown = _view_pixel(window, view.map_l0_to_view(l0_xy))
                # Generated tissue is noisy and JPEG-compressed: compare local means loosely.
                assert np.abs(shown.astype(int) - expected.astype(int)).max() < 60, (
                    magnification,
                    l0_xy,
                )


def test_overview_click_moves_the_view(qtbot, window: MainWindow, generated_slide: Path) -> None:  # type: ignore[no-untyped-def]
    window.open_slide(generated_slide)
    window.view.set_magnification(20)
    rect = window.overview.image_rect()
    target = QPointF(rect.x() + rect.width() * 0.75, rect.y() + rect.height() * 0.25)
    qtbot.mouseClick(window.overview, Qt.MouseButton.LeftButton, pos=target.toPoint())
    centre = window.view.view_center_l0()
    assert centre.x() == pytest.approx(0.75 * 3200, abs=20)
    assert centre.y() == pytest.approx(0.25 * 2400, abs=20)


def test_cursor_position_in_micrometres(qtbot, window: MainWindow, generated_slide: Path) -> None:  # type: ignore[no-untyped-def]
    window.open_slide(generated_slide)
    window.view.set_magnification(20)
    window.view.center_on_l0(1000, 1000)
    view_pos = window.view.map_l0_to_view((1000.0, 1000.0)).toPoint()
    qtbot.mouseMove(window.view.viewport(), view_pos)
    qtbot.waitUntil(lambda: "µm" in window.position_label.text())
    assert "500.0" in window.position_label.text()


def test_unopenable_file_shows_a_dialog_and_the_app_stays_usable(
    qtbot, window: MainWindow, wsi_dir: Path, generated_slide: Path
) -> None:  # type: ignore[no-untyped-def]
    with qtbot.waitSignal(window.error_shown) as blocker:
        assert not window.open_slide(wsi_dir / "fixtures" / "unopenable.tiff")
    assert "unopenable.tiff" in blocker.args[0]
    assert "Unsupported" in blocker.args[0]
    assert window.last_error_box is not None
    assert window.last_error_box.isVisible()
    window.last_error_box.accept()
    assert window.slide is None

    with qtbot.waitSignal(window.error_shown) as blocker:
        assert not window.open_slide(wsi_dir / "fixtures" / "unreadable.svs")
    assert "cannot be read" in blocker.args[0]
    window.last_error_box.accept()

    with qtbot.waitSignal(window.error_shown):
        assert not window.open_slide(wsi_dir / "no-such-slide.svs")
    window.last_error_box.accept()
    assert window.open_slide(generated_slide)


def test_recent_files_and_window_state_are_kept(
    qtbot, settings, generated_slide: Path, wsi_dir: Path
) -> None:  # type: ignore[no-untyped-def]
    first = MainWindow(settings=settings)
    qtbot.addWidget(first)
    first.show()
    first.open_slide(generated_slide)
    first.open_slide(wsi_dir / "cmu-1-small-region.svs")
    first.overlay_panel.opacity_slider.setValue(80)
    first.close()

    second = MainWindow(settings=settings)
    qtbot.addWidget(second)
    assert second.recent_files()[:2] == [
        str((wsi_dir / "cmu-1-small-region.svs").resolve()),
        str(generated_slide.resolve()),
    ]
    assert [a.text() for a in second.recent_menu.actions()][:1] == ["cmu-1-small-region.svs"]
    assert second.overlay_panel.opacity == pytest.approx(0.8)
    second.close()


def test_shortcuts_and_about_say_what_they_must(qtbot, window: MainWindow) -> None:  # type: ignore[no-untyped-def]
    dialog = ShortcutsDialog(window)
    qtbot.addWidget(dialog)
    table = dialog.findChild(QTableWidget)
    listed = {table.item(row, 0).text() for row in range(table.rowCount())}
    assert {"0", "H", "Ctrl+R", "+ / -", "1 2 3 4 5", "Esc"} <= listed
    bound = {a.shortcut().toString() for a in window.actions()}
    assert {"0", "H", "Ctrl+R", "Esc", "1", "5", "-"} <= bound
    window.show_about()
    box = next(w for w in QApplication.topLevelWidgets() if w.windowTitle() == "About wsiviewer")
    assert RESEARCH_USE_NOTICE.split(".")[0] in box.text()
    assert "Not for diagnosis" in box.text()
    box.close()
