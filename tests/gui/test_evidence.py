"""Why was this flagged: the evidence dock reads a selected region's patches on a worker, a
click centres the slide, saliency is drawn on demand, and a newer selection wins."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PySide6.QtCore import QPoint, QSettings, Qt

from tests.gui.test_review import REVIEWER, _open, _store_analysis
from wsiviewer.gui.main_window import MainWindow
from wsiviewer.gui.review_panel import REVIEWER_KEY


def _reviewed(slide: Path, card: Path, settings: QSettings) -> None:
    _store_analysis(slide, card)
    settings.setValue(REVIEWER_KEY, REVIEWER)


def _show_evidence_of(qtbot, window: MainWindow, index: int):  # type: ignore[no-untyped-def]
    item = window.review_panel.state.items[index]
    panel = window.evidence_panel
    with qtbot.waitSignal(panel.evidence_shown, timeout=30_000) as shown:
        window.review_panel.select(item.ref)
        window.show_evidence()
    return item, shown.args[0]


def test_evidence_of_the_selected_region(  # type: ignore[no-untyped-def]
    qtbot,
    window: MainWindow,
    generated_slide: Path,
    installed_model: Path,
    settings: QSettings,
) -> None:
    _reviewed(generated_slide, installed_model, settings)
    _open(qtbot, window, generated_slide)
    panel = window.evidence_panel
    item, evidence = _show_evidence_of(qtbot, window, 1)  # region 2: cells (4, 2) and (4, 3)
    assert evidence.region_label == item.label == "2"
    assert [patch.grid_rc for patch in evidence.patches] == [(4, 2), (4, 3)]
    assert [patch.probability for patch in evidence.patches] == [
        np.float32(0.9),
        np.float32(0.55),
    ]
    assert len(panel.tiles) == 2
    assert "Region 2" in panel.title_label.text()
    tile = panel.tiles[1]
    assert "P 0.55" in tile.caption.text()
    assert tile.input_label.pixmap().width() == 100  # 50 px ×2, crisp
    # A click centres the slide on the patch (cell (4, 3): 400 px cells).
    window.view.set_magnification(10)
    qtbot.mouseClick(tile, Qt.MouseButton.LeftButton, pos=QPoint(10, 10))
    centre = window.view.mapToScene(window.view.viewport().rect().center())
    assert abs(centre.x() - 3.5 * 400) < 20
    assert abs(centre.y() - 4.5 * 400) < 20
    # Saliency on demand, drawn over each patch with its legend.
    with qtbot.waitSignal(panel.saliency_shown, timeout=60_000):
        window.saliency_action.trigger()
    assert panel.saliency_box.isChecked()
    assert all(tile.saliency_label.isVisible() for tile in panel.tiles)
    assert panel.legend_bar.isVisible()
    gradcam = panel.tiles[0].saliency_label.pixmap().toImage()
    panel.method_box.setCurrentIndex(1)
    assert "Integrated gradients" in panel.legend_text.text()
    assert panel.tiles[0].saliency_label.pixmap().toImage() != gradcam
    # Another region: its saliency follows (from the cache the second time round).
    with qtbot.waitSignal(panel.saliency_shown, timeout=60_000):
        _show_evidence_of(qtbot, window, 0)
    assert [tile.patch.grid_rc for tile in panel.tiles] == [(1, 1)]
    window.saliency_action.trigger()
    assert not panel.tiles[0].saliency_label.isVisible()


def test_a_newer_selection_wins_and_a_hidden_dock_reads_nothing(  # type: ignore[no-untyped-def]
    qtbot,
    window: MainWindow,
    generated_slide: Path,
    installed_model: Path,
    settings: QSettings,
) -> None:
    _reviewed(generated_slide, installed_model, settings)
    _open(qtbot, window, generated_slide)
    panel = window.evidence_panel
    items = window.review_panel.state.items
    window.evidence_dock.close()
    window.review_panel.select(items[0].ref)
    assert panel.request is None, "nothing is read while the dock is closed"
    with qtbot.waitSignal(panel.evidence_shown, timeout=30_000) as shown:
        window.show_evidence()  # region 1 requested...
        window.review_panel.select(items[2].ref)  # ...and region 3 at once
    qtbot.waitUntil(lambda: not panel.busy, timeout=30_000)
    assert panel.evidence.region_label == "3"
    assert shown.args[0].region_label == "3"
    with qtbot.waitSignal(window.slide_closed):
        window.close_slide()
    assert panel.evidence is None
    assert not panel.tiles


def test_saliency_of_a_model_that_is_not_installed_says_so(  # type: ignore[no-untyped-def]
    qtbot, window: MainWindow, generated_slide: Path, tiny_model_card: Path, settings: QSettings
) -> None:
    _reviewed(generated_slide, tiny_model_card, settings)
    _open(qtbot, window, generated_slide)
    panel = window.evidence_panel
    _, evidence = _show_evidence_of(qtbot, window, 0)
    assert evidence.card is None
    assert evidence.patches[0].patch_probability is None
    assert "patch alone" not in panel.tiles[0].caption.text()
    with qtbot.waitSignal(panel.failed, timeout=30_000) as failed:
        panel.set_saliency(True)
    assert "not installed" in failed.args[0]
    assert not panel.saliency_box.isChecked()


def test_the_patch_under_a_point_from_the_slides_menu(  # type: ignore[no-untyped-def]
    qtbot,
    window: MainWindow,
    generated_slide: Path,
    installed_model: Path,
    settings: QSettings,
) -> None:
    _reviewed(generated_slide, installed_model, settings)
    _open(qtbot, window, generated_slide)
    panel = window.evidence_panel
    with qtbot.waitSignal(panel.evidence_shown, timeout=30_000) as shown:
        assert window.explain_point(2.5 * 400, 1.5 * 400)  # cell (1, 2): P 0.2, no region
    evidence = shown.args[0]
    assert evidence.region_label is None
    assert [(p.grid_rc, p.kind) for p in evidence.patches] == [((1, 2), "point")]
    assert "The patch here" in panel.title_label.text()
    # A decision on the selected region leaves the patch shown; choosing a region shows it.
    items = window.review_panel.state.items
    window.review_panel.select(items[0].ref, frame=False)
    qtbot.waitUntil(lambda: not panel.busy and panel.evidence is not None, timeout=30_000)
    assert panel.evidence.region_label == "1"
    with qtbot.waitSignal(panel.evidence_shown, timeout=30_000):
        window.explain_point(2.5 * 400, 1.5 * 400)
    assert window.review_panel.set_note("seen")  # a decision: the selection stays
    assert panel.request is not None
    assert panel.request.l0_point == (1000.0, 600.0)
    window.review_panel.accept_selected()  # ...and moves on to region 2: it is shown
    assert panel.request is not None
    assert panel.request.region_label == "2"
    qtbot.waitUntil(lambda: not panel.busy, timeout=30_000)
