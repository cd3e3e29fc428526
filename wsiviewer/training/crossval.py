"""Patient-level cross-validation: the ground for every choice of the training recipe.

The patients are dealt into k folds (stratified by completeness and IDC fraction, seeded). Each
fold's model trains on the other folds' patients, 10 % of them held back as its *validation
patients*, and scores its own fold's patients, once: every patient gets an out-of-fold score
from a model that never saw it. Pooled, these give the recipe's expected performance on new
patients, and the threshold and context settings of the final model are fitted on them.

Each model is calibrated on its own validation patients (Platt scaling; they also chose its
epoch), as the final model is on its own: models trained alike still differ in their
log-odds' scale and offset, so one calibration fitted on other models' scores fits a model
badly (pooled ROC AUC 0.871 against 0.908 on the 5 folds of ``resnet8-cv``). The threshold of
fold k is chosen on the *other* folds' calibrated scores (cross-fitting), so no fold's figures
use its own labels for a choice.

A run writes one folder: ``folds.json`` (the patients of each fold), and per fold
``fold-<k>.npz`` (its out-of-fold log-odds and its validation patients'), ``fold-<k>.json``
(normalisation, colour reference, epochs) and ``fold-<k>.safetensors`` (weights), plus a
checkpoint while it trains: an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import math
from collections.abc import Generator, Sequence
from dataclasses import dataclass, replace
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
    """One fold's out-of-fold scores: raw IDC log-odds of its patients' patches; and those of
    the fold model's own validation patients, which calibrate it."""

    fold: int
    patients: np.ndarray
    labels: np.ndarray
    log_odds: np.ndarray
    best_epoch: int
    epochs_run: int
    #: ``(N, 2)`` patch positions on their patients' slides (see :class:`PatchSet`).
    xy: np.ndarray
    #: Raw log-odds and labels of the validation patients' patches (``None``: a run of an
    #: older version; :func:`add_validation_scores` computes them).
    validation_log_odds: np.ndarray | None = None
    validation_labels: np.ndarray | None = None

    def save(self, path: Path) -> None:
        arrays: dict[str, Any] = {
            "patients": self.patients.astype(str),
            "labels": self.labels,
            "log_odds": self.log_odds.astype(np.float32),
            "best_epoch": np.array(self.best_epoch),
            "epochs_run": np.array(self.epochs_run),
            "xy": self.xy,
        }
        if self.validation_log_odds is not None and self.validation_labels is not None:
            arrays["validation_log_odds"] = self.validation_log_odds.astype(np.float32)
            arrays["validation_labels"] = self.validation_labels
        with atomic_path(path) as temporary, temporary.open("wb") as handle:
            np.savez(handle, **arrays)

    @classmethod
    def load(cls, path: Path, fold: int) -> FoldScores:
        with np.load(path) as data:
            has_validation = "validation_log_odds" in data.files
            return cls(
                fold,
                data["patients"],
                data["labels"],
                data["log_odds"],
                int(data["best_epoch"]),
                int(data["epochs_run"]),
                data["xy"],
                data["validation_log_odds"] if has_validation else None,
                data["validation_labels"] if has_validation else None,
            )

    def own_calibration(self) -> Calibration | None:
        """Platt scaling fitted on the fold model's validation patients (``None`` without
        their scores, or with one class among them)."""
        if self.validation_log_odds is None or self.validation_labels is None:
            return None
        if len(set(self.validation_labels.tolist())) < 2:
            return None
        return fit_calibration(self.validation_log_odds, self.validation_labels)


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
        train_patients, validation_patients = hold_back_validation(
            patch_set, folds.training(fold), complete, settings.seed
        )
        data = patch_set
        reference = None
        if colour:
            reference = ColourReference.mean_of([quantiles[p] for p in train_patients])
            data = standardise_colours(patch_set, quantiles, reference)
        validation = data.subset(validation_patients)
        run = train(
            data.subset(train_patients),
            validation,
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
            raw_log_odds(result.model, result.mean, result.std, held.pixels, device),
            result.best_epoch,
            len(result.history),
            held.xy if held.xy is not None else np.zeros((len(held), 2), np.int64),
            raw_log_odds(result.model, result.mean, result.std, validation.pixels, device),
            validation.labels,
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


def hold_back_validation(
    patch_set: PatchSet, patients: Sequence[str], complete: set[str] | None, seed: int
) -> tuple[list[str], list[str]]:
    """``patients`` as every model of a recipe is trained on them: ``(training, validation)``,
    :data:`EARLY_STOPPING_FRACTION` of them held back for early stopping and calibration
    (stratified like :func:`split_patients`, seeded)."""
    inner = split_patients(
        patch_set.subset(list(patients)),
        complete,
        seed=seed,
        test_fraction=0.0,
        validation_fraction=EARLY_STOPPING_FRACTION,
    )
    return [*inner.train, *inner.test], list(inner.validation)


def add_validation_scores(
    patch_set: PatchSet, run_dir: Path, complete: set[str] | None, device: torch.device
) -> list[FoldScores]:
    """The run's fold scores, each with its validation patients' scores: a run of an older
    version lacks them, so they are computed from the fold's saved weights (its validation
    patients dealt again by the same seeded rule) and saved with the fold's scores."""
    from safetensors.torch import load_file

    from wsiviewer.core.model.networks import build_model

    folds = PatientFolds.load(run_dir / "folds.json")
    settings = json.loads((run_dir / "recipe.json").read_text())["settings"]
    scores = [FoldScores.load(run_dir / f"fold-{k}.npz", k) for k in range(len(folds))]
    quantiles: dict[str, np.ndarray] | None = None
    out = []
    for fold in scores:
        if fold.validation_log_odds is not None:
            out.append(fold)
            continue
        record = json.loads((run_dir / f"fold-{fold.fold}.json").read_text())
        _, patients = hold_back_validation(
            patch_set, folds.training(fold.fold), complete, int(settings["seed"])
        )
        validation = patch_set.subset(patients)
        if record.get("colour") is not None:
            quantiles = quantiles if quantiles is not None else patient_quantiles(patch_set)
            reference = ColourReference.from_dict(record["colour"])
            validation = standardise_colours(validation, quantiles, reference)
        model = build_model(settings["architecture"], settings["architecture_args"])
        model.load_state_dict(load_file(run_dir / f"fold-{fold.fold}.safetensors"))
        model.to(device)
        normalization = record["normalization"]
        fold = replace(
            fold,
            validation_log_odds=raw_log_odds(
                model, normalization["mean"], normalization["std"], validation.pixels, device
            ),
            validation_labels=validation.labels,
        )
        fold.save(run_dir / f"fold-{fold.fold}.npz")
        out.append(fold)
    return out


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


def raw_log_odds(
    model: torch.nn.Module,
    mean: Sequence[float],
    std: Sequence[float],
    pixels: np.ndarray,
    device: torch.device,
) -> np.ndarray:
    """A model's uncalibrated IDC log-odds of ``pixels`` (normalised by ``mean``, ``std``)."""
    from wsiviewer.training.train import predict_logits

    mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    logits = predict_logits(model, pixels, mean_t, std_t, device)
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


def fold_calibration(scores: Sequence[FoldScores], fold: FoldScores) -> Calibration:
    """The calibration of ``fold``'s model: its own (:meth:`FoldScores.own_calibration`);
    for a run without validation scores, fitted on the other folds' out-of-fold scores."""
    own = fold.own_calibration()
    if own is not None:
        return own
    others = [s for s in scores if s.fold != fold.fold]
    return fit_calibration(
        np.concatenate([s.log_odds for s in others]), np.concatenate([s.labels for s in others])
    )


def calibrated_folds(scores: Sequence[FoldScores]) -> list[FoldScores]:
    """The folds with their out-of-fold log-odds on the calibrated scale (``z / T + b`` of
    each fold model's :func:`fold_calibration`): comparable across folds, as the final
    model's calibrated log-odds are with them."""
    out = []
    for fold in scores:
        calibration = fold_calibration(scores, fold)
        calibrated = fold.log_odds.astype(np.float64) / calibration.temperature + calibration.bias
        out.append(replace(fold, log_odds=calibrated))
    return out


def out_of_fold_probabilities(scores: Sequence[FoldScores]) -> list[np.ndarray]:
    """Each fold's calibrated out-of-fold P(IDC), in the order of ``scores``."""
    return [_sigmoid(fold.log_odds) for fold in calibrated_folds(scores)]


def cross_fitted_thresholds(
    scores: Sequence[FoldScores], probabilities: Sequence[np.ndarray]
) -> list[float]:
    """Each fold's threshold of the best balanced accuracy, chosen on the *other* folds'
    calibrated ``probabilities``."""
    thresholds = []
    for index in range(len(scores)):
        others = [k for k in range(len(scores)) if k != index]
        thresholds.append(
            best_balanced_accuracy_threshold(
                np.concatenate([scores[k].labels for k in others]),
                np.concatenate([probabilities[k] for k in others]),
            )
        )
    return thresholds


def out_of_fold_figures(
    scores: Sequence[FoldScores], *, bootstrap: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Out-of-fold metrics: per fold (each model calibrated on its validation patients, its
    threshold cross-fitted on the other folds), their mean and spread, and pooled over every
    patient with 95 % intervals bootstrapped over patients; the per-patient table."""
    if len(scores) < 2:
        raise DatasetError("Out-of-fold figures need at least two folds")
    per_fold: list[dict[str, Any]] = []
    pooled_p = out_of_fold_probabilities(scores)
    thresholds = cross_fitted_thresholds(scores, pooled_p)
    pooled_y, pooled_patients = [], []
    for fold, p, threshold in zip(scores, pooled_p, thresholds, strict=True):
        per_fold.append(
            {
                "fold": fold.fold,
                "patients": len(set(fold.patients.tolist())),
                "patches": len(fold.labels),
                "threshold": threshold,
                "best_epoch": fold.best_epoch,
                **classification_metrics(fold.labels, p, threshold),
            }
        )
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
