"""What the viewer's slide probe costs: a slide opened in a child process before the viewer
opens it (``wsiviewer/gui/slide_probe.py``).

Measures, in one run: the child's start (its imports, paid once per viewer, beside the window
as it appears); one probe with the child running, per slide; and the viewer's open → first
frame (offscreen Qt, ``benchmarks/viewer.py``'s measure) for a slide never probed, for one
already probed (its verdict remembered), and with the probe switched off (the viewer before
the probe), each the median of ``--repeats`` opens of fresh copies of the slide.

    python benchmarks/slide_probe.py [SLIDE] [--repeats 7]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
WSI = REPO.parent / "shared" / "data" / "wsi"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("slide", type=Path, nargs="?")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    os.environ["WSIVIEWER_DATA_DIR"] = tempfile.mkdtemp(prefix="wsiviewer-probe-bench-")
    work = Path(tempfile.mkdtemp(prefix="wsiviewer-probe-slides-"))

    import viewer  # benchmarks/viewer.py

    from wsiviewer.core.slides.probe import ProbeVerdict, SlideProber
    from wsiviewer.gui import main_window, slide_probe

    slide = args.slide or viewer.generate_slide(work)
    slides = {"viewer benchmark slide": slide}
    for name in ("cmu-1-small-region.svs", "tcga-cr-7395-01a-01-ts1.svs"):
        if (WSI / name).is_file():
            slides[name] = WSI / name

    rows: list[tuple[str, str]] = []
    prober = SlideProber()
    started = time.perf_counter()
    prober.start()
    rows.append(
        (
            "probe child start (imports; once per viewer)",
            f"{(time.perf_counter() - started) * 1000:.0f} ms",
        )
    )
    for name, path in slides.items():
        times = []
        for repeat in range(args.repeats):
            copy = work / f"probe-{repeat}{path.suffix}"
            shutil.copyfile(path, copy)
            verdict = prober.probe(copy)
            assert verdict.ok, verdict.message
            times.append(verdict.seconds)
        rows.append(
            (f"one probe, child running: {name}", f"{statistics.median(times) * 1000:.0f} ms")
        )
    prober.close()

    bench = viewer.Bench(slide)
    slide_probe.start_prober()

    def first_frame(path: Path) -> float:
        bench.slide_path = path
        first, _ = bench.open_to_first_frame()
        bench.window.close_slide()
        return first

    def fresh(repeat: int, tag: str) -> Path:
        copy = work / f"{tag}-{repeat}{slide.suffix}"
        shutil.copyfile(slide, copy)
        return copy

    unprobed = [first_frame(fresh(r, "unprobed")) for r in range(args.repeats)]
    probed_path = fresh(0, "probed")
    first_frame(probed_path)
    probed = [first_frame(probed_path) for _ in range(args.repeats)]
    real_probe = main_window.probe
    main_window.probe = lambda path, cache, prober=None: ProbeVerdict(True)  # type: ignore[assignment]
    try:
        without = [first_frame(fresh(r, "without")) for r in range(args.repeats)]
    finally:
        main_window.probe = real_probe  # type: ignore[assignment]
    for label, times in (
        ("open → first frame, slide never probed", unprobed),
        ("open → first frame, slide probed before (verdict remembered)", probed),
        ("open → first frame, probe off (the viewer before it)", without),
    ):
        rows.append(
            (label, f"{statistics.median(times) * 1000:.0f} ms (min {min(times) * 1000:.0f})")
        )
    bench.window.close()
    slide_probe.close_prober()
    shutil.rmtree(work, ignore_errors=True)

    print(f"## Slide probe cost (median of {args.repeats})\n")
    print("| measure | result |")
    print("|---|---|")
    for label, value in rows:
        print(f"| {label} | {value} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
