"""Review of a region set: accept, reject, annotate, add and delete regions, with undo.

The review of a region set is an append-only log in the Store (``review_decisions``); the
state shown to a reviewer (:class:`ReviewState`) is derived from it:

- a region's status is its latest non-undone ``accept`` / ``reject`` / ``reset`` (reset and no
  decision: ``pending``); ``reviewer`` and ``decided_at`` are those of that decision;
- its note is the latest non-undone ``note`` (or the note of its ``add``), ``""`` if none;
- a region is deleted while a non-undone ``delete`` of it exists;
- a manual region exists while its ``add`` is not undone.

Every action of a :class:`ReviewSession` is one Store transaction (``BEGIN IMMEDIATE``),
committed before the call returns, so a crash or a kill loses at most the action in flight.
The first decision of any kind freezes the region set (a database trigger, in the same
transaction), so its regions and their ids never change under the decisions.

Numbers: model regions keep their :attr:`Region.number`; manual regions are numbered after
the set's last model region in the order they were added, undone adds included, so a number
never changes meaning.

No Qt here: the GUI's review panel drives this module.
"""

from __future__ import annotations

import math
from typing import Any

import shapely
from shapely.geometry import Polygon
from shapely.geometry.polygon import orient
from shapely.validation import explain_validity

from wsiviewer.core.analysis.regions import find_regions
from wsiviewer.core.review.log import RegionRef, ReviewState, derive_state, review_history
from wsiviewer.core.store.database import (
    Store,
)
from wsiviewer.core.units import mm2_from_px2
from wsiviewer.errors import ReviewError


