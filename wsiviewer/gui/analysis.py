"""Analysis in a worker thread: the core generator on a superqt ``GeneratorWorker``.

The worker opens its own slide handle (OpenSlide errors latch per handle, so a corrupt tile
there cannot break the viewer), imports torch only when it starts, yields a copy of the partial
probability map after every batch, and runs the core workflow (:mod:`wsiviewer.core.workflow`)
exactly as ``wsiviewer analyze`` does: regions at the job's threshold and minimum area, recorded
in the Store. Nothing here touches a widget: :class:`AnalysisRunner` turns the worker's signals
into its own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np
from PySide6.QtCore import QObject, QThreadPool, Signal
from superqt.utils import GeneratorWorker

from wsiviewer.core.analysis.grid import PatchGrid
from wsiviewer.core.model.cards import ModelCard
from wsiviewer.core.slides import Mpp
from wsiviewer.errors import ModelError, WsiViewerError

if TYPE_CHECKING:
    # The pipeline and the workflow import torch: only the worker imports them, when it starts.
    from wsiviewer.core.analysis.pipeline import Analysis, AnalysisProgress
    from wsiviewer.core.model.predictor import Predictor
    from wsiviewer.core.workflow import AnalysisParameters

log = logging.getLogger(__name__)

Y = TypeVar("Y")
R = TypeVar("R")


@dataclass(frozen=True)
class AnalysisJob:
    """Everything the worker needs; immutable, shared by nothing mutable."""

    slide_path: Path
    card: ModelCard
    mpp: Mpp
    device: str = "auto"
    batch_size: int | None = None
    parameters: AnalysisParameters | None = None
    #: Cells per patch side when ``parameters`` is ``None`` (2: the dense map).
    subdivision: int = 1


@dataclass(frozen=True)
class AnalysisUpdate:
    """One step, as the GUI sees it: the stage, counts, device and a copy of the map."""

    stage: str
    done: int
    total: int
    device: str | None = None
    grid: PatchGrid | None = None
    probabilities: np.ndarray | None = None


@dataclass(frozen=True)
class AnalysisOutcome:
    analysis: Analysis
    analysis_id: int
    region_set_id: int
    region_count: int
    #: The threshold the regions were drawn at.
    threshold: float


def run_analysis(job: AnalysisJob) -> Generator[AnalysisUpdate, None, AnalysisOutcome]:
    """The worker's generator: the core workflow, its steps as :class:`AnalysisUpdate`;
    closing it between yields cancels cleanly."""
    try:
        return (yield from _run_analysis(job))
    except RuntimeError as exc:
        # superqt turns a RuntimeError into a warning, not ``errored``; torch raises them.
        raise ModelError(f"Analysis failed: {exc}") from exc


#: While the model loads, the worker looks for a cancel this often (s).
LOADING_POLL_S = 0.05

#: Model loads run one at a time: a load that a cancel abandoned may still be running when the
#: next analysis starts, and torch's ONNX export is not thread-safe.
_LOAD_LOCK = threading.Lock()
#: Loads still running (a cancelled one goes on in the background until it ends).
_LOADERS: set[threading.Thread] = set()


def _load_predictor(job: AnalysisJob) -> Generator[AnalysisUpdate, None, Predictor]:
    """The job's predictor, loaded on a daemon thread while this generator yields every
    :data:`LOADING_POLL_S`: importing torch and preparing the model take seconds, and a
    cancel (Esc, or closing the window) must not wait for them. A cancelled load finishes
    on its own in the background and is dropped (:func:`wait_for_model_loads`)."""
    done = threading.Event()
    outcome: list[object] = []

    def load() -> None:
        try:
            with _LOAD_LOCK:
                # Imported here, off the GUI thread: torch costs seconds.
                from wsiviewer.core.model.predictor import Predictor

                outcome.append(Predictor(job.card, device=job.device, batch_size=job.batch_size))
        except BaseException as exc:  # noqa: BLE001 - handed to the worker, raised there
            outcome.append(exc)
        finally:
            done.set()
            _LOADERS.discard(threading.current_thread())

    loader = threading.Thread(target=load, name="wsiviewer-model-load", daemon=True)
    _LOADERS.add(loader)
    loader.start()
    while not done.wait(LOADING_POLL_S):
        yield AnalysisUpdate("loading model", 0, 0)
    (result,) = outcome
    if isinstance(result, BaseException):
        raise result
    return result  # type: ignore[return-value]


def wait_for_model_loads(timeout_s: float = 120.0) -> bool:
    """Wait for model loads a cancel abandoned (the window is closed by then, so quitting
    looks instant): one cut off by the interpreter's exit would abort the process inside
    torch. ``True`` if none is left."""
    deadline = time.monotonic() + timeout_s
    for loader in list(_LOADERS):
        loader.join(max(0.0, deadline - time.monotonic()))
    return not _LOADERS


def _run_analysis(job: AnalysisJob) -> Generator[AnalysisUpdate, None, AnalysisOutcome]:
    yield AnalysisUpdate("loading model", 0, 0)
    from wsiviewer.core.store.database import Store

    # The database first: one that cannot be written fails before the model loads.
    with Store.open() as store:
        predictor = yield from _load_predictor(job)
        from wsiviewer.core.progress import relay
        from wsiviewer.core.slides import open_slide
        from wsiviewer.core.workflow import AnalysisParameters
        from wsiviewer.core.workflow import run_analysis as run_workflow

        parameters = job.parameters or AnalysisParameters(subdivision=job.subdivision)
        device = predictor.device_name

        def update(progress: AnalysisProgress) -> AnalysisUpdate:
            pmap = progress.probability_map
            return AnalysisUpdate(
                progress.stage,
                progress.done,
                progress.total,
                device,
                None if pmap is None else pmap.grid,
                None if pmap is None else pmap.probabilities.copy(),
            )

        with open_slide(job.slide_path) as slide:
            run = run_workflow(slide, predictor, job.mpp, parameters, store=store)
            result = yield from relay(run, update)
    assert result.analysis_id is not None
    assert result.region_set_id is not None
    return AnalysisOutcome(
        result.analysis,
        result.analysis_id,
        result.region_set_id,
        len(result.region_set),
        result.region_set.threshold,
    )


def forward_generator(gen: Generator[Y, None, R]) -> Generator[Y, None, R]:
    """superqt's ``GeneratorWorker`` wants a generator function: this one hands on ``gen``."""
    return (yield from gen)


