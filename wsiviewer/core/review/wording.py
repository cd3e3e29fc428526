"""How probabilities, thresholds and regions are named wherever they are shown or written.

A model's output is never a diagnosis: a region nobody has reviewed is *flagged* (a
*candidate*); only a pathologist's acceptance makes it "IDC". One format for each number, so
the threshold reads the same in the viewer, the CLI, the report and the files:

- a probability to two decimals, never rounded up to a certainty (0.998 is "0.99", not
  "1.00"; only 1 itself is "1.00"), nor down to an impossibility (0.001 is "<0.01");
- a threshold to three decimals (the card's operating point 0.137872 is "0.138" everywhere).
"""

from __future__ import annotations

import math

#: What a flagged, not yet reviewed region is called (lists, files, messages).
CANDIDATE = "candidate"

#: Words for each review status, as people read them.
STATUS_WORDS = {"pending": "candidate", "accepted": "accepted", "rejected": "rejected"}

#: QuPath classification of each review status: "IDC" only once a pathologist accepted it.
STATUS_CLASSES = {
    "pending": "IDC (candidate)",
    "accepted": "IDC",
    "rejected": "IDC (rejected)",
}


def format_probability(value: float | None) -> str:
    """A probability to two decimals, never rounded up to ``1.00`` nor down to ``0.00``.

    ``None`` or NaN is ``"–"``; 0.998 is ``"0.99"``; 1 is ``"1.00"``; 0.001 is ``"<0.01"``;
    0 is ``"0.00"``.
    """
    if value is None or not math.isfinite(value):
        return "–"
    value = min(max(float(value), 0.0), 1.0)
    if 0.0 < value < 0.005:
        return "<0.01"
    if value < 1.0:
        # Truncated near the top (0.995 would round to 1.00, a certainty it is not).
        return f"{min(value, 0.99):.2f}" if value >= 0.995 else f"{value:.2f}"
    return "1.00"


def format_threshold(value: float) -> str:
    """A threshold to three decimals (``0.137872`` is ``"0.138"``)."""
    return f"{float(value):.3f}"


def flagged_text(count: int, threshold: float) -> str:
    """E.g. ``"4 regions flagged at P ≥ 0.138"`` (never "4 IDC regions")."""
    noun = "region" if count == 1 else "regions"
    return f"{count} {noun} flagged at P ≥ {format_threshold(threshold)}"


def map_units(subdivision: int = 1, count: int = 2) -> str:
    """What a map's scored units are called: ``"patches"`` (``"patch"`` for one), or on a
    dense map (``subdivision`` > 1, each cell the mean of the patches covering it)
    ``"cells"``."""
    singular, plural = ("patch", "patches") if subdivision == 1 else ("cell", "cells")
    return singular if count == 1 else plural


def scored_text(count: int, subdivision: int = 1) -> str:
    """E.g. ``"2,227 patches scored"``, ``"8,866 cells scored"`` on a dense map."""
    return f"{count:,} {map_units(subdivision, count)} scored"
