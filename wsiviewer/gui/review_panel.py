"""Review of flagged regions: the panel that composes the list, decisions, edits and exports.

:class:`ReviewPanel` shows the :class:`~wsiviewer.core.review.log.ReviewState` of the region
set the window shows (chosen by the selection rule, or by the user in the history), in a
sortable table and as outlines on the slide, as soon as an analysis exists: looking needs no
name. The reviewer's name is asked at the first decision, which opens a
:class:`~wsiviewer.core.review.session.ReviewSession`; every decision is then one committed
Store transaction, so nothing is lost when the window closes or crashes, and reopening the
slide shows the review exactly as it was left. The panel never keeps decisions of its own.

The panel owns the layout, the progress and reviewer lines, the questions put to the user
(the reviewer's name, replacing files, what to export), showing a state in every part, and
the names the window and the tests use; the parts own the rest:

- :mod:`wsiviewer.gui.review_controller`: the Store, the shown set's state, the session;
- :mod:`wsiviewer.gui.review_shown`: the "Shown" history, the threshold and area fields;
- :mod:`wsiviewer.gui.review_list`: the region table, the outlines, the selection;
- :mod:`wsiviewer.gui.review_decisions`: N / P, accept, reject, undo, delete, notes;
- :mod:`wsiviewer.gui.review_edits`: draw, split, brush, vertices, merge, QuPath import;
- :mod:`wsiviewer.gui.review_export`: the export dialog and writing the files.

Everything can be done from the keyboard: N / P step through the list, A accepts, R rejects,
U undoes, Ctrl+N (or Enter in the list) writes a note, D draws a region, Delete deletes one;
S splits the selected region along a line, B and E add or erase with a brush, V edits its
vertices, M merges the regions selected in the list (Ctrl+click) — each edit one decision that
U takes back.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import QSettings, Signal
from PySide6.QtGui import QAction
from PySide6.QtWidgets import (
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QLineEdit,
    QMessageBox,
    QProgressBar,
    QVBoxLayout,
    QWidget,
)

from wsiviewer import WsiViewerError
from wsiviewer.core.review.defaults import DEFAULT_MIN_AREA_MM2
from wsiviewer.core.review.wording import format_threshold
from wsiviewer.gui.panels import notice_label
from wsiviewer.gui.region_items import StatusLegendWidget
from wsiviewer.gui.review_controller import REVIEWER_KEY, ReviewController
from wsiviewer.gui.review_decisions import ReviewDecisions
from wsiviewer.gui.review_edits import RegionEditor
from wsiviewer.gui.review_export import ExportChoice, ask_export, export_asking, overwrite_box
from wsiviewer.gui.review_list import RegionList
from wsiviewer.gui.review_shown import ShownSetControls
from wsiviewer.gui.review_widgets import button_grid, give_keys_back, make_action

if TYPE_CHECKING:
    from shapely.geometry import Polygon

    from wsiviewer.core.model.cards import ModelCard
    from wsiviewer.core.review.log import RegionRef, ReviewItem, ReviewState
    from wsiviewer.core.review.selection import HistoryEntry
    from wsiviewer.core.review.session import ReviewSession
    from wsiviewer.core.slides import Slide
    from wsiviewer.core.store.records import RegionSetRecord
    from wsiviewer.gui.slide_view import SlideView

# REVIEWER_KEY moved to the controller; tests and tools import it from here.
__all__ = ["REVIEWER_KEY", "REVIEW_SHORTCUTS", "ReviewPanel"]

log = logging.getLogger(__name__)

#: (keys, what they do) of the review, for Help › Keyboard shortcuts.
REVIEW_SHORTCUTS: tuple[tuple[str, str], ...] = (
    ("N / P", "Next / previous region (centres and zooms on it)"),
    ("A / R", "Accept / reject the selected region (your name is asked at the first decision)"),
    ("U or Ctrl+Z", "Undo the last review action (a whole edit included)"),
    ("Ctrl+N or Enter", "Write a note on the selected region (Enter saves, Esc reverts)"),
    ("D", "Draw a region (accepted as drawn): click vertices, double-click or Enter closes"),
    ("S", "Split the selected region: draw a line across it, double-click or Enter"),
    ("B / E", "Brush: add to / erase from the selected region (drag on the slide)"),
    ("V", "Edit the selected region's vertices: drag handles, Enter applies"),
    ("M", "Merge the regions selected in the list (Ctrl+click to select several)"),
    ("Delete", "Delete the selected region (U undoes)"),
    ("O", "Show or hide region outlines"),
    ("W", "Why was this flagged? The selected region's evidence patches (click one to centre)"),
    ("Shift+W", "Show or hide saliency (Grad-CAM / integrated gradients) on the evidence"),
    ("Esc", "Cancel the drawing or edit in progress"),
)


class ReviewPanel(QWidget):
    """The regions of the shown region set, their review, and the outlines on the slide.

    Signals
    -------
    review_opened(object)
        A region set is shown (or another one); its :class:`ReviewState`.
    review_changed(object)
        The review's :class:`ReviewState` after any change (also emitted on open).
    review_closed()
    region_selected(object)
        The selected ``RegionRef``, or ``None``.
    review_failed(str, str)
        Title and message of an error to show the user.
    status_reported(str)
        A short message for the status bar.
    history_chosen(int, int)
        The user chose another analysis (id) and region set (id, or -1 for none yet) in the
        history.
    """

    review_opened = Signal(object)
    review_changed = Signal(object)
    review_closed = Signal()
    region_selected = Signal(object)
    review_failed = Signal(str, str)
    status_reported = Signal(str)
    history_chosen = Signal(int, int)

    def __init__(self, view: SlideView, settings: QSettings, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._view = view
        self._settings = settings
        # The name is asked through the class's method (tests replace it there).
        self.controller = ReviewController(settings, lambda: self.ask_reviewer(), self)
        self.shown_set = ShownSetControls(view, self)
        self.regions = RegionList(view, self)
        self.decisions = ReviewDecisions(self.regions, self.controller, self)
        self.editor = RegionEditor(view, self.controller, self.regions, self)
        self._build_widgets()
        self._expose_parts()
        self._lay_out()
        self._connect()
        self._show_state(None)

    # -- construction ---------------------------------------------------------------------

    def _build_widgets(self) -> None:
        self.outlines_action = make_action(
            self,
            "Show region &outlines",
            self._toggle_outlines,
            ["O"],
            "Show or hide region outlines",
        )
        self.outlines_action.setCheckable(True)
        self.outlines_action.setChecked(True)
        self.reviewer_action = make_action(
            self,
            "Change &reviewer name…",
            self.change_reviewer,
            [],
            "Who the decisions are recorded as",
        )
        self.reviewer_label = QLabel()
        self.progress_label = QLabel()
        self.progress_label.setObjectName("review_progress")
        font = self.progress_label.font()
        font.setBold(True)
        self.progress_label.setFont(font)
        self.progress_bar = QProgressBar()
        self.progress_bar.setTextVisible(False)
        self.progress_bar.setMaximumHeight(10)
        self.legend = StatusLegendWidget()

    def _expose_parts(self) -> None:
        """The parts' widgets, tools and actions under the panel's names (the window, the
        tests and tools/screenshots.py use them)."""
        shown, regions, decisions, editor = (
            self.shown_set,
            self.regions,
            self.decisions,
            self.editor,
        )
        self.history_box, self.set_label = shown.history_box, shown.set_label
        self.threshold_box, self.min_area_box = shown.threshold_box, shown.min_area_box
        self.overlay = regions.overlay
        self.sort_box, self.model, self.proxy, self.table = (
            regions.sort_box,
            regions.model,
            regions.proxy,
            regions.table,
        )
        self.note_edit, self.advance_box = decisions.note_edit, decisions.advance_box
        self.next_action, self.previous_action = decisions.next_action, decisions.previous_action
        self.accept_action, self.reject_action = decisions.accept_action, decisions.reject_action
        self.reset_action, self.undo_action = decisions.reset_action, decisions.undo_action
        self.note_action, self.delete_action = decisions.note_action, decisions.delete_action
        self.draw_tool, self.split_tool = editor.draw_tool, editor.split_tool
        self.brush_tool, self.vertex_tool = editor.brush_tool, editor.vertex_tool
        self.draw_action, self.split_action = editor.draw_action, editor.split_action
        self.brush_action, self.erase_action = editor.brush_action, editor.erase_action
        self.vertices_action, self.merge_action = editor.vertices_action, editor.merge_action
        self.brush_box, self.hint_label = editor.brush_box, editor.hint_label

    @property
    def review_actions(self) -> list[QAction]:
        """The actions for the Review menu (the window adds them so their shortcuts work)."""
        decisions = self.decisions
        return [
            decisions.next_action,
            decisions.previous_action,
            decisions.accept_action,
            decisions.reject_action,
            decisions.reset_action,
            decisions.undo_action,
            decisions.note_action,
            *self.editor.actions,
            decisions.delete_action,
            self.outlines_action,
            self.reviewer_action,
        ]

    @property
    def edit_actions(self) -> list[QAction]:
        """The region edit actions (a Review menu section, the toolbar)."""
        return self.editor.actions

    def _lay_out(self) -> None:
        sort_row = QHBoxLayout()
        sort_row.addWidget(QLabel("Sort by"))
        sort_row.addWidget(self.sort_box, 1)
        edit_buttons = button_grid(
            [*self.editor.button_actions, (self.delete_action, "Delete (Del)")], columns=3
        )
        edit_buttons.addLayout(self.editor.brush_row(), 3, 0, 1, 3)
        layout = QVBoxLayout(self)
        layout.addLayout(self.shown_set.history_row())
        layout.addWidget(self.set_label)
        layout.addLayout(self.shown_set.settings_row())
        layout.addWidget(self.legend)
        layout.addWidget(self.progress_label)
        layout.addWidget(self.progress_bar)
        layout.addLayout(sort_row)
        layout.addWidget(self.table, 1)
        layout.addWidget(self.note_edit)
        layout.addLayout(button_grid(self.decisions.button_actions, columns=2))
        layout.addWidget(self.advance_box)
        layout.addLayout(edit_buttons)
        layout.addWidget(self.hint_label)
        layout.addWidget(self.reviewer_label)
        layout.addWidget(notice_label("Research use only: the regions are model output."))

    def _connect(self) -> None:
        controller = self.controller
        controller.changed.connect(self._on_decision)
        controller.session_started.connect(self._show_reviewer)
        for part in (controller, self.regions, self.decisions, self.editor):
            part.status_reported.connect(self.status_reported)
        for failing in (controller, self.editor):
            failing.failed.connect(self.review_failed)
        self.regions.current_changed.connect(self._on_selected)
        self.regions.rows_changed.connect(self._update_actions)
        self.shown_set.history_chosen.connect(self.history_chosen)
        self.shown_set.settings_chosen.connect(self.set_threshold)
        self.sort_box.activated.connect(lambda _=0: give_keys_back(self._view))

    # -- state ------------------------------------------------------------------------------

    @property
    def session(self) -> ReviewSession | None:
        """The reviewer's session, from the first decision on (``None`` before)."""
        return self.controller.session

    @property
    def state(self) -> ReviewState | None:
        return self.controller.state

    @property
    def selected_ref(self) -> RegionRef | None:
        return self.regions.selected_ref

    def selected_item(self) -> ReviewItem | None:
        return self.regions.selected_item()

    def selected_refs(self) -> list[RegionRef]:
        """Every region selected in the list (Ctrl/Shift+click), in list order."""
        return self.regions.selected_refs()

    @property
    def reviewed(self) -> bool:
        """Whether the shown region set has any review decision (undone ones included)."""
        return self.controller.reviewed

    # -- reviewer ---------------------------------------------------------------------------

    def ask_reviewer(self, current: str = "") -> str | None:
        """Ask the reviewer's name; ``None`` if cancelled. Tests replace this."""
        name, ok = QInputDialog.getText(
            self,
            "Reviewer",
            "Your name, recorded with each review decision (asked once; Review › Change "
            "reviewer name… changes it):",
            QLineEdit.EchoMode.Normal,
            current,
        )
        return name.strip() if ok and name.strip() else None

    def change_reviewer(self) -> None:
        name = self.ask_reviewer(self.controller.reviewer() or "")
        if name is None:
            return
        self.controller.set_reviewer(name)
        self._show_reviewer()

    def _show_reviewer(self) -> None:
        name = self.controller.reviewer()
        self.reviewer_label.setText(
            f"Reviewer: {name}" if name else "Reviewer: asked at your first decision"
        )

    # -- opening and closing ----------------------------------------------------------------

    def show_region_set(
        self, analysis_id: int, region_set: RegionSetRecord, *, reason: str = ""
    ) -> bool:
        """Show a region set of an analysis (no reviewer needed); ``reason`` says why it is
        the one shown. ``False`` if it cannot be read (a dialog says why)."""
        self.editor.cancel()
        before = self.controller.state
        state = self.controller.show(analysis_id, region_set, reason)
        if state is None:
            return False
        if before is not None and before.region_set_id != region_set.id:
            self.regions.forget_selection()
        self._show_state(state)
        self._show_reviewer()
        self.review_opened.emit(state)
        self.review_changed.emit(state)
        return True

    def show_analysis(
        self,
        analysis_id: int,
        region_set: RegionSetRecord | None,
        default_threshold: float,
        *,
        reason: str = "",
    ) -> bool:
        """Show an analysis at the region set the selection rule chose, or (none yet) at
        ``default_threshold`` (the card's) and the default minimum area."""
        self.close_review()
        if region_set is None:
            return self.open_set(default_threshold, DEFAULT_MIN_AREA_MM2, analysis_id=analysis_id)
        return self.show_region_set(analysis_id, region_set, reason=reason)

    def open_set(
        self,
        threshold: float,
        min_area_mm2: float,
        *,
        analysis_id: int | None = None,
        ask: bool = False,
    ) -> bool:
        """Show the region set of the shown analysis at this threshold and minimum area
        (reused if recorded, else computed and saved). ``ask`` (as a reviewer starts) asks the
        name now rather than at the first decision."""
        analysis_id = self.controller.analysis_id if analysis_id is None else analysis_id
        if analysis_id is None:
            return False
        record = self.controller.region_set_at(
            analysis_id, round(float(threshold), 6), round(float(min_area_mm2), 6)
        )
        if record is None:
            self._show_state(self.state)  # the fields show the shown set's values again
            return False
        reason = "chosen here" if self.state is not None else "the analysis's first set"
        shown = self.show_region_set(analysis_id, record, reason=reason)
        if shown and ask:
            self.controller.ensure_session()
        return shown

    def close_review(self) -> None:
        """Forget the shown set (everything is already in the Store) and remove the outlines."""
        had_review = self.state is not None
        self.editor.cancel()
        self.regions.forget_selection()
        self.decisions.forget_note()
        self.history_box.clear_entries()
        self.controller.close()
        self._show_state(None)
        if had_review:
            self.review_closed.emit()

    def set_threshold(self, threshold: float, min_area_mm2: float | None = None) -> bool:
        """Show the set at ``threshold`` (and ``min_area_mm2``, default the shown one's)."""
        state = self.state
        if state is None:
            return False
        min_area = state.min_area_mm2 if min_area_mm2 is None else min_area_mm2
        if not self.open_set(threshold, min_area):
            return False
        now = self.state
        assert now is not None
        self.status_reported.emit(
            f"Region set at P ≥ {format_threshold(now.threshold)}, area ≥ "
            f"{now.min_area_mm2:g} mm²: {now.progress_text}; decisions on other sets are kept"
        )
        return True

    # -- history ----------------------------------------------------------------------------

    def set_history(self, entries: Sequence[HistoryEntry]) -> None:
        """Every analysis and region set of the slide, the shown one current."""
        self.shown_set.set_history(entries)

    @property
    def history(self) -> list[HistoryEntry]:
        return self.history_box.entries

    # -- showing ----------------------------------------------------------------------------

    def _on_decision(self, state: ReviewState, select: RegionRef | None) -> None:
        self._show_state(state, select=select)
        self.review_changed.emit(state)

    def _show_state(self, state: ReviewState | None, select: RegionRef | None = None) -> None:
        has_review = state is not None
        for widget in (self.table, self.note_edit, self.sort_box):
            widget.setEnabled(has_review)
        self.shown_set.show_set(state, self.controller.reason)
        if state is None:
            self.regions.clear()
            self.progress_label.setText("No review: open a slide with an analysis.")
            self.progress_bar.setRange(0, 1)
            self.progress_bar.setValue(0)
            self.note_edit.clear()
            self._update_actions()
            return
        wanted = select if select is not None else self.regions.selected_ref
        self.regions.set_items(state.items)
        self.progress_label.setText(state.progress_text)
        self.progress_bar.setRange(0, max(1, len(state.items)))
        self.progress_bar.setValue(state.reviewed_count)
        if self.regions.restore_selection(wanted):
            if not self.note_edit.hasFocus():
                self.decisions.load_note(self.selected_item())  # e.g. a note set or undone
        else:
            self.decisions.load_note(None)
        self._update_actions()

    def _update_actions(self) -> None:
        self.decisions.update_actions()
        self.editor.update_actions()
        self.reviewer_action.setEnabled(True)

    def _on_selected(self, ref: RegionRef | None) -> None:
        self.decisions.load_note(self.selected_item())
        self._update_actions()
        self.region_selected.emit(ref)

    def _toggle_outlines(self) -> None:
        self.overlay.set_visible(self.outlines_action.isChecked())

    # -- selection, decisions and edits (done by the parts) ---------------------------------

    def select(self, ref: RegionRef | None, *, frame: bool = True) -> bool:
        """Select a region in the list and on the slide; centre and zoom on it if ``frame``."""
        return self.regions.select(ref, frame=frame)

    def select_several(self, refs: Sequence[RegionRef]) -> None:
        """Select several regions in the list (as Ctrl+click does), the first current."""
        self.regions.select_several(refs)

    def frame_polygon(self, polygon: Polygon) -> None:
        """Centre the view on a level-0 px polygon with tissue around it."""
        self.regions.frame_polygon(polygon)

    def select_next(self) -> bool:
        return self.regions.select_next()

    def select_previous(self) -> bool:
        return self.regions.select_previous()

    def accept_selected(self) -> bool:
        return self.decisions.accept_selected()

    def reject_selected(self) -> bool:
        return self.decisions.reject_selected()

    def undo(self) -> bool:
        """Undo the reviewer's last action (a whole edit included) and select what it touched."""
        return self.decisions.undo()

    def delete_selected(self) -> bool:
        return self.decisions.delete_selected()

    def set_note(self, note: str, ref: RegionRef | None = None) -> bool:
        return self.decisions.set_note(note, ref)

    def add_manual_region(
        self, l0_vertices: Sequence[tuple[float, float]] | Polygon, note: str = ""
    ) -> RegionRef | None:
        """Add a region the reviewer drew (level-0 px), accepted as drawn, and select it."""
        return self.editor.add_manual_region(l0_vertices, note)

    def merge_selected(self) -> RegionRef | None:
        return self.editor.merge_selected()

    def import_qupath(self, path: str | Path) -> int | None:
        """Add a QuPath GeoJSON's annotations as regions (each keeps its class; a feature
        already in the review is not added again); how many were added, ``None`` on error."""
        return self.editor.import_qupath(path)

    # -- export -----------------------------------------------------------------------------

    def choose_export(
        self,
        slide: Slide | None = None,
        slide_path: Path | None = None,
        card: ModelCard | None = None,
    ) -> dict[str, Path] | None:
        """Ask what to export and where (:class:`~wsiviewer.gui.review_export.ExportDialog`,
        in the folder used last), then export; an export that would replace files asks
        first."""
        if self.state is None:
            return None
        choice = ask_export(self, self._settings, slide_path)
        if choice is None:
            return None
        if not choice.kinds:
            self.status_reported.emit("Nothing chosen to export")
            return None
        return self.export_to(
            choice.folder,
            choice.kinds,
            accepted_only=choice.accepted_only,
            slide=slide,
            card=card,
            slide_name=choice.slide_name,
            label=choice.label,
        )

    def confirm_overwrite(self, paths: Sequence[str]) -> bool:
        """Ask before an export replaces files; ``True`` to replace them. Tests replace this."""
        return self.overwrite_box(paths).exec() == QMessageBox.StandardButton.Yes

    def overwrite_box(self, paths: Sequence[str]) -> QMessageBox:
        """The question asked before an export replaces files."""
        return overwrite_box(self, paths)

    def export_to(
        self,
        folder: str | Path,
        kinds: Sequence[str],
        *,
        accepted_only: bool = False,
        slide: Slide | None = None,
        card: ModelCard | None = None,
        slide_name: str | None = None,
        label: str | None = None,
    ) -> dict[str, Path] | None:
        """Export the shown region set's review (``kinds``: ``geojson``, ``mask``, ``csv``,
        ``report``); the written files by name, ``None`` on error (a dialog says why) or when
        the user would not replace existing files."""
        state = self.state
        if state is None:
            return None

        choice = ExportChoice(Path(folder), tuple(kinds), accepted_only, slide_name, label)
        try:
            written = export_asking(
                self.controller.store(),
                state.region_set_id,
                choice,
                self.confirm_overwrite,
                slide=slide,
                card=card,
            )
        except (WsiViewerError, OSError) as exc:
            self.review_failed.emit("Cannot export", str(exc))
            return None
        if written is None:
            self.status_reported.emit("Export cancelled: nothing was written")
            return None
        self.status_reported.emit(f"Exported {len(written)} file(s) to {folder}")
        return written
