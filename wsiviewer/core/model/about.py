"""What a model is, in words: the "About this model" page, from its card and its report.

:func:`describe_model` reads a :class:`~wsiviewer.core.model.cards.ModelCard` and the
evaluation report written beside it (``reports/<name>/``: ``patients.csv``, ``folds.csv``,
``end_to_end.csv``) and says, in sections a pathologist can read: what IDC is and what the
dataset's patches are, how the model was trained and validated, how often it is right at its
operating point (as whole patches out of 100, read from the card at run time), where it does
worst (the weakest patients of the report), and that it is for research use only. The
description renders as plain text (the CLI) and as simple HTML (the viewer's text browser).

Example patches of the weakest patients are made at run time from the IDC dataset, when the
user has it (:mod:`wsiviewer.training.failure_examples`); nothing here reads patches.

Only the standard library is imported: describing a model is as cheap as listing it.
"""

from __future__ import annotations

import csv
import html
import math
import os
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from wsiviewer import RESEARCH_USE_NOTICE
from wsiviewer.core.model.cards import ModelCard
from wsiviewer.core.units import um_from_px

#: The environment variable naming the IDC dataset folder (``<patient>/<0|1>/<patch>``).
IDC_DATA_ENV = "WSIVIEWER_IDC_DATA"
#: A patient's sensitivity (specificity, ROC AUC) counts only with at least this many patches
#: of the class (of each class) behind it: one IDC patch makes a sensitivity of 0 or 1.
MIN_CLASS_PATCHES = 20
#: Patients named for each failure mode.
PATIENTS_PER_MODE = 2

FailureKind = Literal["misses", "false_alarms", "ranking"]


@dataclass(frozen=True)
class Section:
    """A heading, paragraphs and bullet points, all plain text."""

    heading: str
    paragraphs: tuple[str, ...] = ()
    bullets: tuple[str, ...] = ()
    #: Paragraphs after the bullet points.
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class PatientFigures:
    """One patient's row of the report's ``patients.csv``."""

    patient: str
    #: The cross-validation fold that scored it (``None`` for a held-out split).
    fold: str | None
    patches: int
    idc_patches: int
    roc_auc: float | None
    sensitivity: float | None
    specificity: float | None

    @property
    def non_idc_patches(self) -> int:
        return self.patches - self.idc_patches


@dataclass(frozen=True)
class FailureMode:
    """A way the model fails, and the patients where it fails that way most."""

    kind: FailureKind
    #: What goes wrong, in words ("Misses IDC").
    title: str
    patients: tuple[PatientFigures, ...]

    @property
    def errors_shown(self) -> tuple[str, ...]:
        """The example errors that show this mode: false negatives, false positives or both."""
        return {
            "misses": ("false negative",),
            "false_alarms": ("false positive",),
            "ranking": ("false positive", "false negative"),
        }[self.kind]


@dataclass(frozen=True)
class MeasuredPoint:
    """Sensitivity and specificity measured at the card's operating point."""

    #: The card's metrics part: ``out_of_fold``, ``test``, ``validation`` or ``card``.
    part: str
    sensitivity: float
    specificity: float
    patients: int | None = None
    patches: int | None = None
    sensitivity_interval: tuple[float, float] | None = None
    specificity_interval: tuple[float, float] | None = None
    roc_auc: float | None = None

    @property
    def idc_flagged_of_100(self) -> int:
        """Of 100 IDC patches, about this many are flagged."""
        return of_100(self.sensitivity)

    @property
    def non_idc_flagged_of_100(self) -> int:
        """Of 100 non-IDC patches, about this many are wrongly flagged."""
        return of_100(1.0 - self.specificity)


