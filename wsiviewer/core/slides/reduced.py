"""A slide with one more pyramid level, decoded once and held: for slides that lack a level
near the model's resolution.

A single-level 100,000 x 100,000 px slide at 0.25 µm/px has only level 0, so tissue detection
(an 8 µm/px overview), the model's patches (4 µm/px) and the overlay would each decode its ten
gigapixels again. :class:`ReducedLevelSlide` decodes the level once, tile by tile in
tile-aligned blocks, area-averaged exactly by an integer factor (:func:`block_mean`, white past
the slide's edge, as every read here is), and keeps the result as an extra level: 117 MB for
that slide at 4 µm/px. Everything then reads that level instead, as it would read a pyramid
level the scanner wrote (a cell that is a whole number of the level's px gets exactly the
px a direct read gives; otherwise, as from any pyramid level, within a rounding of them).

Building it is a generator (:meth:`ReducedLevelSlide.build`) that yields progress and can be
closed between steps (cancel).
"""

from __future__ import annotations

import math
from collections.abc import Generator

import numpy as np

from wsiviewer.core.slides.base import Slide, crop_padded
from wsiviewer.core.slides.resample import block_mean
from wsiviewer.core.units import MPP_TOLERANCE
from wsiviewer.errors import SlideReadError

#: Most source px decoded per step of :meth:`ReducedLevelSlide.build` (48 MiB of RGB; the
#: block is widened to whole tiles and whole factors).
BUILD_BLOCK_PIXELS = 16_000_000
#: Most px an added level may hold (384 MiB of RGB).
MAX_REDUCED_PIXELS = 128_000_000
#: A source level is worth reducing once it has this many px (smaller ones are read whole, or
#: held, by their source).
MIN_SOURCE_PIXELS = 64_000_000
#: Tile side assumed when the source does not say.
DEFAULT_TILE = 512


