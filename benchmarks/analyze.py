"""Analysis speed: our pipeline against the naive one most tutorials teach, in one run.

Builds, at run time, a 40x slide from a complete IDC patient (default 8975, 2,212 patches):
the patient tiled back at 4 µm/px, enlarged 16× to 0.25 µm/px (≈58,000×43,000 px), written as
a JPEG-tiled Aperio pyramid with levels 1, 4, 16, 64, and a second one without a 4 µm/px
level (1, 4, 32). Each pipeline runs in its own process (so peak RSS is its own) and times
open → tissue → inference → regions → exports, interpreter start and imports excluded.

- ours: the ``wsiviewer analyze`` path (pyramid level at the model's scale, decoded from the
  file's own tiles and, when small, once for tissue, patches and overlay; block reads,
  reading beside inference, ONNX Runtime on the CPU / torch on CUDA).
- naive: the same tissue cells, one ``read_region`` of level 0 per patch (800×800 px),
  PIL resize to 50×50, eager torch in float32, batches of 64.
- dense: ours with ``--dense`` (patches every half patch, 4 times as many).
- read: the yardstick: every cell of the model's grid read once from the coarsest level at
  least as fine as the model (the 4 µm/px level when there is one), nothing else. The ratio of
  ours to it is what the analysis adds to reading the slide.

Nothing it builds is kept, unless --workdir names a folder to reuse between runs.

    python benchmarks/analyze.py [--patient 8975] [--model NAME|CARD.json] [--device cpu|cuda]
                                 [--workdir DIR] [--skip-naive]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IDC_DIR = REPO.parent / "shared" / "data" / "idc"
VARIANTS = {"with 4 µm/px level": (1, 4, 16, 64), "without (1, 4, 32)": (1, 4, 32)}


def build_slide(patient: str, downsamples: tuple[int, ...], path: Path) -> Path:
    from wsiviewer.core.exports.pyramid_tiff import UpsampledSource, write_pyramid_tiff
    from wsiviewer.training.idc import rebuild_patient

    if path.is_file():
        return path
    rebuilt = rebuild_patient(IDC_DIR / patient)
    return write_pyramid_tiff(
        path,
        UpsampledSource(rebuilt.pixels, 16),
        mpp=0.25,
        downsamples=downsamples,
        style="aperio",
        compression="jpeg",
        quality=90,
    )


def benchmark_card(workdir: Path, model: str | None) -> Path:
    """``model`` (a card name or path), else the default installed model, else a random
    CancerNet (weights do not change the speed)."""
    from wsiviewer.core.model.cards import resolve_model
    from wsiviewer.errors import ModelError

    if model is not None:
        return resolve_model(model).path
    try:
        return resolve_model(None).path
    except ModelError:
        import torch

        from wsiviewer.core.model.networks import CancerNet
        from wsiviewer.core.model.weights import untrained_card_fields, write_model

        card = workdir / "models" / "cancernet-untrained.json"
        if not card.is_file():
            torch.manual_seed(0)
            write_model(CancerNet().eval(), card.parent, untrained_card_fields())
        return card


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def model_only_rate(predict, patches, repeats: int = 5) -> float:  # type: ignore[no-untyped-def]
    predict(patches)  # warm up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        predict(patches)
        best = min(best, time.perf_counter() - start)
    return len(patches) / best


def run_read(slide_path: Path, card_path: Path, out: Path, device: str) -> dict[str, object]:
    import numpy as np

    from wsiviewer.core.analysis.patches import PatchReader
    from wsiviewer.core.analysis.pipeline import analysis_grid
    from wsiviewer.core.model.cards import ModelCard
    from wsiviewer.core.slides import open_slide

    card = ModelCard.from_file(card_path)
    start = time.perf_counter()
    with open_slide(slide_path) as slide:
        grid = analysis_grid(slide, slide.resolve_mpp(), card)
        # The yardstick: the level at the model's own resolution, read once.
        reader = PatchReader(slide, grid, grid.model_level(slide.level_downsamples, finer=False))
        patches = sum(len(rc) for rc, _ in reader.iter_blocks(np.ones(grid.shape, dtype=bool)))
    wall = time.perf_counter() - start
    return {
        "wall_s": wall,
        "stages": {"tissue": 0.0, "inference": wall, "regions+exports": 0.0},
        "patches": patches,
        "engine": "none (reading only)",
        "model_only_per_s": float("nan"),
        "peak_rss_mb": peak_rss_mb(),
    }


def run_dense(slide_path: Path, card_path: Path, out: Path, device: str) -> dict[str, object]:
    return run_ours(slide_path, card_path, out, device, subdivision=2)


def run_ours(
    slide_path: Path, card_path: Path, out: Path, device: str, subdivision: int = 1
) -> dict[str, object]:
    from wsiviewer.core.analysis.pipeline import analyze
    from wsiviewer.core.analysis.regions import find_regions
    from wsiviewer.core.exports.analysis_outputs import write_outputs
    from wsiviewer.core.model.cards import ModelCard
    from wsiviewer.core.model.engines import probe_patches
    from wsiviewer.core.model.predictor import Predictor
    from wsiviewer.core.progress import run_to_end
    from wsiviewer.core.slides import open_slide

    card = ModelCard.from_file(card_path)
    Predictor(card, device=device)  # exports and caches the ONNX model once, untimed
    stages: dict[str, float] = {}
    start = time.perf_counter()
    predictor = Predictor(card, device=device)
    stages["model load"] = time.perf_counter() - start
    with open_slide(slide_path) as slide:
        analysis = run_to_end(
            analyze(slide, predictor, mpp=slide.resolve_mpp(), subdivision=subdivision)
        )
        stages["tissue"] = analysis.timings_s["tissue"]
        # Colour sample and out-of-distribution check, scoring, context: the model's share.
        stages["inference"] = sum(
            analysis.timings_s.get(k, 0.0) for k in ("colour", "ood", "inference", "context")
        )
        t0 = time.perf_counter()
        regions = find_regions(analysis.probability_map, card.threshold)
        write_outputs(out, analysis, regions, slide)
        stages["regions+exports"] = time.perf_counter() - t0
    wall = time.perf_counter() - start
    patches = analysis.probability_map.scored_count  # cells scored (dense: 100 µm cells)
    probe = probe_patches(card, 512)
    return {
        "wall_s": wall,
        "stages": stages,
        "patches": patches,
        "engine": predictor.engine.name,
        "model_only_per_s": model_only_rate(predictor.predict, probe),
        "peak_rss_mb": peak_rss_mb(),
    }


def run_naive(slide_path: Path, card_path: Path, out: Path, device: str) -> dict[str, object]:
    import numpy as np
    import openslide
    import torch

    from wsiviewer.core.analysis.grid import PatchGrid
    from wsiviewer.core.analysis.pipeline import Analysis, SlideSummary
    from wsiviewer.core.analysis.probability import ProbabilityMap
    from wsiviewer.core.analysis.regions import find_regions
    from wsiviewer.core.analysis.tissue import TissueSettings, detect_tissue, tissue_cells
    from wsiviewer.core.exports.analysis_outputs import write_outputs
    from wsiviewer.core.model.cards import ModelCard
    from wsiviewer.core.model.engines import probe_patches
    from wsiviewer.core.model.weights import load_model
    from wsiviewer.core.slides import Mpp, OpenSlideSource

    card = ModelCard.from_file(card_path)
    torch_device = torch.device("cuda" if device == "cuda" else "cpu")
    stages: dict[str, float] = {}
    start = time.perf_counter()
    model = load_model(card).to(torch_device)
    mean = torch.tensor(card.normalization_mean, device=torch_device).view(1, 3, 1, 1)
    std = torch.tensor(card.normalization_std, device=torch_device).view(1, 3, 1, 1)

    def predict(patches: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(patches).to(torch_device).permute(0, 3, 1, 2).float() / 255.0
        with torch.no_grad():
            logits = model((x - mean) / std) / card.temperature
        return torch.softmax(logits, 1)[:, card.positive_index].cpu().numpy()

    stages["model load"] = time.perf_counter() - start
    t0 = time.perf_counter()
    slide = OpenSlideSource(slide_path)
    osr = openslide.OpenSlide(slide_path)
    mpp = Mpp(float(osr.properties["openslide.mpp-x"]), "metadata")
    grid = PatchGrid.for_slide(osr.dimensions, mpp.value, card.input_mpp, card.input_size)
    settings = TissueSettings()
    tissue = tissue_cells(detect_tissue(slide, settings, mpp=mpp.value), grid, settings)
    stages["tissue"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    probabilities = np.full(grid.shape, np.nan, dtype=np.float32)
    cells = np.argwhere(tissue)
    size = round(grid.l0_patch_size)
    for begin in range(0, len(cells), 64):
        batch_cells = cells[begin : begin + 64]
        patches = []
        for row, col in batch_cells:
            x, y = round(col * grid.l0_patch_size), round(row * grid.l0_patch_size)
            region = osr.read_region((x, y), 0, (size, size)).convert("RGB")
            patches.append(np.asarray(region.resize((card.input_size, card.input_size))))
        probabilities[batch_cells[:, 0], batch_cells[:, 1]] = predict(np.stack(patches))
    stages["inference"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    pmap = ProbabilityMap(grid, probabilities, tissue)
    analysis = Analysis(
        SlideSummary(slide.identity, slide.vendor, slide.dimensions, mpp),
        card.summary(),
        settings,
        pmap,
        "CPU",
        64,
        "",
    )
    write_outputs(out, analysis, find_regions(pmap, card.threshold), slide)
    stages["regions+exports"] = time.perf_counter() - t0
    wall = time.perf_counter() - start
    return {
        "wall_s": wall,
        "stages": stages,
        "patches": int(tissue.sum()),
        "engine": f"eager torch ({torch_device.type})",
        "model_only_per_s": model_only_rate(predict, probe_patches(card, 512)),
        "peak_rss_mb": peak_rss_mb(),
    }


RUNNERS = {"ours": run_ours, "naive": run_naive, "dense": run_dense, "read": run_read}


def child(args: argparse.Namespace) -> None:
    runner = RUNNERS[args.pipeline]
    # Imports happen before the clock starts ("interpreter start excluded"), including the
    # scikit-image modules that tissue detection loads lazily on first use.
    import skimage.filters
    import skimage.measure
    import skimage.morphology  # noqa: F401
    import torch  # noqa: F401

    import wsiviewer.core.analysis.pipeline
    import wsiviewer.core.exports.analysis_outputs  # noqa: F401

    result = runner(Path(args.slide), Path(args.card), Path(args.out), args.device)
    print(json.dumps(result))


def measure(pipeline: str, slide: Path, card: Path, device: str, workdir: Path) -> dict:  # type: ignore[type-arg]
    out = Path(tempfile.mkdtemp(prefix=f"out-{pipeline}-", dir=workdir))
    env = {**os.environ, "WSIVIEWER_DATA_DIR": str(workdir / "data")}
    result = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            pipeline,
            "--slide",
            str(slide),
            "--card",
            str(card),
            "--out",
            str(out),
            "--device",
            device,
        ],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patient", default="8975")
    parser.add_argument("--model", help="card name or path (default: the default model)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--workdir", type=Path, help="reuse slides built here (default: temp)")
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--dense", action="store_true", help="also time the dense map")
    parser.add_argument("--child", choices=sorted(RUNNERS), dest="pipeline")
    parser.add_argument("--slide")
    parser.add_argument("--card")
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.pipeline:
        child(args)
        return

    temp = None
    if args.workdir is None:
        temp = tempfile.TemporaryDirectory(prefix="wsiviewer-bench-")
        args.workdir = Path(temp.name)
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ["WSIVIEWER_DATA_DIR"] = str(workdir / "data")
    card = benchmark_card(workdir, args.model)
    print(f"# wsiviewer analysis benchmark — patient {args.patient}, model {card.stem}")
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"device {args.device}, Python {platform.python_version()}"
    )
    rows = []
    for variant, downsamples in VARIANTS.items():
        start = time.perf_counter()
        name = "-".join(map(str, downsamples))
        slide = build_slide(args.patient, downsamples, workdir / f"{args.patient}-{name}.svs")
        built = time.perf_counter() - start
        from wsiviewer.core.slides import open_slide

        with open_slide(slide) as opened:
            dims = opened.dimensions
        print(
            f"# slide {variant}: {dims[0]}×{dims[1]} px, levels {downsamples} (built {built:.0f} s)"
        )
        pipelines = ["read", "ours"]
        pipelines += [] if args.skip_naive else ["naive"]
        pipelines += ["dense"] if args.dense else []
        results = {p: measure(p, slide, card, args.device, workdir) for p in pipelines}
        rows.append((variant, results))

    header = (
        f"{'slide':<20} {'pipeline':<8} {'engine':<20} {'wall s':>7} {'tissue':>7} {'infer':>7} "
        f"{'export':>7} {'patches':>7} {'patch/s':>8} {'model/s':>8} {'RSS MB':>7}"
    )
    print()
    print(header)
    print("-" * len(header))
    for variant, results in rows:
        for pipeline, r in results.items():
            st = r["stages"]
            print(
                f"{variant:<20} {pipeline:<8} {r['engine']:<20} {r['wall_s']:>7.2f} "
                f"{st['tissue']:>7.2f} {st['inference']:>7.2f} {st['regions+exports']:>7.2f} "
                f"{r['patches']:>7d} {r['patches'] / r['wall_s']:>8.0f} "
                f"{r['model_only_per_s']:>8.0f} {r['peak_rss_mb']:>7.0f}"
            )
        ours, read = results["ours"], results["read"]
        print(
            f"{'':<20} ratio    ours / reading the model's level once: "
            f"{ours['wall_s'] / read['wall_s']:.2f}×"
            + (
                f"; dense / ours: {results['dense']['wall_s'] / ours['wall_s']:.2f}×"
                if "dense" in results
                else ""
            )
        )
        if "naive" in results:
            naive = results["naive"]
            print(
                f"{'':<20} ratio    end to end {naive['wall_s'] / ours['wall_s']:.1f}× faster, "
                f"model only {ours['model_only_per_s'] / naive['model_only_per_s']:.1f}× faster"
            )
    if temp is not None:
        temp.cleanup()


if __name__ == "__main__":
    main()
