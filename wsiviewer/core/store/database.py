"""The results database: analyses, their probability maps, and the region sets drawn from them.

One SQLite database, ``wsiviewer.sqlite`` in the user data directory (:mod:`.paths`), which the
CLI and the GUI (and several processes at once) read and write:

- WAL mode, so readers never block the writer and the writer never blocks readers;
- a busy timeout, so two writers queue for the write lock instead of failing;
- foreign keys on, and write transactions that take the write lock up front
  (``BEGIN IMMEDIATE``), so a transaction never fails half-way on a lock;
- a ``schema_version`` table and :data:`MIGRATIONS`, forward steps applied in order, each in
  its own transaction. A database from a newer wsiviewer is refused, never downgraded; a file
  that is not a wsiviewer database is refused and left untouched.

Probability maps are arrays, so they live beside the database as compressed ``.npz`` files in
``maps/`` (``probabilities`` float32 with NaN = not scored, ``tissue`` bool), written atomically
and referenced from their analysis row by a path relative to the database's folder.

Privacy: the database records a slide by its content identity (OpenSlide quickhash) and its
geometry, never by its path or file name.

Every finished run is recorded, even a repeat: ``analyses.analysis_key`` (what determines the
map, see :attr:`wsiviewer.core.analysis.pipeline.Analysis.key`) is indexed, not unique.
Region sets are immutable and, once review starts, frozen: review decisions will reference
``regions.id``, which never changes, and the database refuses (by trigger) to alter or delete
a frozen set's regions.

Review (schema v2): ``manual_regions`` holds regions a reviewer drew or imported, and
``review_decisions`` is the append-only review log of a region set (accept, reject, reset, note,
add, delete, undo; each row with its reviewer, the model name and the set's threshold). Triggers
keep the log append-only, tie every row to a region of its own set, let an action be undone once,
and freeze the set in the transaction of its first decision. :mod:`.review` derives the review
state from the log.

A :class:`Store` may be shared by threads (its calls are serialised); each process opens its own.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import struct
import threading
import uuid
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import TYPE_CHECKING

import numpy as np
import shapely
from shapely.geometry import Polygon

from wsiviewer import __version__
from wsiviewer.core.analysis.probability import ProbabilityMap
from wsiviewer.core.analysis.regions import Region, RegionSet
from wsiviewer.core.atomic import atomic_path
from wsiviewer.core.paths import data_dir as default_data_dir
from wsiviewer.core.store.records import (
    ANALYSIS_SELECT,
    DECISION_SELECT,
    REGION_SET_SELECT,
    AnalysisRecord,
    ManualRegionRecord,
    RegionRecord,
    RegionSetRecord,
    ReviewDecisionRecord,
    analysis_record,
    decision_record,
    region_set_record,
)
from wsiviewer.core.store.schema import MIGRATIONS, SCHEMA_VERSION_TABLE
from wsiviewer.errors import StoreError

if TYPE_CHECKING:
    from wsiviewer.core.analysis.pipeline import Analysis

#: File name of the database in the data directory.
DATABASE_NAME = "wsiviewer.sqlite"
#: Folder, beside the database, of the probability map files.
MAPS_DIR = "maps"
#: How long a writer waits for another process's write transaction before giving up.
DEFAULT_BUSY_TIMEOUT_S = 10.0

_SQLITE_HEADER = b"SQLite format 3\x00"


class Store:
    """The results database at ``path``, with its map files in ``path.parent / "maps"``.

    Create it with :meth:`open` (the user data directory) or ``Store(path)``; use it as a
    context manager or call :meth:`close`.

    Raises
    ------
    StoreError
        If the file is not a SQLite database or not a wsiviewer one (it is left untouched),
        comes from a newer wsiviewer, cannot be opened, or cannot be migrated.
    """

    def __init__(self, path: Path | str, *, busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S) -> None:
        self.path = Path(path)
        #: The folder that map paths are relative to.
        self.root = self.path.parent
        self._lock = threading.RLock()
        self._connection: sqlite3.Connection | None = None
        self._check_file()
        self._connection = self._connect(busy_timeout_s)
        try:
            self._migrate()
        except BaseException:
            self.close()
            raise

    @classmethod
    def open(
        cls, data_dir: Path | None = None, *, busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S
    ) -> Store:
        """The database ``wsiviewer.sqlite`` in ``data_dir`` (default: the user data directory,
        or ``$WSIVIEWER_DATA_DIR``), created with its folder if missing."""
        try:
            root = default_data_dir() if data_dir is None else Path(data_dir)
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"Cannot create the data directory: {exc}") from exc
        return cls(root / DATABASE_NAME, busy_timeout_s=busy_timeout_s)

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection; further calls raise :class:`StoreError`. Idempotent."""
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    @property
    def closed(self) -> bool:
        return self._connection is None

    @property
    def schema_version(self) -> int:
        with self._reading("read the schema version") as connection:
            return self._read_schema_version(connection)

    @property
    def journal_mode(self) -> str:
        with self._reading("read the journal mode") as connection:
            return str(connection.execute("PRAGMA journal_mode").fetchone()[0])

    # -- analyses -------------------------------------------------------------------------

    def save_analysis(self, analysis: Analysis) -> int:
        """Record a finished analysis and its probability map; return its id.

        The slide and model rows are added or refreshed, the map is written to its own file,
        then the analysis row is inserted, all slide/model/analysis rows in one transaction.
        If the transaction fails, the map file is removed again. Every call adds a new
        analysis row, even for a key already recorded.
        """
        probability_map = analysis.probability_map
        grid = probability_map.grid
        probabilities = np.asarray(probability_map.probabilities, dtype=np.float32)
        tissue = np.asarray(probability_map.tissue, dtype=bool)
        if probabilities.shape != grid.shape or tissue.shape != grid.shape:
            raise StoreError(
                f"Probability map {probabilities.shape} and tissue {tissue.shape} do not match "
                f"grid {grid.shape}"
            )
        slide = analysis.slide
        model = analysis.model
        key = analysis.key
        tissue_settings_json = _to_json(analysis.tissue_settings.to_dict(), "tissue settings")
        grid_json = _to_json(grid.to_dict(), "grid")
        card_json = _to_json(model.to_dict(), "model card")
        timings_json = _to_json(dict(analysis.timings_s), "timings")
        warnings_json = _to_json(list(analysis.warnings), "warnings")
        scored_count = int(np.count_nonzero(~np.isnan(probabilities)))

        map_path = f"{MAPS_DIR}/{uuid.uuid4().hex}.npz"
        map_file = self._map_file(map_path)
        # Compress outside the transaction: other processes keep writing meanwhile.
        _write_map(map_file, probabilities, tissue)
        try:
            with self._transaction("save the analysis") as connection:
                now = _utc_now()
                connection.execute(
                    """
                    INSERT INTO slides (identity, vendor, l0_width, l0_height, mpp, mpp_source,
                                        first_seen_at, last_seen_at)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                    ON CONFLICT (identity) DO UPDATE SET
                        vendor = coalesce(excluded.vendor, vendor),
                        mpp = excluded.mpp,
                        mpp_source = excluded.mpp_source,
                        last_seen_at = excluded.last_seen_at
                    """,
                    (
                        slide.identity,
                        slide.vendor,
                        int(slide.l0_dimensions[0]),
                        int(slide.l0_dimensions[1]),
                        float(slide.mpp.value),
                        slide.mpp.source,
                        now,
                        now,
                    ),
                )
                slide_id = _scalar(
                    connection, "SELECT id FROM slides WHERE identity = ?", (slide.identity,)
                )
                connection.execute(
                    """
                    INSERT INTO models (name, version, architecture, weights_sha256, card_sha256,
                                        input_mpp, threshold, card_json)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                    ON CONFLICT (weights_sha256, card_sha256) DO NOTHING
                    """,
                    (
                        model.name,
                        str(model.version),
                        model.architecture,
                        model.weights_sha256,
                        model.card_sha256,
                        float(model.input_mpp),
                        float(model.threshold),
                        card_json,
                    ),
                )
                model_id = _scalar(
                    connection,
                    "SELECT id FROM models WHERE weights_sha256 = ? AND card_sha256 = ?",
                    (model.weights_sha256, model.card_sha256),
                )
                cursor = connection.execute(
                    """
                    INSERT INTO analyses (analysis_key, slide_id, model_id, mpp, mpp_source,
                        tissue_settings_json, grid_json, device, batch_size, started_at,
                        finished_at, timings_json, warnings_json, cell_count, tissue_count,
                        scored_count, software_version, map_path)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                    """,
                    (
                        key,
                        slide_id,
                        model_id,
                        float(slide.mpp.value),
                        slide.mpp.source,
                        tissue_settings_json,
                        grid_json,
                        analysis.device,
                        int(analysis.batch_size),
                        analysis.started_at,
                        now,
                        timings_json,
                        warnings_json,
                        grid.cell_count,
                        int(np.count_nonzero(tissue)),
                        scored_count,
                        __version__,
                        map_path,
                    ),
                )
                analysis_id = cursor.lastrowid
                assert analysis_id is not None
        except BaseException:
            map_file.unlink(missing_ok=True)
            raise
        return analysis_id

    def analysis(self, analysis_id: int) -> AnalysisRecord:
        """The analysis with ``analysis_id``; :class:`StoreError` if there is none."""
        with self._reading("read an analysis") as connection:
            row = connection.execute(f"{ANALYSIS_SELECT} WHERE a.id = ?", (analysis_id,))
            found = row.fetchone()
        if found is None:
            raise StoreError(f"No analysis {analysis_id} in {self.path}")
        return analysis_record(found)

    def latest_analysis(
        self,
        slide_identity: str,
        weights_sha256: str | None = None,
        card_sha256: str | None = None,
    ) -> AnalysisRecord | None:
        """The most recently recorded analysis of a slide (by a model with these weights and
        this card, when given)."""
        query = f"{ANALYSIS_SELECT} WHERE s.identity = ?"
        parameters: tuple[object, ...] = (slide_identity,)
        if weights_sha256 is not None:
            query += " AND m.weights_sha256 = ?"
            parameters += (weights_sha256,)
        if card_sha256 is not None:
            query += " AND m.card_sha256 = ?"
            parameters += (card_sha256,)
        query += " ORDER BY a.id DESC LIMIT 1"
        with self._reading("find the latest analysis") as connection:
            found = connection.execute(query, parameters).fetchone()
        return None if found is None else analysis_record(found)

    def find_analyses(self, key: str) -> list[AnalysisRecord]:
        """Every recorded analysis with this analysis key, newest first."""
        with self._reading("find analyses") as connection:
            rows = connection.execute(
                f"{ANALYSIS_SELECT} WHERE a.analysis_key = ? ORDER BY a.id DESC", (key,)
            ).fetchall()
        return [analysis_record(row) for row in rows]

    def load_probability_map(self, record: AnalysisRecord) -> ProbabilityMap:
        """The probability map of a recorded analysis.

        Raises
        ------
        StoreError
            If the map file is missing, unreadable, corrupt, or does not match the grid.
        """
        map_file = self._map_file(record.map_path)
        what = f"Probability map {map_file} of analysis {record.id}"
        try:
            # Our own file handle: np.load leaks its own when the zip directory is unreadable.
            with map_file.open("rb") as file:
                loaded = np.load(file, allow_pickle=False)
                if not isinstance(loaded, np.lib.npyio.NpzFile):
                    raise StoreError(f"{what} is corrupt: not an .npz archive")
                with loaded as npz:
                    probabilities = np.asarray(npz["probabilities"])
                    tissue = np.asarray(npz["tissue"])
        except FileNotFoundError as exc:
            raise StoreError(f"{what} is missing") from exc
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
            raise StoreError(f"{what} is corrupt: {exc}") from exc
        grid = record.grid
        if probabilities.shape != grid.shape or tissue.shape != grid.shape:
            raise StoreError(
                f"{what} is corrupt: arrays {probabilities.shape} and {tissue.shape} do not "
                f"match grid {grid.shape}"
            )
        if probabilities.dtype != np.float32 or tissue.dtype != np.bool_:
            raise StoreError(
                f"{what} is corrupt: dtypes {probabilities.dtype} and {tissue.dtype}, "
                "expected float32 and bool"
            )
        return ProbabilityMap(grid, probabilities, tissue)

    # -- region sets ----------------------------------------------------------------------

    def save_region_set(self, analysis_id: int, region_set: RegionSet) -> int:
        """Record the regions of an analysis at one threshold and minimum area; return the
        set's id.

        If an identical set (same threshold, minimum area and regions) of this analysis is
        recorded and not frozen, its id is returned and nothing is written. A frozen set is
        never reused: review of it has started.
        """
        rows: list[tuple[int, float, float, float, int, bytes, bytes]] = []
        digest = hashlib.sha256()
        for region in region_set.regions:
            polygon_wkb = shapely.to_wkb(region.polygon, byte_order=1, output_dimension=2)
            cells = np.ascontiguousarray(region.grid_cells, dtype="<i4").reshape(-1, 2)
            numbers = (
                int(region.number),
                float(region.area_mm2),
                float(region.max_prob),
                float(region.mean_prob),
                len(cells),
            )
            digest.update(struct.pack("<qdddq", *numbers))
            for blob in (polygon_wkb, cells.tobytes()):
                digest.update(struct.pack("<q", len(blob)))
                digest.update(blob)
            rows.append((*numbers, polygon_wkb, zlib.compress(cells.tobytes())))
        content_sha256 = digest.hexdigest()
        threshold = float(region_set.threshold)
        min_area_mm2 = float(region_set.min_area_mm2)

        with self._transaction("save the region set") as connection:
            self._require(connection, "analyses", analysis_id, "analysis")
            existing = connection.execute(
                """
                SELECT id FROM region_sets
                WHERE analysis_id = ? AND threshold = ? AND min_area_mm2 = ?
                    AND content_sha256 = ? AND frozen_at IS NULL
                ORDER BY id LIMIT 1
                """,
                (analysis_id, threshold, min_area_mm2, content_sha256),
            ).fetchone()
            if existing is not None:
                return int(existing[0])
            cursor = connection.execute(
                """
                INSERT INTO region_sets (analysis_id, threshold, min_area_mm2, region_count,
                                         content_sha256, created_at)
                VALUES (?, ?, ?, ?, ?, ?)
                """,
                (analysis_id, threshold, min_area_mm2, len(rows), content_sha256, _utc_now()),
            )
            region_set_id = cursor.lastrowid
            assert region_set_id is not None
            connection.executemany(
                """
                INSERT INTO regions (region_set_id, number, area_mm2, max_prob, mean_prob,
                                     cell_count, polygon_wkb, grid_cells)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                """,
                [(region_set_id, *row) for row in rows],
            )
        return region_set_id

    def region_set(self, region_set_id: int) -> RegionSetRecord:
        """The region set with this id; :class:`StoreError` if there is none."""
        with self._reading("read a region set") as connection:
            found = connection.execute(
                f"{REGION_SET_SELECT} WHERE id = ?", (region_set_id,)
            ).fetchone()
        if found is None:
            raise StoreError(f"No region set {region_set_id} in {self.path}")
        return region_set_record(found)

    def region_sets(self, analysis_id: int) -> list[RegionSetRecord]:
        """The region sets of an analysis, oldest first; :class:`StoreError` if there is no
        such analysis."""
        with self._reading("list region sets") as connection:
            self._require(connection, "analyses", analysis_id, "analysis")
            rows = connection.execute(
                f"{REGION_SET_SELECT} WHERE analysis_id = ? ORDER BY id", (analysis_id,)
            ).fetchall()
        return [region_set_record(row) for row in rows]

    def regions(self, region_set_id: int) -> list[RegionRecord]:
        """The regions of a region set in order of their number; :class:`StoreError` if there
        is no such set or a stored region is corrupt."""
        with self._reading("read regions") as connection:
            self._require(connection, "region_sets", region_set_id, "region set")
            rows = connection.execute(
                """
                SELECT id, region_set_id, number, area_mm2, max_prob, mean_prob, cell_count,
                       polygon_wkb, grid_cells
                FROM regions WHERE region_set_id = ? ORDER BY number
                """,
                (region_set_id,),
            ).fetchall()
        return [self._region_record(row) for row in rows]

    def load_region_set(self, region_set_id: int) -> RegionSet:
        """A recorded region set as a :class:`RegionSet`."""
        record = self.region_set(region_set_id)
        regions = tuple(stored.region for stored in self.regions(region_set_id))
        return RegionSet(record.threshold, record.min_area_mm2, regions)

    def freeze_region_set(self, region_set_id: int) -> RegionSetRecord:
        """Freeze a region set (review has started); already frozen sets keep their time."""
        with self._transaction("freeze the region set") as connection:
            connection.execute(
                "UPDATE region_sets SET frozen_at = ? WHERE id = ? AND frozen_at IS NULL",
                (_utc_now(), region_set_id),
            )
            found = connection.execute(
                f"{REGION_SET_SELECT} WHERE id = ?", (region_set_id,)
            ).fetchone()
            if found is None:
                raise StoreError(f"No region set {region_set_id} in {self.path}")
        return region_set_record(found)

    def find_region_set(
        self, analysis_id: int, threshold: float, min_area_mm2: float | None = None
    ) -> RegionSetRecord | None:
        """The region set of an analysis at this threshold (and minimum area, if given):
        the latest frozen one (its review has started), else the latest; ``None`` if none."""
        query = f"{REGION_SET_SELECT} WHERE analysis_id = ? AND abs(threshold - ?) < 1e-9"
        parameters: tuple[object, ...] = (analysis_id, float(threshold))
        if min_area_mm2 is not None:
            query += " AND abs(min_area_mm2 - ?) < 1e-12"
            parameters += (float(min_area_mm2),)
        query += " ORDER BY frozen_at IS NOT NULL DESC, id DESC LIMIT 1"
        with self._reading("find a region set") as connection:
            self._require(connection, "analyses", analysis_id, "analysis")
            found = connection.execute(query, parameters).fetchone()
        return None if found is None else region_set_record(found)

    def latest_reviewed_region_set(self, analysis_id: int) -> RegionSetRecord | None:
        """The region set of an analysis with the most recent review decision, if any."""
        with self._reading("find the reviewed region set") as connection:
            self._require(connection, "analyses", analysis_id, "analysis")
            found = connection.execute(
                f"""
                {REGION_SET_SELECT} WHERE id = (
                    SELECT d.region_set_id FROM review_decisions AS d
                    JOIN region_sets AS rs ON rs.id = d.region_set_id
                    WHERE rs.analysis_id = ? ORDER BY d.id DESC LIMIT 1)
                """,
                (analysis_id,),
            ).fetchone()
        return None if found is None else region_set_record(found)

    def latest_reviewed_region_set_of_slide(self, slide_identity: str) -> RegionSetRecord | None:
        """The region set of any analysis of a slide with the most recent review decision."""
        with self._reading("find the reviewed region set") as connection:
            found = connection.execute(
                f"""
                {REGION_SET_SELECT} WHERE id = (
                    SELECT d.region_set_id FROM review_decisions AS d
                    JOIN region_sets AS rs ON rs.id = d.region_set_id
                    JOIN analyses AS a ON a.id = rs.analysis_id
                    JOIN slides AS s ON s.id = a.slide_id
                    WHERE s.identity = ? ORDER BY d.id DESC LIMIT 1)
                """,
                (slide_identity,),
            ).fetchone()
        return None if found is None else region_set_record(found)

    def latest_region_set(self, analysis_id: int) -> RegionSetRecord | None:
        """The region set of an analysis recorded last, if any."""
        with self._reading("find the latest region set") as connection:
            self._require(connection, "analyses", analysis_id, "analysis")
            found = connection.execute(
                f"{REGION_SET_SELECT} WHERE analysis_id = ? ORDER BY id DESC LIMIT 1",
                (analysis_id,),
            ).fetchone()
        return None if found is None else region_set_record(found)

    # -- review ---------------------------------------------------------------------------

    def record_review_decision(
        self,
        region_set_id: int,
        action: str,
        reviewer: str,
        *,
        region_id: int | None = None,
        manual_region_id: int | None = None,
        note: str | None = None,
    ) -> int:
        """Append one decision about one region (model ``region_id`` or ``manual_region_id``)
        to the review log in one committed transaction; return its id.

        The set is frozen by the same transaction if it was not. ``add`` and ``undo`` have
        their own methods (:meth:`add_manual_region`, :meth:`undo_review_decision`).
        """
        if action not in {"accept", "reject", "reset", "note", "delete"}:
            raise StoreError(
                f"Invalid review action {action!r}; expected accept, reject, reset, note or delete"
            )
        with self._transaction("record a review decision") as connection:
            return self._insert_decision(
                connection,
                region_set_id,
                action,
                reviewer,
                region_id=region_id,
                manual_region_id=manual_region_id,
                note=note,
            )

    def add_manual_region(
        self,
        region_set_id: int,
        polygon: Polygon,
        area_mm2: float,
        reviewer: str,
        note: str = "",
    ) -> tuple[int, int]:
        """Record a reviewer's region (level-0 px) and its ``add`` decision in one committed
        transaction; return ``(manual region id, decision id)``."""
        polygon_wkb = shapely.to_wkb(polygon, byte_order=1, output_dimension=2)
        with self._transaction("add a manual region") as connection:
            self._require(connection, "region_sets", region_set_id, "region set")
            cursor = connection.execute(
                """
                INSERT INTO manual_regions (region_set_id, polygon_wkb, area_mm2, created_at,
                                            reviewer)
                VALUES (?, ?, ?, ?, ?)
                """,
                (region_set_id, polygon_wkb, float(area_mm2), _utc_now(), reviewer),
            )
            manual_region_id = cursor.lastrowid
            assert manual_region_id is not None
            decision_id = self._insert_decision(
                connection,
                region_set_id,
                "add",
                reviewer,
                manual_region_id=manual_region_id,
                note=note,
            )
        return manual_region_id, decision_id

    def undo_review_decision(
        self, region_set_id: int, reviewer: str
    ) -> ReviewDecisionRecord | None:
        """Undo ``reviewer``'s latest not-yet-undone action in the set (one committed
        transaction appending an ``undo`` row); return the undone decision, ``None`` if none."""
        with self._transaction("undo a review decision") as connection:
            self._require(connection, "region_sets", region_set_id, "region set")
            found = connection.execute(
                f"""
                {DECISION_SELECT}
                WHERE d.region_set_id = ? AND d.reviewer = ? AND d.action <> 'undo'
                    AND NOT EXISTS (SELECT 1 FROM review_decisions AS u WHERE u.undoes_id = d.id)
                ORDER BY d.id DESC LIMIT 1
                """,
                (region_set_id, reviewer),
            ).fetchone()
            if found is None:
                return None
            undone = decision_record(found)
            self._insert_decision(
                connection,
                region_set_id,
                "undo",
                reviewer,
                region_id=undone.region_id,
                manual_region_id=undone.manual_region_id,
                undoes_id=undone.id,
            )
        return undone

    def review_decisions(self, region_set_id: int) -> list[ReviewDecisionRecord]:
        """The review log of a region set, oldest first."""
        with self._reading("read review decisions") as connection:
            self._require(connection, "region_sets", region_set_id, "region set")
            rows = connection.execute(
                f"{DECISION_SELECT} WHERE d.region_set_id = ? ORDER BY d.id", (region_set_id,)
            ).fetchall()
        return [decision_record(row) for row in rows]

    def manual_regions(self, region_set_id: int) -> list[ManualRegionRecord]:
        """Every manual region ever added to a set (undone adds included), oldest first."""
        with self._reading("read manual regions") as connection:
            self._require(connection, "region_sets", region_set_id, "region set")
            rows = connection.execute(
                """
                SELECT id, region_set_id, polygon_wkb, area_mm2, created_at, reviewer
                FROM manual_regions WHERE region_set_id = ? ORDER BY id
                """,
                (region_set_id,),
            ).fetchall()
        records: list[ManualRegionRecord] = []
        for row in rows:
            try:
                polygon = shapely.from_wkb(bytes(row["polygon_wkb"]))
            except (shapely.errors.GEOSException, ValueError, TypeError) as exc:
                raise StoreError(
                    f"Manual region {row['id']} in {self.path} is corrupt: {exc}"
                ) from exc
            if not isinstance(polygon, Polygon):
                raise StoreError(f"Manual region {row['id']} in {self.path} is corrupt")
            records.append(
                ManualRegionRecord(
                    id=int(row["id"]),
                    region_set_id=int(row["region_set_id"]),
                    polygon=polygon,
                    area_mm2=float(row["area_mm2"]),
                    created_at=row["created_at"],
                    reviewer=row["reviewer"],
                )
            )
        return records

    def _insert_decision(
        self,
        connection: sqlite3.Connection,
        region_set_id: int,
        action: str,
        reviewer: str,
        *,
        region_id: int | None = None,
        manual_region_id: int | None = None,
        note: str | None = None,
        undoes_id: int | None = None,
    ) -> int:
        """Insert one log row inside the caller's transaction, with the set's model name and
        threshold; the database's checks and triggers refuse a row that does not fit."""
        if not reviewer or not reviewer.strip():
            raise StoreError(f"Invalid reviewer name {reviewer!r}: it must not be empty")
        cursor = connection.execute(
            """
            INSERT INTO review_decisions (region_set_id, region_id, manual_region_id, action,
                note, undoes_id, reviewer, model_name, threshold, created_at)
            SELECT rs.id, ?, ?, ?, ?, ?, ?, m.name, rs.threshold, ?
            FROM region_sets AS rs
            JOIN analyses AS a ON a.id = rs.analysis_id
            JOIN models AS m ON m.id = a.model_id
            WHERE rs.id = ?
            """,
            (
                region_id,
                manual_region_id,
                action,
                note,
                undoes_id,
                reviewer,
                _utc_now(),
                region_set_id,
            ),
        )
        if cursor.rowcount != 1 or cursor.lastrowid is None:
            raise StoreError(f"No region set {region_set_id} in {self.path}")
        return cursor.lastrowid

    # -- internals ------------------------------------------------------------------------

    def _check_file(self) -> None:
        """Refuse, without touching it, a file that is not a SQLite database."""
        if not self.root.is_dir():
            raise StoreError(f"Folder {self.root} of the results database does not exist")
        if self.path.exists() and not self.path.is_file():
            raise StoreError(f"Results database {self.path} is not a file")
        try:
            with self.path.open("rb") as file:
                header = file.read(len(_SQLITE_HEADER))
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StoreError(f"Cannot read results database {self.path}: {exc}") from exc
        # An empty file is a new database to SQLite; anything else must carry its header.
        if header and header != _SQLITE_HEADER:
            raise StoreError(
                f"{self.path} is not a SQLite database; it was left untouched. Move it aside "
                "to start a new results database."
            )

    def _connect(self, busy_timeout_s: float) -> sqlite3.Connection:
        try:
            # isolation_level=None: no implicit transactions, we BEGIN IMMEDIATE ourselves.
            connection = sqlite3.connect(
                self.path,
                timeout=busy_timeout_s,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise StoreError(f"Cannot open results database {self.path}: {exc}") from exc
        try:
            connection.row_factory = sqlite3.Row
            connection.execute(f"PRAGMA busy_timeout = {round(busy_timeout_s * 1000)}")
            connection.execute("PRAGMA foreign_keys = ON")
            # Read before anything writes: a corrupt database fails here and stays untouched.
            connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.Error as exc:
            connection.close()
            raise StoreError(
                f"Cannot open results database {self.path} (is it corrupt?): {exc}"
            ) from exc
        return connection

    def _migrate(self) -> None:
        """Check the schema version, switch to WAL, and apply the pending migrations."""
        migrations = MIGRATIONS
        for index, migration in enumerate(migrations):
            if migration.version != index + 1:
                raise StoreError(
                    f"Migration {index} has version {migration.version}, expected {index + 1}"
                )
        latest = len(migrations)
        with self._reading("read the schema version") as connection:
            # Refuse a foreign or newer database before anything writes to it.
            current = self._read_schema_version(connection)
            self._refuse_newer(current, latest)
            connection.execute("PRAGMA journal_mode = WAL").fetchone()
            # In WAL mode NORMAL cannot corrupt the database; a power cut may lose the last
            # commits, never half of one.
            connection.execute("PRAGMA synchronous = NORMAL")
        while current < latest:
            with self._transaction("migrate the schema") as connection:
                connection.execute(SCHEMA_VERSION_TABLE)
                # Again under the write lock: another process may have migrated meanwhile.
                current = self._read_schema_version(connection)
                self._refuse_newer(current, latest)
                if current == latest:
                    break
                migration = migrations[current]
                try:
                    for statement in migration.statements:
                        connection.execute(statement)
                except sqlite3.Error as exc:
                    raise StoreError(
                        f"Cannot migrate results database {self.path} to schema version "
                        f"{migration.version} ({migration.description}): {exc}"
                    ) from exc
                connection.execute(
                    "INSERT INTO schema_version (version, description, applied_at, "
                    "software_version) VALUES (?, ?, ?, ?)",
                    (migration.version, migration.description, _utc_now(), __version__),
                )
                current = migration.version

    def _refuse_newer(self, current: int, latest: int) -> None:
        if current > latest:
            raise StoreError(
                f"Results database {self.path} has schema version {current}, newer than this "
                f"wsiviewer {__version__} knows ({latest}); upgrade wsiviewer to open it"
            )

    def _read_schema_version(self, connection: sqlite3.Connection) -> int:
        has_table = connection.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
        ).fetchone()
        if has_table is None:
            other = connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' "
                "AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' LIMIT 1"
            ).fetchone()
            if other is not None:
                raise StoreError(
                    f"{self.path} is a SQLite database but not a wsiviewer results database "
                    f"(table {other[0]!r}, no schema_version); it was left untouched"
                )
            return 0
        version = connection.execute("SELECT max(version) FROM schema_version").fetchone()[0]
        return int(version or 0)

    def _require(self, connection: sqlite3.Connection, table: str, row_id: int, what: str) -> None:
        found = connection.execute(f"SELECT 1 FROM {table} WHERE id = ?", (row_id,)).fetchone()
        if found is None:
            raise StoreError(f"No {what} {row_id} in {self.path}")

    def _region_record(self, row: sqlite3.Row) -> RegionRecord:
        try:
            polygon = shapely.from_wkb(bytes(row["polygon_wkb"]))
            cells = np.frombuffer(zlib.decompress(row["grid_cells"]), dtype="<i4")
        except (shapely.errors.GEOSException, zlib.error, ValueError, TypeError) as exc:
            raise StoreError(f"Region {row['id']} in {self.path} is corrupt: {exc}") from exc
        if not isinstance(polygon, Polygon) or len(cells) != 2 * row["cell_count"]:
            raise StoreError(f"Region {row['id']} in {self.path} is corrupt")
        region = Region(
            number=int(row["number"]),
            polygon=polygon,
            area_mm2=float(row["area_mm2"]),
            max_prob=float(row["max_prob"]),
            mean_prob=float(row["mean_prob"]),
            grid_cells=cells.reshape(-1, 2).astype(np.intp),
        )
        return RegionRecord(int(row["id"]), int(row["region_set_id"]), region)

    def _map_file(self, map_path: str) -> Path:
        """The map file of a stored relative path, refusing paths that leave the folder."""
        relative = PurePosixPath(map_path)
        if relative.is_absolute() or ".." in relative.parts or not relative.parts:
            raise StoreError(f"Invalid probability map path {map_path!r} in {self.path}")
        return self.root.joinpath(*relative.parts)

    def _open_connection(self) -> sqlite3.Connection:
        if self._connection is None:
            raise StoreError(f"Results database {self.path} is closed")
        return self._connection

    @contextmanager
    def _reading(self, action: str) -> Iterator[sqlite3.Connection]:
        with self._lock:
            connection = self._open_connection()
            try:
                yield connection
            except sqlite3.Error as exc:
                raise StoreError(f"Cannot {action} in {self.path}: {exc}") from exc

    @contextmanager
    def _transaction(self, action: str) -> Iterator[sqlite3.Connection]:
        """A write transaction holding the write lock from its start (waits up to the busy
        timeout for it); commits on success, rolls back on any exception."""
        with self._lock:
            connection = self._open_connection()
            try:
                connection.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StoreError(f"Cannot {action} in {self.path}: {exc}") from exc
            try:
                yield connection
                connection.execute("COMMIT")
            except BaseException as exc:
                if connection.in_transaction:
                    connection.rollback()
                if isinstance(exc, sqlite3.Error):
                    raise StoreError(f"Cannot {action} in {self.path}: {exc}") from exc
                raise


def _write_map(map_file: Path, probabilities: np.ndarray, tissue: np.ndarray) -> None:
    """Write a map file atomically, and durably before the row that references it commits."""
    try:
        with atomic_path(map_file) as temporary, temporary.open("wb") as file:
            np.savez_compressed(file, probabilities=probabilities, tissue=tissue)
            file.flush()
            os.fsync(file.fileno())
    except OSError as exc:
        raise StoreError(f"Cannot write probability map {map_file}: {exc}") from exc


def _to_json(value: object, what: str) -> str:
    try:
        return json.dumps(value, sort_keys=True, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"Cannot store the {what}: {exc}") from exc


def _scalar(connection: sqlite3.Connection, query: str, parameters: tuple[object, ...]) -> int:
    row = connection.execute(query, parameters).fetchone()
    assert row is not None
    return int(row[0])


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")
