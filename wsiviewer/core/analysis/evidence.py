"""The evidence behind a region: its patches as the model saw them, read afresh from the slide.

A region's probabilities come from the patches of its cells. :func:`pick_cells` chooses the
cells to show (the highest probabilities and a few of the lowest); :class:`EvidenceReader`
reads each one twice from the slide: at the model's input (50×50 px at its µm/px, the slide's
colour standardisation applied as in the analysis) and at the slide's own resolution. Nothing
is cached from the analysis: a stored analysis is explained from its slide and its map.

On a dense map (cells of a k-th of a patch) the patch shown for a cell is the one centred on
it; on the default map a cell is a patch.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

import numpy as np

from wsiviewer.core.analysis.grid import PatchGrid
from wsiviewer.core.analysis.patches import PatchReader
from wsiviewer.core.analysis.pipeline import sample_patches
from wsiviewer.core.analysis.probability import ProbabilityMap
from wsiviewer.core.model.cards import ModelCard
from wsiviewer.core.model.colour import apply_table, lookup_table, slide_quantiles
from wsiviewer.core.slides import Slide

#: Longest side, px, of a patch read at the slide's own resolution: 200 µm is 800 px at
#: 0.25 µm/px (40x); a coarser picture is read for slides finer than that.
NATIVE_MAX_PX = 800

#: What a shown patch is: one of the region's highest, one of its lowest, or asked for.
EvidenceKind = Literal["top", "lowest", "point"]


@dataclass(frozen=True)
class EvidencePatch:
    """One patch of a region's evidence."""

    #: The cell it explains.
    grid_rc: tuple[int, int]
    kind: EvidenceKind
    #: The map's P(IDC) at the cell (spatial context included, if the card has it).
    probability: float
    #: Level-0 ``(x, y, width, height)`` of the patch (centred on the cell).
    l0_box: tuple[float, float, float, float]
    #: The cell's centre in µm from the slide's top-left corner, ``(x, y)``.
    um_centre: tuple[float, float]
    #: ``(n, n, 3) uint8``: what the model saw (the card's input px, colours standardised).
    model_input: np.ndarray
    #: ``(h, w, 3) uint8``: the same patch at the slide's resolution (≤ NATIVE_MAX_PX).
    native: np.ndarray
    #: µm per px of :attr:`native`.
    native_um_per_px: float
    #: µm per px of :attr:`model_input` (the model's input resolution).
    model_um_per_px: float
    #: P(IDC) of this patch alone (no context), ``None`` until scored.
    patch_probability: float | None = None


def pick_cells(
    probability_map: ProbabilityMap, grid_cells: np.ndarray, top: int = 8, lowest: int = 3
) -> list[tuple[tuple[int, int], EvidenceKind]]:
    """The cells to show of ``grid_cells`` (``(N, 2)`` row, col): the ``top`` highest P(IDC)
    first (highest first), then the ``lowest`` lowest (lowest first) of the rest. Cells
    without a score (no tissue) are left out; ties go to the cell first in reading order.

    On a dense map (cells of a k-th of a patch) the patches shown do not overlap: a cell
    closer than k cells (in rows or columns) to one already chosen is passed over, so the
    evidence is not four views of one spot.
    """
    cells = np.asarray(grid_cells, dtype=np.int64).reshape(-1, 2)
    if len(cells) == 0:
        return []
    values = probability_map.probabilities[cells[:, 0], cells[:, 1]]
    scored = np.isfinite(values) & probability_map.tissue[cells[:, 0], cells[:, 1]]
    cells, values = cells[scored], values[scored]
    spacing = probability_map.grid.subdivision
    highest_first = np.lexsort((cells[:, 1], cells[:, 0], -values))
    lowest_first = np.lexsort((cells[:, 1], cells[:, 0], values))
    taken: list[np.ndarray] = []

    def spread(order: np.ndarray, count: int) -> list[tuple[int, int]]:
        picked: list[tuple[int, int]] = []
        for index in order:
            if len(picked) >= count:
                break
            cell = cells[index]
            if any(np.abs(cell - other).max() < spacing for other in taken):
                continue
            taken.append(cell)
            picked.append((int(cell[0]), int(cell[1])))
        return picked

    chosen: list[tuple[tuple[int, int], EvidenceKind]] = [
        (cell, "top") for cell in spread(highest_first, top)
    ]
    chosen += [(cell, "lowest") for cell in spread(lowest_first, lowest)]
    return chosen


