"""Issue 13, item 6 in the window: split along a drawn line, brush add and erase, vertex
handles, merge of regions selected in the list; each one decision that U takes back; labels
of crowded regions never pile up."""

from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtCore import QPointF, QSettings, Qt
from shapely.geometry import LineString, Polygon

from tests.gui.test_threshold_and_history import open_and_wait, store_map
from wsiviewer.gui.main_window import MainWindow
from wsiviewer.gui.review_panel import REVIEWER_KEY


@pytest.fixture
def panel(
    qtbot, window: MainWindow, generated_slide: Path, tiny_model_card: Path, settings: QSettings
):  # type: ignore[no-untyped-def]
    settings.setValue(REVIEWER_KEY, "Dr Edit")
    store_map(generated_slide, tiny_model_card, record_set=True)  # min area 0: block and lone
    review = open_and_wait(qtbot, window, generated_slide)
    window.fit_action.trigger()
    return review


def _click(qtbot, window: MainWindow, l0_xy: tuple[float, float], double: bool = False) -> None:  # type: ignore[no-untyped-def]
    point = window.view.map_l0_to_view(l0_xy).toPoint()
    if double:
        qtbot.mouseDClick(window.view.viewport(), Qt.MouseButton.LeftButton, pos=point)
    else:
        qtbot.mouseClick(window.view.viewport(), Qt.MouseButton.LeftButton, pos=point)


def test_split_with_the_keyboard_and_mouse_then_undo(qtbot, window: MainWindow, panel) -> None:  # type: ignore[no-untyped-def]
    block = panel.state.items[0]
    assert block.polygon.bounds == (400, 400, 1600, 1200)  # 3 x 2 cells of 400 px
    panel.select(block.ref, frame=False)
    window.fit_action.trigger()
    window.view.setFocus()
    qtbot.keyClick(window.view, Qt.Key.Key_S)
    assert panel.split_tool.active
    _click(qtbot, window, (1000, 300))
    _click(qtbot, window, (1000, 1300), double=True)
    assert not panel.split_tool.active
    state = panel.state
    labels = [item.label for item in state.items]
    assert "1" not in labels  # the block is replaced by its two parts
    parts = [item for item in state.items if item.edit_kind == "split"]
    assert len(parts) == 2
    assert sum(p.polygon.area for p in parts) == pytest.approx(1200 * 800, rel=0.01)
    assert all(p.derived_from == (1,) for p in parts)
    assert panel.selected_ref == parts[0].ref
    # One decision: one U brings the block back.
    qtbot.keyClick(window.view, Qt.Key.Key_U)
    assert next(item.label for item in panel.state.items) == "1"
    assert not any(item.edit_kind for item in panel.state.items)


def test_brush_add_and_erase(qtbot, window: MainWindow, panel) -> None:  # type: ignore[no-untyped-def]
    block = panel.state.items[0]
    panel.select(block.ref, frame=False)
    panel.brush_box.setValue(50)  # µm: 100 level-0 px at 0.5 µm/px
    panel.brush_action.trigger()
    assert panel.brush_tool.active
    assert panel.brush_tool.radius == pytest.approx(100)
    # A stroke dragged from inside the region out to the right grows it.
    view = window.view
    start = view.map_l0_to_view((1500, 800)).toPoint()
    end = view.map_l0_to_view((2000, 800)).toPoint()
    qtbot.mousePress(view.viewport(), Qt.MouseButton.LeftButton, pos=start)
    for step in range(1, 6):
        point = start + (end - start) * step / 5
        qtbot.mouseMove(view.viewport(), point)
    qtbot.mouseRelease(view.viewport(), Qt.MouseButton.LeftButton, pos=end)
    grown = panel.selected_item()
    assert grown is not None
    assert grown.edit_kind == "brush-add"
    assert grown.polygon.area > block.polygon.area
    assert grown.polygon.bounds[2] > 1900
    # Erasing a band across it cuts it in two.
    panel.erase_action.trigger()
    assert panel.brush_tool.active
    assert panel.brush_tool.erase
    panel.brush_tool.paint_stroke([(1000, 200), (1000, 1400)])
    parts = [item for item in panel.state.items if item.edit_kind == "brush-erase"]
    assert len(parts) == 2
    assert [row["edit_kind"] for row in panel.session.history()] == ["brush-add", "brush-erase"]
    qtbot.keyClick(view, Qt.Key.Key_Escape)
    assert not panel.brush_tool.active
    assert panel.undo()
    assert panel.undo()
    assert panel.state.items[0].polygon.equals(block.polygon)