@dataclass(frozen=True)
class ModelDescription:
    """The "About this model" page: sections, and the figures they were written from."""

    name: str
    version: str
    title: str
    dataset: Section
    training: Section
    operating_point: Section
    failure_modes_section: Section
    intended_use: Section
    #: Measured at the operating point; ``None`` when the card has no such figures.
    measured: MeasuredPoint | None
    failure_modes: tuple[FailureMode, ...]
    #: ``True`` when the shipped model was trained on every patient (cross-validated), so
    #: the patients named were in its training data; their figures are out of fold.
    trained_on_named_patients: bool

    @property
    def sections(self) -> tuple[Section, ...]:
        return (
            self.dataset,
            self.training,
            self.operating_point,
            self.failure_modes_section,
            self.intended_use,
        )

    @property
    def weak_patients(self) -> tuple[PatientFigures, ...]:
        """Every patient a failure mode names, once, in the order named."""
        seen: dict[str, PatientFigures] = {}
        for mode in self.failure_modes:
            for figures in mode.patients:
                seen.setdefault(figures.patient, figures)
        return tuple(seen.values())

    def to_text(self, width: int = 88) -> str:
        """The page as plain text, wrapped at ``width`` characters."""
        lines = [self.title, "=" * len(self.title), "", *textwrap.wrap(RESEARCH_USE_NOTICE, width)]
        for section in self.sections:
            lines += ["", section.heading, "-" * len(section.heading)]
            for paragraph in section.paragraphs:
                lines += [*textwrap.wrap(paragraph, width), ""]
            for bullet in section.bullets:
                lines += textwrap.wrap(bullet, width, initial_indent="- ", subsequent_indent="  ")
            if section.bullets:
                lines.append("")
            for note in section.notes:
                lines += [*textwrap.wrap(note, width), ""]
            if lines[-1] == "":
                lines.pop()
        return "\n".join(lines) + "\n"

    def to_html(self) -> str:
        """The page as simple HTML (what ``QTextBrowser`` renders)."""
        e = html.escape
        parts = [
            f"<h2>{e(self.title)}</h2>",
            f"<p style='color:#a00000'><b>{e(RESEARCH_USE_NOTICE)}</b></p>",
        ]
        for section in self.sections:
            parts.append(f"<h3>{e(section.heading)}</h3>")
            parts += [f"<p>{e(paragraph)}</p>" for paragraph in section.paragraphs]
            if section.bullets:
                items = "".join(f"<li>{e(bullet)}</li>" for bullet in section.bullets)
                parts.append(f"<ul>{items}</ul>")
            parts += [f"<p>{e(note)}</p>" for note in section.notes]
        return "\n".join(parts)


def of_100(fraction: float) -> int:
    """``fraction`` as whole cases out of 100, rounded half up (0.795 is 80, never 79)."""
    return math.floor(fraction * 100 + 0.5)


def idc_data_folder(chosen: str | os.PathLike[str] | None = None) -> Path | None:
    """The IDC dataset folder: ``chosen`` if given, else :data:`IDC_DATA_ENV`; ``None`` when
    neither names an existing folder."""
    for value in (chosen, os.environ.get(IDC_DATA_ENV)):
        if value:
            folder = Path(value).expanduser()
            if folder.is_dir():
                return folder
    return None


def describe_model(card: ModelCard) -> ModelDescription:
    """The "About this model" page of ``card``, from the card and its report folder.

    A card without metrics, training details or report gets a page that says so.
    """
    extra = card.extra
    metrics = extra.get("metrics") if isinstance(extra.get("metrics"), Mapping) else {}
    assert isinstance(metrics, Mapping)
    cross_validated = isinstance(metrics.get("out_of_fold"), Mapping)
    report_dir = _report_dir(card)
    patients = _read_patients(report_dir / "patients.csv") if report_dir else []
    folds = _read_rows(report_dir / "folds.csv") if report_dir else []
    measured = _measured_point(metrics)
    modes = _failure_modes(patients)
    return ModelDescription(
        name=card.name,
        version=card.version,
        title=f"About this model: {card.name} {card.version}",
        dataset=_dataset_section(card),
        training=_training_section(card, cross_validated),
        operating_point=_operating_point_section(card, measured, metrics, folds),
        failure_modes_section=_failure_section(
            card, patients, modes, folds, cross_validated, report_dir
        ),
        intended_use=_intended_use_section(card),
        measured=measured,
        failure_modes=modes,
        trained_on_named_patients=cross_validated,
    )


