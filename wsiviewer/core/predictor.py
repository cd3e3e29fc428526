"""The Predictor: a model card applied to batches of patches on the CPU or a CUDA GPU."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from wsiviewer.core.cards import ModelCard
from wsiviewer.core.models import load_model
from wsiviewer.errors import DeviceError, ModelError

DeviceChoice = Literal["auto", "cpu", "cuda"]


def resolve_device(choice: str = "auto") -> torch.device:
    """``auto`` is CUDA when available, else the CPU; ``cuda`` without a GPU is an error."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cpu":
        return torch.device("cpu")
    if choice.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError("CUDA was requested but no CUDA GPU is available; use --device cpu")
        return torch.device(choice)
    raise DeviceError(f"Unknown device {choice!r}; use auto, cpu or cuda")


def device_label(device: torch.device) -> str:
    """A human name for a device: ``CPU`` or the GPU's name."""
    if device.type == "cuda":
        return f"CUDA ({torch.cuda.get_device_name(device)})"
    return "CPU"


class Predictor:
    """Applies a card: normalisation in, temperature-scaled softmax out (P of the IDC class).

    Parameters
    ----------
    card
        The model card; its weights are loaded and checked against ``weights_sha256``.
    device
        ``auto``, ``cpu`` or ``cuda``.
    batch_size
        Patches per forward pass; by default 256 on the CPU, 1024 on a GPU.
    """

    def __init__(
        self, card: ModelCard, device: str = "auto", batch_size: int | None = None
    ) -> None:
        self.card = card
        self.device = resolve_device(device)
        if batch_size is not None and batch_size <= 0:
            raise ModelError(f"Batch size {batch_size} must be positive")
        self.batch_size = batch_size or (1024 if self.device.type == "cuda" else 256)
        self.model = load_model(card).to(self.device)
        self._mean = torch.tensor(card.normalization_mean, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(card.normalization_std, device=self.device).view(1, 3, 1, 1)

    @property
    def device_name(self) -> str:
        return device_label(self.device)

    @torch.inference_mode()
    def predict(self, patches: np.ndarray) -> np.ndarray:
        """P(IDC) of each patch of ``(N, H, W, 3) uint8`` (H = W = the card's input size)."""
        size = self.card.input_size
        if patches.ndim != 4 or patches.shape[1:] != (size, size, 3):
            raise ModelError(f"Patches must be (N, {size}, {size}, 3) uint8, got {patches.shape}")
        if len(patches) == 0:
            return np.zeros(0, dtype=np.float32)
        out = np.empty(len(patches), dtype=np.float32)
        for start in range(0, len(patches), self.batch_size):
            chunk = torch.from_numpy(np.ascontiguousarray(patches[start : start + self.batch_size]))
            x = chunk.to(self.device).permute(0, 3, 1, 2).float().div_(255.0)
            x = (x - self._mean) / self._std
            logits = self.model(x).float() / self.card.temperature
            probs = torch.softmax(logits, dim=1)[:, self.card.positive_index]
            out[start : start + len(chunk)] = probs.cpu().numpy()
        return out
