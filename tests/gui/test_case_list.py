"""The case list: a folder's slides with their status, "Analyze all" on a Dask cluster with
live per-slide status, sorting, and a double-click to open a slide."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import Qt

from tests.conftest import he_like_slide
from tests.core.batch.gated import gated_analyze, wait_for_start
from wsiviewer.core.batch.cases import case_status
from wsiviewer.core.exports.pyramid_tiff import write_pyramid_tiff
from wsiviewer.core.slides import open_slide
from wsiviewer.core.store.database import Store
from wsiviewer.gui.case_list import MAX_P_COLUMN, NAME_COLUMN, STATUS_COLUMN
from wsiviewer.gui.main_window import MainWindow


@pytest.fixture(scope="module")
def scheduler() -> Iterator[str]:
    """One local worker process, reached by address as the case list's "Run on" field does."""
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",
        silence_logs=logging.CRITICAL,
        preload=["wsiviewer.core.batch.worker"],
    ) as cluster:
        yield cluster.scheduler_address


@pytest.fixture
def case_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "cases"
    (folder / "more").mkdir(parents=True)
    (folder / "zz").mkdir()
    # Listed in this order (a folder's files, then its sub-folders): the gated slide last.
    for i, name in enumerate(("case-1.tif", "more/case-2.tif", "zz/gated-3.tif")):
        write_pyramid_tiff(
            folder / name, he_like_slide((1200, 1600), seed=50 + i), mpp=0.5, downsamples=(1, 4)
        )
    (folder / "broken.svs").write_bytes(b"not a slide")
    (folder / "notes.txt").write_text("not a slide either")
    return folder


def statuses(window: MainWindow) -> dict[str, str]:
    return {entry.path.name: entry.status_text for entry in window.case_list.model.entries}


def test_analyze_all_updates_each_slide_live_and_the_viewer_stays_usable(
    qtbot,  # type: ignore[no-untyped-def]
    window: MainWindow,
    installed_model: Path,
    case_folder: Path,
    scheduler: str,
) -> None:
    window.reload_models()
    window.batch_size = 8
    panel = window.case_list
    with qtbot.waitSignal(panel.statuses_loaded, timeout=20_000):
        window.open_folder(case_folder)
    assert window.cases_dock.isVisible()
    assert statuses(window) == {
        "broken.svs": "cannot open",
        "case-1.tif": "not analysed",
        "case-2.tif": "not analysed",
        "gated-3.tif": "not analysed",
    }
    assert panel.analyze_button.isEnabled()

    gate = case_folder / "zz" / "gate"
    gate.mkdir()
    panel.runner.task = gated_analyze
    panel.scheduler_edit.setText(scheduler)
    with qtbot.waitSignal(panel.batch_started):
        panel.analyze_button.click()
    assert not panel.analyze_button.isEnabled()
    assert panel.cancel_button.isEnabled()
    try:
        # The gated slide is held on the worker: the others are already shown as analysed,
        # from their completion events, before the batch ends.
        qtbot.waitUntil(
            lambda: statuses(window)["case-1.tif"] == statuses(window)["case-2.tif"] == "analysed",
            timeout=60_000,
        )
        wait_for_start(gate)
        # Held before its analysis starts: planned and submitted, no progress yet.
        qtbot.waitUntil(lambda: statuses(window)["gated-3.tif"] == "queued", timeout=10_000)
        assert statuses(window)["broken.svs"] == "failed"
        assert panel.runner.running
        # The viewer is usable meanwhile: a double-click opens a slide.
        row = next(
            r
            for r in range(panel.proxy.rowCount())
            if panel.proxy.index(r, NAME_COLUMN).data() == "case-1.tif"
        )
        with qtbot.waitSignal(window.slide_opened, timeout=10_000):
            panel.table.doubleClicked.emit(panel.proxy.index(row, NAME_COLUMN))
        assert window.slide_path is not None
        assert window.slide_path.name == "case-1.tif"
    finally:
        (gate / "open").touch()
    with qtbot.waitSignal(panel.batch_finished, timeout=60_000) as finished:
        pass
    report = finished.args[0]
    assert (report.count("done"), report.count("failed")) == (3, 1)
    assert statuses(window)["gated-3.tif"] == "analysed"
    assert "not a format OpenSlide reads" in panel.entry(case_folder / "broken.svs").message
    qtbot.waitUntil(lambda: panel.analyze_button.isEnabled(), timeout=10_000)
    assert window.shown_analysis_id is not None  # the open slide's new analysis is shown

    # Sort by max P, highest first: the figures are the Store's.
    panel.table.sortByColumn(MAX_P_COLUMN, Qt.SortOrder.DescendingOrder)
    shown = [panel.proxy.index(r, MAX_P_COLUMN).data() for r in range(panel.proxy.rowCount())]
    numbers = [float(text) for text in shown if text]
    assert len(numbers) == 3
    assert numbers == sorted(numbers, reverse=True)
    with Store.open() as store, open_slide(case_folder / "zz" / "gated-3.tif") as slide:
        stored = case_status(store, slide.identity)
    assert stored.state == "analysed"
    entry = panel.entry(case_folder / "zz" / "gated-3.tif")
    assert entry is not None
    assert entry.status is not None
    assert entry.status.max_p == pytest.approx(stored.max_p)
    shutil.rmtree(gate)


def test_review_status_comes_from_the_store(
    qtbot,  # type: ignore[no-untyped-def]
    window: MainWindow,
    installed_model: Path,
    case_folder: Path,
) -> None:
    """A slide with every region decided reads "reviewed", one with some "in review"."""
    from tests.core.store.test_store import make_analysis
    from wsiviewer.core.analysis.regions import find_regions

    identities = {}
    for name in ("case-1.tif", "gated-3.tif"):
        with open_slide(next(case_folder.rglob(name))) as slide:
            identities[name] = slide.identity
    with Store.open() as store:
        for name, decided in (("case-1.tif", 2), ("gated-3.tif", 1)):
            analysis = make_analysis(identities[name])
            analysis_id = store.save_analysis(analysis)
            set_id = store.save_region_set(analysis_id, find_regions(analysis.probability_map, 0.5))
            for region in store.regions(set_id)[:decided]:
                store.record_review_decision(set_id, "accept", "dr a", region_id=region.id)
    window.reload_models()
    with qtbot.waitSignal(window.case_list.statuses_loaded, timeout=20_000):
        window.open_folder(case_folder)
    assert statuses(window) == {
        "broken.svs": "cannot open",
        "case-1.tif": "reviewed",
        "case-2.tif": "not analysed",
        "gated-3.tif": "in review (1 of 2)",
    }
    panel = window.case_list
    panel.table.sortByColumn(STATUS_COLUMN, Qt.SortOrder.AscendingOrder)
    order = [panel.proxy.index(r, NAME_COLUMN).data() for r in range(panel.proxy.rowCount())]
    assert order.index("case-2.tif") < order.index("gated-3.tif") < order.index("case-1.tif")
