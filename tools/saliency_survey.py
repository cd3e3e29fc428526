"""What the saliency highlights on true and false positives, out of fold (prints a table).

    .venv/bin/python tools/saliency_survey.py IDC_DIR FOLD_CARDS_DIR FOLDS_JSON \
        [--patients-csv CSV] [--per-group 5]

A development tool, not part of the installed package. For every complete patient (from
``idc_patients.csv``) it takes the fold model that never saw the patient (cross-validation's
fold cards and ``folds.json``), scores the patient's patches with the patient's colours
standardised as in training, and explains with captum (:mod:`wsiviewer.core.model.saliency`)
up to ``--per-group`` patches of each group: true positives (IDC, highest P), false positives
(non-IDC, highest P above the threshold), false negatives (IDC, lowest P below it) and true
negatives (non-IDC, lowest P). Per patch it measures where the maps put their mass:

- ``nuclei``: share of the map's positive mass on the patch's most haematoxylin-rich quarter of
  pixels (scikit-image's H&E-DAB colour deconvolution; 0.25 is chance);
- ``fat``: share on near-white pixels (grey > 210: fat, lumen, background) against their share
  of the area (``fat area``);
- ``rank H``: Spearman correlation of the map with the haematoxylin channel.

Nothing is written; the patches are the dataset's (never committed).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr
from skimage.color import rgb2hed

from wsiviewer.core.model.cards import ModelCard
from wsiviewer.core.model.predictor import Predictor
from wsiviewer.core.model.saliency import METHODS, SaliencyExplainer
from wsiviewer.training.crossval import patient_quantiles, standardise_colours
from wsiviewer.training.dataset import load_patch_set, read_complete_patients

GROUPS = ("true positive", "false positive", "false negative", "true negative")


def _chosen(labels: np.ndarray, p: np.ndarray, threshold: float, per_group: int) -> dict:
    flagged = p >= threshold
    picks = {
        "true positive": np.flatnonzero((labels == 1) & flagged),
        "false positive": np.flatnonzero((labels == 0) & flagged),
        "false negative": np.flatnonzero((labels == 1) & ~flagged),
        "true negative": np.flatnonzero((labels == 0) & ~flagged),
    }
    out = {}
    for group, index in picks.items():
        descending = group in ("true positive", "false positive")
        order = index[np.argsort(-p[index] if descending else p[index], kind="stable")]
        out[group] = order[:per_group]
    return out


def _measures(patch: np.ndarray, saliency: np.ndarray) -> tuple[float, float, float, float]:
    haematoxylin = rgb2hed(patch)[..., 0]
    grey = patch.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    positive = np.clip(saliency, 0, None)
    mass = float(positive.sum())
    nuclei = haematoxylin >= np.percentile(haematoxylin, 75)
    white = grey > 210
    if mass <= 0:
        return float("nan"), float("nan"), float(white.mean()), float("nan")
    rank = spearmanr(saliency.ravel(), haematoxylin.ravel()).statistic
    return (
        float(positive[nuclei].sum() / mass),
        float(positive[white].sum() / mass),
        float(white.mean()),
        float(rank),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("idc_dir", type=Path)
    parser.add_argument("fold_cards", type=Path)
    parser.add_argument("folds_json", type=Path)
    parser.add_argument("--patients-csv", type=Path)
    parser.add_argument("--per-group", type=int, default=5)
    args = parser.parse_args(argv)
    complete = read_complete_patients(args.patients_csv or args.idc_dir.parent / "idc_patients.csv")
    folds = json.loads(args.folds_json.read_text())["folds"]
    rows: dict[tuple[str, str], list[tuple[float, float, float, float]]] = {}
    patients_seen = 0
    for fold, patients in enumerate(folds):
        card = ModelCard.from_file(args.fold_cards / f"fold-{fold}.json")
        predictor = Predictor(card, device="cpu")
        explainer = SaliencyExplainer(card)
        for patient in sorted(set(patients) & complete):
            patches = load_patch_set(args.idc_dir / patient, patients=[patient])
            if card.colour is not None:
                patches = standardise_colours(patches, patient_quantiles(patches), card.colour)
            p = predictor.predict(patches.pixels)
            patients_seen += 1
            for group, index in _chosen(patches.labels, p, card.threshold, args.per_group).items():
                if len(index) == 0:
                    continue
                maps = explainer.explain(patches.pixels[index])
                for method in METHODS:
                    for k, i in enumerate(index):
                        rows.setdefault((group, method), []).append(
                            _measures(patches.pixels[i], maps.method(method)[k])
                        )
        print(f"fold {fold} done", file=sys.stderr)
    print(f"{patients_seen} complete patients, out of fold, up to {args.per_group} patches a group")
    header = ("group", "method", "n", "nuclei", "fat", "fat area", "rank H")
    print("{:16} {:22} {:>4} {:>7} {:>6} {:>9} {:>7}".format(*header))
    for group in GROUPS:
        for method in METHODS:
            values = np.array(rows.get((group, method), []), dtype=np.float64)
            if len(values) == 0:
                continue
            median = np.nanmedian(values, axis=0)
            print(
                f"{group:16} {method:22} {len(values):4d} {median[0]:7.2f} {median[1]:6.2f} "
                f"{median[2]:9.2f} {median[3]:7.2f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
