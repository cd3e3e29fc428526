"""The patch table: one CSV row per scored cell, in level-0 px."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import numpy as np

from wsiviewer import RESEARCH_USE_NOTICE
from wsiviewer.core.analysis.probability import ProbabilityMap
from wsiviewer.core.exports.files import write_text

if TYPE_CHECKING:
    pass


def write_patch_csv(path: str | os.PathLike[str], probability_map: ProbabilityMap) -> Path:
    """Write one row per scored cell: ``minx,miny,width,height,prob_idc`` in level-0 px.

    The first line is a ``# Research use only ...`` comment. Rows are in grid order (row by
    row); coordinates have at most 3 decimals, probabilities 6.
    """
    grid = probability_map.grid
    grid_rows, grid_cols = np.nonzero(probability_map.scored)
    boxes = grid.l0_boxes(grid_rows, grid_cols)
    probabilities = probability_map.probabilities[grid_rows, grid_cols]

    def write(handle: TextIO) -> None:
        handle.write(f"# {RESEARCH_USE_NOTICE} Coordinates in level-0 px.\n")
        table = csv.writer(handle, lineterminator="\n")
        table.writerow(["minx", "miny", "width", "height", "prob_idc"])
        table.writerows(
            [*(_csv_number(value) for value in box), f"{probability:.6f}"]
            for box, probability in zip(boxes.tolist(), probabilities.tolist(), strict=True)
        )

    return write_text(path, write, newline="")


def _csv_number(value: float) -> str:
    return f"{round(value, 3):.15g}"
