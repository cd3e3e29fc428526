"""Which region set the review shows, and choosing another: the "Shown" history and the fields.

:class:`HistoryChooser` lists the slide's history (every analysis and region set,
:class:`~wsiviewer.core.review.selection.HistoryEntry`), so a new analysis never hides a
review. :class:`ShownSetControls` owns it with the threshold and minimum-area fields and the
line that says which set is shown and why; it only shows and tells what the user chose (another
entry of the history, or another threshold or minimum area): the review panel shows it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from PySide6.QtCore import QEvent, QObject, Qt, Signal
from PySide6.QtGui import QKeyEvent
from PySide6.QtWidgets import QComboBox, QDoubleSpinBox, QHBoxLayout, QLabel, QWidget

from wsiviewer.core.review.defaults import DEFAULT_MIN_AREA_MM2
from wsiviewer.core.review.wording import flagged_text, format_threshold
from wsiviewer.gui.review_widgets import give_keys_back

if TYPE_CHECKING:
    from wsiviewer.core.review.log import ReviewState
    from wsiviewer.core.review.selection import HistoryEntry


class HistoryChooser(QComboBox):
    """A combo box of the slide's history entries (``activated`` says which was chosen)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._entries: list[HistoryEntry] = []
        self.setToolTip(
            "Every analysis and region set of this slide: a new analysis never hides a "
            "review; choose one to show it"
        )
        self.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(20)

    @property
    def entries(self) -> list[HistoryEntry]:
        return list(self._entries)

    def entry(self, index: int) -> HistoryEntry | None:
        """The entry at ``index``, ``None`` if there is none."""
        return self._entries[index] if 0 <= index < len(self._entries) else None

    def set_entries(self, entries: Sequence[HistoryEntry], shown_set_id: int | None) -> None:
        """List ``entries``, the one of region set ``shown_set_id`` current (no signal)."""
        self._entries = list(entries)
        self.blockSignals(True)
        self.clear()
        for entry in self._entries:
            self.addItem(entry.text)
            tip = entry.text + (
                f"\nLast reviewed {entry.last_decision_at.replace('T', ' ')[:16]} UTC"
                if entry.last_decision_at
                else ""
            )
            self.setItemData(self.count() - 1, tip, Qt.ItemDataRole.ToolTipRole)
        self.select_shown(shown_set_id)
        self.blockSignals(False)
        self.setEnabled(bool(self._entries))

    def clear_entries(self) -> None:
        self._entries = []
        self.clear()

    def select_shown(self, shown_set_id: int | None) -> None:
        """Make the entry of region set ``shown_set_id`` current (if listed)."""
        if shown_set_id is None:
            return
        for index, entry in enumerate(self._entries):
            if entry.region_set is not None and entry.region_set.id == shown_set_id:
                self.setCurrentIndex(index)
                return


