"""One slide interface over OpenSlide files and in-memory arrays.

Every algorithm in core sees only :class:`Slide`, so the same code runs on a real
OpenSlide-backed file and on a numpy pyramid (tests, rebuilt IDC patients).

Frames: ``l0_`` coordinates are level-0 pixels (the world frame), ``lv_`` are a pyramid
level's own pixels, ``l0 = lv * downsample``. Pixel arrays are ``(H, W, 3) uint8`` RGB.

Reading a file is OpenSlide's, with two shortcuts that give the same px faster: a plain tiled
TIFF (Aperio, generic TIFF) has its tiles decoded directly once one of them matched
OpenSlide's read of it, and a small level that analysis reads again and again (tissue
overview, model patches, overlay) is decoded once and kept. A viewer reads through
:meth:`Slide.read_display`, which may average a level in blocks (zooms between levels).
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

from wsiviewer.core.units import (
    PLAUSIBLE_MPP_RANGE,
    finest_level_within,
    mpp_from_magnification,
    plausible_mpp,
)
from wsiviewer.errors import ResolutionError, SlideReadError, SlideTooLargeError

MppSource = Literal["metadata", "objective-power", "user"]

#: Property keys (matched case-insensitively on the part after the vendor prefix) that can
#: identify a patient, an operator, a case or a device. ``openslide.comment`` and the TIFF
#: ImageDescription repeat Aperio's Filename/User/Date, so they are withheld too. Device
#: serial numbers (``aperio.ScanScope ID``, ``dicom.DeviceSerialNumber``) are identifiers in
#: DICOM's de-identification profile: they tie a slide to one scanner at one site.
_IDENTIFYING_KEY = re.compile(
    r"(filename|user|operator|date|time$|patient|accession|birth|barcode|"
    r"institution|physician|studyid|study_id|studyinstance|seriesinstance|"
    r"imagedescription|comment|label|slideid|slide_id|caseid|case_id|"
    r"serial|scanscope[ _-]?id|scanner[ _-]?id|device[ _-]?id|station)",
    re.IGNORECASE,
)

#: Most level px one read may hold (4 Mpx: 16 MiB of RGBA, ~50 MiB while resampling); larger
#: boxes are read in chunks, which keeps peak memory low at no measurable cost in speed.
READ_PIXEL_BUDGET = 4_000_000
#: Level px per chunk of a box larger than :data:`READ_PIXEL_BUDGET` (64 MiB of RGBA): chunks
#: of whole tiles, large enough that few tiles at their edges are decoded twice.
CHUNK_PIXEL_BUDGET = 16_000_000
#: Most level px one :meth:`Slide.read_l0_box` decodes (a 225,000 px square level, minutes of
#: decoding): a header claiming more is refused rather than read for hours.
MAX_BOX_PIXELS = 50_000_000_000

#: How much coarser than asked a level may be when drawing a picture (:meth:`Slide.display_level`).
DISPLAY_LEVEL_SLACK = 1.5


#: Associated images that show the slide label or the whole glass: withheld by default.
_IDENTIFYING_IMAGES = frozenset({"label", "macro"})


def is_identifying_property(key: str) -> bool:
    """Whether a slide property may identify a patient or operator (DESIGN.md, Privacy)."""
    return _IDENTIFYING_KEY.search(key.rsplit(".", 1)[-1]) is not None


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
        """Best available µm/px: metadata first, then from the objective power (10 / power)."""
        if self.metadata_mpp is not None:
            return Mpp(self.metadata_mpp, "metadata")
        if self.objective_power:
            guess = plausible_mpp(mpp_from_magnification(self.objective_power))
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
                "Slide has no usable µm/px in its metadata and no objective power; give the "
                "scan resolution in µm/px (e.g. 0.25 for 40x, 0.5 for 20x)"
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

    def _check_size(self, lv_size: tuple[int, int]) -> None:
        if lv_size[0] <= 0 or lv_size[1] <= 0:
            raise SlideReadError(f"Invalid region size {lv_size}; width and height must be > 0")

    @abstractmethod
    def read_region(
        self, l0_xy: tuple[int, int], level: int, lv_size: tuple[int, int]
    ) -> np.ndarray:
        """Read ``lv_size = (width, height)`` level px whose top-left is ``l0_xy``.

        Returns ``(height, width, 3) uint8`` RGB; pixels outside the slide are white (255).
        """

    def read_display(
        self,
        l0_xy: tuple[int, int],
        level: int,
        lv_size: tuple[int, int],
        reduction: int = 1,
    ) -> np.ndarray:
        """Read ``lv_size`` level px at ``l0_xy`` for display, averaged in ``reduction`` x
        ``reduction`` blocks: what a viewer paints between pyramid levels.

        Returns ``(ceil(height / reduction), ceil(width / reduction), 3) uint8`` RGB; a
        partial last block (a box that is not a whole number of blocks) is the mean of the px
        it has. With ``reduction`` 1 the px are exactly :meth:`read_region`'s. Above 1 this is
        the exact block mean (:func:`~wsiviewer.core.slides.resample.block_mean`, rounded
        half up) of them, unless a source says otherwise: a file source may decode JPEG tiles
        at the reduced size, within
        :data:`~wsiviewer.core.slides.tiff_tiles.REDUCED_DECODE_TOLERANCE` of it.

        Raises
        ------
        SlideReadError
            For a bad level, size or reduction, or px that cannot be read.
        """
        from wsiviewer.core.slides.resample import block_mean

        self._check_size(lv_size)
        self._check_reduction(reduction)
        pixels = self._read_pixels(l0_xy, level, lv_size)
        if reduction > 1:
            pixels = block_mean(pixels, reduction, edge="partial")
        # The caller's own RGB: never a view of a level the source keeps decoded.
        return np.array(pixels[..., :3], order="C")

    def _check_reduction(self, reduction: int) -> None:
        if isinstance(reduction, bool) or not isinstance(reduction, int) or reduction < 1:
            raise SlideReadError(f"Invalid reduction {reduction!r}; expected a whole number >= 1")

    def level_tile_size(self, level: int) -> tuple[int, int] | None:
        """``(width, height)`` of the tiles a level is stored in, if the source knows: reads
        of whole tiles decode each tile once."""
        return None

    def best_level_for_downsample(self, downsample: float) -> int:
        """The coarsest level whose downsample is at most ``downsample`` (tolerance 1e-6)."""
        return finest_level_within(self.level_downsamples, downsample)

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
        l0_x, l0_y, l0_w, l0_h = l0_box
        out_w, out_h = out_size
        if level is None:
            level = self.best_level_for_downsample(min(l0_w / out_w, l0_h / out_h))
        self._check_level(level)
        level_downsample = self.level_downsamples[level]
        box_w, box_h = l0_w / level_downsample, l0_h / level_downsample
        if box_w * box_h <= READ_PIXEL_BUDGET:
            return self._read_l0_box_once(l0_box, out_size, level)
        if box_w * box_h > MAX_BOX_PIXELS or box_w * box_h / (out_w * out_h) > CHUNK_PIXEL_BUDGET:
            raise SlideTooLargeError(
                f"Reading a {box_w:,.0f} × {box_h:,.0f} px box of level {level} into a "
                f"{out_w} × {out_h} px picture would decode {box_w * box_h:,.0f} px; at most "
                f"{MAX_BOX_PIXELS:,} are read at once"
            )
        # A big box is read in chunks of whole output px, each about a budget of level px
        # and, where the level's tile size is known, of whole tile rows or tiles: memory stays
        # bounded and few tiles are decoded twice.
        rows_per, cols_per = _chunk_shape(
            (box_w, box_h), out_size, self.level_tile_size(level) or (1, 1)
        )
        l0_per_col, l0_per_row = l0_w / out_w, l0_h / out_h
        out = np.empty((out_h, out_w, 3), dtype=np.uint8)
        for row in range(0, out_h, rows_per):
            rows = min(rows_per, out_h - row)
            for col in range(0, out_w, cols_per):
                cols = min(cols_per, out_w - col)
                out[row : row + rows, col : col + cols] = self._read_l0_box_once(
                    (
                        l0_x + col * l0_per_col,
                        l0_y + row * l0_per_row,
                        cols * l0_per_col,
                        rows * l0_per_row,
                    ),
                    (cols, rows),
                    level,
                )
        return out

    def _read_l0_box_once(
        self, l0_box: tuple[float, float, float, float], out_size: tuple[int, int], level: int
    ) -> np.ndarray:
        """:meth:`read_l0_box` of ``level`` in one read."""
        from wsiviewer.core.slides.resample import area_resample

        l0_x, l0_y, l0_w, l0_h = l0_box
        level_downsample = self.level_downsamples[level]
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


def _chunk_shape(
    box_size: tuple[float, float], out_size: tuple[int, int], tile: tuple[int, int]
) -> tuple[int, int]:
    """``(output rows, output columns)`` per chunk of a big :meth:`Slide.read_l0_box`.

    A chunk covers about :data:`CHUNK_PIXEL_BUDGET` level px: full-width strips of whole tile
    rows when a tile row fits, else blocks of whole tiles, never less than one output px.
    """
    (box_w, box_h), (out_w, out_h), (tile_w, tile_h) = box_size, out_size, tile
    if box_w * tile_h <= CHUNK_PIXEL_BUDGET:
        chunk_w = box_w
        chunk_h = max(float(tile_h), (CHUNK_PIXEL_BUDGET / box_w) // tile_h * tile_h)
    else:
        chunk_h = float(max(tile_h, int(math.sqrt(CHUNK_PIXEL_BUDGET)) // tile_h * tile_h))
        chunk_w = float(max(tile_w, int(CHUNK_PIXEL_BUDGET / chunk_h) // tile_w * tile_w))
    rows = max(1, min(out_h, math.floor(chunk_h / (box_h / out_h))))
    cols = max(1, min(out_w, math.floor(chunk_w / (box_w / out_w))))
    return rows, cols


def crop_padded(pixels: np.ndarray, lv_xy: tuple[int, int], lv_size: tuple[int, int]) -> np.ndarray:
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
