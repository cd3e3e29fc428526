"""Reading back what a model ships about its evaluation (no Qt, no torch)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from wsiviewer.core.model.cards import ModelCard, shipped_models_dir
from wsiviewer.errors import ModelError
from wsiviewer.training.report_tables import load_model_evaluation, read_patients_csv

HEADER = "patient,patches,idc_fraction,mean_p_idc,roc_auc,sensitivity,specificity\n"


def _card_copy(tiny_model_card: Path, folder: Path, **fields: object) -> Path:
    """The tiny card (and its weights) in ``folder``, with ``fields`` changed."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy2(tiny_model_card.with_suffix(".safetensors"), folder)
    card_path = Path(shutil.copy2(tiny_model_card, folder))
    data = json.loads(card_path.read_text())
    data.update(fields)
    card_path.write_text(json.dumps(data))
    return card_path


@pytest.mark.parametrize("name", ["cancernet", "resnet8"])
def test_shipped_evaluation_matches_the_card_and_its_report(name: str) -> None:
    folder = shipped_models_dir()
    assert folder is not None
    card = ModelCard.from_file(folder / f"{name}.json")
    evaluation = load_model_evaluation(card)
    metrics = card.extra["metrics"]
    assert evaluation.threshold == card.threshold
    assert evaluation.operating_points == card.extra["operating_points"]
    assert [part.part for part in evaluation.parts] == ["validation", "test"]
    test = evaluation.part("test")
    assert test is not None
    assert test.patients == metrics["test"]["patients"] == 45
    assert test.roc_point == pytest.approx(
        (1 - metrics["test"]["specificity"], metrics["test"]["sensitivity"])
    )
    assert test.interval("roc_auc") == tuple(metrics["test"]["intervals_95"]["roc_auc"])
    assert evaluation.patients_part == "test"
    assert len(evaluation.patients) == 45
    assert sum(p.patches for p in evaluation.patients) == metrics["test"]["patches"]
    assert not evaluation.empty


def test_a_card_without_metrics_or_report_is_empty(tiny_model_card: Path) -> None:
    evaluation = load_model_evaluation(ModelCard.from_file(tiny_model_card))
    assert evaluation.parts == ()
    assert evaluation.patients == ()
    assert evaluation.patients_part is None
    assert evaluation.empty


def test_missing_values_are_none_and_a_bad_table_names_the_problem(
    tiny_model_card: Path, tmp_path: Path
) -> None:
    metrics = {"test": {"sensitivity": 0.8, "specificity": float("nan"), "patients": 2}}
    card_path = _card_copy(tiny_model_card, tmp_path / "models", metrics=metrics)
    card = ModelCard.from_file(card_path)
    report = card_path.parent / "reports" / card.name
    report.mkdir(parents=True)
    (report / "patients.csv").write_text(HEADER + "7,10,0,0.1,nan,,0.9\n8,20,0.5,0.4,0.7,0.6,0.8\n")
    evaluation = load_model_evaluation(card)
    test = evaluation.part("test")
    assert test is not None
    assert test.value("specificity") is None
    assert test.roc_point is None
    first, second = evaluation.patients
    assert (first.roc_auc, first.sensitivity, first.roc_point) == (None, None, None)
    assert second.roc_point == pytest.approx((0.2, 0.6))
    assert evaluation.patients_part is None  # no metrics.json says which part

    (report / "patients.csv").write_text("patient,patches\n7,10\n")
    with pytest.raises(ModelError, match="idc_fraction"):
        load_model_evaluation(card)
    (report / "patients.csv").write_text(HEADER + "7,ten,0,0.1,0.5,0.5,0.5\n")
    with pytest.raises(ModelError, match="line 2"):
        read_patients_csv(report / "patients.csv")
    (report / "patients.csv").write_text(HEADER + "7,10,0,0.1,0.5,0.5,0.5\n")
    (report / "metrics.json").write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        load_model_evaluation(card)
