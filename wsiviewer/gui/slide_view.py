"""The slide view: a tiled multi-resolution slide with the IDC heatmap over it.

The scene is in level-0 px (DESIGN.md), so the heatmap item is placed and scaled by the
:class:`~wsiviewer.core.analysis.grid.PatchGrid` alone. Tiles are painted in ``drawBackground``: for
every tile of the level (and reduction) the zoom asks for, the cached tile, else the same
level's tiles at another reduction, else the finest coarser level whose tiles are cached, else
the always-loaded base image (the coarsest level), so the view never flashes blank while finer
tiles arrive.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from PySide6.QtCore import QEvent, QPointF, QRect, QRectF, Qt, QTimer, Signal
from PySide6.QtGui import (
    QColor,
    QFont,
    QImage,
    QKeyEvent,
    QMouseEvent,
    QPainter,
    QPen,
    QRegion,
    QResizeEvent,
    QTransform,
    QWheelEvent,
)
from PySide6.QtWidgets import (
    QFrame,
    QGraphicsItem,
    QGraphicsScene,
    QGraphicsView,
    QStyleOptionGraphicsItem,
    QWidget,
)

from wsiviewer.core.analysis.grid import PatchGrid
from wsiviewer.core.exports.colormaps import DEFAULT_COLORMAP, apply_colormap, legend_rgba
from wsiviewer.core.exports.legend import checkerboard, format_length_um, nice_scale_length, over
from wsiviewer.core.review.wording import format_threshold
from wsiviewer.core.slides import Slide
from wsiviewer.core.units import (
    magnification_from_mpp,
    mpp_from_magnification,
    px_from_um,
    um_from_px,
)
from wsiviewer.gui.tiles import (
    DEFAULT_CACHE_BYTES,
    REDUCTIONS,
    TileKey,
    TileLayout,
    TileLoader,
)

#: Grey around the slide, as in QuPath and ASAP.
BACKGROUND = QColor(48, 48, 48)

#: Zoom steps: a wheel notch and a +/- key.
ZOOM_STEP = 1.25

#: Closest zoom, in screen px per level-0 px: twice the scan's own resolution (an 80x view of a
#: 40x scan), as QuPath allows. Past 1:1 the px are drawn as blocks, never smoothed, so tiles
#: meet without seams.
MAX_SCREEN_PER_L0 = 2.0

#: Shortest time between two paints of newly arrived tiles, ms (a 60 Hz display's frame):
#: tiles that arrive within it are painted together, so a refill of 40 tiles is painted a
#: few times instead of 40, and the GUI thread leaves the CPU to the tile decoders.
TILE_PAINT_INTERVAL_MS = 16

#: Longest scale bar, screen px: the bar is the longest 1, 2 or 5 × 10^k µm within it.
SCALE_BAR_MAX_PX = 160

#: Magnifications with number keys 1-5.
MAGNIFICATION_PRESETS = (2.5, 5.0, 10.0, 20.0, 40.0)

#: Research-use notice drawn on the view while the heatmap is shown.
HEATMAP_NOTICE = "IDC probability heatmap · breast H&E model · research use only, not a diagnosis"

#: The heatmap legend on the view: its colour bar, screen px.
LEGEND_BAR_SIZE = (150, 10)

__all__ = ["SlideView", "format_length_um", "nice_scale_length"]


class HeatmapItem(QGraphicsItem):
    """One RGBA pixel per grid cell, drawn over cell ``(r, c)``'s level-0 box, unsmoothed."""

    def __init__(self) -> None:
        super().__init__()
        self._image: QImage | None = None
        self._rect = QRectF()
        self._clip = QRectF()
        self.setZValue(1.0)

    def set_image(
        self, image: QImage | None, l0_rect: QRectF, l0_clip: QRectF | None = None
    ) -> None:
        """Cells cover ``l0_rect``; only the part inside ``l0_clip`` (the slide) is drawn:
        the last row and column of cells run past the slide's edge."""
        self.prepareGeometryChange()
        self._image = image
        self._rect = QRectF(l0_rect) if image is not None else QRectF()
        self._clip = QRectF(l0_clip) if l0_clip is not None else QRectF(self._rect)
        self.update()

    @property
    def image(self) -> QImage | None:
        return self._image

    def boundingRect(self) -> QRectF:
        return self._rect

    def paint(
        self,
        painter: QPainter,
        option: QStyleOptionGraphicsItem,
        widget: QWidget | None = None,
    ) -> None:
        if self._image is None:
            return
        # The view does not save painter state around items (DontSavePainterState).
        painter.save()
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, False)
        painter.setClipRect(self._clip, Qt.ClipOperation.IntersectClip)
        painter.drawImage(self._rect, self._image)
        painter.restore()


