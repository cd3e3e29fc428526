"""Review of flagged regions: the region list, decisions, notes, manual regions, exports.

:class:`ReviewPanel` drives a :class:`~wsiviewer.core.review.session.ReviewSession`: every
decision is one committed Store transaction, so nothing is lost when the window closes or
crashes, and reopening the slide shows the review exactly as it was left. The panel shows the
session's :class:`~wsiviewer.core.review.log.ReviewState` in a sortable table and as outlines on
the slide (:mod:`wsiviewer.gui.region_items`); it never keeps decisions of its own.

Everything can be done from the keyboard: N / P step through the list, A accepts, R rejects,
U undoes, Ctrl+N (or Enter in the list) writes a note, D draws a region, Delete deletes one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import QEvent, QItemSelectionModel, QModelIndex, QObject, QSettings, Qt, Signal
from PySide6.QtGui import QAction, QKeyEvent, QKeySequence
from PySide6.QtWidgets import (
    QApplication,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QGridLayout,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QToolButton,
    QVBoxLayout,
    QWidget,
)
from shapely.geometry import Polygon

from wsiviewer import WsiViewerError
from wsiviewer.core.units import px_from_um
from wsiviewer.gui.panels import notice_label
from wsiviewer.gui.region_items import PolygonDrawTool, RegionOverlay, StatusLegendWidget
from wsiviewer.gui.region_table import (
    REF_ROLE,
    SORT_CHOICES,
    SORT_ROLE,
    RegionSortProxy,
    RegionTableModel,
    RegionTableView,
    region_label,
)
from wsiviewer.gui.review_export import ask_export, write_review_export

if TYPE_CHECKING:
    from wsiviewer.core.model.cards import ModelCard
    from wsiviewer.core.review.log import RegionRef, ReviewItem, ReviewState
    from wsiviewer.core.review.session import ReviewSession
    from wsiviewer.core.slides import Slide
    from wsiviewer.core.store.database import Store
    from wsiviewer.core.store.records import RegionSetRecord
    from wsiviewer.gui.slide_view import SlideView

log = logging.getLogger(__name__)

#: QSettings key of the reviewer's name.
REVIEWER_KEY = "review/reviewer"
#: Least field of view (µm) when the view frames a region: enough tissue around it to judge.
MIN_FRAME_UM = 1000.0
#: Least field of view (level-0 px) when the slide has no µm/px.
MIN_FRAME_PX = 2000.0
#: Field of view around a region, as a multiple of its bounding box.
FRAME_MARGIN = 1.6

#: (keys, what they do) of the review, for Help › Keyboard shortcuts.
REVIEW_SHORTCUTS: tuple[tuple[str, str], ...] = (
    ("N / P", "Next / previous region (centres and zooms on it)"),
    ("A / R", "Accept / reject the selected region"),
    ("U or Ctrl+Z", "Undo the last review action"),
    ("Ctrl+N or Enter", "Write a note on the selected region (Enter saves, Esc reverts)"),
    ("D", "Draw a region: click vertices, double-click or Enter closes, Esc cancels"),
    ("Delete", "Delete the selected region (U undoes)"),
    ("O", "Show or hide region outlines"),
)


class ReviewPanel(QWidget):
    """The regions of the current region set, their review, and the outlines on the slide.

    Signals
    -------
    review_opened(object)
        A review opened (or its region set changed); its :class:`ReviewState`.
    review_changed(object)
        The review's :class:`ReviewState` after any change (also emitted on open).
    review_closed()
    region_selected(object)
        The selected ``RegionRef``, or ``None``.
    review_failed(str, str)
        Title and message of an error to show the user.
    status_reported(str)
        A short message for the status bar.
    """

    review_opened = Signal(object)
    review_changed = Signal(object)
    review_closed = Signal()
    region_selected = Signal(object)
    review_failed = Signal(str, str)
    status_reported = Signal(str)

    def __init__(self, view: SlideView, settings: QSettings, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._view = view
        self._settings = settings
        self._store: Store | None = None
        self._session: ReviewSession | None = None
        self._state: ReviewState | None = None
        self._analysis_id: int | None = None
        self._default_threshold = 0.5
        self._note_ref: RegionRef | None = None
        self._selected_ref: RegionRef | None = None

        self.overlay = RegionOverlay(view.scene())
        self.draw_tool = PolygonDrawTool(view)

        self._build_actions()
        self._build_widgets()
        self._lay_out()
        self._connect()
        self._show_state(None)

    # -- construction ---------------------------------------------------------------------

    def _action(
        self,
        text: str,
        slot: Callable[[], object],
        shortcuts: Sequence[str | QKeySequence.StandardKey] = (),
        tip: str = "",
    ) -> QAction:
        action = QAction(text, self)
        action.setShortcuts([QKeySequence(s) for s in shortcuts])
        action.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
        if tip:
            keys = ", ".join(QKeySequence(s).toString() for s in shortcuts)
            action.setToolTip(f"{tip} ({keys})" if keys else tip)
            action.setStatusTip(tip)
        action.triggered.connect(lambda _=False: slot())
        return action

    def _build_actions(self) -> None:
        self.next_action = self._action("&Next region", self.select_next, ["N"], "Next region")
        self.previous_action = self._action(
            "&Previous region", self.select_previous, ["P"], "Previous region"
        )
        self.accept_action = self._action(
            "&Accept region", self.accept_selected, ["A"], "Accept: IDC confirmed"
        )
        self.reject_action = self._action(
            "&Reject region", self.reject_selected, ["R"], "Reject: not IDC"
        )
        self.reset_action = self._action(
            "Mark &pending", self.reset_selected, [], "Back to pending (undecided)"
        )
        self.undo_action = self._action(
            "&Undo review action", self.undo, ["U", "Ctrl+Z"], "Undo the last review action"
        )
        self.note_action = self._action(
            "Write &note…", self.edit_note, ["Ctrl+N"], "Write a note on the selected region"
        )
        self.draw_action = self._action(
            "&Draw region", self._toggle_drawing, ["D"], "Draw an IDC region the model missed"
        )
        self.draw_action.setCheckable(True)
        self.delete_action = self._action(
            "De&lete region",
            self.delete_selected,
            [QKeySequence.StandardKey.Delete],
            "Delete the selected region",
        )
        self.outlines_action = self._action(
            "Show region &outlines", self._toggle_outlines, ["O"], "Show or hide region outlines"
        )
        self.outlines_action.setCheckable(True)
        self.outlines_action.setChecked(True)
        self.reviewer_action = self._action(
            "Change &reviewer name…", self.change_reviewer, [], "Who the decisions are recorded as"
        )

    @property
    def review_actions(self) -> list[QAction]:
        """The actions for the Review menu (the window adds them so their shortcuts work)."""
        return [
            self.next_action,
            self.previous_action,
            self.accept_action,
            self.reject_action,
            self.reset_action,
            self.undo_action,
            self.note_action,
            self.draw_action,
            self.delete_action,
            self.outlines_action,
            self.reviewer_action,
        ]

    def _tool_button(self, action: QAction, text: str) -> QToolButton:
        action.setIconText(text)  # the button's text; menus keep the action's own
        button = QToolButton()
        button.setDefaultAction(action)
        button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
        button.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        button.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        return button

    def _build_widgets(self) -> None:
        self.threshold_box = QDoubleSpinBox()
        self.threshold_box.setRange(0.01, 1.0)
        self.threshold_box.setSingleStep(0.05)
        self.threshold_box.setDecimals(2)
        self.threshold_box.setToolTip(
            "Regions are patches with P(IDC) at or above this; a new value opens another region "
            "set (the decisions on the old one are kept)"
        )
        self.min_area_box = QDoubleSpinBox()
        self.min_area_box.setRange(0.0, 1000.0)
        self.min_area_box.setSingleStep(0.05)
        self.min_area_box.setDecimals(3)
        self.min_area_box.setSuffix(" mm²")
        self.min_area_box.setToolTip("Smaller regions are left out of the set")
        self.set_label = QLabel()
        self.set_label.setWordWrap(True)
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
        self.sort_box = QComboBox()
        for label, _, _ in SORT_CHOICES:
            self.sort_box.addItem(label)
        self.model = RegionTableModel(self)
        self.proxy = RegionSortProxy(self)
        self.proxy.setSourceModel(self.model)
        self.proxy.setSortRole(SORT_ROLE)
        self.table = RegionTableView(self.proxy)
        self.table.installEventFilter(self)
        self.note_edit = QLineEdit()
        self.note_edit.setPlaceholderText("Note on the selected region (Ctrl+N; Enter saves)")
        self.note_edit.setClearButtonEnabled(True)
        self.note_edit.installEventFilter(self)
        self.advance_box = QCheckBox("Next region after A / R")
        self.advance_box.setChecked(True)
        self.hint_label = QLabel()
        self.hint_label.setWordWrap(True)
        self.start_button = QPushButton("Start review…")
        self.start_button.setToolTip("Asks your name once; it is recorded with each decision")
        self.start_button.clicked.connect(self.start_review)
        self.start_button.setVisible(False)

    def _decision_buttons(self) -> QGridLayout:
        """The review's actions as buttons, two a row, each naming its key."""
        buttons = QGridLayout()
        buttons.setSpacing(4)
        for position, (action, text) in enumerate(
            (
                (self.previous_action, "Previous (P)"),
                (self.next_action, "Next (N)"),
                (self.accept_action, "Accept (A)"),
                (self.reject_action, "Reject (R)"),
                (self.undo_action, "Undo (U)"),
                (self.reset_action, "Mark pending"),
                (self.draw_action, "Draw region (D)"),
                (self.delete_action, "Delete (Del)"),
            )
        ):
            buttons.addWidget(self._tool_button(action, text), position // 2, position % 2)
        return buttons

    def _lay_out(self) -> None:
        settings_row = QHBoxLayout()
        settings_row.addWidget(QLabel("P ≥"))
        settings_row.addWidget(self.threshold_box)
        settings_row.addWidget(QLabel("area ≥"))
        settings_row.addWidget(self.min_area_box)
        settings_row.addStretch(1)
        sort_row = QHBoxLayout()
        sort_row.addWidget(QLabel("Sort by"))
        sort_row.addWidget(self.sort_box, 1)
        layout = QVBoxLayout(self)
        layout.addLayout(settings_row)
        layout.addWidget(self.set_label)
        layout.addWidget(self.start_button)
        layout.addWidget(self.legend)
        layout.addWidget(self.progress_label)
        layout.addWidget(self.progress_bar)
        layout.addLayout(sort_row)
        layout.addWidget(self.table, 1)
        layout.addWidget(self.note_edit)
        layout.addLayout(self._decision_buttons())
        layout.addWidget(self.advance_box)
        layout.addWidget(self.hint_label)
        layout.addWidget(self.reviewer_label)
        layout.addWidget(notice_label("Research use only: the regions are model output."))

    def _connect(self) -> None:
        self.table.selectionModel().currentRowChanged.connect(self._on_current_row_changed)
        self.threshold_box.editingFinished.connect(self._on_set_settings_edited)
        self.min_area_box.editingFinished.connect(self._on_set_settings_edited)
        self.sort_box.currentIndexChanged.connect(self._on_sort_chosen)
        self.note_edit.returnPressed.connect(self._on_note_entered)
        self.note_edit.editingFinished.connect(self._save_note)
        self.draw_tool.polygon_drawn.connect(self._on_polygon_drawn)
        self.draw_tool.active_changed.connect(self.draw_action.setChecked)
        self.draw_tool.hint_changed.connect(self.status_reported)
        self.draw_tool.hint_changed.connect(self.hint_label.setText)
        self.draw_tool.active_changed.connect(
            lambda active: None if active else self.hint_label.clear()
        )

    # -- state ------------------------------------------------------------------------------

    @property
    def session(self) -> ReviewSession | None:
        return self._session

    @property
    def state(self) -> ReviewState | None:
        return self._state

    @property
    def analysis_id(self) -> int | None:
        return self._analysis_id

    @property
    def selected_ref(self) -> RegionRef | None:
        return self._selected_ref

    def selected_item(self) -> ReviewItem | None:
        if self._state is None or self._selected_ref is None:
            return None
        for item in self._state.items:
            if item.ref == self._selected_ref:
                return item
        return None

    def visible_refs(self) -> list[RegionRef]:
        """The regions in the list's current (sorted) order."""
        return [self.proxy.index(row, 0).data(REF_ROLE) for row in range(self.proxy.rowCount())]

    # -- reviewer ---------------------------------------------------------------------------

    def reviewer(self) -> str | None:
        value = self._settings.value(REVIEWER_KEY)
        return value.strip() if isinstance(value, str) and value.strip() else None

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

    def _ensure_reviewer(self, ask: bool) -> str | None:
        name = self.reviewer()
        if name is None and ask:
            name = self.ask_reviewer()
            if name is None:
                return None
            self._settings.setValue(REVIEWER_KEY, name)
        return name

    def change_reviewer(self) -> None:
        name = self.ask_reviewer(self.reviewer() or "")
        if name is None:
            return
        self._settings.setValue(REVIEWER_KEY, name)
        if self._state is not None:
            self.open_set(self._state.threshold, self._state.min_area_mm2)
        self.reviewer_label.setText(f"Reviewer: {name}")

    # -- opening and closing ----------------------------------------------------------------

    def show_analysis(
        self, analysis_id: int, region_set: RegionSetRecord | None, default_threshold: float
    ) -> bool:
        """Open the review of an analysis at its region set chosen by the selection rule
        (:mod:`wsiviewer.core.review.selection`), or at ``default_threshold`` and no minimum
        area when it has none yet; ``False`` if it did not open."""
        self.close_review()
        self._analysis_id = analysis_id
        self._default_threshold = default_threshold
        threshold, min_area_mm2 = default_threshold, 0.0
        if region_set is not None:
            threshold, min_area_mm2 = region_set.threshold, region_set.min_area_mm2
        self._pending_set = (threshold, min_area_mm2)
        # Never a modal prompt as a slide opens: the name is asked when review starts.
        return self.open_set(threshold, min_area_mm2, ask=False)

    _pending_set: tuple[float, float] | None = None

    def start_review(self) -> bool:
        """Start the review of the shown analysis, asking the reviewer's name if unknown."""
        if self._session is not None:
            return True
        if self._analysis_id is None or self._pending_set is None:
            return False
        return self.open_set(*self._pending_set)

    def open_set(self, threshold: float, min_area_mm2: float, *, ask: bool = True) -> bool:
        """Review the region set of the shown analysis at this threshold and minimum area
        (reused if recorded, else computed and saved); ``ask`` the reviewer's name if it is
        not known yet (else wait for :meth:`start_review`)."""
        if self._analysis_id is None:
            return False
        from wsiviewer.core.review.session import open_review

        self.draw_tool.cancel()
        reviewer = self._ensure_reviewer(ask)
        if reviewer is None:
            self._show_state(None)
            self.progress_label.setText("Review not started")
            self.set_label.setText(
                "Press Start review (or N) and give your name to review the flagged regions."
            )
            self.start_button.setVisible(True)
            self.next_action.setEnabled(True)
            return False
        threshold = round(float(threshold), 4)
        min_area_mm2 = round(float(min_area_mm2), 6)
        try:
            store = self._open_store()
            session = open_review(store, self._analysis_id, threshold, min_area_mm2, reviewer)
            state = session.state()
        except (WsiViewerError, OSError, ValueError) as exc:
            self.review_failed.emit("Cannot open the review", str(exc))
            self._show_state(self._state)
            return False
        self._session = session
        self.start_button.setVisible(False)
        self.reviewer_label.setText(f"Reviewer: {reviewer}")
        self._selected_ref = None
        self._show_state(state)
        self.review_opened.emit(state)
        self.review_changed.emit(state)
        return True

    def close_review(self) -> None:
        """Forget the review (everything is already in the Store) and remove the outlines."""
        had_review = self._session is not None
        self.draw_tool.cancel()
        self._session = None
        self._analysis_id = None
        self._pending_set = None
        self.start_button.setVisible(False)
        self._selected_ref = None
        self._note_ref = None
        if self._store is not None:
            self._store.close()
            self._store = None
        self._show_state(None)
        if had_review:
            self.review_closed.emit()

    def _open_store(self) -> Store:
        from wsiviewer.core.store.database import Store

        if self._store is None or self._store.closed:
            self._store = Store.open()
        return self._store

    def _on_set_settings_edited(self) -> None:
        state = self._state
        if state is None:
            return
        threshold = round(self.threshold_box.value(), 4)
        min_area_mm2 = round(self.min_area_box.value(), 6)
        if threshold == round(state.threshold, 4) and min_area_mm2 == round(state.min_area_mm2, 6):
            return
        if self.open_set(threshold, min_area_mm2):
            self.status_reported.emit(
                f"Region set at P ≥ {threshold:.2f}, area ≥ {min_area_mm2:g} mm²: "
                f"{self._state.progress_text if self._state else ''}; decisions on other sets "
                "are kept"
            )

    # -- showing ----------------------------------------------------------------------------

    def _show_state(self, state: ReviewState | None, select: RegionRef | None = None) -> None:
        self._state = state
        has_review = state is not None
        for widget in (self.table, self.note_edit, self.sort_box):
            widget.setEnabled(has_review)
        for box in (self.threshold_box, self.min_area_box):
            box.setEnabled(has_review)
        if state is None:
            self.model.set_items(())
            self.overlay.clear()
            self.progress_label.setText("No review: open a slide with an analysis.")
            self.progress_bar.setRange(0, 1)
            self.progress_bar.setValue(0)
            self.set_label.clear()
            self.note_edit.clear()
            self._selected_ref = None
            self._update_actions()
            return
        for box, value in (
            (self.threshold_box, state.threshold),
            (self.min_area_box, state.min_area_mm2),
        ):
            box.blockSignals(True)
            box.setValue(value)
            box.blockSignals(False)
        wanted = select if select is not None else self._selected_ref
        self.model.set_items(state.items)
        self.overlay.set_regions(
            (item.ref, item.polygon, region_label(item), item.status) for item in state.items
        )
        self.progress_label.setText(state.progress_text)
        self.progress_bar.setRange(0, max(1, len(state.items)))
        self.progress_bar.setValue(state.reviewed_count)
        model_count = sum(item.ref.kind == "model" for item in state.items)
        manual_count = len(state.items) - model_count
        self.set_label.setText(
            f"Region set #{state.region_set_id}: {model_count} flagged at P ≥ "
            f"{state.threshold:.2f}, area ≥ {state.min_area_mm2:g} mm²"
            + (f", {manual_count} added by reviewers" if manual_count else "")
        )
        if wanted is not None and self.model.row_of(wanted) is not None:
            self.select(wanted, frame=False)
            if not self.note_edit.hasFocus():
                self._load_note(self.selected_item())  # e.g. a note set or undone
        else:
            self._selected_ref = None
            self.table.clearSelection()
            self.overlay.set_selected(None)
            self._load_note(None)
        self._update_actions()

    def _update_actions(self) -> None:
        has_review = self._session is not None
        has_selection = has_review and self.selected_item() is not None
        count = len(self._state.items) if self._state is not None else 0
        for action in (self.next_action, self.previous_action):
            action.setEnabled(has_review and count > 0)
        for action in (
            self.accept_action,
            self.reject_action,
            self.reset_action,
            self.note_action,
            self.delete_action,
        ):
            action.setEnabled(has_selection)
        self.undo_action.setEnabled(has_review)
        self.draw_action.setEnabled(has_review)
        self.reviewer_action.setEnabled(True)

    # -- selection --------------------------------------------------------------------------

    def select(self, ref: RegionRef | None, *, frame: bool = True) -> bool:
        """Select a region in the list and on the slide; centre and zoom on it if ``frame``."""
        if ref is None:
            self.table.clearSelection()
            self._set_selected(None, frame=False)
            return True
        row = self.model.row_of(ref)
        if row is None:
            return False
        proxy_index = self.proxy.mapFromSource(self.model.index(row, 0))
        self._frame_on_select = frame
        self.table.selectionModel().setCurrentIndex(
            proxy_index,
            QItemSelectionModel.SelectionFlag.ClearAndSelect
            | QItemSelectionModel.SelectionFlag.Rows,
        )
        self.table.scrollTo(proxy_index)
        # currentRowChanged does not fire when the row is already current.
        if ref != self._selected_ref:
            self._set_selected(ref, frame=frame)
        elif frame:
            self._frame_selected()
        self._frame_on_select = True
        return True

    _frame_on_select = True

    def _on_current_row_changed(self, current: QModelIndex, _previous: QModelIndex) -> None:
        ref = current.data(REF_ROLE) if current.isValid() else None
        if ref != self._selected_ref:
            self._set_selected(ref, frame=self._frame_on_select)

    def _set_selected(self, ref: RegionRef | None, *, frame: bool) -> None:
        if self.note_edit.hasFocus():
            self._save_note()
        self._selected_ref = ref
        self.overlay.set_selected(ref)
        self._load_note(self.selected_item())
        if frame:
            self._frame_selected()
        self._update_actions()
        self.region_selected.emit(ref)

    def _frame_selected(self) -> None:
        item = self.selected_item()
        if item is not None:
            self.frame_polygon(item.polygon)

    def frame_polygon(self, polygon: Polygon) -> None:
        """Centre the view on a level-0 px polygon, zoomed so it fills about 60 % of the
        view with at least :data:`MIN_FRAME_UM` of tissue around it."""
        view = self._view
        if view.slide is None:
            return
        left, top, right, bottom = polygon.bounds
        mpp = view.mpp
        least = px_from_um(MIN_FRAME_UM, mpp) if mpp else MIN_FRAME_PX
        width = max((right - left) * FRAME_MARGIN, least)
        height = max((bottom - top) * FRAME_MARGIN, least)
        viewport = view.viewport().rect()
        scale = min(viewport.width() / width, viewport.height() / height)
        current = view.transform().m11()
        if current > 0:
            view.zoom(scale / current)
        view.center_on_l0((left + right) / 2, (top + bottom) / 2)

    def _step(self, delta: int) -> bool:
        if self._session is None and not self.start_review():
            return False
        refs = self.visible_refs()
        if not refs:
            return False
        if self._selected_ref not in refs:
            target = 0 if delta > 0 else len(refs) - 1
        else:
            target = refs.index(self._selected_ref) + delta
        if not 0 <= target < len(refs):
            self.status_reported.emit(
                "Last region in the list" if delta > 0 else "First region in the list"
            )
            return False
        return self.select(refs[target])

    def select_next(self) -> bool:
        return self._step(1)

    def select_previous(self) -> bool:
        return self._step(-1)

    def _on_sort_chosen(self, index: int) -> None:
        if 0 <= index < len(SORT_CHOICES):
            _, column, order = SORT_CHOICES[index]
            self.table.sortByColumn(column, order)
            if self._selected_ref is not None:
                self.select(self._selected_ref, frame=False)

    # -- decisions --------------------------------------------------------------------------

    def _apply(
        self,
        what: str,
        change: Callable[[ReviewSession], object],
        select: RegionRef | None = None,
    ) -> object:
        session = self._session
        if session is None:
            return None
        try:
            result = change(session)
            state = session.state()
        except (WsiViewerError, OSError, ValueError) as exc:
            self.review_failed.emit(f"Cannot {what}", str(exc))
            return None
        self._show_state(state, select=select)
        self.review_changed.emit(state)
        return result

    def _decide(self, status: str) -> bool:
        item = self.selected_item()
        if item is None:
            self.status_reported.emit("Select a region first (N / P)")
            return False
        if status == "accepted":
            self._apply("accept the region", lambda s: s.accept(item.ref))
        elif status == "rejected":
            self._apply("reject the region", lambda s: s.reject(item.ref))
        else:
            self._apply("reset the region", lambda s: s.reset(item.ref))
        self.status_reported.emit(
            f"Region {region_label(item)} {status}"
            + (f" · {self._state.progress_text}" if self._state else "")
        )
        if status != "pending" and self.advance_box.isChecked():
            self.select_next()
        return True

    def accept_selected(self) -> bool:
        return self._decide("accepted")

    def reject_selected(self) -> bool:
        return self._decide("rejected")

    def reset_selected(self) -> bool:
        return self._decide("pending")

    def undo(self) -> bool:
        """Undo the session's last action and select the region it touched."""
        session, before = self._session, self._state
        if session is None or before is None:
            return False
        undone = self._apply("undo", lambda s: s.undo())
        after = self._state
        if not undone:
            self.status_reported.emit("Nothing to undo")
            return False
        touched = _changed_ref(before, after) if after is not None else None
        if touched is not None and self.model.row_of(touched) is not None:
            self.select(touched)
        self.status_reported.emit("Undone" + (f" · {after.progress_text}" if after else ""))
        return True

    def delete_selected(self) -> bool:
        item = self.selected_item()
        if item is None:
            self.status_reported.emit("Select a region first (N / P)")
            return False
        refs = self.visible_refs()
        index = refs.index(item.ref)
        following = refs[index + 1] if index + 1 < len(refs) else None
        if following is None and index > 0:
            following = refs[index - 1]
        if self._apply("delete the region", lambda s: s.delete(item.ref)) is None and (
            self._state is not None and self.model.row_of(item.ref) is not None
        ):
            return False
        if following is not None and self.model.row_of(following) is not None:
            self.select(following, frame=False)
        self.status_reported.emit(f"Region {region_label(item)} deleted (U undoes)")
        return True

    # -- notes ------------------------------------------------------------------------------

    def edit_note(self) -> None:
        """Put the keyboard in the note field of the selected region."""
        if self.selected_item() is None:
            self.status_reported.emit("Select a region first (N / P)")
            return
        self.note_edit.setFocus(Qt.FocusReason.ShortcutFocusReason)
        self.note_edit.selectAll()

    def set_note(self, note: str, ref: RegionRef | None = None) -> bool:
        ref = ref if ref is not None else self._selected_ref
        if ref is None or self._session is None:
            return False
        self._apply("save the note", lambda s: s.set_note(ref, note), select=ref)
        return True

    def _load_note(self, item: ReviewItem | None) -> None:
        self._note_ref = None if item is None else item.ref
        self.note_edit.blockSignals(True)
        self.note_edit.setText("" if item is None else item.note)
        self.note_edit.blockSignals(False)
        self.note_edit.setEnabled(item is not None)

    def _save_note(self) -> None:
        ref = self._note_ref
        if ref is None or self._state is None:
            return
        text = self.note_edit.text().strip()
        current = next((i.note for i in self._state.items if i.ref == ref), None)
        if current is None or text == current:
            return
        self.set_note(text, ref)
        self.status_reported.emit("Note saved")

    def _on_note_entered(self) -> None:
        self._save_note()
        self.table.setFocus(Qt.FocusReason.OtherFocusReason)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if event.type() == QEvent.Type.KeyPress and isinstance(event, QKeyEvent):
            key = event.key()
            if watched is self.note_edit and key == Qt.Key.Key_Escape:
                self._load_note(self.selected_item())
                self.table.setFocus(Qt.FocusReason.OtherFocusReason)
                return True
            if watched is self.table and key in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
                self.edit_note()
                return True
        if (
            event.type() == QEvent.Type.ShortcutOverride
            and watched is self.note_edit
            and isinstance(event, QKeyEvent)
            and event.key() == Qt.Key.Key_Escape
        ):
            event.accept()  # Esc reverts the note, not the window's cancel-analysis
            return True
        return super().eventFilter(watched, event)

    # -- manual regions ---------------------------------------------------------------------

    def _toggle_drawing(self) -> None:
        if self.draw_tool.active:
            self.draw_tool.cancel()
        elif self._session is not None:
            self.draw_tool.start()
        else:
            self.draw_action.setChecked(False)

    def _on_polygon_drawn(self, vertices: list[tuple[float, float]]) -> None:
        self.add_manual_region(vertices)

    def add_manual_region(
        self, l0_vertices: Sequence[tuple[float, float]] | Polygon, note: str = ""
    ) -> RegionRef | None:
        """Add a region the reviewer drew (level-0 px) and select it."""
        polygon = l0_vertices if isinstance(l0_vertices, Polygon) else Polygon(l0_vertices)
        if not polygon.is_valid or polygon.area <= 0:
            self.review_failed.emit(
                "Cannot add the region",
                "The outline crosses itself or encloses nothing; draw it again.",
            )
            return None
        ref = self._apply(
            "add the region", lambda s: s.add_manual_region(polygon, note=note), select=None
        )
        if ref is None:
            return None
        self.select(ref, frame=False)  # type: ignore[arg-type]
        item = self.selected_item()
        self.status_reported.emit(
            f"Region {region_label(item) if item else ''} added"
            + (f", {item.area_mm2:.3f} mm²" if item else "")
            + " (U undoes)"
        )
        return ref  # type: ignore[return-value]

    def _toggle_outlines(self) -> None:
        self.overlay.set_visible(self.outlines_action.isChecked())

    # -- import and export ------------------------------------------------------------------

    def choose_export(
        self,
        slide: Slide | None = None,
        slide_path: Path | None = None,
        card: ModelCard | None = None,
    ) -> dict[str, Path] | None:
        """Ask what to export and where (:class:`~wsiviewer.gui.review_export.ExportDialog`),
        then export."""
        if self._state is None:
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
        )

    def export_to(
        self,
        folder: str | Path,
        kinds: Sequence[str],
        *,
        accepted_only: bool = False,
        slide: Slide | None = None,
        card: ModelCard | None = None,
        slide_name: str | None = None,
    ) -> dict[str, Path] | None:
        """Export the shown region set's review (``kinds``: ``geojson``, ``mask``, ``csv``,
        ``report``); the written files by name, ``None`` on error (a dialog says why)."""
        state = self._state
        if state is None:
            return None
        QApplication.setOverrideCursor(Qt.CursorShape.WaitCursor)
        try:
            written = write_review_export(
                self._open_store(),
                state.region_set_id,
                Path(folder),
                kinds,
                accepted_only=accepted_only,
                slide=slide,
                card=card,
                slide_name=slide_name,
            )
        except (WsiViewerError, OSError) as exc:
            self.review_failed.emit("Cannot export", str(exc))
            return None
        finally:
            QApplication.restoreOverrideCursor()
        self.status_reported.emit(f"Exported {len(written)} file(s) to {folder}")
        return written

    def import_qupath(self, path: str | Path) -> int | None:
        """Add a QuPath GeoJSON's annotations as manual regions; how many, ``None`` on error."""
        if self._session is None:
            self.review_failed.emit(
                "Cannot import annotations", "Open a slide with an analysis to review first."
            )
            return None
        from wsiviewer.core.review.qupath_import import import_annotations

        count = self._apply("import the annotations", lambda s: import_annotations(s, Path(path)))
        if count is None:
            return None
        self.status_reported.emit(f"Imported {count} annotation(s) as manual regions (U undoes)")
        return int(count)  # type: ignore[call-overload]


def _changed_ref(before: ReviewState, after: ReviewState) -> RegionRef | None:
    """The first region whose status or note differs between two states, or that one lacks."""
    old = {item.ref: (item.status, item.note) for item in before.items}
    new = {item.ref: (item.status, item.note) for item in after.items}
    for ref, value in new.items():
        if old.get(ref) != value:
            return ref
    for ref in old:
        if ref not in new:
            return ref
    return None
