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

import logging
import os
import secrets
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
#: Both run float32, but with other kernels and summation orders, which depend on the CPU:
#: on 242 real patches the shipped models differ by at most 5e-7 on one machine, and one
#: sampled patch differed by 1.3e-5 on another. A wrong export (another graph, other
#: weights, a missing normalisation) differs by 1e-2 or more; 1e-4 changes no figure shown.
ONNX_TOLERANCE = 1e-4
#: Largest difference in P(IDC) allowed for float16 autocast on CUDA.
CUDA_HALF_TOLERANCE = 1e-3
#: Patches drawn afresh (unpredictable seed) at every load of an exported model and compared
#: with eager torch, besides the fixed probe patches.
FRESH_PROBES = 32
#: Patches of an exported model's first batch, and of each later batch, compared with eager
#: torch as it runs (chosen at random); later ones are checked in groups of CHECK_GROUP.
FIRST_BATCH_CHECKS = 16
BATCH_CHECKS = 1
CHECK_GROUP = 16

log = logging.getLogger(__name__)


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
    """The classifier exported to ONNX and run by ONNX Runtime on the CPU.

    With a ``reference`` (the torch classifier it was exported from), the patches it scores
    are checked against it: :data:`FIRST_BATCH_CHECKS` patches of the first batch at once,
    then one patch of every later batch, chosen at random (fresh entropy, so no model can know
    which), checked :data:`CHECK_GROUP` at a time and by :meth:`verify` (the pipeline calls it
    after the last batch, so every sampled patch is checked before an analysis is recorded).
    A difference above :data:`ONNX_TOLERANCE` deletes ``cache_path`` and raises
    :class:`~wsiviewer.errors.ModelError`: an exported model is never trusted on the strength
    of earlier checks alone. Grouping the checks keeps their cost at a few per cent: torch and
    ONNX Runtime taking turns at every batch would slow both.
    """

    name = "onnxruntime"

    def __init__(
        self,
        model: Path | bytes,
        threads: int | None = None,
        *,
        reference: PatchClassifier | None = None,
        cache_path: Path | None = None,
    ) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or cpu_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        source = str(model) if isinstance(model, Path) else model
        self._session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        self._reference = reference
        self._cache_path = cache_path
        self._batches = 0
        self._rng = np.random.default_rng()
        self._pending_patches: list[np.ndarray] = []
        self._pending_probabilities: list[np.ndarray] = []

    def run(self, patches: np.ndarray) -> np.ndarray:
        """P(IDC) of ``patches`` by the exported model alone, unchecked."""
        (probabilities,) = self._session.run(None, {self._input: np.ascontiguousarray(patches)})
        return np.asarray(probabilities, dtype=np.float32)

    def __call__(self, patches: np.ndarray) -> np.ndarray:
        probabilities = self.run(patches)
        if self._reference is not None:
            self._sample(patches, probabilities)
        return probabilities

    def verify(self) -> None:
        """Check the patches sampled since the last check against torch.

        Raises
        ------
        ModelError
            If the exported model differs from torch on one of them.
        """
        if not self._pending_patches:
            return
        patches = np.concatenate(self._pending_patches)
        probabilities = np.concatenate(self._pending_probabilities)
        self._pending_patches, self._pending_probabilities = [], []
        assert self._reference is not None
        expected = torch_probabilities(self._reference, patches, threads=1)
        self._judge(float(np.abs(probabilities - expected).max()))

    def _sample(self, patches: np.ndarray, probabilities: np.ndarray) -> None:
        if probabilities.shape != (len(patches),):
            self._judge(float("inf"))
        if len(patches) == 0:
            return
        count = FIRST_BATCH_CHECKS if self._batches == 0 else BATCH_CHECKS
        self._batches += 1
        chosen = self._rng.choice(len(patches), size=min(count, len(patches)), replace=False)
        self._pending_patches.append(patches[chosen].copy())
        self._pending_probabilities.append(probabilities[chosen].copy())
        if self._batches == 1 or len(self._pending_patches) >= CHECK_GROUP:
            self.verify()

    def _judge(self, difference: float) -> None:
        from wsiviewer.errors import ModelError

        if difference <= ONNX_TOLERANCE:
            return
        if self._cache_path is not None:
            self._cache_path.unlink(missing_ok=True)
        raise ModelError(
            f"The exported (ONNX) model differs from the model's weights by {difference:.2g} "
            f"in P(IDC) on patches of this slide (at most {ONNX_TOLERANCE:g} allowed); its "
            "cached copy was deleted. Analyse again: the model is exported afresh"
        )


