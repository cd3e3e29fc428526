"""Example patches of where the model fails, made from real IDC patients at run time."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO
from wsiviewer.core.model.about import describe_model
from wsiviewer.core.model.cards import ModelCard
from wsiviewer.core.progress import run_to_end
from wsiviewer.errors import DatasetError
from wsiviewer.training.failure_examples import (
    ExamplesProgress,
    failure_examples,
    patient_folder,
    write_failure_examples,
)

#: Two of the shipped card's weakest patients, small enough to copy: 13916 (most non-IDC
#: flagged) and 13024 (lowest ROC AUC).
PATIENTS = ("13916", "13024")


@pytest.fixture(scope="module")
def card() -> ModelCard:
    return ModelCard.from_file(REPO / "models" / "resnet8-cv.json")


@pytest.fixture(scope="module")
def idc_subset(idc_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("idc-subset")
    for patient in PATIENTS:
        if not (idc_dir / patient).is_dir():
            pytest.skip(f"IDC patient {patient} not found in {idc_dir}")
        shutil.copytree(idc_dir / patient, folder / patient)
    return folder


def test_most_confident_errors_of_the_weak_patients(card: ModelCard, idc_subset: Path) -> None:
    description = describe_model(card)
    assert set(PATIENTS) <= {p.patient for p in description.weak_patients}
    steps: list[ExamplesProgress] = []
    result = run_to_end(failure_examples(card, idc_subset, description), steps.append)
    assert [s.done for s in steps] == list(range(1, len(description.weak_patients) + 1))
    assert sorted(result.missing) == sorted(
        p.patient for p in description.weak_patients if p.patient not in PATIENTS
    )
    by_patient = {p: [e for e in result.examples if e.patient == p] for p in PATIENTS}
    # 13916 is named for false alarms only; 13024 for ranking: both kinds.
    assert {e.error for e in by_patient["13916"]} == {"false positive"}
    assert {e.error for e in by_patient["13024"]} == {"false positive", "false negative"}
    for example in result.examples:
        assert example.pixels.shape == (50, 50, 3)
        assert example.pixels.dtype == np.uint8
        assert example.source.startswith(f"{example.patient}_idx5_")
        assert example.source.endswith(f"_class{example.label}")
        assert any((idc_subset / example.patient / str(example.label)).glob(f"{example.source}.*"))
        if example.error == "false positive":
            assert example.label == 0
            assert example.probability >= card.threshold
        else:
            assert example.label == 1
            assert example.probability < card.threshold
        assert f"patient {example.patient}" in example.caption
        assert f"P(IDC) {example.probability:.2f}" in example.caption
    positives = [e.probability for e in by_patient["13916"]]
    assert positives == sorted(positives, reverse=True)


def test_scores_are_those_of_the_colour_standardised_patches(
    card: ModelCard, idc_subset: Path
) -> None:
    """The example's P is the model's on the patch as training prepared it, not on the raw
    file: the most confident false positive of 13916 scores differently raw."""
    from wsiviewer.core.model.predictor import Predictor

    predictor = Predictor(card, device="cpu")
    result = run_to_end(failure_examples(card, idc_subset, predictor=predictor))
    top = next(e for e in result.examples if e.patient == "13916")
    raw = float(predictor.predict(top.pixels[None])[0])
    assert abs(raw - top.probability) > 1e-3


def test_closing_the_generator_stops_between_patients(card: ModelCard, idc_subset: Path) -> None:
    steps = failure_examples(card, idc_subset)
    first = next(steps)
    assert first.done == 1
    steps.close()
    with pytest.raises(StopIteration):
        next(steps)


def test_folder_errors(card: ModelCard, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found"):
        run_to_end(failure_examples(card, tmp_path / "missing"))
    (tmp_path / "other").mkdir()
    with pytest.raises(DatasetError, match="None of the patients"):
        run_to_end(failure_examples(card, tmp_path))


def test_patient_folder_is_never_a_path(tmp_path: Path) -> None:
    (tmp_path / "set" / "13916").mkdir(parents=True)
    assert patient_folder(tmp_path, "13916") == tmp_path / "set" / "13916"
    assert patient_folder(tmp_path / "set", "13916") == tmp_path / "set" / "13916"
    assert patient_folder(tmp_path / "set" / "13916", "13916") == tmp_path / "set" / "13916"
    assert patient_folder(tmp_path, "../set") is None
    assert patient_folder(tmp_path, "12871") is None


def test_written_examples_are_enlarged_crisply_with_a_csv(
    card: ModelCard, idc_subset: Path, tmp_path: Path
) -> None:
    result = run_to_end(failure_examples(card, idc_subset))
    written = write_failure_examples(result, card, tmp_path / "out")
    assert written[-1].name == "examples.csv"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in written)
    with written[-1].open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(result.examples) == len(written) - 1
    for row, example in zip(rows, result.examples, strict=True):
        assert row["patient"] == example.patient
        assert row["error"] == example.error
        assert abs(float(row["p_idc"]) - example.probability) < 1e-6
        with Image.open(tmp_path / "out" / row["file"]) as image:
            pixels = np.asarray(image.convert("RGB"))
            assert "Research use only" in image.info["Disclaimer"]
        assert pixels.shape == (200, 200, 3)
        np.testing.assert_array_equal(pixels[::4, ::4], example.pixels)
        np.testing.assert_array_equal(pixels[3::4, 3::4], example.pixels)
