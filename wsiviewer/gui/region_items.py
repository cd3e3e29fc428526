"""Region outlines on the slide, their legend, and the polygon drawing tool.

Everything here lives in the scene, whose frame is level-0 px (DESIGN.md), so a region's stored
polygon is drawn as it is. Outlines use cosmetic pens (constant width on screen at any zoom)
over a dark casing, so they stay visible on pale glass, pink tissue and the heatmap alike.

Status is told by colour AND line style (never colour alone): pending is white and dashed,
accepted Okabe-Ito vermillion and solid, rejected Okabe-Ito sky blue and dotted. The three
stay apart for protan, deutan and tritan readers, and none is the heatmap's yellow.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass

from PySide6.QtCore import QEvent, QObject, QPointF, QRectF, QSize, Qt, Signal
from PySide6.QtGui import (
    QBrush,
    QColor,
    QIcon,
    QKeyEvent,
    QMouseEvent,
    QPainter,
    QPainterPath,
    QPaintEvent,
    QPen,
    QPixmap,
    QTransform,
)
from PySide6.QtWidgets import (
    QGraphicsItem,
    QGraphicsPathItem,
    QGraphicsScene,
    QGraphicsSimpleTextItem,
    QGraphicsView,
    QStyleOptionGraphicsItem,
    QWidget,
)
from shapely.geometry import Polygon

from wsiviewer.core.review.status import STATUS_COLORS
from wsiviewer.core.review.wording import STATUS_WORDS


@dataclass(frozen=True)
class StatusStyle:
    """How a review status looks: its legend label, outline colour and line style."""

    label: str
    color: QColor
    pen_style: Qt.PenStyle


#: Outline style by review status (``ReviewStatus``).
STATUS_STYLES: dict[str, StatusStyle] = {
    "pending": StatusStyle(
        STATUS_WORDS["pending"].capitalize(), QColor(255, 255, 255), Qt.PenStyle.DashLine
    ),
    "accepted": StatusStyle(
        "Accepted (IDC)", QColor(*STATUS_COLORS["accepted"]), Qt.PenStyle.SolidLine
    ),
    "rejected": StatusStyle("Rejected", QColor(*STATUS_COLORS["rejected"]), Qt.PenStyle.DotLine),
}
#: Dark casing under every outline, in screen px wider than the outline.
CASING_COLOR = QColor(0, 0, 0, 190)
CASING_EXTRA_PX = 2.5
#: Outline widths in screen px.
OUTLINE_PX = 2.5
SELECTED_OUTLINE_PX = 5.0
#: Halo around the selected region (screen px wider than its outline). No fill: the
#: tissue inside is what the pathologist must see.
SELECTED_HALO_COLOR = QColor(255, 255, 255, 170)
SELECTED_HALO_EXTRA_PX = 10.0
#: Above the heatmap (z 1).
OUTLINE_Z = 5.0
SELECTED_Z = 6.0
DRAWING_Z = 7.0
#: Colour of the polygon being drawn (Okabe-Ito yellow is the heatmap's; this is bluish green).
DRAWING_COLOR = QColor(0, 158, 115)


def drawing_item(scene: QGraphicsScene, pen: QPen | None = None) -> QGraphicsPathItem:
    """A hidden path item above the regions for what is being drawn: a 2.5 px outline in the
    drawing colour (cosmetic: the same on screen at every zoom), or ``pen``."""
    item = QGraphicsPathItem()
    item.setZValue(DRAWING_Z)
    if pen is None:
        pen = QPen(DRAWING_COLOR, 2.5)
        pen.setCosmetic(True)
    item.setPen(pen)
    item.setVisible(False)
    scene.addItem(item)
    return item


def status_pen(status: str, width: float, *, casing: bool = False) -> QPen:
    """The cosmetic pen of an outline (or of its casing) for a status."""
    style = STATUS_STYLES[status]
    if casing:
        pen = QPen(CASING_COLOR, width + CASING_EXTRA_PX)
    else:
        pen = QPen(style.color, width)
        pen.setStyle(style.pen_style)
    pen.setCosmetic(True)
    pen.setJoinStyle(Qt.PenJoinStyle.RoundJoin)
    pen.setCapStyle(Qt.PenCapStyle.FlatCap)
    return pen


def status_icon(status: str, width: int = 26, height: int = 12) -> QIcon:
    """A small sample of a status's outline (casing, colour, line style), as in the legend."""
    pixmap = QPixmap(width, height)
    pixmap.fill(Qt.GlobalColor.transparent)
    painter = QPainter(pixmap)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing, True)
    y = height / 2
    for pen in (status_pen(status, OUTLINE_PX, casing=True), status_pen(status, OUTLINE_PX)):
        pen.setCosmetic(False)
        painter.setPen(pen)
        painter.drawLine(QPointF(1, y), QPointF(width - 1, y))
    painter.end()
    return QIcon(pixmap)


