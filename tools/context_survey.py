"""Context candidates beyond the card's Gaussian, measured out of fold on a crossval run.

    python tools/context_survey.py CROSSVAL_RUN [PATIENTS_CSV]

A development tool, not part of the installed package. On the complete patients' out-of-fold
maps (each fold model's log-odds on its calibrated scale, :func:`~wsiviewer.training.crossval.
calibrated_folds`), every candidate is fitted on the other folds' complete patients and scores
a fold's own (cross-fitting), as :mod:`wsiviewer.training.context_fit` measures the Gaussian:

- the shipped family, a Gaussian-weighted neighbourhood (weight 0.75, σ 1.5 cells);
- a second-stage logistic regression on each cell's log-odds and its neighbourhood means at
  several scales (optionally with the local maximum, spread and tissue density);

and, at patch level on every patient, per-slide normalisation of the log-odds (subtracting a
share of the patient's median or lower percentile). Prints one table; the README's candidate
table quotes it. PATIENTS_CSV defaults to ``../shared/data/idc_patients.csv``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import gaussian_filter, maximum_filter

from wsiviewer.training.context_fit import PatientMap, evaluate_candidate, patient_maps
from wsiviewer.training.crossval import FoldScores, PatientFolds, calibrated_folds
from wsiviewer.training.dataset import read_complete_patients
from wsiviewer.training.metrics import best_balanced_accuracy_threshold, roc_auc

#: Second-stage candidates: neighbourhood scales (cells of 200 µm) and whether the local
#: maximum, spread and tissue density join them.
STACKS: dict[str, tuple[tuple[float, ...], bool]] = {
    "2 scales (1.5, 4)": ((1.5, 4.0), False),
    "3 scales (1, 2, 4)": ((1.0, 2.0, 4.0), False),
    "4 scales (0.75, 1.5, 3, 6)": ((0.75, 1.5, 3.0, 6.0), False),
    "3 scales + max, spread, density": ((1.0, 2.0, 4.0), True),
}


def _neighbourhood(z: np.ndarray, present: np.ndarray, sigma: float) -> tuple[np.ndarray, ...]:
    """Normalised Gaussian mean of ``z`` over present cells, and the present cells' density."""
    values = np.where(present, z, 0.0)
    numerator = gaussian_filter(values, sigma, mode="constant", truncate=3.0)
    density = gaussian_filter(present.astype(np.float64), sigma, mode="constant", truncate=3.0)
    mean = np.divide(numerator, density, out=np.zeros_like(values), where=density > 1e-9)
    return mean, density


def _features(patient_map: PatientMap, scales: Sequence[float], extras: bool) -> np.ndarray:
    z = patient_map.log_odds
    present = ~np.isnan(z)
    columns = [np.where(present, z, 0.0)]
    for sigma in scales:
        mean, density = _neighbourhood(z, present, sigma)
        columns.append(mean)
        if extras:
            columns.append(density)
    if extras:
        columns.append(maximum_filter(np.where(present, z, -20.0), size=3))
        mean, _ = _neighbourhood(z, present, 1.5)
        square, _ = _neighbourhood(z**2, present, 1.5)
        columns.append(np.sqrt(np.maximum(square - mean**2, 0.0)))
    return np.stack([c[patient_map.scored] for c in columns], axis=1)


def _logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-3) -> Callable[[np.ndarray], np.ndarray]:
    """L2-penalised logistic regression on standardised columns (L-BFGS); returns log-odds."""
    xt = torch.tensor(x, dtype=torch.float64)
    yt = torch.tensor(y, dtype=torch.float64)
    mean, scale = xt.mean(0), xt.std(0) + 1e-9
    weights = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([weights, bias], max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        logits = (xt - mean) / scale @ weights + bias
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, yt)
        loss = loss + l2 * (weights**2).sum()
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    optimiser.step(closure)  # type: ignore[no-untyped-call]

    def predict(new: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = (torch.tensor(new, dtype=torch.float64) - mean) / scale @ weights + bias
        return out.numpy()

    return predict


def stack_figures(
    maps: Sequence[PatientMap], scales: Sequence[float], extras: bool
) -> dict[str, float]:
    """Pooled ROC AUC, balanced accuracy and Dice of a second-stage model, cross-fitted."""
    probabilities, labels, flagged = [], [], []
    for fold in sorted({m.fold for m in maps}):
        train = [m for m in maps if m.fold != fold]
        x = np.concatenate([_features(m, scales, extras) for m in train])
        y = np.concatenate([m.labels[m.scored] for m in train])
        model = _logistic(x, y)
        threshold = best_balanced_accuracy_threshold(y, 1 / (1 + np.exp(-model(x))))
        for patient_map in (m for m in maps if m.fold == fold):
            p = 1 / (1 + np.exp(-model(_features(patient_map, scales, extras))))
            probabilities.append(p)
            labels.append(patient_map.labels[patient_map.scored])
            flagged.append(p >= threshold)
    p, y, hat = np.concatenate(probabilities), np.concatenate(labels), np.concatenate(flagged)
    positive = y == 1
    return {
        "roc_auc": roc_auc(y, p),
        "balanced_accuracy": (hat[positive].mean() + (~hat[~positive]).mean()) / 2,
        "dice": 2 * (hat & positive).sum() / (hat.sum() + positive.sum()),
    }


def slide_normalisation(scores: Sequence[FoldScores]) -> list[tuple[str, float, float]]:
    """Pooled patch ROC AUC after subtracting ``share`` × a patient statistic of its log-odds."""
    calibrated = calibrated_folds(scores)
    z = np.concatenate([s.log_odds for s in calibrated])
    y = np.concatenate([s.labels for s in calibrated])
    patients = np.concatenate([s.patients for s in calibrated])
    rows = []
    for name, quantile in (("median", 0.5), ("25th percentile", 0.25), ("10th percentile", 0.1)):
        centre = np.zeros_like(z)
        for patient in np.unique(patients):
            mine = patients == patient
            centre[mine] = np.quantile(z[mine], quantile)
        for share in (0.0, 0.25, 0.5, 1.0):
            rows.append((name, share, roc_auc(y, z - share * centre)))
    return rows


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    run = Path(argv[0])
    csv = Path(argv[1]) if len(argv) > 1 else Path("../shared/data/idc_patients.csv")
    folds = PatientFolds.load(run / "folds.json")
    scores = [FoldScores.load(run / f"fold-{k}.npz", k) for k in range(len(folds))]
    maps = patient_maps(calibrated_folds(scores), read_complete_patients(csv))
    print(f"Complete patients' out-of-fold maps: {len(maps)} patients, cross-fitted by fold")
    print(f"{'candidate':<44} {'ROC AUC':>8} {'bal. acc.':>9} {'Dice':>6}")
    gaussian = evaluate_candidate(maps, 0.75, 1.5)
    print(
        f"{'Gaussian, weight 0.75, sigma 1.5 cells':<44} {gaussian['roc_auc']:>8.4f} "
        f"{gaussian['balanced_accuracy']:>9.4f} {gaussian['dice_pooled']:>6.4f}"
    )
    for name, (scales, extras) in STACKS.items():
        figures = stack_figures(maps, scales, extras)
        print(
            f"{'logistic, ' + name:<44} {figures['roc_auc']:>8.4f} "
            f"{figures['balanced_accuracy']:>9.4f} {figures['dice']:>6.4f}"
        )
    print("\nPer-slide normalisation, every patient, patch level (pooled ROC AUC):")
    for name, share, auc in slide_normalisation(scores):
        print(f"  minus {share:<4g} × the patient's {name:<16} {auc:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
