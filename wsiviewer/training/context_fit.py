"""Choosing the spatial context on the folds: complete patients' out-of-fold maps.

A complete patient's patches tile back into its whole tissue section, so its out-of-fold
log-odds (calibrated by their fold model's own calibration, :func:`~.crossval.calibrated_folds`)
form a map on which neighbourhood smoothing can be measured (the other patients are random
subsamples: their neighbours are missing). Each candidate of :data:`CANDIDATES` is scored on
every fold's complete patients with the recalibration of the smoothed map fitted on the other
folds' complete patients (cross-fitting); the candidate with the best pooled ROC AUC wins, a simpler
one (less smoothing) where the difference is within :data:`TIE_AUC`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from wsiviewer.core.model.context import ContextSettings, smooth_log_odds
from wsiviewer.training.crossval import FoldScores, fit_calibration
from wsiviewer.training.idc import PATCH_SIZE
from wsiviewer.training.metrics import (
    best_balanced_accuracy_threshold,
    classification_metrics,
    roc_auc,
)

#: ``(weight, sigma in cells)``: none, then Gaussian-weighted neighbourhoods.
CANDIDATES: tuple[tuple[float, float], ...] = (
    (0.0, 1.0),
    (0.5, 1.0),
    (0.5, 1.5),
    (0.75, 1.0),
    (0.75, 1.5),
    (1.0, 0.75),
    (1.0, 1.0),
    (1.0, 1.5),
    (1.0, 2.0),
    (1.0, 3.0),
)
#: ROC AUCs closer than this are a tie: the folds cannot tell the candidates apart.
TIE_AUC = 0.002


@dataclass(frozen=True)
class PatientMap:
    """One complete patient's out-of-fold log-odds and labels on its patch grid."""

    fold: int
    patient: str
    #: ``(rows, cols)`` float64, NaN where the patient has no patch.
    log_odds: np.ndarray
    #: ``(rows, cols)`` int8: 1 IDC, 0 not, -1 no patch.
    labels: np.ndarray

    def smoothed(self, weight: float, sigma_cells: float) -> np.ndarray:
        return smooth_log_odds(self.log_odds, sigma_cells, weight)

    @property
    def scored(self) -> np.ndarray:
        return self.labels >= 0


def patient_maps(scores: Sequence[FoldScores], complete: set[str]) -> list[PatientMap]:
    """The complete patients' out-of-fold maps (patches placed by their file name's x, y)."""
    maps = []
    for fold in scores:
        for patient in sorted(set(fold.patients.tolist()) & complete):
            sel = fold.patients == patient
            cols = fold.xy[sel, 0] // PATCH_SIZE
            rows = fold.xy[sel, 1] // PATCH_SIZE
            shape = (int(rows.max()) + 1, int(cols.max()) + 1)
            log_odds = np.full(shape, np.nan)
            labels = np.full(shape, -1, np.int8)
            log_odds[rows, cols] = fold.log_odds[sel]
            labels[rows, cols] = fold.labels[sel]
            maps.append(PatientMap(fold.fold, patient, log_odds, labels))
    return maps


def smoothed_cells(
    maps: Sequence[PatientMap], weight: float, sigma: float
) -> tuple[np.ndarray, np.ndarray]:
    """The scored cells of ``maps``, smoothed (``weight``, ``sigma`` in cells): log-odds and
    labels, concatenated."""
    if not maps:
        return np.zeros(0), np.zeros(0, np.int8)
    z = [m.smoothed(weight, sigma)[m.scored] for m in maps]
    y = [m.labels[m.scored] for m in maps]
    return np.concatenate(z), np.concatenate(y)


