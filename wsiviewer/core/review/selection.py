"""The selection rule: which analysis, region set and model card of a slide is shown, reviewed
and exported. The viewer, ``export``, the report and every later command use it, so they all
see the same regions.

For a slide, the selection is, in order:

1. the analysis asked for by id (it must be of this slide), or the latest analysis by a model
   asked for (its card matched by weights *and* card sha256); else
2. the region set reviewed most recently (of any analysis of the slide, by any model); else
3. the latest analysis by the default model (matched by weights and card sha256); else
4. the latest analysis by any model (the selection's reason says so).

Within the chosen analysis the region set is the one reviewed most recently, else the one
recorded last (by ``analyze`` or the viewer), else none yet: :func:`ensure_region_set` then
computes it at the card's threshold. A threshold asked for picks the set at that threshold
instead (a reviewed one first), computed if there is none.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from wsiviewer.core.analysis.regions import find_regions
from wsiviewer.core.model.cards import ModelCard
from wsiviewer.core.review.defaults import DEFAULT_MIN_AREA_MM2
from wsiviewer.core.review.log import review_state
from wsiviewer.core.review.wording import format_threshold
from wsiviewer.core.store.database import Store
from wsiviewer.core.store.records import AnalysisRecord, RegionSetRecord
from wsiviewer.errors import SelectionError


@dataclass(frozen=True)
class Selection:
    """What the selection rule chose for a slide, and why."""

    analysis: AnalysisRecord
    #: ``None`` when the analysis has no region set yet (see :func:`ensure_region_set`).
    region_set: RegionSetRecord | None
    #: The installed card the analysis was made with (weights and card sha256), if any.
    card: ModelCard | None
    #: Why this one, in words: ``"the region set reviewed most recently"``, ...
    reason: str


def installed_card(record: AnalysisRecord, cards: Sequence[ModelCard]) -> ModelCard | None:
    """The installed card of an analysis: same weights and same card (sha256)."""
    for card in cards:
        if (card.weights_sha256, card.card_sha256) == (
            record.model.weights_sha256,
            record.model.card_sha256,
        ):
            return card
    return None


def select(
    store: Store,
    slide_identity: str,
    *,
    default_card: ModelCard | None = None,
    cards: Sequence[ModelCard] = (),
    analysis_id: int | None = None,
    model: ModelCard | None = None,
) -> Selection | None:
    """The selection of a slide (see the module docstring); ``None`` if it has no analysis.

    ``cards`` are the installed cards, to find the card of the chosen analysis.

    Raises
    ------
    SelectionError
        If ``analysis_id`` is of another slide, or ``model`` has no analysis of the slide.
    StoreError
        If there is no analysis ``analysis_id`` or the database cannot be read.
    """
    cards = [*cards, *(card for card in (default_card, model) if card is not None)]
    if analysis_id is not None:
        record = store.analysis(analysis_id)
        if record.slide_identity != slide_identity:
            raise SelectionError(f"Analysis {analysis_id} is of another slide")
        return _within(store, record, cards, f"analysis {analysis_id}, as asked")
    if model is not None:
        found = store.latest_analysis(slide_identity, model.weights_sha256, model.card_sha256)
        if found is None:
            raise SelectionError(f"No analysis of this slide by model {model.name!r}")
        return _within(store, found, cards, f"the latest analysis by model {model.name!r}")
    reviewed = store.latest_reviewed_region_set_of_slide(slide_identity)
    if reviewed is not None:
        record = store.analysis(reviewed.analysis_id)
        card = installed_card(record, cards)
        return Selection(record, reviewed, card, "the region set reviewed most recently")
    if default_card is not None:
        found = store.latest_analysis(
            slide_identity, default_card.weights_sha256, default_card.card_sha256
        )
        if found is not None:
            reason = f"the latest analysis by the default model {default_card.name!r}"
            return _within(store, found, cards, reason)
    found = store.latest_analysis(slide_identity)
    if found is None:
        return None
    reason = f"the latest analysis (by {found.model.name!r}"
    if default_card is not None:
        reason += f"; none by the default model {default_card.name!r}"
    return _within(store, found, cards, reason + ")")


def ensure_region_set(
    store: Store,
    selection: Selection,
    threshold: float | None = None,
    min_area_mm2: float = DEFAULT_MIN_AREA_MM2,
) -> RegionSetRecord:
    """The selection's region set, computed and recorded if it has none yet; with
    ``threshold``, the set of the selected analysis at that threshold (a reviewed one first,
    any minimum area), computed at ``min_area_mm2`` if there is none."""
    analysis = selection.analysis
    if threshold is None:
        if selection.region_set is not None:
            return selection.region_set
        threshold = analysis.model.threshold
    else:
        reviewed = store.latest_reviewed_region_set(analysis.id)
        if reviewed is not None and abs(reviewed.threshold - threshold) < 1e-9:
            return reviewed
        found = store.find_region_set(analysis.id, threshold)
        if found is not None:
            return found
    region_set = find_regions(store.load_probability_map(analysis), threshold, min_area_mm2)
    return store.region_set(store.save_region_set(analysis.id, region_set))


def _within(
    store: Store, record: AnalysisRecord, cards: Sequence[ModelCard], reason: str
) -> Selection:
    region_set = store.latest_reviewed_region_set(record.id) or store.latest_region_set(record.id)
    return Selection(record, region_set, installed_card(record, cards), reason)


@dataclass(frozen=True)
class HistoryEntry:
    """One region set of a slide's history (or an analysis that has none yet)."""

    analysis: AnalysisRecord
    region_set: RegionSetRecord | None
    #: Decisions in its review log (undos included).
    decision_count: int
    #: ``"4 of 5 reviewed"``, or ``"5 regions, not reviewed"``.
    progress: str
    #: When its review last changed, ISO-8601 UTC; ``None`` if never reviewed.
    last_decision_at: str | None

    @property
    def reviewed(self) -> bool:
        return self.decision_count > 0

    @property
    def text(self) -> str:
        """One line: ``"Analysis #3 (resnet8, 2025-01-01 12:00) · set #5, P ≥ 0.138, area ≥
        0.1 mm² · 4 of 5 reviewed"``."""
        analysis = self.analysis
        when = analysis.finished_at.replace("T", " ")[:16]
        line = f"Analysis #{analysis.id} ({analysis.model.name}, {when})"
        if self.region_set is None:
            return line + " · no region set yet"
        region_set = self.region_set
        return (
            f"{line} · set #{region_set.id}, P ≥ {format_threshold(region_set.threshold)}, "
            f"area ≥ {region_set.min_area_mm2:g} mm² · {self.progress}"
        )


def slide_history(store: Store, slide_identity: str) -> list[HistoryEntry]:
    """Every analysis and region set of a slide, newest analysis first (its sets newest
    first): what the viewer lists so that a review is never out of reach."""
    entries: list[HistoryEntry] = []
    for activity in reversed(store.slide_review_history(slide_identity)):
        if not activity.region_sets:
            entries.append(HistoryEntry(activity.analysis, None, 0, "no regions yet", None))
            continue
        for found in reversed(activity.region_sets):
            if found.decision_count:
                progress = review_state(store, found.region_set.id).progress_text
            else:
                count = found.region_set.region_count
                progress = f"{count} region{'' if count == 1 else 's'}, not reviewed"
            entries.append(
                HistoryEntry(
                    activity.analysis,
                    found.region_set,
                    found.decision_count,
                    progress,
                    found.last_decision_at,
                )
            )
    return entries
