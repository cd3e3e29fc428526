"""Patient-level cross-validation: the ground for every choice of the training recipe.

The patients are dealt into k folds (stratified by completeness and IDC fraction, seeded). Each
fold's model trains on the other folds' patients (10 % of them held back for early stopping)
and scores its own fold's patients, once: every patient gets an out-of-fold score from a model
that never saw it. Pooled, these give the recipe's expected performance on new patients, and
the calibration, threshold and context settings of the final model are fitted on them.

For the figures of fold k, the calibration and threshold are fitted on the *other* folds'
out-of-fold scores (cross-fitting), so no fold's figures use its own labels for a choice.

A run writes one folder: ``folds.json`` (the patients of each fold), and per fold
``fold-<k>.npz`` (its out-of-fold log-odds), ``fold-<k>.json`` (normalisation, colour
reference, epochs) and ``fold-<k>.safetensors`` (weights), plus a checkpoint while it trains:
an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import math
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsiviewer.core.atomic import atomic_path, atomic_write_text
from wsiviewer.core.model.colour import (
    ColourReference,
    apply_table,
    lookup_table,
    sample_cells,
    slide_quantiles,
)
from wsiviewer.errors import DatasetError
from wsiviewer.training.dataset import PatchSet, patient_key, split_patients
from wsiviewer.training.metrics import (
    best_balanced_accuracy_threshold,
    bootstrap_intervals,
    classification_metrics,
    fit_platt,
    roc_auc,
    sensitivity_operating_point,
)
from wsiviewer.training.train import EpochReport, TrainingResult, TrainingSettings, train

#: Fraction of a fold's training patients held back for early stopping.
EARLY_STOPPING_FRACTION = 0.1


@dataclass(frozen=True)
class PatientFolds:
    """The patients of each fold, and the seed and rule that dealt them."""

    folds: tuple[tuple[str, ...], ...]
    seed: int

    def __len__(self) -> int:
        return len(self.folds)

    def training(self, fold: int) -> list[str]:
        return [p for k, patients in enumerate(self.folds) if k != fold for p in patients]

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": "by patient; stratified by completeness and IDC fraction (quartiles); "
            "dealt round-robin within each stratum after a seeded shuffle",
            "seed": self.seed,
            "folds": [list(fold) for fold in self.folds],
        }

    def save(self, path: Path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> PatientFolds:
        try:
            data = json.loads(path.read_text())
            folds = tuple(tuple(str(p) for p in fold) for fold in data["folds"])
            return cls(folds, int(data["seed"]))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DatasetError(f"Cannot read the patient folds {path}: {exc}") from exc


def make_folds(
    patch_set: PatchSet, complete: set[str], k: int = 5, *, seed: int = 0
) -> PatientFolds:
    """Deal the patients into ``k`` folds, stratified like :func:`split_patients`."""
    ids = patch_set.patient_ids
    if len(ids) < k:
        raise DatasetError(f"{len(ids)} patients are too few for {k} folds")
    fraction = {p: float(patch_set.labels[patch_set.patients == p].mean()) for p in ids}
    quartiles = np.quantile(list(fraction.values()), [0.25, 0.5, 0.75])
    strata: dict[tuple[bool, int], list[str]] = {}
    for patient in ids:
        key = (patient in complete, int(np.searchsorted(quartiles, fraction[patient])))
        strata.setdefault(key, []).append(patient)
    rng = np.random.default_rng(seed)
    folds: list[list[str]] = [[] for _ in range(k)]
    dealt = 0
    for key in sorted(strata):
        members = list(strata[key])
        rng.shuffle(members)
        for member in members:
            folds[dealt % k].append(member)
            dealt += 1
    return PatientFolds(tuple(tuple(sorted(f, key=patient_key)) for f in folds), seed)


# --------------------------------------------------------------------------- colour


def patient_quantiles(patch_set: PatchSet, seed: int = 0) -> dict[str, np.ndarray]:
    """Each patient's colour percentiles, from a sample of its patches as a slide's analysis
    samples its tissue cells (:mod:`wsiviewer.core.model.colour`)."""
    out: dict[str, np.ndarray] = {}
    for patient in patch_set.patient_ids:
        index = np.flatnonzero(patch_set.patients == patient)
        out[patient] = slide_quantiles(patch_set.pixels[index[sample_cells(len(index), seed)]])
    return out


def standardise_colours(
    patch_set: PatchSet, quantiles: dict[str, np.ndarray], reference: ColourReference
) -> PatchSet:
    """Every patient's patches mapped onto ``reference`` by its own lookup table."""
    pixels = patch_set.pixels.copy()
    for patient in patch_set.patient_ids:
        index = np.flatnonzero(patch_set.patients == patient)
        pixels[index] = apply_table(pixels[index], lookup_table(quantiles[patient], reference))
    return PatchSet(pixels, patch_set.labels, patch_set.patients, xy=patch_set.xy)


# --------------------------------------------------------------------------- folds