# --------------------------------------------------------------------------- sections


def _dataset_section(card: ModelCard) -> Section:
    side_um = um_from_px(card.input_size, card.input_mpp)
    data = card.extra.get("training_data")
    dataset = str(data.get("dataset", "")) if isinstance(data, Mapping) else ""
    paragraphs = [
        "Invasive ductal carcinoma (IDC) is the most common type of breast cancer: cancer "
        "cells that began in a milk duct have broken through its wall into the surrounding "
        "breast tissue. Finding and measuring it on an H&E slide is a pathologist's task; this "
        "model only points at places to look.",
        f"The model looks at one square of tissue at a time: {card.input_size}×"
        f"{card.input_size} px at {card.input_mpp:g} µm/px, about {side_um:g}×{side_um:g} µm, "
        "and gives the probability that it shows IDC, P(IDC). The viewer cuts a slide into "
        "squares of that size and scale and colours each by its P(IDC).",
    ]
    if dataset:
        paragraphs.append(
            f"It learned from the {dataset}. These are patches cut from H&E-stained "
            "whole-mount slides of breast cancer, scanned at 40× and reduced 16 times, each "
            "labelled IDC or not from a pathologist's outline of the IDC regions."
        )
    else:
        paragraphs.append("The card does not say which data the model learned from.")
    return Section("What the model looks at", tuple(paragraphs))


def _training_section(card: ModelCard, cross_validated: bool) -> Section:
    extra = card.extra
    data = extra.get("training_data") if isinstance(extra.get("training_data"), Mapping) else {}
    assert isinstance(data, Mapping)
    training = extra.get("training") if isinstance(extra.get("training"), Mapping) else {}
    assert isinstance(training, Mapping)
    settings = training.get("settings") if isinstance(training.get("settings"), Mapping) else {}
    assert isinstance(settings, Mapping)
    metrics = extra.get("metrics") if isinstance(extra.get("metrics"), Mapping) else {}
    assert isinstance(metrics, Mapping)
    widths = card.architecture_args.get("widths")
    network = f"a small convolutional network ({card.architecture}"
    if isinstance(widths, list) and widths:
        network += f", {'/'.join(str(w) for w in widths)} channels"
    paragraphs = [f"The model is {network})."]
    patients, patches = data.get("patients"), data.get("patches")
    epochs = training.get("epochs_run")
    if cross_validated:
        oof = metrics["out_of_fold"]
        k = oof.get("folds", "several")
        paragraphs.append(
            f"It was validated by {k}-fold cross-validation by patient: the patients were dealt "
            f"into {k} folds, no patient in two, and each fold was scored by a model trained "
            f"on the other folds only. Every figure below is out of fold: each patient scored "
            "by a model that never saw any of its patches, each model calibrated on patients "
            "held back from its own training, its threshold chosen on the other folds."
        )
        validation = data.get("validation_patients")
        best = training.get("best_epoch")
        counted = isinstance(patients, int) and isinstance(patches, int)
        if (
            isinstance(patients, int)
            and isinstance(patches, int)
            and isinstance(validation, int)
            and isinstance(best, int)
        ):
            paragraphs.append(
                f"The model shipped was then made the same way from all {patients:,} patients "
                f"({patches:,} patches): trained on {patients - validation:,} of them, with "
                f"{validation} held back to choose its epoch ({best}) and calibrate it, as each "
                "fold's model was. The out-of-fold figures are the estimate of how it does on "
                "patients it has not seen."
            )
        else:
            shipped = "The model shipped was then trained the same way on all"
            if counted:
                shipped += f" {patients:,} patients ({patches:,} patches)"
            else:
                shipped += " the patients"
            if isinstance(epochs, int):
                shipped += f" for {epochs} epochs"
            paragraphs.append(
                shipped + ". No patient was kept back from it, so the out-of-fold figures are "
                "the estimate of how it does on patients it has not seen."
            )
    elif isinstance(patients, Mapping) and isinstance(patches, Mapping):
        parts = [
            f"{patients.get(part, '?')} for {word} ({_count(patches.get(part))} patches)"
            for part, word in (
                ("train", "training"),
                ("validation", "validation"),
                ("test", "testing"),
            )
        ]
        paragraphs.append(
            "The patients were split, by patient and never by patch (patches of one patient "
            f"look alike): {', '.join(parts)}. Training stopped at the best validation epoch"
            + (
                f" ({training['best_epoch']})"
                if isinstance(training.get("best_epoch"), int)
                else ""
            )
            + "; calibration and threshold were chosen on the validation patients; the test "
            "patients were held out of all of it."
        )
    else:
        paragraphs.append("The card does not say how the model was trained or validated.")
    recipe = _recipe_words(settings)
    if recipe:
        paragraphs.append(f"Training varied the patches' look: {recipe}.")
    if card.colour is not None:
        paragraphs.append(
            "Each patient's colours were standardised to a reference (stain and scanner "
            "differ), in training and on every slide analysed: the model sees the same range "
            "of colours either way."
        )
    if card.context is not None:
        paragraphs.append(
            "On a slide, each square's score is blended with its neighbours' (spatial "
            "context) before the threshold is applied: IDC forms regions, not single squares."
        )
    calibration = extra.get("calibration")
    if isinstance(calibration, str) and calibration:
        paragraphs.append(f"Calibration: {calibration}.".replace("..", "."))
    return Section("How it was trained and validated", tuple(paragraphs))


