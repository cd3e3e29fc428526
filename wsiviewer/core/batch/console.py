"""A batch on a terminal: a progress bar over slides, with the patches of the slides running.

:class:`ConsoleObserver` is the :class:`~.runner.BatchObserver` of ``wsiviewer batch`` (and of
the batch benchmark). The bar counts slides that reached their final status; its postfix shows
the slides on workers (``slide-3fa…: 1,200/2,227``). Failures are printed as they happen, with
the slide's path: the terminal is the user's own; files never carry it.
"""

from __future__ import annotations

import sys
import threading
from typing import TextIO

from tqdm import tqdm

from wsiviewer.core.batch.manifest import SlideRow
from wsiviewer.core.batch.runner import BatchObserver, ClusterInfo

#: Running slides named in the bar's postfix.
POSTFIX_SLIDES = 2


class ConsoleObserver(BatchObserver):
    """A tqdm bar over ``total`` slides on ``stream`` (disabled with ``quiet``)."""

    def __init__(self, total: int, *, quiet: bool = False, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self._bar = tqdm(
            total=total,
            unit="slide",
            disable=True if quiet else None,
            file=self.stream,
            dynamic_ncols=True,
        )
        self._running: dict[str, tuple[int, int]] = {}
        self._lock = threading.Lock()

    def cluster_started(self, info: ClusterInfo) -> None:
        where = (
            "a local cluster" if info.scheduler == "local" else f"the scheduler {info.scheduler}"
        )
        threads = (
            f", {info.threads_per_worker} task thread(s) each"
            if info.threads_per_worker is not None
            else ""
        )
        inference = (
            f", {info.inference_threads} inference thread(s) per task"
            if info.inference_threads is not None
            else ""
        )
        self._write(
            f"Batch on {where}: {info.workers} worker(s){threads}{inference}; a slide whose "
            f"worker dies is retried {info.retries} time(s)."
        )
        if info.dashboard:
            self._write(f"Dask dashboard: {info.dashboard}")

    def slide_progressed(self, label: str, stage: str, done: int, total: int) -> None:
        with self._lock:
            self._running[label] = (done, total)
            self._show_running()

    def slide_finished(self, row: SlideRow) -> None:
        with self._lock:
            self._running.pop(row.label, None)
            self._bar.update(1)
            self._show_running()
        if row.status == "failed":
            self._write(f"wsiviewer: {row.path}: failed ({row.label}): {row.error}")

    def note(self, text: str) -> None:
        self._write(f"wsiviewer: {text}")

    def close(self) -> None:
        self._bar.close()

    def _show_running(self) -> None:
        shown = list(self._running.items())[:POSTFIX_SLIDES]
        text = "; ".join(f"{label}: {done:,}/{total:,}" for label, (done, total) in shown)
        if len(self._running) > len(shown):
            text += f" (+{len(self._running) - len(shown)})"
        self._bar.set_postfix_str(text, refresh=True)

    def _write(self, text: str) -> None:
        if self._bar.disable:
            print(text, file=self.stream)
        else:
            self._bar.write(text, file=self.stream)
