"""The ``wsiviewer`` command: thin commands over core.

Heavy imports (torch, openslide) happen inside the commands, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from wsiviewer import RESEARCH_USE_NOTICE, WsiViewerError, __version__

if TYPE_CHECKING:
    from wsiviewer.core.model.predictor import Predictor
    from wsiviewer.core.slides import Mpp, Slide
    from wsiviewer.core.store.database import Store
    from wsiviewer.core.workflow import AnalysisParameters

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

COMMANDS = ("info", "analyze", "models", "gui", "train", "evaluate", "export")

if TYPE_CHECKING:
    _Commands = argparse._SubParsersAction[argparse.ArgumentParser]


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


def _json_object(text: str) -> dict[str, object]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
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
    for add in (
        _add_info,
        _add_analyze,
        _add_models,
        _add_train,
        _add_evaluate,
        _add_export,
        _add_gui,
    ):
        add(commands)
    return parser


def _add_info(commands: _Commands) -> None:
    info = commands.add_parser("info", help="print a slide's properties as JSON")
    info.add_argument("slide", type=Path, help="slide file (any format OpenSlide reads)")
    info.add_argument(
        "--show-identifying",
        action="store_true",
        help="include label/macro image names and properties that may identify a patient",
    )


def _add_analyze(commands: _Commands) -> None:
    analyze = commands.add_parser(
        "analyze",
        help="find tissue, score it with the model, write heatmap, regions and masks",
        description=(
            "Analyse slides at the model's resolution and write a QuPath GeoJSON of IDC "
            "regions, the IDC mask (pyramidal TIFF and PNG), a patch CSV, a heatmap, the raw "
            "map and a run record into --out (with several slides, into a folder per slide "
            "named by its label: slide-<hash>, or the file name with --include-filename). "
            f"{RESEARCH_USE_NOTICE}"
        ),
    )
    analyze.add_argument("slides", type=Path, nargs="+", metavar="SLIDE")
    analyze.add_argument("--out", type=Path, required=True, help="output folder")
    add_analysis_options(analyze)
    analyze.add_argument(
        "--include-filename",
        action="store_true",
        help="name each slide's output folder after its file (default: slide-<hash>, privacy)",
    )
    analyze.add_argument("--quiet", action="store_true", help="no progress bar")


def add_analysis_options(command: argparse.ArgumentParser) -> None:
    """The options of an analysis: the same for every command that analyses slides."""
    command.add_argument(
        "--model", help="model card name or path to a card JSON (default: the default model)"
    )
    command.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    command.add_argument(
        "--threshold", type=_probability, help="IDC probability threshold (default: the card's)"
    )
    command.add_argument(
        "--min-area",
        type=_non_negative_float,
        default=0.0,
        metavar="MM2",
        help="drop regions smaller than this many mm² (default 0)",
    )
    command.add_argument(
        "--mpp",
        type=_positive_float,
        help="slide level-0 µm/px, for slides whose metadata lacks it (overrides metadata)",
    )
    command.add_argument("--batch-size", type=_positive_int, help="patches per forward pass")


def _add_models(commands: _Commands) -> None:
    commands.add_parser("models", help="list the installed models")


def _add_train(commands: _Commands) -> None:
    train = commands.add_parser(
        "train",
        help="train a model on IDC patches (split by patient) and write weights and card",
        description="Train on the IDC patch dataset (<patient>/<0|1>/*.png or .webp), split by "
        "patient; threshold, operating point and temperature are chosen on validation, and "
        "the test patients are scored once at the end.",
    )
    train.add_argument("--data", type=Path, required=True, help="the dataset folder")
    train.add_argument("--out", type=Path, required=True, help="folder for weights, card, split")
    train.add_argument("--name", default="cancernet", help="model name (default cancernet)")
    train.add_argument("--architecture", default="cancernet", help="cancernet (default) or resnet8")
    train.add_argument(
        "--architecture-args",
        type=_json_object,
        default={},
        metavar="JSON",
        help="constructor arguments, e.g. '{\"widths\": [48, 96, 192]}'",
    )
    train.add_argument("--epochs", type=_positive_int, default=20)
    train.add_argument(
        "--stain-jitter",
        type=_non_negative_float,
        default=0.05,
        help="H&E stain jitter: each stain scaled by 1 ± this (default 0.05)",
    )
    train.add_argument(
        "--brightness-contrast",
        type=_non_negative_float,
        default=0.0,
        help="brightness and contrast jitter: each scaled by 1 ± this (default 0: off)",
    )
    train.add_argument("--batch-size", type=_positive_int, default=128)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    train.add_argument(
        "--threads", type=_positive_int, help="CPU threads for torch (default: all cores)"
    )
    train.add_argument(
        "--split", type=Path, help="reuse this patient split JSON instead of making one"
    )
    train.add_argument(
        "--patients-csv",
        type=Path,
        help="idc_patients.csv marking complete patients (default: beside --data)",
    )
    train.add_argument("--default", action="store_true", help="mark the card as the default")


def _add_evaluate(commands: _Commands) -> None:
    evaluate = commands.add_parser(
        "evaluate",
        help="evaluate a model on the patients of its split: metrics, plots, report",
        description="Score one part of a model's patient split (the test patients by "
        "default): patch-level metrics with 95% intervals bootstrapped over patients, a "
        "per-patient table, and the part's complete patients rebuilt as slides and analysed "
        "end to end (Dice and IoU of the IDC mask). Writes metrics.json, CSV tables, PNG "
        f"plots and report.md. {RESEARCH_USE_NOTICE}",
    )
    evaluate.add_argument("--data", type=Path, required=True, help="the dataset folder")
    evaluate.add_argument("--model", help="model card name or path (default: the default model)")
    evaluate.add_argument(
        "--split", default="test", choices=("test", "validation", "train"), help="default test"
    )
    evaluate.add_argument(
        "--split-file", type=Path, help="patient split JSON (default: the one on the card)"
    )
    evaluate.add_argument(
        "--out", type=Path, help="report folder (default: evaluation-<model>-<split>)"
    )
    evaluate.add_argument(
        "--patients-csv",
        type=Path,
        help="idc_patients.csv marking complete patients (default: beside --data)",
    )
    evaluate.add_argument(
        "--no-slides", action="store_true", help="skip the slide-level (end-to-end) part"
    )
    evaluate.add_argument("--device", default="auto", help="auto (default), cpu or cuda")


def _add_export(commands: _Commands) -> None:
    export = commands.add_parser(
        "export",
        help="export a slide's reviewed regions, IDC mask, patch table or review report",
        description=(
            "Export a slide's regions as the viewer shows them: the region set reviewed most "
            "recently, else the latest analysis by the default model (else by any model), "
            "unless --analysis or --model says otherwise. Writes QuPath GeoJSON, the IDC mask "
            "(pyramidal TIFF and PNG), the patch CSV and a review report (HTML, CSV, JSON). No "
            f"output names the slide file unless --include-filename. {RESEARCH_USE_NOTICE}"
        ),
    )
    export.add_argument("slide", type=Path, metavar="SLIDE")
    export.add_argument(
        "--what",
        action="append",
        choices=("geojson", "mask", "csv", "report"),
        help="what to export; repeat for several (default: all)",
    )
    export.add_argument("--out", type=Path, required=True, help="output folder")
    export.add_argument(
        "--accepted-only", action="store_true", help="only accepted regions in the GeoJSON"
    )
    export.add_argument("--analysis", type=_positive_int, metavar="ID", help="analysis id")
    export.add_argument("--model", help="model card name or path (its latest analysis)")
    export.add_argument(
        "--threshold",
        type=_probability,
        help="region set at this threshold (default: the reviewed set, else the analysis's)",
    )
    export.add_argument(
        "--include-filename",
        action="store_true",
        help="write the slide's file name into the report (left out by default: privacy)",
    )


def _add_gui(commands: _Commands) -> None:
    gui = commands.add_parser(
        "gui",
        help="open the viewer (the default: `wsiviewer` or `wsiviewer SLIDE`)",
        description=f"Open the desktop viewer, optionally on a slide. {RESEARCH_USE_NOTICE}",
    )
    gui.add_argument("slide", type=Path, nargs="?", help="slide to open")


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
    handlers: dict[str, Callable[[argparse.Namespace], int]] = {
        "info": _cmd_info,
        "analyze": _cmd_analyze,
        "models": _cmd_models,
        "gui": lambda args: _cmd_gui(args.slide),
        "export": _cmd_export,
        "train": _cmd_train,
        "evaluate": _cmd_evaluate,
    }
    handler = handlers.get(args.command)
    if handler is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("wsiviewer: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (WsiViewerError, OSError) as exc:
        _error(str(exc))
        return EXIT_FAILED


def _error(message: str) -> None:
    print(f"wsiviewer: error: {message}", file=sys.stderr)


#: The modules of the GUI extra (``pip install 'wsiviewer[gui]'``).
_GUI_MODULES = ("PySide6", "shiboken6", "pyqtgraph", "superqt")


def _cmd_gui(slide: Path | None) -> int:
    # Imported here: Qt only when the viewer is wanted, never for the other commands.
    try:
        from wsiviewer.gui.app import run
    except ImportError as exc:
        if (exc.name or "").split(".")[0] not in _GUI_MODULES:
            raise
        _error(
            f"the viewer needs Qt ({exc.name} cannot be imported): install wsiviewer with its "
            "GUI extra, pip install 'wsiviewer[gui]'; every other command works without it"
        )
        return EXIT_FAILED
    return run(slide)


def _cmd_info(args: argparse.Namespace) -> int:
    from wsiviewer.core.slides import open_slide

    with open_slide(args.slide) as slide:
        description = slide.describe(include_identifying=args.show_identifying)
    json.dump(description, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")
    return EXIT_OK


def _cmd_models(args: argparse.Namespace) -> int:
    from wsiviewer.core.model.cards import available_models, model_dirs

    cards = available_models()
    if not cards:
        print("No models installed. Searched: " + ", ".join(map(str, model_dirs())))
        return EXIT_OK
    for card in cards:
        mark = "*" if card.default else " "
        test = (card.extra.get("metrics") or {}).get("test")
        scores = ""
        if isinstance(test, dict) and "roc_auc" in test:
            scores = (
                f"  test patients: AUC {test['roc_auc']:.3f}, balanced accuracy "
                f"{test.get('balanced_accuracy', float('nan')):.3f}"
            )
        print(
            f"{mark} {card.name}  v{card.version}  {card.architecture}  "
            f"{card.input_mpp:g} µm/px{scores}  {card.path}"
        )
    print("* the default model. " + RESEARCH_USE_NOTICE)
    return EXIT_OK


def _cmd_analyze(args: argparse.Namespace) -> int:
    # Import everything analysis needs now, not at the first slide: a Ctrl-C that lands inside
    # an import can leave CPython to end the process by SIGINT instead of exiting with 130.
    import wsiviewer.core.workflow  # noqa: F401
    from wsiviewer.core.model.cards import resolve_model
    from wsiviewer.core.model.predictor import Predictor
    from wsiviewer.core.store.database import Store
    from wsiviewer.core.workflow import AnalysisParameters

    card = resolve_model(args.model)
    parameters = AnalysisParameters(threshold=args.threshold, min_area_mm2=args.min_area)
    # The database first: one that cannot be opened fails before any slide is analysed.
    with Store.open() as store:
        predictor = Predictor(card, device=args.device, batch_size=args.batch_size)
        print(
            f"Model {card.name} v{card.version} on {predictor.device_name} "
            f"({predictor.engine.name}). {RESEARCH_USE_NOTICE}",
            file=sys.stderr,
        )
        failures: list[Path] = []
        labels: set[str] = set()
        for slide_path in args.slides:
            try:
                _analyze_one(slide_path, predictor, parameters, store, labels, args)
            except (WsiViewerError, OSError) as exc:
                _error(f"{slide_path}: {exc}")
                failures.append(slide_path)
    if failures and len(args.slides) > 1:
        print(
            f"wsiviewer: {len(failures)} of {len(args.slides)} slides failed: "
            + ", ".join(map(str, failures)),
            file=sys.stderr,
        )
    return EXIT_FAILED if failures else EXIT_OK


def _analyze_one(
    slide_path: Path,
    predictor: Predictor,
    parameters: AnalysisParameters,
    store: Store,
    labels: set[str],
    args: argparse.Namespace,
) -> None:
    """Analyse one slide into ``--out`` (several slides: ``--out/<slide label>``)."""
    from tqdm import tqdm

    from wsiviewer.core.analysis.pipeline import AnalysisProgress, AnalysisWarning
    from wsiviewer.core.progress import run_to_end
    from wsiviewer.core.slides import open_slide
    from wsiviewer.core.slides.label import slide_label, unique_labels
    from wsiviewer.core.workflow import run_analysis

    with open_slide(slide_path) as slide:
        mpp = _resolve_mpp(slide, args.mpp)
        out_dir: Path = args.out
        if len(args.slides) > 1:
            label = slide_label(slide.identity, slide_path, include_filename=args.include_filename)
            label = unique_labels([*sorted(labels), label])[-1]
            labels.add(label.lower())
            out_dir = args.out / label
        existed = out_dir.exists()
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
                run = run_analysis(slide, predictor, mpp, parameters, store=store, out_dir=out_dir)
                result = run_to_end(run, show)
        except BaseException:
            if not existed and out_dir.is_dir() and not any(out_dir.iterdir()):
                out_dir.rmdir()  # a failed slide leaves no empty folder behind
            raise
        finally:
            bar.close()
    for note in result.analysis.warnings:
        print(f"wsiviewer: warning: {slide_path}: {note}", file=sys.stderr)
    print(
        f"{slide_path.name}: {result.analysis.probability_map.scored_count} patches scored, "
        f"{len(result.region_set)} regions flagged at P ≥ {result.region_set.threshold:.2f} "
        f"(analysis {result.analysis_id}) -> {out_dir}",
        file=sys.stderr,
    )


def _resolve_mpp(slide: Slide, user_mpp: float | None) -> Mpp:
    """The slide's µm/px, with the CLI's way to give a missing one in the error."""
    from wsiviewer.errors import ResolutionError

    try:
        return slide.resolve_mpp(user_mpp)
    except ResolutionError as exc:
        if user_mpp is None and slide.mpp is None:
            raise ResolutionError(f"{exc}; pass it with --mpp") from exc
        raise


def _cmd_train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from wsiviewer.core.model.networks import build_model
    from wsiviewer.core.model.predictor import resolve_device
    from wsiviewer.core.progress import run_to_end
    from wsiviewer.training.dataset import (
        PatientSplit,
        load_patch_set,
        read_complete_patients,
        split_patients,
    )
    from wsiviewer.training.train import EpochReport, TrainingSettings, finish, train

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    build_model(args.architecture, args.architecture_args)  # a bad name fails before decoding
    print(f"Decoding patches under {args.data} ...", file=sys.stderr)
    patches = load_patch_set(args.data)
    for path, reason in patches.unreadable:
        print(f"wsiviewer: warning: skipped {path}: {reason}", file=sys.stderr)
    patients_csv = args.patients_csv or args.data.parent / "idc_patients.csv"
    if args.split is not None:
        split = PatientSplit.load(args.split)
    else:
        split = split_patients(patches, read_complete_patients(patients_csv), seed=args.seed)
    parts = {
        "train": patches.subset(split.train),
        "validation": patches.subset(split.validation),
        "test": patches.subset(split.test),
    }
    for part, subset in parts.items():
        print(
            f"{part}: {len(getattr(split, part))} patients, {len(subset)} patches, "
            f"{subset.labels.mean():.1%} IDC",
            file=sys.stderr,
        )
    settings = TrainingSettings(
        architecture=args.architecture,
        architecture_args=args.architecture_args,
        stain_jitter=args.stain_jitter,
        brightness_contrast=args.brightness_contrast,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    bar = tqdm(total=args.epochs, unit="epoch", file=sys.stderr, disable=None)

    def show(report: EpochReport) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{report.train_loss:.3f}", val_auc=f"{report.validation_auc:.3f}")
        print(
            f"epoch {report.epoch}: loss {report.train_loss:.4f}, validation AUC "
            f"{report.validation_auc:.4f}, {report.seconds:.0f} s{' *' if report.best else ''}",
            file=sys.stderr,
        )

    try:
        result = run_to_end(train(parts["train"], parts["validation"], settings, device), show)
    finally:
        bar.close()
    summary = {
        "patients": {part: len(getattr(split, part)) for part in parts},
        "patches": {part: len(subset) for part, subset in parts.items()},
        "idc_fraction": {part: round(float(s.labels.mean()), 4) for part, s in parts.items()},
    }
    card_path = finish(
        result,
        parts["validation"],
        parts["test"],
        split,
        args.out,
        name=args.name,
        device=device,
        default=args.default,
        training_summary=summary,
    )
    print(f"Wrote {card_path} and its weights. {RESEARCH_USE_NOTICE}", file=sys.stderr)
    return EXIT_OK


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from wsiviewer.core.model.cards import resolve_model
    from wsiviewer.core.progress import run_to_end
    from wsiviewer.training.dataset import read_complete_patients
    from wsiviewer.training.evaluate import EvaluationProgress, evaluate, write_report
    from wsiviewer.training.metrics import INTERVAL_METRICS

    card = resolve_model(args.model)
    out_dir = args.out or Path(f"evaluation-{card.name}-{args.split}")
    complete = read_complete_patients(args.patients_csv or args.data.parent / "idc_patients.csv")
    bars: dict[str, tqdm] = {}

    def show(progress: EvaluationProgress) -> None:
        bar = bars.get(progress.stage)
        if bar is None:
            for old in bars.values():
                old.close()
            bars.clear()
            bar = bars[progress.stage] = tqdm(
                total=progress.total, desc=progress.stage, file=sys.stderr, disable=None
            )
        bar.n = progress.done
        bar.refresh()

    try:
        evaluation = run_to_end(
            evaluate(
                card,
                args.data,
                part=args.split,
                split_path=args.split_file,
                complete_patients=sorted(complete),
                device=args.device,
                slides=not args.no_slides,
            ),
            show,
        )
    finally:
        for bar in bars.values():
            bar.close()
    report = write_report(evaluation, out_dir)
    m, ci = evaluation.metrics, evaluation.intervals
    print(
        f"{card.name} on the {args.split} patients: {len(evaluation.patients)} patients, "
        f"{len(evaluation.labels)} patches, threshold {evaluation.threshold:.4f}"
    )
    for key in INTERVAL_METRICS:
        low, high = ci[key]
        print(f"  {key:<18} {m[key]:.4f}  (95% CI {low:.4f}-{high:.4f})")
    summary = evaluation.slide_summary()
    if summary:
        print(
            f"  slide level: {summary['slides']} slides, Dice {summary['dice_pooled']:.4f}, "
            f"IoU {summary['iou_pooled']:.4f}, max |ΔP| vs patch files "
            f"{summary['max_abs_difference']:.1e}"
        )
    for patient in evaluation.missing_patients:
        print(f"wsiviewer: warning: patient {patient} is not in {args.data}", file=sys.stderr)
    print(f"Wrote {report}. {RESEARCH_USE_NOTICE}", file=sys.stderr)
    return EXIT_OK


def _cmd_export(args: argparse.Namespace) -> int:
    from wsiviewer.core.exports.review_outputs import (
        EXPORT_KINDS,
        export_review,
        load_review_export,
    )
    from wsiviewer.core.model.cards import ModelCard, available_models, resolve_model
    from wsiviewer.core.review.selection import ensure_region_set, select
    from wsiviewer.core.slides import open_slide
    from wsiviewer.core.store.database import Store
    from wsiviewer.errors import ModelError, SelectionError

    with open_slide(args.slide) as slide, Store.open() as store:
        model = resolve_model(args.model) if args.model is not None else None
        default: ModelCard | None
        try:
            default = resolve_model(None)
        except ModelError:
            default = None
        selection = select(
            store,
            slide.identity,
            default_card=default,
            cards=available_models(),
            analysis_id=args.analysis,
            model=model,
        )
        if selection is None:
            raise SelectionError(
                f"No analysis of {args.slide.name} in the results database; run "
                f"`wsiviewer analyze {args.slide} --out DIR` or analyse it in the viewer first"
            )
        region_set = ensure_region_set(store, selection, args.threshold)
        export = load_review_export(store, region_set.id)
        written = export_review(
            args.out,
            export,
            args.what or EXPORT_KINDS,
            slide=slide,
            accepted_only=args.accepted_only,
            card=selection.card,
            slide_name=args.slide.name if args.include_filename else None,
        )
    analysis = selection.analysis
    print(
        f"Exported analysis {analysis.id} (model {analysis.model.name}; {selection.reason}), "
        f"region set {region_set.id} at P ≥ {region_set.threshold:.2f}: "
        f"{export.state.progress_text}; {len(written)} files -> {args.out}. "
        f"{RESEARCH_USE_NOTICE}",
        file=sys.stderr,
    )
    return EXIT_OK
