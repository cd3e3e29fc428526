"""The stain check: a slide's raw tissue colours against the training patients', on real
patients and their restained copies."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from skimage.color import hed2rgb, rgb2hed

from wsiviewer.core.model.cards import resolve_model
from wsiviewer.core.model.colour import slide_quantiles
from wsiviewer.core.model.stain_check import (
    PERCENTILES,
    StainCheck,
    fit_stain_check,
    ledoit_wolf,
    stain_statistics,
)
from wsiviewer.training.crossval import patient_quantiles
from wsiviewer.training.dataset import load_patch_set
from wsiviewer.training.ood_fit import patient_samples

#: Real patients sampled across the dataset: the first 30 fit the check, the rest are held out.
FITTED, HELD_OUT = 30, 6


@pytest.fixture(scope="module")
def patients(idc_dir: Path):  # type: ignore[no-untyped-def]
    """Every 6th patient of the dataset (by name), loaded, with each one's tissue sample."""
    names = sorted(p.name for p in idc_dir.iterdir() if p.is_dir())[::6][: FITTED + HELD_OUT]
    if len(names) < FITTED + HELD_OUT:
        pytest.skip("too few IDC patients for the stain check's test")
    patch_set = load_patch_set(idc_dir, patients=names)
    samples = patient_samples(patch_set)
    return names, patch_set, samples


def restain(pixels: np.ndarray, how: str) -> np.ndarray:
    """The same tissue stained otherwise (H&E-DAB colour deconvolution): haematoxylin only, or
    eosin replaced by DAB's brown (an immunohistochemistry-like slide)."""
    hed = rgb2hed(pixels)
    if how == "haematoxylin only":
        hed[..., 1] = 0
    else:
        hed[..., 2], hed[..., 1] = hed[..., 1], 0.1 * hed[..., 1]
    return (np.clip(hed2rgb(hed), 0, 1) * 255).astype(np.uint8)


def test_restained_patients_lie_further_than_held_out_ones_as_they_are(patients) -> None:  # type: ignore[no-untyped-def]
    names, patch_set, samples = patients
    quantiles = patient_quantiles(patch_set)
    fitted = fit_stain_check(np.stack([stain_statistics(quantiles[p]) for p in names[:FITTED]]))
    own = fitted.distances(np.stack([stain_statistics(quantiles[p]) for p in names[:FITTED]]))
    assert np.median(own) == pytest.approx(1.0)
    scores: dict[str, list[float]] = {"as is": [], "haematoxylin only": [], "eosin to DAB": []}
    for patient in names[FITTED:]:
        raw = patch_set.pixels[samples[patient]]
        scores["as is"].append(fitted.score(slide_quantiles(raw)))
        for how in ("haematoxylin only", "eosin to DAB"):
            scores[how].append(fitted.score(slide_quantiles(restain(raw, how))))
    # Haematoxylin alone is far from every H&E patient; DAB's brown is nearer (the patients'
    # own colours spread widely), so it is caught less often (about 2 times in 5 on the
    # folds: tools/ood_survey.py) but is still further away than H&E on the whole.
    assert min(scores["haematoxylin only"]) > max(scores["as is"])
    assert np.median(scores["eosin to DAB"]) > 2 * np.median(scores["as is"])


def test_the_shipped_check_passes_real_patients_and_flags_them_restained(patients) -> None:  # type: ignore[no-untyped-def]
    check = resolve_model(None).stain_check
    assert check is not None
    names, patch_set, samples = patients
    scores = []
    flagged = []
    for patient in names:
        raw = patch_set.pixels[samples[patient]]
        scores.append(check.score(slide_quantiles(raw)))
        flagged.append(check.score(slide_quantiles(restain(raw, "haematoxylin only"))))
    # The patients were in the check's fit: about 1 in 100 of them is above the threshold.
    assert np.mean(np.array(scores) > check.threshold) <= 0.1
    assert np.mean(np.array(flagged) > check.threshold) >= 0.9


def test_the_check_round_trips_through_json_and_is_checked() -> None:
    rng = np.random.default_rng(0)
    statistics = rng.normal(100, 20, (40, 3 * len(PERCENTILES)))
    fitted = fit_stain_check(statistics, threshold=5.0)
    again = StainCheck.from_dict(json.loads(json.dumps(fitted.to_dict())))
    probe = rng.normal(100, 20, (5, 3 * len(PERCENTILES)))
    np.testing.assert_allclose(again.distances(probe), fitted.distances(probe), rtol=1e-4)
    assert again.threshold == 5.0
    data = fitted.to_dict()
    for broken, message in (
        ({**data, "method": "other"}, "Unknown"),
        ({**data, "percentiles": [50]}, "percentiles"),
        ({**data, "mean": [0.0]}, "arrays"),
        ({**data, "scale": [0.0] * 21}, "positive"),
        ({**data, "threshold": math.nan}, "positive"),
    ):
        with pytest.raises(ValueError, match=message):
            StainCheck.from_dict(broken)
    with pytest.raises(ValueError, match="at least 3"):
        fit_stain_check(statistics[:2])


def test_ledoit_wolf_is_invertible_with_few_rows_and_right_with_many() -> None:
    rng = np.random.default_rng(1)
    few = rng.normal(0, 1, (5, 21))
    assert np.linalg.eigvalsh(ledoit_wolf(few - few.mean(0))).min() > 0
    many = rng.normal(0, 1, (20_000, 21))
    np.testing.assert_allclose(ledoit_wolf(many - many.mean(0)), np.eye(21), atol=0.05)
