"""What the card asks the analysis to do, seen from the window: a slide unlike the model's
training data is warned above the slide for as long as its analysis is shown, and the dense
heatmap is an option of the Analysis menu."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from wsiviewer.core.analysis.patches import PatchReader
from wsiviewer.core.analysis.pipeline import analyze, sample_patches
from wsiviewer.core.model.cards import ModelCard
from wsiviewer.core.model.ood import OodModel, fit_ood
from wsiviewer.core.model.predictor import Predictor
from wsiviewer.core.progress import run_to_end
from wsiviewer.core.slides import open_slide
from wsiviewer.gui.main_window import MainWindow


def _warning_card(installed_model: Path, slide_path: Path) -> None:
    """The installed model's card given an out-of-distribution model whose threshold every
    slide is above."""
    card = ModelCard.from_file(installed_model)
    predictor = Predictor(card, "cpu")
    with open_slide(slide_path) as slide:
        analysis = run_to_end(analyze(slide, predictor, mpp=slide.resolve_mpp()))
        sample = sample_patches(PatchReader(slide, analysis.grid), analysis.probability_map.tissue)
    features = predictor.features(sample)
    fitted = fit_ood(features, np.arange(len(features)) % 2)
    model = OodModel(**{**fitted.__dict__, "threshold": 0.0})
    data = json.loads(installed_model.read_text())
    data["ood"] = model.to_dict()
    installed_model.write_text(json.dumps(data))


@pytest.mark.filterwarnings("ignore::wsiviewer.core.analysis.pipeline.AnalysisWarning")
def test_an_unusual_slide_is_warned_above_it_while_its_analysis_is_shown(
    qtbot, window: MainWindow, installed_model: Path, generated_slide: Path
) -> None:  # type: ignore[no-untyped-def]
    _warning_card(installed_model, generated_slide)
    window.reload_models()
    window.batch_size = 64
    window.open_slide(generated_slide)
    assert not window.warning_banner.isVisible()
    with qtbot.waitSignal(window.analysis_finished, timeout=60_000):
        assert window.analyze()
    qtbot.waitUntil(lambda: not window.runner.running)
    assert window.warning_banner.isVisible()
    assert "unlike the model's training data" in window.warning_banner.text()
    # Closed, the banner goes; reopened, the stored analysis brings it back.
    window.close_slide()
    assert not window.warning_banner.isVisible()
    with qtbot.waitSignal(window.stored_analysis_shown):
        window.open_slide(generated_slide)
    assert "unlike the model's training data" in window.warning_banner.text()
    assert window.warning_banner.isVisible()


def test_the_dense_heatmap_is_a_remembered_menu_option(
    qtbot, window: MainWindow, installed_model: Path, generated_slide: Path
) -> None:  # type: ignore[no-untyped-def]
    window.reload_models()
    window.batch_size = 256
    window.open_slide(generated_slide)
    assert not window.dense_action.isChecked()
    window.dense_action.trigger()
    assert window.dense_action.isChecked()
    with qtbot.waitSignal(window.analysis_finished, timeout=120_000) as blocker:
        assert window.analyze()
    qtbot.waitUntil(lambda: not window.runner.running)
    grid = blocker.args[0].analysis.grid
    assert grid.subdivision == 2
    assert window.view.heatmap.image is not None
    histogram = window.overlay_panel.histogram
    assert f"{histogram.scored_count:,} cells scored" in histogram.summary_label.text()
    assert histogram.plot_widget.getAxis("left").labelText == "cells"
    assert f"{histogram.scored_count:,} cells scored on" in (
        window.overlay_panel.analysis_label.text()
    )
    window._save_settings()
    assert window.settings.value("analysis/dense") in (True, "true")
