"""Screenshots of the viewer's main states, for looking at it (run under Xvfb).

    xvfb-run -s "-screen 0 1920x1200x24" .venv/bin/python tools/screenshots.py OUTDIR [SLIDE]
        [--synthetic]

A development tool, not part of the installed package.

Drives the real window and saves PNGs into OUTDIR: the slide open, zoomed in with the overview,
the heatmap overlay (with its probability histogram) at two zooms, the model card and the plots
of its shipped evaluation (ROC space, calibration and ROC AUC per patient), the slide
information, an analysis running, the error dialog of an unopenable file, the review of
flagged regions (the list, outlines by status, a region framed, a polygon being drawn, a manual
region), and what issue 13 added: one threshold for heatmap and regions, region edits (split,
brush, vertices, merge), the ruler, a view saved as an image, the history and the question
before a reviewed slide is analysed again, the question before an export replaces files, the
µm/px dialog, an imported QuPath class, and the closest zoom.

The heatmap is the installed default model's real analysis of the slide, run by the window's
Analyze. With ``--synthetic`` (or when no model is installed) it is a SYNTHETIC demonstration
map instead, recorded in a throw-away data folder: smooth blobs over the slide's tissue, and
separate foci for the review screenshots; those screenshots are labelled "synthetic". Never use
them as results.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DEFAULT_SLIDE = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "wsi" / "cmu-1-small-region.svs"
)


def _wait(app: object, condition: object, timeout: float = 30.0) -> None:
    deadline = time.perf_counter() + timeout
    while not condition():  # type: ignore[operator]
        app.processEvents()  # type: ignore[attr-defined]
        if time.perf_counter() > deadline:
            raise TimeoutError("the viewer did not settle")
        time.sleep(0.01)
    for _ in range(5):
        app.processEvents()  # type: ignore[attr-defined]
        time.sleep(0.01)


def demo_window(data_dir: str) -> tuple:  # type: ignore[type-arg]
    """``(app, window)``: the main window, shown at 1800×1100, with its settings in
    ``data_dir`` and a reviewer's name already set (never a modal name prompt here)."""
    from PySide6.QtCore import QSettings

    from wsiviewer.gui.app import application
    from wsiviewer.gui.main_window import MainWindow

    app = application()
    settings = QSettings(str(Path(data_dir) / "settings.ini"), QSettings.Format.IniFormat)
    settings.setValue("review/reviewer", "Demo reviewer")
    window = MainWindow(settings=settings)
    window.resize(1800, 1100)
    window.move(0, 0)
    window.show()
    _wait(app, window.isVisible)
    return app, window


def _synthetic_analysis(slide_path: Path, models_dir: Path) -> Path:
    """Record a synthetic analysis (smooth blobs over tissue) with a random tiny model."""
    import torch

    from wsiviewer.core.analysis.grid import PatchGrid
    from wsiviewer.core.analysis.pipeline import Analysis, SlideSummary
    from wsiviewer.core.analysis.probability import ProbabilityMap
    from wsiviewer.core.analysis.tissue import TissueSettings, detect_tissue, tissue_cells
    from wsiviewer.core.model.cards import ModelCard
    from wsiviewer.core.model.networks import CancerNet
    from wsiviewer.core.model.weights import untrained_card_fields, write_model
    from wsiviewer.core.slides import open_slide
    from wsiviewer.core.store.database import Store

    torch.manual_seed(0)
    fields = untrained_card_fields("synthetic-demo")
    fields["training_data"] = "none: random weights; the heatmap shown is SYNTHETIC (screenshots)"
    card_path = write_model(CancerNet().eval(), models_dir, fields)
    card = ModelCard.from_file(card_path)
    with open_slide(slide_path) as slide:
        mpp = slide.resolve_mpp(None if slide.mpp else 0.25)
        grid = PatchGrid.for_slide(slide.dimensions, mpp.value, card.input_mpp, card.input_size)
        settings = TissueSettings()
        tissue = tissue_cells(detect_tissue(slide, settings), grid, settings)
        rng = np.random.default_rng(3)
        rows, cols = np.mgrid[0 : grid.rows, 0 : grid.cols]
        field = np.zeros(grid.shape)
        tissue_rc = np.argwhere(tissue)
        for row, col in tissue_rc[rng.choice(len(tissue_rc), size=min(6, len(tissue_rc)))]:
            radius = max(1.5, 0.08 * max(grid.shape))
            field += np.exp(-((rows - row) ** 2 + (cols - col) ** 2) / (2 * radius**2))
        field = field / max(field.max(), 1e-6)
        probabilities = np.where(
            tissue, np.clip(0.05 + 0.9 * field + rng.normal(0, 0.04, grid.shape), 0, 1), np.nan
        ).astype(np.float32)
        analysis = Analysis(
            slide=SlideSummary(slide.identity, slide.vendor, slide.dimensions, mpp),
            model=card.summary(),
            tissue_settings=settings,
            probability_map=ProbabilityMap(grid, probabilities, tissue),
            device="synthetic (screenshots)",
            batch_size=0,
            started_at="2025-01-01T00:00:00+00:00",
        )
    with Store.open() as store:
        store.save_analysis(analysis)
    return card_path


