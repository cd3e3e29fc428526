"""The review log: a region set's review state and history, derived from its decisions.

The log itself is the Store's append-only ``review_decisions`` table
(:mod:`wsiviewer.core.store`); the state shown to a reviewer (:class:`ReviewState`) is
derived from it, replaying the decisions that were not undone, oldest first:

- a region's status is its latest ``accept`` / ``reject`` / ``reset`` (reset and no decision:
  ``pending``); a manual region starts with the status its ``add`` gives it (``accepted``
  for a region a reviewer drew as IDC, ``pending`` otherwise); ``reviewer`` and
  ``decided_at`` are those of the decision that set the status;
- its note is the latest ``note`` (or the note of its ``add``), ``""`` if none;
- a region is deleted while a ``delete`` of it stands;
- a manual region exists while its ``add`` stands;
- an ``edit`` (split, brush, vertices, merge) hides the regions it replaced and shows the
  manual regions it made, which start with the status and note of the first region it
  replaced; undoing the edit brings the old regions back as they were.

Numbers: model regions keep their :attr:`Region.number`; manual regions are numbered after
the set's last model region in the order they were recorded, undone ones included, so a number
never changes meaning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from shapely.geometry import Polygon

from wsiviewer.core.review.status import STATUS_OF_ACTION, ReviewStatus
from wsiviewer.core.store.database import Store
from wsiviewer.core.store.records import (
    ManualRegionRecord,
    RegionEditRecord,
    RegionRecord,
    ReviewDecisionRecord,
)
from wsiviewer.errors import ReviewError

#: Where a region came from: the model, or a reviewer (drawn, imported from QuPath, or made
#: by a region edit).
RegionOrigin = Literal["model", "drawn", "imported", "edit"]

#: The note the QuPath import gave imported regions before schema v3 recorded their origin.
_LEGACY_IMPORT_NOTE = "imported from QuPath:"


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
    #: Where the region came from.
    origin: RegionOrigin = "model"
    #: An imported region's own QuPath classification, name and colour (kept on export).
    classification: str | None = None
    source_name: str | None = None
    color: tuple[int, int, int] | None = None
    #: For a region made by an edit: what the edit was and the numbers it replaced.
    edit_kind: str | None = None
    derived_from: tuple[int, ...] = ()

    @property
    def label(self) -> str:
        """A region's short name: its number, ``M`` before a manual one's."""
        return str(self.number) if self.ref.kind == "model" else f"M{self.number}"


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
        store.region_edits(region_set_id),
    )


def review_history(store: Store, region_set_id: int) -> list[dict[str, Any]]:
    """The review log of a region set as JSON-ready dicts, oldest first.

    Each has ``id``, ``action``, ``kind`` and ``region_id`` (the :class:`RegionRef`),
    ``number`` (display id), ``label`` (``"3"``, ``"M7"``), ``note``, ``undoes_id``,
    ``undone`` (a later undo cancelled it), ``reviewer``, ``model_name``, ``threshold``,
    ``created_at``, and for an ``edit`` its ``edit_kind`` and the ``replaced`` and ``added``
    region labels.
    """
    regions = store.regions(region_set_id)
    manual = store.manual_regions(region_set_id)
    decisions = store.review_decisions(region_set_id)
    edits = _edits_by_decision(store.region_edits(region_set_id))
    numbers = _numbers(regions, manual)
    undone = {d.undoes_id for d in decisions if d.undoes_id is not None}
    history: list[dict[str, Any]] = []
    for decision in decisions:
        ref = _ref_of(decision)
        sources, results = edits.get(decision.id, ((), ()))
        history.append(
            {
                "id": decision.id,
                "action": decision.action,
                "kind": ref.kind,
                "region_id": ref.id,
                "number": numbers.get(ref),
                "label": _label(ref, numbers),
                "note": decision.note,
                "undoes_id": decision.undoes_id,
                "undone": decision.id in undone,
                "reviewer": decision.reviewer,
                "model_name": decision.model_name,
                "threshold": decision.threshold,
                "created_at": decision.created_at,
                "edit_kind": decision.edit_kind,
                "replaced": [_label(source, numbers) for source in sources],
                "added": [_label(result, numbers) for result in results],
            }
        )
    return history


def _label(ref: RegionRef, numbers: dict[RegionRef, int]) -> str:
    number = numbers.get(ref)
    if number is None:
        return str(ref)
    return str(number) if ref.kind == "model" else f"M{number}"


def _edits_by_decision(
    edits: list[RegionEditRecord],
) -> dict[int, tuple[tuple[RegionRef, ...], tuple[RegionRef, ...]]]:
    """``decision id -> (sources, results)`` of every region edit."""
    sources: dict[int, list[RegionRef]] = {}
    results: dict[int, list[RegionRef]] = {}
    for edit in edits:
        ref = (
            RegionRef("model", edit.region_id)
            if edit.region_id is not None
            else RegionRef("manual", edit.manual_region_id)  # type: ignore[arg-type]
        )
        (sources if edit.role == "source" else results).setdefault(edit.decision_id, []).append(ref)
    return {
        decision_id: (tuple(sources.get(decision_id, ())), tuple(results.get(decision_id, ())))
        for decision_id in {*sources, *results}
    }


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


@dataclass(frozen=True)
class _Status:
    status: ReviewStatus
    reviewer: str | None
    decided_at: str | None


@dataclass
class _Replay:
    """What a set's live decisions (not undone) say, region by region, oldest first replayed
    so later decisions win (see the module docstring)."""

    #: The decision that set each region's status, if any.
    status: dict[RegionRef, _Status] = field(default_factory=dict)
    notes: dict[RegionRef, str] = field(default_factory=dict)
    #: Deleted, or replaced by an edit.
    hidden: set[RegionRef] = field(default_factory=set)
    #: Manual regions whose ``add`` (or the edit that made them) stands.
    added: set[RegionRef] = field(default_factory=set)
    #: For a region made by an edit: the edit's kind and the regions it replaced.
    made_by: dict[RegionRef, tuple[str, tuple[RegionRef, ...]]] = field(default_factory=dict)

    def record(
        self,
        decision: ReviewDecisionRecord,
        edit_parts: dict[int, tuple[tuple[RegionRef, ...], tuple[RegionRef, ...]]],
        manual_by_id: dict[int, ManualRegionRecord],
    ) -> None:
        """Replay one live decision."""
        ref = _ref_of(decision)
        if decision.action in STATUS_OF_ACTION:
            self.status[ref] = _Status(
                STATUS_OF_ACTION[decision.action], decision.reviewer, decision.created_at
            )
        elif decision.action == "note":
            self.notes[ref] = decision.note or ""
        elif decision.action == "add":
            self.added.add(ref)
            if decision.note:
                self.notes[ref] = decision.note
            added_region = manual_by_id.get(ref.id)
            if added_region is not None and added_region.initial_status == "accepted":
                self.status[ref] = _Status("accepted", decision.reviewer, decision.created_at)
        elif decision.action == "delete":
            self.hidden.add(ref)
        elif decision.action == "edit":
            sources, results = edit_parts.get(decision.id, ((ref,), ()))
            self._edit(decision.edit_kind or "edit", sources, results)

    def _edit(
        self, kind: str, sources: tuple[RegionRef, ...], results: tuple[RegionRef, ...]
    ) -> None:
        """An edit hides what it replaced; what it made starts with the status and note of
        the first region it replaced."""
        primary = sources[0]
        self.hidden.update(sources)
        for result in results:
            self.added.add(result)
            self.made_by[result] = (kind, sources)
            if primary in self.status:
                self.status[result] = self.status[primary]
            if self.notes.get(primary):
                self.notes[result] = self.notes[primary]

    def item(
        self,
        ref: RegionRef,
        numbers: dict[RegionRef, int],
        polygon: Polygon,
        area_mm2: float,
        **about: Any,
    ) -> ReviewItem:
        """The region as the reviewer sees it (``about``: the other :class:`ReviewItem`
        fields of its kind)."""
        decided = self.status.get(ref)
        kind, sources = self.made_by.get(ref, (None, ()))
        return ReviewItem(
            ref=ref,
            number=numbers[ref],
            polygon=polygon,
            area_mm2=area_mm2,
            status=decided.status if decided else "pending",
            note=self.notes.get(ref, ""),
            reviewer=decided.reviewer if decided else None,
            decided_at=decided.decided_at if decided else None,
            edit_kind=kind,
            derived_from=tuple(numbers[source] for source in sources if source in numbers),
            **about,
        )


def _replay(
    decisions: list[ReviewDecisionRecord],
    edits: list[RegionEditRecord],
    manual: list[ManualRegionRecord],
) -> _Replay:
    """Replay a set's decisions that were not undone, oldest first."""
    undone = {d.undoes_id for d in decisions if d.undoes_id is not None}
    edit_parts = _edits_by_decision(edits)
    manual_by_id = {stored.id: stored for stored in manual}
    replay = _Replay()
    for decision in decisions:
        if decision.action != "undo" and decision.id not in undone:
            replay.record(decision, edit_parts, manual_by_id)
    return replay


