"""Direct decoding of a plain tiled TIFF's tiles: OpenSlide's px, 3-4x faster, and for display
a JPEG level decoded at a half or a quarter of its size.

OpenSlide paints every tile through cairo, which costs several times the decoding itself.
:class:`~wsiviewer.core.slides.openslide_source.OpenSlideSource` uses a level's tiles only
once one of them decoded to exactly OpenSlide's px, and a level's reduced decoding only once
it came within :data:`REDUCED_DECODE_TOLERANCE` of the exact block mean.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from wsiviewer.core.slides.resample import block_mean

if TYPE_CHECKING:
    import tifffile


#: TIFF compressions (none, LZW, JPEG, Adobe deflate, deflate) of tiles decoded directly.
_TILE_COMPRESSIONS = frozenset({1, 5, 7, 8, 32946})

#: TIFF compression of (new-style) JPEG tiles, the ones decoded at reduced size.
_JPEG = 7

#: Reductions a JPEG level is decoded at by scaling the inverse DCT: libjpeg also gives 1/8,
#: but :data:`REDUCED_DECODE_TOLERANCE` was measured at 1/2 and 1/4, what the viewer uses.
JPEG_REDUCTIONS = (2, 4)


@dataclass(frozen=True)
class DecodeDifference:
    """How far px decoded at reduced size are from the exact block mean, in 8-bit levels."""

    #: Mean absolute difference over every px and channel.
    mean: float
    #: Largest absolute difference.
    max: int

    def within(self, tolerance: DecodeDifference) -> bool:
        return self.mean <= tolerance.mean and self.max <= tolerance.max


#: How far a JPEG level decoded at 1/2 or 1/4 size (the decoder's scaled inverse DCT: a smooth
#: low-pass rather than a box) may be from the exact block mean of its px, per tile, in 8-bit
#: levels; checked on each level's most detailed tile before the level is decoded so.
#: Measured on whole levels against the exact block mean of OpenSlide's px: real H&E (CMU-1,
#: Aperio RGB JPEG Q=30) mean 0.10 (worst tile 0.24), max 19 at 1/2 and mean 0.07, max 9 at
#: 1/4; synthetic H&E-like pyramids (YCbCr 4:2:0, q90) mean up to 0.60 (worst tile 2.95),
#: max 27 at 1/2 and max 16 at 1/4. Pure noise (mean 12) or hard 255-to-0 edges (max 40)
#: fail the check and are averaged exactly.
REDUCED_DECODE_TOLERANCE = DecodeDifference(mean=4.0, max=32)


class TiffTiles:
    """Regions of a tiled TIFF's pyramid levels, from its tiles decoded by imagecodecs.

    OpenSlide paints every tile through cairo, which costs several times the decoding
    itself; decoding a plain tiled TIFF's tiles directly gives the same px 3-4 times faster.
    Only levels stored as plain RGB tiles qualify (8-bit, interleaved, no missing tile).
    A JPEG level can also be read averaged in 2 x 2 or 4 x 4 blocks by decoding its tiles at
    that reduced size (libjpeg-turbo through Pillow), which skips most of the inverse DCT,
    colour conversion and upsampling: 2-3 times faster than decoding and averaging.
    """

    def __init__(self, tiff: tifffile.TiffFile, pages: dict[int, tifffile.TiffPage]) -> None:
        self._tiff = tiff
        self._pages = pages
        self._file_lock = threading.Lock()
        # imagecodecs and Pillow decode without the GIL: a read's tiles are decoded side by side.
        self._decoders = ThreadPoolExecutor(
            max_workers=min(4, os.cpu_count() or 1), thread_name_prefix="wsiviewer-tiff-tiles"
        )
        # The JPEG colour space as tifffile decodes it: RGB components (Aperio) stay RGB.
        self._jpeg_modes = {
            level: "RGB" if page.photometric == 2 and not page.is_jfif else ""
            for level, page in pages.items()
            if page.compression == _JPEG
        }

    @classmethod
    def open(cls, path: Path, level_dimensions: Sequence[tuple[int, int]]) -> TiffTiles | None:
        """The tiles of the levels of ``path`` (matched by size) that this decoder can vouch
        for (:func:`vouch_for_page`), or ``None`` if there are none.

        Any file tifffile cannot parse, in any part, gives ``None``: OpenSlide reads it, or
        says why it cannot.
        """
        import tifffile

        try:
            file_size = path.stat().st_size
            tiff = tifffile.TiffFile(path)
        except Exception:  # noqa: BLE001 -- an accelerator: on any doubt OpenSlide reads the file
            return None
        try:
            pages = _vouched_levels(tiff, level_dimensions, file_size)
        except Exception:  # noqa: BLE001 -- e.g. a broken IFD of a macro image OpenSlide ignores
            pages = {}
        if not pages:
            tiff.close()
            return None
        return cls(tiff, pages)

    def has_level(self, level: int) -> bool:
        return level in self._pages

    def decodes_reduced(self, level: int, reduction: int) -> bool:
        """Whether ``level``'s tiles can be decoded at ``1 / reduction`` size (JPEG tiles
        whose sides are whole multiples of the reduction)."""
        page = self._pages.get(level)
        return (
            page is not None
            and level in self._jpeg_modes
            and reduction in JPEG_REDUCTIONS
            and page.tilewidth % reduction == 0
            and page.tilelength % reduction == 0
        )

    def most_detailed_tile(self, level: int) -> tuple[int, int, int, int]:
        """``(x, y, width, height)`` of the level's tile with the most compressed bytes.

        The most detailed tile is the one where two decoders' differences would show: on
        blank glass any two agree.
        """
        page = self._pages[level]
        x, y = self._tile_origin(level, self._most_detailed_index(level))
        return (
            x,
            y,
            min(page.tilewidth, page.imagewidth - x),
            min(page.tilelength, page.imagelength - y),
        )

    def read(
        self,
        level: int,
        lv_xy: tuple[int, int],
        lv_size: tuple[int, int],
        reduction: int = 1,
    ) -> np.ndarray:
        """``(height, width, 3) uint8`` px of the box, white past the level's edges; with a
        ``reduction`` above 1, averaged in ``reduction`` x ``reduction`` blocks.

        A reduced read decodes the tiles at ``1 / reduction`` size (within
        :data:`REDUCED_DECODE_TOLERANCE` of the exact block mean where the level passed
        :meth:`reduced_decode_difference`), except tiles where a block is partial (the box's last
        blocks) or that run past the level's edge (the scaled transform would blend in the
        tile's padding): those are decoded whole and averaged exactly, a partial block over
        the px it has. It needs :meth:`decodes_reduced`, a box inside the level and ``lv_xy``
        on the block grid.

        Raises ``RuntimeError``, ``ValueError`` or ``OSError`` (imagecodecs, Pillow,
        tifffile) when a tile does not decode, ``ValueError`` for a box a reduced read
        cannot serve.
        """
        if reduction == 1:
            return self._read_full(level, lv_xy, lv_size)
        return self._read_reduced(level, lv_xy, lv_size, reduction)

    def reduced_decode_difference(self, level: int, reduction: int) -> DecodeDifference:
        """How far the level's most detailed tile decoded at ``1 / reduction`` size is from
        the exact block mean of its px.

        The reduced decoder must first give exactly :meth:`read`'s px at full size (same
        tables, same colour space), else the difference is the largest there is.
        """
        index = self._most_detailed_index(level)
        exact = self._tile(level, index)
        if not np.array_equal(self._tile_reduced(level, index, 1), exact):
            return DecodeDifference(mean=255.0, max=255)
        reduced = self._tile_reduced(level, index, reduction).astype(np.int16)
        difference = np.abs(reduced - block_mean(exact, reduction).astype(np.int16))
        return DecodeDifference(mean=float(difference.mean()), max=int(difference.max()))

    def _read_full(
        self, level: int, lv_xy: tuple[int, int], lv_size: tuple[int, int]
    ) -> np.ndarray:
        page = self._pages[level]
        (x0, y0), (width, height) = lv_xy, lv_size
        x_lo, y_lo = max(x0, 0), max(y0, 0)
        x_hi, y_hi = min(x0 + width, page.imagewidth), min(y0 + height, page.imagelength)
        if (x_lo, y_lo, x_hi, y_hi) == (x0, y0, x0 + width, y0 + height):
            out = np.empty((height, width, 3), dtype=np.uint8)
        else:
            out = np.full((height, width, 3), 255, dtype=np.uint8)
        origins = self._origins(level, (x_lo, y_lo, x_hi, y_hi))
        tiles = self._map(
            lambda origin: self._tile(level, self._tile_index(level, origin)), origins
        )
        tile_w, tile_h = page.tilewidth, page.tilelength
        for (tile_x, tile_y), tile in zip(origins, tiles, strict=True):
            cut_x0, cut_x1 = max(x_lo, tile_x), min(x_hi, tile_x + tile_w)
            cut_y0, cut_y1 = max(y_lo, tile_y), min(y_hi, tile_y + tile_h)
            out[cut_y0 - y0 : cut_y1 - y0, cut_x0 - x0 : cut_x1 - x0] = tile[
                cut_y0 - tile_y : cut_y1 - tile_y, cut_x0 - tile_x : cut_x1 - tile_x
            ]
        return out

    def _read_reduced(
        self, level: int, lv_xy: tuple[int, int], lv_size: tuple[int, int], reduction: int
    ) -> np.ndarray:
        page = self._pages[level]
        (x0, y0), (width, height) = lv_xy, lv_size
        x1, y1 = x0 + width, y0 + height
        inside = 0 <= x0 < x1 <= page.imagewidth and 0 <= y0 < y1 <= page.imagelength
        if not (self.decodes_reduced(level, reduction) and inside):
            raise ValueError(
                f"Cannot decode level {level} box {lv_xy} {lv_size} at 1/{reduction} size"
            )
        if x0 % reduction or y0 % reduction:
            raise ValueError(f"Box origin {lv_xy} is not on the {reduction} px block grid")
        tile_w, tile_h = page.tilewidth, page.tilelength

        def decode(origin: tuple[int, int]) -> np.ndarray:
            """The tile's part of the box, averaged in blocks (block-aligned: the tile's
            origin and the box's are on the block grid)."""
            tile_x, tile_y = origin
            index = self._tile_index(level, origin)
            cut_x0, cut_x1 = max(x0, tile_x), min(x1, tile_x + tile_w)
            cut_y0, cut_y1 = max(y0, tile_y), min(y1, tile_y + tile_h)
            whole_blocks = (cut_x1 - cut_x0) % reduction == 0 and (cut_y1 - cut_y0) % reduction == 0
            within_level = (
                tile_x + tile_w <= page.imagewidth and tile_y + tile_h <= page.imagelength
            )
            if whole_blocks and within_level:
                tile = self._tile_reduced(level, index, reduction)
                return tile[
                    (cut_y0 - tile_y) // reduction : (cut_y1 - tile_y) // reduction,
                    (cut_x0 - tile_x) // reduction : (cut_x1 - tile_x) // reduction,
                ]
            tile = self._tile(level, index)
            cut = tile[cut_y0 - tile_y : cut_y1 - tile_y, cut_x0 - tile_x : cut_x1 - tile_x]
            return block_mean(cut, reduction, edge="partial")

        out = np.empty((-(-height // reduction), -(-width // reduction), 3), dtype=np.uint8)
        origins = self._origins(level, (x0, y0, x1, y1))
        for (tile_x, tile_y), part in zip(origins, self._map(decode, origins), strict=True):
            out_x = (max(x0, tile_x) - x0) // reduction
            out_y = (max(y0, tile_y) - y0) // reduction
            out[out_y : out_y + part.shape[0], out_x : out_x + part.shape[1]] = part
        return out

    def _map(
        self, decode: Callable[[tuple[int, int]], np.ndarray], origins: list[tuple[int, int]]
    ) -> list[np.ndarray]:
        """``decode`` of every tile origin: side by side on the decoders, or here for one
        tile (a viewer's tile on the file's own grid), which saves two thread hand-offs."""
        if len(origins) == 1:
            return [decode(origins[0])]
        return list(self._decoders.map(decode, origins))

    def _origins(self, level: int, lv_bounds: tuple[int, int, int, int]) -> list[tuple[int, int]]:
        """Level px origins of the tiles that cover ``(x0, y0, x1, y1)``, row by row."""
        page = self._pages[level]
        tile_w, tile_h = page.tilewidth, page.tilelength
        x_lo, y_lo, x_hi, y_hi = lv_bounds
        return [
            (tile_x, tile_y)
            for tile_y in range(y_lo // tile_h * tile_h, y_hi, tile_h)
            for tile_x in range(x_lo // tile_w * tile_w, x_hi, tile_w)
        ]

    def _tile_index(self, level: int, origin: tuple[int, int]) -> int:
        page = self._pages[level]
        tiles_across = -(-page.imagewidth // page.tilewidth)
        return origin[1] // page.tilelength * tiles_across + origin[0] // page.tilewidth

    def _tile_origin(self, level: int, index: int) -> tuple[int, int]:
        page = self._pages[level]
        tiles_across = -(-page.imagewidth // page.tilewidth)
        return index % tiles_across * page.tilewidth, index // tiles_across * page.tilelength

    def _most_detailed_index(self, level: int) -> int:
        return int(np.argmax(self._pages[level].databytecounts))

    def _tile_bytes(self, level: int, index: int) -> bytes:
        """The tile's compressed bytes; :class:`TileDecodeError` if the file no longer holds
        them (offsets and counts were checked against its size when it was opened)."""
        page = self._pages[level]
        offset, count = page.dataoffsets[index], page.databytecounts[index]
        with self._file_lock:
            handle = self._tiff.filehandle
            handle.seek(offset)
            data: bytes = handle.read(count)
        if len(data) != count:
            raise TileDecodeError(
                f"Tile {index} of level {level}: {len(data)} of its {count} bytes in the file"
            )
        if page.compression == _JPEG:
            _check_jpeg_frame(data, (page.tilewidth, page.tilelength), f"tile {index}")
        return data

    def _tile(self, level: int, index: int) -> np.ndarray:
        page = self._pages[level]
        data = self._tile_bytes(level, index)
        try:
            tile, _, _ = page.decode(data, index, jpegtables=page.jpegtables)
        except Exception as exc:
            raise TileDecodeError(
                f"Tile {index} of level {level} does not decode: {type(exc).__name__}: {exc}"
            ) from exc
        pixels = np.asarray(tile)
        if pixels.dtype != np.uint8 or pixels.size != page.tilelength * page.tilewidth * 3:
            raise TileDecodeError(
                f"Tile {index} of level {level} decodes to {pixels.shape} {pixels.dtype}, "
                f"expected {page.tilelength} x {page.tilewidth} x 3 uint8"
            )
        return pixels.reshape(page.tilelength, page.tilewidth, 3)

    def _tile_reduced(self, level: int, index: int, reduction: int) -> np.ndarray:
        """A JPEG tile decoded at ``1 / reduction`` of its size by the decoder's DCT scaling.

        The tile's stream after its SOI follows the shared tables (``JPEGTables`` less its
        EOI), making one JPEG stream; Pillow decodes it with libjpeg-turbo in the colour space
        tifffile uses, so that at full size the px are exactly :meth:`_tile`'s.
        """
        from PIL import Image

        page = self._pages[level]
        data = self._tile_bytes(level, index)
        tables = page.jpegtables
        if tables:
            if tables[-2:] != b"\xff\xd9" or data[:2] != b"\xff\xd8":
                raise TileDecodeError(
                    f"JPEG tile {index} of level {level} does not follow its tables"
                )
            data = tables[:-2] + data[2:]
        size = (page.tilewidth // reduction, page.tilelength // reduction)
        try:
            decoded = Image.frombytes(
                "RGB", size, data, "jpeg", "RGB", self._jpeg_modes[level], reduction, 0
            )
        except Exception as exc:
            raise TileDecodeError(
                f"Tile {index} of level {level} does not decode at 1/{reduction} size: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        return np.asarray(decoded)

    def close(self) -> None:
        self._decoders.shutdown()
        self._tiff.close()


class TileDecodeError(ValueError):
    """A tile, or a level, that the direct decoder cannot vouch for: OpenSlide reads it."""


#: Largest tile side decoded directly (OpenSlide's drivers and every scanner use 256-1024).
MAX_TILE_SIDE = 4096

#: Largest JPEGTables accepted (real ones are a few hundred bytes).
_MAX_JPEG_TABLES = 65_536


def _vouched_levels(
    tiff: tifffile.TiffFile, level_dimensions: Sequence[tuple[int, int]], file_size: int
) -> dict[int, tifffile.TiffPage]:
    """The pages that hold OpenSlide's levels (matched by size) as plain tiles this decoder
    can vouch for, by level."""
    import tifffile

    by_size: dict[tuple[int, int], tifffile.TiffPage] = {}
    for page in tiff.pages:
        if (
            isinstance(page, tifffile.TiffPage)
            and _plain_rgb_tiles(page)
            and vouch_for_page(page, file_size) is None
        ):
            by_size.setdefault((page.imagewidth, page.imagelength), page)
    return {level: by_size[size] for level, size in enumerate(level_dimensions) if size in by_size}


def vouch_for_page(page: tifffile.TiffPage, file_size: int) -> str | None:
    """Why a tiled page cannot be decoded directly, or ``None`` if it can.

    Every field the decoder relies on is checked against the file: tile sizes (positive
    multiples of 16 up to :data:`MAX_TILE_SIDE`), the number of tile offsets and byte counts
    against the tiles the image's width and length imply, every tile's bytes inside the file
    and no larger than a tile could need, and JPEG tables that are a whole JPEG stream.
    """
    tile_w, tile_h = int(page.tilewidth), int(page.tilelength)
    width, height = int(page.imagewidth), int(page.imagelength)
    if not (0 < tile_w <= MAX_TILE_SIDE and 0 < tile_h <= MAX_TILE_SIDE):
        return f"tile size {tile_w} x {tile_h} outside 1-{MAX_TILE_SIDE}"
    if tile_w % 16 or tile_h % 16:
        return f"tile size {tile_w} x {tile_h} is not a multiple of 16"
    if width <= 0 or height <= 0 or getattr(page, "tiledepth", 1) != 1:
        return f"image size {width} x {height}"
    if page.bitspersample != 8 or page.predictor not in (1, 2):
        return f"{page.bitspersample} bits per sample, predictor {page.predictor}"
    tiles = -(-width // tile_w) * -(-height // tile_h)
    offsets, counts = page.dataoffsets, page.databytecounts
    if len(offsets) != tiles or len(counts) != tiles:
        return (
            f"{len(offsets)} tile offsets and {len(counts)} byte counts for the {tiles} tiles "
            f"of a {width} x {height} image"
        )
    # A tile's compressed bytes: never more than a few times its raw size (JPEG of noise at
    # quality 100 stays below 2x), never outside the file.
    most_bytes = 4 * tile_w * tile_h * 3 + 65_536
    offset_array = np.asarray(offsets, dtype=np.int64)
    count_array = np.asarray(counts, dtype=np.int64)
    if count_array.min() <= 0 or count_array.max() > most_bytes:
        return f"tile byte counts {count_array.min()}-{count_array.max()}, expected 1-{most_bytes}"
    if offset_array.min() < 8 or (offset_array + count_array).max() > file_size:
        return f"tile data outside the {file_size}-byte file"
    if page.compression == _JPEG:
        tables = page.jpegtables
        if tables is not None and (
            len(tables) > _MAX_JPEG_TABLES
            or tables[:2] != b"\xff\xd8"
            or tables[-2:] != b"\xff\xd9"
        ):
            return "JPEG tables that are not a JPEG stream"
        if page.photometric not in (2, 6):  # RGB, YCbCr
            return f"JPEG with photometric {page.photometric}"
    return None


#: JPEG start-of-frame markers of the Huffman-coded processes libjpeg decodes (baseline,
#: extended, progressive); the others (lossless, arithmetic, hierarchical) are refused.
_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2})
#: Markers without a length: SOI, EOI, RSTn, TEM.
_JPEG_STANDALONE = frozenset({0xD8, 0xD9, 0x01, *range(0xD0, 0xD8)})


def _check_jpeg_frame(data: bytes, tile_size: tuple[int, int], what: str) -> None:
    """Refuse a JPEG tile whose frame header is not an 8-bit, 3-component image of exactly
    ``tile_size`` (width, height): a crafted header could make the decoder allocate (or
    write) an image of any size.

    Raises
    ------
    TileDecodeError
        For a stream without SOI, with a frame of another size, or with no frame before its
        scan.
    """
    if data[:2] != b"\xff\xd8":
        raise TileDecodeError(f"JPEG {what} does not start with SOI")
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            raise TileDecodeError(f"JPEG {what}: no marker at byte {position}")
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in _JPEG_STANDALONE:
            position += 2
            continue
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        if marker == 0xDA or (0xC3 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC)):
            break  # a scan before any frame, or a process libjpeg will not be asked for
        if marker in _JPEG_SOF:
            header = data[position + 4 : position + 10]
            if len(header) < 6:
                break
            precision = header[0]
            height = int.from_bytes(header[1:3], "big")
            width = int.from_bytes(header[3:5], "big")
            components = header[5]
            if (precision, (width, height), components) != (8, tile_size, 3):
                raise TileDecodeError(
                    f"JPEG {what} has a {width} x {height} frame of {components} components "
                    f"at {precision} bits; the tile is {tile_size[0]} x {tile_size[1]} RGB"
                )
            return
        position += 2 + length
    raise TileDecodeError(f"JPEG {what} has no frame header this decoder reads")


def _plain_rgb_tiles(page: tifffile.TiffPage) -> bool:
    """Whether a TIFF page is 8-bit interleaved 3-sample tiles, none of them missing, in a
    common compression (none, LZW, JPEG, deflate)."""
    return bool(
        page.is_tiled
        and page.compression in _TILE_COMPRESSIONS
        and page.dtype == np.uint8
        and page.samplesperpixel == 3
        and page.planarconfig == 1  # contiguous (interleaved) samples
        and page.imagedepth == 1
        and all(page.databytecounts)
    )
