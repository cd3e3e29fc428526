"""Calibrating the out-of-distribution score and the stain check on the folds.

Each fold model's feature distribution is fitted on its own training patients, and each of its
held-out patients is scored as a slide under analysis would be (the median over a sample of up
to 256 of its patches): every patient gets an out-of-fold score from a model that never saw it.
The card's threshold is the 99th percentile of those scores, so about 1 in 100 patients like
the training ones would be warned; the final model's distribution is fitted on every patient.
The stain check (:mod:`wsiviewer.core.model.stain_check`) is calibrated the same way on the
patients' raw colour percentiles (no network involved).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from wsiviewer.core.model.colour import ColourReference, sample_cells
from wsiviewer.core.model.features import penultimate_features
from wsiviewer.core.model.ood import OodModel, fit_ood
from wsiviewer.core.model.stain_check import StainCheck, fit_stain_check, stain_statistics
from wsiviewer.training.crossval import PatientFolds, patient_quantiles, standardise_colours
from wsiviewer.training.dataset import PatchSet

#: Percentile of the patients' out-of-fold scores that is the warning threshold.
THRESHOLD_PERCENTILE = 99.0
#: Most training patches a feature distribution is fitted on (drawn at random, seeded): 16
#: components' means and covariance are settled long before, at a fraction of the inference.
MAX_FIT_PATCHES = 40_000


def _fit_sample(count: int, seed: int = 0) -> np.ndarray:
    if count <= MAX_FIT_PATCHES:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, MAX_FIT_PATCHES, replace=False))


def patient_samples(patch_set: PatchSet, seed: int = 0) -> dict[str, np.ndarray]:
    """Each patient's sampled patch indices, as a slide's analysis samples its tissue cells."""
    out = {}
    for patient in patch_set.patient_ids:
        index = np.flatnonzero(patch_set.patients == patient)
        out[patient] = index[sample_cells(len(index), seed)]
    return out


def out_of_fold_scores(
    patch_set: PatchSet,
    folds: PatientFolds,
    run_dir: Path,
    device: torch.device,
) -> dict[str, float]:
    """Every patient's out-of-fold slide score, from the fold models of a crossval run."""
    from safetensors.torch import load_file

    from wsiviewer.core.model.networks import build_model

    recipe = json.loads((run_dir / "recipe.json").read_text())
    settings = recipe["settings"]
    quantiles = patient_quantiles(patch_set) if recipe["colour"] else {}
    samples = patient_samples(patch_set)
    scores: dict[str, float] = {}
    for fold in range(len(folds)):
        record = json.loads((run_dir / f"fold-{fold}.json").read_text())
        model = build_model(settings["architecture"], settings["architecture_args"])
        model.load_state_dict(load_file(run_dir / f"fold-{fold}.safetensors", device="cpu"))
        model.to(device)
        data = patch_set
        if record.get("colour"):
            reference = ColourReference.from_dict(record["colour"])
            data = standardise_colours(patch_set, quantiles, reference)
        norm = record["normalization"]
        training = data.subset(folds.training(fold))
        fit = _fit_sample(len(training.labels))
        features = penultimate_features(
            model, training.pixels[fit], norm["mean"], norm["std"], device
        )
        ood = fit_ood(features, training.labels[fit])
        for patient in folds.folds[fold]:
            sample = samples[patient]
            held = penultimate_features(
                model, data.pixels[sample], norm["mean"], norm["std"], device
            )
            scores[patient] = ood.slide_score(held)
    return scores


def fit_final(
    model: nn.Module,
    patch_set: PatchSet,
    mean: Sequence[float],
    std: Sequence[float],
    oof_scores: dict[str, float],
    device: torch.device,
) -> tuple[OodModel, dict[str, Any]]:
    """The final model's feature distribution (every patient, already standardised as the
    model expects) with the threshold from the out-of-fold scores; and the figures."""
    fit = _fit_sample(len(patch_set.labels))
    features = penultimate_features(model, patch_set.pixels[fit], mean, std, device)
    ood = fit_ood(features, patch_set.labels[fit])
    figures = threshold_figures(oof_scores)
    final = OodModel(
        ood.mean,
        ood.components,
        ood.class_means,
        ood.precision,
        ood.train_median,
        figures["threshold"],
    )
    return final, figures


def threshold_figures(oof_scores: dict[str, float]) -> dict[str, Any]:
    """The warning threshold (the :data:`THRESHOLD_PERCENTILE`-th percentile of the patients'
    out-of-fold scores) and the figures the report gives about it."""
    values = np.array(list(oof_scores.values()))
    threshold = float(np.percentile(values, THRESHOLD_PERCENTILE))
    return {
        "threshold": threshold,
        "percentile": THRESHOLD_PERCENTILE,
        "patients": len(values),
        "median": float(np.median(values)),
        "max": float(values.max()),
        "above_threshold": sorted(p for p, v in oof_scores.items() if v > threshold),
    }


def fit_stain_check_on_folds(
    quantiles: dict[str, np.ndarray], folds: PatientFolds
) -> tuple[StainCheck, dict[str, Any]]:
    """The stain check of every patient's raw colour ``quantiles`` (:func:`~wsiviewer.
    training.crossval.patient_quantiles`), its threshold the :data:`THRESHOLD_PERCENTILE`-th
    percentile of the patients' out-of-fold scores (each scored by a check fitted on the
    other folds' patients); and the figures."""
    statistics = {p: stain_statistics(q) for p, q in quantiles.items()}
    oof: dict[str, float] = {}
    for fold, held in enumerate(folds.folds):
        check = fit_stain_check(np.stack([statistics[p] for p in folds.training(fold)]))
        for patient in held:
            oof[patient] = float(check.distances(statistics[patient][None])[0])
    figures = threshold_figures(oof)
    final = fit_stain_check(np.stack(list(statistics.values())), figures["threshold"])
    return final, figures
