"""What runs on a Dask worker: one slide, up to its probability map.

:func:`analyze_slide` is the task (one per slide). It opens the slide from the path the client
planned, runs :func:`~wsiviewer.core.analysis.pipeline.analyze` with the model the client chose
and returns the :class:`~wsiviewer.core.analysis.pipeline.Analysis` (map, grid, metadata: a
few MB) in a :class:`WorkerResult`. Regions, outputs and the Store are the client's
(:func:`~wsiviewer.core.workflow.finish_analysis`): SQLite stays single-writer.

- **One model per worker process**: predictors are cached in this module, keyed by the card's
  weights and card sha256, the device, the batch size and the inference threads, so a worker
  loads the weights once however many slides it analyses.
- **Errors stay per slide**: anything a slide raises comes back as a :class:`WorkerFailure`
  with its one-line message, and the batch goes on. Only a worker that dies (killed, out of
  memory) makes the scheduler retry the slide elsewhere.
- **Progress** goes to the client as Dask events on the batch's topic (stage, patches done and
  total), at most a few a second per slide.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wsiviewer.core.analysis.pipeline import Analysis, AnalysisProgress, AnalysisWarning, analyze
from wsiviewer.core.analysis.tissue import TissueSettings
from wsiviewer.core.model.cards import ModelCard, available_models
from wsiviewer.core.progress import run_to_end
from wsiviewer.core.slides import Mpp
from wsiviewer.errors import ModelError

if TYPE_CHECKING:
    from wsiviewer.core.model.predictor import Predictor

#: Seconds between two progress events of one slide (stage changes are always sent).
PROGRESS_INTERVAL_S = 0.5


@dataclass(frozen=True)
class SlideTask:
    """One slide to analyse on a worker: everything the task needs, nothing it shares."""

    #: The slide's path as the workers see it (they need read access to it).
    slide_path: str
    #: The slide's name in events, results and output folders.
    label: str
    mpp: Mpp
    card: ModelCard
    tissue: TissueSettings
    device: str = "auto"
    #: Cells per patch side (2: the dense map).
    subdivision: int = 1
    batch_size: int | None = None
    #: CPU threads for inference; ``None``: the worker's cores shared among its task threads.
    inference_threads: int | None = None
    #: Dask event topic for progress; ``None``: no progress events.
    progress_topic: str | None = None


@dataclass(frozen=True)
class WorkerResult:
    """A slide analysed on a worker, up to its probability map."""

    label: str
    analysis: Analysis
    #: Wall time of the task on the worker, model loading included when it happened.
    seconds: float
    #: ``host:pid`` of the worker process.
    worker: str
    #: Whether this task loaded the model (the first task of a worker process does).
    model_loaded: bool


@dataclass(frozen=True)
class WorkerFailure:
    """A slide that could not be analysed, with its one-line error."""

    label: str
    error: str
    seconds: float
    worker: str


_predictors: dict[tuple[object, ...], Predictor] = {}
_predictors_lock = threading.Lock()
#: How many times this process has loaded a model (tests check it is once per worker).
model_loads = 0


def analyze_slide(task: SlideTask) -> WorkerResult | WorkerFailure:
    """The batch task: analyse one slide (see the module docstring).

    Never raises for a problem of the slide or the model: it returns a :class:`WorkerFailure`.
    """
    started = time.perf_counter()
    where = worker_name()
    try:
        threads = task.inference_threads or _default_inference_threads()
        predictor, loaded = predictor_for(task.card, task.device, task.batch_size, threads)
        analysis = _analyze(task, predictor)
    # One slide's failure, whatever it is, must not stop the batch: it is recorded with its
    # message and the next slide goes on (the client logs nothing else about it).
    except Exception as exc:  # noqa: BLE001
        return WorkerFailure(task.label, one_line(exc), time.perf_counter() - started, where)
    return WorkerResult(task.label, analysis, time.perf_counter() - started, where, loaded)


def _analyze(task: SlideTask, predictor: Predictor) -> Analysis:
    from wsiviewer.core.slides import open_slide

    report = _progress_reporter(task)
    with open_slide(task.slide_path) as slide, warnings.catch_warnings():
        # The notes are in analysis.warnings; the client reports them.
        warnings.simplefilter("ignore", AnalysisWarning)
        return run_to_end(
            analyze(
                slide,
                predictor,
                mpp=task.mpp,
                tissue_settings=task.tissue,
                subdivision=task.subdivision,
            ),
            report,
        )


def predictor_for(
    card: ModelCard, device: str, batch_size: int | None, threads: int | None
) -> tuple[Predictor, bool]:
    """This process's predictor for ``card`` (loaded on first use); ``True`` if loaded now.

    Raises
    ------
    ModelError
        If the card's weights are not readable here and no installed model has the same
        weights and card.
    """
    global model_loads
    key = (card.weights_sha256, card.card_sha256, device, batch_size, threads)
    with _predictors_lock:
        predictor = _predictors.get(key)
        if predictor is not None:
            return predictor, False
        predictor = _load_predictor(local_card(card), device, batch_size, threads)
        _predictors[key] = predictor
        model_loads += 1
        return predictor, True


def local_card(card: ModelCard) -> ModelCard:
    """``card`` as this machine has it: at the client's path if the same card is there, else
    the installed model with the same weights and card sha256 (workers on other machines).

    Raises
    ------
    ModelError
        If neither is found.
    """
    if card.path.is_file():
        try:
            here = ModelCard.from_file(card.path)
        except ModelError:
            here = None
        if here is not None and here.card_sha256 == card.card_sha256:
            return here
    for installed in available_models():
        if (installed.weights_sha256, installed.card_sha256) == (
            card.weights_sha256,
            card.card_sha256,
        ):
            return installed
    raise ModelError(
        f"Model {card.name!r} (card sha256 {card.card_sha256[:12]}…) is not on worker "
        f"{worker_name()}: give workers read access to {card.path}, or install the model there"
    )


def _load_predictor(
    card: ModelCard, device: str, batch_size: int | None, threads: int | None
) -> Predictor:
    import torch

    from wsiviewer.core.model.engines import OnnxEngine
    from wsiviewer.core.model.onnx_export import onnx_cache_path
    from wsiviewer.core.model.predictor import Predictor
    from wsiviewer.core.paths import data_dir

    if threads is not None:
        torch.set_num_threads(threads)
    predictor = Predictor(card, device=device, batch_size=batch_size)
    if threads is not None and isinstance(predictor.engine, OnnxEngine):
        # The Predictor sizes ONNX Runtime to every core of the machine; several workers on
        # one machine share them. The model it exported is in the engines' cache (the same
        # folder build_engine uses), checked against torch when it was built.
        onnx_path = onnx_cache_path(card, data_dir() / "cache" / "onnx")
        if onnx_path.is_file():
            predictor.engine = OnnxEngine(onnx_path, threads=threads)
    return predictor


def _default_inference_threads() -> int | None:
    """The worker's cores shared among its task threads (``None`` outside a worker)."""
    from wsiviewer.core.model.engines import cpu_threads

    worker = _current_worker()
    if worker is None:
        return None
    return max(1, cpu_threads() // max(1, int(worker.state.nthreads)))


def _progress_reporter(task: SlideTask) -> Any:
    """A progress callback that sends Dask events on the task's topic, throttled."""
    worker = _current_worker() if task.progress_topic is not None else None
    last: dict[str, Any] = {"stage": None, "at": 0.0}

    def report(progress: AnalysisProgress) -> None:
        if worker is None or task.progress_topic is None:
            return
        now = time.monotonic()
        if progress.stage == last["stage"] and now - last["at"] < PROGRESS_INTERVAL_S:
            if progress.done != progress.total:
                return
        last["stage"], last["at"] = progress.stage, now
        worker.log_event(
            task.progress_topic,
            {
                "label": task.label,
                "stage": progress.stage,
                "done": progress.done,
                "total": progress.total,
                "worker": worker_name(),
            },
        )

    return report


def _current_worker() -> Any:
    try:
        from distributed import get_worker

        return get_worker()
    except (ImportError, ValueError):
        return None


def worker_name() -> str:
    """``host:pid`` of this process."""
    return f"{socket.gethostname()}:{os.getpid()}"


def one_line(exc: BaseException) -> str:
    """An exception as one line: its message, or its type when it has none."""
    text = " ".join(str(exc).split())
    if not text:
        return type(exc).__name__
    if isinstance(exc, OSError | ModelError) or type(exc).__module__.startswith("wsiviewer"):
        return text
    return f"{type(exc).__name__}: {text}"


def installed_version() -> str:
    """The wsiviewer version of this process (the client checks its workers')."""
    from wsiviewer import __version__

    return __version__


def slide_path_for_worker(path: Path) -> str:
    """The path workers open: absolute, so a worker started elsewhere finds the same file."""
    return str(path.absolute())


def dask_setup(worker: object) -> None:
    """Dask preload hook of local workers: Ctrl-C is the client's to handle.

    A terminal sends SIGINT to every process of its foreground group, local workers
    included; they ignore it, and the client cancels their tasks and closes them cleanly.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