class StatusLegendWidget(QWidget):
    """Each status's outline sample (colour and line style) and its name."""

    SAMPLE_PX = 34

    def sizeHint(self) -> QSize:
        metrics = self.fontMetrics()
        width = sum(
            self.SAMPLE_PX + 10 + metrics.horizontalAdvance(style.label) + 16
            for style in STATUS_STYLES.values()
        )
        return QSize(width, metrics.height() + 10)

    def minimumSizeHint(self) -> QSize:
        return self.sizeHint()

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        metrics = self.fontMetrics()
        x = 2.0
        y = self.height() / 2
        for style in STATUS_STYLES.values():
            casing = QPen(CASING_COLOR, OUTLINE_PX + CASING_EXTRA_PX)
            casing.setCapStyle(Qt.PenCapStyle.FlatCap)
            painter.setPen(casing)
            painter.drawLine(QPointF(x, y), QPointF(x + self.SAMPLE_PX, y))
            pen = QPen(style.color, OUTLINE_PX)
            pen.setStyle(style.pen_style)
            pen.setCapStyle(Qt.PenCapStyle.FlatCap)
            painter.setPen(pen)
            painter.drawLine(QPointF(x, y), QPointF(x + self.SAMPLE_PX, y))
            x += self.SAMPLE_PX + 6
            painter.setPen(self.palette().windowText().color())
            text_rect = QRectF(x, 0, metrics.horizontalAdvance(style.label) + 4, self.height())
            painter.drawText(text_rect, Qt.AlignmentFlag.AlignVCenter, style.label)
            x += text_rect.width() + 12
        painter.end()


def polygon_path(polygon: Polygon) -> QPainterPath:
    """A level-0 px shapely polygon (holes included) as a painter path."""
    path = QPainterPath()
    path.setFillRule(Qt.FillRule.OddEvenFill)
    for ring in (polygon.exterior, *polygon.interiors):
        points = list(ring.coords)
        if len(points) < 3:
            continue
        path.moveTo(*points[0])
        for x, y in points[1:]:
            path.lineTo(x, y)
        path.closeSubpath()
    return path