def torch_probabilities(
    classifier: PatchClassifier, patches: np.ndarray, *, threads: int | None = None
) -> np.ndarray:
    """P(IDC) of ``patches`` by eager torch: the reference every engine is checked against.

    ``threads`` runs torch on that many threads for this call only: a few patches checked
    between ONNX Runtime's batches on one thread, else torch's threads and ONNX Runtime's
    contend and the checks cost more than the batches.
    """
    previous = torch.get_num_threads()
    if threads is not None and threads != previous:
        torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            return classifier(torch.from_numpy(np.ascontiguousarray(patches))).numpy()
    finally:
        if threads is not None and threads != previous:
            torch.set_num_threads(previous)


def build_engine(
    card: ModelCard,
    device: torch.device,
    backend: str = "auto",
    cache_dir: Path | None = None,
    threads: int | None = None,
) -> Engine:
    """The fastest engine for ``device`` that matches eager torch on the card's weights.

    ``backend`` is ``auto`` (ONNX Runtime on the CPU when installed, torch otherwise),
    ``onnx`` or ``torch``; ``threads`` sizes ONNX Runtime (default: every core this process
    may use).

    The exported model is cached (:func:`~.onnx_export.onnx_cache_path`) but never trusted:
    a cached file that does not load, or whose probabilities differ from eager torch by more
    than :data:`ONNX_TOLERANCE` on the fixed probe patches and on :data:`FRESH_PROBES` drawn
    afresh at this load, is deleted and the model exported again; the engine then keeps
    checking real patches as it runs (:class:`OnnxEngine`). A fresh export that still differs
    is never used: eager torch runs instead, with a warning.
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
    cached = _cached_engine(path, classifier, card, threads)
    if cached is not None:
        return cached
    exported = export_onnx(classifier, card)
    try:
        atomic_write_bytes(path, exported)
    except OSError as exc:  # the cache is a convenience: analyse without it
        log.warning("Cannot cache the exported model in %s: %s", path.parent, exc)
    try:
        onnx_engine = OnnxEngine(exported, threads, reference=classifier, cache_path=path)
        difference = _difference_from_torch(onnx_engine, classifier, card)
    except Exception as exc:  # noqa: BLE001 -- ONNX Runtime refusing our own export: use torch
        log.warning("ONNX Runtime cannot run the exported model: %s", exc)
        difference = float("inf")
    if not difference <= ONNX_TOLERANCE:
        path.unlink(missing_ok=True)
        warnings.warn(
            f"Exported model differs from torch by {difference:.2g}; using torch instead",
            RuntimeWarning,
            stacklevel=2,
        )
        return TorchEngine(classifier, device)
    return onnx_engine


def _cached_engine(
    path: Path, classifier: PatchClassifier, card: ModelCard, threads: int | None
) -> OnnxEngine | None:
    """The cached export at ``path`` if it loads and matches torch (see :func:`build_engine`);
    else ``None``, with the file deleted."""
    if not path.is_file():
        return None
    try:
        engine = OnnxEngine(path, threads, reference=classifier, cache_path=path)
        difference = _difference_from_torch(engine, classifier, card)
    except Exception as exc:  # noqa: BLE001 -- any damage (truncated, garbage, another graph)
        log.warning(
            "The cached exported model %s cannot be used (%s); exporting it again", path.name, exc
        )
        path.unlink(missing_ok=True)
        return None
    if not difference <= ONNX_TOLERANCE:
        log.warning(
            "The cached exported model %s differs from torch by %.2g; exporting it again",
            path.name,
            difference,
        )
        path.unlink(missing_ok=True)
        return None
    return engine


def _difference_from_torch(
    engine: OnnxEngine, classifier: PatchClassifier, card: ModelCard
) -> float:
    """Largest |ΔP| between ``engine`` and eager torch on the fixed probe patches and on
    :data:`FRESH_PROBES` patches drawn afresh (``inf`` for output of the wrong shape)."""
    probe = np.concatenate(
        [probe_patches(card), probe_patches(card, FRESH_PROBES, seed=secrets.randbits(63))]
    )
    got = engine.run(probe)
    if got.shape != (len(probe),):
        return float("inf")
    return float(np.abs(got - torch_probabilities(classifier, probe)).max())
