"""The patch table: one CSV row per scored cell, in level-0 px, header row first."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import TextIO

import numpy as np

from wsiviewer.core.analysis.probability import ProbabilityMap
from wsiviewer.core.exports.files import write_text

#: The patch table's columns and what each holds.
PATCH_COLUMNS: dict[str, str] = {
    "minx": "left edge of the patch, level-0 px (origin top-left, x right)",
    "miny": "top edge of the patch, level-0 px (y down)",
    "width": "patch width, level-0 px",
    "height": "patch height, level-0 px",
    "prob_idc": "P(IDC) of the patch: model output, not a diagnosis",
}


def write_patch_csv(path: str | os.PathLike[str], probability_map: ProbabilityMap) -> Path:
    """Write one row per scored cell: ``minx,miny,width,height,prob_idc`` in level-0 px.

    The header row comes first, so pandas, R and spreadsheets open it with their default
    options; the research-use notice and the columns' meaning are in the sidecar JSON that
    names the file (``run.json``, or an export's manifest). Rows are in grid order (row by
    row); coordinates have at most 3 decimals, probabilities 6.
    """
    grid = probability_map.grid
    grid_rows, grid_cols = np.nonzero(probability_map.scored)
    boxes = grid.l0_boxes(grid_rows, grid_cols)
    probabilities = probability_map.probabilities[grid_rows, grid_cols]

    def write(handle: TextIO) -> None:
        table = csv.writer(handle, lineterminator="\n")
        table.writerow(list(PATCH_COLUMNS))
        table.writerows(
            [*(_csv_number(value) for value in box), f"{probability:.6f}"]
            for box, probability in zip(boxes.tolist(), probabilities.tolist(), strict=True)
        )

    return write_text(path, write, newline="")


def _csv_number(value: float) -> str:
    return f"{round(value, 3):.15g}"
