"""A batch task for tests, importable by Dask workers: :func:`analyze_slide` behind a gate.

A slide whose file name starts with ``gated`` and whose folder has a ``gate`` folder waits,
in the worker, until ``gate/open`` exists; it first writes ``gate/started-<pid>`` (the worker
process's id) so a test knows which worker holds it. Deterministic, without sleeps in tests:
the test decides when the task may go on, or kills the worker that holds it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from wsiviewer.core.batch.worker import SlideTask, WorkerFailure, WorkerResult, analyze_slide

#: Longest a gated task waits for its gate, in seconds (a test that forgets fails, not hangs).
GATE_TIMEOUT_S = 120.0


def gated_analyze(task: SlideTask) -> WorkerResult | WorkerFailure:
    slide = Path(task.slide_path)
    gate = slide.parent / "gate"
    if slide.name.startswith("gated") and gate.is_dir():
        (gate / f"started-{os.getpid()}").write_text(task.label, encoding="utf-8")
        deadline = time.monotonic() + GATE_TIMEOUT_S
        # The test may remove the gate once open: a gone gate is an open one.
        while gate.is_dir() and not (gate / "open").exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"gate {gate} was never opened")
            time.sleep(0.02)
    return analyze_slide(task)


def wait_for_start(gate: Path, timeout_s: float = 60.0) -> int:
    """The pid of the first worker that started a gated task."""
    deadline = time.monotonic() + timeout_s
    while True:
        started = sorted(gate.glob("started-*"))
        if started:
            return int(started[0].name.removeprefix("started-"))
        if time.monotonic() > deadline:
            raise TimeoutError(f"no gated task started within {timeout_s} s")
        time.sleep(0.02)
