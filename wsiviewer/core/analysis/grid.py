"""The patch grid: the one place that turns grid cells into level-0 coordinates.

A :class:`PatchGrid` has its origin at level-0 (0, 0). The model sees square patches of
``l0_patch_size`` level-0 px (a float: ``input_size * model_mpp / slide_mpp``, e.g. 400.8 at
0.499 µm/px). The grid's cells are that size (``subdivision`` 1, the default analysis) or a
``subdivision``-th of it (a dense map: at 2, cells of 25 model px, 100 µm, each scored from
the 4 patches that cover it). Cell ``(row, col)`` covers ``[col * s, row * s, s, s]`` with
``s = l0_cell_size``. Cells that run past the slide's edge are read padded with white.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from wsiviewer.core.units import MPP_TOLERANCE, finest_level_within, mm2_from_px2
from wsiviewer.errors import ResolutionError

#: How much finer than the model's input the level patches are read from should be, when the
#: pyramid has one (:meth:`PatchGrid.model_level`).
FINER_LEVEL_FACTOR = 2

#: Cells per patch side of the dense map: patches every half patch (25 px at 4 µm/px, 100 µm),
#: each cell scored by the 4 patches that cover it, at 4 times the inference.
DENSE_SUBDIVISION = 2


@dataclass(frozen=True)
class PatchGrid:
    """A grid of model-sized patches over a slide, in level-0 px."""

    #: Side of one cell in level-0 px: the model's patch, or a ``subdivision``-th of it.
    l0_cell_size: float
    #: ``(rows, cols)``; ``(0, 0)`` when the slide is smaller than one patch.
    shape: tuple[int, int]
    #: µm/px of the model input; one cell is ``input_size`` px at this resolution.
    model_mpp: float
    #: µm/px of the slide's level 0 used to size the grid.
    slide_mpp: float
    #: Side of one cell in model input px (50 for CancerNet).
    input_size: int
    #: Level-0 ``(width, height)`` of the slide.
    l0_dimensions: tuple[int, int]
    #: Cells per patch side: 1 (a cell is a patch) or more (a dense map; must divide
    #: ``input_size``).
    subdivision: int = 1

    @classmethod
    def for_slide(
        cls,
        l0_dimensions: tuple[int, int],
        slide_mpp: float,
        model_mpp: float,
        input_size: int,
        subdivision: int = 1,
    ) -> PatchGrid:
        """The grid of ``input_size``-px model patches at ``model_mpp`` over a slide, with
        cells of a ``subdivision``-th of a patch.

        Raises
        ------
        ResolutionError
            If the slide is coarser than the model's input resolution.
        ValueError
            If ``subdivision`` does not divide ``input_size``.
        """
        if slide_mpp > model_mpp * (1 + MPP_TOLERANCE):
            raise ResolutionError(
                f"Slide resolution {slide_mpp:.3g} µm/px is coarser than the model's input "
                f"{model_mpp:.3g} µm/px; it cannot be analysed at the scale the model was "
                "trained on"
            )
        if subdivision < 1 or input_size % subdivision:
            raise ValueError(
                f"A subdivision of {subdivision} does not divide the {input_size} px patch"
            )
        size = input_size * model_mpp / slide_mpp
        cell = size / subdivision
        width, height = l0_dimensions
        if width < size or height < size:
            shape = (0, 0)
        else:
            shape = (math.ceil(height / cell), math.ceil(width / cell))
        dimensions = (int(width), int(height))
        return cls(cell, shape, model_mpp, slide_mpp, input_size, dimensions, subdivision)

    @property
    def l0_patch_size(self) -> float:
        """Side of one model patch in level-0 px (``subdivision`` cells)."""
        return self.l0_cell_size * self.subdivision

    @property
    def input_cell_px(self) -> int:
        """Side of one cell in model input px (50 for a patch, 25 at subdivision 2)."""
        return self.input_size // self.subdivision

    @property
    def cell_um(self) -> float:
        """Side of one cell in µm."""
        return self.l0_cell_size * self.slide_mpp

    @property
    def rows(self) -> int:
        return self.shape[0]

    @property
    def cols(self) -> int:
        return self.shape[1]

    @property
    def cell_count(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def cell_area_mm2(self) -> float:
        """Area of one whole cell in mm²."""
        return self.mm2_from_l0_px2(self.l0_cell_size**2)

    @property
    def l0_extent(self) -> tuple[float, float]:
        """Level-0 ``(width, height)`` the cells cover (a little past the slide's edge)."""
        return (self.cols * self.l0_cell_size, self.rows * self.l0_cell_size)

    @property
    def l0_per_input_px(self) -> float:
        """Level-0 px per model input px (16 at 0.25 µm/px for a 4 µm/px model)."""
        return self.l0_patch_size / self.input_size

    def mm2_from_l0_px2(self, area_l0_px2: float) -> float:
        """An area in square level-0 px, in mm² at the slide's µm/px."""
        return mm2_from_px2(area_l0_px2, self.slide_mpp)

    def model_level(
        self, level_downsamples: tuple[float, ...] | list[float], *, finer: bool = True
    ) -> int:
        """The pyramid level to read model patches from, to be area-averaged to the model's
        input: the coarsest level at least :data:`FINER_LEVEL_FACTOR` times finer than the
        input (1 µm/px on a 40x pyramid for a 4 µm/px model), else the coarsest at least as
        fine (within :data:`~wsiviewer.core.units.MPP_TOLERANCE`).

        A scanner's level at the model's own resolution is JPEG-compressed a second time, at
        a scale where its artefacts are as large as the cells: read directly, it moved patch
        scores by up to 0.29 (64-96 % of cells within 0.05 of the lossless patches), against
        at most 0.13 (89-99.6 %) when a 1 µm/px level is averaged down (the model's report,
        Compression). ``finer=False`` takes the coarsest level at least as fine: for a level
        that was itself averaged from a finer one (a reduced view).
        """
        if finer:
            wanted = self.l0_per_input_px / FINER_LEVEL_FACTOR
            level = finest_level_within(level_downsamples, wanted, MPP_TOLERANCE)
            if level_downsamples[level] <= wanted * (1 + MPP_TOLERANCE):
                return level
        return finest_level_within(level_downsamples, self.l0_per_input_px, MPP_TOLERANCE)

    def l0_box(self, grid_rc: tuple[int, int]) -> tuple[float, float, float, float]:
        """Level-0 ``(x, y, width, height)`` of cell ``(row, col)``."""
        row, col = grid_rc
        size = self.l0_cell_size
        return (col * size, row * size, size, size)

    def l0_block_box(
        self, grid_rc: tuple[int, int], shape: tuple[int, int]
    ) -> tuple[float, float, float, float]:
        """Level-0 ``(x, y, width, height)`` of the ``(rows, cols)`` block of cells whose
        top-left cell is ``grid_rc``."""
        (row, col), (rows, cols) = grid_rc, shape
        size = self.l0_cell_size
        return (col * size, row * size, cols * size, rows * size)

    def l0_centres(self, grid_rows: np.ndarray, grid_cols: np.ndarray) -> np.ndarray:
        """Level-0 ``(x, y)`` centres of many cells, as an ``(N, 2)`` float array."""
        size = self.l0_cell_size
        centres = np.empty((np.size(grid_rows), 2), dtype=np.float64)
        centres[:, 0] = (np.asarray(grid_cols).ravel() + 0.5) * size
        centres[:, 1] = (np.asarray(grid_rows).ravel() + 0.5) * size
        return centres

    def l0_cell_edges(self) -> tuple[np.ndarray, np.ndarray]:
        """Level-0 x edges (``cols + 1``) and y edges (``rows + 1``) of the cells, clipped to
        the slide: the last cells' edges are the slide's edges."""
        width, height = self.l0_dimensions
        size = self.l0_cell_size
        x_edges = np.minimum(np.arange(self.cols + 1) * size, float(width))
        y_edges = np.minimum(np.arange(self.rows + 1) * size, float(height))
        return x_edges, y_edges

    def cells_overlapping(
        self, l0_bounds: tuple[float, float, float, float]
    ) -> tuple[slice, slice]:
        """``(rows, cols)`` slices of the cells that overlap the level-0 bounds
        ``(minx, miny, maxx, maxy)``; empty slices when none does."""
        size = self.l0_cell_size
        minx, miny, maxx, maxy = l0_bounds
        row_0 = min(max(0, math.floor(miny / size)), self.rows)
        col_0 = min(max(0, math.floor(minx / size)), self.cols)
        row_1 = max(row_0, min(self.rows, math.ceil(maxy / size)))
        col_1 = max(col_0, min(self.cols, math.ceil(maxx / size)))
        return slice(row_0, row_1), slice(col_0, col_1)

    def l0_boxes(self, grid_rows: np.ndarray, grid_cols: np.ndarray) -> np.ndarray:
        """Level-0 ``(x, y, width, height)`` of many cells, as an ``(N, 4)`` float array."""
        size = self.l0_cell_size
        boxes = np.empty((len(grid_rows), 4), dtype=np.float64)
        boxes[:, 0] = np.asarray(grid_cols) * size
        boxes[:, 1] = np.asarray(grid_rows) * size
        boxes[:, 2:] = size
        return boxes

    def grid_rc_at(self, l0_xy: tuple[float, float]) -> tuple[int, int] | None:
        """The cell under a level-0 point, or ``None`` outside the grid."""
        row = math.floor(l0_xy[1] / self.l0_cell_size)
        col = math.floor(l0_xy[0] / self.l0_cell_size)
        if 0 <= row < self.rows and 0 <= col < self.cols:
            return row, col
        return None

    def to_dict(self) -> dict[str, object]:
        return {
            "l0_cell_size": self.l0_cell_size,
            "subdivision": self.subdivision,
            "l0_patch_size": self.l0_patch_size,
            "shape": list(self.shape),
            "model_mpp": self.model_mpp,
            "slide_mpp": self.slide_mpp,
            "input_size": self.input_size,
            "l0_dimensions": list(self.l0_dimensions),
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> PatchGrid:
        """The grid :meth:`to_dict` wrote; one written before dense maps (no
        ``l0_cell_size``) has cells of one patch."""
        shape = data["shape"]
        dims = data["l0_dimensions"]
        assert isinstance(shape, list)
        assert isinstance(dims, list)
        subdivision = int(data.get("subdivision", 1))  # type: ignore[call-overload]
        cell = data.get("l0_cell_size", data["l0_patch_size"])
        return cls(
            float(cell),  # type: ignore[arg-type]
            (int(shape[0]), int(shape[1])),
            float(data["model_mpp"]),  # type: ignore[arg-type]
            float(data["slide_mpp"]),  # type: ignore[arg-type]
            int(data["input_size"]),  # type: ignore[call-overload]
            (int(dims[0]), int(dims[1])),
            subdivision,
        )
