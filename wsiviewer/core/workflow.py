"""The one workflow every front door runs: analyse a slide, find its regions, record both in
the Store, and write the outputs.

The CLI (``analyze``), the viewer's analysis worker and batch processing all call
:func:`run_analysis` (or, where the map is made elsewhere, :func:`finish_analysis`), so the
threshold, the minimum area and the order of the steps are the same wherever a slide is
analysed::

    slide ─> analyze() ─> ProbabilityMap ─> find_regions(threshold, min area) ─> outputs
                                                                              └─> Store

:func:`run_analysis` is a generator, like :func:`~wsiviewer.core.analysis.pipeline.analyze`:
it yields :class:`~wsiviewer.core.analysis.pipeline.AnalysisProgress` and returns a
:class:`WorkflowResult`; closing it between yields cancels cleanly (nothing is recorded and no
output appears). Front doors drive it with :func:`~wsiviewer.core.progress.run_to_end` (a loop)
or on a worker thread.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from wsiviewer.core.analysis.pipeline import Analysis, AnalysisProgress, analyze
from wsiviewer.core.analysis.regions import RegionSet, find_regions
from wsiviewer.core.analysis.tissue import TissueSettings
from wsiviewer.core.exports.analysis_outputs import write_outputs
from wsiviewer.core.model.predictor import Predictor
from wsiviewer.core.slides import Mpp, Slide
from wsiviewer.core.store.database import Store


@dataclass(frozen=True)
class AnalysisParameters:
    """How an analysis's regions are drawn: the same for every front door."""

    #: P(IDC) at or above which a cell is flagged; ``None`` is the model card's threshold.
    threshold: float | None = None
    #: Regions smaller than this are dropped, in mm².
    min_area_mm2: float = 0.0
    tissue: TissueSettings = field(default_factory=TissueSettings)

    def __post_init__(self) -> None:
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"Threshold {self.threshold!r} must be within [0, 1]")
        if not 0.0 <= self.min_area_mm2 < float("inf"):
            raise ValueError(f"Minimum area {self.min_area_mm2!r} mm² must be a number ≥ 0")

    def threshold_for(self, analysis: Analysis) -> float:
        """The threshold to use: the one asked for, else the card's."""
        return analysis.model.threshold if self.threshold is None else self.threshold


@dataclass(frozen=True)
class WorkflowResult:
    """A finished, recorded analysis: its map, its regions, their rows and the outputs."""

    analysis: Analysis
    region_set: RegionSet
    #: Row ids in the Store; ``None`` when no Store was given.
    analysis_id: int | None
    region_set_id: int | None
    #: Output files by kind (see :data:`~.exports.analysis_outputs.OUTPUT_NAMES`); empty when
    #: no output folder was given.
    outputs: Mapping[str, Path]


def run_analysis(
    slide: Slide,
    predictor: Predictor,
    mpp: Mpp,
    parameters: AnalysisParameters | None = None,
    *,
    store: Store | None,
    out_dir: Path | None = None,
) -> Generator[AnalysisProgress, None, WorkflowResult]:
    """Analyse ``slide``, then :func:`finish_analysis`: regions, outputs, Store.

    Yields the analysis's progress, then one ``"saving"`` step; returns the
    :class:`WorkflowResult`. ``store`` is opened by the caller, before the work starts, so a
    database that cannot be written fails at once rather than after the analysis.
    """
    parameters = parameters or AnalysisParameters()
    started = time.perf_counter()
    analysis = yield from analyze(slide, predictor, mpp=mpp, tissue_settings=parameters.tissue)
    probability_map = analysis.probability_map
    scored = probability_map.scored_count
    yield AnalysisProgress("saving", scored, scored, probability_map)
    return finish_analysis(
        analysis, parameters, store=store, out_dir=out_dir, slide=slide, started=started
    )


def finish_analysis(
    analysis: Analysis,
    parameters: AnalysisParameters | None = None,
    *,
    store: Store | None,
    out_dir: Path | None = None,
    slide: Slide | None = None,
    started: float | None = None,
) -> WorkflowResult:
    """The steps after the probability map: regions at the parameters' threshold and minimum
    area, the outputs into ``out_dir`` (the overlay needs ``slide``), and the analysis with
    its region set recorded in ``store``.

    ``started`` (a :func:`time.perf_counter` value) adds the ``total`` time to the recorded
    timings; the analysis passed in is not changed.

    Raises
    ------
    ExportError
        If an output cannot be written (nothing is recorded then).
    StoreError
        If the Store cannot be written.
    """
    parameters = parameters or AnalysisParameters()
    t0 = time.perf_counter()
    region_set = find_regions(
        analysis.probability_map, parameters.threshold_for(analysis), parameters.min_area_mm2
    )
    timings = {**analysis.timings_s, "regions": time.perf_counter() - t0}
    if started is not None:
        timings["total"] = time.perf_counter() - started
    analysis = dataclasses.replace(analysis, timings_s=timings)
    outputs: Mapping[str, Path] = {}
    if out_dir is not None:
        outputs = write_outputs(out_dir, analysis, region_set, slide)
    analysis_id = region_set_id = None
    if store is not None:
        analysis_id = store.save_analysis(analysis)
        region_set_id = store.save_region_set(analysis_id, region_set)
    return WorkflowResult(analysis, region_set, analysis_id, region_set_id, outputs)
