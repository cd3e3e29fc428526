"""Batch overhead: ``wsiviewer analyze`` over N slides one after the other, against
``wsiviewer batch`` on a LocalCluster of 1 and of 2 worker processes, in one run.

Builds N slides at run time (synthetic H&E-like tissue enlarged 8× into 20x, 0.5 µm/px,
JPEG Aperio pyramids with levels 1, 4, 16, 64; about 1,000 patches each), then runs each
front door in its own process with a fresh results database (the ONNX model exported once
beforehand and copied in, so no run pays for the export) and measures:

- wall time of the work (imports excluded; cluster start and stop included for batch), and
  slides per minute;
- CPU use: CPU seconds of the whole process tree (workers included) per wall second;
- peak RSS per process: the analysing process for ``analyze``, each worker for ``batch``
  (sampled every 0.1 s), and the client's;
- scheduling overhead per slide: (batch wall − sequential wall) / N, and its parts: cluster
  start, the client's work per slide (regions, outputs, Store), and the rest;

then a paper estimate of a day's throughput on a cluster from the measured per-slide cost.
On a 2-core machine the honest goal is overhead, not speed-up. Prints tables; asserts
nothing. Nothing it builds is kept unless --workdir names a folder to reuse.

    python benchmarks/batch.py [--slides 6] [--model NAME|CARD.json] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
#: Slide level-0 size and µm/px: 3000 × 4000 synthetic px enlarged 8×.
SMALL_SHAPE = (3000, 4000)
FACTOR = 8
MPP = 0.5


def build_slides(folder: Path, count: int) -> list[Path]:
    from wsiviewer.core.exports.pyramid_tiff import UpsampledSource, write_pyramid_tiff
    from wsiviewer.core.slides.synthetic import he_like_slide

    folder.mkdir(parents=True, exist_ok=True)
    slides = []
    for index in range(count):
        path = folder / f"slide-{index:02d}.svs"
        if not path.is_file():
            write_pyramid_tiff(
                path,
                UpsampledSource(he_like_slide(SMALL_SHAPE, seed=100 + index), FACTOR),
                mpp=MPP,
                downsamples=(1, 4, 16, 64),
                style="aperio",
                compression="jpeg",
                quality=90,
            )
        slides.append(path)
    return slides


def warm_data_dir(folder: Path, card: Path) -> Path:
    """A data folder whose ONNX cache holds the exported model (copied into each run's)."""
    os.environ["WSIVIEWER_DATA_DIR"] = str(folder)
    from wsiviewer.core.model.cards import ModelCard
    from wsiviewer.core.model.predictor import Predictor

    Predictor(ModelCard.from_file(card), device="cpu")
    return folder


# --------------------------------------------------------------------------- child side


def child(mode: str, slides: list[Path], card: Path, out: Path) -> None:
    """Runs in its own process; prints one JSON line of what it measured."""
    import wsiviewer.core.workflow  # noqa: F401  (imports excluded from the timing)
    from wsiviewer.core.model.engines import cpu_threads

    if mode == "sequential":
        from wsiviewer.cli import main

        start = time.perf_counter()
        code = main(
            ["analyze", *map(str, slides), "--out", str(out), "--model", str(card), "--quiet"]
        )
        wall = time.perf_counter() - start
        runs = [json.loads((folder / "run.json").read_text()) for folder in sorted(out.iterdir())]
        result = {
            "code": code,
            "wall_s": wall,
            "threads": cpu_threads(),
            "slide_s": [run["timings_s"]["total"] for run in runs],
        }
    else:
        from wsiviewer.core.batch.runner import BatchObserver, BatchRun, BatchSettings
        from wsiviewer.core.model.cards import ModelCard
        from wsiviewer.core.store.database import Store

        workers = int(mode.removeprefix("batch-"))
        marks: dict[str, float] = {}

        class Marks(BatchObserver):
            def cluster_started(self, info: object) -> None:
                marks["cluster"] = time.perf_counter()
                marks["inference_threads"] = float(info.inference_threads or 0)  # type: ignore[attr-defined]

        settings = BatchSettings(
            card=ModelCard.from_file(card), out_dir=out, workers=workers, device="cpu"
        )
        start = time.perf_counter()
        with Store.open() as store:
            report = BatchRun(slides, settings, store, Marks()).run()
        wall = time.perf_counter() - start
        rows = report.rows
        result = {
            "code": 0 if report.ok else 1,
            "wall_s": wall,
            "cluster_start_s": marks["cluster"] - start,
            "threads": int(marks["inference_threads"]),
            "slide_s": [row.seconds for row in rows],
            "worker_s": [row.worker_seconds for row in rows],
            "patches": sum(row.patches or 0 for row in rows),
            "statuses": [row.status for row in rows],
        }
    print("RESULT " + json.dumps(result), flush=True)


# --------------------------------------------------------------------------- parent side


def measure(mode: str, slides: list[Path], card: Path, work: Path, warm: Path) -> dict[str, object]:
    """Run one mode in a child process; sample its tree's memory; return its figures."""
    data_dir = work / f"data-{mode}"
    shutil.rmtree(data_dir, ignore_errors=True)
    shutil.copytree(warm / "cache", data_dir / "cache")
    out = work / f"out-{mode}"
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, __file__, "--child", mode, "--card", str(card), "--out", str(out)]
    command += [str(path) for path in slides]
    env = {**os.environ, "WSIVIEWER_DATA_DIR": str(data_dir)}
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    peaks: dict[int, tuple[str, int]] = {}
    stop = threading.Event()

    def sample() -> None:
        try:
            root = psutil.Process(process.pid)
        except psutil.NoSuchProcess:
            return
        while not stop.is_set():
            try:
                tree = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            for proc in tree:
                try:
                    rss = proc.memory_info().rss
                    role = "main" if proc.pid == process.pid else _role(proc)
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                old = peaks.get(proc.pid, (role, 0))
                peaks[proc.pid] = (role, max(old[1], rss))
            stop.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    stop.set()
    sampler.join()
    assert process.stdout is not None
    lines = [line for line in process.stdout.read().splitlines() if line.startswith("RESULT ")]
    if not lines:
        raise RuntimeError(f"{mode} printed no result (exit {process.returncode})")
    result: dict[str, object] = json.loads(lines[-1].removeprefix("RESULT "))
    result["cpu_s"] = usage.ru_utime + usage.ru_stime
    workers = [rss for role, rss in peaks.values() if role == "worker"]
    result["peak_worker_mib"] = max(workers) / 2**20 if workers else None
    result["peak_main_mib"] = (
        max((rss for r, rss in peaks.values() if r == "main"), default=0) / 2**20
    )
    return result


