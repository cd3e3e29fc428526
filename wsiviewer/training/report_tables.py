"""What a model ships about its evaluation, read back for display (no Qt, no torch).

A card carries its metrics by part (``validation``, ``test``: values, 95% intervals, patient
and patch counts) and its ``operating_points``; the evaluation report beside it
(``reports/<name>/``, written by :func:`wsiviewer.training.evaluate.write_report`) adds one row
per patient of the evaluated part in ``patients.csv`` and the part's name in ``metrics.json``.
:func:`load_model_evaluation` gathers these into one :class:`ModelEvaluation`; the viewer plots
it. Neither ROC curve points nor reliability bins are shipped: only what is listed here.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wsiviewer.core.model.about import finite_number
from wsiviewer.core.model.cards import ModelCard
from wsiviewer.errors import ModelError

#: The parts a card may carry metrics for, in display order: a split's validation and test
#: patients, or the out-of-fold scores of cross-validation (every patient) and the spatial
#: context's out-of-fold figures on the complete patients.
PARTS = ("validation", "test", "out_of_fold", "out_of_fold_map")

#: ``patients.csv`` columns the viewer needs.
PATIENT_COLUMNS = (
    "patient",
    "patches",
    "idc_fraction",
    "mean_p_idc",
    "roc_auc",
    "sensitivity",
    "specificity",
)


@dataclass(frozen=True)
class PartMetrics:
    """Patch-level metrics of one part of the split, at the card's threshold."""

    part: str
    patients: int | None
    patches: int | None
    #: ``sensitivity``, ``specificity``, ``roc_auc``, ``ece``, ... (finite values only).
    values: Mapping[str, float] = field(default_factory=dict)
    #: 95% intervals (bootstrapped over patients) by metric name.
    intervals_95: Mapping[str, tuple[float, float]] = field(default_factory=dict)

    @classmethod
    def from_card(cls, part: str, data: Mapping[str, Any]) -> PartMetrics:
        values: dict[str, float] = {}
        for name, raw in data.items():
            value = finite_number(raw)
            if name != "intervals_95" and value is not None:
                values[str(name)] = value
        intervals: dict[str, tuple[float, float]] = {}
        raw_intervals = data.get("intervals_95")
        if isinstance(raw_intervals, Mapping):
            for name, pair in raw_intervals.items():
                if isinstance(pair, list | tuple) and len(pair) == 2:
                    low, high = finite_number(pair[0]), finite_number(pair[1])
                    if low is not None and high is not None:
                        intervals[str(name)] = (low, high)
        patients, patches = values.get("patients"), values.get("patches")
        return cls(
            part,
            None if patients is None else int(patients),
            None if patches is None else int(patches),
            values,
            intervals,
        )

    def value(self, name: str) -> float | None:
        return self.values.get(name)

    def interval(self, name: str) -> tuple[float, float] | None:
        return self.intervals_95.get(name)

    @property
    def roc_point(self) -> tuple[float, float] | None:
        """``(1 - specificity, sensitivity)``: the operating point in ROC space."""
        sensitivity, specificity = self.value("sensitivity"), self.value("specificity")
        if sensitivity is None or specificity is None:
            return None
        return (1.0 - specificity, sensitivity)


@dataclass(frozen=True)
class PatientResult:
    """One patient of the evaluated part (a row of ``patients.csv``)."""

    patient: str
    patches: int
    #: Fraction of the patient's patches labelled IDC.
    idc_fraction: float
    #: Mean predicted P(IDC) over the patient's patches.
    mean_p_idc: float
    #: ``None`` where the patient has patches of one class only.
    roc_auc: float | None
    sensitivity: float | None
    specificity: float | None

    @property
    def roc_point(self) -> tuple[float, float] | None:
        """``(1 - specificity, sensitivity)`` at the card's threshold, if both are defined."""
        if self.sensitivity is None or self.specificity is None:
            return None
        return (1.0 - self.specificity, self.sensitivity)


@dataclass(frozen=True)
class ModelEvaluation:
    """A model's shipped evaluation: metrics by part, operating points, per-patient rows."""

    model: str
    #: The card's threshold: the metrics and per-patient rows are at this P(IDC).
    threshold: float
    #: Name -> threshold (e.g. ``balanced_accuracy``, ``sensitivity_0.90``).
    operating_points: Mapping[str, float]
    parts: tuple[PartMetrics, ...]
    #: The part the per-patient rows come from (``test`` in shipped reports), if known.
    patients_part: str | None = None
    patients: tuple[PatientResult, ...] = ()

    def part(self, name: str) -> PartMetrics | None:
        return next((p for p in self.parts if p.part == name), None)

    @property
    def empty(self) -> bool:
        """Nothing to plot: no metrics with an operating point and no patients."""
        return not self.patients and all(p.roc_point is None for p in self.parts)


def read_patients_csv(path: Path) -> tuple[PatientResult, ...]:
    """The rows of a report's ``patients.csv``.

    Raises
    ------
    ModelError
        If the file lacks a needed column or a row has no patch count or fractions.
    OSError
        If it cannot be read.
    """
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in PATIENT_COLUMNS if c not in (reader.fieldnames or ())]
        if missing:
            raise ModelError(f"{path} lacks the column(s) {', '.join(missing)}")
        rows = []
        for line, row in enumerate(reader, start=2):
            patches = finite_number(row["patches"])
            idc_fraction = finite_number(row["idc_fraction"])
            mean_p = finite_number(row["mean_p_idc"])
            if patches is None or idc_fraction is None or mean_p is None:
                raise ModelError(f"{path}, line {line}: patches and fractions must be numbers")
            rows.append(
                PatientResult(
                    patient=row["patient"],
                    patches=int(patches),
                    idc_fraction=idc_fraction,
                    mean_p_idc=mean_p,
                    roc_auc=finite_number(row["roc_auc"]),
                    sensitivity=finite_number(row["sensitivity"]),
                    specificity=finite_number(row["specificity"]),
                )
            )
    return tuple(rows)


def _report_part(report_dir: Path) -> str | None:
    """The part a report evaluated (``metrics.json``'s ``part``), if it says."""
    path = report_dir / "metrics.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path} is not valid JSON: {exc}") from exc
    part = data.get("part") if isinstance(data, dict) else None
    return part if isinstance(part, str) else None


def load_model_evaluation(card: ModelCard) -> ModelEvaluation:
    """The card's metrics and operating points, with the report's per-patient rows if the
    model ships a report (``reports/<name>/`` beside the card).

    Raises
    ------
    ModelError
        If the report's tables are malformed.
    OSError
        If they cannot be read.
    """
    metrics = card.extra.get("metrics")
    parts = tuple(
        PartMetrics.from_card(name, metrics[name])
        for name in PARTS
        if isinstance(metrics, Mapping) and isinstance(metrics.get(name), Mapping)
    )
    raw_points = card.extra.get("operating_points")
    points: dict[str, float] = {}
    if isinstance(raw_points, Mapping):
        for name, raw in raw_points.items():
            value = finite_number(raw)
            if value is not None:
                points[str(name)] = value
    report_dir = card.path.parent / "reports" / card.name
    patients_csv = report_dir / "patients.csv"
    patients = read_patients_csv(patients_csv) if patients_csv.is_file() else ()
    return ModelEvaluation(
        model=f"{card.name} v{card.version}",
        threshold=card.threshold,
        operating_points=points,
        parts=parts,
        patients_part=_report_part(report_dir) if patients else None,
        patients=patients,
    )
