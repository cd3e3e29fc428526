"""The ``wsiviewer`` command: thin commands over core.

Heavy imports (torch, openslide) happen inside the commands, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from wsiviewer import RESEARCH_USE_NOTICE, WsiViewerError, __version__
from wsiviewer.errors import escape_control

if TYPE_CHECKING:
    import torch

    from wsiviewer.core.model.predictor import Predictor
    from wsiviewer.core.review.selection import Selection
    from wsiviewer.core.slides import Mpp, Slide
    from wsiviewer.core.store.database import Store
    from wsiviewer.core.workflow import AnalysisParameters
    from wsiviewer.training.dataset import PatchSet
    from wsiviewer.training.train import EpochReport, TrainingSettings

_T = TypeVar("_T")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

COMMANDS = (
    "info",
    "analyze",
    "batch",
    "models",
    "about-model",
    "gui",
    "train",
    "crossval",
    "evaluate",
    "export",
    "explain",
)

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
        _add_batch,
        _add_models,
        _add_about_model,
        _add_train,
        _add_crossval,
        _add_evaluate,
        _add_export,
        _add_explain,
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
    from wsiviewer.core.review.defaults import DEFAULT_MIN_AREA_MM2

    command.add_argument(
        "--min-area",
        type=_non_negative_float,
        default=DEFAULT_MIN_AREA_MM2,
        metavar="MM2",
        help=f"drop regions smaller than this many mm² (default {DEFAULT_MIN_AREA_MM2:g})",
    )
    command.add_argument(
        "--mpp",
        type=_positive_float,
        help="slide level-0 µm/px, for slides whose metadata lacks it (overrides metadata)",
    )
    command.add_argument("--batch-size", type=_positive_int, help="patches per forward pass")
    command.add_argument(
        "--dense",
        action="store_true",
        help="dense heatmap: patches every half patch (100 µm cells, each from the 4 patches "
        "covering it), at about 4 times the inference",
    )


def _parameters(args: argparse.Namespace) -> AnalysisParameters:
    """The analysis parameters of :func:`add_analysis_options`'s options."""
    from wsiviewer.core.analysis.grid import DENSE_SUBDIVISION
    from wsiviewer.core.workflow import AnalysisParameters

    return AnalysisParameters(
        threshold=args.threshold,
        min_area_mm2=args.min_area,
        subdivision=DENSE_SUBDIVISION if args.dense else 1,
    )


def _add_batch(commands: _Commands) -> None:
    batch = commands.add_parser(
        "batch",
        help="analyse many slides on a Dask cluster (local by default); resumable",
        description=(
            "Analyse slides one task per slide on Dask distributed workers: a local cluster "
            "sized to this machine, or an existing scheduler (--scheduler; its workers need "
            "wsiviewer and read access to the slides and the model). Sources are slide files, "
            "folders (searched for every format OpenSlide reads) and text files listing one "
            "slide per line. Each slide's outputs go to --out/<label>/ (slide-<hash>, or the "
            "file name with --include-filename) and --out/manifest.csv lists every slide. "
            "Slides already analysed with the same model and settings are skipped unless "
            f"--force. Exit status 0 only if every slide succeeded or was skipped. "
            f"{RESEARCH_USE_NOTICE}"
        ),
    )
    batch.add_argument("sources", type=Path, nargs="+", metavar="SOURCE")
    batch.add_argument("--out", type=Path, required=True, help="output folder")
    add_analysis_options(batch)
    where = batch.add_mutually_exclusive_group()
    where.add_argument(
        "--scheduler", metavar="ADDRESS", help="an existing Dask scheduler (tcp://host:8786)"
    )
    where.add_argument(
        "--workers",
        type=_positive_int,
        help="local worker processes (default: the machine's cores, as memory allows)",
    )
    batch.add_argument(
        "--threads-per-worker",
        type=_positive_int,
        default=1,
        metavar="T",
        help="slides a local worker analyses at once (default 1)",
    )
    batch.add_argument(
        "--retries",
        type=_non_negative_int,
        default=2,
        metavar="R",
        help="times a slide is retried on another worker when its worker dies (default 2)",
    )
    batch.add_argument(
        "--force",
        action="store_true",
        help="analyse slides already in the results database again, overwriting their outputs",
    )
    batch.add_argument(
        "--include-filename",
        action="store_true",
        help="name output folders after the slide files (default: slide-<hash>, privacy)",
    )
    batch.add_argument("--quiet", action="store_true", help="no progress bar")