def derive_state(
    region_set_id: int,
    analysis_id: int,
    threshold: float,
    min_area_mm2: float,
    regions: list[RegionRecord],
    manual: list[ManualRegionRecord],
    decisions: list[ReviewDecisionRecord],
    edits: list[RegionEditRecord] | None = None,
) -> ReviewState:
    """The review state of a set from its regions and its log (see the module docstring)."""
    replay = _replay(decisions, edits or [], manual)
    numbers = _numbers(regions, manual)
    items: list[ReviewItem] = []
    for stored in regions:
        ref = RegionRef("model", stored.id)
        if ref in replay.hidden:
            continue
        region = stored.region
        items.append(
            replay.item(
                ref,
                numbers,
                region.polygon,
                region.area_mm2,
                max_prob=region.max_prob,
                mean_prob=region.mean_prob,
            )
        )
    for stored_manual in manual:
        ref = RegionRef("manual", stored_manual.id)
        if ref in replay.hidden or ref not in replay.added:
            continue
        items.append(
            replay.item(
                ref,
                numbers,
                stored_manual.polygon,
                stored_manual.area_mm2,
                max_prob=None,
                mean_prob=None,
                origin=_origin(stored_manual, replay.notes.get(ref, "")),
                classification=stored_manual.classification,
                source_name=stored_manual.name,
                color=_rgb(stored_manual.color),
            )
        )
    items.sort(key=lambda item: item.number)
    return ReviewState(region_set_id, analysis_id, threshold, min_area_mm2, tuple(items))


def _origin(stored: ManualRegionRecord, note: str) -> RegionOrigin:
    if stored.origin in ("drawn", "imported", "edit"):
        return stored.origin  # type: ignore[return-value]
    # Recorded before schema v3: the import said so in its note.
    return "imported" if note.startswith(_LEGACY_IMPORT_NOTE) else "drawn"


def _rgb(color: str | None) -> tuple[int, int, int] | None:
    """``#rrggbb`` as ``(r, g, b)``; ``None`` if absent or malformed."""
    if not color or len(color) != 7 or not color.startswith("#"):
        return None
    try:
        value = int(color[1:], 16)
    except ValueError:
        return None
    return (value >> 16) & 255, (value >> 8) & 255, value & 255
