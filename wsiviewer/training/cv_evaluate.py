"""End to end, out of fold: complete patients rebuilt as slides and analysed by the fold model
that never saw them, through the real analysis pipeline (colour standardisation from the
slide's own sample, patch scores, spatial context), and the compression check.

Each fold model gets a full card here (:func:`write_fold_cards`): its own weights,
normalisation and colour reference, its calibration on its own validation patients, the patch
threshold chosen on the *other* folds' calibrated out-of-fold scores, and the chosen spatial
context with its recalibration and the map's threshold fitted on the other folds' complete
patients. So no figure of a patient uses its own labels for a choice.

Compression: the same patients rebuilt as 40x pyramids whose levels are JPEG-compressed, read
by the analysis the way it reads any slide (the level rule,
:meth:`~wsiviewer.core.analysis.grid.PatchGrid.model_level`), against the lossless patches.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wsiviewer.core.atomic import atomic_write_text
from wsiviewer.core.model.context import ContextSettings
from wsiviewer.core.model.weights import sha256_file
from wsiviewer.training.context_fit import patient_maps, smoothed_cells
from wsiviewer.training.crossval import (
    FoldScores,
    PatientFolds,
    calibrated_folds,
    cross_fitted_thresholds,
    fit_calibration,
    fold_calibration,
    out_of_fold_probabilities,
)
from wsiviewer.training.idc import DATASET_MPP, PATCH_SIZE, RebuiltPatient, rebuild_patient
from wsiviewer.training.metrics import (
    classification_metrics,
    roc_auc,
)

#: Rebuilt patients are enlarged this many times into single-level slides (2 µm/px): the
#: analysis then reads and averages them exactly as it would a scan finer than the model.
SLIDE_ENLARGEMENT = 2
#: The 40x pyramids of the compression check: 0.25 µm/px, 16 times the dataset's px.
PYRAMID_ENLARGEMENT = 16


@dataclass(frozen=True)
class EvaluationStep:
    """Progress: what is being done, and how far."""

    stage: str
    done: int
    total: int


def write_fold_cards(
    run_dir: Path,
    scores: Sequence[FoldScores],
    complete: set[str],
    context: ContextSettings | None,
    out_dir: Path,
) -> dict[int, Path]:
    """A complete card for every fold model, every choice cross-fitted (module docstring)."""
    recipe = json.loads((run_dir / "recipe.json").read_text())
    settings = recipe["settings"]
    out_dir.mkdir(parents=True, exist_ok=True)
    calibrated = calibrated_folds(scores)
    thresholds = cross_fitted_thresholds(scores, out_of_fold_probabilities(scores))
    cards: dict[int, Path] = {}
    for index, fold in enumerate(scores):
        calibration = fold_calibration(scores, fold)
        threshold = thresholds[index]
        context_dict = None
        if context is not None:
            sigma_cells = context.sigma_um / (PATCH_SIZE * DATASET_MPP)
            others = [s for s in calibrated if s.fold != fold.fold]
            z_cal, y = smoothed_cells(patient_maps(others, complete), context.weight, sigma_cells)
            recalibration = fit_calibration(z_cal, y)
            fold_context = ContextSettings(
                context.sigma_um,
                context.weight,
                slope=1.0 / recalibration.temperature,
                bias=recalibration.bias,
            )
            threshold = recalibration.threshold
            context_dict = fold_context.to_dict()
        record = json.loads((run_dir / f"fold-{fold.fold}.json").read_text())
        name = f"fold-{fold.fold}"
        weights = out_dir / f"{name}.safetensors"
        shutil.copyfile(run_dir / f"{name}.safetensors", weights)
        card = {
            "name": name,
            "version": "0.0.0",
            "architecture": settings["architecture"],
            "architecture_args": settings["architecture_args"],
            "weights_sha256": sha256_file(weights),
            "input_size": PATCH_SIZE,
            "input_mpp": DATASET_MPP,
            "normalization": record["normalization"],
            "classes": ["non-IDC", "IDC"],
            "threshold": threshold,
            "temperature": calibration.temperature,
            "logit_bias": calibration.bias,
            "colour": record.get("colour"),
            "context": context_dict,
            "intended_use": "Evaluation only: a fold model of cross-validation.",
        }
        path = out_dir / f"{name}.json"
        atomic_write_text(path, json.dumps(card, indent=1) + "\n")
        cards[fold.fold] = path
    return cards


def fold_of(folds: PatientFolds, patient: str) -> int:
    return next(k for k, fold in enumerate(folds.folds) if patient in fold)


def _label_cells(rebuilt: RebuiltPatient, shape: tuple[int, int]) -> np.ndarray:
    """``(rows, cols) int8``: 1 IDC, 0 not, -1 no patch, on a grid of patch-sized cells."""
    labels = np.full(shape, -1, dtype=np.int8)
    for patch in rebuilt.patches:
        row, col = patch.grid_rc
        if row < shape[0] and col < shape[1]:
            labels[row, col] = patch.label
    return labels


def _dice(predicted: np.ndarray, truth: np.ndarray) -> float:
    total = int(predicted.sum() + truth.sum())
    return 2 * int((predicted & truth).sum()) / total if total else math.nan


def end_to_end(
    cards: dict[int, Path],
    folds: PatientFolds,
    scores: Sequence[FoldScores],
    data_dir: Path,
    patients: Sequence[str],
    *,
    subdivision: int = 1,
) -> Generator[EvaluationStep, None, list[dict[str, Any]]]:
    """Analyse each complete patient with its fold model; one row of figures per patient.

    ``subdivision`` 2 analyses the dense map (100 µm cells, each from the 4 patches covering
    it); each cell is scored against the label of the 200 µm patch it lies in."""
    from wsiviewer.core.analysis.pipeline import analyze
    from wsiviewer.core.model.cards import ModelCard
    from wsiviewer.core.model.predictor import Predictor
    from wsiviewer.core.progress import run_to_end
    from wsiviewer.core.slides import ArraySource, Mpp

    predictors: dict[int, Predictor] = {}
    rows = []
    for index, patient in enumerate(patients):
        yield EvaluationStep(f"patient {patient} end to end", index, len(patients))
        fold = fold_of(folds, patient)
        if fold not in predictors:
            predictors[fold] = Predictor(ModelCard.from_file(cards[fold]), device="cpu")
        predictor = predictors[fold]
        rebuilt = rebuild_patient(data_dir / patient)
        enlarged = np.repeat(
            np.repeat(rebuilt.pixels, SLIDE_ENLARGEMENT, axis=0), SLIDE_ENLARGEMENT, axis=1
        )
        slide_mpp = DATASET_MPP / SLIDE_ENLARGEMENT
        started = time.perf_counter()
        analysis = run_to_end(
            analyze(
                ArraySource(enlarged, mpp=slide_mpp),
                predictor,
                mpp=Mpp(slide_mpp, "user"),
                subdivision=subdivision,
            )
        )
        seconds = time.perf_counter() - started
        pmap = analysis.probability_map
        rows_k, cols_k = pmap.grid.shape
        patch_shape = (-(-rows_k // subdivision), -(-cols_k // subdivision))
        labels = _label_cells(rebuilt, patch_shape)
        labels = np.repeat(np.repeat(labels, subdivision, 0), subdivision, 1)[:rows_k, :cols_k]
        scored = (labels >= 0) & pmap.scored
        y = labels[scored]
        p_map = pmap.probabilities[scored].astype(np.float64)
        p_patch = pmap.patch_level[scored]
        threshold = predictor.card.threshold
        predicted = p_map >= threshold
        metrics = classification_metrics(y, p_map, threshold)
        # The patch files' out-of-fold scores (the patient's own colour sample), calibrated
        # like the fold card's patches: how far does the slide's path move them?
        fold_scores = next(s for s in scores if s.fold == fold)
        mine = fold_scores.patients == patient
        if subdivision == 1:
            files = _file_probabilities(fold_scores, mine, predictor.card, pmap.grid.shape)
            difference = np.abs(p_patch.astype(np.float64) - files[scored])
        else:  # a dense cell's patches are not the files' patches
            difference = np.zeros(0)
        rows.append(
            {
                "patient": patient,
                "fold": fold,
                "cells": int(scored.sum()),
                "idc_cells": int((y == 1).sum()),
                "tissue_cells_missed": int(((labels >= 0) & ~pmap.scored).sum()),
                "roc_auc": roc_auc(y, p_map),
                "roc_auc_patches": roc_auc(y, p_patch),
                "balanced_accuracy": metrics["balanced_accuracy"],
                "sensitivity": metrics["sensitivity"],
                "specificity": metrics["specificity"],
                "dice": _dice(predicted, y == 1),
                "threshold": threshold,
                "true_positive": int((predicted & (y == 1)).sum()),
                "false_positive": int((predicted & (y == 0)).sum()),
                "false_negative": int((~predicted & (y == 1)).sum()),
                "true_negative": int((~predicted & (y == 0)).sum()),
                "cell_labels": y.astype(int).tolist(),
                "cell_probabilities": np.round(p_map, 5).tolist(),
                **_differences(difference, "_vs_files"),
                "seconds": seconds,
                "warnings": list(analysis.warnings),
            }
        )
    return rows


def _file_probabilities(
    scores: FoldScores, mine: np.ndarray, card: Any, shape: tuple[int, int]
) -> np.ndarray:
    """The patch files' calibrated out-of-fold P(IDC) on the patient's grid (NaN elsewhere)."""
    out = np.full(shape, np.nan)
    rows = scores.xy[mine, 1] // PATCH_SIZE
    cols = scores.xy[mine, 0] // PATCH_SIZE
    inside = (rows < shape[0]) & (cols < shape[1])
    z = scores.log_odds[mine][inside].astype(np.float64)
    out[rows[inside], cols[inside]] = 1 / (1 + np.exp(-(z / card.temperature + card.logit_bias)))
    return out


def compression(
    cards: dict[int, Path],
    folds: PatientFolds,
    data_dir: Path,
    patients: Sequence[str],
    work_dir: Path,
    *,
    quality: int = 90,
) -> Generator[EvaluationStep, None, list[dict[str, Any]]]:
    """Each patient as two 40x JPEG pyramids, with a 4 µm/px level (levels 1, 4, 16, 64) and
    without one (1, 4, 32), against the lossless patches (the rebuilt slide at 4 µm/px); the
    patch-level scores (before context) are compared cell by cell."""
    from wsiviewer.core.analysis.pipeline import analyze
    from wsiviewer.core.exports.pyramid_tiff import UpsampledSource, write_pyramid_tiff
    from wsiviewer.core.model.cards import ModelCard
    from wsiviewer.core.model.predictor import Predictor
    from wsiviewer.core.progress import run_to_end
    from wsiviewer.core.slides import ArraySource, Mpp, open_slide

    rows = []
    work_dir.mkdir(parents=True, exist_ok=True)
    for index, patient in enumerate(patients):
        yield EvaluationStep(f"patient {patient} as 40x JPEG pyramids", index, len(patients))
        fold = fold_of(folds, patient)
        predictor = Predictor(ModelCard.from_file(cards[fold]), device="cpu")
        rebuilt = rebuild_patient(data_dir / patient)

        def patch_scores(slide: Any, mpp: float, model: Predictor = predictor) -> tuple[Any, float]:
            started = time.perf_counter()
            analysis = run_to_end(analyze(slide, model, mpp=Mpp(mpp, "user")))
            p = analysis.probability_map.patch_level
            return np.asarray(p, dtype=np.float64), time.perf_counter() - started

        lossless_slide = ArraySource(rebuilt.pixels, mpp=DATASET_MPP)
        lossless, lossless_s = patch_scores(lossless_slide, DATASET_MPP)
        labels = _label_cells(rebuilt, lossless.shape)
        row: dict[str, Any] = {"patient": patient, "fold": fold, "quality": quality}
        for name, downsamples in (("4um_level", (1, 4, 16, 64)), ("1um_level", (1, 4, 32))):
            path = work_dir / f"{patient}-{name}.tif"
            source = UpsampledSource(rebuilt.pixels, PYRAMID_ENLARGEMENT)
            write_pyramid_tiff(
                path,
                source,
                mpp=DATASET_MPP / PYRAMID_ENLARGEMENT,
                downsamples=downsamples,
                compression="jpeg",
                quality=quality,
            )
            with open_slide(path) as slide:
                scores_here, seconds = patch_scores(slide, DATASET_MPP / PYRAMID_ENLARGEMENT)
            path.unlink(missing_ok=True)
            shape = tuple(min(a, b) for a, b in zip(lossless.shape, scores_here.shape, strict=True))
            here = scores_here[: shape[0], : shape[1]]
            base = lossless[: shape[0], : shape[1]]
            lab = labels[: shape[0], : shape[1]]
            both = ~np.isnan(here) & ~np.isnan(base) & (lab >= 0)
            difference = np.abs(here[both] - base[both])
            row[name] = {
                "cells": int(both.sum()),
                "roc_auc": roc_auc(lab[both], here[both]),
                "roc_auc_lossless": roc_auc(lab[both], base[both]),
                **_differences(difference),
                "seconds": seconds,
            }
        row["lossless_seconds"] = lossless_s
        rows.append(row)
    return rows


def _differences(difference: np.ndarray, suffix: str = "") -> dict[str, float]:
    """Mean and largest absolute difference, and the share within 0.05."""
    keys = ("within_0.05", "mean_abs_difference", "max_abs_difference")
    if not len(difference):
        return {f"{key}{suffix}": math.nan for key in keys}
    values = ((difference <= 0.05).mean(), difference.mean(), difference.max())
    return {f"{key}{suffix}": float(value) for key, value in zip(keys, values, strict=True)}
