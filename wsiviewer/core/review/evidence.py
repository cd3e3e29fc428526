"""Why was a region flagged: its evidence patches and their saliency, for the review panel, the
``explain`` command and the report.

A region (as the reviewer sees it: a model region, or one drawn, imported or edited) is the
tissue cells whose centres lie inside its outline; :func:`region_evidence` reads the patches
of its highest cells and a few of its lowest from the slide (:mod:`.analysis.evidence`) and
scores each patch alone with the analysis's model. :func:`point_evidence` does the same for
the cell under a point. Saliency (:mod:`.model.saliency`) is computed on demand and cached per
analysis in the data directory (:class:`SaliencyCache`), keyed by the patch's pixels, so a map
is never shown for other pixels than the ones it was computed from.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
from collections.abc import Generator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import shapely
from shapely.geometry import Polygon

from wsiviewer.core.analysis.evidence import (
    EvidencePatch,
    EvidenceReader,
    pick_cells,
)
from wsiviewer.core.analysis.probability import ProbabilityMap
from wsiviewer.core.atomic import atomic_write_bytes
from wsiviewer.core.model.cards import ModelCard
from wsiviewer.core.review.log import ReviewItem
from wsiviewer.core.slides import Slide
from wsiviewer.core.store.database import Store
from wsiviewer.core.store.records import AnalysisRecord
from wsiviewer.errors import ReviewError

if TYPE_CHECKING:
    from wsiviewer.core.model.saliency import SaliencyExplainer
    from wsiviewer.core.model.saliency_maps import SaliencyMaps

#: Patches shown of a region: its highest, and a few of its lowest.
TOP_PATCHES = 8
LOWEST_PATCHES = 3


@dataclass(frozen=True)
class RegionEvidence:
    """The evidence of one region (or of the cell under a point)."""

    analysis_id: int
    #: The region's label in its region set (``"3"``, ``"M4"``), or ``None`` for a point.
    region_label: str | None
    #: Tissue cells in the region.
    cell_count: int
    patches: tuple[EvidencePatch, ...]
    #: The card that scored the patches alone; ``None`` if it is not installed.
    card: ModelCard | None

    @property
    def title(self) -> str:
        if self.region_label is None:
            return "The patch at the point"
        return f"Region {self.region_label}"


def region_cells(probability_map: ProbabilityMap, polygon: Polygon) -> np.ndarray:
    """``(N, 2)`` grid ``(row, col)`` of the tissue cells whose centres lie inside
    ``polygon`` (level-0 px), in reading order."""
    grid = probability_map.grid
    if polygon.is_empty or grid.cell_count == 0:
        return np.zeros((0, 2), dtype=np.int64)
    rows, cols = grid.cells_overlapping(polygon.bounds)
    tissue = probability_map.tissue[rows, cols]
    local = np.argwhere(tissue)
    cells = local + np.array([rows.start, cols.start])
    if len(cells) == 0:
        return cells.astype(np.int64)
    centres = grid.l0_centres(cells[:, 0], cells[:, 1])
    inside = shapely.contains_xy(polygon, centres[:, 0], centres[:, 1])
    return cells[inside].astype(np.int64)


def score_alone(patches: list[EvidencePatch], card: ModelCard | None) -> list[EvidencePatch]:
    """``patches`` with :attr:`EvidencePatch.patch_probability`: each patch scored alone by
    ``card``'s model (eager torch on the CPU: a few patches); unchanged without a card."""
    if card is None or not patches:
        return patches
    from wsiviewer.core.model.predictor import Predictor

    alone = Predictor(card, device="cpu", backend="torch").predict(
        np.stack([patch.model_input for patch in patches])
    )
    return [
        replace(patch, patch_probability=float(p)) for patch, p in zip(patches, alone, strict=True)
    ]


def region_evidence(
    store: Store,
    slide: Slide,
    analysis: AnalysisRecord,
    polygon: Polygon,
    region_label: str,
    card: ModelCard | None,
    *,
    top: int = TOP_PATCHES,
    lowest: int = LOWEST_PATCHES,
    probability_map: ProbabilityMap | None = None,
) -> Generator[tuple[int, int], None, RegionEvidence]:
    """The evidence of a region of ``analysis`` (its outline ``polygon`` in level-0 px).

    Yields ``(done, total)`` patches read; returns the :class:`RegionEvidence`.

    Raises
    ------
    ReviewError
        If the slide is not the analysis's slide.
    StoreError
        If the analysis's map cannot be read.
    SlideReadError
        If the slide's pixels cannot be read.
    """
    _check_slide(slide, analysis)
    if probability_map is None:
        probability_map = store.load_probability_map(analysis)
    cells = region_cells(probability_map, polygon)
    chosen = pick_cells(probability_map, cells, top, lowest)
    reader = EvidenceReader(slide, probability_map, card)
    patches: list[EvidencePatch] = []
    for grid_rc, kind in chosen:
        patches.append(reader.read(grid_rc, kind))
        yield len(patches), len(chosen)
    patches = score_alone(patches, card)
    return RegionEvidence(analysis.id, region_label, len(cells), tuple(patches), card)


