"""Out-of-distribution candidates, calibrated out of fold and checked on slides unlike the
training data (prints a table; ``--out`` writes it as markdown).

    .venv/bin/python tools/ood_survey.py IDC_DIR CROSSVAL_RUN \
        [--slide PATH[@MPP] ...] [--rebuilt PATIENT=PATH ...] [--out MD]

A development tool, not part of the installed package. ``CROSSVAL_RUN`` is a ``wsiviewer
train --crossval`` run (``recipe.json``, ``folds.json``, ``fold-k.json`` and
``fold-k.safetensors``). Every patient is a unit as a slide under analysis is one: the 256 (at
most) patches the analysis samples from a slide's tissue (:func:`~wsiviewer.training.ood_fit.
patient_samples`), raw colours. For each fold, each candidate is fitted on the training
patients' units and scores the held-out ones, so every patient gets an out-of-fold score; the
threshold of a candidate is the 99th percentile of those 222 scores (as the card's would be).

Units checked against the threshold (the model's point of view: colours standardised to the
fold's reference by the slide's own lookup table, as in analysis):

- ``--slide``: slides sampled as ``analyze`` samples them (the default card's grid and tissue
  detection), scored by every fold (the table gives the median score and how many of the 5
  folds flag it);
- ``--rebuilt``: training patients rebuilt as slides (``benchmarks/analyze.py`` writes them),
  scored by the fold that never saw the patient: they must not be flagged;
- stain shifts of 8 held-out patients per fold (40 in all), made with scikit-image's H&E-DAB
  colour deconvolution: greyscale, haematoxylin only, and eosin replaced by DAB (an IHC-like
  brown). The table gives the share flagged.

Candidates:

- patch level (a slide's score is the median, or the 90th percentile, of its patches'):
  ``features, class Gaussians`` is the shipped method (:mod:`wsiviewer.core.model.ood`:
  Mahalanobis distance in the network's penultimate features, Lee et al. 2018); ``block k,
  Gaussian``: one Gaussian over each residual block's channel means and standard deviations;
  ``features, kNN``: distance to the 10th nearest training patch in cosine distance (Sun et
  al. 2022); ``descriptors, kNN``: hand-made stain and texture descriptors of the tissue px
  (haematoxylin and eosin percentiles, local binary patterns at 3 radii, gradient);
- slide level (one Gaussian over the units' summaries: mean and quartiles of each column,
  Ledoit-Wolf shrinkage): the same views, and the raw colour percentiles of the tissue (the
  statistics the colour standardisation maps: the stain check the card carries,
  :mod:`wsiviewer.core.model.stain_check`).

Nothing is written but ``--out``; the patches are the dataset's (never committed).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from skimage.color import hed2rgb, rgb2gray, rgb2hed
from skimage.feature import local_binary_pattern

from wsiviewer.core.analysis.patches import PatchReader
from wsiviewer.core.analysis.pipeline import analyze, sample_patches
from wsiviewer.core.atomic import atomic_write_text
from wsiviewer.core.model.cards import resolve_model
from wsiviewer.core.model.colour import (
    ColourReference,
    apply_table,
    lookup_table,
    slide_quantiles,
)
from wsiviewer.core.model.networks import build_model
from wsiviewer.core.model.ood import fit_ood
from wsiviewer.core.model.predictor import Predictor
from wsiviewer.core.model.stain_check import fit_stain_check, ledoit_wolf, stain_statistics
from wsiviewer.core.progress import run_to_end
from wsiviewer.core.slides import open_slide
from wsiviewer.training.crossval import PatientFolds
from wsiviewer.training.dataset import load_patch_set
from wsiviewer.training.ood_fit import patient_samples

#: Percentile of the out-of-fold scores that is a candidate's threshold.
PERCENTILE = 99.0
#: Held-out patients per fold given each stain shift.
SHIFTED_PER_FOLD = 8
SHIFTS = ("greyscale", "haematoxylin only", "eosin → DAB")
#: Neighbour whose distance is a kNN score.
NEIGHBOUR = 10
#: Most training patches a kNN bank holds.
BANK = 20_000


# --------------------------------------------------------------------------- views of a unit


@torch.inference_mode()
def block_features(model: torch.nn.Module, pixels: np.ndarray, norm: dict) -> list[np.ndarray]:
    """Per residual block, ``(N, 2C)``: each channel's spatial mean and standard deviation
    (the last block's means are the penultimate features)."""
    model.eval()
    blocks = [m for m in model.features if type(m).__name__ == "BasicBlock"]
    captured: dict[int, torch.Tensor] = {}
    hooks = [
        block.register_forward_hook(lambda _m, _i, out, k=k: captured.__setitem__(k, out))
        for k, block in enumerate(blocks)
    ]
    mean = torch.tensor(norm["mean"], dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(norm["std"], dtype=torch.float32).view(1, 3, 1, 1)
    out: list[list[np.ndarray]] = [[] for _ in blocks]
    try:
        for start in range(0, len(pixels), 512):
            batch = np.ascontiguousarray(pixels[start : start + 512])
            x = torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255.0
            model((x - mean) / std)
            for k, activation in captured.items():
                stats = torch.cat([activation.mean((2, 3)), activation.std((2, 3))], 1)
                out[k].append(stats.double().numpy())
    finally:
        for hook in hooks:
            hook.remove()
    return [np.concatenate(parts) for parts in out]


def descriptors(pixels: np.ndarray) -> np.ndarray:
    """``(N, 38)`` stain and texture descriptors of each patch's tissue px."""
    rows = []
    for patch in pixels:
        glass = (patch.min(-1) >= 200) & (np.ptp(patch, -1) < 30)
        keep = ~glass if (~glass).sum() > 20 else np.ones_like(glass)
        hed = rgb2hed(patch)
        grey = (rgb2gray(patch) * 255).astype(np.uint8)
        row = [glass.mean()]
        for channel in (0, 1):
            row += list(np.percentile(hed[..., channel][keep], [10, 50, 90]))
        for radius in (1, 2, 4):
            codes = local_binary_pattern(grey, 8, radius, "uniform")[keep].astype(int)
            row += list(np.bincount(codes, minlength=10) / len(codes))
        gy, gx = np.gradient(grey / 255.0)
        magnitude = np.hypot(gx, gy)[keep]
        row += [magnitude.mean(), np.percentile(magnitude, 90)]
        rows.append(row)
    return np.asarray(rows)


def colour_percentiles(raw: np.ndarray) -> np.ndarray:
    """``(1, 21)``: the tissue's R, G and B percentiles before standardisation."""
    return stain_statistics(slide_quantiles(raw))[None]


def shifted(pixels: np.ndarray, shift: str) -> np.ndarray:
    """``pixels`` stained otherwise (see the module's docstring)."""
    if shift == "greyscale":
        return np.repeat(pixels.mean(-1, keepdims=True).astype(np.uint8), 3, axis=-1)
    hed = rgb2hed(pixels)
    if shift == "haematoxylin only":
        hed[..., 1] = 0
    else:
        hed[..., 2], hed[..., 1] = hed[..., 1], 0.1 * hed[..., 1]
    return (np.clip(hed2rgb(hed), 0, 1) * 255).astype(np.uint8)


# --------------------------------------------------------------------------- candidates


def gaussian(train: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """Squared Mahalanobis distance to ``train``'s Gaussian, in units of its median."""
    mean, scale = train.mean(0), train.std(0) + 1e-9
    precision = np.linalg.pinv(ledoit_wolf((train - mean) / scale))

    def distance(x: np.ndarray) -> np.ndarray:
        z = (x - mean) / scale
        return np.einsum("nk,kl,nl->n", z, precision, z)

    unit = float(np.median(distance(train)))
    return lambda x: distance(x) / unit


def knn(train: np.ndarray, cosine: bool) -> Callable[[np.ndarray], np.ndarray]:
    """Distance to the :data:`NEIGHBOUR`-th nearest of up to :data:`BANK` training rows
    (cosine, or Euclidean on standardised columns), in units of the training median."""
    rng = np.random.default_rng(0)
    pick = rng.choice(len(train), min(BANK, len(train)), replace=False)
    mean, scale = train.mean(0), train.std(0) + 1e-9

    def prepare(x: np.ndarray) -> np.ndarray:
        if cosine:
            return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-9)
        return (x - mean) / scale

    bank = prepare(train[pick])
    bank_norms = (bank**2).sum(1)

    def distance(x: np.ndarray, skip_self: bool = False) -> np.ndarray:
        y = prepare(x)
        out = []
        for start in range(0, len(y), 1000):
            chunk = y[start : start + 1000]
            d2 = (chunk**2).sum(1)[:, None] - 2 * chunk @ bank.T + bank_norms[None]
            kth = np.sort(np.maximum(d2, 0), axis=1)[:, NEIGHBOUR - 1 + int(skip_self)]
            out.append(np.sqrt(kth))
        return np.concatenate(out)

    unit = float(np.median(distance(train[pick[:3000]], skip_self=True)))
    return lambda x: distance(x) / unit


def summary(rows: np.ndarray) -> np.ndarray:
    """A unit's columns summarised: mean and quartiles (a unit of one row is that row)."""
    if len(rows) == 1:
        return rows[0]
    return np.concatenate([rows.mean(0), *np.percentile(rows, [25, 75], axis=0)])


@dataclass(frozen=True)
class Candidate:
    name: str
    view: str
    #: ``patch`` (a unit's score is a statistic of its patches') or ``slide``.
    level: str
    fit: Callable[[np.ndarray, np.ndarray], Callable[[np.ndarray], np.ndarray]]


def _class_gaussians(rows: np.ndarray, labels: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    half = rows.shape[1] // 2  # the channel means: the penultimate features
    model = fit_ood(rows[:, :half], labels)
    return lambda x: model.patch_scores(x[:, :half])


def _features_knn(rows: np.ndarray, _labels: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    half = rows.shape[1] // 2
    scorer = knn(rows[:, :half], cosine=True)
    return lambda x: scorer(x[:, :half])


CANDIDATES = (
    Candidate("features, class Gaussians (shipped method)", "block 3", "patch", _class_gaussians),
    Candidate("block 1, Gaussian", "block 1", "patch", lambda x, _: gaussian(x)),
    Candidate("block 2, Gaussian", "block 2", "patch", lambda x, _: gaussian(x)),
    Candidate("block 3, Gaussian", "block 3", "patch", lambda x, _: gaussian(x)),
    Candidate("features, kNN", "block 3", "patch", _features_knn),
    Candidate("descriptors, kNN", "descriptors", "patch", lambda x, _: knn(x, False)),
    Candidate("block 1 summary", "block 1", "slide", lambda x, _: gaussian(x)),
    Candidate("block 2 summary", "block 2", "slide", lambda x, _: gaussian(x)),
    Candidate("block 3 summary", "block 3", "slide", lambda x, _: gaussian(x)),
    Candidate("descriptors summary", "descriptors", "slide", lambda x, _: gaussian(x)),
    Candidate(
        "raw colour percentiles (the shipped stain check)",
        "colour",
        "slide",
        lambda x, _: fit_stain_check(x).distances,
    ),
)
STATISTICS = {"median": np.median, "p90": lambda v: np.percentile(v, 90)}


# --------------------------------------------------------------------------- units


@dataclass
class Unit:
    raw: np.ndarray
    labels: np.ndarray | None = None
    #: Views that do not depend on the fold (descriptors on the card reference's colours).
    fixed: dict[str, np.ndarray] | None = None


def sample_slide(spec: str) -> tuple[str, np.ndarray]:
    """A slide's tissue sample as ``analyze`` draws it; ``spec`` is ``PATH[@MPP]``."""
    path, _, mpp = spec.partition("@")
    card = resolve_model(None)
    with open_slide(path) as slide, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        resolved = slide.resolve_mpp(float(mpp) if mpp else None)
        analysis = run_to_end(analyze(slide, Predictor(card, "cpu"), mpp=resolved))
        sample = sample_patches(PatchReader(slide, analysis.grid), analysis.probability_map.tissue)
    label = Path(path).stem + (f" @{mpp} µm/px" if mpp else "")
    return label, sample


def fixed_views(raw: np.ndarray, reference: ColourReference) -> dict[str, np.ndarray]:
    standard = apply_table(raw, lookup_table(slide_quantiles(raw), reference))
    return {"descriptors": descriptors(standard), "colour": colour_percentiles(raw)}


@dataclass(frozen=True)
class _FoldViews:
    """A unit's views through one fold's model: its colours standardised to the fold's
    reference by its own lookup table, as in analysis."""

    model: torch.nn.Module
    norm: dict
    reference: ColourReference

    def __call__(self, unit: Unit) -> dict[str, np.ndarray]:
        table = lookup_table(slide_quantiles(unit.raw), self.reference)
        blocks = block_features(self.model, apply_table(unit.raw, table), self.norm)
        assert unit.fixed is not None
        return {**{f"block {k + 1}": rows for k, rows in enumerate(blocks)}, **unit.fixed}


# --------------------------------------------------------------------------- survey


def survey(idc: Path, run: Path, slides: list[str], rebuilt: dict[str, str]) -> dict:
    patch_set = load_patch_set(idc)
    folds = PatientFolds.load(run / "folds.json")
    recipe = json.loads((run / "recipe.json").read_text())["settings"]
    card_reference = resolve_model(None).colour
    assert card_reference is not None
    samples = patient_samples(patch_set)
    print(f"{len(samples)} patients; describing their samples ...", file=sys.stderr)
    units = {
        p: Unit(
            patch_set.pixels[i],
            patch_set.labels[i],
            fixed_views(patch_set.pixels[i], card_reference),
        )
        for p, i in samples.items()
    }
    others: dict[str, Unit] = {}
    for spec in slides:
        label, raw = sample_slide(spec)
        others[label] = Unit(raw, fixed=fixed_views(raw, card_reference))
    rebuilt_units = {}
    for patient, path in rebuilt.items():
        _, raw = sample_slide(path)
        rebuilt_units[patient] = Unit(raw, fixed=fixed_views(raw, card_reference))
    rng = np.random.default_rng(0)
    shifted_units: dict[tuple[str, str], Unit] = {}
    chosen = {
        k: rng.choice(fold, min(SHIFTED_PER_FOLD, len(fold)), replace=False)
        for k, fold in enumerate(folds.folds)
    }
    for patients in chosen.values():
        for patient in patients:
            for shift in SHIFTS:
                raw = shifted(units[patient].raw, shift)
                shifted_units[(patient, shift)] = Unit(raw, fixed=fixed_views(raw, card_reference))

    keys = [(c.name, s) for c in CANDIDATES for s in (STATISTICS if c.level == "patch" else [""])]
    oof: dict = {k: {} for k in keys}
    other: dict = {k: {label: [] for label in others} for k in keys}
    rebuilt_scores: dict = {k: {} for k in keys}
    shifted_scores: dict = {k: {} for k in keys}
    for fold, held in enumerate(folds.folds):
        print(f"fold {fold} ...", file=sys.stderr)
        record = json.loads((run / f"fold-{fold}.json").read_text())
        model = build_model(recipe["architecture"], recipe["architecture_args"])
        model.load_state_dict(load_file(run / f"fold-{fold}.safetensors", device="cpu"))
        reference = ColourReference.from_dict(record["colour"])
        norm = record["normalization"]

        views = _FoldViews(model, norm, reference)
        training = [views(units[p]) for p in folds.training(fold)]
        labels = np.concatenate([units[p].labels for p in folds.training(fold)])
        scored = {("oof", p): views(units[p]) for p in held}
        scored |= {("other", label): views(u) for label, u in others.items()}
        scored |= {("rebuilt", p): views(u) for p, u in rebuilt_units.items() if p in held}
        scored |= {
            ("shifted", key): views(u) for key, u in shifted_units.items() if key[0] in chosen[fold]
        }
        for candidate in CANDIDATES:
            if candidate.level == "patch":
                rows = np.concatenate([t[candidate.view] for t in training])
                scorer = candidate.fit(rows, labels)
            else:
                rows = np.stack([summary(t[candidate.view]) for t in training])
                scorer = candidate.fit(rows, labels)
            for (kind, name), unit_views in scored.items():
                if candidate.level == "patch":
                    patch_scores = scorer(unit_views[candidate.view])
                    values = {s: float(f(patch_scores)) for s, f in STATISTICS.items()}
                else:
                    values = {"": float(scorer(summary(unit_views[candidate.view])[None])[0])}
                for statistic, value in values.items():
                    key = (candidate.name, statistic)
                    if kind == "oof":
                        oof[key][name] = value
                    elif kind == "other":
                        other[key][name].append(value)
                    elif kind == "rebuilt":
                        rebuilt_scores[key][name] = value
                    else:
                        shifted_scores[key][name] = value
    rows = []
    for key in keys:
        values = np.array(list(oof[key].values()))
        threshold = float(np.percentile(values, PERCENTILE))
        rows.append(
            {
                "candidate": key[0],
                "statistic": key[1],
                "median": float(np.median(values)),
                "threshold": threshold,
                "max": float(values.max()),
                "slides": {
                    label: [float(np.median(v)), int(sum(x > threshold for x in v)), len(v)]
                    for label, v in other[key].items()
                },
                "rebuilt": {p: [v, v > threshold] for p, v in rebuilt_scores[key].items()},
                "shifts": {
                    shift: float(
                        np.mean(
                            [
                                v > threshold
                                for (_, s), v in shifted_scores[key].items()
                                if s == shift
                            ]
                        )
                    )
                    for shift in SHIFTS
                },
            }
        )
    return {
        "rows": rows,
        "patients": len(units),
        "shifted_patients": sum(map(len, chosen.values())),
    }


def table(result: dict) -> list[str]:
    rows = result["rows"]
    slides = list(rows[0]["slides"])
    rebuilt = list(rows[0]["rebuilt"])
    head = ["candidate", "slide score", "out of fold: median / threshold / max"]
    head += [f"{s} (folds flagging)" for s in slides]
    head += [f"rebuilt {p}" for p in rebuilt]
    head += [f"{s} flagged" for s in SHIFTS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["candidate"], r["statistic"] or "summary"]
        cells.append(f"{r['median']:.2f} / {r['threshold']:.2f} / {r['max']:.2f}")
        for s in slides:
            score, flagged, total = r["slides"][s]
            cells.append(f"{score:.2f} ({flagged}/{total})")
        for p in rebuilt:
            score, flagged = r["rebuilt"].get(p, [math.nan, False])
            cells.append(f"{score:.2f}" + (" **flagged**" if flagged else ""))
        cells += [f"{r['shifts'][s]:.0%}" for s in SHIFTS]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("idc", type=Path)
    parser.add_argument("run", type=Path)
    parser.add_argument("--slide", action="append", default=[], metavar="PATH[@MPP]")
    parser.add_argument("--rebuilt", action="append", default=[], metavar="PATIENT=PATH")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    rebuilt = dict(spec.split("=", 1) for spec in args.rebuilt)
    result = survey(args.idc, args.run, args.slide, rebuilt)
    lines = table(result)
    print("\n".join(lines))
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=1) + "\n")
    if args.out:
        header = [
            "# Out-of-distribution candidates",
            "",
            f"Written by `tools/ood_survey.py` (its docstring says how each candidate is fitted). "
            f"Out of fold over {result['patients']} patients; a candidate's threshold is the "
            f"{PERCENTILE:g}th percentile of their scores. Slides: median score over the 5 fold "
            "models, and how many of them flag it. Rebuilt patients: scored by the fold that "
            f"never saw them. Stain shifts: share of {result['shifted_patients']} held-out "
            "patients flagged. Scores are in units of the training median (patch level) or "
            "of the training patients' median (slide level).",
            "",
        ]
        atomic_write_text(args.out, "\n".join(header + lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
