"""The review's region list: one row per region of a review state, sortable, in a table.

:class:`RegionTableModel` shows a :class:`~wsiviewer.core.review.log.ReviewState`'s items (it
keeps no decisions of its own), :class:`RegionSortProxy` sorts them by raw values, and
:class:`RegionTableView` is the table the review panel shows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import (
    QAbstractTableModel,
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    QSortFilterProxyModel,
    Qt,
)
from PySide6.QtGui import QIcon
from PySide6.QtWidgets import QAbstractItemView, QHeaderView, QTableView, QWidget

from wsiviewer.core.review.wording import STATUS_WORDS, format_probability
from wsiviewer.gui.region_items import STATUS_STYLES, status_icon

if TYPE_CHECKING:
    from wsiviewer.core.review.log import RegionRef, ReviewItem

#: Role of the raw value a column sorts by.
SORT_ROLE = Qt.ItemDataRole.UserRole + 1
#: Role of the item's ``RegionRef``.
REF_ROLE = Qt.ItemDataRole.UserRole + 2

COLUMNS = ("#", "Area (mm²)", "Max P", "Mean P", "Status", "Note")
NUMBER_COLUMN, AREA_COLUMN, MAX_COLUMN, MEAN_COLUMN, STATUS_COLUMN, NOTE_COLUMN = range(6)
STATUS_ORDER = {"pending": 0, "accepted": 1, "rejected": 2}

#: Sort choices: (label, column, order).
SORT_CHOICES: tuple[tuple[str, int, Qt.SortOrder], ...] = (
    ("Max probability", MAX_COLUMN, Qt.SortOrder.DescendingOrder),
    ("Mean probability", MEAN_COLUMN, Qt.SortOrder.DescendingOrder),
    ("Area", AREA_COLUMN, Qt.SortOrder.DescendingOrder),
    ("Number", NUMBER_COLUMN, Qt.SortOrder.AscendingOrder),
)


def region_label(item: ReviewItem) -> str:
    """A region's short name: its number, ``M`` before a manual one's."""
    return item.label


_ICONS: dict[str, QIcon] = {}


def _status_icons() -> dict[str, QIcon]:
    if not _ICONS:  # needs the QApplication: made on first use
        _ICONS.update({status: status_icon(status) for status in STATUS_STYLES})
    return _ICONS


def _probability_text(value: float | None) -> str:
    """Two decimals, never rounded up to 1.00 (0.998 is 0.99)."""
    return "—" if value is None else format_probability(value)


#: How each origin of a region reads in its tooltip.
_ORIGIN_TEXT = {
    "model": "flagged by the model",
    "drawn": "drawn by a reviewer",
    "imported": "imported from QuPath",
    "edit": "made by a region edit",
}


class RegionTableModel(QAbstractTableModel):
    """The items of a review state, one row each, in the state's order."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._items: list[ReviewItem] = []

    def set_items(self, items: Sequence[ReviewItem]) -> None:
        same_rows = [i.ref for i in items] == [i.ref for i in self._items]
        if same_rows:
            self._items = list(items)
            if self._items:
                self.dataChanged.emit(
                    self.index(0, 0), self.index(len(self._items) - 1, len(COLUMNS) - 1)
                )
            return
        self.beginResetModel()
        self._items = list(items)
        self.endResetModel()

    def item(self, row: int) -> ReviewItem:
        return self._items[row]

    def row_of(self, ref: RegionRef) -> int | None:
        for row, item in enumerate(self._items):
            if item.ref == ref:
                return row
        return None

    def rowCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self._items)

    def columnCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(
        self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole
    ) -> Any:
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return COLUMNS[section]
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.ToolTipRole:
            return {
                NUMBER_COLUMN: "Region number (M: drawn, imported or edited by a reviewer)",
                STATUS_COLUMN: "candidate: flagged, not reviewed; accepted; rejected",
                MAX_COLUMN: "Highest P(IDC) of the region's patches (model output)",
                MEAN_COLUMN: "Mean P(IDC) of the region's patches (model output)",
            }.get(section)
        return None

    def data(self, index: QModelIndex | QPersistentModelIndex, role: int = 0) -> Any:
        if not index.isValid():
            return None
        item = self._items[index.row()]
        column = index.column()
        if role == REF_ROLE:
            return item.ref
        if role == Qt.ItemDataRole.DisplayRole:
            return (
                region_label(item),
                f"{item.area_mm2:.3f}",
                _probability_text(item.max_prob),
                _probability_text(item.mean_prob),
                STATUS_WORDS[item.status],
                item.note,
            )[column]
        if role == SORT_ROLE:
            return (
                (item.ref.kind == "manual", item.number),
                item.area_mm2,
                -1.0 if item.max_prob is None else item.max_prob,
                -1.0 if item.mean_prob is None else item.mean_prob,
                STATUS_ORDER.get(item.status, 9),
                item.note.lower(),
            )[column]
        if role == Qt.ItemDataRole.DecorationRole and column == STATUS_COLUMN:
            return _status_icons()[item.status]
        if role == Qt.ItemDataRole.TextAlignmentRole and column in (
            AREA_COLUMN,
            MAX_COLUMN,
            MEAN_COLUMN,
        ):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        if role == Qt.ItemDataRole.ToolTipRole:
            lines = [
                f"Region {region_label(item)}, {_ORIGIN_TEXT[item.origin]}: "
                f"{STATUS_WORDS[item.status]}"
            ]
            if item.edit_kind:
                sources = ", ".join(str(number) for number in item.derived_from)
                lines.append(f"{item.edit_kind} of {sources}")
            if item.classification:
                lines.append(f"QuPath class: {item.classification}")
            if item.reviewer:
                lines.append(f"by {item.reviewer} at {item.decided_at or '?'}")
            if item.note:
                lines.append(f"Note: {item.note}")
            return "\n".join(lines)
        return None


class RegionSortProxy(QSortFilterProxyModel):
    """Sorts by :data:`SORT_ROLE` values (tuples included)."""

    def lessThan(
        self,
        left: QModelIndex | QPersistentModelIndex,
        right: QModelIndex | QPersistentModelIndex,
    ) -> bool:
        a, b = left.data(SORT_ROLE), right.data(SORT_ROLE)
        if a == b:  # ties keep the number order, so N / P never jump about
            return bool(left.row() < right.row())
        return bool(a < b)


class RegionTableView(QTableView):
    """The region list: whole rows selected one at a time, read-only, the note column
    stretching, sorted by max probability first."""

    def __init__(self, proxy: RegionSortProxy, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setModel(proxy)
        self.setSortingEnabled(True)
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.setAlternatingRowColors(True)
        self.verticalHeader().setVisible(False)
        self.verticalHeader().setDefaultSectionSize(22)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setTextElideMode(Qt.TextElideMode.ElideRight)
        header = self.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(NOTE_COLUMN, QHeaderView.ResizeMode.Stretch)
        header.setMinimumSectionSize(30)
        self.sortByColumn(MAX_COLUMN, Qt.SortOrder.DescendingOrder)
