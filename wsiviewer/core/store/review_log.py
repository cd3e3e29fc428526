"""The review log in the Store: decisions, manual regions and undo (schema v2).

``manual_regions`` holds regions a reviewer drew or imported, and ``review_decisions`` is the
append-only review log of a region set (accept, reject, reset, note, add, delete, undo; each row
with its reviewer, the model name and the set's threshold). Triggers keep the log append-only,
tie every row to a region of its own set, let an action be undone once, and freeze the set in
the transaction of its first decision. Every method here is one committed transaction, so an
action is on disk before the reviewer sees it done. :mod:`wsiviewer.core.review` derives the
review state from the log.
"""

from __future__ import annotations

import sqlite3

import shapely
from shapely.geometry import Polygon

from wsiviewer.core.store.connection import StoreConnection, utc_now
from wsiviewer.core.store.records import (
    DECISION_SELECT,
    MANUAL_REGION_SELECT,
    ManualRegionRecord,
    ReviewDecisionRecord,
    decision_record,
    manual_region_record,
)
from wsiviewer.errors import StoreError


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
                (region_set_id, polygon_wkb, float(area_mm2), utc_now(), reviewer),
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
                utc_now(),
                region_set_id,
            ),
        )
        if cursor.rowcount != 1 or cursor.lastrowid is None:
            raise StoreError(f"No region set {region_set_id} in {self.path}")
        return cursor.lastrowid
