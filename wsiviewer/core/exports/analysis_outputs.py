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

import csv
import dataclasses
import json
import math
import os
import re
import shutil
import struct
import tempfile
import uuid
import zlib
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TextIO

import imagecodecs
import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon, mapping

from wsiviewer import RESEARCH_USE_NOTICE, __version__
from wsiviewer.core.atomic import atomic_path
from wsiviewer.core.exports.colormaps import DEFAULT_COLORMAP, apply_colormap
from wsiviewer.core.analysis.grid import PatchGrid
from wsiviewer.core.analysis.probability import ProbabilityMap
from wsiviewer.core.exports.pyramid_tiff import UpsampledSource, write_pyramid_tiff
from wsiviewer.core.analysis.regions import Region, RegionSet
from wsiviewer.core.review.session import STATUS_COLORS
from wsiviewer.errors import ExportError

if TYPE_CHECKING:
    from wsiviewer.core.analysis.pipeline import Analysis
    from wsiviewer.core.review.session import ReviewItem, ReviewState
    from wsiviewer.core.slides.base import Slide

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

#: QuPath classification of exported regions.
IDC_CLASS_NAME = "IDC"
#: Okabe-Ito vermillion: distinct from the heatmap's viridis and for colour-blind readers.
IDC_COLOR = STATUS_COLORS["accepted"]
#: QuPath classification of regions a reviewer rejected: a class of its own, so QuPath users
#: can hide, count or delete them by class, and never mistake them for IDC.
REJECTED_CLASS_NAME = "IDC (rejected)"
#: Sky blue, the viewer's and the report's colour for rejected regions.
REJECTED_COLOR = STATUS_COLORS["rejected"]

#: Longest side of the heatmap PNG that :func:`heatmap_cell_px` aims for.
HEATMAP_TARGET_PX = 2048
#: Most px per grid cell in the heatmap PNG (a small grid is enlarged, but not to a blur).
HEATMAP_MAX_CELL_PX = 32
#: Opacity of the heatmap over the slide in the overlay PNG.
OVERLAY_ALPHA = 0.5

#: Namespace of the deterministic feature ids (uuid5) of exported regions.
_REGION_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:wsiviewer:region")

#: Keys dropped from any summary we export (``path``, ``card_path``, ``filename``, ``dir``...):
#: a file name or path must never leak out.
_PRIVATE_KEY = re.compile(r"(^|_)(path|file|filename|file_name|dir|folder|directory)s?($|_)")


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
    region_mask = region_set.mask(grid.shape)
    # The two slow writers first, so that they run side by side from the start.
    writers: dict[str, Callable[[Path], object]] = {}
    if slide is not None:
        writers["overlay"] = lambda path: write_overlay_png(
            path, slide, probability_map, colormap=colormap
        )
    writers |= {
        "mask_tiff": lambda path: write_mask_tiff(path, region_mask, grid),
        "regions": lambda path: write_geojson(path, region_set, analysis_key=analysis.key),
        "mask_png": lambda path: write_mask_png(path, region_mask),
        "patches": lambda path: write_patch_csv(path, probability_map),
        "heatmap": lambda path: write_heatmap_png(path, probability_map, colormap=colormap),
        "probabilities": lambda path: write_probabilities_npy(path, probability_map),
        "run": lambda path: write_run_json(path, analysis, region_set),
    }
    written = write_staged(out_dir, {OUTPUT_NAMES[kind]: write for kind, write in writers.items()})
    return {kind: written[OUTPUT_NAMES[kind]] for kind in writers}


