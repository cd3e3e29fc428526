"""The main window: composition of the slide view, the side panels and the status bar, and
the slide's life (open, close, errors, settings, recent files).

Its parts live beside it: menus, toolbar and help in :mod:`wsiviewer.gui.window_actions`,
running an analysis in :mod:`wsiviewer.gui.analysis_control`, which map is shown and what is
said about it in :mod:`wsiviewer.gui.analysis_display`.
"""

from __future__ import annotations

import logging
import shutil
import threading
from pathlib import Path

from PySide6.QtCore import QByteArray, QPoint, QSettings, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QCloseEvent, QDragEnterEvent, QDropEvent, QKeySequence
from PySide6.QtWidgets import (
    QDockWidget,
    QFileDialog,
    QLabel,
    QMainWindow,
    QMenu,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from wsiviewer import WsiViewerError
from wsiviewer.core.model.cards import ModelCard, available_models, model_dirs
from wsiviewer.core.slides import Slide, open_slide
from wsiviewer.core.slides.formats import slide_file_filter
from wsiviewer.core.slides.probe import ProbeVerdict
from wsiviewer.core.units import magnification_from_mpp, um_from_px
from wsiviewer.errors import ModelError, escape_control
from wsiviewer.gui.analysis import AnalysisRunner
from wsiviewer.gui.analysis_control import AnalysisController
from wsiviewer.gui.analysis_display import AnalysisDisplay
from wsiviewer.gui.case_list import CaseListPanel
from wsiviewer.gui.evidence_panel import EvidencePanel, EvidenceRequest
from wsiviewer.gui.images import rgb_to_qimage
from wsiviewer.gui.model_panel import ModelPanel
from wsiviewer.gui.mpp_dialog import MppDialog
from wsiviewer.gui.overlay_panel import OverlayPanel
from wsiviewer.gui.overview import OverviewWidget
from wsiviewer.gui.panels import SlideInfoPanel, scroll_wrapped
from wsiviewer.gui.review_panel import ReviewPanel
from wsiviewer.gui.slide_probe import default_cache, probe, start_prober
from wsiviewer.gui.slide_view import MAGNIFICATION_PRESETS, SlideView
from wsiviewer.gui.view_tools import RulerTool, save_view_image
from wsiviewer.gui.window_actions import (
    ShortcutsDialog,
    about_box,
    build_menus,
    build_toolbar,
    make_action,
)

log = logging.getLogger(__name__)

#: Every format OpenSlide 4 opens, for File › Open (the list lives in core: folder search
#: uses it too).
SLIDE_FILTER = slide_file_filter()

MAX_RECENT = 10

#: Largest coarsest level read whole at open (else a thumbnail stands in for it).
MAX_BASE_SIDE = 4096

#: A magnification preset is offered up to this factor above the slide's own.
PRESET_SLACK = 1.05


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
        #: Above the slide, while the analysis shown carries a warning (a slide unlike the
        #: model's training data): in view for as long as its heatmap is.
        self.warning_banner = QLabel()
        self.warning_banner.setObjectName("analysisWarning")
        self.warning_banner.setWordWrap(True)
        self.warning_banner.setStyleSheet(
            "QLabel#analysisWarning { background: #fff3cd; color: #664d03; "
            "border-bottom: 1px solid #e0c36a; padding: 6px 10px; }"
        )
        self.warning_banner.hide()
        central = QWidget()
        layout = QVBoxLayout(central)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(self.warning_banner)
        layout.addWidget(self.view, 1)
        self.setCentralWidget(central)
        self.overview = OverviewWidget()
        self.info_panel = SlideInfoPanel()
        self.overlay_panel = OverlayPanel()
        self.model_panel = ModelPanel(settings=self.settings)
        self.review_panel = ReviewPanel(self.view, self.settings)
        self.evidence_panel = EvidencePanel()
        self.display = AnalysisDisplay(
            self.view, self.overview, self.overlay_panel, self.review_panel, self
        )
        self.runner = AnalysisRunner(self)
        self.display.warnings_shown.connect(self._show_analysis_warnings)

        self._slide: Slide | None = None
        self._slide_path: Path | None = None
        self._user_mpp: float | None = None
        self._tile_error_reported = False
        #: Inference settings of the next analysis (tests use small batches).
        self.device = "auto"
        self.batch_size: int | None = None
        self.last_error_box: QMessageBox | None = None
        self._probe_cache = default_cache()
        # The probe's child process imports for half a second: started now, beside the window.
        threading.Thread(target=start_prober, name="wsiviewer-probe-start", daemon=True).start()

        self._build_docks()
        self._build_status_bar()
        self._build_actions()
        self.recent_menu = build_menus(self)
        build_toolbar(self)
        self._rebuild_recent_menu()
        self.analysis_control = AnalysisController(self, self.runner)
        self._connect()
        self._restore_settings()
        self.reload_models()
        self.update_actions()

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
        self.evidence_dock = self._dock("Evidence", "evidence_dock", self.evidence_panel)
        self.case_list = CaseListPanel(self)
        self.cases_dock = self._dock("Cases", "cases_dock", self.case_list)
        right = Qt.DockWidgetArea.RightDockWidgetArea
        self.addDockWidget(right, self.overview_dock)
        self.addDockWidget(right, self.overlay_dock)
        self.tabifyDockWidget(self.overlay_dock, self.info_dock)
        self.tabifyDockWidget(self.info_dock, self.model_dock)
        self.tabifyDockWidget(self.model_dock, self.evidence_dock)
        self.overlay_dock.raise_()
        self.addDockWidget(Qt.DockWidgetArea.LeftDockWidgetArea, self.review_dock)
        # Below the review, hidden until File › Open folder… (not tabified: Qt 6 then keeps a
        # second, stale tab bar of the left area drawn over the panel).
        self.addDockWidget(Qt.DockWidgetArea.LeftDockWidgetArea, self.cases_dock)
        self.cases_dock.hide()
        self.resizeDocks(
            [self.overview_dock, self.review_dock], [380, 420], Qt.Orientation.Horizontal
        )
        self.resizeDocks(
            [self.overview_dock, self.overlay_dock], [280, 560], Qt.Orientation.Vertical
        )

    @property
    def docks(self) -> tuple[QDockWidget, ...]:
        """The docks in View-menu order."""
        return (
            self.overview_dock,
            self.overlay_dock,
            self.info_dock,
            self.model_dock,
            self.evidence_dock,
            self.review_dock,
            self.cases_dock,
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

    def _build_actions(self) -> None:
        standard = QKeySequence.StandardKey
        view = self.view
        self.open_action = make_action(self, "&Open…", self.choose_slide, standard.Open)
        self.open_folder_action = make_action(
            self,
            "Open &folder…",
            self.choose_folder,
            "Ctrl+Shift+O",
            "List a folder's slides with their analysis and review status",
        )
        self.close_action = make_action(self, "&Close slide", self.close_slide, standard.Close)
        self.quit_action = make_action(self, "&Quit", self.close, standard.Quit)
        self.fit_action = make_action(self, "&Fit slide", view.fit, "0")
        self.zoom_in_action = make_action(self, "Zoom &in", lambda: view.zoom(1.25), "+")
        self.zoom_in_action.setShortcuts([QKeySequence("+"), QKeySequence("=")])
        self.zoom_out_action = make_action(self, "Zoom &out", lambda: view.zoom(0.8), "-")
        self.magnification_actions: list[QAction] = [
            make_action(
                self,
                f"{magnification:g}x",
                lambda _=False, m=magnification: view.set_magnification(m),
                str(number),
            )
            for number, magnification in enumerate(MAGNIFICATION_PRESETS, start=1)
        ]
        self.heatmap_action = make_action(
            self, "Show &heatmap", self.overlay_panel.visible_box.toggle, "H"
        )
        self.heatmap_action.setCheckable(True)
        self.heatmap_action.setChecked(True)
        self.analyze_action = make_action(
            self,
            "&Analyze slide",
            self.analyze,
            "Ctrl+R",
            "Score the slide's tissue with the model",
        )
        self.dense_action = make_action(
            self,
            "&Dense heatmap",
            lambda _=False: None,
            tip="Analyse with patches every half patch: 100 µm cells, each from the 4 patches "
            "covering it; about 4 times slower",
        )
        self.dense_action.setCheckable(True)
        self.cancel_action = make_action(
            self, "&Cancel analysis", self.runner.cancel, "Esc", "Stop the running analysis"
        )
        self.info_action = make_action(self, "Slide &information", self.show_info, "Ctrl+I")
        self.model_action = make_action(self, "&Model card", self.show_model, "Ctrl+M")
        self.shortcuts_action = make_action(
            self, "&Keyboard shortcuts", self.show_shortcuts, standard.HelpContents
        )
        self.about_action = make_action(self, "&About wsiviewer", self.show_about)
        self.about_model_action = make_action(
            self,
            "About this &model…",
            self.show_about_model,
            tip="The chosen model in words: how it was tested and where it does worst",
        )
        self.export_action = make_action(
            self, "&Export…", self.export_review, "Ctrl+E", "Export the reviewed regions"
        )
        self.import_action = make_action(
            self,
            "&Import QuPath annotations…",
            self.choose_qupath_import,
            tip="Add QuPath GeoJSON annotations as manual regions",
        )
        for action in self.review_panel.review_actions:
            self.addAction(action)
        self.ruler = RulerTool(self.view)
        self.ruler_action = make_action(
            self, "&Ruler", self.ruler.set_active, "L", "Measure a length on the slide (µm)"
        )
        self.ruler_action.setCheckable(True)
        self.ruler.active_changed.connect(self.ruler_action.setChecked)
        self.ruler.measured.connect(
            lambda _length: self.statusBar().showMessage(f"Length: {self.ruler.text}", 10_000)
        )
        self.evidence_action = make_action(
            self,
            "&Why was this flagged?",
            self.show_evidence,
            "W",
            "The selected region's highest and lowest patches, as the model saw them",
        )
        self.saliency_action = make_action(
            self,
            "Show &saliency",
            lambda: self.evidence_panel.saliency_box.toggle(),
            "Shift+W",
            "Draw Grad-CAM or integrated gradients over the evidence patches",
        )
        self.saliency_action.setCheckable(True)
        self.evidence_panel.saliency_box.toggled.connect(self.saliency_action.setChecked)
        self.save_view_action = make_action(
            self,
            "Save &view as image…",
            self.save_view_image,
            "Ctrl+Shift+S",
            "A PNG of the view with its scale bar and legend",
        )

    def _connect(self) -> None:
        self.view.view_changed.connect(self._on_view_changed)
        self.view.cursor_moved.connect(self._on_cursor_moved)
        self.view.cursor_left.connect(self._on_cursor_left)
        self.view.tile_failed.connect(self._on_tile_failed)
        self.overview.navigated.connect(self.view.center_on_l0)
        self.overlay_panel.style_changed.connect(self.display.apply_style)
        self.overlay_panel.visible_box.toggled.connect(self.heatmap_action.setChecked)
        self.model_panel.model_changed.connect(self._on_model_changed)
        self.model_panel.add_requested.connect(self.add_model)
        self.cancel_button.clicked.connect(self.runner.cancel)
        self.display.stored_analysis_shown.connect(self.stored_analysis_shown)
        self.display.map_shown.connect(self.probability_label.clear)
        self.display.user_mpp_recalled.connect(self.set_user_mpp)
        self.display.status_reported.connect(self.statusBar().showMessage)
        self.review_panel.review_failed.connect(self.show_error)
        self.review_panel.status_reported.connect(
            lambda text: self.statusBar().showMessage(text, 6000)
        )
        self.review_panel.review_opened.connect(lambda _state: self.update_actions())
        self.review_panel.review_closed.connect(self.update_actions)
        self.review_panel.region_selected.connect(lambda _ref: self._request_evidence())
        # A decision or an edit may change the selected region's outline; a patch explained
        # from the slide's menu stays until another region is selected.
        self.review_panel.review_changed.connect(
            lambda _state: self._request_evidence(keep_point=True)
        )
        self.evidence_dock.visibilityChanged.connect(
            lambda visible: self._request_evidence() if visible else None
        )
        self.evidence_panel.centre_requested.connect(self.view.center_on_l0)
        self.view.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.view.customContextMenuRequested.connect(self._show_view_menu)
        self.evidence_panel.failed.connect(
            lambda message: self.statusBar().showMessage(f"Evidence: {message}", 8000)
        )

    def update_actions(self) -> None:
        """Enable what the slide, the model, a running analysis and the review allow."""
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
        has_review = self.review_panel.state is not None
        self.export_action.setEnabled(has_review)
        self.import_action.setEnabled(has_review)
        self.save_view_action.setEnabled(has_slide)
        self.ruler_action.setEnabled(has_slide)
        for action in (self.fit_action, self.zoom_in_action, self.zoom_out_action):
            action.setEnabled(has_slide)
        for widget in (self.device_label, self.progress_bar, self.cancel_button):
            widget.setVisible(running)

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
        # The threshold is not a preference: it belongs to the slide's region set.
        for key, slider in (("overlay/opacity", self.overlay_panel.opacity_slider),):
            value = self.settings.value(key)
            if isinstance(value, int | str):
                try:
                    slider.setValue(int(value))
                except ValueError:
                    pass
        self.dense_action.setChecked(self.settings.value("analysis/dense") in (True, "true"))
        self.display.apply_style()

    def _save_settings(self) -> None:
        self.settings.setValue("analysis/dense", self.dense_action.isChecked())
        self.settings.setValue("window/geometry", self.saveGeometry())
        self.settings.setValue("window/state", self.saveState())
        self.settings.setValue("overlay/colormap", self.overlay_panel.colormap)
        self.settings.setValue("overlay/opacity", self.overlay_panel.opacity_slider.value())
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

    def choose_folder(self) -> None:
        start = str(self.case_list.folder or "")
        folder = QFileDialog.getExistingDirectory(self, "Open folder of slides", start)
        if folder:
            self.open_folder(folder)

    def open_folder(self, folder: str | Path) -> None:
        """Show the case list of ``folder``: its slides and their status."""
        self.case_list.set_folder(folder)
        self.cases_dock.show()
        self.cases_dock.raise_()
        self.resizeDocks([self.review_dock, self.cases_dock], [300, 600], Qt.Orientation.Vertical)

    def open_slide(self, path: str | Path) -> bool:
        """Open and show a slide; a dialog names the problem if it cannot be shown.

        The file is first opened in a child process (:mod:`wsiviewer.gui.slide_probe`;
        verdicts are remembered), so a reader that crashes on it takes down the child, not
        the viewer. Any error opening it, ours or not, ends in a dialog.
        """
        path = Path(path)
        name = escape_control(path.name)
        verdict = self.probe_slide(path)
        if verdict.crashed:
            self.show_error("Cannot open slide", f"{name} cannot be opened.\n\n{verdict.message}")
            return False
        try:
            slide = open_slide(path)
        except Exception as exc:  # noqa: BLE001 -- any failure is a dialog, never a dead action
            self._report_unexpected(exc, "Cannot open slide", f"{name} cannot be opened.")
            return False
        try:
            base_image, base_level = read_base_image(slide)
        except Exception as exc:  # noqa: BLE001 -- as above
            slide.close()
            self._report_unexpected(
                exc, "Cannot read slide", f"{name} opens, but its pixels cannot be read."
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
        QTimer.singleShot(0, self, lambda s=slide: self.show_stored_analysis(s))
        self.update_actions()
        self._on_view_changed()
        self.statusBar().showMessage(
            f"Opened {path.name}: {slide.dimensions[0]:,} × {slide.dimensions[1]:,} px, "
            f"{slide.level_count} levels",
            5000,
        )
        self.slide_opened.emit(str(path))
        return True

    def probe_slide(self, path: Path) -> ProbeVerdict:
        """The child process's verdict on ``path`` (remembered by path, size and time)."""
        self.setCursor(Qt.CursorShape.WaitCursor)
        try:
            return probe(path, self._probe_cache)
        finally:
            self.unsetCursor()

    def _report_unexpected(self, exc: Exception, title: str, what: str) -> None:
        """A dialog for a failed action; anything but our errors is logged with its traceback."""
        if not isinstance(exc, WsiViewerError | OSError):
            log.error("%s", title, exc_info=exc)
            detail = f"Unexpected error: {type(exc).__name__}: {exc}"
        else:
            detail = str(exc)
        self.show_error(title, f"{what}\n\n{escape_control(detail)}")

    def close_slide(self) -> None:
        if self._slide is None:
            return
        self._close_current()
        self.setWindowTitle("wsiviewer")
        self.update_actions()
        self.slide_closed.emit()

    def _close_current(self) -> None:
        old = self._slide
        # Stops the tile readers first: the old handle is closed only when none reads it.
        self.view.set_slide(None)
        self.overview.set_slide(None, None)
        self.info_panel.set_slide(None)
        self.display.forget()
        self._slide = None
        self._slide_path = None
        self.review_panel.close_review()
        self.evidence_panel.clear()
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

    def _show_analysis_warnings(self, notes: list[str]) -> None:
        """The shown analysis's warnings above the slide (none: the banner hides)."""
        text = " ".join(notes)
        self.warning_banner.setText(f"⚠ {text}" if text else "")
        self.warning_banner.setToolTip(text)
        self.warning_banner.setVisible(bool(text))

    def _on_tile_failed(self, message: str) -> None:
        self.statusBar().showMessage(f"Some tiles cannot be read: {message}", 10000)
        if not self._tile_error_reported:
            self._tile_error_reported = True
            self.show_error("Cannot read part of the slide", message)

    # -- resolution -------------------------------------------------------------------------

    @property
    def user_mpp(self) -> float | None:
        """The µm/px the user entered for the open slide, if any."""
        return self._user_mpp

    def set_user_mpp(self, mpp: float) -> None:
        """Use the µm/px the user entered for the open slide (scale bar, analysis, info)."""
        self._user_mpp = mpp
        self.view.set_mpp(mpp)
        self.info_panel.set_slide(self._slide, user_mpp=mpp)

    @property
    def display_mpp(self) -> float | None:
        if self._slide is None:
            return None
        if self._user_mpp is not None:
            return self._user_mpp
        mpp = self._slide.mpp
        return mpp.value if mpp else None

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
        # No value typed in for the user unless the objective power gives one (issue 13).
        dialog = MppDialog(why, guess if guessed_from_power else None, self)
        if dialog.exec() != MppDialog.DialogCode.Accepted:
            return None
        return dialog.value

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
        mpp = self.display_mpp
        native = None if mpp is None else magnification_from_mpp(mpp)
        for action, preset in zip(self.magnification_actions, MAGNIFICATION_PRESETS, strict=True):
            action.setEnabled(native is not None and preset <= native * PRESET_SLACK)

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
            x_um, y_um = um_from_px(l0_x, mpp), um_from_px(l0_y, mpp)
            self.position_label.setText(f"x {x_um:,.1f}  y {y_um:,.1f} µm")
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

    # -- analyses ---------------------------------------------------------------------------

    def analyze(self) -> bool:
        """Start analysing the open slide with the chosen model; ``False`` if it did not
        (or the user kept the reviewed set shown)."""
        if self._slide is None or self.runner.running:
            return False
        if not self.display.confirm_reanalysis(self):
            self.statusBar().showMessage("Not analysed: the reviewed region set stays shown", 6000)
            return False
        return self.analysis_control.analyze()

    def show_stored_analysis(self, for_slide: Slide | None = None) -> None:
        """The open slide's stored analysis (if ``for_slide`` is still the open slide)."""
        slide = self._slide
        if slide is None or (for_slide is not None and for_slide is not slide):
            return
        self.display.show_stored(slide, self.model_panel.card)

    @property
    def shown_analysis_id(self) -> int | None:
        return self.display.shown_analysis_id

    # -- models -----------------------------------------------------------------------------

    def reload_models(self, preferred: str | None = None) -> None:
        cards = available_models()
        saved = self.settings.value("model/name")
        preferred = preferred or (saved if isinstance(saved, str) else None)
        searched = ", ".join(str(d) for d in model_dirs())
        self.model_panel.set_cards(cards, preferred, searched)

    def _on_model_changed(self, card: ModelCard | None) -> None:
        self.update_actions()
        if self._slide is not None and not self.runner.running:
            self.show_stored_analysis()

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

    def show_model(self) -> None:
        self.model_dock.show()
        self.model_dock.raise_()

    def show_info(self) -> None:
        self.info_dock.show()
        self.info_dock.raise_()

    # -- review -----------------------------------------------------------------------------

    def export_review(self) -> None:
        """File › Export…: the reviewed regions into a chosen folder."""
        self.review_panel.choose_export(self._slide, self._slide_path, self.model_panel.card)

    def save_view_image(self, path: str | Path | None = None) -> Path | None:
        """File › Save view as image…: a PNG of the view as shown, with its scale bar and
        legend, in the folder used last for exports; never replaces a file unasked (the
        file dialog asks)."""
        from wsiviewer.gui.review_export import EXPORT_DIR_KEY, last_export_folder

        if self._slide is None:
            return None
        if path is None:
            start = str(Path(last_export_folder(self.settings)) / "view.png")
            chosen, _ = QFileDialog.getSaveFileName(
                self, "Save view as image", start, "PNG (*.png)"
            )
            if not chosen:
                return None
            path = chosen if chosen.lower().endswith(".png") else chosen + ".png"
        try:
            written = save_view_image(self.view, path)
        except (WsiViewerError, OSError) as exc:
            self.show_error("Cannot save the view", str(exc))
            return None
        self.settings.setValue(EXPORT_DIR_KEY, str(written.parent))
        self.statusBar().showMessage(f"Saved the view as {written}", 6000)
        return written

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

    def show_evidence(self) -> None:
        """Review › Why was this flagged?: the evidence dock, raised, on the selected region."""
        self.evidence_dock.show()
        self.evidence_dock.raise_()
        self._request_evidence()

    def _request_evidence(self, *, keep_point: bool = False) -> None:
        """Show the selected region's evidence, if the evidence dock is in view (else when it
        comes into view); nothing is read twice for the same region and outline. With
        ``keep_point``, a patch explained from the slide's menu is left shown."""
        panel = self.evidence_panel
        item = self.review_panel.selected_item()
        state = self.review_panel.state
        if state is None or self._slide_path is None:
            if panel.request is not None:
                panel.clear()
            return
        shows_point = panel.request is not None and panel.request.l0_point is not None
        if shows_point and (keep_point or item is None):
            return
        if item is None:
            if panel.request is not None:
                panel.clear()
            return
        if not self.evidence_dock.isVisible():
            return
        request = EvidenceRequest(self._slide_path, state.analysis_id, item.polygon, item.label)
        if request != panel.request:
            panel.show_region(request)

    def explain_point(self, l0_x: float, l0_y: float) -> bool:
        """The Evidence panel on the patch under a level-0 point of the shown analysis (the
        slide's context menu: Why this score?); ``False`` without an analysis shown."""
        state = self.review_panel.state
        if state is None or self._slide_path is None:
            return False
        self.evidence_dock.show()
        self.evidence_dock.raise_()
        request = EvidenceRequest(self._slide_path, state.analysis_id, l0_point=(l0_x, l0_y))
        self.evidence_panel.show_region(request)
        return True

    def _show_view_menu(self, view_pos: QPoint) -> None:
        if self._slide is None:
            return
        # The scene is in level-0 px.
        l0_point = self.view.mapToScene(view_pos)
        menu = QMenu(self)
        explain = menu.addAction("Why this score? Evidence of the patch here")
        explain.setEnabled(self.review_panel.state is not None)
        menu.addAction(self.evidence_action)
        explain.triggered.connect(lambda: self.explain_point(l0_point.x(), l0_point.y()))
        menu.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        menu.popup(self.view.viewport().mapToGlobal(view_pos))

    def show_about(self) -> None:
        about_box(self).open()

    def show_about_model(self) -> None:
        try:
            self.model_panel.show_about_model()
        except (WsiViewerError, OSError) as exc:
            self.show_error("Cannot describe the model", str(exc))

    # -- closing ----------------------------------------------------------------------------

    def closeEvent(self, event: QCloseEvent) -> None:
        self.case_list.shutdown()
        self.model_panel.close_about_model()
        self.evidence_panel.shutdown()
        self.runner.cancel()
        self.runner.wait()
        self._save_settings()
        self._close_current()
        self.view.shutdown()
        event.accept()
