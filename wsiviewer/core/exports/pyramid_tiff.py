"""Tiled pyramidal TIFF writing: the IDC mask export and test/benchmark fixture slides.

:func:`write_pyramid_tiff` writes a level-0 image and its reduced levels as a tiled TIFF that
OpenSlide, QuPath and tifffile open as a multi-resolution slide, with the level-0 µm/px in the
resolution tags (pixels per centimetre, ``10000 / mpp``).

Layout (checked against OpenSlide 4.0.1 from openslide-bin):

- ``style="generic"``: every level is a top-level IFD; reduced levels carry NewSubfileType 1
  (reduced-resolution image). OpenSlide's generic-tiff driver ignores tiled IFDs without that
  bit, and it does not read levels stored in SubIFDs at all (it reports one level), so the
  SubIFD layout of OME-TIFF (what QuPath's own pyramid writer produces) would lose every
  reduced level. tifffile reads both layouts as one pyramid.
- ``style="aperio"``: the layout of an Aperio SVS, level 0, a stripped thumbnail, then the
  reduced levels, with an ``Aperio Image Library`` ImageDescription carrying ``AppMag`` and
  ``MPP``, so OpenSlide reports vendor ``aperio``, ``openslide.mpp-x`` and the objective power.

The image can be an in-memory array or a lazy :class:`PyramidSource` that produces the pixels
of any box of any level, so a 58,000 x 43,000 px slide is written without holding it in memory.
:class:`UpsampledSource` is such a source for an image enlarged from a small array (a rebuilt
IDC patient, a grid mask), whose reduced levels are computed from the small array directly.

Tiles are encoded here (imagecodecs) and handed to tifffile as bytes. A uniform tile (all
background, all mask) is encoded once per value and reused, and a source that knows a box is
uniform (:meth:`PyramidSource.uniform_value`) is not even read: a 100,000 x 80,000 px binary
mask takes well under a second when it is a few blocks and a few seconds when its outlines
cross thousands of tiles (2 cores).
"""

from __future__ import annotations

import itertools
import math
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import imagecodecs
import numpy as np
import tifffile

from wsiviewer.core.atomic import atomic_path
from wsiviewer.core.slides.resample import block_mean
from wsiviewer.core.units import magnification_from_mpp
from wsiviewer.errors import ExportError

Compression = Literal["jpeg", "deflate", "none"]
PyramidStyle = Literal["generic", "aperio"]
Reduce = Literal["area", "nearest"]

#: ``(x, y, width, height)`` of a box in one level's own pixels.
LvBox = tuple[int, int, int, int]

#: Version string Aperio's own library writes; OpenSlide only checks the ``Aperio`` prefix.
APERIO_PREFIX = "Aperio Image Library v12.0.0"

#: Longest side of the stripped Aperio thumbnail (Aperio's are about 1024 x 768).
APERIO_THUMBNAIL_SIZE = 1024

#: Above this many uncompressed bytes the file is written as BigTIFF: compressed data could
#: approach the uncompressed size and classic TIFF offsets stop at 4 GiB.
BIGTIFF_THRESHOLD = 2**31


class PyramidSource(ABC):
    """Pixels of a pyramid, produced on demand one box of one level at a time.

    Level 0 has ``shape`` ``(height, width)`` or ``(height, width, samples)``; the level at
    integer ``downsample`` ``d`` has ``ceil(height / d) x ceil(width / d)`` px, level px
    ``(lv_x, lv_y)`` covering level-0 px ``[lv_x * d, (lv_x + 1) * d)`` and likewise in y.
    """

    #: Level-0 ``(height, width)`` or ``(height, width, samples)``.
    shape: tuple[int, ...]
    dtype: np.dtype

    @abstractmethod
    def read_level(self, downsample: int, lv_box: LvBox) -> np.ndarray:
        """Pixels of ``lv_box = (x, y, width, height)`` of the level at ``downsample``.

        The box lies inside the level. Returns ``(height, width)`` or
        ``(height, width, samples)`` of :attr:`dtype`.
        """

    def uniform_value(self, downsample: int, lv_box: LvBox) -> np.ndarray | None:
        """The one pixel value of a box, if the source knows cheaply that it is uniform.

        ``None`` means "unknown": the writer then reads the box and checks it.
        """
        return None

    @property
    def l0_size(self) -> tuple[int, int]:
        """Level-0 ``(width, height)`` in px."""
        return self.shape[1], self.shape[0]

    @property
    def samples(self) -> int:
        return self.shape[2] if len(self.shape) == 3 else 1

    def level_size(self, downsample: int) -> tuple[int, int]:
        """``(width, height)`` of the level at ``downsample``."""
        width, height = self.l0_size
        return math.ceil(width / downsample), math.ceil(height / downsample)