class ReviewSession:
    """One reviewer working on one region set; every call is one Store transaction,
    committed at once.

    Raises
    ------
    ReviewError
        If the reviewer name is empty.
    StoreError
        If there is no such region set.
    """

    def __init__(self, store: Store, region_set_id: int, reviewer: str) -> None:
        if not isinstance(reviewer, str) or not reviewer.strip():
            raise ReviewError(f"Invalid reviewer name {reviewer!r}: it must not be empty")
        self.store = store
        self.region_set_id = region_set_id
        self.reviewer = reviewer.strip()
        record = store.region_set(region_set_id)
        self.analysis_id = record.analysis_id
        self.threshold = record.threshold
        self.min_area_mm2 = record.min_area_mm2
        analysis = store.analysis(record.analysis_id)
        #: µm/px of the analysis's slide level 0, for the area of manual regions.
        self.slide_mpp = analysis.grid.slide_mpp
        self.l0_dimensions = analysis.l0_dimensions
        # Regions of a set never change (triggers): read them once.
        self._regions = store.regions(region_set_id)

    def state(self) -> ReviewState:
        return derive_state(
            self.region_set_id,
            self.analysis_id,
            self.threshold,
            self.min_area_mm2,
            self._regions,
            self.store.manual_regions(self.region_set_id),
            self.store.review_decisions(self.region_set_id),
        )

    def accept(self, ref: RegionRef) -> None:
        self._decide(ref, "accept")

    def reject(self, ref: RegionRef) -> None:
        self._decide(ref, "reject")

    def reset(self, ref: RegionRef) -> None:
        """Back to pending."""
        self._decide(ref, "reset")

    def set_note(self, ref: RegionRef, note: str) -> None:
        """Replace the region's note (``""`` clears it)."""
        if not isinstance(note, str):
            raise ReviewError(f"Invalid note {note!r}: it must be text")
        self._decide(ref, "note", note)

    def delete(self, ref: RegionRef) -> None:
        """Remove a region from the review (undo brings it back with its decisions)."""
        self._decide(ref, "delete")

    def add_manual_region(self, polygon: Polygon, note: str = "") -> RegionRef:
        """Add a region drawn or imported by the reviewer (level-0 px); its area is measured
        at the analysis's µm/px. It starts ``pending``.

        Raises
        ------
        ReviewError
            If the polygon is not a Polygon, is empty, invalid, has no area, has non-finite
            coordinates, or lies wholly outside the slide.
        """
        polygon = self.check_polygon(polygon)
        if not isinstance(note, str):
            raise ReviewError(f"Invalid note {note!r}: it must be text")
        area_mm2 = mm2_from_px2(polygon.area, self.slide_mpp)
        manual_region_id, _ = self.store.add_manual_region(
            self.region_set_id, polygon, area_mm2, self.reviewer, note
        )
        return RegionRef("manual", manual_region_id)

    def undo(self) -> bool:
        """Undo this reviewer's latest not-yet-undone action in this set (decision, note, add
        or delete); ``False`` if there is none."""
        return self.store.undo_review_decision(self.region_set_id, self.reviewer) is not None

    def history(self) -> list[dict[str, Any]]:
        """The audit log, oldest first (see :func:`review_history`)."""
        return review_history(self.store, self.region_set_id)

    def _decide(self, ref: RegionRef, action: str, note: str | None = None) -> None:
        # The region must be in the review now (not deleted, its add not undone).
        self.state().item(ref)
        self.store.record_review_decision(
            self.region_set_id,
            action,
            self.reviewer,
            region_id=ref.id if ref.kind == "model" else None,
            manual_region_id=ref.id if ref.kind == "manual" else None,
            note=note,
        )

    def check_polygon(self, polygon: object) -> Polygon:
        """The polygon as a manual region stores it (2D, counter-clockwise shell), or a
        :class:`ReviewError` saying why it cannot be one (see :meth:`add_manual_region`)."""
        if not isinstance(polygon, Polygon):
            raise ReviewError(
                f"A manual region must be a shapely Polygon, got {type(polygon).__name__}"
            )
        if polygon.is_empty:
            raise ReviewError("A manual region cannot be an empty polygon")
        if not all(math.isfinite(value) for value in polygon.bounds):
            raise ReviewError(f"Manual region has non-finite coordinates: {polygon.bounds}")
        if not polygon.is_valid:
            raise ReviewError(f"Invalid manual region polygon: {explain_validity(polygon)}")
        if polygon.area <= 0:
            raise ReviewError(f"Manual region {polygon.wkt[:80]} has no area")
        width, height = self.l0_dimensions
        if not polygon.intersects(shapely.box(0, 0, width, height)):
            raise ReviewError(
                f"Manual region with bounds {tuple(round(v, 1) for v in polygon.bounds)} lies "
                f"outside the slide (0, 0, {width}, {height}) in level-0 px"
            )
        return orient(shapely.force_2d(polygon))


def open_review(
    store: Store, analysis_id: int, threshold: float, min_area_mm2: float, reviewer: str
) -> ReviewSession:
    """The review of that analysis at that threshold/min area: reuses the region set if one
    exists (frozen or not), else computes regions (find_regions on the stored map) and saves
    a new set. Changing the threshold gives a new set; the old set keeps its decisions.

    Raises
    ------
    ReviewError
        If the threshold or the minimum area is out of range, or the reviewer name is empty.
    StoreError
        If there is no such analysis or its map cannot be read.
    """
    if not (isinstance(threshold, int | float) and 0.0 <= threshold <= 1.0):
        raise ReviewError(f"Threshold {threshold!r} must be within [0, 1]")
    if not (isinstance(min_area_mm2, int | float) and 0.0 <= min_area_mm2 < math.inf):
        raise ReviewError(f"Minimum area {min_area_mm2!r} mm² must be a number ≥ 0")
    if not isinstance(reviewer, str) or not reviewer.strip():
        raise ReviewError(f"Invalid reviewer name {reviewer!r}: it must not be empty")
    existing = store.find_region_set(analysis_id, float(threshold), float(min_area_mm2))
    if existing is not None:
        return ReviewSession(store, existing.id, reviewer)
    record = store.analysis(analysis_id)
    region_set = find_regions(store.load_probability_map(record), threshold, min_area_mm2)
    region_set_id = store.save_region_set(analysis_id, region_set)
    return ReviewSession(store, region_set_id, reviewer)


# --------------------------------------------------------------------------- derivation
