"""IDC masks: regions as a pyramidal TIFF in the slide's frame and as a PNG."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import shapely

from wsiviewer import RESEARCH_USE_NOTICE, __version__
from wsiviewer.core.analysis.grid import PatchGrid
from wsiviewer.core.analysis.probability import ProbabilityMap
from wsiviewer.core.exports.png import write_png
from wsiviewer.core.exports.pyramid_tiff import UpsampledSource, write_pyramid_tiff

if TYPE_CHECKING:
    from wsiviewer.core.review.log import ReviewItem


def review_grid_mask(
    items: Sequence[ReviewItem],
    grid: PatchGrid,
    region_cells: Mapping[int, np.ndarray],
) -> np.ndarray:
    """``(rows, cols) bool``: the grid cells of ``items``.

    A model region contributes its own cells (``region_cells[ref.id]``, ``(N, 2)`` row/col),
    so the mask matches the GeoJSON outline exactly. A manual region is rasterised onto the
    grid: a cell is in it when the cell's centre lies inside the polygon (level-0 px), so a
    manual region is exported at the analysis's resolution, like everything in the mask.
    """
    out = np.zeros(grid.shape, dtype=bool)
    if grid.cell_count == 0:
        return out
    for item in items:
        if item.ref.kind == "model":
            cells = np.asarray(region_cells[item.ref.id]).reshape(-1, 2)
            out[cells[:, 0], cells[:, 1]] = True
            continue
        rows, cols = grid.cells_overlapping(item.polygon.bounds)
        grid_rows, grid_cols = (axis.ravel() for axis in np.mgrid[rows, cols])
        if not len(grid_rows):
            continue
        l0_x, l0_y = grid.l0_centres(grid_rows, grid_cols).T
        inside = shapely.contains_xy(item.polygon, l0_x, l0_y)
        out[grid_rows[inside], grid_cols[inside]] = True
    return out


def idc_grid_mask(probability_map: ProbabilityMap, threshold: float) -> np.ndarray:
    """``(rows, cols) bool``: scored cells with P(IDC) ≥ ``threshold``."""
    return probability_map.above(threshold)


def write_mask_tiff(
    path: str | os.PathLike[str],
    grid_mask: np.ndarray,
    grid: PatchGrid,
    *,
    tile: int = 512,
) -> Path:
    """Write a grid mask as a tiled pyramidal TIFF at the slide's level-0 size and µm/px.

    Level 0 is ``grid.l0_dimensions`` px at ``grid.slide_mpp`` µm/px, 255 where a level-0
    px's centre lies in a masked cell and 0 elsewhere (uint8, deflate), so OpenSlide opens it
    at the slide's µm/px and it overlays the slide pixel for pixel in QuPath. Reduced levels
    sample the same way and stay binary. A grid of shape (0, 0) writes an all-zero mask.
    """
    grid_mask = np.asarray(grid_mask, dtype=bool)
    if grid_mask.shape != grid.shape:
        raise ValueError(f"Mask {grid_mask.shape} does not match grid {grid.shape}")
    l0_size = grid.l0_dimensions
    if grid_mask.size:
        small = np.where(grid_mask, np.uint8(255), np.uint8(0))
        factor = grid.l0_patch_size
    else:
        small = np.zeros((1, 1), dtype=np.uint8)
        factor = float(max(l0_size))
    source = UpsampledSource(small, factor, l0_size=l0_size, reduce="nearest")
    description = (
        f"wsiviewer {__version__} IDC mask: 255 = IDC cell, 0 = other; level 0 matches the "
        f"slide's level 0 at {grid.slide_mpp:.6g} um/px. {RESEARCH_USE_NOTICE}"
    )
    return write_pyramid_tiff(
        path,
        source,
        mpp=grid.slide_mpp,
        tile=tile,
        compression="deflate",
        description=description,
        workers=1,  # mask tiles encode in microseconds: threads would only add hand-offs
    )


def write_mask_png(path: str | os.PathLike[str], grid_mask: np.ndarray) -> Path:
    """Write a grid mask as an 8-bit PNG, one px per grid cell, 255 = masked.

    A grid of shape (0, 0) cannot be a PNG: it writes one 0 px with an ``Empty`` text chunk.
    """
    grid_mask = np.asarray(grid_mask, dtype=bool)
    empty = grid_mask.size == 0
    pixels = np.zeros((1, 1), np.uint8) if empty else np.where(grid_mask, 255, 0).astype(np.uint8)
    return write_png(path, pixels, empty=empty)
