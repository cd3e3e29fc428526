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

    def copy(self) -> ProbabilityMap:
        return ProbabilityMap(self.grid, self.probabilities.copy(), self.tissue.copy())