class ArrayPyramidSource(PyramidSource):
    """An in-memory level-0 array; reduced levels are area averages, computed once each."""

    def __init__(self, level0: np.ndarray) -> None:
        _check_pixels(level0, "level0")
        self._level0 = np.ascontiguousarray(level0)
        self.shape = tuple(level0.shape)
        self.dtype = level0.dtype
        self._levels: dict[int, np.ndarray] = {1: self._level0}
        self._lock = threading.Lock()

    def level(self, downsample: int) -> np.ndarray:
        """The whole level at ``downsample``."""
        with self._lock:  # writer threads ask for the same level at once: reduce it once
            if downsample not in self._levels:
                self._levels[downsample] = block_mean(self._level0, downsample, edge="partial")
            return self._levels[downsample]

    def read_level(self, downsample: int, lv_box: LvBox) -> np.ndarray:
        x, y, width, height = lv_box
        return self.level(downsample)[y : y + height, x : x + width]


class UpsampledSource(PyramidSource):
    """A small array enlarged by ``factor`` with nearest neighbour, never held at full size.

    Small px ``(col, row)`` covers level-0 px ``[col * factor, (col + 1) * factor)``; a level-0
    px belongs to the small px under its centre. ``factor`` may be fractional (a patch grid's
    400.8 px cells). This is a rebuilt IDC patient (50 px patches at 4 µm/px upsampled 16x to a
    0.25 µm/px "slide") or an IDC grid mask at a slide's level-0 size.

    Parameters
    ----------
    small
        ``(rows, cols)`` or ``(rows, cols, samples)`` array.
    factor
        Level-0 px per small px.
    l0_size
        Level-0 ``(width, height)``; default the small array's extent times ``factor``. It may
        crop the enlarged image (a grid that runs past the slide's edge) or extend it (the last
        small row and column are repeated).
    reduce
        How reduced levels are made. ``"area"``: where a level px covers whole small px (the
        downsample is a multiple of ``factor``) it is the mean of the small px it covers, what a
        scanner's pyramid holds; elsewhere nearest. ``"nearest"``: always the small px under the
        level px's centre, so a 0/255 mask stays binary at every level.
    """

    def __init__(
        self,
        small: np.ndarray,
        factor: float,
        *,
        l0_size: tuple[int, int] | None = None,
        reduce: Reduce = "area",
    ) -> None:
        _check_pixels(small, "small")
        if not (math.isfinite(factor) and factor > 0):
            raise ValueError(f"Upsampling factor {factor} must be a positive number")
        if reduce not in ("area", "nearest"):
            raise ValueError(f"Unknown reduction {reduce!r}; expected 'area' or 'nearest'")
        self._small = np.ascontiguousarray(small)
        self.factor = float(factor)
        self.reduce = reduce
        rows, cols = small.shape[:2]
        if l0_size is None:
            l0_size = (max(1, round(cols * factor)), max(1, round(rows * factor)))
        width, height = int(l0_size[0]), int(l0_size[1])
        if width <= 0 or height <= 0:
            raise ValueError(f"Level-0 size {l0_size} must be positive")
        self.shape = (height, width, *small.shape[2:])
        self.dtype = small.dtype
        self._area_levels: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def _area_factor(self, downsample: int) -> int | None:
        """Small px per level px when a level px covers whole small px under ``"area"``."""
        if self.reduce != "area":
            return None
        ratio = downsample / self.factor
        if ratio >= 2 and abs(ratio - round(ratio)) < 1e-9:
            return round(ratio)
        return None

    def _small_indices(self, downsample: int, lv_start: int, count: int, axis: int) -> np.ndarray:
        centres = (lv_start + np.arange(count, dtype=np.float64) + 0.5) * downsample
        indices = np.floor(centres / self.factor).astype(np.intp)
        return np.clip(indices, 0, self._small.shape[axis] - 1)

    def _small_index(self, downsample: int, lv: int, axis: int) -> int:
        """:meth:`_small_indices` of one px, without numpy's per-call overhead."""
        index = math.floor((lv + 0.5) * downsample / self.factor)
        return min(max(index, 0), self._small.shape[axis] - 1)

    def _area_box(self, per_px: int, lv_box: LvBox) -> np.ndarray:
        with self._lock:
            if per_px not in self._area_levels:
                self._area_levels[per_px] = block_mean(self._small, per_px, edge="partial")
            reduced = self._area_levels[per_px]
        x, y, width, height = lv_box
        if y + height <= reduced.shape[0] and x + width <= reduced.shape[1]:
            return reduced[y : y + height, x : x + width]
        # l0_size extends past the small array: repeat its last row and column.
        rows = np.clip(np.arange(y, y + height), 0, reduced.shape[0] - 1)
        cols = np.clip(np.arange(x, x + width), 0, reduced.shape[1] - 1)
        return reduced[rows[:, None], cols[None, :]]

    def read_level(self, downsample: int, lv_box: LvBox) -> np.ndarray:
        per_px = self._area_factor(downsample)
        if per_px is not None:
            return self._area_box(per_px, lv_box)
        x, y, width, height = lv_box
        rows = self._small_indices(downsample, y, height, 0)
        cols = self._small_indices(downsample, x, width, 1)
        # Indices never decrease: widen the few small rows the box covers first, then repeat
        # whole rows (a copy per row), many times faster than gathering every px.
        band = self._small[rows[0] : rows[-1] + 1].take(cols, axis=1)
        return band.take(rows - rows[0], axis=0)

    def uniform_value(self, downsample: int, lv_box: LvBox) -> np.ndarray | None:
        if self._area_factor(downsample) is not None:
            return None  # the reduced level is small: the writer's own check is cheap
        x, y, width, height = lv_box
        # Indices grow with the level px, so the box covers exactly the small px between
        # those of its first and last px.
        row0 = self._small_index(downsample, y, 0)
        row1 = self._small_index(downsample, y + height - 1, 0)
        col0 = self._small_index(downsample, x, 1)
        col1 = self._small_index(downsample, x + width - 1, 1)
        return _uniform(self._small[row0 : row1 + 1, col0 : col1 + 1])


