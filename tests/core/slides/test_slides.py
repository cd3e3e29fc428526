from __future__ import annotations

from pathlib import Path

import numpy as np
import openslide
import pytest

from wsiviewer.core.exports.pyramid_tiff import PyramidStyle, write_pyramid_tiff
from wsiviewer.core.slides import ArraySource, Mpp, is_identifying_property, open_slide
from wsiviewer.core.slides import openslide_source as slide_module
from wsiviewer.core.slides.resample import area_resample, block_mean
from wsiviewer.errors import ResolutionError, SlideOpenError, SlideReadError


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(SlideOpenError, match=r"Slide not found: .*nope\.svs"):
        open_slide(tmp_path / "nope.svs")
    with pytest.raises(SlideOpenError, match="is a folder"):
        open_slide(tmp_path)


def test_unsupported_format(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("not a slide")
    with pytest.raises(SlideOpenError, match=r"Unsupported slide format: notes\.txt"):
        open_slide(path)


def test_unopenable_fixtures(wsi_dir: Path) -> None:
    with pytest.raises(SlideOpenError, match="Unsupported TIFF compression"):
        open_slide(wsi_dir / "fixtures" / "unopenable.tiff")
    with pytest.raises(SlideOpenError, match=r"nonconforming_dicom\.dcm"):
        open_slide(wsi_dir / "fixtures" / "nonconforming_dicom.dcm")


def test_unreadable_tiles_raise_read_error(wsi_dir: Path) -> None:
    with open_slide(wsi_dir / "fixtures" / "unreadable.svs") as slide:
        with pytest.raises(SlideReadError, match="Bogus marker length"):
            slide.read_region((0, 0), 0, (16, 16))


def test_aperio_svs(wsi_dir: Path) -> None:
    with open_slide(wsi_dir / "cmu-1-small-region.svs") as slide:
        assert slide.vendor == "aperio"
        assert slide.dimensions == (2220, 2967)
        assert slide.mpp == Mpp(0.499, "metadata")
        assert slide.objective_power == 20
        assert len(slide.identity) == 64
        pixels = slide.read_region((1000, 1000), 0, (64, 32))
        assert pixels.shape == (32, 64, 3)
        assert pixels.dtype == np.uint8
        # Outside the slide is white, not transparent black.
        assert (slide.read_region((5000, 5000), 0, (8, 8)) == 255).all()
        with pytest.raises(SlideReadError, match="Invalid level 3; slide has 1 levels"):
            slide.read_region((0, 0), 3, (8, 8))
        thumb = slide.thumbnail(256)
        assert max(thumb.shape[:2]) == 256
        # Privacy: label and macro are withheld unless asked for.
        assert "label" in slide.associated_image_names
        assert "label" not in slide.public_associated_image_names()
        assert "macro" in slide.public_associated_image_names(include_identifying=True)
        with pytest.raises(SlideReadError, match="withheld"):
            slide.associated_image("label")
        assert slide.associated_image("label", include_identifying=True).ndim == 3
        public = slide.public_properties()
        assert "aperio.Filename" in slide.properties
        for key in (
            "aperio.Filename",
            "aperio.User",
            "aperio.Date",
            "openslide.comment",
            "tiff.ImageDescription",
        ):
            assert key not in public
        assert "aperio.MPP" in public
        described = slide.describe()
        assert "CMU-1" not in str(described)


def test_dicom_from_either_file(wsi_dir: Path) -> None:
    with (
        open_slide(wsi_dir / "fixtures" / "boxes_0.dcm") as first,
        open_slide(wsi_dir / "fixtures" / "boxes_1.dcm") as second,
    ):
        assert first.vendor == "dicom"
        assert first.identity == second.identity
        assert first.dimensions == (16, 16)


def test_resolution_sources(wsi_dir: Path) -> None:
    with open_slide(wsi_dir / "tcga-cr-7395-01a-01-ts1.svs") as slide:
        assert slide.mpp is None
        with pytest.raises(ResolutionError, match="give the scan resolution in µm/px"):
            slide.resolve_mpp()
        assert slide.resolve_mpp(0.5) == Mpp(0.5, "user")
    with open_slide(wsi_dir / "fixtures" / "boxes.tiff") as slide:
        # 352 µm/px from a default TIFF resolution tag is implausible: treated as missing.
        assert slide.metadata_mpp is None
    with open_slide(wsi_dir / "multiframe_camelyon_challenge_image.dcm") as slide:
        assert slide.mpp is not None
        assert slide.mpp.value == pytest.approx(28.97, abs=0.01)
    assert ArraySource(np.zeros((4, 4, 3), np.uint8), objective_power=20).mpp == Mpp(
        0.5, "objective-power"
    )
    with pytest.raises(ResolutionError, match="Implausible resolution 100"):
        Mpp(100.0, "user")


def test_identifying_keys() -> None:
    for key in (
        "dicom.PatientName",
        "dicom.PatientID",
        "dicom.AccessionNumber",
        "dicom.StudyDate",
        "aperio.User",
    ):
        assert is_identifying_property(key)
    for key in ("openslide.mpp-x", "aperio.AppMag", "openslide.vendor", "openslide.level[0].width"):
        assert not is_identifying_property(key)


def test_array_source_levels_and_reads() -> None:
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (100, 120, 3), dtype=np.uint8)
    slide = ArraySource(pixels, mpp=0.25, downsamples=(1, 4))
    assert slide.level_dimensions == ((120, 100), (30, 25))
    np.testing.assert_array_equal(slide.read_region((8, 4), 0, (10, 5)), pixels[4:9, 8:18])
    np.testing.assert_array_equal(
        slide.read_region((8, 4), 1, (3, 2)), block_mean(pixels, 4)[1:3, 2:5]
    )
    edge = slide.read_region((110, 90), 0, (20, 20))
    assert (edge[10:] == 255).all()
    assert (edge[:, 10:] == 255).all()
    np.testing.assert_array_equal(edge[:10, :10], pixels[90:, 110:])
    assert slide.identity != ArraySource(pixels[::-1].copy(), mpp=0.25).identity
    with pytest.raises(SlideOpenError, match="must be \\(H, W, 3\\) uint8"):
        ArraySource(np.zeros((4, 4), np.uint8))


