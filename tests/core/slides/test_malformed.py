"""Malformed slide files: our errors or OpenSlide's px, never a traceback or a crash.

Each test damages a slide built here in one way that once broke a fast path of ours (the
direct tile decoder, property decoding) or OpenSlide itself, and checks the outcome."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile

from wsiviewer.core.exports.pyramid_tiff import PyramidStyle, write_pyramid_tiff
from wsiviewer.core.slides import open_slide
from wsiviewer.core.slides import openslide_source as slide_module
from wsiviewer.core.slides.synthetic import he_like_slide
from wsiviewer.errors import SlideOpenError, SlideReadError


def _slide(tmp_path: Path, style: PyramidStyle = "aperio", name: str = "slide.svs") -> Path:
    return write_pyramid_tiff(
        tmp_path / name,
        he_like_slide((600, 800), seed=5),
        mpp=0.5,
        downsamples=(1, 4),
        tile=256,
        style=style,
        description="ScanScope ID = SS1234|User = someone" if style == "aperio" else None,
    )


def _with_macro(path: Path) -> Path:
    """Append a macro image as Aperio stores it (a stripped page after the pyramid)."""
    with tifffile.TiffWriter(path, append=True) as writer:
        writer.write(
            np.full((64, 96, 3), 160, np.uint8),
            description="Aperio Image Library v12.0.0\nmacro 96x64",
            photometric="rgb",
            subfiletype=9,
            metadata=None,
        )
    return path


def _patch_entry(
    path: Path,
    page: int,
    tag: str,
    *,
    field_type: int | None = None,
    count: int | None = None,
    value: int | None = None,
) -> None:
    """Overwrite the type, count or (inline, SHORT or LONG) value of one IFD entry."""
    with tifffile.TiffFile(path) as tiff:
        entry = tiff.pages[page].tags[tag]
        order, offset, width = tiff.byteorder, entry.offset, entry.valueoffset - entry.offset
    data = bytearray(path.read_bytes())
    if field_type is not None:
        struct.pack_into(order + "H", data, offset + 2, field_type)
    if count is not None:
        struct.pack_into(order + "I", data, offset + 4, count)
    if value is not None:
        struct.pack_into(order + "I" if width == 8 else order + "H", data, offset + 8, value)
    path.write_bytes(bytes(data))


def _openslide_rgb(
    path: Path, l0_xy: tuple[int, int], level: int, size: tuple[int, int]
) -> np.ndarray:
    with openslide.OpenSlide(path) as reference:
        return slide_module._rgb_over_white(np.asarray(reference.read_region(l0_xy, level, size)))


def test_more_tile_rows_than_offsets_are_read_by_openslide(tmp_path: Path) -> None:
    """A level whose ImageLength implies more tile rows than TileOffsets holds: the direct
    decoder used to index past its offsets (IndexError); OpenSlide reads the file."""
    path = _slide(tmp_path)
    _patch_entry(path, 0, "ImageLength", value=600 + 300)
    with open_slide(path) as slide:
        assert slide.dimensions == (800, 900)
        box = ((0, 0), 0, (800, 900))
        np.testing.assert_array_equal(slide.read_region(*box), _openslide_rgb(path, *box))


def test_a_broken_ifd_that_openslide_ignores_is_ignored(tmp_path: Path) -> None:
    """The macro image's ImageLength with a count of 2 (tifffile then makes it a tuple): the
    direct decoder's page loop used to raise TypeError; OpenSlide drops the macro."""
    path = _with_macro(_slide(tmp_path))
    with tifffile.TiffFile(path) as tiff:
        macro = len(tiff.pages) - 1
    _patch_entry(path, macro, "ImageLength", count=2)
    with open_slide(path) as slide:
        assert "macro" not in slide.associated_image_names
        box = ((256, 256), 0, (300, 200))
        np.testing.assert_array_equal(slide.read_region(*box), _openslide_rgb(path, *box))


def test_a_property_name_with_a_byte_that_is_not_utf8(tmp_path: Path) -> None:
    """An Aperio description key with a non-UTF-8 byte: ``dict(osr.properties)`` raises
    KeyError, which used to break every command on the slide. The key is skipped."""
    path = _slide(tmp_path)
    data = bytearray(path.read_bytes())
    position = data.index(b"|User = ")
    data[position + 1] = 0xFF
    path.write_bytes(bytes(data))
    with open_slide(path) as slide:
        assert slide.mpp is not None
        assert slide.mpp.value == pytest.approx(0.5)
        json.dumps(slide.describe(include_identifying=True), ensure_ascii=False)
        # The damaged key is dropped, not guessed at; the others are kept.
        assert not [key for key in slide.properties if "\ufffd" in key or key == "aperio.User"]
        assert "aperio.AppMag" in slide.properties


def test_scanner_serial_is_withheld(tmp_path: Path) -> None:
    """``aperio.ScanScope ID`` (the scanner's serial number) is withheld like the other
    identifying properties (DESIGN.md, Privacy)."""
    with open_slide(_slide(tmp_path)) as slide:
        assert slide.properties["aperio.ScanScope ID"] == "SS1234"
        assert "SS1234" not in json.dumps(slide.describe())
        assert "aperio.ScanScope ID" in slide.public_properties(include_identifying=True)


def test_openslide_states_why_it_rejects_a_tiff(tmp_path: Path) -> None:
    """A TIFF OpenSlide rejects for a stated reason: the reason is in our message."""
    path = tmp_path / "stripped.tif"
    tifffile.imwrite(path, np.zeros((64, 64, 3), np.uint8), photometric="rgb")
    with pytest.raises(SlideOpenError, match=r"not a format OpenSlide reads .*TIFF is not tiled"):
        open_slide(path)