def _non_negative_int(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} must be a whole number ≥ 0")
    return int(text)


def _add_models(commands: _Commands) -> None:
    commands.add_parser("models", help="list the installed models")


def _add_about_model(commands: _Commands) -> None:
    about = commands.add_parser(
        "about-model",
        help="what a model is, how it was tested and where it does worst, in words",
        description=(
            "Print the model's About page, built from its card and its evaluation report: what "
            "IDC and the dataset's patches are, how the model was trained and validated, its "
            "sensitivity and specificity at the operating point in words, and the patients "
            "where it does worst. With --out, also score those patients' patches from the IDC "
            "dataset (not shipped) and write the most confident errors as PNGs (enlarged 4×) "
            f"and examples.csv. {RESEARCH_USE_NOTICE}"
        ),
    )
    about.add_argument(
        "name", nargs="?", metavar="NAME", help="model card name or path (default: the default)"
    )
    about.add_argument(
        "--examples-from",
        type=Path,
        metavar="IDC_DIR",
        help="the IDC dataset folder (<patient>/<0|1>/<patch>) to make example patches from; "
        "default: $WSIVIEWER_IDC_DATA",
    )
    about.add_argument(
        "--out", type=Path, metavar="DIR", help="write the example patches and examples.csv here"
    )


def _add_train(commands: _Commands) -> None:
    train = commands.add_parser(
        "train",
        help="train a model on IDC patches (split by patient) and write weights and card",
        description="Train on the IDC patch dataset (<patient>/<0|1>/*.png or .webp), split by "
        "patient; threshold, operating point and temperature are chosen on validation, and "
        "the test patients are scored once at the end. With --from-crossval, train a "
        "cross-validated recipe's final model on every patient instead, as each fold model "
        "was (10 % of them held back to stop on and calibrate on); threshold and spatial "
        "context come from the run's out-of-fold scores.",
    )
    train.add_argument("--data", type=Path, required=True, help="the dataset folder")
    train.add_argument("--out", type=Path, required=True, help="folder for weights, card, split")
    train.add_argument("--name", default="cancernet", help="model name (default cancernet)")
    _add_recipe_options(train)
    train.add_argument(
        "--split", type=Path, help="reuse this patient split JSON instead of making one"
    )
    train.add_argument(
        "--standard-split",
        type=Path,
        metavar="CSV",
        help="the dataset's standard patient split (idc_standard_split.csv): train on its "
        "train part, choose on its validation part, score its test part",
    )
    train.add_argument(
        "--from-crossval",
        type=Path,
        metavar="RUN",
        help="a `wsiviewer crossval` run folder: train its recipe on every patient",
    )
    train.add_argument(
        "--ood",
        action="store_true",
        help="with --from-crossval: put the out-of-distribution model on the card (always "
        "measured in the report; off by default: it missed a skin section and flagged a "
        "training patient, see the default model's report)",
    )
    train.add_argument("--default", action="store_true", help="mark the card as the default")


def _add_crossval(commands: _Commands) -> None:
    crossval = commands.add_parser(
        "crossval",
        help="patient-level cross-validation of a training recipe (resumable)",
        description="Deal the patients into --folds folds (stratified, seeded), train the "
        "recipe on each fold's complement and score the fold once: every patient gets an "
        "out-of-fold score. Writes the folds, each fold's model and scores, and the "
        "out-of-fold figures into --out; rerun the same command to resume an interrupted run.",
    )
    crossval.add_argument("--data", type=Path, required=True, help="the dataset folder")
    crossval.add_argument("--out", type=Path, required=True, help="the run folder")
    crossval.add_argument("--folds", type=_positive_int, default=5, help="k (default 5)")
    crossval.add_argument(
        "--fold",
        type=int,
        action="append",
        help="run only this fold (repeat for several; default: all)",
    )
    _add_recipe_options(crossval)


