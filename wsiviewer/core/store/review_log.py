"""The review log in the Store: decisions, manual regions, region edits and undo.

``manual_regions`` holds regions a reviewer drew or imported, or that a region edit made, and
``review_decisions`` is the append-only review log of a region set (accept, reject, reset,
note, add, delete, edit, undo; each row with its reviewer, the model name and the set's
threshold). An ``edit`` (schema v3) replaces regions by new manual regions in one decision;
``region_edits`` lists what it replaced and what it added. Triggers keep the log append-only,
tie every row to a region of its own set, let an action be undone once, and freeze the set in
the transaction of its first decision. Every method here is one committed transaction, so an
action is on disk before the reviewer sees it done. :mod:`wsiviewer.core.review` derives the
review state from the log.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

import shapely
from shapely.geometry import Polygon

from wsiviewer.core.store.connection import StoreConnection, utc_now
from wsiviewer.core.store.records import (
    ANALYSIS_SELECT,
    DECISION_SELECT,
    MANUAL_REGION_SELECT,
    REGION_EDIT_SELECT,
    REGION_SET_SELECT,
    AnalysisRecord,
    ManualRegionRecord,
    RegionEditRecord,
    RegionSetRecord,
    ReviewDecisionRecord,
    analysis_record,
    decision_record,
    manual_region_record,
    region_edit_record,
    region_set_record,
)
from wsiviewer.core.store.schema import EDIT_KINDS, MANUAL_ORIGINS
from wsiviewer.errors import StoreError


@dataclass(frozen=True)
class NewManualRegion:
    """A manual region to record: its outline (level-0 px), area and where it came from."""

    polygon: Polygon
    area_mm2: float
    origin: str = "drawn"
    #: ``pending``, or ``accepted`` for a region drawn as IDC.
    initial_status: str = "pending"
    name: str | None = None
    classification: str | None = None
    #: ``#rrggbb``.
    color: str | None = None
    import_key: str | None = None


#: A region of a set: ``(regions.id, None)`` or ``(None, manual_regions.id)``.
RegionKey = tuple[int | None, int | None]


@dataclass(frozen=True)
class RegionSetActivity:
    """A region set with how much of its review log there is."""

    region_set: RegionSetRecord
    #: Rows in its review log (undos included); 0: never reviewed.
    decision_count: int
    #: ISO-8601 UTC of its latest decision, ``None`` if none.
    last_decision_at: str | None
    #: Id of its latest decision (orders sets by when they were last reviewed).
    last_decision_id: int | None


@dataclass(frozen=True)
class AnalysisActivity:
    """An analysis of a slide and its region sets, oldest set first."""

    analysis: AnalysisRecord
    region_sets: tuple[RegionSetActivity, ...]


class ReviewLogMixin(StoreConnection):
    """Appending to and reading the review log of a region set, and its manual regions."""

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
        polygon: Polygon | NewManualRegion,
        area_mm2: float | None = None,
        reviewer: str = "",
        note: str = "",
    ) -> tuple[int, int]:
        """Record a reviewer's region (level-0 px; a :class:`NewManualRegion` says where it
        came from) and its ``add`` decision in one committed transaction; return
        ``(manual region id, decision id)``."""
        region = (
            polygon
            if isinstance(polygon, NewManualRegion)
            else NewManualRegion(polygon, float(area_mm2 if area_mm2 is not None else 0.0))
        )
        with self._transaction("add a manual region") as connection:
            self._require(connection, "region_sets", region_set_id, "region set")
            manual_region_id = self._insert_manual_region(
                connection, region_set_id, region, reviewer
            )
            decision_id = self._insert_decision(
                connection,
                region_set_id,
                "add",
                reviewer,
                manual_region_id=manual_region_id,
                note=note,
            )
        return manual_region_id, decision_id

    def record_region_edit(
        self,
        region_set_id: int,
        edit_kind: str,
        reviewer: str,
        sources: Sequence[RegionKey],
        results: Sequence[NewManualRegion],
        note: str | None = None,
    ) -> tuple[int, list[int]]:
        """Replace the regions ``sources`` by new manual regions ``results`` in one
        ``edit`` decision (one committed transaction); return ``(decision id, the new manual
        region ids)``. The decision names the first source.

        Raises
        ------
        StoreError
            If the kind is unknown, there is no source or no result, or a source is not a
            region of the set.
        """
        if edit_kind not in EDIT_KINDS:
            raise StoreError(
                f"Invalid region edit {edit_kind!r}; expected one of {', '.join(EDIT_KINDS)}"
            )
        if not sources or not results:
            raise StoreError(
                f"A region edit needs regions to replace and regions to add, got "
                f"{len(sources)} and {len(results)}"
            )
        for key in sources:
            if (key[0] is None) == (key[1] is None):
                raise StoreError(f"Invalid region key {key!r}: one of the two ids is needed")
        with self._transaction("record a region edit") as connection:
            self._require(connection, "region_sets", region_set_id, "region set")
            added = [
                self._insert_manual_region(connection, region_set_id, result, reviewer)
                for result in results
            ]
            region_id, manual_region_id = sources[0]
            decision_id = self._insert_decision(
                connection,
                region_set_id,
                "edit",
                reviewer,
                region_id=region_id,
                manual_region_id=manual_region_id,
                note=note,
                edit_kind=edit_kind,
            )
            connection.executemany(
                """
                INSERT INTO region_edits (decision_id, role, region_id, manual_region_id)
                VALUES (?, ?, ?, ?)
                """,
                [(decision_id, "source", *key) for key in sources]
                + [(decision_id, "result", None, manual_id) for manual_id in added],
            )
        return decision_id, added

    def region_edits(self, region_set_id: int) -> list[RegionEditRecord]:
        """What every ``edit`` of a set replaced and added, in log order."""
        with self._reading("read region edits") as connection:
            self._require(connection, "region_sets", region_set_id, "region set")
            rows = connection.execute(
                f"""
                {REGION_EDIT_SELECT}
                JOIN review_decisions AS d ON d.id = e.decision_id
                WHERE d.region_set_id = ? ORDER BY e.decision_id, e.id
                """,
                (region_set_id,),
            ).fetchall()
        return [region_edit_record(row) for row in rows]

    def slide_review_history(self, slide_identity: str) -> list[AnalysisActivity]:
        """Every analysis of a slide (oldest first) with its region sets and how far each was
        reviewed: the history a viewer lists so that no review is ever out of reach."""
        with self._reading("read the slide's analyses") as connection:
            analyses = connection.execute(
                f"{ANALYSIS_SELECT} WHERE s.identity = ? ORDER BY a.id", (slide_identity,)
            ).fetchall()
            ids = [int(row["id"]) for row in analyses]
            marks = ", ".join("?" * len(ids))
            sets = connection.execute(
                f"{REGION_SET_SELECT} WHERE analysis_id IN ({marks}) ORDER BY id", ids
            ).fetchall()
            activity = connection.execute(
                f"""
                SELECT rs.id AS region_set_id, count(d.id) AS decisions,
                       max(d.created_at) AS last_at, max(d.id) AS last_id
                FROM region_sets AS rs JOIN review_decisions AS d ON d.region_set_id = rs.id
                WHERE rs.analysis_id IN ({marks}) GROUP BY rs.id
                """,
                ids,
            ).fetchall()
        counts = {int(row["region_set_id"]): row for row in activity}
        by_analysis: dict[int, list[RegionSetActivity]] = {}
        for row in sets:
            record = region_set_record(row)
            found = counts.get(record.id)
            by_analysis.setdefault(record.analysis_id, []).append(
                RegionSetActivity(
                    record,
                    int(found["decisions"]) if found else 0,
                    found["last_at"] if found else None,
                    int(found["last_id"]) if found else None,
                )
            )
        return [
            AnalysisActivity(record, tuple(by_analysis.get(record.id, ())))
            for record in (analysis_record(row) for row in analyses)
        ]

    def _insert_manual_region(
        self,
        connection: sqlite3.Connection,
        region_set_id: int,
        region: NewManualRegion,
        reviewer: str,
    ) -> int:
        if region.origin not in MANUAL_ORIGINS:
            raise StoreError(
                f"Invalid manual region origin {region.origin!r}; expected one of "
                f"{', '.join(MANUAL_ORIGINS)}"
            )
        polygon_wkb = shapely.to_wkb(region.polygon, byte_order=1, output_dimension=2)
        cursor = connection.execute(
            """
            INSERT INTO manual_regions (region_set_id, polygon_wkb, area_mm2, created_at,
                reviewer, origin, initial_status, name, classification, color, import_key)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            """,
            (
                region_set_id,
                polygon_wkb,
                float(region.area_mm2),
                utc_now(),
                reviewer,
                region.origin,
                region.initial_status,
                region.name,
                region.classification,
                region.color,
                region.import_key,
            ),
        )
        manual_region_id = cursor.lastrowid
        assert manual_region_id is not None
        return manual_region_id

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
                f"{MANUAL_REGION_SELECT} WHERE region_set_id = ? ORDER BY id", (region_set_id,)
            ).fetchall()
        return [manual_region_record(row, self.path) for row in rows]

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
        edit_kind: str | None = None,
    ) -> int:
        """Insert one log row inside the caller's transaction, with the set's model name and
        threshold; the database's checks and triggers refuse a row that does not fit."""
        if not reviewer or not reviewer.strip():
            raise StoreError(f"Invalid reviewer name {reviewer!r}: it must not be empty")
        cursor = connection.execute(
            """
            INSERT INTO review_decisions (region_set_id, region_id, manual_region_id, action,
                note, undoes_id, reviewer, model_name, threshold, created_at, edit_kind)
            SELECT rs.id, ?, ?, ?, ?, ?, ?, m.name, rs.threshold, ?, ?
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
                utc_now(),
                edit_kind,
                region_set_id,
            ),
        )
        if cursor.rowcount != 1 or cursor.lastrowid is None:
            raise StoreError(f"No region set {region_set_id} in {self.path}")
        return cursor.lastrowid
