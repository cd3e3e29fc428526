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


def expected_calibration_error(labels: np.ndarray, scores: np.ndarray, bins: int = 15) -> float:
    """ECE of P(IDC) over equal-width bins, weighted by bin size."""
    labels = np.asarray(labels).astype(float)
    scores = np.asarray(scores, dtype=float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(scores, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            total += in_bin.mean() * abs(scores[in_bin].mean() - labels[in_bin].mean())
    return float(total)


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


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The softmax temperature minimising negative log-likelihood (1-D search, log scale)."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels).astype(np.int64)

    def nll(temperature: float) -> float:
        scaled = logits / temperature
        scaled -= scaled.max(axis=1, keepdims=True)
        log_probs = scaled - np.log(np.exp(scaled).sum(axis=1, keepdims=True))
        return float(-log_probs[np.arange(len(labels)), labels].mean())

    from scipy.optimize import minimize_scalar

    result = minimize_scalar(
        lambda log_t: nll(math.exp(log_t)), bounds=(-3.0, 3.0), method="bounded"
    )
    return float(math.exp(result.x))
