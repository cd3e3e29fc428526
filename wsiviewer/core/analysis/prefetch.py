"""Running an iterator a few items ahead in a background thread (reading beside inference)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Generic, TypeVar

T = TypeVar("T")

_DONE = object()


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class Prefetcher(Generic[T]):
    """Iterate ``source`` in a worker thread, at most ``depth`` items ahead of the consumer.

    An exception raised by ``source`` is re-raised in the consumer at the point it occurred.
    :meth:`close` (or leaving the ``with`` block) stops the worker after the item it is
    producing and waits for it, so a cancelled consumer leaves no thread behind.
    """

    def __init__(self, source: Iterable[T], depth: int = 2) -> None:
        if depth < 1:
            raise ValueError(f"Prefetch depth {depth} must be at least 1")
        self._source = source
        self._queue: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._finished = False
        self._thread = threading.Thread(
            target=self._produce, name="wsiviewer-prefetch", daemon=True
        )
        self._thread.start()

    def _produce(self) -> None:
        iterator = iter(self._source)
        try:
            for item in iterator:
                self._queue.put(item)
                if self._stop.is_set():
                    return
            self._queue.put(_DONE)
        except BaseException as error:  # noqa: BLE001 -- handed to the consumer, re-raised there
            self._queue.put(_Failure(error))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        if self._finished:
            raise StopIteration
        item = self._queue.get()
        if item is _DONE:
            self._finished = True
            raise StopIteration
        if isinstance(item, _Failure):
            self._finished = True
            raise item.error
        return item  # type: ignore[return-value]

    def close(self) -> None:
        """Stop the worker and wait for it (it finishes the item in hand first)."""
        self._stop.set()
        self._finished = True
        while self._thread.is_alive():
            try:  # free a slot so a worker blocked on a full queue can see the stop
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self._thread.join()

    def __enter__(self) -> Prefetcher[T]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