class RegionOutlineItem(QGraphicsPathItem):
    """One region's outline, styled by its review status, with its number beside it."""

    def __init__(self, key: Hashable, polygon: Polygon, label: str, status: str) -> None:
        super().__init__(polygon_path(polygon))
        self.key = key
        self.polygon = polygon
        self._status = status
        self._selected = False
        self.setZValue(OUTLINE_Z)
        self.setAcceptedMouseButtons(Qt.MouseButton.NoButton)
        self.label_item = QGraphicsSimpleTextItem(label, self)
        self.label_item.setFlag(QGraphicsItem.GraphicsItemFlag.ItemIgnoresTransformations)
        self.label_item.setPen(QPen(QColor(0, 0, 0), 0.8))
        self.label_item.setBrush(QBrush(QColor(255, 255, 255)))
        font = self.label_item.font()
        font.setBold(True)
        font.setPointSizeF(font.pointSizeF() * 1.3)
        self.label_item.setFont(font)
        # At the outline's top vertex (leftmost of ties): on the region, even a concave one
        # whose bounding box's corner lies far off it.
        top_x, top_y = min(polygon.exterior.coords, key=lambda xy: (xy[1], xy[0]))
        self.label_anchor = QPointF(top_x, top_y)
        self.label_item.setPos(top_x, top_y)
        # Just above the top-left corner, in screen px (the label ignores the zoom).
        height = self.label_item.boundingRect().height()
        self.label_item.setTransform(QTransform.fromTranslate(0, -height - 3))
        self.label_item.setAcceptedMouseButtons(Qt.MouseButton.NoButton)
        self._apply()

    @property
    def status(self) -> str:
        return self._status

    @property
    def highlighted(self) -> bool:
        return self._selected

    def set_status(self, status: str) -> None:
        if status != self._status:
            self._status = status
            self._apply()

    def set_highlighted(self, highlighted: bool) -> None:
        if highlighted != self._selected:
            self._selected = highlighted
            self._apply()

    def outline_pen(self) -> QPen:
        return status_pen(self._status, SELECTED_OUTLINE_PX if self._selected else OUTLINE_PX)

    def _apply(self) -> None:
        self.setPen(self.outline_pen())
        self.setBrush(QBrush(Qt.BrushStyle.NoBrush))
        self.setZValue(SELECTED_Z if self._selected else OUTLINE_Z)
        self.update()

    def boundingRect(self) -> QRectF:
        # Cosmetic pens: the path's own rect; the view repaints whole (FullViewportUpdate).
        return self.path().boundingRect()

    def paint(
        self,
        painter: QPainter,
        option: QStyleOptionGraphicsItem,
        widget: QWidget | None = None,
    ) -> None:
        # The view does not save painter state around items (DontSavePainterState).
        painter.save()
        painter.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        path = self.path()
        painter.setBrush(Qt.BrushStyle.NoBrush)
        width = SELECTED_OUTLINE_PX if self._selected else OUTLINE_PX
        if self._selected:
            halo = QPen(SELECTED_HALO_COLOR, width + SELECTED_HALO_EXTRA_PX)
            halo.setCosmetic(True)
            halo.setJoinStyle(Qt.PenJoinStyle.RoundJoin)
            painter.setPen(halo)
            painter.drawPath(path)
        painter.setPen(status_pen(self._status, width, casing=True))
        painter.drawPath(path)
        painter.setPen(self.pen())
        painter.drawPath(path)
        painter.restore()


