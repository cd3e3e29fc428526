"""The batch client: plan the slides, run one task per slide on Dask, record every result.

:class:`BatchRun` is what ``wsiviewer batch`` and the viewer's "Analyze all" run::

    sources ─> plan (open, µm/px, analysis key, label; skip what the Store has)
            ─> submit analyze_slide(task) per slide ─> workers (LocalCluster or a scheduler)
            ─> as each comes back: finish_analysis (regions, outputs, Store) ─> manifest

- **The client is the only writer** of the Store (SQLite) and of ``out_dir/<label>/``; workers
  only read slides and model files.
- **Resumable**: a slide whose analysis key (slide identity, model weights and card, µm/px,
  tissue settings) is already in the Store is skipped, unless ``force``; a slide given twice
  (two paths, or two files of one DICOM slide) is analysed once.
- **Fault tolerant**: a slide that fails is recorded with its one-line error and the batch
  goes on; when a worker dies mid-slide the scheduler hands the slide to another worker, up to
  ``retries`` times (the scheduler's ``allowed-failures``), then it is marked failed.
- **Cancel** (:meth:`BatchRun.cancel`, or Ctrl-C raising ``KeyboardInterrupt`` in
  :meth:`BatchRun.run`) stops the tasks; what is done stays recorded, the rest is marked
  cancelled, and the manifest is written. Outputs are written staged (:mod:`.exports.files`),
  so nothing half-written is left under ``out_dir``.

Observers hear of every step (:class:`BatchObserver`): planning and finishing from the thread
that calls :meth:`BatchRun.run`; task progress and completion from Dask's threads (the futures'
completion callbacks), so a GUI turns them into signals.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from wsiviewer.core.analysis.grid import PatchGrid
from wsiviewer.core.analysis.pipeline import analysis_key
from wsiviewer.core.batch.manifest import (
    MANIFEST_NAME,
    SlideRow,
    private_error,
    write_manifest,
)
from wsiviewer.core.batch.worker import (
    SlideTask,
    WorkerFailure,
    WorkerResult,
    analyze_slide,
    installed_version,
    one_line,
    slide_path_for_worker,
)
from wsiviewer.core.model.cards import ModelCard
from wsiviewer.core.slides.label import slide_label, unique_labels
from wsiviewer.core.store.database import Store
from wsiviewer.core.workflow import AnalysisParameters, WorkflowResult, finish_analysis
from wsiviewer.errors import WsiViewerError

if TYPE_CHECKING:
    from distributed import Client, Future

log = logging.getLogger(__name__)

#: Seconds to wait for a worker to connect to an existing scheduler.
WORKER_WAIT_S = 60.0
#: Memory one local worker process needs (model, ONNX Runtime, a slide's reads), bytes.
WORKER_MEMORY_BYTES = 2 * 1024**3


class BatchError(WsiViewerError):
    """The batch cannot run: no scheduler, no worker, or workers without wsiviewer."""


@contextlib.contextmanager
def _ctrl_c_after() -> Iterator[None]:
    """Ctrl-C (SIGINT) waits for the block, then interrupts: a slide being recorded is
    recorded whole and reported done, not left recorded in the Store but "cancelled" in the
    manifest. Only in the main thread (where Python handles signals); elsewhere a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, _frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            raise KeyboardInterrupt


@dataclass(frozen=True)
class BatchSettings:
    """How a batch runs: the analysis, where results go, and which cluster."""

    card: ModelCard
    parameters: AnalysisParameters = field(default_factory=AnalysisParameters)
    #: Outputs go to ``out_dir/<label>/`` and the manifest to ``out_dir``; ``None``: the Store
    #: only (the viewer's "Analyze all").
    out_dir: Path | None = None
    device: str = "auto"
    batch_size: int | None = None
    #: Level-0 µm/px for slides whose metadata lacks it (overrides metadata, as ``--mpp``).
    mpp: float | None = None
    include_filename: bool = False
    force: bool = False
    #: Times a slide is handed to another worker after its worker died.
    retries: int = 2
    #: Address of an existing Dask scheduler; ``None``: a LocalCluster.
    scheduler: str | None = None
    #: LocalCluster worker processes; ``None``: sized to the machine's cores and memory.
    workers: int | None = None
    #: Tasks a worker runs at once.
    threads_per_worker: int = 1

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError(f"Retries {self.retries} must be ≥ 0")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"Workers {self.workers} must be ≥ 1")
        if self.threads_per_worker < 1:
            raise ValueError(f"Threads per worker {self.threads_per_worker} must be ≥ 1")


