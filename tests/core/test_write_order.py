"""The order of writes: an analysis is either recorded with all its outputs or leaves nothing.

The Store is checked writable before any work; outputs are staged, the Store commits (the
analysis, its map and its region set in one transaction), then the outputs move into place;
what a killed run leaves (journal, staging folder, temporary and unreferenced map files) is
finished or undone by the next run. ``benchmarks/kill_test.py`` kills real processes at many
moments; here each state is made deterministically."""

from __future__ import annotations

import errno
import json
import os
import sqlite3
from collections import namedtuple
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from wsiviewer.core import workflow
from wsiviewer.core.analysis.pipeline import Analysis, analyze
from wsiviewer.core.exports import files as files_module
from wsiviewer.core.exports.files import ExportError, write_staged
from wsiviewer.core.model.cards import ModelCard
from wsiviewer.core.model.predictor import Predictor
from wsiviewer.core.progress import run_to_end
from wsiviewer.core.slides import ArraySource, Mpp
from wsiviewer.core.slides.synthetic import he_like_slide
from wsiviewer.core.store import connection as connection_module
from wsiviewer.core.store.database import MAPS_DIR, Store
from wsiviewer.errors import StoreError

#: A process id no process has: what a killed writer's id is now.
DEAD_PID = 2**22 + 12345


@pytest.fixture(scope="module")
def predictor(tiny_model_card: Path) -> Predictor:
    return Predictor(ModelCard.from_file(tiny_model_card), device="cpu", batch_size=64)


@pytest.fixture(scope="module")
def slide() -> ArraySource:
    return ArraySource(he_like_slide((1200, 1600), seed=2), mpp=0.5, downsamples=(1, 4))


@pytest.fixture(scope="module")
def analysis(slide: ArraySource, predictor: Predictor) -> Analysis:
    return run_to_end(analyze(slide, predictor, mpp=Mpp(0.5, "metadata")))


@pytest.fixture
def store(isolated_data_dir: Path) -> Iterator[Store]:
    with Store.open(isolated_data_dir) as opened:
        yield opened


def _analyses(store: Store) -> int:
    with store._reading("count") as connection:
        return int(connection.execute("SELECT count(*) FROM analyses").fetchone()[0])


