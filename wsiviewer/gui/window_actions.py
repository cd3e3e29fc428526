"""The main window's menus, toolbar and help: how actions are made, where they are listed,
the keyboard shortcuts table and the About box.

The window creates its actions (:func:`make_action`) and keeps them as attributes; this module
lays them out (:func:`build_menus`, :func:`build_toolbar`), so the menu structure reads in one
place.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import TYPE_CHECKING

from PySide6.QtCore import Qt
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QMenu,
    QMessageBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from wsiviewer import RESEARCH_USE_NOTICE, __version__
from wsiviewer.gui.review_panel import REVIEW_SHORTCUTS

if TYPE_CHECKING:
    from wsiviewer.gui.main_window import MainWindow

#: A key, a key sequence, or a platform's standard key (``QKeySequence.StandardKey.Open``).
Shortcut = str | QKeySequence | QKeySequence.StandardKey

#: (keys, what they do): the Help › Keyboard shortcuts table.
SHORTCUTS: tuple[tuple[str, str], ...] = (
    ("Ctrl+O", "Open a slide"),
    ("Ctrl+Shift+O", "Open a folder of slides: the case list"),
    ("Ctrl+W", "Close the slide"),
    ("Mouse wheel", "Zoom in or out at the cursor"),
    ("Drag", "Pan"),
    ("Arrow keys", "Pan by a quarter of the view"),
    ("+ / -", "Zoom in / out"),
    ("0", "Fit the whole slide"),
    ("1 2 3 4 5", "2.5x, 5x, 10x, 20x, 40x (up to the scan's own magnification)"),
    ("Wheel past 1:1", "Up to twice the scan's magnification, px drawn as blocks"),
    ("H", "Show or hide the heatmap"),
    ("L", "Ruler: drag on the slide to measure a length in µm (Esc or L again ends it)"),
    ("Ctrl+Shift+S", "Save the view as an image (PNG with scale bar and legend)"),
    ("Ctrl+R", "Analyse the slide with the chosen model"),
    ("Esc", "Cancel the running analysis"),
    ("Ctrl+I", "Slide information"),
    ("Ctrl+M", "Model card"),
    ("F1", "This list"),
    ("Ctrl+Q", "Quit"),
)


def make_action(
    parent: QWidget,
    text: str,
    slot: Callable[..., object],
    shortcut: Shortcut | None = None,
    tip: str = "",
) -> QAction:
    """An action of ``parent``'s window (its shortcut works wherever the focus is in it)."""
    action = QAction(text, parent)
    if shortcut is not None:
        action.setShortcut(QKeySequence(shortcut))
        action.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
    if tip:
        action.setStatusTip(tip)
        action.setToolTip(tip)
    action.triggered.connect(slot)
    parent.addAction(action)
    return action


def build_menus(window: MainWindow) -> QMenu:
    """File, View, Analysis, Review and Help; returns File › Open recent (filled later)."""
    menus = window.menuBar()
    file_menu = menus.addMenu("&File")
    file_menu.addAction(window.open_action)
    file_menu.addAction(window.open_folder_action)
    recent_menu = file_menu.addMenu("Open &recent")
    file_menu.addAction(window.close_action)
    file_menu.addSeparator()
    file_menu.addAction(window.export_action)
    file_menu.addAction(window.import_action)
    file_menu.addAction(window.save_view_action)
    file_menu.addSeparator()
    file_menu.addAction(window.quit_action)

    view_menu = menus.addMenu("&View")
    for action in (window.fit_action, window.zoom_in_action, window.zoom_out_action):
        view_menu.addAction(action)
    magnification_menu = view_menu.addMenu("&Magnification")
    for action in window.magnification_actions:
        magnification_menu.addAction(action)
    view_menu.addAction(window.heatmap_action)
    view_menu.addAction(window.ruler_action)
    view_menu.addSeparator()
    for dock in window.docks:
        view_menu.addAction(dock.toggleViewAction())

    analysis_menu = menus.addMenu("&Analysis")
    for action in (
        window.analyze_action,
        window.dense_action,
        window.cancel_action,
        window.model_action,
    ):
        analysis_menu.addAction(action)

    review_panel = window.review_panel
    review_menu = menus.addMenu("&Review")
    for action in review_panel.review_actions:
        if action in (review_panel.draw_action, review_panel.delete_action):
            review_menu.addSeparator()
        review_menu.addAction(action)
    review_menu.addSeparator()
    review_menu.addAction(window.evidence_action)
    review_menu.addAction(window.saliency_action)

    help_menu = menus.addMenu("&Help")
    for action in (
        window.shortcuts_action,
        window.info_action,
        window.about_model_action,
        window.about_action,
    ):
        help_menu.addAction(action)
    return recent_menu


def build_toolbar(window: MainWindow) -> None:
    """Open, Fit, Analyze, Cancel | region edits | Ruler."""
    toolbar = window.addToolBar("Main")
    toolbar.setObjectName("main_toolbar")
    toolbar.setMovable(False)
    for action in (
        window.open_action,
        window.fit_action,
        window.analyze_action,
        window.cancel_action,
    ):
        toolbar.addAction(action)
    toolbar.addSeparator()
    for action in window.review_panel.edit_actions:
        toolbar.addAction(action)
    toolbar.addSeparator()
    toolbar.addAction(window.ruler_action)


class ShortcutsDialog(QDialog):
    """Help › Keyboard shortcuts: the viewer's and the review's keys."""

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


def about_box(parent: QWidget) -> QMessageBox:
    """Help › About: what the viewer is, and that it is for research use only."""
    box = QMessageBox(parent)
    box.setWindowTitle("About wsiviewer")
    box.setTextFormat(Qt.TextFormat.RichText)
    box.setText(
        f"<h3>wsiviewer {html.escape(__version__)}</h3>"
        "<p>Whole-slide images with a CancerNet IDC (invasive ductal carcinoma) "
        "probability heatmap.</p>"
        f"<p style='color:#a00000'><b>{html.escape(RESEARCH_USE_NOTICE)}</b></p>"
    )
    box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
    return box
