"""The analysis flow: slide → tissue → patch grid → CancerNet → probability map.

:func:`analyze` is a generator that yields :class:`AnalysisProgress` (with the partial
probability map) and returns an :class:`Analysis`. The CLI drives it with a loop and a
progress bar, the GUI on a worker thread; cancelling is closing the generator between yields.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from collections.abc import Generator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from wsiviewer.core.analysis.grid import PatchGrid
from wsiviewer.core.analysis.patches import PatchReader
from wsiviewer.core.analysis.prefetch import Prefetcher
from wsiviewer.core.analysis.probability import CellLogOdds, ProbabilityMap
from wsiviewer.core.analysis.tissue import (
    TissueSettings,
    detect_tissue,
    no_tissue_note,
    tissue_cells,
)
from wsiviewer.core.model.cards import ModelCard, ModelSummary
from wsiviewer.core.model.colour import (
    apply_table,
    lookup_table,
    sample_positions,
    slide_quantiles,
)
from wsiviewer.core.model.context import apply_context
from wsiviewer.core.model.predictor import Predictor
from wsiviewer.core.model.stain_check import unusual_stain_note
from wsiviewer.core.slides import Mpp, Slide
from wsiviewer.errors import SlideTooLargeError


class AnalysisWarning(UserWarning):
    """An analysis finished with empty outputs (no tissue, slide smaller than one patch)."""


@dataclass(frozen=True)
class SlideSummary:
    """What an analysis records of its slide: identity and geometry, never a path."""

    identity: str
    vendor: str | None
    l0_dimensions: tuple[int, int]
    mpp: Mpp

    def to_dict(self) -> dict[str, object]:
        return {
            "identity": self.identity,
            "vendor": self.vendor,
            "l0_dimensions": list(self.l0_dimensions),
            "mpp": self.mpp.value,
            "mpp_source": self.mpp.source,
        }


@dataclass(frozen=True)
class AnalysisProgress:
    """One step of a running analysis."""

    stage: str
    done: int
    total: int
    probability_map: ProbabilityMap | None = None


@dataclass
class Analysis:
    """A finished analysis: its inputs, its probability map and how it ran."""

    slide: SlideSummary
    model: ModelSummary
    tissue_settings: TissueSettings
    probability_map: ProbabilityMap
    device: str
    batch_size: int
    started_at: str
    timings_s: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def grid(self) -> PatchGrid:
        return self.probability_map.grid

    def key_dict(self) -> dict[str, object]:
        """What determines the probability map (DESIGN.md): not threshold, device or batch."""
        return analysis_key_dict(
            self.slide.identity,
            self.model,
            self.slide.mpp.value,
            self.tissue_settings,
            self.grid.subdivision,
        )

    @property
    def key(self) -> str:
        """sha256 of :meth:`key_dict`, the Store's analysis key."""
        return analysis_key(
            self.slide.identity,
            self.model,
            self.slide.mpp.value,
            self.tissue_settings,
            self.grid.subdivision,
        )


def analysis_key_dict(
    slide_identity: str,
    model: ModelSummary,
    mpp: float,
    tissue_settings: TissueSettings,
    subdivision: int = 1,
) -> dict[str, object]:
    """What determines an analysis's probability map, known before it runs (batch skips a
    slide whose key is already in the Store): :attr:`Analysis.key_dict` is this. A dense map
    (``subdivision`` above 1) adds it; the default map's key is what it always was."""
    key: dict[str, object] = {
        "slide_identity": slide_identity,
        "weights_sha256": model.weights_sha256,
        "card_sha256": model.card_sha256,
        "mpp": mpp,
        "tissue": tissue_settings.to_dict(),
    }
    if subdivision != 1:
        key["subdivision"] = subdivision
    return key


