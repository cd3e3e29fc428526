"""The review log: a region set's review state and history, derived from its decisions.

The log itself is the Store's append-only ``review_decisions`` table
(:mod:`wsiviewer.core.store`); the state shown to a reviewer (:class:`ReviewState`) is
derived from it:

- a region's status is its latest non-undone ``accept`` / ``reject`` / ``reset`` (reset and no
  decision: ``pending``); ``reviewer`` and ``decided_at`` are those of that decision;
- its note is the latest non-undone ``note`` (or the note of its ``add``), ``""`` if none;
- a region is deleted while a non-undone ``delete`` of it exists;
- a manual region exists while its ``add`` is not undone.

Numbers: model regions keep their :attr:`Region.number`; manual regions are numbered after
the set's last model region in the order they were added, undone adds included, so a number
never changes meaning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from shapely.geometry import Polygon

from wsiviewer.core.review.status import STATUS_OF_ACTION, ReviewStatus
from wsiviewer.core.store.database import Store
from wsiviewer.core.store.records import ManualRegionRecord, RegionRecord, ReviewDecisionRecord
from wsiviewer.errors import ReviewError


@dataclass(frozen=True)
class RegionRef:
    """A region of a review: a model region (``regions.id``) or a manual one
    (``manual_regions.id``)."""

    kind: Literal["model", "manual"]
    id: int

    def __str__(self) -> str:
        return f"{self.kind} region {self.id}"


@dataclass(frozen=True)
class ReviewItem:
    """One region as the reviewer sees it."""

    ref: RegionRef
    #: Display id: model regions keep Region.number; manual ones continue after the last.
    number: int
    #: Outline in level-0 px (x right, y down).
    polygon: Polygon
    area_mm2: float
    #: ``None`` for manual regions.
    max_prob: float | None
    mean_prob: float | None
    status: ReviewStatus
    #: ``""`` if none.
    note: str
    #: Who made the latest status decision (accept / reject / reset), ``None`` if none.
    reviewer: str | None
    #: ISO-8601 UTC of that decision.
    decided_at: str | None


@dataclass(frozen=True)
class ReviewState:
    """The review of one region set, derived from its log."""

    region_set_id: int
    analysis_id: int
    threshold: float
    min_area_mm2: float
    #: Deleted regions excluded; ordered by number.
    items: tuple[ReviewItem, ...]

    @property
    def reviewed_count(self) -> int:
        """Regions accepted or rejected."""
        return sum(item.status != "pending" for item in self.items)

    @property
    def progress_text(self) -> str:
        """E.g. ``"12 of 31 reviewed"``."""
        return f"{self.reviewed_count} of {len(self.items)} reviewed"

    def item(self, ref: RegionRef) -> ReviewItem:
        """The item of ``ref``; :class:`ReviewError` if it is not in the set or deleted."""
        for item in self.items:
            if item.ref == ref:
                return item
        raise ReviewError(f"No {ref} in region set {self.region_set_id} (or it was deleted)")


def review_state(store: Store, region_set_id: int) -> ReviewState:
    """The review state of a region set, derived from its log (see the module docstring)."""
    record = store.region_set(region_set_id)
    return derive_state(
        region_set_id,
        record.analysis_id,
        record.threshold,
        record.min_area_mm2,
        store.regions(region_set_id),
        store.manual_regions(region_set_id),
        store.review_decisions(region_set_id),
    )


def review_history(store: Store, region_set_id: int) -> list[dict[str, Any]]:
    """The review log of a region set as JSON-ready dicts, oldest first.

    Each has ``id``, ``action``, ``kind`` and ``region_id`` (the :class:`RegionRef`),
    ``number`` (display id), ``note``, ``undoes_id``, ``undone`` (a later undo cancelled it),
    ``reviewer``, ``model_name``, ``threshold`` and ``created_at``.
    """
    regions = store.regions(region_set_id)
    manual = store.manual_regions(region_set_id)
    decisions = store.review_decisions(region_set_id)
    numbers = _numbers(regions, manual)
    undone = {d.undoes_id for d in decisions if d.undoes_id is not None}
    history: list[dict[str, Any]] = []
    for decision in decisions:
        ref = _ref_of(decision)
        history.append(
            {
                "id": decision.id,
                "action": decision.action,
                "kind": ref.kind,
                "region_id": ref.id,
                "number": numbers.get(ref),
                "note": decision.note,
                "undoes_id": decision.undoes_id,
                "undone": decision.id in undone,
                "reviewer": decision.reviewer,
                "model_name": decision.model_name,
                "threshold": decision.threshold,
                "created_at": decision.created_at,
            }
        )
    return history


def _ref_of(decision: ReviewDecisionRecord) -> RegionRef:
    if decision.region_id is not None:
        return RegionRef("model", decision.region_id)
    assert decision.manual_region_id is not None
    return RegionRef("manual", decision.manual_region_id)


def _numbers(regions: list[RegionRecord], manual: list[ManualRegionRecord]) -> dict[RegionRef, int]:
    numbers = {RegionRef("model", stored.id): stored.region.number for stored in regions}
    last = max((stored.region.number for stored in regions), default=0)
    for offset, stored_manual in enumerate(manual, start=1):
        numbers[RegionRef("manual", stored_manual.id)] = last + offset
    return numbers


def derive_state(
    region_set_id: int,
    analysis_id: int,
    threshold: float,
    min_area_mm2: float,
    regions: list[RegionRecord],
    manual: list[ManualRegionRecord],
    decisions: list[ReviewDecisionRecord],
) -> ReviewState:
    undone = {d.undoes_id for d in decisions if d.undoes_id is not None}
    live = [d for d in decisions if d.action != "undo" and d.id not in undone]
    status: dict[RegionRef, ReviewDecisionRecord] = {}
    notes: dict[RegionRef, str] = {}
    deleted: set[RegionRef] = set()
    added: set[RegionRef] = set()
    for decision in live:  # oldest first: later rows win
        ref = _ref_of(decision)
        if decision.action in STATUS_OF_ACTION:
            status[ref] = decision
        elif decision.action in {"note", "add"}:
            if decision.action == "add":
                added.add(ref)
            if decision.note is not None and (decision.action == "note" or decision.note):
                notes[ref] = decision.note
        elif decision.action == "delete":
            deleted.add(ref)
    numbers = _numbers(regions, manual)
    items: list[ReviewItem] = []

    def make(ref: RegionRef, polygon: Polygon, area: float, max_p: float | None,
             mean_p: float | None) -> ReviewItem:  # fmt: skip
        decision = status.get(ref)
        return ReviewItem(
            ref=ref,
            number=numbers[ref],
            polygon=polygon,
            area_mm2=area,
            max_prob=max_p,
            mean_prob=mean_p,
            status=STATUS_OF_ACTION[decision.action] if decision else "pending",
            note=notes.get(ref, ""),
            reviewer=decision.reviewer if decision else None,
            decided_at=decision.created_at if decision else None,
        )

    for stored in regions:
        ref = RegionRef("model", stored.id)
        if ref in deleted:
            continue
        region = stored.region
        items.append(make(ref, region.polygon, region.area_mm2, region.max_prob, region.mean_prob))
    for stored_manual in manual:
        ref = RegionRef("manual", stored_manual.id)
        if ref in deleted or ref not in added:
            continue
        items.append(make(ref, stored_manual.polygon, stored_manual.area_mm2, None, None))
    items.sort(key=lambda item: item.number)
    return ReviewState(region_set_id, analysis_id, threshold, min_area_mm2, tuple(items))