def _recipe_words(settings: Mapping[str, Any]) -> str:
    words = []
    for key, text in (
        ("stain_jitter", "stain colour ±{:g}"),
        ("brightness_contrast", "brightness and contrast ±{:g}"),
        ("hsv_jitter", "hue and saturation ±{:g}"),
    ):
        value = settings.get(key)
        if isinstance(value, int | float) and value > 0:
            words.append(text.format(value))
    jpeg = settings.get("jpeg_probability")
    if isinstance(jpeg, int | float) and jpeg > 0:
        words.append(f"JPEG compression on {of_100(jpeg)} of 100 patches")
    return ", ".join(words)


def _operating_point_section(
    card: ModelCard,
    measured: MeasuredPoint | None,
    metrics: Mapping[str, Any],
    folds: Sequence[Mapping[str, str]],
) -> Section:
    chosen = _threshold_reason(card)
    paragraphs = [
        f"A square is flagged as IDC when its P(IDC) is at least {card.threshold:.2f}, the "
        f"card's threshold{chosen}. Regions on the slide are drawn at this threshold."
    ]
    if measured is None:
        paragraphs.append(
            "This card carries no measured sensitivity or specificity: how often the model is "
            "right is unknown. Treat its heatmap as unvalidated."
        )
        return Section("How often it is right", tuple(paragraphs))
    counted = ""
    if measured.patients is not None and measured.patches is not None:
        counted = f" {measured.patients:,} patients ({measured.patches:,} patches)"
    where = {
        "out_of_fold": f"Measured out of fold over{counted or ' every patient'}",
        "test": f"Measured on the{counted or ' test patients'}, held out of training",
        "validation": f"Measured on the validation patients{counted} (the threshold was "
        "chosen on them, so this is optimistic)",
        "card": "As the card states (it does not say on which patients)",
    }[measured.part]
    paragraphs.append(
        f"{where}: of 100 IDC patches it flags about {measured.idc_flagged_of_100}; of 100 "
        f"non-IDC patches it wrongly flags about {measured.non_idc_flagged_of_100}."
    )
    detail = f"Sensitivity {measured.sensitivity:.2f}"
    if measured.sensitivity_interval:
        low, high = measured.sensitivity_interval
        detail += f" (95% interval over patients {low:.2f}–{high:.2f})"
    detail += f", specificity {measured.specificity:.2f}"
    if measured.specificity_interval:
        low, high = measured.specificity_interval
        detail += f" ({low:.2f}–{high:.2f})"
    paragraphs.append(detail + ".")
    if measured.roc_auc is not None:
        paragraphs.append(
            f"ROC AUC {measured.roc_auc:.2f}: of an IDC and a non-IDC patch picked at random, "
            f"it gives the IDC patch the higher P(IDC) about {of_100(measured.roc_auc)} times "
            "in 100."
        )
    if measured.part == "out_of_fold":
        spread = _fold_spread(folds)
        paragraphs.append(
            "These figures pool the fold models, each at its own threshold fitted as the "
            "card's was." + (f" {spread}" if spread else "")
        )
    whole = metrics.get("out_of_fold_map")
    if isinstance(whole, Mapping) and finite_number(whole.get("sensitivity")) is not None:
        sensitivity = float(whole["sensitivity"])
        specificity = finite_number(whole.get("specificity"))
        text = (
            f"On whole sections ({_count(whole.get('patients'))} complete patients rebuilt as "
            f"slides, with spatial context, out of fold): of 100 IDC squares it flags about "
            f"{of_100(sensitivity)}"
        )
        if specificity is not None:
            text += f"; of 100 non-IDC squares it wrongly flags about {of_100(1 - specificity)}"
        paragraphs.append(text + ".")
    return Section("How often it is right", tuple(paragraphs))