def evaluate_candidate(maps: Sequence[PatientMap], weight: float, sigma: float) -> dict[str, Any]:
    """Cross-fitted figures of one candidate on the complete patients, and its Dice."""
    folds = sorted({m.fold for m in maps})
    probabilities, labels, decisions, per_patient = [], [], [], []
    inter = total = 0
    for fold in folds:
        mine = [m for m in maps if m.fold == fold]
        z_other, y_other = smoothed_cells([m for m in maps if m.fold != fold], weight, sigma)
        if not len(z_other) or len(set(y_other.tolist())) < 2:
            continue
        calibration = fit_calibration(z_other, y_other)
        for patient_map in mine:
            z = patient_map.smoothed(weight, sigma)[patient_map.scored]
            y = patient_map.labels[patient_map.scored]
            p = calibration.probabilities(z)
            predicted = p >= calibration.threshold
            inter += int((predicted & (y == 1)).sum())
            total += int(predicted.sum() + (y == 1).sum())
            probabilities.append(p)
            labels.append(y)
            decisions.append(predicted)
            per_patient.append(
                {
                    "patient": patient_map.patient,
                    "fold": fold,
                    "cells": len(y),
                    "idc_cells": int((y == 1).sum()),
                    "roc_auc": roc_auc(y, p) if 0 < y.sum() < len(y) else math.nan,
                    "dice": _dice(predicted, y == 1),
                    **{
                        key: value
                        for key, value in classification_metrics(
                            y, p, calibration.threshold
                        ).items()
                        if key in ("balanced_accuracy", "sensitivity", "specificity")
                    },
                }
            )
    p = np.concatenate(probabilities)
    y = np.concatenate(labels)
    hat = np.concatenate(decisions)
    positive = y == 1
    sensitivity = float(hat[positive].mean()) if positive.any() else math.nan
    specificity = float((~hat[~positive]).mean()) if (~positive).any() else math.nan
    return {
        "weight": weight,
        "sigma_cells": sigma,
        "roc_auc": roc_auc(y, p),
        "sensitivity": sensitivity,
        "specificity": specificity,
        "balanced_accuracy": (sensitivity + specificity) / 2,
        "dice_pooled": 2 * inter / total if total else math.nan,
        "patients_count": len(per_patient),
        "cells": len(y),
        "patients": per_patient,
    }


def map_threshold(maps: Sequence[PatientMap], context: ContextSettings, patch_um: float) -> float:
    """The best-balanced-accuracy threshold of the complete patients' context maps (their
    log-odds on the calibrated scale, as the card's context smooths them)."""
    z, y = smoothed_cells(maps, context.weight, context.sigma_um / patch_um)
    p = 1.0 / (1.0 + np.exp(-(context.slope * z + context.bias)))
    return best_balanced_accuracy_threshold(y, p)


def _dice(predicted: np.ndarray, truth: np.ndarray) -> float:
    total = int(predicted.sum() + truth.sum())
    return 2 * int((predicted & truth).sum()) / total if total else math.nan


def choose_context(
    maps: Sequence[PatientMap], patch_um: float
) -> tuple[ContextSettings | None, list[dict[str, Any]]]:
    """The winning candidate as card settings (``None`` when no smoothing wins), with every
    candidate's figures. The recalibration of the smoothed log-odds is fitted on all the
    complete patients (each score out of fold).

    The maps hold calibrated log-odds, as the analysis smooths the card's calibrated
    log-odds: the recalibration applies to them as it is.
    """
    results = [evaluate_candidate(maps, weight, sigma) for weight, sigma in CANDIDATES]
    best_auc = max(r["roc_auc"] for r in results)
    # The least smoothing within the tie of the best: weight, then sigma, ascending.
    tied = [r for r in results if r["roc_auc"] >= best_auc - TIE_AUC]
    chosen = min(tied, key=lambda r: (r["weight"], r["sigma_cells"]))
    for result in results:
        result["chosen"] = result is chosen
    if chosen["weight"] == 0:
        return None, results
    z, y = smoothed_cells(maps, chosen["weight"], chosen["sigma_cells"])
    calibration = fit_calibration(z, y)
    settings = ContextSettings(
        sigma_um=chosen["sigma_cells"] * patch_um,
        weight=chosen["weight"],
        slope=1.0 / calibration.temperature,
        bias=calibration.bias,
    )
    return settings, results