class FunctionSource(PyramidSource):
    """Pixels from a function that reads any level-0 box; reduced levels are area averages.

    ``read_l0(l0_x, l0_y, width, height)`` returns that box of level 0. Each reduced tile reads
    the level-0 box it covers, so every level costs a full pass over level 0: prefer
    :class:`UpsampledSource` or a custom :class:`PyramidSource` that reads reduced levels
    directly for very large images.
    """

    def __init__(
        self,
        read_l0: Callable[[int, int, int, int], np.ndarray],
        shape: tuple[int, ...],
        dtype: np.dtype | type,
    ) -> None:
        if len(shape) not in (2, 3) or min(shape) <= 0:
            raise ValueError(f"Shape {shape} must be (height, width) or (height, width, samples)")
        self._read_l0 = read_l0
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)

    def read_level(self, downsample: int, lv_box: LvBox) -> np.ndarray:
        x, y, width, height = lv_box
        l0_width, l0_height = self.l0_size
        l0_x, l0_y = x * downsample, y * downsample
        l0_w = min(width * downsample, l0_width - l0_x)
        l0_h = min(height * downsample, l0_height - l0_y)
        pixels = np.asarray(self._read_l0(l0_x, l0_y, l0_w, l0_h))
        if pixels.shape[:2] != (l0_h, l0_w):
            raise ValueError(
                f"read_l0 returned {pixels.shape[:2]} px for a {l0_h}x{l0_w} level-0 box"
            )
        return block_mean(pixels.astype(self.dtype, copy=False), downsample, edge="partial")


