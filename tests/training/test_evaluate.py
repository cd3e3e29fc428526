"""Evaluation: calibration fit, patient bootstrap, Dice, the report, and end to end on real data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.training.test_train import write_dataset
from wsiviewer.core.model.cards import ModelCard
from wsiviewer.core.model.engines import ONNX_TOLERANCE
from wsiviewer.core.model.networks import PatchClassifier
from wsiviewer.core.model.predictor import Predictor
from wsiviewer.core.model.weights import load_model
from wsiviewer.core.progress import run_to_end
from wsiviewer.errors import DatasetError
from wsiviewer.training.dataset import load_patch_set, split_patients
from wsiviewer.training.evaluate import (
    dice_iou,
    evaluate,
    evaluate_slide,
    pr_points,
    roc_points,
    write_report,
)
from wsiviewer.training.metrics import (
    bootstrap_intervals,
    calibrated_probability,
    classification_metrics,
    fit_platt,
    pr_auc,
    roc_auc,
)
from wsiviewer.training.train import TrainingSettings, finish, train


def test_platt_scaling_recovers_a_known_temperature_and_bias() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 20_000)
    evidence = (2 * y - 1) + rng.normal(0, 1, len(y))  # true log-odds: 2 * evidence
    log_odds = 3 * evidence + 2  # over-confident and shifted, as class weighting shifts it
    logits = np.stack([np.zeros_like(log_odds), log_odds], axis=1)
    temperature, bias = fit_platt(logits, y)
    assert temperature == pytest.approx(1.5, rel=0.05)
    assert bias == pytest.approx(-4 / 3, abs=0.08)
    p = calibrated_probability(logits, temperature, bias)
    truth = 1 / (1 + np.exp(-2 * evidence))
    assert np.abs(p - truth).max() < 0.03


def test_the_classifier_applies_the_card_calibration(tiny_model_card: Path, tmp_path: Path) -> None:
    data = json.loads(tiny_model_card.read_text()) | {"temperature": 2.0, "logit_bias": -1.25}
    card_path = tmp_path / "calibrated.json"
    card_path.write_text(json.dumps(data))
    (tmp_path / "calibrated.safetensors").write_bytes(
        tiny_model_card.with_suffix(".safetensors").read_bytes()
    )
    card = ModelCard.from_file(card_path)
    model = load_model(card)
    patches = np.random.default_rng(0).integers(0, 256, (16, 50, 50, 3), dtype=np.uint8)
    x = torch.from_numpy(patches).permute(0, 3, 1, 2).float() / 255
    with torch.inference_mode():
        logits = model(x).numpy()
        p = PatchClassifier(model, card)(torch.from_numpy(patches)).numpy()
    np.testing.assert_allclose(p, calibrated_probability(logits, 2.0, -1.25), atol=1e-6)
    # The fast engine computes the same function.
    np.testing.assert_allclose(
        Predictor(card, device="cpu").predict(patches), p, atol=ONNX_TOLERANCE
    )


def test_bootstrap_resamples_patients_not_patches() -> None:
    rng = np.random.default_rng(1)
    patients = np.repeat(np.arange(12).astype(str), 50)
    labels = rng.integers(0, 2, len(patients))
    # Each patient's scores carry a patient-wide offset: correlated within a patient.
    offsets = rng.normal(0, 0.3, 12)
    scores = np.clip(0.3 + 0.4 * labels + np.repeat(offsets, 50), 0, 1)
    point = classification_metrics(labels, scores, 0.5)
    intervals = bootstrap_intervals(labels, scores, patients, 0.5, resamples=300, seed=0)
    for key in ("accuracy", "roc_auc", "balanced_accuracy"):
        low, high = intervals[key]
        assert low <= point[key] <= high
    # One patient: every resample is that patient, so the interval is the point.
    single = bootstrap_intervals(labels[:50], scores[:50], patients[:50], 0.5, resamples=50)
    assert single["accuracy"][0] == single["accuracy"][1]
    assert bootstrap_intervals(labels, scores, patients, 0.5, resamples=100, seed=4) == (
        bootstrap_intervals(labels, scores, patients, 0.5, resamples=100, seed=4)
    )


def test_curves_agree_with_the_areas() -> None:
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 500)
    scores = np.round(rng.random(500) * 0.6 + labels * 0.3, 2)  # ties on purpose
    fpr, tpr = roc_points(labels, scores)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc(labels, scores), abs=1e-9)
    recall, precision = pr_points(labels, scores)
    assert recall[-1] == 1.0
    assert precision[-1] == pytest.approx(labels.mean())
    assert np.sum(np.diff(np.concatenate([[0.0], recall])) * precision) == pytest.approx(
        pr_auc(labels, scores), abs=0.02
    )


def test_dice_and_iou() -> None:
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    assert dice_iou(a, b) == (1.0, 1.0)
    a[0, :2] = True
    b[0, 1:3] = True
    assert dice_iou(a, b) == (0.5, pytest.approx(1 / 3))


@pytest.fixture(scope="module")
def toy_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A ResNet-8 trained one epoch on the synthetic dataset: (dataset folder, card path)."""
    root = tmp_path_factory.mktemp("toy")
    data = root / "idc"
    write_dataset(data)
    patches = load_patch_set(data)
    split = split_patients(patches, {"9001", "9002"}, seed=3)
    validation = patches.subset(split.validation or split.test)  # tiny: may have none
    result = run_to_end(
        train(
            patches.subset(split.train),
            validation,
            TrainingSettings(architecture="resnet8", epochs=1, batch_size=16),
            torch.device("cpu"),
        )
    )
    card_path = finish(
        result,
        validation,
        patches.subset(split.test),
        split,
        root / "models",
        name="toy",
        device=torch.device("cpu"),
    )
    return data, card_path


