"""Viewport tiles: immutable requests, a small executor, a byte-bounded cache.

Follows napari's slicer: the view asks for the tiles it needs (:meth:`TileLoader.request`),
requests no longer wanted are cancelled before they start (and dropped if they already
started), tiles are read off the GUI thread by a two-thread executor, and results reach the GUI
thread only through a queued signal, where they enter the :class:`TileCache`.

Frames: a tile is ``TILE_SIZE`` px of one pyramid level (``lv_`` px); its level-0 box is
``lv * downsample``. The scene of :class:`~wsiviewer.gui.slide_view.SlideView` is in level-0 px.

Zooms between pyramid levels: a tile may be *reduced*, its level px averaged in ``reduction``
x ``reduction`` blocks by the worker, so the GUI thread paints it at (nearly) 1:1 instead of
scaling 4x the pixels down on every frame. A reduced tile covers the same level px (the same
file tiles are decoded) as the full one; its key differs only in ``reduction``.

Tiles are read only through the slide interface, :meth:`~wsiviewer.core.slides.Slide.read_display`:
the slide decides how to read fast (its own tile decoding, JPEG decoded at reduced size) and
reports a tile it cannot read as :class:`~wsiviewer.errors.SlideReadError`.
"""

from __future__ import annotations

import logging
import math
import threading
import weakref
from collections import Counter, OrderedDict
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from typing import ClassVar

from PySide6.QtCore import QObject, Qt, Signal, Slot
from PySide6.QtGui import QImage

from wsiviewer.core.slides import Slide
from wsiviewer.core.units import finest_level_within
from wsiviewer.errors import WsiViewerError
from wsiviewer.gui.images import rgb_to_qimage

log = logging.getLogger(__name__)

#: Side of a tile in level px; matches the 512 px tiles most scanners write.
TILE_SIZE = 512

#: Default byte budget of the tile cache (decoded 32-bit tiles: 1 MiB each).
DEFAULT_CACHE_BYTES = 256 * 2**20

#: Block sizes a worker may average tiles by; powers of two, so a reduced tile of
#: :data:`TILE_SIZE` level px has a whole number of px (512 / 4 = 128).
REDUCTIONS = (1, 2, 4)


def reduction_for(level_px_per_screen_px: float) -> int:
    """The largest of :data:`REDUCTIONS` not above ``level_px_per_screen_px``.

    Never above: a reduced tile is never magnified on screen, so it stays as sharp as the
    level allows. From 2 level px per screen px on (5x from a 10x level), tiles are halved.
    """
    limit = level_px_per_screen_px * (1 + 1e-6)
    return max((r for r in REDUCTIONS if r <= limit), default=1)


@dataclass(frozen=True, order=True)
class TileKey:
    """One tile: ``(col, row)`` in the tile grid of pyramid ``level``, its level px averaged
    in ``reduction`` x ``reduction`` blocks (1: the level's own px)."""

    level: int
    col: int
    row: int
    reduction: int = 1


@dataclass(frozen=True)
class TileRequest:
    """What a worker needs to read one tile; immutable, so workers share nothing mutable."""

    key: TileKey
    #: Level-0 top-left of the tile, px.
    l0_xy: tuple[int, int]
    #: ``(width, height)`` in level px (edge tiles are smaller than :data:`TILE_SIZE`).
    lv_size: tuple[int, int]
    #: The slide session the request belongs to; results of older sessions are dropped.
    generation: int

    @property
    def image_size(self) -> tuple[int, int]:
        """``(width, height)`` of the tile image, px: ``lv_size`` over the reduction, rounded
        up (a partial block at the slide's edge becomes one px)."""
        return reduced_size(self.lv_size, self.key.reduction)


