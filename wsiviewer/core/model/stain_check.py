"""Knowing when not to trust the model's colours: a slide's stain against the training patients'.

Every slide's colours are standardised to the card's reference before scoring
(:mod:`.colour`). That lookup table maps *any* colours onto H&E-like ones, so a slide stained
otherwise (immunohistochemistry's brown, a special stain, a greyscale or faded scan) would be
scored without a word. The stain check measures how far the slide's tissue colours are from
the training patients' *before* standardisation: the R, G and B percentiles
(:data:`PERCENTILES`) of the same tissue sample the standardisation is fitted on, against one
Gaussian over the training patients' (standardised columns; covariance shrunk by Ledoit-Wolf).
A slide's score is its squared Mahalanobis distance in units of the training patients' median
(1 is a typical patient). The card's threshold is the 99th percentile of the patients'
out-of-fold scores (each scored by a Gaussian fitted without its fold), so about 1 patient in
100 like the training ones is warned.

It checks the stain only. It cannot tell the tissue: a skin or head-and-neck section stained
with H&E passes (measured: ``tools/ood_survey.py``), and no other measure tried separated them
from breast either (the model's report says which).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

#: The method name on the card.
METHOD = "colour-percentile-gaussian"
#: Percentiles (of each channel's 0..100 percentiles) the check compares.
PERCENTILES = (5, 10, 25, 50, 75, 90, 95)


def stain_statistics(quantiles: np.ndarray) -> np.ndarray:
    """``(21,)``: a slide's R, G and B :data:`PERCENTILES` from its ``(3, 101)`` tissue
    percentiles (:func:`~wsiviewer.core.model.colour.slide_quantiles` of the raw sample)."""
    return np.asarray(quantiles, dtype=np.float64)[:, list(PERCENTILES)].ravel()


def ledoit_wolf(centred: np.ndarray) -> np.ndarray:
    """The Ledoit-Wolf covariance of ``centred`` rows: the sample covariance shrunk towards a
    scaled identity by the analytic amount (Ledoit & Wolf 2004), stable with few rows."""
    n, p = centred.shape
    squares = centred**2
    variances = squares.sum(0) / n
    mu = variances.sum() / p
    delta_ = float(((centred.T @ centred) ** 2).sum()) / n**2
    beta = (float((squares.T @ squares).sum()) / n - delta_) / (p * n)
    delta = (delta_ - 2 * mu * variances.sum() + p * mu**2) / p
    shrinkage = 0.0 if delta <= 0 else min(beta, delta) / delta
    return (1 - shrinkage) * (centred.T @ centred / n) + shrinkage * mu * np.eye(p)


@dataclass(frozen=True)
class StainCheck:
    """The training patients' stain statistics, and the distance of an unusual slide."""

    #: ``(21,)`` mean and scale of the patients' statistics (columns standardised by them).
    mean: np.ndarray
    scale: np.ndarray
    #: ``(21, 21)`` inverse of the shrunk covariance of the standardised statistics.
    precision: np.ndarray
    #: Median squared distance of the training patients (the unit of a score).
    unit: float
    #: Slides scoring above this are warned.
    threshold: float

    def score(self, quantiles: np.ndarray) -> float:
        """A slide's squared distance from its ``(3, 101)`` tissue percentiles, in units of
        the training patients' median."""
        return float(self.distances(stain_statistics(quantiles)[None])[0])

    def distances(self, statistics: np.ndarray) -> np.ndarray:
        """``(N,)`` scores of ``(N, 21)`` stain statistics."""
        z = (np.asarray(statistics, dtype=np.float64) - self.mean) / self.scale
        return np.einsum("nk,kl,nl->n", z, self.precision, z) / self.unit

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": METHOD,
            "percentiles": list(PERCENTILES),
            "mean": np.round(self.mean, 6).tolist(),
            "scale": np.round(self.scale, 6).tolist(),
            "precision": np.round(self.precision, 6).tolist(),
            "unit": round(self.unit, 6),
            "threshold": round(self.threshold, 6),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StainCheck:
        if data.get("method") != METHOD:
            raise ValueError(f"Unknown stain check {data.get('method')!r}")
        if list(data.get("percentiles", [])) != list(PERCENTILES):
            raise ValueError(f"Stain check percentiles must be {list(PERCENTILES)}")
        p = 3 * len(PERCENTILES)
        mean = np.asarray(data["mean"], dtype=np.float64)
        scale = np.asarray(data["scale"], dtype=np.float64)
        precision = np.asarray(data["precision"], dtype=np.float64)
        if mean.shape != (p,) or scale.shape != (p,) or precision.shape != (p, p):
            raise ValueError(f"Stain check arrays must be {p}, {p} and {p}×{p} long")
        unit, threshold = float(data["unit"]), float(data["threshold"])
        arrays_finite = all(np.isfinite(a).all() for a in (mean, scale, precision))
        if not (arrays_finite and (scale > 0).all() and unit > 0 and math.isfinite(threshold)):
            raise ValueError("Stain check needs finite arrays, positive scales and unit")
        return cls(mean, scale, precision, unit, threshold)


def fit_stain_check(statistics: np.ndarray, threshold: float = math.inf) -> StainCheck:
    """The Gaussian of ``(N, 21)`` training patients' stain statistics (the threshold is
    chosen on out-of-fold scores: :mod:`wsiviewer.training.ood_fit`)."""
    x = np.asarray(statistics, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != 3 * len(PERCENTILES) or len(x) < 3:
        raise ValueError(f"A stain check needs at least 3 slides' statistics, got {x.shape}")
    mean = x.mean(axis=0)
    scale = np.maximum(x.std(axis=0), 1e-6)
    precision = np.linalg.pinv(ledoit_wolf((x - mean) / scale))
    check = StainCheck(mean, scale, precision, 1.0, threshold)
    unit = float(np.median(check.distances(x)))
    return StainCheck(mean, scale, precision, max(unit, 1e-12), threshold)


def unusual_stain_note(score: float, threshold: float) -> str:
    """The warning of a slide whose tissue colours are unlike the training patients'."""
    return (
        f"This slide's tissue colours are unlike the training patients' (stain check "
        f"{score:.1f}, above {threshold:.1f}): it may not be H&E, or be stained or scanned "
        "very differently, and its probabilities should not be trusted"
    )


def describe_stain_check(check: StainCheck | None) -> str:
    """One sentence for the About page and the Model panel: what is checked before scoring."""
    if check is None:
        return "This model's card has no stain check: slides are scored without one."
    return (
        "Before scoring, a slide's tissue colours are compared with the training patients' "
        f"(stain check): above {check.threshold:.1f}, where about 1 training patient in 100 "
        "lies, the analysis warns that the slide may not be H&E or is stained very "
        "differently. It checks the stain only, not the tissue: an H&E section of another "
        "organ passes."
    )
