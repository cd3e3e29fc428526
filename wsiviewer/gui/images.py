"""numpy pixels as Qt images: the one RGB → QImage conversion of the viewer."""

from __future__ import annotations

import numpy as np
from PySide6.QtGui import QImage


def rgb_to_qimage(pixels: np.ndarray) -> QImage:
    """``(H, W, 3) uint8`` RGB as a 32-bit QImage that owns its pixels.

    RGB32 is Qt's native raster format: painting it needs no conversion, several times faster
    than painting RGB888, and the conversion copies the pixels, so the numpy array may go.
    """
    pixels = np.ascontiguousarray(pixels)
    height, width = pixels.shape[:2]
    view = QImage(pixels.data, width, height, 3 * width, QImage.Format.Format_RGB888)
    return view.convertToFormat(QImage.Format.Format_RGB32)
