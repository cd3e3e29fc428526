"""The one workflow every front door runs: analyse a slide, find its regions, record both in
the Store, and write the outputs.

The CLI (``analyze``), the viewer's analysis worker and batch processing all call
:func:`run_analysis` (or, where the map is made elsewhere, :func:`finish_analysis`), so the
threshold, the minimum area and the order of the steps are the same wherever a slide is
analysed::

    slide ─> analyze() ─> ProbabilityMap ─> find_regions(threshold, min area) ─> outputs
                                                                              └─> Store

An analysis is either recorded with all its outputs or leaves nothing. The Store is checked
writable before the work starts; the outputs are written into a staging folder; a journal
(``pending/`` beside the database) names that folder and the map file the analysis row will
reference; the analysis, its map and its region set commit in one transaction; only then are
the outputs moved into place and the journal removed. A process killed at any moment leaves
a journal, a staging folder or temporary files that the next run's :func:`recover` finishes
(the analysis was recorded: its outputs are moved into place) or undoes (it was not: they are
removed).

:func:`run_analysis` is a generator, like :func:`~wsiviewer.core.analysis.pipeline.analyze`:
it yields :class:`~wsiviewer.core.analysis.pipeline.AnalysisProgress` and returns a
:class:`WorkflowResult`; closing it between yields cancels cleanly (nothing is recorded and no
output appears). Front doors drive it with :func:`~wsiviewer.core.progress.run_to_end` (a loop)
or on a worker thread.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import uuid
import weakref
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from wsiviewer.core.analysis.grid import DENSE_SUBDIVISION
from wsiviewer.core.analysis.pipeline import Analysis, AnalysisProgress, analyze, prepare_slide
from wsiviewer.core.analysis.regions import RegionSet, find_regions
from wsiviewer.core.analysis.tissue import TissueSettings
from wsiviewer.core.atomic import atomic_write_text
from wsiviewer.core.exports.analysis_outputs import write_outputs
from wsiviewer.core.exports.files import JOURNAL_MARKER, StagedFiles, deferred_moves
from wsiviewer.core.model.predictor import Predictor
from wsiviewer.core.paths import pid_tag, process_alive, tagged_pid
from wsiviewer.core.review.defaults import DEFAULT_MIN_AREA_MM2
from wsiviewer.core.slides import Mpp, Slide
from wsiviewer.core.store.analyses import new_map_path
from wsiviewer.core.store.database import Store
from wsiviewer.errors import ExportError, StoreError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnalysisParameters:
    """How an analysis's regions are drawn: the same for every front door."""

    #: P(IDC) at or above which a cell is flagged; ``None`` is the model card's threshold.
    threshold: float | None = None
    #: Regions smaller than this are dropped, in mm² (the default of every front door).
    min_area_mm2: float = DEFAULT_MIN_AREA_MM2
    tissue: TissueSettings = field(default_factory=TissueSettings)
    #: Cells per patch side: 1 (the default map, a cell per patch) or
    #: :data:`~.analysis.grid.DENSE_SUBDIVISION` (the dense map).
    subdivision: int = 1

    def __post_init__(self) -> None:
        if self.subdivision not in (1, DENSE_SUBDIVISION):
            raise ValueError(
                f"Subdivision {self.subdivision!r} must be 1 or {DENSE_SUBDIVISION} (dense)"
            )
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
    if store is not None:
        # Before any work: a database that cannot be written fails now, and what killed
        # runs left half-done is finished or undone first.
        store.check_writable()
        recover(store)
    # A slide without a level near the model's resolution is read once into one, here, so
    # that the overlay reads it too (analyze() would otherwise make its own).
    t0 = time.perf_counter()
    view = yield from prepare_slide(slide, predictor.card, mpp)
    reading = time.perf_counter() - t0
    analysis = yield from analyze(
        view,
        predictor,
        mpp=mpp,
        tissue_settings=parameters.tissue,
        subdivision=parameters.subdivision,
    )
    if view is not slide:
        analysis.timings_s["reading"] = reading
    probability_map = analysis.probability_map
    scored = probability_map.scored_count
    yield AnalysisProgress("saving", scored, scored, probability_map)
    return finish_analysis(
        analysis, parameters, store=store, out_dir=out_dir, slide=view, started=started
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
    timings; the analysis passed in is not changed. The outputs are staged, the Store commits,
    then the outputs are moved into place (see the module's docstring).

    Raises
    ------
    ExportError
        If an output cannot be written (nothing is recorded then).
    StoreError
        If the Store cannot be written (no output appears then).
    """
    parameters = parameters or AnalysisParameters()
    if store is not None:
        recover(store)
    t0 = time.perf_counter()
    region_set = find_regions(
        analysis.probability_map, parameters.threshold_for(analysis), parameters.min_area_mm2
    )
    timings = {**analysis.timings_s, "regions": time.perf_counter() - t0}
    if started is not None:
        timings["total"] = time.perf_counter() - started
    analysis = dataclasses.replace(analysis, timings_s=timings)
    if out_dir is None:
        analysis_id = region_set_id = None
        if store is not None:
            analysis_id, region_set_id = store.save_analysis_and_regions(analysis, region_set)
        return WorkflowResult(analysis, region_set, analysis_id, region_set_id, {})
    with deferred_moves() as staged:
        outputs = write_outputs(out_dir, analysis, region_set, slide)
    if store is None:
        _commit(staged)
        return WorkflowResult(analysis, region_set, None, None, outputs)
    map_path = new_map_path()
    journal = _write_journal(store, map_path, staged)
    try:
        analysis_id, region_set_id = store.save_analysis_and_regions(
            analysis, region_set, map_path=map_path
        )
    except BaseException:
        for files in staged:
            files.discard()
        journal.unlink(missing_ok=True)
        raise
    # Recorded: the outputs follow. A kill from here on is finished by the next run's
    # recover(); an error moving them leaves the journal for it too.
    _commit(staged)
    journal.unlink(missing_ok=True)
    return WorkflowResult(analysis, region_set, analysis_id, region_set_id, outputs)


def _commit(staged: list[StagedFiles]) -> None:
    for files in staged:
        files.commit()


#: Folder, beside the results database, of the journals of analyses being recorded.
PENDING_DIR = "pending"

_recovered: weakref.WeakSet[Store] = weakref.WeakSet()


def _write_journal(store: Store, map_path: str, staged: list[StagedFiles]) -> Path:
    """Record, before the Store commits, what finishes or undoes this analysis's outputs if the
    process is killed: its map file (the row that will reference it) and its staged files."""
    journal = store.root / PENDING_DIR / f"{pid_tag()}-{uuid.uuid4().hex}.json"
    record = {
        "version": 1,
        "map_path": map_path,
        "staged": [
            {
                "out_dir": str(files.out_dir),
                "staging": str(files.staging),
                "names": list(files.names),
            }
            for files in staged
        ],
    }
    try:
        atomic_write_text(journal, json.dumps(record, indent=1))
        for files in staged:
            (files.staging / JOURNAL_MARKER).write_text(str(journal), encoding="utf-8")
    except OSError as exc:
        journal.unlink(missing_ok=True)
        for files in staged:
            files.discard()
        raise StoreError(f"Cannot write in {journal.parent} (results database): {exc}") from exc
    return journal


@dataclass(frozen=True)
class Recovery:
    """What :func:`recover` found: analyses whose outputs it moved into place, half-written
    analyses it undid, and stale temporary files it removed."""

    completed: tuple[Path, ...] = ()
    undone: tuple[Path, ...] = ()
    removed: tuple[Path, ...] = ()


def recover(store: Store, *, force: bool = False) -> Recovery:
    """Finish or undo what killed runs left, once per Store (``force``: again).

    For each journal (:data:`PENDING_DIR`) of a process that no longer runs: if the Store
    recorded its analysis, its staged outputs are moved into place (never over files written
    since); else they are removed, with its map file. Then the temporary and unreferenced map
    files of killed writers are removed (:meth:`Store.remove_stale_files`). Every front door
    that records analyses calls this before it starts (:func:`run_analysis` does).
    """
    if store in _recovered and not force:
        return Recovery()
    _recovered.add(store)
    completed: list[Path] = []
    undone: list[Path] = []
    folder = store.root / PENDING_DIR
    try:
        journals = sorted(folder.glob("*.json"))
    except OSError:
        journals = []
    for journal in journals:
        pid = tagged_pid(journal.name, "")
        if pid is not None and process_alive(pid):
            continue
        try:
            record = json.loads(journal.read_text(encoding="utf-8"))
            written_at = journal.stat().st_mtime
            map_path = str(record["map_path"])
            staged = [
                StagedFiles(Path(item["out_dir"]), Path(item["staging"]), tuple(item["names"]))
                for item in record["staged"]
            ]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("Ignoring unreadable journal %s: %s", journal.name, exc)
            journal.unlink(missing_ok=True)
            continue
        if store.has_map_path(map_path):
            for files in staged:
                _keep_newer(files, written_at)
                try:
                    files.commit()
                except ExportError as exc:
                    log.warning("Cannot finish the outputs in %s: %s", files.out_dir, exc)
                    files.discard()
                completed.append(files.out_dir)
        else:
            for files in staged:
                files.discard()
                undone.append(files.out_dir)
            try:
                store.map_file(map_path).unlink(missing_ok=True)
            except (StoreError, OSError):
                pass
        journal.unlink(missing_ok=True)
    removed = store.remove_stale_files()
    if completed or undone or removed:
        log.info(
            "Recovered after killed runs: %d outputs completed, %d undone, %d files removed",
            len(completed),
            len(undone),
            len(removed),
        )
    return Recovery(tuple(completed), tuple(undone), tuple(removed))


def _keep_newer(files: StagedFiles, written_at: float) -> None:
    """Drop staged files whose target was written after the journal (a later run's)."""
    for name in files.names:
        target = files.out_dir / name
        try:
            newer = target.stat().st_mtime > written_at
        except OSError:
            continue
        if newer:
            (files.staging / name).unlink(missing_ok=True)
