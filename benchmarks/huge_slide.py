"""Huge slides: peak memory and wall time of ``analyze``, and a cancel, on slides built here.

Builds (the last two from complete IDC patients rebuilt at 4 µm/px, packed side by side on
glass):

- ``100k single 0.25``: a single-level 100,000 x 100,000 px tiled-JPEG generic TIFF at
  0.25 µm/px, no pyramid: 10 gigapixels at level 0 only, of repeated real tiles (CMU-1's
  small region, a real 20x H&E scan, in 2560 x 3072 px cells: tissue on about 70% of it);
- ``20k single 4``: a single-level 20,000 x 20,000 px tiled-JPEG TIFF at 4 µm/px (the
  patients at their own resolution): the model's level is level 0, 400 Mpx;
- ``400k pyramid 0.25``: a 400,000 x 400,000 px pyramid (levels 1, 4, 16, 64, 256) at
  0.25 µm/px, mostly glass.

Each analysis runs in its own process (``run_analysis`` into a fresh data folder and output
folder, the CLI's path), which reports its peak RSS (``ru_maxrss``), wall time, the time of
each stage's first progress step and its outcome. ``--baseline TREE`` runs the same analyses
with another source tree first (e.g. the code before a change, from ``git archive``), in the
same run. ``--cancel-after S`` also starts ``wsiviewer analyze`` on the 100k slide, sends it
SIGINT after S seconds and reports how long it took to stop and what it left.
``--limit-gib G`` runs the analyses under an address-space limit (RLIMIT_AS).

Slides are built in ``--workdir`` (default: a temporary folder, deleted at the end; ~3 GB) and
kept there with ``--keep`` for later runs.

    python benchmarks/huge_slide.py [--slides 100k,20k,400k] [--model NAME] [--workdir DIR]
        [--keep] [--baseline TREE] [--cancel-after S] [--limit-gib G] [--timeout S]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IDC_DIR = REPO.parent / "shared" / "data" / "idc"
PATIENTS_CSV = REPO.parent / "shared" / "data" / "idc_patients.csv"

#: name: (level-0 side px, µm/px, downsamples, canvas side at 4 µm/px, patients placed)
SLIDES = {
    "100k": ("100k single 0.25", 100_000, 0.25, (1,), 6_250, 9),
    "20k": ("20k single 4", 20_000, 4.0, (1,), 20_000, 48),
    "400k": ("400k pyramid 0.25", 400_000, 0.25, (1, 4, 16, 64, 256), 25_000, 12),
}


def complete_patients() -> list[str]:
    lines = PATIENTS_CSV.read_text().splitlines()[1:]
    return [line.split(",")[0] for line in lines if line.rstrip().endswith(",1")]


def pack_canvas(side: int, count: int) -> tuple[object, int]:
    """A white ``side`` x ``side`` canvas at 4 µm/px with ``count`` rebuilt patients packed
    in shelves (cycling through the complete patients); the canvas and patients placed."""
    import numpy as np

    from wsiviewer.training.idc import rebuild_patient

    canvas = np.full((side, side, 3), 255, np.uint8)
    patients = complete_patients()
    cache: dict[str, np.ndarray] = {}
    placed = y = 0
    margin = 100
    while placed < count:
        # One shelf: every patient that still fits beside the others, in order.
        x = shelf = 0
        for name in patients:
            if name not in cache:
                cache[name] = rebuild_patient(IDC_DIR / name).pixels
            pixels = cache[name]
            height, width = pixels.shape[:2]
            if x + width > side or y + height > side:
                continue
            canvas[y : y + height, x : x + width] = pixels
            x += width + margin
            shelf = max(shelf, height)
            placed += 1
            if placed == count:
                break
        if shelf == 0:
            break
        y += shelf + margin
    return canvas, placed


class RepeatedSource:
    """Level 0 of a slide tiled with one real scanned region and glass: ``period`` px cells,
    each the region at its top-left and white elsewhere (a single level only)."""

    def __init__(self, region: object, side: int, period: tuple[int, int]) -> None:
        import numpy as np

        from wsiviewer.core.exports.pyramid_tiff import PyramidSource

        cell = np.full((period[1], period[0], 3), 255, np.uint8)
        height, width = min(region.shape[0], period[1]), min(region.shape[1], period[0])  # type: ignore[attr-defined]
        cell[:height, :width] = region[:height, :width]  # type: ignore[index]

        class Source(PyramidSource):
            shape = (side, side, 3)
            dtype = np.dtype(np.uint8)

            def read_level(self, downsample: int, lv_box: tuple[int, int, int, int]) -> object:
                x, y, w, h = lv_box
                rows = np.arange(y, y + h) % cell.shape[0]
                cols = np.arange(x, x + w) % cell.shape[1]
                return cell[rows[:, None], cols[None, :]]

        self.source = Source()


def real_region() -> object:
    """The real H&E of CMU-1's small region (0.5 µm/px, JPEG) as an RGB array."""
    from wsiviewer.core.slides import open_slide

    with open_slide(REPO.parent / "shared" / "data" / "wsi" / "cmu-1-small-region.svs") as slide:
        return slide.read_region((0, 0), 0, slide.dimensions)


