"""The IDC patches decoded once into memory, and a patient-level split.

Patches of one patient are correlated, so every split is by patient, never by patch.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from wsiviewer.core.atomic import atomic_write_text
from wsiviewer.errors import DatasetError
from wsiviewer.training.idc import PATCH_SIZE, PatchFile, iter_patch_files, pad_patch, read_patch


@dataclass
class PatchSet:
    """Decoded patches: ``pixels (N, 50, 50, 3) uint8``, ``labels (N,)``, a patient per patch."""

    pixels: np.ndarray
    labels: np.ndarray
    patients: np.ndarray
    #: Files that could not be decoded, with the reason (reported, never fatal).
    unreadable: list[tuple[Path, str]] = field(default_factory=list)
    #: ``(N, 2)`` top-left ``(x, y)`` of each patch on its patient's downsampled slide, as in
    #: the file names (the dataset's 50 px grid, offset by 1); ``None`` when not known.
    xy: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, patients: Sequence[str]) -> PatchSet:
        keep = np.isin(self.patients, np.asarray(list(patients), dtype=self.patients.dtype))
        xy = None if self.xy is None else self.xy[keep]
        return PatchSet(self.pixels[keep], self.labels[keep], self.patients[keep], xy=xy)

    @property
    def patient_ids(self) -> list[str]:
        return sorted_patients(self.patients)


def load_patch_set(folder: Path, patients: Sequence[str] | None = None) -> PatchSet:
    """Decode every patch under ``folder`` (PNG or WebP, the dataset's layout) into memory.

    Edge patches smaller than 50×50 are padded with white (DESIGN.md); files whose names
    repeat are read once; unreadable files are listed in :attr:`PatchSet.unreadable`.
    """
    wanted = None if patients is None else set(patients)
    files: list[PatchFile] = [
        patch for patch in iter_patch_files(folder) if wanted is None or patch.patient in wanted
    ]
    if not files:
        raise DatasetError(f"No IDC patch files (<patient>_idx5_x<X>_y<Y>_class<C>) in {folder}")
    pixels = np.empty((len(files), PATCH_SIZE, PATCH_SIZE, 3), dtype=np.uint8)
    ok = np.ones(len(files), dtype=bool)
    unreadable: list[tuple[Path, str]] = []
    for index, patch in enumerate(files):
        try:
            pixels[index] = pad_patch(read_patch(patch.path))
        except DatasetError as exc:
            ok[index] = False
            unreadable.append((patch.path, str(exc)))
    labels = np.array([p.label for p in files], dtype=np.int64)
    patient_ids = np.array([p.patient for p in files])
    xy = np.array([(p.x, p.y) for p in files], dtype=np.int64).reshape(-1, 2)
    return PatchSet(pixels[ok], labels[ok], patient_ids[ok], unreadable, xy[ok])


@dataclass(frozen=True)
class PatientSplit:
    """Patient IDs of each part; the seed and rule that made them."""

    train: tuple[str, ...]
    validation: tuple[str, ...]
    test: tuple[str, ...]
    seed: int

    def to_dict(self) -> dict[str, object]:
        return {
            "rule": "by patient; 80% train (of which 10% validation), 20% test; stratified by "
            "IDC fraction and completeness",
            "seed": self.seed,
            "train": list(self.train),
            "validation": list(self.validation),
            "test": list(self.test),
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> PatientSplit:
        def ids(key: str) -> tuple[str, ...]:
            value = data[key]
            assert isinstance(value, list)
            return tuple(str(v) for v in value)

        return cls(ids("train"), ids("validation"), ids("test"), int(data["seed"]))  # type: ignore[call-overload]

    def save(self, path: Path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> PatientSplit:
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError, AssertionError) as exc:
            raise DatasetError(f"Cannot read the patient split {path}: {exc}") from exc


def split_patients(
    patch_set: PatchSet,
    complete: set[str] | None = None,
    *,
    seed: int = 0,
    test_fraction: float = 0.2,
    validation_fraction: float = 0.1,
) -> PatientSplit:
    """Split patients 80/20 into train and test, then 10% of train into validation.

    Patients are stratified by completeness (so the test part holds several complete
    patients, which rebuild as whole slides) and by their IDC fraction (quartile bins).
    """
    complete = complete or set()
    ids = patch_set.patient_ids
    fraction = {
        patient: float(patch_set.labels[patch_set.patients == patient].mean()) for patient in ids
    }
    quartiles = np.quantile(list(fraction.values()), [0.25, 0.5, 0.75])
    strata: dict[tuple[bool, int], list[str]] = {}
    for patient in ids:
        key = (patient in complete, int(np.searchsorted(quartiles, fraction[patient])))
        strata.setdefault(key, []).append(patient)
    rng = np.random.default_rng(seed)
    train: list[str] = []
    validation: list[str] = []
    test: list[str] = []
    for key in sorted(strata):
        members = list(strata[key])
        rng.shuffle(members)
        n_test = round(len(members) * test_fraction)
        rest = members[n_test:]
        n_validation = round(len(rest) * validation_fraction)
        test += members[:n_test]
        validation += rest[:n_validation]
        train += rest[n_validation:]
    # Small datasets round some parts to nothing within every stratum: take one from train.
    for part in (test, validation):
        if not part and len(train) > 1:
            part.append(train.pop(int(rng.integers(len(train)))))
    if not (train and validation and test):
        raise DatasetError(
            f"{len(ids)} patients are too few to split into training, validation and test"
        )
    return PatientSplit(
        tuple(sorted(train, key=patient_key)),
        tuple(sorted(validation, key=patient_key)),
        tuple(sorted(test, key=patient_key)),
        seed,
    )


def standard_split(split_csv: Path, patch_set: PatchSet) -> PatientSplit:
    """The dataset's standard patient split (``patient,part,...`` with parts ``train``,
    ``validation``, ``test``), restricted to the patients ``patch_set`` holds.

    Raises
    ------
    DatasetError
        If the file cannot be read, names an unknown part, or leaves a part empty.
    """
    import csv

    present = set(patch_set.patient_ids)
    parts: dict[str, list[str]] = {"train": [], "validation": [], "test": []}
    try:
        with split_csv.open(newline="") as handle:
            for row in csv.DictReader(handle):
                part = row["part"]
                if part not in parts:
                    raise DatasetError(f"Unknown part {part!r} in {split_csv}")
                if row["patient"] in present:
                    parts[part].append(row["patient"])
    except (OSError, KeyError) as exc:
        raise DatasetError(f"Cannot read the standard split {split_csv}: {exc}") from exc
    empty = [part for part, patients in parts.items() if not patients]
    if empty:
        raise DatasetError(f"The standard split leaves {', '.join(empty)} without patients here")
    train, validation, test = (
        tuple(sorted(parts[part], key=patient_key)) for part in ("train", "validation", "test")
    )
    return PatientSplit(train, validation, test, seed=-1)


def read_complete_patients(patients_csv: Path) -> set[str]:
    """Patients marked ``complete=1`` in the dataset's ``idc_patients.csv``."""
    import csv

    if not patients_csv.is_file():
        return set()
    with patients_csv.open(newline="") as handle:
        return {row["patient"] for row in csv.DictReader(handle) if row.get("complete") == "1"}


def iter_batches(
    count: int, batch_size: int, rng: np.random.Generator | None = None
) -> Iterator[np.ndarray]:
    """Indices ``0..count`` in batches, shuffled when ``rng`` is given."""
    order = rng.permutation(count) if rng is not None else np.arange(count)
    for start in range(0, count, batch_size):
        yield order[start : start + batch_size]


def sorted_patients(patients: np.ndarray) -> list[str]:
    """The distinct patient IDs of a per-patch array, numerically where they are numbers."""
    return sorted(set(patients.tolist()), key=patient_key)


def patient_key(patient: str) -> tuple[int, str]:
    return (int(patient), patient) if patient.isdigit() else (0, patient)
