"""The card's colour standardisation, out-of-distribution score and spatial context run in
the analysis itself, as the model was trained and validated."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import he_like_slide
from wsiviewer.core.analysis.patches import PatchReader
from wsiviewer.core.analysis.pipeline import AnalysisWarning, analyze, sample_patches
from wsiviewer.core.model.cards import ModelCard, resolve_model
from wsiviewer.core.model.colour import ColourReference, slide_quantiles
from wsiviewer.core.model.context import ContextSettings, apply_context
from wsiviewer.core.model.ood import OodModel, fit_ood
from wsiviewer.core.model.predictor import Predictor
from wsiviewer.core.model.stain_check import PERCENTILES, fit_stain_check, stain_statistics
from wsiviewer.core.progress import run_to_end
from wsiviewer.core.slides import ArraySource
from wsiviewer.errors import ModelError


@pytest.fixture(scope="module")
def trained() -> Path:
    """A shipped, trained model: its probabilities answer to colour (an untrained one's do
    not)."""
    return resolve_model("resnet8").path


def card_with(base: Path, folder: Path, name: str, **keys: object) -> ModelCard:
    data = json.loads(base.read_text())
    data.update(name=name, default=False, **keys)
    shutil.copy(base.with_suffix(".safetensors"), folder / f"{name}.safetensors")
    (folder / f"{name}.json").write_text(json.dumps(data))
    return ModelCard.from_file(folder / f"{name}.json")


def analysed(slide: ArraySource, card: ModelCard):  # type: ignore[no-untyped-def]
    return run_to_end(analyze(slide, Predictor(card, "cpu"), mpp=slide.resolve_mpp()))


def restained(pixels: np.ndarray) -> np.ndarray:
    """The same tissue through another lab's stain and scanner: each channel changed by a
    monotone curve."""
    x = pixels.astype(np.float64) / 255.0
    out = np.stack([x[..., 0] ** 1.4, 0.85 * x[..., 1] + 0.1, x[..., 2] ** 0.8], axis=-1)
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


def test_colour_standardisation_makes_a_restained_slide_score_alike(
    trained: Path, tmp_path: Path
) -> None:
    pixels = he_like_slide()
    slide, other = ArraySource(pixels, mpp=1.0), ArraySource(restained(pixels), mpp=1.0)
    plain = ModelCard.from_file(trained)
    reader = PatchReader(slide, plain_grid := analysed(slide, plain).grid)
    tissue = analysed(slide, plain).probability_map.tissue
    reference = ColourReference(slide_quantiles(sample_patches(reader, tissue)) * 0.9 + 10)
    standardised = card_with(trained, tmp_path, "coloured", colour=reference.to_dict())

    def difference(card: ModelCard) -> float:
        a, b = analysed(slide, card).probability_map, analysed(other, card).probability_map
        both = a.scored & b.scored
        assert both.sum() >= 10
        return float(np.abs(a.probabilities[both] - b.probabilities[both]).mean())

    assert plain_grid.shape == (6, 8)
    without, with_colour = difference(plain), difference(standardised)
    assert without > 0.01
    assert with_colour < without / 4
    assert "colour" in analysed(slide, standardised).timings_s


def test_context_is_applied_after_scoring_and_keeps_the_patches_own(
    trained: Path, tmp_path: Path
) -> None:
    slide = ArraySource(he_like_slide(), mpp=1.0)
    settings = ContextSettings(sigma_um=300.0, weight=1.0, slope=1.2, bias=-0.1)
    card = card_with(trained, tmp_path, "context", context=settings.to_dict())
    assert card.context == settings
    pmap = analysed(slide, card).probability_map
    own = analysed(slide, ModelCard.from_file(trained)).probability_map.probabilities
    assert pmap.patch_probabilities is not None
    np.testing.assert_allclose(pmap.patch_level, own, atol=1e-6)
    np.testing.assert_allclose(
        pmap.probabilities, apply_context(own, settings, pmap.grid.cell_um), atol=1e-6
    )
    np.testing.assert_array_equal(np.isnan(pmap.probabilities), np.isnan(own))
    assert not np.allclose(pmap.probabilities[pmap.scored], own[pmap.scored], atol=1e-3)


def test_an_unusual_slide_is_warned_and_a_usual_one_is_not(trained: Path, tmp_path: Path) -> None:
    slide = ArraySource(he_like_slide(), mpp=1.0)
    plain = ModelCard.from_file(trained)
    predictor = Predictor(plain, "cpu")
    analysis = analysed(slide, plain)
    patches = sample_patches(PatchReader(slide, analysis.grid), analysis.probability_map.tissue)
    features = predictor.features(patches)
    fitted = fit_ood(features, np.arange(len(features)) % 2)
    score = fitted.slide_score(features)
    assert math.isfinite(score)
    assert score > 0

    def warned(threshold: float) -> list[str]:
        model = OodModel(**{**fitted.__dict__, "threshold": threshold})
        card = card_with(trained, tmp_path, f"ood-{threshold:g}", ood=model.to_dict())
        return [w for w in analysed(slide, card).warnings if "unlike the model's" in w]

    with pytest.warns(AnalysisWarning, match="unlike the model's training data"):
        notes = warned(score * 0.5)
    assert len(notes) == 1
    assert f"{score:.2f}" in notes[0]
    assert warned(score * 2.0) == []


def test_a_slide_stained_otherwise_is_warned_and_the_same_slide_in_h_and_e_is_not(
    trained: Path, tmp_path: Path
) -> None:
    pixels = he_like_slide()
    slide = ArraySource(pixels, mpp=1.0)
    plain = ModelCard.from_file(trained)
    analysis = analysed(slide, plain)
    quantiles = slide_quantiles(
        sample_patches(PatchReader(slide, analysis.grid), analysis.probability_map.tissue)
    )
    # A check fitted on slides like this one (its percentiles, a little jittered).
    rng = np.random.default_rng(0)
    statistics = stain_statistics(quantiles) + rng.normal(0, 4, (20, 3 * len(PERCENTILES)))
    fitted = fit_stain_check(statistics, threshold=6.0)
    card = card_with(trained, tmp_path, "stain", stain_check=fitted.to_dict())
    assert card.stain_check is not None
    assert card.stain_check.score(quantiles) < 6.0
    assert not [w for w in analysed(slide, card).warnings if "colours are unlike" in w]
    other = ArraySource(restained(pixels), mpp=1.0)
    with pytest.warns(AnalysisWarning, match="colours are unlike the training patients'"):
        notes = [w for w in analysed(other, card).warnings if "colours are unlike" in w]
    assert len(notes) == 1
    assert "above 6.0" in notes[0]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("colour", {"method": "channel-quantiles", "quantiles": [[0, 1]]}),
        ("colour", {"method": "other"}),
        ("context", {"method": "gaussian-logits", "sigma_um": -1, "weight": 1}),
        ("context", [1, 2]),
        ("ood", {"method": "mahalanobis-features", "mean": [0.0]}),
        ("stain_check", {"method": "colour-percentile-gaussian", "mean": [0.0]}),
    ],
)
def test_bad_card_stages_are_a_model_error(
    trained: Path, tmp_path: Path, key: str, value: object
) -> None:
    with pytest.raises(ModelError, match="bad value"):
        card_with(trained, tmp_path, "bad", **{key: value})


def test_dense_map_scores_each_cell_from_the_four_patches_covering_it(trained: Path) -> None:
    slide = ArraySource(he_like_slide(), mpp=1.0)
    predictor = Predictor(ModelCard.from_file(trained), "cpu", batch_size=50)
    default = run_to_end(analyze(slide, predictor, mpp=slide.resolve_mpp()))
    progress: list = []  # type: ignore[type-arg]
    dense = run_to_end(
        analyze(slide, predictor, mpp=slide.resolve_mpp(), subdivision=2), progress.append
    )
    grid, pmap = dense.grid, dense.probability_map
    assert grid.shape == (12, 16)
    assert grid.cell_um == pytest.approx(100.0)
    np.testing.assert_array_equal(pmap.scored, pmap.tissue)
    assert dense.key != default.key
    inference = [p for p in progress if p.stage == "inference"]
    assert inference[-1].done == inference[-1].total > pmap.tissue_count
    # Recompute a few cells by hand: the 200 µm patches whose top-left corner is the cell or
    # its neighbour above, left or above-left, read straight from the slide (white outside).
    reader = PatchReader(slide, grid)
    for r, c in np.argwhere(pmap.tissue)[:: max(1, pmap.tissue_count // 5)]:
        patches = np.stack(
            [reader.read_cells(r - dr, c - dc, 2, 2) for dr in (0, 1) for dc in (0, 1)]
        )
        p = predictor.predict(patches).astype(np.float64)
        expected = 1.0 / (1.0 + np.exp(-np.mean(np.log(p) - np.log1p(-p))))
        assert pmap.probabilities[r, c] == pytest.approx(expected, abs=1e-4)
