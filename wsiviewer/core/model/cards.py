"""Model cards: what a model is, what it expects, and where its weights are.

A model is ``<name>.safetensors`` + ``<name>.json`` (the card) in a models folder: the
``models/`` folder shipped inside the package, or ``models/`` in the user data directory.
This module reads and checks cards without importing torch, so listing models is cheap.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wsiviewer.core.paths import inside
from wsiviewer.core.units import plausible_mpp
from wsiviewer.errors import ModelError, escape_control

if TYPE_CHECKING:
    # numpy behind them: imported when a card carries them, so listing cards stays cheap.
    from wsiviewer.core.model.colour import ColourReference
    from wsiviewer.core.model.context import ContextSettings
    from wsiviewer.core.model.ood import OodModel
    from wsiviewer.core.model.stain_check import StainCheck

_REQUIRED_KEYS = (
    "name",
    "version",
    "architecture",
    "weights_sha256",
    "input_size",
    "input_mpp",
    "normalization",
    "classes",
    "threshold",
    "temperature",
)

#: The class whose probability is the heatmap.
POSITIVE_CLASS = "IDC"


@dataclass(frozen=True)
class ModelSummary:
    """What an analysis records of its model."""

    name: str
    version: str
    architecture: str
    weights_sha256: str
    card_sha256: str
    input_mpp: float
    threshold: float

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "version": self.version,
            "architecture": self.architecture,
            "weights_sha256": self.weights_sha256,
            "card_sha256": self.card_sha256,
            "input_mpp": self.input_mpp,
            "threshold": self.threshold,
        }


@dataclass(frozen=True)
class ModelCard:
    """A parsed, checked model card (DESIGN.md lists the keys)."""

    path: Path
    card_sha256: str
    name: str
    version: str
    architecture: str
    architecture_args: Mapping[str, Any]
    weights_sha256: str
    input_size: int
    input_mpp: float
    normalization_mean: tuple[float, float, float]
    normalization_std: tuple[float, float, float]
    classes: tuple[str, ...]
    threshold: float
    temperature: float
    #: Added to the IDC logit after the temperature (Platt scaling); 0 if the card has none.
    logit_bias: float = 0.0
    default: bool = False
    # The arrays below are not compared (numpy has no truth value for them): two cards with
    # the same ``card_sha256`` carry the same ones.
    #: Per-slide colour standardisation the model was trained with (``colour``), or ``None``.
    colour: ColourReference | None = field(default=None, compare=False)
    #: Spatial context applied to the map after the patches are scored (``context``).
    context: ContextSettings | None = None
    #: The training features' distribution, to flag unusual slides (``ood``).
    ood: OodModel | None = field(default=None, compare=False)
    #: The training patients' stain statistics, to flag slides stained otherwise
    #: (``stain_check``).
    stain_check: StainCheck | None = field(default=None, compare=False)
    #: Everything else on the card (operating points, metrics, training data, ...).
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def weights_path(self) -> Path:
        return self.path.with_suffix(".safetensors")

    @property
    def report_path(self) -> Path | None:
        """The evaluation report written beside the card (``reports/<name>/report.md``)."""
        try:
            path = inside(self.path.parent / "reports", self.name) / "report.md"
        except ValueError:
            return None  # parsing refuses such names; a card built in code might not
        return path if path.is_file() else None

    @property
    def positive_index(self) -> int:
        return self.classes.index(POSITIVE_CLASS)

    @property
    def intended_use(self) -> str:
        return str(self.extra.get("intended_use", "Research use only, not for diagnosis."))

    def summary(self) -> ModelSummary:
        return ModelSummary(
            name=self.name,
            version=self.version,
            architecture=self.architecture,
            weights_sha256=self.weights_sha256,
            card_sha256=self.card_sha256,
            input_mpp=self.input_mpp,
            threshold=self.threshold,
        )

    @classmethod
    def from_file(cls, path: str | Path) -> ModelCard:
        """Read and check a card.

        Raises
        ------
        ModelError
            If the card is missing, not JSON, lacks a key, has a bad value, or its
            weights file is missing.
        """
        path = Path(path)
        if not path.is_file():
            raise ModelError(f"Model card not found: {path}")
        raw = path.read_bytes()
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelError(f"Model card {path.name} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ModelError(f"Model card {path.name} must be a JSON object")
        missing = [key for key in _REQUIRED_KEYS if key not in data]
        if missing:
            raise ModelError(f"Model card {path.name} lacks required keys: {', '.join(missing)}")
        try:
            card = cls._parse(path, hashlib.sha256(raw).hexdigest(), data)
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise ModelError(f"Model card {path.name} has a bad value: {exc}") from exc
        if not card.weights_path.is_file():
            raise ModelError(
                f"Weights for model {card.name!r} not found: expected {card.weights_path.name} "
                f"beside {path.name}"
            )
        return card

    @classmethod
    def _parse(cls, path: Path, card_sha256: str, data: dict[str, Any]) -> ModelCard:
        norm = data["normalization"]
        mean = tuple(float(v) for v in norm["mean"])
        std = tuple(float(v) for v in norm["std"])
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"normalization needs 3 means and 3 positive stds, got {norm}")
        classes = tuple(str(c) for c in data["classes"])
        if POSITIVE_CLASS not in classes:
            raise ValueError(f"classes {list(classes)} do not include {POSITIVE_CLASS!r}")
        name = _checked_name(data["name"])
        input_size = int(data["input_size"])
        input_mpp = float(data["input_mpp"])
        threshold = float(data["threshold"])
        temperature = float(data["temperature"])
        low, high = INPUT_SIZE_RANGE
        if not low <= input_size <= high:
            raise ValueError(f"input_size {input_size} must be within {low}-{high} px")
        if not 2 <= len(classes) <= MAX_CLASSES:
            raise ValueError(f"{len(classes)} classes; a card has 2-{MAX_CLASSES}")
        if plausible_mpp(input_mpp) is None:
            raise ValueError(f"input_mpp {input_mpp} is not a plausible µm/px")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold {threshold} must be within [0, 1]")
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature {temperature} must be positive")
        logit_bias = float(data.get("logit_bias", 0.0))
        if not math.isfinite(logit_bias):
            raise ValueError(f"logit_bias {logit_bias} must be finite")
        sha = str(data["weights_sha256"]).lower()
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise ValueError(f"weights_sha256 {sha!r} is not a sha256 hex digest")
        colour = context = ood = stain_check = None
        if data.get("colour"):
            from wsiviewer.core.model.colour import ColourReference

            colour = ColourReference.from_dict(data["colour"])
        if data.get("context"):
            from wsiviewer.core.model.context import ContextSettings

            context = ContextSettings.from_dict(data["context"])
        if data.get("ood"):
            from wsiviewer.core.model.ood import OodModel

            ood = OodModel.from_dict(data["ood"])
        if data.get("stain_check"):
            from wsiviewer.core.model.stain_check import StainCheck

            stain_check = StainCheck.from_dict(data["stain_check"])
        known = {
            *_REQUIRED_KEYS,
            *("architecture_args", "logit_bias", "default", "colour", "context", "ood"),
            "stain_check",
        }
        return cls(
            path=path,
            card_sha256=card_sha256,
            name=name,
            version=str(data["version"]),
            architecture=str(data["architecture"]),
            architecture_args=dict(data.get("architecture_args") or {}),
            weights_sha256=sha,
            input_size=input_size,
            input_mpp=input_mpp,
            normalization_mean=(mean[0], mean[1], mean[2]),
            normalization_std=(std[0], std[1], std[2]),
            classes=classes,
            threshold=threshold,
            temperature=temperature,
            logit_bias=logit_bias,
            default=bool(data.get("default", False)),
            colour=colour,
            context=context,
            ood=ood,
            stain_check=stain_check,
            extra={k: v for k, v in data.items() if k not in known},
        )


#: Patch sides a card may ask for, px: the IDC patches are 50; larger inputs multiply every
#: activation (and the memory of a batch) by the square of the side.
INPUT_SIZE_RANGE = (8, 256)
#: Most classes a card may list.
MAX_CLASSES = 64
#: Longest model name.
MAX_NAME_CHARS = 100


def _checked_name(value: object) -> str:
    """A card's name: a short label that is also a safe file name (the ONNX cache and the
    evaluation reports are named by it), so never a path."""
    name = str(value)
    if not name or len(name) > MAX_NAME_CHARS:
        raise ValueError(f"name must be 1-{MAX_NAME_CHARS} characters, got {len(name)}")
    if not name.isprintable() or name.strip() != name:
        raise ValueError(
            f"name {escape_control(name)!r} has control or surrounding space characters"
        )
    if name in (".", "..") or any(char in name for char in "/\\:"):
        raise ValueError(
            f"name {name!r} is a path; a model name cannot contain / \\ : or be . or .."
        )
    return name


def shipped_models_dir() -> Path | None:
    """The ``models/`` folder installed with the package, if any."""
    try:
        folder = Path(str(resources.files("wsiviewer.models")))
    except ModuleNotFoundError:
        return None
    return folder if folder.is_dir() else None


def model_dirs() -> list[Path]:
    """Folders searched for models: shipped first, then the user's."""
    from wsiviewer.core.paths import user_models_dir

    dirs = [d for d in (shipped_models_dir(), user_models_dir()) if d is not None]
    return [d for d in dirs if d.is_dir()]