def _everything_in(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def test_a_store_that_fails_to_commit_leaves_no_outputs(
    analysis: Analysis,
    slide: ArraySource,
    store: Store,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The database used to be written after the outputs: a failed commit gave a complete
    output folder and no recorded analysis."""

    def full(*args: object, **kwargs: object) -> tuple[int, int]:
        raise StoreError("database or disk is full")

    monkeypatch.setattr(store, "save_analysis_and_regions", full, raising=False)
    monkeypatch.setattr(store, "save_analysis", full)
    out = tmp_path / "new" / "out"
    with pytest.raises(StoreError, match="full"):
        workflow.finish_analysis(analysis, store=store, out_dir=out, slide=slide)
    assert not (tmp_path / "new").exists()  # not even the folders made for it
    assert _analyses(store) == 0
    assert _everything_in(store.root / "pending") == []


def test_analysis_and_region_set_commit_together(
    analysis: Analysis, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure recording the region set records no analysis either."""

    def broken(*args: object) -> int:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(Store, "_insert_region_set", broken, raising=False)
    monkeypatch.setattr(Store, "save_region_set", broken)
    with pytest.raises((StoreError, sqlite3.Error)):
        workflow.finish_analysis(analysis, store=store)
    assert _analyses(store) == 0
    assert list((store.root / MAPS_DIR).glob("*.npz")) == []


def test_an_unwritable_store_fails_before_any_work(
    slide: ArraySource,
    predictor: Predictor,
    isolated_data_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Locked by another writer past the busy timeout, or on a full disk: refused before
    the slide is analysed."""
    analysed: list[bool] = []
    real_analyze = workflow.analyze

    def spy(*args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        analysed.append(True)
        return (yield from real_analyze(*args, **kwargs))  # type: ignore[arg-type]

    monkeypatch.setattr(workflow, "analyze", spy)
    other = sqlite3.connect(isolated_data_dir / "wsiviewer.sqlite", isolation_level=None)
    with Store.open(isolated_data_dir, busy_timeout_s=0.2) as store:
        other.execute("BEGIN IMMEDIATE")
        run = workflow.run_analysis(
            slide, predictor, Mpp(0.5, "metadata"), store=store, out_dir=tmp_path / "out"
        )
        with pytest.raises(StoreError, match="Cannot write results database"):
            run_to_end(run)
        other.execute("ROLLBACK")
        usage = namedtuple("usage", "total used free")
        monkeypatch.setattr(
            connection_module.shutil, "disk_usage", lambda path: usage(2**40, 2**40, 5 * 2**20)
        )
        run = workflow.run_analysis(
            slide, predictor, Mpp(0.5, "metadata"), store=store, out_dir=tmp_path / "out"
        )
        with pytest.raises(StoreError, match="Only 5 MiB free"):
            run_to_end(run)
    other.close()
    assert analysed == []
    assert not (tmp_path / "out").exists()


#: A child process that analyses a small slide into ``argv[2]`` and is killed (SIGKILL, no
#: clean-up of any kind) right after the first output file is moved into place.
_KILLED_CHILD = """
import os, signal, sys
from pathlib import Path
from wsiviewer.core.model.cards import ModelCard
from wsiviewer.core.model.predictor import Predictor
from wsiviewer.core.progress import run_to_end
from wsiviewer.core.slides import ArraySource, Mpp
from wsiviewer.core.slides.synthetic import he_like_slide
from wsiviewer.core.store.database import Store
from wsiviewer.core.workflow import run_analysis

out = Path(sys.argv[2])
replace = os.replace

def replace_then_die(source, target, *args, **kwargs):
    replace(source, target, *args, **kwargs)
    if Path(target).parent == out and not Path(target).name.startswith("."):
        os.kill(os.getpid(), signal.SIGKILL)

slide = ArraySource(he_like_slide((1200, 1600), seed=2), mpp=0.5, downsamples=(1, 4))
predictor = Predictor(ModelCard.from_file(sys.argv[1]), device="cpu", batch_size=64)
with Store.open() as store:
    os.replace = replace_then_die
    run_to_end(run_analysis(slide, predictor, Mpp(0.5, "metadata"), store=store, out_dir=out))
"""


def test_a_kill_while_moving_outputs_is_finished_by_the_next_run(
    tiny_model_card: Path, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed (SIGKILL) right after the first output moved into place. The old order (outputs,
    then the Store) left outputs with no recorded analysis; now the Store has committed, and
    the next run moves the other outputs into place."""
    import subprocess
    import sys

    out = tmp_path / "out"
    child = subprocess.run(
        [sys.executable, "-c", _KILLED_CHILD, str(tiny_model_card), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert child.returncode == -9, child.stderr
    assert _analyses(store) == 1
    visible = [p.name for p in out.iterdir() if not p.name.startswith(".")]
    assert len(visible) == 1
    journals = list((store.root / "pending").glob("*.json"))
    assert len(journals) == 1
    expected = json.loads(journals[0].read_text())["staged"][0]["names"]
    recovery = workflow.recover(store, force=True)  # the child is dead: its journal is stale
    assert recovery.completed == (out,)
    assert sorted(p.name for p in out.iterdir()) == sorted(expected)  # no staging folder left
    assert len(expected) >= 7
    assert not journals[0].exists()


def test_a_kill_before_the_commit_is_undone_by_the_next_run(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Journal, staged outputs and map file written, the Store never committed: all removed."""
    out = tmp_path / "out"
    staging = out / f"{files_module.STAGING_PREFIX}{DEAD_PID}-abc"
    staging.mkdir(parents=True)
    (staging / "run.json").write_text("{}")
    map_path = f"{MAPS_DIR}/{DEAD_PID}-0123.npz"
    (store.root / MAPS_DIR).mkdir(exist_ok=True)
    (store.root / map_path).write_bytes(b"PK")
    journal = store.root / "pending" / f"{DEAD_PID}-0123.json"
    journal.parent.mkdir()
    journal.write_text(
        json.dumps(
            {
                "version": 1,
                "map_path": map_path,
                "staged": [{"out_dir": str(out), "staging": str(staging), "names": ["run.json"]}],
            }
        )
    )
    (staging / files_module.JOURNAL_MARKER).write_text(str(journal))
    # A staging folder with a journal survives the sweep of stale staging folders ...
    assert files_module.remove_stale_staging(out) == []
    recovery = workflow.recover(store, force=True)
    # ... and the recovery undoes it.
    assert recovery.undone == (out,)
    assert _everything_in(out) == []
    assert not (store.root / map_path).exists()
    assert not journal.exists()


def test_stale_temporary_files_of_killed_writers_are_removed(
    analysis: Analysis, slide: ArraySource, predictor: Predictor, store: Store, tmp_path: Path
) -> None:
    """Staging folders in the output folder and map temp files in the data folder that killed
    processes left used to stay forever; a live writer's are kept."""
    out = tmp_path / "out"
    dead_staging = out / f".wsiviewer-export-{DEAD_PID}-x"
    live_staging = out / f".wsiviewer-export-{os.getpid()}-y"
    for folder in (dead_staging, live_staging):
        folder.mkdir(parents=True)
        (folder / "heatmap.png").write_bytes(b"half")
    maps = store.root / MAPS_DIR
    maps.mkdir(exist_ok=True)
    dead_temp = maps / f".{DEAD_PID}-aa.npz.bb.tmp"
    dead_orphan = maps / f"{DEAD_PID}-cc.npz"
    live_temp = maps / f".{os.getpid()}-dd.npz.ee.tmp"
    for path in (dead_temp, dead_orphan, live_temp):
        path.write_bytes(b"x")
    referenced = store.analysis(store.save_analysis(analysis)).map_path
    run = workflow.run_analysis(slide, predictor, Mpp(0.5, "metadata"), store=store, out_dir=out)
    run_to_end(run)
    assert not dead_staging.exists()
    assert live_staging.exists()
    assert not dead_temp.exists()
    assert not dead_orphan.exists()
    assert live_temp.exists()
    assert (store.root / referenced).exists()  # referenced by a row: kept
    assert (out / "run.json").is_file()


def test_a_failed_export_leaves_no_empty_folder(tmp_path: Path) -> None:
    """``export`` into a full disk used to leave an empty output folder."""

    def no_space(path: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    target = tmp_path / "a" / "b"
    with pytest.raises(ExportError, match="No space left"):
        write_staged(target, {"one.csv": lambda p: p.write_text("x"), "two.png": no_space})
    assert not (tmp_path / "a").exists()
    existing = tmp_path / "kept"
    existing.mkdir()
    with pytest.raises(ExportError):
        write_staged(existing, {"two.png": no_space})
    assert existing.is_dir()
    assert list(existing.iterdir()) == []


def test_outputs_and_record_agree_after_a_normal_run(
    slide: ArraySource, predictor: Predictor, store: Store, tmp_path: Path
) -> None:
    run = workflow.run_analysis(
        slide, predictor, Mpp(0.5, "metadata"), store=store, out_dir=tmp_path / "out"
    )
    result = run_to_end(run)
    assert result.analysis_id is not None
    assert store.region_sets(result.analysis_id)[0].id == result.region_set_id
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        p.name for p in result.outputs.values()
    )
    assert _everything_in(store.root / "pending") == []
    record = store.analysis(result.analysis_id)
    assert record.map_path.startswith(f"{MAPS_DIR}/{os.getpid()}-")
    np.testing.assert_array_equal(
        store.load_probability_map(record).probabilities,
        result.analysis.probability_map.probabilities,
    )


def test_a_map_of_a_dead_writer_that_a_row_references_is_kept(
    analysis: Analysis, store: Store
) -> None:
    map_path = f"{MAPS_DIR}/{DEAD_PID}-0456.npz"
    store.save_analysis(analysis, map_path=map_path)
    assert store.remove_stale_files() == []
    assert (store.root / map_path).is_file()
