"""Review of flagged regions in the window: keyboard flow, outlines, manual regions, Store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import QSettings, Qt
from PySide6.QtWidgets import QApplication

from wsiviewer.core.analysis.grid import PatchGrid
from wsiviewer.core.analysis.probability import ProbabilityMap
from wsiviewer.core.model.cards import ModelCard
from wsiviewer.core.review.log import RegionRef
from wsiviewer.core.review.session import ReviewSession
from wsiviewer.core.slides import open_slide
from wsiviewer.core.slides.label import slide_label
from wsiviewer.core.store.database import Store
from wsiviewer.gui.main_window import MainWindow
from wsiviewer.gui.region_items import STATUS_STYLES
from wsiviewer.gui.review_panel import REVIEWER_KEY, ReviewPanel

REVIEWER = "Dr Test"

#: Probabilities of the synthetic map (8 x 6 cells of 400 px at 0.5 µm/px), 0.2 elsewhere:
#: three regions at the card's 0.5 threshold, two of them at 0.75.
#: Regions are numbered by decreasing max probability.
HOT_CELLS: dict[tuple[int, int], float] = {
    (1, 1): 0.95,  # region 1: one cell
    (4, 2): 0.9,  # region 2: two cells, max 0.9, mean 0.725
    (4, 3): 0.55,
    (1, 5): 0.8,  # region 3: two cells, max 0.8, mean 0.79
    (2, 5): 0.78,
}


def _store_analysis(slide_path: Path, card_path: Path, min_area_mm2: float | None = 0.0) -> int:
    """Record an analysis of the map :data:`HOT_CELLS`, and (as ``analyze`` does) its region
    set at the card's threshold and ``min_area_mm2`` (``None``: no set yet)."""
    from wsiviewer.core.analysis.pipeline import Analysis, SlideSummary
    from wsiviewer.core.analysis.regions import find_regions
    from wsiviewer.core.analysis.tissue import TissueSettings

    card = ModelCard.from_file(card_path)
    with open_slide(slide_path) as slide:
        mpp = slide.mpp
        assert mpp is not None
        grid = PatchGrid.for_slide(slide.dimensions, mpp.value, card.input_mpp, card.input_size)
        probabilities = np.full(grid.shape, 0.2, np.float32)
        for rc, value in HOT_CELLS.items():
            probabilities[rc] = value
        analysis = Analysis(
            slide=SlideSummary(slide.identity, slide.vendor, slide.dimensions, mpp),
            model=card.summary(),
            tissue_settings=TissueSettings(),
            probability_map=ProbabilityMap(grid, probabilities, np.ones(grid.shape, bool)),
            device="CPU",
            batch_size=1,
            started_at="2025-01-01T00:00:00+00:00",
        )
    with Store.open() as store:
        analysis_id = store.save_analysis(analysis)
        if min_area_mm2 is not None:
            regions = find_regions(analysis.probability_map, card.threshold, min_area_mm2)
            store.save_region_set(analysis_id, regions)
        return analysis_id


@pytest.fixture
def reviewed_slide(generated_slide: Path, tiny_model_card: Path, settings: QSettings) -> Path:
    """The generated slide with a stored analysis of three regions; the reviewer is known."""
    _store_analysis(generated_slide, tiny_model_card)
    settings.setValue(REVIEWER_KEY, REVIEWER)
    return generated_slide


def _open(qtbot, window: MainWindow, slide: Path) -> ReviewPanel:  # type: ignore[no-untyped-def]
    panel = window.review_panel
    with qtbot.waitSignal(panel.review_opened, timeout=10_000):
        assert window.open_slide(slide)
    window.activateWindow()
    qtbot.waitUntil(lambda: QApplication.activeWindow() is window)
    return panel


def _press(qtbot, window: MainWindow, key: Qt.Key, modifier=Qt.KeyboardModifier.NoModifier) -> None:  # type: ignore[no-untyped-def]
    target = QApplication.focusWidget() or window
    qtbot.keyClick(target, key, modifier)


def _statuses(panel: ReviewPanel) -> dict[int, str]:
    assert panel.state is not None
    return {item.number: item.status for item in panel.state.items}


