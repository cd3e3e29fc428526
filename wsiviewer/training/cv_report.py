"""The evaluation report of a cross-validated model: out-of-fold figures, plots and tables.

Everything here is measured on out-of-fold scores (each patient scored by a fold model that
never saw it), each fold model calibrated on its own validation patients and its threshold
cross-fitted on the other folds.
Written beside the model as ``reports/<name>/``: ``report.md``, ``metrics.json``,
``patients.csv`` (one row per patient, the columns the viewer reads), ``folds.csv`` and the
plots. Sections whose data is given (the recipe screening, the end-to-end slides, the
compression check, the standard split) are added where they belong.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wsiviewer import RESEARCH_USE_NOTICE, __version__
from wsiviewer.core.atomic import atomic_write_bytes, atomic_write_text
from wsiviewer.core.model.cards import ModelCard
from wsiviewer.training.crossval import FoldScores, out_of_fold_probabilities
from wsiviewer.training.metrics import classification_metrics, reliability_bins, roc_auc

#: Okabe-Ito colours, distinguishable with the common colour-vision deficiencies.
_BLUE, _ORANGE, _GREEN, _VERMILLION, _GREY = "#0072B2", "#E69F00", "#009E73", "#D55E00", "0.55"


def _fmt(value: object, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, int | np.integer):
        return f"{int(value):,}"
    return f"{float(value):.{digits}f}"  # type: ignore[arg-type]


def _interval(figures: Mapping[str, Any], key: str) -> str:
    low, high = figures["pooled_intervals_95"].get(key, (math.nan, math.nan))
    return f"{_fmt(figures['pooled'][key])} ({_fmt(low)}–{_fmt(high)})"


# --------------------------------------------------------------------------- plots


def _save(figure: Any, path: Path) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight", metadata={"Software": None})
    atomic_write_bytes(path, buffer.getvalue())
    return path.name


def write_plots(
    scores: Sequence[FoldScores], figures: Mapping[str, Any], out_dir: Path, title: str
) -> dict[str, str]:
    """ROC (pooled and per fold), reliability and per-patient ROC AUC, as PNG files."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    from wsiviewer.training.evaluate import roc_points

    probabilities = out_of_fold_probabilities(scores)
    p = np.concatenate(probabilities)
    y = np.concatenate([s.labels for s in scores]).astype(bool)
    plots: dict[str, str] = {}

    figure, axis = plt.subplots(figsize=(4.4, 4.2))
    for fold, fold_p in zip(scores, probabilities, strict=True):
        fpr, tpr = roc_points(fold.labels.astype(bool), fold_p)
        axis.plot(fpr, tpr, color=_GREY, linewidth=0.8, alpha=0.8)
    fpr, tpr = roc_points(y, p)
    axis.plot(fpr, tpr, color=_BLUE, linewidth=2, label=f"pooled, AUC {roc_auc(y, p):.3f}")
    axis.plot([], [], color=_GREY, linewidth=0.8, label="each fold")
    axis.plot([0, 1], [0, 1], color="0.75", linestyle=":", linewidth=1)
    pooled = figures["pooled"]
    axis.plot(
        1 - pooled["specificity"],
        pooled["sensitivity"],
        "o",
        color=_VERMILLION,
        label="cross-fitted thresholds",
    )
    axis.set_xlabel("1 − specificity")
    axis.set_ylabel("sensitivity")
    axis.set_title(f"ROC, out of fold\n{title}", fontsize=9)
    axis.legend(loc="lower right", fontsize=8)
    plots["roc"] = _save(figure, out_dir / "roc.png")
    plt.close(figure)

    figure, axis = plt.subplots(figsize=(4.4, 4.2))
    bins = reliability_bins(y.astype(int), p)
    axis.plot([0, 1], [0, 1], color="0.75", linestyle=":", linewidth=1)
    axis.plot(
        [b[0] for b in bins], [b[1] for b in bins], "o-", color=_BLUE, label="observed IDC fraction"
    )
    axis.set_xlabel("mean P(IDC) in bin")
    axis.set_ylabel("fraction IDC")
    axis.set_title(f"Reliability, out of fold (ECE {pooled['ece']:.3f})\n{title}", fontsize=9)
    axis.legend(loc="upper left", fontsize=8)
    plots["reliability"] = _save(figure, out_dir / "reliability.png")
    plt.close(figure)

    rows = [r for r in figures["patients"] if math.isfinite(r["roc_auc"])]
    if rows:
        rows.sort(key=lambda r: r["roc_auc"])
        figure, axis = plt.subplots(figsize=(7.5, 3.2))
        axis.bar(range(len(rows)), [r["roc_auc"] for r in rows], color=_BLUE, width=0.9)
        axis.axhline(pooled["roc_auc"], color=_VERMILLION, linewidth=1.2, label="pooled")
        axis.set_ylim(0.4, 1.0)
        axis.set_xticks([])
        axis.set_xlabel(f"{len(rows)} patients with both classes, sorted")
        axis.set_ylabel("ROC AUC")
        axis.set_title(f"ROC AUC by patient, out of fold\n{title}", fontsize=9)
        axis.legend(loc="lower right", fontsize=8)
        plots["patients"] = _save(figure, out_dir / "patients.png")
        plt.close(figure)
    return plots