def test_library_messages_and_file_names_are_escaped(tmp_path: Path) -> None:
    """Control bytes from a file (here a file name with ESC and CR) never reach the message
    raw: a terminal would obey them."""
    path = tmp_path / "evil\x1b[31m\r.tif"
    path.write_bytes(b"II*\x00" + b"\x00" * 60)
    with pytest.raises(SlideOpenError) as raised:
        open_slide(path)
    assert raised.value.args[0].isprintable()
    assert "evil\\x1b[31m\\r.tif" in str(raised.value)


def test_dicom_parser_messages_are_escaped(tmp_path: Path, wsi_dir: Path) -> None:
    """libdicom quotes a bad value representation from the file in its message."""
    for name in ("boxes_0.dcm", "boxes_1.dcm"):
        (tmp_path / name).write_bytes((wsi_dir / "fixtures" / name).read_bytes())
    data = bytearray((tmp_path / "boxes_0.dcm").read_bytes())
    # The value representation of the first data element after the file meta group,
    # (0008,0008) Image Type, CS.
    position = data.index(b"\x08\x00\x08\x00CS") + 4
    data[position : position + 2] = b"\x1b\x07"
    (tmp_path / "boxes_0.dcm").write_bytes(bytes(data))
    with pytest.raises(SlideOpenError) as raised:
        open_slide(tmp_path / "boxes_0.dcm")
    message = str(raised.value)
    assert message.isprintable(), message
    assert "\\x1b" in message


def test_a_tiff_that_would_abort_openslide_is_refused(tmp_path: Path) -> None:
    """Tile byte counts typed LONG8 in a classic TIFF make OpenSlide 4.0.1 allocate a size
    read from outside the field and abort the process when the level is read: refused before
    OpenSlide sees it. Run in a child process, as the old behaviour kills it."""
    path = _slide(tmp_path, style="generic", name="slide.tif")
    _patch_entry(path, 1, "TileByteCounts", field_type=16)
    script = (
        "import sys\n"
        "from wsiviewer.core.slides import open_slide\n"
        "from wsiviewer.errors import SlideOpenError\n"
        "try:\n"
        "    with open_slide(sys.argv[1]) as slide:\n"
        "        slide.read_region((0, 0), 1, (100, 100))\n"
        "except SlideOpenError as exc:\n"
        "    print(exc)\n"
    )
    child = subprocess.run(
        [sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=60
    )
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() == (
        "Cannot open slide slide.tif: malformed TIFF (IFD 1 tag 325 has the 64-bit field "
        "type 16, which only BigTIFF allows)"
    )


def test_a_huge_tile_byte_count_is_refused(tmp_path: Path) -> None:
    path = write_pyramid_tiff(
        tmp_path / "big.tif",
        he_like_slide((300, 400)),
        mpp=0.5,
        downsamples=(1, 4),
        tile=256,
        bigtiff=True,
    )
    with tifffile.TiffFile(path) as tiff:
        value_offset = tiff.pages[1].tags["TileByteCounts"].valueoffset
    data = bytearray(path.read_bytes())
    struct.pack_into("<Q", data, value_offset, 2**40)
    path.write_bytes(bytes(data))
    with pytest.raises(SlideOpenError, match=r"byte count of 1,099,511,627,776"):
        open_slide(path)


def test_tile_offsets_past_the_end_are_not_decoded_directly(tmp_path: Path) -> None:
    """A tile whose bytes run past the end of the file: the level is left to OpenSlide, so
    every read gives OpenSlide's px, or its error for that tile as ours."""
    path = _slide(tmp_path, style="generic", name="slide.tif")
    with tifffile.TiffFile(path) as tiff:
        page = tiff.pages[0]
        value_offset, last = page.tags["TileOffsets"].valueoffset, len(page.dataoffsets) - 1
    data = bytearray(path.read_bytes())
    struct.pack_into("<I", data, value_offset + 4 * last, len(data) - 10)
    path.write_bytes(bytes(data))
    with open_slide(path) as slide:
        inside = ((0, 0), 0, (256, 256))
        np.testing.assert_array_equal(slide.read_region(*inside), _openslide_rgb(path, *inside))
        last_tile = ((768, 512), 0, (32, 88))
        try:
            expected = _openslide_rgb(path, *last_tile)
        except openslide.OpenSlideError:
            with pytest.raises(SlideReadError):
                slide.read_region(*last_tile)
        else:
            np.testing.assert_array_equal(slide.read_region(*last_tile), expected)


def test_jpeg_frame_header_must_match_the_tile() -> None:
    """A JPEG tile's frame header is checked before the decoder sees it: a crafted size
    could make it allocate an image of any size."""
    import imagecodecs

    from wsiviewer.core.slides.tiff_tiles import TileDecodeError, _check_jpeg_frame

    tile = bytes(imagecodecs.jpeg8_encode(np.zeros((32, 48, 3), np.uint8)))
    _check_jpeg_frame(tile, (48, 32), "tile 0")
    with pytest.raises(TileDecodeError, match="48 x 32 frame"):
        _check_jpeg_frame(tile, (64, 32), "tile 0")
    sof = tile.index(b"\xff\xc0")
    huge = bytearray(tile)
    huge[sof + 5 : sof + 9] = b"\xff\xff\xff\xff"
    with pytest.raises(TileDecodeError, match="65535 x 65535 frame"):
        _check_jpeg_frame(bytes(huge), (48, 32), "tile 0")
    with pytest.raises(TileDecodeError, match="does not start with SOI"):
        _check_jpeg_frame(b"II*\x00", (48, 32), "tile 0")
    with pytest.raises(TileDecodeError, match="no frame header"):
        _check_jpeg_frame(b"\xff\xd8\xff\xda\x00\x02", (48, 32), "tile 0")
