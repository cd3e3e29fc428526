"""The main window: menus, the slide view, the side panels, the status bar, analysis."""

from __future__ import annotations

import html
import logging
import math
import shutil
from pathlib import Path

from PySide6.QtCore import QByteArray, QRectF, QSettings, Qt, QTimer, Signal
from PySide6.QtGui import (
    QAction,
    QCloseEvent,
    QDragEnterEvent,
    QDropEvent,
    QKeySequence,
)
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QDockWidget,
    QFileDialog,
    QInputDialog,
    QLabel,
    QMainWindow,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from wsiviewer import RESEARCH_USE_NOTICE, WsiViewerError, __version__
from wsiviewer.core.analysis.grid import PatchGrid
from wsiviewer.core.model.cards import ModelCard, available_models, model_dirs
from wsiviewer.core.slides import Mpp, Slide, open_slide
from wsiviewer.errors import ModelError, ResolutionError
from wsiviewer.gui.analysis import AnalysisJob, AnalysisOutcome, AnalysisRunner, AnalysisUpdate
from wsiviewer.gui.images import rgb_to_qimage
from wsiviewer.gui.overview import OverviewWidget
from wsiviewer.gui.panels import ModelPanel, OverlayPanel, SlideInfoPanel, scroll_wrapped
from wsiviewer.gui.review_panel import REVIEW_SHORTCUTS, ReviewPanel
from wsiviewer.gui.slide_view import MAGNIFICATION_PRESETS, SlideView

log = logging.getLogger(__name__)

#: Every format OpenSlide 4 opens, for File › Open.
SLIDE_FILTER = (
    "Slides (*.svs *.tif *.tiff *.ndpi *.vms *.vmu *.scn *.mrxs *.svslide *.bif *.dcm *.czi);;"
    "Aperio (*.svs *.tif);;Hamamatsu (*.ndpi *.vms *.vmu);;Leica (*.scn);;MIRAX (*.mrxs);;"
    "Philips TIFF (*.tiff);;Sakura (*.svslide);;Ventana (*.bif *.tif);;DICOM (*.dcm);;"
    "Zeiss (*.czi);;Generic tiled TIFF (*.tif *.tiff);;All files (*)"
)

MAX_RECENT = 10

#: Largest coarsest level read whole at open (else a thumbnail stands in for it).
MAX_BASE_SIDE = 4096

#: (keys, what they do): the Help › Keyboard shortcuts table.
SHORTCUTS: tuple[tuple[str, str], ...] = (
    ("Ctrl+O", "Open a slide"),
    ("Ctrl+W", "Close the slide"),
    ("Mouse wheel", "Zoom in or out at the cursor"),
    ("Drag", "Pan"),
    ("Arrow keys", "Pan by a quarter of the view"),
    ("+ / -", "Zoom in / out"),
    ("0", "Fit the whole slide"),
    ("1 2 3 4 5", "2.5x, 5x, 10x, 20x, 40x (where the slide has the resolution)"),
    ("H", "Show or hide the heatmap"),
    ("Ctrl+R", "Analyse the slide with the chosen model"),
    ("Esc", "Cancel the running analysis"),
    ("Ctrl+I", "Slide information"),
    ("Ctrl+M", "Model card"),
    ("F1", "This list"),
    ("Ctrl+Q", "Quit"),
)


def default_settings() -> QSettings:
    """Window state and preferences: an INI file in the user data directory.

    Kept beside the Store so ``WSIVIEWER_DATA_DIR`` (which tests set) isolates both.
    """
    from wsiviewer.core.paths import data_dir

    try:
        folder = data_dir()
    except OSError:
        return QSettings("wsiviewer", "wsiviewer")
    return QSettings(str(folder / "viewer-settings.ini"), QSettings.Format.IniFormat)


def read_base_image(slide: Slide) -> tuple[object, int | None]:
    """The coarsest level as a QImage (and its level), or a thumbnail when that is too big.

    Raises
    ------
    SlideReadError
        If the pixels cannot be read.
    """
    level = slide.level_count - 1
    width, height = slide.level_dimensions[level]
    if max(width, height) <= MAX_BASE_SIDE:
        return rgb_to_qimage(slide.read_region((0, 0), level, (width, height))), level
    return rgb_to_qimage(slide.thumbnail(2048)), None