def test_area_resample_is_exact() -> None:
    rng = np.random.default_rng(2)
    pixels = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    np.testing.assert_array_equal(
        area_resample(pixels, lv_origin=(0, 0), lv_extent=(40, 40), out_size=(10, 10)),
        block_mean(pixels, 4),
    )
    # Identity is bit-exact.
    same = area_resample(pixels, lv_origin=(3, 2), lv_extent=(20, 30), out_size=(20, 30))
    np.testing.assert_array_equal(same, pixels[2:32, 3:23])
    # A fractional box: x from 0.5 to 2.5 weights columns 0, 1, 2 by 0.5, 1, 0.5.
    one = area_resample(pixels, lv_origin=(0.5, 0), lv_extent=(2, 1), out_size=(1, 1))
    expected = (pixels[0, 0] * 0.5 + pixels[0, 1] + pixels[0, 2] * 0.5) / 2
    np.testing.assert_array_equal(one[0, 0], np.floor(expected + 0.5).astype(np.uint8))


@pytest.mark.parametrize("factor", [2, 3, 4, 16, 17])
def test_block_mean_rounds_half_up_with_white_padding(factor: int) -> None:
    pixels = np.random.default_rng(factor).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    height, width = -(-37 // factor) * factor, -(-53 // factor) * factor
    padded = np.full((height, width, 3), 255.0)
    padded[:37, :53] = pixels
    means = padded.reshape(height // factor, factor, width // factor, factor, 3).mean((1, 3))
    np.testing.assert_array_equal(block_mean(pixels, factor), np.floor(means + 0.5))


@pytest.mark.parametrize("factor", [2, 3, 4, 17])
def test_block_mean_partial_and_replicate_edges(factor: int) -> None:
    rng = np.random.default_rng(factor)
    pixels = rng.integers(0, 256, (37, 53), dtype=np.uint8)
    partial = block_mean(pixels, factor, edge="partial")
    planes = rng.random((37, 53)).astype(np.float32)
    replicate = block_mean(planes, factor, edge="replicate")
    padded = np.pad(planes, ((0, -37 % factor), (0, -53 % factor)), mode="edge")
    for row in range(partial.shape[0]):
        for col in range(partial.shape[1]):
            box = (slice(row * factor, (row + 1) * factor), slice(col * factor, (col + 1) * factor))
            assert partial[row, col] == np.floor(pixels[box].mean() + 0.5)
            assert replicate[row, col] == pytest.approx(padded[box].mean(), rel=1e-5)
    assert replicate.dtype == np.float32


def test_block_mean_refuses_a_factor_below_one() -> None:
    with pytest.raises(ValueError, match="factor 0"):
        block_mean(np.zeros((4, 4), np.uint8), 0)


def test_a_small_level_is_decoded_once_and_read_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pixels = np.random.default_rng(3).integers(0, 256, (700, 1000, 3), dtype=np.uint8)
    path = write_pyramid_tiff(
        tmp_path / "slide.tif", pixels, mpp=0.5, downsamples=(1, 4), compression="deflate"
    )
    reads = [  # level-0 box and output size, all from level 1 (250 x 175 px)
        ((40, 80, 400, 200), (100, 50)),  # a tenth of the level: not worth holding it
        ((0, 0, 1000, 700), (125, 88)),  # the whole level: decoded and held from now on
        ((960, 680, 80, 40), (20, 10)),  # past the edges: white
        ((10.5, 3, 77.3, 41), (13, 7)),  # fractional edges
    ]

    def read_all(held_pixels: int) -> tuple[list[np.ndarray], list[tuple[int, int]]]:
        monkeypatch.setattr(slide_module, "HELD_LEVEL_PIXELS", held_pixels)
        with open_slide(path) as slide:
            assert isinstance(slide, slide_module.OpenSlideSource)
            decoded: list[tuple[int, int]] = []
            read = slide._read

            def spy(l0_xy: tuple[int, int], level: int, lv_size: tuple[int, int]) -> np.ndarray:
                decoded.append(lv_size)
                return read(l0_xy, level, lv_size)

            monkeypatch.setattr(slide, "_read", spy)
            return [slide.read_l0_box(box, size, level=1) for box, size in reads], decoded

    direct, direct_decoded = read_all(held_pixels=0)
    held, held_decoded = read_all(held_pixels=250 * 175)
    assert len(direct_decoded) == len(reads)
    assert held_decoded == [(100, 50), (250, 175)]
    for expected, got in zip(direct, held, strict=True):
        np.testing.assert_array_equal(got, expected)
    assert (held[2][5:] == 255).all()
    assert (held[2][:, 10:] == 255).all()


def _smooth_slide(tmp_path: Path, style: PyramidStyle) -> Path:
    """A JPEG-tiled pyramid whose tiles OpenSlide and imagecodecs both decode."""
    y, x = np.mgrid[0:700, 0:1000]
    pixels = np.stack([x % 256, y % 256, (x + 2 * y) % 256], axis=-1).astype(np.uint8)
    return write_pyramid_tiff(
        tmp_path / f"{style}.svs",
        pixels,
        mpp=0.25,
        downsamples=(1, 4),
        tile=256,
        style=style,
        compression="jpeg",
    )


TILE_READS = [  # level, level-0 xy, size: whole, inside, across tiles, past each edge
    (0, (0, 0), (1000, 700)),
    (0, (256, 512), (300, 100)),
    (1, (-40, 8), (100, 60)),
    (1, (900, 680), (50, 20)),
]


@pytest.mark.parametrize("style", ["aperio", "generic"])
def test_tiled_tiff_levels_are_decoded_from_their_tiles(
    tmp_path: Path, style: PyramidStyle, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _smooth_slide(tmp_path, style)
    with open_slide(path) as slide, openslide.OpenSlide(path) as reference:
        assert isinstance(slide, slide_module.OpenSlideSource)
        checked: list[int] = []
        read_openslide = slide._read_openslide

        def spy(l0_xy: tuple[int, int], level: int, lv_size: tuple[int, int]) -> np.ndarray:
            checked.append(level)
            return read_openslide(l0_xy, level, lv_size)

        monkeypatch.setattr(slide, "_read_openslide", spy)
        for level, l0_xy, size in TILE_READS:
            expected = np.asarray(reference.read_region(l0_xy, level, size))
            got = slide.read_region(l0_xy, level, size)
            np.testing.assert_array_equal(got, slide_module._rgb_over_white(expected))
        assert checked == [0, 1]  # OpenSlide read one tile per level, to check the decoding


def test_tiles_that_decode_differently_are_left_to_openslide(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _smooth_slide(tmp_path, "aperio")
    tile = slide_module.TiffTiles._tile
    monkeypatch.setattr(
        slide_module.TiffTiles, "_tile", lambda self, level, index: tile(self, level, index) ^ 1
    )
    with open_slide(path) as slide, openslide.OpenSlide(path) as reference:
        for level, l0_xy, size in TILE_READS:
            expected = np.asarray(reference.read_region(l0_xy, level, size))
            got = slide.read_region(l0_xy, level, size)
            np.testing.assert_array_equal(got, slide_module._rgb_over_white(expected))


def test_read_l0_box_picks_level() -> None:
    pixels = np.full((400, 400, 3), 200, np.uint8)
    pixels[:200] = 0
    slide = ArraySource(pixels, mpp=0.25, downsamples=(1, 4, 16))
    small = slide.read_l0_box((0, 0, 400, 400), (25, 25))
    assert small.shape == (25, 25, 3)
    assert (small[:12] == 0).all()
    assert (small[13:] == 200).all()