def available_models() -> list[ModelCard]:
    """Every readable card in the model folders; unreadable cards are skipped."""
    cards: list[ModelCard] = []
    for folder in model_dirs():
        for card_path in sorted(folder.glob("*.json")):
            try:
                cards.append(ModelCard.from_file(card_path))
            except ModelError:
                continue
    return cards


def resolve_model(spec: str | Path | None = None) -> ModelCard:
    """The card named by ``spec``: a path to a card JSON, a card name, or ``None`` (default).

    Raises
    ------
    ModelError
        If no model matches, or none is installed at all.
    """
    if spec is not None and (Path(spec).suffix == ".json" or Path(spec).exists()):
        return ModelCard.from_file(spec)
    cards = available_models()
    if not cards:
        searched = ", ".join(str(d) for d in [shipped_models_dir(), *model_dirs()] if d) or "none"
        raise ModelError(
            "No model is installed: the models shipped with wsiviewer are missing "
            f"(searched: {searched}). Reinstall wsiviewer, name a model card JSON, or put a "
            "model (<name>.json + <name>.safetensors) in the user models folder"
        )
    if spec is None:
        defaults = [card for card in cards if card.default]
        return defaults[0] if defaults else cards[0]
    for card in cards:
        if card.name == str(spec):
            return card
    names = ", ".join(sorted(card.name for card in cards))
    raise ModelError(f"Unknown model {str(spec)!r}; available models: {names}")