class TileLayout:
    """The tile grid of every level of a slide: which tiles cover a level-0 box, and where."""

    def __init__(
        self,
        level_dimensions: Sequence[tuple[int, int]],
        level_downsamples: Sequence[float],
        tile_size: int = TILE_SIZE,
    ) -> None:
        self.level_dimensions = tuple(level_dimensions)
        self.level_downsamples = tuple(level_downsamples)
        self.tile_size = tile_size

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    def tile_counts(self, level: int) -> tuple[int, int]:
        """``(cols, rows)`` of the tile grid of ``level``."""
        width, height = self.level_dimensions[level]
        return math.ceil(width / self.tile_size), math.ceil(height / self.tile_size)

    def lv_box(self, key: TileKey) -> tuple[int, int, int, int]:
        """Level px ``(x, y, width, height)`` of the tile (edge tiles are cut to the level)."""
        lv_x, lv_y = key.col * self.tile_size, key.row * self.tile_size
        return (lv_x, lv_y, *self.lv_size(key))

    def lv_size(self, key: TileKey) -> tuple[int, int]:
        width, height = self.level_dimensions[key.level]
        lv_x, lv_y = key.col * self.tile_size, key.row * self.tile_size
        return min(self.tile_size, width - lv_x), min(self.tile_size, height - lv_y)

    def l0_from_lv(self, level: int, lv_xy: tuple[float, float]) -> tuple[float, float]:
        """Level-0 px of the level px ``lv_xy`` (a point, or a size): ``lv * downsample``."""
        downsample = self.level_downsamples[level]
        return lv_xy[0] * downsample, lv_xy[1] * downsample

    def lv_from_l0(self, level: int, l0_length: float) -> float:
        """Level px in ``l0_length`` level-0 px: ``l0 / downsample``."""
        return l0_length / self.level_downsamples[level]

    def grid_for(self, l0_per_screen_px: float) -> tuple[int, int]:
        """``(level, reduction)`` of the tiles to paint at ``l0_per_screen_px`` (device px):
        the coarsest level at least as fine as the screen, averaged down as far as it stays
        so (:func:`reduction_for`)."""
        level = finest_level_within(self.level_downsamples, l0_per_screen_px)
        return level, reduction_for(self.lv_from_l0(level, l0_per_screen_px))

    def l0_box(self, key: TileKey) -> tuple[float, float, float, float]:
        """Level-0 ``(x, y, width, height)`` the tile covers."""
        lv_x, lv_y, lv_w, lv_h = self.lv_box(key)
        return (
            *self.l0_from_lv(key.level, (lv_x, lv_y)),
            *self.l0_from_lv(key.level, (lv_w, lv_h)),
        )

    def l0_image_box(self, key: TileKey) -> tuple[float, float, float, float]:
        """Level-0 ``(x, y, width, height)`` the tile's image spans: its :meth:`l0_box`, but a
        partial last block of a reduced tile at the level's edge spans a whole block."""
        lv_x, lv_y, lv_w, lv_h = self.lv_box(key)
        image_w, image_h = reduced_size((lv_w, lv_h), key.reduction)
        return (
            *self.l0_from_lv(key.level, (lv_x, lv_y)),
            *self.l0_from_lv(key.level, (image_w * key.reduction, image_h * key.reduction)),
        )

    def tiles_in(
        self, level: int, l0_box: tuple[float, float, float, float], reduction: int = 1
    ) -> list[TileKey]:
        """Tiles of ``level`` (reduced by ``reduction``) that intersect the level-0 box,
        nearest its centre first."""
        span, _ = self.l0_from_lv(level, (self.tile_size, self.tile_size))
        cols, rows = self.tile_counts(level)
        l0_x, l0_y, l0_w, l0_h = l0_box
        col0 = max(0, math.floor(l0_x / span))
        row0 = max(0, math.floor(l0_y / span))
        col1 = min(cols - 1, math.ceil((l0_x + l0_w) / span) - 1)
        row1 = min(rows - 1, math.ceil((l0_y + l0_h) / span) - 1)
        if col1 < col0 or row1 < row0:
            return []
        centre_col = (l0_x + l0_w / 2) / span - 0.5
        centre_row = (l0_y + l0_h / 2) / span - 0.5
        keys = [
            TileKey(level, col, row, reduction)
            for row in range(row0, row1 + 1)
            for col in range(col0, col1 + 1)
        ]
        keys.sort(key=lambda k: (k.col - centre_col) ** 2 + (k.row - centre_row) ** 2)
        return keys

    def request(self, key: TileKey, generation: int) -> TileRequest:
        lv_x, lv_y, lv_w, lv_h = self.lv_box(key)
        l0_x, l0_y = self.l0_from_lv(key.level, (lv_x, lv_y))
        return TileRequest(key, (round(l0_x), round(l0_y)), (lv_w, lv_h), generation)


