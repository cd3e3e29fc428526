"""Why-was-this-flagged speed: a region's evidence and saliency; prints a table, asserts nothing.

    python benchmarks/evidence.py SLIDE [--repeats 3]

Analyses SLIDE with the installed default model in a throw-away data folder, then, for its
largest region, measures (median of ``--repeats``):

- the baseline: reading the region's 11 evidence cells with the analysis's ``PatchReader``
  (the pixels alone, one cell at a time);
- the evidence (:func:`~wsiviewer.core.review.evidence.region_evidence`): the same cells read
  at the model's input and at the slide's resolution, each patch scored alone; for the first
  region of a slide (the slide's colour standardisation fitted on its tissue sample) and for
  the next (the fitted table kept);
- saliency of those patches (captum's Grad-CAM and integrated gradients, 32 steps), computed,
  then from the cache;
- the review report (``export --what report``) with that region accepted, against the same
  report without evidence (no slide given).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _median_s(work: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        work()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("slide", type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    data_dir = Path(tempfile.mkdtemp(prefix="wsiviewer-bench-evidence-"))
    os.environ["WSIVIEWER_DATA_DIR"] = str(data_dir)

    from wsiviewer.core.analysis.evidence import _COLOUR_TABLES, pick_cells
    from wsiviewer.core.analysis.patches import PatchReader
    from wsiviewer.core.exports.review_outputs import export_review, load_review_export
    from wsiviewer.core.model.cards import resolve_model
    from wsiviewer.core.model.predictor import Predictor
    from wsiviewer.core.model.saliency import SaliencyExplainer
    from wsiviewer.core.progress import run_to_end
    from wsiviewer.core.review.evidence import (
        SaliencyCache,
        patch_saliency,
        region_cells,
        region_evidence,
    )
    from wsiviewer.core.review.log import review_state
    from wsiviewer.core.review.session import ReviewSession
    from wsiviewer.core.slides import open_slide
    from wsiviewer.core.store.database import Store
    from wsiviewer.core.workflow import run_analysis

    card = resolve_model(None)
    try:
        with open_slide(args.slide) as slide, Store.open() as store:
            result = run_to_end(
                run_analysis(slide, Predictor(card), slide.resolve_mpp(), store=store)
            )
            if not len(result.region_set):
                print("no region flagged on this slide: nothing to explain", file=sys.stderr)
                return 1
            record = store.analysis(result.analysis_id)
            probability_map = store.load_probability_map(record)
            item = max(review_state(store, result.region_set_id).items, key=lambda i: i.area_mm2)
            cells = pick_cells(probability_map, region_cells(probability_map, item.polygon))
            reader = PatchReader(slide, probability_map.grid)

            def read_cells() -> None:
                for (row, col), _ in cells:
                    reader.read_cells(row, col, 1, 1)

            def evidence() -> object:
                return run_to_end(
                    region_evidence(store, slide, record, item.polygon, item.label, card)
                )

            def evidence_cold() -> object:
                _COLOUR_TABLES.clear()  # the slide's colour standardisation fitted again
                return evidence()

            baseline = _median_s(read_cells, args.repeats)
            reading_cold = _median_s(evidence_cold, args.repeats)
            reading = _median_s(evidence, args.repeats)
            found = run_to_end(
                region_evidence(store, slide, record, item.polygon, item.label, card)
            )
            explainer = SaliencyExplainer(card)
            cache = SaliencyCache(store.root, record)

            def saliency_afresh() -> None:
                shutil.rmtree(cache.folder, ignore_errors=True)
                run_to_end(patch_saliency(found.patches, explainer, cache))

            afresh = _median_s(saliency_afresh, args.repeats)
            cached = _median_s(
                lambda: run_to_end(patch_saliency(found.patches, explainer, cache)), args.repeats
            )
            ReviewSession(store, result.region_set_id, "bench").accept(item.ref)
            export = load_review_export(store, result.region_set_id)
            out = data_dir / "out"

            def report(with_slide: bool) -> None:
                export_review(
                    out,
                    export,
                    ["report"],
                    slide=slide if with_slide else None,
                    card=card,
                    force=True,
                )

            shutil.rmtree(cache.folder, ignore_errors=True)
            report_afresh = _median_s(lambda: report(True), 1)
            report_cached = _median_s(lambda: report(True), args.repeats)
            report_bare = _median_s(lambda: report(False), args.repeats)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    n = len(found.patches)
    print(f"{args.slide.name}: region {item.label}, {item.area_mm2:.2f} mm², {n} evidence patches")
    print(f"{'step':52} {'seconds':>8} {'× baseline':>11}")
    rows = [
        (f"baseline: read the {n} cells (PatchReader)", baseline),
        ("evidence, first region of the slide (colour fitted)", reading_cold),
        ("evidence, next region (colour table kept)", reading),
        (f"saliency of {n} patches, computed", afresh),
        (f"saliency of {n} patches, from the cache", cached),
        ("report, no evidence (no slide)", report_bare),
        ("report with evidence, saliency computed", report_afresh),
        ("report with evidence, saliency cached", report_cached),
    ]
    for name, seconds in rows:
        print(f"{name:52} {seconds:8.3f} {seconds / baseline:11.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