def _number(panel: ReviewPanel) -> int | None:
    item = panel.selected_item()
    return None if item is None else item.number


def test_keyboard_review_flow_outlines_and_progress(
    qtbot, window: MainWindow, reviewed_slide: Path
) -> None:  # type: ignore[no-untyped-def]
    panel = _open(qtbot, window, reviewed_slide)
    state = panel.state
    assert state is not None
    assert state.threshold == pytest.approx(0.5)  # the card's
    assert state.min_area_mm2 == 0.0
    assert [item.number for item in state.items] == [1, 2, 3]
    assert panel.progress_label.text() == "0 of 3 reviewed"
    # The list is sorted by max probability; the table shows area in mm² and both P.
    assert [panel.proxy.index(r, 2).data() for r in range(3)] == ["0.95", "0.90", "0.80"]
    assert panel.proxy.index(0, 1).data() == "0.040"  # 400 px at 0.5 µm/px: 0.2 mm square
    assert panel.proxy.index(1, 3).data() == "0.73"  # float32 0.725...
    panel.sort_box.setCurrentText("Mean probability")
    assert [panel.proxy.index(r, 0).data() for r in range(3)] == ["1", "3", "2"]
    panel.sort_box.setCurrentText("Area")
    assert next(panel.proxy.index(r, 0).data() for r in range(3)) in {"2", "3"}
    panel.sort_box.setCurrentText("Max probability")
    assert [panel.proxy.index(r, 0).data() for r in range(3)] == ["1", "2", "3"]

    # Every outline starts pending: white and dashed, never colour alone.
    for item in state.items:
        outline = panel.overlay.item(item.ref)
        assert outline is not None
        assert outline.pen().color() == STATUS_STYLES["pending"].color
        assert outline.pen().style() == Qt.PenStyle.DashLine

    # N selects the first region and centres and zooms the view on it.
    window.view.setFocus()
    scale_before = window.view.transform().m11()
    _press(qtbot, window, Qt.Key.Key_N)
    assert _number(panel) == 1
    first = panel.selected_item()
    assert first is not None
    centre = window.view.view_center_l0()
    assert centre.x() == pytest.approx(
        first.polygon.centroid.x, abs=2 * window.view.l0_per_screen_px
    )
    assert centre.y() == pytest.approx(
        first.polygon.centroid.y, abs=2 * window.view.l0_per_screen_px
    )
    assert window.view.transform().m11() > scale_before
    visible = window.view.visible_l0_rect()
    left, top, right, bottom = first.polygon.bounds
    assert visible.left() < left
    assert visible.right() > right
    assert visible.top() < top
    assert visible.bottom() > bottom
    assert min(visible.width(), visible.height()) == pytest.approx(2000, rel=0.01)  # 1 mm
    outline = panel.overlay.item(first.ref)
    assert outline is not None
    assert outline.highlighted
    assert outline.pen().widthF() > panel.overlay.item(state.items[1].ref).pen().widthF()

    # A accepts and moves on; R rejects and moves on; the outlines follow.
    _press(qtbot, window, Qt.Key.Key_A)
    assert _statuses(panel) == {1: "accepted", 2: "pending", 3: "pending"}
    assert _number(panel) == 2  # the next in the list
    _press(qtbot, window, Qt.Key.Key_R)
    assert _statuses(panel) == {1: "accepted", 2: "rejected", 3: "pending"}
    assert panel.progress_label.text() == "2 of 3 reviewed"
    by_number = {item.number: item for item in panel.state.items}  # type: ignore[union-attr]
    accepted = panel.overlay.item(by_number[1].ref)
    rejected = panel.overlay.item(by_number[2].ref)
    assert accepted is not None
    assert rejected is not None
    assert accepted.pen().color() == STATUS_STYLES["accepted"].color
    assert accepted.pen().style() == Qt.PenStyle.SolidLine
    assert rejected.pen().color() == STATUS_STYLES["rejected"].color
    assert rejected.pen().style() == Qt.PenStyle.DotLine
    assert len({s.color.rgb() for s in STATUS_STYLES.values()}) == 3
    assert by_number[2].reviewer == REVIEWER

    # U undoes the rejection and goes back to that region; P steps back.
    _press(qtbot, window, Qt.Key.Key_U)
    assert _statuses(panel) == {1: "accepted", 2: "pending", 3: "pending"}
    assert _number(panel) == 2
    assert panel.progress_label.text() == "1 of 3 reviewed"
    _press(qtbot, window, Qt.Key.Key_P)
    assert _number(panel) == 1

    # Ctrl+N opens the note, Enter saves it and gives the keys back to the list.
    _press(qtbot, window, Qt.Key.Key_N, Qt.KeyboardModifier.ControlModifier)
    assert panel.note_edit.hasFocus()
    qtbot.keyClicks(panel.note_edit, "solid nests")
    qtbot.keyClick(panel.note_edit, Qt.Key.Key_Return)
    assert panel.selected_item().note == "solid nests"  # type: ignore[union-attr]
    assert panel.table.hasFocus()
    # Typing in the note never triggers a single-key shortcut.
    _press(qtbot, window, Qt.Key.Key_Return)  # Enter in the list opens the note too
    assert panel.note_edit.hasFocus()
    qtbot.keyClicks(panel.note_edit, " A")
    qtbot.keyClick(panel.note_edit, Qt.Key.Key_Escape)  # reverts
    assert panel.selected_item().note == "solid nests"  # type: ignore[union-attr]
    assert _statuses(panel)[1] == "accepted"
    assert panel.table.hasFocus()

    # Every action is in the Store at once.
    with Store.open() as store:
        stored = ReviewSession(store, panel.state.region_set_id, "someone else").state()  # type: ignore[union-attr]
    assert {i.number: (i.status, i.note) for i in stored.items} == {
        1: ("accepted", "solid nests"),
        2: ("pending", ""),
        3: ("pending", ""),
    }

    # Review to the end with the keyboard alone.
    _press(qtbot, window, Qt.Key.Key_N)
    _press(qtbot, window, Qt.Key.Key_A)
    _press(qtbot, window, Qt.Key.Key_R)
    assert panel.progress_label.text() == "3 of 3 reviewed"
    assert _statuses(panel) == {1: "accepted", 2: "accepted", 3: "rejected"}


