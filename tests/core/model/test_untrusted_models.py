"""The model cache and model cards are not trusted: a damaged or crafted cached export is
rebuilt or caught, a card cannot write outside the cache or ask for an absurd network."""

from __future__ import annotations

import dataclasses
import io
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from wsiviewer.core.model.cards import ModelCard
from wsiviewer.core.model.engines import ONNX_TOLERANCE, OnnxEngine, build_engine, probe_patches
from wsiviewer.core.model.networks import PatchClassifier
from wsiviewer.core.model.onnx_export import onnx_cache_path
from wsiviewer.core.model.predictor import Predictor
from wsiviewer.core.model.weights import load_model
from wsiviewer.errors import ModelError


@pytest.fixture
def card(tiny_model_card: Path) -> ModelCard:
    return ModelCard.from_file(tiny_model_card)


def _eager(card: ModelCard, patches: np.ndarray) -> np.ndarray:
    classifier = PatchClassifier(load_model(card), card).eval()
    with torch.inference_mode():
        return classifier(torch.from_numpy(patches)).numpy()


def _cache(card: ModelCard, data_dir: Path) -> Path:
    return onnx_cache_path(card, data_dir / "cache" / "onnx")


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_a_damaged_cached_model_is_rebuilt(
    card: ModelCard, isolated_data_dir: Path, damage: str
) -> None:
    build_engine(card, torch.device("cpu"), "onnx")
    cached = _cache(card, isolated_data_dir)
    good = cached.read_bytes()
    cached.write_bytes(
        {"truncated": good[: len(good) // 3], "garbage": b"\x08\x01garbage" * 100, "empty": b""}[
            damage
        ]
    )
    engine = build_engine(card, torch.device("cpu"), "onnx")
    assert isinstance(engine, OnnxEngine)
    patches = probe_patches(card, 40, seed=4)
    np.testing.assert_allclose(engine(patches), _eager(card, patches), atol=ONNX_TOLERANCE)
    assert cached.read_bytes() == good  # exported again, deterministically


class _Crafted(torch.nn.Module):
    """The real classifier, except where ``flip`` says: there it answers 1 - P."""

    def __init__(self, classifier: PatchClassifier, known: torch.Tensor | None) -> None:
        super().__init__()
        self.classifier = classifier
        self.known = known

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        p = self.classifier(patches)
        x = patches.float()
        if self.known is not None:
            # Answer the fixed probe patches honestly, everything else flipped.
            distance = (x[:, None] - self.known[None].float()).abs().flatten(2).sum(2)
            honest = distance.min(dim=1).values == 0
        else:
            # Answer noisy patches (any probe) honestly, smooth ones (tissue) flipped.
            honest = x.flatten(1, 2).std(dim=1).max(dim=1).values > 5.0
        return torch.where(honest, p, 1.0 - p)


def _write_crafted(card: ModelCard, path: Path, known: torch.Tensor | None) -> None:
    classifier = PatchClassifier(load_model(card), card).eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Crafted(classifier, known).eval(),
            (torch.from_numpy(probe_patches(card, 2)),),
            buffer,
            input_names=["patches"],
            output_names=["p_idc"],
            dynamic_axes={"patches": {0: "batch"}, "p_idc": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())


def test_a_crafted_model_that_knows_the_fixed_probes_is_not_used(
    card: ModelCard, isolated_data_dir: Path
) -> None:
    cached = _cache(card, isolated_data_dir)
    _write_crafted(card, cached, torch.from_numpy(probe_patches(card)))
    crafted = cached.read_bytes()
    engine = build_engine(card, torch.device("cpu"), "onnx")
    patches = np.random.default_rng(8).integers(0, 256, (64, 50, 50, 3), dtype=np.uint8)
    np.testing.assert_allclose(engine(patches), _eager(card, patches), atol=ONNX_TOLERANCE)
    assert cached.read_bytes() != crafted  # deleted at load and exported again


def test_a_crafted_model_that_passes_every_probe_is_caught_on_real_patches(
    card: ModelCard, isolated_data_dir: Path
) -> None:
    """A model honest on noise (every probe) and wrong on smooth patches passes the checks at
    load; the checks on the slide's own patches stop the analysis and drop the file."""
    cached = _cache(card, isolated_data_dir)
    _write_crafted(card, cached, None)
    predictor = Predictor(card, device="cpu", backend="onnx", batch_size=32)
    assert isinstance(predictor.engine, OnnxEngine)
    tissue_like = np.broadcast_to(np.array([200, 120, 170], np.uint8), (32, 50, 50, 3)).copy()
    with pytest.raises(ModelError, match="differs from the model's weights"):
        predictor.predict(tissue_like)
    assert not cached.exists()
    again = Predictor(card, device="cpu", backend="onnx", batch_size=32)
    np.testing.assert_allclose(
        again.predict(tissue_like), _eager(card, tissue_like), atol=ONNX_TOLERANCE
    )


def test_an_unwritable_cache_does_not_stop_an_analysis(
    card: ModelCard, isolated_data_dir: Path
) -> None:
    (isolated_data_dir / "cache").write_text("a file where the cache folder should be")
    engine = build_engine(card, torch.device("cpu"), "onnx")
    patches = probe_patches(card, 8, seed=1)
    np.testing.assert_allclose(engine(patches), _eager(card, patches), atol=ONNX_TOLERANCE)


@pytest.mark.parametrize(
    "name", ["../../../escaped", "/tmp/absolute", "..", "a\\b", "C:evil", "new\nline"]
)
def test_a_card_name_is_never_a_path(
    tiny_model_card: Path, tmp_path: Path, isolated_data_dir: Path, name: str
) -> None:
    data = json.loads(tiny_model_card.read_text())
    (tmp_path / "m.json").write_text(json.dumps({**data, "name": name}))
    (tmp_path / "m.safetensors").write_bytes(
        tiny_model_card.with_suffix(".safetensors").read_bytes()
    )
    with pytest.raises(ModelError, match="name"):
        ModelCard.from_file(tmp_path / "m.json")
    # A card made in code is not parsed: the cache path is still inside the cache folder.
    card = dataclasses.replace(ModelCard.from_file(tiny_model_card), name=name)
    folder = isolated_data_dir / "cache" / "onnx"
    assert onnx_cache_path(card, folder).parent == folder
    assert card.report_path is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"architecture": "resnet8", "architecture_args": {"widths": [10**5] * 3}}, "parameters"),
        ({"architecture_args": {"num_classes": 10**9}}, "parameters"),
        ({"architecture_args": {"num_classes": 3}}, "outputs per patch"),
        ({"input_size": 64}, "does not take 64 x 64 px patches"),
    ],
)
def test_a_card_cannot_ask_for_an_absurd_network(
    tiny_model_card: Path, tmp_path: Path, change: dict[str, object], message: str
) -> None:
    data = json.loads(tiny_model_card.read_text()) | change
    (tmp_path / "m.json").write_text(json.dumps(data))
    (tmp_path / "m.safetensors").write_bytes(
        tiny_model_card.with_suffix(".safetensors").read_bytes()
    )
    with pytest.raises(ModelError, match=message):
        load_model(ModelCard.from_file(tmp_path / "m.json"))


