"""Display reads (:meth:`Slide.read_display`): OpenSlide's px where they claim to be exact,
within the stated tolerance where JPEG tiles are decoded at a reduced size, our error for a
tile that does not decode."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile

from wsiviewer.core.exports.pyramid_tiff import PyramidStyle, write_pyramid_tiff
from wsiviewer.core.slides import ArraySource, open_slide
from wsiviewer.core.slides import openslide_source as slide_module
from wsiviewer.core.slides.resample import block_mean
from wsiviewer.core.slides.synthetic import he_like_slide
from wsiviewer.core.slides.tiff_tiles import REDUCED_DECODE_TOLERANCE, TiffTiles
from wsiviewer.errors import SlideReadError

#: The viewer's tile side, level px.
VIEWER_TILE = 512


def _openslide_rgb(
    osr: openslide.OpenSlide, l0_xy: tuple[int, int], level: int, lv_size: tuple[int, int]
) -> np.ndarray:
    """OpenSlide's px over white, composited here from its straight (not premultiplied) RGBA."""
    rgba = np.asarray(osr.read_region(l0_xy, level, lv_size)).astype(np.float64)
    alpha = rgba[..., 3:] / 255
    return np.floor(rgba[..., :3] * alpha + 255 * (1 - alpha) + 0.5).astype(np.uint8)


def _viewer_boxes(
    level_size: tuple[int, int], downsample: float
) -> Iterator[tuple[tuple[int, int], tuple[int, int]]]:
    """Level-0 xy and level size of every viewer tile of a level (edge tiles cut to it)."""
    width, height = level_size
    for lv_y in range(0, height, VIEWER_TILE):
        for lv_x in range(0, width, VIEWER_TILE):
            size = (min(VIEWER_TILE, width - lv_x), min(VIEWER_TILE, height - lv_y))
            yield (round(lv_x * downsample), round(lv_y * downsample)), size


#: Level index, level px xy (scaled to level 0 by the test) and size: inside one file tile,
#: across file tiles, off the block grid and an odd size, past the right and bottom edges.
LEVEL_BOXES = [
    (0, (0, 0), (512, 512)),
    (0, (200, 136), (600, 300)),
    (0, (33, 71), (101, 57)),
    (-1, (-24, 12), (120, 90)),
    (-1, (-1, -1), (300, 200)),
]


def _boxes(slide: openslide.OpenSlide) -> Iterator[tuple[tuple[int, int], int, tuple[int, int]]]:
    for level, lv_xy, size in LEVEL_BOXES:
        level %= slide.level_count
        downsample = slide.level_downsamples[level]
        width, height = slide.level_dimensions[level]
        lv_x = lv_xy[0] if lv_xy[0] >= 0 else width + lv_xy[0]
        lv_y = lv_xy[1] if lv_xy[1] >= 0 else height + lv_xy[1]
        yield (round(lv_x * downsample), round(lv_y * downsample)), level, size


