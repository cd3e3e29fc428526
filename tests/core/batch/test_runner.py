"""Batch runs on real Dask worker processes: results, the Store, outputs, the manifest,
resuming, and workers killed mid-slide.

One LocalCluster of 2 worker processes serves the module (started once, reached by its
address, as ``--scheduler`` does); tests that need a task held use :mod:`.gated`.
"""

from __future__ import annotations

import csv
import logging
import os
import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import WITHOUT_QT_ENV, he_like_slide
from tests.core.batch.gated import gated_analyze, wait_for_start
from wsiviewer.core.analysis.pipeline import analysis_key
from wsiviewer.core.batch.manifest import MANIFEST_COLUMNS, SlideRow
from wsiviewer.core.batch.runner import BatchObserver, BatchReport, BatchRun, BatchSettings
from wsiviewer.core.batch.sources import find_slides
from wsiviewer.core.exports.pyramid_tiff import write_pyramid_tiff
from wsiviewer.core.model.cards import ModelCard
from wsiviewer.core.slides import open_slide
from wsiviewer.core.store.database import Store
from wsiviewer.core.workflow import AnalysisParameters

pytestmark = pytest.mark.skipif(
    bool(os.environ.get(WITHOUT_QT_ENV)),
    reason="real worker processes, run once in the main pass: Qt plays no part in them",
)

OUTPUT_NAMES = {
    "regions.geojson",
    "idc_mask.tif",
    "idc_mask.png",
    "patches.csv",
    "heatmap.png",
    "overlay.png",
    "probabilities.npy",
    "run.json",
}


@pytest.fixture(scope="module")
def scheduler() -> Iterator[str]:
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",
        silence_logs=logging.CRITICAL,
        preload=["wsiviewer.core.batch.worker"],
    ) as cluster:
        yield cluster.scheduler_address


def make_slide(path: Path, seed: int, mpp: float | None = 0.5) -> Path:
    """A small generic pyramid (3×4 cells of 400 px at 0.5 µm/px) with two tissue blobs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = he_like_slide((1200, 1600), seed=seed)
    # 100 µm/px is implausible, so read as missing: the slide then needs --mpp.
    return write_pyramid_tiff(path, pixels, mpp=mpp or 100.0, downsamples=(1, 4))


class Recorder(BatchObserver):
    """Every event, and a gate the test can wait on for a slide's final status."""

    def __init__(self) -> None:
        self.finished: list[SlideRow] = []
        self.computed: list[str] = []
        self.progressed: list[tuple[str, str, int, int]] = []
        self.done_event = threading.Event()

    def slide_progressed(self, label: str, stage: str, done: int, total: int) -> None:
        self.progressed.append((label, stage, done, total))

    def slide_computed(self, label: str) -> None:
        self.computed.append(label)

    def slide_finished(self, row: SlideRow) -> None:
        self.finished.append(row)
        if row.status == "done":
            self.done_event.set()


def settings_for(card: Path, out: Path, scheduler: str, **changes: object) -> BatchSettings:
    return BatchSettings(
        card=ModelCard.from_file(card),
        parameters=AnalysisParameters(threshold=0.3),
        out_dir=out,
        scheduler=scheduler,
        batch_size=8,
        **changes,  # type: ignore[arg-type]
    )


def by_name(report: BatchReport) -> dict[str, SlideRow]:
    return {row.path.name: row for row in report.rows}


def assert_complete_outputs(out: Path, rows: list[SlideRow]) -> None:
    """Each done slide has every output; nothing hidden or half-written anywhere under out."""
    for row in rows:
        assert {p.name for p in (out / row.label).iterdir()} == OUTPUT_NAMES
    hidden = list(out.rglob(".*"))
    assert not hidden, hidden


