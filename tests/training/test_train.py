"""Training on a tiny synthetic dataset laid out like the IDC download, one epoch on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from wsiviewer.core.model.cards import ModelCard
from wsiviewer.core.model.predictor import Predictor
from wsiviewer.core.progress import run_to_end
from wsiviewer.training.dataset import PatientSplit, load_patch_set, split_patients
from wsiviewer.training.metrics import (
    best_balanced_accuracy_threshold,
    expected_calibration_error,
    fit_platt,
    pr_auc,
    roc_auc,
    sensitivity_operating_point,
)
from wsiviewer.training.train import TrainingSettings, augment, finish, train


def write_dataset(root: Path, patients: int = 10, per_class: int = 12) -> None:
    """Pink (non-IDC) and purple (IDC) noisy patches, some smaller edge patches, one PNG."""
    rng = np.random.default_rng(0)
    for p in range(patients):
        patient = str(9000 + p)
        for label, colour in ((0, (230, 170, 200)), (1, (120, 60, 150))):
            folder = root / patient / str(label)
            folder.mkdir(parents=True)
            for i in range(per_class + p % 3 * label):
                size = 50 if i else 30  # one edge patch per class
                noise = rng.integers(-30, 30, (size, size, 3))
                pixels = np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)
                name = f"{patient}_idx5_x{1 + 50 * i}_y{1 + 50 * label}_class{label}"
                suffix = ".png" if i % 2 else ".webp"
                Image.fromarray(pixels).save(folder / (name + suffix), lossless=True)
    (root / "9000" / "0" / "9000_idx5_x9999_y1_class0.png").write_bytes(b"not a png")


def test_metrics_on_known_values() -> None:
    labels = np.array([0, 0, 1, 1])
    assert roc_auc(labels, np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)
    assert roc_auc(labels, np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert pr_auc(labels, np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert np.isnan(roc_auc(np.array([1, 1]), np.array([0.2, 0.3])))
    threshold = best_balanced_accuracy_threshold(labels, np.array([0.1, 0.2, 0.3, 0.4]))
    assert 0.2 < threshold <= 0.3
    assert sensitivity_operating_point(labels, np.array([0.1, 0.2, 0.3, 0.4]), 0.9) == 0.3
    assert expected_calibration_error(np.array([0, 1]), np.array([0.0, 1.0])) == 0.0
    # Overconfident logits get a temperature above 1.
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 2000)
    logits = np.stack([np.zeros(2000), (y * 2 - 1) * 6.0 + rng.normal(0, 6, 2000)], axis=1)
    assert fit_platt(logits, y)[0] > 1.5


def test_augment_keeps_shape_and_range() -> None:
    batch = torch.rand(8, 3, 50, 50)
    out = augment(batch, torch.Generator().manual_seed(0), 0.05)
    assert out.shape == batch.shape
    assert float(out.min()) >= 0
    assert float(out.max()) <= 1
    # Without stain jitter, flips and rotations only permute pixels.
    same = augment(batch, torch.Generator().manual_seed(1), 0.0)
    torch.testing.assert_close(same.sum(dim=(2, 3)), batch.sum(dim=(2, 3)))


def test_one_epoch_writes_a_usable_model(tmp_path: Path) -> None:
    data = tmp_path / "idc"
    write_dataset(data)
    patches = load_patch_set(data)
    assert len(patches.unreadable) == 1
    assert patches.pixels.shape[1:] == (50, 50, 3)
    split = split_patients(patches, {"9001", "9002"}, seed=3)
    parts = [set(split.train), set(split.validation), set(split.test)]
    assert parts[0].isdisjoint(parts[1])
    assert parts[0].isdisjoint(parts[2])
    assert set().union(*parts) == set(patches.patient_ids)
    assert split_patients(patches, {"9001", "9002"}, seed=3) == split
    result = run_to_end(
        train(
            patches.subset(split.train),
            patches.subset(split.validation or split.test),
            TrainingSettings(epochs=1, batch_size=16),
            torch.device("cpu"),
        )
    )
    assert len(result.history) == 1
    card_path = finish(
        result,
        patches.subset(split.validation or split.test),
        patches.subset(split.test),
        split,
        tmp_path / "models",
        name="toy",
        device=torch.device("cpu"),
    )
    card = ModelCard.from_file(card_path)
    assert card.input_mpp == 4.0
    assert 0 < card.temperature
    assert set(card.extra["metrics"]) == {"validation", "test"}
    assert PatientSplit.load(tmp_path / "models" / "toy-split.json") == split
    probabilities = Predictor(card, device="cpu").predict(patches.pixels[:4])
    assert probabilities.shape == (4,)
    assert json.loads(card_path.read_text())["intended_use"].startswith("Research use only")
