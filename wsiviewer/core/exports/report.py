"""The review report: one self-contained HTML page with the slide, heatmap and outlines embedded.

The images are PNG data URIs from the house encoder (:func:`.png.png_bytes`), each carrying the
research-use notice in its text, as every PNG we write does.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw

from wsiviewer import RESEARCH_USE_NOTICE, __version__
from wsiviewer.core.exports.evidence_images import evidence_strip, legend_bar, legend_text
from wsiviewer.core.exports.fonts import picture_font
from wsiviewer.core.exports.heatmaps import heatmap_cell_px, heatmap_rgba, overlay_rgb
from wsiviewer.core.exports.legend import checkerboard, over
from wsiviewer.core.exports.png import png_bytes
from wsiviewer.core.review.log import ReviewState
from wsiviewer.core.review.status import STATUS_COLORS
from wsiviewer.core.review.wording import STATUS_WORDS, format_probability, format_threshold

if TYPE_CHECKING:
    from wsiviewer.core.exports.review_outputs import ReviewExport
    from wsiviewer.core.model.cards import ModelCard
    from wsiviewer.core.slides import Slide


#: Longest side of the report's images in px.
REPORT_IMAGE_PX = 800


def _png_data_uri(pixels: np.ndarray) -> str:
    # The notice travels with an image saved out of the page, as with every PNG we write.
    text = {"Disclaimer": RESEARCH_USE_NOTICE, "Software": f"wsiviewer {__version__}"}
    encoded = png_bytes(pixels, text)
    return "data:image/png;base64," + base64.b64encode(encoded).decode("ascii")


def _white_canvas(l0_dimensions: tuple[int, int], longest: int) -> np.ndarray:
    width, height = l0_dimensions
    scale = longest / max(width, height, 1)
    size = (max(1, round(height * scale)), max(1, round(width * scale)), 3)
    return np.full(size, 255, dtype=np.uint8)


def report_images(
    export: ReviewExport, slide: Slide | None = None, longest: int = REPORT_IMAGE_PX
) -> dict[str, np.ndarray]:
    """The report's pictures, RGB: ``thumbnail`` (with a slide only), ``overlay`` (the
    heatmap over the slide, or over white) and ``outlines`` (regions by status)."""
    images: dict[str, np.ndarray] = {}
    l0_w, l0_h = export.analysis.l0_dimensions
    pmap = export.probability_map
    grid = pmap.grid
    base = slide.thumbnail(longest) if slide is not None else _white_canvas((l0_w, l0_h), longest)
    if slide is not None:
        images["thumbnail"] = base
    threshold = export.state.threshold
    if grid.cell_count:
        cell_px = heatmap_cell_px(grid, longest)
        if slide is not None:
            images["overlay"] = overlay_rgb(slide, pmap, cell_px=cell_px, threshold=threshold)
        else:
            rgba = heatmap_rgba(pmap, cell_px=cell_px, threshold=threshold)
            images["overlay"] = over(np.full((*rgba.shape[:2], 3), 255, np.uint8), rgba)
        images["legend"] = over(
            checkerboard(16, 256),
            np.repeat(
                heatmap_rgba(_ramp_map(threshold), cell_px=1, threshold=threshold), 16, axis=0
            ),
        )
    images["outlines"] = _outlines(base, export.state, (l0_w, l0_h))
    return images


def _ramp_map(threshold: float) -> Any:
    """A one-row probability map from 0 to 1 (256 cells): the legend's colour bar."""
    from wsiviewer.core.analysis.grid import PatchGrid
    from wsiviewer.core.analysis.probability import ProbabilityMap

    values = np.linspace(0.0, 1.0, 256, dtype=np.float32)[None, :]
    grid = PatchGrid.for_slide((256 * 50, 50), 1.0, 1.0, 50)
    return ProbabilityMap(grid, values, np.ones(values.shape, bool))


