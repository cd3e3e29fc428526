"""One wording for counts, probabilities and thresholds wherever they are shown."""

from __future__ import annotations

from wsiviewer.core.review.wording import flagged_text, format_probability, scored_text


def test_counts_name_patches_or_dense_cells() -> None:
    assert scored_text(2227) == "2,227 patches scored"
    assert scored_text(1) == "1 patch scored"
    assert scored_text(8866, subdivision=2) == "8,866 cells scored"
    assert scored_text(1, subdivision=2) == "1 cell scored"
    assert flagged_text(1, 0.2300349) == "1 region flagged at P ≥ 0.230"


def test_probabilities_are_never_rounded_to_a_certainty() -> None:
    assert [format_probability(v) for v in (0.998, 1.0, 0.001, 0.0, None)] == [
        "0.99",
        "1.00",
        "<0.01",
        "0.00",
        "–",
    ]
