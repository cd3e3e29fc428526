"""Heatmap pictures: the probability map coloured, alone and blended over the slide."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from wsiviewer.core.analysis.grid import PatchGrid
from wsiviewer.core.analysis.probability import ProbabilityMap
from wsiviewer.core.exports.colormaps import DEFAULT_COLORMAP, apply_colormap
from wsiviewer.core.exports.png import write_png

if TYPE_CHECKING:
    from wsiviewer.core.slides import Slide


#: Longest side of the heatmap PNG that :func:`heatmap_cell_px` aims for.
HEATMAP_TARGET_PX = 2048


#: Most px per grid cell in the heatmap PNG (a small grid is enlarged, but not to a blur).
HEATMAP_MAX_CELL_PX = 32


#: Opacity of the heatmap over the slide in the overlay PNG.
OVERLAY_ALPHA = 0.5


def heatmap_cell_px(grid: PatchGrid, target_px: int = HEATMAP_TARGET_PX) -> int:
    """Px per grid cell so the heatmap's longest side is at most about ``target_px``.

    At least 1 and at most :data:`HEATMAP_MAX_CELL_PX`, and never more than a cell's level-0
    px, so the overlay never enlarges the slide.
    """
    longest = max(grid.shape) if grid.cell_count else 1
    most = min(HEATMAP_MAX_CELL_PX, max(1, math.floor(grid.l0_patch_size)))
    return int(min(most, max(1, target_px // longest)))


def heatmap_rgba(
    probability_map: ProbabilityMap,
    *,
    colormap: str = DEFAULT_COLORMAP,
    cell_px: int | None = None,
) -> np.ndarray:
    """``(rows * cell_px, cols * cell_px, 4) uint8``: the map coloured, transparent if unscored.

    Heatmap px ``(x, y)`` lies in level-0 px ``x * l0_patch_size / cell_px`` (likewise y).
    """
    cell_px = cell_px or heatmap_cell_px(probability_map.grid)
    rgba = apply_colormap(probability_map.probabilities, colormap)
    return np.repeat(np.repeat(rgba, cell_px, axis=0), cell_px, axis=1)


def write_heatmap_png(
    path: str | os.PathLike[str],
    probability_map: ProbabilityMap,
    *,
    colormap: str = DEFAULT_COLORMAP,
    cell_px: int | None = None,
) -> Path:
    """Write the heatmap as an RGBA PNG (see :func:`heatmap_rgba`).

    A grid of shape (0, 0) writes one transparent px with an ``Empty`` text chunk.
    """
    grid = probability_map.grid
    if grid.cell_count == 0:
        return write_png(path, np.zeros((1, 1, 4), dtype=np.uint8), empty=True)
    cell_px = cell_px or heatmap_cell_px(grid)
    rgba = heatmap_rgba(probability_map, colormap=colormap, cell_px=cell_px)
    return write_png(path, rgba, extra={"Colormap": colormap, **_scale(grid, cell_px)})


def overlay_rgb(
    slide: Slide,
    probability_map: ProbabilityMap,
    *,
    colormap: str = DEFAULT_COLORMAP,
    cell_px: int | None = None,
    alpha: float = OVERLAY_ALPHA,
) -> np.ndarray:
    """The slide under the grid, at the heatmap's size, with the heatmap blended in.

    The slide is area-averaged from its level-0 box under the grid (white past its edge) to
    the size of :func:`heatmap_rgba`; scored cells are blended with opacity ``alpha``. For a
    grid of shape (0, 0) it is the slide's thumbnail.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"Alpha {alpha} must be within [0, 1]")
    grid = probability_map.grid
    if grid.cell_count == 0:
        return slide.thumbnail(min(HEATMAP_TARGET_PX, max(slide.dimensions)))
    cell_px = cell_px or heatmap_cell_px(grid)
    rows, cols = grid.shape
    l0_box = (0.0, 0.0, *grid.l0_extent)
    level = slide.display_level(grid.l0_patch_size / cell_px)
    background = slide.read_l0_box(l0_box, (cols * cell_px, rows * cell_px), level=level)
    blended = background.astype(np.float32)
    # A cell has one colour and one weight: blend through a (row, y, col, x) view of the
    # picture rather than enlarging the heatmap to its size.
    colours = apply_colormap(probability_map.probabilities, colormap).astype(np.float32)
    weight = colours[..., 3:] / 255.0 * alpha
    by_cell = blended.reshape(rows, cell_px, cols, cell_px, 3)
    by_cell *= (1.0 - weight)[:, None, :, None]
    by_cell += (colours[..., :3] * weight)[:, None, :, None]
    return np.clip(np.rint(blended, out=blended), 0, 255, out=blended).astype(np.uint8)


def write_overlay_png(
    path: str | os.PathLike[str],
    slide: Slide,
    probability_map: ProbabilityMap,
    *,
    colormap: str = DEFAULT_COLORMAP,
    cell_px: int | None = None,
    alpha: float = OVERLAY_ALPHA,
) -> Path:
    """Write :func:`overlay_rgb` as an RGB PNG."""
    pixels = overlay_rgb(slide, probability_map, colormap=colormap, cell_px=cell_px, alpha=alpha)
    grid = probability_map.grid
    if grid.cell_count:
        extra = {"Colormap": colormap, **_scale(grid, cell_px or heatmap_cell_px(grid))}
    else:
        extra = {}
    return write_png(path, pixels, extra=extra)


def _scale(grid: PatchGrid, cell_px: int) -> dict[str, str]:
    return {"Level-0 px per image px": f"{grid.l0_patch_size / cell_px:.6g}"}
