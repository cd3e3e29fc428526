"""Model weights: safetensors files checked against the card's sha256, and writing a model.

Weights load only from safetensors and must match the card's ``weights_sha256``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn

from wsiviewer.core.atomic import atomic_write_bytes, atomic_write_text
from wsiviewer.core.model.cards import ModelCard
from wsiviewer.core.model.networks import build_model
from wsiviewer.errors import ModelError


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_model(card: ModelCard) -> nn.Module:
    """The card's network with its weights, in eval mode on the CPU.

    Raises
    ------
    ModelError
        If the weights file does not match ``weights_sha256``, is not safetensors, or does
        not fit the architecture.
    """
    weights_path = card.weights_path
    actual = sha256_file(weights_path)
    if actual != card.weights_sha256:
        raise ModelError(
            f"Weights {weights_path.name} do not match the card: sha256 {actual[:12]}…, "
            f"card says {card.weights_sha256[:12]}…"
        )
    model = build_model(
        card.architecture,
        card.architecture_args,
        input_size=card.input_size,
        classes=len(card.classes),
    )
    try:
        state = load_file(weights_path, device="cpu")
    except (SafetensorError, OSError) as exc:
        raise ModelError(f"Weights {weights_path.name} are not a safetensors file: {exc}") from exc
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first_line = str(exc).splitlines()[0]
        raise ModelError(
            f"Weights {weights_path.name} do not fit architecture {card.architecture!r}: "
            f"{first_line}"
        ) from exc
    return model.eval()


def write_model(
    model: nn.Module,
    folder: Path,
    card_fields: Mapping[str, Any],
) -> Path:
    """Write ``<name>.safetensors`` and ``<name>.json`` into ``folder``; return the card path.

    The card's ``weights_sha256`` is computed from the written weights. Both files are
    written atomically.
    """
    name = str(card_fields["name"])
    folder.mkdir(parents=True, exist_ok=True)
    weights_path = folder / f"{name}.safetensors"
    state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    # Serialised in memory and written like any other file (safetensors' own writer makes
    # the file private, 0600, which a shared lab install cannot read).
    data = save(state, metadata={"name": name})
    atomic_write_bytes(weights_path, data)
    card = {**card_fields, "weights_sha256": hashlib.sha256(data).hexdigest()}
    card_path = folder / f"{name}.json"
    atomic_write_text(card_path, json.dumps(card, indent=2) + "\n")
    return card_path


def untrained_card_fields(name: str = "cancernet-untrained") -> dict[str, Any]:
    """Card keys for a randomly initialised CancerNet (tests and development only)."""
    return {
        "name": name,
        "version": "0.0.0",
        "architecture": "cancernet",
        "architecture_args": {},
        "input_size": 50,
        "input_mpp": 4.0,
        "normalization": {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]},
        "classes": ["non-IDC", "IDC"],
        "threshold": 0.5,
        "temperature": 1.0,
        "logit_bias": 0.0,
        "operating_points": {},
        "training_data": "none: randomly initialised weights",
        "split": None,
        "metrics": {},
        "intended_use": "Testing only: random weights. Research use only, not for diagnosis.",
        "default": False,
    }