def _threshold_reason(card: ModelCard) -> str:
    points = card.extra.get("operating_points")
    reasons = {
        "balanced_accuracy": "chosen to balance sensitivity and specificity (best balanced "
        "accuracy)",
        "sensitivity_0.90": "chosen for a sensitivity of at least 0.90",
    }
    if isinstance(points, Mapping):
        for key, value in points.items():
            number = finite_number(value)
            if key in reasons and number is not None and abs(number - card.threshold) < 1e-6:
                return f", {reasons[key]}"
    return ""


def _fold_spread(folds: Sequence[Mapping[str, str]]) -> str:
    sensitivities = [v for row in folds if (v := finite_number(row.get("sensitivity"))) is not None]
    specificities = [v for row in folds if (v := finite_number(row.get("specificity"))) is not None]
    if len(sensitivities) < 2 or len(specificities) < 2:
        return ""
    return (
        f"The folds' models differ: of 100 IDC patches they flagged from "
        f"{of_100(min(sensitivities))} to {of_100(max(sensitivities))}, and of 100 non-IDC "
        f"patches wrongly flagged from {of_100(1 - max(specificities))} to "
        f"{of_100(1 - min(specificities))}; the shipped model's own figures on new patients "
        "may lie anywhere in that range."
    )


def _failure_section(
    card: ModelCard,
    patients: Sequence[PatientFigures],
    modes: Sequence[FailureMode],
    folds: Sequence[Mapping[str, str]],
    cross_validated: bool,
    report_dir: Path | None,
) -> Section:
    heading = "Where it does worst"
    if not patients:
        where = "its report has no per-patient results" if report_dir else "it has no report"
        return Section(
            heading,
            (
                f"Not known: {where}. The dataset labels patches only IDC or not, so failures "
                "could only be named by patient in any case.",
            ),
        )
    scored = "out of fold" if cross_validated else "on the held-out patients"
    paragraphs = [
        f"From the report's per-patient results ({len(patients)} patients, scored {scored}). "
        "The dataset labels patches only IDC or not, with no tissue type, so failures are "
        "named by patient; the example patches show what the tissue looks like."
    ]
    bullets = [_mode_words(mode, folds) for mode in modes]
    notes = []
    left_out = _too_few_to_rank(patients, modes)
    if left_out:
        notes.append(left_out)
    if cross_validated:
        notes.append(
            "These patients were in the shipped model's training data (it was trained on "
            "every patient); the figures above are those of the fold model that never saw "
            "them. Example patches are scored by the shipped model, which saw them in "
            "training, so it errs on them less than these figures say."
        )
    else:
        notes.append(
            "These patients were held out of the model's training, validation and threshold: "
            "the figures, and the example patches' scores, are the model's own on new patients."
        )
    notes.append(
        "Example patches of these patients are made on request from the IDC dataset, which is "
        "not shipped with wsiviewer: in the viewer with Choose dataset folder… (or the "
        f"{IDC_DATA_ENV} environment variable), on the command line with wsiviewer about-model "
        f"{card.name} --examples-from IDC_DIR --out DIR."
    )
    return Section(heading, tuple(paragraphs), tuple(bullets), tuple(notes))


