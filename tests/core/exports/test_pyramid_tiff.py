"""The pyramidal TIFF writer: OpenSlide opens what it writes, with every level."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile

from wsiviewer.core.exports import pyramid_tiff as pyramid
from wsiviewer.core.exports.pyramid_tiff import (
    ArrayPyramidSource,
    FunctionSource,
    PyramidSource,
    UpsampledSource,
    default_downsamples,
    write_pyramid_tiff,
)
from wsiviewer.core.slides.resample import block_mean
from wsiviewer.errors import ExportError


def _smooth_rgb(height: int, width: int) -> np.ndarray:
    """A smooth RGB gradient: JPEG keeps it close, so lossy round trips can be compared."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack(
        [x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) % 256], axis=-1
    ).astype(np.uint8)


def _noise(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _read(slide: openslide.OpenSlide, level: int, l0_xy: tuple[int, int], size: tuple[int, int]):
    return np.asarray(slide.read_region(l0_xy, level, size).convert("RGB")).astype(int)


def test_generic_array_round_trips_every_level(tmp_path: Path) -> None:
    image = _noise((700, 1000, 3))
    path = write_pyramid_tiff(
        tmp_path / "slide.tif",
        image,
        mpp=0.499,
        downsamples=(1, 4, 16),
        tile=256,
        compression="deflate",
    )
    with openslide.OpenSlide(path) as slide:
        assert slide.properties[openslide.PROPERTY_NAME_VENDOR] == "generic-tiff"
        assert slide.level_dimensions == ((1000, 700), (250, 175), (63, 44))
        assert slide.level_downsamples[:2] == pytest.approx((1.0, 4.0))
        assert float(slide.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(0.499)
        assert float(slide.properties[openslide.PROPERTY_NAME_MPP_Y]) == pytest.approx(0.499)
        assert (_read(slide, 0, (0, 0), (1000, 700)) == image).all()
        assert (_read(slide, 1, (0, 0), (250, 175)) == block_mean(image, 4, edge="partial")).all()
        assert (_read(slide, 2, (0, 0), (63, 44)) == block_mean(image, 16, edge="partial")).all()


def test_generic_levels_are_top_level_ifds_marked_reduced(tmp_path: Path) -> None:
    path = write_pyramid_tiff(
        tmp_path / "slide.tif", _smooth_rgb(600, 800), mpp=0.25, downsamples=(1, 2, 8), tile=256
    )
    with tifffile.TiffFile(path) as tiff:
        pages = list(tiff.pages)
        assert len(pages) == 3
        assert [page.subfiletype for page in pages] == [0, 1, 1]
        assert all(page.is_tiled and not page.subifds for page in pages)
        for page, downsample in zip(pages, (1, 2, 8), strict=True):
            assert page.tags["ResolutionUnit"].value == tifffile.RESUNIT.CENTIMETER
            numerator, denominator = page.tags["XResolution"].value
            # px per cm of this level: 10000 / mpp / downsample (up to the rounded-up size)
            expected = 10000 / 0.25 * page.shape[1] / 800
            assert numerator / denominator == pytest.approx(expected)
            assert page.shape[1] == -(-800 // downsample)


def test_openslide_ignores_levels_in_subifds_and_unmarked_ifds(tmp_path: Path) -> None:
    """Why the writer uses marked top-level IFDs: OpenSlide 4 reads no other layout."""
    image = _smooth_rgb(512, 512)
    reduced = image[::4, ::4]
    subifds = tmp_path / "subifds.tif"
    with tifffile.TiffWriter(subifds) as writer:
        writer.write(image, tile=(256, 256), subifds=1, photometric="rgb")
        writer.write(reduced, tile=(128, 128), subfiletype=1, photometric="rgb")
    unmarked = tmp_path / "unmarked.tif"
    with tifffile.TiffWriter(unmarked) as writer:
        writer.write(image, tile=(256, 256), photometric="rgb")
        writer.write(reduced, tile=(128, 128), photometric="rgb")
    for path in (subifds, unmarked):
        with openslide.OpenSlide(path) as slide:
            assert slide.level_count == 1


def test_aperio_style_is_detected_with_mpp_power_and_thumbnail(tmp_path: Path) -> None:
    image = _smooth_rgb(900, 1300)
    path = write_pyramid_tiff(
        tmp_path / "slide.svs",
        image,
        mpp=0.25,
        downsamples=(1, 4, 16),
        tile=256,
        style="aperio",
        description="ScanScope ID = TEST",
    )
    with openslide.OpenSlide(path) as slide:
        props = slide.properties
        assert props[openslide.PROPERTY_NAME_VENDOR] == "aperio"
        assert float(props[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(0.25)
        assert props[openslide.PROPERTY_NAME_OBJECTIVE_POWER] == "40"
        assert props["aperio.ScanScope ID"] == "TEST"
        assert slide.level_count == 3
        assert slide.level_dimensions[0] == (1300, 900)
        assert slide.level_downsamples == pytest.approx((1.0, 4.0, 16.0), rel=0.02)
        assert "thumbnail" in slide.associated_images
        assert max(slide.associated_images["thumbnail"].size) <= 1024
        # JPEG is lossy; a smooth image comes back close.
        assert np.abs(_read(slide, 0, (0, 0), (1300, 900)) - image).mean() < 3
    with tifffile.TiffFile(path) as tiff:
        assert tiff.pages[0].description.startswith("Aperio Image Library")
        assert not tiff.pages[1].is_tiled  # the thumbnail is stripped, as in real SVS files


def test_aperio_objective_power_override(tmp_path: Path) -> None:
    path = write_pyramid_tiff(
        tmp_path / "slide.svs",
        _smooth_rgb(300, 300),
        mpp=0.499,
        objective_power=20,
        style="aperio",
        tile=128,
    )
    with openslide.OpenSlide(path) as slide:
        assert slide.properties[openslide.PROPERTY_NAME_OBJECTIVE_POWER] == "20"
        assert float(slide.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(0.499)


def test_upsampled_source_levels_come_from_the_small_array(tmp_path: Path) -> None:
    small = _noise((30, 40, 3), seed=1)
    small[:10] = 255  # a uniform band of background tiles
    source = UpsampledSource(small, 16)
    assert source.shape == (480, 640, 3)
    path = write_pyramid_tiff(
        tmp_path / "patient.tif",
        source,
        mpp=0.25,
        downsamples=(1, 4, 16, 64),
        tile=128,
        compression="deflate",
    )
    with openslide.OpenSlide(path) as slide:
        assert slide.level_dimensions == ((640, 480), (160, 120), (40, 30), (10, 8))
        level0 = np.repeat(np.repeat(small, 16, axis=0), 16, axis=1)
        assert (_read(slide, 0, (0, 0), (640, 480)) == level0).all()
        assert (
            _read(slide, 1, (0, 0), (160, 120)) == np.repeat(np.repeat(small, 4, 0), 4, 1)
        ).all()
        assert (_read(slide, 2, (0, 0), (40, 30)) == small).all()
        assert (_read(slide, 3, (0, 0), (10, 8)) == block_mean(small, 4, edge="partial")).all()


def test_upsampled_source_fractional_factor_samples_pixel_centres() -> None:
    small = np.arange(12, dtype=np.uint8).reshape(3, 4)
    source = UpsampledSource(small, 2.5, l0_size=(9, 7), reduce="nearest")
    full = source.read_level(1, (0, 0, 9, 7))
    centres = np.arange(9) + 0.5
    expected = small[
        np.minimum(np.floor((np.arange(7) + 0.5) / 2.5).astype(int), 2)[:, None],
        np.minimum(np.floor(centres / 2.5).astype(int), 3)[None, :],
    ]
    assert (full == expected).all()
    # Reduced levels sample the small px under each level px's centre.
    reduced = source.read_level(2, (0, 0, 5, 4))
    assert (reduced == small[[0, 1, 2, 2]][:, [0, 1, 2, 2, 3]]).all()
    assert source.uniform_value(1, (0, 0, 2, 2)) == 0
    assert source.uniform_value(1, (0, 0, 3, 2)) is None


def test_uniform_tiles_are_encoded_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real_encode = pyramid.imagecodecs.deflate_encode

    def counting_encode(data: np.ndarray) -> bytes:
        calls.append(1)
        return real_encode(data)

    monkeypatch.setattr(pyramid.imagecodecs, "deflate_encode", counting_encode)
    mask = np.zeros((50, 50), dtype=np.uint8)
    mask[10:20, 10:30] = 255
    source = UpsampledSource(mask, 400.0, l0_size=(20_000, 20_000), reduce="nearest")
    path = write_pyramid_tiff(tmp_path / "mask.tif", source, mpp=0.5, compression="deflate")
    with tifffile.TiffFile(path) as tiff:
        tile_count = sum(len(page.dataoffsets) for page in tiff.pages)
    # Thousands of tiles, but only the tiles on the mask's edges are encoded one by one.
    assert tile_count > 1500
    assert len(calls) < 100
    with openslide.OpenSlide(path) as slide:
        assert slide.level_dimensions[0] == (20_000, 20_000)
        # Cells 10-29 across are masked: level-0 x 4000 to 11999.
        assert _read(slide, 0, (11_999, 4_000), (1, 1))[0, 0, 0] == 255
        assert _read(slide, 0, (12_000, 4_000), (1, 1))[0, 0, 0] == 0
        assert _read(slide, 0, (3_999, 4_000), (1, 1))[0, 0, 0] == 0
        assert _read(slide, 0, (3_000, 3_000), (1, 1))[0, 0, 0] == 0


def test_grey_uint8_and_default_downsamples(tmp_path: Path) -> None:
    image = (np.arange(1200 * 1100) % 251).astype(np.uint8).reshape(1100, 1200)
    path = write_pyramid_tiff(tmp_path / "grey.tif", image, mpp=1.0, tile=256)
    assert default_downsamples((1200, 1100), 256) == (1, 4, 16)
    with openslide.OpenSlide(path) as slide:
        assert slide.level_count == 3
        region = _read(slide, 0, (0, 0), (1200, 1100))
        assert (region[..., 0] == image).all()  # deflate by default for grey: lossless


def test_function_source_matches_array_source(tmp_path: Path) -> None:
    image = _noise((300, 500, 3), seed=2)
    source = FunctionSource(lambda x, y, w, h: image[y : y + h, x : x + w], image.shape, np.uint8)
    array_source = ArrayPyramidSource(image)
    for downsample in (1, 4, 16):
        width, height = array_source.level_size(downsample)
        box = (0, 0, width, height)
        assert (
            source.read_level(downsample, box) == array_source.read_level(downsample, box)
        ).all()
    path = write_pyramid_tiff(
        tmp_path / "lazy.tif", source, mpp=0.5, downsamples=(1, 4), tile=128, compression="deflate"
    )
    with openslide.OpenSlide(path) as slide:
        assert (_read(slide, 1, (0, 0), (125, 75)) == block_mean(image, 4, edge="partial")).all()


def test_bigtiff_is_opened(tmp_path: Path) -> None:
    path = write_pyramid_tiff(
        tmp_path / "big.tif", _smooth_rgb(300, 300), mpp=0.5, tile=128, bigtiff=True
    )
    with tifffile.TiffFile(path) as tiff:
        assert tiff.is_bigtiff
    with openslide.OpenSlide(path) as slide:
        assert slide.level_count == 2


def test_pyramid_levels_average_partial_edge_blocks_over_their_own_px() -> None:
    pixels = np.array([[0, 4, 8], [4, 8, 12]], dtype=np.uint8)
    assert block_mean(pixels, 2, edge="partial").tolist() == [[4, 10]]
    assert block_mean(pixels, 1, edge="partial") is pixels
    image = _noise((203, 117, 3), seed=3)
    reduced = block_mean(image, 4, edge="partial")
    assert reduced.shape == (51, 30, 3)
    for block, got in ((image[:4, :4], reduced[0, 0]), (image[200:, 116:], reduced[-1, -1])):
        mean = block.reshape(-1, 3).mean(axis=0)
        assert got.tolist() == np.floor(mean + 0.5).tolist()  # rounded half up


class _FailingSource(PyramidSource):
    def __init__(self) -> None:
        self.shape = (512, 512, 3)
        self.dtype = np.dtype(np.uint8)
        self.reads = 0

    def read_level(self, downsample: int, lv_box: tuple[int, int, int, int]) -> np.ndarray:
        self.reads += 1
        if self.reads > 2:
            raise RuntimeError("scanner unplugged")
        return np.full((lv_box[3], lv_box[2], 3), 7, dtype=np.uint8)


def test_failure_midway_leaves_no_file_and_keeps_the_old_one(tmp_path: Path) -> None:
    target = tmp_path / "slide.tif"
    target.write_bytes(b"older export")
    with pytest.raises(RuntimeError, match="scanner unplugged"):
        write_pyramid_tiff(target, _FailingSource(), mpp=0.5, tile=128, workers=1)
    assert target.read_bytes() == b"older export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["slide.tif"]


def test_unwritable_folder_is_an_export_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ExportError):
        write_pyramid_tiff(blocker / "slide.tif", _smooth_rgb(64, 64), mpp=0.5, tile=64)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"downsamples": (2, 4)}, "starting at 1"),
        ({"downsamples": (1, 4, 4)}, "increasing"),
        ({"tile": 100}, "multiple of 16"),
        ({"tile": 0}, "multiple of 16"),
        ({"mpp": 0.0}, "positive"),
        ({"compression": "lzma"}, "Unknown compression"),
        ({"quality": 0}, "quality"),
        ({"style": "philips"}, "Unknown style"),
    ],
)
def test_invalid_arguments(tmp_path: Path, kwargs: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {"mpp": 0.5, "tile": 64, **kwargs}
    with pytest.raises(ValueError, match=message):
        write_pyramid_tiff(tmp_path / "x.tif", _smooth_rgb(64, 64), **arguments)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_jpeg_needs_uint8(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="JPEG"):
        write_pyramid_tiff(
            tmp_path / "x.tif", np.zeros((64, 64, 3), np.uint16), mpp=0.5, compression="jpeg"
        )


def test_empty_array_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="non-empty"):
        write_pyramid_tiff(tmp_path / "x.tif", np.zeros((0, 5), np.uint8), mpp=0.5)