class AnalysisRunner(QObject):
    """Starts, cancels and reports one analysis at a time.

    Signals
    -------
    analysis_progressed(AnalysisUpdate)
    analysis_finished(AnalysisOutcome)
    analysis_failed(str)
        The message names the problem.
    analysis_cancelled()
    analysis_warned(str)
    stopped()
        The worker is gone (after finished, failed or cancelled).
    """

    analysis_progressed = Signal(object)
    analysis_finished = Signal(object)
    analysis_failed = Signal(str)
    analysis_cancelled = Signal()
    analysis_warned = Signal(str)
    stopped = Signal()

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._worker: GeneratorWorker[AnalysisUpdate, None, AnalysisOutcome] | None = None
        self._generator: Generator[AnalysisUpdate, None, AnalysisOutcome] | None = None
        self.job: AnalysisJob | None = None

    @property
    def running(self) -> bool:
        return self._worker is not None

    def start(self, job: AnalysisJob) -> None:
        if self._worker is not None:
            raise RuntimeError("An analysis is already running")
        self.job = job
        self._generator = run_analysis(job)
        # Not superqt's create_worker: it would also re-raise every error in the GUI thread,
        # where _on_errored already reports it.
        worker: GeneratorWorker[AnalysisUpdate, None, AnalysisOutcome] = GeneratorWorker(
            forward_generator, self._generator
        )
        # The worker's signals reach this runner's slots (GUI thread), queued.
        worker.yielded.connect(self._on_yielded)
        worker.returned.connect(self._on_returned)
        worker.errored.connect(self._on_errored)
        worker.aborted.connect(self._on_aborted)
        worker.warned.connect(self._on_warned)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        worker.start()

    def cancel(self) -> None:
        """Ask the worker to stop; it does so after the batch in progress."""
        if self._worker is not None:
            self._worker.quit()

    def wait(self, timeout_ms: int = 30_000) -> bool:
        """Block until the worker thread ends (window closing); ``True`` if it did."""
        if self._worker is None:
            return True
        done = QThreadPool.globalInstance().waitForDone(timeout_ms)
        if done:
            self._on_finished()
        return done

    def _on_yielded(self, update: AnalysisUpdate) -> None:
        self.analysis_progressed.emit(update)

    def _on_returned(self, outcome: AnalysisOutcome) -> None:
        self.analysis_finished.emit(outcome)

    def _on_aborted(self, *_: object) -> None:
        self.analysis_cancelled.emit()

    def _on_errored(self, exc: BaseException) -> None:
        if isinstance(exc, WsiViewerError | OSError):
            self.analysis_failed.emit(str(exc))
        else:
            log.error("Analysis failed unexpectedly", exc_info=exc)
            self.analysis_failed.emit(f"Unexpected error: {type(exc).__name__}: {exc}")

    def _on_warned(self, warning: tuple[object, ...]) -> None:
        self.analysis_warned.emit(str(warning[0]))

    def _on_finished(self, *_: object) -> None:
        if self._worker is None:
            return
        self._worker = None
        generator, self._generator = self._generator, None
        if generator is not None:
            # A cancelled run stops at a yield: close it here (the worker is done with it)
            # so its slide handle and the core generator are released now.
            generator.close()
        self.stopped.emit()