@dataclass(frozen=True)
class ClusterInfo:
    """The cluster a batch runs on, as it is told to the user."""

    #: ``"local"`` or the scheduler's address.
    scheduler: str
    workers: int
    threads_per_worker: int | None
    #: CPU threads each task's inference uses (``None``: decided on each worker).
    inference_threads: int | None
    dashboard: str | None
    retries: int


class BatchObserver:
    """What a front door hears of a batch; every method does nothing by default."""

    def cluster_started(self, info: ClusterInfo) -> None:
        """The cluster is up (called from :meth:`BatchRun.run`'s thread)."""

    def slide_planned(self, row: SlideRow) -> None:
        """A slide is queued, skipped or failed before submission (run's thread)."""

    def slide_progressed(self, label: str, stage: str, done: int, total: int) -> None:
        """A worker reported progress on a slide (a Dask thread)."""

    def slide_computed(self, label: str) -> None:
        """A slide's task ended on its worker: its future completed (a Dask thread)."""

    def slide_finished(self, row: SlideRow) -> None:
        """A slide reached its final status and is recorded (run's thread)."""

    def note(self, text: str) -> None:
        """Something the user should read (run's thread)."""


@dataclass(frozen=True)
class BatchReport:
    """Every slide of a finished (or cancelled) batch."""

    rows: tuple[SlideRow, ...]
    cluster: ClusterInfo | None
    manifest: Path | None
    cancelled: bool
    wall_s: float

    @property
    def ok(self) -> bool:
        """Every slide done or skipped (the CLI's exit status 0)."""
        return not self.cancelled and all(r.status in {"done", "skipped"} for r in self.rows)

    def count(self, status: str) -> int:
        return sum(row.status == status for row in self.rows)


@dataclass
class _Planned:
    row: SlideRow
    task: SlideTask