def default_downsamples(l0_size: tuple[int, int], tile: int) -> tuple[int, ...]:
    """``1, 4, 16, ...`` until the coarsest level fits in one tile."""
    downsamples = [1]
    while max(math.ceil(side / downsamples[-1]) for side in l0_size) > tile:
        downsamples.append(downsamples[-1] * 4)
    return tuple(downsamples)


def write_pyramid_tiff(
    path: str | os.PathLike[str],
    level0: np.ndarray | PyramidSource,
    *,
    mpp: float,
    downsamples: Sequence[int] | None = None,
    tile: int = 512,
    compression: Compression | None = None,
    quality: int = 90,
    style: PyramidStyle = "generic",
    description: str | None = None,
    objective_power: float | None = None,
    bigtiff: bool | None = None,
    workers: int | None = None,
) -> Path:
    """Write a tiled pyramidal TIFF that OpenSlide opens with every level.

    The file appears atomically: it is written to a temporary file in the same folder and
    moved into place, so a failure leaves any older file at ``path`` untouched.

    Parameters
    ----------
    path
        Output file (``.tif`` or, for ``style="aperio"``, ``.svs``).
    level0
        ``(H, W)`` or ``(H, W, 3)`` array, or a lazy :class:`PyramidSource`.
    mpp
        µm per level-0 px, written as XResolution/YResolution in px per cm (``10000 / mpp``);
        each reduced level carries its own resolution.
    downsamples
        Integer downsample of each level, starting at 1 and increasing; default 1, 4, 16, ...
        until the coarsest level fits in one tile.
    tile
        Tile side in px, a multiple of 16.
    compression
        ``"jpeg"`` (lossy, RGB or grey uint8), ``"deflate"`` (lossless) or ``"none"``; default
        JPEG for 3-sample uint8 images, deflate otherwise.
    quality
        JPEG quality, 1-100.
    style
        ``"generic"`` (generic-tiff) or ``"aperio"`` (SVS layout and metadata).
    description
        Generic style: the level-0 ImageDescription (OpenSlide's ``openslide.comment``).
        Aperio style: extra ``|``-separated ``Key = value`` fields appended to the Aperio
        header.
    objective_power
        Aperio ``AppMag``; default ``10 / mpp`` when that is a whole number (40 at 0.25 µm/px).
    bigtiff
        Force (or forbid) BigTIFF; default BigTIFF when the uncompressed pixels exceed 2 GiB.
    workers
        Threads that read and encode tiles; default ``min(4, cpu count)``. With 1, the
        calling thread does it: tiles that take microseconds (a mask's) cost more to hand to
        threads than to encode, as the threads mostly wait for the GIL.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    ValueError
        If the image, downsamples, tile size, compression or µm/px are invalid.
    ExportError
        If the file cannot be written.
    """
    plan = _PyramidPlan.checked(
        level0,
        mpp=mpp,
        downsamples=downsamples,
        tile=tile,
        compression=compression,
        quality=quality,
        style=style,
        description=description,
        objective_power=objective_power,
        bigtiff=bigtiff,
        workers=workers,
    )
    path = Path(path)
    try:
        with (
            atomic_path(path) as temp_path,
            tifffile.TiffWriter(temp_path, bigtiff=plan.bigtiff) as writer,
            plan.tile_pool() as pool,
        ):
            for index, downsample in enumerate(plan.levels):
                plan.write_level(writer, index, downsample, pool)
                if plan.style == "aperio" and index == 0:
                    _write_aperio_thumbnail(writer, plan.source, plan.codec, plan.aperio_fields)
    except OSError as exc:
        raise ExportError(f"Cannot write pyramidal TIFF {path}: {exc}") from exc
    return path


