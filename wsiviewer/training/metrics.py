"""Classification metrics and the choices made on validation (threshold, temperature)."""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import rankdata


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties counted half); NaN with one class."""
    labels = np.asarray(labels).astype(bool)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return math.nan
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def pr_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Average precision (area under the precision-recall curve, step-wise)."""
    labels = np.asarray(labels).astype(bool)
    if not labels.any():
        return math.nan
    order = np.argsort(-np.asarray(scores), kind="stable")
    hits = labels[order]
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision[hits].sum() / hits.sum())


def confusion(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, int]:
    labels = np.asarray(labels).astype(bool)
    predicted = np.asarray(scores) >= threshold
    return {
        "tp": int((predicted & labels).sum()),
        "fp": int((predicted & ~labels).sum()),
        "tn": int((~predicted & ~labels).sum()),
        "fn": int((~predicted & labels).sum()),
    }


def reliability_bins(
    labels: np.ndarray, scores: np.ndarray, bins: int = 15
) -> list[tuple[float, float, int]]:
    """``(mean P, observed IDC fraction, count)`` of each non-empty equal-width bin of P."""
    labels = np.asarray(labels).astype(float)
    scores = np.asarray(scores, dtype=float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(scores, edges[1:-1]), 0, bins - 1)
    out = []
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            out.append(
                (float(scores[in_bin].mean()), float(labels[in_bin].mean()), int(in_bin.sum()))
            )
    return out


def expected_calibration_error(labels: np.ndarray, scores: np.ndarray, bins: int = 15) -> float:
    """ECE of P(IDC) over equal-width bins, weighted by bin size."""
    total = len(np.asarray(labels))
    return float(
        sum(
            count / total * abs(mean_p - observed)
            for mean_p, observed, count in reliability_bins(labels, scores, bins)
        )
    )


def classification_metrics(
    labels: np.ndarray, scores: np.ndarray, threshold: float
) -> dict[str, float]:
    """Accuracy, precision, sensitivity, specificity, F1, balanced accuracy, AUCs, ECE."""
    c = confusion(labels, scores, threshold)
    tp, fp, tn, fn = c["tp"], c["fp"], c["tn"], c["fn"]
    sensitivity = tp / (tp + fn) if tp + fn else math.nan
    specificity = tn / (tn + fp) if tn + fp else math.nan
    precision = tp / (tp + fp) if tp + fp else math.nan
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else math.nan
    return {
        "accuracy": (tp + tn) / max(1, tp + fp + tn + fn),
        "precision": precision,
        "sensitivity": sensitivity,
        "specificity": specificity,
        "f1": f1,
        "balanced_accuracy": (sensitivity + specificity) / 2,
        "roc_auc": roc_auc(labels, scores),
        "pr_auc": pr_auc(labels, scores),
        "ece": expected_calibration_error(labels, scores),
        **{key: float(value) for key, value in c.items()},
    }


