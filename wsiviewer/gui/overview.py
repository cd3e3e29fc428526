"""The overview: the whole slide small, the viewport as a rectangle; click or drag to move."""

from __future__ import annotations

from PySide6.QtCore import QPointF, QRectF, QSize, Qt, Signal
from PySide6.QtGui import QColor, QImage, QMouseEvent, QPainter, QPaintEvent, QPen
from PySide6.QtWidgets import QSizePolicy, QWidget

from wsiviewer.gui.slide_view import BACKGROUND


class OverviewWidget(QWidget):
    """A slide thumbnail with the heatmap and the view's rectangle.

    Signals
    -------
    navigated(float, float)
        The user clicked or dragged to centre the view on level-0 ``(x, y)``.
    """

    navigated = Signal(float, float)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._image: QImage | None = None
        self._heatmap: QImage | None = None
        self._heatmap_rect = QRectF()
        self._heatmap_opacity = 0.5
        self._l0_size: tuple[int, int] | None = None
        self._viewport_l0 = QRectF()
        self.setMinimumSize(160, 120)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setCursor(Qt.CursorShape.PointingHandCursor)
        self.setToolTip("Click or drag to move the view")

    def sizeHint(self) -> QSize:
        return QSize(280, 210)

    def set_slide(self, image: QImage | None, l0_size: tuple[int, int] | None) -> None:
        self._image = image
        self._l0_size = l0_size
        self._heatmap = None
        self.update()

    def set_heatmap(self, image: QImage | None, l0_rect: QRectF, opacity: float) -> None:
        self._heatmap = image
        self._heatmap_rect = QRectF(l0_rect)
        self._heatmap_opacity = opacity
        self.update()

    def set_viewport(self, l0_rect: QRectF) -> None:
        self._viewport_l0 = QRectF(l0_rect)
        self.update()

    def image_rect(self) -> QRectF:
        """Where the slide is drawn in widget px (aspect kept, centred)."""
        if self._l0_size is None:
            return QRectF()
        width, height = self._l0_size
        scale = min((self.width() - 4) / width, (self.height() - 4) / height)
        drawn_w, drawn_h = width * scale, height * scale
        return QRectF((self.width() - drawn_w) / 2, (self.height() - drawn_h) / 2, drawn_w, drawn_h)

    def _l0_from_widget(self, point: QPointF) -> tuple[float, float]:
        rect = self.image_rect()
        assert self._l0_size is not None
        scale = self._l0_size[0] / rect.width()
        return (point.x() - rect.x()) * scale, (point.y() - rect.y()) * scale

    def _widget_from_l0(self, l0_rect: QRectF) -> QRectF:
        rect = self.image_rect()
        assert self._l0_size is not None
        scale = rect.width() / self._l0_size[0]
        return QRectF(
            rect.x() + l0_rect.x() * scale,
            rect.y() + l0_rect.y() * scale,
            l0_rect.width() * scale,
            l0_rect.height() * scale,
        )

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        painter.fillRect(self.rect(), BACKGROUND)
        if self._image is None or self._l0_size is None:
            painter.setPen(QColor(200, 200, 200))
            painter.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, "No slide")
            return
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, True)
        painter.drawImage(self.image_rect(), self._image)
        if self._heatmap is not None:
            painter.setOpacity(self._heatmap_opacity)
            painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, False)
            painter.setClipRect(self.image_rect())
            painter.drawImage(self._widget_from_l0(self._heatmap_rect), self._heatmap)
            painter.setClipping(False)
            painter.setOpacity(1.0)
        if not self._viewport_l0.isEmpty():
            box = self._widget_from_l0(self._viewport_l0).intersected(
                QRectF(self.rect()).adjusted(1, 1, -1, -1)
            )
            painter.setPen(QPen(QColor(230, 30, 30), 2))
            painter.drawRect(box)

    def mousePressEvent(self, event: QMouseEvent) -> None:
        self._navigate(event)

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        if event.buttons() & Qt.MouseButton.LeftButton:
            self._navigate(event)

    def _navigate(self, event: QMouseEvent) -> None:
        if self._l0_size is None or self.image_rect().isEmpty():
            return
        self.navigated.emit(*self._l0_from_widget(event.position()))
        event.accept()
