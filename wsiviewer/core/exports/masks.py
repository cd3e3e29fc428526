"""Region masks: the regions' polygons rasterised at 4 µm/px or finer, written as a pyramidal
TIFF in the slide's level-0 frame and as a PNG.

A mask is drawn from the outlines (model regions, and the regions a reviewer drew, imported
or edited), never from the patch grid: a drawn region of 0.01 mm² (100 µm a side) covers at
least 25 × 25 px of the mask and is there, whatever the 200 µm patches beneath it. The TIFF
enlarges the mask to the slide's level-0 size with nearest neighbour, so it overlays the slide
pixel for pixel in QuPath and OpenSlide; the PNG is the mask itself.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from shapely.geometry import Polygon

from wsiviewer import RESEARCH_USE_NOTICE, __version__
from wsiviewer.core.exports.png import write_png
from wsiviewer.core.exports.pyramid_tiff import UpsampledSource, write_pyramid_tiff
from wsiviewer.core.units import um_from_px

#: Coarsest µm per mask px.
MASK_MAX_UM_PER_PX = 4.0


@dataclass(frozen=True)
class RegionMask:
    """Polygons rasterised on a grid of square px, each ``l0_per_px`` level-0 px a side.

    Mask px ``(row, col)`` covers level-0 px ``[col * l0_per_px, (col + 1) * l0_per_px)`` (and
    likewise rows); it is set when its centre lies inside a polygon (or, for a polygon too
    small to hold a px centre, the px under its representative point).
    """

    #: ``(rows, cols) bool``.
    pixels: np.ndarray
    #: Level-0 px per mask px (a whole number, so the TIFF's levels stay aligned).
    l0_per_px: int
    #: Level-0 ``(width, height)`` of the slide.
    l0_dimensions: tuple[int, int]
    #: µm per level-0 px of the slide.
    slide_mpp: float
    #: What the mask shows, for the files' descriptions.
    what: str = "regions"

    @property
    def um_per_px(self) -> float:
        return um_from_px(self.l0_per_px, self.slide_mpp)

    @property
    def set_count(self) -> int:
        return int(self.pixels.sum())


def mask_l0_per_px(slide_mpp: float, max_um_per_px: float = MASK_MAX_UM_PER_PX) -> int:
    """The most level-0 px per mask px that stays at or finer than ``max_um_per_px`` (at
    least 1: a slide coarser than that is rasterised at its own resolution)."""
    if not (math.isfinite(slide_mpp) and slide_mpp > 0):
        raise ValueError(f"Slide µm/px {slide_mpp!r} must be a positive number")
    return max(1, math.floor(max_um_per_px / slide_mpp * (1 + 1e-9)))


def rasterize_regions(
    polygons: Iterable[Polygon],
    l0_dimensions: tuple[int, int],
    slide_mpp: float,
    *,
    max_um_per_px: float = MASK_MAX_UM_PER_PX,
    what: str = "regions",
) -> RegionMask:
    """Rasterise level-0 px polygons (holes respected) at ``max_um_per_px`` or finer."""
    from PIL import Image, ImageDraw  # not at import: the Store needs neither

    scale = mask_l0_per_px(slide_mpp, max_um_per_px)
    width, height = l0_dimensions
    rows, cols = max(1, math.ceil(height / scale)), max(1, math.ceil(width / scale))
    out = np.zeros((rows, cols), dtype=bool)
    for polygon in polygons:
        if polygon.is_empty:
            continue
        left, top, right, bottom = polygon.bounds
        col0, row0 = max(0, math.floor(left / scale)), max(0, math.floor(top / scale))
        col1 = min(cols, math.ceil(right / scale) + 1)
        row1 = min(rows, math.ceil(bottom / scale) + 1)
        if col1 <= col0 or row1 <= row0:
            continue
        # A scan-line fill (Pillow, C): many times faster than a per-px point-in-polygon test
        # on the large, many-vertex outlines of a whole-slide region.
        image = Image.new("1", (col1 - col0, row1 - row0), 0)
        draw = ImageDraw.Draw(image)
        for ring, value in (
            (polygon.exterior, 1),
            *((interior, 0) for interior in polygon.interiors),
        ):
            xy = np.asarray(ring.coords, dtype=np.float64)
            # Mask px (r, c) has its centre at level-0 ((c + 0.5) * scale, (r + 0.5) * scale);
            # Pillow puts px (x, y) at the point (x, y).
            points = np.stack([xy[:, 0] / scale - 0.5 - col0, xy[:, 1] / scale - 0.5 - row0], 1)
            draw.polygon([tuple(point) for point in points.tolist()], fill=value)
        local = np.asarray(image, dtype=bool)
        if not local.any():
            point = polygon.representative_point()
            row = min(rows - 1, max(0, int(point.y // scale)))
            col = min(cols - 1, max(0, int(point.x // scale)))
            out[row, col] = True
            continue
        out[row0:row1, col0:col1] |= local
    return RegionMask(out, scale, (int(width), int(height)), float(slide_mpp), what)


class _MaskSource(UpsampledSource):
    """A 0/1 mask enlarged to 0/255 tile by tile, never as a full-size 0/255 copy."""

    def read_level(self, downsample: int, lv_box: tuple[int, int, int, int]) -> np.ndarray:
        return super().read_level(downsample, lv_box) * np.uint8(255)

    def uniform_value(
        self, downsample: int, lv_box: tuple[int, int, int, int]
    ) -> np.ndarray | None:
        value = super().uniform_value(downsample, lv_box)
        return None if value is None else value * np.uint8(255)


def write_mask_tiff(path: str | os.PathLike[str], mask: RegionMask, *, tile: int = 512) -> Path:
    """Write a mask as a tiled pyramidal TIFF at the slide's level-0 size and µm/px.

    Level 0 is the slide's level-0 size at its µm/px, 255 where a level-0 px lies in a set
    mask px and 0 elsewhere (uint8, deflate), so OpenSlide opens it at the slide's µm/px and
    it overlays the slide pixel for pixel in QuPath. Reduced levels sample the same way and
    stay binary.
    """
    source = _MaskSource(
        mask.pixels.view(np.uint8), mask.l0_per_px, l0_size=mask.l0_dimensions, reduce="nearest"
    )
    description = (
        f"wsiviewer {__version__} mask of {mask.what}: 255 inside, 0 outside; rasterised at "
        f"{mask.um_per_px:.4g} um/px; level 0 matches the slide's level 0 at "
        f"{mask.slide_mpp:.6g} um/px. {RESEARCH_USE_NOTICE}"
    )
    return write_pyramid_tiff(
        path,
        source,
        mpp=mask.slide_mpp,
        tile=tile,
        compression="deflate",
        description=description,
        workers=1,  # mask tiles encode in microseconds: threads would only add hand-offs
    )


def write_mask_png(path: str | os.PathLike[str], mask: RegionMask) -> Path:
    """Write a mask as an 8-bit PNG, 255 inside, one px per mask px (4 µm or finer)."""
    return write_png(
        path,
        mask.pixels,
        extra={
            "Mask": f"{mask.what}: 255 inside, 0 outside",
            "Level-0 px per image px": str(mask.l0_per_px),
            "Micrometres per image px": f"{mask.um_per_px:.6g}",
        },
    )