class BatchRun:
    """One batch over ``slides`` (paths from :func:`~.sources.find_slides`).

    Parameters
    ----------
    slides
        Slide paths, in order.
    settings
        The analysis and the cluster.
    store
        The open Store; this run is its only writer for the batch's results.
    observer
        Told of every step.
    task
        The worker function (tests wrap :func:`~.worker.analyze_slide` to gate it).
    """

    def __init__(
        self,
        slides: Sequence[Path],
        settings: BatchSettings,
        store: Store,
        observer: BatchObserver | None = None,
        *,
        task: Callable[[SlideTask], WorkerResult | WorkerFailure] = analyze_slide,
    ) -> None:
        self.slides = [Path(path) for path in slides]
        self.settings = settings
        self.store = store
        self.observer = observer or BatchObserver()
        self._task = task
        self._rows: list[SlideRow] = []
        self._labels: list[str] = []
        self._topic = ""
        self._cancel = threading.Event()
        self._client: Client | None = None
        self._futures: dict[str, Future[Any]] = {}
        self._lock = threading.Lock()

    # -- public -----------------------------------------------------------------------------

    @property
    def rows(self) -> tuple[SlideRow, ...]:
        """The slides so far (all of them once :meth:`run` returned or raised)."""
        with self._lock:
            return tuple(self._rows)

    def cancel(self) -> None:
        """Stop the batch: no new task starts, running ones are cancelled (any thread)."""
        self._cancel.set()
        with self._lock:
            client, futures = self._client, list(self._futures.values())
        if client is not None and futures:
            with contextlib.suppress(Exception):
                client.cancel(futures)

    def run(self) -> BatchReport:
        """Run the batch to its end; return the report (the manifest is written too).

        ``KeyboardInterrupt`` cancels the batch, writes the manifest and is raised again.

        Raises
        ------
        BatchError
            If the cluster cannot be started or reached, or has no usable worker.
        """
        started = time.perf_counter()
        info: ClusterInfo | None = None
        try:
            with self._cluster() as (client, info):
                self.observer.cluster_started(info)
                self._run_on(client, info)
        except BaseException:
            self._cancel_remaining()
            raise
        finally:
            manifest = self._write_manifest()
        return BatchReport(
            self.rows, info, manifest, self._cancel.is_set(), time.perf_counter() - started
        )

    # -- cluster ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _cluster(self) -> Iterator[tuple[Client, ClusterInfo]]:
        import dask
        from distributed import Client, LocalCluster

        settings = self.settings
        if settings.scheduler is None:
            workers = settings.workers or local_worker_count(settings.threads_per_worker)
            threads = settings.threads_per_worker
            inference_threads = max(1, _cpu_threads() // (workers * threads))
            # The scheduler of a LocalCluster runs in this process and reads this when built.
            with dask.config.set({"distributed.scheduler.allowed-failures": settings.retries}):
                cluster = LocalCluster(
                    n_workers=workers,
                    threads_per_worker=threads,
                    processes=True,
                    dashboard_address=":0",
                    silence_logs=logging.ERROR,
                    # Imports the task's module at start and leaves Ctrl-C to the client.
                    preload=["wsiviewer.core.batch.worker"],
                )
            try:
                with Client(cluster) as client:
                    info = ClusterInfo(
                        "local",
                        workers,
                        threads,
                        inference_threads,
                        _dashboard(client),
                        settings.retries,
                    )
                    with self._attached(client):
                        yield client, info
            finally:
                cluster.close()
            return
        try:
            # Dask's connect timeout applies (distributed.comm.timeouts.connect, 30 s).
            client = Client(settings.scheduler)
        except (OSError, TimeoutError) as exc:
            raise BatchError(
                f"Cannot reach the Dask scheduler at {settings.scheduler}: {one_line(exc)}"
            ) from exc
        try:
            info = self._check_workers(client)
            previous = client.run_on_scheduler(_set_allowed_failures, retries=settings.retries)
            try:
                with self._attached(client):
                    yield client, info
            finally:
                with contextlib.suppress(Exception):
                    client.run_on_scheduler(_set_allowed_failures, retries=previous)
        finally:
            client.close()

    def _check_workers(self, client: Client) -> ClusterInfo:
        settings = self.settings
        try:
            client.wait_for_workers(1, timeout=WORKER_WAIT_S)
        except TimeoutError as exc:
            raise BatchError(
                f"No worker connected to the scheduler at {settings.scheduler} within "
                f"{WORKER_WAIT_S:.0f} s; start one with `dask worker {settings.scheduler}`"
            ) from exc
        try:
            versions = client.run(installed_version)
        except Exception as exc:
            raise BatchError(
                f"The workers of {settings.scheduler} cannot run wsiviewer tasks "
                f"({one_line(exc)}): install wsiviewer where `dask worker` runs"
            ) from exc
        mine = installed_version()
        others = sorted({v for v in versions.values() if v != mine})
        if others:
            self.observer.note(
                f"workers run wsiviewer {', '.join(others)}, this client {mine}: results "
                "record the workers' analysis"
            )
        nthreads = client.nthreads()
        per_worker = set(nthreads.values())
        return ClusterInfo(
            str(settings.scheduler),
            len(nthreads),
            per_worker.pop() if len(per_worker) == 1 else None,
            None,
            _dashboard(client),
            settings.retries,
        )

    @contextlib.contextmanager
    def _attached(self, client: Client) -> Iterator[None]:
        self._topic = f"wsiviewer-batch-{uuid.uuid4().hex}"
        client.subscribe_topic(self._topic, self._on_event)
        with self._lock:
            self._client = client
        try:
            yield
        finally:
            with self._lock:
                self._client = None
            with contextlib.suppress(Exception):
                client.unsubscribe_topic(self._topic)

    # -- the batch --------------------------------------------------------------------------

    def _run_on(self, client: Client, info: ClusterInfo) -> None:
        """Plan and submit slides as workers free up; record each result as it comes.

        At most as many tasks as the cluster has threads are on it at once, so a worker
        holds only the slides it is analysing: when it dies, only those count a failure
        (the scheduler counts every task assigned to a dead worker, started or not).
        """
        from distributed import as_completed

        completed = as_completed()
        plans = self._plans(info)
        try:
            self._fill(client, completed, plans)
            for future in completed:
                self._collect(future)
                self._fill(client, completed, plans)
        except BaseException:
            # Ctrl-C: stop the tasks now, before the cluster goes.
            self.cancel()
            raise
        if self._cancel.is_set():
            self._cancel_remaining()

    def _plans(self, info: ClusterInfo) -> Iterator[SlideRow | _Planned]:
        keys: dict[str, str] = {}
        for index, path in enumerate(self.slides):
            if self._cancel.is_set():
                return
            yield self._plan(index, path, info, keys)

    def _fill(self, client: Client, completed: Any, plans: Iterator[SlideRow | _Planned]) -> None:
        """Plan slides until the cluster's threads are busy or every slide is planned."""
        if self._cancel.is_set():
            return
        capacity = max(1, sum(client.nthreads().values()))
        while len(self._futures) < capacity:
            planned = next(plans, None)
            if planned is None:
                return
            self._submit(client, completed, planned)

    def _submit(self, client: Client, completed: Any, planned: SlideRow | _Planned) -> None:
        """Record a planned slide, and submit its task if it has one."""
        if isinstance(planned, SlideRow):
            self._set_row(planned)
            self.observer.slide_planned(planned)
            if planned.final:
                self.observer.slide_finished(planned)
            return
        label = planned.row.label
        self._set_row(planned.row)
        self.observer.slide_planned(planned.row)
        future = client.submit(
            self._task, planned.task, key=f"analyze-{label}-{uuid.uuid4().hex[:8]}", pure=False
        )
        # Completion callbacks run on a Dask thread: a GUI turns them into signals.
        future.add_done_callback(lambda _future: self.observer.slide_computed(label))
        with self._lock:
            self._futures[label] = future
        completed.add(future)

    def _plan(
        self,
        index: int,
        path: Path,
        info: ClusterInfo,
        keys: dict[str, str],
    ) -> SlideRow | _Planned:
        """The slide's row if it is not submitted (failed, skipped), else its task."""
        from wsiviewer.core.slides import open_slide

        settings = self.settings
        card = settings.card
        tissue = settings.parameters.tissue
        subdivision = settings.parameters.subdivision

        identity = ""
        try:
            with open_slide(path) as slide:
                identity = slide.identity
                mpp = slide.resolve_mpp(settings.mpp)
                PatchGrid.for_slide(
                    slide.dimensions, mpp.value, card.input_mpp, card.input_size, subdivision
                )
        except (WsiViewerError, OSError) as exc:
            label = self._label_for(identity, path)
            failed = SlideRow(index, path, label, "failed", slide_identity=identity)
            return failed.with_status("failed", self._error(exc, path))
        key = analysis_key(identity, card.summary(), mpp.value, tissue, subdivision)
        label = self._label_for(identity, path)
        row = SlideRow(index, path, label, "queued", slide_identity=identity, analysis_key=key)
        if key in keys:
            return row.with_status("skipped", f"the same slide as {keys[key]}")
        keys[key] = label
        if not settings.force:
            stored = self._stored(row)
            if stored is not None:
                return stored
        task = SlideTask(
            slide_path=slide_path_for_worker(path),
            label=label,
            mpp=mpp,
            card=card,
            tissue=tissue,
            subdivision=subdivision,
            device=settings.device,
            batch_size=settings.batch_size,
            inference_threads=info.inference_threads,
            progress_topic=self._topic,
        )
        return _Planned(row, task)

    def _stored(self, row: SlideRow) -> SlideRow | None:
        """The row of a slide whose analysis is already in the Store (skipped), else None."""
        found = self.store.find_analyses(row.analysis_key)
        if not found:
            return None
        record = found[0]
        region_set = self.store.latest_region_set(record.id)
        regions = area = None
        if region_set is not None:
            stored_regions = self.store.regions(region_set.id)
            regions = len(stored_regions)
            area = sum(r.region.area_mm2 for r in stored_regions)
        probabilities = self.store.load_probability_map(record).probabilities
        return replace(
            row,
            status="skipped",
            error=f"already analysed (analysis {record.id}); --force analyses it again",
            patches=record.scored_count,
            regions=regions,
            max_p=_max_p(probabilities),
            idc_area_mm2=area,
            analysis_id=record.id,
        )

    def _collect(self, future: Future[Any]) -> None:
        """Record one task's outcome (on this thread: the only writer)."""
        with self._lock:
            label = next((k for k, f in self._futures.items() if f.key == future.key), None)
            if label is not None:
                del self._futures[label]
        row = next(r for r in self.rows if r.label == label)
        if future.cancelled() or (self._cancel.is_set() and future.status != "finished"):
            self._finish_row(row.with_status("cancelled", "the batch was cancelled"))
            return
        exception = future.exception() if future.status == "error" else None
        if exception is not None:
            self._finish_row(row.with_status("failed", self._task_error(exception, row.path)))
            return
        outcome = future.result()
        future.release()
        if isinstance(outcome, WorkerFailure):
            failed = replace(row, seconds=outcome.seconds)
            self._finish_row(failed.with_status("failed", private_error(outcome.error, row.path)))
            return
        with _ctrl_c_after():
            self._finish_row(self._finish(row, outcome))

    def _finish(self, row: SlideRow, outcome: WorkerResult) -> SlideRow:
        """Regions, outputs and Store for a slide analysed on a worker."""
        from wsiviewer.core.slides import open_slide

        saving = row.with_status("saving")
        self._set_row(saving)
        started = time.perf_counter()
        out_dir = None if self.settings.out_dir is None else self.settings.out_dir / row.label
        existed = out_dir is not None and out_dir.exists()
        try:
            with open_slide(row.path) as slide:
                result = finish_analysis(
                    outcome.analysis,
                    self.settings.parameters,
                    store=self.store,
                    out_dir=out_dir,
                    slide=slide,
                )
        except (WsiViewerError, OSError) as exc:
            if out_dir is not None and not existed and out_dir.is_dir():
                with contextlib.suppress(OSError):
                    out_dir.rmdir()  # a failed slide leaves no empty folder behind
            failed = replace(row, seconds=outcome.seconds + time.perf_counter() - started)
            return failed.with_status("failed", self._error(exc, row.path))
        seconds = outcome.seconds + time.perf_counter() - started
        done = _done_row(row, result, seconds)
        return replace(done, worker=outcome.worker, worker_seconds=outcome.seconds)

    def _label_for(self, identity: str, path: Path) -> str:
        """The slide's label, numbered when another slide of the batch has it."""
        base = slide_label(identity, path, include_filename=self.settings.include_filename)
        label = unique_labels([*self._labels, base])[-1]
        self._labels.append(label)
        return label

    def _cancel_remaining(self) -> None:
        with self._lock:
            rows = list(self._rows)
        for row in rows:
            if not row.final:
                self._finish_row(row.with_status("cancelled", "the batch was cancelled"))
        planned = {row.index for row in rows}
        for index, path in enumerate(self.slides):
            if index not in planned:
                # Never opened: no identity to name it by.
                row = SlideRow(index, path, "", "cancelled")
                self._finish_row(
                    row.with_status("cancelled", "not started: the batch was cancelled")
                )

    # -- rows and events --------------------------------------------------------------------

    def _set_row(self, row: SlideRow) -> None:
        with self._lock:
            for i, old in enumerate(self._rows):
                if old.index == row.index:
                    self._rows[i] = row
                    return
            self._rows.append(row)

    def _finish_row(self, row: SlideRow) -> None:
        self._set_row(row)
        self.observer.slide_finished(row)

    def _on_event(self, event: tuple[float, Any]) -> None:
        _, message = event
        if not isinstance(message, dict):
            return
        with contextlib.suppress(KeyError, TypeError, ValueError):
            label, stage = str(message["label"]), str(message["stage"])
            done, total = int(message["done"]), int(message["total"])
            with self._lock:
                for i, row in enumerate(self._rows):
                    if row.label == label and row.status == "queued":
                        self._rows[i] = row.with_status("running")
            self.observer.slide_progressed(label, stage, done, total)

    def _error(self, exc: BaseException, path: Path) -> str:
        message = one_line(exc)
        return message if self.settings.include_filename else private_error(message, path)

    def _task_error(self, exc: BaseException, path: Path) -> str:
        from distributed import KilledWorker

        if isinstance(exc, KilledWorker):
            tries = self.settings.retries + 1
            return (
                f"the worker analysing it died {tries} time{'s' if tries > 1 else ''} "
                "(killed, or out of memory)"
            )
        return self._error(exc, path)

    def _write_manifest(self) -> Path | None:
        if self.settings.out_dir is None or not self.rows:
            return None
        try:
            return write_manifest(self.settings.out_dir / MANIFEST_NAME, self.rows)
        except WsiViewerError as exc:
            self.observer.note(f"cannot write the manifest: {exc}")
            return None


def local_worker_count(threads_per_worker: int = 1) -> int:
    """LocalCluster workers for this machine: its cores, as far as memory allows."""
    import psutil

    by_cores = max(1, _cpu_threads() // threads_per_worker)
    by_memory = max(1, int(psutil.virtual_memory().total // WORKER_MEMORY_BYTES))
    return min(by_cores, by_memory)


def _cpu_threads() -> int:
    from wsiviewer.core.model.engines import cpu_threads

    return cpu_threads()


def _dashboard(client: Client) -> str | None:
    """The dashboard's address, when the scheduler serves one: without bokeh on the
    scheduler its page only says that bokeh is missing."""
    try:
        services = client.scheduler_info().get("services", {})
        has_bokeh = client.run_on_scheduler(_has_bokeh)
    except Exception:  # noqa: BLE001  (informational only: the batch runs without it)
        return None
    if "dashboard" not in services or not has_bokeh:
        return None
    return str(client.dashboard_link)


def _has_bokeh() -> bool:
    """Runs on the scheduler: whether its dashboard can draw (bokeh is installed)."""
    import importlib.util

    return importlib.util.find_spec("bokeh") is not None


def _set_allowed_failures(dask_scheduler: Any, retries: int) -> int:
    """Runs on the scheduler: set how often a task may kill its worker; return the old value."""
    previous = int(dask_scheduler.allowed_failures)
    dask_scheduler.allowed_failures = int(retries)
    return previous


def _max_p(probabilities: np.ndarray) -> float | None:
    if probabilities.size == 0 or np.isnan(probabilities).all():
        return None
    return float(np.nanmax(probabilities))


def _done_row(row: SlideRow, result: WorkflowResult, seconds: float) -> SlideRow:
    probability_map = result.analysis.probability_map
    area = math.fsum(region.area_mm2 for region in result.region_set.regions)
    error = " ".join(result.analysis.warnings)
    return replace(
        row,
        status="done",
        patches=probability_map.scored_count,
        regions=len(result.region_set),
        max_p=_max_p(probability_map.probabilities),
        idc_area_mm2=area,
        seconds=seconds,
        error=error,
        analysis_id=result.analysis_id,
    )
