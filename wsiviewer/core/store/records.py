"""Rows of the results database as frozen records, and the queries that read them.

Each ``*_SELECT`` names the columns its ``*_record`` parser reads; a row that does not parse
(a corrupt column, a stored value out of range) is a :class:`StoreError` naming the row.
"""

from __future__ import annotations

import json
import sqlite3
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import shapely
from shapely.geometry import Polygon

from wsiviewer.core.analysis.grid import PatchGrid
from wsiviewer.core.analysis.regions import Region
from wsiviewer.core.model.cards import ModelSummary
from wsiviewer.core.slides import Mpp, MppSource
from wsiviewer.errors import ResolutionError, StoreError


@dataclass(frozen=True)
class AnalysisRecord:
    """A recorded analysis, columns parsed; :meth:`Store.load_probability_map` reads its map."""

    id: int
    #: sha256 of what determines the map (slide, weights, card, mpp, tissue settings).
    key: str
    slide_identity: str
    slide_vendor: str | None
    #: Level-0 ``(width, height)`` of the slide in px.
    l0_dimensions: tuple[int, int]
    #: The µm/px the analysis used, and where it came from.
    mpp: Mpp
    #: The model as it was recorded, and its row id.
    model: ModelSummary
    model_id: int
    tissue_settings: dict[str, Any] = field(hash=False)
    grid: PatchGrid
    device: str
    batch_size: int
    #: ISO-8601 UTC.
    started_at: str
    #: ISO-8601 UTC: when the finished analysis was recorded.
    finished_at: str
    timings_s: dict[str, float] = field(hash=False)
    warnings: tuple[str, ...]
    cell_count: int
    tissue_count: int
    scored_count: int
    software_version: str
    #: Path of the probability map file, relative to the database's folder (POSIX separators).
    map_path: str


@dataclass(frozen=True)
class RegionSetRecord:
    """A row of ``region_sets``."""

    id: int
    analysis_id: int
    threshold: float
    min_area_mm2: float
    region_count: int
    #: ISO-8601 UTC.
    created_at: str
    #: ISO-8601 UTC when review started; ``None`` while the set is not frozen.
    frozen_at: str | None

    @property
    def frozen(self) -> bool:
        return self.frozen_at is not None


@dataclass(frozen=True)
class RegionRecord:
    """A stored region: its stable row id (what review decisions reference) and the region."""

    id: int
    region_set_id: int
    region: Region = field(compare=False, hash=False)


@dataclass(frozen=True)
class ManualRegionRecord:
    """A row of ``manual_regions``: a region a reviewer drew or imported (level-0 px)."""

    id: int
    region_set_id: int
    polygon: Polygon = field(compare=False, hash=False)
    area_mm2: float
    #: ISO-8601 UTC.
    created_at: str
    reviewer: str
    #: ``drawn``, ``imported`` or ``edit`` (the result of a region edit); ``None`` for rows
    #: recorded before schema v3.
    origin: str | None = None
    #: The status its ``add`` gives it: ``accepted`` for a region a reviewer drew as IDC.
    initial_status: str = "pending"
    #: The QuPath name, classification and colour (``#rrggbb``) it was imported with, if any.
    name: str | None = None
    classification: str | None = None
    color: str | None = None
    #: sha256 of the imported feature (geometry, name, class): re-imports are skipped.
    import_key: str | None = None


@dataclass(frozen=True)
class RegionEditRecord:
    """A row of ``region_edits``: a region an ``edit`` decision replaced (``source``) or
    added (``result``, always a manual region)."""

    decision_id: int
    role: str
    region_id: int | None
    manual_region_id: int | None


@dataclass(frozen=True)
class ReviewDecisionRecord:
    """A row of the append-only review log ``review_decisions``."""

    id: int
    region_set_id: int
    #: Exactly one of ``region_id`` (a model region) and ``manual_region_id`` is set.
    region_id: int | None
    manual_region_id: int | None
    #: One of :data:`REVIEW_ACTIONS`.
    action: str
    note: str | None
    #: The decision an ``undo`` undoes; ``None`` for every other action.
    undoes_id: int | None
    reviewer: str
    model_name: str
    threshold: float
    #: ISO-8601 UTC.
    created_at: str
    #: What an ``edit`` did (one of :data:`~.schema.EDIT_KINDS`); ``None`` for other actions.
    edit_kind: str | None = None


ANALYSIS_SELECT = """
    SELECT a.id, a.analysis_key, s.identity AS slide_identity, s.vendor AS slide_vendor,
           s.l0_width, s.l0_height, a.mpp, a.mpp_source,
           m.id AS model_id, m.name AS model_name, m.version AS model_version,
           m.architecture, m.weights_sha256, m.card_sha256, m.input_mpp, m.threshold,
           a.tissue_settings_json, a.grid_json, a.device, a.batch_size,
           a.started_at, a.finished_at, a.timings_json, a.warnings_json, a.cell_count,
           a.tissue_count, a.scored_count, a.software_version, a.map_path
    FROM analyses AS a
    JOIN slides AS s ON s.id = a.slide_id
    JOIN models AS m ON m.id = a.model_id
"""


REGION_SET_SELECT = """
    SELECT id, analysis_id, threshold, min_area_mm2, region_count, created_at, frozen_at
    FROM region_sets
"""


REGION_SELECT = """
    SELECT id, region_set_id, number, area_mm2, max_prob, mean_prob, cell_count,
           polygon_wkb, grid_cells
    FROM regions
"""


MANUAL_REGION_SELECT = """
    SELECT id, region_set_id, polygon_wkb, area_mm2, created_at, reviewer, origin,
           initial_status, name, classification, color, import_key
    FROM manual_regions
"""


