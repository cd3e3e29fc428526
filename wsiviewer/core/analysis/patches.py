"""Reading model patches for grid cells, in large regions rather than one read per patch."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from wsiviewer.core.analysis.grid import PatchGrid
from wsiviewer.core.slides import Slide

#: Largest side, in level px, of one region read: blocks of 2048² (12 MiB of RGB) keep reading
#: and inference overlapped without holding much memory.
MAX_READ_SIDE = 2048


class PatchReader:
    """Cuts model patches for grid cells out of a slide.

    Pixels come from the coarsest pyramid level at least as fine as the model's input
    (:meth:`PatchGrid.model_level`), read as blocks of many cells at once and area-averaged to
    ``input_size`` px per cell. Cells past the slide's edge are padded with white.
    """

    def __init__(self, slide: Slide, grid: PatchGrid) -> None:
        self.slide = slide
        self.grid = grid
        self.level = grid.model_level(slide.level_downsamples)
        self.level_downsample = slide.level_downsamples[self.level]
        lv_cell = grid.l0_patch_size / self.level_downsample
        #: Cells per block side so one read stays within MAX_READ_SIDE level px.
        self.block_cells = max(1, math.floor(MAX_READ_SIDE / lv_cell))

    def read_cells(self, grid_r0: int, grid_c0: int, rows: int, cols: int) -> np.ndarray:
        """Patches of the ``rows × cols`` cells from ``(grid_r0, grid_c0)`` as one image.

        Returns ``(rows * input_size, cols * input_size, 3) uint8``.
        """
        n = self.grid.input_size
        return self.slide.read_l0_box(
            self.grid.l0_block_box((grid_r0, grid_c0), (rows, cols)),
            (cols * n, rows * n),
            level=self.level,
        )

    def iter_blocks(self, cells: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """For each block holding wanted ``cells`` (rows, cols bool): ``(grid_rc, patches)``.

        ``grid_rc`` is ``(N, 2)`` and ``patches`` ``(N, n, n, 3) uint8``, row-major order.
        """
        if cells.shape != self.grid.shape:
            raise ValueError(f"Cell mask {cells.shape} does not match grid {self.grid.shape}")
        n = self.grid.input_size
        step = self.block_cells
        for block_r in range(0, self.grid.rows, step):
            for block_c in range(0, self.grid.cols, step):
                block = cells[block_r : block_r + step, block_c : block_c + step]
                if not block.any():
                    continue
                rows_any = np.flatnonzero(block.any(axis=1))
                cols_any = np.flatnonzero(block.any(axis=0))
                r0, r1 = rows_any[0], rows_any[-1] + 1
                c0, c1 = cols_any[0], cols_any[-1] + 1
                image = self.read_cells(block_r + r0, block_c + c0, r1 - r0, c1 - c0)
                tiles = image.reshape(r1 - r0, n, c1 - c0, n, 3).swapaxes(1, 2)
                local_r, local_c = np.nonzero(block[r0:r1, c0:c1])
                grid_rc = np.stack([local_r + block_r + r0, local_c + block_c + c0], axis=1)
                yield grid_rc, tiles[local_r, local_c]

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
