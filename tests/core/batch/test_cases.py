"""A slide's case status from the Store: not analysed, analysed, in review, reviewed."""

from __future__ import annotations

import numpy as np
import pytest

from tests.core.store.test_store import make_analysis
from wsiviewer.core.analysis.regions import find_regions
from wsiviewer.core.batch.cases import case_status
from wsiviewer.core.store.database import Store


def test_status_follows_the_review_of_the_selected_region_set() -> None:
    identity = "quickhash-case"
    with Store.open() as store:
        assert case_status(store, identity).text == "not analysed"

        analysis = make_analysis(identity)
        analysis_id = store.save_analysis(analysis)
        status = case_status(store, identity)
        assert status.state == "analysed"
        assert status.regions is None  # no region set recorded yet
        highest = float(np.nanmax(analysis.probability_map.probabilities))
        assert status.max_p == pytest.approx(highest)

        region_set = find_regions(analysis.probability_map, 0.5)
        set_id = store.save_region_set(analysis_id, region_set)
        status = case_status(store, identity)
        assert (status.state, status.regions) == ("analysed", 2)
        assert status.flagged_area_mm2 == pytest.approx(
            sum(region.area_mm2 for region in region_set.regions)
        )

        first, second = store.regions(set_id)
        store.record_review_decision(set_id, "accept", "dr a", region_id=first.id)
        status = case_status(store, identity)
        assert status.state == "in review"
        assert status.text == "in review (1 of 2)"

        store.record_review_decision(set_id, "reject", "dr a", region_id=second.id)
        assert case_status(store, identity).state == "reviewed"

        store.record_review_decision(set_id, "reset", "dr a", region_id=second.id)
        assert case_status(store, identity).state == "in review"
        assert case_status(store, "another slide").state == "not analysed"
