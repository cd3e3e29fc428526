"""``wsiviewer batch`` as a user runs it: against ``dask scheduler`` and ``dask worker``
started as separate processes, and on its own local cluster interrupted by Ctrl-C and resumed.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.cli.test_cli import EXPECTED_OUTPUTS, run_cli
from tests.conftest import REPO, he_like_slide
from wsiviewer.core.exports.pyramid_tiff import write_pyramid_tiff

#: Seconds allowed for a Dask process to start or a batch to finish (CI's 2 cores are slow).
START_TIMEOUT_S = 60


def make_slides(folder: Path, count: int, shape: tuple[int, int] = (1200, 1600)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [
        write_pyramid_tiff(
            folder / f"case-{i}.tif", he_like_slide(shape, seed=i), mpp=0.5, downsamples=(1, 4)
        )
        for i in range(count)
    ]


def read_manifest(out: Path) -> list[dict[str, str]]:
    with (out / "manifest.csv").open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def wait_for(condition, what: str, timeout_s: float = START_TIMEOUT_S) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} within {timeout_s} s")
        time.sleep(0.05)


@pytest.fixture
def dask_cluster(tmp_path: Path) -> Iterator[str]:
    """``dask scheduler`` and one ``dask worker`` process on localhost; yields the address."""
    scheduler_file = tmp_path / "scheduler.json"
    dask = [sys.executable, "-m", "dask"]
    processes = [
        subprocess.Popen(
            [
                *dask,
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--no-dashboard",
                "--scheduler-file",
                str(scheduler_file),
            ],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ]
    try:
        wait_for(scheduler_file.is_file, "the scheduler did not start")
        address = json.loads(scheduler_file.read_text())["address"]
        processes.append(
            subprocess.Popen(
                [
                    *dask,
                    "worker",
                    address,
                    "--nworkers",
                    "1",
                    "--nthreads",
                    "1",
                    "--no-dashboard",
                    "--host",
                    "127.0.0.1",
                ],
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        yield address
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()


def test_batch_against_a_dask_scheduler_and_worker(
    dask_cluster: str, tiny_model_card: Path, tmp_path: Path
) -> None:
    slides = make_slides(tmp_path / "slides", 2)
    listing = tmp_path / "todo.txt"
    listing.write_text(f"# today's slides\n{slides[0]}\n{slides[1]}\nmissing.svs\n")
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(
        "batch",
        listing,
        "--out",
        out,
        "--scheduler",
        dask_cluster,
        "--model",
        tiny_model_card,
        "--include-filename",
        "--quiet",
    )
    assert code == 1, stderr  # the missing slide failed: not every slide succeeded
    assert f"the scheduler {dask_cluster}: 1 worker(s)" in stderr
    assert "Traceback" not in stderr
    manifest = read_manifest(out)
    assert [(m["label"], m["status"]) for m in manifest] == [
        ("case-0", "done"),
        ("case-1", "done"),
        ("missing", "failed"),
    ]
    assert manifest[2]["error"].startswith("Slide not found")
    for label in ("case-0", "case-1"):
        assert {p.name for p in (out / label).iterdir()} == EXPECTED_OUTPUTS
    assert "2 done, 1 failed" in stdout
    # Again: both skipped, so the batch succeeds once the missing slide is gone from the list.
    listing.write_text(f"{slides[0]}\n{slides[1]}\n")
    code, stdout, stderr = run_cli(
        "batch",
        listing,
        "--out",
        out,
        "--scheduler",
        dask_cluster,
        "--model",
        tiny_model_card,
        "--include-filename",
        "--quiet",
    )
    assert code == 0, stderr
    assert "2 slides: 2 skipped" in stdout


def test_an_unreachable_scheduler_is_one_line(tiny_model_card: Path, tmp_path: Path) -> None:
    (slide,) = make_slides(tmp_path / "slides", 1)
    with socket_free_port() as port:
        code, _, stderr = run_cli_with(
            {"DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "2s"},
            "batch",
            slide,
            "--out",
            tmp_path / "out",
            "--scheduler",
            f"tcp://127.0.0.1:{port}",
            "--model",
            tiny_model_card,
            "--quiet",
        )
    assert code == 1
    assert f"Cannot reach the Dask scheduler at tcp://127.0.0.1:{port}" in stderr
    assert "Traceback" not in stderr


def run_cli_with(env: dict[str, str], *args: str | Path) -> tuple[int, str, str]:
    result = subprocess.run(
        [sys.executable, "-m", "wsiviewer", *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **env},
    )
    return result.returncode, result.stdout, result.stderr


class socket_free_port:
    """A localhost port that nothing listens on (bound, not listening, while in use)."""

    def __enter__(self) -> int:
        import socket

        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        return int(self._socket.getsockname()[1])

    def __exit__(self, *_: object) -> None:
        self._socket.close()


def analyses_recorded(data_dir: Path) -> int:
    database = data_dir / "wsiviewer.sqlite"
    if not database.is_file():
        return 0
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5) as connection:
            return int(connection.execute("SELECT COUNT(*) FROM analyses").fetchone()[0])
    except sqlite3.OperationalError:
        return 0  # not migrated yet


def test_ctrl_c_keeps_what_is_done_and_the_batch_resumes(
    tiny_model_card: Path, tmp_path: Path, isolated_data_dir: Path
) -> None:
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) after the first
    slide is recorded: exit 130, the done slides complete, nothing half-written; the same
    command again skips them and analyses the rest.

    The local worker is stopped (SIGSTOP) before Ctrl-C, so no slide can finish in between:
    the interruption lands mid-batch whatever the machine's speed.
    """
    slides = tmp_path / "slides"
    make_slides(slides, 4)
    out = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "wsiviewer",
        "batch",
        str(slides),
        "--out",
        str(out),
        "--model",
        str(tiny_model_card),
        "--workers",
        "1",
        "--quiet",
    ]
    process = subprocess.Popen(
        command,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    stopped: list[psutil.Process] = []
    try:
        wait_for(lambda: analyses_recorded(isolated_data_dir) >= 1, "no slide was recorded")
        for child in psutil.Process(process.pid).children(recursive=True):
            child.suspend()
            stopped.append(child)
        os.killpg(process.pid, signal.SIGINT)
    finally:
        for child in stopped:
            child.resume()
        stdout, stderr = process.communicate(timeout=START_TIMEOUT_S)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    first = read_manifest(out)
    done = [m["label"] for m in first if m["status"] == "done"]
    assert 1 <= len(done) < 4
    assert {m["status"] for m in first} <= {"done", "cancelled"}
    for label in done:
        assert {p.name for p in (out / label).iterdir()} == EXPECTED_OUTPUTS
    assert not list(out.rglob(".*")), "a staging folder was left behind"
    assert set(os.listdir(out)) == {"manifest.csv", *done}

    code, stdout, stderr = run_cli(*command[3:])
    assert code == 0, stderr
    second = read_manifest(out)
    assert sorted(m["label"] for m in second if m["status"] == "skipped") == sorted(done)
    assert sum(m["status"] == "done" for m in second) == 4 - len(done)
    assert f"4 slides: {4 - len(done)} done, {len(done)} skipped" in stdout
