"""Pictures of a region's evidence: patches enlarged crisply, saliency overlays with their
legend, and one contact sheet per region (``explain``, the report; the viewer draws the same
overlays).

Saliency colours: Grad-CAM in inferno over the patch in grey (where the network's last block
found IDC features; ≥ 0); integrated gradients signed, vermillion for pixels that raise the
IDC log-odds and blue for those that lower it (Okabe-Ito, readable with the common colour
vision deficiencies). Each map is scaled to its own patch's largest value: the picture says
where, the caption says how much.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw

from wsiviewer.core.exports.colormaps import load_colormap
from wsiviewer.core.exports.fonts import picture_font
from wsiviewer.core.model.saliency_maps import METHOD_NAMES, SaliencyMaps
from wsiviewer.core.review.wording import format_probability

if TYPE_CHECKING:
    from wsiviewer.core.analysis.evidence import EvidencePatch
    from wsiviewer.core.review.evidence import RegionEvidence

#: Integrated gradients: raises the IDC log-odds / lowers it.
FOR_IDC_RGB = (213, 94, 0)
AGAINST_IDC_RGB = (0, 114, 178)
#: Most opacity of a saliency overlay: the tissue stays visible under the strongest pixels.
MAX_ALPHA = 0.8

#: Side, px, of each picture in a contact sheet.
SHEET_CELL_PX = 160

KIND_WORDS = {"top": "highest", "lowest": "lowest", "point": "at the point"}


def enlarge(pixels: np.ndarray, factor: int) -> np.ndarray:
    """``pixels`` enlarged ``factor`` times by repeating px (crisp, no smoothing)."""
    factor = max(1, int(factor))
    return np.repeat(np.repeat(pixels, factor, axis=0), factor, axis=1)


def fit(pixels: np.ndarray, side: int) -> np.ndarray:
    """``pixels`` resized to ``side × side`` px: enlarged by whole factors with nearest
    neighbours (no invented detail), reduced by area averaging."""
    height = pixels.shape[0]
    if height == side:
        return pixels
    if height < side and side % height == 0:
        return enlarge(pixels, side // height)
    resample = Image.Resampling.NEAREST if height < side else Image.Resampling.BOX
    return np.asarray(Image.fromarray(pixels).resize((side, side), resample))


def scaled(saliency: np.ndarray, method: str) -> np.ndarray:
    """A map scaled to its patch's largest magnitude: 0–1 for Grad-CAM, −1–1 for integrated
    gradients (the 99th percentile of its magnitudes, so a single hot pixel does not wash out
    the rest)."""
    values = saliency.astype(np.float32)
    if method == "gradcam":
        top = float(values.max(initial=0.0))
        return np.clip(values / top, 0.0, 1.0) if top > 0 else np.zeros_like(values)
    top = float(np.percentile(np.abs(values), 99)) if values.size else 0.0
    return np.clip(values / top, -1.0, 1.0) if top > 0 else np.zeros_like(values)


def saliency_rgb(patch: np.ndarray, saliency: np.ndarray, method: str) -> np.ndarray:
    """``(n, n, 3) uint8``: the map of ``method`` over the patch (in grey for Grad-CAM, so
    the colour is the map's)."""
    values = scaled(saliency, method)
    base = patch.astype(np.float32)
    if method == "gradcam":
        grey = base @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        base = np.repeat(grey[..., None], 3, axis=2)
        colours = load_colormap("inferno")[..., :3][np.rint(values * 255).astype(np.int64)]
        alpha = (MAX_ALPHA * values)[..., None]
    else:
        colours = np.where(
            values[..., None] >= 0,
            np.array(FOR_IDC_RGB, np.float32),
            np.array(AGAINST_IDC_RGB, np.float32),
        )
        alpha = (MAX_ALPHA * np.abs(values))[..., None]
    blended = base * (1 - alpha) + colours.astype(np.float32) * alpha
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def legend_text(method: str) -> str:
    if method == "gradcam":
        return (
            "Grad-CAM (last convolutional block): bright = features the network took for IDC; "
            "scaled to each patch's maximum"
        )
    return (
        "Integrated gradients: vermillion raises P(IDC), blue lowers it; "
        "scaled to each patch's 99th percentile"
    )


def legend_bar(width: int, method: str, height: int = 14) -> np.ndarray:
    """``(height, width, 3) uint8``: the colour scale of ``method`` from its low end (left)
    to its high end (right), as drawn on a white patch."""
    ramp = np.linspace(0.0 if method == "gradcam" else -1.0, 1.0, width, dtype=np.float32)
    white = np.full((height, width, 3), 255, np.uint8)
    return saliency_rgb(white, np.repeat(ramp[None, :], height, axis=0), method)


def patch_caption(patch: EvidencePatch) -> list[str]:
    """Lines under or beside a patch: what it is, its P, where it is."""
    lines = [
        f"{KIND_WORDS[patch.kind]} · map P {format_probability(patch.probability)}",
    ]
    if patch.patch_probability is not None:
        lines.append(f"patch alone P {format_probability(patch.patch_probability)}")
    x_um, y_um = patch.um_centre
    lines.append(f"at x {x_um:,.0f} µm, y {y_um:,.0f} µm")
    lines.append(f"cell row {patch.grid_rc[0]}, col {patch.grid_rc[1]}")
    return lines


def evidence_sheet(
    evidence: RegionEvidence,
    maps: Sequence[SaliencyMaps] | None = None,
    *,
    cell_px: int = SHEET_CELL_PX,
    heading: str | None = None,
) -> np.ndarray:
    """``(H, W, 3) uint8``: one row per patch of ``evidence``: the model's input (enlarged
    crisply), the patch at the slide's resolution, and, with ``maps``, Grad-CAM and
    integrated gradients over the model's input; a caption to the right; legends below."""
    font = picture_font(13)
    title_font = picture_font(16)
    mpp = evidence.patches[0].model_um_per_px if evidence.patches else None
    columns = [f"model input ({mpp:g} µm/px)" if mpp else "model input", "slide resolution"]
    if maps is not None:
        columns += [METHOD_NAMES["gradcam"], METHOD_NAMES["integrated_gradients"]]
    gap, caption_w, top_h = 8, 260, 58
    width = gap + len(columns) * (cell_px + gap) + caption_w
    rows = max(1, len(evidence.patches))
    legend_h = 0 if maps is None else 2 * 40
    height = top_h + rows * (cell_px + gap) + legend_h + 30
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    title = heading or (
        f"{evidence.title}: {len(evidence.patches)} of {evidence.cell_count} cells shown"
    )
    draw.text((gap, 8), title, fill=(0, 0, 0), font=title_font)
    for index, name in enumerate(columns):
        draw.text((gap + index * (cell_px + gap), 36), name, fill=(60, 60, 60), font=font)
    for row, patch in enumerate(evidence.patches):
        y = top_h + row * (cell_px + gap)
        pictures = [fit(patch.model_input, cell_px), fit(patch.native, cell_px)]
        if maps is not None:
            pictures += [
                fit(saliency_rgb(patch.model_input, maps[row].gradcam[0], "gradcam"), cell_px),
                fit(
                    saliency_rgb(
                        patch.model_input,
                        maps[row].integrated_gradients[0],
                        "integrated_gradients",
                    ),
                    cell_px,
                ),
            ]
        for index, picture in enumerate(pictures):
            sheet.paste(Image.fromarray(picture), (gap + index * (cell_px + gap), y))
        x = gap + len(pictures) * (cell_px + gap)
        for line_no, line in enumerate(patch_caption(patch)):
            draw.text((x, y + 4 + 18 * line_no), line, fill=(0, 0, 0), font=font)
    y = top_h + rows * (cell_px + gap)
    if maps is not None:
        for method in ("gradcam", "integrated_gradients"):
            bar = legend_bar(160, method)
            sheet.paste(Image.fromarray(bar), (gap, y + 4))
            draw.rectangle((gap - 1, y + 3, gap + 160, y + 4 + bar.shape[0]), outline=(80, 80, 80))
            draw.text((gap + 170, y + 4), legend_text(method), fill=(0, 0, 0), font=font)
            y += 40
    draw.text(
        (gap, y + 6),
        "Research use only: model evidence for a pathologist's review, not a diagnosis.",
        fill=(160, 0, 0),
        font=font,
    )
    return np.asarray(sheet)


def evidence_strip(
    evidence: RegionEvidence,
    maps: Sequence[SaliencyMaps] | None = None,
    *,
    cell_px: int = 96,
) -> np.ndarray:
    """``(H, W, 3) uint8``: one column per patch of ``evidence``: the model's input, the
    slide's pixels and, with ``maps``, Grad-CAM and integrated gradients, stacked; the kind
    and P(IDC) below (the report's compact form of :func:`evidence_sheet`)."""
    font = picture_font(12)
    gap, caption_h, names_w = 6, 34, 92
    names = ["model input", "slide"] + (
        [] if maps is None else ["Grad-CAM", "integrated\ngradients"]
    )
    rows = len(names)
    columns = max(1, len(evidence.patches))
    width = names_w + gap + columns * (cell_px + gap)
    height = gap + rows * (cell_px + gap) + caption_h
    strip = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    for row, name in enumerate(names):
        draw.multiline_text(
            (4, gap + row * (cell_px + gap) + cell_px // 2 - 8), name, fill=(60, 60, 60), font=font
        )
    for column, patch in enumerate(evidence.patches):
        x = names_w + gap + column * (cell_px + gap)
        pictures = [fit(patch.model_input, cell_px), fit(patch.native, cell_px)]
        if maps is not None:
            pictures += [
                fit(
                    saliency_rgb(patch.model_input, maps[column].method(method)[0], method), cell_px
                )
                for method in ("gradcam", "integrated_gradients")
            ]
        for row, picture in enumerate(pictures):
            strip.paste(Image.fromarray(picture), (x, gap + row * (cell_px + gap)))
        y = gap + rows * (cell_px + gap)
        draw.text((x, y), KIND_WORDS[patch.kind], fill=(60, 60, 60), font=font)
        draw.text(
            (x, y + 15), f"P {format_probability(patch.probability)}", fill=(0, 0, 0), font=font
        )
    return np.asarray(strip)
