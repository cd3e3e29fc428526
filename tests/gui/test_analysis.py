"""Analysis from the window: worker thread, progress, cancel, Store, heatmap placement."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import QPointF

from tests.gui.conftest import GENERATED_MPP, wait_settled
from wsiviewer import cli
from wsiviewer.core.analysis.grid import PatchGrid
from wsiviewer.core.analysis.probability import ProbabilityMap
from wsiviewer.core.exports.colormaps import load_colormap
from wsiviewer.core.model.cards import ModelCard
from wsiviewer.core.slides import Mpp, open_slide
from wsiviewer.core.store.database import Store
from wsiviewer.gui.analysis import AnalysisUpdate
from wsiviewer.gui.main_window import MainWindow


def test_without_a_model_analyze_is_disabled_and_says_why(
    qtbot, window: MainWindow, generated_slide: Path
) -> None:  # type: ignore[no-untyped-def]
    window.open_slide(generated_slide)
    assert window.model_panel.card is None
    assert not window.analyze_action.isEnabled()
    assert "No model installed" in window.analyze_action.toolTip()
    assert "No model installed" in window.model_panel.card_view.toPlainText()
    with qtbot.waitSignal(window.error_shown) as blocker:
        assert not window.analyze()
    assert ".safetensors" in blocker.args[0]
    window.last_error_box.accept()


def test_model_card_panel_shows_what_the_model_is(
    window: MainWindow, installed_model: Path
) -> None:
    window.reload_models()
    card = window.model_panel.card
    assert card is not None
    assert card.name == "cancernet-untrained"
    text = window.model_panel.card_view.toPlainText()
    for needle in (
        "Research use only",
        "4 µm/px",
        "200 µm",
        "Trained on",
        "randomly initialised",
        "Metrics",
        "Intended use",
        "Testing only",
    ):
        assert needle in text, needle


def test_analysis_runs_in_a_worker_fills_the_heatmap_and_is_stored(
    qtbot, window: MainWindow, installed_model: Path, generated_slide: Path
) -> None:  # type: ignore[no-untyped-def]
    window.reload_models()
    window.batch_size = 16
    window.open_slide(generated_slide)
    updates: list[AnalysisUpdate] = []
    window.runner.analysis_progressed.connect(updates.append)
    with qtbot.waitSignal(window.analysis_finished, timeout=60_000) as blocker:
        assert window.analyze()
        assert window.runner.running
        assert not window.analyze_action.isEnabled()
        assert window.cancel_action.isEnabled()
    qtbot.waitUntil(lambda: not window.runner.running)
    outcome = blocker.args[0]
    stages = [u.stage for u in updates]
    assert stages[0] == "loading model"
    assert "tissue" in stages
    assert stages[-1] == "saving"
    inference = [u for u in updates if u.stage == "inference"]
    assert len(inference) >= 2
    assert inference[-1].done == inference[-1].total > 16
    # The partial maps fill in batch by batch.
    assert np.count_nonzero(~np.isnan(inference[0].probabilities)) == 16
    assert "CPU" in window.device_label.text()
    assert window.view.heatmap.image is not None
    assert window.analyze_action.isEnabled()
    assert not window.progress_bar.isVisible()

    with Store.open() as store:
        record = store.latest_analysis(window.slide.identity)
        assert record is not None
        assert record.id == outcome.analysis_id
        assert record.scored_count == inference[-1].total
        region_sets = store.region_sets(record.id)
        assert [s.threshold for s in region_sets] == [0.5]

    # Reopening shows the stored heatmap at once.
    window.close_slide()
    with qtbot.waitSignal(window.stored_analysis_shown) as shown:
        window.open_slide(generated_slide)
    assert shown.args[0] == outcome.analysis_id
    np.testing.assert_array_equal(
        window.view.probabilities, outcome.analysis.probability_map.probabilities
    )


def test_cancel_stops_within_a_batch_and_saves_nothing(
    qtbot,
    window: MainWindow,
    installed_model: Path,
    generated_slide: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # type: ignore[no-untyped-def]
    """The second batch is held until Cancel is pressed: the worker stops right after it."""
    from wsiviewer.core.model.predictor import Predictor

    gate = threading.Event()
    predicted: list[int] = []
    original = Predictor.predict

    def gated_predict(self: Predictor, patches: np.ndarray) -> np.ndarray:
        predicted.append(len(patches))
        if len(predicted) >= 2:
            gate.wait(10)
        return original(self, patches)

    monkeypatch.setattr(Predictor, "predict", gated_predict)
    window.reload_models()
    window.batch_size = 2
    window.open_slide(generated_slide)

    def cancel_on_first_batch(update: AnalysisUpdate) -> None:
        if update.stage == "inference" and not gate.is_set():
            window.runner.cancel()
            gate.set()

    window.runner.analysis_progressed.connect(cancel_on_first_batch)
    with (
        qtbot.waitSignal(window.runner.stopped, timeout=60_000),
        qtbot.waitSignal(window.runner.analysis_cancelled, timeout=60_000),
    ):
        window.analyze()
    # Stopped before the second batch or right after it (held until Cancel): never a third.
    assert predicted in ([2], [2, 2])
    assert not window.runner.running
    assert "cancelled" in window.statusBar().currentMessage()
    with Store.open() as store:
        assert store.latest_analysis(window.slide.identity) is None
    assert window.view.heatmap.image is None
    assert window.analyze_action.isEnabled()


def _store_synthetic_analysis(
    slide_path: Path, card_path: Path, hot_rc: tuple[int, int]
) -> PatchGrid:
    """Record an analysis whose map is 1.0 in one cell and 0.2 elsewhere in tissue."""
    from wsiviewer.core.analysis.pipeline import Analysis, SlideSummary
    from wsiviewer.core.analysis.tissue import TissueSettings

    card = ModelCard.from_file(card_path)
    with open_slide(slide_path) as slide:
        mpp = slide.mpp
        assert mpp is not None
        grid = PatchGrid.for_slide(slide.dimensions, mpp.value, card.input_mpp, card.input_size)
        tissue = np.ones(grid.shape, bool)
        probabilities = np.full(grid.shape, 0.2, np.float32)
        probabilities[hot_rc] = 1.0
        analysis = Analysis(
            slide=SlideSummary(slide.identity, slide.vendor, slide.dimensions, mpp),
            model=card.summary(),
            tissue_settings=TissueSettings(),
            probability_map=ProbabilityMap(grid, probabilities, tissue),
            device="CPU",
            batch_size=1,
            started_at="2025-01-01T00:00:00+00:00",
        )
    with Store.open() as store:
        store.save_analysis(analysis)
    return grid


def test_a_high_probability_patch_is_coloured_at_its_place_at_two_zooms(
    qtbot, window: MainWindow, tiny_model_card: Path, generated_slide: Path
) -> None:  # type: ignore[no-untyped-def]
    hot_rc = (2, 5)
    grid = _store_synthetic_analysis(generated_slide, tiny_model_card, hot_rc)
    assert grid.l0_patch_size == pytest.approx(4.0 * 50 / GENERATED_MPP)
    window.overlay_panel.opacity_slider.setValue(100)
    window.overlay_panel.threshold_slider.setValue(50)
    with qtbot.waitSignal(window.stored_analysis_shown):
        window.open_slide(generated_slide)
    top = load_colormap("viridis")[255].astype(int)
    x, y, size, _ = grid.l0_box(hot_rc)
    view = window.view
    for magnification in (2.5, 10.0):
        view.set_magnification(magnification)
        view.center_on_l0(x + size / 2, y + size / 2)
        wait_settled(qtbot, window)
        frame = view.viewport().grab().toImage()

        def colour(l0_xy: tuple[float, float], frame=frame) -> np.ndarray:
            point: QPointF = view.map_l0_to_view(l0_xy)
            c = frame.pixelColor(int(point.x()), int(point.y()))
            return np.array([c.red(), c.green(), c.blue()])

        inset = 0.08 * size
        inside = [
            (x + size / 2, y + size / 2),
            (x + inset, y + inset),
            (x + size - inset, y + size - inset),
        ]
        outside = [
            (x - inset, y + size / 2),
            (x + size + inset, y + size / 2),
            (x + size / 2, y - inset),
            (x + size / 2, y + size + inset),
        ]
        for point in inside:
            assert np.abs(colour(point) - top).max() <= 3, (magnification, point)
        for point in outside:
            assert np.abs(colour(point) - top).max() > 40, (magnification, point)
        # The status bar reads the same cell, with the notice.
        window._on_cursor_moved(x + size / 2, y + size / 2)
        assert "P(IDC) 1.00" in window.probability_label.text()
        assert "research use only" in window.probability_label.text()

    # H hides it.
    window.heatmap_action.trigger()
    assert not window.overlay_panel.visible
    assert not view.heatmap.isVisible()


def test_an_analysis_from_the_command_line_is_shown(
    qtbot, window: MainWindow, tiny_model_card: Path, generated_slide: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    code = cli.main(
        [
            "analyze",
            str(generated_slide),
            "--out",
            str(tmp_path / "out"),
            "--model",
            str(tiny_model_card),
            "--quiet",
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    with qtbot.waitSignal(window.stored_analysis_shown):
        window.open_slide(generated_slide)
    assert "cancernet-untrained" in window.overlay_panel.analysis_label.text()
    assert window.view.heatmap.image is not None


def test_a_slide_without_mpp_asks_for_it_first(
    qtbot, window: MainWindow, installed_model: Path, wsi_dir: Path
) -> None:  # type: ignore[no-untyped-def]
    window.reload_models()
    window.open_slide(wsi_dir / "tcga-cr-7395-01a-01-ts1.svs")
    assert window.view.magnification is None
    assert "%" in window.magnification_label.text()
    asked: list[tuple[float, bool]] = []

    def refuse(guess: float, guessed_from_power: bool) -> float | None:
        asked.append((guess, guessed_from_power))
        return None

    window.ask_mpp = refuse  # type: ignore[method-assign]
    assert not window.analyze()
    assert asked == [(0.25, False)]
    assert not window.runner.running


def test_a_slide_too_coarse_for_the_model_is_refused(
    qtbot, window: MainWindow, installed_model: Path, wsi_dir: Path
) -> None:  # type: ignore[no-untyped-def]
    window.reload_models()
    window.open_slide(wsi_dir / "multiframe_camelyon_challenge_image.dcm")
    with qtbot.waitSignal(window.error_shown) as blocker:
        assert not window.analyze()
    assert "coarser" in blocker.args[0]
    window.last_error_box.accept()


def test_mpp_entered_by_the_user_is_used(
    qtbot, window: MainWindow, installed_model: Path, wsi_dir: Path
) -> None:  # type: ignore[no-untyped-def]
    window.reload_models()
    window.open_slide(wsi_dir / "tcga-cr-7395-01a-01-ts1.svs")
    window.ask_mpp = lambda guess, guessed_from_power: 0.5  # type: ignore[method-assign]
    window.batch_size = 256
    with qtbot.waitSignal(window.analysis_finished, timeout=60_000) as blocker:
        assert window.analyze()
    qtbot.waitUntil(lambda: not window.runner.running)
    assert blocker.args[0].analysis.slide.mpp == Mpp(0.5, "user")
    assert window.view.magnification == pytest.approx(10 / (0.5 * window.view.l0_per_screen_px))
    assert "entered by you" in window.info_panel.plain_text()


@pytest.mark.shipped_models
def test_shipped_default_model_shows_its_metrics_and_report(qtbot, window: MainWindow) -> None:  # type: ignore[no-untyped-def]
    window.reload_models()
    card = window.model_panel.card
    assert card is not None
    assert card.default
    text = window.model_panel.card_view.toPlainText()
    for needle in (
        "Balanced accuracy",
        "ROC AUC",
        "out of fold (222 patients)",
        "map with context, out of fold (27 complete patients)",
        "Research use only",
    ):
        assert needle in text, needle
    assert window.model_panel.report_button.isEnabled()
    dialog = window.model_panel.show_report()
    assert dialog is not None
    qtbot.waitExposed(dialog)
    report = dialog.browser.toPlainText()
    assert "Patch level" in report
    assert "End to end" in report
    dialog.close()
