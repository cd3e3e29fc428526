"""Per-slide colour standardisation and spatial context of the probability map."""

from __future__ import annotations

import numpy as np
import pytest

from wsiviewer.core.model.colour import (
    SAMPLE_CELLS,
    ColourReference,
    apply_table,
    lookup_table,
    sample_cells,
    sample_positions,
    slide_quantiles,
    tissue_pixels,
)
from wsiviewer.core.model.context import (
    ContextSettings,
    apply_context,
    log_odds,
    smooth_log_odds,
)


def _patches(seed: int, tint: tuple[int, int, int]) -> np.ndarray:
    """Glass with H&E-like tissue in the middle of every patch, tinted."""
    rng = np.random.default_rng(seed)
    patches = np.full((40, 50, 50, 3), 245, np.uint8)
    tissue = np.clip(np.array([180, 100, 150]) + rng.normal(0, 15, (40, 30, 30, 3)), 0, 255)
    patches[:, 10:40, 10:40] = np.clip(tissue + np.array(tint), 0, 255).astype(np.uint8)
    return patches


def test_two_differently_stained_slides_map_onto_one_reference() -> None:
    pale = _patches(0, (20, 30, 20))
    dark = _patches(1, (-30, -25, -35))
    reference = ColourReference.mean_of([slide_quantiles(pale), slide_quantiles(dark)])
    tables = [lookup_table(slide_quantiles(p), reference) for p in (pale, dark)]
    pale_std, dark_std = (apply_table(p, t) for p, t in zip((pale, dark), tables, strict=True))
    tissue = (slice(None), slice(10, 40), slice(10, 40))
    before = np.abs(pale[tissue].mean((0, 1, 2)) - dark[tissue].mean((0, 1, 2)))
    after = np.abs(pale_std[tissue].mean((0, 1, 2)) - dark_std[tissue].mean((0, 1, 2)))
    assert before.min() > 40
    assert after.max() < 3
    # Each table is monotone: the order of colours within a slide is kept.
    assert all((np.diff(t.astype(int), axis=1) >= 0).all() for t in tables)


def test_glass_is_not_tissue_and_the_reference_is_checked() -> None:
    glass = np.full((2, 50, 50, 3), 240, np.uint8)
    assert len(tissue_pixels(glass)) == 0
    # Too little tissue: the statistics use every px rather than failing.
    assert slide_quantiles(glass).shape == (3, 101)
    with pytest.raises(ValueError, match="3 x 101"):
        ColourReference(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="increase"):
        ColourReference(np.tile(np.linspace(255, 0, 101), (3, 1)))
    reference = ColourReference.mean_of([slide_quantiles(_patches(2, (0, 0, 0)))])
    assert ColourReference.from_dict(reference.to_dict()).quantiles == pytest.approx(
        reference.quantiles, abs=1e-3
    )
    with pytest.raises(ValueError, match="Unknown colour"):
        ColourReference.from_dict({"method": "macenko", "quantiles": []})


def test_cell_sample_is_reproducible_and_bounded() -> None:
    assert sample_cells(10).tolist() == list(range(10))
    first = sample_cells(10_000, seed=3)
    assert len(first) == SAMPLE_CELLS
    assert first.tolist() == sample_cells(10_000, seed=3).tolist()


def test_a_slide_sample_by_position_moves_only_with_the_cells_that_change() -> None:
    rows, cols = np.mgrid[0:60, 0:80]
    section = (rows - 30) ** 2 / 30**2 + (cols - 40) ** 2 / 40**2 < 1  # an oval of tissue
    cells = np.argwhere(section)
    chosen = cells[sample_positions(cells)]
    assert len(chosen) == SAMPLE_CELLS
    assert sample_positions(cells[:10]).tolist() == list(range(10))
    assert sample_positions(cells).tolist() == sorted(sample_positions(cells).tolist())
    # Spread over the whole section, as a uniform draw is (each quarter holds about 64).
    quarters = np.bincount((chosen[:, 0] >= 30) * 2 + (chosen[:, 1] >= 40), minlength=4)
    assert quarters.min() > 40
    # A mask a few cells smaller at its edge: the sample differs by those cells at most.
    edge = section & ~np.pad(section, 1)[2:, 1:-1]  # tissue cells whose lower neighbour is not
    smaller = section.copy()
    smaller[tuple(np.argwhere(edge)[:12].T)] = False
    fewer = np.argwhere(smaller)
    kept = {tuple(c) for c in fewer[sample_positions(fewer)]}
    assert len({tuple(c) for c in chosen} - kept) <= 12
    # A fresh random draw of the same cells changes almost all of it.
    drawn = {tuple(c) for c in fewer[sample_cells(len(fewer))]}
    assert len({tuple(c) for c in cells[sample_cells(len(cells))]} - drawn) > SAMPLE_CELLS // 2
    assert sample_positions(cells, seed=1).tolist() != sample_positions(cells).tolist()


def test_context_smooths_over_tissue_only_and_keeps_gaps() -> None:
    z = np.full((7, 7), np.nan)
    z[1:6, 1:6] = -3.0
    z[3, 3] = 4.0  # one isolated positive cell in negative tissue
    smoothed = smooth_log_odds(z, sigma_cells=1.0, weight=1.0)
    assert np.isnan(smoothed[0]).all()
    assert smoothed[3, 3] < 0  # the outlier is pulled down by its neighbours
    # Normalised convolution: a uniform region stays uniform up to its edge (no glass bleed).
    assert smoothed[1, 1] == pytest.approx(smoothed[1, 5])
    assert smoothed[1, 1] > -3.0 - 1e-9
    assert smooth_log_odds(z, 1.0, 0.0)[3, 3] == 4.0


def test_apply_context_recalibrates_and_round_trips_log_odds() -> None:
    p = np.array([[0.1, 0.9], [np.nan, 0.5]], dtype=np.float32)
    assert log_odds(p)[0, 1] == pytest.approx(np.log(9), rel=1e-6)
    identity = ContextSettings(sigma_um=1.0, weight=0.0, slope=1.0, bias=0.0)
    out = apply_context(p, identity, cell_um=200.0)
    assert np.isnan(out[1, 0])
    np.testing.assert_allclose(out[~np.isnan(out)], p[~np.isnan(p)], rtol=1e-5)
    shifted = apply_context(p, ContextSettings(1.0, 0.0, slope=1.0, bias=1.0), cell_um=200.0)
    assert shifted[1, 1] == pytest.approx(1 / (1 + np.exp(-1.0)), rel=1e-5)
    settings = ContextSettings(sigma_um=300.0, weight=1.0, slope=1.5, bias=-0.2)
    assert ContextSettings.from_dict(settings.to_dict()) == settings
    for bad in ({"sigma_um": 0.0}, {"weight": 1.5}, {"slope": -1.0}):
        with pytest.raises(ValueError, match="Context"):
            ContextSettings(**{"sigma_um": 300.0, "weight": 1.0, **bad})  # type: ignore[arg-type]