def _add_recipe_options(command: argparse.ArgumentParser) -> None:
    """How a model is trained: the same options for `train` and `crossval`."""
    command.add_argument(
        "--architecture", default="cancernet", help="cancernet (default) or resnet8"
    )
    command.add_argument(
        "--architecture-args",
        type=_json_object,
        default={},
        metavar="JSON",
        help="constructor arguments, e.g. '{\"widths\": [48, 96, 192]}'",
    )
    command.add_argument("--epochs", type=_positive_int, default=20)
    command.add_argument(
        "--stain-jitter",
        type=_non_negative_float,
        default=0.05,
        help="H&E stain jitter: each stain scaled by 1 ± this (default 0.05)",
    )
    command.add_argument(
        "--brightness-contrast",
        type=_non_negative_float,
        default=0.0,
        help="brightness and contrast jitter: each scaled by 1 ± this (default 0: off)",
    )
    command.add_argument(
        "--hsv-jitter",
        type=_non_negative_float,
        default=0.0,
        help="hue shift ± this / 10 and saturation scale 1 ± this (default 0: off)",
    )
    command.add_argument(
        "--jpeg",
        type=_probability,
        default=0.0,
        metavar="P",
        help="fraction of patches JPEG-compressed at quality 50-95 (default 0: off)",
    )
    command.add_argument(
        "--colour",
        action="store_true",
        help="standardise each patient's colours to the training patients' reference "
        "(the analysis then does the same to each slide)",
    )
    command.add_argument("--batch-size", type=_positive_int, default=128)
    command.add_argument("--seed", type=int, default=0)
    command.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    command.add_argument(
        "--threads", type=_positive_int, help="CPU threads for torch (default: all cores)"
    )
    command.add_argument(
        "--patients-csv",
        type=Path,
        help="idc_patients.csv marking complete patients (default: beside --data)",
    )


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
            "(pyramidal TIFF and PNG), the patch CSV and a review report (HTML, CSV, JSON), "
            "each named after the slide's label (slide-<hash>_regions.geojson...), and never "
            "replaces a file unless --force. No output names the slide file unless "
            f"--include-filename. {RESEARCH_USE_NOTICE}"
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
        help="name the files after the slide's file and write its name into the report "
        "(default: slide-<hash>_..., privacy)",
    )
    export.add_argument(
        "--force",
        action="store_true",
        help="overwrite this slide's files of an earlier export in --out (default: refuse)",
    )