@dataclass(frozen=True)
class _PyramidPlan:
    """What :func:`write_pyramid_tiff` writes, checked before the file is created."""

    source: PyramidSource
    mpp: float
    levels: tuple[int, ...]
    tile: int
    codec: _TileCodec
    style: PyramidStyle
    description: str | None
    #: The ``|``-separated Aperio fields of every ImageDescription; empty in generic style.
    aperio_fields: str
    bigtiff: bool
    workers: int

    @classmethod
    def checked(
        cls,
        level0: np.ndarray | PyramidSource,
        *,
        mpp: float,
        downsamples: Sequence[int] | None,
        tile: int,
        compression: Compression | None,
        quality: int,
        style: PyramidStyle,
        description: str | None,
        objective_power: float | None,
        bigtiff: bool | None,
        workers: int | None,
    ) -> _PyramidPlan:
        """The plan of :func:`write_pyramid_tiff`'s arguments; ``ValueError`` names the first
        invalid one."""
        if tile <= 0 or tile % 16:
            raise ValueError(f"Tile size {tile} must be a positive multiple of 16")
        if not (math.isfinite(mpp) and mpp > 0):
            raise ValueError(f"µm/px {mpp} must be a positive number")
        source = level0 if isinstance(level0, PyramidSource) else ArrayPyramidSource(level0)
        levels = _check_downsamples(
            downsamples if downsamples is not None else default_downsamples(source.l0_size, tile)
        )
        if style not in ("generic", "aperio"):
            raise ValueError(f"Unknown style {style!r}; expected 'generic' or 'aperio'")
        codec = _TileCodec(source, compression, quality)
        if bigtiff is None:
            bigtiff = math.prod(source.shape) * source.dtype.itemsize > BIGTIFF_THRESHOLD
        return cls(
            source=source,
            mpp=mpp,
            levels=levels,
            tile=tile,
            codec=codec,
            style=style,
            description=description,
            aperio_fields=(
                _aperio_fields(mpp, objective_power, description) if style == "aperio" else ""
            ),
            bigtiff=bigtiff,
            workers=workers or min(4, os.cpu_count() or 1),
        )

    def tile_pool(self) -> AbstractContextManager[ThreadPoolExecutor | None]:
        """Threads that read and encode tiles, or none: then the writing thread does it."""
        return ThreadPoolExecutor(max_workers=self.workers) if self.workers > 1 else nullcontext()

    def write_level(
        self,
        writer: tifffile.TiffWriter,
        index: int,
        downsample: int,
        pool: ThreadPoolExecutor | None,
    ) -> None:
        """Write level ``index`` (at ``downsample``) as one tiled IFD."""
        source, tile = self.source, self.tile
        level_w, level_h = source.level_size(downsample)
        level_description: str | None
        if self.style == "aperio":
            level_description = _aperio_description(
                source.l0_size, (level_w, level_h), tile, self.codec, self.aperio_fields
            )
        else:
            level_description = self.description if index == 0 else None
        writer.write(
            _encoded_tiles(source, downsample, tile, self.codec, pool),
            shape=(level_h, level_w, *source.shape[2:]),
            dtype=source.dtype,
            tile=(tile, tile),
            **self.codec.tiff_kwargs(),
            resolution=(
                10000.0 / self.mpp * level_w / source.l0_size[0],
                10000.0 / self.mpp * level_h / source.l0_size[1],
            ),
            resolutionunit="CENTIMETER",
            # Aperio's own files leave their pyramid levels at subfile type 0.
            subfiletype=1 if index and self.style == "generic" else 0,
            description=level_description,
            software="wsiviewer",
            metadata=None,
        )


