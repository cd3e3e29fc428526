"""The results database: round trips, migrations, refusals, and several processes at once."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from wsiviewer.core import paths
from wsiviewer.core.analysis.grid import PatchGrid
from wsiviewer.core.analysis.pipeline import Analysis, SlideSummary
from wsiviewer.core.analysis.probability import ProbabilityMap
from wsiviewer.core.analysis.regions import find_regions
from wsiviewer.core.analysis.tissue import TissueSettings
from wsiviewer.core.model.cards import ModelSummary
from wsiviewer.core.slides import Mpp
from wsiviewer.core.store import database as store
from wsiviewer.core.store.database import Store
from wsiviewer.core.store.records import AnalysisRecord
from wsiviewer.core.store.schema import MIGRATIONS, Migration
from wsiviewer.errors import StoreError

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parents[2]
WEIGHTS_A = "a" * 64
WEIGHTS_B = "b" * 64


def make_analysis(
    identity: str = "quickhash-slide-a",
    *,
    weights_sha256: str = WEIGHTS_A,
    seed: int = 0,
    device: str = "cpu",
) -> Analysis:
    """A finished analysis of a 5x4-cell slide: a hot 2x2 block, a lone hot cell, NaN off
    tissue and on one tissue cell not scored."""
    mpp = Mpp(0.5, "metadata")
    grid = PatchGrid.for_slide((1900, 1500), mpp.value, 4.0, 50)  # 400 px cells, 4 rows x 5 cols
    rng = np.random.default_rng(seed)
    probabilities = rng.uniform(0.0, 0.3, grid.shape).astype(np.float32)
    probabilities[0:2, 0:2] = [[0.9, 0.8], [0.95, 0.7]]
    probabilities[3, 4] = 0.85
    tissue = np.ones(grid.shape, dtype=bool)
    tissue[3, 0] = False
    probabilities[3, 0] = np.nan
    probabilities[2, 2] = np.nan  # tissue, not scored
    model = ModelSummary(
        name="cancernet-test",
        version="1.0.0",
        architecture="cancernet",
        weights_sha256=weights_sha256,
        card_sha256="c" * 64,
        input_mpp=4.0,
        threshold=0.5,
    )
    return Analysis(
        slide=SlideSummary(identity, "aperio", (1900, 1500), mpp),
        model=model,
        tissue_settings=TissueSettings(),
        probability_map=ProbabilityMap(grid, probabilities, tissue),
        device=device,
        batch_size=64,
        started_at="2024-05-01T12:00:00+00:00",
        timings_s={"tissue": 0.25, "inference": 1.5},
        warnings=["a note"],
    )


@pytest.fixture(autouse=True)
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(paths.DATA_DIR_ENV, str(tmp_path))
    return tmp_path


@pytest.fixture
def opened(data_dir: Path) -> Iterator[Store]:
    with Store.open() as opened_store:
        yield opened_store


@contextlib.contextmanager
def raw_connection(path: Path) -> Iterator[sqlite3.Connection]:
    """A plain sqlite3 connection in autocommit mode, always closed."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as connection:
        yield connection


def database(data_dir: Path) -> Path:
    return data_dir / store.DATABASE_NAME


