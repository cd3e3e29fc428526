"""A slide file read by OpenSlide: every format OpenSlide 4 supports, DICOM included.

Reading is OpenSlide's, with two shortcuts that give the same px faster: a plain tiled TIFF
(Aperio, generic TIFF) has its tiles decoded directly (:mod:`.tiff_tiles`) once one of them
matched OpenSlide's read of it, and a small level that analysis reads again and again (tissue
overview, model patches, overlay) is decoded once and kept. For display only, a JPEG level
read averaged in blocks is decoded at the reduced size, within a stated tolerance.

Transparent px (past a level's edge, missing tiles) are composited over white in one place,
:func:`_over_white`, and a failed read is reported in one place, :meth:`_read_openslide`.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from wsiviewer.core.slides.base import Slide, crop_padded
from wsiviewer.core.slides.tiff_check import tiff_defect
from wsiviewer.core.slides.tiff_tiles import REDUCED_DECODE_TOLERANCE, TiffTiles
from wsiviewer.core.units import plausible_mpp
from wsiviewer.errors import SlideOpenError, SlideReadError, escape_control

if TYPE_CHECKING:
    import openslide

#: Most px of whole levels a slide file keeps decoded (48-64 MiB): analysis reads its model
#: level up to three times (tissue overview, patches, overlay), and a 40x slide of up to
#: ~4 Gpx has a 4 µm/px level this small, so it is decoded once (:meth:`OpenSlideSource._held`).
HELD_LEVEL_PIXELS = 16_000_000


#: OpenSlide vendors whose levels are plain tiled TIFF pages (no overlapping or missing
#: tiles), which can be decoded directly (:class:`TiffTiles`).
_TILED_TIFF_VENDORS = frozenset({"aperio", "generic-tiff"})


def _rgb_over_white(rgba: np.ndarray) -> np.ndarray:
    """OpenSlide's RGBA composited over white, as a contiguous RGB array."""
    return np.ascontiguousarray(_over_white(rgba)[..., :3])


