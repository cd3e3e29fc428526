"""IDC regions: connected cells of the probability map at or above a threshold."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely
from shapely.geometry import Polygon, box
from shapely.geometry.polygon import orient

from wsiviewer.core.analysis.probability import ProbabilityMap


@dataclass(frozen=True)
class Region:
    """One connected IDC region, its outline in level-0 px and its measurements."""

    #: 1-based number within its region set, in order of decreasing max probability.
    number: int
    #: Outline in level-0 px (x right, y down), clipped to the slide; may have holes.
    polygon: Polygon
    area_mm2: float
    max_prob: float
    mean_prob: float
    #: Grid cells ``(row, col)`` of the region, as an ``(N, 2)`` int array.
    grid_cells: np.ndarray

    @property
    def cell_count(self) -> int:
        return len(self.grid_cells)


@dataclass(frozen=True)
class RegionSet:
    """The regions of one probability map at one threshold and minimum area."""

    threshold: float
    min_area_mm2: float
    regions: tuple[Region, ...]

    def __len__(self) -> int:
        return len(self.regions)

    def mask(self, shape: tuple[int, int]) -> np.ndarray:
        """``(rows, cols) bool`` grid mask of every region's cells."""
        out = np.zeros(shape, dtype=bool)
        for region in self.regions:
            out[region.grid_cells[:, 0], region.grid_cells[:, 1]] = True
        return out


def find_regions(
    probability_map: ProbabilityMap, threshold: float, min_area_mm2: float = 0.0
) -> RegionSet:
    """Group cells with P(IDC) ≥ ``threshold`` into 4-connected regions.

    4-connectivity keeps every region one polygon joined along cell edges (two cells touching
    only at a corner are two regions), so every outline is a valid simple GeoJSON Polygon.
    Areas are measured on the outline clipped to the slide, in mm² at the grid's µm/px.
    """
    # scikit-image is imported here, not with the module: the Store reads regions without it.
    from skimage.measure import label

    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"Threshold {threshold} must be within [0, 1]")
    grid = probability_map.grid
    above = probability_map.above(threshold)
    if not above.any():
        return RegionSet(threshold, min_area_mm2, ())
    labels = label(above, connectivity=1)
    width, height = grid.l0_dimensions
    slide_box = box(0, 0, width, height)
    found: list[tuple[Polygon, float, float, float, np.ndarray]] = []
    for component in range(1, int(labels.max()) + 1):
        rows, cols = np.nonzero(labels == component)
        l0_x, l0_y, l0_w, l0_h = grid.l0_boxes(rows, cols).T
        cells = shapely.box(l0_x, l0_y, l0_x + l0_w, l0_y + l0_h)
        outline = shapely.union_all(cells).intersection(slide_box)
        outline = shapely.simplify(outline, 0.0)
        if not isinstance(outline, Polygon) or outline.is_empty:
            continue  # cannot happen for 4-connected cells inside the slide; never export junk
        area_mm2 = grid.mm2_from_l0_px2(outline.area)
        if area_mm2 < min_area_mm2:
            continue
        values = probability_map.probabilities[rows, cols]
        found.append(
            (
                orient(outline),
                area_mm2,
                float(values.max()),
                float(values.mean()),
                np.stack([rows, cols], axis=1),
            )
        )
    found.sort(key=lambda item: (-item[2], -item[1]))
    regions = tuple(
        Region(number, polygon, area, max_prob, mean_prob, cells)
        for number, (polygon, area, max_prob, mean_prob, cells) in enumerate(found, start=1)
    )
    return RegionSet(threshold, min_area_mm2, regions)
