"""Tile layout, the byte-bounded cache, and the loader: stale requests never read."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtGui import QImage

from wsiviewer.core.slides import ArraySource, open_slide
from wsiviewer.errors import SlideReadError
from wsiviewer.gui.images import rgb_to_qimage
from wsiviewer.gui.tiles import (
    TileCache,
    TileKey,
    TileLayout,
    TileLoader,
    reduction_for,
)


def _image(side: int = 64) -> QImage:
    return rgb_to_qimage(np.zeros((side, side, 3), np.uint8))


def test_layout_covers_a_box_with_the_right_tiles() -> None:
    layout = TileLayout([(2000, 1000), (500, 250)], [1.0, 4.0], tile_size=512)
    assert layout.tile_counts(0) == (4, 2)
    assert layout.tile_counts(1) == (1, 1)
    keys = layout.tiles_in(0, (600.0, 100.0, 500.0, 100.0))
    assert sorted(keys) == [TileKey(0, 1, 0), TileKey(0, 2, 0)]
    # Edge tiles are cut to the level; level boxes are in level-0 px.
    assert layout.lv_size(TileKey(0, 3, 1)) == (2000 - 3 * 512, 1000 - 512)
    assert layout.l0_box(TileKey(1, 0, 0)) == (0.0, 0.0, 2000.0, 1000.0)
    assert layout.tiles_in(0, (5000.0, 5000.0, 10.0, 10.0)) == []
    # Nearest the centre first.
    centre_first = layout.tiles_in(0, (0.0, 0.0, 2000.0, 1000.0))
    assert centre_first[0] in {
        TileKey(0, 1, 0),
        TileKey(0, 2, 0),
        TileKey(0, 1, 1),
        TileKey(0, 2, 1),
    }


def test_layout_picks_the_grid_for_a_zoom() -> None:
    """The coarsest level at least as fine as the screen, averaged down while it stays so."""
    layout = TileLayout([(8000, 6000), (2000, 1500), (500, 375)], [1.0, 4.0, 16.0])
    assert [layout.grid_for(x) for x in (0.5, 1.0, 2.0, 4.0, 8.0, 15.9, 16.0, 64.0)] == [
        (0, 1),
        (0, 1),
        (0, 2),
        (1, 1),
        (1, 2),
        (1, 2),
        (2, 1),
        (2, 4),
    ]
    assert layout.lv_box(TileKey(1, 3, 2)) == (1536, 1024, 464, 476)
    assert layout.l0_from_lv(1, (464, 476)) == (1856.0, 1904.0)


def test_cache_is_bounded_by_bytes_and_evicts_least_recent() -> None:
    one = _image().sizeInBytes()
    cache = TileCache(max_bytes=3 * one)
    for i in range(3):
        cache.put(TileKey(0, i, 0), _image())
    assert cache.get(TileKey(0, 0, 0)) is not None  # now most recent
    cache.put(TileKey(0, 9, 0), _image())
    assert TileKey(0, 1, 0) not in cache
    assert TileKey(0, 0, 0) in cache
    assert cache.bytes == 3 * one
    assert cache.has_grid(0, 1)
    assert not cache.has_grid(0, 2)
    cache.clear()
    assert not cache.has_grid(0, 1)
    with pytest.raises(ValueError, match="must be positive"):
        TileCache(0)


class GatedSlide(ArraySource):
    """Reads block on a gate, and every read is logged: a deterministic slow slide."""

    def __init__(self) -> None:
        super().__init__(np.full((1024, 2048, 3), 200, np.uint8))
        self.gate = threading.Event()
        self.started = threading.Event()
        self.reads: list[tuple[int, int]] = []

    def read_region(self, l0_xy, level, lv_size):  # type: ignore[no-untyped-def]
        self.reads.append(tuple(l0_xy))
        self.started.set()
        self.gate.wait(10)
        return super().read_region(l0_xy, level, lv_size)


def test_stale_requests_are_cancelled_before_they_read(qtbot) -> None:  # type: ignore[no-untyped-def]
    slide = GatedSlide()
    loader = TileLoader(cache_bytes=64 * 2**20, workers=1)
    try:
        loader.set_slide(slide, TileLayout(slide.level_dimensions, slide.level_downsamples, 512))
        first, second, third, wanted = (
            TileKey(0, c, r) for c, r in ((0, 0), (1, 0), (2, 0), (3, 1))
        )
        loader.request([first, second, third])
        assert slide.started.wait(5)
        # The view moved on while the first tile is being read.
        loader.request([wanted])
        with qtbot.waitSignal(
            loader.tile_loaded, timeout=5000, check_params_cb=lambda k: k == wanted
        ):
            slide.gate.set()
        assert slide.reads == [(0, 0), (1536, 512)]
        assert wanted in loader.cache
        assert second not in loader.cache
        assert third not in loader.cache
        assert loader.cache.get(wanted).size().toTuple() == (512, 512)
    finally:
        slide.gate.set()
        loader.shutdown()
    assert not loader.running


class BrokenSlide(ArraySource):
    def __init__(self) -> None:
        super().__init__(np.zeros((600, 600, 3), np.uint8))

    def read_region(self, l0_xy, level, lv_size):  # type: ignore[no-untyped-def]
        raise SlideReadError(f"Cannot read pixels at l0 {tuple(l0_xy)}: Bogus marker length")


def test_a_tile_that_cannot_be_read_is_reported_once(qtbot) -> None:  # type: ignore[no-untyped-def]
    loader = TileLoader()
    try:
        loader.set_slide(BrokenSlide())
        with qtbot.waitSignal(loader.tile_failed, timeout=5000) as blocker:
            loader.request([TileKey(0, 0, 0)])
        assert "Bogus marker length" in blocker.args[1]
        assert loader.missing([TileKey(0, 0, 0)]) == []  # failed: not asked again
    finally:
        loader.shutdown()


def test_a_corrupt_tile_of_a_slide_file_is_reported_with_our_message(  # type: ignore[no-untyped-def]
    qtbot, wsi_dir: Path
) -> None:
    """Full-size and reduced tiles alike reach OpenSlide's reason through SlideReadError."""
    slide = open_slide(wsi_dir / "fixtures" / "unreadable.svs")
    loader = TileLoader()
    try:
        loader.set_slide(slide)
        for key in (TileKey(0, 0, 0), TileKey(0, 0, 0, reduction=2)):
            with qtbot.waitSignal(
                loader.tile_failed, timeout=5000, check_params_cb=lambda k, _, key=key: k == key
            ) as blocker:
                loader.request([key])
            assert "Cannot read pixels at l0 (0, 0) level 0" in blocker.args[1]
            assert "Bogus marker length" in blocker.args[1]
    finally:
        loader.shutdown()
        slide.close()