def _role(proc: psutil.Process) -> str:
    command = " ".join(proc.cmdline())
    return "worker" if "spawn_main" in command else "other"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slides", type=int, default=6)
    parser.add_argument("--model", default="cancernet")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--card", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("paths", nargs="*", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.paths, args.card, args.out)
        return

    from wsiviewer.core.model.cards import resolve_model

    card = resolve_model(args.model).path
    with tempfile.TemporaryDirectory(prefix="wsiviewer-batch-bench-") as temp:
        work = args.workdir or Path(temp)
        started = time.perf_counter()
        slides = build_slides(work / "slides", args.slides)
        print(f"{len(slides)} slides ready in {time.perf_counter() - started:.0f} s", flush=True)
        warm = warm_data_dir(work / "warm", card)
        results = {}
        for mode in ("sequential", "batch-1", "batch-2"):
            results[mode] = measure(mode, slides, card, work, warm)
            print(f"{mode}: {results[mode]['wall_s']:.1f} s", flush=True)
    report(results, len(slides), card)


def report(results: dict[str, dict[str, object]], count: int, card: Path) -> None:
    seq_wall = float(results["sequential"]["wall_s"])  # type: ignore[arg-type]
    cores = psutil.cpu_count(logical=True)
    print(
        f"\n{count} slides (synthetic, 24,000 × 32,000 px at {MPP} µm/px, "
        f"{results['batch-1']['patches']:,} patches in all), model {card.stem}, "
        f"{cores} CPU cores\n"
    )
    print(
        "| run | inference threads per task | wall s | slides/min | CPU use (cores) | "
        "peak RSS per worker | client peak RSS | overhead per slide vs sequential |"
    )
    print("|---|---|---|---|---|---|---|---|")
    names = {
        "sequential": "`analyze`, one process",
        "batch-1": "`batch --workers 1` (1 thread per worker)",
        "batch-2": "`batch --workers 2` (1 thread per worker)",
    }
    for mode, result in results.items():
        wall = float(result["wall_s"])  # type: ignore[arg-type]
        cpu = float(result["cpu_s"])  # type: ignore[arg-type]
        worker = result["peak_worker_mib"]
        overhead = "–" if mode == "sequential" else f"{(wall - seq_wall) / count:+.2f} s"
        worker_text = "–" if worker is None else f"{worker:.0f} MiB"
        print(
            f"| {names[mode]} | {result['threads']} | {wall:.1f} | {60 * count / wall:.1f} | "
            f"{cpu / wall:.2f} | {worker_text} | {float(result['peak_main_mib']):.0f} MiB | "  # type: ignore[arg-type]
            f"{overhead} |"
        )
    one = results["batch-1"]
    wall_1 = float(one["wall_s"])  # type: ignore[arg-type]
    slide_s = [float(s) for s in one["slide_s"]]  # type: ignore[union-attr]
    worker_s = [float(s) for s in one["worker_s"]]  # type: ignore[union-attr]
    client_s = [s - w for s, w in zip(slide_s, worker_s, strict=True)]
    start_s = float(one["cluster_start_s"])  # type: ignore[arg-type]
    print(
        f"\nbatch, 1 worker: {wall_1 / seq_wall - 1:+.1%} against sequential. Cluster start "
        f"(workers up, model module imported) {start_s:.1f} s; per slide: worker task "
        f"{sum(worker_s) / count:.2f} s, client (regions, outputs, Store) "
        f"{sum(client_s) / count:.2f} s; sequential per slide {seq_wall / count:.2f} s."
    )
    cpu_per_slide = float(one["cpu_s"]) / count  # type: ignore[arg-type]
    client_per_slide = sum(client_s) / count
    day = 86_400
    print(
        f"\nPaper estimate from this run: {cpu_per_slide:.1f} CPU-s per slide (batch, 1 worker, "
        f"startup included) -> {day / cpu_per_slide:,.0f} slides per core-day. A cluster of "
        f"10 nodes × 16 cores (160 single-thread workers): {160 * day / cpu_per_slide:,.0f} "
        f"slides/day by CPU; the one client writes regions, outputs and the Store for each "
        f"slide in {client_per_slide:.2f} s, so it caps a batch at {day / client_per_slide:,.0f} "
        f"slides/day: about {min(160 * day / cpu_per_slide, day / client_per_slide):,.0f} "
        f"slides/day for that cluster (slides like these; I/O and the shared file system not "
        f"modelled)."
    )


if __name__ == "__main__":
    main()
