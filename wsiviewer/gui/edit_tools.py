"""Tools that make a region right on the slide: a brush that adds or erases, and vertex
handles. (A split line is drawn with :class:`~wsiviewer.gui.region_items.PolygonDrawTool`.)

Each tool only draws and reports level-0 geometry; the review panel turns it into one review
decision (:class:`~wsiviewer.core.review.session.ReviewSession`), so every edit is audited
and one undo takes it back.
"""

from __future__ import annotations

from PySide6.QtCore import QEvent, QObject, QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QBrush, QColor, QKeyEvent, QMouseEvent, QPainterPath, QPen
from PySide6.QtWidgets import (
    QGraphicsItem,
    QGraphicsRectItem,
    QGraphicsView,
)
from shapely.geometry import LineString, Point, Polygon

from wsiviewer.gui.region_items import DRAWING_COLOR, DRAWING_Z, drawing_item, polygon_path

#: Brush stroke preview: the drawing colour, translucent, so the tissue shows through.
BRUSH_FILL = QColor(0, 158, 115, 90)
ERASE_FILL = QColor(213, 94, 0, 90)
#: Vertex handles, screen px.
HANDLE_PX = 9.0
#: A press this close to a handle (screen px) grabs it.
GRAB_PX = 10.0
#: Segments per quarter circle of a brush stroke's round ends: smooth enough on screen, and
#: few vertices for the vertex handles of the region it makes.
BRUSH_QUAD_SEGMENTS = 5


def stroke_polygon(points: list[tuple[float, float]], radius: float) -> Polygon:
    """A brush stroke through level-0 ``points`` with ``radius`` level-0 px, as a polygon."""
    if len(points) == 1:
        return Point(points[0]).buffer(radius, quad_segs=BRUSH_QUAD_SEGMENTS)
    # Drag points closer than a tenth of the radius add vertices, not shape.
    line = LineString(points).simplify(radius / 10)
    return line.buffer(radius, quad_segs=BRUSH_QUAD_SEGMENTS)


class _ViewTool(QObject):
    """Takes the view's left button and Esc/Enter while active (the wheel still zooms)."""

    active_changed = Signal(bool)
    hint_changed = Signal(str)

    def __init__(self, view: QGraphicsView) -> None:
        super().__init__(view)
        self._view = view
        self._active = False
        self._drag_mode = view.dragMode()

    @property
    def active(self) -> bool:
        return self._active

    def _start(self) -> None:
        self._active = True
        self._drag_mode = self._view.dragMode()
        self._view.setDragMode(QGraphicsView.DragMode.NoDrag)
        self._view.viewport().setCursor(Qt.CursorShape.CrossCursor)
        self._view.viewport().installEventFilter(self)
        self._view.installEventFilter(self)
        self._view.setFocus()
        self.active_changed.emit(True)

    def _stop(self) -> None:
        if not self._active:
            return
        self._active = False
        self._view.viewport().removeEventFilter(self)
        self._view.removeEventFilter(self)
        self._view.viewport().unsetCursor()
        self._view.setDragMode(self._drag_mode)
        self.active_changed.emit(False)

    def _scene_point(self, event: QMouseEvent) -> QPointF:
        return self._view.mapToScene(event.position().toPoint())

    def _key(self, event: QKeyEvent) -> bool:
        """Esc and Enter are the tool's (before the window's shortcuts)."""
        keys = {Qt.Key.Key_Escape, Qt.Key.Key_Return, Qt.Key.Key_Enter, Qt.Key.Key_Backspace}
        if event.key() not in keys:
            return False
        if event.type() == QEvent.Type.ShortcutOverride:
            event.accept()
            return True
        if event.type() == QEvent.Type.KeyPress:
            self._on_key(Qt.Key(event.key()))
            return True
        return False

    def _on_key(self, key: Qt.Key) -> None:
        if key == Qt.Key.Key_Escape:
            self.cancel()

    def cancel(self) -> None:
        if self._active:
            self._stop()
            self.hint_changed.emit("Edit cancelled")


