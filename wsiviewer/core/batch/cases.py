"""A slide's status as a case: analysed? reviewed? (the viewer's case list).

The status is read from the Store through the selection rule
(:mod:`wsiviewer.core.review.selection`), so the case list says what the viewer would show
and ``export`` would write:

- **not analysed**: no analysis of the slide;
- **analysed**: an analysis, and no review decision in the selected region set;
- **in review**: some decisions, but not every region of the set has one;
- **reviewed**: every region of the selected set (manual ones included, deleted ones not) is
  accepted or rejected.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from wsiviewer.core.model.cards import ModelCard
from wsiviewer.core.review.log import review_state
from wsiviewer.core.review.selection import select
from wsiviewer.core.store.database import Store

CaseState = Literal["not analysed", "analysed", "in review", "reviewed"]


@dataclass(frozen=True)
class CaseStatus:
    """What the Store says of one slide."""

    state: CaseState
    analysis_id: int | None = None
    #: Model of the selected analysis.
    model_name: str | None = None
    #: Highest P(IDC) of the selected analysis's map.
    max_p: float | None = None
    #: Regions of the selected set (deleted ones not counted, manual ones counted).
    regions: int | None = None
    #: Their area, mm².
    flagged_area_mm2: float | None = None
    #: Regions accepted or rejected.
    reviewed: int = 0

    @property
    def text(self) -> str:
        """E.g. ``"in review (3 of 7)"``."""
        if self.state == "in review" and self.regions is not None:
            return f"in review ({self.reviewed} of {self.regions})"
        return self.state


def case_status(
    store: Store,
    slide_identity: str,
    *,
    default_card: ModelCard | None = None,
    cards: Sequence[ModelCard] = (),
) -> CaseStatus:
    """The case status of a slide (see the module docstring).

    Raises
    ------
    StoreError
        If the database or a map file cannot be read.
    """
    selection = select(store, slide_identity, default_card=default_card, cards=cards)
    if selection is None:
        return CaseStatus("not analysed")
    analysis = selection.analysis
    probabilities = store.load_probability_map(analysis).probabilities
    max_p = None if np.isnan(probabilities).all() else float(np.nanmax(probabilities))
    found = CaseStatus(
        "analysed", analysis_id=analysis.id, model_name=analysis.model.name, max_p=max_p
    )
    if selection.region_set is None:
        return found
    state = review_state(store, selection.region_set.id)
    items = state.items
    reviewed = state.reviewed_count
    area = float(sum(item.area_mm2 for item in items))
    if items and reviewed == len(items):
        status: CaseState = "reviewed"
    elif reviewed or selection.region_set.frozen:
        status = "in review"
    else:
        status = "analysed"
    return CaseStatus(
        status,
        analysis_id=analysis.id,
        model_name=analysis.model.name,
        max_p=max_p,
        regions=len(items),
        flagged_area_mm2=area,
        reviewed=reviewed,
    )
