"""Exporting a reviewed region set: QuPath GeoJSON, region mask, patch CSV and a review report.

:func:`export_review` writes the chosen outputs of one region set (see
:data:`REVIEW_EXPORT_NAMES`) into a folder, staged like :func:`.exports.write_outputs`: every
file is written into a hidden folder inside the output folder and moved into place only when
all are written, so a failure leaves no new file and older outputs as they were.

Every file name starts with the slide's label (``slide-<hash>_regions.geojson``; the cleaned
file name only when the user asks), so exports of several slides share a folder, and an
export never replaces a file unless asked to (``force``): it raises
:class:`~wsiviewer.errors.OutputExistsError` naming them, having written nothing.

The review report is a self-contained HTML file (its images embedded as PNG data URIs: the
slide thumbnail, the heatmap over the slide, the region outlines coloured by status), with
``review.csv`` (one row per region) and ``review.json`` (regions, decision log, model, counts)
beside it. CSVs start with their header row, so that pandas, R and spreadsheets read them with
their default options; the research-use notice and what each column holds are in the JSON
beside each (``patches.json`` for ``patches.csv``, ``review.json`` for ``review.csv``).

The mask is the accepted regions once review has started (the log has any row); before any
review it is every region of the set (flagged, not reviewed), as ``wsiviewer analyze``
writes it. It is rasterised from the outlines at 4 µm/px or finer (:mod:`.masks`), so a small
region a reviewer drew is in it.

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
from wsiviewer.core.exports.files import (
    finite_or_none,
    refuse_to_replace,
    without_paths,
    write_staged,
    write_text,
)
from wsiviewer.core.exports.geojson import write_review_geojson
from wsiviewer.core.exports.masks import rasterize_regions, write_mask_png, write_mask_tiff
from wsiviewer.core.exports.report import review_report_html
from wsiviewer.core.exports.tables import PATCH_COLUMNS, write_patch_csv
from wsiviewer.core.review.log import ReviewItem, ReviewState, review_history, review_state
from wsiviewer.core.review.wording import STATUS_CLASSES, format_threshold
from wsiviewer.core.slides.label import slide_label
from wsiviewer.core.store.database import Store
from wsiviewer.core.store.records import AnalysisRecord, RegionSetRecord
from wsiviewer.errors import ExportError

if TYPE_CHECKING:
    from wsiviewer.core.model.cards import ModelCard
    from wsiviewer.core.slides import Slide

#: Files written for each export kind (the ``--what`` choices of ``wsiviewer export``), after
#: the slide label and ``_`` (:func:`export_file_names`).
REVIEW_EXPORT_NAMES: dict[str, tuple[str, ...]] = {
    "geojson": ("regions.geojson",),
    "mask": ("mask.tif", "mask.png"),
    "csv": ("patches.csv", "patches.json"),
    "report": ("report.html", "review.csv", "review.json"),
}
EXPORT_KINDS = tuple(REVIEW_EXPORT_NAMES)

#: The review table's columns and what each holds.
REVIEW_COLUMNS: dict[str, str] = {
    "number": "region number (manual regions are numbered after the model's)",
    "label": "the region as the viewer names it (M: drawn, imported or edited by a reviewer)",
    "source": "model or manual",
    "origin": "model, drawn, imported (from QuPath) or edit (made by a region edit)",
    "status": "pending (a candidate, not reviewed), accepted or rejected",
    "classification": "the QuPath class it exports with",
    "area_mm2": "area in mm²",
    "max_prob": "highest P(IDC) of its patches (model regions): model output",
    "mean_prob": "mean P(IDC) of its patches (model regions): model output",
    "note": "the reviewer's note",
    "reviewer": "who made the latest status decision",
    "decided_at": "when, ISO-8601 UTC",
    "l0_minx": "bounding box, level-0 px",
    "l0_miny": "bounding box, level-0 px",
    "l0_maxx": "bounding box, level-0 px",
    "l0_maxy": "bounding box, level-0 px",
}


def export_file_names(what: Iterable[str], label: str) -> list[str]:
    """The files an export of ``what`` writes for a slide labelled ``label``."""
    kinds = list(dict.fromkeys(what))
    unknown = [kind for kind in kinds if kind not in REVIEW_EXPORT_NAMES]
    if unknown or not kinds:
        raise ExportError(
            f"Unknown export kind(s) {unknown or kinds}; choose from {', '.join(EXPORT_KINDS)}"
        )
    return [f"{label}_{name}" for kind in kinds for name in REVIEW_EXPORT_NAMES[kind]]


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
    #: The Store's folder, where saliency maps are cached (``None``: computed afresh).
    data_root: Path | None = None

    @property
    def reviewed(self) -> bool:
        """Whether review has started (any decision, undone or not)."""
        return bool(self.history)

    def mask_items(self) -> tuple[ReviewItem, ...]:
        """The regions of the mask: accepted ones once review has started, else all."""
        if not self.reviewed:
            return self.state.items
        return tuple(item for item in self.state.items if item.status == "accepted")

    def mask_description(self) -> str:
        """What :meth:`mask_items` are, in words (the mask files say it)."""
        if not self.reviewed:
            return (
                f"the {len(self.state.items)} regions flagged at P >= "
                f"{format_threshold(self.state.threshold)} (not reviewed: candidates)"
            )
        return f"the {len(self.mask_items())} regions a reviewer accepted"


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
        data_root=store.root,
    )


def export_review(
    out_dir: str | os.PathLike[str],
    export: ReviewExport,
    what: Iterable[str] = EXPORT_KINDS,
    *,
    slide: Slide | None = None,
    accepted_only: bool = False,
    card: ModelCard | None = None,
    slide_name: str | None = None,
    label: str | None = None,
    force: bool = False,
) -> dict[str, Path]:
    """Write the outputs ``what`` (keys of :data:`REVIEW_EXPORT_NAMES`) of a reviewed region
    set into ``out_dir``, each named ``<label>_<name>``; return the written paths by file
    name.

    ``label`` is the slide label (default ``slide-<hash>`` of the analysed slide).
    ``accepted_only`` keeps only accepted regions in the GeoJSON. ``slide`` (the analysed
    slide) gives the report its thumbnail and overlay; without it the report draws on white.
    ``card`` (the installed model card, when it matches the analysis) adds metrics and the
    intended use. ``slide_name`` is shown in the report only when given (privacy).

    Raises
    ------
    OutputExistsError
        If a file to write exists and ``force`` is false (nothing is written).
    ExportError
        If ``what`` names an unknown kind, or a file cannot be written.
    """
    kinds = list(dict.fromkeys(what))
    label = label or slide_label(export.analysis.slide_identity)
    names = export_file_names(kinds, label)
    if not force:
        refuse_to_replace(out_dir, names, "this export")
    writers = _writers(
        export,
        kinds,
        label,
        slide=slide,
        accepted_only=accepted_only,
        card=card,
        slide_name=slide_name,
    )
    named = {f"{label}_{name}": write for name, write in writers.items()}
    assert set(named) == set(names)
    return write_staged(out_dir, named)


def _writers(
    export: ReviewExport,
    kinds: list[str],
    label: str,
    *,
    slide: Slide | None,
    accepted_only: bool,
    card: ModelCard | None,
    slide_name: str | None,
) -> dict[str, Callable[[Path], object]]:
    """The writer of each file of ``kinds``, by name after the label (see
    :func:`export_review` for the options). The mask is rasterised here, once."""
    state = export.state
    analysis = export.analysis
    writers: dict[str, Callable[[Path], object]] = {}
    if "geojson" in kinds:
        writers["regions.geojson"] = lambda path: write_review_geojson(
            path, state, analysis_key=analysis.key, accepted_only=accepted_only
        )
    if "mask" in kinds:
        mask = rasterize_regions(
            (item.polygon for item in export.mask_items()),
            analysis.l0_dimensions,
            analysis.mpp.value,
            what=export.mask_description(),
        )
        writers["mask.tif"] = lambda path: write_mask_tiff(path, mask)
        writers["mask.png"] = lambda path: write_mask_png(path, mask)
    if "csv" in kinds:
        writers["patches.csv"] = lambda path: write_patch_csv(path, export.probability_map)
        sidecar = patches_sidecar(export, f"{label}_patches.csv", slide_name=slide_name)
        writers["patches.json"] = lambda path: write_text(
            path, lambda handle: json.dump(sidecar, handle, indent=2, ensure_ascii=False)
        )
    if "report" in kinds:
        summary = review_summary(
            export, card=card, slide_name=slide_name, review_csv=f"{label}_review.csv"
        )
        writers["report.html"] = lambda path: write_text(
            path,
            lambda handle: handle.write(
                review_report_html(export, summary, slide=slide, slide_name=slide_name, card=card)
            ),
        )
        writers["review.csv"] = lambda path: write_review_csv(path, state)
        writers["review.json"] = lambda path: write_text(
            path, lambda handle: json.dump(summary, handle, indent=2, ensure_ascii=False)
        )
    return writers


def patches_sidecar(
    export: ReviewExport, csv_name: str, *, slide_name: str | None = None
) -> dict[str, Any]:
    """``patches.json``: what the patch table beside it holds, and the research-use notice
    (the CSV itself stays plain: header row first)."""
    slide: dict[str, Any] = {"identity": export.analysis.slide_identity}
    if slide_name is not None:
        slide["file_name"] = slide_name
    return {
        "notice": RESEARCH_USE_NOTICE,
        "software": {"name": "wsiviewer", "version": __version__},
        "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "table": csv_name,
        "rows": "one per scored patch, in grid order (row by row)",
        "columns": PATCH_COLUMNS,
        "slide": slide,
        "analysis": {"id": export.analysis.id, "model": export.analysis.model.name},
        "units": "level-0 px, origin top-left, x right, y down",
    }


# --------------------------------------------------------------------------- tables


def region_rows(state: ReviewState) -> list[dict[str, Any]]:
    """One JSON-ready row per region of the review (deleted ones excluded); the keys are
    :data:`REVIEW_COLUMNS`."""
    return [
        {
            "number": item.number,
            "label": item.label,
            "source": item.ref.kind,
            "origin": item.origin,
            "status": item.status,
            "classification": item.classification or STATUS_CLASSES[item.status],
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
    """One row per region (see :func:`region_rows`), header row first (the notice is in
    ``review.json`` and the report). Bounds in level-0 px."""

    def write(handle: TextIO) -> None:
        table = csv.DictWriter(handle, fieldnames=list(REVIEW_COLUMNS), lineterminator="\n")
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
    export: ReviewExport,
    *,
    card: ModelCard | None = None,
    slide_name: str | None = None,
    review_csv: str = "review.csv",
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
            "warnings": list(analysis.warnings),
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
        # The CSV stays plain (header row first); what it holds is said here.
        "tables": {review_csv: {"rows": "one per region of the review", "columns": REVIEW_COLUMNS}},
        "regions": region_rows(state),
        "decisions": export.history,
    }


# --------------------------------------------------------------------------- images


# --------------------------------------------------------------------------- HTML
