"""Exporting a reviewed region set: QuPath GeoJSON, IDC mask, patch CSV and a review report.

:func:`export_review` writes the chosen outputs of one region set (see
:data:`REVIEW_EXPORT_NAMES`) into a folder, staged like :func:`.exports.write_outputs`: every
file is written into a hidden folder inside the output folder and moved into place only when
all are written, so a failure leaves no new file and older outputs as they were.

The review report is a self-contained HTML file (its images embedded as PNG data URIs: the
slide thumbnail, the heatmap over the slide, the region outlines coloured by status), with
``review.csv`` (one row per region) and ``review.json`` (regions, decision log, model, counts)
beside it.

The IDC mask is the accepted regions once review has started (the log has any row); before
any review it is every region of the set (the thresholded map with the set's minimum area),
as ``wsiviewer analyze`` writes it. Manual regions are rasterised onto the patch grid (see
:func:`.exports.review_grid_mask`).

Privacy (DESIGN.md): no output names the slide's file or path unless the caller passes
``slide_name`` (the CLI's ``--include-filename``); every output says "research use only".
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

from wsiviewer import RESEARCH_USE_NOTICE, __version__
from wsiviewer.core.analysis.probability import ProbabilityMap
from wsiviewer.core.analysis.regions import find_regions
from wsiviewer.core.exports.files import finite_or_none, without_paths, write_staged, write_text
from wsiviewer.core.exports.geojson import write_review_geojson
from wsiviewer.core.exports.masks import review_grid_mask, write_mask_png, write_mask_tiff
from wsiviewer.core.exports.report import review_report_html
from wsiviewer.core.exports.tables import write_patch_csv
from wsiviewer.core.review.log import ReviewItem, ReviewState, review_history, review_state
from wsiviewer.core.store.database import Store
from wsiviewer.core.store.records import AnalysisRecord, RegionSetRecord
from wsiviewer.errors import ExportError

if TYPE_CHECKING:
    from wsiviewer.core.model.cards import ModelCard
    from wsiviewer.core.slides import Slide

#: Files written for each export kind (the ``--what`` choices of ``wsiviewer export``).
REVIEW_EXPORT_NAMES: dict[str, tuple[str, ...]] = {
    "geojson": ("regions.geojson",),
    "mask": ("idc_mask.tif", "idc_mask.png"),
    "csv": ("patches.csv",),
    "report": ("report.html", "review.csv", "review.json"),
}
EXPORT_KINDS = tuple(REVIEW_EXPORT_NAMES)


@dataclass(frozen=True)
class ReviewExport:
    """What the review exporters need, read once from the Store."""

    analysis: AnalysisRecord
    region_set: RegionSetRecord
    probability_map: ProbabilityMap
    state: ReviewState
    #: The review log (see :func:`.review.review_history`), oldest first.
    history: list[dict[str, Any]]
    #: Grid cells ``(N, 2)`` of each model region, by ``regions.id``.
    region_cells: dict[int, np.ndarray]

    @property
    def reviewed(self) -> bool:
        """Whether review has started (any decision, undone or not)."""
        return bool(self.history)

    def mask_items(self) -> tuple[ReviewItem, ...]:
        """The regions of the IDC mask: accepted ones once review has started, else all."""
        if not self.reviewed:
            return self.state.items
        return tuple(item for item in self.state.items if item.status == "accepted")


def load_review_export(store: Store, region_set_id: int) -> ReviewExport:
    """Read a region set, its analysis, map, review state and log from the Store."""
    region_set = store.region_set(region_set_id)
    analysis = store.analysis(region_set.analysis_id)
    return ReviewExport(
        analysis=analysis,
        region_set=region_set,
        probability_map=store.load_probability_map(analysis),
        state=review_state(store, region_set_id),
        history=review_history(store, region_set_id),
        region_cells={
            stored.id: stored.region.grid_cells for stored in store.regions(region_set_id)
        },
    )


def select_region_set(store: Store, analysis_id: int, threshold: float | None = None) -> int:
    """The region set to export for an analysis.

    Without ``threshold``: the set with the latest review decision, else the set at the
    model card's threshold. With ``threshold``: the set at that threshold (a reviewed one
    first). A set that does not exist yet is computed (minimum area 0) and saved.
    """
    if threshold is None:
        reviewed = store.latest_reviewed_region_set(analysis_id)
        if reviewed is not None:
            return reviewed.id
    record = store.analysis(analysis_id)
    threshold = record.model.threshold if threshold is None else threshold
    found = store.find_region_set(analysis_id, threshold)
    if found is not None:
        return found.id
    region_set = find_regions(store.load_probability_map(record), threshold, 0.0)
    return store.save_region_set(analysis_id, region_set)


def export_review(
    out_dir: str | os.PathLike[str],
    export: ReviewExport,
    what: Iterable[str] = EXPORT_KINDS,
    *,
    slide: Slide | None = None,
    accepted_only: bool = False,
    card: ModelCard | None = None,
    slide_name: str | None = None,
) -> dict[str, Path]:
    """Write the outputs ``what`` (keys of :data:`REVIEW_EXPORT_NAMES`) of a reviewed region
    set into ``out_dir``; return the written paths by file name.

    ``accepted_only`` keeps only accepted regions in the GeoJSON. ``slide`` (the analysed
    slide) gives the report its thumbnail and overlay; without it the report draws on white.
    ``card`` (the installed model card, when it matches the analysis) adds metrics and the
    intended use. ``slide_name`` is shown in the report only when given (privacy).

    Raises
    ------
    ExportError
        If ``what`` names an unknown kind, or a file cannot be written.
    """
    kinds = list(dict.fromkeys(what))
    unknown = [kind for kind in kinds if kind not in REVIEW_EXPORT_NAMES]
    if unknown or not kinds:
        raise ExportError(
            f"Unknown export kind(s) {unknown or kinds}; choose from {', '.join(EXPORT_KINDS)}"
        )
    grid = export.probability_map.grid
    writers: dict[str, Callable[[Path], object]] = {}
    if "geojson" in kinds:
        writers["regions.geojson"] = lambda path: write_review_geojson(
            path, export.state, analysis_key=export.analysis.key, accepted_only=accepted_only
        )
    if "mask" in kinds:
        mask = review_grid_mask(export.mask_items(), grid, export.region_cells)
        writers["idc_mask.tif"] = lambda path: write_mask_tiff(path, mask, grid)
        writers["idc_mask.png"] = lambda path: write_mask_png(path, mask)
    if "csv" in kinds:
        writers["patches.csv"] = lambda path: write_patch_csv(path, export.probability_map)
    if "report" in kinds:
        summary = review_summary(export, card=card, slide_name=slide_name)
        writers["report.html"] = lambda path: write_text(
            path,
            lambda handle: handle.write(
                review_report_html(export, summary, slide=slide, slide_name=slide_name)
            ),
        )
        writers["review.csv"] = lambda path: write_review_csv(path, export.state)
        writers["review.json"] = lambda path: write_text(
            path, lambda handle: json.dump(summary, handle, indent=2, ensure_ascii=False)
        )
    return write_staged(out_dir, writers)


# --------------------------------------------------------------------------- tables


_CSV_COLUMNS = (
    "number",
    "source",
    "status",
    "area_mm2",
    "max_prob",
    "mean_prob",
    "note",
    "reviewer",
    "decided_at",
    "l0_minx",
    "l0_miny",
    "l0_maxx",
    "l0_maxy",
)


def region_rows(state: ReviewState) -> list[dict[str, Any]]:
    """One JSON-ready row per region of the review (deleted ones excluded)."""
    return [
        {
            "number": item.number,
            "source": item.ref.kind,
            "status": item.status,
            "area_mm2": finite_or_none(item.area_mm2),
            "max_prob": None if item.max_prob is None else finite_or_none(item.max_prob),
            "mean_prob": None if item.mean_prob is None else finite_or_none(item.mean_prob),
            "note": item.note,
            "reviewer": item.reviewer,
            "decided_at": item.decided_at,
            **dict(
                zip(
                    ("l0_minx", "l0_miny", "l0_maxx", "l0_maxy"),
                    (round(float(v), 3) for v in item.polygon.bounds),
                    strict=True,
                )
            ),
        }
        for item in state.items
    ]


def write_review_csv(path: str | os.PathLike[str], state: ReviewState) -> Path:
    """One row per region (see :func:`region_rows`); the first line is a research-use
    comment. Bounds in level-0 px."""

    def write(handle: TextIO) -> None:
        handle.write(f"# {RESEARCH_USE_NOTICE} {state.progress_text}. Bounds in level-0 px.\n")
        table = csv.DictWriter(handle, fieldnames=_CSV_COLUMNS, lineterminator="\n")
        table.writeheader()
        for row in region_rows(state):
            table.writerow({key: "" if value is None else value for key, value in row.items()})

    return write_text(path, write, newline="")


def _status_counts(state: ReviewState) -> dict[str, int]:
    counts = {"accepted": 0, "rejected": 0, "pending": 0}
    for item in state.items:
        counts[item.status] += 1
    return counts


def model_card_summary(export: ReviewExport, card: ModelCard | None) -> dict[str, Any]:
    """The model as recorded with the analysis, plus metrics, training data and intended use
    from the installed card when it is the same card (sha256)."""
    model = export.analysis.model
    summary: dict[str, Any] = {
        "name": model.name,
        "version": model.version,
        "architecture": model.architecture,
        "input_mpp": model.input_mpp,
        "card_threshold": model.threshold,
        "threshold": export.state.threshold,
        "min_area_mm2": export.state.min_area_mm2,
        "weights_sha256": model.weights_sha256,
        "metrics": None,
        "training_data": None,
        "intended_use": "Research use only, not for diagnosis.",
    }
    if card is not None and card.card_sha256 == model.card_sha256:
        summary["metrics"] = without_paths(json.loads(json.dumps(card.extra.get("metrics") or {})))
        summary["training_data"] = without_paths(
            json.loads(json.dumps(card.extra.get("training_data"), default=str))
        )
        summary["intended_use"] = card.intended_use
    return summary


def review_summary(
    export: ReviewExport, *, card: ModelCard | None = None, slide_name: str | None = None
) -> dict[str, Any]:
    """Everything the report shows, JSON-ready (``review.json``); no path, and the slide's
    file name only when ``slide_name`` is given."""
    state = export.state
    analysis = export.analysis
    counts = _status_counts(state)
    slide: dict[str, Any] = {
        "identity": analysis.slide_identity,
        "vendor": analysis.slide_vendor,
        "l0_dimensions": list(analysis.l0_dimensions),
        "mpp": analysis.mpp.value,
        "mpp_source": analysis.mpp.source,
    }
    if slide_name is not None:
        slide["file_name"] = slide_name
    return {
        "notice": RESEARCH_USE_NOTICE,
        "software": {"name": "wsiviewer", "version": __version__},
        "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "slide": slide,
        "analysis": {
            "id": analysis.id,
            "key": analysis.key,
            "finished_at": analysis.finished_at,
            "scored_cells": analysis.scored_count,
        },
        "model": model_card_summary(export, card),
        "region_set": {
            "id": export.region_set.id,
            "threshold": state.threshold,
            "min_area_mm2": state.min_area_mm2,
            "created_at": export.region_set.created_at,
            "frozen_at": export.region_set.frozen_at,
        },
        "progress": state.progress_text,
        "counts": {
            "regions": len(state.items),
            "reviewed": state.reviewed_count,
            **counts,
        },
        "accepted_area_mm2": finite_or_none(
            sum(item.area_mm2 for item in state.items if item.status == "accepted")
        ),
        "units": "level-0 px, origin top-left, x right, y down",
        "regions": region_rows(state),
        "decisions": export.history,
    }


# --------------------------------------------------------------------------- images


# --------------------------------------------------------------------------- HTML