@dataclass(frozen=True)
class FoldScores:
    """One fold's out-of-fold scores: raw IDC log-odds of its patients' patches."""

    fold: int
    patients: np.ndarray
    labels: np.ndarray
    log_odds: np.ndarray
    best_epoch: int
    epochs_run: int
    #: ``(N, 2)`` patch positions on their patients' slides (see :class:`PatchSet`).
    xy: np.ndarray

    def save(self, path: Path) -> None:
        with atomic_path(path) as temporary, temporary.open("wb") as handle:
            np.savez(
                handle,
                patients=self.patients.astype(str),
                labels=self.labels,
                log_odds=self.log_odds.astype(np.float32),
                best_epoch=np.array(self.best_epoch),
                epochs_run=np.array(self.epochs_run),
                xy=self.xy,
            )

    @classmethod
    def load(cls, path: Path, fold: int) -> FoldScores:
        with np.load(path) as data:
            return cls(
                fold,
                data["patients"],
                data["labels"],
                data["log_odds"],
                int(data["best_epoch"]),
                int(data["epochs_run"]),
                data["xy"],
            )


@dataclass(frozen=True)
class CrossValidationProgress:
    """A fold started, or an epoch of a fold finished (``report``)."""

    fold: int
    folds: int
    report: EpochReport | None = None


def cross_validate(
    patch_set: PatchSet,
    folds: PatientFolds,
    settings: TrainingSettings,
    out_dir: Path,
    device: torch.device,
    *,
    complete: set[str] | None = None,
    colour: bool = True,
    only: Sequence[int] | None = None,
) -> Generator[CrossValidationProgress, None, list[FoldScores]]:
    """Train and score every fold (or those in ``only``), resuming what ``out_dir`` holds.

    Returns the folds' scores in fold order (folds not run and not on disk are left out).
    """
    from wsiviewer.core.model.weights import write_model

    out_dir.mkdir(parents=True, exist_ok=True)
    folds.save(out_dir / "folds.json")
    quantiles = patient_quantiles(patch_set) if colour else {}
    scores: list[FoldScores] = []
    for fold in range(len(folds)):
        done = out_dir / f"fold-{fold}.npz"
        if done.is_file():
            scores.append(FoldScores.load(done, fold))
            continue
        if only is not None and fold not in only:
            continue
        yield CrossValidationProgress(fold, len(folds))
        rest = patch_set.subset(folds.training(fold))
        inner = split_patients(
            rest,
            complete,
            seed=settings.seed,
            test_fraction=0.0,
            validation_fraction=EARLY_STOPPING_FRACTION,
        )
        train_patients = [*inner.train, *inner.test]
        data = patch_set
        reference = None
        if colour:
            reference = ColourReference.mean_of([quantiles[p] for p in train_patients])
            data = standardise_colours(patch_set, quantiles, reference)
        run = train(
            data.subset(train_patients),
            data.subset(inner.validation),
            settings,
            device,
            checkpoint=out_dir / f"fold-{fold}.checkpoint",
        )
        result = yield from _relay_epochs(run, fold, len(folds))
        held = data.subset(folds.folds[fold])
        fold_scores = FoldScores(
            fold,
            held.patients,
            held.labels,
            _log_odds(result, held.pixels, device),
            result.best_epoch,
            len(result.history),
            held.xy if held.xy is not None else np.zeros((len(held), 2), np.int64),
        )
        record = {
            "normalization": {"mean": list(result.mean), "std": list(result.std)},
            "colour": None if reference is None else reference.to_dict(),
            "best_epoch": result.best_epoch,
            "epochs_run": len(result.history),
            "validation_auc_by_epoch": [r.validation_auc for r in result.history],
            "train_loss_by_epoch": [r.train_loss for r in result.history],
            "epoch_seconds": [round(r.seconds, 1) for r in result.history],
        }
        write_model(result.model.cpu(), out_dir, {"name": f"fold-{fold}", **record})
        fold_scores.save(done)
        (out_dir / f"fold-{fold}.checkpoint").unlink(missing_ok=True)
        scores.append(fold_scores)
    return scores


def _relay_epochs(
    run: Generator[EpochReport, None, TrainingResult], fold: int, folds: int
) -> Generator[CrossValidationProgress, None, TrainingResult]:
    try:
        while True:
            try:
                report = next(run)
            except StopIteration as finished:
                result: TrainingResult = finished.value
                return result
            yield CrossValidationProgress(fold, folds, report)
    finally:
        run.close()