def _synthetic_foci_analysis(slide_path: Path, foci: int = 4) -> None:
    """Record, with the latest analysis's model and grid, a SYNTHETIC map of a few separate
    foci (P 0.65-0.98, one or two cells each, far apart) over low-probability tissue."""
    from wsiviewer.core.analysis.pipeline import Analysis, SlideSummary
    from wsiviewer.core.analysis.probability import ProbabilityMap
    from wsiviewer.core.analysis.tissue import TissueSettings
    from wsiviewer.core.slides import open_slide
    from wsiviewer.core.store.database import Store

    with open_slide(slide_path) as slide, Store.open() as store:
        record = store.latest_analysis(slide.identity)
        assert record is not None
        tissue = store.load_probability_map(record).tissue
        rng = np.random.default_rng(7)
        probabilities = np.where(tissue, rng.uniform(0.05, 0.35, tissue.shape), np.nan)
        cells = np.argwhere(tissue)
        chosen = [cells[len(cells) // 2]]
        while len(chosen) < min(foci, len(cells)):  # farthest-point: foci never touch
            distance = np.min([np.abs(cells - c).sum(axis=1) for c in chosen], axis=0)
            chosen.append(cells[int(np.argmax(distance))])
        for index, (row, col) in enumerate(chosen):
            probabilities[row, col] = 0.98 - 0.1 * index
            if index % 2 == 0 and row + 1 < tissue.shape[0] and tissue[row + 1, col]:
                probabilities[row + 1, col] = 0.7 - 0.02 * index
        analysis = Analysis(
            slide=SlideSummary(slide.identity, slide.vendor, slide.dimensions, record.mpp),
            model=record.model,
            tissue_settings=TissueSettings(**record.tissue_settings),
            probability_map=ProbabilityMap(record.grid, probabilities.astype(np.float32), tissue),
            device="synthetic (screenshots)",
            batch_size=0,
            started_at="2025-01-02T00:00:00+00:00",
        )
        store.save_analysis(analysis)


def _review_screenshots(app: object, window: object, save: object, synthetic: bool) -> None:
    """The review of the map's regions: some decided, a note, a manual region."""
    from PySide6.QtCore import QPointF

    panel = window.review_panel  # type: ignore[attr-defined]
    view = window.view  # type: ignore[attr-defined]
    slide_path = window.slide_path  # type: ignore[attr-defined]
    window.close_slide()  # type: ignore[attr-defined]
    if synthetic:
        # The smooth blobs merge into one region on a small slide: record a map of separate
        # synthetic foci; reopening the slide opens its review by itself.
        _synthetic_foci_analysis(slide_path)
    window.open_slide(slide_path)  # type: ignore[attr-defined]
    _wait(app, lambda: panel.state is not None and view.settled)
    window.review_dock.show()  # type: ignore[attr-defined]
    window.review_dock.raise_()  # type: ignore[attr-defined]
    window.overlay_dock.raise_()  # type: ignore[attr-defined]
    panel.select_next()
    panel.accept_selected()
    panel.reject_selected()
    panel.accept_selected()
    panel.set_note("cribriform pattern; check the margin")
    state = panel.state
    print(f"review: {state.progress_text}, {len(state.items)} regions")
    view.fit()
    _wait(app, lambda: view.settled)
    save("04a-review-overview")  # type: ignore[operator]

    panel.select_previous()
    _wait(app, lambda: view.settled)
    save("04b-review-region-framed")  # type: ignore[operator]

    visible = view.visible_l0_rect().intersected(view.slide_rect)
    size = min(visible.width(), visible.height()) * 0.5
    cx, cy = visible.center().x() - size * 0.3, visible.center().y() - size * 0.4
    panel.draw_tool.start()
    for dx, dy in ((0, -0.3), (0.5, -0.2), (0.6, 0.3), (0.1, 0.4)):
        panel.draw_tool.add_vertex(QPointF(cx + dx * size, cy + dy * size))
    app.processEvents()  # type: ignore[attr-defined]
    save("04c-review-drawing")  # type: ignore[operator]
    panel.draw_tool.finish()
    _wait(app, lambda: view.settled)
    save("04d-review-manual-region")  # type: ignore[operator]


def _grab_screen(app: object, name: str, out_dir: Path) -> None:
    from PySide6.QtWidgets import QApplication

    for _ in range(5):
        app.processEvents()  # type: ignore[attr-defined]
        time.sleep(0.02)
    path = out_dir / f"{name}.png"
    QApplication.primaryScreen().grabWindow(0).save(str(path))
    print(f"saved {path}")


def _issue13_screenshots(shots: Screenshots, slide_path: Path) -> None:
    """One threshold, region edits, ruler, saved view, history, questions, dialogs (issue 13)."""
    import json

    from PySide6.QtCore import QPointF
    from shapely.geometry import box

    from wsiviewer.gui.analysis_display import reanalysis_box
    from wsiviewer.gui.mpp_dialog import MppDialog

    window = shots.window
    app = shots.app
    panel = window.review_panel  # type: ignore[attr-defined]
    view = window.view  # type: ignore[attr-defined]
    overlay = window.overlay_panel  # type: ignore[attr-defined]
    window.review_dock.raise_()  # type: ignore[attr-defined]
    window.overlay_dock.raise_()  # type: ignore[attr-defined]
    state = panel.state
    if state is None:
        print("issue 13 screenshots: no region set shown", file=sys.stderr)
        return
    # One threshold: move it on the heatmap panel, the regions follow.
    view.fit()
    shots.wait(lambda: view.settled)
    card_threshold = state.threshold
    overlay.choose_threshold(max(0.05, card_threshold / 2))
    shots.wait(lambda: view.settled)
    shots.save("09a-one-threshold-lowered")
    overlay.card_button.click()
    shots.wait(lambda: view.settled)
    shots.save("09b-one-threshold-card")

    # Regions to edit: the largest model region, else two drawn ones.
    items = sorted(panel.state.items, key=lambda item: -item.area_mm2)
    width, height = window.slide.dimensions  # type: ignore[attr-defined]
    if not items or items[0].polygon.area < 4 * (width / 40) ** 2:
        side = min(width, height) / 8
        panel.add_manual_region(
            box(width * 0.3, height * 0.3, width * 0.3 + side, height * 0.3 + side)
        )
        items = sorted(panel.state.items, key=lambda item: -item.area_mm2)
    target = items[0]
    panel.select(target.ref)
    shots.wait(lambda: view.settled)
    left, top, right, bottom = target.polygon.bounds
    middle_x = (left + right) / 2
    panel.split_action.trigger()
    panel.split_tool.add_vertex(QPointF(middle_x, top - (bottom - top) * 0.2))
    panel.split_tool.add_vertex(
        QPointF(middle_x + (right - left) * 0.1, bottom + (bottom - top) * 0.2)
    )
    app.processEvents()  # type: ignore[attr-defined]
    shots.save("10a-split-line-drawn")
    panel.split_tool.finish()
    shots.wait(lambda: view.settled)
    shots.save("10b-region-split")

    part = panel.selected_item()
    if part is not None:
        panel.brush_box.setValue(40)
        panel.erase_action.trigger()
        p_left, p_top, p_right, p_bottom = part.polygon.bounds
        stroke = [
            (p_left + (p_right - p_left) * f, p_top + (p_bottom - p_top) * 0.5)
            for f in (0.2, 0.4, 0.6)
        ]
        panel.brush_tool._points = stroke  # the preview of a stroke being dragged
        panel.brush_tool._update_preview()
        app.processEvents()  # type: ignore[attr-defined]
        shots.save("11a-brush-erase-stroke")
        panel.brush_tool._points = []
        panel.brush_tool.paint_stroke(stroke)
        panel.brush_tool.cancel()
        shots.wait(lambda: view.settled)
        shots.save("11b-brush-erased")
        current = panel.selected_item()
        if current is not None:
            panel.vertices_action.trigger()
            app.processEvents()  # type: ignore[attr-defined]
            vertices = panel.vertex_tool.vertices
            x, y = vertices[0]
            panel.vertex_tool.move_vertex(
                0, (x - (p_right - p_left) * 0.03, y - (p_bottom - p_top) * 0.03)
            )
            app.processEvents()  # type: ignore[attr-defined]
            shots.save("12a-vertex-handles")
            panel.vertex_tool.apply()
            shots.wait(lambda: view.settled)
    refs = [item.ref for item in sorted(panel.state.items, key=lambda i: -i.area_mm2)[:2]]
    if len(refs) == 2:
        panel.select_several(refs)
        app.processEvents()  # type: ignore[attr-defined]
        shots.save("13a-merge-selected")
        panel.merge_selected()
        view.fit()
        shots.wait(lambda: view.settled)
        shots.save("13b-merged")
    # The decision log: every edit one line.
    history = panel.session.history() if panel.session is not None else []
    print(
        "log:",
        [(row["action"], row["edit_kind"], row["replaced"], row["added"]) for row in history],
    )

    # An imported QuPath annotation keeps its class; importing the file again adds nothing.
    qupath = shots.out_dir / "qupath-annotations.geojson"
    square = box(width * 0.62, height * 0.62, width * 0.7, height * 0.72)
    qupath.write_text(
        json.dumps(
            [
                {
                    "type": "Feature",
                    "geometry": {"type": "Polygon", "coordinates": [list(square.exterior.coords)]},
                    "properties": {
                        "objectType": "annotation",
                        "name": "fibrous band",
                        "classification": {"name": "Stroma", "color": [150, 200, 150]},
                    },
                }
            ]
        )
    )
    panel.import_qupath(qupath)
    panel.import_qupath(qupath)
    app.processEvents()  # type: ignore[attr-defined]
    shots.save("14-qupath-class-kept-reimport-idempotent")

    # The ruler.
    view.fit()
    shots.wait(lambda: view.settled)
    window.ruler.set_active(True)  # type: ignore[attr-defined]
    window.ruler.measure(QPointF(width * 0.2, height * 0.8), QPointF(width * 0.6, height * 0.8))  # type: ignore[attr-defined]
    window.statusBar().showMessage(f"Length: {window.ruler.text}")  # type: ignore[attr-defined]
    shots.save("15a-ruler")
    written = window.save_view_image(shots.out_dir / "15b-saved-view.png")  # type: ignore[attr-defined]
    print(f"saved {written}")
    window.ruler.set_active(False)  # type: ignore[attr-defined]

    # The question before an export replaces files (shown, not answered).
    box_ = panel.overwrite_box(
        [f"slide-0123456789ab_{name}" for name in ("regions.geojson", "mask.tif", "mask.png")]
    )
    box_.open()
    _grab_screen(app, "16-export-would-replace", shots.out_dir)
    box_.done(0)

    # Analysing a reviewed slide again: the question, then the history.
    if panel.state is not None and panel.reviewed:
        text = "(text as the window asks it)"
        dialog = reanalysis_box(window, text)  # type: ignore[arg-type]
        dialog.setText(
            f"The region set shown (#{panel.state.region_set_id}) has been reviewed: "
            f"{panel.state.progress_text}.\n\nA new analysis will be shown instead, unreviewed. "
            "The review is kept: it stays in the review panel's history (Shown), and "
            "`wsiviewer export` keeps exporting the set reviewed most recently until the new "
            "one is reviewed.\n\nAnalyse again?"
        )
        dialog.open()
        _grab_screen(app, "17a-reanalysis-question", shots.out_dir)
        dialog.done(0)
    window.display.ask_reanalysis = lambda parent, text: True  # type: ignore[attr-defined]
    if window.analyze():  # type: ignore[attr-defined]
        shots.wait(lambda: not window.runner.running, timeout=600)  # type: ignore[attr-defined]
        shots.wait(lambda: view.settled)
        shots.save("17b-new-analysis-review-in-history")
        panel.history_box.showPopup()
        _grab_screen(app, "17c-history-list", shots.out_dir)
        panel.history_box.hidePopup()
        reviewed = next((i for i, e in enumerate(panel.history) if e.reviewed), None)
        if reviewed is not None:
            panel.history_box.setCurrentIndex(reviewed)
            panel.history_box.activated.emit(reviewed)
            shots.wait(lambda: view.settled)
            shots.save("17d-reviewed-set-chosen-again")

    # The µm/px dialog of a slide without resolution: empty, presets.
    dialog = MppDialog(
        "This slide's metadata has neither µm/px nor objective power. Enter the scan "
        "resolution, or pick a preset.",
        None,
        window,  # type: ignore[arg-type]
    )
    dialog.open()
    _grab_screen(app, "18-mpp-dialog-empty", shots.out_dir)
    dialog.done(0)

    # The closest zoom: twice the scan, px drawn as blocks, no tile seams.
    item = panel.selected_item() or (
        panel.state.items[0] if panel.state and panel.state.items else None
    )
    if item is not None:
        centre = item.polygon.representative_point()
        view.center_on_l0(centre.x, centre.y)
    for _ in range(40):
        view.zoom(1.25)
    shots.wait(lambda: view.settled)
    print(f"closest zoom: {view.magnification}")
    shots.save("19-closest-zoom")
    view.fit()
    shots.wait(lambda: view.settled)


class Screenshots:
    """The window under test, and where its pictures go."""

    def __init__(self, app: object, window: object, out_dir: Path) -> None:
        self.app = app
        self.window = window
        self.out_dir = out_dir

    def wait(self, condition: object, timeout: float = 30.0) -> None:
        _wait(self.app, condition, timeout)

    def save(self, name: str, whole_screen: bool = False) -> None:
        from PySide6.QtWidgets import QApplication

        self.app.processEvents()  # type: ignore[attr-defined]
        if whole_screen:
            image = QApplication.primaryScreen().grabWindow(0)
        else:
            image = self.window.grab()  # type: ignore[attr-defined]
        path = self.out_dir / f"{name}.png"
        image.save(str(path))
        print(f"saved {path}")


def _slide_screenshots(shots: Screenshots) -> None:
    """The slide fitted, then zoomed in with the overview."""
    window = shots.window
    shots.wait(lambda: window.view.settled)  # type: ignore[attr-defined]
    shots.save("01-slide-open")
    width, height = window.slide.dimensions  # type: ignore[attr-defined]
    view = window.view  # type: ignore[attr-defined]
    view.set_magnification(10 if view.mpp else 1)
    view.center_on_l0(width * 0.45, height * 0.5)
    shots.wait(lambda: view.settled)
    shots.save("02-zoomed-with-overview")


def _show_analysis(shots: Screenshots, slide_path: Path, data_dir: str, synthetic: bool) -> bool:
    """The heatmap: the default model's real analysis, or a recorded synthetic one."""
    window = shots.window
    if synthetic:
        window.close_slide()  # type: ignore[attr-defined]
        _synthetic_analysis(slide_path, Path(data_dir) / "models")
        window.reload_models(preferred="synthetic-demo")  # type: ignore[attr-defined]
        window.open_slide(slide_path)  # type: ignore[attr-defined]
    else:
        window.view.fit()  # type: ignore[attr-defined]
        if not window.analyze():  # type: ignore[attr-defined]
            print("the analysis did not start", file=sys.stderr)
            return False
        shots.wait(lambda: not window.runner.running, timeout=600)  # type: ignore[attr-defined]
    shots.wait(
        lambda: window.shown_analysis_id is not None and window.view.settled  # type: ignore[attr-defined]
    )
    return True


def _heatmap_screenshots(shots: Screenshots, label: str) -> None:
    """The heatmap fitted (with its histogram beside it), then zoomed on its highest cell."""
    window = shots.window
    view = window.view  # type: ignore[attr-defined]
    window.overlay_dock.raise_()  # type: ignore[attr-defined]
    shots.save(f"03-heatmap-{label}-fit")
    view.set_magnification(5 if view.mpp else 1)
    grid, probabilities = view.grid, view.probabilities
    if grid is not None and probabilities is not None and np.isfinite(probabilities).any():
        row, col = np.unravel_index(np.nanargmax(probabilities), probabilities.shape)
        x, y, size, _ = grid.l0_box((int(row), int(col)))
        view.center_on_l0(x + size / 2, y + size / 2)
        view_pos = view.map_l0_to_view((x + size / 2, y + size / 2))
        window._on_cursor_moved(x + size / 2, y + size / 2)  # type: ignore[attr-defined]
        print(f"cursor over cell {(row, col)} at view {view_pos.x():.0f},{view_pos.y():.0f}")
    shots.wait(lambda: view.settled)
    shots.save(f"04-heatmap-{label}-zoomed")


def _panel_screenshots(shots: Screenshots) -> None:
    """The model panel's card and evaluation plots, and the slide information."""
    window = shots.window
    panel = window.model_panel  # type: ignore[attr-defined]
    window.model_dock.show()  # type: ignore[attr-defined]
    window.model_dock.raise_()  # type: ignore[attr-defined]
    panel.tabs.setCurrentWidget(panel.card_view)
    shots.save("05-model-card")
    for name, plot in (
        ("05b-model-roc", panel.roc_plot),
        ("05c-model-calibration", panel.calibration_plot),
        ("05d-model-patients", panel.patients_plot),
    ):
        if panel.tabs.isTabEnabled(panel.tabs.indexOf(plot)):
            panel.tabs.setCurrentWidget(plot)
            shots.save(name)
        else:
            print(f"{name}: the chosen model ships no evaluation to plot")
    panel.tabs.setCurrentWidget(panel.card_view)
    window.info_dock.show()  # type: ignore[attr-defined]
    window.info_dock.raise_()  # type: ignore[attr-defined]
    shots.save("06-slide-info")


def _analysis_running_screenshot(shots: Screenshots) -> None:
    """An analysis in progress (three batches in), then cancelled."""
    window = shots.window
    runner = window.runner  # type: ignore[attr-defined]
    window.batch_size = 8  # type: ignore[attr-defined]
    window.overlay_dock.raise_()  # type: ignore[attr-defined]
    updates: list[object] = []
    runner.analysis_progressed.connect(updates.append)
    if not window.analyze():  # type: ignore[attr-defined]
        return
    shots.wait(
        lambda: (
            sum(getattr(u, "stage", "") == "inference" for u in updates) >= 3 or not runner.running
        ),
        timeout=120,
    )
    shots.save("07-analysis-running")
    runner.cancel()
    shots.wait(lambda: not runner.running, timeout=120)


def _error_screenshot(shots: Screenshots, slide_path: Path) -> None:
    """The dialog an unopenable file raises (the whole screen: the dialog is a window)."""
    window = shots.window
    unopenable = slide_path.parent / "fixtures" / "unopenable.tiff"
    if not unopenable.exists():
        return
    window.open_slide(unopenable)  # type: ignore[attr-defined]
    shots.wait(
        lambda: window.last_error_box is not None and window.last_error_box.isVisible()  # type: ignore[attr-defined]
    )
    shots.save("08-error-dialog", whole_screen=True)
    window.last_error_box.accept()  # type: ignore[attr-defined]


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if args else 2
    synthetic = "--synthetic" in args
    args = [a for a in args if a != "--synthetic"]
    out_dir = Path(args[0])
    slide_path = Path(args[1]) if len(args) > 1 else DEFAULT_SLIDE
    out_dir.mkdir(parents=True, exist_ok=True)
    data_dir = tempfile.mkdtemp(prefix="wsiviewer-screenshots-")
    os.environ["WSIVIEWER_DATA_DIR"] = data_dir  # never the user's Store

    from wsiviewer.core.model.cards import available_models

    synthetic = synthetic or not available_models()
    if synthetic:
        print(f"Synthetic demonstration data in {data_dir} (not real results)")

    app, window = demo_window(data_dir)
    shots = Screenshots(app, window, out_dir)

    if not window.open_slide(slide_path):
        print(f"cannot open {slide_path}", file=sys.stderr)
        return 1
    _slide_screenshots(shots)
    if not _show_analysis(shots, slide_path, data_dir, synthetic):
        return 1
    _heatmap_screenshots(shots, "synthetic" if synthetic else "model")
    _review_screenshots(app, window, shots.save, synthetic)
    _issue13_screenshots(shots, slide_path)
    _panel_screenshots(shots)
    _analysis_running_screenshot(shots)
    _error_screenshot(shots, slide_path)
    window.close()
    for card in (Path(data_dir) / "models").glob("synthetic-demo.*"):
        card.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