DECISION_SELECT = """
    SELECT d.id, d.region_set_id, d.region_id, d.manual_region_id, d.action, d.note,
           d.undoes_id, d.reviewer, d.model_name, d.threshold, d.created_at, d.edit_kind
    FROM review_decisions AS d
"""


REGION_EDIT_SELECT = """
    SELECT e.decision_id, e.role, e.region_id, e.manual_region_id
    FROM region_edits AS e
"""


def region_edit_record(row: sqlite3.Row) -> RegionEditRecord:
    return RegionEditRecord(
        decision_id=int(row["decision_id"]),
        role=str(row["role"]),
        region_id=None if row["region_id"] is None else int(row["region_id"]),
        manual_region_id=(
            None if row["manual_region_id"] is None else int(row["manual_region_id"])
        ),
    )


def decision_record(row: sqlite3.Row) -> ReviewDecisionRecord:
    return ReviewDecisionRecord(
        id=int(row["id"]),
        region_set_id=int(row["region_set_id"]),
        region_id=None if row["region_id"] is None else int(row["region_id"]),
        manual_region_id=(
            None if row["manual_region_id"] is None else int(row["manual_region_id"])
        ),
        action=str(row["action"]),
        note=row["note"],
        undoes_id=None if row["undoes_id"] is None else int(row["undoes_id"]),
        reviewer=str(row["reviewer"]),
        model_name=str(row["model_name"]),
        threshold=float(row["threshold"]),
        created_at=str(row["created_at"]),
        edit_kind=row["edit_kind"],
    )


def analysis_record(row: sqlite3.Row) -> AnalysisRecord:
    try:
        model = ModelSummary(
            name=row["model_name"],
            version=row["model_version"],
            architecture=row["architecture"],
            weights_sha256=row["weights_sha256"],
            card_sha256=row["card_sha256"],
            input_mpp=float(row["input_mpp"]),
            threshold=float(row["threshold"]),
        )
        return AnalysisRecord(
            id=int(row["id"]),
            key=row["analysis_key"],
            slide_identity=row["slide_identity"],
            slide_vendor=row["slide_vendor"],
            l0_dimensions=(int(row["l0_width"]), int(row["l0_height"])),
            mpp=Mpp(float(row["mpp"]), cast(MppSource, row["mpp_source"])),
            model=model,
            model_id=int(row["model_id"]),
            tissue_settings=json.loads(row["tissue_settings_json"]),
            grid=PatchGrid.from_dict(json.loads(row["grid_json"])),
            device=row["device"],
            batch_size=int(row["batch_size"]),
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            timings_s={
                str(name): float(seconds)
                for name, seconds in json.loads(row["timings_json"]).items()
            },
            warnings=tuple(str(note) for note in json.loads(row["warnings_json"])),
            cell_count=int(row["cell_count"]),
            tissue_count=int(row["tissue_count"]),
            scored_count=int(row["scored_count"]),
            software_version=row["software_version"],
            map_path=row["map_path"],
        )
    except (
        ValueError,
        KeyError,
        TypeError,
        AttributeError,
        AssertionError,
        ResolutionError,
    ) as exc:
        # json.JSONDecodeError is a ValueError; ResolutionError is an implausible stored mpp.
        raise StoreError(f"Analysis {row['id']} is corrupt: {exc}") from exc


def region_set_record(row: sqlite3.Row) -> RegionSetRecord:
    return RegionSetRecord(
        id=int(row["id"]),
        analysis_id=int(row["analysis_id"]),
        threshold=float(row["threshold"]),
        min_area_mm2=float(row["min_area_mm2"]),
        region_count=int(row["region_count"]),
        created_at=row["created_at"],
        frozen_at=row["frozen_at"],
    )


def region_record(row: sqlite3.Row, database: Path) -> RegionRecord:
    """A row of :data:`REGION_SELECT`; ``database`` names the file in the error."""
    try:
        polygon = shapely.from_wkb(bytes(row["polygon_wkb"]))
        cells = np.frombuffer(zlib.decompress(row["grid_cells"]), dtype="<i4")
    except (shapely.errors.GEOSException, zlib.error, ValueError, TypeError) as exc:
        raise StoreError(f"Region {row['id']} in {database} is corrupt: {exc}") from exc
    if not isinstance(polygon, Polygon) or len(cells) != 2 * row["cell_count"]:
        raise StoreError(f"Region {row['id']} in {database} is corrupt")
    region = Region(
        number=int(row["number"]),
        polygon=polygon,
        area_mm2=float(row["area_mm2"]),
        max_prob=float(row["max_prob"]),
        mean_prob=float(row["mean_prob"]),
        grid_cells=cells.reshape(-1, 2).astype(np.intp),
    )
    return RegionRecord(int(row["id"]), int(row["region_set_id"]), region)


def manual_region_record(row: sqlite3.Row, database: Path) -> ManualRegionRecord:
    """A row of :data:`MANUAL_REGION_SELECT`; ``database`` names the file in the error."""
    try:
        polygon = shapely.from_wkb(bytes(row["polygon_wkb"]))
    except (shapely.errors.GEOSException, ValueError, TypeError) as exc:
        raise StoreError(f"Manual region {row['id']} in {database} is corrupt: {exc}") from exc
    if not isinstance(polygon, Polygon):
        raise StoreError(f"Manual region {row['id']} in {database} is corrupt")
    return ManualRegionRecord(
        id=int(row["id"]),
        region_set_id=int(row["region_set_id"]),
        polygon=polygon,
        area_mm2=float(row["area_mm2"]),
        created_at=row["created_at"],
        reviewer=row["reviewer"],
        origin=row["origin"],
        initial_status=str(row["initial_status"]),
        name=row["name"],
        classification=row["classification"],
        color=row["color"],
        import_key=row["import_key"],
    )
