"""Exact area-averaging resampling of pixel arrays, and the one block mean."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    from scipy import sparse


def _area_weights(origin: float, extent: float, n_in: int, n_out: int) -> sparse.csr_matrix:
    """Sparse ``(n_out, n_in)`` matrix averaging input px over ``n_out`` equal output bins.

    Output bin ``j`` covers input coordinates ``[origin + j*step, origin + (j+1)*step)`` with
    ``step = extent / n_out``; input px ``i`` covers ``[i, i+1)``. Entry ``(j, i)`` is their
    overlap divided by ``step``: the exact area average of constant unit-square px. Parts of a
    bin outside ``[0, n_in)`` get no weight (callers read the white padding they need).
    """
    # Imported here: the block mean (the viewer's) needs no scipy, whose import is slow.
    from scipy import sparse

    step = extent / n_out
    edges = origin + step * np.arange(n_out + 1)
    first = np.floor(edges[:-1]).astype(np.intp)
    span = int(np.ceil(step)) + 1
    inputs = first[:, None] + np.arange(span)[None, :]
    overlap = np.minimum(edges[1:, None], inputs + 1) - np.maximum(edges[:-1, None], inputs)
    valid = (overlap > 0) & (inputs >= 0) & (inputs < n_in)
    rows = np.broadcast_to(np.arange(n_out)[:, None], inputs.shape)[valid]
    weights = (overlap[valid] / step).astype(np.float32)
    return sparse.csr_matrix((weights, (rows, inputs[valid])), shape=(n_out, n_in))


def area_resample(
    pixels: np.ndarray,
    *,
    lv_origin: tuple[float, float],
    lv_extent: tuple[float, float],
    out_size: tuple[int, int],
    channels: int | None = None,
) -> np.ndarray:
    """Area-average the box ``lv_origin + lv_extent`` (x, y in input px) to ``out_size``.

    The box may have fractional edges; pixels are treated as constant squares, so the result
    is the exact mean over each output pixel's footprint. When the box maps input pixels
    one-to-one onto output pixels the result is a view of the input (bit-exact, no copy).
    Only the first ``channels`` channels are returned (default all): RGBA read for its RGB is
    resampled without first copying the RGB out.
    """
    wanted = slice(None, channels)
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
        return pixels[iy : iy + out_h, ix : ix + out_w, wanted]
    factor_x, factor_y = extent_x / out_w, extent_y / out_h
    if (
        factor_x == factor_y
        and float(factor_x).is_integer()
        and float(x0).is_integer()
        and float(y0).is_integer()
    ):
        # Whole input pixels per output pixel: a block mean, several times faster. Summing
        # every channel of contiguous px is faster than summing a strided few.
        k, ix, iy = int(factor_x), int(x0), int(y0)
        block = pixels[iy : iy + out_h * k, ix : ix + out_w * k]
        if block.shape[:2] == (out_h * k, out_w * k):
            return block_mean(block, k)[..., wanted]
    # Separable sparse products: ~(step + 1) weights per output px, each axis in one pass.
    # One channel plane at a time, so the transpose between the passes moves single floats,
    # several times faster than moving interleaved px.
    values = pixels[..., wanted]
    n_in_y, n_in_x, n_channels = values.shape
    weights_y = _area_weights(y0, extent_y, n_in_y, out_h)
    weights_x = _area_weights(x0, extent_x, n_in_x, out_w)
    out = np.empty((out_h, out_w, n_channels), dtype=np.float32)
    for channel in range(n_channels):
        rows = weights_y @ values[..., channel].astype(np.float32)
        out[..., channel] = (weights_x @ np.ascontiguousarray(rows.T)).T
    out += 0.5  # round half up, as block_mean
    return np.clip(np.floor(out, out=out), 0, 255, out=out).astype(np.uint8)


#: How :func:`block_mean` treats a block that runs past the array's edge.
EdgeMode = Literal["white", "partial", "replicate"]


def block_mean(pixels: np.ndarray, factor: int, *, edge: EdgeMode = "white") -> np.ndarray:
    """Downsample ``(H, W)`` or ``(H, W, C)`` by an integer ``factor``: each output px is the
    mean of a ``factor`` x ``factor`` block. The one block mean of wsiviewer.

    The result is ``ceil(H / factor) x ceil(W / factor)``. A block that runs past the edge is
    padded with white (``"white"``: past a slide's edge is glass, as :meth:`Slide.read_l0_box`
    reads it), averaged over the px it has (``"partial"``: pyramid levels), or padded with the
    edge px (``"replicate"``: smooth float planes). Integer input is rounded half up, in
    integers; float input gives the float mean in its own dtype.
    """
    if factor == 1:
        return pixels
    if factor < 1:
        raise ValueError(f"Block mean factor {factor} must be a positive integer")
    height, width = pixels.shape[:2]
    pad_h, pad_w = -height % factor, -width % factor
    if pad_h or pad_w:
        pad = ((0, pad_h), (0, pad_w)) + ((0, 0),) * (pixels.ndim - 2)
        if edge == "replicate":
            pixels = np.pad(pixels, pad, mode="edge")
        else:
            pixels = np.pad(pixels, pad, constant_values=255 if edge == "white" else 0)
    n = factor * factor
    integer = np.issubdtype(pixels.dtype, np.integer)
    if integer:
        # uint16 holds the sums of 8-bit blocks up to 16 x 16 px: half the memory traffic
        # of uint32.
        fits = pixels.dtype.itemsize == 1 and n * 255 + n // 2 <= np.iinfo(np.uint16).max
        dtype: type[np.integer] | type[np.floating] = np.uint16 if fits else np.int64
    else:
        dtype = pixels.dtype.type
    # Rows first: those adds read whole rows, so the image is read once (k² strided adds
    # read every cache line k² times); the column adds then work on a k times smaller array.
    sums = pixels[0::factor].astype(dtype)
    for dy in range(1, factor):
        np.add(sums, pixels[dy::factor], out=sums)
    block_sums = sums[:, 0::factor].copy()
    for dx in range(1, factor):
        np.add(block_sums, sums[:, dx::factor], out=block_sums)
    counts: int | np.ndarray = n
    if edge == "partial" and (pad_h or pad_w):
        row_counts = np.minimum(factor, height - factor * np.arange(block_sums.shape[0]))
        col_counts = np.minimum(factor, width - factor * np.arange(block_sums.shape[1]))
        counts = np.outer(row_counts, col_counts).reshape(
            block_sums.shape[:2] + (1,) * (pixels.ndim - 2)
        )
    if integer:
        # Round half up, in integers: (sum + n/2) // n.
        return ((block_sums + counts // 2) // counts).astype(pixels.dtype)
    return (block_sums / counts).astype(pixels.dtype, copy=False)
