"""Deciding on regions: stepping through the list, accept / reject / reset, undo, delete, notes.

:class:`ReviewDecisions` owns the review's decision actions and their keys (N / P, A / R,
U or Ctrl+Z, Ctrl+N, Delete), the note field of the selected region (Enter saves, Esc reverts)
and the "next region after A / R" choice. Each decision is recorded through the
:class:`~wsiviewer.gui.review_controller.ReviewController` (one Store transaction) on the
region selected in the :class:`~wsiviewer.gui.review_list.RegionList`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from PySide6.QtCore import QEvent, QObject, Qt, Signal
from PySide6.QtGui import QAction, QKeyEvent, QKeySequence
from PySide6.QtWidgets import QCheckBox, QLineEdit

from wsiviewer.gui.region_table import region_label
from wsiviewer.gui.review_widgets import make_action

if TYPE_CHECKING:
    from wsiviewer.core.review.log import RegionRef, ReviewItem, ReviewState
    from wsiviewer.gui.review_controller import ReviewController
    from wsiviewer.gui.review_list import RegionList


def changed_ref(before: ReviewState, after: ReviewState) -> RegionRef | None:
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


class ReviewDecisions(QObject):
    """The decision actions, the note field and what they do.

    Signals
    -------
    status_reported(str)
        A short message for the status bar.
    """

    status_reported = Signal(str)

    def __init__(
        self, regions: RegionList, controller: ReviewController, parent: QObject | None = None
    ) -> None:
        super().__init__(parent)
        self._regions = regions
        self._controller = controller
        self._note_ref: RegionRef | None = None
        self._build_actions()
        self.note_edit = QLineEdit()
        self.note_edit.setPlaceholderText("Note on the selected region (Ctrl+N; Enter saves)")
        self.note_edit.setClearButtonEnabled(True)
        self.note_edit.installEventFilter(self)
        self.note_edit.returnPressed.connect(self._on_note_entered)
        self.note_edit.editingFinished.connect(self._save_note)
        self.advance_box = QCheckBox("Next region after A / R")
        self.advance_box.setChecked(True)
        regions.table.installEventFilter(self)
        regions.about_to_change.connect(self._on_selection_leaving)

    def _build_actions(self) -> None:
        regions = self._regions
        self.next_action = make_action(
            self, "&Next region", regions.select_next, ["N"], "Next region"
        )
        self.previous_action = make_action(
            self, "&Previous region", regions.select_previous, ["P"], "Previous region"
        )
        self.accept_action = make_action(
            self, "&Accept region", self.accept_selected, ["A"], "Accept: IDC confirmed"
        )
        self.reject_action = make_action(
            self, "&Reject region", self.reject_selected, ["R"], "Reject: not IDC"
        )
        self.reset_action = make_action(
            self, "Mark &candidate", self.reset_selected, [], "Back to candidate (undecided)"
        )
        self.undo_action = make_action(
            self, "&Undo review action", self.undo, ["U", "Ctrl+Z"], "Undo the last review action"
        )
        self.note_action = make_action(
            self, "Write &note…", self.edit_note, ["Ctrl+N"], "Write a note on the selected region"
        )
        self.delete_action = make_action(
            self,
            "De&lete region",
            self.delete_selected,
            [QKeySequence.StandardKey.Delete],
            "Delete the selected region",
        )

    @property
    def button_actions(self) -> list[tuple[QAction, str]]:
        """The decision buttons, two a row, each naming its key."""
        return [
            (self.previous_action, "Previous (P)"),
            (self.next_action, "Next (N)"),
            (self.accept_action, "Accept (A)"),
            (self.reject_action, "Reject (R)"),
            (self.undo_action, "Undo (U)"),
            (self.reset_action, "Candidate"),
        ]

    def update_actions(self) -> None:
        state = self._controller.state
        has_review = state is not None
        has_selection = has_review and self._regions.selected_item() is not None
        count = len(state.items) if state is not None else 0
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

    # -- decisions --------------------------------------------------------------------------

    def _decide(self, status: str) -> bool:
        item = self._regions.selected_item()
        if item is None:
            self.status_reported.emit("Select a region first (N / P)")
            return False
        decided: object
        apply = self._controller.apply
        if status == "accepted":
            decided = apply("accept the region", lambda s: s.accept(item.ref))
        elif status == "rejected":
            decided = apply("reject the region", lambda s: s.reject(item.ref))
        else:
            decided = apply("reset the region", lambda s: s.reset(item.ref))
        if decided is None:
            return False
        word = "back to candidate" if status == "pending" else status
        state = self._controller.state
        self.status_reported.emit(
            f"Region {region_label(item)} {word}" + (f" · {state.progress_text}" if state else "")
        )
        if status != "pending" and self.advance_box.isChecked():
            self._regions.select_next()
        return True

    def accept_selected(self) -> bool:
        return self._decide("accepted")

    def reject_selected(self) -> bool:
        return self._decide("rejected")

    def reset_selected(self) -> bool:
        return self._decide("pending")

    def undo(self) -> bool:
        """Undo the reviewer's last action (a whole edit included) and select what it touched."""
        before = self._controller.state
        if before is None:
            return False
        if not self._controller.has_reviewer:
            self.status_reported.emit("Nothing to undo")
            return False
        undone = self._controller.apply("undo", lambda s: s.undo())
        after = self._controller.state
        if not undone:
            self.status_reported.emit("Nothing to undo")
            return False
        touched = changed_ref(before, after) if after is not None else None
        if touched is not None and self._regions.contains(touched):
            self._regions.select(touched)
        self.status_reported.emit("Undone" + (f" · {after.progress_text}" if after else ""))
        return True

    def delete_selected(self) -> bool:
        item = self._regions.selected_item()
        if item is None:
            self.status_reported.emit("Select a region first (N / P)")
            return False
        refs = self._regions.visible_refs()
        index = refs.index(item.ref)
        following = refs[index + 1] if index + 1 < len(refs) else None
        if following is None and index > 0:
            following = refs[index - 1]
        if self._controller.apply("delete the region", lambda s: s.delete(item.ref)) is None:
            return False
        if following is not None and self._regions.contains(following):
            self._regions.select(following, frame=False)
        self.status_reported.emit(f"Region {region_label(item)} deleted (U undoes)")
        return True

    # -- notes ------------------------------------------------------------------------------

    def edit_note(self) -> None:
        """Put the keyboard in the note field of the selected region."""
        if self._regions.selected_item() is None:
            self.status_reported.emit("Select a region first (N / P)")
            return
        self.note_edit.setFocus(Qt.FocusReason.ShortcutFocusReason)
        self.note_edit.selectAll()

    def set_note(self, note: str, ref: RegionRef | None = None) -> bool:
        ref = ref if ref is not None else self._regions.selected_ref
        if ref is None or self._controller.state is None:
            return False
        done = self._controller.apply("save the note", lambda s: s.set_note(ref, note), select=ref)
        return done is not None

    def load_note(self, item: ReviewItem | None) -> None:
        """Show ``item``'s note in the field (nothing saved), or empty it."""
        self._note_ref = None if item is None else item.ref
        self.note_edit.blockSignals(True)
        self.note_edit.setText("" if item is None else item.note)
        self.note_edit.blockSignals(False)
        self.note_edit.setEnabled(item is not None)

    def forget_note(self) -> None:
        """The field's text belongs to no region any more (the set was closed)."""
        self._note_ref = None

    def _save_note(self) -> None:
        ref = self._note_ref
        state = self._controller.state
        if ref is None or state is None:
            return
        text = self.note_edit.text().strip()
        current = next((i.note for i in state.items if i.ref == ref), None)
        if current is None or text == current:
            return
        if self.set_note(text, ref):
            self.status_reported.emit("Note saved")

    def _on_selection_leaving(self) -> None:
        if self.note_edit.hasFocus():
            self._save_note()

    def _on_note_entered(self) -> None:
        self._save_note()
        self._regions.table.setFocus(Qt.FocusReason.OtherFocusReason)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if event.type() == QEvent.Type.KeyPress and isinstance(event, QKeyEvent):
            key = event.key()
            if watched is self.note_edit and key == Qt.Key.Key_Escape:
                self.load_note(self._regions.selected_item())
                self._regions.table.setFocus(Qt.FocusReason.OtherFocusReason)
                return True
            if watched is self._regions.table and key in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
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
