"""The final model of a cross-validated recipe: trained on every patient, chosen on the folds.

Once cross-validation (:mod:`.crossval`) has fixed the recipe, the shipped model is that
recipe trained on all the patients, for the median of the folds' best epochs (no patient is
left to stop on). Everything else it needs comes from the out-of-fold scores, which no model
saw while training: the Platt calibration, the threshold of the best balanced accuracy and the
≥ 0.90-sensitivity operating point (patch level), and the spatial context with its own
calibration and threshold (chosen on the complete patients' out-of-fold maps, see
:mod:`.context_fit`). The card carries the out-of-fold figures as its metrics and says so.
"""

from __future__ import annotations

import json
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsiviewer.core.model.colour import ColourReference
from wsiviewer.core.model.context import ContextSettings
from wsiviewer.core.model.ood import OodModel
from wsiviewer.core.model.stain_check import StainCheck
from wsiviewer.core.model.weights import write_model
from wsiviewer.training.context_fit import choose_context, patient_maps
from wsiviewer.training.crossval import (
    FoldScores,
    PatientFolds,
    fit_calibration,
    out_of_fold_figures,
    patient_quantiles,
    standardise_colours,
)
from wsiviewer.training.dataset import PatchSet
from wsiviewer.training.idc import DATASET_MPP, PATCH_SIZE
from wsiviewer.training.metrics import best_balanced_accuracy_threshold
from wsiviewer.training.train import EpochReport, TrainingResult, TrainingSettings, train


def final_epochs(scores: Sequence[FoldScores]) -> int:
    """The median of the folds' best epochs (rounded up), at least 1."""
    return max(1, int(np.ceil(np.median([s.best_epoch for s in scores]))))


def train_final(
    patch_set: PatchSet,
    settings: TrainingSettings,
    scores: Sequence[FoldScores],
    device: torch.device,
    *,
    colour: bool,
    checkpoint: Path | None = None,
) -> Generator[EpochReport, None, tuple[TrainingResult, ColourReference | None]]:
    """Train the recipe on every patient for :func:`final_epochs` epochs."""
    reference = None
    data = patch_set
    if colour:
        quantiles = patient_quantiles(patch_set)
        reference = ColourReference.mean_of(list(quantiles.values()))
        data = standardise_colours(patch_set, quantiles, reference)
    final_settings = TrainingSettings(**{**settings.__dict__, "epochs": final_epochs(scores)})
    result = yield from train(data, None, final_settings, device, checkpoint=checkpoint)
    return result, reference


def write_final_card(
    result: TrainingResult,
    reference: ColourReference | None,
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
    """Calibrate, choose and measure on the out-of-fold scores; write weights and card.

    Returns the card's path and the out-of-fold figures (with every context candidate's).
    """
    from wsiviewer.training.train import _training_record

    log_odds = np.concatenate([s.log_odds for s in scores])
    labels = np.concatenate([s.labels for s in scores])
    calibration = fit_calibration(log_odds, labels)
    figures = out_of_fold_figures(scores)
    maps = patient_maps(scores, complete)
    context: ContextSettings | None = None
    candidates: list[dict[str, Any]] = []
    threshold = calibration.threshold
    if maps:
        context, candidates = choose_context(
            maps,
            PATCH_SIZE * DATASET_MPP,
            patch_temperature=calibration.temperature,
            patch_bias=calibration.bias,
        )
    map_figures = next((c for c in candidates if c.get("chosen")), None)
    if context is not None:
        # Regions are drawn on the context map: its threshold is chosen on the complete
        # patients' out-of-fold context maps.
        z = np.concatenate(
            [
                m.smoothed(context.weight, context.sigma_um / (PATCH_SIZE * DATASET_MPP))[m.scored]
                for m in maps
            ]
        )
        y = np.concatenate([m.labels[m.scored] for m in maps])
        z_cal = z / calibration.temperature + calibration.bias
        p = 1.0 / (1.0 + np.exp(-(context.slope * z_cal + context.bias)))
        threshold = best_balanced_accuracy_threshold(y, p)
    folds_name = f"{name}-folds.json"
    folds.save(out_dir / folds_name)
    card: dict[str, Any] = {
        "name": name,
        "version": "0.2.0",
        "architecture": result.settings.architecture,
        "architecture_args": dict(result.settings.architecture_args),
        "input_size": PATCH_SIZE,
        "input_mpp": DATASET_MPP,
        "normalization": {"mean": list(result.mean), "std": list(result.std)},
        "classes": ["non-IDC", "IDC"],
        "threshold": round(threshold, 6),
        "temperature": round(calibration.temperature, 6),
        "logit_bias": round(calibration.bias, 6),
        "calibration": "Platt scaling on the out-of-fold log-odds of patient-level "
        f"{len(scores)}-fold cross-validation: P(IDC) = sigmoid(log-odds / temperature "
        "+ logit_bias)",
        "colour": None if reference is None else reference.to_dict(),
        "context": None if context is None else context.to_dict(),
        "ood": None if ood is None else ood.to_dict(),
        "stain_check": None if stain_check is None else stain_check.to_dict(),
        "operating_points": {
            "balanced_accuracy": round(threshold, 6),
            "patch_balanced_accuracy": round(calibration.threshold, 6),
            "patch_sensitivity_0.90": round(calibration.sensitive_threshold, 6),
        },
        "training_data": {
            "dataset": "IDC breast histology patches (Janowczyk & Madabhushi 2016), 50×50 px "
            "at ≈4 µm/px",
            "patients": "all: the final model of a recipe chosen by patient-level cross-validation",
            **(training_summary or {}),
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