def _pyramid(
    folder: Path,
    style: PyramidStyle = "generic",
    compression: str = "jpeg",
    tile: int = 512,
    pixels: np.ndarray | None = None,
) -> Path:
    """A pyramid of two H&E-like blobs (levels 1 and 4): a plain tiled TIFF."""
    suffix = ".svs" if style == "aperio" else ".tif"
    return write_pyramid_tiff(
        folder / f"{style}-{compression}-{tile}{suffix}",
        he_like_slide((1500, 2100), seed=4) if pixels is None else pixels,
        mpp=0.25,
        downsamples=(1, 4),
        tile=tile,
        style=style,
        compression=compression,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def pyramids(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("display-pyramids")
    return {
        "aperio-jpeg": _pyramid(folder, "aperio"),
        "generic-jpeg-256": _pyramid(folder, tile=256),
        "generic-deflate": _pyramid(folder, compression="deflate"),
    }


REAL_SLIDES = [
    "cmu-1-small-region.svs",  # Aperio, RGB JPEG tiles with shared tables
    "tcga-cr-7395-01a-01-ts1.svs",  # Aperio, JPEG 2000, a level at 2.0005: OpenSlide's reads
    "multiframe_camelyon_challenge_image.dcm",  # DICOM
    "fixtures/boxes.tiff",  # generic TIFF, fractional downsamples
]


def _real_or_generated(
    name: str, wsi_dir_factory: pytest.FixtureRequest, pyramids: dict[str, Path]
) -> Path:
    if name in pyramids:
        return pyramids[name]
    path: Path = wsi_dir_factory.getfixturevalue("wsi_dir") / name
    return path


@pytest.mark.parametrize(
    "name", [*REAL_SLIDES, "aperio-jpeg", "generic-jpeg-256", "generic-deflate"]
)
def test_full_size_display_reads_are_openslides_px(
    name: str, request: pytest.FixtureRequest, pyramids: dict[str, Path]
) -> None:
    path = _real_or_generated(name, request, pyramids)
    with open_slide(path) as slide, openslide.OpenSlide(path) as reference:
        for l0_xy, level, size in _boxes(reference):
            expected = _openslide_rgb(reference, l0_xy, level, size)
            np.testing.assert_array_equal(
                slide.read_display(l0_xy, level, size), expected, err_msg=f"{l0_xy} {level}"
            )
            np.testing.assert_array_equal(slide.read_region(l0_xy, level, size), expected)
        if name in pyramids or name == "cmu-1-small-region.svs":
            # The fast path is what was compared: the file's own tiles, not OpenSlide.
            assert isinstance(slide, slide_module.OpenSlideSource)
            assert all(slide._tiles_agree.values()), slide._tiles_agree


@pytest.mark.parametrize("name", [*REAL_SLIDES[1:], "generic-deflate"])
@pytest.mark.parametrize("reduction", [2, 4])
def test_reduced_display_reads_are_exact_block_means_of_openslides_px(
    name: str, reduction: int, request: pytest.FixtureRequest, pyramids: dict[str, Path]
) -> None:
    """Where no JPEG tile is decoded at reduced size (JPEG 2000, DICOM, deflate, levels at
    fractional downsamples), a reduced read is the one block mean of OpenSlide's px."""
    path = _real_or_generated(name, request, pyramids)
    with open_slide(path) as slide, openslide.OpenSlide(path) as reference:
        for l0_xy, level, size in _boxes(reference):
            expected = block_mean(
                _openslide_rgb(reference, l0_xy, level, size), reduction, edge="partial"
            )
            got = slide.read_display(l0_xy, level, size, reduction)
            assert got.shape == (-(-size[1] // reduction), -(-size[0] // reduction), 3)
            np.testing.assert_array_equal(got, expected, err_msg=f"{l0_xy} {level}")


def test_reduced_reads_of_an_array_slide_are_block_means() -> None:
    pixels = np.random.default_rng(5).integers(0, 256, (300, 500, 3), dtype=np.uint8)
    slide = ArraySource(pixels, downsamples=(1, 4))
    np.testing.assert_array_equal(
        slide.read_display((8, 4), 0, (301, 199), 2),
        block_mean(pixels[4:203, 8:309], 2, edge="partial"),
    )
    np.testing.assert_array_equal(
        slide.read_display((0, 0), 1, (125, 75), 4),
        block_mean(block_mean(pixels, 4), 4, edge="partial"),
    )


def _reduced_decodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Spy on the reduced JPEG decoder: the reductions it decoded tiles at."""
    calls: list[int] = []
    decode = TiffTiles._tile_reduced

    def spy(self: TiffTiles, level: int, index: int, reduction: int) -> np.ndarray:
        calls.append(reduction)
        return decode(self, level, index, reduction)

    monkeypatch.setattr(TiffTiles, "_tile_reduced", spy)
    return calls


@pytest.mark.parametrize("name", ["cmu-1-small-region.svs", "aperio-jpeg", "generic-jpeg-256"])
@pytest.mark.parametrize("reduction", [2, 4])
def test_jpeg_levels_decoded_at_reduced_size_are_within_tolerance(
    name: str,
    reduction: int,
    request: pytest.FixtureRequest,
    pyramids: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every viewer tile of every level, against the exact block mean of OpenSlide's px:
    within :data:`REDUCED_DECODE_TOLERANCE`; where a block is partial or a file tile runs
    past the level's edge, exactly equal."""
    path = _real_or_generated(name, request, pyramids)
    decodes = _reduced_decodes(monkeypatch)
    largest = 0
    with open_slide(path) as slide, openslide.OpenSlide(path) as reference:
        for level in range(reference.level_count):
            downsample = reference.level_downsamples[level]
            for l0_xy, size in _viewer_boxes(reference.level_dimensions[level], downsample):
                exact = block_mean(
                    _openslide_rgb(reference, l0_xy, level, size), reduction, edge="partial"
                )
                got = slide.read_display(l0_xy, level, size, reduction)
                difference = np.abs(got.astype(np.int16) - exact)
                assert difference.mean() <= REDUCED_DECODE_TOLERANCE.mean, (l0_xy, level)
                assert difference.max() <= REDUCED_DECODE_TOLERANCE.max, (l0_xy, level)
                largest = max(largest, int(difference.max()))
            # A box of odd size inside the level's first file tile: its last blocks are
            # partial, so the tile is decoded whole and averaged exactly.
            odd = (2 * reduction + 1, 3 * reduction + 1)
            expected = _openslide_rgb(reference, (0, 0), level, odd)
            np.testing.assert_array_equal(
                slide.read_display((0, 0), level, odd, reduction),
                block_mean(expected, reduction, edge="partial"),
            )
    # The reduced decoder is what was compared, and it is not the exact mean.
    assert isinstance(slide, slide_module.OpenSlideSource)
    assert slide._reduced_agree == {(level, reduction): True for level in range(slide.level_count)}
    assert decodes.count(reduction) > slide.level_count
    assert largest > 0


def test_file_tiles_past_the_level_edge_are_averaged_exactly(
    pyramids: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bottom-right file tile runs past the level (2100 x 1500 px in 512 px tiles):
    its padding must not reach the px, so it is decoded whole."""
    path = pyramids["aperio-jpeg"]
    decodes = _reduced_decodes(monkeypatch)
    with open_slide(path) as slide, openslide.OpenSlide(path) as reference:
        l0_xy, size = (2048, 1024), (2100 - 2048, 1500 - 1024)
        expected = block_mean(_openslide_rgb(reference, l0_xy, 0, size), 2, edge="partial")
        np.testing.assert_array_equal(slide.read_display(l0_xy, 0, size, 2), expected)
        assert decodes == [1, 2]  # only the level's check, on its most detailed tile


def test_reduced_decoding_beyond_the_tolerance_is_not_used(tmp_path: Path) -> None:
    """Pure noise decoded at half size is ~12 levels off on average: the level fails its
    check and is averaged exactly."""
    noise = np.random.default_rng(6).integers(0, 256, (1024, 1024, 3), dtype=np.uint8)
    path = _pyramid(tmp_path, tile=256, pixels=noise)
    with open_slide(path) as slide, openslide.OpenSlide(path) as reference:
        assert isinstance(slide, slide_module.OpenSlideSource)
        got = slide.read_display((512, 256), 0, (512, 512), 2)
        assert slide._reduced_agree[0, 2] is False
        expected = block_mean(_openslide_rgb(reference, (512, 256), 0, (512, 512)), 2)
        np.testing.assert_array_equal(got, expected)


def test_partly_transparent_px_are_composited_over_white(pyramids: dict[str, Path]) -> None:
    """Read at a fraction of a level px past the slide's edge, OpenSlide blends the edge
    px with transparency; its straight RGBA is composited over white, for every read."""
    path = pyramids["generic-deflate"]
    l0_xy, size = (2100 - 4 * 20 + 2, 1500 - 4 * 20 + 2), (40, 40)
    with open_slide(path) as slide, openslide.OpenSlide(path) as reference:
        alpha = np.asarray(reference.read_region(l0_xy, 1, size))[..., 3]
        assert ((alpha > 0) & (alpha < 255)).any()
        expected = _openslide_rgb(reference, l0_xy, 1, size)
        np.testing.assert_array_equal(slide.read_region(l0_xy, 1, size), expected)
        np.testing.assert_array_equal(slide.read_display(l0_xy, 1, size), expected)
        np.testing.assert_array_equal(
            slide.read_display(l0_xy, 1, size, 2), block_mean(expected, 2, edge="partial")
        )


@pytest.mark.parametrize("reduction", [1, 2, 4])
def test_an_unreadable_tile_raises_our_read_error(wsi_dir: Path, reduction: int) -> None:
    with (
        open_slide(wsi_dir / "fixtures" / "unreadable.svs") as slide,
        pytest.raises(SlideReadError, match=r"Cannot read pixels at l0 \(0, 0\) level 0: .*Bogus"),
    ):
        slide.read_display((0, 0), 0, (16, 16), reduction)


def _corrupt_tile(path: Path, folder: Path) -> tuple[Path, tuple[int, int]]:
    """A copy of ``path`` with a level-0 tile whose first marker has a bogus length: no JPEG
    decoder reads it. The level's most detailed tile is another, so its checks pass."""
    copy = Path(shutil.copy2(path, folder / f"corrupt-{path.name}"))
    with tifffile.TiffFile(copy) as tiff:
        page = tiff.pages[0]
        assert isinstance(page, tifffile.TiffPage)
        across = -(-page.imagewidth // page.tilewidth)
        index = next(i for i in (across + 1, across + 2) if i != np.argmax(page.databytecounts))
        offset = page.dataoffsets[index]
        l0_xy = (index % across * page.tilewidth, index // across * page.tilelength)
    with copy.open("r+b") as handle:
        handle.seek(offset)
        assert handle.read(2) == b"\xff\xd8"
        handle.write(b"\xff\xdb\x00\x01")  # a quantisation table of length 1
    return copy, l0_xy


@pytest.mark.parametrize("reduction", [1, 2, 4])
def test_a_corrupt_tile_in_a_fast_level_raises_our_read_error(
    pyramids: dict[str, Path], tmp_path: Path, reduction: int
) -> None:
    path, l0_xy = _corrupt_tile(pyramids["aperio-jpeg"], tmp_path)
    with open_slide(path) as slide:
        assert isinstance(slide, slide_module.OpenSlideSource)
        # The level is read by the fast paths: its most detailed tile decoded as it should.
        slide.read_display((0, 0), 0, (512, 512), reduction)
        assert slide._tiles_agree[0]
        with pytest.raises(
            SlideReadError, match=rf"Cannot read pixels at l0 \({l0_xy[0]}, {l0_xy[1]}\) level 0"
        ):
            slide.read_display(l0_xy, 0, (512, 512), reduction)


def test_bad_display_reads_name_the_bad_value(wsi_dir: Path) -> None:
    array_slide = ArraySource(np.zeros((64, 64, 3), np.uint8))
    with open_slide(wsi_dir / "cmu-1-small-region.svs") as file_slide:
        for slide in (array_slide, file_slide):
            with pytest.raises(SlideReadError, match="Invalid reduction 0"):
                slide.read_display((0, 0), 0, (16, 16), 0)
            with pytest.raises(SlideReadError, match=r"Invalid reduction 2\.5"):
                slide.read_display((0, 0), 0, (16, 16), 2.5)  # type: ignore[arg-type]
            with pytest.raises(SlideReadError, match="Invalid level 7; slide has 1 levels"):
                slide.read_display((0, 0), 7, (16, 16), 2)
            with pytest.raises(SlideReadError, match=r"Invalid region size \(0, 16\)"):
                slide.read_display((0, 0), 0, (0, 16), 2)
