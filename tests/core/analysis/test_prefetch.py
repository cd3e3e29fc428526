from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from wsiviewer.core.analysis.prefetch import Prefetcher


def test_yields_everything_in_order() -> None:
    with Prefetcher(range(10), depth=3) as items:
        assert list(items) == list(range(10))


def test_errors_reach_the_consumer_in_place() -> None:
    def source() -> Iterator[int]:
        yield 1
        raise OSError("tile 2 is corrupt")

    with Prefetcher(source()) as items:
        assert next(items) == 1
        with pytest.raises(OSError, match="tile 2 is corrupt"):
            next(items)
        with pytest.raises(StopIteration):
            next(items)


def test_stays_at_most_depth_ahead_and_close_stops_the_worker() -> None:
    produced: list[int] = []
    closed = threading.Event()
    gate = threading.Semaphore(0)

    def source() -> Iterator[int]:
        try:
            for number in range(100):
                produced.append(number)
                gate.release()
                yield number
        finally:
            closed.set()

    prefetcher = Prefetcher(source(), depth=2)
    assert next(prefetcher) == 0
    # The worker hands over item 0 (taken), fills the queue with 1 and 2, then blocks putting
    # 3: wait until it has produced 4 items; closing must not let it run on much further.
    for _ in range(4):
        gate.acquire()
    prefetcher.close()
    assert closed.is_set()
    assert len(produced) <= 5
    assert not any(t.name == "wsiviewer-prefetch" and t.is_alive() for t in threading.enumerate())
    with pytest.raises(StopIteration):
        next(prefetcher)


def test_depth_must_be_positive() -> None:
    with pytest.raises(ValueError, match="depth 0"):
        Prefetcher([], depth=0)