def test_draw_a_manual_region_delete_and_undo(
    qtbot, window: MainWindow, reviewed_slide: Path
) -> None:  # type: ignore[no-untyped-def]
    panel = _open(qtbot, window, reviewed_slide)
    view = window.view
    window.fit_action.trigger()

    def click(l0_x: float, l0_y: float, double: bool = False) -> None:
        point = view.map_l0_to_view((l0_x, l0_y)).toPoint()
        if double:
            qtbot.mouseDClick(view.viewport(), Qt.MouseButton.LeftButton, pos=point)
        else:
            qtbot.mouseClick(view.viewport(), Qt.MouseButton.LeftButton, pos=point)

    # Esc cancels a drawing (and does not reach the window's cancel-analysis shortcut).
    panel.draw_action.trigger()
    assert panel.draw_tool.active
    assert panel.draw_action.isChecked()
    click(2000, 2000)
    click(2600, 2000)
    assert len(panel.draw_tool.vertices) == 2
    _press(qtbot, window, Qt.Key.Key_Escape)
    assert not panel.draw_tool.active
    assert not panel.draw_action.isChecked()
    assert len(panel.state.items) == 3  # type: ignore[union-attr]

    # D, clicks, double-click: a manual region, pending, selected, measured in mm².
    view.setFocus()
    _press(qtbot, window, Qt.Key.Key_D)
    assert panel.draw_tool.active
    for x, y in ((2000, 2000), (2800, 2000), (2800, 2400)):
        click(x, y)
    # Enter with too few vertices is refused; the drawing goes on.
    click(2000, 2400, double=True)
    assert not panel.draw_tool.active
    state = panel.state
    assert state is not None
    assert len(state.items) == 4
    manual = state.items[-1]
    assert manual.ref.kind == "manual"
    assert manual.number == 4
    # Issue 13, item 9: drawn by the pathologist, so accepted (by them) as drawn.
    assert (manual.status, manual.reviewer, manual.origin) == ("accepted", REVIEWER, "drawn")
    assert manual.max_prob is None
    tolerance = 4 * view.l0_per_screen_px
    assert manual.polygon.area == pytest.approx(800 * 400, rel=2 * tolerance / 400)
    assert manual.area_mm2 == pytest.approx(manual.polygon.area * (0.5e-3) ** 2)
    assert panel.selected_ref == manual.ref
    assert panel.proxy.index(3, 0).data() == "M4"
    assert panel.overlay.item(manual.ref) is not None

    # Enter closes a drawing too; fewer than 3 vertices are refused.
    panel.draw_action.trigger()
    click(400, 1600)
    click(800, 1600)
    _press(qtbot, window, Qt.Key.Key_Return)
    assert panel.draw_tool.active
    click(800, 2000)
    _press(qtbot, window, Qt.Key.Key_Return)
    assert not panel.draw_tool.active
    assert len(panel.state.items) == 5  # type: ignore[union-attr]
    second_manual = panel.state.items[-1].ref  # type: ignore[union-attr]

    # Delete removes the selected region, U brings it back with its state.
    panel.select(manual.ref)
    panel.accept_selected()
    panel.select(manual.ref)
    panel.table.setFocus()
    _press(qtbot, window, Qt.Key.Key_Delete)
    refs = [item.ref for item in panel.state.items]  # type: ignore[union-attr]
    assert manual.ref not in refs
    assert panel.overlay.item(manual.ref) is None
    _press(qtbot, window, Qt.Key.Key_U)
    restored = {item.ref: item for item in panel.state.items}  # type: ignore[union-attr]
    assert restored[manual.ref].status == "accepted"
    assert panel.selected_ref == manual.ref
    # A model region can be deleted (and restored) as well.
    model_ref = next(r for r in restored if r.kind == "model")
    panel.select(model_ref)
    assert panel.delete_selected()
    assert model_ref not in {i.ref for i in panel.state.items}  # type: ignore[union-attr]
    assert panel.undo()
    assert model_ref in {i.ref for i in panel.state.items}  # type: ignore[union-attr]
    assert second_manual in {i.ref for i in panel.state.items}  # type: ignore[union-attr]


