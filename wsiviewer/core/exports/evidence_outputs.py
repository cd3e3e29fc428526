"""The files of ``wsiviewer explain``: a region's evidence as pictures and a table.

For a region named ``<name>`` (``region-3``, ``region-M4``, ``at-1200-3400``) of a slide
labelled ``<label>``:

- ``<label>_<name>_evidence.png``: the contact sheet (every patch, its saliency, legends);
- ``<label>_<name>_p<k>_input.png``, ``_native.png``, and with saliency ``_gradcam.png`` and
  ``_ig.png``: each patch's pictures, the model's input enlarged crisply ×4;
- ``<label>_<name>_evidence.csv``: one row per patch, header first (rank, kind, cell, level-0
  box, µm position, the map's P, the patch's P alone, the saliency's log-odds).

All are written together or not at all (:func:`~.files.write_staged`); an existing file is
never replaced unless asked.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from wsiviewer.core.exports.evidence_images import enlarge, evidence_sheet, saliency_rgb
from wsiviewer.core.exports.files import (
    finite_or_none,
    refuse_to_replace,
    write_staged,
    write_text,
)
from wsiviewer.core.exports.png import write_png
from wsiviewer.core.model.saliency_maps import SaliencyMaps

if TYPE_CHECKING:
    from wsiviewer.core.review.evidence import RegionEvidence

#: Enlargement of the model's input in the single-patch pictures (50 px → 200 px).
INPUT_ENLARGEMENT = 4

CSV_COLUMNS = (
    "rank",
    "kind",
    "grid_row",
    "grid_col",
    "l0_x",
    "l0_y",
    "l0_width",
    "l0_height",
    "x_um",
    "y_um",
    "map_probability",
    "patch_probability",
    "saliency_log_odds",
    "integrated_gradients_gap",
)


def evidence_file_names(label: str, name: str, patches: int, saliency: bool) -> list[str]:
    """The names of every file :func:`write_evidence` writes."""
    names = [f"{label}_{name}_evidence.png", f"{label}_{name}_evidence.csv"]
    kinds = ["input", "native"] + (["gradcam", "ig"] if saliency else [])
    for rank in range(1, patches + 1):
        names += [f"{label}_{name}_p{rank:02d}_{kind}.png" for kind in kinds]
    return names


def evidence_rows(
    evidence: RegionEvidence, maps: Sequence[SaliencyMaps] | None
) -> list[dict[str, Any]]:
    """One dict per patch, keys :data:`CSV_COLUMNS`."""
    rows = []
    for rank, patch in enumerate(evidence.patches, start=1):
        x, y, w, h = patch.l0_box
        rows.append(
            {
                "rank": rank,
                "kind": patch.kind,
                "grid_row": patch.grid_rc[0],
                "grid_col": patch.grid_rc[1],
                "l0_x": round(x, 1),
                "l0_y": round(y, 1),
                "l0_width": round(w, 1),
                "l0_height": round(h, 1),
                "x_um": round(patch.um_centre[0], 1),
                "y_um": round(patch.um_centre[1], 1),
                "map_probability": round(patch.probability, 6),
                "patch_probability": None
                if patch.patch_probability is None
                else round(patch.patch_probability, 6),
                "saliency_log_odds": None
                if maps is None
                else finite_or_none(round(float(maps[rank - 1].log_odds[0]), 6)),
                "integrated_gradients_gap": None
                if maps is None
                else finite_or_none(round(float(maps[rank - 1].convergence_delta[0]), 6)),
            }
        )
    return rows


def write_evidence(
    out_dir: str | os.PathLike[str],
    evidence: RegionEvidence,
    maps: Sequence[SaliencyMaps] | None,
    *,
    label: str,
    name: str,
    force: bool = False,
) -> dict[str, Path]:
    """Write the evidence of one region (see the module docstring); returns the paths.

    Raises
    ------
    OutputExistsError
        If one of the files exists already and ``force`` is false; nothing is written.
    ExportError
        If the folder or a file cannot be written; nothing is left then.
    """
    names = evidence_file_names(label, name, len(evidence.patches), maps is not None)
    if not force:
        refuse_to_replace(out_dir, names, "this explanation")
    about = {"Description": f"{evidence.title} of analysis {evidence.analysis_id}"}
    writers: dict[str, Callable[[Path], object]] = {
        f"{label}_{name}_evidence.png": lambda path: write_png(
            path, evidence_sheet(evidence, maps), extra=about
        ),
        f"{label}_{name}_evidence.csv": lambda path: _write_csv(path, evidence, maps),
    }
    for rank, patch in enumerate(evidence.patches, start=1):
        stem = f"{label}_{name}_p{rank:02d}"
        pictures: dict[str, np.ndarray] = {
            "input": enlarge(patch.model_input, INPUT_ENLARGEMENT),
            "native": patch.native,
        }
        if maps is not None:
            pictures["gradcam"] = enlarge(
                saliency_rgb(patch.model_input, maps[rank - 1].gradcam[0], "gradcam"),
                INPUT_ENLARGEMENT,
            )
            pictures["ig"] = enlarge(
                saliency_rgb(
                    patch.model_input,
                    maps[rank - 1].integrated_gradients[0],
                    "integrated_gradients",
                ),
                INPUT_ENLARGEMENT,
            )
        for kind, pixels in pictures.items():
            writers[f"{stem}_{kind}.png"] = _png_writer(pixels, about)
    return write_staged(out_dir, writers)


def _png_writer(pixels: np.ndarray, about: dict[str, str]) -> Callable[[Path], object]:
    return lambda path: write_png(path, pixels, extra=about)


def _write_csv(path: Path, evidence: RegionEvidence, maps: Sequence[SaliencyMaps] | None) -> Path:
    rows = evidence_rows(evidence, maps)

    def write(handle: Any) -> None:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({key: "" if value is None else value for key, value in row.items()})

    return write_text(path, write, newline="")