class ShortcutsDialog(QDialog):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Keyboard shortcuts")
        shortcuts = SHORTCUTS + REVIEW_SHORTCUTS
        table = QTableWidget(len(shortcuts), 2)
        table.setHorizontalHeaderLabels(["Keys", "Action"])
        for row, (keys, action) in enumerate(shortcuts):
            table.setItem(row, 0, QTableWidgetItem(keys))
            table.setItem(row, 1, QTableWidgetItem(action))
        table.resizeColumnsToContents()
        table.horizontalHeader().setStretchLastSection(True)
        table.verticalHeader().setVisible(False)
        table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(table)
        layout.addWidget(buttons)
        self.resize(520, 480)


class MainWindow(QMainWindow):
    """The viewer. Signals name what happened (past tense).

    Signals
    -------
    slide_opened(str)
        Path of the slide now shown.
    slide_closed()
    error_shown(str)
        An error dialog opened with this message.
    stored_analysis_shown(int)
        The heatmap of Store analysis id is shown.
    analysis_finished(object)
        :class:`~wsiviewer.gui.analysis.AnalysisOutcome` of a run in this window.
    """

    slide_opened = Signal(str)
    slide_closed = Signal()
    error_shown = Signal(str)
    stored_analysis_shown = Signal(int)
    analysis_finished = Signal(object)

    def __init__(self, settings: QSettings | None = None) -> None:
        super().__init__()
        self.settings = settings or default_settings()
        self.setWindowTitle("wsiviewer")
        self.setAcceptDrops(True)
        self.resize(1400, 900)

        self.view = SlideView(self)
        self.setCentralWidget(self.view)
        self.overview = OverviewWidget()
        self.info_panel = SlideInfoPanel()
        self.overlay_panel = OverlayPanel()
        self.model_panel = ModelPanel()
        self.review_panel = ReviewPanel(self.view, self.settings)
        self.runner = AnalysisRunner(self)

        self._slide: Slide | None = None
        self._slide_path: Path | None = None
        self._user_mpp: float | None = None
        self._shown_analysis_id: int | None = None
        #: Inference settings of the next analysis (tests use small batches).
        self.device = "auto"
        self.batch_size: int | None = None
        self.last_error_box: QMessageBox | None = None

        self._build_docks()
        self._build_status_bar()
        self._build_actions()
        self._connect()
        self._restore_settings()
        self.reload_models()
        self._update_actions()

    # -- construction ---------------------------------------------------------------------

    def _dock(self, title: str, name: str, widget: QWidget) -> QDockWidget:
        dock = QDockWidget(title, self)
        dock.setObjectName(name)
        dock.setWidget(widget)
        dock.setAllowedAreas(
            Qt.DockWidgetArea.LeftDockWidgetArea | Qt.DockWidgetArea.RightDockWidgetArea
        )
        return dock

    def _build_docks(self) -> None:
        self.overview_dock = self._dock("Overview", "overview_dock", self.overview)
        self.review_dock = self._dock("Review", "review_dock", self.review_panel)
        self.overlay_dock = self._dock(
            "Heatmap", "heatmap_dock", scroll_wrapped(self.overlay_panel)
        )
        self.info_dock = self._dock("Slide", "slide_dock", self.info_panel)
        self.model_dock = self._dock("Model", "model_dock", self.model_panel)
        right = Qt.DockWidgetArea.RightDockWidgetArea
        self.addDockWidget(right, self.overview_dock)
        self.addDockWidget(right, self.overlay_dock)
        self.tabifyDockWidget(self.overlay_dock, self.info_dock)
        self.tabifyDockWidget(self.info_dock, self.model_dock)
        self.overlay_dock.raise_()
        self.addDockWidget(Qt.DockWidgetArea.LeftDockWidgetArea, self.review_dock)
        self.resizeDocks(
            [self.overview_dock, self.review_dock], [380, 420], Qt.Orientation.Horizontal
        )
        self.resizeDocks(
            [self.overview_dock, self.overlay_dock], [280, 560], Qt.Orientation.Vertical
        )

    def _build_status_bar(self) -> None:
        bar = self.statusBar()
        self.position_label = QLabel()
        self.probability_label = QLabel()
        self.magnification_label = QLabel()
        self.device_label = QLabel()
        self.progress_bar = QProgressBar()
        self.progress_bar.setMaximumWidth(220)
        self.progress_bar.setTextVisible(True)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Cancel the analysis (Esc)")
        for widget in (self.device_label, self.progress_bar, self.cancel_button):
            widget.setVisible(False)
        for widget in (
            self.position_label,
            self.probability_label,
            self.magnification_label,
            self.device_label,
            self.progress_bar,
            self.cancel_button,
        ):
            bar.addPermanentWidget(widget)

    def _action(
        self, text: str, slot: object, shortcut: str | QKeySequence | None = None, tip: str = ""
    ) -> QAction:
        action = QAction(text, self)
        if shortcut is not None:
            action.setShortcut(QKeySequence(shortcut))
            action.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
        if tip:
            action.setStatusTip(tip)
            action.setToolTip(tip)
        action.triggered.connect(slot)
        self.addAction(action)
        return action

    def _build_actions(self) -> None:
        self.open_action = self._action("&Open…", self.choose_slide, QKeySequence.StandardKey.Open)
        self.close_action = self._action(
            "&Close slide", self.close_slide, QKeySequence.StandardKey.Close
        )
        self.quit_action = self._action("&Quit", self.close, QKeySequence.StandardKey.Quit)
        self.fit_action = self._action("&Fit slide", self.view.fit, "0")
        self.zoom_in_action = self._action("Zoom &in", lambda: self.view.zoom(1.25), "+")
        self.zoom_in_action.setShortcuts([QKeySequence("+"), QKeySequence("=")])
        self.zoom_out_action = self._action("Zoom &out", lambda: self.view.zoom(0.8), "-")
        self.magnification_actions: list[QAction] = []
        for number, magnification in enumerate(MAGNIFICATION_PRESETS, start=1):
            action = self._action(
                f"{magnification:g}x",
                lambda _=False, m=magnification: self.view.set_magnification(m),
                str(number),
            )
            self.magnification_actions.append(action)
        self.heatmap_action = self._action(
            "Show &heatmap", self.overlay_panel.visible_box.toggle, "H"
        )
        self.heatmap_action.setCheckable(True)
        self.heatmap_action.setChecked(True)
        self.analyze_action = self._action(
            "&Analyze slide", self.analyze, "Ctrl+R", "Score the slide's tissue with the model"
        )
        self.cancel_action = self._action(
            "&Cancel analysis", self.runner.cancel, "Esc", "Stop the running analysis"
        )
        self.info_action = self._action("Slide &information", self._show_info, "Ctrl+I")
        self.model_action = self._action("&Model card", self._show_model, "Ctrl+M")
        self.shortcuts_action = self._action(
            "&Keyboard shortcuts", self.show_shortcuts, QKeySequence.StandardKey.HelpContents
        )
        self.about_action = self._action("&About wsiviewer", self.show_about)
        self.export_action = self._action(
            "&Export…", self.export_review, "Ctrl+E", "Export the reviewed regions"
        )
        self.import_action = self._action(
            "&Import QuPath annotations…",
            self.choose_qupath_import,
            tip="Add QuPath GeoJSON annotations as manual regions",
        )
        for action in self.review_panel.review_actions:
            self.addAction(action)

        menus = self.menuBar()
        file_menu = menus.addMenu("&File")
        file_menu.addAction(self.open_action)
        self.recent_menu = file_menu.addMenu("Open &recent")
        file_menu.addAction(self.close_action)
        file_menu.addSeparator()
        file_menu.addAction(self.export_action)
        file_menu.addAction(self.import_action)
        file_menu.addSeparator()
        file_menu.addAction(self.quit_action)
        view_menu = menus.addMenu("&View")
        for action in (self.fit_action, self.zoom_in_action, self.zoom_out_action):
            view_menu.addAction(action)
        magnification_menu = view_menu.addMenu("&Magnification")
        for action in self.magnification_actions:
            magnification_menu.addAction(action)
        view_menu.addAction(self.heatmap_action)
        view_menu.addSeparator()
        for dock in (
            self.overview_dock,
            self.overlay_dock,
            self.info_dock,
            self.model_dock,
            self.review_dock,
        ):
            view_menu.addAction(dock.toggleViewAction())
        analysis_menu = menus.addMenu("&Analysis")
        analysis_menu.addAction(self.analyze_action)
        analysis_menu.addAction(self.cancel_action)
        analysis_menu.addAction(self.model_action)
        review_menu = menus.addMenu("&Review")
        for action in self.review_panel.review_actions:
            if action is self.review_panel.draw_action:
                review_menu.addSeparator()
            review_menu.addAction(action)
        help_menu = menus.addMenu("&Help")
        help_menu.addAction(self.shortcuts_action)
        help_menu.addAction(self.info_action)
        help_menu.addAction(self.about_action)

        toolbar = self.addToolBar("Main")
        toolbar.setObjectName("main_toolbar")
        toolbar.setMovable(False)
        for action in (self.open_action, self.fit_action, self.analyze_action, self.cancel_action):
            toolbar.addAction(action)
        toolbar.addSeparator()
        toolbar.addAction(self.review_panel.draw_action)
        self._rebuild_recent_menu()

    def _connect(self) -> None:
        self.view.view_changed.connect(self._on_view_changed)
        self.view.cursor_moved.connect(self._on_cursor_moved)
        self.view.cursor_left.connect(self._on_cursor_left)
        self.view.tile_failed.connect(self._on_tile_failed)
        self.overview.navigated.connect(self.view.center_on_l0)
        self.overlay_panel.style_changed.connect(self._apply_overlay_style)
        self.overlay_panel.visible_box.toggled.connect(self.heatmap_action.setChecked)
        self.model_panel.model_changed.connect(self._on_model_changed)
        self.model_panel.add_requested.connect(self.add_model)
        self.cancel_button.clicked.connect(self.runner.cancel)
        self.runner.analysis_progressed.connect(self._on_analysis_progress)
        self.runner.analysis_finished.connect(self._on_analysis_finished)
        self.runner.analysis_failed.connect(self._on_analysis_failed)
        self.runner.analysis_cancelled.connect(self._on_analysis_cancelled)
        self.runner.analysis_warned.connect(lambda text: self.statusBar().showMessage(text, 8000))
        self.runner.stopped.connect(self._on_analysis_stopped)
        self.review_panel.review_failed.connect(self.show_error)
        self.review_panel.status_reported.connect(
            lambda text: self.statusBar().showMessage(text, 6000)
        )
        self.review_panel.review_opened.connect(lambda _state: self._update_actions())
        self.review_panel.review_closed.connect(self._update_actions)
        self._tile_error_reported = False

    # -- settings ---------------------------------------------------------------------------

    def _restore_settings(self) -> None:
        geometry = self.settings.value("window/geometry")
        if isinstance(geometry, QByteArray):
            self.restoreGeometry(geometry)
        state = self.settings.value("window/state")
        if isinstance(state, QByteArray):
            self.restoreState(state)
        colormap = self.settings.value("overlay/colormap")
        if isinstance(colormap, str):
            self.overlay_panel.set_colormap(colormap)
        for key, slider in (
            ("overlay/opacity", self.overlay_panel.opacity_slider),
            ("overlay/threshold", self.overlay_panel.threshold_slider),
        ):
            value = self.settings.value(key)
            if value is not None:
                try:
                    slider.setValue(int(value))  # type: ignore[call-overload]
                except (TypeError, ValueError):
                    pass
        self._apply_overlay_style()

    def _save_settings(self) -> None:
        self.settings.setValue("window/geometry", self.saveGeometry())
        self.settings.setValue("window/state", self.saveState())
        self.settings.setValue("overlay/colormap", self.overlay_panel.colormap)
        self.settings.setValue("overlay/opacity", self.overlay_panel.opacity_slider.value())
        self.settings.setValue("overlay/threshold", self.overlay_panel.threshold_slider.value())
        card = self.model_panel.card
        if card is not None:
            self.settings.setValue("model/name", card.name)
        self.settings.sync()

    def recent_files(self) -> list[str]:
        value = self.settings.value("recent_files")
        if isinstance(value, str):
            return [value]
        if isinstance(value, list):
            return [str(v) for v in value]
        return []

    def _remember(self, path: Path) -> None:
        entry = str(path.resolve())
        recent = [entry, *(p for p in self.recent_files() if p != entry)][:MAX_RECENT]
        self.settings.setValue("recent_files", recent)
        self._rebuild_recent_menu()

    def _rebuild_recent_menu(self) -> None:
        self.recent_menu.clear()
        recent = self.recent_files()
        for entry in recent:
            action = self.recent_menu.addAction(Path(entry).name)
            action.setToolTip(entry)
            action.setStatusTip(entry)
            action.triggered.connect(lambda _=False, p=entry: self.open_slide(p))
        self.recent_menu.setEnabled(bool(recent))

    # -- slides -----------------------------------------------------------------------------

    @property
    def slide(self) -> Slide | None:
        return self._slide

    @property
    def slide_path(self) -> Path | None:
        return self._slide_path

    def choose_slide(self) -> None:
        start = str(Path(self.recent_files()[0]).parent) if self.recent_files() else ""
        path, _ = QFileDialog.getOpenFileName(self, "Open slide", start, SLIDE_FILTER)
        if path:
            self.open_slide(path)

    def open_slide(self, path: str | Path) -> bool:
        """Open and show a slide; a dialog names the problem if it cannot be shown."""
        path = Path(path)
        try:
            slide = open_slide(path)
        except (WsiViewerError, OSError) as exc:
            self.show_error("Cannot open slide", f"{path.name} cannot be opened.\n\n{exc}")
            return False
        try:
            base_image, base_level = read_base_image(slide)
        except (WsiViewerError, OSError) as exc:
            slide.close()
            self.show_error(
                "Cannot read slide",
                f"{path.name} opens, but its pixels cannot be read.\n\n{exc}",
            )
            return False
        self._close_current()
        self._slide = slide
        self._slide_path = path
        self._user_mpp = None
        self._tile_error_reported = False
        mpp = slide.mpp
        self.view.set_slide(slide, base_image, base_level, mpp.value if mpp else None)  # type: ignore[arg-type]
        self.overview.set_slide(base_image, slide.dimensions)  # type: ignore[arg-type]
        self.info_panel.set_slide(slide)
        self.setWindowTitle(f"{path.name} — wsiviewer")
        self._remember(path)
        # After the first frame: the Store's first use imports shapely and scikit-image.
        QTimer.singleShot(0, self, lambda s=slide: self._show_stored_analysis(s))
        self._update_actions()
        self._on_view_changed()
        self.statusBar().showMessage(
            f"Opened {path.name}: {slide.dimensions[0]:,} × {slide.dimensions[1]:,} px, "
            f"{slide.level_count} levels",
            5000,
        )
        self.slide_opened.emit(str(path))
        return True

    def close_slide(self) -> None:
        if self._slide is None:
            return
        self._close_current()
        self.setWindowTitle("wsiviewer")
        self._update_actions()
        self.slide_closed.emit()

    def _close_current(self) -> None:
        old = self._slide
        # Stops the tile readers first: the old handle is closed only when none reads it.
        self.view.set_slide(None)
        self.overview.set_slide(None, None)
        self.info_panel.set_slide(None)
        self.overlay_panel.analysis_label.setText("No analysis for this slide yet.")
        self._slide = None
        self._slide_path = None
        self._shown_analysis_id = None
        self.review_panel.close_review()
        self.position_label.clear()
        self.probability_label.clear()
        if old is not None:
            old.close()

    def show_error(self, title: str, message: str) -> None:
        """A non-blocking error dialog; the app stays usable."""
        box = QMessageBox(
            QMessageBox.Icon.Critical, title, message, QMessageBox.StandardButton.Ok, self
        )
        box.finished.connect(lambda _=0, b=box: self._forget_error_box(b))
        box.open()
        self.last_error_box = box
        self.error_shown.emit(message)

    def _forget_error_box(self, box: QMessageBox) -> None:
        if self.last_error_box is box:
            self.last_error_box = None
        box.deleteLater()

    def _on_tile_failed(self, message: str) -> None:
        self.statusBar().showMessage(f"Some tiles cannot be read: {message}", 10000)
        if not self._tile_error_reported:
            self._tile_error_reported = True
            self.show_error("Cannot read part of the slide", message)

    # -- drag and drop ----------------------------------------------------------------------

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        urls = event.mimeData().urls()
        if any(url.isLocalFile() for url in urls):
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:
        for url in event.mimeData().urls():
            if url.isLocalFile():
                event.acceptProposedAction()
                self.open_slide(url.toLocalFile())
                return

    # -- view feedback ----------------------------------------------------------------------

    @property
    def display_mpp(self) -> float | None:
        if self._slide is None:
            return None
        if self._user_mpp is not None:
            return self._user_mpp
        mpp = self._slide.mpp
        return mpp.value if mpp else None

    def _on_view_changed(self) -> None:
        if self._slide is None:
            self.magnification_label.clear()
            return
        self.overview.set_viewport(self.view.visible_l0_rect())
        magnification = self.view.magnification
        if magnification is None:
            self.magnification_label.setText(f"zoom {100 / self.view.l0_per_screen_px:.1f}%")
        else:
            self.magnification_label.setText(f"{magnification:.1f}x")
        native = None if self.display_mpp is None else 10.0 / self.display_mpp
        for action, preset in zip(self.magnification_actions, MAGNIFICATION_PRESETS, strict=True):
            action.setEnabled(native is not None and preset <= native * 1.05)

    def _on_cursor_moved(self, l0_x: float, l0_y: float) -> None:
        slide = self._slide
        if slide is None:
            return
        width, height = slide.dimensions
        if not (0 <= l0_x < width and 0 <= l0_y < height):
            self._on_cursor_left()
            return
        mpp = self.display_mpp
        if mpp is None:
            self.position_label.setText(f"x {l0_x:,.0f}  y {l0_y:,.0f} px")
        else:
            self.position_label.setText(f"x {l0_x * mpp:,.1f}  y {l0_y * mpp:,.1f} µm")
        probability = self.view.probability_at((l0_x, l0_y))
        if probability is None:
            self.probability_label.clear()
        else:
            self.probability_label.setText(
                f"P(IDC) {probability:.2f} (model output, research use only)"
            )

    def _on_cursor_left(self) -> None:
        self.position_label.clear()
        self.probability_label.clear()

    # -- heatmap ----------------------------------------------------------------------------

    def _apply_overlay_style(self) -> None:
        panel = self.overlay_panel
        self.view.set_heatmap_style(
            colormap=panel.colormap,
            threshold=panel.threshold,
            opacity=panel.opacity,
            visible=panel.visible,
        )
        self._refresh_overview_heatmap()

    def _refresh_overview_heatmap(self) -> None:
        grid = self.view.grid
        image = self.view.heatmap_thumbnail() if self.overlay_panel.visible else None
        if grid is None or image is None:
            self.overview.set_heatmap(None, QRectF(), 0.0)
            return
        size = grid.l0_patch_size
        self.overview.set_heatmap(
            image, QRectF(0, 0, grid.cols * size, grid.rows * size), self.overlay_panel.opacity
        )

    def _show_probability_map(self, grid: PatchGrid, probabilities: object) -> None:
        self.view.set_probability_map(grid, probabilities)  # type: ignore[arg-type]
        self.probability_label.clear()  # until the cursor moves over the new map
        self._refresh_overview_heatmap()

    def _show_stored_analysis(self, for_slide: Slide | None = None) -> None:
        """This slide's stored analysis and region set, chosen by the selection rule that
        ``export`` uses too (:mod:`wsiviewer.core.review.selection`), with the chosen model as
        the default model."""
        slide = self._slide
        if slide is None or (for_slide is not None and for_slide is not slide):
            return
        self._shown_analysis_id = None
        from wsiviewer.core.review.selection import select
        from wsiviewer.core.store.database import Store

        card = self.model_panel.card
        try:
            with Store.open() as store:
                selection = select(
                    store, slide.identity, default_card=card, cards=available_models()
                )
                probability_map = (
                    None if selection is None else store.load_probability_map(selection.analysis)
                )
        except (WsiViewerError, OSError) as exc:
            self.statusBar().showMessage(f"Stored analyses cannot be read: {exc}", 10000)
            return
        if selection is None or probability_map is None:
            self.review_panel.close_review()
            self.view.clear_probability_map()
            self._refresh_overview_heatmap()
            self.overlay_panel.analysis_label.setText(
                "No analysis for this slide yet: Analysis › Analyze slide (Ctrl+R)."
            )
            return
        record = selection.analysis
        if slide.mpp is None and record.mpp.source == "user":
            self._user_mpp = record.mpp.value
            self.view.set_mpp(record.mpp.value)
            self.info_panel.set_slide(slide, user_mpp=record.mpp.value)
        self._show_probability_map(probability_map.grid, probability_map.probabilities)
        other = (
            ""
            if card is None or record.model.weights_sha256 == card.weights_sha256
            else (" (not the chosen model)")
        )
        self.overlay_panel.analysis_label.setText(
            f"Stored analysis #{record.id}: {html.escape(record.model.name)} "
            f"v{html.escape(record.model.version)}{other}, {record.finished_at}, "
            f"{record.scored_count:,} patches scored on {record.device}, "
            f"{record.mpp.value:.4g} µm/px ({record.mpp.source}); shown: "
            f"{html.escape(selection.reason)}."
        )
        self._shown_analysis_id = record.id
        self.review_panel.show_analysis(record.id, selection.region_set, record.model.threshold)
        self.stored_analysis_shown.emit(record.id)

    @property
    def shown_analysis_id(self) -> int | None:
        return self._shown_analysis_id

    # -- models -----------------------------------------------------------------------------

    def reload_models(self, preferred: str | None = None) -> None:
        cards = available_models()
        saved = self.settings.value("model/name")
        preferred = preferred or (saved if isinstance(saved, str) else None)
        searched = ", ".join(str(d) for d in model_dirs())
        self.model_panel.set_cards(cards, preferred, searched)

    def _on_model_changed(self, card: ModelCard | None) -> None:
        self._update_actions()
        if self._slide is not None and not self.runner.running:
            self._show_stored_analysis()

    def add_model(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Add model card", "", "Model card (*.json)")
        if path:
            self.install_model(Path(path))

    def install_model(self, card_path: Path) -> bool:
        """Copy a card and its weights into the user models folder and choose it."""
        from wsiviewer.core.paths import user_models_dir

        try:
            card = ModelCard.from_file(card_path)
            folder = user_models_dir()
            if card_path.resolve().parent != folder.resolve():
                shutil.copy2(card.weights_path, folder / card.weights_path.name)
                shutil.copy2(card_path, folder / card_path.name)
        except (ModelError, OSError) as exc:
            self.show_error("Cannot add model", str(exc))
            return False
        self.reload_models(preferred=card.name)
        return True

    def _show_model(self) -> None:
        self.model_dock.show()
        self.model_dock.raise_()

    def _show_info(self) -> None:
        self.info_dock.show()
        self.info_dock.raise_()

    # -- analysis ---------------------------------------------------------------------------

    def _update_actions(self) -> None:
        has_slide = self._slide is not None
        running = self.runner.running
        card = self.model_panel.card
        self.analyze_action.setEnabled(has_slide and card is not None and not running)
        if card is None:
            self.analyze_action.setToolTip(
                "No model installed: add one in the Model panel (Add model…)"
            )
        elif not has_slide:
            self.analyze_action.setToolTip("Open a slide first")
        else:
            self.analyze_action.setToolTip(f"Analyse with {card.name} (Ctrl+R)")
        self.cancel_action.setEnabled(running)
        self.close_action.setEnabled(has_slide)
        has_review = self.review_panel.session is not None
        self.export_action.setEnabled(has_review)
        self.import_action.setEnabled(has_review)
        for action in (self.fit_action, self.zoom_in_action, self.zoom_out_action):
            action.setEnabled(has_slide)
        for widget in (self.device_label, self.progress_bar, self.cancel_button):
            widget.setVisible(running)

    def ask_mpp(self, guess: float, guessed_from_power: bool) -> float | None:
        """Ask the slide's µm/px; ``None`` if the user cancels. Tests replace this."""
        if guessed_from_power:
            why = (
                "This slide's metadata has no µm/px. The value below is guessed from its "
                "objective power (10 / power); check it against the scanner's."
            )
        else:
            why = (
                "This slide's metadata has neither µm/px nor objective power. Enter the scan "
                "resolution (about 0.25 at 40x, 0.5 at 20x)."
            )
        value, ok = QInputDialog.getDouble(
            self, "Slide resolution", f"{why}\n\nµm per pixel:", guess, 0.05, 50.0, 4
        )
        return float(value) if ok else None

    def _analysis_mpp(self, slide: Slide) -> Mpp | None:
        if self._user_mpp is not None:
            return Mpp(self._user_mpp, "user")
        mpp = slide.mpp
        if mpp is not None and mpp.source == "metadata":
            return mpp
        guess = mpp.value if mpp is not None else 0.25
        value = self.ask_mpp(guess, guessed_from_power=mpp is not None)
        if value is None:
            return None
        try:
            chosen = (
                mpp if mpp is not None and math.isclose(value, mpp.value) else Mpp(value, "user")
            )
        except ResolutionError as exc:
            self.show_error("Implausible resolution", str(exc))
            return None
        if chosen.source == "user":
            self._user_mpp = chosen.value
            self.view.set_mpp(chosen.value)
            self.info_panel.set_slide(slide, user_mpp=chosen.value)
        return chosen

    def analyze(self) -> bool:
        """Start analysing the open slide; ``False`` if it did not start."""
        slide, path = self._slide, self._slide_path
        if slide is None or path is None or self.runner.running:
            return False
        card = self.model_panel.card
        if card is None:
            searched = ", ".join(str(d) for d in model_dirs())
            self.show_error(
                "No model installed",
                "No trained model is installed, so slides cannot be analysed yet. Add a model "
                "(<name>.json + <name>.safetensors) with Model › Add model…, or copy it into "
                f"your models folder ({searched}).",
            )
            return False
        mpp = self._analysis_mpp(slide)
        if mpp is None:
            return False
        try:
            PatchGrid.for_slide(slide.dimensions, mpp.value, card.input_mpp, card.input_size)
        except ResolutionError as exc:
            self.show_error("Cannot analyse this slide", str(exc))
            return False
        job = AnalysisJob(path, card, mpp, device=self.device, batch_size=self.batch_size)
        self.runner.start(job)
        self.overlay_panel.analysis_label.setText(
            f"Analysing with {html.escape(card.name)} v{html.escape(card.version)}: the heatmap "
            "fills in as patches are scored. Cancel (Esc) saves nothing."
        )
        self.progress_bar.setRange(0, 0)
        self.device_label.setText("loading model…")
        self.statusBar().showMessage(f"Analysing with {card.name}…")
        self._update_actions()
        return True

    def _job_is_current(self) -> bool:
        job = self.runner.job
        return job is not None and job.slide_path == self._slide_path

    def _on_analysis_progress(self, update: AnalysisUpdate) -> None:
        if update.device:
            self.device_label.setText(f"on {update.device}")
        if update.stage == "loading model":
            self.statusBar().showMessage("Loading the model…")
        elif update.stage == "tissue":
            self.statusBar().showMessage(f"Tissue found: {update.total:,} patches to score")
        elif update.stage == "inference":
            self.statusBar().showMessage(f"Scoring patches: {update.done:,} / {update.total:,}")
        elif update.stage == "saving":
            self.statusBar().showMessage("Saving the analysis…")
        if update.total:
            self.progress_bar.setRange(0, update.total)
            self.progress_bar.setValue(update.done)
        if update.grid is not None and update.probabilities is not None and self._job_is_current():
            self._show_probability_map(update.grid, update.probabilities)

    def _on_analysis_finished(self, outcome: AnalysisOutcome) -> None:
        analysis = outcome.analysis
        pmap = analysis.probability_map
        if self._job_is_current():
            self._show_probability_map(pmap.grid, pmap.probabilities)
            self._shown_analysis_id = outcome.analysis_id
            self.review_panel.show_analysis(outcome.analysis_id, None, outcome.threshold)
            self.overlay_panel.analysis_label.setText(
                f"Analysis #{outcome.analysis_id}: {html.escape(analysis.model.name)} "
                f"v{html.escape(analysis.model.version)}, {pmap.scored_count:,} patches scored "
                f"on {analysis.device} in {analysis.timings_s.get('total', 0):.1f} s, "
                f"{outcome.region_count} regions flagged at P ≥ {outcome.threshold:.2f}."
            )
        notes = " ".join(analysis.warnings)
        self.statusBar().showMessage(
            f"Analysis finished: {pmap.scored_count:,} patches, {outcome.region_count} regions. "
            f"{notes}",
            15000,
        )
        self.analysis_finished.emit(outcome)

    def _on_analysis_failed(self, message: str) -> None:
        self.show_error("Analysis failed", message)
        if self._job_is_current():
            self._show_stored_analysis()

    def _on_analysis_cancelled(self) -> None:
        self.statusBar().showMessage("Analysis cancelled; nothing was saved.", 10000)
        if self._job_is_current():
            self._show_stored_analysis()

    def _on_analysis_stopped(self) -> None:
        self._update_actions()

    # -- review -----------------------------------------------------------------------------

    def export_review(self) -> None:
        """File › Export…: the reviewed regions into a chosen folder."""
        self.review_panel.choose_export(self._slide, self._slide_path, self.model_panel.card)

    def choose_qupath_import(self) -> None:
        start = str(self._slide_path.parent) if self._slide_path is not None else ""
        path, _ = QFileDialog.getOpenFileName(
            self, "Import QuPath annotations", start, "GeoJSON (*.geojson *.json);;All files (*)"
        )
        if path:
            self.review_panel.import_qupath(path)

    # -- help -------------------------------------------------------------------------------

    def show_shortcuts(self) -> None:
        dialog = ShortcutsDialog(self)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.open()

    def show_about(self) -> None:
        box = QMessageBox(self)
        box.setWindowTitle("About wsiviewer")
        box.setTextFormat(Qt.TextFormat.RichText)
        box.setText(
            f"<h3>wsiviewer {html.escape(__version__)}</h3>"
            "<p>Whole-slide images with a CancerNet IDC (invasive ductal carcinoma) "
            "probability heatmap.</p>"
            f"<p style='color:#a00000'><b>{html.escape(RESEARCH_USE_NOTICE)}</b></p>"
        )
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.open()

    # -- closing ----------------------------------------------------------------------------

    def closeEvent(self, event: QCloseEvent) -> None:
        self.runner.cancel()
        self.runner.wait()
        self._save_settings()
        self._close_current()
        self.view.shutdown()
        event.accept()