def test_reopening_restores_the_review_and_the_name_is_asked_once(
    qtbot,
    window: MainWindow,
    generated_slide: Path,
    tiny_model_card: Path,
    settings: QSettings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # type: ignore[no-untyped-def]
    _store_analysis(generated_slide, tiny_model_card)
    asked: list[str] = []

    def ask(self: ReviewPanel, current: str = "") -> str:
        asked.append(current)
        return "Dr Once"

    monkeypatch.setattr(ReviewPanel, "ask_reviewer", ask)
    # Opening the slide never prompts: the regions are listed and outlined at once, N steps
    # through them, and the name is asked at the first decision (issue 13, items 1 and 9).
    with qtbot.waitSignal(window.stored_analysis_shown):
        window.open_slide(generated_slide)
    panel = window.review_panel
    assert asked == []
    assert panel.state is not None
    assert len(panel.state.items) == 3
    assert panel.proxy.rowCount() == 3
    assert len(panel.overlay.keys()) == 3
    assert panel.reviewer_label.text() == "Reviewer: asked at your first decision"
    panel.next_action.trigger()
    assert asked == []
    assert panel.selected_item() is not None
    assert panel.session is None
    panel.accept_selected()
    assert asked == [""]
    assert settings.value(REVIEWER_KEY) == "Dr Once"
    assert panel.selected_item() is not None
    panel.set_note("check margins")
    assert panel.note_edit.text() == "check margins"
    manual = panel.add_manual_region([(2000, 2000), (2800, 2000), (2800, 2400)], note="missed")
    assert manual is not None
    panel.reject_selected()
    before = panel.state
    assert before is not None

    # Close the slide: the outlines go; open it again: the same review, name not asked again.
    window.close_slide()
    assert panel.state is None
    assert panel.overlay.keys() == []
    panel = _open(qtbot, window, generated_slide)
    after = panel.state
    assert after is not None
    assert after.region_set_id == before.region_set_id
    assert [(i.ref, i.status, i.note, i.reviewer) for i in after.items] == [
        (i.ref, i.status, i.note, i.reviewer) for i in before.items
    ]
    assert {i.reviewer for i in after.items if i.status != "pending"} == {"Dr Once"}
    assert panel.progress_label.text() == "2 of 4 reviewed"
    assert asked == [""]

    # A new window (a restarted app) restores it from the Store and QSettings.
    window.close()
    second = MainWindow(settings=settings)
    qtbot.addWidget(second)
    second.show()
    with qtbot.waitSignal(second.review_panel.review_opened, timeout=10_000):
        second.open_slide(generated_slide)
    restored = second.review_panel.state
    assert restored is not None
    assert [(i.ref, i.status, i.note) for i in restored.items] == [
        (i.ref, i.status, i.note) for i in before.items
    ]
    assert asked == [""]
    second.close()


def test_a_new_threshold_opens_a_new_set_and_keeps_the_old_decisions(
    qtbot, window: MainWindow, reviewed_slide: Path
) -> None:  # type: ignore[no-untyped-def]
    panel = _open(qtbot, window, reviewed_slide)
    first = panel.state
    assert first is not None
    panel.select_next()
    panel.accept_selected()
    assert first.region_set_id == panel.state.region_set_id  # type: ignore[union-attr]

    # P ≥ 0.85: regions 1 and 3 of the old set only (max 0.95 and 0.90), all pending.
    with qtbot.waitSignal(panel.review_opened):
        panel.threshold_box.setValue(0.85)
        panel.threshold_box.editingFinished.emit()
    second = panel.state
    assert second is not None
    assert second.region_set_id != first.region_set_id
    assert second.threshold == pytest.approx(0.85)
    assert len(second.items) == 2
    assert {i.status for i in second.items} == {"pending"}
    assert panel.progress_label.text() == "0 of 2 reviewed"
    assert len(panel.overlay.keys()) == 2

    # A minimum area leaves out the one-cell regions (0.04 mm²).
    with qtbot.waitSignal(panel.review_opened):
        panel.min_area_box.setValue(0.05)
        panel.min_area_box.editingFinished.emit()
    assert len(panel.state.items) == 0  # type: ignore[union-attr]
    assert panel.progress_label.text() == "0 of 0 reviewed"

    # Back to the card's threshold and no minimum: the old set, its decision kept.
    with qtbot.waitSignal(panel.review_opened):
        panel.open_set(0.5, 0.0)
    back = panel.state
    assert back is not None
    assert back.region_set_id == first.region_set_id
    assert [i.status for i in back.items] == ["accepted", "pending", "pending"]
    assert panel.threshold_box.value() == pytest.approx(0.5)

    # The set reviewed most recently is the one that opens with the slide (the selection
    # rule that `wsiviewer export` follows too): choosing a set alone does not change it.
    panel.open_set(0.85, 0.0)
    window.close_slide()
    panel = _open(qtbot, window, reviewed_slide)
    assert panel.state.threshold == pytest.approx(0.5)  # type: ignore[union-attr]
    panel.open_set(0.85, 0.0)
    panel.select_next()
    panel.reject_selected()
    window.close_slide()
    panel = _open(qtbot, window, reviewed_slide)
    assert panel.state.threshold == pytest.approx(0.85)  # type: ignore[union-attr]


def test_shortcuts_are_listed_and_bound(qtbot, window: MainWindow) -> None:  # type: ignore[no-untyped-def]
    bound = {s.toString() for a in window.actions() for s in a.shortcuts()}
    assert {"N", "P", "A", "R", "U", "Ctrl+N", "D", "Del", "Ctrl+E"} <= bound
    # Without a review, the review actions do nothing and say so by being disabled.
    panel = window.review_panel
    assert not panel.accept_action.isEnabled()
    assert not window.export_action.isEnabled()
    assert panel.progress_label.text().startswith("No review")
    assert not panel.select_next()
    assert panel.selected_ref is None
    assert RegionRef("model", 1) != RegionRef("manual", 1)


def test_import_qupath_annotations_and_export_the_review(
    qtbot, window: MainWindow, reviewed_slide: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    import json

    panel = _open(qtbot, window, reviewed_slide)
    assert window.export_action.isEnabled()
    assert window.import_action.isEnabled()
    annotations = tmp_path / "qupath.geojson"
    square = [[2000, 2000], [2800, 2000], [2800, 2400], [2000, 2400], [2000, 2000]]
    annotations.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [
                    {
                        "type": "Feature",
                        "geometry": {"type": "Polygon", "coordinates": [square]},
                        "properties": {
                            "objectType": "annotation",
                            "name": "missed focus",
                            "classification": {"name": "Tumor"},
                        },
                    }
                ],
            }
        )
    )
    assert panel.import_qupath(annotations) == 1
    manual = panel.state.items[-1]  # type: ignore[union-attr]
    assert manual.ref.kind == "manual"
    assert "missed focus" in manual.note
    assert panel.overlay.item(manual.ref) is not None

    # A broken file is refused with a dialog, and adds nothing.
    broken = tmp_path / "broken.geojson"
    broken.write_text("{not json")
    with qtbot.waitSignal(window.error_shown):
        assert panel.import_qupath(broken) is None
    window.last_error_box.accept()  # type: ignore[union-attr]
    assert len(panel.state.items) == 4  # type: ignore[union-attr]

    panel.select_next()
    panel.accept_selected()  # region 1
    out = tmp_path / "out"
    written = panel.export_to(
        out, ["geojson", "mask", "csv", "report"], accepted_only=True, slide=window.slide
    )
    assert written is not None
    with open_slide(reviewed_slide) as slide:
        label = slide_label(slide.identity)
    assert {
        f"{label}_{name}" for name in ("regions.geojson", "mask.tif", "patches.csv", "report.html")
    } <= set(written)
    features = json.loads((out / f"{label}_regions.geojson").read_text())["features"]
    assert [f["properties"]["status"] for f in features] == ["accepted"]
    report = (out / f"{label}_report.html").read_text()
    assert "research use only" in report.lower()
    assert reviewed_slide.name not in report