def _add_explain(commands: _Commands) -> None:
    explain = commands.add_parser(
        "explain",
        help="why was a region flagged: its top and lowest patches, with saliency",
        description=(
            "Show the evidence of one region of a slide's analysis (the one the viewer shows: "
            "the region set reviewed most recently, else the latest analysis by the default "
            "model, unless --analysis or --model says otherwise): its highest and a few of its "
            "lowest patches, read from the slide at the model's input and at the slide's "
            "resolution, each scored alone, with Grad-CAM and integrated-gradients saliency "
            "(captum). Regions are named as in the viewer and the review report (3, M4). "
            "Prints a table; with --out, writes a contact sheet, each patch's pictures and a "
            f"CSV, named after the slide's label. {RESEARCH_USE_NOTICE}"
        ),
    )
    explain.add_argument("slide", type=Path, metavar="SLIDE")
    where = explain.add_mutually_exclusive_group(required=True)
    where.add_argument("--region", metavar="N", help="region label in the region set: 3, M4")
    where.add_argument(
        "--at",
        nargs=2,
        type=float,
        metavar=("X", "Y"),
        help="the cell under this level-0 point (px, as in the GeoJSON)",
    )
    explain.add_argument("--analysis", type=_positive_int, metavar="ID", help="analysis id")
    explain.add_argument("--model", help="model card name or path (its latest analysis)")
    explain.add_argument(
        "--threshold",
        type=_probability,
        help="region set at this threshold (default: the reviewed set, else the analysis's)",
    )
    explain.add_argument("--out", type=Path, help="write pictures and a CSV into this folder")
    explain.add_argument(
        "--top", type=_non_negative_int, default=8, help="highest patches shown (default 8)"
    )
    explain.add_argument(
        "--lowest", type=_non_negative_int, default=3, help="lowest patches shown (default 3)"
    )
    explain.add_argument(
        "--no-saliency", action="store_true", help="patches only, no Grad-CAM or gradients"
    )
    explain.add_argument(
        "--include-filename",
        action="store_true",
        help="name the files after the slide's file (default: slide-<hash>_..., privacy)",
    )
    explain.add_argument(
        "--force", action="store_true", help="overwrite files of an earlier explanation"
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
        "batch": _cmd_batch,
        "models": _cmd_models,
        "about-model": _cmd_about_model,
        "gui": lambda args: _cmd_gui(args.slide),
        "export": _cmd_export,
        "explain": _cmd_explain,
        "train": _cmd_train,
        "crossval": _cmd_crossval,
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
    """One line on stderr; control characters from file names or files come out escaped."""
    print(f"wsiviewer: error: {escape_control(message)}", file=sys.stderr)


#: The modules of the GUI extra (``pip install 'wsiviewer[gui]'``).
_GUI_MODULES = ("PySide6", "shiboken6", "pyqtgraph", "superqt")


def _cmd_gui(slide: Path | None) -> int:
    # Imported here: Qt only when the viewer is wanted, never for the other commands.
    try:
        from wsiviewer.gui.app import run
    except ImportError as exc:
        if (exc.name or "").split(".")[0] not in _GUI_MODULES:
            raise
        from wsiviewer.gui.platform_check import libraries_named_in, missing_message

        missing = libraries_named_in(str(exc))
        if missing:  # Qt is installed; a system library it loads is not
            _error(missing_message(missing))
            return EXIT_FAILED
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
    text = json.dumps(description, indent=2, ensure_ascii=False)
    # JSON escapes C0 controls but not DEL, C1 (a CSI) or bidi overrides from the file.
    sys.stdout.write(
        "".join(c if c.isprintable() or c in "\n " else f"\\u{ord(c):04x}" for c in text)
    )
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
        metrics = card.extra.get("metrics") or {}
        scores = ""
        for part, words in (("test", "test patients"), ("out_of_fold", "out of fold")):
            figures = metrics.get(part)
            if isinstance(figures, dict) and "roc_auc" in figures:
                scores = (
                    f"  {words}: AUC {figures['roc_auc']:.3f}, balanced accuracy "
                    f"{figures.get('balanced_accuracy', float('nan')):.3f}"
                )
                break
        print(
            f"{mark} {card.name}  v{card.version}  {card.architecture}  "
            f"{card.input_mpp:g} µm/px{scores}  {card.path}"
        )
    print("* the default model. " + RESEARCH_USE_NOTICE)
    return EXIT_OK


def _cmd_about_model(args: argparse.Namespace) -> int:
    from wsiviewer.core.model.about import IDC_DATA_ENV, describe_model, idc_data_folder
    from wsiviewer.core.model.cards import resolve_model

    if args.examples_from is not None and args.out is None:
        _error("--examples-from needs --out DIR: the folder the example patches are written to")
        return EXIT_USAGE
    card = resolve_model(args.name)
    description = describe_model(card)
    sys.stdout.write(description.to_text())
    if args.out is None:
        return EXIT_OK
    folder = args.examples_from or idc_data_folder()
    if folder is None:
        _error(f"no IDC dataset folder: name it with --examples-from IDC_DIR or {IDC_DATA_ENV}")
        return EXIT_USAGE
    from tqdm import tqdm

    from wsiviewer.core.progress import run_to_end
    from wsiviewer.training.failure_examples import (
        ExamplesProgress,
        failure_examples,
        write_failure_examples,
    )

    with tqdm(
        total=len(description.weak_patients), desc="patients", file=sys.stderr, disable=None
    ) as bar:

        def show(progress: ExamplesProgress) -> None:
            bar.n = progress.done
            bar.refresh()

        result = run_to_end(failure_examples(card, folder, description), show)
    written = write_failure_examples(result, card, args.out)
    for patient in result.missing:
        print(f"wsiviewer: warning: patient {patient} is not in {folder}", file=sys.stderr)
    print(
        f"Wrote {len(result.examples)} example patches and {written[-1]}. {RESEARCH_USE_NOTICE}",
        file=sys.stderr,
    )
    return EXIT_OK


def _cmd_analyze(args: argparse.Namespace) -> int:
    # Import everything analysis needs now, not at the first slide: a Ctrl-C that lands inside
    # an import can leave CPython to end the process by SIGINT instead of exiting with 130.
    import wsiviewer.core.workflow  # noqa: F401
    from wsiviewer.core.model.cards import resolve_model
    from wsiviewer.core.model.predictor import Predictor
    from wsiviewer.core.store.database import Store

    card = resolve_model(args.model)
    parameters = _parameters(args)
    # The database first: one that cannot be opened fails before any slide is analysed.
    with Store.open() as store:
        store.check_writable()  # read-only, full or locked: fails before the model loads
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
            + escape_control(", ".join(map(str, failures))),
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
            desc=escape_control(slide_path.name),
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
        print(f"wsiviewer: warning: {escape_control(str(slide_path))}: {note}", file=sys.stderr)
    from wsiviewer.core.review.wording import flagged_text, scored_text

    region_set = result.region_set
    pmap = result.analysis.probability_map
    scored = scored_text(pmap.scored_count, pmap.grid.subdivision)
    print(
        f"{escape_control(slide_path.name)}: {scored}, "
        f"{flagged_text(len(region_set), region_set.threshold)}, area ≥ "
        f"{region_set.min_area_mm2:g} mm² (analysis {result.analysis_id}) -> {out_dir}",
        file=sys.stderr,
    )
    reviewed = store.latest_reviewed_region_set_of_slide(result.analysis.slide.identity)
    if reviewed is not None and reviewed.analysis_id != result.analysis_id:
        # Re-analysing never hides a review: say which set the viewer and export still show.
        print(
            f"wsiviewer: note: {slide_path.name} has a reviewed region set (#{reviewed.id} of "
            f"analysis {reviewed.analysis_id}); the viewer and `wsiviewer export` keep showing "
            f"it (the set reviewed most recently) until this analysis is reviewed; "
            f"`wsiviewer export --analysis {result.analysis_id}` exports the new one",
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


def _cmd_batch(args: argparse.Namespace) -> int:
    # Imported before any work, as for analyze: Ctrl-C inside an import may end CPython by
    # SIGINT instead of exit status 130.
    from wsiviewer.core.batch.console import ConsoleObserver
    from wsiviewer.core.batch.manifest import summary_table
    from wsiviewer.core.batch.runner import BatchRun, BatchSettings
    from wsiviewer.core.batch.sources import SourceError, find_slides
    from wsiviewer.core.model.cards import resolve_model
    from wsiviewer.core.store.database import Store

    card = resolve_model(args.model)
    slides = find_slides(args.sources, exclude=[args.out])
    if not slides:
        raise SourceError(
            "No slide found in " + ", ".join(map(str, args.sources)) + " (searched for "
            "every format OpenSlide reads)"
        )
    settings = BatchSettings(
        card=card,
        parameters=_parameters(args),
        out_dir=args.out,
        device=args.device,
        batch_size=args.batch_size,
        mpp=args.mpp,
        include_filename=args.include_filename,
        force=args.force,
        retries=args.retries,
        scheduler=args.scheduler,
        workers=args.workers,
        threads_per_worker=args.threads_per_worker,
    )
    print(
        f"{len(slides)} slide(s), model {card.name} v{card.version}. {RESEARCH_USE_NOTICE}",
        file=sys.stderr,
    )
    # The database first: one that cannot be opened fails before any slide is analysed.
    with Store.open() as store:
        observer = ConsoleObserver(len(slides), quiet=args.quiet)
        run = BatchRun(slides, settings, store, observer)
        try:
            report = run.run()
        except KeyboardInterrupt:
            observer.close()
            print(summary_table(run.rows), file=sys.stderr)
            print(f"Cancelled; what was done is kept. Manifest: {args.out}", file=sys.stderr)
            raise
        observer.close()
    print(summary_table(report.rows))
    if report.manifest is not None:
        print(f"Manifest: {report.manifest}", file=sys.stderr)
    return EXIT_OK if report.ok else EXIT_FAILED


def _cmd_train(args: argparse.Namespace) -> int:
    from wsiviewer.core.model.colour import ColourReference
    from wsiviewer.core.progress import run_to_end
    from wsiviewer.training.crossval import patient_quantiles, standardise_colours
    from wsiviewer.training.dataset import PatientSplit, split_patients, standard_split
    from wsiviewer.training.train import finish, train

    device, patches, complete = _training_setup(args)
    if args.from_crossval is not None:
        return _train_from_crossval(args, device, patches, complete)
    if args.standard_split is not None:
        split = standard_split(args.standard_split, patches)
    elif args.split is not None:
        split = PatientSplit.load(args.split)
    else:
        split = split_patients(patches, complete, seed=args.seed)
    reference = None
    if args.colour:
        quantiles = patient_quantiles(patches)
        reference = ColourReference.mean_of([quantiles[p] for p in split.train])
        patches = standardise_colours(patches, quantiles, reference)
    parts = {part: patches.subset(getattr(split, part)) for part in ("train", "validation", "test")}
    for part, subset in parts.items():
        print(
            f"{part}: {len(getattr(split, part))} patients, {len(subset)} patches, "
            f"{subset.labels.mean():.1%} IDC",
            file=sys.stderr,
        )
    show, close = _epoch_printer(args.epochs)
    try:
        result = run_to_end(
            train(parts["train"], parts["validation"], _training_settings(args), device), show
        )
    finally:
        close()
    summary = {
        "patients": {part: len(getattr(split, part)) for part in parts},
        "patches": {part: len(subset) for part, subset in parts.items()},
        "idc_fraction": {part: round(float(s.labels.mean()), 4) for part, s in parts.items()},
    }
    if args.standard_split is not None:
        summary["split"] = "the dataset's standard patient split, its patients that are here"
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
        colour=reference,
    )
    print(f"Wrote {card_path} and its weights. {RESEARCH_USE_NOTICE}", file=sys.stderr)
    return EXIT_OK


def _training_setup(args: argparse.Namespace) -> tuple[torch.device, PatchSet, set[str]]:
    """Threads, device, an early check of the architecture, the decoded patches and the
    complete patients: what `train` and `crossval` start with."""
    from wsiviewer.core.model.networks import build_model
    from wsiviewer.core.model.predictor import resolve_device
    from wsiviewer.training.dataset import load_patch_set, read_complete_patients

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    build_model(args.architecture, args.architecture_args)  # a bad name fails before decoding
    print(f"Decoding patches under {args.data} ...", file=sys.stderr)
    patches = load_patch_set(args.data)
    for path, reason in patches.unreadable:
        print(f"wsiviewer: warning: skipped {path}: {reason}", file=sys.stderr)
    complete = read_complete_patients(args.patients_csv or args.data.parent / "idc_patients.csv")
    return device, patches, complete


def _training_settings(args: argparse.Namespace) -> TrainingSettings:
    from wsiviewer.training.train import TrainingSettings

    return TrainingSettings(
        architecture=args.architecture,
        architecture_args=args.architecture_args,
        stain_jitter=args.stain_jitter,
        brightness_contrast=args.brightness_contrast,
        hsv_jitter=args.hsv_jitter,
        jpeg_probability=args.jpeg,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
    )


def _epoch_printer(
    epochs: int, prefix: str = ""
) -> tuple[Callable[[EpochReport], None], Callable[[], None]]:
    """A progress bar over epochs and one line per epoch on stderr."""
    from tqdm import tqdm

    bar = tqdm(total=epochs, unit="epoch", file=sys.stderr, disable=None)

    def show(report: EpochReport) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{report.train_loss:.3f}", val_auc=f"{report.validation_auc:.3f}")
        print(
            f"{prefix}epoch {report.epoch}: loss {report.train_loss:.4f}, validation AUC "
            f"{report.validation_auc:.4f}, {report.seconds:.0f} s{' *' if report.best else ''}",
            file=sys.stderr,
        )

    return show, bar.close


def _cmd_crossval(args: argparse.Namespace) -> int:
    import json

    from wsiviewer.core.atomic import atomic_write_text
    from wsiviewer.core.progress import run_to_end
    from wsiviewer.training.crossval import (
        CrossValidationProgress,
        PatientFolds,
        cross_validate,
        make_folds,
        out_of_fold_figures,
    )

    device, patches, complete = _training_setup(args)
    settings = _training_settings(args)
    folds_file = args.out / "folds.json"
    if folds_file.is_file():
        folds = PatientFolds.load(folds_file)  # resuming: the same folds
    else:
        folds = make_folds(patches, complete, args.folds, seed=args.seed)
    recipe = {"settings": settings.__dict__, "colour": args.colour, "folds": len(folds)}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "recipe.json", json.dumps(recipe, indent=1) + "\n")
    printers: dict[int, tuple[Callable[[EpochReport], None], Callable[[], None]]] = {}

    def show(progress: CrossValidationProgress) -> None:
        if progress.report is None:
            for _, close in printers.values():
                close()
            print(f"fold {progress.fold + 1} of {progress.folds}", file=sys.stderr)
            printers[progress.fold] = _epoch_printer(settings.epochs, f"fold {progress.fold}: ")
        else:
            printers[progress.fold][0](progress.report)

    try:
        scores = run_to_end(
            cross_validate(
                patches,
                folds,
                settings,
                args.out,
                device,
                complete=complete,
                colour=args.colour,
                only=args.fold,
            ),
            show,
        )
    finally:
        for _, close in printers.values():
            close()
    if len(scores) < len(folds):
        print(f"{len(scores)} of {len(folds)} folds done in {args.out}", file=sys.stderr)
        return EXIT_OK
    figures = out_of_fold_figures(scores)
    atomic_write_text(
        args.out / "out_of_fold.json", json.dumps(figures, indent=1, default=float) + "\n"
    )
    mean, sd, pooled = figures["fold_mean"], figures["fold_sd"], figures["pooled"]
    print(f"Out of fold, {len(folds)} folds, {len(patches.patient_ids)} patients:")
    for key in ("roc_auc", "balanced_accuracy", "sensitivity", "specificity", "ece"):
        print(f"  {key:<18} pooled {pooled[key]:.4f}   folds {mean[key]:.4f} ± {sd[key]:.4f}")
    return EXIT_OK