#: Colour tables of recent analyses, by slide, card, grid and tissue cells (oldest first).
_COLOUR_TABLES: dict[tuple[str, str, PatchGrid, str], np.ndarray] = {}
_COLOUR_TABLES_KEPT = 8


class EvidenceReader:
    """Reads evidence patches of one analysed slide.

    Parameters
    ----------
    slide
        The slide the analysis was made of.
    probability_map
        The analysis's map (its grid and tissue cells; the colour standardisation is fitted
        on a sample of those cells, as in the analysis).
    card
        The analysis's card (its ``colour`` and input size); ``None`` for a model that is not
        installed: patches are then shown as read.
    """

    def __init__(
        self, slide: Slide, probability_map: ProbabilityMap, card: ModelCard | None
    ) -> None:
        self.slide = slide
        self.probability_map = probability_map
        self.grid: PatchGrid = probability_map.grid
        self.card = card
        self.reader = PatchReader(slide, self.grid)
        self._table: np.ndarray | None = None
        self._table_fitted = False

    @property
    def colour_table(self) -> np.ndarray | None:
        """The slide's colour lookup table (``None`` when the card has no ``colour``).

        Fitting it reads the slide's sample of 256 tissue patches (0.47 s of the 0.56 s a
        region's evidence takes on a 40x slide), so the tables of the last few analyses are
        kept: stepping from region to region reads only the regions' own patches.
        """
        if not self._table_fitted:
            self._table_fitted = True
            tissue = self.probability_map.tissue
            if self.card is not None and self.card.colour is not None and tissue.any():
                key = (
                    self.slide.identity,
                    self.card.card_sha256,
                    self.grid,
                    hashlib.sha256(np.packbits(tissue).tobytes()).hexdigest(),
                )
                table = _COLOUR_TABLES.get(key)
                if table is None:
                    sample = sample_patches(self.reader, tissue)
                    table = lookup_table(slide_quantiles(sample), self.card.colour)
                    while len(_COLOUR_TABLES) >= _COLOUR_TABLES_KEPT:
                        _COLOUR_TABLES.pop(next(iter(_COLOUR_TABLES)))
                    _COLOUR_TABLES[key] = table
                self._table = table
        return self._table

    def l0_patch_box(self, grid_rc: tuple[int, int]) -> tuple[float, float, float, float]:
        """Level-0 ``(x, y, width, height)`` of the patch centred on a cell."""
        grid = self.grid
        ((l0_x, l0_y),) = grid.l0_centres(np.array([grid_rc[0]]), np.array([grid_rc[1]]))
        size = grid.l0_patch_size
        return (l0_x - size / 2, l0_y - size / 2, size, size)

    def model_input(self, grid_rc: tuple[int, int]) -> np.ndarray:
        """``(n, n, 3) uint8``: the patch centred on a cell as the model sees it."""
        n = self.grid.input_size
        # The reader's level, area-averaged: on the default grid, the pixels the analysis read.
        patch = self.slide.read_l0_box(self.l0_patch_box(grid_rc), (n, n), level=self.reader.level)
        table = self.colour_table
        return patch if table is None else apply_table(patch[None], table)[0]

    def native(self, grid_rc: tuple[int, int]) -> tuple[np.ndarray, float]:
        """The patch centred on a cell at the slide's level-0 resolution (or, past
        :data:`NATIVE_MAX_PX`, the finest picture of that size) and its µm per px."""
        box = self.l0_patch_box(grid_rc)
        side = max(1, min(round(box[2]), NATIVE_MAX_PX))
        um_per_px = box[2] * self.grid.slide_mpp / side
        return self.slide.read_l0_box(box, (side, side)), um_per_px

    def read(self, grid_rc: tuple[int, int], kind: EvidenceKind) -> EvidencePatch:
        """One :class:`EvidencePatch` (not yet scored alone)."""
        row, col = grid_rc
        ((l0_x, l0_y),) = self.grid.l0_centres(np.array([row]), np.array([col]))
        native, um_per_px = self.native(grid_rc)
        return EvidencePatch(
            grid_rc=(row, col),
            kind=kind,
            probability=float(self.probability_map.probabilities[row, col]),
            l0_box=self.l0_patch_box(grid_rc),
            um_centre=(l0_x * self.grid.slide_mpp, l0_y * self.grid.slide_mpp),
            model_input=self.model_input(grid_rc),
            native=native,
            native_um_per_px=um_per_px,
            model_um_per_px=self.grid.model_mpp,
        )