class BrushTool(_ViewTool):
    """Paint a stroke on the slide: press, drag, release. Each stroke is reported once.

    Signals
    -------
    stroke_drawn(object, bool)
        The stroke as a level-0 px polygon, and whether it erases.
    """

    stroke_drawn = Signal(object, bool)

    def __init__(self, view: QGraphicsView) -> None:
        super().__init__(view)
        self.erase = False
        #: Brush radius in level-0 px (the panel sets it from µm).
        self.radius = 50.0
        self._points: list[tuple[float, float]] = []
        self._preview = drawing_item(view.scene(), QPen(Qt.PenStyle.NoPen))

    def start(self, *, erase: bool) -> None:
        if self._active:
            self._stop()
        self.erase = erase
        self._points = []
        self._preview.setBrush(QBrush(ERASE_FILL if erase else BRUSH_FILL))
        self._start()
        self.hint_changed.emit(
            f"Brush ({'erase' if erase else 'add'}): drag over the region; Esc stops"
        )

    def _stop(self) -> None:
        self._points = []
        self._preview.setVisible(False)
        self._preview.setPath(QPainterPath())
        super()._stop()

    def paint_stroke(self, l0_points: list[tuple[float, float]]) -> Polygon:
        """Report a stroke through these level-0 points (the mouse, or a test)."""
        stroke = stroke_polygon(l0_points, self.radius)
        self.stroke_drawn.emit(stroke, self.erase)
        return stroke

    def _update_preview(self) -> None:
        if not self._points:
            self._preview.setVisible(False)
            return
        self._preview.setPath(polygon_path(stroke_polygon(self._points, self.radius)))
        self._preview.setVisible(True)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if not self._active:
            return False
        if watched is self._view and isinstance(event, QKeyEvent):
            return self._key(event)
        if watched is not self._view.viewport() or not isinstance(event, QMouseEvent):
            return False
        kind = event.type()
        here = self._scene_point(event)
        if kind == QEvent.Type.MouseButtonPress and event.button() == Qt.MouseButton.LeftButton:
            self._points = [(here.x(), here.y())]
            self._update_preview()
            return True
        if kind == QEvent.Type.MouseMove and self._points:
            self._points.append((here.x(), here.y()))
            self._update_preview()
            return True
        if kind == QEvent.Type.MouseButtonRelease and self._points:
            points, self._points = self._points, []
            self._preview.setVisible(False)
            self.paint_stroke(points)
            return True
        return kind in (QEvent.Type.MouseButtonDblClick,)