class RegionOverlay:
    """The outlines of a review's regions in a scene, by key (e.g. a ``RegionRef``)."""

    def __init__(self, scene: QGraphicsScene) -> None:
        self._scene = scene
        self._items: dict[Hashable, RegionOutlineItem] = {}
        self._selected: Hashable | None = None
        self._visible = True

    def set_regions(self, regions: Iterable[tuple[Hashable, Polygon, str, str]]) -> None:
        """Show ``(key, polygon, label, status)`` regions; others are removed."""
        wanted: dict[Hashable, tuple[Polygon, str, str]] = {
            key: (polygon, label, status) for key, polygon, label, status in regions
        }
        for key in [k for k in self._items if k not in wanted]:
            self._scene.removeItem(self._items.pop(key))
        for key, (polygon, label, status) in wanted.items():
            item = self._items.get(key)
            if item is not None and (
                item.polygon is not polygon and not item.polygon.equals(polygon)
            ):
                self._scene.removeItem(self._items.pop(key))
                item = None
            if item is None:
                item = RegionOutlineItem(key, polygon, label, status)
                item.setVisible(self._visible)
                self._scene.addItem(item)
                self._items[key] = item
            else:
                item.set_status(status)
                item.label_item.setText(label)
        if self._selected not in self._items:
            self._selected = None
        self.set_selected(self._selected)

    def set_selected(self, key: Hashable | None) -> None:
        self._selected = key if key in self._items else None
        for item_key, item in self._items.items():
            item.set_highlighted(item_key == self._selected)

    @property
    def selected(self) -> Hashable | None:
        return self._selected

    def item(self, key: Hashable) -> RegionOutlineItem | None:
        return self._items.get(key)

    def keys(self) -> list[Hashable]:
        return list(self._items)

    def set_visible(self, visible: bool) -> None:
        self._visible = visible
        for item in self._items.values():
            item.setVisible(visible)

    @property
    def visible(self) -> bool:
        return self._visible

    def clear(self) -> None:
        for item in self._items.values():
            self._scene.removeItem(item)
        self._items.clear()
        self._selected = None

    def arrange_labels(self, view: QGraphicsView) -> None:
        """Hide the labels that would overlap one already shown, so dozens of small regions
        never pile their numbers up: the selected region's label first, then by size."""
        placed: list[QRectF] = []
        order = sorted(
            self._items.items(),
            key=lambda pair: (pair[0] != self._selected, -pair[1].polygon.area),
        )
        for _, item in order:
            label = item.label_item
            # The label ignores the zoom: its screen rect is its size at its anchor's screen
            # position, just above it.
            anchor = view.mapFromScene(item.label_anchor)
            size = label.boundingRect().size()
            rect = QRectF(anchor.x(), anchor.y() - size.height() - 3, size.width(), size.height())
            visible = not any(rect.intersects(other) for other in placed)
            label.setVisible(visible)
            if visible:
                placed.append(rect.adjusted(-2, -2, 2, 2))