class ReducedLevelSlide(Slide):
    """``base`` with one more level: ``base``'s level ``source_level`` averaged by ``factor``.

    The added level exists once :meth:`build` has run to its end; reading it before raises
    :class:`~wsiviewer.errors.SlideReadError`. Every other read, and the slide's identity,
    resolution, properties and associated images, are ``base``'s. Closing this slide does not
    close ``base``.
    """

    def __init__(self, base: Slide, source_level: int, factor: int) -> None:
        base._check_level(source_level)
        if factor < 2:
            raise ValueError(f"Reduction factor {factor} must be at least 2")
        self.base = base
        self.source_level = source_level
        self.factor = factor
        source_w, source_h = base.level_dimensions[source_level]
        size = (math.ceil(source_w / factor), math.ceil(source_h / factor))
        downsample = base.level_downsamples[source_level] * factor
        position = sum(1 for d in base.level_downsamples if d <= downsample)
        #: Index of the added level.
        self.reduced_level = position
        self.level_dimensions = (
            *base.level_dimensions[:position],
            size,
            *base.level_dimensions[position:],
        )
        self.level_downsamples = (
            *base.level_downsamples[:position],
            float(downsample),
            *base.level_downsamples[position:],
        )
        self.identity = base.identity
        self.vendor = base.vendor
        self.objective_power = base.objective_power
        self._metadata_mpp = base.metadata_mpp
        self._properties = dict(base.properties)
        self._pixels: np.ndarray | None = None

    @property
    def built(self) -> bool:
        return self._pixels is not None

    def build(self) -> Generator[tuple[int, int], None, None]:
        """Decode the source level and average it into the added level, block by block.

        Yields ``(done, total)`` source px after each block; closing the generator stops it
        (nothing is kept).
        """
        if self._pixels is not None:
            return
        base, level, factor = self.base, self.source_level, self.factor
        source_w, source_h = base.level_dimensions[level]
        tile_w, tile_h = base.level_tile_size(level) or (DEFAULT_TILE, DEFAULT_TILE)
        # Blocks of whole tiles and whole factors, so no tile is decoded twice and no output
        # px straddles two blocks.
        step_w = math.lcm(tile_w, factor)
        step_h = math.lcm(tile_h, factor)
        block_w = max(step_w, (BUILD_BLOCK_PIXELS // step_h) // step_w * step_w)
        block_w = min(block_w, math.ceil(source_w / step_w) * step_w)
        block_h = max(step_h, (BUILD_BLOCK_PIXELS // block_w) // step_h * step_h)
        out_w, out_h = self.level_dimensions[self.reduced_level]
        pixels = np.empty((out_h, out_w, 3), dtype=np.uint8)
        downsample = base.level_downsamples[level]
        total = source_w * source_h
        done = 0
        for lv_y in range(0, source_h, block_h):
            height = min(block_h, source_h - lv_y)
            for lv_x in range(0, source_w, block_w):
                width = min(block_w, source_w - lv_x)
                l0_xy = (round(lv_x * downsample), round(lv_y * downsample))
                block = base._read_pixels(l0_xy, level, (width, height))
                reduced = block_mean(np.asarray(block[..., :3]), factor, edge="white")
                out_y, out_x = lv_y // factor, lv_x // factor
                pixels[out_y : out_y + reduced.shape[0], out_x : out_x + reduced.shape[1]] = reduced
                done += width * height
                yield done, total
        pixels.flags.writeable = False
        self._pixels = pixels

    @property
    def associated_image_names(self) -> tuple[str, ...]:
        return self.base.associated_image_names

    def associated_image(self, name: str, include_identifying: bool = False) -> np.ndarray:
        return self.base.associated_image(name, include_identifying)

    def level_tile_size(self, level: int) -> tuple[int, int] | None:
        if level == self.reduced_level:
            return None
        return self.base.level_tile_size(self._base_level(level))

    def read_region(
        self, l0_xy: tuple[int, int], level: int, lv_size: tuple[int, int]
    ) -> np.ndarray:
        if level == self.reduced_level:
            return np.array(self._reduced(l0_xy, lv_size))
        return self.base.read_region(l0_xy, self._base_level(level), lv_size)

    def _read_pixels(
        self, l0_xy: tuple[int, int], level: int, lv_size: tuple[int, int]
    ) -> np.ndarray:
        if level == self.reduced_level:
            return self._reduced(l0_xy, lv_size)
        return self.base._read_pixels(l0_xy, self._base_level(level), lv_size)

    def read_display(
        self,
        l0_xy: tuple[int, int],
        level: int,
        lv_size: tuple[int, int],
        reduction: int = 1,
    ) -> np.ndarray:
        if level == self.reduced_level:
            return super().read_display(l0_xy, level, lv_size, reduction)
        return self.base.read_display(l0_xy, self._base_level(level), lv_size, reduction)

    def _reduced(self, l0_xy: tuple[int, int], lv_size: tuple[int, int]) -> np.ndarray:
        self._check_size(lv_size)
        if self._pixels is None:
            raise SlideReadError("The reduced level is read before it was built")
        downsample = self.level_downsamples[self.reduced_level]
        lv_xy = (math.floor(l0_xy[0] / downsample), math.floor(l0_xy[1] / downsample))
        return crop_padded(self._pixels, lv_xy, lv_size)

    def _base_level(self, level: int) -> int:
        self._check_level(level)
        return level if level < self.reduced_level else level - 1


def reduced_view(slide: Slide, needed_downsample: float) -> ReducedLevelSlide | None:
    """A :class:`ReducedLevelSlide` of ``slide`` (not yet built) if reading at
    ``needed_downsample`` (level-0 px per model input px) would otherwise decode a large level
    at least twice as fine as needed; ``None`` if its levels serve.

    The added level is the finest such level averaged by the largest integer factor that
    stays at least as fine as needed (16 for a 0.25 µm/px slide and a 4 µm/px model), provided
    it holds at most :data:`MAX_REDUCED_PIXELS`.
    """
    if isinstance(slide, ReducedLevelSlide):
        return None
    slack = 1 + MPP_TOLERANCE  # as PatchGrid.model_level
    level = slide.best_level_for_downsample(needed_downsample * slack)
    width, height = slide.level_dimensions[level]
    factor = math.floor(needed_downsample * slack / slide.level_downsamples[level])
    if factor < 2 or width * height < MIN_SOURCE_PIXELS:
        return None
    if math.ceil(width / factor) * math.ceil(height / factor) > MAX_REDUCED_PIXELS:
        return None
    return ReducedLevelSlide(slide, level, factor)
