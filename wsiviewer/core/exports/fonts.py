"""The typeface of every picture we write: DejaVu Sans, as shipped with matplotlib (a
dependency), which has the µ, × and ≥ our captions use; Pillow's built-in font draws them as
boxes. Pillow's font is the fallback if matplotlib's files are missing."""

from __future__ import annotations

import functools
from pathlib import Path

from PIL import ImageFont


@functools.cache
def _dejavu_path() -> Path | None:
    try:
        import matplotlib
    except ImportError:
        return None
    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    return path if path.is_file() else None


@functools.cache
def picture_font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVu Sans at ``size`` px (Pillow's default font if it cannot be loaded)."""
    path = _dejavu_path()
    if path is not None:
        try:
            return ImageFont.truetype(str(path), size)
        except OSError:
            pass
    return ImageFont.load_default(size=size)