def test_evaluate_reproduces_the_card_and_writes_the_report(
    toy_model: tuple[Path, Path], tmp_path: Path
) -> None:
    data, card_path = toy_model
    card = ModelCard.from_file(card_path)
    assert card.architecture == "resnet8"
    stages = []
    evaluation = run_to_end(
        evaluate(card, data, part="test", device="cpu", resamples=200),
        lambda progress: stages.append(progress.stage),
    )
    assert stages[0] == "decoding patches"
    assert "bootstrapping intervals" in stages
    on_card = card.extra["metrics"]["test"]
    for key in ("roc_auc", "balanced_accuracy", "sensitivity", "specificity", "tp", "fn"):
        assert evaluation.metrics[key] == pytest.approx(on_card[key], abs=1e-6)
    assert evaluation.metrics["ece"] == pytest.approx(on_card["ece"], abs=1e-5)
    assert [row["patient"] for row in evaluation.per_patient] == evaluation.patients
    assert evaluation.notes  # the synthetic patients are not complete: said so
    report = write_report(evaluation, tmp_path / "report")
    text = report.read_text()
    assert "Research use only" in text
    assert "| ROC AUC |" in text
    for name in (
        "roc.png",
        "precision_recall.png",
        "reliability.png",
        "confusion_matrix.png",
        "training_curves.png",
    ):
        assert (tmp_path / "report" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"({name})" in text
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["patches"] == len(evaluation.labels)
    assert (tmp_path / "report" / "patients.csv").read_text().startswith("patient,patches,")


def test_evaluate_names_a_bad_part_and_a_missing_split(
    toy_model: tuple[Path, Path], tmp_path: Path
) -> None:
    data, card_path = toy_model
    card = ModelCard.from_file(card_path)
    with pytest.raises(DatasetError, match="Unknown split part 'holdout'"):
        run_to_end(evaluate(card, data, part="holdout"))
    with pytest.raises(DatasetError, match="Cannot read the patient split"):
        run_to_end(evaluate(card, data, split_path=tmp_path / "nope.json"))


def test_a_rebuilt_patient_scores_like_its_patch_files(
    idc_dir: Path, tiny_model_card: Path
) -> None:
    """End to end on a real complete patient: every scored cell equals its patch file."""
    patient_dir = idc_dir / "14306"
    if not patient_dir.is_dir():
        pytest.skip("complete patient 14306 not available")
    predictor = Predictor(ModelCard.from_file(tiny_model_card), device="cpu")
    result = evaluate_slide(predictor, patient_dir, threshold=0.5)
    assert result.patches == 431
    assert result.scored_patches >= 0.97 * result.patches
    assert result.max_abs_difference <= 1e-6
    assert result.label_cells == 167
    assert 0.0 <= result.dice <= 1.0
    assert result.iou <= result.dice
