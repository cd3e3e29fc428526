from __future__ import annotations

import numpy as np
import pytest

from wsiviewer.core.analysis.grid import PatchGrid
from wsiviewer.core.analysis.probability import ProbabilityMap
from wsiviewer.core.analysis.regions import find_regions


def _map(values: np.ndarray, l0_dimensions: tuple[int, int] | None = None) -> ProbabilityMap:
    rows, cols = values.shape
    dims = l0_dimensions or (cols * 400, rows * 400)
    grid = PatchGrid.for_slide(dims, 0.5, 4.0, 50)  # 400 l0 px cells of 0.04 mm²
    assert grid.shape == values.shape
    pmap = ProbabilityMap.empty(grid, ~np.isnan(values))
    pmap.probabilities[:] = values
    return pmap


def test_regions_are_4_connected_with_holes_and_measurements() -> None:
    n = np.nan
    values = np.array(
        [
            [0.9, 0.9, 0.9, 0.1, n],
            [0.9, 0.2, 0.8, 0.1, 0.1],
            [0.9, 0.9, 0.9, 0.1, 0.1],
            [0.1, 0.1, 0.1, 0.7, 0.1],
        ]
    )
    regions = find_regions(_map(values), threshold=0.5)
    assert len(regions) == 2  # the ring, and the cell touching it only at a corner
    ring, single = regions.regions
    assert ring.number == 1
    assert single.number == 2
    assert ring.cell_count == 8
    assert ring.max_prob == pytest.approx(0.9)
    assert ring.mean_prob == pytest.approx(np.mean([0.9] * 7 + [0.8]))
    assert ring.area_mm2 == pytest.approx(8 * 0.04)
    assert ring.polygon.is_valid
    assert len(ring.polygon.interiors) == 1
    assert ring.polygon.bounds == (0, 0, 1200, 1200)
    assert single.polygon.bounds == (1200, 1200, 1600, 1600)
    np.testing.assert_array_equal(regions.mask(values.shape), np.nan_to_num(values) >= 0.5)


def test_regions_clip_to_the_slide_and_filter_by_area() -> None:
    values = np.array([[0.9, 0.1], [0.1, 0.6]])
    # The slide ends 100 px into the second column and row.
    regions = find_regions(_map(values, (500, 500)), threshold=0.5)
    assert regions.regions[1].area_mm2 == pytest.approx(0.04 * (100 / 400) ** 2)
    assert regions.regions[1].polygon.bounds == (400, 400, 500, 500)
    big_only = find_regions(_map(values, (500, 500)), threshold=0.5, min_area_mm2=0.01)
    assert [r.max_prob for r in big_only.regions] == [pytest.approx(0.9)]


def test_no_regions_and_bad_threshold() -> None:
    values = np.full((2, 2), 0.2)
    assert len(find_regions(_map(values), threshold=0.5)) == 0
    assert len(find_regions(_map(np.full((2, 2), np.nan)), threshold=0.0)) == 0
    with pytest.raises(ValueError, match=r"Threshold 1\.5"):
        find_regions(_map(values), threshold=1.5)
