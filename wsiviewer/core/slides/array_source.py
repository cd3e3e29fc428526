"""An in-memory pyramid of numpy arrays behind the slide interface (tests, rebuilt IDC patients)."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence

import numpy as np

from wsiviewer.core.slides.base import Slide, crop_padded
from wsiviewer.core.units import plausible_mpp
from wsiviewer.errors import SlideOpenError


class ArraySource(Slide):
    """An in-memory pyramid of ``(H, W, 3) uint8`` arrays (level 0 first).

    Coarser levels are built by area-averaging level 0 when only level 0 is given.
    """

    def __init__(
        self,
        level0: np.ndarray,
        *,
        mpp: float | None = None,
        downsamples: Sequence[int] = (1,),
        objective_power: float | None = None,
        vendor: str = "array",
        properties: Mapping[str, str] | None = None,
    ) -> None:
        from wsiviewer.core.slides.resample import block_mean

        if level0.ndim != 3 or level0.shape[2] != 3 or level0.dtype != np.uint8:
            raise SlideOpenError(
                f"Array slide must be (H, W, 3) uint8, got {level0.shape} {level0.dtype}"
            )
        if list(downsamples)[:1] != [1] or sorted(downsamples) != list(downsamples):
            raise SlideOpenError(f"Downsamples must start at 1 and increase, got {downsamples}")
        self._levels = [level0] + [block_mean(level0, int(d)) for d in list(downsamples)[1:]]
        self.level_dimensions = tuple((lv.shape[1], lv.shape[0]) for lv in self._levels)
        self.level_downsamples = tuple(float(d) for d in downsamples)
        self.vendor = vendor
        self.objective_power = objective_power
        self._metadata_mpp = plausible_mpp(mpp)
        self._properties = dict(properties or {})
        digest = hashlib.sha256()
        digest.update(np.asarray(level0.shape).tobytes())
        digest.update(np.ascontiguousarray(level0).data)
        self.identity = digest.hexdigest()

    @property
    def associated_image_names(self) -> tuple[str, ...]:
        return ()

    def associated_image(self, name: str, include_identifying: bool = False) -> np.ndarray:
        self._check_associated(name, include_identifying)
        raise AssertionError("unreachable: array slides have no associated images")

    def read_region(
        self, l0_xy: tuple[int, int], level: int, lv_size: tuple[int, int]
    ) -> np.ndarray:
        self._check_level(level)
        self._check_size(lv_size)
        downsample = self.level_downsamples[level]
        lv_xy = (math.floor(l0_xy[0] / downsample), math.floor(l0_xy[1] / downsample))
        return crop_padded(self._levels[level], lv_xy, lv_size).copy()
