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
from wsiviewer.core.analysis.prefetch import Prefetcher
from wsiviewer.core.analysis.probability import ProbabilityMap
from wsiviewer.core.analysis.tissue import TissueSettings, detect_tissue, tissue_cells
from wsiviewer.core.model.cards import ModelSummary
from wsiviewer.core.model.predictor import Predictor
from wsiviewer.core.slides import Mpp, Slide


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
        return {
            "slide_identity": self.slide.identity,
            "weights_sha256": self.model.weights_sha256,
            "card_sha256": self.model.card_sha256,
            "mpp": self.slide.mpp.value,
            "tissue": self.tissue_settings.to_dict(),
        }

    @property
    def key(self) -> str:
        """sha256 of :meth:`key_dict`, the Store's analysis key."""
        canonical = json.dumps(self.key_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


def analyze(
    slide: Slide,
    predictor: Predictor,
    *,
    mpp: Mpp,
    tissue_settings: TissueSettings | None = None,
) -> Generator[AnalysisProgress, None, Analysis]:
    """Score every tissue cell of ``slide`` with ``predictor``'s model.

    Yields progress after tissue detection and after every batch; returns the
    :class:`Analysis`. Closing the generator between yields cancels it cleanly.
    A slide with no tissue, or smaller than one patch, returns an empty map and warns
    with :class:`AnalysisWarning`.

    Raises
    ------
    ResolutionError
        If the slide is coarser than the model's input µm/px.
    SlideReadError
        If the slide's pixels cannot be read.
    """
    from wsiviewer.core.analysis.patches import PatchReader

    tissue_settings = tissue_settings or TissueSettings()
    card = predictor.card
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    timings: dict[str, float] = {}
    notes: list[str] = []
    grid = PatchGrid.for_slide(slide.dimensions, mpp.value, card.input_mpp, card.input_size)

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
            notes.append("No tissue found on the slide: nothing to analyse")
    timings["tissue"] = time.perf_counter() - t0
    probability_map = ProbabilityMap.empty(grid, tissue)
    total = int(tissue.sum())
    yield AnalysisProgress("tissue", 0, total, probability_map)

    t0 = time.perf_counter()
    done = 0
    if total:
        reader = PatchReader(slide, grid)
        # Slide reading runs a batch or two ahead, beside inference.
        with Prefetcher(reader.iter_batches(tissue, predictor.batch_size), depth=2) as batches:
            for grid_rc, patches in batches:
                probabilities = predictor.predict(patches)
                probability_map.probabilities[grid_rc[:, 0], grid_rc[:, 1]] = probabilities
                done += len(grid_rc)
                yield AnalysisProgress("inference", done, total, probability_map)
    timings["inference"] = time.perf_counter() - t0

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
