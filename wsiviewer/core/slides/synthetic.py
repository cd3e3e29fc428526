"""A synthetic H&E-like slide image, for tests, benchmarks and the screenshot tool.

Not a model of tissue: glass with two pink/purple blobs and noise, enough for tissue detection
and the viewer to have something to find and draw. Never a source of results.
"""

from __future__ import annotations

import numpy as np


def he_like_slide(shape: tuple[int, int] = (1200, 1600), seed: int = 0) -> np.ndarray:
    """Glass with two pink/purple tissue blobs, at any resolution."""
    rng = np.random.default_rng(seed)
    height, width = shape
    pixels = np.full((height, width, 3), 240, np.uint8)
    yy, xx = np.mgrid[0:height, 0:width]
    for cy, cx, r in ((0.35, 0.3, 0.22), (0.65, 0.72, 0.18)):
        blob = (yy - cy * height) ** 2 + (xx - cx * width) ** 2 < (r * min(height, width)) ** 2
        noise = rng.integers(-25, 25, (int(blob.sum()), 3))
        pixels[blob] = np.clip(np.array([200, 120, 170]) + noise, 0, 255)
    pixels += rng.integers(0, 4, pixels.shape, dtype=np.uint8)
    return pixels
