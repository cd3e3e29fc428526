"""Driving the progress generators of core (``analyze``, the workflow, training, evaluation).

Long work in core is a generator that yields progress and returns its result. Plain code (the
CLI, scripts, tests) drives one to its end with :func:`run_to_end`; the GUI hands one to a
worker thread, through :func:`relay` when its steps must be turned into something else first
(a copy of the partial map). Both close the generator on the way out, which is how work is
cancelled: between two steps.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import TypeVar

P = TypeVar("P")
Q = TypeVar("Q")
R = TypeVar("R")


def run_to_end(
    generator: Generator[P, None, R], on_progress: Callable[[P], None] | None = None
) -> R:
    """Run ``generator`` to its return value, handing each yielded step to ``on_progress``.

    The generator is closed on the way out, so an exception (Ctrl-C included) raised by
    ``on_progress`` or by the generator cancels it cleanly between steps.
    """
    steps = relay(generator, on_progress or _ignore)
    while True:
        try:
            next(steps)
        except StopIteration as finished:
            result: R = finished.value
            return result


def _ignore(step: object) -> None:
    """No progress display."""


def relay(generator: Generator[P, None, R], transform: Callable[[P], Q]) -> Generator[Q, None, R]:
    """``generator`` with every yielded step passed through ``transform``; returns its result.

    Closing the relay (or an exception in ``transform``) closes ``generator``.
    """
    try:
        while True:
            try:
                step = next(generator)
            except StopIteration as finished:
                result: R = finished.value
                return result
            yield transform(step)
    finally:
        generator.close()
