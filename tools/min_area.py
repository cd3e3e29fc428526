"""Choose the default minimum region area on the default model's training and validation
patients: print the figures behind :data:`wsiviewer.core.review.defaults.DEFAULT_MIN_AREA_MM2`.

    .venv/bin/python tools/min_area.py [IDC_DIR] [--model NAME]

A development tool, not part of the installed package. Never looks at the test patients.

Each complete patient of the model's ``train`` and ``validation`` parts
(``models/<name>-split.json``; complete: ``idc_patients.csv``) is rebuilt as a slide (2 µm/px,
as ``wsiviewer evaluate`` does), analysed end to end (tissue, model, regions at the card's
threshold, no minimum area), and every region is compared with the dataset's patch labels.
For each candidate minimum area the table gives, per part and together:

- ``regions``: regions kept, and per patient (median, max): what a reviewer has to step through;
- ``1-cell``: kept regions of one patch (≈0.04 mm², single cells or a few at 4 µm/px);
- ``with IDC``: kept regions holding at least one IDC-labelled patch;
- ``no IDC``: kept regions holding none (what a pathologist rejects);
- ``IDC kept``: IDC-labelled patches inside kept regions, as a share of those inside all
  regions at 0 mm²: what the minimum area costs in sensitivity;
- ``patients lost``: patients with an IDC region at 0 mm² and none kept.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IDC = REPO.parent / "shared" / "data" / "idc"

#: Candidate minimum areas, mm²: each just above k whole 200 µm patches (0.04 mm² each).
CANDIDATES_MM2 = (0.0, 0.05, 0.09, 0.13, 0.17, 0.21, 0.25, 0.33, 0.41)


@dataclass(frozen=True)
class RegionFigures:
    patient: str
    part: str
    area_mm2: float
    cells: int
    idc_cells: int
    non_idc_cells: int


def _regions_of(patient_dir: Path, part: str, predictor: object) -> list[RegionFigures]:
    from wsiviewer.core.analysis.pipeline import analyze
    from wsiviewer.core.analysis.regions import find_regions
    from wsiviewer.core.progress import run_to_end
    from wsiviewer.core.slides import ArraySource, Mpp
    from wsiviewer.training.evaluate import SLIDE_ENLARGEMENT
    from wsiviewer.training.idc import DATASET_MPP, rebuild_patient

    rebuilt = rebuild_patient(patient_dir)
    enlarged = np.repeat(
        np.repeat(rebuilt.pixels, SLIDE_ENLARGEMENT, axis=0), SLIDE_ENLARGEMENT, axis=1
    )
    slide_mpp = DATASET_MPP / SLIDE_ENLARGEMENT
    analysis = run_to_end(
        analyze(ArraySource(enlarged, mpp=slide_mpp), predictor, mpp=Mpp(slide_mpp, "user"))  # type: ignore[arg-type]
    )
    pmap = analysis.probability_map
    labels = np.full(pmap.grid.shape, -1, dtype=np.int8)
    for patch in rebuilt.patches:
        row, col = patch.grid_rc
        if row < labels.shape[0] and col < labels.shape[1]:
            labels[row, col] = patch.label
    found = []
    for region in find_regions(pmap, analysis.model.threshold, 0.0).regions:
        cell_labels = labels[region.grid_cells[:, 0], region.grid_cells[:, 1]]
        found.append(
            RegionFigures(
                rebuilt.patient,
                part,
                region.area_mm2,
                region.cell_count,
                int((cell_labels == 1).sum()),
                int((cell_labels == 0).sum()),
            )
        )
    return found


def _row(name: str, regions: list[RegionFigures], min_area: float, patients: list[str]) -> str:
    kept = [r for r in regions if r.area_mm2 >= min_area]
    per_patient = [sum(r.patient == p for r in kept) for p in patients]
    idc_all = sum(r.idc_cells for r in regions)
    idc_kept = sum(r.idc_cells for r in kept)
    with_idc = [p for p in patients if any(r.patient == p and r.idc_cells for r in regions)]
    lost = [p for p in with_idc if not any(r.patient == p and r.idc_cells for r in kept)]
    one_cell = sum(r.cells == 1 for r in kept)
    true_kept = sum(r.idc_cells > 0 for r in kept)
    false_kept = len(kept) - true_kept
    false_all = sum(r.idc_cells == 0 for r in regions)
    return (
        f"| {name} | {min_area:g} | {len(kept)} | {np.median(per_patient):.0f} / "
        f"{max(per_patient, default=0)} | {one_cell} | {true_kept} | {false_kept} "
        f"({100 * (1 - false_kept / max(false_all, 1)):.0f}% dropped) | "
        f"{100 * idc_kept / max(idc_all, 1):.1f}% | {len(lost)} |"
    )


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    model_name = None
    if "--model" in args:
        index = args.index("--model")
        model_name = args[index + 1]
        del args[index : index + 2]
    idc_dir = Path(args[0]) if args else DEFAULT_IDC
    from wsiviewer.core.model.cards import resolve_model
    from wsiviewer.core.model.predictor import Predictor
    from wsiviewer.training.dataset import read_complete_patients

    card = resolve_model(model_name)
    split = json.loads((REPO / "models" / f"{card.name}-split.json").read_text())
    complete = read_complete_patients(idc_dir.parent / "idc_patients.csv")
    predictor = Predictor(card, device="cpu")
    regions: list[RegionFigures] = []
    patients: dict[str, list[str]] = {}
    for part in ("train", "validation"):  # never "test"
        chosen = sorted(str(p) for p in split[part] if str(p) in {str(c) for c in complete})
        patients[part] = chosen
        for patient in chosen:
            found = _regions_of(idc_dir / patient, part, predictor)
            regions += found
            print(f"{part} {patient}: {len(found)} regions", file=sys.stderr)
    print(
        f"\nModel {card.name}, threshold {card.threshold:.3f}; complete patients: "
        f"{len(patients['train'])} train, {len(patients['validation'])} validation "
        "(test patients not used)\n"
    )
    print(
        "| part | min area mm² | regions | per patient median / max | 1-cell | with IDC | "
        "no IDC | IDC kept | patients lost |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for part, names in (*patients.items(), ("both", patients["train"] + patients["validation"])):
        part_regions = [r for r in regions if part == "both" or r.part == part]
        for min_area in CANDIDATES_MM2:
            print(_row(part, part_regions, min_area, names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