class ShownSetControls(QObject):
    """The history chooser, the threshold and minimum-area fields, and the set's line.

    Signals
    -------
    history_chosen(int, int)
        The user chose another analysis (id) and region set (id, or -1 for none yet).
    settings_chosen(float, float)
        The user entered another threshold or minimum area (mm²): both, the shown set's exact
        threshold kept when the typed one reads the same.
    """

    history_chosen = Signal(int, int)
    settings_chosen = Signal(float, float)

    def __init__(self, view: QWidget, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._view = view
        self._state: ReviewState | None = None
        self._reason = ""
        self.history_box = HistoryChooser()
        self.threshold_box = QDoubleSpinBox()
        self.threshold_box.setRange(0.001, 1.0)
        self.threshold_box.setSingleStep(0.01)
        self.threshold_box.setDecimals(3)
        self.threshold_box.setToolTip(
            "The one threshold of the heatmap and the regions: patches with P(IDC) at or above "
            "it are flagged; a new value shows another region set (the decisions on the old "
            "one are kept)"
        )
        self.min_area_box = QDoubleSpinBox()
        self.min_area_box.setRange(0.0, 1000.0)
        self.min_area_box.setSingleStep(0.01)
        self.min_area_box.setDecimals(3)
        self.min_area_box.setSuffix(" mm²")
        self.min_area_box.setToolTip(
            f"Smaller regions are left out of the set (default {DEFAULT_MIN_AREA_MM2:g} mm²: "
            "regions of one or two patches)"
        )
        self.set_label = QLabel()
        self.set_label.setWordWrap(True)
        self.set_label.setObjectName("region_set_label")
        self.history_box.activated.connect(self._on_history_chosen)
        for box in (self.threshold_box, self.min_area_box):
            box.editingFinished.connect(self._on_settings_edited)
            box.installEventFilter(self)

    def history_row(self) -> QHBoxLayout:
        row = QHBoxLayout()
        row.addWidget(QLabel("Shown"))
        row.addWidget(self.history_box, 1)
        return row

    def settings_row(self) -> QHBoxLayout:
        row = QHBoxLayout()
        row.addWidget(QLabel("P ≥"))
        row.addWidget(self.threshold_box)
        row.addWidget(QLabel("area ≥"))
        row.addWidget(self.min_area_box)
        row.addStretch(1)
        return row

    def show_set(self, state: ReviewState | None, reason: str = "") -> None:
        """Show ``state``'s set (``reason``: why it is the one shown), or none."""
        self._state = state
        self._reason = reason
        for widget in (self.history_box, self.threshold_box, self.min_area_box):
            widget.setEnabled(state is not None)
        if state is None:
            self.set_label.clear()
            return
        for box, value in (
            (self.threshold_box, state.threshold),
            (self.min_area_box, state.min_area_mm2),
        ):
            box.blockSignals(True)
            box.setValue(value)
            box.blockSignals(False)
        self.set_label.setText(self._set_text(state, reason))
        self.history_box.select_shown(state.region_set_id)

    def set_history(self, entries: Sequence[HistoryEntry]) -> None:
        """Every analysis and region set of the slide, the shown one current."""
        state = self._state
        self.history_box.set_entries(entries, None if state is None else state.region_set_id)

    @staticmethod
    def _set_text(state: ReviewState, reason: str) -> str:
        """What the shown set is: its ids, what it flags, and why it is the one shown."""
        model_count = sum(item.ref.kind == "model" for item in state.items)
        manual_count = len(state.items) - model_count
        text = (
            f"Region set #{state.region_set_id} of analysis #{state.analysis_id}: "
            f"{flagged_text(model_count, state.threshold)}, area ≥ {state.min_area_mm2:g} mm²"
            + (f", {manual_count} by reviewers" if manual_count else "")
        )
        return text + (f" · shown: {reason}" if reason else "")

    def _on_history_chosen(self, index: int) -> None:
        give_keys_back(self._view)
        entry = self.history_box.entry(index)
        if entry is None:
            return
        region_set_id = -1 if entry.region_set is None else entry.region_set.id
        if self._state is not None and region_set_id == self._state.region_set_id:
            return
        self.history_chosen.emit(entry.analysis.id, region_set_id)

    def _on_settings_edited(self) -> None:
        state = self._state
        give_keys_back(self._view)
        if state is None:
            return
        threshold = round(self.threshold_box.value(), 3)
        min_area_mm2 = round(self.min_area_box.value(), 6)
        if format_threshold(threshold) == format_threshold(state.threshold) and (
            min_area_mm2 == round(state.min_area_mm2, 6)
        ):
            return
        if format_threshold(threshold) == format_threshold(state.threshold):
            threshold = state.threshold  # keep the card's exact value
        self.settings_chosen.emit(threshold, min_area_mm2)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        boxes = (self.threshold_box, self.min_area_box)
        if watched in boxes and isinstance(event, QKeyEvent) and event.key() == Qt.Key.Key_Escape:
            if event.type() == QEvent.Type.KeyPress:
                self.show_set(self._state, self._reason)  # revert the typed value
                give_keys_back(self._view)
                return True
            if event.type() == QEvent.Type.ShortcutOverride:
                event.accept()  # Esc reverts the field, not the window's cancel-analysis
                return True
        return super().eventFilter(watched, event)
