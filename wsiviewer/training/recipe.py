"""The final model of a cross-validated recipe: trained on every patient, chosen on the folds.

Once cross-validation (:mod:`.crossval`) has fixed the recipe, the shipped model is that
recipe trained on all the patients exactly as each fold model was on its share: 10 % of them
held back as its validation patients, which choose its epoch (early stopping) and calibrate
it (Platt scaling). Its out-of-fold estimates are then those of this very procedure.
Everything else it needs comes from the folds' out-of-fold scores (each fold model calibrated
on its own validation patients), which no model saw while training: the threshold of the best
balanced accuracy and the ≥ 0.90-sensitivity operating point (patch level), and the spatial
context with its own recalibration and threshold (chosen on the complete patients'
out-of-fold maps, see :mod:`.context_fit`). The card carries the out-of-fold figures as its
metrics and says so.
"""

from __future__ import annotations

import json
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsiviewer.core.model.colour import ColourReference
from wsiviewer.core.model.context import ContextSettings
from wsiviewer.core.model.ood import OodModel
from wsiviewer.core.model.stain_check import StainCheck
from wsiviewer.core.model.weights import write_model
from wsiviewer.errors import DatasetError
from wsiviewer.training.context_fit import choose_context, map_threshold, patient_maps
from wsiviewer.training.crossval import (
    Calibration,
    FoldScores,
    PatientFolds,
    calibrated_folds,
    fit_calibration,
    hold_back_validation,
    out_of_fold_figures,
    out_of_fold_probabilities,
    patient_quantiles,
    raw_log_odds,
    standardise_colours,
)
from wsiviewer.training.dataset import PatchSet
from wsiviewer.training.idc import DATASET_MPP, PATCH_SIZE
from wsiviewer.training.metrics import (
    best_balanced_accuracy_threshold,
    sensitivity_operating_point,
)
from wsiviewer.training.train import EpochReport, TrainingResult, TrainingSettings, train


@dataclass(frozen=True)
class FinalModel:
    """The recipe trained on every patient, and what its validation patients gave it."""

    result: TrainingResult
    reference: ColourReference | None
    #: The patients held back from training: early stopping and calibration.
    validation_patients: tuple[str, ...]
    #: Platt scaling fitted on the validation patients' log-odds.
    calibration: Calibration


def train_final(
    patch_set: PatchSet,
    settings: TrainingSettings,
    device: torch.device,
    *,
    complete: set[str] | None,
    colour: bool,
    checkpoint: Path | None = None,
) -> Generator[EpochReport, None, FinalModel]:
    """Train the recipe on every patient as each fold model was (:func:`.crossval.
    hold_back_validation`, early stopping), then calibrate it on its validation patients."""
    train_patients, validation_patients = hold_back_validation(
        patch_set, patch_set.patient_ids, complete, settings.seed
    )
    reference = None
    data = patch_set
    if colour:
        quantiles = patient_quantiles(patch_set)
        reference = ColourReference.mean_of([quantiles[p] for p in train_patients])
        data = standardise_colours(patch_set, quantiles, reference)
    validation = data.subset(validation_patients)
    if len(set(validation.labels.tolist())) < 2:
        raise DatasetError(
            f"The final model's validation patients ({', '.join(validation_patients)}) have "
            "patches of one class only: it cannot be calibrated on them"
        )
    result = yield from train(
        data.subset(train_patients), validation, settings, device, checkpoint=checkpoint
    )
    log_odds = raw_log_odds(result.model, result.mean, result.std, validation.pixels, device)
    calibration = fit_calibration(log_odds, validation.labels)
    return FinalModel(result, reference, tuple(validation_patients), calibration)


