"""The fuzz harness at length: thousands of mutated slides, and the outcome table.

Each case is a slide (the shared fixtures, small real slides, and Aperio and generic pyramids
built here) changed by one seeded mutation (TIFF fields, tile offsets and counts, codestream
headers, truncation, description edits, random bytes), then opened and read as ``info``, the
viewer and an analysis do, in a worker process (``tests/fuzz/harness.py``). Outcomes: success,
clean error (one of ours), traceback, signal (a native crash), hang (no answer within the
timeout). ``tests/fuzz/test_fuzz.py`` runs the first few hundred of the same cases.

    python benchmarks/fuzz.py [--cases 2400] [--seed 0] [--timeout 60] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.fuzz.harness import (  # noqa: E402 -- after the path is set
    as_record,
    build_bases,
    cases,
    run_cases,
    table,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=2400)
    parser.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds before a hang")
    parser.add_argument("--json", type=Path, help="write every case's outcome here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="wsiviewer-fuzz-") as work:
        folder = Path(work)
        bases = build_bases(folder / "bases")
        started = time.perf_counter()

        def progress(number: int, result: object) -> None:
            if (number + 1) % 200 == 0:
                print(
                    f"  {number + 1:,} cases, {time.perf_counter() - started:.0f} s",
                    file=sys.stderr,
                )

        results = run_cases(
            cases(bases, args.cases, seed=args.seed),
            folder,
            timeout_s=args.timeout,
            progress=progress,
        )
        wall = time.perf_counter() - started

    print(f"## Fuzzed slides: {len(results):,} cases, seeds from {args.seed}, {wall:.0f} s\n")
    print(table(results))
    print("\n### By mutation\n")
    print(table(results, by=lambda r: r.case.kind))
    print("\n### By base slide\n")
    print(table(results, by=lambda r: r.case.base.name))
    seconds = sorted(r.seconds for r in results)
    print(
        f"\nper case: median {seconds[len(seconds) // 2] * 1000:.0f} ms, "
        f"slowest {seconds[-1]:.1f} s (timeout {args.timeout:g} s)"
    )
    unescaped = [r for r in results if r.unescaped]
    print(f"clean errors whose message carries control characters: {len(unescaped)}")
    errors = Counter(r.detail.split(":", 1)[0] for r in results if r.outcome == "clean error")
    print("clean errors by type: " + ", ".join(f"{k} {v}" for k, v in errors.most_common()))
    bad = [r for r in results if r.outcome in ("traceback", "signal", "hang")]
    for result in bad:
        print(f"- {result.case.label}: {result.outcome}: {result.detail}")
    if args.json is not None:
        args.json.write_text(json.dumps([as_record(r) for r in results], indent=1))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