def build(key: str, folder: Path) -> tuple[Path, int]:
    """The slide ``key`` in ``folder`` (built unless there); its path and patients placed."""
    from wsiviewer.core.exports.pyramid_tiff import UpsampledSource, write_pyramid_tiff

    label, side, mpp, downsamples, canvas_side, count = SLIDES[key]
    path = folder / f"{key}.tif"
    marker = folder / f"{key}.json"
    if path.is_file() and marker.is_file():
        return path, int(json.loads(marker.read_text())["patients"])
    started = time.perf_counter()
    if key == "100k":
        # Repeated real tiles: a real scan's texture, what decoding costs on a real slide.
        # Cells of whole tiles, so every cell is the same tiles.
        source: object = RepeatedSource(real_region(), side, (2560, 3072)).source
        placed = 0
    else:
        canvas, placed = pack_canvas(canvas_side, count)
        factor = side // canvas_side
        source = UpsampledSource(canvas, factor) if factor > 1 else canvas
    write_pyramid_tiff(
        path,
        source,  # type: ignore[arg-type]
        mpp=mpp,
        downsamples=downsamples,
        tile=512,
        compression="jpeg",
        quality=80,
        style="generic",
    )
    marker.write_text(json.dumps({"patients": placed}))
    print(
        f"built {label}: {path.stat().st_size / 2**30:.2f} GiB in "
        f"{time.perf_counter() - started:.0f} s",
        file=sys.stderr,
    )
    return path, placed


def child(slide: Path, out: Path, model: str | None) -> int:
    """Analyse ``slide`` as ``wsiviewer analyze`` does; print one JSON line of results."""
    import traceback

    started = time.perf_counter()
    stages: dict[str, float] = {}
    record: dict[str, object] = {}
    try:
        from wsiviewer.core.model.cards import resolve_model
        from wsiviewer.core.model.predictor import Predictor
        from wsiviewer.core.progress import run_to_end
        from wsiviewer.core.slides import open_slide
        from wsiviewer.core.store.database import Store
        from wsiviewer.core.workflow import AnalysisParameters, run_analysis

        ready = time.perf_counter()
        with Store.open() as store, open_slide(slide) as opened:
            predictor = Predictor(resolve_model(model), device="cpu")
            mpp = opened.resolve_mpp()

            def progress(step: object) -> None:
                stages.setdefault(str(getattr(step, "stage", "?")), time.perf_counter() - ready)

            result = run_to_end(
                run_analysis(
                    opened, predictor, mpp, AnalysisParameters(), store=store, out_dir=out
                ),
                progress,
            )
        record |= {
            "outcome": "ok",
            "scored": result.analysis.probability_map.scored_count,
            "cells": result.analysis.probability_map.grid.cell_count,
            "timings": {k: round(v, 1) for k, v in result.analysis.timings_s.items()},
        }
    except Exception as exc:  # noqa: BLE001 -- the outcome is what this reports
        from wsiviewer.errors import WsiViewerError

        kind = "clean error" if isinstance(exc, WsiViewerError) else "traceback"
        record |= {"outcome": kind, "error": f"{type(exc).__name__}: {exc}"[:300]}
        if kind == "traceback":
            record["where"] = traceback.format_exc().splitlines()[-3:]
    record |= {
        "wall_s": round(time.perf_counter() - started, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "stages_s": {k: round(v, 1) for k, v in stages.items()},
    }
    print(json.dumps(record), flush=True)
    return 0


def run_child(
    slide: Path, tree: Path, work: Path, model: str | None, limit_gib: float | None, timeout: float
) -> dict[str, object]:
    data = Path(tempfile.mkdtemp(prefix="data-", dir=work))
    out = Path(tempfile.mkdtemp(prefix="out-", dir=work)) / "out"
    env = {**os.environ, "WSIVIEWER_DATA_DIR": str(data), "PYTHONPATH": str(tree)}

    def limit() -> None:
        if limit_gib is not None:
            size = int(limit_gib * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (size, size))

    command = [sys.executable, str(Path(__file__).resolve()), "--child", str(slide), str(out)]
    if model:
        command += ["--model", model]
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            env=env,
            cwd=tree,
            timeout=timeout,
            preexec_fn=limit,  # a resource limit, set in the child only
            check=False,
        )
    except subprocess.TimeoutExpired:
        result: dict[str, object] = {"outcome": f"not finished in {timeout:g} s"}
    else:
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if lines:
            result = json.loads(lines[-1])
        else:
            result = {"outcome": f"died (status {done.returncode})", "stderr": done.stderr[-500:]}
    outputs = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    result["outputs"] = len(outputs)
    shutil.rmtree(data, ignore_errors=True)
    shutil.rmtree(out.parent, ignore_errors=True)
    return result


