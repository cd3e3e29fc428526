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
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

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
    from wsiviewer.core.workflow import AnalysisParameters

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnalysisJob:
    """Everything the worker needs; immutable, shared by nothing mutable."""

    slide_path: Path
    card: ModelCard
    mpp: Mpp
    device: str = "auto"
    batch_size: int | None = None
    parameters: AnalysisParameters | None = None


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


def _run_analysis(job: AnalysisJob) -> Generator[AnalysisUpdate, None, AnalysisOutcome]:
    yield AnalysisUpdate("loading model", 0, 0)
    # Imported here, on the worker, when first needed: torch costs seconds at startup.
    from wsiviewer.core.model.predictor import Predictor
    from wsiviewer.core.progress import relay
    from wsiviewer.core.slides import open_slide
    from wsiviewer.core.store.database import Store
    from wsiviewer.core.workflow import run_analysis as run_workflow

    # The database first: one that cannot be written fails before the model loads.
    with Store.open() as store:
        predictor = Predictor(job.card, device=job.device, batch_size=job.batch_size)
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
            run = run_workflow(slide, predictor, job.mpp, job.parameters, store=store)
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


def _forward(
    gen: Generator[AnalysisUpdate, None, AnalysisOutcome],
) -> Generator[AnalysisUpdate, None, AnalysisOutcome]:
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
        worker = GeneratorWorker(_forward, self._generator)
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