def write_final_card(
    final: FinalModel,
    scores: Sequence[FoldScores],
    folds: PatientFolds,
    complete: set[str],
    out_dir: Path,
    *,
    name: str,
    default: bool = False,
    training_summary: dict[str, Any] | None = None,
    ood: OodModel | None = None,
    stain_check: StainCheck | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Choose and measure on the out-of-fold scores; write weights and card.

    Returns the card's path and the out-of-fold figures (with every context candidate's).
    """
    from wsiviewer.training.train import _training_record

    result, calibration = final.result, final.calibration
    calibrated = calibrated_folds(scores)
    labels = np.concatenate([s.labels for s in scores])
    probabilities = np.concatenate(out_of_fold_probabilities(scores))
    patch_threshold = best_balanced_accuracy_threshold(labels, probabilities)
    sensitive_threshold = sensitivity_operating_point(labels, probabilities, 0.9)
    figures = out_of_fold_figures(scores)
    maps = patient_maps(calibrated, complete)
    context: ContextSettings | None = None
    candidates: list[dict[str, Any]] = []
    if maps:
        context, candidates = choose_context(maps, PATCH_SIZE * DATASET_MPP)
    map_figures = next((c for c in candidates if c.get("chosen")), None)
    # Regions are drawn on the context map: its threshold is chosen on the complete patients'
    # out-of-fold context maps.
    threshold = (
        patch_threshold
        if context is None
        else map_threshold(maps, context, PATCH_SIZE * DATASET_MPP)
    )
    folds_name = f"{name}-folds.json"
    folds.save(out_dir / folds_name)
    card: dict[str, Any] = {
        "name": name,
        "version": "0.3.0",
        "architecture": result.settings.architecture,
        "architecture_args": dict(result.settings.architecture_args),
        "input_size": PATCH_SIZE,
        "input_mpp": DATASET_MPP,
        "normalization": {"mean": list(result.mean), "std": list(result.std)},
        "classes": ["non-IDC", "IDC"],
        "threshold": round(threshold, 6),
        "temperature": round(calibration.temperature, 6),
        "logit_bias": round(calibration.bias, 6),
        "calibration": f"Platt scaling on the model's {len(final.validation_patients)} "
        "validation patients (held back from training; they also chose its epoch), as each "
        f"fold model of the patient-level {len(scores)}-fold cross-validation was calibrated "
        "on its own: P(IDC) = sigmoid(log-odds / temperature + logit_bias)",
        "colour": None if final.reference is None else final.reference.to_dict(),
        "context": None if context is None else context.to_dict(),
        "ood": None if ood is None else ood.to_dict(),
        "stain_check": None if stain_check is None else stain_check.to_dict(),
        "operating_points": {
            "balanced_accuracy": round(threshold, 6),
            "patch_balanced_accuracy": round(patch_threshold, 6),
            "patch_sensitivity_0.90": round(sensitive_threshold, 6),
        },
        "training_data": {
            "dataset": "IDC breast histology patches (Janowczyk & Madabhushi 2016), 50×50 px "
            "at ≈4 µm/px",
            "patients": "all: the final model of a recipe chosen by patient-level cross-validation",
            **(training_summary or {}),
            "validation_patients": len(final.validation_patients),
        },
        "split": folds_name,
        "metrics": {
            "out_of_fold": _card_figures(figures),
            "out_of_fold_map": None
            if map_figures is None
            else _round(
                {k: v for k, v in map_figures.items() if k not in ("patients", "patients_count")}
                | {"patients": map_figures.get("patients_count")}
            ),
        },
        "training": _training_record(result, torch.device("cpu")),
        "intended_use": "Research use only, not for diagnosis: flags regions of possible IDC "
        "in H&E breast tissue for a pathologist to review.",
        "default": default,
    }
    card_path = write_model(result.model.cpu(), out_dir, card)
    return card_path, {**figures, "context_candidates": candidates}


def _card_figures(figures: dict[str, Any]) -> dict[str, Any]:
    """The card's share of the out-of-fold figures, flat like a split part's metrics (the
    viewer reads them so): the pooled values, their intervals, the patients and patches,
    the folds' mean and spread; the per-patient table is in the report."""
    folds = figures["folds"]
    return _round(
        {
            **figures["pooled"],
            "patients": sum(f["patients"] for f in folds),
            "patches": sum(f["patches"] for f in folds),
            "folds": len(folds),
            "intervals_95": figures["pooled_intervals_95"],
            "fold_mean": figures["fold_mean"],
            "fold_sd": figures["fold_sd"],
        }
    )


def _round(value: Any) -> Any:
    """JSON-ready, floats to 6 decimals."""
    return json.loads(json.dumps(value, default=float), parse_float=lambda s: round(float(s), 6))
