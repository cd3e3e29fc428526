from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from wsiviewer.core.resample import area_resample, block_mean
from wsiviewer.core.slide import ArraySource, Mpp, is_identifying_property, open_slide
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
        with pytest.raises(ResolutionError, match="pass the scan resolution with --mpp"):
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


def test_read_l0_box_picks_level() -> None:
    pixels = np.full((400, 400, 3), 200, np.uint8)
    pixels[:200] = 0
    slide = ArraySource(pixels, mpp=0.25, downsamples=(1, 4, 16))
    small = slide.read_l0_box((0, 0, 400, 400), (25, 25))
    assert small.shape == (25, 25, 3)
    assert (small[:12] == 0).all()
    assert (small[13:] == 200).all()
