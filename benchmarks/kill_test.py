"""Kill -9 at many moments of ``analyze`` and ``export``: what is left on disk and in the
database, right after the kill and after the next run.

Each trial starts the real command (``python -m wsiviewer ...``) on a generated slide with
the shipped default model (or ``--model``), sends SIGKILL after a delay spread over the
command's whole run (measured first, uninterrupted), or, for every other trial, after its
writes began (a staging folder appeared) and spread over how long they last, then inspects:

- the output folder: the visible outputs (none, some, all) and hidden staging folders;
- the data folder: analyses recorded (and whether each has its region set and map file), map
  files no row references, temporary files, journals of analyses being recorded;

then runs the same command to its end (the next run, which recovers) and inspects again. An
analysis must be either recorded with all its outputs or leave nothing, once the next run
has started.

    python benchmarks/kill_test.py [--analyze 60] [--export 30] [--model NAME] [--seed 0]
        [--tree TREE]   # another source tree, e.g. the code before a change
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

ANALYZE_OUTPUTS = 8  # regions, mask tif and png, patches, heatmap, overlay, raw map, run record


def make_slide(folder: Path) -> Path:
    from wsiviewer.core.exports.pyramid_tiff import write_pyramid_tiff
    from wsiviewer.core.slides.synthetic import he_like_slide

    return write_pyramid_tiff(
        folder / "slide.tif", he_like_slide((4800, 6400), seed=2), mpp=0.5, downsamples=(1, 4, 16)
    )


def command(kind: str, slide: Path, out: Path, model: str | None) -> list[str]:
    args = [sys.executable, "-m", "wsiviewer", kind, str(slide), "--out", str(out)]
    if kind == "analyze":
        args.append("--quiet")
    if model:
        args += ["--model", model]
    return args


def run(
    args: list[str],
    data: Path,
    kill_after: float | None = None,
    *,
    tree: Path = REPO,
    watch: Path | None = None,
) -> tuple[int, float]:
    """Run ``args``; SIGKILL it ``kill_after`` seconds after it starts or, with ``watch``,
    after a staging folder appears in that output folder (its writes have begun). The exit
    status and the seconds it ran."""
    env = {**os.environ, "WSIVIEWER_DATA_DIR": str(data), "PYTHONPATH": str(tree)}
    started = time.perf_counter()
    process = subprocess.Popen(
        args, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    if kill_after is not None:
        if watch is not None:
            while process.poll() is None and not _staging(watch):
                time.sleep(0.0005)
        try:
            process.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
    code = process.wait()
    return code, time.perf_counter() - started


def _staging(out: Path) -> bool:
    try:
        return any(p.name.startswith(".wsiviewer-export-") for p in out.iterdir())
    except OSError:
        return False


def writes_window(args: list[str], data: Path, out: Path, tree: Path) -> float:
    """Seconds from the first staging folder to the end of an uninterrupted run."""
    env = {**os.environ, "WSIVIEWER_DATA_DIR": str(data), "PYTHONPATH": str(tree)}
    process = subprocess.Popen(
        args, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    while process.poll() is None and not _staging(out):
        time.sleep(0.0005)
    seen = time.perf_counter()
    process.wait()
    return time.perf_counter() - seen


def inspect(data: Path, out: Path) -> dict[str, object]:
    """What is on disk and in the database."""
    visible = (
        sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) if out.is_dir() else []
    )
    staging = [p.name for p in out.iterdir() if p.name.startswith(".")] if out.is_dir() else []
    analyses: list[tuple[int, str, int]] = []
    database = data / "wsiviewer.sqlite"
    if database.exists():
        connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
        try:
            analyses = [
                (row[0], row[1], row[2])
                for row in connection.execute(
                    "SELECT a.id, a.map_path, (SELECT count(*) FROM region_sets r "
                    "WHERE r.analysis_id = a.id) FROM analyses a"
                )
            ]
        except sqlite3.Error:
            analyses = []
        finally:
            connection.close()
    referenced = {path for _, path, _ in analyses}
    maps = data / "maps"
    map_files = sorted(p.name for p in maps.iterdir()) if maps.is_dir() else []
    pending = data / "pending"
    return {
        "outputs": len(visible),
        "staging": len(staging),
        "analyses": len(analyses),
        "without_region_set": sum(1 for *_, sets in analyses if sets == 0),
        "missing_maps": sum(1 for _, path, _ in analyses if not (data / path).is_file()),
        "unreferenced_maps": sum(
            1 for name in map_files if name.endswith(".npz") and f"maps/{name}" not in referenced
        ),
        "temp_files": sum(1 for name in map_files if name.endswith(".tmp")),
        "journals": len(list(pending.glob("*.json"))) if pending.is_dir() else 0,
    }


def classify(state: dict[str, object], expected_outputs: int, analyses_before: int) -> str:
    recorded = int(state["analyses"]) > analyses_before  # type: ignore[call-overload]
    outputs = int(state["outputs"])  # type: ignore[call-overload]
    if recorded and outputs == expected_outputs:
        return "recorded, all outputs"
    if not recorded and outputs == 0:
        return "nothing"
    if recorded:
        return f"recorded, {outputs} of {expected_outputs} outputs"
    return f"{outputs} outputs, not recorded"


def leftovers(state: dict[str, object]) -> str:
    names = ("staging", "unreferenced_maps", "temp_files", "journals", "missing_maps")
    found = [f"{name} {state[name]}" for name in names if state[name]]
    return ", ".join(found) or "none"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--analyze", type=int, default=60, help="kills during analyze")
    parser.add_argument("--export", type=int, default=30, help="kills during export")
    parser.add_argument("--model", help="card name or path (default: the default model)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tree", type=Path, help="run another source tree (e.g. the code before)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    tree = args.tree or REPO
    with tempfile.TemporaryDirectory(prefix="wsiviewer-kill-") as work_name:
        work = Path(work_name)
        slide = make_slide(work)
        rows: list[dict[str, object]] = []
        for kind, trials in (("analyze", args.analyze), ("export", args.export)):
            if not trials:
                continue
            # The uninterrupted run: how long it takes, how long its writes last (and for
            # export, the analysis it needs).
            data, out = work / f"{kind}-data", work / f"{kind}-reference"
            if kind == "export":
                run(
                    command("analyze", slide, work / "export-analysis", args.model), data, tree=tree
                )
            code, duration = run(command(kind, slide, out, args.model), data, tree=tree)
            assert code == 0, f"{kind} failed uninterrupted"
            expected = inspect(data, out)["outputs"]
            window = writes_window(
                command(kind, slide, work / f"{kind}-window", args.model),
                data,
                work / f"{kind}-window",
                tree,
            )
            for trial in range(trials):
                trial_out = work / f"{kind}-out-{trial}"
                before = inspect(data, trial_out)["analyses"]
                # Half the kills anywhere in the run, half during its writes (after the
                # staging folder appears, spread over how long the writes last).
                during_writes = trial % 2 == 1
                fraction = (trial // 2 + rng.random()) / max(1, trials // 2)
                delay = (window if during_writes else duration) * fraction * 1.05
                code, _ = run(
                    command(kind, slide, trial_out, args.model),
                    data,
                    delay,
                    tree=tree,
                    watch=trial_out if during_writes else None,
                )
                after_kill = inspect(data, trial_out)
                # The next run: for analyze, another analysis into another folder (what
                # happens to the killed one's folder is the recovery's doing alone); for
                # export, the same export again.
                next_out = work / "next-run" if kind == "analyze" else trial_out
                run(command(kind, slide, next_out, args.model), data, tree=tree)
                after_next = inspect(data, trial_out)
                if kind == "analyze":
                    outcome = classify(after_kill, int(expected), int(before))  # type: ignore[call-overload]
                    recorded = int(after_kill["analyses"]) > int(before)  # type: ignore[call-overload]
                    final = classify(
                        {**after_next, "analyses": int(before) + recorded},
                        int(expected),  # type: ignore[call-overload]
                        int(before),  # type: ignore[call-overload]
                    )
                else:
                    outcome = f"{after_kill['outputs']} of {expected} outputs"
                    final = f"{after_next['outputs']} of {expected} outputs"
                rows.append(
                    {
                        "command": kind,
                        "when": "during the writes" if during_writes else "anywhere",
                        "delay_s": round(delay, 3),
                        "killed": code == -signal.SIGKILL,
                        "after_kill": outcome,
                        "leftovers_after_kill": leftovers(after_kill),
                        "after_next_run": final,
                        "export_complete": kind == "export" and after_next["outputs"] == expected,
                        "leftovers_after_next_run": leftovers(after_next),
                        "db_after_next_run": {
                            k: after_next[k]
                            for k in ("analyses", "without_region_set", "missing_maps")
                        },
                    }
                )
                print(json.dumps(rows[-1]), file=sys.stderr)
    print(f"## kill -9 during analyze ({args.analyze}) and export ({args.export})\n")
    print(
        "| command | killed | right after the kill | leftovers then | after the next run "
        "| leftovers then | trials |"
    )
    print("|---|---|---|---|---|---|---|")
    grouped = Counter(
        (
            row["command"],
            row["when"],
            row["after_kill"] if row["killed"] else "finished before the kill",
            row["leftovers_after_kill"],
            row["after_next_run"],
            row["leftovers_after_next_run"],
        )
        for row in rows
    )
    for key, count in sorted(grouped.items()):
        print("| " + " | ".join(map(str, key)) + f" | {count} |")
    complete = {"nothing", "recorded, all outputs"}
    bad = [
        r
        for r in rows
        if r["leftovers_after_next_run"] != "none"
        or (r["command"] == "analyze" and r["after_next_run"] not in complete)
        or (r["command"] == "export" and not r["export_complete"])
    ]
    print(
        f"\ntrials: {len(rows)}; outputs without a recorded analysis, or anything left after "
        f"the next run: {len(bad)}"
    )
    database_rows = Counter(json.dumps(r["db_after_next_run"]) for r in rows)
    print(
        "database after each next run (analyses, without region set, missing maps): "
        f"{dict(database_rows)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