def best_balanced_accuracy_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The threshold that maximises balanced accuracy (midpoint between neighbouring scores)."""
    labels = np.asarray(labels).astype(bool)
    order = np.argsort(-np.asarray(scores), kind="stable")
    sorted_scores = np.asarray(scores)[order]
    hits = labels[order]
    tp = np.cumsum(hits)
    fp = np.cumsum(~hits)
    balanced = (tp / max(1, hits.sum()) + 1 - fp / max(1, (~hits).sum())) / 2
    # Only cut between distinct scores.
    distinct = np.append(sorted_scores[1:] < sorted_scores[:-1], True)
    best = int(np.argmax(np.where(distinct, balanced, -1)))
    below = sorted_scores[best + 1] if best + 1 < len(sorted_scores) else 0.0
    return float((sorted_scores[best] + below) / 2)


def sensitivity_operating_point(
    labels: np.ndarray, scores: np.ndarray, sensitivity: float = 0.9
) -> float:
    """The highest threshold whose sensitivity is at least ``sensitivity``."""
    positives = np.sort(np.asarray(scores)[np.asarray(labels).astype(bool)])
    if len(positives) == 0:
        return 0.5
    index = math.floor((1 - sensitivity) * len(positives))
    return float(positives[min(index, len(positives) - 1)])


def positive_logit(logits: np.ndarray, positive_index: int = 1) -> np.ndarray:
    """The log-odds of the positive class from two-class logits."""
    logits = np.asarray(logits, dtype=np.float64)
    return logits[:, positive_index] - logits[:, 1 - positive_index]


def calibrated_probability(
    logits: np.ndarray, temperature: float, bias: float, positive_index: int = 1
) -> np.ndarray:
    """P(positive) = sigmoid(log-odds / temperature + bias): what the Predictor computes."""
    z = positive_logit(logits, positive_index) / temperature + bias
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * z)))


def fit_platt(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Temperature and bias minimising the negative log-likelihood (Platt scaling).

    Class-weighted training shifts the log-odds by the log of the class-weight ratio; the
    bias undoes that shift and the temperature the network's over- or under-confidence.
    """
    from scipy.optimize import minimize

    z = positive_logit(logits)
    y = np.asarray(labels).astype(np.float64)

    def nll(params: np.ndarray) -> tuple[float, np.ndarray]:
        slope, bias = params
        t = slope * z + bias
        # log(1 + e^t) - y t, and its gradient.
        loss = np.logaddexp(0.0, t) - y * t
        residual = 0.5 * (1.0 + np.tanh(0.5 * t)) - y
        gradient = np.array([(residual * z).mean(), residual.mean()])
        return float(loss.mean()), gradient

    result = minimize(
        nll,
        np.array([1.0, 0.0]),
        jac=True,
        method="L-BFGS-B",
        bounds=[(1 / 20, 20.0), (-10.0, 10.0)],
    )
    slope, bias = (float(v) for v in result.x)
    return 1.0 / slope, bias


#: Metrics that get bootstrap intervals (the confusion counts do not).
INTERVAL_METRICS = (
    "accuracy",
    "precision",
    "sensitivity",
    "specificity",
    "f1",
    "balanced_accuracy",
    "roc_auc",
    "pr_auc",
    "ece",
)


def bootstrap_intervals(
    labels: np.ndarray,
    scores: np.ndarray,
    patients: np.ndarray,
    threshold: float,
    *,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    predicted: np.ndarray | None = None,
) -> dict[str, list[float]]:
    """Percentile intervals of each metric, resampling **patients** with replacement.

    Patches of one patient are correlated, so the patient is the unit of resampling: each
    resample draws as many patients as there are, and takes all of each drawn patient's
    patches. Seeded, so the intervals are reproducible. ``predicted`` (0/1 per patch), when
    given, is the classification the sensitivity, specificity and balanced accuracy count
    (out-of-fold scores classified at each fold's own threshold) instead of
    ``scores >= threshold``.
    """
    labels = np.asarray(labels)
    scores = np.asarray(scores)
    patients = np.asarray(patients)
    ids, inverse = np.unique(patients, return_inverse=True)
    members = [np.flatnonzero(inverse == i) for i in range(len(ids))]
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {key: [] for key in INTERVAL_METRICS}
    for _ in range(resamples):
        drawn = rng.integers(0, len(ids), len(ids))
        index = np.concatenate([members[i] for i in drawn])
        metrics = classification_metrics(labels[index], scores[index], threshold)
        if predicted is not None:
            y, hat = labels[index] == 1, np.asarray(predicted)[index] >= 0.5
            sensitivity = float(hat[y].mean()) if y.any() else math.nan
            specificity = float((~hat[~y]).mean()) if (~y).any() else math.nan
            metrics["sensitivity"], metrics["specificity"] = sensitivity, specificity
            metrics["balanced_accuracy"] = (sensitivity + specificity) / 2
        for key in INTERVAL_METRICS:
            samples[key].append(metrics[key])
    tail = (1 - level) / 2 * 100
    return {
        key: [float(np.nanpercentile(values, tail)), float(np.nanpercentile(values, 100 - tail))]
        for key, values in samples.items()
    }
