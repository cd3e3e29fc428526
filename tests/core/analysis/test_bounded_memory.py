"""Bounded memory on huge slides: tissue detection in strips, a single-level slide read once
into a level at the model's resolution, chunked reads of big boxes, and a clean error for a
slide too large to analyse. ``benchmarks/huge_slide.py`` measures 10-gigapixel slides; here
the same code runs on small ones with its thresholds lowered."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import he_like_slide
from wsiviewer.core.analysis import tissue as tissue_module
from wsiviewer.core.analysis.tissue import TissueMask, TissueSettings, tissue_from_rgb
from wsiviewer.core.exports.pyramid_tiff import write_pyramid_tiff
from wsiviewer.core.model.cards import ModelCard
from wsiviewer.core.model.predictor import Predictor
from wsiviewer.core.progress import run_to_end
from wsiviewer.core.slides import ArraySource, Mpp, Slide, open_slide
from wsiviewer.core.slides import base as base_module
from wsiviewer.core.store.database import Store
from wsiviewer.errors import SlideReadError


def _overview(side: int) -> np.ndarray:
    """Glass with H&E-like blocks, pen and a dark border: every branch of the method."""
    rgb = np.full((side, side, 3), 240, np.uint8)
    block = he_like_slide((256, 256), seed=1)
    for y in range(0, side, 256):
        for x in range(0, side, 256):
            if (x // 256 + y // 256) % 3 == 0:
                rgb[y : y + 256, x : x + 256] = block[: side - y, : side - x]
    rgb[40:60, 100:900] = (40, 160, 60)  # green pen
    rgb[:, :8] = 12  # a scanner's black border
    return rgb


def test_tissue_detection_needs_little_memory_per_overview_px() -> None:
    """The whole-image float steps used to hold ~55 bytes a px (4.4 GB for an 8192 x 8192
    overview, then an out-of-memory traceback under a 3 GiB limit); strips hold ~20."""
    rgb = _overview(2048)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        tissue_from_rgb(rgb, 8.0, TissueSettings())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak / rgb.shape[0] / rgb.shape[1] < 30


@pytest.mark.parametrize("mpp", [8.0, 2.0, 500.0])  # known µm/px, smoothed (unknown), no blur
def test_tissue_detection_does_not_depend_on_the_strips(
    mpp: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    rgb = _overview(700)
    whole = tissue_from_rgb(rgb, mpp, TissueSettings())
    monkeypatch.setattr(tissue_module, "STRIP_PIXELS", 5_000)  # 7 rows a strip
    assert whole.any()
    np.testing.assert_array_equal(tissue_from_rgb(rgb, mpp, TissueSettings()), whole)


def test_strong_threshold_is_scikit_images_otsu() -> None:
    from skimage.filters import threshold_otsu

    rng = np.random.default_rng(3)
    for power in (0.3, 1.0, 3.0):
        values = (rng.random((300, 500)) ** power).astype(np.float32)
        usable = rng.random((300, 500)) < 0.6
        expected = float(np.clip(threshold_otsu(values[usable]), 0.0, 10.0))
        assert tissue_module._strong_threshold_of(values, usable, (0.0, 10.0)) == expected


def test_cell_coverage_from_a_few_rows_of_the_summed_area_table() -> None:
    from wsiviewer.core.analysis.grid import PatchGrid

    rng = np.random.default_rng(4)
    mask = rng.random((1237, 2011)) < 0.3
    grid = PatchGrid.for_slide((int(2011 * 12.37), int(1237 * 12.37)), 0.499, 4.0, 50)
    coverage = TissueMask(mask, 12.37).cell_coverage(grid)
    # The exact area fraction of each cell, by brute force on a 2x finer copy where cell
    # edges fall on whole px: within float error of it.
    table = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1))
    table[1:, 1:] = mask.cumsum(0).cumsum(1)
    rows = tissue_module._summed_area_rows(mask, np.array([0, 5, 1236, 1237, 700]))
    np.testing.assert_array_equal(rows, table[[0, 5, 1236, 1237, 700]])
    assert coverage.shape == grid.shape
    assert 0.25 < coverage.mean() < 0.35


@pytest.fixture(scope="module")
def single_level_slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A single-level 4096 x 3200 px tiled JPEG TIFF at 0.25 µm/px: 800 px cells."""
    return write_pyramid_tiff(
        tmp_path_factory.mktemp("single") / "single.tif",
        he_like_slide((3200, 4096), seed=6),
        mpp=0.25,
        downsamples=(1,),
        tile=256,
    )


@pytest.fixture(scope="module")
def predictor(tiny_model_card: Path) -> Predictor:
    return Predictor(ModelCard.from_file(tiny_model_card), device="cpu", batch_size=64)


