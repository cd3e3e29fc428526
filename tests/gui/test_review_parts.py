"""The review panel's parts (issue 10, item 7): what the split moved and no other test pins."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QSettings, Qt
from PySide6.QtWidgets import QApplication

from tests.gui.test_threshold_and_history import open_and_wait, store_map
from wsiviewer.gui.main_window import MainWindow
from wsiviewer.gui.review_panel import REVIEWER_KEY


def test_esc_in_a_set_field_reverts_it_and_gives_the_keys_back(
    qtbot, window: MainWindow, generated_slide: Path, tiny_model_card: Path, settings: QSettings
) -> None:  # type: ignore[no-untyped-def]
    settings.setValue(REVIEWER_KEY, "Dr Esc")
    store_map(generated_slide, tiny_model_card)
    panel = open_and_wait(qtbot, window, generated_slide)
    window.activateWindow()
    qtbot.waitUntil(lambda: QApplication.activeWindow() is window)
    shown = panel.state
    assert shown is not None
    opened: list[object] = []
    panel.review_opened.connect(opened.append)
    for box, typed in ((panel.threshold_box, "0.45"), (panel.min_area_box, "5")):
        box.setFocus()
        box.selectAll()
        qtbot.keyClicks(box, typed)
        assert box.value() != (
            shown.threshold if box is panel.threshold_box else shown.min_area_mm2
        )
        qtbot.keyClick(box, Qt.Key.Key_Escape)
        assert not box.hasFocus()  # the letters work again at once
    assert panel.threshold_box.value() == round(shown.threshold, 3)
    assert panel.min_area_box.value() == round(shown.min_area_mm2, 3)
    assert opened == []  # no other set was opened
    assert panel.state is shown
    qtbot.keyClick(QApplication.focusWidget() or window, Qt.Key.Key_N)
    assert panel.selected_item() is not None
