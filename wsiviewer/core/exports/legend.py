"""The legend of every heatmap picture: a colour bar with the alpha ramp, and a scale bar.

The viewer draws the same two things on screen (its scale bar uses :func:`nice_scale_length`
and :func:`format_length_um` too), so a picture saved by the CLI and a screenshot read alike.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from wsiviewer.core.exports.colormaps import DEFAULT_COLORMAP, legend_rgba
from wsiviewer.core.exports.fonts import picture_font
from wsiviewer.core.review.wording import format_threshold

#: Least width of a legend band, px: narrower pictures are widened (transparent or white).
LEGEND_MIN_WIDTH = 420
#: Height of a legend band, px.
LEGEND_HEIGHT = 64
#: Longest scale bar, as a fraction of the band's width.
SCALE_BAR_FRACTION = 0.3
#: Side of a checkerboard square behind the colour bar (shows the ramp's transparency).
CHECKER_PX = 6


def nice_scale_length(max_um: float) -> float:
    """The largest 1, 2 or 5 × 10^k µm not longer than ``max_um``."""
    if max_um <= 0 or not math.isfinite(max_um):
        return 0.0
    exponent = math.floor(math.log10(max_um))
    for mantissa in (5.0, 2.0, 1.0):
        value = mantissa * 10.0**exponent
        if value <= max_um:
            return value
    return 10.0 ** (exponent - 1) * 5.0


def format_length_um(um: float) -> str:
    """``250 µm``, ``1.5 mm``."""
    if um >= 1000:
        return f"{um / 1000:g} mm"
    return f"{um:g} µm"


def legend_scale(width: int) -> float:
    """How much larger than at :data:`LEGEND_MIN_WIDTH` a band of ``width`` px draws."""
    return max(1.0, width / 1400)


def legend_height(width: int) -> int:
    """The height of a legend band of ``width`` px."""
    return round(LEGEND_HEIGHT * legend_scale(width))


def checkerboard(height: int, width: int, square: int = CHECKER_PX) -> np.ndarray:
    """``(height, width, 3) uint8`` light grey checks: what "transparent" looks like."""
    rows, cols = np.indices((height, width))
    light = ((rows // square + cols // square) % 2).astype(bool)
    board = np.where(light[..., None], np.uint8(255), np.uint8(204))
    return np.repeat(board, 3, axis=2).astype(np.uint8)


def over(background: np.ndarray, rgba: np.ndarray) -> np.ndarray:
    """``rgba`` composited over an RGB ``background`` of the same size (straight alpha)."""
    weight = rgba[..., 3:].astype(np.float32) / 255.0
    blended = background.astype(np.float32) * (1 - weight) + rgba[..., :3] * weight
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def legend_band(
    width: int,
    *,
    threshold: float,
    um_per_px: float | None,
    colormap: str = DEFAULT_COLORMAP,
    height: int | None = None,
) -> np.ndarray:
    """``(height, width, 3) uint8`` on white: the colour bar from P = 0 to 1 over a
    checkerboard (its fading is the heatmap's alpha ramp), a mark at the threshold, the words
    "P(IDC), model output" and, when ``um_per_px`` (µm per picture px) is known, a scale bar.
    """
    width = max(int(width), 1)
    # Text and bars grow with the picture, so a 2000 px map's legend reads like a 400 px one's.
    scale = legend_scale(width)
    height = legend_height(width) if height is None else height
    band = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(band)
    font = picture_font(round(13 * scale))
    margin = round(10 * scale)
    bar_width = max(60, round(width * (1 - SCALE_BAR_FRACTION)) - 3 * margin)
    if um_per_px is None:
        bar_width = width - 2 * margin
    bar_top, bar_height = round(8 * scale), round(14 * scale)
    bar = over(
        checkerboard(bar_height, bar_width), legend_rgba(bar_width, bar_height, threshold, colormap)
    )
    band.paste(Image.fromarray(bar), (margin, bar_top))
    draw.rectangle(
        (margin - 1, bar_top - 1, margin + bar_width, bar_top + bar_height), outline=(80, 80, 80)
    )
    text_y = bar_top + bar_height + round(4 * scale)
    for tick in (0.0, 0.5, 1.0):
        x = margin + tick * (bar_width - 1)
        draw.line(
            (x, bar_top + bar_height, x, bar_top + bar_height + round(3 * scale)), fill=(0, 0, 0)
        )
        anchor = {0.0: "la", 0.5: "ma", 1.0: "ra"}[tick]
        draw.text((x, text_y), f"{tick:g}", fill=(0, 0, 0), font=font, anchor=anchor)
    cut = margin + min(max(threshold, 0.0), 1.0) * (bar_width - 1)
    draw.line(
        (cut, bar_top - round(4 * scale), cut, bar_top + bar_height + round(4 * scale)),
        fill=(213, 94, 0),
        width=max(2, round(2 * scale)),
    )
    caption = (
        f"P(IDC), model output; opaque from the threshold {format_threshold(threshold)} "
        "up · research use only"
    )
    draw.text((margin, text_y + round(16 * scale)), caption, fill=(0, 0, 0), font=font)
    if um_per_px is not None and um_per_px > 0:
        room = width - (2 * margin + bar_width) - 2 * margin
        length_um = nice_scale_length(room * um_per_px)
        if length_um > 0:
            length_px = length_um / um_per_px
            right = width - margin
            y = bar_top + bar_height // 2
            left = right - length_px
            tick = round(5 * scale)
            draw.line((left, y, right, y), fill=(0, 0, 0), width=max(3, round(3 * scale)))
            draw.line(
                (left, y - tick, left, y + tick), fill=(0, 0, 0), width=max(2, round(2 * scale))
            )
            draw.line(
                (right, y - tick, right, y + tick), fill=(0, 0, 0), width=max(2, round(2 * scale))
            )
            draw.text(
                ((left + right) / 2, text_y),
                format_length_um(length_um),
                fill=(0, 0, 0),
                font=font,
                anchor="ma",
            )
    return np.asarray(band)


def with_legend(
    picture: np.ndarray,
    *,
    threshold: float,
    um_per_px: float | None,
    colormap: str = DEFAULT_COLORMAP,
) -> np.ndarray:
    """``picture`` (RGB or RGBA) with a :func:`legend_band` below it, widened to at least
    :data:`LEGEND_MIN_WIDTH` px (transparent or white on the right). The picture keeps its
    top-left origin, so its px still map to the slide as before."""
    height, width = picture.shape[:2]
    samples = picture.shape[2]
    total_width = max(width, LEGEND_MIN_WIDTH)
    band = legend_band(total_width, threshold=threshold, um_per_px=um_per_px, colormap=colormap)
    assert band.shape[0] == legend_height(total_width)
    out = np.zeros((height + band.shape[0], total_width, samples), dtype=np.uint8)
    if samples == 3:
        out[:height] = 255
    out[:height, :width] = picture
    out[height:, :, :3] = band
    if samples == 4:
        out[height:, :, 3] = 255
    return out
