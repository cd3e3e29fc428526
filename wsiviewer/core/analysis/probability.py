"""The probability map: one IDC probability per grid cell."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wsiviewer.core.analysis.grid import PatchGrid


@dataclass
class ProbabilityMap:
    """IDC probabilities on a :class:`PatchGrid`, filled in as analysis proceeds.

    ``probabilities[row, col]`` is the calibrated P(IDC) of cell ``(row, col)``, ``NaN`` where
    the cell is not tissue or not scored yet. ``tissue`` marks the cells analysis scores.
    """

    grid: PatchGrid
    probabilities: np.ndarray
    tissue: np.ndarray
    #: The patches' own probabilities before spatial context (the card's ``context``), when
    #: the map has context; ``None`` when :attr:`probabilities` are the patches' own.
    patch_probabilities: np.ndarray | None = None

    @classmethod
    def empty(cls, grid: PatchGrid, tissue: np.ndarray | None = None) -> ProbabilityMap:
        if tissue is None:
            tissue = np.zeros(grid.shape, dtype=bool)
        if tissue.shape != grid.shape:
            raise ValueError(f"Tissue cells {tissue.shape} do not match grid {grid.shape}")
        return cls(grid, np.full(grid.shape, np.nan, dtype=np.float32), tissue.astype(bool))

    @property
    def scored(self) -> np.ndarray:
        """``(rows, cols) bool``: cells that have a probability."""
        return ~np.isnan(self.probabilities)

    @property
    def scored_count(self) -> int:
        return int(self.scored.sum())

    @property
    def tissue_count(self) -> int:
        return int(self.tissue.sum())

    def above(self, threshold: float) -> np.ndarray:
        """``(rows, cols) bool``: scored cells with probability ≥ ``threshold``."""
        with np.errstate(invalid="ignore"):
            return np.nan_to_num(self.probabilities, nan=-1.0) >= threshold

    @property
    def patch_level(self) -> np.ndarray:
        """The patches' own probabilities (before context, if any)."""
        return self.probabilities if self.patch_probabilities is None else self.patch_probabilities

    def copy(self) -> ProbabilityMap:
        patch = None if self.patch_probabilities is None else self.patch_probabilities.copy()
        return ProbabilityMap(self.grid, self.probabilities.copy(), self.tissue.copy(), patch)


class CellLogOdds:
    """The scores of overlapping patches gathered into the cells they cover (a dense map).

    On a grid with ``subdivision`` k, a patch named by its top-left cell ``(r, c)`` covers
    cells ``r..r+k-1 × c..c+k-1``; a cell's probability is the sigmoid of the mean log-odds of
    the patches added so far that cover it (``NaN`` while none has). With k = 1 a cell's
    probability is its patch's.
    """

    def __init__(self, grid: PatchGrid) -> None:
        self.grid = grid
        self._sums = np.zeros(grid.shape, dtype=np.float64)
        self._counts = np.zeros(grid.shape, dtype=np.int32)

    def _covered(self, grid_rc: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The cells that patches with top-left cells ``grid_rc`` cover on the grid:
        ``(patch index, row, col)`` arrays, one entry per patch and cell."""
        k = self.grid.subdivision
        rows, cols = self.grid.shape
        offsets = np.arange(k)
        patch = np.repeat(np.arange(len(grid_rc)), k * k)
        r = np.repeat(grid_rc[:, :1] + offsets[None, :], k, axis=1).ravel()
        c = np.tile(grid_rc[:, 1:] + offsets[None, :], (1, k)).ravel()
        inside = (r >= 0) & (r < rows) & (c >= 0) & (c < cols)
        return patch[inside], r[inside], c[inside]

    def add(self, grid_rc: np.ndarray, probabilities: np.ndarray) -> None:
        """Add patches (``(N, 2)`` top-left cells) with their P(IDC)."""
        from wsiviewer.core.model.context import log_odds

        patch, r, c = self._covered(grid_rc)
        np.add.at(self._sums, (r, c), log_odds(probabilities)[patch])
        np.add.at(self._counts, (r, c), 1)

    def fill(self, probabilities: np.ndarray, grid_rc: np.ndarray, cells: np.ndarray) -> None:
        """Write into ``probabilities`` (``(rows, cols)``) the cells that patches with top-left
        cells ``grid_rc`` cover and ``cells`` (bool) wants: the map as far as it is scored."""
        _, r, c = self._covered(grid_rc)
        keep = cells[r, c]
        r, c = r[keep], c[keep]
        mean = self._sums[r, c] / self._counts[r, c]
        with np.errstate(over="ignore"):
            probabilities[r, c] = 1.0 / (1.0 + np.exp(-mean))
