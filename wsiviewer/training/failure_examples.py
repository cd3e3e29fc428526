"""Example patches of where a model fails, made at run time from the user's IDC dataset.

The "About this model" page (:mod:`wsiviewer.core.model.about`) names the patients of the
evaluation report where the model does worst. When the IDC dataset is at hand, this module
scores those patients' patches with the model, exactly as training prepared them (the
dataset's files, edge patches padded with white, each patient's colours standardised to the
card's reference from the same sample of its patches), and keeps its most confident errors:
the non-IDC patches with the highest P(IDC) (false positives) and the IDC patches with the
lowest (false negatives) at the card's threshold.

Nothing is shipped or cached: the patches are the dataset's, read when asked for, and written
only where the user says (:func:`write_failure_examples`).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from wsiviewer import RESEARCH_USE_NOTICE
from wsiviewer.core.atomic import atomic_write_text
from wsiviewer.core.model.about import ModelDescription, describe_model
from wsiviewer.core.model.cards import ModelCard
from wsiviewer.errors import DatasetError

if TYPE_CHECKING:
    from wsiviewer.core.model.predictor import Predictor
    from wsiviewer.training.dataset import PatchSet

ErrorKind = Literal["false positive", "false negative"]

#: Errors of each kind kept per patient.
PER_PATIENT = 3
#: Examples are written this many times larger, each px a block (nearest neighbour).
PNG_SCALE = 4
#: A patient ID that can be a folder name: never a path.
_PATIENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class FailureExample:
    """One patch the model got confidently wrong."""

    patient: str
    #: The dataset's label: 1 IDC, 0 non-IDC.
    label: int
    #: The model's P(IDC).
    probability: float
    threshold: float
    error: ErrorKind
    #: ``(50, 50, 3) uint8`` as in the dataset (edge patches padded with white), not
    #: colour-standardised: what the tissue looks like.
    pixels: np.ndarray = field(compare=False, repr=False)
    #: The dataset file's name (``<patient>_idx5_x<X>_y<Y>_class<C>``).
    source: str = ""

    @property
    def true_class(self) -> str:
        return "IDC" if self.label == 1 else "non-IDC"

    @property
    def caption(self) -> str:
        """``patient 9258 · non-IDC · P(IDC) 0.97 (false positive)``."""
        return (
            f"patient {self.patient} · {self.true_class} · P(IDC) {self.probability:.2f} "
            f"({self.error})"
        )


@dataclass(frozen=True)
class ExamplesProgress:
    """One patient done (or found missing) of ``total``."""

    done: int
    total: int
    patient: str
    #: This patient's examples (none when it is missing or the model made no such error).
    examples: tuple[FailureExample, ...] = ()
    #: The patient has no folder in the dataset.
    missing: bool = False


@dataclass
class FailureExamples:
    """Every example, in the order of the description's failure modes."""

    examples: list[FailureExample]
    #: Patients named by the description that the dataset folder does not hold.
    missing: list[str]
    folder: Path


def patient_folder(root: Path, patient: str) -> Path | None:
    """The folder of ``patient``'s patches under the dataset folder ``root``
    (``root/<patient>``, one level deeper, or ``root`` itself); ``None`` if absent."""
    if not _PATIENT_ID.match(patient):
        return None
    for candidate in (root / patient, *sorted(root.glob(f"*/{patient}"))):
        if candidate.is_dir():
            return candidate
    return root if root.name == patient else None


def failure_examples(
    card: ModelCard,
    folder: Path,
    description: ModelDescription | None = None,
    *,
    per_patient: int = PER_PATIENT,
    predictor: Predictor | None = None,
    device: str = "cpu",
) -> Generator[ExamplesProgress, None, FailureExamples]:
    """Score each weak patient of ``description`` and keep its most confident errors.

    Yields an :class:`ExamplesProgress` per patient (closing the generator between two
    stops the work) and returns every example.

    Raises
    ------
    DatasetError
        If ``folder`` is not a folder, or holds none of the patients named.
    """
    if not folder.is_dir():
        raise DatasetError(f"IDC dataset folder not found: {folder}")
    description = description or describe_model(card)
    wanted = _errors_wanted(description)
    total = len(wanted)
    if predictor is None and total:
        from wsiviewer.core.model.predictor import Predictor

        predictor = Predictor(card, device=device)
    examples: list[FailureExample] = []
    missing: list[str] = []
    for done, (patient, errors) in enumerate(wanted.items(), start=1):
        patient_dir = patient_folder(folder, patient)
        if patient_dir is None:
            missing.append(patient)
            yield ExamplesProgress(done, total, patient, missing=True)
            continue
        assert predictor is not None
        found = _patient_examples(card, predictor, patient_dir, patient, errors, per_patient)
        examples += found
        yield ExamplesProgress(done, total, patient, tuple(found))
    if total and len(missing) == total:
        raise DatasetError(
            f"None of the patients {', '.join(wanted)} is in {folder}: choose the IDC dataset's "
            "folder, the one holding <patient>/<0|1>/<patch> folders"
        )
    return FailureExamples(examples, missing, folder)