def analysis_key(
    slide_identity: str,
    model: ModelSummary,
    mpp: float,
    tissue_settings: TissueSettings,
    subdivision: int = 1,
) -> str:
    """sha256 of :func:`analysis_key_dict`: the Store's analysis key, before or after the run."""
    key_dict = analysis_key_dict(slide_identity, model, mpp, tissue_settings, subdivision)
    canonical = json.dumps(key_dict, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


#: Most grid cells an analysis holds (a probability, a tissue flag and their working copies
#: per cell: ~0.5 GB at this size). A 100 mm square slide at 0.25 µm/px has 250,000.
MAX_GRID_CELLS = 16_000_000


def analysis_grid(slide: Slide, mpp: Mpp, card: ModelCard, subdivision: int = 1) -> PatchGrid:
    """The grid of the model's patches over ``slide`` at ``mpp``, with cells of a
    ``subdivision``-th of a patch (a dense map: :data:`~.grid.DENSE_SUBDIVISION`).

    Raises
    ------
    ResolutionError
        If the slide is coarser than the model's input µm/px.
    SlideTooLargeError
        If it has more than :data:`MAX_GRID_CELLS` cells (a slide whose header claims an
        absurd size), with the size in the message.
    """
    grid = PatchGrid.for_slide(
        slide.dimensions, mpp.value, card.input_mpp, card.input_size, subdivision
    )
    if grid.cell_count > MAX_GRID_CELLS:
        width, height = slide.dimensions
        raise SlideTooLargeError(
            f"Slide of {width:,} × {height:,} px at {mpp.value:.3g} µm/px makes "
            f"{grid.rows:,} × {grid.cols:,} = {grid.cell_count:,} patches; at most "
            f"{MAX_GRID_CELLS:,} fit in memory"
        )
    return grid


def prepare_slide(
    slide: Slide, card: ModelCard, mpp: Mpp
) -> Generator[AnalysisProgress, None, Slide]:
    """The slide to analyse: ``slide``, or, when its finest level near the model's resolution
    is large and at least twice as fine as needed (a single-level slide), ``slide`` with that
    level read once into one at the model's resolution
    (:class:`~wsiviewer.core.slides.reduced.ReducedLevelSlide`).

    Yields ``reading`` progress (source px done, total) while it reads; closing it cancels.
    Tissue detection, the patches and the overlay then read the added level, so a slide's
    full-resolution px are decoded once.
    """
    from wsiviewer.core.slides.reduced import reduced_view

    grid = analysis_grid(slide, mpp, card)
    view = reduced_view(slide, grid.l0_per_input_px) if grid.cell_count else None
    if view is None:
        return slide
    for done, total in view.build():
        yield AnalysisProgress("reading", done, total)
    return view


def sample_patches(reader: PatchReader, tissue: np.ndarray, seed: int = 0) -> np.ndarray:
    """``(N, n, n, 3) uint8``: the patches of up to
    :data:`~wsiviewer.core.model.colour.SAMPLE_CELLS` tissue cells drawn at random by
    position (:func:`~wsiviewer.core.model.colour.sample_positions`: a tissue mask a few cells
    different draws nearly the same sample), the slide's sample for colour statistics, the
    stain check and the out-of-distribution score; a training patient's are a random draw of
    its patches too."""
    cells = np.argwhere(tissue)
    k = reader.grid.subdivision
    chosen = cells[sample_positions(cells, seed)]
    return np.stack([reader.read_cells(int(r), int(c), k, k) for r, c in chosen])


def unusual_slide_note(score: float, threshold: float) -> str:
    """The warning of a slide unlike the model's training data."""
    return (
        f"This slide is unlike the model's training data (out-of-distribution score "
        f"{score:.2f}, above {threshold:.2f}): the tissue, stain or scanner may differ, and "
        "its probabilities should not be trusted"
    )


def analyze(
    slide: Slide,
    predictor: Predictor,
    *,
    mpp: Mpp,
    tissue_settings: TissueSettings | None = None,
    subdivision: int = 1,
) -> Generator[AnalysisProgress, None, Analysis]:
    """Score every tissue cell of ``slide`` with ``predictor``'s model.

    As the model was trained (the card says how): a slide's colours are standardised to the
    card's reference from a sample of its tissue (``colour``); the sample's distance from the
    training data is checked, and an unusual slide warned (``ood``), as is a slide whose tissue
    colours before standardisation are unlike the training patients' (``stain_check``); after
    scoring, the map's log-odds are smoothed over neighbouring cells (``context``, the patches'
    own probabilities kept in :attr:`ProbabilityMap.patch_probabilities`).

    ``subdivision`` k above 1 is a dense map: cells of a k-th of a patch, patches cut at every
    cell (stride of a cell), each cell's probability from the mean log-odds of the k² patches
    that cover it. Progress then counts patches, not cells.

    Yields progress after tissue detection and after every batch; returns the
    :class:`Analysis`. Closing the generator between yields cancels it cleanly.
    A slide with no tissue, or smaller than one patch, returns an empty map and warns
    with :class:`AnalysisWarning`.

    A slide without a pyramid level near the model's resolution is first read once into
    one (:func:`prepare_slide`; progress stage ``reading``), unless it is such a slide already.

    Raises
    ------
    ResolutionError
        If the slide is coarser than the model's input µm/px.
    SlideTooLargeError
        If the slide's grid of patches would not fit in memory (the message says its size).
    SlideReadError
        If the slide's pixels cannot be read.
    """
    tissue_settings = tissue_settings or TissueSettings()
    card = predictor.card
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    timings: dict[str, float] = {}
    notes: list[str] = []
    grid = analysis_grid(slide, mpp, card, subdivision)

    t0 = time.perf_counter()
    view = yield from prepare_slide(slide, card, mpp)
    if view is not slide:
        timings["reading"] = time.perf_counter() - t0
        slide = view
    t0 = time.perf_counter()
    if grid.cell_count == 0:
        tissue = np.zeros(grid.shape, dtype=bool)
        notes.append(
            f"Slide ({slide.dimensions[0]}×{slide.dimensions[1]} px) is smaller than one "
            f"{grid.l0_patch_size:.1f} px patch at {mpp.value:.3g} µm/px: nothing to analyse"
        )
    else:
        tissue_mask = detect_tissue(slide, tissue_settings, mpp=mpp.value)
        tissue = tissue_cells(tissue_mask, grid, tissue_settings)
        if not tissue.any():
            notes.append(no_tissue_note(slide, tissue_settings, mpp=mpp.value))
    timings["tissue"] = time.perf_counter() - t0
    probability_map = ProbabilityMap.empty(grid, tissue)
    reader = PatchReader(slide, grid)
    total = int(tissue.sum()) if grid.subdivision == 1 else int(reader.patches_for(tissue).sum())
    yield AnalysisProgress("tissue", 0, total, probability_map)

    table = None
    if total and (card.colour is not None or card.ood is not None or card.stain_check is not None):
        t0 = time.perf_counter()
        sample = sample_patches(reader, tissue)
        quantiles = slide_quantiles(sample)
        if card.stain_check is not None:
            stain_score = card.stain_check.score(quantiles)
            if stain_score > card.stain_check.threshold:
                notes.append(unusual_stain_note(stain_score, card.stain_check.threshold))
        if card.colour is not None:
            table = lookup_table(quantiles, card.colour)
            sample = apply_table(sample, table)
            timings["colour"] = time.perf_counter() - t0
        if card.ood is not None:
            t0 = time.perf_counter()
            ood_score = card.ood.slide_score(predictor.features(sample))
            timings["ood"] = time.perf_counter() - t0
            if ood_score > card.ood.threshold:
                notes.append(unusual_slide_note(ood_score, card.ood.threshold))

    t0 = time.perf_counter()
    done = 0
    cells = CellLogOdds(grid) if grid.subdivision > 1 else None
    if total:
        # Slide reading runs a batch or two ahead, beside inference.
        with Prefetcher(reader.iter_batches(tissue, predictor.batch_size), depth=2) as batches:
            for grid_rc, patches in batches:
                if table is not None:
                    patches = apply_table(patches, table)
                probabilities = predictor.predict(patches)
                if cells is None:
                    probability_map.probabilities[grid_rc[:, 0], grid_rc[:, 1]] = probabilities
                else:
                    cells.add(grid_rc, probabilities)
                    cells.fill(probability_map.probabilities, grid_rc, tissue)
                done += len(grid_rc)
                yield AnalysisProgress("inference", done, total, probability_map)
        # The last of the engine's checks against the model's weights: no map is returned
        # from an engine that was not checked to the end.
        predictor.verify()
    timings["inference"] = time.perf_counter() - t0
    if total and card.context is not None:
        t0 = time.perf_counter()
        patch_level = probability_map.probabilities
        probability_map.patch_probabilities = patch_level
        probability_map.probabilities = apply_context(patch_level, card.context, grid.cell_um)
        timings["context"] = time.perf_counter() - t0

    for note in notes:
        warnings.warn(note, AnalysisWarning, stacklevel=2)
    return Analysis(
        slide=SlideSummary(slide.identity, slide.vendor, slide.dimensions, mpp),
        model=card.summary(),
        tissue_settings=tissue_settings,
        probability_map=probability_map,
        device=predictor.device_name,
        batch_size=predictor.batch_size,
        started_at=started_at,
        timings_s=timings,
        warnings=notes,
    )