class _TileCodec:
    """Encodes tiles for one file and remembers the bytes of uniform tiles."""

    def __init__(
        self, source: PyramidSource, compression: Compression | None, quality: int
    ) -> None:
        rgb = source.samples == 3
        if compression is None:
            compression = "jpeg" if rgb and source.dtype == np.uint8 else "deflate"
        if compression not in ("jpeg", "deflate", "none"):
            raise ValueError(
                f"Unknown compression {compression!r}; expected 'jpeg', 'deflate' or 'none'"
            )
        if compression == "jpeg" and (source.dtype != np.uint8 or source.samples not in (1, 3)):
            raise ValueError(
                f"JPEG needs grey or RGB uint8 pixels, got {source.samples} samples of "
                f"{source.dtype}"
            )
        if not 1 <= quality <= 100:
            raise ValueError(f"JPEG quality {quality} must be within 1-100")
        if source.samples not in (1, 3):
            raise ValueError(f"Images need 1 (grey) or 3 (RGB) samples, got {source.samples}")
        self.compression = compression
        self.quality = quality
        self.rgb = rgb
        self.dtype = source.dtype
        self._uniform_tiles: dict[tuple[int, bytes], bytes] = {}

    @property
    def label(self) -> str:
        """How Aperio names the codec in its ImageDescription."""
        names = {"jpeg": "JPEG", "deflate": "Deflate", "none": "Raw"}
        return f"{names[self.compression]}/{'RGB' if self.rgb else 'Grey'}"

    def tiff_kwargs(self) -> dict[str, Any]:
        """tifffile ``write`` arguments that describe tiles encoded by :meth:`encode`."""
        kwargs: dict[str, Any] = {"photometric": "rgb" if self.rgb else "minisblack"}
        if self.compression == "jpeg":
            # tifffile then writes YCbCr with 2x2 chroma subsampling, which _encode matches.
            kwargs["compression"] = "jpeg"
            kwargs["compressionargs"] = {"level": self.quality}
        elif self.compression == "deflate":
            kwargs["compression"] = "adobe_deflate"
        return kwargs

    def encode(self, pixels: np.ndarray) -> bytes:
        pixels = np.ascontiguousarray(pixels, dtype=self.dtype)
        if self.compression == "jpeg":
            if self.rgb:
                return bytes(
                    imagecodecs.jpeg8_encode(
                        pixels,
                        level=self.quality,
                        colorspace="RGB",
                        outcolorspace="YCBCR",
                        subsampling=(2, 2),
                    )
                )
            return bytes(imagecodecs.jpeg8_encode(pixels, level=self.quality))
        if self.compression == "deflate":
            # zlib-ng at level 2: standard zlib streams, five times faster than zlib's fastest
            # level and 2-4 times smaller on masks (the main user).
            return bytes(imagecodecs.zlibng_encode(pixels.tobytes(), level=2))
        return pixels.tobytes()

    def encode_uniform(self, value: np.ndarray, tile: int) -> bytes:
        key = (tile, np.asarray(value, dtype=self.dtype).tobytes())
        encoded = self._uniform_tiles.get(key)
        if encoded is None:
            shape = (tile, tile, 3) if self.rgb else (tile, tile)
            encoded = self.encode(np.broadcast_to(np.asarray(value, dtype=self.dtype), shape))
            self._uniform_tiles[key] = encoded
        return encoded