def _over_white(rgba: np.ndarray) -> np.ndarray:
    """OpenSlide's RGBA composited over white, in the first three channels: the one alpha
    handling of wsiviewer.

    openslide-python gives straight (not premultiplied) RGBA: a px is ``rgb * a / 255 +
    255 - a`` over white, rounded. ``rgba`` itself when it is opaque, the usual case: nothing
    is composited or copied. Else only the px that are not opaque (past the level's edge,
    missing tiles, the slide's edge read at a fraction of a level px) are composited; their
    alpha is left as it was.
    """
    alpha = rgba[..., 3]
    if alpha.min() == 255:
        return rgba
    transparent = alpha != 255
    out = rgba.copy()
    if np.count_nonzero(transparent) * 8 < transparent.size:
        rows, cols = np.nonzero(transparent)
        weight = alpha[rows, cols, None].astype(np.uint32)
        colour = out[rows, cols, :3].astype(np.uint32)
        out[rows, cols, :3] = (colour * weight + 255 * (255 - weight) + 127) // 255
        return out
    # Mostly transparent (a level past its tiles, a region past the slide): the same formula
    # over every px, channel by channel, is many times faster than picking px out (an opaque
    # px comes out as it was; every sum fits in 16 bits).
    weight16 = alpha.astype(np.uint16)
    inverse = 255 * (255 - weight16) + 127
    for channel in range(3):
        values = out[..., channel].astype(np.uint16)
        values *= weight16
        values += inverse
        values //= 255
        out[..., channel] = values
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
        name = escape_control(self.path.name)
        try:
            defect = tiff_defect(self.path)
        except OSError as exc:
            raise SlideOpenError(f"Cannot read slide {name}: {escape_control(str(exc))}") from exc
        if defect is not None:
            # Refused before OpenSlide parses it: some such files abort the whole process.
            raise SlideOpenError(f"Cannot open slide {name}: malformed TIFF ({defect})")
        try:
            self._osr = openslide.OpenSlide(self.path)
        except openslide.OpenSlideUnsupportedFormatError as exc:
            reason = openslide_rejection_reason(self.path)
            raise SlideOpenError(
                f"Unsupported slide format: {name} is not a format OpenSlide reads"
                + (f" ({reason})" if reason else "")
            ) from exc
        except (openslide.OpenSlideError, OSError, ValueError) as exc:
            raise SlideOpenError(f"Cannot open slide {name}: {escape_control(str(exc))}") from exc
        try:
            props = _read_properties(self._osr)
        except openslide.OpenSlideError as exc:
            self._osr.close()
            raise SlideOpenError(
                f"Cannot read the properties of slide {name}: {escape_control(str(exc))}"
            ) from exc
        self._properties = props
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
        self._tiles: TiffTiles | None = None
        self._tiles_opened = False
        self._tiles_agree: dict[int, bool] = {}
        self._reduced_agree: dict[tuple[int, int], bool] = {}
        self._tiles_lock = threading.Lock()

    @property
    def associated_image_names(self) -> tuple[str, ...]:
        return tuple(self._osr.associated_images.keys())

    def associated_image(self, name: str, include_identifying: bool = False) -> np.ndarray:
        self._check_associated(name, include_identifying)
        import openslide

        try:
            image = self._osr.associated_images[name]
            rgba = np.asarray(image.convert("RGBA"))
        except (openslide.OpenSlideError, KeyError, OSError, ValueError) as exc:
            # KeyError: a name with bytes that are not UTF-8 cannot be looked up again.
            raise SlideReadError(
                f"Cannot read associated image {escape_control(repr(name))}: "
                f"{escape_control(str(exc))}"
            ) from exc
        return _rgb_over_white(rgba)

    def level_tile_size(self, level: int) -> tuple[int, int] | None:
        """OpenSlide's ``openslide.level[N].tile-width`` and ``-height``, if it gives them."""
        self._check_level(level)
        width = _int_or_none(self._properties.get(f"openslide.level[{level}].tile-width"))
        height = _int_or_none(self._properties.get(f"openslide.level[{level}].tile-height"))
        if width is None or height is None or not (0 < width <= 65536 and 0 < height <= 65536):
            return None
        return width, height

    def read_region(
        self, l0_xy: tuple[int, int], level: int, lv_size: tuple[int, int]
    ) -> np.ndarray:
        return np.ascontiguousarray(self._read(l0_xy, level, lv_size)[..., :3])

    def read_display(
        self,
        l0_xy: tuple[int, int],
        level: int,
        lv_size: tuple[int, int],
        reduction: int = 1,
    ) -> np.ndarray:
        """:meth:`Slide.read_display`; a reduced read of a JPEG level of a tiled TIFF decodes
        its tiles at the reduced size (:meth:`TiffTiles.read`), within
        :data:`~wsiviewer.core.slides.tiff_tiles.REDUCED_DECODE_TOLERANCE` of the exact
        block mean, once the level's most detailed tile came within it."""
        self._check_level(level)
        self._check_size(lv_size)
        self._check_reduction(reduction)
        lv_xy = self._exact_lv_xy(l0_xy, level)
        if (
            reduction > 1
            and lv_xy is not None
            and level not in self._held_levels  # a held level is averaged exactly, as fast
            and (tiles := self._reduced_tiles_for(level, reduction)) is not None
        ):
            try:
                return tiles.read(level, lv_xy, lv_size, reduction)
            except (RuntimeError, ValueError, OSError):
                pass  # a box it cannot serve, or a tile that does not decode: read exactly
        return super().read_display(l0_xy, level, lv_size, reduction)

    def _read_pixels(
        self, l0_xy: tuple[int, int], level: int, lv_size: tuple[int, int]
    ) -> np.ndarray:
        """The region's px, RGB first: a crop of a held level (see :meth:`_held`) or a read."""
        self._check_level(level)
        held = self._held(level, lv_size)
        lv_xy = self._exact_lv_xy(l0_xy, level)
        if held is not None and lv_xy is not None:
            return crop_padded(held, lv_xy, lv_size)
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
        self._check_size(lv_size)
        lv_xy = self._exact_lv_xy(l0_xy, level)
        if lv_xy is not None and (tiles := self._tiles_for(level)) is not None:
            try:
                return tiles.read(level, lv_xy, lv_size)
            except (RuntimeError, ValueError, OSError):
                # A tile it cannot vouch for: OpenSlide reads this level from now on, or says
                # why it cannot.
                with self._tiles_lock:
                    self._tiles_agree[level] = False
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

    def _tiles_for(self, level: int) -> TiffTiles | None:
        """The file's tiles, if ``level`` is read from them.

        A level of an Aperio or generic tiled TIFF is, once its most detailed tile has
        decoded to exactly OpenSlide's px (checked once per level, on first use).
        """
        with self._tiles_lock:
            if level not in self._tiles_agree:
                self._tiles_agree[level] = self._check_tiles(level)
            return self._tiles if self._tiles_agree[level] else None

    def _reduced_tiles_for(self, level: int, reduction: int) -> TiffTiles | None:
        """The file's tiles, if ``level`` is read from them decoded at ``1 / reduction`` size.

        It is, once its most detailed tile decoded so came within
        :data:`~wsiviewer.core.slides.tiff_tiles.REDUCED_DECODE_TOLERANCE` of the exact block
        mean (checked once per level and reduction, on first use).
        """
        tiles = self._tiles_for(level)
        if tiles is None or not tiles.decodes_reduced(level, reduction):
            return None
        with self._tiles_lock:
            if (level, reduction) not in self._reduced_agree:
                try:
                    difference = tiles.reduced_decode_difference(level, reduction)
                except (RuntimeError, ValueError, OSError):
                    agree = False
                else:
                    agree = difference.within(REDUCED_DECODE_TOLERANCE)
                self._reduced_agree[level, reduction] = agree
            return tiles if self._reduced_agree[level, reduction] else None

    def _check_tiles(self, level: int) -> bool:
        """Whether the level's most detailed tile decodes to OpenSlide's px, bit for bit."""
        if not self._tiles_opened and self.vendor in _TILED_TIFF_VENDORS:
            self._tiles = TiffTiles.open(self.path, self.level_dimensions)
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
                f"Cannot read pixels at l0 {tuple(l0_xy)} level {level}: {escape_control(str(exc))}"
            ) from exc
        return _over_white(np.asarray(image))

    def close(self) -> None:
        self._osr.close()
        if self._tiles is not None:
            self._tiles.close()


