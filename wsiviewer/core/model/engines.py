"""Inference engines: the same :class:`~wsiviewer.core.model.networks.PatchClassifier`, run fast.

- :class:`OnnxEngine` (CPU default): the torch module exported to ONNX once per weights and
  card (cached by their sha256) and run by ONNX Runtime, which runs this depthwise-separable
  network about ten times faster than eager torch on a CPU.
- :class:`TorchEngine`: eager torch; on CUDA with channels-last, pinned host memory,
  asynchronous copies and float16 autocast when that keeps probabilities within
  :data:`CUDA_HALF_TOLERANCE` of float32 (checked on the loaded weights).

The torch module stays the single source of truth: every engine is built from it.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from wsiviewer.core.atomic import atomic_write_bytes
from wsiviewer.core.model.cards import ModelCard
from wsiviewer.core.model.networks import PatchClassifier
from wsiviewer.core.model.onnx_export import export_onnx, onnx_cache_path
from wsiviewer.core.model.weights import load_model

#: Largest difference in P(IDC) allowed between an engine and eager float32 torch on the CPU.
ONNX_TOLERANCE = 1e-5
#: Largest difference in P(IDC) allowed for float16 autocast on CUDA.
CUDA_HALF_TOLERANCE = 1e-3


class Engine(Protocol):
    """Runs a batch of ``(N, H, W, 3) uint8`` patches and returns ``(N,) float32`` P(IDC)."""

    #: A short description for logs and the run record (``onnxruntime``, ``torch-cuda-fp16``).
    name: str

    def __call__(self, patches: np.ndarray) -> np.ndarray: ...


def cpu_threads() -> int:
    """Cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def probe_patches(card: ModelCard, count: int = 32, seed: int = 0) -> np.ndarray:
    """Deterministic patches that span the input range, to compare engines."""
    rng = np.random.default_rng(seed)
    size = card.input_size
    smooth = rng.integers(0, 256, (count, 1, 1, 3), dtype=np.uint8)
    noise = rng.integers(-40, 40, (count, size, size, 3))
    return np.clip(smooth + noise, 0, 255).astype(np.uint8)


class TorchEngine:
    """Eager torch on the CPU or a CUDA device."""

    def __init__(self, classifier: PatchClassifier, device: torch.device) -> None:
        self.device = device
        classifier = classifier.to(device)
        # torch's stubs lack Module.to(memory_format=...), which exists at run time.
        classifier = classifier.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.classifier = classifier.eval()
        self.half = False
        self.name = f"torch-{device.type}"
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True

    def enable_half_if_close(self, probe: np.ndarray) -> bool:
        """Use float16 autocast (CUDA only) if it stays within :data:`CUDA_HALF_TOLERANCE`."""
        if self.device.type != "cuda":
            return False
        full = self(probe)
        self.half = True
        half = self(probe)
        self.half = bool(np.abs(half - full).max() <= CUDA_HALF_TOLERANCE)
        self.name = "torch-cuda-fp16" if self.half else "torch-cuda"
        return self.half

    @torch.inference_mode()
    def __call__(self, patches: np.ndarray) -> np.ndarray:
        batch = torch.from_numpy(np.ascontiguousarray(patches))
        if self.device.type == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
            with torch.autocast("cuda", dtype=torch.float16, enabled=self.half):
                probabilities = self.classifier(batch)
        else:
            probabilities = self.classifier(batch)
        return probabilities.float().cpu().numpy()


class OnnxEngine:
    """The classifier exported to ONNX and run by ONNX Runtime on the CPU."""

    name = "onnxruntime"

    def __init__(self, onnx_path: Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or cpu_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = ort.InferenceSession(
            str(onnx_path), options, providers=["CPUExecutionProvider"]
        )
        self._input = self._session.get_inputs()[0].name

    def __call__(self, patches: np.ndarray) -> np.ndarray:
        (probabilities,) = self._session.run(None, {self._input: np.ascontiguousarray(patches)})
        return np.asarray(probabilities, dtype=np.float32)


def build_engine(
    card: ModelCard, device: torch.device, backend: str = "auto", cache_dir: Path | None = None
) -> Engine:
    """The fastest engine for ``device`` that matches eager torch on the card's weights.

    ``backend`` is ``auto`` (ONNX Runtime on the CPU when installed, torch otherwise),
    ``onnx`` or ``torch``. An exported model whose probabilities differ from eager torch by
    more than :data:`ONNX_TOLERANCE` is never used.
    """
    from wsiviewer.errors import ModelError

    classifier = PatchClassifier(load_model(card), card).eval()
    if backend not in {"auto", "onnx", "torch"}:
        raise ModelError(f"Unknown inference backend {backend!r}; use auto, onnx or torch")
    want_onnx = device.type == "cpu" and backend in {"auto", "onnx"}
    if want_onnx:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            if backend == "onnx":
                raise ModelError("The onnx backend needs the onnxruntime package") from None
            want_onnx = False
    if not want_onnx:
        engine = TorchEngine(classifier, device)
        engine.enable_half_if_close(probe_patches(card))
        return engine

    from wsiviewer.core.paths import data_dir

    path = onnx_cache_path(card, cache_dir or data_dir() / "cache" / "onnx")
    if not path.is_file():
        atomic_write_bytes(path, export_onnx(classifier, card))
    onnx_engine = OnnxEngine(path)
    probe = probe_patches(card)
    with torch.inference_mode():
        expected = classifier(torch.from_numpy(probe)).numpy()
    difference = float(np.abs(onnx_engine(probe) - expected).max())
    if difference > ONNX_TOLERANCE:
        path.unlink(missing_ok=True)
        warnings.warn(
            f"Exported model differs from torch by {difference:.2g}; using torch instead",
            RuntimeWarning,
            stacklevel=2,
        )
        return TorchEngine(classifier, device)
    return onnx_engine