class VertexEditTool(_ViewTool):
    """Handles on a region's outer vertices: drag one to move it, Backspace removes the
    last one grabbed, double-click on an edge adds one; Enter applies, Esc cancels.

    Signals
    -------
    polygon_edited(object)
        The new outline (a level-0 px shapely Polygon, holes kept).
    """

    polygon_edited = Signal(object)

    def __init__(self, view: QGraphicsView) -> None:
        super().__init__(view)
        self._polygon: Polygon | None = None
        self._vertices: list[QPointF] = []
        self._handles: list[QGraphicsRectItem] = []
        self._grabbed: int | None = None
        self._last: int | None = None
        self._outline = drawing_item(view.scene())

    @property
    def vertices(self) -> list[tuple[float, float]]:
        return [(p.x(), p.y()) for p in self._vertices]

    def start(self, polygon: Polygon) -> None:
        if self._active:
            self._stop()
        self._polygon = polygon
        self._vertices = [QPointF(x, y) for x, y in list(polygon.exterior.coords)[:-1]]
        self._grabbed = self._last = None
        self._make_handles()
        self._start()
        self._refresh()
        self.hint_changed.emit(
            "Edit vertices: drag a handle, double-click an edge to add one, Backspace removes "
            "the last one moved; Enter applies, Esc cancels"
        )

    def move_vertex(self, index: int, l0_xy: tuple[float, float]) -> None:
        self._vertices[index] = QPointF(*l0_xy)
        self._last = index
        self._refresh()

    def remove_vertex(self, index: int) -> None:
        if len(self._vertices) > 3:
            del self._vertices[index]
            self._last = None
            self._make_handles()
            self._refresh()

    def insert_vertex(self, l0_xy: tuple[float, float]) -> int:
        """Add a vertex on the edge nearest ``l0_xy``; its index."""
        point = Point(l0_xy)
        count = len(self._vertices)
        edges = [
            LineString(
                [
                    (self._vertices[i].x(), self._vertices[i].y()),
                    (self._vertices[(i + 1) % count].x(), self._vertices[(i + 1) % count].y()),
                ]
            ).distance(point)
            for i in range(count)
        ]
        index = min(range(count), key=edges.__getitem__) + 1
        self._vertices.insert(index, QPointF(*l0_xy))
        self._make_handles()
        self._refresh()
        return index

    def edited_polygon(self) -> Polygon:
        assert self._polygon is not None
        return Polygon(self.vertices, [list(ring.coords) for ring in self._polygon.interiors])

    def apply(self) -> bool:
        if not self._active:
            return False
        polygon = self.edited_polygon()
        self._stop()
        self.polygon_edited.emit(polygon)
        return True

    def _stop(self) -> None:
        for handle in self._handles:
            self._view.scene().removeItem(handle)
        self._handles = []
        self._outline.setVisible(False)
        super()._stop()

    def _make_handles(self) -> None:
        for handle in self._handles:
            self._view.scene().removeItem(handle)
        self._handles = []
        half = HANDLE_PX / 2
        for _ in self._vertices:
            handle = QGraphicsRectItem(QRectF(-half, -half, HANDLE_PX, HANDLE_PX))
            handle.setFlag(QGraphicsItem.GraphicsItemFlag.ItemIgnoresTransformations)
            handle.setBrush(QBrush(QColor(255, 255, 255)))
            handle.setPen(QPen(DRAWING_COLOR, 2))
            handle.setZValue(DRAWING_Z + 0.5)
            self._view.scene().addItem(handle)
            self._handles.append(handle)

    def _refresh(self) -> None:
        for handle, vertex in zip(self._handles, self._vertices, strict=True):
            handle.setPos(vertex)
        path = QPainterPath()
        if self._vertices:
            path.moveTo(self._vertices[0])
            for vertex in self._vertices[1:]:
                path.lineTo(vertex)
            path.closeSubpath()
        self._outline.setPath(path)
        self._outline.setVisible(True)

    def _nearest(self, view_pos: QPointF) -> int | None:
        best, best_distance = None, GRAB_PX
        for index, vertex in enumerate(self._vertices):
            distance = (self._view.mapFromScene(vertex).toPointF() - view_pos).manhattanLength()
            if distance <= best_distance:
                best, best_distance = index, distance
        return best

    def _on_key(self, key: Qt.Key) -> None:
        if key == Qt.Key.Key_Escape:
            self.cancel()
        elif key == Qt.Key.Key_Backspace:
            if self._last is not None:
                self.remove_vertex(self._last)
        else:
            self.apply()

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if not self._active:
            return False
        if watched is self._view and isinstance(event, QKeyEvent):
            return self._key(event)
        if watched is not self._view.viewport() or not isinstance(event, QMouseEvent):
            return False
        kind = event.type()
        if kind == QEvent.Type.MouseButtonPress and event.button() == Qt.MouseButton.LeftButton:
            self._grabbed = self._nearest(event.position())
            return True
        if kind == QEvent.Type.MouseMove and self._grabbed is not None:
            here = self._scene_point(event)
            self.move_vertex(self._grabbed, (here.x(), here.y()))
            return True
        if kind == QEvent.Type.MouseButtonRelease:
            self._grabbed = None
            return True
        if kind == QEvent.Type.MouseButtonDblClick:
            here = self._scene_point(event)
            self._last = self.insert_vertex((here.x(), here.y()))
            return True
        return False