def open_slide(path: str | Path) -> Slide:
    """Open a slide file with OpenSlide.

    Raises
    ------
    SlideOpenError
        If the file is missing, a folder, or not a format OpenSlide can open.
    """
    return OpenSlideSource(path)


def _read_properties(osr: openslide.OpenSlide) -> dict[str, str]:
    """Every property of an open slide that can be read, names and values as OpenSlide gives
    them (values with bytes that are not UTF-8 decoded with U+FFFD in their place).

    openslide-python decodes a property *name* the same way, and can then not look that name
    up again (``KeyError``): a crafted Aperio description key with one bad byte would make
    the whole slide unreadable. Such names are skipped; every other property is kept.

    Raises
    ------
    openslide.OpenSlideError
        If OpenSlide itself is in an error state.
    """
    mapping = osr.properties
    properties: dict[str, str] = {}
    for key in list(mapping):
        try:
            properties[key] = mapping[key]
        except KeyError:
            continue  # a name OpenSlide cannot look up again (see above)
    return properties


#: How long the child process that asks OpenSlide why it rejected a file may take.
_REASON_TIMEOUT_S = 10.0

#: OpenSlide's detection messages (``OPENSLIDE_DEBUG=detection``): ``<format>: <reason>``.
_DETECTION_LINE = re.compile(r"OpenSlide-Message: [0-9:.]+: ([a-z0-9-]+): (.*)")


def openslide_rejection_reason(path: Path) -> str | None:
    """Why OpenSlide rejected ``path`` as an unsupported format, in its own words, or ``None``.

    OpenSlide only says "unsupported or missing image file"; its format drivers state their
    reasons only when its detection debugging is on, which is read once when the library
    loads. A short child process opens the file with it on (about 20 ms, only for files that
    failed) and the reason of the driver that matches the file's signature is kept: the TIFF
    parser's or else the generic TIFF or Aperio driver's for a TIFF, the DICOM driver's for a
    DICOM file. A child that crashes or hangs says so; the caller's process does not load the
    file again.
    """
    library = getattr(getattr(_openslide_lowlevel(), "_lib", None), "_name", None)
    if not isinstance(library, str):
        return None
    try:
        with path.open("rb") as handle:
            head = handle.read(132)
    except OSError:
        return None
    script = (
        "import ctypes, sys\n"
        "lib = ctypes.CDLL(sys.argv[1])\n"
        "lib.openslide_open.restype = ctypes.c_void_p\n"
        "lib.openslide_open(sys.argv[2].encode('utf-8', 'surrogateescape'))\n"
    )
    env = {**os.environ, "OPENSLIDE_DEBUG": "detection"}
    try:
        child = subprocess.run(
            [sys.executable, "-I", "-S", "-c", script, library, os.fsdecode(path)],
            capture_output=True,
            timeout=_REASON_TIMEOUT_S,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"OpenSlide did not finish reading the file within {_REASON_TIMEOUT_S:g} s"
    except OSError:
        return None
    if child.returncode < 0:
        return f"OpenSlide crashed reading the file ({_signal_name(-child.returncode)})"
    reasons: dict[str, str] = {}
    warnings: list[str] = []
    for line in child.stderr.decode("utf-8", "replace").splitlines():
        found = _DETECTION_LINE.match(line)
        if found:
            reasons.setdefault(found.group(1), found.group(2).strip())
        elif "WARNING" in line or "CRITICAL" in line:
            warnings.append(line.split("**", 1)[-1].strip(" :"))
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        chosen = ""
        if "tifflike" in reasons:
            chosen = f"TIFF: {reasons['tifflike']}"
        for driver in ("generic-tiff", "aperio"):
            if not chosen and reasons.get(driver, "Not ")[:4] != "Not ":
                chosen = f"{driver}: {reasons[driver]}"
    elif head[128:132] == b"DICM" and "dicom" in reasons:
        chosen = f"dicom: {reasons['dicom']}"
    else:
        chosen = ""
    chosen = chosen or (warnings[0] if warnings else "")
    return f"OpenSlide: {escape_control(chosen)}" if chosen else None


def _openslide_lowlevel() -> object:
    import openslide.lowlevel

    return openslide.lowlevel


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _int_or_none(text: str | None) -> int | None:
    try:
        return None if text is None else int(text)
    except ValueError:
        return None


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