def test_a_second_export_asks_before_replacing_files(
    qtbot, window: MainWindow, reviewed_slide: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """Issue 13, item 3: the viewer never overwrites an export without asking; the dialog
    starts in the folder used last."""
    from wsiviewer.gui import review_export
    from wsiviewer.gui.review_export import EXPORT_DIR_KEY, ExportChoice

    panel = _open(qtbot, window, reviewed_slide)
    out = tmp_path / "out"
    first = panel.export_to(out, ["geojson"])
    assert first is not None
    geojson = next(path for path in first.values() if path.name.endswith("_regions.geojson"))
    geojson.write_text("edited")
    asked: list[list[str]] = []
    answers = iter([False, True])

    def confirm(self: ReviewPanel, paths: list[str]) -> bool:
        asked.append([Path(p).name for p in paths])
        return next(answers)

    monkeypatch.setattr(ReviewPanel, "confirm_overwrite", confirm)
    assert panel.export_to(out, ["geojson"]) is None  # the user said no
    assert geojson.read_text() == "edited"
    assert sorted(asked[0]) == sorted(path.name for path in first.values())
    assert panel.export_to(out, ["geojson"]) is not None  # yes: replaced
    assert geojson.read_text().startswith('{"type": "FeatureCollection"')
    assert len(asked) == 2

    # File › Export… opens in the folder used last, and writes there.
    seen: list[str] = []

    def ask_export(parent: object, settings: QSettings, slide_path: object) -> ExportChoice:
        seen.append(review_export.last_export_folder(settings))
        chosen = tmp_path / f"chosen-{len(seen)}"
        chosen.mkdir()
        settings.setValue(EXPORT_DIR_KEY, str(chosen))
        return ExportChoice(chosen, ("csv",), False, None)

    monkeypatch.setattr("wsiviewer.gui.review_panel.ask_export", ask_export)
    window.settings.setValue(EXPORT_DIR_KEY, str(tmp_path))
    window.export_review()
    window.export_review()
    assert seen == [str(tmp_path), str(tmp_path / "chosen-1")]
    assert len(list((tmp_path / "chosen-2").iterdir())) == 2  # patches.csv and its sidecar
