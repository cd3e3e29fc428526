"""Evaluating a model card on the patients of one part of its split, patch and slide level.

:func:`evaluate` is a generator (like ``analyze`` and ``train``): it yields
:class:`EvaluationProgress` and returns an :class:`Evaluation`. Patches are scored by the
same :class:`~wsiviewer.core.model.predictor.Predictor` that analysis uses, so the figures are the
ones the viewer's heatmap has. The complete patients of the part are rebuilt as slides and run
through :func:`~wsiviewer.core.analysis.pipeline.analyze`: the IDC mask is compared with the
label mask (Dice, IoU), and every labelled cell's probability is compared with its patch file's.

:func:`write_report` writes ``metrics.json``, ``patients.csv``, the plots and ``report.md``.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from wsiviewer import RESEARCH_USE_NOTICE, __version__
from wsiviewer.core.atomic import atomic_write_bytes, atomic_write_text
from wsiviewer.core.model.cards import ModelCard
from wsiviewer.core.model.predictor import Predictor
from wsiviewer.errors import DatasetError
from wsiviewer.training.dataset import PatchSet, PatientSplit, load_patch_set, sorted_patients
from wsiviewer.training.idc import DATASET_MPP, rebuild_patient
from wsiviewer.training.metrics import (
    INTERVAL_METRICS,
    bootstrap_intervals,
    classification_metrics,
    reliability_bins,
    roc_auc,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PARTS = ("train", "validation", "test")
#: Rebuilt patients become single-level slides this many times finer than the dataset, so
#: the tiler has to resample (2 µm/px → the model's 4 µm/px) rather than read patches as is.
SLIDE_ENLARGEMENT = 2
RELIABILITY_BINS = 15


@dataclass(frozen=True)
class EvaluationProgress:
    stage: str
    done: int
    total: int


@dataclass(frozen=True)
class SlideResult:
    """One complete patient rebuilt as a slide and analysed end to end."""

    patient: str
    #: Dataset patches, and those the analysis scored (tissue detection may drop a few).
    patches: int
    scored_patches: int
    #: Cells of the IDC mask (P ≥ threshold) and of the label mask (IDC patches).
    predicted_cells: int
    label_cells: int
    dice: float
    iou: float
    #: ROC AUC of the scored cells' probabilities against their patches' labels.
    auc_end_to_end: float
    #: ROC AUC of the same patches scored from their files (the patch-level figure).
    auc_patch_files: float
    #: Largest |P(cell) - P(patch file)| over the scored patches.
    max_abs_difference: float
    #: Labels and cell probabilities of the scored patches, for pooling over slides.
    cell_labels: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    cell_scores: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    file_scores: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))

    def to_dict(self) -> dict[str, Any]:
        arrays = {"cell_labels", "cell_scores", "file_scores"}
        return {key: value for key, value in self.__dict__.items() if key not in arrays}


@dataclass
class Evaluation:
    card: ModelCard
    part: str
    split_path: Path
    patients: list[str]
    labels: np.ndarray
    scores: np.ndarray
    patch_patients: np.ndarray
    threshold: float
    metrics: dict[str, float]
    intervals: dict[str, list[float]]
    per_patient: list[dict[str, Any]]
    slides: list[SlideResult] = field(default_factory=list)
    #: Patients of the part the data folder lacks, and unreadable patch files.
    missing_patients: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    device: str = "CPU"

    def slide_summary(self) -> dict[str, float]:
        """Dice and IoU pooled over every slide's cells, and the AUC over all scored patches."""
        if not self.slides:
            return {}
        overlap = sum(s.dice * (s.predicted_cells + s.label_cells) / 2 for s in self.slides)
        predicted = sum(s.predicted_cells for s in self.slides)
        labelled = sum(s.label_cells for s in self.slides)
        union = predicted + labelled - overlap
        return {
            "slides": len(self.slides),
            "dice_pooled": float(2 * overlap / (predicted + labelled))
            if predicted + labelled
            else math.nan,
            "iou_pooled": float(overlap / union) if union else math.nan,
            "dice_mean": float(np.mean([s.dice for s in self.slides])),
            "iou_mean": float(np.mean([s.iou for s in self.slides])),
            "patches": sum(s.patches for s in self.slides),
            "scored_patches": sum(s.scored_patches for s in self.slides),
            "max_abs_difference": max(s.max_abs_difference for s in self.slides),
            "auc_end_to_end": roc_auc(
                np.concatenate([s.cell_labels for s in self.slides]),
                np.concatenate([s.cell_scores for s in self.slides]),
            ),
            "auc_patch_files": roc_auc(
                np.concatenate([s.cell_labels for s in self.slides]),
                np.concatenate([s.file_scores for s in self.slides]),
            ),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.card.summary().to_dict(),
            "part": self.part,
            "split": self.split_path.name,
            "patients": len(self.patients),
            "patches": len(self.labels),
            "idc_fraction": float(self.labels.mean()) if len(self.labels) else math.nan,
            "threshold": self.threshold,
            "metrics": self.metrics,
            "intervals_95": self.intervals,
            "slide_level": {
                "summary": self.slide_summary(),
                "slides": [s.to_dict() for s in self.slides],
            },
            "per_patient": self.per_patient,
            "missing_patients": self.missing_patients,
            "unreadable_files": self.unreadable,
            "notes": self.notes,
            "device": self.device,
            "wsiviewer": __version__,
        }