def _mode_words(mode: FailureMode, folds: Sequence[Mapping[str, str]]) -> str:
    named = []
    for figures in mode.patients:
        where = f"patient {figures.patient}"
        if figures.fold is not None:
            where += f" (fold {figures.fold})"
        if mode.kind == "misses" and figures.sensitivity is not None:
            named.append(
                f"{where} misses about {of_100(1 - figures.sensitivity)} of 100 IDC patches "
                f"(of its {figures.idc_patches:,})"
            )
        elif mode.kind == "false_alarms" and figures.specificity is not None:
            named.append(
                f"{where} has about {of_100(1 - figures.specificity)} of 100 non-IDC patches "
                f"flagged (of its {figures.non_idc_patches:,})"
            )
        elif figures.roc_auc is not None:
            named.append(
                f"{where}, ROC AUC {figures.roc_auc:.2f} ({figures.idc_patches:,} IDC and "
                f"{figures.non_idc_patches:,} non-IDC patches)"
            )
    text = f"{mode.title}: {'; '.join(named)}."
    shared_folds = {figures.fold for figures in mode.patients}
    if mode.kind == "misses" and len(shared_folds) == 1 and None not in shared_folds:
        fold = shared_folds.pop()
        row = next((r for r in folds if r.get("fold") == fold), None)
        sensitivity = finite_number(row.get("sensitivity")) if row else None
        if sensitivity is not None:
            who = "Both were" if len(mode.patients) == 2 else "Each was"
            text += (
                f" {who} scored by fold {fold}'s model, which flagged about "
                f"{of_100(sensitivity)} of 100 IDC patches over all its patients: part of "
                "this is that model, not the patients."
            )
    return text


def _too_few_to_rank(patients: Sequence[PatientFigures], modes: Sequence[FailureMode]) -> str:
    """Says which patient with the lowest ROC AUC was left out for having too few patches."""
    named = {figures.patient for mode in modes for figures in mode.patients}
    ranked = sorted(
        (p for p in patients if p.roc_auc is not None), key=lambda p: (p.roc_auc, p.patient)
    )
    if not ranked or ranked[0].patient in named:
        return ""
    lowest = ranked[0]
    return (
        f"Patients with fewer than {MIN_CLASS_PATCHES} patches of a class are left out of that "
        f"class's ranking, their figures resting on too few patches: the lowest ROC AUC of "
        f"all, {lowest.roc_auc:.2f} for patient {lowest.patient}, comes from "
        f"{lowest.idc_patches:,} IDC and {lowest.non_idc_patches:,} non-IDC patches."
    )


def _intended_use_section(card: ModelCard) -> Section:
    # numpy behind it: imported only when the page is made, so importing this stays cheap.
    from wsiviewer.core.model.stain_check import describe_stain_check

    return Section(
        "Intended use",
        (
            card.intended_use,
            "Its output must be reviewed by a pathologist.",
            "It answers one question, IDC or not, for squares of about "
            f"{um_from_px(card.input_size, card.input_mpp):g} µm; it was not trained to "
            "recognise other lesions, and slides of other organs, stains, scanners or "
            "preparations are outside what it has seen.",
            describe_stain_check(card.stain_check),
        ),
    )


# --------------------------------------------------------------------------- figures


def _measured_point(metrics: Mapping[str, Any]) -> MeasuredPoint | None:
    """Sensitivity and specificity of the most trustworthy part the card has."""
    for part in ("out_of_fold", "test", "validation"):
        figures = metrics.get(part)
        if isinstance(figures, Mapping):
            point = _point(part, figures)
            if point is not None:
                return point
    return _point("card", metrics)