def test_a_batch_analyses_records_and_writes_each_slide_and_the_manifest(
    tmp_path: Path, tiny_model_card: Path, scheduler: str
) -> None:
    slides = tmp_path / "slides"
    for seed in range(3):
        make_slide(slides / f"case{seed}.tif", seed)
    make_slide(slides / "no-mpp.tif", 7, mpp=None)
    (slides / "broken.svs").write_bytes(b"not a slide at all")
    out = tmp_path / "out"
    recorder = Recorder()
    with Store.open() as store:
        run = BatchRun(
            find_slides([slides]), settings_for(tiny_model_card, out, scheduler), store, recorder
        )
        report = run.run()
        rows = by_name(report)
        assert {name: row.status for name, row in rows.items()} == {
            "broken.svs": "failed",
            "case0.tif": "done",
            "case1.tif": "done",
            "case2.tif": "done",
            "no-mpp.tif": "failed",
        }
        assert not report.ok
        assert "is not a format OpenSlide reads" in rows["broken.svs"].error
        assert "broken.svs" not in rows["broken.svs"].error  # no file name in the record
        assert "µm/px" in rows["no-mpp.tif"].error
        assert rows["no-mpp.tif"].label.startswith("slide-")  # opened: named by identity
        # Every done slide is in the Store under the key planned before it ran.
        for name in ("case0.tif", "case1.tif", "case2.tif"):
            row = rows[name]
            (record,) = store.find_analyses(row.analysis_key)
            assert record.id == row.analysis_id
            assert record.scored_count == row.patches > 0
            with open_slide(row.path) as slide:
                assert row.label == f"slide-{slide.identity[:12]}"
                key = analysis_key(
                    slide.identity,
                    ModelCard.from_file(tiny_model_card).summary(),
                    0.5,
                    AnalysisParameters().tissue,
                )
            assert key == row.analysis_key
            stored_map = store.load_probability_map(record).probabilities
            assert row.max_p == pytest.approx(float(np.nanmax(stored_map)))
            (region_set,) = store.region_sets(record.id)
            assert region_set.threshold == 0.3
            assert region_set.region_count == row.regions
    assert_complete_outputs(out, [rows[f"case{i}.tif"] for i in range(3)])
    assert not (out / rows["broken.svs"].label).exists()
    with (out / "manifest.csv").open(newline="", encoding="utf-8") as handle:
        manifest = list(csv.DictReader(handle))
    assert tuple(manifest[0]) == MANIFEST_COLUMNS
    assert [m["label"] for m in manifest] == [row.label for row in report.rows]
    text = (out / "manifest.csv").read_text(encoding="utf-8")
    for private in (str(slides), "case0", "broken"):
        assert private not in text
    # Completion callbacks and worker progress reached the observer for every task.
    assert sorted(recorder.computed) == sorted(rows[f"case{i}.tif"].label for i in range(3))
    assert {label for label, *_ in recorder.progressed} == set(recorder.computed)
    assert sorted(r.label for r in recorder.finished) == sorted(r.label for r in report.rows)


def test_the_model_is_loaded_once_per_worker_process(
    tmp_path: Path, tiny_model_card: Path, scheduler: str
) -> None:
    from distributed import Client

    slides = [make_slide(tmp_path / f"s{seed}.tif", 10 + seed) for seed in range(5)]
    with Store.open() as store:
        report = BatchRun(slides, settings_for(tiny_model_card, None, scheduler), store).run()  # type: ignore[arg-type]
    assert [row.status for row in report.rows] == ["done"] * 5
    with Client(scheduler) as client:
        loads = client.run(
            lambda: __import__("wsiviewer.core.batch.worker").core.batch.worker.model_loads
        )
    workers_used = {row.worker for row in report.rows}
    assert len(workers_used) <= 2
    assert all(count <= 1 for count in loads.values()), loads


