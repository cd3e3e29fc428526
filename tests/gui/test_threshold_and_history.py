"""Issue 13 in the window: one threshold for heatmap and regions, outlines at once, the name
at the first decision (item 1); a visible history that a new analysis never hides (item 2);
the fading heatmap and its legend (item 7); wording and one threshold format (item 8);
letter shortcuts after typing in a field (item 9)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import QSettings, Qt
from PySide6.QtWidgets import QApplication

from tests.conftest import he_like_slide
from wsiviewer.core.analysis.grid import PatchGrid
from wsiviewer.core.analysis.probability import ProbabilityMap
from wsiviewer.core.exports.colormaps import load_colormap
from wsiviewer.core.exports.pyramid_tiff import write_pyramid_tiff
from wsiviewer.core.model.cards import ModelCard
from wsiviewer.core.slides import open_slide
from wsiviewer.core.store.database import Store
from wsiviewer.gui.analysis_display import AnalysisDisplay
from wsiviewer.gui.main_window import MainWindow
from wsiviewer.gui.review_panel import REVIEWER_KEY, ReviewPanel

#: A 6 x 8 map of 400 px cells (0.2 mm) at 0.5 µm/px: a 3 x 2 block (0.24 mm², kept at the
#: default minimum area), a lone cell (0.04 mm², left out) and tissue at P 0.2 / 0.0002.
BLOCK = {(1, 1): 0.998, (1, 2): 0.9, (1, 3): 0.8, (2, 1): 0.85, (2, 2): 0.7, (2, 3): 0.6}
LONE = (4, 6)


def store_map(
    slide_path: Path,
    card_path: Path,
    *,
    threshold: float | None = None,
    lone: float = 0.95,
    record_set: bool = False,
) -> int:
    """Record an analysis of :data:`BLOCK` (the model summary's threshold may be changed);
    as the viewer does it, no region set (``record_set`` records the card's)."""
    from wsiviewer.core.analysis.pipeline import Analysis, SlideSummary
    from wsiviewer.core.analysis.regions import find_regions
    from wsiviewer.core.analysis.tissue import TissueSettings

    card = ModelCard.from_file(card_path)
    summary = card.summary()
    if threshold is not None:
        summary = dataclasses.replace(summary, threshold=threshold)
    with open_slide(slide_path) as slide:
        mpp = slide.mpp
        assert mpp is not None
        grid = PatchGrid.for_slide(slide.dimensions, mpp.value, card.input_mpp, card.input_size)
        probabilities = np.full(grid.shape, 0.2, np.float32)
        probabilities[5, :] = 0.0002
        for rc, value in BLOCK.items():
            probabilities[rc] = value
        probabilities[LONE] = lone
        analysis = Analysis(
            slide=SlideSummary(slide.identity, slide.vendor, slide.dimensions, mpp),
            model=summary,
            tissue_settings=TissueSettings(),
            probability_map=ProbabilityMap(grid, probabilities, np.ones(grid.shape, bool)),
            device="CPU",
            batch_size=1,
            started_at="2025-01-01T00:00:00+00:00",
        )
    with Store.open() as store:
        analysis_id = store.save_analysis(analysis)
        if record_set:
            regions = find_regions(analysis.probability_map, summary.threshold, 0.0)
            store.save_region_set(analysis_id, regions)
        return analysis_id


def open_and_wait(qtbot, window: MainWindow, slide: Path) -> ReviewPanel:  # type: ignore[no-untyped-def]
    with qtbot.waitSignal(window.review_panel.review_opened, timeout=10_000):
        assert window.open_slide(slide)
    return window.review_panel


@pytest.fixture
def second_slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("second") / "second-slide.tif"
    return write_pyramid_tiff(
        path, he_like_slide((2400, 3200), seed=5), mpp=0.5, downsamples=(1, 4, 16), tile=256
    )


def test_one_threshold_outlines_at_once_and_kept_per_slide(
    qtbot,
    window: MainWindow,
    generated_slide: Path,
    second_slide: Path,
    tiny_model_card: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # type: ignore[no-untyped-def]
    """Item 1."""
    asked: list[str] = []
    monkeypatch.setattr(
        ReviewPanel, "ask_reviewer", lambda self, current="": asked.append(current) or "Dr One"
    )
    store_map(generated_slide, tiny_model_card)
    store_map(second_slide, tiny_model_card, lone=0.3)
    panel = open_and_wait(qtbot, window, generated_slide)
    state = panel.state
    assert state is not None
    # The regions are listed and outlined as soon as the analysis is shown: no name asked.
    from wsiviewer.core.review.defaults import DEFAULT_MIN_AREA_MM2

    assert asked == []
    assert (state.threshold, state.min_area_mm2) == (0.5, DEFAULT_MIN_AREA_MM2)
    assert len(state.items) == 1  # the block; the lone cell is under the minimum area
    assert len(panel.overlay.keys()) == 1
    assert panel.proxy.rowCount() == 1
    # One threshold: the heatmap's is the regions'.
    overlay = window.overlay_panel
    assert overlay.threshold == state.threshold == window.view._threshold == 0.5
    assert overlay.threshold_label.text() == "0.500"

    # The user picks another threshold on the heatmap panel: the regions follow.
    with qtbot.waitSignal(panel.review_opened):
        overlay.choose_threshold(0.25)
    assert panel.state.threshold == pytest.approx(0.25)  # type: ignore[union-attr]
    assert window.view._threshold == pytest.approx(0.25)
    # ... and the review panel's box moves the heatmap's.
    with qtbot.waitSignal(panel.review_opened):
        panel.threshold_box.setValue(0.65)
        panel.threshold_box.editingFinished.emit()
    assert overlay.threshold == pytest.approx(0.65)
    assert window.view._threshold == pytest.approx(0.65)
    assert panel.state.threshold == pytest.approx(0.65)  # type: ignore[union-attr]

    # Another slide shows its own set's threshold: never carried over from the last slide.
    panel = open_and_wait(qtbot, window, second_slide)
    assert panel.state.threshold == 0.5  # type: ignore[union-attr]
    assert overlay.threshold == 0.5
    assert window.view._threshold == 0.5
    # Back to the first: the threshold the user picked there, stored with its region set.
    panel = open_and_wait(qtbot, window, generated_slide)
    assert panel.state.threshold == pytest.approx(0.65)  # type: ignore[union-attr]
    assert overlay.threshold == pytest.approx(0.65)

    # The name is asked at the first decision, once.
    panel.select_next()
    assert asked == []
    assert panel.accept_selected()
    assert asked == [""]
    assert panel.state.items[0].reviewer == "Dr One"  # type: ignore[union-attr]


def test_heatmap_fades_below_the_threshold_with_a_legend(
    qtbot, window: MainWindow, generated_slide: Path, tiny_model_card: Path
) -> None:  # type: ignore[no-untyped-def]
    """Item 7: P = 0.0002 tints nothing, the threshold and above are opaque, and the view
    draws the legend of the ramp."""
    store_map(generated_slide, tiny_model_card)
    open_and_wait(qtbot, window, generated_slide)
    image = window.view.heatmap.image
    assert image is not None
    assert image.pixelColor(0, 5).alpha() == 0  # P = 0.0002
    assert image.pixelColor(0, 0).alpha() == round(255 * (0.2 / 0.5) ** 2)  # P = 0.2
    assert image.pixelColor(1, 1).alpha() == 255  # P = 0.85 (x = col 1, y = row 2 -> 0.85)
    window.view.viewport().repaint()
    legend = window.view._legend_image
    assert legend is not None
    viridis = load_colormap("viridis")
    right = legend.pixelColor(legend.width() - 1, legend.height() // 2)
    assert (right.red(), right.green(), right.blue()) == tuple(int(c) for c in viridis[-1])
    left = legend.pixelColor(0, legend.height() // 2)
    assert left.blue() > 190  # the checkerboard shows through at P = 0


def test_wording_and_one_threshold_format(
    qtbot, window: MainWindow, generated_slide: Path, tiny_model_card: Path, settings: QSettings
) -> None:  # type: ignore[no-untyped-def]
    """Item 8: candidates, not IDC; 0.998 is 0.99, not 1.00; 0.137872 is 0.138 everywhere."""
    store_map(generated_slide, tiny_model_card, threshold=0.137872)
    panel = open_and_wait(qtbot, window, generated_slide)
    state = panel.state
    assert state is not None
    assert state.threshold == 0.137872  # the card's operating point, exactly
    texts = [
        window.overlay_panel.threshold_label.text(),
        panel.threshold_box.text(),
        window.overlay_panel.histogram.summary_label.text(),
        panel.set_label.text(),
        window.overlay_panel.color_bar.toolTip(),
    ]
    assert texts[0] == "0.138"
    assert texts[1] == "0.138"
    assert "P ≥ 0.138" in texts[2]
    assert "flagged at P ≥ 0.138" in texts[3]
    for text in texts:
        assert "0.1379" not in text
        assert "0.14 " not in text + " "
    assert "IDC region" not in texts[3]
    block = next(item for item in state.items if item.max_prob and item.max_prob > 0.99)
    row = panel.model.row_of(block.ref)
    assert row is not None
    assert panel.model.index(row, 2).data() == "0.99"  # max P 0.998
    assert panel.model.index(row, 4).data() == "candidate"


def test_letter_shortcuts_work_right_after_typing_in_a_field(
    qtbot, window: MainWindow, generated_slide: Path, tiny_model_card: Path, settings: QSettings
) -> None:  # type: ignore[no-untyped-def]
    """Item 9: after typing a threshold and Enter, N and A act at once, no click needed."""
    settings.setValue(REVIEWER_KEY, "Dr Keys")
    store_map(generated_slide, tiny_model_card)
    panel = open_and_wait(qtbot, window, generated_slide)
    window.activateWindow()
    qtbot.waitUntil(lambda: QApplication.activeWindow() is window)
    box = panel.threshold_box
    box.setFocus()
    box.selectAll()
    with qtbot.waitSignal(panel.review_opened):
        qtbot.keyClicks(box, "0.45")
        qtbot.keyClick(box, Qt.Key.Key_Return)
    assert panel.state.threshold == pytest.approx(0.45)  # type: ignore[union-attr]
    assert not box.hasFocus()
    focus = QApplication.focusWidget()
    assert focus is not None
    qtbot.keyClick(focus, Qt.Key.Key_N)
    assert panel.selected_item() is not None
    qtbot.keyClick(QApplication.focusWidget() or window, Qt.Key.Key_A)
    assert panel.state.reviewed_count == 1  # type: ignore[union-attr]


def test_history_survives_a_new_analysis_which_asks_first(
    qtbot,
    window: MainWindow,
    generated_slide: Path,
    installed_model: Path,
    settings: QSettings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # type: ignore[no-untyped-def]
    """Item 2: re-analysing a reviewed slide asks first; the review stays in the history and
    the user can switch back to it; reopening the slide shows it (the selection rule)."""
    settings.setValue(REVIEWER_KEY, "Dr History")
    window.reload_models()
    window.batch_size = 64
    first = store_map(generated_slide, installed_model, record_set=True)
    panel = open_and_wait(qtbot, window, generated_slide)
    assert panel.state.analysis_id == first  # type: ignore[union-attr]
    panel.select_next()
    panel.accept_selected()
    reviewed_set = panel.state.region_set_id  # type: ignore[union-attr]
    progress = panel.state.progress_text  # type: ignore[union-attr]

    asked: list[str] = []
    answers = iter([False, True])

    def ask(self: AnalysisDisplay, parent: object, text: str) -> bool:
        asked.append(text)
        return next(answers)

    monkeypatch.setattr(AnalysisDisplay, "ask_reanalysis", ask)
    assert not window.analyze()  # the user kept the reviewed view
    assert not window.runner.running
    assert progress in asked[0]
    assert "history" in asked[0]
    assert panel.state.region_set_id == reviewed_set  # type: ignore[union-attr]
    with qtbot.waitSignal(window.analysis_finished, timeout=60_000) as finished:
        assert window.analyze()
    qtbot.waitUntil(lambda: not window.runner.running)
    new_id = finished.args[0].analysis_id
    assert new_id != first
    assert panel.state.analysis_id == new_id  # type: ignore[union-attr]
    # The history lists both analyses; the reviewed set says how far it was reviewed.
    texts = [panel.history_box.itemText(i) for i in range(panel.history_box.count())]
    assert any(f"Analysis #{first} " in text and progress in text for text in texts)
    assert any(f"Analysis #{new_id} " in text for text in texts)
    assert texts[panel.history_box.currentIndex()].startswith(f"Analysis #{new_id} ")
    # Switching back shows the review as it was.
    index = next(i for i, text in enumerate(texts) if progress in text)
    with qtbot.waitSignal(panel.review_opened):
        panel.history_box.setCurrentIndex(index)
        panel.history_box.activated.emit(index)
    assert panel.state.region_set_id == reviewed_set  # type: ignore[union-attr]
    assert window.shown_analysis_id == first
    assert "chosen in the history" in panel.set_label.text()
    # Reopening the slide: the set reviewed most recently, as `wsiviewer export` takes it.
    window.close_slide()
    panel = open_and_wait(qtbot, window, generated_slide)
    assert panel.state.region_set_id == reviewed_set  # type: ignore[union-attr]
    assert "reviewed most recently" in panel.set_label.text()
