"""Heatmap pictures: the probability map coloured, alone and blended over the slide.

Cells fade with the colour map's alpha ramp (:func:`.colormaps.ramp_alpha`): opaque from the
threshold up, nearly invisible at low probability, so the tissue under the overlay stays
readable. The written PNGs carry a legend band below the map: the colour bar with the ramp,
the threshold and a scale bar (:mod:`.legend`); the map keeps its top-left origin.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from wsiviewer.core.analysis.grid import PatchGrid
from wsiviewer.core.analysis.probability import ProbabilityMap
from wsiviewer.core.exports.colormaps import DEFAULT_COLORMAP, apply_colormap, ramp_alpha
from wsiviewer.core.exports.legend import with_legend
from wsiviewer.core.exports.png import write_png
from wsiviewer.core.units import um_from_px

if TYPE_CHECKING:
    from wsiviewer.core.slides import Slide


#: Longest side of the heatmap PNG that :func:`heatmap_cell_px` aims for.
HEATMAP_TARGET_PX = 2048


#: Most px per grid cell in the heatmap PNG (a small grid is enlarged, but not to a blur).
HEATMAP_MAX_CELL_PX = 32


#: Opacity of the heatmap over the slide in the overlay PNG, at and above the threshold.
OVERLAY_ALPHA = 0.6


def heatmap_cell_px(grid: PatchGrid, target_px: int = HEATMAP_TARGET_PX) -> int:
    """Px per grid cell so the heatmap's longest side is at most about ``target_px``.

    At least 1 and at most :data:`HEATMAP_MAX_CELL_PX`, and never more than a cell's level-0
    px, so the overlay never enlarges the slide.
    """
    longest = max(grid.shape) if grid.cell_count else 1
    most = min(HEATMAP_MAX_CELL_PX, max(1, math.floor(grid.l0_cell_size)))
    return int(min(most, max(1, target_px // longest)))


def heatmap_rgba(
    probability_map: ProbabilityMap,
    *,
    colormap: str = DEFAULT_COLORMAP,
    cell_px: int | None = None,
    threshold: float | None = None,
) -> np.ndarray:
    """``(rows * cell_px, cols * cell_px, 4) uint8``: the map coloured, transparent if unscored,
    fading below ``threshold`` by the alpha ramp (``None``: no ramp, every scored cell opaque).

    Heatmap px ``(x, y)`` lies in level-0 px ``x * l0_cell_size / cell_px`` (likewise y).
    """
    cell_px = cell_px or heatmap_cell_px(probability_map.grid)
    rgba = apply_colormap(probability_map.probabilities, colormap, ramp_to=threshold)
    return np.repeat(np.repeat(rgba, cell_px, axis=0), cell_px, axis=1)


def write_heatmap_png(
    path: str | os.PathLike[str],
    probability_map: ProbabilityMap,
    *,
    threshold: float,
    colormap: str = DEFAULT_COLORMAP,
    cell_px: int | None = None,
) -> Path:
    """Write the heatmap as an RGBA PNG (see :func:`heatmap_rgba`), its legend band below.

    A grid of shape (0, 0) writes one transparent px with an ``Empty`` text chunk.
    """
    grid = probability_map.grid
    if grid.cell_count == 0:
        return write_png(path, np.zeros((1, 1, 4), dtype=np.uint8), empty=True)
    cell_px = cell_px or heatmap_cell_px(grid)
    rgba = heatmap_rgba(probability_map, colormap=colormap, cell_px=cell_px, threshold=threshold)
    pixels = with_legend(
        rgba, threshold=threshold, um_per_px=_um_per_px(grid, cell_px), colormap=colormap
    )
    return write_png(path, pixels, extra=_about(grid, cell_px, colormap, threshold, rgba.shape))


def overlay_rgb(
    slide: Slide,
    probability_map: ProbabilityMap,
    *,
    colormap: str = DEFAULT_COLORMAP,
    cell_px: int | None = None,
    alpha: float = OVERLAY_ALPHA,
    threshold: float | None = None,
) -> np.ndarray:
    """The slide under the grid, at the heatmap's size, with the heatmap blended in.

    The slide is area-averaged from its level-0 box under the grid (white past its edge) to
    the size of :func:`heatmap_rgba`; scored cells are blended with opacity ``alpha`` times
    the alpha ramp below ``threshold`` (``None``: no ramp). For a grid of shape (0, 0) it is
    the slide's thumbnail.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"Alpha {alpha} must be within [0, 1]")
    grid = probability_map.grid
    if grid.cell_count == 0:
        return slide.thumbnail(min(HEATMAP_TARGET_PX, max(slide.dimensions)))
    cell_px = cell_px or heatmap_cell_px(grid)
    rows, cols = grid.shape
    l0_box = (0.0, 0.0, *grid.l0_extent)
    level = slide.display_level(grid.l0_cell_size / cell_px)
    background = slide.read_l0_box(l0_box, (cols * cell_px, rows * cell_px), level=level)
    blended = background.astype(np.float32)
    # A cell has one colour and one weight: blend through a (row, y, col, x) view of the
    # picture rather than enlarging the heatmap to its size.
    probabilities = probability_map.probabilities
    colours = apply_colormap(probabilities, colormap).astype(np.float32)
    weight = colours[..., 3:] / 255.0 * alpha
    if threshold is not None:
        weight = weight * ramp_alpha(probabilities, threshold)[..., None].astype(np.float32)
    by_cell = blended.reshape(rows, cell_px, cols, cell_px, 3)
    by_cell *= (1.0 - weight)[:, None, :, None]
    by_cell += (colours[..., :3] * weight)[:, None, :, None]
    return np.clip(np.rint(blended, out=blended), 0, 255, out=blended).astype(np.uint8)


def write_overlay_png(
    path: str | os.PathLike[str],
    slide: Slide,
    probability_map: ProbabilityMap,
    *,
    threshold: float,
    colormap: str = DEFAULT_COLORMAP,
    cell_px: int | None = None,
    alpha: float = OVERLAY_ALPHA,
) -> Path:
    """Write :func:`overlay_rgb` as an RGB PNG, its legend band below."""
    grid = probability_map.grid
    pixels = overlay_rgb(
        slide,
        probability_map,
        colormap=colormap,
        cell_px=cell_px,
        alpha=alpha,
        threshold=threshold,
    )
    if not grid.cell_count:
        return write_png(path, pixels)
    cell_px = cell_px or heatmap_cell_px(grid)
    shape = pixels.shape
    pixels = with_legend(
        pixels, threshold=threshold, um_per_px=_um_per_px(grid, cell_px), colormap=colormap
    )
    return write_png(path, pixels, extra=_about(grid, cell_px, colormap, threshold, shape))


def _um_per_px(grid: PatchGrid, cell_px: int) -> float:
    return um_from_px(grid.l0_cell_size / cell_px, grid.slide_mpp)


def _about(
    grid: PatchGrid,
    cell_px: int,
    colormap: str,
    threshold: float,
    map_shape: tuple[int, ...],
) -> dict[str, str]:
    """PNG text: how picture px map to the slide, and what the legend band is."""
    height, width = map_shape[:2]
    return {
        "Colormap": colormap,
        "Level-0 px per image px": f"{grid.l0_cell_size / cell_px:.6g}",
        "Micrometres per image px": f"{_um_per_px(grid, cell_px):.6g}",
        "Map": f"the top-left {width} x {height} px; a legend band lies below it",
        "Threshold": f"{threshold!r} (cells fade below it, opaque at or above)",
    }