def _train_from_crossval(
    args: argparse.Namespace, device: torch.device, patches: PatchSet, complete: set[str]
) -> int:
    import json

    from wsiviewer.core.progress import run_to_end
    from wsiviewer.training.crossval import add_validation_scores
    from wsiviewer.training.finish import finish_crossval
    from wsiviewer.training.recipe import train_final
    from wsiviewer.training.train import TrainingSettings

    run = args.from_crossval
    recipe = json.loads((run / "recipe.json").read_text())
    settings = TrainingSettings(**recipe["settings"])
    print("Scores of each fold model's validation patients (its calibration) ...", file=sys.stderr)
    add_validation_scores(patches, run, complete, device)
    print(
        f"Training {settings.architecture} on all {len(patches.patient_ids)} patients as each "
        f"fold model was (up to {settings.epochs} epochs, 10 % of the patients held back for "
        "early stopping and calibration)",
        file=sys.stderr,
    )
    show, close = _epoch_printer(settings.epochs)
    try:
        final = run_to_end(
            train_final(
                patches,
                settings,
                device,
                complete=complete,
                colour=bool(recipe["colour"]),
                checkpoint=args.out / f"{args.name}.checkpoint",
            ),
            show,
        )
    finally:
        close()
    card_path, report = finish_crossval(
        final,
        run,
        patches,
        complete,
        args.data,
        args.out,
        name=args.name,
        default=args.default,
        device=device,
        attach_ood=args.ood,
        say=lambda text: print(text, file=sys.stderr),
    )
    (args.out / f"{args.name}.checkpoint").unlink(missing_ok=True)
    print(f"Wrote {card_path}, its weights and {report}. {RESEARCH_USE_NOTICE}", file=sys.stderr)
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


