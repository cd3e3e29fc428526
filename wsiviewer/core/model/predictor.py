"""The Predictor: a model card applied to batches of patches on the CPU or a CUDA GPU."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from wsiviewer.core.model.cards import ModelCard
from wsiviewer.core.model.engines import build_engine
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
            raise DeviceError("CUDA was requested but no CUDA GPU is available; use the CPU")
        return torch.device(choice)
    raise DeviceError(f"Unknown device {choice!r}; choose auto, cpu or cuda")


def device_label(device: torch.device) -> str:
    """A human name for a device: ``CPU`` or the GPU's name."""
    if device.type == "cuda":
        return f"CUDA ({torch.cuda.get_device_name(device)})"
    return "CPU"


#: Rough device memory one patch needs in flight on CUDA (activations, workspace), bytes.
_CUDA_BYTES_PER_PATCH = 1_500_000


def default_batch_size(device: torch.device) -> int:
    """128 on the CPU; on CUDA as many as a quarter of the free memory holds (256–8192).

    On 2 CPU cores ONNX Runtime runs batches of 128 as fast as 512 (≈3,900 patches/s) while
    its memory arena stays ~200 MB instead of ~750 MB.
    """
    if device.type != "cuda":
        return 128
    free_bytes, _ = torch.cuda.mem_get_info(device)
    fit = int(free_bytes * 0.25 // _CUDA_BYTES_PER_PATCH)
    return max(256, min(8192, fit // 256 * 256))


class Predictor:
    """Applies a card: normalisation in, temperature-scaled softmax out (P of the IDC class).

    Parameters
    ----------
    card
        The model card; its weights are loaded and checked against ``weights_sha256``.
    device
        ``auto``, ``cpu`` or ``cuda``.
    batch_size
        Patches per forward pass; by default 128 on the CPU and sized to free memory on CUDA.
    backend
        ``auto`` (ONNX Runtime on the CPU, torch on CUDA), ``onnx`` or ``torch``.
    threads
        CPU threads of ONNX Runtime (default: every core this process may use); several
        predictors on one machine (batch workers) share its cores.
    """

    def __init__(
        self,
        card: ModelCard,
        device: str = "auto",
        batch_size: int | None = None,
        backend: str = "auto",
        threads: int | None = None,
    ) -> None:
        self.card = card
        self.device = resolve_device(device)
        if batch_size is not None and batch_size <= 0:
            raise ModelError(f"Batch size {batch_size} must be positive")
        self.batch_size = batch_size or default_batch_size(self.device)
        self.engine = build_engine(card, self.device, backend, threads=threads)
        self._network: torch.nn.Module | None = None

    @property
    def device_name(self) -> str:
        return device_label(self.device)

    def verify(self) -> None:
        """Finish the engine's checks of the patches it scored (see
        :class:`~wsiviewer.core.model.engines.OnnxEngine`); call after the last batch.

        Raises
        ------
        ModelError
            If the engine disagrees with the model's weights.
        """
        verify = getattr(self.engine, "verify", None)
        if callable(verify):
            verify()

    def predict(self, patches: np.ndarray) -> np.ndarray:
        """P(IDC) of each patch of ``(N, H, W, 3) uint8`` (H = W = the card's input size)."""
        size = self.card.input_size
        if patches.ndim != 4 or patches.shape[1:] != (size, size, 3) or patches.dtype != np.uint8:
            raise ModelError(
                f"Patches must be (N, {size}, {size}, 3) uint8, got {patches.shape} {patches.dtype}"
            )
        if len(patches) == 0:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate(
            [
                self.engine(patches[start : start + self.batch_size])
                for start in range(0, len(patches), self.batch_size)
            ]
        )

    def features(self, patches: np.ndarray) -> np.ndarray:
        """``(N, F)``: what the network sees in each patch (the input of its last linear
        layer), for the out-of-distribution score; eager torch on the Predictor's device."""
        from wsiviewer.core.model.features import penultimate_features
        from wsiviewer.core.model.weights import load_model

        if self._network is None:
            self._network = load_model(self.card).to(self.device)
        return penultimate_features(
            self._network,
            patches,
            self.card.normalization_mean,
            self.card.normalization_std,
            self.device,
        )
