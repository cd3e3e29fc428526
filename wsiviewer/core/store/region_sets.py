"""Region sets in the Store: the regions of one analysis at one threshold and minimum area.

Region sets are immutable and, once review starts, frozen: review decisions reference
``regions.id``, which never changes, and the database refuses (by trigger) to alter or delete a
frozen set's regions. Saving a set identical to an unfrozen one of the same analysis (same
threshold, minimum area and content, compared by a sha256 over the regions) returns that set
instead of recording a copy; a frozen set is never reused.
"""

from __future__ import annotations

import hashlib
import sqlite3
import struct
import zlib

import numpy as np
import shapely

from wsiviewer.core.analysis.regions import RegionSet
from wsiviewer.core.store.connection import StoreConnection, utc_now
from wsiviewer.core.store.records import (
    REGION_SELECT,
    REGION_SET_SELECT,
    RegionRecord,
    RegionSetRecord,
    region_record,
    region_set_record,
)
from wsiviewer.errors import StoreError

#: A ``regions`` row without its set id: number, area, max and mean P, cell count, outline
#: (WKB) and cells (zlib of ``(row, col)`` little-endian int32 pairs).
_RegionRow = tuple[int, float, float, float, int, bytes, bytes]


class RegionSetsMixin(StoreConnection):
    """Saving, freezing, finding and reading region sets and their regions."""

    def save_region_set(self, analysis_id: int, region_set: RegionSet) -> int:
        """Record the regions of an analysis at one threshold and minimum area; return the
        set's id.

        If an identical set (same threshold, minimum area and regions) of this analysis is
        recorded and not frozen, its id is returned and nothing is written. A frozen set is
        never reused: review of it has started.
        """
        # Encoded before the transaction: other processes keep writing meanwhile.
        prepared = _region_rows(region_set)
        with self._transaction("save the region set") as connection:
            return self._insert_region_set(connection, analysis_id, region_set, prepared)

    @staticmethod
    def _prepare_region_set(region_set: RegionSet) -> tuple[list[_RegionRow], str]:
        """The rows of ``region_set`` and their sha256, for :meth:`_insert_region_set`."""
        return _region_rows(region_set)

    def _insert_region_set(
        self,
        connection: sqlite3.Connection,
        analysis_id: int,
        region_set: RegionSet,
        prepared: tuple[list[_RegionRow], str],
    ) -> int:
        """:meth:`save_region_set` inside the caller's write transaction (the Store records an
        analysis and its first region set in one, :meth:`Store.save_analysis_and_regions`);
        ``prepared`` is :meth:`_prepare_region_set` of ``region_set``."""
        rows, content_sha256 = prepared
        threshold = float(region_set.threshold)
        min_area_mm2 = float(region_set.min_area_mm2)
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
            (analysis_id, threshold, min_area_mm2, len(rows), content_sha256, utc_now()),
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
                f"{REGION_SELECT} WHERE region_set_id = ? ORDER BY number", (region_set_id,)
            ).fetchall()
        return [region_record(row, self.path) for row in rows]

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
                (utc_now(), region_set_id),
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
            return _latest_reviewed(connection, "rs.analysis_id = ?", analysis_id)

    def latest_reviewed_region_set_of_slide(self, slide_identity: str) -> RegionSetRecord | None:
        """The region set of any analysis of a slide with the most recent review decision."""
        with self._reading("find the reviewed region set") as connection:
            return _latest_reviewed(connection, "s.identity = ?", slide_identity)

    def latest_region_set(self, analysis_id: int) -> RegionSetRecord | None:
        """The region set of an analysis recorded last, if any."""
        with self._reading("find the latest region set") as connection:
            self._require(connection, "analyses", analysis_id, "analysis")
            found = connection.execute(
                f"{REGION_SET_SELECT} WHERE analysis_id = ? ORDER BY id DESC LIMIT 1",
                (analysis_id,),
            ).fetchone()
        return None if found is None else region_set_record(found)


def _region_rows(region_set: RegionSet) -> tuple[list[_RegionRow], str]:
    """The ``regions`` rows of a set, and the sha256 of its content that finds an identical
    set: each region's numbers, outline and cells, every blob prefixed by its length."""
    rows: list[_RegionRow] = []
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
    return rows, digest.hexdigest()


def _latest_reviewed(
    connection: sqlite3.Connection, condition: str, value: object
) -> RegionSetRecord | None:
    """The region set with the latest review decision among those matching ``condition``
    (SQL over ``rs`` region sets, ``a`` analyses and ``s`` slides, one ``?``)."""
    found = connection.execute(
        f"""
        {REGION_SET_SELECT} WHERE id = (
            SELECT d.region_set_id FROM review_decisions AS d
            JOIN region_sets AS rs ON rs.id = d.region_set_id
            JOIN analyses AS a ON a.id = rs.analysis_id
            JOIN slides AS s ON s.id = a.slide_id
            WHERE {condition} ORDER BY d.id DESC LIMIT 1)
        """,
        (value,),
    ).fetchone()
    return None if found is None else region_set_record(found)
