"""From a finished cross-validation run to a shipped model: the final model, its
out-of-distribution check, its card, and the report of what every figure was measured on.

``wsiviewer train --from-crossval RUN`` runs these steps in order; each slow step keeps its
result in the report folder, so an interrupted run picks up where it stopped:

1. the recipe trained on every patient (:func:`.recipe.train_final`, checkpointed);
2. the out-of-distribution score: each patient scored by the fold model that never saw it,
   the warning threshold their 99th percentile (:mod:`.ood_fit`), the final model's feature
   distribution fitted on every patient;
3. the card (:func:`.recipe.write_final_card`): calibration, threshold, context, colour and
   the out-of-distribution model, all from out-of-fold scores;
4. end to end: every complete patient rebuilt as a slide and analysed by its fold model
   through the real analysis pipeline (:func:`.cv_evaluate.end_to_end`);
5. compression: the first complete patients (by name) as 40x JPEG pyramids
   (:func:`.cv_evaluate.compression`);
6. the report (:func:`.cv_report.write_cv_report`) with those sections, and their tables
   (``end_to_end.csv``, ``compression.csv``) beside it.

The fold cards, the pyramids and each step's result stay in the run folder
(``finish-<name>/``), not beside the model.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsiviewer.core.atomic import atomic_write_text
from wsiviewer.core.model.cards import ModelCard
from wsiviewer.core.progress import run_to_end
from wsiviewer.training.crossval import (
    FoldScores,
    PatientFolds,
    patient_quantiles,
    standardise_colours,
)
from wsiviewer.training.cv_evaluate import compression, end_to_end, write_fold_cards
from wsiviewer.training.cv_report import context_section, write_csv, write_cv_report
from wsiviewer.training.dataset import PatchSet
from wsiviewer.training.metrics import roc_auc
from wsiviewer.training.ood_fit import fit_final, out_of_fold_scores
from wsiviewer.training.recipe import write_final_card
from wsiviewer.training.train import TrainingResult

#: Complete patients rebuilt as 40x JPEG pyramids for the compression check (the first by
#: name: each takes about a minute on 2 cores).
COMPRESSION_PATIENTS = 6


def _cached(path: Path, compute: Callable[[], Any]) -> Any:
    """``compute()``'s JSON result, kept in ``path`` (read back on a rerun)."""
    if path.is_file():
        return json.loads(path.read_text())
    value = json.loads(json.dumps(compute(), default=float))
    atomic_write_text(path, json.dumps(value, indent=1) + "\n")
    return value