class SlideView(QGraphicsView):
    """Wheel zoom at the cursor, drag to pan, arrows to pan; tiles by zoom level.

    Signals
    -------
    view_changed()
        The visible area or the zoom changed.
    cursor_moved(float, float)
        The cursor is over level-0 ``(x, y)`` px.
    cursor_left()
        The cursor left the view.
    tiles_settled()
        Every tile the current view needs is loaded (or failed).
    tile_failed(str)
        A tile could not be read.
    """

    view_changed = Signal()
    cursor_moved = Signal(float, float)
    cursor_left = Signal()
    tiles_settled = Signal()
    tile_failed = Signal(str)

    def __init__(
        self, parent: QWidget | None = None, *, cache_bytes: int = DEFAULT_CACHE_BYTES
    ) -> None:
        super().__init__(parent)
        # Nesting depth of _one_move: scrolls inside it ask for no tiles.
        self._moving = 0
        self.setScene(QGraphicsScene(self))
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setBackgroundBrush(BACKGROUND)
        self.setDragMode(QGraphicsView.DragMode.ScrollHandDrag)
        self.setTransformationAnchor(QGraphicsView.ViewportAnchor.NoAnchor)
        self.setResizeAnchor(QGraphicsView.ViewportAnchor.AnchorViewCenter)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        # The scale bar and texts are fixed to the viewport: repaint it whole on scroll.
        self.setViewportUpdateMode(QGraphicsView.ViewportUpdateMode.FullViewportUpdate)
        self.setCacheMode(QGraphicsView.CacheModeFlag.CacheNone)
        self.setOptimizationFlag(QGraphicsView.OptimizationFlag.DontSavePainterState, True)
        self.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, True)
        self.viewport().setMouseTracking(True)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)

        self.loader = TileLoader(self, cache_bytes=cache_bytes)
        self.loader.tile_loaded.connect(self._on_tile_loaded)
        self.loader.tile_failed.connect(self._on_tile_failed)
        # Tiles arrived since the last paint (view px), painted when the interval is over.
        self._arrived = QRegion()
        self._paint_throttle = QTimer(self)
        self._paint_throttle.setSingleShot(True)
        self._paint_throttle.setInterval(TILE_PAINT_INTERVAL_MS)
        self._paint_throttle.timeout.connect(self._paint_arrived)

        self._slide: Slide | None = None
        self._layout: TileLayout | None = None
        self._base_image: QImage | None = None
        self._base_rect = QRectF()
        self._mpp: float | None = None
        self._wanted: list[TileKey] = []
        self._wanted_set: frozenset[TileKey] = frozenset()
        self.settled = True

        self.heatmap = HeatmapItem()
        self.scene().addItem(self.heatmap)
        self._grid: PatchGrid | None = None
        self._probabilities: np.ndarray | None = None
        self._colormap = DEFAULT_COLORMAP
        self._threshold = 0.5
        self._legend_image: QImage | None = None

    # -- slide ----------------------------------------------------------------------------

    @property
    def slide(self) -> Slide | None:
        return self._slide

    @property
    def slide_rect(self) -> QRectF:
        if self._slide is None:
            return QRectF()
        width, height = self._slide.dimensions
        return QRectF(0, 0, width, height)

    def set_slide(
        self,
        slide: Slide | None,
        base_image: QImage | None = None,
        base_level: int | None = None,
        mpp: float | None = None,
    ) -> None:
        """Show ``slide`` fitted to the view; ``base_image`` is its coarsest level or a
        thumbnail (``base_level=None``), painted wherever finer tiles are not loaded yet."""
        self.clear_probability_map()
        self._slide = slide
        self._mpp = mpp
        if slide is None:
            self.loader.set_slide(None)
            self._layout = None
            self._base_image = None
            self._base_rect = QRectF()
            self.scene().setSceneRect(QRectF())
            self._wanted, self._wanted_set = [], frozenset()
            self.viewport().update()
            return
        self._layout = TileLayout(slide.level_dimensions, slide.level_downsamples)
        self.loader.set_slide(slide, self._layout)
        self._base_image = base_image
        if base_image is not None and base_level is not None:
            l0_size = self._layout.l0_from_lv(base_level, (base_image.width(), base_image.height()))
            self._base_rect = QRectF(0, 0, *l0_size)
            self._seed_tiles(base_image, base_level)
        else:
            self._base_rect = self.slide_rect
        width, height = slide.dimensions
        margin = max(width, height)
        self.scene().setSceneRect(QRectF(-margin, -margin, width + 2 * margin, height + 2 * margin))
        self.fit()

    def set_mpp(self, mpp: float | None) -> None:
        """The µm/px of the scale bar and magnification (e.g. a user-entered value)."""
        self._mpp = mpp
        self.viewport().update()
        self.view_changed.emit()

    @property
    def mpp(self) -> float | None:
        return self._mpp

    def _seed_tiles(self, base_image: QImage, level: int) -> None:
        """Cut the already-read coarsest level into cache tiles: no second read at fit."""
        assert self._layout is not None
        cols, rows = self._layout.tile_counts(level)
        for row in range(rows):
            for col in range(cols):
                key = TileKey(level, col, row)
                self.loader.cache.put(key, base_image.copy(*self._layout.lv_box(key)))

    # -- geometry -------------------------------------------------------------------------

    @property
    def l0_per_screen_px(self) -> float:
        scale = self.transform().m11()
        return 1.0 / scale if scale > 0 else 1.0

    @property
    def screen_mpp(self) -> float | None:
        """µm per screen px at this zoom, if the slide's µm/px is known."""
        if self._mpp is None:
            return None
        return um_from_px(self.l0_per_screen_px, self._mpp)

    @property
    def magnification(self) -> float | None:
        """Equivalent objective magnification of the screen (40x at 0.25 µm per screen px),
        if µm/px is known."""
        screen_mpp = self.screen_mpp
        return None if screen_mpp is None else magnification_from_mpp(screen_mpp)

    @property
    def target_level(self) -> int:
        """The coarsest level at least as fine as the screen at this zoom."""
        return self.target_grid[0]

    @property
    def target_grid(self) -> tuple[int, int]:
        """``(level, reduction)`` of the tiles this zoom is painted from: the coarsest level at
        least as fine as the screen, averaged down as far as it stays so
        (:func:`~wsiviewer.gui.tiles.reduction_for`)."""
        if self._layout is None:
            return 0, 1
        return self._layout.grid_for(self.l0_per_screen_px / self.devicePixelRatioF())

    def visible_l0_rect(self) -> QRectF:
        return self.mapToScene(self.viewport().rect()).boundingRect()

    def view_center_l0(self) -> QPointF:
        return self.mapToScene(self.viewport().rect().center())

    def map_l0_to_view(self, l0_xy: tuple[float, float]) -> QPointF:
        """Viewport px of a level-0 point (float precision)."""
        return self.viewportTransform().map(QPointF(*l0_xy))

    def _fit_scale(self) -> float:
        rect = self.slide_rect
        if rect.isEmpty():
            return 1.0
        viewport = self.viewport().rect()
        return 0.98 * min(viewport.width() / rect.width(), viewport.height() / rect.height())

    def _clamped_scale(self, scale: float) -> float:
        return min(max(scale, self._fit_scale() / 4), MAX_SCREEN_PER_L0)

    def fit(self) -> None:
        """The whole slide in the view."""
        if self._slide is None:
            return
        self._set_scale(self._fit_scale(), self.slide_rect.center())

    def _set_scale(self, scale: float, center_l0: QPointF) -> None:
        with self._one_move():
            self.setTransform(QTransform.fromScale(scale, scale))
            self.centerOn(center_l0)

    def zoom(self, factor: float, view_pos: QPointF | None = None) -> None:
        """Zoom by ``factor`` keeping the point under ``view_pos`` (default: centre) fixed."""
        if self._slide is None:
            return
        if view_pos is None:
            view_pos = QPointF(self.viewport().rect().center())
        anchor_l0 = self.viewportTransform().inverted()[0].map(view_pos)
        old = self.transform().m11()
        new = self._clamped_scale(old * factor)
        if math.isclose(new, old):
            return
        with self._one_move():
            self.setTransform(QTransform.fromScale(new, new))
            # Scroll so the anchor is back under view_pos.
            moved = self.viewportTransform().map(anchor_l0) - view_pos
            horizontal, vertical = self.horizontalScrollBar(), self.verticalScrollBar()
            horizontal.setValue(horizontal.value() + round(moved.x()))
            vertical.setValue(vertical.value() + round(moved.y()))

    def set_magnification(self, magnification: float) -> bool:
        """Zoom to an objective-equivalent magnification; ``False`` without µm/px."""
        if self._slide is None or self._mpp is None:
            return False
        # Screen px per level-0 px: the slide's µm/px over the screen's at that magnification.
        scale = self._clamped_scale(self._mpp / mpp_from_magnification(magnification))
        self._set_scale(scale, self.view_center_l0())
        return True

    def center_on_l0(self, l0_x: float, l0_y: float) -> None:
        with self._one_move():
            self.centerOn(QPointF(l0_x, l0_y))

    def pan_by_fraction(self, dx: float, dy: float) -> None:
        """Pan by a fraction of the viewport (arrow keys: a quarter)."""
        viewport = self.viewport().rect()
        horizontal, vertical = self.horizontalScrollBar(), self.verticalScrollBar()
        with self._one_move():
            horizontal.setValue(horizontal.value() + round(dx * viewport.width()))
            vertical.setValue(vertical.value() + round(dy * viewport.height()))

    # -- events ---------------------------------------------------------------------------

    def wheelEvent(self, event: QWheelEvent) -> None:
        steps = event.angleDelta().y() / 120.0
        if steps:
            self.zoom(ZOOM_STEP**steps, event.position())
        event.accept()

    def keyPressEvent(self, event: QKeyEvent) -> None:
        moves = {
            Qt.Key.Key_Left: (-0.25, 0.0),
            Qt.Key.Key_Right: (0.25, 0.0),
            Qt.Key.Key_Up: (0.0, -0.25),
            Qt.Key.Key_Down: (0.0, 0.25),
        }
        move = moves.get(Qt.Key(event.key()))
        if move is not None:
            self.pan_by_fraction(*move)
            event.accept()
            return
        super().keyPressEvent(event)

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        super().mouseMoveEvent(event)
        if self._slide is not None:
            l0 = self.viewportTransform().inverted()[0].map(event.position())
            self.cursor_moved.emit(l0.x(), l0.y())

    def leaveEvent(self, event: QEvent) -> None:
        super().leaveEvent(event)
        self.cursor_left.emit()

    def scrollContentsBy(self, dx: int, dy: int) -> None:
        super().scrollContentsBy(dx, dy)
        if not self._moving:
            self._view_moved()

    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)
        self._view_moved()

    # -- tiles ----------------------------------------------------------------------------

    @contextmanager
    def _one_move(self) -> Iterator[None]:
        """Scrolls and zooms inside are one move: tiles are asked for once, where the view
        ends up. (A jump scrolls x, then y: the tiles of the place in between, half of them
        read by the time y scrolls, are never wanted.)"""
        self._moving += 1
        try:
            yield
        finally:
            self._moving -= 1
            if not self._moving:
                self._view_moved()

    def _view_moved(self) -> None:
        self._request_tiles()
        self.view_changed.emit()

    def _request_tiles(self) -> None:
        if self._layout is None or self._slide is None:
            return
        visible = self.visible_l0_rect().intersected(self.slide_rect)
        if visible.isEmpty():
            self._wanted, self._wanted_set = [], frozenset()
        else:
            box = (visible.x(), visible.y(), visible.width(), visible.height())
            level, reduction = self.target_grid
            self._wanted = self._layout.tiles_in(level, box, reduction)
            self._wanted_set = frozenset(self._wanted)
        self.loader.request(self._wanted)
        self._check_settled()

    def _check_settled(self) -> None:
        settled = not self.loader.missing(self._wanted)
        if settled and not self.settled:
            self.settled = True
            self.tiles_settled.emit()
        elif not settled:
            self.settled = False

    def _on_tile_loaded(self, key: TileKey) -> None:
        if key in self._wanted_set and self._layout is not None:
            view_rect = self.mapFromScene(QRectF(*self._layout.l0_box(key))).boundingRect()
            self._check_settled()
            if self.settled or not self._paint_throttle.isActive():
                # The first tile after a pause, or the last one the view needs: paint now.
                self._paint_arrived(view_rect)
            else:
                self._arrived += view_rect

    def _paint_arrived(self, view_rect: QRect | None = None) -> None:
        """Repaint where tiles arrived, then hold further tile paints for an interval."""
        if view_rect is not None:
            self._arrived += view_rect
        if not self._arrived.isEmpty():
            self.viewport().update(self._arrived)
            self._arrived = QRegion()
            self._paint_throttle.start()

    def _on_tile_failed(self, key: TileKey, message: str) -> None:
        self.tile_failed.emit(message)
        self._check_settled()

    def drawBackground(self, painter: QPainter, rect: QRectF | QRect) -> None:
        """Tiles under the exposed level-0 ``rect``, stand-ins where they are not loaded."""
        painter.fillRect(rect, BACKGROUND)
        if self._slide is None or self._layout is None:
            return
        exposed = QRectF(rect).intersected(self.slide_rect)
        if exposed.isEmpty():
            return
        painter.fillRect(exposed, Qt.GlobalColor.white)
        layout = self._layout
        cache = self.loader.cache
        box = (exposed.x(), exposed.y(), exposed.width(), exposed.height())
        level, reduction = self.target_grid
        # Past 1:1 the tiles are enlarged: blocks, not a blur, and no seams where they meet.
        painter.setRenderHint(
            QPainter.RenderHint.SmoothPixmapTransform, self.transform().m11() <= 1.0
        )
        cached: list[tuple[TileKey, QImage]] = []
        missing: list[QRectF] = []
        for key in layout.tiles_in(level, box, reduction):
            image = cache.get(key)
            if image is not None:
                cached.append((key, image))
            else:
                missing.append(QRectF(*layout.l0_box(key)).intersected(exposed))
        if missing:
            # Before the tiles that are there: a stand-in may spill a fraction of a px.
            self._draw_fallback(
                painter, missing, _fallback_grids(level, reduction, layout.level_count)
            )
        for key, image in cached:
            tile_rect = QRectF(*layout.l0_box(key))
            image_rect = QRectF(*layout.l0_image_box(key))
            if image_rect == tile_rect:
                painter.drawImage(tile_rect, image)
            else:
                # A partial block at the slide's edge: its px is wider than the slide.
                _draw_part(painter, image, image_rect, exposed)

    def _draw_fallback(
        self, painter: QPainter, targets: list[QRectF], grids: list[tuple[int, int]]
    ) -> None:
        """Paint each of ``targets`` from the first of ``grids`` (``(level, reduction)``)
        whose tiles there are all cached, and the others from the base image.

        The base image is drawn first, once under all the targets it stands in for: scaling
        it up smoothly costs per call, four times as much as one call over the same area.
        """
        assert self._layout is not None
        layout = self._layout
        cache = self.loader.cache
        grids = [grid for grid in grids if cache.has_grid(*grid)]
        from_base: list[QRectF] = []
        from_tiles: list[tuple[QImage, QRectF, QRectF]] = []  # image, its box, the target
        for target in targets:
            box = (target.x(), target.y(), target.width(), target.height())
            for level, reduction in grids:
                keys = layout.tiles_in(level, box, reduction)
                images = [cache.peek(key) for key in keys]
                if keys and all(image is not None for image in images):
                    for key, image in zip(keys, images, strict=True):
                        assert image is not None
                        from_tiles.append((image, QRectF(*layout.l0_image_box(key)), target))
                    break
            else:
                from_base.append(target)
        if from_base and self._base_image is not None:
            bounds = QRectF(from_base[0])
            region = QRegion()
            for target in from_base:
                bounds = bounds.united(target)
                region += target.toAlignedRect()
            painter.save()
            painter.setClipRegion(region, Qt.ClipOperation.IntersectClip)
            _draw_part(painter, self._base_image, self._base_rect, bounds)
            painter.restore()
        for image, image_rect, target in from_tiles:
            _draw_part(painter, image, image_rect, target)

    # -- heatmap --------------------------------------------------------------------------

    @property
    def grid(self) -> PatchGrid | None:
        return self._grid

    @property
    def probabilities(self) -> np.ndarray | None:
        return self._probabilities

    def set_probability_map(self, grid: PatchGrid, probabilities: np.ndarray) -> None:
        """Show (or refresh, while analysis runs) a probability map on its grid."""
        self._grid = grid
        self._probabilities = np.asarray(probabilities, dtype=np.float32)
        self._refresh_heatmap()

    def clear_probability_map(self) -> None:
        self._grid = None
        self._probabilities = None
        self.heatmap.set_image(None, QRectF())

    def set_heatmap_style(
        self,
        *,
        colormap: str | None = None,
        threshold: float | None = None,
        opacity: float | None = None,
        visible: bool | None = None,
    ) -> None:
        if colormap is not None:
            self._colormap = colormap
        if threshold is not None:
            self._threshold = threshold
        if colormap is not None or threshold is not None:
            self._legend_image = None
        if opacity is not None:
            self.heatmap.setOpacity(opacity)
        if visible is not None:
            self.heatmap.setVisible(visible)
        if colormap is not None or threshold is not None:
            self._refresh_heatmap()
        self.viewport().update()

    @property
    def heatmap_shown(self) -> bool:
        return self.heatmap.isVisible() and self.heatmap.image is not None

    def probability_at(self, l0_xy: tuple[float, float]) -> float | None:
        """P(IDC) of the cell under a level-0 point; ``None`` outside the map or unscored."""
        if self._grid is None or self._probabilities is None:
            return None
        grid_rc = self._grid.grid_rc_at(l0_xy)
        if grid_rc is None:
            return None
        value = float(self._probabilities[grid_rc])
        return None if math.isnan(value) else value

    def heatmap_thumbnail(self) -> QImage | None:
        return self.heatmap.image

    def _refresh_heatmap(self) -> None:
        if self._grid is None or self._probabilities is None or self._grid.cell_count == 0:
            self.heatmap.set_image(None, QRectF())
            return
        # Opaque from the threshold up, fading below it: the tissue stays readable.
        rgba = np.ascontiguousarray(
            apply_colormap(self._probabilities, self._colormap, ramp_to=self._threshold)
        )
        rows, cols = rgba.shape[:2]
        image = QImage(rgba.data, cols, rows, 4 * cols, QImage.Format.Format_RGBA8888).copy()
        self.heatmap.set_image(image, QRectF(0, 0, *self._grid.l0_extent), self.slide_rect)
        self.view_changed.emit()

    # -- overlays fixed to the viewport -----------------------------------------------------

    def drawForeground(self, painter: QPainter, rect: QRectF | QRect) -> None:
        if self._slide is None:
            return
        painter.save()
        painter.resetTransform()
        # Items may leave their state on the painter (DontSavePainterState: an opacity, a
        # brush that would fill the legend's frame): the scale bar, legend and notice are
        # always drawn whole.
        painter.setOpacity(1.0)
        painter.setClipping(False)
        painter.setBrush(Qt.BrushStyle.NoBrush)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        viewport = self.viewport().rect()
        font = QFont(self.font())
        font.setPointSizeF(max(8.0, font.pointSizeF()))
        painter.setFont(font)
        metrics = painter.fontMetrics()
        screen_mpp = self.screen_mpp
        if screen_mpp is not None:
            length_um = nice_scale_length(um_from_px(SCALE_BAR_MAX_PX, screen_mpp))
            if length_um > 0:
                bar_px = px_from_um(length_um, screen_mpp)
                label = format_length_um(length_um)
                x0, y0 = 16, viewport.height() - 18
                box = QRectF(
                    x0 - 8,
                    y0 - metrics.height() - 12,
                    max(bar_px, metrics.horizontalAdvance(label)) + 16,
                    metrics.height() + 22,
                )
                painter.fillRect(box, QColor(255, 255, 255, 200))
                pen = QPen(QColor(0, 0, 0), 3)
                painter.setPen(pen)
                painter.drawLine(QPointF(x0, y0), QPointF(x0 + bar_px, y0))
                painter.drawLine(QPointF(x0, y0 - 5), QPointF(x0, y0 + 2))
                painter.drawLine(QPointF(x0 + bar_px, y0 - 5), QPointF(x0 + bar_px, y0 + 2))
                painter.drawText(QPointF(x0, y0 - 8), label)
        magnification = self.magnification
        zoom_text = (
            f"{magnification:.1f}x"
            if magnification is not None
            else f"{100 / self.l0_per_screen_px:.1f}%"
        )
        width = metrics.horizontalAdvance(zoom_text) + 16
        zoom_box = QRectF(viewport.width() - width - 10, 10, width, metrics.height() + 8)
        painter.fillRect(zoom_box, QColor(255, 255, 255, 200))
        painter.setPen(QColor(0, 0, 0))
        painter.drawText(zoom_box, Qt.AlignmentFlag.AlignCenter, zoom_text)
        if self.heatmap_shown:
            width = metrics.horizontalAdvance(HEATMAP_NOTICE) + 16
            notice_box = QRectF(
                viewport.width() - width - 10,
                viewport.height() - metrics.height() - 18,
                width,
                metrics.height() + 8,
            )
            painter.fillRect(notice_box, QColor(255, 255, 255, 215))
            painter.setPen(QColor(150, 0, 0))
            painter.drawText(notice_box, Qt.AlignmentFlag.AlignCenter, HEATMAP_NOTICE)
            self._draw_legend(painter, notice_box.top() - 6)
        painter.restore()

    def _draw_legend(self, painter: QPainter, bottom: float) -> None:
        """The heatmap's colour bar with its alpha ramp over checks, and the threshold, at
        the bottom right above the research notice."""
        metrics = painter.fontMetrics()
        bar_width, bar_height = LEGEND_BAR_SIZE
        if self._legend_image is None:
            pixels = np.ascontiguousarray(
                over(
                    checkerboard(bar_height, bar_width, 4),
                    legend_rgba(bar_width, bar_height, self._threshold, self._colormap),
                )
            )
            self._legend_image = QImage(
                pixels.data, bar_width, bar_height, 3 * bar_width, QImage.Format.Format_RGB888
            ).copy()
        caption = f"P(IDC) 0–1 · threshold {format_threshold(self._threshold)}"
        width = max(bar_width, metrics.horizontalAdvance(caption)) + 16
        height = bar_height + metrics.height() + 14
        viewport = self.viewport().rect()
        box = QRectF(viewport.width() - width - 10, bottom - height, width, height)
        painter.fillRect(box, QColor(255, 255, 255, 215))
        bar = QRectF(box.x() + 8, box.y() + 6, bar_width, bar_height)
        painter.drawImage(bar, self._legend_image)
        painter.setPen(QPen(QColor(80, 80, 80), 1))
        painter.drawRect(bar)
        cut = bar.x() + bar.width() * min(max(self._threshold, 0.0), 1.0)
        painter.setPen(QPen(QColor(213, 94, 0), 2))
        painter.drawLine(QPointF(cut, bar.top() - 3), QPointF(cut, bar.bottom() + 3))
        painter.setPen(QColor(0, 0, 0))
        painter.drawText(QPointF(box.x() + 8, bar.bottom() + 4 + metrics.ascent()), caption)

    def render_image(self) -> QImage:
        """The view as it is on screen: tiles, heatmap, outlines, scale bar, legend and
        notice (what "Save view as image" writes)."""
        return self.viewport().grab().toImage()

    # -- lifetime -------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop tile loading (waits for reads in progress)."""
        self._paint_throttle.stop()
        self.loader.shutdown()


def _fallback_grids(level: int, reduction: int, level_count: int) -> list[tuple[int, int]]:
    """Where to look, in order, for tiles to stand in for missing ``(level, reduction)`` ones.

    The same level first (zooming across a reduction step keeps the level's sharp tiles,
    nearest reduction first), then the coarser levels, finest first.
    """
    same_level = sorted(
        (r for r in REDUCTIONS if r != reduction), key=lambda r: (abs(math.log2(r / reduction)), r)
    )
    grids = [(level, r) for r in same_level]
    grids += [(coarser, r) for coarser in range(level + 1, level_count) for r in REDUCTIONS]
    return grids


def _draw_part(painter: QPainter, image: QImage, image_rect: QRectF, target: QRectF) -> None:
    """Draw the part of ``image`` (covering level-0 ``image_rect``) that falls in ``target``."""
    part = image_rect.intersected(target)
    if part.isEmpty():
        return
    scale_x = image.width() / image_rect.width()
    scale_y = image.height() / image_rect.height()
    source = QRectF(
        (part.x() - image_rect.x()) * scale_x,
        (part.y() - image_rect.y()) * scale_y,
        part.width() * scale_x,
        part.height() * scale_y,
    )
    painter.drawImage(part, image, source)
