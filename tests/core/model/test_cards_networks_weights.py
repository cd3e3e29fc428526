from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from wsiviewer.core.model.cards import ModelCard, available_models, resolve_model
from wsiviewer.core.model.networks import ARCHITECTURES, CancerNet, build_model
from wsiviewer.core.model.predictor import Predictor, resolve_device
from wsiviewer.core.model.weights import load_model, untrained_card_fields, write_model
from wsiviewer.errors import DeviceError, ModelError


def test_cancernet_layout() -> None:
    model = CancerNet().eval()
    separable = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    pointwise = [
        m.out_channels
        for m in model.modules()
        if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1)
    ]
    assert [m.kernel_size for m in separable] == [(3, 3)] * 6
    assert pointwise == [32, 64, 64, 128, 128, 128]
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in model.modules()) == 3
    dense = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in dense] == [256, 2]
    assert model(torch.zeros(4, 3, 50, 50)).shape == (4, 2)


def test_registry_builds_by_name() -> None:
    assert "cancernet" in ARCHITECTURES
    assert isinstance(build_model("cancernet", {}), CancerNet)
    with pytest.raises(ModelError, match="Unknown architecture 'nope'"):
        build_model("nope")
    with pytest.raises(ModelError, match="Bad architecture_args"):
        build_model("cancernet", {"bogus": 1})
    wide = build_model("resnet8", {"widths": [48, 96, 192]})
    assert wide(torch.zeros(2, 3, 50, 50)).shape == (2, 2)


def test_written_weights_are_readable_like_any_file(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    os.umask(umask)
    write_model(CancerNet(), tmp_path, untrained_card_fields("shared"))
    mode = (tmp_path / "shared.safetensors").stat().st_mode & 0o777
    assert mode == 0o666 & ~umask


def test_write_and_load_round_trip(tiny_model_card: Path) -> None:
    card = ModelCard.from_file(tiny_model_card)
    assert card.input_mpp == 4.0
    assert card.input_size == 50
    assert card.positive_index == 1
    model = load_model(card)
    assert not model.training


def test_tampered_weights_are_refused(tiny_model_card: Path, tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    for suffix in (".json", ".safetensors"):
        (folder / f"cancernet-untrained{suffix}").write_bytes(
            tiny_model_card.with_suffix(suffix).read_bytes()
        )
    weights = folder / "cancernet-untrained.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="do not match the card"):
        load_model(ModelCard.from_file(folder / "cancernet-untrained.json"))


def test_non_safetensors_weights_are_refused(tmp_path: Path) -> None:
    card_path = write_model(CancerNet(), tmp_path, untrained_card_fields("pickled"))
    weights = card_path.with_suffix(".safetensors")
    torch.save(CancerNet().state_dict(), weights)  # a pickle, not safetensors
    card = json.loads(card_path.read_text())
    from wsiviewer.core.model.weights import sha256_file

    card["weights_sha256"] = sha256_file(weights)
    card_path.write_text(json.dumps(card))
    with pytest.raises(ModelError, match="not a safetensors file"):
        load_model(ModelCard.from_file(card_path))


def test_weights_of_another_architecture_are_refused(tmp_path: Path) -> None:
    card_path = write_model(CancerNet(input_size=64), tmp_path, untrained_card_fields("wrong"))
    with pytest.raises(ModelError, match="do not fit architecture"):
        load_model(ModelCard.from_file(card_path))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"threshold": 1.5}, "threshold 1.5"),
        ({"input_mpp": 0}, "input_mpp 0"),
        ({"temperature": -1}, "temperature -1"),
        ({"classes": ["a", "b"]}, "do not include 'IDC'"),
        ({"weights_sha256": "abc"}, "not a sha256"),
        ({"normalization": {"mean": [0, 0], "std": [1, 1, 1]}}, "normalization"),
    ],
)
def test_bad_card_values(tiny_model_card: Path, tmp_path: Path, change: dict, message: str) -> None:
    data = {**json.loads(tiny_model_card.read_text()), **change}
    card_path = tmp_path / "bad.json"
    card_path.write_text(json.dumps(data))
    (tmp_path / "bad.safetensors").write_bytes(
        tiny_model_card.with_suffix(".safetensors").read_bytes()
    )
    with pytest.raises(ModelError, match=message):
        ModelCard.from_file(card_path)


def test_card_errors(tmp_path: Path, tiny_model_card: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        ModelCard.from_file(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        ModelCard.from_file(tmp_path / "broken.json")
    (tmp_path / "partial.json").write_text(json.dumps({"name": "x"}))
    with pytest.raises(ModelError, match="lacks required keys: version"):
        ModelCard.from_file(tmp_path / "partial.json")
    (tmp_path / "noweights.json").write_text(tiny_model_card.read_text())
    with pytest.raises(ModelError, match="Weights for model"):
        ModelCard.from_file(tmp_path / "noweights.json")


def test_resolve_model_by_name_path_and_default(
    tiny_model_card: Path, isolated_data_dir: Path
) -> None:
    assert resolve_model(str(tiny_model_card)).name == "cancernet-untrained"
    user_models = isolated_data_dir / "models"
    fields = {**untrained_card_fields("user-model"), "default": True}
    write_model(CancerNet(), user_models, fields)
    assert "user-model" in {card.name for card in available_models()}
    assert resolve_model("user-model").name == "user-model"
    assert resolve_model(None).default
    with pytest.raises(ModelError, match=r"Unknown model 'nope'; available models: .*user-model"):
        resolve_model("nope")


def test_predictor_applies_normalisation_and_temperature(
    tiny_model_card: Path, tmp_path: Path
) -> None:
    card = ModelCard.from_file(tiny_model_card)
    predictor = Predictor(card, device="cpu", batch_size=3)
    rng = np.random.default_rng(0)
    patches = rng.integers(0, 256, (7, 50, 50, 3), dtype=np.uint8)
    probs = predictor.predict(patches)
    assert probs.shape == (7,)
    assert np.all((probs >= 0) & (probs <= 1))
    # Same numbers as the plain module, batch size aside.
    x = torch.from_numpy(patches).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        expected = torch.softmax(load_model(card)(x), dim=1)[:, 1].numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-6)
    # A hotter card flattens the probabilities towards 0.5.
    hot = json.loads(tiny_model_card.read_text()) | {"temperature": 4.0}
    (tmp_path / "hot.json").write_text(json.dumps(hot))
    (tmp_path / "hot.safetensors").write_bytes(
        tiny_model_card.with_suffix(".safetensors").read_bytes()
    )
    hot_probs = Predictor(ModelCard.from_file(tmp_path / "hot.json"), device="cpu").predict(patches)
    assert np.abs(hot_probs - 0.5).max() < np.abs(probs - 0.5).max()
    with pytest.raises(ModelError, match=r"Patches must be \(N, 50, 50, 3\)"):
        predictor.predict(patches[:, :40])


def test_device_choice() -> None:
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(DeviceError, match="Unknown device 'tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="no CUDA GPU"):
            resolve_device("cuda")