def test_edit_vertices(qtbot, window: MainWindow, panel) -> None:  # type: ignore[no-untyped-def]
    block = panel.state.items[0]
    panel.select(block.ref, frame=False)
    view = window.view
    legend_before = view.render_image().copy(
        view.viewport().width() - 180, view.viewport().height() - 90, 170, 40
    )
    panel.vertices_action.trigger()
    tool = panel.vertex_tool
    assert tool.active
    # The handles' white brush never fills the heatmap legend drawn over the view.
    legend_during = view.render_image().copy(
        view.viewport().width() - 180, view.viewport().height() - 90, 170, 40
    )
    assert legend_during == legend_before
    assert len(tool.vertices) == 4
    corner = next(i for i, (x, y) in enumerate(tool.vertices) if (x, y) == (1600, 1200))
    grab = view.map_l0_to_view((1600, 1200)).toPoint()
    drop = view.map_l0_to_view((1900, 1500)).toPoint()
    qtbot.mousePress(view.viewport(), Qt.MouseButton.LeftButton, pos=grab)
    qtbot.mouseMove(view.viewport(), drop)
    qtbot.mouseRelease(view.viewport(), Qt.MouseButton.LeftButton, pos=drop)
    moved = tool.vertices[corner]
    assert moved == pytest.approx((1900, 1500), abs=2 * view.l0_per_screen_px)
    qtbot.keyClick(view, Qt.Key.Key_Return)
    assert not tool.active
    reshaped = panel.selected_item()
    assert reshaped is not None
    assert reshaped.edit_kind == "vertices"
    assert reshaped.polygon.area > block.polygon.area


def test_merge_regions_selected_in_the_list(qtbot, window: MainWindow, panel) -> None:  # type: ignore[no-untyped-def]
    block, lone = panel.state.items
    panel.select(block.ref, frame=False)
    assert not panel.merge_action.isEnabled()
    panel.select_several([block.ref, lone.ref])
    assert set(panel.selected_refs()) == {block.ref, lone.ref}
    assert panel.merge_action.isEnabled()
    window.view.setFocus()
    qtbot.keyClick(window.view, Qt.Key.Key_M)
    merged = panel.state.items
    assert len(merged) == 1
    assert merged[0].edit_kind == "merge"
    assert isinstance(merged[0].polygon, Polygon)
    assert merged[0].polygon.contains(LineString([(500, 500), (2600, 1700)]).centroid)
    assert panel.undo()
    assert len(panel.state.items) == 2


def test_labels_of_crowded_regions_do_not_overlap(qtbot, window: MainWindow, panel) -> None:  # type: ignore[no-untyped-def]
    # Many small drawn regions side by side: at fit, their numbers would pile up.
    for index in range(8):
        x = 2000 + index * 60
        panel.add_manual_region([(x, 2000), (x + 40, 2000), (x + 40, 2040)])
    window.fit_action.trigger()
    qtbot.wait(10)
    overlay = panel.overlay
    shown = [overlay.item(key) for key in overlay.keys()]
    visible = [item for item in shown if item is not None and item.label_item.isVisible()]
    assert 2 <= len(visible) < len(shown)
    rects = [
        window.view.mapFromScene(item.label_anchor).toPointF()
        for item in visible
        if item is not None
    ]
    for i, a in enumerate(rects):
        for b in rects[i + 1 :]:
            assert (a - b).manhattanLength() > 5
    # Zoomed in on them, every label shows.
    panel.frame_polygon(Polygon([(2000, 1900), (2500, 1900), (2500, 2100)]))
    window.view.zoom(8)
    qtbot.wait(10)
    assert all(
        item is not None and item.label_item.isVisible()
        for item in shown
        if item is not None and window.view.visible_l0_rect().contains(QPointF(item.label_anchor))
    )
