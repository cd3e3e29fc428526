"""The models shipped in models/: cards, weights, split, report, and metrics that reproduce."""

from __future__ import annotations

from pathlib import Path

import pytest

from wsiviewer.core.model.cards import (
    ModelCard,
    available_models,
    resolve_model,
    shipped_models_dir,
)
from wsiviewer.core.model.weights import load_model
from wsiviewer.core.progress import run_to_end
from wsiviewer.training.dataset import PatientSplit
from wsiviewer.training.evaluate import evaluate, split_path_of

#: Trained on one patient split, with held-out test patients.
SHIPPED = ("cancernet", "resnet8")
#: The recipe chosen by patient-level cross-validation, trained on every patient.
CROSS_VALIDATED = "resnet8-cv"


def shipped_cards() -> dict[str, ModelCard]:
    folder = shipped_models_dir()
    assert folder is not None
    return {card.name: card for card in available_models() if card.path.parent == folder}


def test_three_models_ship_and_the_cross_validated_one_is_the_default() -> None:
    cards = shipped_cards()
    assert set(cards) == {*SHIPPED, CROSS_VALIDATED}
    defaults = [card for card in cards.values() if card.default]
    assert [card.name for card in defaults] == [CROSS_VALIDATED]
    assert resolve_model(None) == defaults[0]


def test_the_cross_validated_card_carries_its_stages_and_out_of_fold_figures() -> None:
    card = shipped_cards()[CROSS_VALIDATED]
    load_model(card)
    assert card.input_mpp == pytest.approx(4.0)
    assert card.colour is not None
    assert card.context is not None
    oof = card.extra["metrics"]["out_of_fold"]
    assert oof["patients"] == 222
    for key in ("balanced_accuracy", "roc_auc", "sensitivity", "specificity"):
        low, high = oof["intervals_95"][key]
        assert low <= oof[key] <= high
    assert card.extra["metrics"]["out_of_fold_map"]["roc_auc"] > oof["roc_auc"] - 0.05
    report = card.report_path
    assert report is not None
    text = report.read_text()
    assert "Research use only" in text
    for heading in ("## End to end", "## Compression", "## Out-of-distribution warning"):
        assert heading in text
    for name in ("roc.png", "reliability.png", "end_to_end.csv", "compression.csv"):
        assert (report.parent / name).is_file()


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_card_is_complete(name: str) -> None:
    card = shipped_cards()[name]
    load_model(card)  # weights match the sha256 and the architecture
    assert card.input_size == 50
    assert card.input_mpp == pytest.approx(4.0)
    assert card.intended_use.startswith("Research use only, not for diagnosis")
    assert set(card.extra["operating_points"]) == {"balanced_accuracy", "sensitivity_0.90"}
    split = PatientSplit.load(split_path_of(card))
    parts = [set(split.train), set(split.validation), set(split.test)]
    assert parts[0].isdisjoint(parts[1])
    assert parts[0].isdisjoint(parts[2])
    assert parts[1].isdisjoint(parts[2])
    for part in ("validation", "test"):
        metrics = card.extra["metrics"][part]
        for key in ("balanced_accuracy", "roc_auc", "sensitivity", "specificity"):
            low, high = metrics["intervals_95"][key]
            assert low <= metrics[key] <= high
        # ECE is biased upwards in small resamples: its interval may sit above the point.
        assert 0 <= metrics["intervals_95"]["ece"][0] < metrics["intervals_95"]["ece"][1]
    report = card.report_path
    assert report is not None
    text = report.read_text()
    assert "Research use only" in text
    for image in ("roc.png", "reliability.png", "confusion_matrix.png", "training_curves.png"):
        assert (report.parent / image).is_file()


@pytest.mark.parametrize("name", SHIPPED)
def test_evaluate_reproduces_the_card_test_metrics(name: str, idc_dir: Path) -> None:
    card = shipped_cards()[name]
    evaluation = run_to_end(
        evaluate(card, idc_dir, part="test", device="cpu", slides=False, resamples=200)
    )
    on_card = card.extra["metrics"]["test"]
    assert len(evaluation.patients) == on_card["patients"]
    assert len(evaluation.labels) == on_card["patches"]
    for key in ("roc_auc", "pr_auc", "balanced_accuracy", "sensitivity", "specificity", "ece"):
        assert evaluation.metrics[key] == pytest.approx(on_card[key], abs=2e-4), key
