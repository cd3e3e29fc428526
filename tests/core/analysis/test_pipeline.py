from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import he_like_slide
from wsiviewer.core.analysis.pipeline import AnalysisWarning, analyze
from wsiviewer.core.model.cards import ModelCard
from wsiviewer.core.model.predictor import Predictor
from wsiviewer.core.progress import run_to_end
from wsiviewer.core.slides import ArraySource, Mpp
from wsiviewer.errors import ResolutionError


@pytest.fixture
def predictor(tiny_model_card: Path) -> Predictor:
    return Predictor(ModelCard.from_file(tiny_model_card), device="cpu", batch_size=64)


def run(generator):  # type: ignore[no-untyped-def]
    progress: list = []  # type: ignore[type-arg]
    return run_to_end(generator, progress.append), progress


def test_analyze_scores_tissue_cells_with_progress(predictor: Predictor) -> None:
    # 1 µm/px: cells are 200 l0 px, grid 6×8.
    slide = ArraySource(he_like_slide(), mpp=1.0, downsamples=(1, 2, 8))
    analysis, progress = run(analyze(slide, predictor, mpp=slide.resolve_mpp()))
    pmap = analysis.probability_map
    assert pmap.grid.shape == (6, 8)
    assert 0 < pmap.tissue_count < 48
    np.testing.assert_array_equal(pmap.scored, pmap.tissue)
    assert progress[0].stage == "tissue"
    assert progress[0].done == 0
    inference = [p for p in progress if p.stage == "inference"]
    assert [p.done for p in inference] == sorted(p.done for p in inference)
    assert inference[-1].done == inference[-1].total == pmap.tissue_count
    assert analysis.slide.mpp == Mpp(1.0, "metadata")
    assert analysis.model.name == "cancernet-untrained"
    assert analysis.device == "CPU"
    assert analysis.warnings == []
    assert len(analysis.key) == 64
    # The key ignores batch size and device; it follows the µm/px.
    again, _ = run(analyze(slide, Predictor(predictor.card, "cpu", 7), mpp=slide.resolve_mpp()))
    assert again.key == analysis.key
    np.testing.assert_allclose(again.probability_map.probabilities, pmap.probabilities, atol=1e-6)
    other, _ = run(analyze(slide, predictor, mpp=Mpp(0.9, "user")))
    assert other.key != analysis.key


def test_partial_maps_fill_in_and_cancel_stops_between_batches(tiny_model_card: Path) -> None:
    slide = ArraySource(he_like_slide(), mpp=1.0)
    small_batches = Predictor(ModelCard.from_file(tiny_model_card), device="cpu", batch_size=2)
    calls = 0
    original = small_batches.predict

    def counting(patches: np.ndarray) -> np.ndarray:
        nonlocal calls
        calls += 1
        return original(patches)

    small_batches.predict = counting  # type: ignore[method-assign]
    generator = analyze(slide, small_batches, mpp=slide.resolve_mpp())
    next(generator)  # tissue
    first = next(generator)
    assert first.done == 2
    assert first.probability_map is not None
    assert first.probability_map.scored_count == 2
    generator.close()  # cancel
    assert calls == 1


def test_coarse_slide_is_refused(predictor: Predictor) -> None:
    slide = ArraySource(he_like_slide((100, 100)), mpp=29.0)
    with pytest.raises(ResolutionError, match="coarser than the model's input"):
        run(analyze(slide, predictor, mpp=slide.resolve_mpp()))


def test_tiny_and_empty_slides_warn_with_empty_maps(predictor: Predictor) -> None:
    tiny = ArraySource(he_like_slide((16, 16)), mpp=0.5)
    with pytest.warns(AnalysisWarning, match="smaller than one 400.0 px patch"):
        analysis, _ = run(analyze(tiny, predictor, mpp=tiny.resolve_mpp()))
    assert analysis.probability_map.grid.shape == (0, 0)
    assert analysis.warnings
    glass = ArraySource(np.full((800, 800, 3), 243, np.uint8), mpp=1.0)
    with pytest.warns(AnalysisWarning, match="No tissue found: the slide looks like blank glass"):
        analysis, _ = run(analyze(glass, predictor, mpp=glass.resolve_mpp()))
    assert analysis.probability_map.scored_count == 0
