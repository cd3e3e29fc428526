"""Units: µm/px plausibility, magnification, lengths and areas, and the level choice.

Every conversion between px, µm, mm² and magnification goes through a named helper here (or
through :class:`~wsiviewer.core.analysis.grid.PatchGrid`, which uses them), never through
inline arithmetic, so that a unit bug has one place to live.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

#: µm/px outside this range (e.g. a 72-dpi default TIFF resolution) is implausible: missing.
PLAUSIBLE_MPP_RANGE = (0.05, 50.0)

#: Relative slack when comparing resolutions: metadata µm/px is rarely exact to better than 1%
#: (an Aperio "40x" level 2 is 4.03 µm/px against the model's 4.0), and reading a 4x finer
#: level to close a sub-1% gap would quadruple the pixels read for no visible change in scale.
MPP_TOLERANCE = 0.01

#: µm per mm.
UM_PER_MM = 1000.0

#: The objective magnification of 1 µm/px: a "10x" objective images 1 µm per camera px, so
#: 40x is 0.25 µm/px. It is the convention scanners and viewers use, not an optical law.
MAGNIFICATION_UM = 10.0


def plausible_mpp(value: float | None) -> float | None:
    """``value`` if it is a plausible µm/px (finite, within :data:`PLAUSIBLE_MPP_RANGE`)."""
    if value is None or not math.isfinite(value):
        return None
    low, high = PLAUSIBLE_MPP_RANGE
    return value if low <= value <= high else None


def magnification_from_mpp(mpp: float) -> float:
    """The equivalent objective magnification of ``mpp`` µm/px (40 at 0.25)."""
    return MAGNIFICATION_UM / mpp


def mpp_from_magnification(magnification: float) -> float:
    """The µm/px of an objective magnification (0.25 at 40x)."""
    return MAGNIFICATION_UM / magnification


def um_from_px(length_px: float, mpp: float) -> float:
    """A length of ``length_px`` px at ``mpp`` µm/px, in µm."""
    return length_px * mpp


def px_from_um(length_um: float, mpp: float) -> float:
    """A length of ``length_um`` µm in px at ``mpp`` µm/px."""
    return length_um / mpp


def mm_from_px(length_px: float, mpp: float) -> float:
    """A length of ``length_px`` px at ``mpp`` µm/px, in mm."""
    return length_px * mpp / UM_PER_MM


def mm2_from_px2(area_px2: float, mpp: float) -> float:
    """An area of ``area_px2`` square px at ``mpp`` µm/px, in mm²."""
    return area_px2 * (mpp / UM_PER_MM) ** 2


def px2_from_mm2(area_mm2: float, mpp: float) -> float:
    """An area of ``area_mm2`` mm² in square px at ``mpp`` µm/px."""
    return area_mm2 / (mpp / UM_PER_MM) ** 2


def finest_level_within(
    level_downsamples: Sequence[float], downsample: float, tolerance: float = 1e-6
) -> int:
    """The coarsest level whose downsample is at most ``downsample`` (× ``1 + tolerance``).

    That is the cheapest level that is still at least as fine as asked; level 0 when every
    level is coarser. ``tolerance`` is relative: :data:`MPP_TOLERANCE` when matching a model's
    resolution against metadata, a hair (1e-6) for exact downsamples.
    """
    best = 0
    for level, level_downsample in enumerate(level_downsamples):
        if level_downsample <= downsample * (1 + tolerance):
            best = level
    return best