def finish_crossval(
    result: TrainingResult,
    reference: Any,
    run_dir: Path,
    patches: PatchSet,
    complete: set[str],
    data_dir: Path,
    out_dir: Path,
    *,
    name: str,
    default: bool,
    device: torch.device,
    compression_patients: int = COMPRESSION_PATIENTS,
    attach_ood: bool = False,
    say: Callable[[str], None] = lambda _: None,
) -> tuple[Path, Path]:
    """Steps 2-6 of the module docstring, after the final model is trained; returns the
    card's and the report's paths. The out-of-distribution model is always measured (the
    report says how it was calibrated); it goes on the card only with ``attach_ood``."""
    folds = PatientFolds.load(run_dir / "folds.json")
    scores = [FoldScores.load(run_dir / f"fold-{k}.npz", k) for k in range(len(folds))]
    report_dir = out_dir / "reports" / name
    # Fold cards, pyramids and the steps' results stay with the run, not with the model.
    work = run_dir / f"finish-{name}"
    work.mkdir(parents=True, exist_ok=True)

    say("Out-of-distribution scores, out of fold ...")
    oof = _cached(
        work / "ood_out_of_fold.json", lambda: out_of_fold_scores(patches, folds, run_dir, device)
    )
    data = patches
    if reference is not None:
        data = standardise_colours(patches, patient_quantiles(patches), reference)
    ood, ood_figures = fit_final(result.model, data, result.mean, result.std, oof, device)
    del data

    card_path, figures = write_final_card(
        result,
        reference,
        scores,
        folds,
        complete,
        out_dir,
        name=name,
        default=default,
        training_summary={"patients": len(patches.patient_ids), "patches": len(patches)},
        ood=ood if attach_ood else None,
    )
    card = ModelCard.from_file(card_path)
    fold_cards = write_fold_cards(run_dir, scores, complete, card.context, work / "fold-cards")
    patients = sorted(p for p in complete if p in set(patches.patient_ids))

    say(f"End to end: {len(patients)} complete patients, each by its fold model ...")
    e2e = _cached(
        work / "end_to_end.json",
        lambda: run_to_end(end_to_end(fold_cards, folds, scores, data_dir, patients)),
    )
    chosen = patients[:compression_patients]
    say(f"Compression: {len(chosen)} patients as 40x JPEG pyramids ...")
    jpeg = _cached(
        work / "compression.json",
        lambda: run_to_end(compression(fold_cards, folds, data_dir, chosen, work / "pyramids")),
    )
    sections = [
        context_section(figures.get("context_candidates", [])),
        end_to_end_section(e2e),
        compression_section(jpeg),
        ood_section(ood_figures, attached=attach_ood),
    ]
    report = write_cv_report(card, scores, figures, report_dir, sections=sections)
    write_csv(
        report_dir / "end_to_end.csv",
        [{k: v for k, v in r.items() if not k.startswith("cell_")} for r in e2e],
    )
    write_csv(
        report_dir / "compression.csv",
        [
            {"patient": r["patient"], "fold": r["fold"], "quality": r["quality"]}
            | {
                f"{level}_{k}": v
                for level in ("4um_level", "1um_level")
                for k, v in r[level].items()
            }
            for r in jpeg
        ],
    )
    atomic_write_text(
        report_dir / "out_of_fold.json", json.dumps(figures, indent=1, default=float) + "\n"
    )
    return card_path, report


def _fmt(value: object, digits: int = 3) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def end_to_end_summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Pooled over every patient's cells (each at its fold card's threshold), and the median
    patient."""

    def median(key: str) -> float:
        values = [r[key] for r in rows if not math.isnan(r[key])]
        return float(np.median(values)) if values else math.nan

    def total(key: str) -> int:
        return int(sum(r[key] for r in rows))

    tp, fp, fn, tn = (
        total(k) for k in ("true_positive", "false_positive", "false_negative", "true_negative")
    )
    y = np.concatenate([np.asarray(r["cell_labels"]) for r in rows])
    p = np.concatenate([np.asarray(r["cell_probabilities"], dtype=np.float64) for r in rows])
    sensitivity = tp / (tp + fn) if tp + fn else math.nan
    specificity = tn / (tn + fp) if tn + fp else math.nan
    return {
        "patients": len(rows),
        "cells": total("cells"),
        "idc_cells": total("idc_cells"),
        "pooled_roc_auc": roc_auc(y, p),
        "pooled_balanced_accuracy": (sensitivity + specificity) / 2,
        "pooled_sensitivity": sensitivity,
        "pooled_specificity": specificity,
        "dice_pooled": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else math.nan,
        "median_roc_auc": median("roc_auc"),
        "median_balanced_accuracy": median("balanced_accuracy"),
        "median_dice": median("dice"),
    }


def end_to_end_section(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The end-to-end table: one row per complete patient."""
    if not rows:
        return []
    summary = end_to_end_summary(rows)
    lines = [
        "## End to end, complete patients out of fold",
        "",
        "Each complete patient rebuilt as a slide (its patches placed by position, enlarged to "
        "2 µm/px), analysed by `analyze` with the fold model that never saw it (colour sample, "
        "patches, context), every choice cross-fitted on the other folds. Cells are scored "
        "against the patch labels; Dice of the flagged cells (P ≥ the fold card's threshold) "
        "against the IDC cells. *Patch AUC* is the same cells before context.",
        "",
        f"Pooled: ROC AUC {_fmt(summary['pooled_roc_auc'])}, balanced accuracy "
        f"{_fmt(summary['pooled_balanced_accuracy'])}, Dice "
        f"{_fmt(summary['dice_pooled'])} over {summary['cells']:,} cells "
        f"({summary['idc_cells']:,} IDC) of {summary['patients']} patients; median patient: "
        f"AUC {_fmt(summary['median_roc_auc'])}, balanced accuracy "
        f"{_fmt(summary['median_balanced_accuracy'])}, Dice {_fmt(summary['median_dice'])}.",
        "",
        "| patient | fold | cells | IDC cells | ROC AUC | patch AUC | balanced acc. | "
        "sensitivity | specificity | Dice | within 0.05 of the files | s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['patient']} | {r['fold']} | {r['cells']} | {r['idc_cells']} | "
            f"{_fmt(r['roc_auc'])} | {_fmt(r['roc_auc_patches'])} | "
            f"{_fmt(r['balanced_accuracy'])} | {_fmt(r['sensitivity'])} | "
            f"{_fmt(r['specificity'])} | {_fmt(r['dice'])} | "
            f"{_fmt(r['within_0.05_vs_files'])} | {r['seconds']:.1f} |"
        )
    lines.append("")
    return lines