def reviewed_evidence(
    slide: Slide,
    analysis: AnalysisRecord,
    probability_map: ProbabilityMap,
    items: Sequence[ReviewItem],
    card: ModelCard | None,
    *,
    top: int = 3,
    lowest: int = 0,
) -> list[RegionEvidence]:
    """The evidence of several regions of one analysis (the report's), read with one reader
    (the slide's colour standardisation fitted once)."""
    _check_slide(slide, analysis)
    reader = EvidenceReader(slide, probability_map, card)
    found = []
    for item in items:
        cells = region_cells(probability_map, item.polygon)
        chosen = pick_cells(probability_map, cells, top, lowest)
        patches = score_alone([reader.read(rc, kind) for rc, kind in chosen], card)
        found.append(RegionEvidence(analysis.id, item.label, len(cells), tuple(patches), card))
    return found


def point_evidence(
    store: Store,
    slide: Slide,
    analysis: AnalysisRecord,
    l0_xy: tuple[float, float],
    card: ModelCard | None,
    *,
    probability_map: ProbabilityMap | None = None,
) -> RegionEvidence:
    """The evidence of the cell under a level-0 point.

    Raises
    ------
    ReviewError
        If the point is outside the analysis's grid or on a cell without tissue, or the
        slide is not the analysis's slide.
    """
    _check_slide(slide, analysis)
    if probability_map is None:
        probability_map = store.load_probability_map(analysis)
    grid_rc = probability_map.grid.grid_rc_at(l0_xy)
    x, y = l0_xy
    if grid_rc is None:
        width, height = analysis.l0_dimensions
        raise ReviewError(
            f"Point ({x:g}, {y:g}) is outside the analysed slide ({width} × {height} level-0 px)"
        )
    if not probability_map.tissue[grid_rc]:
        raise ReviewError(f"Point ({x:g}, {y:g}) lies on a cell without tissue: nothing scored")
    patch = EvidenceReader(slide, probability_map, card).read(grid_rc, "point")
    patches = score_alone([patch], card)
    return RegionEvidence(analysis.id, None, 1, tuple(patches), card)


def _check_slide(slide: Slide, analysis: AnalysisRecord) -> None:
    if slide.identity != analysis.slide_identity:
        raise ReviewError(f"This slide is not the slide of analysis {analysis.id}")


class SaliencyCache:
    """Saliency maps of one analysis's patches, one compressed file per patch in the Store's
    folder ``root`` (``saliency/<analysis key>/<patch sha256>.npz``), written atomically.

    A file is found by the sha256 of the patch's model-input pixels and the card's sha256, so
    a cached map always belongs to the pixels it is shown on.
    """

    def __init__(self, root: Path, analysis: AnalysisRecord) -> None:
        self.folder = Path(root) / "saliency" / analysis.key
        self.card_sha256 = analysis.model.card_sha256

    def _path(self, patch: EvidencePatch) -> Path:
        digest = hashlib.sha256(self.card_sha256.encode())
        digest.update(np.ascontiguousarray(patch.model_input).tobytes())
        return self.folder / f"{digest.hexdigest()[:32]}.npz"

    def get(self, patch: EvidencePatch) -> SaliencyMaps | None:
        """The cached maps of a patch, ``None`` if none (or an unreadable file)."""
        from wsiviewer.core.model.saliency_maps import SaliencyMaps

        path = self._path(patch)
        try:
            with np.load(path, allow_pickle=False) as data:
                return SaliencyMaps(
                    data["gradcam"][None],
                    data["integrated_gradients"][None],
                    data["log_odds"].reshape(1),
                    data["convergence_delta"].reshape(1),
                )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError):
            # A damaged cache file is recomputed, never shown.
            return None

    def put(self, patch: EvidencePatch, maps: SaliencyMaps) -> None:
        buffer = io.BytesIO()
        np.savez_compressed(
            buffer,
            gradcam=maps.gradcam[0],
            integrated_gradients=maps.integrated_gradients[0],
            log_odds=maps.log_odds[:1],
            convergence_delta=maps.convergence_delta[:1],
        )
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self._path(patch), buffer.getvalue())


def patch_saliency(
    patches: Sequence[EvidencePatch],
    explainer: SaliencyExplainer,
    cache: SaliencyCache | None = None,
) -> Generator[tuple[int, int], None, list[SaliencyMaps]]:
    """The saliency maps of each patch (from ``cache`` where it has them; computed and cached
    otherwise). Yields ``(done, total)`` after each patch; closing the generator cancels.

    One patch at a time: explaining several in one captum call was no faster on the CPU
    (2.3 s for 11 patches either way), and a cancel comes sooner."""
    maps: list[SaliencyMaps] = []
    for done, patch in enumerate(patches, start=1):
        found = cache.get(patch) if cache is not None else None
        if found is None:
            found = explainer.explain(patch.model_input[None])
            if cache is not None:
                # A cache that cannot be written costs time, never the answer.
                with contextlib.suppress(OSError):
                    cache.put(patch, found)
        maps.append(found)
        yield done, len(patches)
    return maps
