"""Exact area-averaging resampling of ``(H, W, C)`` pixel arrays."""

from __future__ import annotations

import numpy as np


def _area_mean_along(
    data: np.ndarray, axis: int, origin: float, extent: float, n_out: int
) -> np.ndarray:
    """Mean of ``data`` over ``n_out`` equal bins of ``[origin, origin + extent)`` on ``axis``.

    Pixels are constant unit squares, so the integral up to a fractional position ``t`` is the
    linear interpolation of the cumulative sum at ``t``: exact, and O(n) in the input size.
    """
    n_in = data.shape[axis]
    cumulative = np.concatenate(
        [np.zeros_like(np.take(data, [0], axis=axis)), np.cumsum(data, axis=axis)], axis=axis
    )
    edges = np.clip(origin + (extent / n_out) * np.arange(n_out + 1), 0.0, float(n_in))
    index = np.minimum(np.floor(edges).astype(np.intp), n_in - 1)
    frac = edges - index
    shape = [1] * data.ndim
    shape[axis] = n_out + 1
    frac = frac.reshape(shape)
    below = np.take(cumulative, index, axis=axis)
    above = np.take(cumulative, index + 1, axis=axis)
    integral = below + frac * (above - below)
    sums = np.diff(integral, axis=axis)
    return sums / (extent / n_out)


def area_resample(
    pixels: np.ndarray,
    *,
    lv_origin: tuple[float, float],
    lv_extent: tuple[float, float],
    out_size: tuple[int, int],
) -> np.ndarray:
    """Area-average the box ``lv_origin + lv_extent`` (x, y in input px) to ``out_size``.

    The box may have fractional edges; pixels are treated as constant squares, so the result
    is the exact mean over each output pixel's footprint. When the box maps input pixels
    one-to-one onto output pixels the input is returned unchanged (bit-exact).
    """
    out_w, out_h = out_size
    x0, y0 = lv_origin
    extent_x, extent_y = lv_extent
    if (
        extent_x == out_w
        and extent_y == out_h
        and float(x0).is_integer()
        and float(y0).is_integer()
    ):
        ix, iy = int(x0), int(y0)
        return np.ascontiguousarray(pixels[iy : iy + out_h, ix : ix + out_w])
    data = pixels.astype(np.float64)
    out = _area_mean_along(data, 0, y0, extent_y, out_h)
    out = _area_mean_along(out, 1, x0, extent_x, out_w)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def block_mean(pixels: np.ndarray, factor: int) -> np.ndarray:
    """Downsample by an integer ``factor`` with the mean of each block (edges padded white)."""
    if factor == 1:
        return pixels
    height, width = pixels.shape[:2]
    pad_h, pad_w = -height % factor, -width % factor
    if pad_h or pad_w:
        pixels = np.pad(pixels, ((0, pad_h), (0, pad_w), (0, 0)), constant_values=255)
    h2, w2 = pixels.shape[0] // factor, pixels.shape[1] // factor
    blocks = pixels.reshape(h2, factor, w2, factor, -1).astype(np.float32)
    return np.rint(blocks.mean(axis=(1, 3))).astype(np.uint8)
