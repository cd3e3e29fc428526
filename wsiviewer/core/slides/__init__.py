"""Slides: one interface over every slide file OpenSlide reads and over in-memory arrays.

- :mod:`.base`: the :class:`Slide` interface (level geometry, µm/px, identity, exact
  area-averaged reads of any level-0 box, display reads of a level box averaged in blocks)
  and the privacy rules for properties;
- :mod:`.openslide_source`: :class:`OpenSlideSource`, a slide file read by OpenSlide;
- :mod:`.tiff_tiles`: the direct tile decoder of plain tiled TIFF levels (OpenSlide's px, faster;
  for display, JPEG levels decoded at a half or a quarter size within a stated tolerance);
- :mod:`.array_source`: :class:`ArraySource`, a numpy pyramid (tests, rebuilt IDC patients);
- :mod:`.resample`: exact area averaging and the one block mean.

Frames: ``l0_`` coordinates are level-0 px (the world frame), ``lv_`` a level's own px.
"""

from wsiviewer.core.slides.array_source import ArraySource
from wsiviewer.core.slides.base import Mpp, MppSource, Slide, is_identifying_property
from wsiviewer.core.slides.openslide_source import OpenSlideSource, open_slide

__all__ = [
    "ArraySource",
    "Mpp",
    "MppSource",
    "OpenSlideSource",
    "Slide",
    "is_identifying_property",
    "open_slide",
]