def test_reduction_is_the_largest_power_of_two_not_magnifying() -> None:
    assert [reduction_for(x) for x in (0.5, 1.0, 1.99, 2.0, 3.9, 4.0, 40.0)] == [
        1,
        1,
        1,
        2,
        2,
        4,
        4,
    ]


def test_reduced_tiles_are_block_means_of_the_level(qtbot) -> None:  # type: ignore[no-untyped-def]
    """A reduced tile covers the same level-0 box, with each px the mean of a 2 x 2 block."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (600, 1030, 3), dtype=np.uint8)
    slide = ArraySource(pixels)
    layout = TileLayout(slide.level_dimensions, slide.level_downsamples, 512)
    edge = TileKey(0, 2, 1, reduction=2)  # 6 x 88 level px: no partial block
    odd = TileKey(0, 0, 1, reduction=4)  # 512 x 88 level px: 22 rows of blocks
    assert layout.l0_box(edge) == layout.l0_box(TileKey(0, 2, 1))
    assert layout.l0_image_box(odd) == layout.l0_box(odd)
    assert layout.tiles_in(0, (0.0, 0.0, 10.0, 10.0), 2) == [TileKey(0, 0, 0, 2)]
    loader = TileLoader(cache_bytes=64 * 2**20, workers=1)
    try:
        loader.set_slide(slide, layout)
        wanted = [TileKey(0, 1, 0, reduction=2), edge, odd]
        with qtbot.waitSignals([loader.tile_loaded] * 3, timeout=5000):
            loader.request(wanted)
        tile = loader.cache.get(wanted[0])
        assert tile.size().toTuple() == (256, 256)
        assert TileKey(0, 1, 0) not in loader.cache  # its own key: the full tile is apart
        expected = pixels[:2, 512:514].reshape(4, 3).mean(axis=0)
        color = tile.pixelColor(0, 0)
        shown = np.array([color.red(), color.green(), color.blue()])
        assert np.abs(shown - expected).max() <= 1
        assert loader.cache.get(edge).size().toTuple() == (3, 44)
        assert loader.cache.get(odd).size().toTuple() == (128, 22)
    finally:
        loader.shutdown()


def test_a_partial_block_at_the_edge_spans_a_whole_block() -> None:
    layout = TileLayout([(1027, 515)], [1.0], tile_size=512)
    key = TileKey(0, 2, 1, reduction=2)  # 3 x 3 level px: 2 x 2 image px
    assert layout.l0_box(key) == (1024.0, 512.0, 3.0, 3.0)
    assert layout.l0_image_box(key) == (1024.0, 512.0, 4.0, 4.0)
