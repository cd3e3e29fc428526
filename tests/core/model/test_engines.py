from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from wsiviewer.core.model.cards import ModelCard
from wsiviewer.core.model.engines import (
    ONNX_TOLERANCE,
    OnnxEngine,
    TorchEngine,
    build_engine,
    probe_patches,
)
from wsiviewer.core.model.networks import PatchClassifier
from wsiviewer.core.model.onnx_export import onnx_cache_path
from wsiviewer.core.model.predictor import Predictor
from wsiviewer.core.model.weights import load_model
from wsiviewer.errors import ModelError


@pytest.fixture
def card(tiny_model_card: Path) -> ModelCard:
    return ModelCard.from_file(tiny_model_card)


def eager(card: ModelCard, patches: np.ndarray) -> np.ndarray:
    """The reference: the plain module, normalisation and softmax written out by hand."""
    model = load_model(card)
    x = torch.from_numpy(patches).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(card.normalization_mean).view(1, 3, 1, 1)
    std = torch.tensor(card.normalization_std).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = model((x - mean) / std) / card.temperature
    return torch.softmax(logits, dim=1)[:, card.positive_index].numpy()


def test_onnx_matches_eager_torch(card: ModelCard, isolated_data_dir: Path) -> None:
    engine = build_engine(card, torch.device("cpu"), "onnx")
    assert isinstance(engine, OnnxEngine)
    rng = np.random.default_rng(3)
    patches = rng.integers(0, 256, (300, 50, 50, 3), dtype=np.uint8)
    assert np.abs(engine(patches) - eager(card, patches)).max() <= ONNX_TOLERANCE
    # Exported once, then reused from the cache keyed by the weights and card.
    cached = onnx_cache_path(card, isolated_data_dir / "cache" / "onnx")
    assert cached.is_file()
    stamp = cached.stat().st_mtime_ns
    build_engine(card, torch.device("cpu"), "onnx")
    assert cached.stat().st_mtime_ns == stamp


def test_onnx_matches_eager_torch_on_real_patches(card: ModelCard, idc_dir: Path) -> None:
    from wsiviewer.training.idc import iter_patch_files, pad_patch, read_patch

    files = list(iter_patch_files(idc_dir / "14306"))[:64]
    patches = np.stack([pad_patch(read_patch(p.path)) for p in files])
    engine = build_engine(card, torch.device("cpu"), "onnx")
    assert np.abs(engine(patches) - eager(card, patches)).max() <= ONNX_TOLERANCE


def test_card_normalisation_and_temperature_reach_the_exported_model(
    tiny_model_card: Path, tmp_path: Path
) -> None:
    data = json.loads(tiny_model_card.read_text())
    data |= {
        "temperature": 2.5,
        "normalization": {"mean": [0.5, 0.4, 0.6], "std": [0.2, 0.3, 0.25]},
    }
    (tmp_path / "other.json").write_text(json.dumps(data))
    (tmp_path / "other.safetensors").write_bytes(
        tiny_model_card.with_suffix(".safetensors").read_bytes()
    )
    other = ModelCard.from_file(tmp_path / "other.json")
    patches = probe_patches(other, 40, seed=5)
    engine = build_engine(other, torch.device("cpu"), "onnx")
    np.testing.assert_allclose(engine(patches), eager(other, patches), atol=ONNX_TOLERANCE)


def test_torch_backend_and_unknown_backend(card: ModelCard) -> None:
    engine = build_engine(card, torch.device("cpu"), "torch")
    assert isinstance(engine, TorchEngine)
    assert engine.name == "torch-cpu"
    patches = probe_patches(card, 8)
    np.testing.assert_allclose(engine(patches), eager(card, patches), atol=1e-6)
    with pytest.raises(ModelError, match="Unknown inference backend 'tensorrt'"):
        build_engine(card, torch.device("cpu"), "tensorrt")


def test_predictor_batches_give_the_same_answer(card: ModelCard) -> None:
    patches = probe_patches(card, 50, seed=9)
    whole = Predictor(card, device="cpu", batch_size=512).predict(patches)
    pieces = Predictor(card, device="cpu", batch_size=7).predict(patches)
    np.testing.assert_allclose(whole, pieces, atol=1e-6)
    with pytest.raises(ModelError, match="uint8"):
        Predictor(card, device="cpu").predict(patches.astype(np.float32))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
def test_cuda_path_stays_within_tolerance(card: ModelCard) -> None:
    engine = build_engine(card, torch.device("cuda"), "auto")
    assert isinstance(engine, TorchEngine)
    patches = probe_patches(card, 256, seed=11)
    assert np.abs(engine(patches) - eager(card, patches)).max() <= 1e-3


def test_classifier_is_the_one_definition(card: ModelCard) -> None:
    classifier = PatchClassifier(load_model(card), card).eval()
    patches = probe_patches(card, 16)
    with torch.no_grad():
        out = classifier(torch.from_numpy(patches)).numpy()
    np.testing.assert_allclose(out, eager(card, patches), atol=1e-6)