def count_rows(data_dir: Path, table: str) -> int:
    with raw_connection(database(data_dir)) as connection:
        return int(connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def python_env(data_dir: Path) -> dict[str, str]:
    python_path = [str(TESTS_DIR), str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]
    return {
        **os.environ,
        paths.DATA_DIR_ENV: str(data_dir),
        "PYTHONPATH": os.pathsep.join(part for part in python_path if part),
    }


def run_python(code: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a second Python process on the same data directory."""
    return subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        env=python_env(data_dir),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# -- paths ---------------------------------------------------------------------------------


def test_data_dir_follows_the_environment(data_dir: Path) -> None:
    assert paths.data_dir() == data_dir
    models = paths.user_models_dir()
    assert models == data_dir / "models"
    assert models.is_dir()


def test_data_dir_is_created_on_demand(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(paths.DATA_DIR_ENV, str(tmp_path / "new" / "dir"))
    assert paths.data_dir().is_dir()


def test_data_dir_defaults_to_platformdirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(paths.DATA_DIR_ENV)
    calls: list[str] = []

    def fake_user_data_dir(appname: str, appauthor: object = None) -> str:
        calls.append(appname)
        return str(tmp_path / "platform")

    monkeypatch.setattr(paths, "user_data_dir", fake_user_data_dir)
    assert paths.data_dir() == tmp_path / "platform"
    assert calls == ["wsiviewer"]
    assert (tmp_path / "platform").is_dir()


# -- opening -------------------------------------------------------------------------------


def test_open_creates_a_wal_database_at_the_latest_schema(opened: Store, data_dir: Path) -> None:
    assert opened.path == database(data_dir)
    assert opened.schema_version == len(MIGRATIONS)
    assert opened.journal_mode == "wal"
    with raw_connection(opened.path) as connection:
        # WAL is a property of the file: every other connection sees it too.
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        versions = connection.execute("SELECT version FROM schema_version").fetchall()
        tables = {
            row[0]
            for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
    assert versions == [(migration.version,) for migration in MIGRATIONS]
    assert {"slides", "models", "analyses", "region_sets", "regions"} <= tables
    assert opened._open_connection().execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert opened._open_connection().execute("PRAGMA busy_timeout").fetchone()[0] == 10_000


def test_slides_never_record_a_path(opened: Store) -> None:
    with raw_connection(opened.path) as connection:
        columns = {row[1] for row in connection.execute("PRAGMA table_info(slides)")}
    assert not {column for column in columns if "path" in column or "file" in column}


def test_closed_store_refuses_calls(data_dir: Path) -> None:
    with Store.open() as opened_store:
        pass
    assert opened_store.closed
    opened_store.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        opened_store.latest_analysis("quickhash-slide-a")


def test_missing_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        Store(tmp_path / "missing" / "wsiviewer.sqlite")


@pytest.mark.parametrize(
    "content",
    [b"not a database at all\n" * 50, b"SQLite format 3\x00" + bytes(range(256)) * 20, b"SQL"],
    ids=["text", "sqlite-header-then-garbage", "short"],
)
def test_corrupt_file_is_refused_and_left_untouched(data_dir: Path, content: bytes) -> None:
    path = database(data_dir)
    path.write_bytes(content)
    with pytest.raises(StoreError, match=r"wsiviewer\.sqlite"):
        Store.open()
    assert path.read_bytes() == content
    assert sorted(child.name for child in data_dir.iterdir()) == [store.DATABASE_NAME]


def test_foreign_sqlite_database_is_refused_and_left_untouched(data_dir: Path) -> None:
    path = database(data_dir)
    with raw_connection(path) as connection:
        connection.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY)")
    content = path.read_bytes()
    with pytest.raises(StoreError, match="not a wsiviewer results database"):
        Store.open()
    assert path.read_bytes() == content


def test_newer_schema_is_refused(data_dir: Path) -> None:
    Store.open().close()
    path = database(data_dir)
    with raw_connection(path) as connection:
        connection.execute(
            "INSERT INTO schema_version VALUES (99, 'from the future', '2099-01-01', '9.9')"
        )
    content = path.read_bytes()
    with pytest.raises(StoreError, match=r"schema version 99, newer .* upgrade wsiviewer"):
        Store.open()
    assert path.read_bytes() == content


def test_empty_file_becomes_a_new_database(data_dir: Path) -> None:
    database(data_dir).touch()
    with Store.open() as opened_store:
        assert opened_store.schema_version == len(MIGRATIONS)


# -- migrations ----------------------------------------------------------------------------


def test_version_zero_database_is_migrated(data_dir: Path) -> None:
    """A database made by hand at version 0: a schema_version table and nothing else."""
    path = database(data_dir)
    with raw_connection(path) as connection:
        connection.execute(store.SCHEMA_VERSION_TABLE)
        connection.execute("INSERT INTO schema_version VALUES (0, 'empty', '2024-01-01', '0')")
    with Store.open() as opened_store:
        assert opened_store.schema_version == len(MIGRATIONS)
        analysis_id = opened_store.save_analysis(make_analysis())
        assert opened_store.analysis(analysis_id).slide_identity == "quickhash-slide-a"
    with raw_connection(path) as connection:
        versions = [row[0] for row in connection.execute("SELECT version FROM schema_version")]
    assert versions == list(range(len(MIGRATIONS) + 1))


def _with_extra_migrations(*extra: Migration) -> tuple[Migration, ...]:
    return (*MIGRATIONS, *extra)


def test_later_migrations_are_applied_in_order_and_keep_data(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Store.open() as opened_store:
        analysis_id = opened_store.save_analysis(make_analysis())
    latest = len(MIGRATIONS)
    monkeypatch.setattr(
        store,
        "MIGRATIONS",
        _with_extra_migrations(
            Migration(latest + 1, "notes", ("ALTER TABLE analyses ADD COLUMN notes TEXT",)),
            # Depends on the step before it: fails unless applied in order.
            Migration(latest + 2, "default notes", ("UPDATE analyses SET notes = 'migrated'",)),
        ),
    )
    with Store.open() as opened_store:
        assert opened_store.schema_version == latest + 2
        assert opened_store.analysis(analysis_id).key == make_analysis().key
    with raw_connection(database(data_dir)) as connection:
        notes = connection.execute("SELECT notes FROM analyses").fetchall()
        versions = [row[0] for row in connection.execute("SELECT version FROM schema_version")]
    assert notes == [("migrated",)]
    assert versions == list(range(1, latest + 3))


def test_failed_migration_rolls_back_and_is_reported(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Store.open().close()
    latest = len(MIGRATIONS)
    monkeypatch.setattr(
        store,
        "MIGRATIONS",
        _with_extra_migrations(
            Migration(
                latest + 1,
                "broken",
                ("ALTER TABLE analyses ADD COLUMN notes TEXT", "SELECT * FROM no_such_table"),
            )
        ),
    )
    with pytest.raises(StoreError, match=rf"schema version {latest + 1} \(broken\)"):
        Store.open()
    with raw_connection(database(data_dir)) as connection:
        columns = {row[1] for row in connection.execute("PRAGMA table_info(analyses)")}
        version = connection.execute("SELECT max(version) FROM schema_version").fetchone()[0]
    assert "notes" not in columns
    assert version == latest


# -- analyses ------------------------------------------------------------------------------


def test_analysis_round_trip(opened: Store, data_dir: Path) -> None:
    analysis = make_analysis()
    analysis_id = opened.save_analysis(analysis)

    record = opened.latest_analysis("quickhash-slide-a")
    assert record is not None
    assert record.id == analysis_id
    assert record.key == analysis.key
    assert record.slide_identity == "quickhash-slide-a"
    assert record.slide_vendor == "aperio"
    assert record.l0_dimensions == (1900, 1500)
    assert record.mpp == Mpp(0.5, "metadata")
    assert record.model == analysis.model
    assert record.tissue_settings == json.loads(json.dumps(TissueSettings().to_dict()))
    assert record.grid == analysis.grid
    assert record.device == "cpu"
    assert record.batch_size == 64
    assert record.started_at == analysis.started_at
    assert record.finished_at.endswith("+00:00")
    assert record.timings_s == analysis.timings_s
    assert record.warnings == ("a note",)
    assert (record.cell_count, record.tissue_count, record.scored_count) == (20, 19, 18)
    assert record.map_path.startswith("maps/")
    assert opened.analysis(analysis_id) == record

    loaded = opened.load_probability_map(record)
    assert loaded.grid == analysis.grid
    assert loaded.probabilities.dtype == np.float32
    np.testing.assert_array_equal(loaded.probabilities, analysis.probability_map.probabilities)
    assert np.isnan(loaded.probabilities[2, 2])
    np.testing.assert_array_equal(loaded.tissue, analysis.probability_map.tissue)
    # Atomic write: only the finished map file, no temporary left behind.
    assert [child.name for child in (data_dir / "maps").iterdir()] == [Path(record.map_path).name]


def test_every_run_is_recorded(opened: Store, data_dir: Path) -> None:
    analysis = make_analysis()
    first = opened.save_analysis(analysis)
    second = opened.save_analysis(dataclasses.replace(analysis, device="cuda"))
    assert first != second
    found = opened.find_analyses(analysis.key)
    assert [record.id for record in found] == [second, first]
    assert found[0].device == "cuda"
    assert found[0].map_path != found[1].map_path
    assert opened.find_analyses("no-such-key") == []
    assert count_rows(data_dir, "slides") == 1
    assert count_rows(data_dir, "models") == 1
    assert len(list((data_dir / "maps").iterdir())) == 2


def test_latest_analysis_by_slide_and_weights(opened: Store) -> None:
    first = opened.save_analysis(make_analysis(weights_sha256=WEIGHTS_A))
    second = opened.save_analysis(make_analysis(weights_sha256=WEIGHTS_B, seed=1))
    other_slide = opened.save_analysis(make_analysis("quickhash-slide-b"))

    def latest_id(identity: str, weights: str | None = None) -> int | None:
        record = opened.latest_analysis(identity, weights)
        return None if record is None else record.id

    assert latest_id("quickhash-slide-a") == second
    assert latest_id("quickhash-slide-a", WEIGHTS_A) == first
    assert latest_id("quickhash-slide-a", WEIGHTS_B) == second
    assert latest_id("quickhash-slide-b") == other_slide
    assert latest_id("quickhash-slide-b", WEIGHTS_B) is None
    assert latest_id("unknown") is None


def test_unknown_analysis_is_an_error(opened: Store) -> None:
    with pytest.raises(StoreError, match="No analysis 42"):
        opened.analysis(42)


def test_failed_insert_removes_the_map_file(opened: Store, data_dir: Path) -> None:
    broken = make_analysis()
    broken.device = None  # type: ignore[assignment]  # violates analyses.device NOT NULL
    with pytest.raises(StoreError, match="NOT NULL"):
        opened.save_analysis(broken)
    assert list((data_dir / "maps").iterdir()) == []
    assert count_rows(data_dir, "slides") == 0  # the slide insert was rolled back too


def test_map_not_matching_its_grid_is_refused(opened: Store) -> None:
    analysis = make_analysis()
    analysis.probability_map.tissue = analysis.probability_map.tissue[:2]
    with pytest.raises(StoreError, match="do not match grid"):
        opened.save_analysis(analysis)


def _saved_record(opened: Store) -> AnalysisRecord:
    record = opened.analysis(opened.save_analysis(make_analysis()))
    return record


def test_missing_map_file_is_an_error(opened: Store, data_dir: Path) -> None:
    record = _saved_record(opened)
    (data_dir / record.map_path).unlink()
    with pytest.raises(StoreError, match="is missing"):
        opened.load_probability_map(record)


@pytest.mark.parametrize(
    "damage",
    [
        lambda content: b"",
        lambda content: content[:100],
        lambda content: content[:-10],
        lambda content: content[:60] + bytes(len(content) - 60),  # zeroed data: bad CRC
        lambda content: b"\x93NUMPY" + content,  # an .npy header, not an archive
    ],
    ids=["empty", "truncated", "cut-short", "zeroed", "npy"],
)
def test_corrupt_map_file_is_an_error(
    opened: Store, data_dir: Path, damage: Callable[[bytes], bytes]
) -> None:
    record = _saved_record(opened)
    map_file = data_dir / record.map_path
    map_file.write_bytes(damage(map_file.read_bytes()))
    with pytest.raises(StoreError, match="is corrupt"):
        opened.load_probability_map(record)


def test_map_of_the_wrong_shape_is_an_error(opened: Store, data_dir: Path) -> None:
    record = _saved_record(opened)
    with (data_dir / record.map_path).open("wb") as file:
        np.savez_compressed(
            file, probabilities=np.zeros((2, 2), np.float32), tissue=np.zeros((2, 2), bool)
        )
    with pytest.raises(StoreError, match="do not match grid"):
        opened.load_probability_map(record)


def test_map_path_may_not_leave_the_data_dir(opened: Store) -> None:
    record = _saved_record(opened)
    for bad in ("../elsewhere.npz", "/etc/passwd"):
        with pytest.raises(StoreError, match="Invalid probability map path"):
            opened.load_probability_map(dataclasses.replace(record, map_path=bad))


# -- region sets ---------------------------------------------------------------------------


def test_region_set_round_trip(opened: Store) -> None:
    analysis = make_analysis()
    analysis_id = opened.save_analysis(analysis)
    region_set = find_regions(analysis.probability_map, 0.5)
    assert len(region_set) == 2
    region_set_id = opened.save_region_set(analysis_id, region_set)

    [record] = opened.region_sets(analysis_id)
    assert record.id == region_set_id
    assert (record.threshold, record.min_area_mm2, record.region_count) == (0.5, 0.0, 2)
    assert record.created_at.endswith("+00:00")
    assert not record.frozen
    stored = opened.regions(region_set_id)
    assert [item.region.number for item in stored] == [1, 2]
    assert len({item.id for item in stored}) == 2
    for item, region in zip(stored, region_set.regions, strict=True):
        assert item.region_set_id == region_set_id
        assert item.region.polygon.equals_exact(region.polygon, 0.0)
        assert item.region.area_mm2 == region.area_mm2
        assert (item.region.max_prob, item.region.mean_prob) == (region.max_prob, region.mean_prob)
        np.testing.assert_array_equal(item.region.grid_cells, region.grid_cells)
    loaded = opened.load_region_set(region_set_id)
    assert (loaded.threshold, loaded.min_area_mm2, len(loaded)) == (0.5, 0.0, 2)
    np.testing.assert_array_equal(loaded.mask((4, 5)), region_set.mask((4, 5)))


def test_empty_region_set_round_trip(opened: Store) -> None:
    analysis = make_analysis()
    analysis_id = opened.save_analysis(analysis)
    region_set_id = opened.save_region_set(analysis_id, find_regions(analysis.probability_map, 1.0))
    assert opened.regions(region_set_id) == []
    assert opened.region_set(region_set_id).region_count == 0


def test_identical_unfrozen_region_set_is_reused(opened: Store, data_dir: Path) -> None:
    analysis = make_analysis()
    analysis_id = opened.save_analysis(analysis)
    other_analysis_id = opened.save_analysis(analysis)
    at_half = find_regions(analysis.probability_map, 0.5)

    first = opened.save_region_set(analysis_id, at_half)
    assert opened.save_region_set(analysis_id, find_regions(analysis.probability_map, 0.5)) == first
    assert opened.save_region_set(analysis_id, find_regions(analysis.probability_map, 0.8)) != first
    assert opened.save_region_set(analysis_id, find_regions(analysis.probability_map, 0.5, 0.1))
    assert opened.save_region_set(other_analysis_id, at_half) != first
    assert count_rows(data_dir, "region_sets") == 4
    # 0.5: the 2x2 block and the lone cell; 0.8: three cells of the block and the lone cell;
    # 0.5 and 0.1 mm²: the block only (a 400 px cell at 0.5 µm/px is 0.04 mm²).
    assert count_rows(data_dir, "regions") == 2 + 2 + 1 + 2


def test_freeze_region_set(opened: Store, data_dir: Path) -> None:
    analysis = make_analysis()
    analysis_id = opened.save_analysis(analysis)
    region_set = find_regions(analysis.probability_map, 0.5)
    region_set_id = opened.save_region_set(analysis_id, region_set)

    frozen = opened.freeze_region_set(region_set_id)
    assert frozen.frozen
    assert frozen.frozen_at is not None
    assert frozen.frozen_at.endswith("+00:00")
    assert opened.freeze_region_set(region_set_id) == frozen  # idempotent, keeps its time
    assert opened.region_set(region_set_id) == frozen

    # Review has started on the frozen set: an identical recomputation makes a new set.
    fresh = opened.save_region_set(analysis_id, region_set)
    assert fresh != region_set_id
    assert not opened.region_set(fresh).frozen
    assert [record.id for record in opened.region_sets(analysis_id)] == [region_set_id, fresh]

    # The database itself keeps a frozen set's regions as they are.
    region_ids = [item.id for item in opened.regions(region_set_id)]
    with raw_connection(database(data_dir)) as connection:
        with pytest.raises(sqlite3.IntegrityError, match="immutable"):
            connection.execute("UPDATE regions SET max_prob = 0 WHERE id = ?", (region_ids[0],))
        with pytest.raises(sqlite3.IntegrityError, match="frozen"):
            connection.execute("DELETE FROM regions WHERE id = ?", (region_ids[0],))
        with pytest.raises(sqlite3.IntegrityError, match="frozen"):
            connection.execute(
                "UPDATE region_sets SET frozen_at = NULL WHERE id = ?", (region_set_id,)
            )
    assert [item.id for item in opened.regions(region_set_id)] == region_ids


def test_region_set_errors(opened: Store) -> None:
    analysis = make_analysis()
    region_set = find_regions(analysis.probability_map, 0.5)
    with pytest.raises(StoreError, match="No analysis 7"):
        opened.save_region_set(7, region_set)
    with pytest.raises(StoreError, match="No analysis 7"):
        opened.region_sets(7)
    with pytest.raises(StoreError, match="No region set 9"):
        opened.regions(9)
    with pytest.raises(StoreError, match="No region set 9"):
        opened.freeze_region_set(9)
    with pytest.raises(StoreError, match="No region set 9"):
        opened.region_set(9)


# -- several processes and threads ---------------------------------------------------------

_READ_LATEST = """
import json
import numpy as np
from wsiviewer.core.store.database import Store
with Store.open() as store:
    record = store.latest_analysis("quickhash-slide-a")
    probability_map = store.load_probability_map(record)
    print(json.dumps({
        "id": record.id,
        "key": record.key,
        "nan": int(np.isnan(probability_map.probabilities).sum()),
        "sum": float(np.nansum(probability_map.probabilities)),
        "tissue": int(probability_map.tissue.sum()),
    }))
"""


def test_second_process_reads_what_the_first_wrote(opened: Store, data_dir: Path) -> None:
    analysis = make_analysis()
    analysis_id = opened.save_analysis(analysis)
    # The first Store stays open while the second process reads.
    result = run_python(_READ_LATEST, data_dir)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    probabilities = analysis.probability_map.probabilities
    assert seen == {
        "id": analysis_id,
        "key": analysis.key,
        "nan": int(np.isnan(probabilities).sum()),
        "sum": pytest.approx(float(np.nansum(probabilities))),
        "tissue": 19,
    }


_WRITE_ONE = """
from test_store import make_analysis
from wsiviewer.core.store.database import Store
with Store.open() as store:
    print(store.save_analysis(make_analysis("quickhash-slide-b", seed=3)))
"""


def test_second_process_writes_while_the_first_is_open(opened: Store) -> None:
    first = opened.save_analysis(make_analysis())
    result = run_python(_WRITE_ONE, opened.path.parent)
    assert result.returncode == 0, result.stderr
    written = int(result.stdout)
    assert written != first
    record = opened.latest_analysis("quickhash-slide-b")
    assert record is not None
    assert record.id == written
    expected = make_analysis("quickhash-slide-b", seed=3).probability_map.probabilities
    np.testing.assert_array_equal(opened.load_probability_map(record).probabilities, expected)
    latest_a = opened.latest_analysis("quickhash-slide-a")
    assert latest_a is not None
    assert latest_a.id == first


_WRITE_WHEN_UNLOCKED = """
import sys
from test_store import make_analysis
from wsiviewer.core.store.database import Store

def announce(statement):
    if statement == "BEGIN IMMEDIATE":
        print("waiting for the write lock", flush=True)

with Store.open() as store:
    analysis = make_analysis("quickhash-slide-b")
    store._open_connection().set_trace_callback(announce)
    print(store.save_analysis(analysis), flush=True)
"""


def test_writer_waits_for_another_process_holding_the_write_lock(
    opened: Store, data_dir: Path
) -> None:
    with raw_connection(opened.path) as blocker:
        blocker.execute("BEGIN IMMEDIATE")
        with subprocess.Popen(
            [sys.executable, "-W", "error", "-c", _WRITE_WHEN_UNLOCKED],
            env=python_env(data_dir),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ) as writer:
            try:
                assert writer.stdout is not None
                announced = writer.stdout.readline()
                assert announced == "waiting for the write lock\n", writer.communicate()[1]
                # It cannot finish while the lock is held: unless it gave up, it still waits.
                with pytest.raises(subprocess.TimeoutExpired):
                    writer.wait(timeout=1.0)
                blocker.execute("COMMIT")
                stdout, stderr = writer.communicate(timeout=60)
            finally:
                if writer.poll() is None:
                    writer.kill()
    assert writer.returncode == 0, stderr
    record = opened.latest_analysis("quickhash-slide-b")
    assert record is not None
    assert record.id == int(stdout)


def test_writer_without_busy_timeout_fails_cleanly_on_a_held_lock(data_dir: Path) -> None:
    """The control for the test above: without the busy timeout the same write fails."""
    Store.open().close()
    with (
        raw_connection(database(data_dir)) as blocker,
        Store(database(data_dir), busy_timeout_s=0) as impatient,
    ):
        blocker.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreError, match="locked"):
            impatient.save_analysis(make_analysis())
        blocker.execute("ROLLBACK")
    assert list((data_dir / "maps").iterdir()) == []


def test_concurrent_writers_all_succeed(data_dir: Path) -> None:
    """Threads, each with its own Store (its own connection), saving at the same moment."""
    Store.open().close()
    writers, saves_each = 6, 5
    start = threading.Barrier(writers)

    def write(index: int) -> list[int]:
        saved: list[int] = []
        with Store.open() as own_store:
            start.wait(timeout=60)
            for save in range(saves_each):
                analysis = make_analysis(f"quickhash-slide-{index}", seed=save)
                analysis_id = own_store.save_analysis(analysis)
                own_store.save_region_set(analysis_id, find_regions(analysis.probability_map, 0.5))
                saved.append(analysis_id)
        return saved

    with ThreadPoolExecutor(max_workers=writers) as executor:
        futures = [executor.submit(write, index) for index in range(writers)]
        saved = [analysis_id for future in futures for analysis_id in future.result()]
    assert len(set(saved)) == writers * saves_each
    assert count_rows(data_dir, "analyses") == writers * saves_each
    assert count_rows(data_dir, "slides") == writers
    assert count_rows(data_dir, "region_sets") == writers * saves_each
    assert len(list((data_dir / "maps").iterdir())) == writers * saves_each


def test_one_store_shared_by_threads(opened: Store) -> None:
    threads = 4
    start = threading.Barrier(threads)

    def write() -> None:
        start.wait(timeout=60)
        for _ in range(3):
            opened.save_analysis(make_analysis())

    with ThreadPoolExecutor(max_workers=threads) as executor:
        for future in [executor.submit(write) for _ in range(threads)]:
            future.result()
    assert len(opened.find_analyses(make_analysis().key)) == 3 * threads