def _point(part: str, figures: Mapping[str, Any]) -> MeasuredPoint | None:
    sensitivity = finite_number(figures.get("sensitivity"))
    specificity = finite_number(figures.get("specificity"))
    if sensitivity is None or specificity is None:
        return None
    if not (0 <= sensitivity <= 1 and 0 <= specificity <= 1):
        return None
    intervals = figures.get("intervals_95")
    intervals = intervals if isinstance(intervals, Mapping) else {}
    patients = finite_number(figures.get("patients"))
    patches = finite_number(figures.get("patches"))
    return MeasuredPoint(
        part=part,
        sensitivity=sensitivity,
        specificity=specificity,
        patients=None if patients is None else int(patients),
        patches=None if patches is None else int(patches),
        sensitivity_interval=_interval(intervals.get("sensitivity")),
        specificity_interval=_interval(intervals.get("specificity")),
        roc_auc=finite_number(figures.get("roc_auc")),
    )


def _failure_modes(patients: Sequence[PatientFigures]) -> tuple[FailureMode, ...]:
    """The weakest patients by sensitivity, specificity and ROC AUC, each counted only with
    :data:`MIN_CLASS_PATCHES` patches of the class (of each class) behind it."""

    def worst(key: str, eligible: list[PatientFigures]) -> tuple[PatientFigures, ...]:
        rated = [p for p in eligible if getattr(p, key) is not None]
        rated.sort(key=lambda p: (getattr(p, key), p.patient))
        return tuple(rated[:PATIENTS_PER_MODE])

    enough_idc = [p for p in patients if p.idc_patches >= MIN_CLASS_PATCHES]
    enough_non = [p for p in patients if p.non_idc_patches >= MIN_CLASS_PATCHES]
    enough_both = [p for p in enough_idc if p.non_idc_patches >= MIN_CLASS_PATCHES]
    modes = (
        FailureMode("misses", "Misses IDC (lowest sensitivity)", worst("sensitivity", enough_idc)),
        FailureMode(
            "false_alarms",
            "Flags non-IDC tissue (lowest specificity)",
            worst("specificity", enough_non),
        ),
        FailureMode(
            "ranking",
            "Tells IDC from non-IDC worst (lowest ROC AUC)",
            worst("roc_auc", enough_both),
        ),
    )
    return tuple(mode for mode in modes if mode.patients)


def _report_dir(card: ModelCard) -> Path | None:
    report = card.report_path
    return None if report is None else report.parent


def _read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a report CSV; none when it is missing or unreadable (the page says so)."""
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error):
        return []


def _read_patients(path: Path) -> list[PatientFigures]:
    """``patients.csv`` of either report: cross-validated (``fold``, ``idc_fraction``) or
    held-out (``idc_patches``); rows that do not parse are skipped."""
    out = []
    for row in _read_rows(path):
        patches = finite_number(row.get("patches"))
        if not row.get("patient") or patches is None or patches <= 0:
            continue
        idc = finite_number(row.get("idc_patches"))
        if idc is None:
            fraction = finite_number(row.get("idc_fraction"))
            if fraction is None:
                continue
            idc = round(fraction * patches)
        out.append(
            PatientFigures(
                patient=row["patient"],
                fold=row.get("fold") or None,
                patches=int(patches),
                idc_patches=int(idc),
                roc_auc=finite_number(row.get("roc_auc")),
                sensitivity=finite_number(row.get("sensitivity")),
                specificity=finite_number(row.get("specificity")),
            )
        )
    return out


def finite_number(value: object) -> float | None:
    """A finite number from a card value or a CSV cell, else ``None``."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _interval(value: object) -> tuple[float, float] | None:
    if isinstance(value, list | tuple) and len(value) == 2:
        low, high = finite_number(value[0]), finite_number(value[1])
        if low is not None and high is not None:
            return (low, high)
    return None


def _count(value: object) -> str:
    number = finite_number(value)
    return "?" if number is None else f"{int(number):,}"
