"""From a finished cross-validation run to a shipped model: the final model, its
out-of-distribution check, its card, and the report of what every figure was measured on.

``wsiviewer train --from-crossval RUN`` runs these steps in order; each slow step keeps its
result in the report folder, so an interrupted run picks up where it stopped:

1. the recipe trained on every patient, as each fold model was (:func:`.recipe.train_final`,
   checkpointed), after the folds' validation scores are made sure of
   (:func:`.crossval.add_validation_scores`: a run of an older version lacks them);
2. the out-of-distribution score: each patient scored by the fold model that never saw it,
   the warning threshold their 99th percentile (:mod:`.ood_fit`), the final model's feature
   distribution fitted on every patient; and the stain check, calibrated the same way on the
   patients' raw colours;
3. the card (:func:`.recipe.write_final_card`): calibration (the model's validation
   patients), threshold, context, colour, the stain check and (with ``--ood``) the
   out-of-distribution model, all from out-of-fold scores;
4. end to end: every complete patient rebuilt as a slide and analysed by its fold model
   through the real analysis pipeline (:func:`.cv_evaluate.end_to_end`);
5. compression: the first complete patients (by name) as 40x JPEG pyramids
   (:func:`.cv_evaluate.compression`);
6. the report (:func:`.cv_report.write_cv_report`) with those sections, and their tables
   (``end_to_end.csv``, ``compression.csv``) beside it.

The fold cards, the pyramids and each step's result stay in the run folder
(``finish-<name>/``), not beside the model.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from wsiviewer.core.atomic import atomic_write_text
from wsiviewer.core.model.cards import ModelCard
from wsiviewer.core.progress import run_to_end
from wsiviewer.training.crossval import (
    FoldScores,
    PatientFolds,
    patient_quantiles,
    standardise_colours,
)
from wsiviewer.training.cv_evaluate import compression, end_to_end, write_fold_cards
from wsiviewer.training.cv_report import (
    compression_section,
    context_section,
    end_to_end_section,
    ood_section,
    stain_check_section,
    write_csv,
    write_cv_report,
)
from wsiviewer.training.dataset import PatchSet
from wsiviewer.training.ood_fit import fit_final, fit_stain_check_on_folds, out_of_fold_scores
from wsiviewer.training.recipe import FinalModel, write_final_card

#: Complete patients rebuilt as 40x JPEG pyramids for the compression check (the first by
#: name: each takes about a minute on 2 cores).
COMPRESSION_PATIENTS = 6


def _cached(path: Path, compute: Callable[[], Any]) -> Any:
    """``compute()``'s JSON result, kept in ``path`` (read back on a rerun)."""
    if path.is_file():
        return json.loads(path.read_text())
    value = json.loads(json.dumps(compute(), default=float))
    atomic_write_text(path, json.dumps(value, indent=1) + "\n")
    return value


def finish_crossval(
    final: FinalModel,
    run_dir: Path,
    patches: PatchSet,
    complete: set[str],
    data_dir: Path,
    out_dir: Path,
    *,
    name: str,
    default: bool,
    device: torch.device,
    compression_patients: int = COMPRESSION_PATIENTS,
    attach_ood: bool = False,
    say: Callable[[str], None] = lambda _: None,
) -> tuple[Path, Path]:
    """Steps 2-6 of the module docstring, after the final model is trained; returns the
    card's and the report's paths. The out-of-distribution model is always measured (the
    report says how it was calibrated); it goes on the card only with ``attach_ood``."""
    folds = PatientFolds.load(run_dir / "folds.json")
    scores = [FoldScores.load(run_dir / f"fold-{k}.npz", k) for k in range(len(folds))]
    report_dir = out_dir / "reports" / name
    # Fold cards, pyramids and the steps' results stay with the run, not with the model.
    work = run_dir / f"finish-{name}"
    work.mkdir(parents=True, exist_ok=True)

    say("Out-of-distribution scores, out of fold ...")
    oof = _cached(
        work / "ood_out_of_fold.json", lambda: out_of_fold_scores(patches, folds, run_dir, device)
    )
    result, reference = final.result, final.reference
    quantiles = patient_quantiles(patches)
    data = patches
    if reference is not None:
        data = standardise_colours(patches, quantiles, reference)
    ood, ood_figures = fit_final(result.model, data, result.mean, result.std, oof, device)
    del data
    stain_check, stain_figures = fit_stain_check_on_folds(quantiles, folds)

    card_path, figures = write_final_card(
        final,
        scores,
        folds,
        complete,
        out_dir,
        name=name,
        default=default,
        training_summary={"patients": len(patches.patient_ids), "patches": len(patches)},
        ood=ood if attach_ood else None,
        stain_check=stain_check,
    )
    card = ModelCard.from_file(card_path)
    fold_cards = write_fold_cards(run_dir, scores, complete, card.context, work / "fold-cards")
    patients = sorted(p for p in complete if p in set(patches.patient_ids))

    say(f"End to end: {len(patients)} complete patients, each by its fold model ...")
    e2e = _cached(
        work / "end_to_end.json",
        lambda: run_to_end(end_to_end(fold_cards, folds, scores, data_dir, patients)),
    )
    chosen = patients[:compression_patients]
    say(f"Compression: {len(chosen)} patients as 40x JPEG pyramids ...")
    jpeg = _cached(
        work / "compression.json",
        lambda: run_to_end(compression(fold_cards, folds, data_dir, chosen, work / "pyramids")),
    )
    sections = [
        context_section(figures.get("context_candidates", [])),
        end_to_end_section(e2e),
        compression_section(jpeg),
        ood_section(ood_figures, attached=attach_ood),
        stain_check_section(stain_figures),
    ]
    report = write_cv_report(card, scores, figures, report_dir, sections=sections)
    write_csv(
        report_dir / "end_to_end.csv",
        [{k: v for k, v in r.items() if not k.startswith("cell_")} for r in e2e],
    )
    write_csv(
        report_dir / "compression.csv",
        [
            {"patient": r["patient"], "fold": r["fold"], "quality": r["quality"]}
            | {
                f"{level}_{k}": v
                for level in ("4um_level", "1um_level")
                for k, v in r[level].items()
            }
            for r in jpeg
        ],
    )
    atomic_write_text(
        report_dir / "out_of_fold.json", json.dumps(figures, indent=1, default=float) + "\n"
    )
    return card_path, report
