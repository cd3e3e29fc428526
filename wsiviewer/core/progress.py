"""Driving the progress generators of core (``analyze``) from plain code: CLI, scripts, tests."""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import TypeVar

P = TypeVar("P")
R = TypeVar("R")


def run_to_end(
    generator: Generator[P, None, R], on_progress: Callable[[P], None] | None = None
) -> R:
    """Run ``generator`` to its return value, handing each yielded step to ``on_progress``.

    The generator is closed on the way out, so an exception (Ctrl-C included) raised by
    ``on_progress`` or by the generator cancels it cleanly between steps.
    """
    try:
        while True:
            try:
                step = next(generator)
            except StopIteration as finished:
                result: R = finished.value
                return result
            if on_progress is not None:
                on_progress(step)
    finally:
        generator.close()
