"""One slide interface over OpenSlide files and in-memory arrays.

Every algorithm in core sees only :class:`Slide`, so the same code runs on a real
OpenSlide-backed file and on a numpy pyramid (tests, rebuilt IDC patients).

Frames: ``l0_`` coordinates are level-0 pixels (the world frame), ``lv_`` are a pyramid
level's own pixels, ``l0 = lv * downsample``. Pixel arrays are ``(H, W, 3) uint8`` RGB.

Reading a file is OpenSlide's, with two shortcuts that give the same px faster: a plain tiled
TIFF (Aperio, generic TIFF) has its tiles decoded directly once one of them matched
OpenSlide's read of it, and a small level that analysis reads again and again (tissue
overview, model patches, overlay) is decoded once and kept.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from wsiviewer.errors import ResolutionError, SlideOpenError, SlideReadError

if TYPE_CHECKING:
    import tifffile

MppSource = Literal["metadata", "objective-power", "user"]

#: µm/px outside this range (e.g. a 72-dpi default TIFF resolution) is implausible: missing.
PLAUSIBLE_MPP_RANGE = (0.05, 50.0)

#: Property keys (matched case-insensitively on the part after the vendor prefix) that can
#: identify a patient, an operator or a case. ``openslide.comment`` and the TIFF
#: ImageDescription repeat Aperio's Filename/User/Date, so they are withheld too.
_IDENTIFYING_KEY = re.compile(
    r"(filename|user|operator|date|time$|patient|accession|birth|barcode|"
    r"institution|physician|studyid|study_id|studyinstance|seriesinstance|"
    r"imagedescription|comment|label|slideid|slide_id|caseid|case_id)",
    re.IGNORECASE,
)

#: Most level px one read may hold (4 Mpx: 16 MiB of RGBA, ~50 MiB while resampling); larger
#: boxes are read in strips, which keeps peak memory low at no measurable cost in speed.
READ_PIXEL_BUDGET = 4_000_000

#: How much coarser than asked a level may be when drawing a picture (:meth:`Slide.display_level`).
DISPLAY_LEVEL_SLACK = 1.5

#: Most px of whole levels a slide file keeps decoded (48-64 MiB): analysis reads its model
#: level up to three times (tissue overview, patches, overlay), and a 40x slide of up to
#: ~4 Gpx has a 4 µm/px level this small, so it is decoded once (:meth:`OpenSlideSource._held`).
HELD_LEVEL_PIXELS = 16_000_000

#: OpenSlide vendors whose levels are plain tiled TIFF pages (no overlapping or missing
#: tiles), which can be decoded directly (:class:`_TiffTiles`).
_TILED_TIFF_VENDORS = frozenset({"aperio", "generic-tiff"})

#: TIFF compressions (none, LZW, JPEG, Adobe deflate, deflate) of tiles decoded directly.
_TILE_COMPRESSIONS = frozenset({1, 5, 7, 8, 32946})

#: Associated images that show the slide label or the whole glass: withheld by default.
_IDENTIFYING_IMAGES = frozenset({"label", "macro"})


def is_identifying_property(key: str) -> bool:
    """Whether a slide property may identify a patient or operator (DESIGN.md, Privacy)."""
    return _IDENTIFYING_KEY.search(key.rsplit(".", 1)[-1]) is not None


def plausible_mpp(value: float | None) -> float | None:
    """``value`` if it is a plausible µm/px, else ``None``."""
    if value is None or not math.isfinite(value):
        return None
    low, high = PLAUSIBLE_MPP_RANGE
    return value if low <= value <= high else None


@dataclass(frozen=True)
class Mpp:
    """Microns per level-0 pixel and where the value came from."""

    value: float
    source: MppSource

    def __post_init__(self) -> None:
        if plausible_mpp(self.value) is None:
            low, high = PLAUSIBLE_MPP_RANGE
            raise ResolutionError(
                f"Implausible resolution {self.value} µm/px; expected {low}–{high} µm/px"
            )


class Slide(ABC):
    """A multi-resolution slide: level geometry, resolution, identity and pixel reads."""

    #: A stable identity of the slide's content (OpenSlide quickhash-1 or a pixel hash).
    identity: str
    #: Vendor name as OpenSlide reports it (``aperio``, ``dicom``, ``generic-tiff``...).
    vendor: str | None
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    objective_power: float | None

    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 ``(width, height)`` in px."""
        return self.level_dimensions[0]

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    _metadata_mpp: float | None
    _properties: dict[str, str]

    @property
    def metadata_mpp(self) -> float | None:
        """Plausible µm/px from the file's metadata, or ``None``."""
        return self._metadata_mpp

    @property
    def mpp(self) -> Mpp | None:
        """Best available µm/px: metadata first, then 10 / objective power."""
        if self.metadata_mpp is not None:
            return Mpp(self.metadata_mpp, "metadata")
        if self.objective_power:
            guess = plausible_mpp(10.0 / self.objective_power)
            if guess is not None:
                return Mpp(guess, "objective-power")
        return None

    def resolve_mpp(self, user_mpp: float | None = None) -> Mpp:
        """The µm/px to analyse with: the user's value wins, else :attr:`mpp`.

        Raises
        ------
        ResolutionError
            If neither the user nor the slide gives a plausible value.
        """
        if user_mpp is not None:
            return Mpp(float(user_mpp), "user")
        if self.mpp is None:
            raise ResolutionError(
                "Slide has no usable µm/px in its metadata and no objective power; "
                "pass the scan resolution with --mpp (e.g. 0.25 for 40x, 0.5 for 20x)"
            )
        return self.mpp

    @property
    def properties(self) -> Mapping[str, str]:
        """Every property, identifying ones included; prefer :meth:`public_properties`."""
        return self._properties

    def public_properties(self, include_identifying: bool = False) -> dict[str, str]:
        """Properties safe to print, show or export (DESIGN.md, Privacy)."""
        return {
            key: value
            for key, value in sorted(self.properties.items())
            if include_identifying or not is_identifying_property(key)
        }

    @property
    @abstractmethod
    def associated_image_names(self) -> tuple[str, ...]:
        """Names of every associated image (label, macro, thumbnail...)."""

    def public_associated_image_names(self, include_identifying: bool = False) -> tuple[str, ...]:
        return tuple(
            name
            for name in self.associated_image_names
            if include_identifying or name not in _IDENTIFYING_IMAGES
        )

    @abstractmethod
    def associated_image(self, name: str, include_identifying: bool = False) -> np.ndarray:
        """An associated image as ``(H, W, 3) uint8``; label and macro need the opt-in."""

    def _check_associated(self, name: str, include_identifying: bool) -> None:
        if name not in self.associated_image_names:
            raise SlideReadError(
                f"No associated image {name!r}; slide has {list(self.associated_image_names)}"
            )
        if name in _IDENTIFYING_IMAGES and not include_identifying:
            raise SlideReadError(
                f"Associated image {name!r} may identify the patient and is withheld; "
                "ask for it explicitly"
            )

    def _check_level(self, level: int) -> None:
        if not 0 <= level < self.level_count:
            raise SlideReadError(f"Invalid level {level}; slide has {self.level_count} levels")

    @abstractmethod
    def read_region(
        self, l0_xy: tuple[int, int], level: int, lv_size: tuple[int, int]
    ) -> np.ndarray:
        """Read ``lv_size = (width, height)`` level px whose top-left is ``l0_xy``.

        Returns ``(height, width, 3) uint8`` RGB; pixels outside the slide are white (255).
        """

    def best_level_for_downsample(self, downsample: float) -> int:
        """The coarsest level whose downsample is at most ``downsample`` (tolerance 1e-6)."""
        best = 0
        for level, level_downsample in enumerate(self.level_downsamples):
            if level_downsample <= downsample * (1 + 1e-6):
                best = level
        return best

    def display_level(self, downsample: float) -> int:
        """The level to draw a picture at ``downsample`` from (thumbnails, overlays).

        It may be up to :data:`DISPLAY_LEVEL_SLACK` times coarser than asked: invisible in a
        picture, and on a pyramid with a sparse set of levels it can save reading 16 times
        the pixels. Analysis never uses this: it reads at least the model's resolution.
        """
        return self.best_level_for_downsample(downsample * DISPLAY_LEVEL_SLACK)

    def read_l0_box(
        self,
        l0_box: tuple[float, float, float, float],
        out_size: tuple[int, int],
        level: int | None = None,
    ) -> np.ndarray:
        """Area-average the level-0 box ``(x, y, width, height)`` into ``out_size`` px.

        Reads ``level`` (by default the coarsest level at least as fine as the output needs),
        then area-averages, exactly, fractional pixel edges included, to ``(width, height)``.
        Parts of the box outside the slide are white.
        """
        from wsiviewer.core.slides.resample import area_resample

        l0_x, l0_y, l0_w, l0_h = l0_box
        out_w, out_h = out_size
        if level is None:
            level = self.best_level_for_downsample(min(l0_w / out_w, l0_h / out_h))
        self._check_level(level)
        level_downsample = self.level_downsamples[level]
        lv_row_px = (l0_w / level_downsample) * (l0_h / level_downsample) / out_h
        strip_rows = max(1, int(READ_PIXEL_BUDGET // max(lv_row_px, 1.0)))
        if strip_rows < out_h:
            # A big box is read in strips of output rows, so memory stays bounded.
            l0_per_row = l0_h / out_h
            strips = [
                self.read_l0_box(
                    (
                        l0_x,
                        l0_y + row * l0_per_row,
                        l0_w,
                        min(strip_rows, out_h - row) * l0_per_row,
                    ),
                    (out_w, min(strip_rows, out_h - row)),
                    level=level,
                )
                for row in range(0, out_h, strip_rows)
            ]
            return np.concatenate(strips, axis=0)
        lv_x0 = math.floor(l0_x / level_downsample)
        lv_y0 = math.floor(l0_y / level_downsample)
        lv_x1 = math.ceil((l0_x + l0_w) / level_downsample)
        lv_y1 = math.ceil((l0_y + l0_h) / level_downsample)
        pixels = self._read_pixels(
            (round(lv_x0 * level_downsample), round(lv_y0 * level_downsample)),
            level,
            (lv_x1 - lv_x0, lv_y1 - lv_y0),
        )
        resampled = area_resample(
            pixels,
            lv_origin=(l0_x / level_downsample - lv_x0, l0_y / level_downsample - lv_y0),
            lv_extent=(l0_w / level_downsample, l0_h / level_downsample),
            out_size=out_size,
            channels=3,
        )
        return np.ascontiguousarray(resampled)

    def _read_pixels(
        self, l0_xy: tuple[int, int], level: int, lv_size: tuple[int, int]
    ) -> np.ndarray:
        """:meth:`read_region` for resampling: ``(height, width, C) uint8`` with RGB first.

        A source may return a fourth channel (e.g. an opaque alpha) to save copying the RGB
        out of RGBA before resampling shrinks it; :meth:`read_l0_box` drops it afterwards.
        """
        return self.read_region(l0_xy, level, lv_size)

    def thumbnail(self, max_size: int = 1024) -> np.ndarray:
        """The whole slide, area-averaged to fit in ``max_size`` px (aspect kept)."""
        width, height = self.dimensions
        scale = max(width, height) / max_size
        out_size = (max(1, round(width / scale)), max(1, round(height / scale)))
        return self.read_l0_box(
            (0.0, 0.0, float(width), float(height)), out_size, level=self.display_level(scale)
        )

    def close(self) -> None:  # noqa: B027 -- optional for sources that hold nothing
        """Release the file handle, if any."""

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def describe(self, include_identifying: bool = False) -> dict[str, object]:
        """A JSON-ready summary; nothing identifying unless asked (DESIGN.md, Privacy)."""
        mpp = self.mpp
        return {
            "identity": self.identity,
            "vendor": self.vendor,
            "dimensions": list(self.dimensions),
            "level_count": self.level_count,
            "level_dimensions": [list(d) for d in self.level_dimensions],
            "level_downsamples": list(self.level_downsamples),
            "mpp": mpp.value if mpp else None,
            "mpp_source": mpp.source if mpp else None,
            "objective_power": self.objective_power,
            "associated_images": list(self.public_associated_image_names(include_identifying)),
            "properties": self.public_properties(include_identifying),
        }


def _crop_padded(
    pixels: np.ndarray, lv_xy: tuple[int, int], lv_size: tuple[int, int]
) -> np.ndarray:
    """The ``lv_size`` box at ``lv_xy`` of a whole level, white past its edges.

    A view when the box lies inside the level (nothing copied), else a new array.
    """
    x0, y0 = lv_xy
    width, height = lv_size
    level_h, level_w = pixels.shape[:2]
    if x0 >= 0 and y0 >= 0 and x0 + width <= level_w and y0 + height <= level_h:
        return pixels[y0 : y0 + height, x0 : x0 + width]
    out = np.full((height, width, pixels.shape[2]), 255, dtype=np.uint8)
    src_x0, src_y0 = max(x0, 0), max(y0, 0)
    src_x1, src_y1 = min(x0 + width, level_w), min(y0 + height, level_h)
    if src_x1 > src_x0 and src_y1 > src_y0:
        out[src_y0 - y0 : src_y1 - y0, src_x0 - x0 : src_x1 - x0] = pixels[
            src_y0:src_y1, src_x0:src_x1
        ]
    return out


def _premultiplied_rgba_to_rgb(rgba: np.ndarray) -> np.ndarray:
    """Composite OpenSlide's premultiplied RGBA over white."""
    return np.ascontiguousarray(_over_white(rgba)[..., :3])


def _over_white(rgba: np.ndarray) -> np.ndarray:
    """OpenSlide's premultiplied RGBA composited over white, in the first three channels.

    ``rgba`` itself when it is opaque, the usual case: nothing is composited or copied. Else
    only the px that are not opaque (past the level's edge, missing tiles) are composited;
    their alpha is left as it was.
    """
    alpha = rgba[..., 3]
    if alpha.min() == 255:
        return rgba
    rows, cols = np.nonzero(alpha != 255)
    out = rgba.copy()
    composited = out[rows, cols, :3].astype(np.uint16) + (255 - alpha[rows, cols, None])
    out[rows, cols, :3] = np.minimum(composited, 255)
    return out


class OpenSlideSource(Slide):
    """A slide file read by OpenSlide: every format OpenSlide 4 supports, DICOM included."""

    def __init__(self, path: str | Path) -> None:
        import openslide

        self.path = Path(path)
        if not self.path.exists():
            raise SlideOpenError(f"Slide not found: {self.path}")
        if self.path.is_dir():
            raise SlideOpenError(f"Slide path is a folder, not a slide file: {self.path}")
        try:
            self._osr = openslide.OpenSlide(self.path)
        except openslide.OpenSlideUnsupportedFormatError as exc:
            raise SlideOpenError(
                f"Unsupported slide format: {self.path.name} is not a format OpenSlide reads"
            ) from exc
        except (openslide.OpenSlideError, OSError) as exc:
            raise SlideOpenError(f"Cannot open slide {self.path.name}: {exc}") from exc
        props = self._osr.properties
        self._properties = dict(props)
        self.vendor = props.get(openslide.PROPERTY_NAME_VENDOR)
        self.level_dimensions = tuple(tuple(d) for d in self._osr.level_dimensions)  # type: ignore[misc]
        self.level_downsamples = tuple(float(d) for d in self._osr.level_downsamples)
        self.identity = props.get(openslide.PROPERTY_NAME_QUICKHASH1) or _file_hash(self.path)
        self.objective_power = _float_or_none(props.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER))
        mpp_x = _float_or_none(props.get(openslide.PROPERTY_NAME_MPP_X))
        mpp_y = _float_or_none(props.get(openslide.PROPERTY_NAME_MPP_Y))
        values = [v for v in (mpp_x, mpp_y) if v is not None]
        self._metadata_mpp = plausible_mpp(sum(values) / len(values)) if values else None
        self._held_levels: dict[int, np.ndarray] = {}
        self._held_pixels = 0
        self._hold_lock = threading.Lock()
        self._tiles: _TiffTiles | None = None
        self._tiles_opened = False
        self._tiles_agree: dict[int, bool] = {}
        self._tiles_lock = threading.Lock()

    @property
    def associated_image_names(self) -> tuple[str, ...]:
        return tuple(self._osr.associated_images.keys())

    def associated_image(self, name: str, include_identifying: bool = False) -> np.ndarray:
        self._check_associated(name, include_identifying)
        import openslide

        try:
            image = self._osr.associated_images[name]
        except openslide.OpenSlideError as exc:
            raise SlideReadError(f"Cannot read associated image {name!r}: {exc}") from exc
        return _premultiplied_rgba_to_rgb(np.asarray(image.convert("RGBA")))

    def read_region(
        self, l0_xy: tuple[int, int], level: int, lv_size: tuple[int, int]
    ) -> np.ndarray:
        return np.ascontiguousarray(self._read(l0_xy, level, lv_size)[..., :3])

    def _read_pixels(
        self, l0_xy: tuple[int, int], level: int, lv_size: tuple[int, int]
    ) -> np.ndarray:
        """The region's px, RGB first: a crop of a held level (see :meth:`_held`) or a read."""
        self._check_level(level)
        held = self._held(level, lv_size)
        lv_xy = self._exact_lv_xy(l0_xy, level)
        if held is not None and lv_xy is not None:
            return _crop_padded(held, lv_xy, lv_size)
        return self._read(l0_xy, level, lv_size)

    def _held(self, level: int, lv_size: tuple[int, int]) -> np.ndarray | None:
        """The whole level, decoded once and kept, or ``None`` if it is not held.

        A level is held from the first read of at least a quarter of it, if its downsample
        is an integer (its px then sit exactly where OpenSlide's reads put them, so a crop
        is bit-identical to a read) and it fits within :data:`HELD_LEVEL_PIXELS`.
        """
        width, height = self.level_dimensions[level]
        with self._hold_lock:
            if level in self._held_levels:
                return self._held_levels[level]
            wanted = 4 * lv_size[0] * lv_size[1] >= width * height
            fits = self._held_pixels + width * height <= HELD_LEVEL_PIXELS
            if not (wanted and fits and self.level_downsamples[level].is_integer()):
                return None
            pixels = self._read((0, 0), level, (width, height))
            pixels.flags.writeable = False
            self._held_levels[level] = pixels
            self._held_pixels += width * height
            return pixels

    def _read(self, l0_xy: tuple[int, int], level: int, lv_size: tuple[int, int]) -> np.ndarray:
        """The region's px, RGB first: decoded from the file's own tiles where they agree
        with OpenSlide (see :meth:`_tiles_for`), else read by OpenSlide."""
        self._check_level(level)
        if lv_size[0] <= 0 or lv_size[1] <= 0:
            raise SlideReadError(f"Invalid region size {lv_size}; width and height must be > 0")
        lv_xy = self._exact_lv_xy(l0_xy, level)
        if lv_xy is not None and (tiles := self._tiles_for(level)) is not None:
            try:
                return tiles.read(level, lv_xy, lv_size)
            except (RuntimeError, ValueError, OSError):
                pass  # a tile that does not decode here: OpenSlide reads it or says why
        return self._read_openslide(l0_xy, level, lv_size)

    def _exact_lv_xy(self, l0_xy: tuple[int, int], level: int) -> tuple[int, int] | None:
        """The level px at ``l0_xy``, if it is a whole px of an integer downsample.

        Only there does OpenSlide read the level's own px: elsewhere it shifts them by a
        fraction of a px, resampling.
        """
        downsample = self.level_downsamples[level]
        l0_x, l0_y = int(l0_xy[0]), int(l0_xy[1])
        step = int(downsample)
        if step != downsample or l0_x % step or l0_y % step:
            return None
        return l0_x // step, l0_y // step

    def _tiles_for(self, level: int) -> _TiffTiles | None:
        """The file's tiles, if ``level`` is read from them.

        A level of an Aperio or generic tiled TIFF is, once its most detailed tile has
        decoded to exactly OpenSlide's px (checked once per level, on first use).
        """
        with self._tiles_lock:
            if level not in self._tiles_agree:
                self._tiles_agree[level] = self._check_tiles(level)
            return self._tiles if self._tiles_agree[level] else None

    def _check_tiles(self, level: int) -> bool:
        """Whether the level's most detailed tile decodes to OpenSlide's px, bit for bit."""
        if not self._tiles_opened and self.vendor in _TILED_TIFF_VENDORS:
            self._tiles = _TiffTiles.open(self.path, self.level_dimensions)
        self._tiles_opened = True
        tiles = self._tiles
        if tiles is None or not tiles.has_level(level):
            return False
        lv_box = tiles.most_detailed_tile(level)
        downsample = int(self.level_downsamples[level])
        l0_xy = (lv_box[0] * downsample, lv_box[1] * downsample)
        try:
            decoded = tiles.read(level, lv_box[:2], lv_box[2:])
        except (RuntimeError, ValueError, OSError):
            return False
        reference = self._read_openslide(l0_xy, level, lv_box[2:])
        return bool(np.array_equal(decoded, reference[..., :3]))

    def _read_openslide(
        self, l0_xy: tuple[int, int], level: int, lv_size: tuple[int, int]
    ) -> np.ndarray:
        """The region as RGBA with its RGB composited over white (no copy when opaque)."""
        import openslide

        try:
            image = self._osr.read_region((int(l0_xy[0]), int(l0_xy[1])), level, lv_size)
        except openslide.OpenSlideError as exc:
            raise SlideReadError(
                f"Cannot read pixels at l0 {tuple(l0_xy)} level {level}: {exc}"
            ) from exc
        return _over_white(np.asarray(image))

    def close(self) -> None:
        self._osr.close()
        if self._tiles is not None:
            self._tiles.close()


class _TiffTiles:
    """Regions of a tiled TIFF's pyramid levels, from its tiles decoded by imagecodecs.

    OpenSlide paints every tile through cairo, which costs several times the decoding
    itself; decoding a plain tiled TIFF's tiles directly gives the same px 3-4 times faster.
    Only levels stored as plain RGB tiles qualify (8-bit, interleaved, no missing tile).
    """

    def __init__(self, tiff: tifffile.TiffFile, pages: dict[int, tifffile.TiffPage]) -> None:
        self._tiff = tiff
        self._pages = pages
        self._file_lock = threading.Lock()
        # imagecodecs decodes without the GIL: the tiles of a read are decoded side by side.
        self._decoders = ThreadPoolExecutor(
            max_workers=min(4, os.cpu_count() or 1), thread_name_prefix="wsiviewer-tiles"
        )

    @classmethod
    def open(cls, path: Path, level_dimensions: Sequence[tuple[int, int]]) -> _TiffTiles | None:
        """The tiles of the levels of ``path`` (matched by size), or ``None`` if it has none."""
        import tifffile

        try:
            tiff = tifffile.TiffFile(path)
        except (tifffile.TiffFileError, ValueError, OSError):
            return None
        by_size: dict[tuple[int, int], tifffile.TiffPage] = {}
        for page in tiff.pages:
            if isinstance(page, tifffile.TiffPage) and _plain_rgb_tiles(page):
                by_size.setdefault((page.imagewidth, page.imagelength), page)
        pages = {
            level: by_size[size] for level, size in enumerate(level_dimensions) if size in by_size
        }
        if not pages:
            tiff.close()
            return None
        return cls(tiff, pages)

    def has_level(self, level: int) -> bool:
        return level in self._pages

    def most_detailed_tile(self, level: int) -> tuple[int, int, int, int]:
        """``(x, y, width, height)`` of the level's tile with the most compressed bytes.

        The most detailed tile is the one where two decoders' differences would show: on
        blank glass any two agree.
        """
        page = self._pages[level]
        tile_w, tile_h = page.tilewidth, page.tilelength
        index = int(np.argmax(page.databytecounts))
        tiles_across = -(-page.imagewidth // tile_w)
        x, y = index % tiles_across * tile_w, index // tiles_across * tile_h
        return x, y, min(tile_w, page.imagewidth - x), min(tile_h, page.imagelength - y)

    def read(self, level: int, lv_xy: tuple[int, int], lv_size: tuple[int, int]) -> np.ndarray:
        """``(height, width, 3) uint8`` px of the box, white past the level's edges.

        Raises ``RuntimeError`` or ``ValueError`` (imagecodecs, tifffile) when a tile does
        not decode.
        """
        page = self._pages[level]
        tile_w, tile_h = page.tilewidth, page.tilelength
        (x0, y0), (width, height) = lv_xy, lv_size
        x_lo, y_lo = max(x0, 0), max(y0, 0)
        x_hi, y_hi = min(x0 + width, page.imagewidth), min(y0 + height, page.imagelength)
        if (x_lo, y_lo, x_hi, y_hi) == (x0, y0, x0 + width, y0 + height):
            out = np.empty((height, width, 3), dtype=np.uint8)
        else:
            out = np.full((height, width, 3), 255, dtype=np.uint8)
        tiles_across = -(-page.imagewidth // tile_w)
        origins = [
            (tile_x, tile_y)
            for tile_y in range(y_lo // tile_h * tile_h, y_hi, tile_h)
            for tile_x in range(x_lo // tile_w * tile_w, x_hi, tile_w)
        ]
        indices = [tile_y // tile_h * tiles_across + tile_x // tile_w for tile_x, tile_y in origins]
        tiles = self._decoders.map(lambda index: self._tile(level, index), indices)
        for (tile_x, tile_y), tile in zip(origins, tiles, strict=True):
            cut_x0, cut_x1 = max(x_lo, tile_x), min(x_hi, tile_x + tile_w)
            cut_y0, cut_y1 = max(y_lo, tile_y), min(y_hi, tile_y + tile_h)
            out[cut_y0 - y0 : cut_y1 - y0, cut_x0 - x0 : cut_x1 - x0] = tile[
                cut_y0 - tile_y : cut_y1 - tile_y, cut_x0 - tile_x : cut_x1 - tile_x
            ]
        return out

    def _tile(self, level: int, index: int) -> np.ndarray:
        page = self._pages[level]
        with self._file_lock:
            handle = self._tiff.filehandle
            handle.seek(page.dataoffsets[index])
            data = handle.read(page.databytecounts[index])
        tile, _, _ = page.decode(data, index, jpegtables=page.jpegtables)
        return np.asarray(tile).reshape(page.tilelength, page.tilewidth, 3)

    def close(self) -> None:
        self._decoders.shutdown()
        self._tiff.close()


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


class ArraySource(Slide):
    """An in-memory pyramid of ``(H, W, 3) uint8`` arrays (level 0 first).

    Coarser levels are built by area-averaging level 0 when only level 0 is given.
    """

    def __init__(
        self,
        level0: np.ndarray,
        *,
        mpp: float | None = None,
        downsamples: Sequence[int] = (1,),
        objective_power: float | None = None,
        vendor: str = "array",
        properties: Mapping[str, str] | None = None,
    ) -> None:
        from wsiviewer.core.slides.resample import block_mean

        if level0.ndim != 3 or level0.shape[2] != 3 or level0.dtype != np.uint8:
            raise SlideOpenError(
                f"Array slide must be (H, W, 3) uint8, got {level0.shape} {level0.dtype}"
            )
        if list(downsamples)[:1] != [1] or sorted(downsamples) != list(downsamples):
            raise SlideOpenError(f"Downsamples must start at 1 and increase, got {downsamples}")
        self._levels = [level0] + [block_mean(level0, int(d)) for d in list(downsamples)[1:]]
        self.level_dimensions = tuple((lv.shape[1], lv.shape[0]) for lv in self._levels)
        self.level_downsamples = tuple(float(d) for d in downsamples)
        self.vendor = vendor
        self.objective_power = objective_power
        self._metadata_mpp = plausible_mpp(mpp)
        self._properties = dict(properties or {})
        digest = hashlib.sha256()
        digest.update(np.asarray(level0.shape).tobytes())
        digest.update(np.ascontiguousarray(level0).data)
        self.identity = digest.hexdigest()

    @property
    def associated_image_names(self) -> tuple[str, ...]:
        return ()

    def associated_image(self, name: str, include_identifying: bool = False) -> np.ndarray:
        self._check_associated(name, include_identifying)
        raise AssertionError("unreachable: array slides have no associated images")

    def read_region(
        self, l0_xy: tuple[int, int], level: int, lv_size: tuple[int, int]
    ) -> np.ndarray:
        self._check_level(level)
        width, height = lv_size
        if width <= 0 or height <= 0:
            raise SlideReadError(f"Invalid region size {lv_size}; width and height must be > 0")
        downsample = self.level_downsamples[level]
        lv_xy = (math.floor(l0_xy[0] / downsample), math.floor(l0_xy[1] / downsample))
        return _crop_padded(self._levels[level], lv_xy, lv_size).copy()


def open_slide(path: str | Path) -> Slide:
    """Open a slide file with OpenSlide.

    Raises
    ------
    SlideOpenError
        If the file is missing, a folder, or not a format OpenSlide can open.
    """
    return OpenSlideSource(path)


def _float_or_none(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return None


def _file_hash(path: Path, limit: int = 16 * 1024 * 1024) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        digest.update(handle.read(limit))
    return digest.hexdigest()
