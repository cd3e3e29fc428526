"""The viewer's "Analyze all": a batch (:mod:`wsiviewer.core.batch.runner`) on a worker thread,
its events turned into Qt signals.

:class:`BatchBridge` is the batch's observer: Dask calls it from its own threads (a future's
completion callback, a worker's progress event) and the batch thread calls it for planning
and finishing; each call emits a signal, which Qt delivers on the GUI thread (queued), so the
case list updates live without polling the database and the viewer stays responsive.
:class:`CaseBatchRunner` starts one batch at a time on a superqt worker and cancels it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QObject, Signal
from superqt.utils import FunctionWorker

from wsiviewer.errors import WsiViewerError

if TYPE_CHECKING:
    # The runner imports the workflow, and so torch: only when a batch starts.
    from wsiviewer.core.batch.manifest import SlideRow
    from wsiviewer.core.batch.runner import (
        BatchObserver,
        BatchReport,
        BatchRun,
        BatchSettings,
        ClusterInfo,
    )

log = logging.getLogger(__name__)


class BatchBridge(QObject):
    """A :class:`BatchObserver` whose every event is a signal (safe from any thread).

    Signals
    -------
    cluster_ready(ClusterInfo)
    slide_planned(SlideRow)
    slide_progressed(str label, str stage, int done, int total)
    slide_computed(str label)
        The slide's future completed on the cluster (its completion callback).
    slide_finished(SlideRow)
        Final status, recorded.
    noted(str)
    """

    cluster_ready = Signal(object)
    slide_planned = Signal(object)
    slide_progressed = Signal(str, str, int, int)
    slide_computed = Signal(str)
    slide_finished = Signal(object)
    noted = Signal(str)

    def observer(self) -> BatchObserver:
        """The observer to give the batch: it emits this bridge's signals."""
        from wsiviewer.core.batch.runner import BatchObserver

        bridge = self

        class _Emitting(BatchObserver):
            def cluster_started(self, info: ClusterInfo) -> None:
                bridge.cluster_ready.emit(info)

            def slide_planned(self, row: SlideRow) -> None:
                bridge.slide_planned.emit(row)

            def slide_progressed(self, label: str, stage: str, done: int, total: int) -> None:
                bridge.slide_progressed.emit(label, stage, done, total)

            def slide_computed(self, label: str) -> None:
                bridge.slide_computed.emit(label)

            def slide_finished(self, row: SlideRow) -> None:
                bridge.slide_finished.emit(row)

            def note(self, text: str) -> None:
                bridge.noted.emit(text)

        return _Emitting()


class CaseBatchRunner(QObject):
    """Runs one batch at a time on a worker thread.

    Signals
    -------
    batch_finished(BatchReport)
    batch_failed(str)
        The batch could not run (no scheduler, no worker, a database error).
    stopped()
        The worker is gone.
    """

    batch_finished = Signal(object)
    batch_failed = Signal(str)
    stopped = Signal()

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.bridge = BatchBridge(self)
        self._worker: FunctionWorker[BatchReport] | None = None
        self._run: BatchRun | None = None
        #: The worker function of the tasks (tests gate it).
        self.task: Callable[..., Any] | None = None

    @property
    def running(self) -> bool:
        return self._worker is not None

    def start(self, slides: Sequence[Path], settings: BatchSettings) -> None:
        if self._worker is not None:
            raise RuntimeError("A batch is already running")
        from wsiviewer.core.batch.runner import BatchRun
        from wsiviewer.core.store.database import Store

        observer = self.bridge.observer()
        task = self.task

        def run() -> BatchReport:
            # Opened on the worker thread: the batch is the only writer of its results.
            with Store.open() as store:
                if task is None:
                    batch = BatchRun(slides, settings, store, observer)
                else:
                    batch = BatchRun(slides, settings, store, observer, task=task)
                self._run = batch
                return batch.run()

        worker: FunctionWorker[BatchReport] = FunctionWorker(run)
        worker.returned.connect(self.batch_finished.emit)
        worker.errored.connect(self._on_errored)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        worker.start()

    def cancel(self) -> None:
        """Stop the batch: running slides are cancelled, finished ones stay recorded."""
        if self._run is not None:
            self._run.cancel()

    def _on_errored(self, exc: BaseException) -> None:
        if isinstance(exc, WsiViewerError | OSError):
            self.batch_failed.emit(str(exc))
        else:
            log.error("Batch failed unexpectedly", exc_info=exc)
            self.batch_failed.emit(f"Unexpected error: {type(exc).__name__}: {exc}")

    def _on_finished(self, *_: object) -> None:
        self._worker = None
        self._run = None
        self.stopped.emit()