def split_path_of(card: ModelCard) -> Path:
    """The patient split file named on ``card`` (beside it).

    Raises
    ------
    DatasetError
        If the card names no split.
    """
    name = card.extra.get("split")
    if "out_of_fold" in (card.extra.get("metrics") or {}):
        raise DatasetError(
            f"Model {card.name!r} was trained on every patient: no patient is held out to "
            "evaluate it on. Its figures are out of fold (each patient scored by a fold model "
            "that never saw it), in its report; `wsiviewer crossval` and `wsiviewer train "
            "--from-crossval` reproduce them. Pass --split-file to score a split of your own"
        )
    if not name:
        raise DatasetError(
            f"Model {card.name!r} has no patient split on its card; pass the split file"
        )
    return card.path.parent / str(name)


def per_patient_table(
    labels: np.ndarray, scores: np.ndarray, patients: np.ndarray, threshold: float
) -> list[dict[str, Any]]:
    """One row per patient: patches, IDC fraction, mean P(IDC), AUC, sensitivity, specificity."""
    rows = []
    for patient in sorted_patients(patients):
        mask = patients == patient
        y, p = labels[mask], scores[mask]
        m = classification_metrics(y, p, threshold)
        rows.append(
            {
                "patient": patient,
                "patches": int(mask.sum()),
                "idc_patches": int(y.sum()),
                "idc_fraction": float(y.mean()),
                "mean_p_idc": float(p.mean()),
                "predicted_idc_fraction": float((p >= threshold).mean()),
                "roc_auc": m["roc_auc"],
                "sensitivity": m["sensitivity"],
                "specificity": m["specificity"],
                "balanced_accuracy": m["balanced_accuracy"],
                "accuracy": m["accuracy"],
            }
        )
    return rows