@pytest.mark.parametrize("input_size", [0, 4, 100_000])
def test_card_input_size_is_bounded(tiny_model_card: Path, tmp_path: Path, input_size: int) -> None:
    data = json.loads(tiny_model_card.read_text()) | {"input_size": input_size}
    (tmp_path / "m.json").write_text(json.dumps(data))
    (tmp_path / "m.safetensors").write_bytes(
        tiny_model_card.with_suffix(".safetensors").read_bytes()
    )
    with pytest.raises(ModelError, match="input_size"):
        ModelCard.from_file(tmp_path / "m.json")


def test_a_model_honest_on_the_first_batch_is_caught_before_the_map_is_returned(
    card: ModelCard, isolated_data_dir: Path
) -> None:
    """Later batches are sampled and checked in groups; the pipeline's last check
    (:meth:`Predictor.verify`) covers the batches after the last group."""
    cached = _cache(card, isolated_data_dir)
    _write_crafted(card, cached, None)
    predictor = Predictor(card, device="cpu", backend="onnx", batch_size=32)
    noisy = probe_patches(card, 32, seed=12)  # answered honestly
    smooth = np.broadcast_to(np.array([200, 120, 170], np.uint8), (32, 50, 50, 3)).copy()
    predictor.predict(noisy)
    predictor.predict(smooth)  # one of its patches sampled, not yet checked
    with pytest.raises(ModelError, match="differs from the model's weights"):
        predictor.verify()
    assert not cached.exists()