def write_staged(
    out_dir: str | os.PathLike[str], writers: Mapping[str, Callable[[Path], object]]
) -> dict[str, Path]:
    """Write a set of files into ``out_dir`` so that none appears unless all were written.

    Each ``writers[name](path)`` writes one file into a hidden staging folder inside
    ``out_dir`` (several at once: encoders release the GIL); the files are moved into place
    with :func:`os.replace` only once all are written. On any failure, or a cancel, none of
    them appears and older files stay as they were; only ``os.replace`` itself failing during
    the final moves could leave new and old files side by side, each of them whole.

    Raises
    ------
    ExportError
        If the folder cannot be created or a file cannot be written.
    """
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".wsiviewer-export-", dir=out_dir))
    except OSError as exc:
        raise ExportError(f"Cannot create output folder {out_dir}: {exc}") from exc
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            futures = [pool.submit(write, staging / name) for name, write in writers.items()]
            for future in futures:
                future.result()
        written: dict[str, Path] = {}
        for name in writers:
            os.replace(staging / name, out_dir / name)
            written[name] = out_dir / name
        return written
    except OSError as exc:
        raise ExportError(f"Cannot write outputs to {out_dir}: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# --------------------------------------------------------------------------- regions


def regions_feature_collection(region_set: RegionSet, *, analysis_key: str = "") -> dict[str, Any]:
    """The regions as a QuPath-style GeoJSON FeatureCollection (a JSON-ready dict).

    Each region is a Feature with a closed ``Polygon`` (holes as interior rings) in level-0 px,
    ``objectType: "annotation"``, an ``IDC`` classification with its colour, the measurements
    ``area_mm2``, ``max_prob`` and ``mean_prob`` as a map (QuPath ≥ 0.4), and a UUID ``id``
    derived from ``analysis_key``, the threshold, the minimum area and the region number, so
    the same regions always export the same ids. The research-use notice and the threshold
    are foreign members of the FeatureCollection, which QuPath ignores on import.
    """
    features: list[dict[str, Any]] = []
    for region in region_set.regions:
        parts = _polygons(region)
        for part_number, polygon in enumerate(parts, start=1):
            name = f"IDC region {region.number}"
            id_text = f"{analysis_key}:{region_set.threshold!r}:{region_set.min_area_mm2!r}"
            id_text += f":{region.number}"
            if len(parts) > 1:
                name += f" part {part_number}"
                id_text += f".{part_number}"
            features.append(
                {
                    "type": "Feature",
                    "id": str(uuid.uuid5(_REGION_ID_NAMESPACE, id_text)),
                    "geometry": _polygon_geometry(polygon),
                    "properties": {
                        "objectType": "annotation",
                        "name": name,
                        "classification": {"name": IDC_CLASS_NAME, "color": list(IDC_COLOR)},
                        "isLocked": False,
                        "measurements": {
                            "area_mm2": _finite(region.area_mm2),
                            "max_prob": _finite(region.max_prob),
                            "mean_prob": _finite(region.mean_prob),
                        },
                    },
                }
            )
    return _feature_collection(features, region_set.threshold, region_set.min_area_mm2)


def _feature_collection(
    features: list[dict[str, Any]], threshold: float, min_area_mm2: float, **about: object
) -> dict[str, Any]:
    """A FeatureCollection with the research-use notice and what the regions came from."""
    return {
        "type": "FeatureCollection",
        "notice": RESEARCH_USE_NOTICE,
        "wsiviewer": {
            "version": __version__,
            "units": "level-0 px, origin top-left, x right, y down",
            "threshold": threshold,
            "min_area_mm2": min_area_mm2,
            **about,
        },
        "features": features,
    }


def write_geojson(
    path: str | os.PathLike[str], region_set: RegionSet, *, analysis_key: str = ""
) -> Path:
    """Write :func:`regions_feature_collection` as a ``.geojson`` file (atomically).

    One feature per line: compact, yet a diff or a text editor shows one region at a time.
    """
    collection = regions_feature_collection(region_set, analysis_key=analysis_key)
    return _write_feature_collection(path, collection)


def _polygons(region: Region) -> list[Polygon]:
    """A region's outline as Polygons: never a MultiPolygon, one Polygon when it is one."""
    geometry = region.polygon
    if isinstance(geometry, MultiPolygon):
        return [part for part in geometry.geoms if not part.is_empty]
    return [geometry] if not geometry.is_empty else []


def _polygon_geometry(polygon: Polygon) -> dict[str, Any]:
    """GeoJSON Polygon with closed rings; coordinates rounded to 1/1000 px."""
    rings = mapping(polygon)["coordinates"]
    coordinates = []
    for ring in rings:
        points = [[_coordinate(x), _coordinate(y)] for x, y in ring]
        if points and points[0] != points[-1]:
            points.append(points[0])
        coordinates.append(points)
    return {"type": "Polygon", "coordinates": coordinates}


def _coordinate(value: float) -> float | int:
    rounded = round(float(value), 3)
    return int(rounded) if rounded.is_integer() else rounded


def review_feature_collection(
    state: ReviewState, *, analysis_key: str = "", accepted_only: bool = False
) -> dict[str, Any]:
    """A reviewed region set as a QuPath-style GeoJSON FeatureCollection (JSON-ready dict).

    Like :func:`regions_feature_collection` (closed Polygons in level-0 px, ``objectType:
    "annotation"``, measurements as a map, research-use notice), for every region of the
    review that is not deleted, manual regions included, with:

    - ``classification``: ``IDC`` (vermillion) for accepted and pending regions,
      ``IDC (rejected)`` (grey) for rejected ones;
    - ``name``: ``"IDC region 3 (accepted)"``, ``"Manual region 32 (pending)"``;
    - ``status`` (``accepted`` / ``rejected`` / ``pending``), ``note``, ``reviewer``,
      ``decided_at``, ``source`` (``model`` / ``manual``) and ``number`` as properties, which
      QuPath ignores on import;
    - measurements ``area_mm2`` and, for model regions, ``max_prob`` and ``mean_prob``.

    ``accepted_only`` keeps only accepted regions. Feature ids are UUIDs derived from the
    analysis key, the set and the region, so a re-export gives the same ids.
    """
    features: list[dict[str, Any]] = []
    for item in state.items:
        if accepted_only and item.status != "accepted":
            continue
        features.append(_review_feature(item, state, analysis_key))
    return _feature_collection(
        features,
        state.threshold,
        state.min_area_mm2,
        review=state.progress_text,
        accepted_only=accepted_only,
    )


def _review_feature(item: ReviewItem, state: ReviewState, analysis_key: str) -> dict[str, Any]:
    rejected = item.status == "rejected"
    kind = "IDC region" if item.ref.kind == "model" else "Manual region"
    measurements: dict[str, float | None] = {"area_mm2": _finite(item.area_mm2)}
    if item.max_prob is not None and item.mean_prob is not None:
        measurements["max_prob"] = _finite(item.max_prob)
        measurements["mean_prob"] = _finite(item.mean_prob)
    id_text = f"{analysis_key}:{state.region_set_id}:{item.ref.kind}:{item.ref.id}"
    return {
        "type": "Feature",
        "id": str(uuid.uuid5(_REGION_ID_NAMESPACE, id_text)),
        "geometry": _polygon_geometry(item.polygon),
        "properties": {
            "objectType": "annotation",
            "name": f"{kind} {item.number} ({item.status})",
            "classification": {
                "name": REJECTED_CLASS_NAME if rejected else IDC_CLASS_NAME,
                "color": list(REJECTED_COLOR if rejected else IDC_COLOR),
            },
            "isLocked": False,
            "measurements": measurements,
            "status": item.status,
            "note": item.note,
            "reviewer": item.reviewer,
            "decided_at": item.decided_at,
            "source": item.ref.kind,
            "number": item.number,
        },
    }


def write_review_geojson(
    path: str | os.PathLike[str],
    state: ReviewState,
    *,
    analysis_key: str = "",
    accepted_only: bool = False,
) -> Path:
    """Write :func:`review_feature_collection` (atomically), one feature per line."""
    collection = review_feature_collection(
        state, analysis_key=analysis_key, accepted_only=accepted_only
    )
    return _write_feature_collection(path, collection)


def _write_feature_collection(path: str | os.PathLike[str], collection: dict[str, Any]) -> Path:
    """Write a FeatureCollection one feature per line: compact, yet diffable (atomically)."""
    features = collection.pop("features")

    def write(handle: TextIO) -> None:
        handle.write(json.dumps(collection)[:-1] + ', "features": [')
        for index, feature in enumerate(features):
            handle.write(("," if index else "") + "\n" + json.dumps(feature))
        handle.write("\n]}\n")

    return _write_text(path, write)


# --------------------------------------------------------------------------- mask


def review_grid_mask(
    items: Sequence[ReviewItem],
    grid: PatchGrid,
    region_cells: Mapping[int, np.ndarray],
) -> np.ndarray:
    """``(rows, cols) bool``: the grid cells of ``items``.

    A model region contributes its own cells (``region_cells[ref.id]``, ``(N, 2)`` row/col),
    so the mask matches the GeoJSON outline exactly. A manual region is rasterised onto the
    grid: a cell is in it when the cell's centre lies inside the polygon (level-0 px), so a
    manual region is exported at the analysis's resolution, like everything in the mask.
    """
    out = np.zeros(grid.shape, dtype=bool)
    if grid.cell_count == 0:
        return out
    size = grid.l0_patch_size
    for item in items:
        if item.ref.kind == "model":
            cells = np.asarray(region_cells[item.ref.id]).reshape(-1, 2)
            out[cells[:, 0], cells[:, 1]] = True
            continue
        minx, miny, maxx, maxy = item.polygon.bounds
        col_0 = max(0, math.floor(minx / size - 0.5))
        col_1 = min(grid.cols, math.ceil(maxx / size + 0.5))
        row_0 = max(0, math.floor(miny / size - 0.5))
        row_1 = min(grid.rows, math.ceil(maxy / size + 0.5))
        if col_0 >= col_1 or row_0 >= row_1:
            continue
        grid_rows, grid_cols = np.mgrid[row_0:row_1, col_0:col_1]
        inside = shapely.contains_xy(
            item.polygon, (grid_cols + 0.5) * size, (grid_rows + 0.5) * size
        )
        out[grid_rows[inside], grid_cols[inside]] = True
    return out


def idc_grid_mask(probability_map: ProbabilityMap, threshold: float) -> np.ndarray:
    """``(rows, cols) bool``: scored cells with P(IDC) ≥ ``threshold``."""
    return probability_map.above(threshold)


def write_mask_tiff(
    path: str | os.PathLike[str],
    grid_mask: np.ndarray,
    grid: PatchGrid,
    *,
    tile: int = 512,
) -> Path:
    """Write a grid mask as a tiled pyramidal TIFF at the slide's level-0 size and µm/px.

    Level 0 is ``grid.l0_dimensions`` px at ``grid.slide_mpp`` µm/px, 255 where a level-0
    px's centre lies in a masked cell and 0 elsewhere (uint8, deflate), so OpenSlide opens it
    at the slide's µm/px and it overlays the slide pixel for pixel in QuPath. Reduced levels
    sample the same way and stay binary. A grid of shape (0, 0) writes an all-zero mask.
    """
    grid_mask = np.asarray(grid_mask, dtype=bool)
    if grid_mask.shape != grid.shape:
        raise ValueError(f"Mask {grid_mask.shape} does not match grid {grid.shape}")
    l0_size = grid.l0_dimensions
    if grid_mask.size:
        small = np.where(grid_mask, np.uint8(255), np.uint8(0))
        factor = grid.l0_patch_size
    else:
        small = np.zeros((1, 1), dtype=np.uint8)
        factor = float(max(l0_size))
    source = UpsampledSource(small, factor, l0_size=l0_size, reduce="nearest")
    description = (
        f"wsiviewer {__version__} IDC mask: 255 = IDC cell, 0 = other; level 0 matches the "
        f"slide's level 0 at {grid.slide_mpp:.6g} um/px. {RESEARCH_USE_NOTICE}"
    )
    return write_pyramid_tiff(
        path,
        source,
        mpp=grid.slide_mpp,
        tile=tile,
        compression="deflate",
        description=description,
        workers=1,  # mask tiles encode in microseconds: threads would only add hand-offs
    )


def write_mask_png(path: str | os.PathLike[str], grid_mask: np.ndarray) -> Path:
    """Write a grid mask as an 8-bit PNG, one px per grid cell, 255 = masked.

    A grid of shape (0, 0) cannot be a PNG: it writes one 0 px with an ``Empty`` text chunk.
    """
    grid_mask = np.asarray(grid_mask, dtype=bool)
    empty = grid_mask.size == 0
    pixels = np.zeros((1, 1), np.uint8) if empty else np.where(grid_mask, 255, 0).astype(np.uint8)
    return _write_png(path, pixels, empty=empty)


# --------------------------------------------------------------------------- patch table


def write_patch_csv(path: str | os.PathLike[str], probability_map: ProbabilityMap) -> Path:
    """Write one row per scored cell: ``minx,miny,width,height,prob_idc`` in level-0 px.

    The first line is a ``# Research use only ...`` comment. Rows are in grid order (row by
    row); coordinates have at most 3 decimals, probabilities 6.
    """
    grid = probability_map.grid
    grid_rows, grid_cols = np.nonzero(probability_map.scored)
    boxes = grid.l0_boxes(grid_rows, grid_cols)
    probabilities = probability_map.probabilities[grid_rows, grid_cols]

    def write(handle: TextIO) -> None:
        handle.write(f"# {RESEARCH_USE_NOTICE} Coordinates in level-0 px.\n")
        table = csv.writer(handle, lineterminator="\n")
        table.writerow(["minx", "miny", "width", "height", "prob_idc"])
        table.writerows(
            [*(_csv_number(value) for value in box), f"{probability:.6f}"]
            for box, probability in zip(boxes.tolist(), probabilities.tolist(), strict=True)
        )

    return _write_text(path, write, newline="")


def _csv_number(value: float) -> str:
    return f"{round(value, 3):.15g}"


# --------------------------------------------------------------------------- heatmap


def heatmap_cell_px(grid: PatchGrid, target_px: int = HEATMAP_TARGET_PX) -> int:
    """Px per grid cell so the heatmap's longest side is at most about ``target_px``.

    At least 1 and at most :data:`HEATMAP_MAX_CELL_PX`, and never more than a cell's level-0
    px, so the overlay never enlarges the slide.
    """
    longest = max(grid.shape) if grid.cell_count else 1
    most = min(HEATMAP_MAX_CELL_PX, max(1, math.floor(grid.l0_patch_size)))
    return int(min(most, max(1, target_px // longest)))


def heatmap_rgba(
    probability_map: ProbabilityMap,
    *,
    colormap: str = DEFAULT_COLORMAP,
    cell_px: int | None = None,
) -> np.ndarray:
    """``(rows * cell_px, cols * cell_px, 4) uint8``: the map coloured, transparent if unscored.

    Heatmap px ``(x, y)`` lies in level-0 px ``x * l0_patch_size / cell_px`` (likewise y).
    """
    cell_px = cell_px or heatmap_cell_px(probability_map.grid)
    rgba = apply_colormap(probability_map.probabilities, colormap)
    return np.repeat(np.repeat(rgba, cell_px, axis=0), cell_px, axis=1)


def write_heatmap_png(
    path: str | os.PathLike[str],
    probability_map: ProbabilityMap,
    *,
    colormap: str = DEFAULT_COLORMAP,
    cell_px: int | None = None,
) -> Path:
    """Write the heatmap as an RGBA PNG (see :func:`heatmap_rgba`).

    A grid of shape (0, 0) writes one transparent px with an ``Empty`` text chunk.
    """
    grid = probability_map.grid
    if grid.cell_count == 0:
        return _write_png(path, np.zeros((1, 1, 4), dtype=np.uint8), empty=True)
    cell_px = cell_px or heatmap_cell_px(grid)
    rgba = heatmap_rgba(probability_map, colormap=colormap, cell_px=cell_px)
    return _write_png(path, rgba, extra={"Colormap": colormap, **_scale(grid, cell_px)})


def overlay_rgb(
    slide: Slide,
    probability_map: ProbabilityMap,
    *,
    colormap: str = DEFAULT_COLORMAP,
    cell_px: int | None = None,
    alpha: float = OVERLAY_ALPHA,
) -> np.ndarray:
    """The slide under the grid, at the heatmap's size, with the heatmap blended in.

    The slide is area-averaged from its level-0 box under the grid (white past its edge) to
    the size of :func:`heatmap_rgba`; scored cells are blended with opacity ``alpha``. For a
    grid of shape (0, 0) it is the slide's thumbnail.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"Alpha {alpha} must be within [0, 1]")
    grid = probability_map.grid
    if grid.cell_count == 0:
        return slide.thumbnail(min(HEATMAP_TARGET_PX, max(slide.dimensions)))
    cell_px = cell_px or heatmap_cell_px(grid)
    rows, cols = grid.shape
    l0_box = (0.0, 0.0, cols * grid.l0_patch_size, rows * grid.l0_patch_size)
    level = slide.display_level(grid.l0_patch_size / cell_px)
    background = slide.read_l0_box(l0_box, (cols * cell_px, rows * cell_px), level=level)
    blended = background.astype(np.float32)
    # A cell has one colour and one weight: blend through a (row, y, col, x) view of the
    # picture rather than enlarging the heatmap to its size.
    colours = apply_colormap(probability_map.probabilities, colormap).astype(np.float32)
    weight = colours[..., 3:] / 255.0 * alpha
    by_cell = blended.reshape(rows, cell_px, cols, cell_px, 3)
    by_cell *= (1.0 - weight)[:, None, :, None]
    by_cell += (colours[..., :3] * weight)[:, None, :, None]
    return np.clip(np.rint(blended, out=blended), 0, 255, out=blended).astype(np.uint8)


def write_overlay_png(
    path: str | os.PathLike[str],
    slide: Slide,
    probability_map: ProbabilityMap,
    *,
    colormap: str = DEFAULT_COLORMAP,
    cell_px: int | None = None,
    alpha: float = OVERLAY_ALPHA,
) -> Path:
    """Write :func:`overlay_rgb` as an RGB PNG."""
    pixels = overlay_rgb(slide, probability_map, colormap=colormap, cell_px=cell_px, alpha=alpha)
    grid = probability_map.grid
    if grid.cell_count:
        extra = {"Colormap": colormap, **_scale(grid, cell_px or heatmap_cell_px(grid))}
    else:
        extra = {}
    return _write_png(path, pixels, extra=extra)


def _scale(grid: PatchGrid, cell_px: int) -> dict[str, str]:
    return {"Level-0 px per image px": f"{grid.l0_patch_size / cell_px:.6g}"}


# --------------------------------------------------------------------------- raw map and run


def write_probabilities_npy(path: str | os.PathLike[str], probability_map: ProbabilityMap) -> Path:
    """Write the raw ``(rows, cols) float32`` map, NaN where unscored, as ``.npy``."""
    probabilities = np.asarray(probability_map.probabilities, dtype=np.float32)
    return _write_binary(path, lambda handle: np.save(handle, probabilities, allow_pickle=False))


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
        "model": _public(_as_json(analysis.model)),
        "parameters": {
            "threshold": region_set.threshold,
            "min_area_mm2": region_set.min_area_mm2,
            "tissue": _public(_as_json(analysis.tissue_settings)),
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
                "area_mm2": _finite(region.area_mm2),
                "max_prob": _finite(region.max_prob),
                "mean_prob": _finite(region.mean_prob),
                "cells": region.cell_count,
                "l0_bounds": [_coordinate(v) for v in region.polygon.bounds],
            }
            for region in region_set.regions
        ],
        "timings_s": {key: float(value) for key, value in analysis.timings_s.items()},
        "warnings": list(analysis.warnings),
    }


def write_run_json(path: str | os.PathLike[str], analysis: Analysis, region_set: RegionSet) -> Path:
    """Write :func:`run_summary` as JSON (atomically)."""
    summary = run_summary(analysis, region_set)
    return _write_text(
        path, lambda handle: json.dump(summary, handle, indent=2, ensure_ascii=False)
    )


def _as_json(value: object) -> Any:
    """A summary object as JSON-ready data: ``to_dict()``, a dataclass, or a mapping."""
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        value = to_dict()
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    return json.loads(json.dumps(value, default=_json_default))


def _json_default(value: object) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    if isinstance(value, Path):
        return None  # never export a path
    return str(value)


def _public(value: Any) -> Any:
    """``value`` without keys that name a file, folder or path (DESIGN.md, Privacy)."""
    if isinstance(value, Mapping):
        return {
            key: _public(item)
            for key, item in value.items()
            if not _PRIVATE_KEY.search(str(key).lower())
        }
    if isinstance(value, list):
        return [_public(item) for item in value]
    return value


def _finite(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


# --------------------------------------------------------------------------- atomic files


def _write_text(
    path: str | os.PathLike[str], write: Callable[[TextIO], object], *, newline: str | None = None
) -> Path:
    path = Path(path)
    try:
        with atomic_path(path) as temp_path:
            with temp_path.open("w", encoding="utf-8", newline=newline) as handle:
                write(handle)
    except OSError as exc:
        raise ExportError(f"Cannot write {path}: {exc}") from exc
    return path


def _write_binary(path: str | os.PathLike[str], write: Callable[[BinaryIO], object]) -> Path:
    path = Path(path)
    try:
        with atomic_path(path) as temp_path:
            with temp_path.open("wb") as handle:
                write(handle)
    except OSError as exc:
        raise ExportError(f"Cannot write {path}: {exc}") from exc
    return path


def _write_png(
    path: str | os.PathLike[str],
    pixels: np.ndarray,
    *,
    empty: bool = False,
    extra: Mapping[str, str] | None = None,
) -> Path:
    text = {"Disclaimer": RESEARCH_USE_NOTICE, "Software": f"wsiviewer {__version__}"}
    text.update(extra or {})
    if empty:
        text["Empty"] = "The analysis grid has no cells; this image is a placeholder."
    encoded = _png_bytes(pixels, text)
    return _write_binary(path, lambda handle: handle.write(encoded))


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: PNG colour type by samples per px: grey, RGB, RGBA.
_PNG_COLOUR_TYPES = {1: 0, 3: 2, 4: 6}


def _png_bytes(pixels: np.ndarray, text: Mapping[str, str]) -> bytes:
    """An 8-bit grey, RGB or RGBA PNG of ``(H, W)`` / ``(H, W, 3 or 4) uint8`` px, with text.

    Every row uses the Sub filter and the data is deflated by zlib-ng at level 2: on slide
    pictures that is several times faster than Pillow at its fastest level, for a file of
    about the same size. Text is Latin-1 ``tEXt`` where it can be, UTF-8 ``iTXt`` otherwise.
    """
    height, width = pixels.shape[:2]
    samples = 1 if pixels.ndim == 2 else pixels.shape[2]
    rows = np.ascontiguousarray(pixels, dtype=np.uint8).reshape(height, width * samples)
    filtered = np.empty((height, width * samples + 1), dtype=np.uint8)
    filtered[:, 0] = 1  # Sub: each byte minus the same byte of the px to its left (mod 256)
    filtered[:, 1 : 1 + samples] = rows[:, :samples]
    np.subtract(rows[:, samples:], rows[:, :-samples], out=filtered[:, 1 + samples :])
    header = struct.pack(">IIBBBBB", width, height, 8, _PNG_COLOUR_TYPES[samples], 0, 0, 0)
    chunks = [(b"IHDR", header)]
    chunks += [_png_text_chunk(key, value) for key, value in text.items()]
    idat = bytes(imagecodecs.zlibng_encode(filtered.tobytes(), level=2))
    chunks += [(b"IDAT", idat), (b"IEND", b"")]
    return _PNG_SIGNATURE + b"".join(
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        for kind, data in chunks
    )


def _png_text_chunk(key: str, value: str) -> tuple[bytes, bytes]:
    try:
        return b"tEXt", key.encode("latin-1") + b"\0" + value.encode("latin-1")
    except UnicodeEncodeError:
        # Keyword, no compression, no language tag, no translated keyword, UTF-8 text.
        return b"iTXt", key.encode("latin-1") + b"\0\0\0\0\0" + value.encode("utf-8")
