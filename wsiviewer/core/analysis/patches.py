"""Reading model patches for grid cells, in large regions rather than one read per patch."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from wsiviewer.core.analysis.grid import PatchGrid
from wsiviewer.core.slides import Slide
from wsiviewer.core.slides.reduced import ReducedLevelSlide

#: Largest side, in level px, of one region read: blocks of 2048² (12 MiB of RGB) keep reading
#: and inference overlapped without holding much memory.
MAX_READ_SIDE = 2048


class PatchReader:
    """Cuts model patches for grid cells out of a slide.

    Pixels come from a pyramid level finer than the model's input
    (:meth:`PatchGrid.model_level`), read as blocks of many cells at once and area-averaged to
    the model's px. Cells past the slide's edge are padded with white.

    On a grid of patch-sized cells (``subdivision`` 1) there is one patch per cell. On a dense
    grid (``subdivision`` k), a patch covers k × k cells, and patches are cut at every cell,
    overlapping: each cell is covered by k² patches, the first ones starting k - 1 cells
    above and to the left of the grid. A patch is named by the cell at its top-left corner.
    """

    def __init__(self, slide: Slide, grid: PatchGrid, level: int | None = None) -> None:
        self.slide = slide
        self.grid = grid
        # A reduced view's added level was averaged from a finer one: read it as it is.
        self.level = (
            grid.model_level(
                slide.level_downsamples, finer=not isinstance(slide, ReducedLevelSlide)
            )
            if level is None
            else level
        )
        self.level_downsample = slide.level_downsamples[self.level]
        lv_cell = grid.l0_cell_size / self.level_downsample
        #: Cells per block side so one read stays within MAX_READ_SIDE level px.
        self.block_cells = max(grid.subdivision, math.floor(MAX_READ_SIDE / lv_cell))

    def read_cells(self, grid_r0: int, grid_c0: int, rows: int, cols: int) -> np.ndarray:
        """The ``rows × cols`` cells from ``(grid_r0, grid_c0)`` (which may lie above or left
        of the grid: white there) as one image at the model's resolution.

        Returns ``(rows * c, cols * c, 3) uint8`` with ``c`` the cell's side in model px.
        """
        c = self.grid.input_cell_px
        return self.slide.read_l0_box(
            self.grid.l0_block_box((grid_r0, grid_c0), (rows, cols)),
            (cols * c, rows * c),
            level=self.level,
        )

    def patches_for(self, cells: np.ndarray) -> np.ndarray:
        """``(rows + k - 1, cols + k - 1) bool``: the patches that cover a wanted cell; patch
        ``(i, j)`` has its top-left corner at cell ``(i - k + 1, j - k + 1)``."""
        if cells.shape != self.grid.shape:
            raise ValueError(f"Cell mask {cells.shape} does not match grid {self.grid.shape}")
        k = self.grid.subdivision
        rows, cols = cells.shape
        wanted = np.zeros((rows + k - 1, cols + k - 1), dtype=bool)
        for dr in range(k):
            for dc in range(k):
                wanted[dr : dr + rows, dc : dc + cols] |= cells
        return wanted

    def iter_blocks(self, cells: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """For each block of patches covering wanted ``cells`` (rows, cols bool):
        ``(grid_rc, patches)``.

        ``grid_rc`` is ``(N, 2)``: each patch's top-left cell (``(row, col)`` of the cell it
        scores when ``subdivision`` is 1); ``patches`` is ``(N, n, n, 3) uint8``, row-major.
        """
        wanted = self.patches_for(cells)
        k = self.grid.subdivision
        n, c = self.grid.input_size, self.grid.input_cell_px
        step = self.block_cells
        for block_r in range(0, wanted.shape[0], step):
            for block_c in range(0, wanted.shape[1], step):
                block = wanted[block_r : block_r + step, block_c : block_c + step]
                if not block.any():
                    continue
                rows_any = np.flatnonzero(block.any(axis=1))
                cols_any = np.flatnonzero(block.any(axis=0))
                r0, r1 = block_r + rows_any[0], block_r + rows_any[-1] + 1
                c0, c1 = block_c + cols_any[0], block_c + cols_any[-1] + 1
                # Patches r0..r1 (top-left cells r0 - k + 1 ...) cover r1 - r0 + k - 1 cells.
                image = self.read_cells(r0 - k + 1, c0 - k + 1, r1 - r0 + k - 1, c1 - c0 + k - 1)
                if k == 1:
                    tiles = image.reshape(r1 - r0, n, c1 - c0, n, 3).swapaxes(1, 2)
                else:
                    windows = np.lib.stride_tricks.sliding_window_view(image, (n, n), (0, 1))
                    tiles = windows[::c, ::c].transpose(0, 1, 3, 4, 2)
                local_r, local_c = np.nonzero(wanted[r0:r1, c0:c1])
                grid_rc = np.stack([local_r + r0 - k + 1, local_c + c0 - k + 1], axis=1)
                yield grid_rc, np.ascontiguousarray(tiles[local_r, local_c])

    def iter_batches(
        self, cells: np.ndarray, batch_size: int
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Like :meth:`iter_blocks`, regrouped into batches of at most ``batch_size`` patches."""
        pending_rc: list[np.ndarray] = []
        pending_patches: list[np.ndarray] = []
        pending = 0
        for grid_rc, patches in self.iter_blocks(cells):
            pending_rc.append(grid_rc)
            pending_patches.append(patches)
            pending += len(grid_rc)
            while pending >= batch_size:
                all_rc = np.concatenate(pending_rc)
                all_patches = np.concatenate(pending_patches)
                yield all_rc[:batch_size], all_patches[:batch_size]
                pending_rc, pending_patches = [all_rc[batch_size:]], [all_patches[batch_size:]]
                pending -= batch_size
        if pending:
            yield np.concatenate(pending_rc), np.concatenate(pending_patches)