def cancel_test(slide: Path, work: Path, model: str | None, after_s: float) -> dict[str, object]:
    """``wsiviewer analyze`` on ``slide``, interrupted (SIGINT) after ``after_s`` seconds."""
    data = Path(tempfile.mkdtemp(prefix="data-", dir=work))
    out = work / "cancel-out"
    env = {**os.environ, "WSIVIEWER_DATA_DIR": str(data), "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "wsiviewer", "analyze", str(slide), "--out", str(out)]
    if model:
        command += ["--model", model]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO
    )
    time.sleep(after_s)
    sent = time.perf_counter()
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=300)
    stopped = time.perf_counter() - sent
    left = sorted(str(p.relative_to(work)) for p in out.rglob("*")) if out.exists() else []
    from wsiviewer.core.store.database import Store

    with Store.open(data) as store, store._reading("count") as connection:
        analyses = int(connection.execute("SELECT count(*) FROM analyses").fetchone()[0])
    maps = list((data / "maps").glob("*")) if (data / "maps").exists() else []
    shutil.rmtree(data, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    last = stderr.strip().splitlines()[-1] if stderr.strip() else ""
    return {
        "exit": process.returncode,
        "stopped_s": round(stopped, 2),
        "left_in_out": left,
        "analyses": analyses,
        "map_files": len(maps),
        "last_line": last[-160:],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=2, type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--slides", default="100k,20k,400k")
    parser.add_argument("--model", help="card name or path (default: the default model)")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--keep", action="store_true", help="keep the slides built")
    parser.add_argument("--baseline", type=Path, help="another source tree, run first")
    parser.add_argument("--cancel-after", type=float, help="also interrupt an analyze after S s")
    parser.add_argument("--limit-gib", type=float, help="address-space limit of each analysis")
    parser.add_argument("--timeout", type=float, default=900.0)
    args = parser.parse_args()
    if args.child:
        return child(args.child[0], args.child[1], args.model)

    work = args.workdir or Path(tempfile.mkdtemp(prefix="wsiviewer-huge-"))
    work.mkdir(parents=True, exist_ok=True)
    keys = [key.strip() for key in args.slides.split(",")]
    rows: list[tuple[str, str, dict[str, object], str, int]] = []
    try:
        for key in keys:
            path, placed = build(key, work)
            size = f"{path.stat().st_size / 2**30:.2f} GiB"
            trees = [("baseline", args.baseline)] if args.baseline else []
            trees.append(("this tree", REPO))
            for name, tree in trees:
                result = run_child(path, tree, work, args.model, args.limit_gib, args.timeout)
                rows.append((SLIDES[key][0], name, result, size, placed))
                print(json.dumps({"slide": key, "code": name, **result}), file=sys.stderr)
        cancel = None
        if args.cancel_after is not None and "100k" in keys:
            cancel = cancel_test(work / "100k.tif", work, args.model, args.cancel_after)
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)

    limit = f", address space limited to {args.limit_gib:g} GiB" if args.limit_gib else ""
    print(f"## analyze on huge slides (CPU, {os.cpu_count()} cores{limit})\n")
    print(
        "| slide | on disk | patients | code | outcome | wall s | peak RSS "
        "| stages (first step, s) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for label, name, result, size, placed in rows:
        outcome = str(result.get("outcome"))
        if "error" in result:
            outcome += f": {result['error']}"
        peak = result.get("peak_rss_mib")
        stages = ", ".join(f"{k} {v}" for k, v in dict(result.get("stages_s") or {}).items())
        print(
            f"| {label} | {size} | {placed} | {name} | {outcome} | {result.get('wall_s', '–')} | "
            f"{f'{peak:,} MiB' if peak else '–'} | {stages} |"
        )
    for _, name, result, _, _ in rows:
        if result.get("timings"):
            print(f"\n{name} timings: {result['timings']}; outputs {result.get('outputs')}")
    if cancel is not None:
        print(f"\ncancel after {args.cancel_after:g} s: {json.dumps(cancel)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
