"""The IDC patch dataset's layout, and complete patients rebuilt as slides.

The dataset (Janowczyk & Madabhushi 2016) is ``<patient>/<0|1>/<patient>_idx5_x<X>_y<Y>_class<C>``
with ``.png`` (the original) or lossless ``.webp``. ``X``, ``Y`` are the patch's top-left
corner on the patient's slide downsampled 16:1 (≈4 µm/px), on a 50 px grid offset by 1, so a
rebuilt slide places a patch at ``x - 1, y - 1`` (DESIGN.md, Frames) and a
:class:`~wsiviewer.core.analysis.grid.PatchGrid` from (0, 0) lands exactly on the patches.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wsiviewer.errors import DatasetError

#: Patch side in px at the dataset's resolution.
PATCH_SIZE = 50
#: The dataset's resolution: 40x scans (≈0.25 µm/px) downsampled 16:1.
DATASET_MPP = 4.0
#: The 50 px grid of patch origins is offset by this many px.
GRID_OFFSET = 1

_PATCH_NAME = re.compile(
    r"^(?P<patient>[^_/]+)_idx5_x(?P<x>\d+)_y(?P<y>\d+)_class(?P<label>[01])\.(?:png|webp)$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class PatchFile:
    """One patch file of the dataset and what its name says."""

    path: Path
    patient: str
    #: Top-left corner on the patient's downsampled slide, as in the file name.
    x: int
    y: int
    label: int

    @property
    def rebuilt_xy(self) -> tuple[int, int]:
        """Top-left corner in a rebuilt slide at the dataset's resolution."""
        return self.x - GRID_OFFSET, self.y - GRID_OFFSET

    @property
    def grid_rc(self) -> tuple[int, int]:
        """``(row, col)`` of the patch on a grid of 50 px cells from (0, 0)."""
        x, y = self.rebuilt_xy
        return y // PATCH_SIZE, x // PATCH_SIZE


def parse_patch_name(path: Path) -> PatchFile | None:
    """The patch described by a dataset file name, or ``None`` for any other file."""
    match = _PATCH_NAME.match(path.name)
    if match is None:
        return None
    return PatchFile(
        path=path,
        patient=match["patient"],
        x=int(match["x"]),
        y=int(match["y"]),
        label=int(match["label"]),
    )


def iter_patch_files(folder: Path) -> Iterator[PatchFile]:
    """Every patch file under ``folder`` (any depth), de-duplicated by file name, sorted."""
    if not folder.is_dir():
        raise DatasetError(f"IDC dataset folder not found: {folder}")
    seen: set[str] = set()
    for path in sorted(folder.rglob("*")):
        patch = parse_patch_name(path)
        if patch is None or path.name in seen:
            continue
        seen.add(path.name)
        yield patch


def read_patch(path: Path) -> np.ndarray:
    """A patch as ``(h, w, 3) uint8`` RGB (edge patches may be smaller than 50×50)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, UnidentifiedImageError) as exc:
        raise DatasetError(f"Unreadable patch file {path}: {exc}") from exc


def pad_patch(pixels: np.ndarray, size: int = PATCH_SIZE) -> np.ndarray:
    """Pad a smaller edge patch to ``size``×``size`` with white at the bottom and right."""
    height, width = pixels.shape[:2]
    if height == size and width == size:
        return pixels
    out = np.full((size, size, 3), 255, dtype=np.uint8)
    out[: min(height, size), : min(width, size)] = pixels[:size, :size]
    return out


@dataclass
class RebuiltPatient:
    """A complete patient's patches tiled back into one slide at the dataset's resolution."""

    patient: str
    #: ``(H, W, 3) uint8`` at :data:`DATASET_MPP`, white where the dataset has no patch.
    pixels: np.ndarray
    patches: list[PatchFile]

    @property
    def grid_shape(self) -> tuple[int, int]:
        """``(rows, cols)`` of the 50 px cells covering :attr:`pixels`."""
        height, width = self.pixels.shape[:2]
        return -(-height // PATCH_SIZE), -(-width // PATCH_SIZE)

    def label_grid(self) -> np.ndarray:
        """``(rows, cols) int8``: 1 IDC, 0 non-IDC, -1 where the dataset has no patch."""
        labels = np.full(self.grid_shape, -1, dtype=np.int8)
        for patch in self.patches:
            labels[patch.grid_rc] = patch.label
        return labels


def rebuild_patient(
    patient_dir: Path, patches: Iterable[PatchFile] | None = None
) -> RebuiltPatient:
    """Tile a patient's patches back into its downsampled slide (white background)."""
    patch_list = list(patches if patches is not None else iter_patch_files(patient_dir))
    if not patch_list:
        raise DatasetError(f"No IDC patch files found in {patient_dir}")
    images = [read_patch(patch.path) for patch in patch_list]
    width = max(p.rebuilt_xy[0] + img.shape[1] for p, img in zip(patch_list, images, strict=True))
    height = max(p.rebuilt_xy[1] + img.shape[0] for p, img in zip(patch_list, images, strict=True))
    pixels = np.full((height, width, 3), 255, dtype=np.uint8)
    for patch, image in zip(patch_list, images, strict=True):
        x, y = patch.rebuilt_xy
        pixels[y : y + image.shape[0], x : x + image.shape[1]] = image
    return RebuiltPatient(patient_dir.name, pixels, patch_list)