class PolygonDrawTool(QObject):
    """Draw a polygon (or, with ``closed=False``, a line) on a view: click adds a vertex,
    double-click or Enter finishes it, Backspace removes the last vertex, Esc cancels.

    While active it takes the view's left clicks (no panning; the wheel still zooms) and the
    Esc/Enter/Backspace keys before any window shortcut.

    Signals
    -------
    polygon_drawn(object)
        The vertices, a list of level-0 ``(x, y)`` px (3 or more for a polygon, 2 or more
        for a line).
    drawing_cancelled()
    active_changed(bool)
    hint_changed(str)
        What to do next, for the status bar.
    """

    polygon_drawn = Signal(object)
    drawing_cancelled = Signal()
    active_changed = Signal(bool)
    hint_changed = Signal(str)

    #: Clicks closer than this to the previous vertex (screen px) add nothing.
    MIN_STEP_PX = 3.0

    def __init__(self, view: QGraphicsView, *, closed: bool = True, what: str = "a region") -> None:
        super().__init__(view)
        self._view = view
        self._closed = closed
        self._what = what
        self._min_vertices = 3 if closed else 2
        self._vertices: list[QPointF] = []
        self._hover: QPointF | None = None
        self._active = False
        self._drag_mode = view.dragMode()
        self._preview = drawing_item(view.scene())

    @property
    def active(self) -> bool:
        return self._active

    @property
    def vertices(self) -> list[tuple[float, float]]:
        return [(p.x(), p.y()) for p in self._vertices]

    def start(self) -> None:
        if self._active:
            return
        self._active = True
        self._vertices = []
        self._hover = None
        self._drag_mode = self._view.dragMode()
        self._view.setDragMode(QGraphicsView.DragMode.NoDrag)
        self._view.viewport().setCursor(Qt.CursorShape.CrossCursor)
        self._view.viewport().installEventFilter(self)
        self._view.installEventFilter(self)
        self._view.setFocus()
        self._preview.setVisible(True)
        self._update_preview()
        self.active_changed.emit(True)
        self._hint()

    def cancel(self) -> None:
        if not self._active:
            return
        self._stop()
        self.drawing_cancelled.emit()
        self.hint_changed.emit("Drawing cancelled")

    def add_vertex(self, l0_xy: QPointF) -> None:
        if self._vertices:
            last = self._view.mapFromScene(self._vertices[-1])
            here = self._view.mapFromScene(l0_xy)
            if (here - last).manhattanLength() < self.MIN_STEP_PX:
                return
        self._vertices.append(QPointF(l0_xy))
        self._update_preview()
        self._hint()

    def remove_last_vertex(self) -> None:
        if self._vertices:
            self._vertices.pop()
            self._update_preview()
            self._hint()

    def finish(self) -> bool:
        """Close the polygon; ``False`` (and still drawing) with fewer than 3 vertices."""
        if not self._active:
            return False
        if len(self._vertices) < self._min_vertices:
            self.hint_changed.emit(
                f"{self._what[0].upper()}{self._what[1:]} needs at least {self._min_vertices} "
                "points; Esc cancels"
            )
            return False
        vertices = self.vertices
        self._stop()
        self.polygon_drawn.emit(vertices)
        return True

    def _stop(self) -> None:
        self._active = False
        self._vertices = []
        self._hover = None
        self._preview.setVisible(False)
        self._preview.setPath(QPainterPath())
        self._view.viewport().removeEventFilter(self)
        self._view.removeEventFilter(self)
        self._view.viewport().unsetCursor()
        self._view.setDragMode(self._drag_mode)
        self.active_changed.emit(False)

    def _hint(self) -> None:
        count = len(self._vertices)
        finish = "close" if self._closed else "finish"
        self.hint_changed.emit(
            f"Drawing {self._what}: {count} points. Click to add, double-click or Enter to "
            f"{finish}, Backspace to remove the last, Esc to cancel."
        )

    def _update_preview(self) -> None:
        path = QPainterPath()
        points = [*self._vertices, *([self._hover] if self._hover is not None else [])]
        if points:
            path.moveTo(points[0])
            for point in points[1:]:
                path.lineTo(point)
            if self._closed and len(points) >= 3:
                path.lineTo(points[0])
        self._preview.setPath(path)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if not self._active:
            return False
        kind = event.type()
        if watched is self._view.viewport():
            if kind == QEvent.Type.MouseButtonPress and isinstance(event, QMouseEvent):
                if event.button() == Qt.MouseButton.LeftButton:
                    self._view.setFocus()
                    self.add_vertex(self._view.mapToScene(event.position().toPoint()))
                    return True
            elif kind == QEvent.Type.MouseButtonDblClick and isinstance(event, QMouseEvent):
                if event.button() == Qt.MouseButton.LeftButton:
                    self.add_vertex(self._view.mapToScene(event.position().toPoint()))
                    self.finish()
                    return True
            elif kind == QEvent.Type.MouseButtonRelease and isinstance(event, QMouseEvent):
                return event.button() == Qt.MouseButton.LeftButton
            elif kind == QEvent.Type.MouseMove and isinstance(event, QMouseEvent):
                self._hover = self._view.mapToScene(event.position().toPoint())
                self._update_preview()
            return False
        if watched is self._view and isinstance(event, QKeyEvent):
            keys = {
                Qt.Key.Key_Escape,
                Qt.Key.Key_Return,
                Qt.Key.Key_Enter,
                Qt.Key.Key_Backspace,
            }
            if event.key() not in keys:
                return False
            if kind == QEvent.Type.ShortcutOverride:
                event.accept()  # ours before the window's Esc (cancel analysis)
                return True
            if kind == QEvent.Type.KeyPress:
                if event.key() == Qt.Key.Key_Escape:
                    self.cancel()
                elif event.key() == Qt.Key.Key_Backspace:
                    self.remove_last_vertex()
                else:
                    self.finish()
                return True
        return False