def _log_odds(result: TrainingResult, pixels: np.ndarray, device: torch.device) -> np.ndarray:
    from wsiviewer.training.train import predict_logits

    mean = torch.tensor(result.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    std = torch.tensor(result.std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    logits = predict_logits(result.model, pixels, mean, std, device)
    return (logits[:, 1] - logits[:, 0]).astype(np.float32)


# --------------------------------------------------------------------------- figures


def _sigmoid(values: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-values))


@dataclass(frozen=True)
class Calibration:
    """Platt scaling of log-odds and the choices made on the same scores."""

    temperature: float
    bias: float
    threshold: float
    sensitive_threshold: float

    def probabilities(self, log_odds: np.ndarray) -> np.ndarray:
        return _sigmoid(np.asarray(log_odds, dtype=np.float64) / self.temperature + self.bias)


def fit_calibration(log_odds: np.ndarray, labels: np.ndarray) -> Calibration:
    """Platt scaling, the threshold of the best balanced accuracy and the ≥ 0.90-sensitivity
    operating point, all fitted on these scores."""
    z = np.asarray(log_odds, dtype=np.float64)
    temperature, bias = fit_platt(np.stack([np.zeros_like(z), z], axis=1), labels)
    p = _sigmoid(z / temperature + bias)
    return Calibration(
        temperature,
        bias,
        best_balanced_accuracy_threshold(labels, p),
        sensitivity_operating_point(labels, p, 0.9),
    )


def out_of_fold_figures(
    scores: Sequence[FoldScores], *, bootstrap: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Out-of-fold metrics: per fold (calibration and threshold cross-fitted on the other
    folds), their mean and spread, and pooled over every patient with 95 % intervals
    bootstrapped over patients; the per-patient table."""
    if len(scores) < 2:
        raise DatasetError("Out-of-fold figures need at least two folds")
    per_fold: list[dict[str, Any]] = []
    pooled_p, pooled_y, pooled_patients = [], [], []
    thresholds = []
    for fold in scores:
        others = [s for s in scores if s.fold != fold.fold]
        calibration = fit_calibration(
            np.concatenate([s.log_odds for s in others]),
            np.concatenate([s.labels for s in others]),
        )
        p = calibration.probabilities(fold.log_odds)
        per_fold.append(
            {
                "fold": fold.fold,
                "patients": len(set(fold.patients.tolist())),
                "patches": len(fold.labels),
                "threshold": calibration.threshold,
                "best_epoch": fold.best_epoch,
                **classification_metrics(fold.labels, p, calibration.threshold),
            }
        )
        thresholds.append(calibration.threshold)
        pooled_p.append(p)
        pooled_y.append(fold.labels)
        pooled_patients.append(fold.patients)
    p = np.concatenate(pooled_p)
    y = np.concatenate(pooled_y)
    patients = np.concatenate(pooled_patients)
    # Pooled at each fold's own cross-fitted threshold: classify, then count over folds.
    predicted = np.concatenate(
        [pp >= t for pp, t in zip(pooled_p, thresholds, strict=True)]
    ).astype(np.float64)
    pooled = classification_metrics(y, p, 0.5) | _counts_at(y, predicted)
    keys = ("roc_auc", "pr_auc", "balanced_accuracy", "sensitivity", "specificity", "ece")
    return {
        "folds": per_fold,
        "fold_mean": {key: float(np.mean([f[key] for f in per_fold])) for key in keys},
        "fold_sd": {key: float(np.std([f[key] for f in per_fold], ddof=1)) for key in keys},
        "pooled": pooled,
        "pooled_intervals_95": bootstrap_intervals(
            y,
            p,
            patients,
            float(np.median(thresholds)),
            resamples=bootstrap,
            seed=seed,
            predicted=predicted,
        ),
        "patients": per_patient_table(y, p, patients, predicted),
    }


def _counts_at(labels: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    positive = labels == 1
    tp = float((predicted[positive] == 1).sum())
    fn = float(positive.sum() - tp)
    tn = float((predicted[~positive] == 0).sum())
    fp = float((~positive).sum() - tn)
    sensitivity = tp / (tp + fn) if tp + fn else math.nan
    specificity = tn / (tn + fp) if tn + fp else math.nan
    return {
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "sensitivity": sensitivity,
        "specificity": specificity,
        "balanced_accuracy": (sensitivity + specificity) / 2,
        "accuracy": (tp + tn) / max(1.0, tp + fp + tn + fn),
    }


def per_patient_table(
    labels: np.ndarray, scores: np.ndarray, patients: np.ndarray, predicted: np.ndarray
) -> list[dict[str, Any]]:
    """One row per patient: patches, IDC fraction, mean P, ROC AUC (NaN for one class),
    balanced accuracy at the cross-fitted threshold."""
    rows = []
    for patient in sorted(set(patients.tolist()), key=patient_key):
        sel = patients == patient
        y, p, hat = labels[sel], scores[sel], predicted[sel]
        both = 0 < y.sum() < len(y)
        counts = _counts_at(y, hat)
        rows.append(
            {
                "patient": patient,
                "patches": int(sel.sum()),
                "idc_fraction": float(y.mean()),
                "mean_p": float(p.mean()),
                "roc_auc": roc_auc(y, p) if both else math.nan,
                "balanced_accuracy": counts["balanced_accuracy"] if both else math.nan,
            }
        )
    return rows