# --------------------------------------------------------------------------- tables


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    if not rows:
        return
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {
                k: (round(v, 6) if isinstance(v, float) and math.isfinite(v) else v)
                for k, v in row.items()
            }
        )
    atomic_write_text(path, buffer.getvalue())


def patient_rows(scores: Sequence[FoldScores], figures: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``patients.csv``: the columns the viewer's model panel reads, plus the fold."""
    fold_of = {p: s.fold for s in scores for p in set(s.patients.tolist())}
    probabilities = out_of_fold_probabilities(scores)
    thresholds = {f["fold"]: f["threshold"] for f in figures["folds"]}
    rows = []
    for row in figures["patients"]:
        fold = fold_of[row["patient"]]
        scored = next(s for s in scores if s.fold == fold)
        sel = scored.patients == row["patient"]
        p = probabilities[[s.fold for s in scores].index(fold)][sel]
        metrics = classification_metrics(scored.labels[sel], p, thresholds[fold])
        rows.append(
            {
                "patient": row["patient"],
                "fold": fold,
                "patches": row["patches"],
                "idc_fraction": row["idc_fraction"],
                "mean_p_idc": row["mean_p"],
                "roc_auc": row["roc_auc"],
                "sensitivity": metrics["sensitivity"],
                "specificity": metrics["specificity"],
            }
        )
    return rows


# --------------------------------------------------------------------------- report


def write_cv_report(
    card: ModelCard,
    scores: Sequence[FoldScores],
    figures: Mapping[str, Any],
    out_dir: Path,
    *,
    sections: Sequence[Sequence[str]] = (),
) -> Path:
    """Write the report, its tables and plots into ``out_dir``; return ``report.md``'s path.

    ``sections`` are further Markdown sections (lists of lines) appended in order.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    title = f"{card.name}, {len(scores)}-fold cross-validation"
    plots = write_plots(scores, figures, out_dir, title)
    metrics = {
        "part": "out_of_fold",
        "model": card.name,
        "software_version": __version__,
        **{k: v for k, v in figures.items() if k != "context_candidates"},
    }
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=1, default=float) + "\n")
    write_csv(out_dir / "patients.csv", patient_rows(scores, figures))
    write_csv(
        out_dir / "folds.csv",
        [
            {
                k: f[k]
                for k in (
                    "fold",
                    "patients",
                    "patches",
                    "threshold",
                    "best_epoch",
                    "roc_auc",
                    "balanced_accuracy",
                    "sensitivity",
                    "specificity",
                    "ece",
                )
            }
            for f in figures["folds"]
        ],
    )
    lines = [
        *_summary(card, scores, figures),
        *_patch_level(figures, plots),
        *[line for section in sections for line in section],
        *_per_patient(figures, plots),
    ]
    report = out_dir / "report.md"
    atomic_write_text(report, "\n".join(lines) + "\n")
    return report


def _summary(
    card: ModelCard, scores: Sequence[FoldScores], figures: Mapping[str, Any]
) -> list[str]:
    patients = sum(f["patients"] for f in figures["folds"])
    patches = sum(f["patches"] for f in figures["folds"])
    settings = (card.extra.get("training") or {}).get("settings", {})
    return [
        f"# {card.name} {card.version}: patient-level cross-validation",
        "",
        f"> {RESEARCH_USE_NOTICE}",
        "",
        f"- Model: `{card.name}` ({card.architecture} {json.dumps(card.architecture_args)}), "
        f"input {card.input_size}×{card.input_size} px at {card.input_mpp:g} µm/px; trained as "
        f"each fold model was, on all {patients} patients ({patches:,} patches): "
        f"{_validation_words(card)}",
        f"- Recipe: stain jitter ±{settings.get('stain_jitter', 0):g}, brightness/contrast "
        f"±{settings.get('brightness_contrast', 0):g}, HSV ±{settings.get('hsv_jitter', 0):g}, "
        f"JPEG {settings.get('jpeg_probability', 0):.0%} of patches; per-slide colour "
        f"standardisation: {'yes' if card.colour else 'no'}; spatial context: "
        f"{_context_words(card)}",
        f"- {len(scores)} folds by patient (stratified by completeness and IDC fraction, seed "
        f"0); every figure below is out of fold: each patient scored by a model that never saw "
        f"it, each model calibrated on its own validation patients, a fold's threshold chosen "
        f"on the other folds",
        f"- Card: threshold {card.threshold:.4f} (chosen on all out-of-fold scores), "
        f"temperature {card.temperature:.3f}, logit bias {card.logit_bias:+.3f} (Platt on the "
        f"model's validation patients); wsiviewer {__version__}",
        "",
    ]


def _validation_words(card: ModelCard) -> str:
    training = card.extra.get("training") or {}
    validation = (card.extra.get("training_data") or {}).get("validation_patients")
    if validation is None:  # a model of an older version: every patient, fixed epochs
        epochs = (training.get("settings") or {}).get("epochs", "?")
        return f"{epochs} epochs, the median of the folds' best epochs"
    return (
        f"{validation} of them held back as validation patients for early stopping (best "
        f"epoch {training.get('best_epoch', '?')}) and calibration"
    )


def _context_words(card: ModelCard) -> str:
    context = card.context
    if context is None:
        return "none"
    return (
        f"Gaussian-weighted log-odds of neighbouring cells, σ {context.sigma_um:g} µm, "
        f"weight {context.weight:g}"
    )


def _patch_level(figures: Mapping[str, Any], plots: Mapping[str, str]) -> list[str]:
    mean, sd, pooled = figures["fold_mean"], figures["fold_sd"], figures["pooled"]
    lines = [
        "## Patch level, out of fold",
        "",
        "Pooled over every patient (95 % intervals: percentile bootstrap over patients, 1,000 "
        "resamples) and per fold (mean ± standard deviation over folds):",
        "",
        "| metric | pooled (95 % CI) | folds, mean ± sd |",
        "|---|---|---|",
    ]
    for key, label in (
        ("roc_auc", "ROC AUC"),
        ("pr_auc", "PR AUC"),
        ("balanced_accuracy", "balanced accuracy"),
        ("sensitivity", "sensitivity"),
        ("specificity", "specificity"),
        ("ece", "ECE"),
    ):
        pooled_text = (
            _interval(figures, key) if key in figures["pooled_intervals_95"] else _fmt(pooled[key])
        )
        lines.append(f"| {label} | {pooled_text} | {_fmt(mean[key])} ± {_fmt(sd[key])} |")
    lines += [
        "",
        f"Confusion (pooled at each fold's cross-fitted threshold): TP {int(pooled['tp']):,}, "
        f"FN {int(pooled['fn']):,}, TN {int(pooled['tn']):,}, FP {int(pooled['fp']):,}.",
        "",
        "| fold | patients | patches | threshold | best epoch | ROC AUC | balanced acc. | "
        "sensitivity | specificity | ECE |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for f in figures["folds"]:
        lines.append(
            f"| {f['fold']} | {f['patients']} | {f['patches']:,} | {_fmt(f['threshold'], 4)} | "
            f"{f['best_epoch']} | {_fmt(f['roc_auc'])} | {_fmt(f['balanced_accuracy'])} | "
            f"{_fmt(f['sensitivity'])} | {_fmt(f['specificity'])} | {_fmt(f['ece'])} |"
        )
    lines.append("")
    for key in ("roc", "reliability"):
        if key in plots:
            lines += [f"![{key}]({plots[key]})", ""]
    return lines


def _per_patient(figures: Mapping[str, Any], plots: Mapping[str, str]) -> list[str]:
    rows = [r for r in figures["patients"] if math.isfinite(r["roc_auc"])]
    aucs = sorted(r["roc_auc"] for r in rows)
    lines = ["## Per patient", ""]
    if aucs:
        worst = sorted(rows, key=lambda r: r["roc_auc"])[:5]
        lines += [
            f"ROC AUC of the {len(aucs)} patients with both classes: median "
            f"{_fmt(float(np.median(aucs)))}, lowest "
            + ", ".join(f"{r['patient']} ({_fmt(r['roc_auc'])})" for r in worst)
            + ". Every patient's row is in `patients.csv`.",
            "",
        ]
    if "patients" in plots:
        lines += [f"![per-patient ROC AUC]({plots['patients']})", ""]
    return lines


def context_section(candidates: Sequence[Mapping[str, Any]]) -> list[str]:
    """The spatial-context candidates measured on the complete patients' out-of-fold maps."""
    if not candidates:
        return []
    lines = [
        "## Spatial context, complete patients out of fold",
        "",
        "Candidates scored on the complete patients' out-of-fold maps (patches placed by their "
        "position) on the calibrated scale of their fold models, the recalibration and "
        "threshold of the smoothed map cross-fitted on the other folds' complete patients; the "
        "least smoothing within 0.002 ROC AUC of the best is chosen.",
        "",
        "| weight | σ (cells of 200 µm) | ROC AUC | Dice (pooled) | chosen |",
        "|---|---|---|---|---|",
    ]
    for c in candidates:
        lines.append(
            f"| {c['weight']:g} | {c['sigma_cells']:g} | {_fmt(c['roc_auc'], 4)} | "
            f"{_fmt(c['dice_pooled'])} | {'**yes**' if c.get('chosen') else ''} |"
        )
    lines.append("")
    return lines


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
        "patches, context), calibrated on its validation patients, every other choice "
        "cross-fitted on the other folds. Cells are scored "
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
    """JPEG pyramids against the lossless patches, per patient."""
    if not rows:
        return []
    lines = [
        "## Compression, complete patients out of fold",
        "",
        f"Each patient as a 40x (0.25 µm/px) JPEG pyramid (quality {rows[0]['quality']}), "
        "analysed as any slide is, against its lossless patches (patch scores before context, "
        "cell by cell), in two pyramids: levels 1, 4, 16, 64 and levels 1, 4, 32. The level "
        "rule (a level at least twice as fine as the model's 4 µm/px) reads both pyramids' "
        "patches from their 1 µm/px level, averaged 4 × 4; tissue detection reads the coarsest "
        "level fine enough for its 8 µm/px overview (the 4 µm/px level, against the 8 µm/px "
        "one), so their tissue cells, and the sample the colour standardisation is fitted "
        "on, can differ.",
        "",
        "| patient | cells | lossless AUC | levels 1, 4, 16, 64: AUC, within 0.05, max diff. | "
        "levels 1, 4, 32: AUC, within 0.05, max diff. |",
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


def stain_check_section(figures: Mapping[str, Any]) -> list[str]:
    """How the stain check was calibrated (:mod:`wsiviewer.core.model.stain_check`)."""
    above = figures.get("above_threshold") or []
    return [
        "## Stain check",
        "",
        f"Every patient's raw tissue colours (R, G and B percentiles of the sample the colour "
        f"standardisation is fitted on) scored against a Gaussian fitted on the other folds' "
        f"patients (Ledoit-Wolf shrinkage; distance in units of the training patients' "
        f"median): median {_fmt(figures['median'], 2)}, largest {_fmt(figures['max'], 1)} over "
        f"{figures['patients']} patients. The card's threshold is their "
        f"{figures['percentile']:g}th percentile, {_fmt(figures['threshold'], 2)}; patients "
        f"above it: {', '.join(above) or 'none'}. `analyze` warns on a slide above it. It "
        "checks the stain only, not the tissue.",
        "",
    ]
