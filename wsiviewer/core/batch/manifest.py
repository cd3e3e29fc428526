"""A batch's record: one :class:`SlideRow` per slide, the manifest CSV and the summary table.

The manifest (``manifest.csv`` in the output folder) is plain CSV, header row first (DESIGN.md:
CSVs open with default options everywhere). It names slides by their label and identity,
never by path or file name unless the user asked for file-name labels, and errors are
recorded with the slide's path and file name replaced by ``<slide>``.
"""

from __future__ import annotations

import csv
import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from wsiviewer.core.exports.files import write_text

#: Where a slide is: ``queued`` (submitted), ``running`` (a worker reported progress),
#: ``saving`` (its map is back, regions and outputs are being written), and the final ones.
SlideStatus = Literal["queued", "running", "saving", "done", "skipped", "failed", "cancelled"]

#: Statuses a slide ends a batch with.
FINAL_STATUSES: frozenset[str] = frozenset({"done", "skipped", "failed", "cancelled"})

#: The manifest's columns, in order.
MANIFEST_COLUMNS = (
    "label",
    "slide_identity",
    "status",
    "patches",
    "regions",
    "max_p",
    "idc_area_mm2",
    "seconds",
    "error",
    "analysis_id",
)

MANIFEST_NAME = "manifest.csv"


@dataclass(frozen=True)
class SlideRow:
    """One slide of a batch, as the manifest, the summary and the case list show it."""

    #: Position in the batch (0-based), the order of the sources.
    index: int
    #: The slide as given; never written to the manifest.
    path: Path
    label: str
    status: SlideStatus
    #: OpenSlide quickhash; ``""`` when the slide could not be opened.
    slide_identity: str = ""
    analysis_key: str = ""
    patches: int | None = None
    regions: int | None = None
    #: Highest P(IDC) of the slide's map, ``None`` when nothing was scored.
    max_p: float | None = None
    #: Area of the flagged regions (at the analysis's threshold and minimum area), mm².
    idc_area_mm2: float | None = None
    seconds: float | None = None
    #: One line; ``""`` unless failed, skipped or cancelled (then: why).
    error: str = ""
    analysis_id: int | None = None
    #: ``host:pid`` of the worker process that analysed it (not in the manifest).
    worker: str = ""
    #: Of :attr:`seconds`, those of the task on its worker (the rest: regions, outputs and
    #: Store on the client).
    worker_seconds: float | None = None

    def with_status(self, status: SlideStatus, error: str = "") -> SlideRow:
        return replace(self, status=status, error=error)

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES


def private_error(message: str, path: Path) -> str:
    """``message`` with the slide's path and file name replaced by ``<slide>``."""
    names = {str(path), str(path.absolute()), path.name}
    try:
        names.add(str(path.resolve()))
    except OSError:
        pass
    for name in sorted((n for n in names if n), key=len, reverse=True):
        message = message.replace(name, "<slide>")
    return message


def write_manifest(path: str | os.PathLike[str], rows: Sequence[SlideRow]) -> Path:
    """Write the manifest CSV atomically (see the module docstring)."""

    def write(handle: object) -> None:
        writer = csv.writer(handle)  # type: ignore[arg-type]
        writer.writerow(MANIFEST_COLUMNS)
        for row in sorted(rows, key=lambda r: r.index):
            writer.writerow(
                [
                    row.label,
                    row.slide_identity,
                    row.status,
                    _blank(row.patches),
                    _blank(row.regions),
                    _number(row.max_p, 4),
                    _number(row.idc_area_mm2, 4),
                    _number(row.seconds, 2),
                    row.error,
                    _blank(row.analysis_id),
                ]
            )

    return write_text(path, write, newline="")


def summary_table(rows: Sequence[SlideRow], *, max_rows: int = 20) -> str:
    """A one-screen table: the slides (failed ones first, then the slowest), and the counts."""
    ordered = sorted(
        rows,
        key=lambda r: (r.status != "failed", r.status != "done", -(r.seconds or 0.0), r.index),
    )
    shown = ordered[:max_rows]
    header = ("slide", "status", "patches", "regions", "max P", "IDC mm²", "s", "error")
    table = [
        (
            row.label,
            row.status,
            _blank(row.patches),
            _blank(row.regions),
            _number(row.max_p, 2),
            _number(row.idc_area_mm2, 2),
            _number(row.seconds, 1),
            _shorten(row.error, 60),
        )
        for row in shown
    ]
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *table, strict=True)]
    lines = [
        "  ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in (header, *table)
    ]
    if len(rows) > len(shown):
        lines.append(f"... and {len(rows) - len(shown)} more (see {MANIFEST_NAME})")
    counts = Counter(row.status for row in rows)
    lines.append(
        f"{len(rows)} slides: "
        + ", ".join(
            f"{counts[s]} {s}" for s in ("done", "skipped", "failed", "cancelled") if counts[s]
        )
    )
    return "\n".join(lines)


def _blank(value: int | None) -> str:
    return "" if value is None else str(value)


def _number(value: float | None, digits: int) -> str:
    if value is None or not math.isfinite(value):
        return ""
    return f"{value:.{digits}f}"


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
