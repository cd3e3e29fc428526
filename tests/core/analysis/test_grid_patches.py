from __future__ import annotations

import numpy as np
import pytest

from wsiviewer.core.analysis.grid import PatchGrid
from wsiviewer.core.analysis.patches import PatchReader
from wsiviewer.core.slides import ArraySource
from wsiviewer.core.slides.resample import block_mean
from wsiviewer.errors import ResolutionError


def test_grid_geometry() -> None:
    grid = PatchGrid.for_slide((2220, 2967), 0.499, 4.0, 50)
    assert grid.l0_patch_size == pytest.approx(400.8, abs=0.01)
    assert grid.shape == (8, 6)  # ceil(2967 / 400.8), ceil(2220 / 400.8)
    assert grid.l0_box((1, 2)) == pytest.approx((2 * 400.8, 400.8, 400.8, 400.8), abs=0.01)
    assert grid.grid_rc_at((801.0, 401.0)) == (1, 1)
    assert grid.grid_rc_at((-1.0, 0.0)) is None
    assert grid.cell_area_mm2 == pytest.approx(0.04, rel=1e-6)
    assert PatchGrid.from_dict(grid.to_dict()) == grid
    boxes = grid.l0_boxes(np.array([1, 2]), np.array([3, 0]))
    np.testing.assert_allclose(boxes[0], grid.l0_box((1, 3)))


def test_grid_refuses_coarse_slides_and_empties_tiny_ones() -> None:
    with pytest.raises(
        ResolutionError, match=r"28\.9 µm/px is coarser than the model's input 4 µm/px"
    ):
        PatchGrid.for_slide((1152, 700), 28.9, 4.0, 50)
    assert PatchGrid.for_slide((16, 16), 0.499, 4.0, 50).shape == (0, 0)
    # 1% slack for metadata rounding (an Aperio level at 4.03 µm/px serves a 4.0 model).
    assert PatchGrid.for_slide((1000, 1000), 4.03, 4.0, 50).shape == (21, 21)


def test_reader_cuts_exact_patches_at_model_resolution() -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (230, 260, 3), dtype=np.uint8)
    slide = ArraySource(pixels, mpp=4.0)
    grid = PatchGrid.for_slide(slide.dimensions, 4.0, 4.0, 50)
    assert grid.shape == (5, 6)
    reader = PatchReader(slide, grid)
    cells = np.zeros(grid.shape, dtype=bool)
    cells[0, 0] = cells[2, 3] = cells[4, 5] = True
    batches = list(reader.iter_batches(cells, batch_size=2))
    assert [len(rc) for rc, _ in batches] == [2, 1]
    grid_rc = np.concatenate([rc for rc, _ in batches])
    patches = np.concatenate([p for _, p in batches])
    assert grid_rc.tolist() == [[0, 0], [2, 3], [4, 5]]
    np.testing.assert_array_equal(patches[0], pixels[0:50, 0:50])
    np.testing.assert_array_equal(patches[1], pixels[100:150, 150:200])
    # The last cell runs past the edge: padded with white.
    np.testing.assert_array_equal(patches[2][:30, :10], pixels[200:230, 250:260])
    assert (patches[2][30:] == 255).all()
    assert (patches[2][:, 10:] == 255).all()


def test_reader_uses_the_coarsest_fine_enough_level_and_area_averages() -> None:
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (800, 800, 3), dtype=np.uint8)
    # 1 µm/px with levels at 1, 2, 8 µm/px: the 4 µm/px model reads level 1 and averages 2×2.
    slide = ArraySource(pixels, mpp=1.0, downsamples=(1, 2, 8))
    grid = PatchGrid.for_slide(slide.dimensions, 1.0, 4.0, 50)
    reader = PatchReader(slide, grid)
    assert reader.level == 1
    cells = np.ones(grid.shape, dtype=bool)
    ((grid_rc, patches),) = list(reader.iter_batches(cells, batch_size=100))
    assert len(patches) == 16
    expected = block_mean(pixels[200:400, 600:800], 4)
    index = grid_rc.tolist().index([1, 3])
    assert np.abs(patches[index].astype(int) - expected).max() <= 1


def test_reader_blocks_bound_each_read(monkeypatch: pytest.MonkeyPatch) -> None:
    import wsiviewer.core.analysis.patches as reader_module

    monkeypatch.setattr(reader_module, "MAX_READ_SIDE", 100)
    pixels = np.zeros((300, 300, 3), np.uint8)
    slide = ArraySource(pixels, mpp=4.0)
    grid = PatchGrid.for_slide(slide.dimensions, 4.0, 4.0, 50)
    reader = PatchReader(slide, grid)
    sizes: list[tuple[int, int]] = []
    original = slide.read_region

    def spy(l0_xy, level, lv_size):  # type: ignore[no-untyped-def]
        sizes.append(lv_size)
        return original(l0_xy, level, lv_size)

    monkeypatch.setattr(slide, "read_region", spy)
    cells = np.ones(grid.shape, dtype=bool)
    assert sum(len(rc) for rc, _ in reader.iter_blocks(cells)) == 36
    assert max(max(size) for size in sizes) <= 100
    assert len(sizes) == 9


@pytest.mark.parametrize(
    ("slide_mpp", "downsamples", "finer", "expected"),
    [
        (0.25, (1, 4, 16, 64), 1, 1),  # a 40x pyramid: its 1 µm/px level, not its 4 µm/px one
        (0.25, (1, 4, 16, 64), 0, 2),  # a level averaged already (reduced view): as it is
        (0.25, (1, 4, 32), 1, 1),
        (0.5, (1, 4, 16), 1, 1),  # 20x: 2 µm/px is twice as fine
        (0.25, (1, 16, 64), 1, 0),  # nothing between: level 0
        (4.0, (1, 4), 1, 0),  # a slide at the model's resolution: itself
        (2.5, (1, 4), 1, 0),  # finer, but not twice: itself
    ],
)
def test_patches_come_from_a_level_at_least_twice_as_fine_when_there_is_one(
    slide_mpp: float, downsamples: tuple[int, ...], finer: int, expected: int
) -> None:
    grid = PatchGrid.for_slide((100_000, 100_000), slide_mpp, 4.0, 50)
    assert grid.model_level(downsamples, finer=bool(finer)) == expected
