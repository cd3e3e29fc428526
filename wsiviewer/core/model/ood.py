"""Knowing when not to trust the model: how far a slide's patches are from the training data.

The network's penultimate features (the input of its last linear layer) summarise what it sees
in a patch. Over the training patches they are projected on their leading principal
components and modelled as one Gaussian per class with a shared covariance (Lee et al.,
NeurIPS 2018: Mahalanobis distance in feature space). A patch's distance is its squared
Mahalanobis distance to the nearer class, divided by the median distance of the training
patches (so 1 is typical of training data); a slide's score is the median over a sample of
its tissue patches. Slides whose score is above the card's threshold (the 99th percentile of
the patients' out-of-fold scores, each scored by a fold model that never saw it) get a warning:
the tissue, the stain or the scanner is unlike anything the model was trained on, and its
probabilities should not be trusted.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

#: The method name on the card.
METHOD = "mahalanobis-features"
#: Principal components kept.
COMPONENTS = 16


@dataclass(frozen=True)
class OodModel:
    """The training features' distribution, and the threshold of an unusual slide."""

    #: ``(F,)`` mean of the training features.
    mean: np.ndarray
    #: ``(K, F)`` principal axes (rows).
    components: np.ndarray
    #: ``(2, K)`` class means in component space.
    class_means: np.ndarray
    #: ``(K, K)`` inverse of the shared within-class covariance in component space.
    precision: np.ndarray
    #: Median squared distance of the training patches (the unit of a score).
    train_median: float
    #: Slides scoring above this are out of distribution.
    threshold: float

    def patch_scores(self, features: np.ndarray) -> np.ndarray:
        """``(N,)``: each patch's squared Mahalanobis distance to the nearer class, in units
        of the training median."""
        projected = (np.asarray(features, dtype=np.float64) - self.mean) @ self.components.T
        distances = []
        for class_mean in self.class_means:
            delta = projected - class_mean
            distances.append(np.einsum("nk,kl,nl->n", delta, self.precision, delta))
        return np.min(np.stack(distances), axis=0) / self.train_median

    def slide_score(self, features: np.ndarray) -> float:
        """The median patch score of a slide's sampled patches (NaN without patches)."""
        if len(features) == 0:
            return math.nan
        return float(np.median(self.patch_scores(features)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": METHOD,
            "mean": np.round(self.mean, 6).tolist(),
            "components": np.round(self.components, 6).tolist(),
            "class_means": np.round(self.class_means, 6).tolist(),
            "precision": np.round(self.precision, 6).tolist(),
            "train_median": round(self.train_median, 6),
            "threshold": round(self.threshold, 6),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OodModel:
        if data.get("method") != METHOD:
            raise ValueError(f"Unknown out-of-distribution method {data.get('method')!r}")
        mean = np.asarray(data["mean"], dtype=np.float64)
        components = np.asarray(data["components"], dtype=np.float64)
        class_means = np.asarray(data["class_means"], dtype=np.float64)
        precision = np.asarray(data["precision"], dtype=np.float64)
        k = components.shape[0] if components.ndim == 2 else -1
        if (
            mean.ndim != 1
            or components.shape != (k, len(mean))
            or class_means.shape != (2, k)
            or precision.shape != (k, k)
        ):
            raise ValueError("Out-of-distribution model arrays do not fit together")
        model = cls(
            mean,
            components,
            class_means,
            precision,
            float(data["train_median"]),
            float(data["threshold"]),
        )
        if not (model.train_median > 0 and math.isfinite(model.threshold)):
            raise ValueError("Out-of-distribution model needs a positive median and a threshold")
        return model


def fit_ood(features: np.ndarray, labels: np.ndarray, components: int = COMPONENTS) -> OodModel:
    """Fit the feature distribution of training patches (threshold left at infinity: it is
    chosen on out-of-fold scores, see :func:`wsiviewer.training.ood_fit`)."""
    x = np.asarray(features, dtype=np.float64)
    mean = x.mean(axis=0)
    centred = x - mean
    _, _, axes = np.linalg.svd(centred, full_matrices=False)
    k = min(components, axes.shape[0])
    basis = axes[:k]
    projected = centred @ basis.T
    class_means = np.stack([projected[labels == c].mean(axis=0) for c in (0, 1)])
    within = projected - class_means[np.asarray(labels, dtype=int)]
    covariance = within.T @ within / max(1, len(within) - 2)
    # A little shrinkage keeps the inverse stable when a component is nearly flat.
    covariance += np.eye(k) * 1e-6 * np.trace(covariance) / k
    precision = np.linalg.inv(covariance)
    model = OodModel(mean, basis, class_means, precision, 1.0, math.inf)
    median = float(np.median(model.patch_scores(x)))
    return OodModel(mean, basis, class_means, precision, median, math.inf)