def _errors_wanted(description: ModelDescription) -> dict[str, tuple[ErrorKind, ...]]:
    """Each weak patient, with the kinds of error its failure modes show."""
    wanted: dict[str, list[ErrorKind]] = {}
    for mode in description.failure_modes:
        for figures in mode.patients:
            kinds = wanted.setdefault(figures.patient, [])
            for kind in mode.errors_shown:
                if kind not in kinds:
                    kinds.append(kind)  # type: ignore[arg-type]
    return {patient: tuple(kinds) for patient, kinds in wanted.items()}


def _patient_examples(
    card: ModelCard,
    predictor: Predictor,
    patient_dir: Path,
    patient: str,
    errors: Sequence[ErrorKind],
    per_patient: int,
) -> list[FailureExample]:
    from wsiviewer.training.dataset import load_patch_set

    patches = load_patch_set(patient_dir, patients=[patient])
    model_input = patches
    if card.colour is not None:
        # As training did: the patient's percentiles from the same seeded sample of its
        # patches (in the dataset's file order), mapped onto the card's reference.
        from wsiviewer.training.crossval import patient_quantiles, standardise_colours

        model_input = standardise_colours(patches, patient_quantiles(patches), card.colour)
    probabilities = predictor.predict(model_input.pixels)
    out: list[FailureExample] = []
    for kind in errors:
        if kind == "false positive":
            candidates = np.flatnonzero((patches.labels == 0) & (probabilities >= card.threshold))
            order = candidates[np.argsort(-probabilities[candidates], kind="stable")]
        else:
            candidates = np.flatnonzero((patches.labels == 1) & (probabilities < card.threshold))
            order = candidates[np.argsort(probabilities[candidates], kind="stable")]
        for index in order[:per_patient]:
            out.append(
                FailureExample(
                    patient=patient,
                    label=int(patches.labels[index]),
                    probability=float(probabilities[index]),
                    threshold=card.threshold,
                    error=kind,
                    pixels=patches.pixels[index].copy(),
                    source=_source_name(patches, int(index), patient),
                )
            )
    return out


def _source_name(patches: PatchSet, index: int, patient: str) -> str:
    """The dataset file's name, without its extension, from the patch's position and label."""
    if patches.xy is None:
        return ""
    x, y = (int(v) for v in patches.xy[index])
    return f"{patient}_idx5_x{x}_y{y}_class{int(patches.labels[index])}"


def enlarged(pixels: np.ndarray, scale: int = PNG_SCALE) -> np.ndarray:
    """``pixels`` ``scale`` times larger, each px a ``scale``×``scale`` block."""
    return np.repeat(np.repeat(pixels, scale, axis=0), scale, axis=1)


#: Columns of ``examples.csv``.
CSV_COLUMNS = ("file", "patient", "true_class", "p_idc", "threshold", "error", "source_file")


def write_failure_examples(
    result: FailureExamples, card: ModelCard, out_dir: Path, *, scale: int = PNG_SCALE
) -> list[Path]:
    """Each example as a PNG ``scale`` times larger (nearest neighbour) and ``examples.csv``
    listing them, in ``out_dir``; every file written atomically. Returns the paths."""
    from wsiviewer.core.exports.png import write_png

    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    rows: list[dict[str, str]] = []
    counts: dict[tuple[str, str], int] = {}
    for example in result.examples:
        slug = example.error.replace(" ", "-")
        rank = counts[(example.patient, slug)] = counts.get((example.patient, slug), 0) + 1
        name = f"{example.patient}_{slug}_{rank}.png"
        written.append(
            write_png(
                out_dir / name,
                enlarged(example.pixels, scale),
                extra={
                    "Description": f"{example.caption}; model {card.name} {card.version}, "
                    f"threshold {example.threshold:.4f}; {RESEARCH_USE_NOTICE}",
                    "Source": f"IDC dataset (Janowczyk & Madabhushi 2016) {example.source}",
                },
            )
        )
        rows.append(
            {
                "file": name,
                "patient": example.patient,
                "true_class": example.true_class,
                "p_idc": f"{example.probability:.6f}",
                "threshold": f"{example.threshold:.6f}",
                "error": example.error,
                "source_file": example.source,
            }
        )
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    csv_path = out_dir / "examples.csv"
    atomic_write_text(csv_path, text.getvalue())
    written.append(csv_path)
    return written
