"""The ``wsiviewer`` command: thin commands over core.

Heavy imports (torch, openslide) happen inside the commands, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from wsiviewer import RESEARCH_USE_NOTICE, WsiViewerError, __version__

if TYPE_CHECKING:
    from wsiviewer.core.predictor import Predictor

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

COMMANDS = ("info", "analyze", "models", "gui")


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} is not a probability in [0, 1]")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{value} must be positive")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text) if text.replace(".", "", 1).isdigit() else -1.0
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a number ≥ 0")
    return value


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a whole number > 0")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wsiviewer",
        description=f"Whole-slide images with a CancerNet IDC heatmap. {RESEARCH_USE_NOTICE}",
    )
    parser.add_argument("--version", action="version", version=f"wsiviewer {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    info = commands.add_parser("info", help="print a slide's properties as JSON")
    info.add_argument("slide", type=Path, help="slide file (any format OpenSlide reads)")
    info.add_argument(
        "--show-identifying",
        action="store_true",
        help="include label/macro image names and properties that may identify a patient",
    )

    analyze = commands.add_parser(
        "analyze",
        help="find tissue, score it with the model, write heatmap, regions and masks",
        description=(
            "Analyse slides at the model's resolution and write a QuPath GeoJSON of IDC "
            "regions, the IDC mask (pyramidal TIFF and PNG), a patch CSV, a heatmap, the raw "
            f"map and a run record into --out. {RESEARCH_USE_NOTICE}"
        ),
    )
    analyze.add_argument("slides", type=Path, nargs="+", metavar="SLIDE")
    analyze.add_argument("--out", type=Path, required=True, help="output folder")
    analyze.add_argument(
        "--model", help="model card name or path to a card JSON (default: the default model)"
    )
    analyze.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    analyze.add_argument(
        "--threshold", type=_probability, help="IDC probability threshold (default: the card's)"
    )
    analyze.add_argument(
        "--min-area",
        type=_non_negative_float,
        default=0.0,
        metavar="MM2",
        help="drop regions smaller than this many mm² (default 0)",
    )
    analyze.add_argument(
        "--mpp",
        type=_positive_float,
        help="slide level-0 µm/px, for slides whose metadata lacks it (overrides metadata)",
    )
    analyze.add_argument("--batch-size", type=_positive_int, help="patches per forward pass")
    analyze.add_argument("--quiet", action="store_true", help="no progress bar")

    commands.add_parser("models", help="list the installed models")

    gui = commands.add_parser(
        "gui",
        help="open the viewer (the default: `wsiviewer` or `wsiviewer SLIDE`)",
        description=f"Open the desktop viewer, optionally on a slide. {RESEARCH_USE_NOTICE}",
    )
    gui.add_argument("slide", type=Path, nargs="?", help="slide to open")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not args_list:
        return _cmd_gui(None)
    if args_list[0] not in COMMANDS and not args_list[0].startswith("-"):
        # `wsiviewer SLIDE`: a first argument that is not a subcommand is a slide to open.
        if len(args_list) > 1:
            parser.error(f"unexpected arguments after the slide: {' '.join(args_list[1:])}")
        return _cmd_gui(Path(args_list[0]))
    args = parser.parse_args(args_list)
    try:
        if args.command == "info":
            return _cmd_info(args)
        if args.command == "analyze":
            return _cmd_analyze(args)
        if args.command == "models":
            return _cmd_models()
        if args.command == "gui":
            return _cmd_gui(args.slide)
    except KeyboardInterrupt:
        print("wsiviewer: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (WsiViewerError, OSError) as exc:
        _error(str(exc))
        return EXIT_FAILED
    parser.print_help()
    return EXIT_USAGE


def _error(message: str) -> None:
    print(f"wsiviewer: error: {message}", file=sys.stderr)


def _cmd_gui(slide: Path | None) -> int:
    # Imported here: Qt only when the viewer is wanted, never for the other commands.
    from wsiviewer.gui.app import run

    return run(slide)


def _cmd_info(args: argparse.Namespace) -> int:
    from wsiviewer.core.slide import open_slide

    with open_slide(args.slide) as slide:
        description = slide.describe(include_identifying=args.show_identifying)
    json.dump(description, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")
    return EXIT_OK


def _cmd_models() -> int:
    from wsiviewer.core.cards import available_models, model_dirs

    cards = available_models()
    if not cards:
        print("No models installed. Searched: " + ", ".join(map(str, model_dirs())))
        return EXIT_OK
    for card in cards:
        mark = "*" if card.default else " "
        print(
            f"{mark} {card.name}  v{card.version}  {card.architecture}  "
            f"{card.input_mpp} µm/px  {card.path}"
        )
    return EXIT_OK


def _output_folders(slides: Sequence[Path], out: Path) -> list[Path]:
    """One folder per slide: ``out`` itself for one slide, ``out/<stem>`` for several."""
    if len(slides) == 1:
        return [out]
    folders: list[Path] = []
    used: set[str] = set()
    for slide in slides:
        name = slide.stem or "slide"
        candidate, n = name, 2
        while candidate in used:
            candidate, n = f"{name}-{n}", n + 1
        used.add(candidate)
        folders.append(out / candidate)
    return folders


def _cmd_analyze(args: argparse.Namespace) -> int:
    # Import everything analysis needs now, not at the first slide: a Ctrl-C that lands inside
    # an import can leave CPython to end the process by SIGINT instead of exiting with 130.
    import wsiviewer.core.analysis
    import wsiviewer.core.exports
    import wsiviewer.core.store  # noqa: F401
    from wsiviewer.core.cards import resolve_model
    from wsiviewer.core.predictor import Predictor

    card = resolve_model(args.model)
    predictor = Predictor(card, device=args.device, batch_size=args.batch_size)
    print(
        f"Model {card.name} v{card.version} on {predictor.device_name} "
        f"({predictor.engine.name}). {RESEARCH_USE_NOTICE}",
        file=sys.stderr,
    )
    failures: list[tuple[Path, str]] = []
    folders = _output_folders(args.slides, args.out)
    for slide_path, out_dir in zip(args.slides, folders, strict=True):
        existed = out_dir.exists()
        try:
            _analyze_one(slide_path, out_dir, predictor, args)
        except (WsiViewerError, OSError) as exc:
            _error(f"{slide_path}: {exc}")
            failures.append((slide_path, str(exc)))
            if not existed and out_dir.is_dir() and not any(out_dir.iterdir()):
                out_dir.rmdir()  # a failed slide leaves no empty folder behind
    if failures:
        if len(args.slides) > 1:
            print(
                f"wsiviewer: {len(failures)} of {len(args.slides)} slides failed: "
                + ", ".join(str(path) for path, _ in failures),
                file=sys.stderr,
            )
        return EXIT_FAILED
    return EXIT_OK


def _analyze_one(
    slide_path: Path, out_dir: Path, predictor: Predictor, args: argparse.Namespace
) -> None:
    from tqdm import tqdm

    from wsiviewer.core.analysis import AnalysisProgress, AnalysisWarning, analyze
    from wsiviewer.core.exports import write_outputs
    from wsiviewer.core.progress import run_to_end
    from wsiviewer.core.regions import find_regions
    from wsiviewer.core.slide import open_slide
    from wsiviewer.core.store import Store

    t_start = time.perf_counter()
    with open_slide(slide_path) as slide:
        mpp = slide.resolve_mpp(args.mpp)
        bar = tqdm(
            desc=slide_path.name,
            unit="patch",
            disable=True if args.quiet else None,
            file=sys.stderr,
            dynamic_ncols=True,
        )

        def show(progress: AnalysisProgress) -> None:
            bar.total = progress.total
            bar.n = progress.done
            bar.refresh()

        try:
            with warnings.catch_warnings():
                # Reported below from analysis.warnings, once, without a source line.
                warnings.simplefilter("ignore", AnalysisWarning)
                analysis = run_to_end(analyze(slide, predictor, mpp=mpp), show)
        finally:
            bar.close()
        threshold = predictor.card.threshold if args.threshold is None else args.threshold
        region_set = find_regions(analysis.probability_map, threshold, args.min_area)
        analysis.timings_s["total"] = time.perf_counter() - t_start
        write_outputs(out_dir, analysis, region_set, slide)
        with Store.open() as store:
            analysis_id = store.save_analysis(analysis)
            store.save_region_set(analysis_id, region_set)
    for note in analysis.warnings:
        print(f"wsiviewer: warning: {slide_path}: {note}", file=sys.stderr)
    pmap = analysis.probability_map
    print(
        f"{slide_path.name}: {pmap.scored_count} patches scored, {len(region_set)} IDC regions "
        f"at threshold {threshold:g} -> {out_dir}",
        file=sys.stderr,
    )
