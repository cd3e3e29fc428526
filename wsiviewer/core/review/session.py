"""Review of a region set: accept, reject, annotate, add, edit and delete regions, with undo.

The review of a region set is an append-only log in the Store (``review_decisions``); the
state shown to a reviewer (:class:`~.log.ReviewState`) is derived from it (see
:mod:`wsiviewer.core.review.log`).

Every action of a :class:`ReviewSession` is one Store transaction (``BEGIN IMMEDIATE``),
committed before the call returns, so a crash or a kill loses at most the action in flight.
The first decision of any kind freezes the region set (a database trigger, in the same
transaction), so its regions and their ids never change under the decisions.

Regions can be made right, each change one decision (``edit``) that one undo takes back:
split along a line, add or erase with a brush stroke, move vertices, merge. An edit replaces
the regions it touches by new (manual) regions, which keep the status and note of the first
region they replace; the model's own regions are never changed.

Reading a set needs no reviewer (:func:`region_set_for`, :func:`~.log.review_state`): only a
decision does, so a viewer can show the regions before anyone has given a name.

No Qt here: the GUI's review panel drives this module.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Any, Literal

import shapely
from shapely.geometry import GeometryCollection, LineString, MultiPolygon, Polygon
from shapely.geometry.polygon import orient
from shapely.ops import split as split_geometry
from shapely.validation import explain_validity

from wsiviewer.core.analysis.regions import find_regions
from wsiviewer.core.review.log import (
    RegionRef,
    ReviewItem,
    ReviewState,
    derive_state,
    review_history,
)
from wsiviewer.core.store.database import Store
from wsiviewer.core.store.records import RegionSetRecord
from wsiviewer.core.store.review_log import NewManualRegion, RegionKey
from wsiviewer.core.units import mm2_from_px2, px_from_um
from wsiviewer.errors import ReviewError

#: Parts an edit leaves smaller than this (level-0 px²) are slivers of the geometry, not
#: regions: they are dropped.
SLIVER_PX2 = 4.0

#: A merge joins regions that touch or overlap; regions up to this far apart (µm) are joined
#: by a narrow bridge (:data:`MERGE_BRIDGE_UM` wide), farther ones are refused.
MERGE_MAX_GAP_UM = 1000.0
MERGE_BRIDGE_UM = 20.0


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
            self.store.region_edits(self.region_set_id),
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

    def add_manual_region(
        self,
        polygon: Polygon,
        note: str = "",
        *,
        status: Literal["accepted", "pending"] = "accepted",
        origin: Literal["drawn", "imported"] = "drawn",
        name: str | None = None,
        classification: str | None = None,
        color: tuple[int, int, int] | None = None,
        import_key: str | None = None,
    ) -> RegionRef:
        """Add a region the reviewer drew (or imported, with its QuPath ``name``,
        ``classification`` and ``color``), in level-0 px; its area is measured at the
        analysis's µm/px. A drawn region is the reviewer's own judgement, so it starts
        ``accepted`` (``status="pending"`` leaves it to decide later); one ``add`` decision.

        Raises
        ------
        ReviewError
            If the polygon is not a Polygon, is empty, invalid, has no area, has non-finite
            coordinates, or lies wholly outside the slide.
        """
        polygon = self.check_polygon(polygon)
        if not isinstance(note, str):
            raise ReviewError(f"Invalid note {note!r}: it must be text")
        if status not in ("accepted", "pending"):
            raise ReviewError(f"A new region starts accepted or pending, not {status!r}")
        region = NewManualRegion(
            polygon,
            mm2_from_px2(polygon.area, self.slide_mpp),
            origin=origin,
            initial_status=status,
            name=name,
            classification=classification,
            color=None if color is None else "#{:02x}{:02x}{:02x}".format(*color),
            import_key=import_key,
        )
        manual_region_id, _ = self.store.add_manual_region(
            self.region_set_id, region, reviewer=self.reviewer, note=note
        )
        return RegionRef("manual", manual_region_id)

    # -- region edits: each one decision, undone by one undo -------------------------------

    def split(
        self, ref: RegionRef, l0_line: LineString | Sequence[tuple[float, float]]
    ) -> list[RegionRef]:
        """Split a region along a line drawn across it (level-0 px); the parts, largest
        first.

        Raises
        ------
        ReviewError
            If the line does not cross the region from one side to the other.
        """
        line = l0_line if isinstance(l0_line, LineString) else _line(l0_line)
        item = self.state().item(ref)
        parts = _polygons(split_geometry(item.polygon, line))
        if len(parts) < 2:
            raise ReviewError(
                f"The line does not cut region {item.label} in two: draw it across the region, "
                "from outside one side to outside the other"
            )
        return self._replace("split", [item], parts)

    def brush(self, ref: RegionRef, l0_stroke: Polygon, *, erase: bool = False) -> list[RegionRef]:
        """Add a brush stroke (level-0 px, e.g. a line buffered by the brush's radius) to a
        region, or ``erase`` it from the region; the region as it is after, in parts if
        erasing cut it.

        Raises
        ------
        ReviewError
            If the stroke does not touch the region, or erasing would remove all of it.
        """
        stroke = self._clip(l0_stroke)
        item = self.state().item(ref)
        if not item.polygon.intersects(stroke):
            raise ReviewError(f"The brush stroke does not touch region {item.label}")
        if erase:
            parts = _polygons(item.polygon.difference(stroke))
            if not parts:
                raise ReviewError(
                    f"The stroke would erase all of region {item.label}: delete it instead (Del)"
                )
            return self._replace("brush-erase", [item], parts)
        parts = _polygons(item.polygon.union(stroke))
        return self._replace("brush-add", [item], parts[:1])

    def move_vertices(self, ref: RegionRef, l0_polygon: Polygon) -> RegionRef:
        """Give a region a new outline (its vertices moved, added or removed; level-0 px).

        Raises
        ------
        ReviewError
            If the new outline is not a valid polygon (e.g. it crosses itself).
        """
        item = self.state().item(ref)
        polygon = self.check_polygon(l0_polygon)
        if polygon.equals(item.polygon):
            raise ReviewError(f"The outline of region {item.label} did not change")
        return self._replace("vertices", [item], [polygon])[0]

    def merge(self, refs: Sequence[RegionRef]) -> RegionRef:
        """Merge regions into one, which keeps the status and note of the first. Regions that
        touch or overlap are united; gaps up to :data:`MERGE_MAX_GAP_UM` are bridged.

        Raises
        ------
        ReviewError
            If fewer than two distinct regions are given or they lie too far apart.
        """
        state = self.state()
        items = [state.item(ref) for ref in dict.fromkeys(refs)]
        if len(items) < 2:
            raise ReviewError("Choose at least two regions to merge")
        merged = shapely.union_all([item.polygon for item in items])
        parts = _polygons(merged)
        if len(parts) > 1:
            merged = self._bridged(parts, [item.label for item in items])
        return self._replace("merge", items, [orient(merged)])[0]

    def _bridged(self, parts: list[Polygon], labels: list[str]) -> Polygon:
        """Parts joined by narrow bridges between their nearest points, nearest first."""
        max_gap = px_from_um(MERGE_MAX_GAP_UM, self.slide_mpp)
        half_width = px_from_um(MERGE_BRIDGE_UM, self.slide_mpp) / 2
        merged: Any = parts[0]
        rest = parts[1:]
        while rest:
            distances = [merged.distance(part) for part in rest]
            nearest = min(range(len(rest)), key=distances.__getitem__)
            if distances[nearest] > max_gap:
                raise ReviewError(
                    f"Regions {', '.join(labels)} are more than "
                    f"{MERGE_MAX_GAP_UM / 1000:g} mm apart: merge neighbours, or join them "
                    "with the brush first"
                )
            part = rest.pop(nearest)
            bridge = shapely.shortest_line(merged, part).buffer(half_width)
            merged = shapely.union_all([merged, bridge, part])
        found = _polygons(merged)
        return found[0]

    def _replace(
        self, kind: str, items: Sequence[ReviewItem], polygons: Sequence[Polygon]
    ) -> list[RegionRef]:
        """Record one ``edit``: ``items`` replaced by ``polygons`` (largest first)."""
        polygons = sorted(
            (self._clip(polygon) for polygon in polygons), key=lambda p: p.area, reverse=True
        )
        polygons = [p for p in polygons if p.area >= SLIVER_PX2]
        if not polygons:
            raise ReviewError(f"The {kind} leaves nothing of the region")
        primary = items[0]
        results = [
            NewManualRegion(
                polygon,
                mm2_from_px2(polygon.area, self.slide_mpp),
                origin="edit",
                name=primary.source_name,
                classification=primary.classification,
                color=(
                    None if primary.color is None else "#{:02x}{:02x}{:02x}".format(*primary.color)
                ),
            )
            for polygon in polygons
        ]
        sources: list[RegionKey] = [
            (item.ref.id, None) if item.ref.kind == "model" else (None, item.ref.id)
            for item in items
        ]
        _, added = self.store.record_region_edit(
            self.region_set_id, kind, self.reviewer, sources, results
        )
        return [RegionRef("manual", manual_id) for manual_id in added]

    def _clip(self, polygon: Polygon) -> Polygon:
        """A polygon cut to the slide, as one valid Polygon (its largest part)."""
        width, height = self.l0_dimensions
        clipped = shapely.make_valid(polygon).intersection(shapely.box(0, 0, width, height))
        parts = _polygons(clipped)
        if not parts:
            raise ReviewError(
                f"The outline with bounds {tuple(round(v, 1) for v in polygon.bounds)} lies "
                f"outside the slide (0, 0, {width}, {height}) in level-0 px"
            )
        return orient(shapely.force_2d(max(parts, key=lambda part: part.area)))

    def undo(self) -> bool:
        """Undo this reviewer's latest not-yet-undone action in this set (decision, note, add,
        edit or delete); ``False`` if there is none."""
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


def region_set_for(
    store: Store, analysis_id: int, threshold: float, min_area_mm2: float
) -> RegionSetRecord:
    """The region set of that analysis at that threshold and minimum area: the recorded one
    (a reviewed one first), else computed (find_regions on the stored map) and saved.
    Changing the threshold gives another set; the old set keeps its decisions. No reviewer is
    needed to look at regions, only to decide on them.

    Raises
    ------
    ReviewError
        If the threshold or the minimum area is out of range.
    StoreError
        If there is no such analysis or its map cannot be read.
    """
    if not (isinstance(threshold, int | float) and 0.0 <= threshold <= 1.0):
        raise ReviewError(f"Threshold {threshold!r} must be within [0, 1]")
    if not (isinstance(min_area_mm2, int | float) and 0.0 <= min_area_mm2 < math.inf):
        raise ReviewError(f"Minimum area {min_area_mm2!r} mm² must be a number ≥ 0")
    existing = store.find_region_set(analysis_id, float(threshold), float(min_area_mm2))
    if existing is not None:
        return existing
    record = store.analysis(analysis_id)
    region_set = find_regions(store.load_probability_map(record), threshold, min_area_mm2)
    return store.region_set(store.save_region_set(analysis_id, region_set))


def open_review(
    store: Store, analysis_id: int, threshold: float, min_area_mm2: float, reviewer: str
) -> ReviewSession:
    """A reviewer's session on the region set of that analysis at that threshold and minimum
    area (:func:`region_set_for`).

    Raises
    ------
    ReviewError
        If the threshold or the minimum area is out of range, or the reviewer name is empty.
    StoreError
        If there is no such analysis or its map cannot be read.
    """
    if not isinstance(reviewer, str) or not reviewer.strip():
        raise ReviewError(f"Invalid reviewer name {reviewer!r}: it must not be empty")
    record = region_set_for(store, analysis_id, threshold, min_area_mm2)
    return ReviewSession(store, record.id, reviewer)


def import_key(polygon: Polygon, name: str | None, classification: str | None) -> str:
    """The key of an imported feature: sha256 of its outline (to 1/1000 px, start and
    direction of the ring ignored), name and class. The same feature imported twice has the
    same key."""
    normalised = shapely.set_precision(orient(polygon), 0.001).normalize()
    digest = hashlib.sha256(shapely.to_wkb(normalised, byte_order=1, output_dimension=2))
    digest.update(f"\x00{name or ''}\x00{classification or ''}".encode())
    return digest.hexdigest()


def _line(points: Sequence[tuple[float, float]]) -> LineString:
    if len(points) < 2:
        raise ReviewError(f"A line needs at least two points, got {len(points)}")
    line = LineString(points)
    if line.length <= 0 or not all(math.isfinite(v) for v in line.bounds):
        raise ReviewError(f"Invalid line {line.wkt[:80]}")
    return line


def _polygons(geometry: Any) -> list[Polygon]:
    """The polygons of a geometry (a Polygon, MultiPolygon or collection), largest first,
    slivers dropped."""
    if isinstance(geometry, Polygon):
        found = [geometry]
    elif isinstance(geometry, MultiPolygon | GeometryCollection):
        found = [part for g in geometry.geoms for part in _polygons(g)]
    else:
        found = []
    found = [orient(part) for part in found if not part.is_empty and part.area >= SLIVER_PX2]
    return sorted(found, key=lambda part: part.area, reverse=True)
