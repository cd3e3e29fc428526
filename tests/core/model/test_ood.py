"""The out-of-distribution score: Mahalanobis distance of patch features to training data."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from wsiviewer.core.model.ood import OodModel, fit_ood


def _features(rng: np.random.Generator, n: int, shift: float = 0.0) -> tuple[np.ndarray, ...]:
    labels = rng.integers(0, 2, n)
    centres = np.where(labels[:, None] == 1, 2.0, -2.0) * np.eye(32)[0]
    return rng.normal(0, 1, (n, 32)) + centres + shift, labels


def test_training_like_patches_score_about_one_and_others_far_more() -> None:
    rng = np.random.default_rng(0)
    features, labels = _features(rng, 4000)
    model = fit_ood(features, labels)
    inside, _ = _features(rng, 300)
    outside, _ = _features(rng, 300, shift=3.0)
    assert model.slide_score(inside) == pytest.approx(1.0, abs=0.15)
    assert model.slide_score(outside) > 5 * model.slide_score(inside)
    assert math.isnan(model.slide_score(np.zeros((0, 32))))


def test_the_model_round_trips_through_json_and_is_checked() -> None:
    rng = np.random.default_rng(1)
    features, labels = _features(rng, 500)
    fitted = fit_ood(features, labels)
    model = OodModel(
        fitted.mean,
        fitted.components,
        fitted.class_means,
        fitted.precision,
        fitted.train_median,
        threshold=2.5,
    )
    again = OodModel.from_dict(json.loads(json.dumps(model.to_dict())))
    sample, _ = _features(rng, 50)
    assert again.slide_score(sample) == pytest.approx(model.slide_score(sample), rel=1e-4)
    assert again.threshold == 2.5
    broken = {**model.to_dict(), "precision": [[1.0]]}
    with pytest.raises(ValueError, match="do not fit"):
        OodModel.from_dict(broken)
    with pytest.raises(ValueError, match="Unknown"):
        OodModel.from_dict({**model.to_dict(), "method": "energy"})
