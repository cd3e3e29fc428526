"""Colour maps for the probability heatmap: perceptually uniform and colour-blind safe, with
an alpha ramp so that the tissue stays readable under low probabilities.

The ramp (:func:`ramp_alpha`) makes a cell's opacity grow with its probability up to the
threshold, where it reaches full opacity: P = 0.0002 is invisible, a cell just below the
threshold is almost fully drawn, and every flagged cell (P ≥ threshold) is opaque. The
viewer, the CLI pictures and the report colour the map this one way.

The lookup tables ship as ``resources/colormaps/<name>.csv`` (installed as the package
``wsiviewer.resources``): a comment line, then 256 ``r,g,b`` lines of sRGB 0-255.
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

import numpy as np

#: Maps that ship with wsiviewer; all are perceptually uniform and readable with the common
#: colour-vision deficiencies.
COLORMAP_NAMES = ("viridis", "cividis", "magma", "inferno")

#: The default map: viridis, colour-blind safe and legible in greyscale.
DEFAULT_COLORMAP = "viridis"

_LUT_SIZE = 256

#: The repository's resources folder, for a source tree that was never installed.
_SOURCE_TREE_COLORMAPS = Path(__file__).resolve().parents[3] / "resources" / "colormaps"


def _read_lut_text(name: str) -> str:
    filename = f"{name}.csv"
    try:
        return (resources.files("wsiviewer.resources") / "colormaps" / filename).read_text(
            encoding="utf-8"
        )
    except (ModuleNotFoundError, FileNotFoundError):
        return (_SOURCE_TREE_COLORMAPS / filename).read_text(encoding="utf-8")


@functools.cache
def load_colormap(name: str = DEFAULT_COLORMAP) -> np.ndarray:
    """The ``(256, 3) uint8`` lookup table of a named colour map (read-only).

    Raises
    ------
    ValueError
        If ``name`` is not one of :data:`COLORMAP_NAMES` or its file is malformed.
    """
    if name not in COLORMAP_NAMES:
        raise ValueError(f"Unknown colour map {name!r}; choose one of {list(COLORMAP_NAMES)}")
    try:
        text = _read_lut_text(name)
    except OSError as exc:
        raise ValueError(f"Cannot read colour map {name!r}: {exc}") from exc
    rows = [
        line.split(",")
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    try:
        lut = np.array(rows, dtype=np.int64)
    except ValueError as exc:
        raise ValueError(f"Colour map {name!r} has a malformed line: {exc}") from exc
    if lut.shape != (_LUT_SIZE, 3) or lut.min() < 0 or lut.max() > 255:
        raise ValueError(
            f"Colour map {name!r} must have {_LUT_SIZE} r,g,b rows of 0-255, got {lut.shape}"
        )
    lut = lut.astype(np.uint8)
    lut.setflags(write=False)
    return lut


#: Exponent of the alpha ramp: opacity ``(P / threshold) ** RAMP_EXPONENT`` below the
#: threshold. 2 keeps the low probabilities that tint a whole section nearly invisible (a
#: tenth of the threshold: 1 % opacity) while cells approaching it show (half: 25 %).
RAMP_EXPONENT = 2.0


def ramp_alpha(values: np.ndarray, threshold: float) -> np.ndarray:
    """Opacity in [0, 1] of each value: ``(P / threshold) ** 2`` below the threshold, 1 at
    or above it, 0 for NaN. A threshold of 0 shows every scored value fully."""
    values = np.asarray(values, dtype=np.float64)
    scored = np.nan_to_num(np.clip(values, 0.0, 1.0), nan=0.0)
    if threshold <= 0:
        ramp = np.ones_like(scored)
    else:
        ramp = np.minimum(scored / threshold, 1.0) ** RAMP_EXPONENT
    ramp[np.isnan(values)] = 0.0
    return ramp


def apply_colormap(
    values: np.ndarray,
    name: str = DEFAULT_COLORMAP,
    *,
    alpha: int = 255,
    hide_below: float | None = None,
    ramp_to: float | None = None,
) -> np.ndarray:
    """Colour ``values`` in [0, 1] as ``(..., 4) uint8`` RGBA; NaN is fully transparent.

    Values outside [0, 1] are clipped. ``alpha`` is the opacity of every non-NaN value at or
    above ``ramp_to`` (the threshold): below it the opacity fades with :func:`ramp_alpha`.
    Values below ``hide_below`` are fully transparent.
    """
    if not 0 <= alpha <= 255:
        raise ValueError(f"Alpha {alpha} must be within 0-255")
    lut = load_colormap(name)
    values = np.asarray(values, dtype=np.float64)
    missing = np.isnan(values)
    if hide_below is not None:
        missing |= np.nan_to_num(values, nan=-1.0) < hide_below
    indices = np.rint(np.clip(np.nan_to_num(values, nan=0.0), 0.0, 1.0) * (_LUT_SIZE - 1))
    rgba = np.empty((*values.shape, 4), dtype=np.uint8)
    rgba[..., :3] = lut[indices.astype(np.intp)]
    if ramp_to is None:
        rgba[..., 3] = alpha
    else:
        rgba[..., 3] = np.rint(alpha * ramp_alpha(values, ramp_to)).astype(np.uint8)
    rgba[missing] = 0
    return rgba


def legend_rgba(
    width: int, height: int, threshold: float, name: str = DEFAULT_COLORMAP
) -> np.ndarray:
    """``(height, width, 4) uint8``: the colour map from P = 0 (left) to 1 (right) with the
    opacity of :func:`ramp_alpha`, for a legend drawn over a checkerboard or the slide."""
    values = np.linspace(0.0, 1.0, max(1, width))
    row = apply_colormap(values, name, ramp_to=threshold)
    return np.repeat(row[None, :, :], max(1, height), axis=0)