def test_an_interrupted_batch_resumes_where_it_stopped(
    tmp_path: Path, tiny_model_card: Path, scheduler: str
) -> None:
    slides = tmp_path / "slides"
    first = make_slide(slides / "first.tif", 20)
    held = [make_slide(slides / f"gated{i}.tif", 21 + i) for i in range(2)]
    gate = slides / "gate"
    gate.mkdir()
    out = tmp_path / "out"
    recorder = Recorder()
    with Store.open() as store:
        run = BatchRun(
            [first, *held],
            settings_for(tiny_model_card, out, scheduler),
            store,
            recorder,
            task=gated_analyze,
        )
        reports: list[BatchReport] = []
        thread = threading.Thread(target=lambda: reports.append(run.run()))
        thread.start()
        try:
            wait_for_start(gate)
            assert recorder.done_event.wait(60), "the ungated slide never finished"
            run.cancel()
            thread.join(60)
        finally:
            (gate / "open").touch()  # the held workers go on (their results are dropped)
        (report,) = reports
        assert report.cancelled
        assert not report.ok
        assert [row.status for row in report.rows] == ["done", "cancelled", "cancelled"]
        manifest = (out / "manifest.csv").read_text(encoding="utf-8")
        assert manifest.count(",cancelled,") == 2
        assert_complete_outputs(out, [report.rows[0]])
        assert not (out / report.rows[1].label).exists()

        shutil.rmtree(gate)
        again = BatchRun([first, *held], settings_for(tiny_model_card, out, scheduler), store)
        resumed = again.run()
    assert [row.status for row in resumed.rows] == ["skipped", "done", "done"]
    skipped = resumed.rows[0]
    assert skipped.analysis_id == report.rows[0].analysis_id
    assert skipped.patches == report.rows[0].patches
    assert "already analysed" in skipped.error
    assert resumed.ok
    assert_complete_outputs(out, list(resumed.rows))


def test_force_analyses_again_and_a_slide_given_twice_runs_once(
    tmp_path: Path, tiny_model_card: Path, scheduler: str
) -> None:
    slide = make_slide(tmp_path / "slide.tif", 30)
    copy = Path(shutil.copy2(slide, tmp_path / "copy.tif"))
    out = tmp_path / "out"
    with Store.open() as store:
        first = BatchRun([slide, copy], settings_for(tiny_model_card, out, scheduler), store)
        report = first.run()
        assert [row.status for row in report.rows] == ["done", "skipped"]
        assert report.rows[1].error == f"the same slide as {report.rows[0].label}"
        assert report.ok
        forced = BatchRun([slide], settings_for(tiny_model_card, out, scheduler, force=True), store)
        again = forced.run()
        (row,) = again.rows
        assert row.status == "done"
        assert row.analysis_id != report.rows[0].analysis_id
        assert len(store.find_analyses(row.analysis_key)) == 2


@pytest.mark.parametrize("retries", [1, 0])
def test_a_worker_killed_mid_slide(
    tmp_path: Path, tiny_model_card: Path, scheduler: str, retries: int
) -> None:
    """kill -9 of the worker holding a slide: with retries left the slide is analysed on
    another worker; without, it is marked failed. The other slides are done either way."""
    slides = tmp_path / "slides"
    victim = make_slide(slides / "gated-victim.tif", 40)
    others = [make_slide(slides / f"other{i}.tif", 41 + i) for i in range(2)]
    gate = slides / "gate"
    gate.mkdir()
    out = tmp_path / "out"
    settings = settings_for(tiny_model_card, out, scheduler, retries=retries)
    with Store.open() as store:
        run = BatchRun([victim, *others], settings, store, task=gated_analyze)
        reports: list[BatchReport] = []
        thread = threading.Thread(target=lambda: reports.append(run.run()))
        thread.start()
        try:
            killed = wait_for_start(gate)
            os.kill(killed, signal.SIGKILL)
        finally:
            (gate / "open").touch()
            thread.join(120)
    (report,) = reports
    rows = by_name(report)
    assert rows["other0.tif"].status == rows["other1.tif"].status == "done"
    if retries:
        assert rows["gated-victim.tif"].status == "done"
        assert not rows["gated-victim.tif"].worker.endswith(f":{killed}")
        assert report.ok
    else:
        assert rows["gated-victim.tif"].status == "failed"
        assert rows["gated-victim.tif"].error == (
            "the worker analysing it died 1 time (killed, or out of memory)"
        )
        assert not (out / rows["gated-victim.tif"].label).exists()
    assert_complete_outputs(out, [row for row in report.rows if row.status == "done"])


def test_ctrl_c_waits_until_a_slide_is_recorded_whole() -> None:
    import os
    import signal

    from wsiviewer.core.batch.runner import _ctrl_c_after

    steps: list[str] = []

    def record_and_report() -> None:
        with _ctrl_c_after():
            os.kill(os.getpid(), signal.SIGINT)
            steps.append("recorded")  # not interrupted by the signal above
            steps.append("reported")

    with pytest.raises(KeyboardInterrupt):
        record_and_report()
    assert steps == ["recorded", "reported"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
