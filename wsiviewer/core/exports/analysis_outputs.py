"""Writing an analysis's outputs: regions, mask, patch table, heatmap, raw map, run record.

:func:`write_outputs` writes every output into a folder; each writer also works alone. All
writes are atomic: :func:`write_outputs` stages the files in a hidden folder inside the output
folder and moves each into place with :func:`os.replace` only once all are written, and each
single writer writes a temporary file beside its target and moves it. A cancelled or crashed
job leaves no half-written file and never damages an older one.

Everything is in level-0 px (x right, y down, origin top-left, as QuPath). No output contains
the slide's file name or path, and every output says "research use only" (DESIGN.md, Privacy).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from wsiviewer import RESEARCH_USE_NOTICE, __version__
from wsiviewer.core.analysis.probability import ProbabilityMap
from wsiviewer.core.analysis.regions import RegionSet
from wsiviewer.core.exports.colormaps import DEFAULT_COLORMAP
from wsiviewer.core.exports.files import (
    as_json,
    finite_or_none,
    without_paths,
    write_binary,
    write_staged,
    write_text,
)
from wsiviewer.core.exports.geojson import rounded_coordinate, write_geojson
from wsiviewer.core.exports.heatmaps import write_heatmap_png, write_overlay_png
from wsiviewer.core.exports.masks import rasterize_regions, write_mask_png, write_mask_tiff
from wsiviewer.core.exports.tables import PATCH_COLUMNS, write_patch_csv
from wsiviewer.core.review.wording import format_threshold

if TYPE_CHECKING:
    from wsiviewer.core.analysis.pipeline import Analysis
    from wsiviewer.core.slides import Slide

#: File names inside the output folder, by output kind (the keys of :func:`write_outputs`).
OUTPUT_NAMES: dict[str, str] = {
    "regions": "regions.geojson",
    "mask_tiff": "idc_mask.tif",
    "mask_png": "idc_mask.png",
    "patches": "patches.csv",
    "heatmap": "heatmap.png",
    "overlay": "overlay.png",
    "probabilities": "probabilities.npy",
    "run": "run.json",
}


# --------------------------------------------------------------------------- entry point


def write_outputs(
    out_dir: str | os.PathLike[str],
    analysis: Analysis,
    region_set: RegionSet,
    slide: Slide | None = None,
    *,
    colormap: str = DEFAULT_COLORMAP,
) -> dict[str, Path]:
    """Write every output of ``analysis`` into ``out_dir``; return their paths by kind.

    The kinds are the keys of :data:`OUTPUT_NAMES`; ``overlay`` needs ``slide`` (the slide
    the analysis ran on) and is left out without it. The mask is ``region_set``'s cells, so it
    matches the GeoJSON regions (threshold and minimum area).

    Files are staged in a hidden folder inside ``out_dir`` and moved into place only when all
    are written: on any failure (or a cancel) none of them appears and older outputs stay as
    they were. Only ``os.replace`` itself failing during the final moves could leave new and
    old files side by side, each of them whole.

    Raises
    ------
    ExportError
        If a file cannot be written.
    """
    probability_map = analysis.probability_map
    grid = probability_map.grid
    threshold = region_set.threshold
    region_mask = rasterize_regions(
        (region.polygon for region in region_set.regions),
        grid.l0_dimensions,
        grid.slide_mpp,
        what=f"the regions flagged at P >= {format_threshold(threshold)} (not reviewed)",
    )
    # The two slow writers first, so that they run side by side from the start.
    writers: dict[str, Callable[[Path], object]] = {}
    if slide is not None:
        writers["overlay"] = lambda path: write_overlay_png(
            path, slide, probability_map, colormap=colormap, threshold=threshold
        )
    writers |= {
        "mask_tiff": lambda path: write_mask_tiff(path, region_mask),
        "regions": lambda path: write_geojson(path, region_set, analysis_key=analysis.key),
        "mask_png": lambda path: write_mask_png(path, region_mask),
        "patches": lambda path: write_patch_csv(path, probability_map),
        "heatmap": lambda path: write_heatmap_png(
            path, probability_map, colormap=colormap, threshold=threshold
        ),
        "probabilities": lambda path: write_probabilities_npy(path, probability_map),
        "run": lambda path: write_run_json(path, analysis, region_set),
    }
    written = write_staged(out_dir, {OUTPUT_NAMES[kind]: write for kind, write in writers.items()})
    return {kind: written[OUTPUT_NAMES[kind]] for kind in writers}


# --------------------------------------------------------------------------- regions


# --------------------------------------------------------------------------- mask


# --------------------------------------------------------------------------- patch table


# --------------------------------------------------------------------------- heatmap


# --------------------------------------------------------------------------- raw map and run


def write_probabilities_npy(path: str | os.PathLike[str], probability_map: ProbabilityMap) -> Path:
    """Write the raw ``(rows, cols) float32`` map, NaN where unscored, as ``.npy``."""
    probabilities = np.asarray(probability_map.probabilities, dtype=np.float32)
    return write_binary(path, lambda handle: np.save(handle, probabilities, allow_pickle=False))


def run_summary(analysis: Analysis, region_set: RegionSet) -> dict[str, Any]:
    """What an analysis did and found, JSON-ready, with no file name or path."""
    probability_map = analysis.probability_map
    grid = probability_map.grid
    slide = analysis.slide
    return {
        "notice": RESEARCH_USE_NOTICE,
        "software": {"name": "wsiviewer", "version": __version__},
        "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "started_at": analysis.started_at,
        "analysis_key": analysis.key,
        "slide": {
            "identity": slide.identity,
            "vendor": slide.vendor,
            "l0_dimensions": list(slide.l0_dimensions),
            "mpp": slide.mpp.value,
            "mpp_source": slide.mpp.source,
        },
        "model": without_paths(as_json(analysis.model)),
        "parameters": {
            "threshold": region_set.threshold,
            "min_area_mm2": region_set.min_area_mm2,
            "tissue": without_paths(as_json(analysis.tissue_settings)),
            "device": analysis.device,
            "batch_size": analysis.batch_size,
        },
        "grid": grid.to_dict(),
        "counts": {
            "cells": grid.cell_count,
            "tissue_cells": probability_map.tissue_count,
            "scored_cells": probability_map.scored_count,
            "cells_at_or_above_threshold": int(probability_map.above(region_set.threshold).sum()),
            "regions": len(region_set),
            "region_cells": int(region_set.mask(grid.shape).sum()),
        },
        "regions": [
            {
                "number": region.number,
                "area_mm2": finite_or_none(region.area_mm2),
                "max_prob": finite_or_none(region.max_prob),
                "mean_prob": finite_or_none(region.mean_prob),
                "cells": region.cell_count,
                "l0_bounds": [rounded_coordinate(v) for v in region.polygon.bounds],
            }
            for region in region_set.regions
        ],
        "timings_s": {key: float(value) for key, value in analysis.timings_s.items()},
        "warnings": list(analysis.warnings),
        # The CSV stays plain (header row first); what it holds is said here.
        "tables": {
            OUTPUT_NAMES["patches"]: {
                "notice": RESEARCH_USE_NOTICE,
                "rows": "one per scored patch, in grid order (row by row)",
                "columns": PATCH_COLUMNS,
            }
        },
    }


def write_run_json(path: str | os.PathLike[str], analysis: Analysis, region_set: RegionSet) -> Path:
    """Write :func:`run_summary` as JSON (atomically)."""
    summary = run_summary(analysis, region_set)
    return write_text(path, lambda handle: json.dump(summary, handle, indent=2, ensure_ascii=False))


# --------------------------------------------------------------------------- atomic files