def _selection(args: argparse.Namespace, slide: Slide, store: Store) -> Selection:
    """The slide's selection (``--analysis``, ``--model``, else the selection rule), as
    ``export`` and ``explain`` show it.

    Raises
    ------
    SelectionError
        If the slide has no analysis, or the one asked for is not the slide's.
    """
    from wsiviewer.core.model.cards import ModelCard, available_models, resolve_model
    from wsiviewer.core.review.selection import select
    from wsiviewer.errors import ModelError, SelectionError

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
    return selection


def _cmd_export(args: argparse.Namespace) -> int:
    from wsiviewer.core.exports.review_outputs import (
        EXPORT_KINDS,
        export_review,
        load_review_export,
    )
    from wsiviewer.core.review.selection import ensure_region_set
    from wsiviewer.core.review.wording import format_threshold
    from wsiviewer.core.slides import open_slide
    from wsiviewer.core.slides.label import slide_label
    from wsiviewer.core.store.database import Store

    with open_slide(args.slide) as slide, Store.open() as store:
        selection = _selection(args, slide, store)
        region_set = ensure_region_set(store, selection, args.threshold)
        export = load_review_export(store, region_set.id)
        label = slide_label(slide.identity, args.slide, include_filename=args.include_filename)
        written = export_review(
            args.out,
            export,
            args.what or EXPORT_KINDS,
            slide=slide,
            accepted_only=args.accepted_only,
            card=selection.card,
            slide_name=args.slide.name if args.include_filename else None,
            label=label,
            force=args.force,
        )
    analysis = selection.analysis
    print(
        f"Exported analysis {analysis.id} (model {analysis.model.name}; {selection.reason}), "
        f"region set {region_set.id} at P ≥ {format_threshold(region_set.threshold)}, "
        f"area ≥ {region_set.min_area_mm2:g} mm²: {export.state.progress_text}; "
        f"{len(written)} files {label}_* -> {args.out}. {RESEARCH_USE_NOTICE}",
        file=sys.stderr,
    )
    return EXIT_OK