def _encoded_tiles(
    source: PyramidSource,
    downsample: int,
    tile: int,
    codec: _TileCodec,
    pool: ThreadPoolExecutor | None,
) -> Iterator[bytes]:
    """Every tile of one level, encoded, in TIFF order (row by row), a band at a time.

    Tiles are read and encoded on ``pool``'s threads, or in this thread without one.
    """
    level_w, level_h = source.level_size(downsample)
    tiles_across = math.ceil(level_w / tile)
    tiles_down = math.ceil(level_h / tile)

    def level_box(tile_rc: tuple[int, int]) -> LvBox:
        lv_x, lv_y = tile_rc[1] * tile, tile_rc[0] * tile
        return (lv_x, lv_y, min(tile, level_w - lv_x), min(tile, level_h - lv_y))

    def encode_tile(lv_box: LvBox) -> bytes:
        pixels = np.asarray(source.read_level(downsample, lv_box))
        expected = (lv_box[3], lv_box[2], *source.shape[2:])
        if pixels.shape != expected:
            raise ValueError(
                f"Source returned {pixels.shape} px for level box {lv_box}; expected {expected}"
            )
        value = _uniform(pixels)
        if value is None:
            return codec.encode(_pad_tile(pixels, tile))
        return codec.encode_uniform(value, tile)

    # A band of tile rows at a time keeps memory bounded while threads share the work. Tiles
    # the source knows to be uniform skip the pool: handing a thread a few microseconds of
    # work costs more than the work.
    band_rows = max(1, 64 // tiles_across)
    for first_row in range(0, tiles_down, band_rows):
        band: list[bytes | Future[bytes]] = []
        for row in range(first_row, min(first_row + band_rows, tiles_down)):
            for col in range(tiles_across):
                lv_box = level_box((row, col))
                value = source.uniform_value(downsample, lv_box)
                if value is None:
                    band.append(
                        encode_tile(lv_box) if pool is None else pool.submit(encode_tile, lv_box)
                    )
                else:
                    band.append(codec.encode_uniform(value, tile))
        for item in band:
            yield item if isinstance(item, bytes) else item.result()


def _pad_tile(pixels: np.ndarray, tile: int) -> np.ndarray:
    """Pad a partial edge tile to full size by repeating its edge (no JPEG ringing)."""
    pad_h, pad_w = tile - pixels.shape[0], tile - pixels.shape[1]
    if not (pad_h or pad_w):
        return pixels
    pad = ((0, pad_h), (0, pad_w)) + ((0, 0),) * (pixels.ndim - 2)
    return np.pad(pixels, pad, mode="edge")


def _uniform(pixels: np.ndarray) -> np.ndarray | None:
    """The single value of ``pixels`` (a sample vector for colour), or ``None``."""
    if pixels.size == 0:
        return None
    first = pixels[0, 0]
    return np.array(first) if bool((pixels == first).all()) else None


def _check_pixels(pixels: np.ndarray, name: str) -> None:
    if pixels.ndim not in (2, 3) or pixels.shape[0] == 0 or pixels.shape[1] == 0:
        raise ValueError(
            f"{name} must be a non-empty (H, W) or (H, W, samples) array, got {pixels.shape}"
        )
    if not (np.issubdtype(pixels.dtype, np.integer) or np.issubdtype(pixels.dtype, np.floating)):
        raise ValueError(f"{name} must hold integers or floats, got {pixels.dtype}")


def _check_downsamples(downsamples: Sequence[int]) -> tuple[int, ...]:
    levels = tuple(downsamples)
    valid = (
        bool(levels)
        and levels[0] == 1
        and all(isinstance(d, int | np.integer) and d >= 1 for d in levels)
        and all(a < b for a, b in itertools.pairwise(levels))
    )
    if not valid:
        raise ValueError(
            f"Downsamples must be increasing integers starting at 1, got {list(levels)}"
        )
    return tuple(int(d) for d in levels)


def _aperio_fields(mpp: float, objective_power: float | None, extra: str | None) -> str:
    if objective_power is None:
        guess = magnification_from_mpp(mpp)
        if abs(guess - round(guess)) < 1e-6:
            objective_power = round(guess)
    fields = []
    if objective_power is not None:
        # OpenSlide parses AppMag as an integer for openslide.objective-power.
        power = objective_power
        fields.append(f"AppMag = {int(power) if float(power).is_integer() else power}")
    fields.append(f"MPP = {mpp:.6g}")
    if extra:
        fields.append(extra.strip().strip("|"))
    return "|".join(fields)


def _aperio_description(
    l0_size: tuple[int, int],
    level_size: tuple[int, int],
    tile: int,
    codec: _TileCodec,
    fields: str,
) -> str:
    width, height = l0_size
    header = f"{width}x{height} ({tile}x{tile})"
    if level_size != l0_size:
        header += f" -> {level_size[0]}x{level_size[1]}"
    quality = f" Q={codec.quality}" if codec.compression == "jpeg" else ""
    return f"{APERIO_PREFIX}\n{header} {codec.label}{quality}|{fields}"


def _write_aperio_thumbnail(
    writer: tifffile.TiffWriter, source: PyramidSource, codec: _TileCodec, fields: str
) -> None:
    """The stripped second IFD that OpenSlide's aperio driver offers as ``thumbnail``."""
    downsample = 1
    while max(source.level_size(downsample)) > APERIO_THUMBNAIL_SIZE:
        downsample *= 2
    thumb_w, thumb_h = source.level_size(downsample)
    pixels = np.ascontiguousarray(source.read_level(downsample, (0, 0, thumb_w, thumb_h)))
    width, height = source.l0_size
    kwargs = codec.tiff_kwargs()
    if codec.compression == "jpeg":
        kwargs["rowsperstrip"] = 16  # a multiple of the 2x2 chroma subsampling's 16-px MCU
    writer.write(
        pixels,
        **kwargs,
        subfiletype=0,
        description=f"{APERIO_PREFIX}\n{width}x{height} -> {thumb_w}x{thumb_h} - |{fields}",
        software="wsiviewer",
        metadata=None,
    )