def dice_iou(predicted: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Dice and IoU of two boolean masks (1.0 when both are empty)."""
    intersection = int((predicted & truth).sum())
    total = int(predicted.sum()) + int(truth.sum())
    union = total - intersection
    if total == 0:
        return 1.0, 1.0
    return 2 * intersection / total, intersection / union


def evaluate_slide(predictor: Predictor, patient_dir: Path, threshold: float) -> SlideResult:
    """Rebuild a complete patient as a slide, analyse it, and compare with its labels."""
    from wsiviewer.core.analysis.pipeline import analyze
    from wsiviewer.core.progress import run_to_end
    from wsiviewer.core.slides import ArraySource, Mpp
    from wsiviewer.training.idc import pad_patch, read_patch

    rebuilt = rebuild_patient(patient_dir)
    enlarged = np.repeat(
        np.repeat(rebuilt.pixels, SLIDE_ENLARGEMENT, axis=0), SLIDE_ENLARGEMENT, axis=1
    )
    slide_mpp = DATASET_MPP / SLIDE_ENLARGEMENT
    slide = ArraySource(enlarged, mpp=slide_mpp)
    analysis = run_to_end(analyze(slide, predictor, mpp=Mpp(slide_mpp, "user")))
    pmap = analysis.probability_map
    rows, cols = pmap.grid.shape
    labels = np.zeros((rows, cols), dtype=bool)
    patches = [p for p in rebuilt.patches if p.grid_rc[0] < rows and p.grid_rc[1] < cols]
    for patch in patches:
        labels[patch.grid_rc] = patch.label == 1
    predicted = pmap.scored & (np.nan_to_num(pmap.probabilities, nan=0.0) >= threshold)
    dice, iou = dice_iou(predicted, labels)
    scored = [p for p in patches if pmap.scored[p.grid_rc]]
    cell_p = np.array([pmap.probabilities[p.grid_rc] for p in scored], dtype=np.float64)
    cell_y = np.array([p.label for p in scored])
    if scored:
        direct = predictor.predict(np.stack([pad_patch(read_patch(p.path)) for p in scored]))
        difference = float(np.abs(cell_p - direct).max())
    else:
        direct = np.zeros(0, dtype=np.float32)
        difference = math.nan
    return SlideResult(
        patient=rebuilt.patient,
        patches=len(rebuilt.patches),
        scored_patches=len(scored),
        predicted_cells=int(predicted.sum()),
        label_cells=int(labels.sum()),
        dice=dice,
        iou=iou,
        auc_end_to_end=roc_auc(cell_y, cell_p),
        auc_patch_files=roc_auc(cell_y, direct),
        max_abs_difference=difference,
        cell_labels=cell_y,
        cell_scores=cell_p,
        file_scores=direct,
    )


def evaluate(
    card: ModelCard,
    data_dir: Path,
    *,
    part: str = "test",
    split_path: Path | None = None,
    complete_patients: Sequence[str] = (),
    device: str = "auto",
    slides: bool = True,
    resamples: int = 1000,
    seed: int = 0,
) -> Generator[EvaluationProgress, None, Evaluation]:
    """Score ``part`` of the card's patient split; yields progress, returns the evaluation.

    Raises
    ------
    DatasetError
        If the split cannot be read, or the data folder holds none of the part's patients.
    ModelError
        If the model cannot be loaded.
    """
    if part not in PARTS:
        raise DatasetError(f"Unknown split part {part!r}; use one of {', '.join(PARTS)}")
    split_path = split_path or split_path_of(card)
    split = PatientSplit.load(split_path)
    wanted = list(getattr(split, part))
    yield EvaluationProgress("decoding patches", 0, len(wanted))
    patch_set: PatchSet = load_patch_set(data_dir, wanted)
    present = set(patch_set.patients.tolist())
    missing = [p for p in wanted if p not in present]
    predictor = Predictor(card, device=device)
    yield EvaluationProgress("scoring patches", 0, len(patch_set))
    scores = np.empty(len(patch_set), dtype=np.float32)
    step = 4096
    for start in range(0, len(patch_set), step):
        scores[start : start + step] = predictor.predict(patch_set.pixels[start : start + step])
        yield EvaluationProgress(
            "scoring patches", min(start + step, len(patch_set)), len(patch_set)
        )
    threshold = card.threshold
    labels, patients = patch_set.labels, patch_set.patients
    evaluation = Evaluation(
        card=card,
        part=part,
        split_path=split_path,
        patients=[p for p in wanted if p in present],
        labels=labels,
        scores=scores,
        patch_patients=patients,
        threshold=threshold,
        metrics=classification_metrics(labels, scores, threshold),
        intervals={},
        per_patient=per_patient_table(labels, scores, patients, threshold),
        missing_patients=missing,
        unreadable=[f"{path}: {reason}" for path, reason in patch_set.unreadable],
        device=predictor.device_name,
    )
    yield EvaluationProgress("bootstrapping intervals", 0, resamples)
    evaluation.intervals = bootstrap_intervals(
        labels, scores, patients, threshold, resamples=resamples, seed=seed
    )
    if slides:
        complete = [p for p in evaluation.patients if p in set(complete_patients)]
        if not complete:
            evaluation.notes.append(
                "No complete patient in this part (or no idc_patients.csv): no slide-level figures"
            )
        for index, patient in enumerate(complete):
            yield EvaluationProgress(
                f"analysing patient {patient} as a slide", index, len(complete)
            )
            evaluation.slides.append(evaluate_slide(predictor, data_dir / patient, threshold))
    return evaluation


# ---------------------------------------------------------------------------------------------
# Report


_METRIC_LABELS = {
    "accuracy": "Accuracy",
    "precision": "Precision (PPV)",
    "sensitivity": "Sensitivity (recall)",
    "specificity": "Specificity",
    "f1": "F1",
    "balanced_accuracy": "Balanced accuracy",
    "roc_auc": "ROC AUC",
    "pr_auc": "PR AUC (average precision)",
    "ece": f"Expected calibration error ({RELIABILITY_BINS} bins)",
}


def _counts_by_threshold(
    labels: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """True positives, false positives and positives predicted at every distinct threshold,
    from the highest down; and the labels in that order."""
    order = np.argsort(-scores, kind="stable")
    y = labels[order].astype(bool)
    distinct = np.append(np.flatnonzero(np.diff(scores[order])), len(y) - 1)
    return np.cumsum(y)[distinct], np.cumsum(~y)[distinct], distinct + 1, y


def roc_points(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False and true positive rates at every distinct threshold, from (0, 0) to (1, 1)."""
    tp, fp, _, y = _counts_by_threshold(labels, scores)
    return (
        np.concatenate([[0.0], fp / max(1, (~y).sum())]),
        np.concatenate([[0.0], tp / max(1, y.sum())]),
    )


def pr_points(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Recall and precision at every distinct threshold."""
    tp, _, predicted, y = _counts_by_threshold(labels, scores)
    return tp / max(1, y.sum()), tp / predicted


def _save(figure: Any, path: Path) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight", metadata={"Software": None})
    atomic_write_bytes(path, buffer.getvalue())
    return path.name


def write_plots(evaluation: Evaluation, out_dir: Path) -> dict[str, str]:
    """Confusion matrix, ROC, PR, reliability diagram, training curves and per-patient AUC.

    Returns the file name of each plot drawn, by key (``confusion``, ``roc``, ``pr``,
    ``reliability``, and ``training`` and ``patients`` when there is something to show).
    """
    import matplotlib

    # Before pyplot is imported, here and in every _plot_* function.
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    inputs = _PlotInputs(
        labels=evaluation.labels.astype(bool),
        scores=evaluation.scores.astype(np.float64),
        title=f"{evaluation.card.name}, {evaluation.part} patients",
    )
    plots: dict[str, str] = {}
    for key, file_name, plot in _PLOTS:
        figure = plot(evaluation, inputs)
        if figure is not None:
            plots[key] = _save(figure, out_dir / file_name)
            plt.close(figure)
    return plots


@dataclass(frozen=True)
class _PlotInputs:
    """The patch labels (bool) and scores (float64) every plot draws, and its title line."""

    labels: np.ndarray
    scores: np.ndarray
    title: str


def _plot_confusion(evaluation: Evaluation, inputs: _PlotInputs) -> Figure:
    import matplotlib.pyplot as plt

    m = evaluation.metrics
    figure, axis = plt.subplots(figsize=(4.2, 3.6))
    matrix = np.array([[m["tn"], m["fp"]], [m["fn"], m["tp"]]])
    shares = matrix / np.maximum(1, matrix.sum(axis=1, keepdims=True))
    axis.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for (r, c), count in np.ndenumerate(matrix):
        axis.text(
            c,
            r,
            f"{int(count):,}\n{shares[r, c]:.1%}",
            ha="center",
            va="center",
            color="white" if shares[r, c] > 0.6 else "black",
        )
    axis.set_xticks([0, 1], ["non-IDC", "IDC"])
    axis.set_yticks([0, 1], ["non-IDC", "IDC"])
    axis.set_xlabel(f"predicted (P ≥ {evaluation.threshold:.3f})")
    axis.set_ylabel("label")
    axis.set_title(f"Confusion matrix\n{inputs.title}", fontsize=9)
    return figure


def _plot_roc(evaluation: Evaluation, inputs: _PlotInputs) -> Figure:
    import matplotlib.pyplot as plt

    m = evaluation.metrics
    figure, axis = plt.subplots(figsize=(4.2, 4.0))
    fpr, tpr = roc_points(inputs.labels, inputs.scores)
    axis.plot(fpr, tpr, color="#1f5fa8", label=f"ROC AUC {m['roc_auc']:.3f}")
    axis.plot([0, 1], [0, 1], color="0.7", linestyle=":", linewidth=1)
    axis.plot(
        1 - m["specificity"],
        m["sensitivity"],
        "o",
        color="#d1495b",
        label=f"threshold {evaluation.threshold:.3f}",
    )
    sensitive = (evaluation.card.extra.get("operating_points") or {}).get("sensitivity_0.90")
    if sensitive is not None:
        at = classification_metrics(inputs.labels, inputs.scores, float(sensitive))
        axis.plot(
            1 - at["specificity"],
            at["sensitivity"],
            "s",
            color="#edae49",
            label=f"≥0.90 sensitivity on validation ({float(sensitive):.3f})",
        )
    axis.set_xlabel("1 − specificity")
    axis.set_ylabel("sensitivity")
    axis.set_title(f"ROC\n{inputs.title}", fontsize=9)
    axis.legend(loc="lower right", fontsize=8)
    axis.set_aspect("equal")
    return figure


def _plot_precision_recall(evaluation: Evaluation, inputs: _PlotInputs) -> Figure:
    import matplotlib.pyplot as plt

    m = evaluation.metrics
    labels = inputs.labels
    figure, axis = plt.subplots(figsize=(4.2, 4.0))
    recall, precision = pr_points(labels, inputs.scores)
    axis.plot(recall, precision, color="#1f5fa8", label=f"PR AUC {m['pr_auc']:.3f}")
    axis.axhline(
        labels.mean(),
        color="0.7",
        linestyle=":",
        linewidth=1,
        label=f"IDC prevalence {labels.mean():.2f}",
    )
    axis.plot(
        m["sensitivity"],
        m["precision"],
        "o",
        color="#d1495b",
        label=f"threshold {evaluation.threshold:.3f}",
    )
    axis.set_xlabel("recall (sensitivity)")
    axis.set_ylabel("precision")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1.02)
    axis.set_title(f"Precision-recall\n{inputs.title}", fontsize=9)
    axis.legend(loc="lower left", fontsize=8)
    return figure


def _plot_reliability(evaluation: Evaluation, inputs: _PlotInputs) -> Figure:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    figure, (top, bottom) = plt.subplots(
        2, 1, figsize=(4.2, 5.0), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    bins = reliability_bins(inputs.labels, inputs.scores, RELIABILITY_BINS)
    top.plot([0, 1], [0, 1], color="0.7", linestyle=":", linewidth=1, label="perfect calibration")
    top.plot(
        [b[0] for b in bins],
        [b[1] for b in bins],
        "o-",
        color="#1f5fa8",
        label=f"ECE {evaluation.metrics['ece']:.3f}",
    )
    top.set_ylabel("observed IDC fraction")
    top.set_title(f"Reliability ({RELIABILITY_BINS} bins)\n{inputs.title}", fontsize=9)
    top.legend(loc="upper left", fontsize=8)
    bottom.hist(inputs.scores, bins=np.linspace(0, 1, RELIABILITY_BINS + 1), color="#1f5fa8")
    bottom.set_yscale("log")
    bottom.yaxis.set_minor_formatter(NullFormatter())
    bottom.set_xlabel("predicted P(IDC)")
    bottom.set_ylabel("patches")
    return figure


def _plot_training(evaluation: Evaluation, inputs: _PlotInputs) -> Figure | None:
    """Loss and validation AUC by epoch, from the card; ``None`` if it records none."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    training = evaluation.card.extra.get("training") or {}
    if not training.get("validation_auc_by_epoch"):
        return None
    epochs = np.arange(1, len(training["validation_auc_by_epoch"]) + 1)
    figure, (loss_axis, auc_axis) = plt.subplots(1, 2, figsize=(7.5, 3.2))
    if training.get("train_loss_by_epoch"):
        loss_axis.plot(epochs, training["train_loss_by_epoch"], "o-", label="training")
    if training.get("validation_loss_by_epoch"):
        loss_axis.plot(epochs, training["validation_loss_by_epoch"], "o-", label="validation")
    loss_axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    auc_axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    loss_axis.set_xlabel("epoch")
    loss_axis.set_ylabel("class-weighted cross-entropy")
    loss_axis.legend(fontsize=8)
    auc_axis.plot(epochs, training["validation_auc_by_epoch"], "o-", color="#2a9d8f")
    best = int(training.get("best_epoch") or 0)
    if best:
        auc_axis.axvline(best, color="0.6", linestyle=":", label=f"kept: epoch {best}")
        auc_axis.legend(fontsize=8)
    auc_axis.set_xlabel("epoch")
    auc_axis.set_ylabel("validation ROC AUC")
    figure.suptitle(f"Training, {evaluation.card.name}", fontsize=9)
    figure.tight_layout()
    return figure


def _plot_patients(evaluation: Evaluation, inputs: _PlotInputs) -> Figure | None:
    """ROC AUC of each patient with both classes; ``None`` if there is none."""
    import matplotlib.pyplot as plt

    rows = [r for r in evaluation.per_patient if not math.isnan(r["roc_auc"])]
    if not rows:
        return None
    figure, axis = plt.subplots(figsize=(7.5, 3.0))
    ordered = sorted(rows, key=lambda r: r["roc_auc"])
    axis.bar(range(len(ordered)), [r["roc_auc"] for r in ordered], color="#1f5fa8")
    axis.axhline(evaluation.metrics["roc_auc"], color="#d1495b", linestyle=":", label="all patches")
    axis.set_xticks(range(len(ordered)), [r["patient"] for r in ordered], rotation=90, fontsize=6)
    axis.set_ylim(0.5, 1.0)
    axis.set_ylabel("ROC AUC")
    axis.set_title(f"ROC AUC per patient (patients with both classes)\n{inputs.title}", fontsize=9)
    axis.legend(fontsize=8)
    return figure


#: The report's plots in the order they are drawn: key, file name, drawing.
_PLOTS: tuple[tuple[str, str, Callable[[Evaluation, _PlotInputs], Figure | None]], ...] = (
    ("confusion", "confusion_matrix.png", _plot_confusion),
    ("roc", "roc.png", _plot_roc),
    ("pr", "precision_recall.png", _plot_precision_recall),
    ("reliability", "reliability.png", _plot_reliability),
    ("training", "training_curves.png", _plot_training),
    ("patients", "patients_auc.png", _plot_patients),
)


def _fmt(value: float, digits: int = 3) -> str:
    return (
        "–"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else f"{value:.{digits}f}"
    )


def write_report(evaluation: Evaluation, out_dir: Path) -> Path:
    """Write ``metrics.json``, ``patients.csv``, ``slides.csv``, the plots and ``report.md``.

    Returns the report's path. Nothing in it is made from patch pixels.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    data = evaluation.to_dict()
    atomic_write_text(out_dir / "metrics.json", json.dumps(data, indent=1, allow_nan=True) + "\n")
    _write_csv(out_dir / "patients.csv", evaluation.per_patient)
    if evaluation.slides:
        _write_csv(out_dir / "slides.csv", [s.to_dict() for s in evaluation.slides])
    plots = write_plots(evaluation, out_dir)
    lines = [
        *_summary_lines(evaluation),
        *_patch_level_lines(evaluation, plots),
        *_slide_level_lines(evaluation),
        *_training_lines(evaluation.card, plots),
        *_per_patient_lines(evaluation, plots),
        *_notes_lines(evaluation),
    ]
    report = out_dir / "report.md"
    atomic_write_text(report, "\n".join(lines))
    return report


def _summary_lines(evaluation: Evaluation) -> list[str]:
    """Title, research-use notice, and what was evaluated on what."""
    card = evaluation.card
    return [
        f"# {card.name} {card.version}: evaluation on the {evaluation.part} patients",
        "",
        f"> {RESEARCH_USE_NOTICE}",
        "",
        f"- Model: `{card.name}` ({card.architecture}), weights sha256 "
        f"`{card.weights_sha256[:16]}…`, input {card.input_size}×{card.input_size} px "
        f"at {card.input_mpp:g} µm/px",
        f"- Split: `{evaluation.split_path.name}`, part **{evaluation.part}**: "
        f"{len(evaluation.patients)} patients, {len(evaluation.labels):,} patches, "
        f"{evaluation.labels.mean():.1%} IDC",
        f"- Threshold {evaluation.threshold:.4f} (chosen on validation to maximise balanced "
        f"accuracy); calibration: temperature {card.temperature:.3f}, logit bias "
        f"{card.logit_bias:+.3f}",
        f"- Scored on: {evaluation.device}; wsiviewer {__version__}",
        "",
    ]


def _patch_level_lines(evaluation: Evaluation, plots: dict[str, str]) -> list[str]:
    """Metrics with their intervals, the confusion counts, and the patch-level plots."""
    m, ci = evaluation.metrics, evaluation.intervals
    lines = [
        "## Patch level",
        "",
        "95% intervals: percentile bootstrap over patients (1,000 resamples, seeded), since "
        "patches of one patient are correlated. ECE is biased upwards in resamples, so its "
        "interval can sit above the point estimate.",
        "",
        "| metric | value | 95% interval |",
        "|---|---|---|",
    ]
    for key in INTERVAL_METRICS:
        low, high = ci.get(key, [math.nan, math.nan])
        lines.append(f"| {_METRIC_LABELS[key]} | {_fmt(m[key])} | {_fmt(low)}–{_fmt(high)} |")
    lines += [
        "",
        f"Confusion matrix: TP {int(m['tp']):,}, FP {int(m['fp']):,}, TN {int(m['tn']):,}, "
        f"FN {int(m['fn']):,}.",
        "",
    ]
    for key, caption in (
        ("confusion", "Confusion matrix"),
        ("roc", "ROC curve"),
        ("pr", "Precision-recall curve"),
        ("reliability", "Reliability diagram"),
    ):
        if key in plots:
            lines.append(f"![{caption}]({plots[key]})")
    lines.append("")
    return lines


def _slide_level_lines(evaluation: Evaluation) -> list[str]:
    """One row per patient analysed as a slide and the pooled row; none without slides."""
    if not evaluation.slides:
        return []
    summary = evaluation.slide_summary()
    lines = [
        "## Slide level",
        "",
        f"Each complete patient of the part is tiled back into its section at "
        f"{DATASET_MPP:g} µm/px, enlarged {SLIDE_ENLARGEMENT}× into a one-level "
        f"{DATASET_MPP / SLIDE_ENLARGEMENT:g} µm/px slide (so the tiler must resample to "
        "the model's scale) and analysed like any slide: tissue detection, patches, "
        "heatmap. The IDC mask (cells with P ≥ threshold) is compared with the label mask "
        "(IDC patches); the end-to-end AUC scores each labelled cell's probability.",
        "",
        "| patient | patches | scored | Dice | IoU | AUC end to end | AUC of the patch "
        "files | max abs ΔP cell vs patch file |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in evaluation.slides:
        lines.append(
            f"| {s.patient} | {s.patches:,} | {s.scored_patches:,} | {_fmt(s.dice)} | "
            f"{_fmt(s.iou)} | {_fmt(s.auc_end_to_end, 4)} | {_fmt(s.auc_patch_files, 4)} | "
            f"{s.max_abs_difference:.1e} |"
        )
    lines += [
        f"| **all** | {summary['patches']:,} | {summary['scored_patches']:,} | "
        f"{_fmt(summary['dice_pooled'])} (mean {_fmt(summary['dice_mean'])}) | "
        f"{_fmt(summary['iou_pooled'])} (mean {_fmt(summary['iou_mean'])}) | "
        f"{_fmt(summary['auc_end_to_end'], 4)} | {_fmt(summary['auc_patch_files'], 4)} | "
        f"{summary['max_abs_difference']:.1e} |",
        "",
        "Cells the tissue detector dropped are not scored (patches − scored). Equal AUCs "
        "and a zero ΔP show the tiler feeds the model exactly what it was trained on.",
        "",
    ]
    return lines


def _training_lines(card: ModelCard, plots: dict[str, str]) -> list[str]:
    """How the model was trained, from its card; none without the training plot."""
    if "training" not in plots:
        return []
    training = card.extra.get("training") or {}
    seconds = training.get("epoch_seconds") or []
    threads = _plural(training.get("cpu_threads", "?"), "thread")
    return [
        "## Training",
        "",
        f"{training.get('epochs_run', len(seconds))} epochs on "
        f"{training.get('device', '?')} ({threads}), "
        f"median {np.median(seconds) if seconds else math.nan:.0f} s per epoch; weights "
        f"of epoch {training.get('best_epoch', '?')} kept (best validation ROC AUC).",
        "",
        f"![Training curves]({plots['training']})",
        "",
    ]


def _per_patient_lines(evaluation: Evaluation, plots: dict[str, str]) -> list[str]:
    lines = ["## Per patient", ""]
    if "patients" in plots:
        lines += [f"![ROC AUC per patient]({plots['patients']})", ""]
    lines += [
        "| patient | patches | IDC | mean P(IDC) | ROC AUC | sensitivity | specificity |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in evaluation.per_patient:
        lines.append(
            f"| {row['patient']} | {row['patches']:,} | {row['idc_fraction']:.1%} | "
            f"{row['mean_p_idc']:.3f} | {_fmt(row['roc_auc'])} | {_fmt(row['sensitivity'])} | "
            f"{_fmt(row['specificity'])} |"
        )
    lines.append("")
    return lines


def _notes_lines(evaluation: Evaluation) -> list[str]:
    """Missing patients, unreadable files and notes; none when there are none."""
    if not (evaluation.missing_patients or evaluation.unreadable or evaluation.notes):
        return []
    lines = ["## Notes", ""]
    if evaluation.missing_patients:
        lines.append(
            f"- Patients of the split not in the data folder: "
            f"{', '.join(evaluation.missing_patients)}"
        )
    if evaluation.unreadable:
        lines.append(f"- {len(evaluation.unreadable)} unreadable patch files were skipped")
    lines += [f"- {note}" for note in evaluation.notes]
    lines.append("")
    return lines


def _plural(count: object, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_text(path, buffer.getvalue())


__all__ = [
    "Evaluation",
    "EvaluationProgress",
    "SlideResult",
    "evaluate",
    "write_report",
]