def _cmd_explain(args: argparse.Namespace) -> int:
    from wsiviewer.core.exports.evidence_images import patch_caption
    from wsiviewer.core.exports.evidence_outputs import write_evidence
    from wsiviewer.core.review.evidence import (
        SaliencyCache,
        patch_saliency,
        point_evidence,
        region_evidence,
    )
    from wsiviewer.core.review.log import review_state
    from wsiviewer.core.review.selection import ensure_region_set
    from wsiviewer.core.slides import open_slide
    from wsiviewer.core.slides.label import slide_label
    from wsiviewer.core.store.database import Store
    from wsiviewer.errors import SelectionError

    with open_slide(args.slide) as slide, Store.open() as store:
        selection = _selection(args, slide, store)
        analysis = selection.analysis
        if args.region is not None:
            region_set = ensure_region_set(store, selection, args.threshold)
            state = review_state(store, region_set.id)
            wanted = args.region.strip().upper().removeprefix("REGION").strip(" -")
            item = next((item for item in state.items if item.label.upper() == wanted), None)
            if item is None:
                labels = ", ".join(item.label for item in state.items) or "none"
                raise SelectionError(
                    f"No region {args.region!r} in region set {region_set.id} of analysis "
                    f"{analysis.id} (its regions: {labels})"
                )
            reading = region_evidence(
                store,
                slide,
                analysis,
                item.polygon,
                item.label,
                selection.card,
                top=args.top,
                lowest=args.lowest,
            )
            evidence = _drive(reading, "Reading patches")
            name = f"region-{item.label}"
        else:
            x, y = args.at
            evidence = point_evidence(store, slide, analysis, (x, y), selection.card)
            name = f"at-{x:.0f}-{y:.0f}"
        maps = None
        if not args.no_saliency and evidence.patches:
            if selection.card is None:
                print(
                    f"wsiviewer: model {analysis.model.name!r} of analysis {analysis.id} is not "
                    "installed: no saliency",
                    file=sys.stderr,
                )
            else:
                from wsiviewer.core.model.saliency import SaliencyExplainer

                computing = patch_saliency(
                    evidence.patches,
                    SaliencyExplainer(selection.card),
                    SaliencyCache(store.root, analysis),
                )
                maps = _drive(computing, "Saliency")
        print(
            f"{evidence.title} of analysis {analysis.id} (model {analysis.model.name}; "
            f"{selection.reason}): {len(evidence.patches)} of {evidence.cell_count} tissue "
            "cells shown"
        )
        for rank, patch in enumerate(evidence.patches, start=1):
            print(f"  {rank:2d}. " + "; ".join(patch_caption(patch)))
        if args.out is not None:
            label = slide_label(slide.identity, args.slide, include_filename=args.include_filename)
            written = write_evidence(
                args.out, evidence, maps, label=label, name=name, force=args.force
            )
            print(
                f"Wrote {len(written)} files {label}_{name}_* -> {args.out}. {RESEARCH_USE_NOTICE}",
                file=sys.stderr,
            )
    return EXIT_OK


def _drive(work: Generator[tuple[int, int], None, _T], what: str) -> _T:
    """Run a generator of ``(done, total)`` with a progress bar on stderr; its value."""
    from tqdm import tqdm

    from wsiviewer.core.progress import run_to_end

    with tqdm(desc=what, unit="patch", file=sys.stderr, leave=False, disable=None) as bar:

        def show(step: tuple[int, int]) -> None:
            bar.n, bar.total = step
            bar.refresh()

        return run_to_end(work, show)