def test_a_single_level_slide_is_read_once_into_the_models_level(
    single_level_slide: Path, predictor: Predictor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its level 0 is decoded once (each tile once), into a level at 4 µm/px that tissue,
    patches and overlay read; the map is exactly the one read from level 0 directly (800 px
    cells are 50 px of the added level)."""
    from wsiviewer.core import workflow
    from wsiviewer.core.slides import reduced
    from wsiviewer.core.slides.tiff_tiles import TiffTiles

    with open_slide(single_level_slide) as slide:
        direct = run_to_end(
            workflow.run_analysis(slide, predictor, Mpp(0.25, "metadata"), store=None)
        )
    monkeypatch.setattr(reduced, "MIN_SOURCE_PIXELS", 1_000_000)
    decoded: list[tuple[int, int]] = []
    tile = TiffTiles._tile

    def counting(self: TiffTiles, level: int, index: int) -> np.ndarray:
        decoded.append((level, index))
        return tile(self, level, index)

    monkeypatch.setattr(TiffTiles, "_tile", counting)
    stages: list[str] = []
    with open_slide(single_level_slide) as slide:
        run = workflow.run_analysis(
            slide, predictor, Mpp(0.25, "metadata"), store=None, out_dir=tmp_path / "out"
        )
        result = run_to_end(run, lambda step: stages.append(step.stage))
    assert stages[0] == "reading"
    assert "reading" in result.analysis.timings_s
    tiles = 16 * 13
    assert len(decoded) <= tiles + 2  # each tile once (and the one checked against OpenSlide)
    np.testing.assert_array_equal(
        result.analysis.probability_map.probabilities, direct.analysis.probability_map.probabilities
    )
    assert (tmp_path / "out" / "overlay.png").is_file()


def test_cancelling_while_reading_records_nothing(
    single_level_slide: Path,
    predictor: Predictor,
    isolated_data_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from wsiviewer.core import workflow
    from wsiviewer.core.slides import reduced

    monkeypatch.setattr(reduced, "MIN_SOURCE_PIXELS", 1_000_000)
    monkeypatch.setattr(reduced, "BUILD_BLOCK_PIXELS", 200_000)
    with Store.open(isolated_data_dir) as store, open_slide(single_level_slide) as slide:
        run = workflow.run_analysis(
            slide, predictor, Mpp(0.25, "metadata"), store=store, out_dir=tmp_path / "out"
        )
        first = next(run)
        second = next(run)
        assert (first.stage, second.stage) == ("reading", "reading")
        assert second.done > first.done
        run.close()
        assert store.latest_analysis(slide.identity) is None
    assert not (tmp_path / "out").exists()


class _ClaimedHuge(Slide):
    """A slide whose header claims 4,000,000 px a side (white wherever it is read)."""

    def __init__(self) -> None:
        self.identity = "huge"
        self.vendor = "test"
        self.level_dimensions = ((4_000_000, 4_000_000),)
        self.level_downsamples = (1.0,)
        self.objective_power = None
        self._metadata_mpp = 0.25
        self._properties = {}

    @property
    def associated_image_names(self) -> tuple[str, ...]:
        return ()

    def associated_image(self, name: str, include_identifying: bool = False) -> np.ndarray:
        raise AssertionError

    def read_region(
        self, l0_xy: tuple[int, int], level: int, lv_size: tuple[int, int]
    ) -> np.ndarray:
        return np.full((lv_size[1], lv_size[0], 3), 255, np.uint8)


def test_a_slide_too_large_to_analyse_is_one_clean_error(predictor: Predictor) -> None:
    """Its grid of 25 million cells used to be allocated after reading the whole slide for
    its tissue (and fail with numpy's out-of-memory traceback)."""
    from wsiviewer.core.analysis.pipeline import analyze
    from wsiviewer.errors import SlideTooLargeError

    with pytest.raises(SlideTooLargeError, match=r"4,000,000 × 4,000,000 px .* 5,000 × 5,000"):
        run_to_end(analyze(_ClaimedHuge(), predictor, mpp=Mpp(0.25, "metadata")))


def test_an_absurd_read_is_refused_not_attempted() -> None:
    with pytest.raises(SlideReadError, match="would decode"):
        _ClaimedHuge().thumbnail(256)


def test_big_boxes_are_read_in_chunks_of_whole_tiles(
    single_level_slide: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A big box is read in chunks of whole tile rows (here 3 of the 13), not in strips of
    one output row that decode each tile row many times; the px are the same."""
    from wsiviewer.core.slides.tiff_tiles import TiffTiles

    with open_slide(single_level_slide) as slide:
        whole = slide.read_l0_box((0.0, 0.0, 4096.0, 3200.0), (256, 200))
    monkeypatch.setattr(base_module, "READ_PIXEL_BUDGET", 100_000)
    monkeypatch.setattr(base_module, "CHUNK_PIXEL_BUDGET", 4096 * 768)
    decoded: list[int] = []
    tile = TiffTiles._tile

    def counting(self: TiffTiles, level: int, index: int) -> np.ndarray:
        decoded.append(index)
        return tile(self, level, index)

    monkeypatch.setattr(TiffTiles, "_tile", counting)
    with open_slide(single_level_slide) as slide:
        chunked = slide.read_l0_box((0.0, 0.0, 4096.0, 3200.0), (256, 200))
    np.testing.assert_array_equal(chunked, whole)
    assert len(decoded) <= 16 * 13 + 1


def test_reduced_level_reads_like_the_base(tmp_path: Path) -> None:
    from wsiviewer.core.slides.reduced import ReducedLevelSlide
    from wsiviewer.core.slides.resample import block_mean

    pixels = he_like_slide((300, 420), seed=8)
    base = ArraySource(pixels, mpp=0.25, downsamples=(1, 16))
    reduced = ReducedLevelSlide(base, 0, 4)
    assert reduced.level_downsamples == (1.0, 4.0, 16.0)
    with pytest.raises(SlideReadError, match="before it was built"):
        reduced.read_region((0, 0), 1, (10, 10))
    steps = list(reduced.build())
    assert steps[-1] == (420 * 300, 420 * 300)
    np.testing.assert_array_equal(reduced.read_region((0, 0), 1, (105, 75)), block_mean(pixels, 4))
    np.testing.assert_array_equal(reduced.read_region((40, 8), 0, (5, 6)), pixels[8:14, 40:45])
    np.testing.assert_array_equal(
        reduced.read_region((0, 0), 2, (27, 19)), base.read_region((0, 0), 1, (27, 19))
    )
    assert reduced.identity == base.identity
