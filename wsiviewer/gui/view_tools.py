"""Two things QuPath users reach for first: a ruler (length in µm) and "Save view as image"
(a PNG of the view with its scale bar, heatmap legend and research-use notice).

The ruler lives in the view's scene (level-0 px), so a measured line stays on the tissue while
the view pans and zooms; its length is measured in level-0 px and shown in µm (or px when the
slide has no µm/px).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from PySide6.QtCore import QEvent, QLineF, QObject, QPointF, Qt, Signal
from PySide6.QtGui import QBrush, QColor, QImage, QKeyEvent, QMouseEvent, QPen
from PySide6.QtWidgets import QGraphicsItem, QGraphicsLineItem, QGraphicsSimpleTextItem

from wsiviewer.core.exports.png import write_png
from wsiviewer.core.units import um_from_px
from wsiviewer.gui.slide_view import SlideView

#: Above outlines (z 5-7).
RULER_Z = 8.0
#: Okabe-Ito yellow on a dark casing: seen on tissue, glass and heatmap alike.
RULER_COLOR = QColor(240, 228, 66)


def length_text(l0_length: float, mpp: float | None) -> str:
    """``"245 µm"``, ``"1.25 mm"``, or ``"980 px"`` without µm/px."""
    if mpp is None:
        return f"{l0_length:,.0f} px"
    um = um_from_px(l0_length, mpp)
    if um >= 1000:
        return f"{um / 1000:.3g} mm"
    return f"{um:.3g} µm" if um < 100 else f"{um:.0f} µm"


class RulerTool(QObject):
    """Press, drag and release on the view to measure a line; it stays until the next
    measurement, Esc, or the tool is turned off.

    Signals
    -------
    measured(float)
        A line was measured: its length in level-0 px.
    active_changed(bool)
    """

    measured = Signal(float)
    active_changed = Signal(bool)

    def __init__(self, view: SlideView) -> None:
        super().__init__(view)
        self._view = view
        self._active = False
        self._start: QPointF | None = None
        self._drag_mode = view.dragMode()
        pen = QPen(RULER_COLOR, 2.5)
        pen.setCosmetic(True)
        casing = QPen(QColor(0, 0, 0, 200), 5)
        casing.setCosmetic(True)
        self._casing = QGraphicsLineItem()
        self._casing.setPen(casing)
        self._line = QGraphicsLineItem()
        self._line.setPen(pen)
        self._label = QGraphicsSimpleTextItem()
        self._label.setFlag(QGraphicsItem.GraphicsItemFlag.ItemIgnoresTransformations)
        self._label.setBrush(QBrush(QColor(255, 255, 255)))
        self._label.setPen(QPen(QColor(0, 0, 0), 0.8))
        font = self._label.font()
        font.setBold(True)
        font.setPointSizeF(font.pointSizeF() * 1.2)
        self._label.setFont(font)
        for z, item in enumerate((self._casing, self._line, self._label)):
            item.setZValue(RULER_Z + z / 10)
            item.setVisible(False)
            view.scene().addItem(item)
        self.length_l0: float | None = None

    @property
    def active(self) -> bool:
        return self._active

    @property
    def text(self) -> str:
        """The shown length, ``""`` if none."""
        return self._label.text() if self._label.isVisible() else ""

    def set_active(self, active: bool) -> None:
        if active == self._active:
            return
        self._active = active
        viewport = self._view.viewport()
        if active:
            self._drag_mode = self._view.dragMode()
            self._view.setDragMode(self._view.DragMode.NoDrag)
            viewport.setCursor(Qt.CursorShape.CrossCursor)
            viewport.installEventFilter(self)
            self._view.installEventFilter(self)
        else:
            viewport.removeEventFilter(self)
            self._view.removeEventFilter(self)
            viewport.unsetCursor()
            self._view.setDragMode(self._drag_mode)
            self.clear()
        self.active_changed.emit(active)

    def clear(self) -> None:
        self._start = None
        self.length_l0 = None
        for item in (self._casing, self._line, self._label):
            item.setVisible(False)

    def measure(self, l0_start: QPointF, l0_end: QPointF) -> float:
        """Show a measured line between two level-0 points; its length in level-0 px."""
        line = QLineF(l0_start, l0_end)
        self._casing.setLine(line)
        self._line.setLine(line)
        self.length_l0 = line.length()
        self._label.setText(length_text(self.length_l0, self._view.mpp))
        self._label.setPos(l0_end)
        for item in (self._casing, self._line, self._label):
            item.setVisible(True)
        return self.length_l0

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if not self._active:
            return False
        kind = event.type()
        if watched is self._view and isinstance(event, QKeyEvent):
            if event.key() != Qt.Key.Key_Escape:
                return False
            if kind == QEvent.Type.ShortcutOverride:
                event.accept()  # ours before the window's Esc (cancel analysis)
                return True
            if kind == QEvent.Type.KeyPress:
                self.set_active(False)
                return True
            return False
        if watched is not self._view.viewport() or not isinstance(event, QMouseEvent):
            return False
        here = self._view.mapToScene(event.position().toPoint())
        if kind == QEvent.Type.MouseButtonPress and event.button() == Qt.MouseButton.LeftButton:
            self._start = here
            self.measure(here, here)
            return True
        if kind == QEvent.Type.MouseMove and self._start is not None:
            self.measure(self._start, here)
            return True
        if kind == QEvent.Type.MouseButtonRelease and self._start is not None:
            length = self.measure(self._start, here)
            self._start = None
            self.measured.emit(length)
            return True
        return False


def save_view_image(view: SlideView, path: str | os.PathLike[str]) -> Path:
    """Write the view as it is on screen (tiles, heatmap, outlines, ruler, scale bar, legend
    and the research-use notice drawn on it) as a PNG, with the notice and the scale in its
    text chunks. Atomic, like every file we write.

    Raises
    ------
    ExportError
        If the file cannot be written.
    """
    image = view.render_image().convertToFormat(QImage.Format.Format_RGB888)
    width, height = image.width(), image.height()
    buffer = np.frombuffer(image.constBits(), dtype=np.uint8, count=image.sizeInBytes())
    pixels = buffer.reshape(height, image.bytesPerLine())[:, : 3 * width].reshape(height, width, 3)
    extra = {"View": "a screenshot of the wsiviewer slide view"}
    ratio = image.devicePixelRatio() or 1.0
    mpp = view.screen_mpp
    if mpp is not None and math.isfinite(mpp):
        extra["Micrometres per image px"] = f"{mpp / ratio:.6g}"
    return write_png(path, np.ascontiguousarray(pixels), extra=extra)