class TileCache:
    """Least-recently-used decoded tiles, bounded by their bytes. GUI thread only."""

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        if max_bytes <= 0:
            raise ValueError(f"Cache size {max_bytes} bytes must be positive")
        self.max_bytes = max_bytes
        self._tiles: OrderedDict[TileKey, QImage] = OrderedDict()
        self._bytes = 0
        # Tiles cached per (level, reduction): painting skips grids with none at once.
        self._grid_counts: Counter[tuple[int, int]] = Counter()

    def __contains__(self, key: object) -> bool:
        return key in self._tiles

    def __len__(self) -> int:
        return len(self._tiles)

    @property
    def bytes(self) -> int:
        return self._bytes

    def get(self, key: TileKey) -> QImage | None:
        image = self._tiles.get(key)
        if image is not None:
            self._tiles.move_to_end(key)
        return image

    def peek(self, key: TileKey) -> QImage | None:
        """The tile without refreshing its place in the LRU order."""
        return self._tiles.get(key)

    def has_grid(self, level: int, reduction: int) -> bool:
        """Whether any tile of ``level`` at ``reduction`` is cached."""
        return self._grid_counts[level, reduction] > 0

    def put(self, key: TileKey, image: QImage) -> None:
        old = self._tiles.pop(key, None)
        if old is not None:
            self._bytes -= old.sizeInBytes()
        else:
            self._grid_counts[key.level, key.reduction] += 1
        self._tiles[key] = image
        self._bytes += image.sizeInBytes()
        while self._bytes > self.max_bytes and len(self._tiles) > 1:
            evicted_key, evicted = self._tiles.popitem(last=False)
            self._bytes -= evicted.sizeInBytes()
            self._grid_counts[evicted_key.level, evicted_key.reduction] -= 1

    def clear(self) -> None:
        self._tiles.clear()
        self._grid_counts.clear()
        self._bytes = 0


