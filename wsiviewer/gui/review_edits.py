"""Region editing: drawing, splitting, brushing, moving vertices, merging, importing regions.

:class:`RegionEditor` owns the edit tools on the slide (:class:`~wsiviewer.gui.region_items.
PolygonDrawTool` for a drawn region and a split line, :class:`~wsiviewer.gui.edit_tools.
BrushTool`, :class:`~wsiviewer.gui.edit_tools.VertexEditTool`), their actions and keys
(D, S, B / E, V, M), the brush radius and the tools' hint line, and what an edit does: one
decision through the :class:`~wsiviewer.gui.review_controller.ReviewController` (so U takes a
whole edit back) on the regions selected in the :class:`~wsiviewer.gui.review_list.RegionList`,
after which the regions the edit made are selected. A QuPath GeoJSON's annotations come in
the same way, as regions added by the reviewer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtGui import QAction
from PySide6.QtWidgets import QDoubleSpinBox, QHBoxLayout, QLabel
from shapely.geometry import Polygon

from wsiviewer.core.units import px_from_um
from wsiviewer.gui.edit_tools import BrushTool, VertexEditTool
from wsiviewer.gui.region_items import PolygonDrawTool
from wsiviewer.gui.region_table import region_label
from wsiviewer.gui.review_widgets import make_action

if TYPE_CHECKING:
    from wsiviewer.core.review.log import RegionRef
    from wsiviewer.gui.review_controller import ReviewController
    from wsiviewer.gui.review_list import RegionList
    from wsiviewer.gui.slide_view import SlideView

#: The brush's radius to start with, µm.
DEFAULT_BRUSH_UM = 50.0


class RegionEditor(QObject):
    """The edit tools, their actions, and the edits they record.

    Signals
    -------
    status_reported(str)
        A short message for the status bar (the tools' hints too).
    failed(str, str)
        Title and message of an error to show the user.
    """

    status_reported = Signal(str)
    failed = Signal(str, str)

    def __init__(
        self,
        view: SlideView,
        controller: ReviewController,
        regions: RegionList,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self._view = view
        self._controller = controller
        self._regions = regions
        self.draw_tool = PolygonDrawTool(view)
        self.split_tool = PolygonDrawTool(view, closed=False, what="a split line")
        self.brush_tool = BrushTool(view)
        self.vertex_tool = VertexEditTool(view)
        self._build_actions()
        self.brush_box = QDoubleSpinBox()
        self.brush_box.setRange(5.0, 2000.0)
        self.brush_box.setSingleStep(10.0)
        self.brush_box.setDecimals(0)
        self.brush_box.setSuffix(" µm")
        self.brush_box.setValue(DEFAULT_BRUSH_UM)
        self.brush_box.setToolTip("Brush radius")
        self.hint_label = QLabel()
        self.hint_label.setWordWrap(True)
        self._connect()

    def _build_actions(self) -> None:
        self.draw_action = make_action(
            self,
            "&Draw region",
            self._toggle_drawing,
            ["D"],
            "Draw an IDC region the model missed (it is accepted as drawn)",
        )
        self.split_action = make_action(
            self,
            "&Split region",
            self._toggle_split,
            ["S"],
            "Split the selected region along a line",
        )
        self.brush_action = make_action(
            self, "&Brush: add", lambda: self._toggle_brush(erase=False), ["B"], "Add to the region"
        )
        self.erase_action = make_action(
            self, "&Brush: erase", lambda: self._toggle_brush(erase=True), ["E"], "Erase from it"
        )
        self.vertices_action = make_action(
            self, "Edit &vertices", self._toggle_vertices, ["V"], "Move the region's vertices"
        )
        for action in self.tool_actions:
            action.setCheckable(True)
        self.merge_action = make_action(
            self,
            "&Merge regions",
            self.merge_selected,
            ["M"],
            "Merge the regions selected in the list",
        )

    def _connect(self) -> None:
        self.brush_box.valueChanged.connect(self._update_brush_radius)
        self.brush_box.editingFinished.connect(self._give_keys_back)
        self.draw_tool.polygon_drawn.connect(self._on_polygon_drawn)
        self.split_tool.polygon_drawn.connect(self._on_split_line_drawn)
        self.brush_tool.stroke_drawn.connect(self._on_stroke_drawn)
        self.vertex_tool.polygon_edited.connect(self._on_vertices_edited)
        self.draw_tool.active_changed.connect(self.draw_action.setChecked)
        self.split_tool.active_changed.connect(self.split_action.setChecked)
        self.vertex_tool.active_changed.connect(self.vertices_action.setChecked)
        self.brush_tool.active_changed.connect(self._on_brush_active)
        tools: list[PolygonDrawTool | BrushTool | VertexEditTool] = [
            self.draw_tool,
            self.split_tool,
            self.brush_tool,
            self.vertex_tool,
        ]
        for tool in tools:
            tool.hint_changed.connect(self.status_reported)
            tool.hint_changed.connect(self.hint_label.setText)
            tool.active_changed.connect(lambda active: None if active else self.hint_label.clear())

    @property
    def tool_actions(self) -> list[QAction]:
        """The actions that start (and stop) a tool on the slide: checked while it is on."""
        return [
            self.draw_action,
            self.split_action,
            self.brush_action,
            self.erase_action,
            self.vertices_action,
        ]

    @property
    def actions(self) -> list[QAction]:
        """Every edit action (a Review menu section, the toolbar)."""
        return [*self.tool_actions, self.merge_action]

    @property
    def button_actions(self) -> list[tuple[QAction, str]]:
        """The edit buttons, each naming its key."""
        return [
            (self.draw_action, "Draw (D)"),
            (self.split_action, "Split (S)"),
            (self.brush_action, "Brush + (B)"),
            (self.erase_action, "Erase (E)"),
            (self.vertices_action, "Vertices (V)"),
            (self.merge_action, "Merge (M)"),
        ]

    def brush_row(self) -> QHBoxLayout:
        row = QHBoxLayout()
        row.addWidget(QLabel("Brush radius"))
        row.addWidget(self.brush_box)
        row.addStretch(1)
        return row

    def update_actions(self) -> None:
        has_review = self._controller.state is not None
        has_selection = has_review and self._regions.selected_item() is not None
        for action in (
            self.split_action,
            self.brush_action,
            self.erase_action,
            self.vertices_action,
        ):
            action.setEnabled(has_selection)
        self.merge_action.setEnabled(has_review and len(self._regions.selected_refs()) >= 2)
        self.draw_action.setEnabled(has_review)

    def _give_keys_back(self) -> None:
        """The letter shortcuts work again at once: the keyboard goes back to the slide."""
        self._view.setFocus(Qt.FocusReason.OtherFocusReason)

    # -- the tools --------------------------------------------------------------------------

    def cancel(self) -> None:
        """Stop any drawing or edit in progress (nothing is recorded)."""
        self.draw_tool.cancel()
        self.split_tool.cancel()
        self.brush_tool.cancel()
        self.vertex_tool.cancel()

    def _start_tool(self, start: Callable[[], object], action: QAction) -> None:
        self.cancel()
        if self._controller.state is None:
            action.setChecked(False)
            return
        start()

    def _toggle_drawing(self) -> None:
        if self.draw_tool.active:
            self.draw_tool.cancel()
        else:
            self._start_tool(self.draw_tool.start, self.draw_action)

    def _toggle_split(self) -> None:
        if self.split_tool.active:
            self.split_tool.cancel()
        elif self._need_selection(self.split_action):
            self._start_tool(self.split_tool.start, self.split_action)

    def _toggle_brush(self, *, erase: bool) -> None:
        action = self.erase_action if erase else self.brush_action
        if self.brush_tool.active and self.brush_tool.erase == erase:
            self.brush_tool.cancel()
        elif self._need_selection(action):
            self._update_brush_radius()
            self._start_tool(lambda: self.brush_tool.start(erase=erase), action)

    def _toggle_vertices(self) -> None:
        item = self._regions.selected_item()
        if self.vertex_tool.active:
            self.vertex_tool.cancel()
        elif item is not None and self._need_selection(self.vertices_action):
            self._start_tool(lambda: self.vertex_tool.start(item.polygon), self.vertices_action)

    def _need_selection(self, action: QAction) -> bool:
        if self._regions.selected_item() is None:
            action.setChecked(False)
            self.status_reported.emit("Select a region first (N / P)")
            return False
        return True

    def _on_brush_active(self, active: bool) -> None:
        self.brush_action.setChecked(active and not self.brush_tool.erase)
        self.erase_action.setChecked(active and self.brush_tool.erase)

    def _update_brush_radius(self) -> None:
        mpp = self._view.mpp
        radius_um = self.brush_box.value()
        self.brush_tool.radius = px_from_um(radius_um, mpp) if mpp else radius_um * 4

    def _on_polygon_drawn(self, vertices: list[tuple[float, float]]) -> None:
        self.add_manual_region(vertices)

    def _on_split_line_drawn(self, vertices: list[tuple[float, float]]) -> None:
        self.split_selected(vertices)

    def _on_stroke_drawn(self, stroke: Polygon, erase: bool) -> None:
        made = self.brush_selected(stroke, erase=erase)
        if made and self.brush_tool.active:
            self._give_keys_back()  # keep brushing the region the stroke made

    def _on_vertices_edited(self, polygon: Polygon) -> None:
        self.move_selected_vertices(polygon)

    # -- the edits --------------------------------------------------------------------------

    def add_manual_region(
        self, l0_vertices: Sequence[tuple[float, float]] | Polygon, note: str = ""
    ) -> RegionRef | None:
        """Add a region the reviewer drew (level-0 px), accepted as drawn, and select it."""
        polygon = l0_vertices if isinstance(l0_vertices, Polygon) else Polygon(l0_vertices)
        if not polygon.is_valid or polygon.area <= 0:
            self.failed.emit(
                "Cannot add the region",
                "The outline crosses itself or encloses nothing; draw it again.",
            )
            return None
        ref = self._controller.apply(
            "add the region", lambda s: s.add_manual_region(polygon, note=note)
        )
        if ref is None:
            return None
        self._regions.select(ref, frame=False)  # type: ignore[arg-type]
        item = self._regions.selected_item()
        self.status_reported.emit(
            f"Region {region_label(item) if item else ''} added, accepted as drawn"
            + (f", {item.area_mm2:.3f} mm²" if item else "")
            + " (R rejects it, U undoes)"
        )
        return ref  # type: ignore[return-value]

    def _edited(self, what: str, refs: object) -> list[RegionRef]:
        """Select the regions an edit made and say what happened."""
        made = list(refs) if isinstance(refs, list) else [refs]
        if not made:
            return []
        self._regions.select(made[0], frame=False)  # type: ignore[arg-type]
        state = self._controller.state
        labels = ", ".join(
            item.label for item in (state.items if state else ()) if item.ref in made
        )
        self.status_reported.emit(f"{what}: {labels} (one decision: U undoes it)")
        return made  # type: ignore[return-value]

    def split_selected(self, l0_line: Sequence[tuple[float, float]]) -> list[RegionRef]:
        item = self._regions.selected_item()
        if item is None:
            return []
        parts = self._controller.apply("split the region", lambda s: s.split(item.ref, l0_line))
        return [] if parts is None else self._edited(f"Region {item.label} split", parts)

    def brush_selected(self, stroke: Polygon, *, erase: bool) -> list[RegionRef]:
        item = self._regions.selected_item()
        if item is None:
            return []
        what = "erase from the region" if erase else "add to the region"
        parts = self._controller.apply(what, lambda s: s.brush(item.ref, stroke, erase=erase))
        if parts is None:
            return []
        verb = "erased from" if erase else "added to"
        return self._edited(f"Brush {verb} region {item.label}", parts)

    def move_selected_vertices(self, polygon: Polygon) -> RegionRef | None:
        item = self._regions.selected_item()
        if item is None:
            return None
        ref = self._controller.apply(
            "move the vertices", lambda s: s.move_vertices(item.ref, polygon)
        )
        if ref is None:
            return None
        return self._edited(f"Region {item.label} reshaped", ref)[0]

    def merge_selected(self) -> RegionRef | None:
        refs = self._regions.selected_refs()
        if len(refs) < 2:
            self.status_reported.emit("Select two or more regions in the list (Ctrl+click)")
            return None
        ref = self._controller.apply("merge the regions", lambda s: s.merge(refs))
        if ref is None:
            return None
        return self._edited(f"{len(refs)} regions merged", ref)[0]

    def import_qupath(self, path: str | Path) -> int | None:
        """Add a QuPath GeoJSON's annotations as regions (each keeps its class; a feature
        already in the review is not added again); how many were added, ``None`` on error."""
        if self._controller.state is None:
            self.failed.emit(
                "Cannot import annotations", "Open a slide with an analysis to review first."
            )
            return None
        from wsiviewer.core.review.qupath_import import ImportResult, import_annotations

        result = self._controller.apply(
            "import the annotations", lambda s: import_annotations(s, Path(path))
        )
        if not isinstance(result, ImportResult):
            return None
        self.status_reported.emit(f"{result.text} (U undoes the last)")
        return result.added
