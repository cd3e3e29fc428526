"""The "About this model" page: words and numbers read from the card and its report."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import REPO
from wsiviewer import RESEARCH_USE_NOTICE
from wsiviewer.core.model.about import (
    IDC_DATA_ENV,
    MIN_CLASS_PATCHES,
    describe_model,
    idc_data_folder,
    of_100,
)
from wsiviewer.core.model.cards import ModelCard

MODELS = REPO / "models"


def shipped(name: str) -> ModelCard:
    return ModelCard.from_file(MODELS / f"{name}.json")


def test_operating_point_in_words_is_the_cards_out_of_fold_figures() -> None:
    card = shipped("resnet8-cv")
    figures = card.extra["metrics"]["out_of_fold"]
    description = describe_model(card)
    flagged = round(figures["sensitivity"] * 100)
    false_alarms = round((1 - figures["specificity"]) * 100)
    assert description.measured is not None
    assert description.measured.part == "out_of_fold"
    assert (
        description.measured.idc_flagged_of_100,
        description.measured.non_idc_flagged_of_100,
    ) == (
        flagged,
        false_alarms,
    )
    sentence = (
        f"of 100 IDC patches it flags about {flagged}; of 100 non-IDC patches it wrongly flags "
        f"about {false_alarms}."
    )
    assert sentence in " ".join(description.operating_point.paragraphs)
    text = " ".join(description.to_text().split())  # unwrapped
    assert sentence in text
    assert f"at least {card.threshold:.2f}" in text
    assert RESEARCH_USE_NOTICE in text
    assert description.trained_on_named_patients
    html = description.to_html()
    assert sentence in html
    assert "H&amp;E" in html
    assert "H&E" not in html


def test_numbers_are_read_from_the_card_at_run_time(tmp_path: Path) -> None:
    """A card copied without its report, with other figures: the words follow the card."""
    data = json.loads((MODELS / "resnet8-cv.json").read_text())
    data["name"] = "copied"
    data["metrics"]["out_of_fold"].update(sensitivity=0.8123, specificity=0.7049)
    card_path = tmp_path / "copied.json"
    card_path.write_text(json.dumps(data))
    shutil.copy2(MODELS / "resnet8-cv.safetensors", tmp_path / "copied.safetensors")
    description = describe_model(ModelCard.from_file(card_path))
    text = " ".join(description.to_text().split())
    assert (
        "of 100 IDC patches it flags about 81; of 100 non-IDC patches it wrongly flags about 30"
        in text
    )
    assert description.failure_modes == ()
    assert "Not known: it has no report" in text


def test_held_out_card_quotes_its_test_patients() -> None:
    card = shipped("resnet8")
    test = card.extra["metrics"]["test"]
    description = describe_model(card)
    assert description.measured is not None
    assert description.measured.part == "test"
    assert description.measured.patients == test["patients"]
    assert description.measured.idc_flagged_of_100 == round(test["sensitivity"] * 100)
    assert not description.trained_on_named_patients
    assert "held out" in " ".join(description.failure_modes_section.notes)


def test_card_without_metrics_says_so(tiny_model_card: Path) -> None:
    description = describe_model(ModelCard.from_file(tiny_model_card))
    assert description.measured is None
    assert description.failure_modes == ()
    assert description.weak_patients == ()
    text = " ".join(description.to_text().split())
    assert "no measured sensitivity or specificity" in text
    assert "does not say how the model was trained" in text
    assert "Testing only: random weights" in text


def _patients_csv(name: str) -> list[dict[str, str]]:
    with (MODELS / "reports" / name / "patients.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_weakest_patients_are_the_reports_lowest_with_enough_patches() -> None:
    rows = _patients_csv("resnet8-cv")
    idc = {r["patient"]: round(float(r["idc_fraction"]) * int(r["patches"])) for r in rows}
    non_idc = {r["patient"]: int(r["patches"]) - idc[r["patient"]] for r in rows}
    lowest_sensitivity = sorted(
        (r for r in rows if idc[r["patient"]] >= MIN_CLASS_PATCHES),
        key=lambda r: float(r["sensitivity"]),
    )
    lowest_specificity = sorted(
        (r for r in rows if non_idc[r["patient"]] >= MIN_CLASS_PATCHES),
        key=lambda r: float(r["specificity"]),
    )
    modes = {mode.kind: mode for mode in describe_model(shipped("resnet8-cv")).failure_modes}
    assert [p.patient for p in modes["misses"].patients] == [
        r["patient"] for r in lowest_sensitivity[:2]
    ]
    assert [p.patient for p in modes["false_alarms"].patients] == [
        r["patient"] for r in lowest_specificity[:2]
    ]
    for mode in modes.values():
        for figures in mode.patients:
            if mode.kind != "false_alarms":
                assert figures.idc_patches >= MIN_CLASS_PATCHES
            if mode.kind != "misses":
                assert figures.non_idc_patches >= MIN_CLASS_PATCHES
    # The report's lowest ROC AUC overall rests on one IDC patch: named as left out.
    lowest = min(rows, key=lambda r: float(r["roc_auc"]))
    assert idc[lowest["patient"]] < MIN_CLASS_PATCHES
    notes = " ".join(describe_model(shipped("resnet8-cv")).failure_modes_section.notes)
    assert f"patient {lowest['patient']}" in notes


def test_intended_use_says_what_the_stain_check_checks_and_not(tiny_model_card: Path) -> None:
    card = shipped("resnet8-cv")
    assert card.stain_check is not None
    shipped_text = " ".join(describe_model(card).to_text().split())
    threshold = f"{card.stain_check.threshold:.1f}"
    assert f"compared with the training patients' (stain check): above {threshold}," in shipped_text
    assert "It checks the stain only, not the tissue" in shipped_text
    without = " ".join(describe_model(ModelCard.from_file(tiny_model_card)).to_text().split())
    assert "has no stain check" in without


def test_the_shipped_model_says_which_patients_chose_its_epoch_and_calibration() -> None:
    card = shipped("resnet8-cv")
    text = " ".join(describe_model(card).to_text().split())
    held = card.extra["training_data"]["validation_patients"]
    epoch = card.extra["training"]["best_epoch"]
    assert f"with {held} held back to choose its epoch ({epoch}) and calibrate it" in text
    assert "No patient was kept back" not in text


def test_of_100_rounds_half_up() -> None:
    assert (of_100(0.795), of_100(0.7949), of_100(0.0), of_100(1.0)) == (80, 79, 0, 100)


def test_idc_data_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(IDC_DATA_ENV, raising=False)
    assert idc_data_folder() is None
    assert idc_data_folder(tmp_path / "missing") is None
    monkeypatch.setenv(IDC_DATA_ENV, str(tmp_path))
    assert idc_data_folder() == tmp_path
    chosen = tmp_path / "chosen"
    chosen.mkdir()
    assert idc_data_folder(chosen) == chosen


def test_import_is_cheap() -> None:
    import subprocess
    import sys

    code = (
        "import sys, wsiviewer.core.model.about\n"
        "print(sorted(m for m in ('numpy', 'torch', 'PySide6') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