def reduced_size(lv_size: tuple[int, int], reduction: int) -> tuple[int, int]:
    """``lv_size`` px averaged in ``reduction``-px blocks, a partial last block counting one."""
    width, height = lv_size
    return -(-width // reduction), -(-height // reduction)


def read_tile(slide: Slide, tile_request: TileRequest) -> QImage:
    """One tile as a paint-ready QImage, read through :meth:`Slide.read_display` (which
    averages a reduced tile's level px in blocks, fast where the slide can)."""
    pixels = slide.read_display(
        tile_request.l0_xy, tile_request.key.level, tile_request.lv_size, tile_request.key.reduction
    )
    return rgb_to_qimage(pixels)


class TileLoader(QObject):
    """Reads tiles of one slide on a small executor and caches them on the GUI thread.

    Signals
    -------
    tile_loaded(TileKey)
        A tile entered the cache.
    tile_failed(TileKey, str)
        A tile could not be read; the message names the problem.
    """

    tile_loaded = Signal(object)
    tile_failed = Signal(object, str)
    # Emitted from worker threads; queued to the GUI thread.
    _delivered = Signal(object, object, str)

    #: Every loader not yet shut down (tests check that none is left running).
    live: ClassVar[weakref.WeakSet[TileLoader]] = weakref.WeakSet()

    def __init__(
        self,
        parent: QObject | None = None,
        *,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        workers: int = 2,
    ) -> None:
        super().__init__(parent)
        self.cache = TileCache(cache_bytes)
        self._executor: ThreadPoolExecutor | None = ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="wsiviewer-tiles"
        )
        self._slide: Slide | None = None
        self._layout: TileLayout | None = None
        self._generation = 0
        self._wanted: frozenset[TileKey] = frozenset()
        self._pending: dict[TileKey, Future[None]] = {}
        self._failed: set[TileKey] = set()
        self._lock = threading.Lock()
        self._delivered.connect(self._on_delivered, Qt.ConnectionType.QueuedConnection)
        TileLoader.live.add(self)

    @property
    def layout(self) -> TileLayout | None:
        return self._layout

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    def set_slide(self, slide: Slide | None, layout: TileLayout | None = None) -> None:
        """Start a new slide session: drop every request and cached tile of the last one.

        Waits for reads in progress, so the caller may close the previous slide afterwards.
        """
        self._drop_all()
        self._generation += 1
        self._failed.clear()
        self.cache.clear()
        self._slide = slide
        if slide is None:
            self._layout = None
        else:
            self._layout = layout or TileLayout(slide.level_dimensions, slide.level_downsamples)

    def request(self, keys: Iterable[TileKey]) -> None:
        """Want exactly ``keys`` (in priority order): cancel the rest, queue what is missing."""
        if self._executor is None or self._slide is None or self._layout is None:
            return
        ordered = list(keys)
        wanted = frozenset(ordered)
        with self._lock:
            self._wanted = wanted
        for key, future in list(self._pending.items()):
            if key not in wanted and future.cancel():
                del self._pending[key]
        for key in ordered:
            if key in self.cache or key in self._pending or key in self._failed:
                continue
            tile_request = self._layout.request(key, self._generation)
            self._pending[key] = self._executor.submit(self._read, self._slide, tile_request)

    def missing(self, keys: Iterable[TileKey]) -> list[TileKey]:
        """Keys that are neither cached nor failed."""
        return [k for k in keys if k not in self.cache and k not in self._failed]

    def shutdown(self) -> None:
        """Cancel everything and stop the executor's threads (waits for reads in progress)."""
        self._drop_all()
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
        self._slide = None
        self._layout = None
        TileLoader.live.discard(self)

    @property
    def running(self) -> bool:
        return self._executor is not None

    def _drop_all(self) -> None:
        with self._lock:
            self._wanted = frozenset()
        for future in self._pending.values():
            future.cancel()
        wait_futures(list(self._pending.values()))
        self._pending.clear()

    # -- worker side ----------------------------------------------------------------------

    def _read(self, slide: Slide, tile_request: TileRequest) -> None:
        with self._lock:
            stale = (
                tile_request.key not in self._wanted or tile_request.generation != self._generation
            )
        if stale:
            self._delivered.emit(tile_request, None, "")
            return
        try:
            image = read_tile(slide, tile_request)
        except (WsiViewerError, OSError) as exc:
            self._delivered.emit(tile_request, None, str(exc) or type(exc).__name__)
            return
        except Exception as exc:
            log.exception("Unexpected error reading tile %s", tile_request.key)
            self._delivered.emit(tile_request, None, f"{type(exc).__name__}: {exc}")
            return
        self._delivered.emit(tile_request, image, "")

    # -- GUI thread -------------------------------------------------------------------------

    @Slot(object, object, str)
    def _on_delivered(self, tile_request: TileRequest, image: QImage | None, error: str) -> None:
        if tile_request.generation != self._generation:
            return
        key = tile_request.key
        # The worker emits just before its future completes: this request is settled anyway.
        self._pending.pop(key, None)
        if error:
            self._failed.add(key)
            self.tile_failed.emit(key, error)
        elif image is not None:
            self.cache.put(key, image)
            self.tile_loaded.emit(key)
        elif key in self._wanted and self._executor is not None and self._slide is not None:
            # Dropped as stale, but wanted again meanwhile: ask once more.
            self._pending[key] = self._executor.submit(self._read, self._slide, tile_request)