def compression_section(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Reading a JPEG 4 µm/px level against averaging a finer JPEG level, per patient."""
    if not rows:
        return []
    lines = [
        "## Compression, complete patients out of fold",
        "",
        f"Each patient as a 40x (0.25 µm/px) JPEG pyramid (quality {rows[0]['quality']}), "
        "analysed as any slide is, against its lossless patches (patch scores before context, "
        "cell by cell). *4 µm level*: the pyramid has levels 1, 4, 16, 64, so the analysis "
        "reads the JPEG-compressed 4 µm/px level (the level rule before these figures chose "
        "the finer level: with the rule now, both pyramids are read at 1 µm/px). *1 µm "
        "level*: levels 1, 4, 32, so it reads the 1 µm/px level and averages it 4 × 4.",
        "",
        "| patient | cells | lossless AUC | 4 µm level: AUC, within 0.05, max diff. | "
        "1 µm level: AUC, within 0.05, max diff. |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        a, b = r["4um_level"], r["1um_level"]
        lines.append(
            f"| {r['patient']} | {a['cells']} | {_fmt(a['roc_auc_lossless'])} | "
            f"{_fmt(a['roc_auc'])}, {a['within_0.05']:.1%}, {_fmt(a['max_abs_difference'])} | "
            f"{_fmt(b['roc_auc'])}, {b['within_0.05']:.1%}, {_fmt(b['max_abs_difference'])} |"
        )
    lines.append("")
    return lines


def ood_section(figures: Mapping[str, Any], *, attached: bool = True) -> list[str]:
    """How the out-of-distribution warning was calibrated, and whether the card carries it."""
    above = figures.get("above_threshold") or []
    carried = (
        "The card carries this model: `analyze` warns on a slide above the threshold."
        if attached
        else "The card does not carry it (`wsiviewer train --from-crossval ... --ood` would): "
        "check it on slides unlike the training data, and on training patients rebuilt as "
        "slides, before shipping it."
    )
    return [
        "## Out-of-distribution warning",
        "",
        f"Every patient scored by the fold model that never saw it (median Mahalanobis distance "
        f"of up to 256 of its patches' features to the training patches', in units of the "
        f"training median): median {_fmt(figures['median'], 2)}, largest "
        f"{_fmt(figures['max'], 2)} over {figures['patients']} patients. The warning threshold "
        f"is their {figures['percentile']:g}th percentile, {_fmt(figures['threshold'], 2)}; "
        f"patients above it: {', '.join(above) or 'none'}. {carried}",
        "",
    ]