def _outlines(base: np.ndarray, state: ReviewState, l0_dimensions: tuple[int, int]) -> np.ndarray:
    image = Image.fromarray(base).convert("RGB")
    # Lighten the slide so the outlines stand out.
    image = Image.blend(image, Image.new("RGB", image.size, (255, 255, 255)), 0.35)
    draw = ImageDraw.Draw(image)
    scale = image.size[0] / max(l0_dimensions[0], 1)
    # Sized for the report, which shows three images side by side (~1/3 of their px).
    line = max(2, round(max(image.size) / 160))
    font = picture_font(max(12, round(max(image.size) / 22)))
    # Pending first, then rejected, accepted on top.
    order = {"pending": 0, "rejected": 1, "accepted": 2}
    for item in sorted(state.items, key=lambda item: order[item.status]):
        color = STATUS_COLORS[item.status]
        rings = [item.polygon.exterior, *item.polygon.interiors]
        for ring in rings:
            points = [(x * scale, y * scale) for x, y in ring.coords]
            if len(points) >= 2:
                draw.line(points, fill=color, width=line, joint="curve")
        point = item.polygon.representative_point()
        label = item.label
        x, y = point.x * scale, point.y * scale
        box = draw.textbbox((x, y), label, anchor="mm", font=font)
        pad = line
        draw.rectangle(
            (box[0] - pad, box[1] - pad, box[2] + pad, box[3] + pad),
            fill=(255, 255, 255),
            outline=color,
            width=max(1, line // 2),
        )
        draw.text((x, y), label, fill=color, anchor="mm", font=font)
    return np.asarray(image)


_CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       margin: 0 auto; max-width: 1200px; padding: 16px 24px; color: #222; }
.ruo { background: #b00020; color: #fff; font-weight: 700; font-size: 1.2em;
       padding: 12px 16px; border-radius: 4px; margin-bottom: 16px; }
.ruo-detail { font-weight: 400; font-size: 0.75em; margin-top: 4px; }
.warning { background: #fff3cd; color: #664d03; border: 1px solid #e0c36a;
  padding: 8px 12px; margin: 8px 0; }
h1 { margin: 0.2em 0; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 4px; }
.progress { font-size: 1.4em; font-weight: 700; }
.meta td:first-child { color: #555; padding-right: 16px; white-space: nowrap; }
table.data { border-collapse: collapse; width: 100%; font-size: 0.9em; }
table.data th, table.data td { border: 1px solid #ddd; padding: 4px 6px; text-align: left;
       vertical-align: top; }
table.data th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.figures { display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 0; flex: 1 1 360px; } figure img { width: 100%; border: 1px solid #ccc; }
figcaption { font-size: 0.9em; color: #444; }
figure img.legend { width: 256px; height: 16px; border: 1px solid #888; vertical-align: middle; }
.swatch { display: inline-block; width: 0.9em; height: 0.9em; border-radius: 2px;
          vertical-align: -0.1em; margin-right: 4px; }
.status-accepted { color: #a34700; font-weight: 600; }
.status-rejected { color: #2a7fb0; } .status-pending { color: #5a5a5a; }
tr.undone td { color: #999; text-decoration: line-through; }
footer { margin-top: 24px; font-size: 0.85em; color: #555; }
.evidence { margin: 12px 0 20px; } .evidence img.strip { border: 1px solid #ccc; max-width: 100%; }
.evidence h3 { margin: 0 0 4px; font-size: 1em; }
img.legend-bar { width: 120px; height: 14px; border: 1px solid #888; vertical-align: middle; }
"""


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value))


def _num(value: float | None, digits: int) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:.{digits}f}"


def _swatch(status: str) -> str:
    red, green, blue = STATUS_COLORS[status]
    return f'<span class="swatch" style="background: rgb({red}, {green}, {blue})"></span>'


def _meta_table(rows: Sequence[tuple[str, object]]) -> str:
    body = "".join(f"<tr><td>{_e(key)}</td><td>{_e(value)}</td></tr>" for key, value in rows)
    return f'<table class="meta">{body}</table>'


def review_report_html(
    export: ReviewExport,
    summary: Mapping[str, Any],
    *,
    slide: Slide | None = None,
    slide_name: str | None = None,
    card: ModelCard | None = None,
) -> str:
    """The review report: one self-contained HTML page with the research-use notice, the
    review's progress, the slide, heatmap and outline images, the slide, analysis and model
    details, every region, the evidence of each accepted and rejected region (its top
    patches and, with the analysis's ``card``, their saliency: read from ``slide``) and the
    decision log."""
    figures = _figures_html(report_images(export, slide))
    return _page_html(
        export.state,
        summary,
        figures=figures,
        slide_table=_meta_table(_slide_rows(summary, slide_name)),
        model_table=_meta_table(_model_rows(summary["model"])),
        region_rows=_region_rows_html(export.state),
        evidence=_evidence_html(export, slide, card),
        decision_rows=_decision_rows_html(export.history),
    )


def _figures_html(images: Mapping[str, np.ndarray]) -> str:
    legend = images.get("legend")
    legend_html = (
        ""
        if legend is None
        else f'<br><img class="legend" alt="colour bar" src="{_png_data_uri(legend)}"> '
        "P(IDC) 0 → 1; fades below the threshold (the checks show through), opaque from it up"
    )
    captions = {
        "thumbnail": "Slide",
        "overlay": "P(IDC) heatmap over the slide (model output)" + legend_html,
        "outlines": "Regions by status: "
        + " ".join(
            f"{_swatch(status)}{STATUS_WORDS[status]}"
            for status in ("accepted", "pending", "rejected")
        ),
    }
    return "".join(
        f'<figure><img alt="{_e(name)}" src="{_png_data_uri(pixels)}">'
        f"<figcaption>{captions[name]}</figcaption></figure>"
        for name, pixels in images.items()
        if name in captions
    )


def _slide_rows(summary: Mapping[str, Any], slide_name: str | None) -> list[tuple[str, object]]:
    """The slide's file name (only when given), identity and geometry, analysis and set."""
    slide_info = summary["slide"]
    region_set = summary["region_set"]
    frozen = region_set["frozen_at"] or "no (review not started)"
    rows: list[tuple[str, object]] = []
    if slide_name is not None:
        rows.append(("File name", slide_name))
    width, height = slide_info["l0_dimensions"]
    rows += [
        ("Slide identity", slide_info["identity"]),
        ("Scanner", slide_info["vendor"] or "unknown"),
        ("Level-0 size", f"{width} × {height} px"),
        ("Resolution", f"{slide_info['mpp']:.4g} µm/px ({slide_info['mpp_source']})"),
        (
            "Analysis",
            f"#{summary['analysis']['id']}, finished {summary['analysis']['finished_at']}",
        ),
        ("Region set", f"#{region_set['id']}, frozen {frozen}"),
    ]
    return rows


#: The card metrics the report shows, with their names; the full card is one click away in
#: the viewer (Model panel) and in ``review.json``.
_REPORT_METRICS = (
    ("balanced_accuracy", "Balanced accuracy"),
    ("roc_auc", "ROC AUC"),
    ("sensitivity", "Sensitivity"),
    ("specificity", "Specificity"),
    ("ece", "Calibration error (ECE)"),
)


def _model_rows(model: Mapping[str, Any]) -> list[tuple[str, object]]:
    """The model, its settings in this review, and a few of its card's metrics (patient-held-
    out test first): what a reader needs to weigh the flags, not the whole card."""
    rows: list[tuple[str, object]] = [
        ("Model", f"{model['name']} v{model['version']} ({model['architecture']})"),
        ("Input resolution", f"{model['input_mpp']:.4g} µm/px, 50 × 50 px patches"),
        (
            "Threshold",
            f"P ≥ {format_threshold(model['threshold'])} "
            f"(the card's operating point: {format_threshold(model['card_threshold'])})",
        ),
        ("Minimum region area", f"{model['min_area_mm2']:g} mm²"),
        ("Intended use", model["intended_use"]),
    ]
    metrics = model["metrics"]
    if metrics is None:
        rows.append(("Metrics", "not available (the model's card is not installed)"))
        return rows
    shown = False
    for part in ("test", "validation"):
        figures = metrics.get(part) if isinstance(metrics, Mapping) else None
        if not isinstance(figures, Mapping):
            continue
        intervals = figures.get("intervals_95") or {}
        values = []
        for key, name in _REPORT_METRICS:
            value = figures.get(key)
            if not isinstance(value, int | float):
                continue
            text = f"{name} {value:.3f}"
            interval = intervals.get(key) if isinstance(intervals, Mapping) else None
            if isinstance(interval, list | tuple) and len(interval) == 2:
                text += f" ({interval[0]:.3f}–{interval[1]:.3f})"
            values.append(text)
        if values:
            patients = figures.get("patients")
            where = f"{part} patients" + (f" ({patients})" if patients else "")
            rows.append((f"On the {where}", "; ".join(values)))
            shown = True
    if not shown:
        rows.append(("Metrics", "none on the model card"))
    return rows


def _region_rows_html(state: ReviewState) -> str:
    return (
        "".join(
            "<tr>"
            f"<td class=num>{_e(item.label)}</td>"
            f"<td>{_e(item.origin)}</td>"
            f'<td class="status-{item.status}">{_swatch(item.status)}'
            f"{STATUS_WORDS[item.status]}</td>"
            f"<td class=num>{_num(item.area_mm2, 4)}</td>"
            f"<td class=num>{_e(format_probability(item.max_prob))}</td>"
            f"<td class=num>{_e(format_probability(item.mean_prob))}</td>"
            f"<td>{_e(item.note)}</td>"
            f"<td>{_e(item.reviewer or '')}</td>"
            f"<td>{_e(_short_time(item.decided_at))}</td>"
            "</tr>"
            for item in state.items
        )
        or '<tr><td colspan="9">No regions at this threshold and minimum area.</td></tr>'
    )


def _decision_rows_html(history: Sequence[Mapping[str, Any]]) -> str:
    return (
        "".join(
            f'<tr class="{"undone" if row["undone"] else ""}">'
            f"<td>{_e(_short_time(row['created_at']))}</td>"
            f"<td>{_e(row['reviewer'])}</td>"
            f"<td>{_e(_action_text(row))}"
            f"{'' if row['undoes_id'] is None else ' #' + str(row['undoes_id'])}</td>"
            f"<td class=num>{row['id']}</td>"
            f"<td>{_e(row.get('label', row['number']))}</td>"
            f"<td>{_e(row['note'])}</td>"
            "</tr>"
            for row in history
        )
        or '<tr><td colspan="6">No decisions yet: review has not started.</td></tr>'
    )


def _action_text(row: Mapping[str, Any]) -> str:
    """``accept``, or for an edit ``split 3 → M7, M8``."""
    if row["action"] != "edit":
        return str(row["action"])
    replaced = ", ".join(row.get("replaced") or ())
    added = ", ".join(row.get("added") or ())
    return f"{row.get('edit_kind') or 'edit'} {replaced} → {added}"


def _page_html(
    state: ReviewState,
    summary: Mapping[str, Any],
    *,
    figures: str,
    slide_table: str,
    model_table: str,
    region_rows: str,
    evidence: str,
    decision_rows: str,
) -> str:
    """The page around its parts (a template: its length is the page's)."""
    counts = summary["counts"]
    input_mpp = summary["model"]["input_mpp"]
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>IDC review report – research use only</title>
<style>{_CSS}</style>
</head>
<body>
<div class="ruo">RESEARCH USE ONLY – NOT FOR DIAGNOSIS
<div class="ruo-detail">{_e(RESEARCH_USE_NOTICE)}</div></div>
<h1>IDC review report</h1>
{_warnings_html(summary["analysis"].get("warnings") or [])}
<p class="progress">{_e(state.progress_text)}</p>
<p>{_swatch("accepted")}{counts["accepted"]} accepted ·
{_swatch("rejected")}{counts["rejected"]} rejected ·
{_swatch("pending")}{counts["pending"]} candidates (not reviewed) ·
accepted area {_num(summary["accepted_area_mm2"], 4)} mm²</p>
<div class="figures">{figures}</div>
<h2>Slide and analysis</h2>
{slide_table}
<h2>Model</h2>
{model_table}
<h2>Regions</h2>
<table class="data">
<tr><th>Region</th><th>Origin</th><th>Status</th><th>Area (mm²)</th><th>Max P</th><th>Mean P</th>
<th>Note</th><th>Reviewer</th><th>Decided (UTC)</th></tr>
{region_rows}
</table>
<h2>Why each decision: the evidence of the reviewed regions</h2>
{evidence}
<h2>Decision log</h2>
<p>Every action, oldest first; undone actions are struck through.</p>
<table class="data">
<tr><th>Time (UTC)</th><th>Reviewer</th><th>Action</th><th>#</th><th>Region</th><th>Note</th></tr>
{decision_rows}
</table>
<footer>
<p><strong>Research use only, not for diagnosis.</strong> IDC probabilities are the output of
a model trained on 50 × 50 px patches of breast H&amp;E slides at {input_mpp:.4g} µm/px. It
cannot tell whether a slide is breast tissue: on other tissue its probabilities mean nothing.
Every region must be reviewed by a pathologist. Coordinates are level-0 px (origin
top-left).</p>
<p>Written {_e(summary["written_at"])} by wsiviewer {_e(__version__)}.</p>
</footer>
</body>
</html>
"""


#: Patches shown per reviewed region in the report.
REPORT_EVIDENCE_PATCHES = 3


def _evidence_html(export: ReviewExport, slide: Slide | None, card: ModelCard | None) -> str:
    """Each accepted and rejected region's highest patches, read from the slide, with their
    saliency when the analysis's card is installed: what the reviewer saw, for an audit."""
    decided = [item for item in export.state.items if item.status != "pending"]
    if not decided:
        return "<p>No region accepted or rejected yet: the evidence of each appears here.</p>"
    if slide is None:
        return "<p>The slide was not available when this report was written: no evidence.</p>"
    if slide.identity != export.analysis.slide_identity:
        return (
            "<p>The slide given is not the analysed slide (its identity differs): no evidence.</p>"
        )
    from wsiviewer.core.progress import run_to_end
    from wsiviewer.core.review.evidence import SaliencyCache, patch_saliency, reviewed_evidence
    from wsiviewer.core.review.selection import installed_card

    # Only the analysis's own model explains its map.
    card = installed_card(export.analysis, [card]) if card is not None else None
    found = reviewed_evidence(
        slide,
        export.analysis,
        export.probability_map,
        decided,
        card,
        top=REPORT_EVIDENCE_PATCHES,
    )
    explainer = None
    if card is not None and any(evidence.patches for evidence in found):
        from wsiviewer.core.model.saliency import SaliencyExplainer

        explainer = SaliencyExplainer(card)
    rows = [f"model input ({export.analysis.grid.model_mpp:g} µm/px)", "slide resolution"]
    if explainer is None:
        intro = (
            "<p>Each region's highest patches, read from the slide: at the model's input and "
            "at the slide's resolution. No saliency: the analysis's model is not installed.</p>"
        )
    else:
        rows += ["Grad-CAM", "integrated gradients"]
        intro = (
            "<p>Each region's highest patches, read from the slide; top to bottom: "
            f"{', '.join(rows)}.</p><p>"
            + "<br>".join(
                f'<img class="legend-bar" alt="{_e(method)} scale" '
                f'src="{_png_data_uri(legend_bar(120, method))}"> {_e(legend_text(method))}'
                for method in ("gradcam", "integrated_gradients")
            )
            + "</p>"
        )
    parts = [intro]
    cache = None
    if explainer is not None and export.data_root is not None:
        cache = SaliencyCache(export.data_root, export.analysis)
    for item, evidence in zip(decided, found, strict=True):
        maps = (
            None
            if explainer is None
            else run_to_end(patch_saliency(evidence.patches, explainer, cache))
        )
        who = f" by {item.reviewer}" if item.reviewer else ""
        note = f" — “{item.note}”" if item.note else ""
        heading = (
            f"Region {item.label}: {_swatch(item.status)}{STATUS_WORDS[item.status]}"
            f"{_e(who)}{_e(note)}"
        )
        if not evidence.patches:
            parts.append(
                f'<div class="evidence"><h3>{heading}</h3><p>No tissue cell inside it.</p></div>'
            )
            continue
        strip = _png_data_uri(evidence_strip(evidence, maps))
        parts.append(
            f'<div class="evidence"><h3>{heading}</h3>'
            f'<img class="strip" alt="evidence of region {_e(item.label)}" src="{strip}">'
            f"<div>{len(evidence.patches)} of its {evidence.cell_count} patches</div></div>"
        )
    return "".join(parts)


def _warnings_html(notes: Sequence[str]) -> str:
    """The analysis's warnings (a slide unlike the model's training data), above all else."""
    return "".join(f'<p class="warning">&#9888; {_e(note)}</p>' for note in notes)


def _short_time(value: str | None) -> str:
    """``2024-05-01T12:00:00.123+00:00`` as ``2024-05-01 12:00:00``."""
    if not value:
        return ""
    return value.replace("T", " ")[:19]
