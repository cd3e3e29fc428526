"""The shown set's regions in the list and on the slide, and which of them is selected.

:class:`RegionList` owns the sortable region table (:mod:`wsiviewer.gui.region_table`), the
"Sort by" choice, the outlines on the slide (:class:`~wsiviewer.gui.region_items.RegionOverlay`)
and the selection: one current region, framed on the slide when chosen (centred, zoomed so it
fills about 60 % of the view with tissue around it), N / P stepping through the list in its
sorted order, and several rows selected with Ctrl/Shift+click (to merge them). It shows the
items it is given and records nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from PySide6.QtCore import QItemSelectionModel, QModelIndex, QObject, Signal
from PySide6.QtWidgets import QAbstractItemView, QComboBox

from wsiviewer.core.units import px_from_um
from wsiviewer.gui.region_items import RegionOverlay
from wsiviewer.gui.region_table import (
    REF_ROLE,
    SORT_CHOICES,
    SORT_ROLE,
    RegionSortProxy,
    RegionTableModel,
    RegionTableView,
    region_label,
)

if TYPE_CHECKING:
    from shapely.geometry import Polygon

    from wsiviewer.core.review.log import RegionRef, ReviewItem
    from wsiviewer.gui.slide_view import SlideView

#: Least field of view (µm) when the view frames a region: enough tissue around it to judge.
MIN_FRAME_UM = 1000.0
#: Least field of view (level-0 px) when the slide has no µm/px.
MIN_FRAME_PX = 2000.0
#: Field of view around a region, as a multiple of its bounding box.
FRAME_MARGIN = 1.6


def outline_label(item: ReviewItem) -> str:
    """The label on the slide: the region's number, and an imported region's own class."""
    label = region_label(item)
    return f"{label} · {item.classification}" if item.classification else label


class RegionList(QObject):
    """The region table, the outlines on the slide and the selection.

    Signals
    -------
    about_to_change()
        The current region is about to change (e.g. save a note being typed on it).
    current_changed(object)
        The current region changed: its ``RegionRef``, or ``None``.
    rows_changed()
        The rows selected in the list changed.
    status_reported(str)
        A short message for the status bar.
    """

    about_to_change = Signal()
    current_changed = Signal(object)
    rows_changed = Signal()
    status_reported = Signal(str)

    def __init__(self, view: SlideView, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._view = view
        self._selected_ref: RegionRef | None = None
        #: Whether a change of the table's current row frames the region (not when selecting
        #: from code with ``frame=False``).
        self._frame_on_select = True
        self.overlay = RegionOverlay(view.scene())
        self.sort_box = QComboBox()
        for label, _, _ in SORT_CHOICES:
            self.sort_box.addItem(label)
        self.model = RegionTableModel(self)
        self.proxy = RegionSortProxy(self)
        self.proxy.setSourceModel(self.model)
        self.proxy.setSortRole(SORT_ROLE)
        self.table = RegionTableView(self.proxy)
        # Ctrl/Shift+click selects several regions (to merge them); N / P select one.
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        selection = self.table.selectionModel()
        selection.currentRowChanged.connect(self._on_current_row_changed)
        selection.selectionChanged.connect(lambda *_: self.rows_changed.emit())
        self.sort_box.currentIndexChanged.connect(self._on_sort_chosen)
        view.view_changed.connect(lambda: self.overlay.arrange_labels(view))

    # -- what is selected -------------------------------------------------------------------

    @property
    def selected_ref(self) -> RegionRef | None:
        return self._selected_ref

    def selected_item(self) -> ReviewItem | None:
        if self._selected_ref is None:
            return None
        row = self.model.row_of(self._selected_ref)
        return None if row is None else self.model.item(row)

    def selected_refs(self) -> list[RegionRef]:
        """Every region selected in the list (Ctrl/Shift+click), in list order."""
        rows = sorted(index.row() for index in self.table.selectionModel().selectedRows())
        return [self.proxy.index(row, 0).data(REF_ROLE) for row in rows]

    def visible_refs(self) -> list[RegionRef]:
        """The regions in the list's current (sorted) order."""
        return [self.proxy.index(row, 0).data(REF_ROLE) for row in range(self.proxy.rowCount())]

    def contains(self, ref: RegionRef) -> bool:
        return self.model.row_of(ref) is not None

    # -- showing ----------------------------------------------------------------------------

    def set_items(self, items: Sequence[ReviewItem]) -> None:
        """Show these regions in the list and on the slide (the selection is not touched:
        :meth:`restore_selection` follows)."""
        self.model.set_items(items)
        self.overlay.set_regions(
            (item.ref, item.polygon, outline_label(item), item.status) for item in items
        )
        self.overlay.arrange_labels(self._view)

    def restore_selection(self, wanted: RegionRef | None) -> bool:
        """Select ``wanted`` again (not framed) if it is still shown, else nothing; whether
        it was."""
        if wanted is not None and self.contains(wanted):
            self.select(wanted, frame=False)
            return True
        self._selected_ref = None
        self.table.clearSelection()
        self.overlay.set_selected(None)
        return False

    def clear(self) -> None:
        """No regions, nothing selected."""
        self.model.set_items(())
        self.overlay.clear()
        self._selected_ref = None

    def forget_selection(self) -> None:
        """Nothing is selected the next time items are shown (another set)."""
        self._selected_ref = None

    # -- selecting --------------------------------------------------------------------------

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

    def select_several(self, refs: Sequence[RegionRef]) -> None:
        """Select several regions in the list (as Ctrl+click does), the first current."""
        first = True
        for ref in refs:
            row = self.model.row_of(ref)
            if row is None:
                continue
            index = self.proxy.mapFromSource(self.model.index(row, 0))
            flags = QItemSelectionModel.SelectionFlag.Rows | (
                QItemSelectionModel.SelectionFlag.ClearAndSelect
                if first
                else QItemSelectionModel.SelectionFlag.Select
            )
            if first:
                self.table.selectionModel().setCurrentIndex(index, flags)
            else:
                self.table.selectionModel().select(index, flags)
            first = False
        self.rows_changed.emit()

    def select_next(self) -> bool:
        return self._step(1)

    def select_previous(self) -> bool:
        return self._step(-1)

    def _step(self, delta: int) -> bool:
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

    def _on_current_row_changed(self, current: QModelIndex, _previous: QModelIndex) -> None:
        ref = current.data(REF_ROLE) if current.isValid() else None
        if ref != self._selected_ref:
            self._set_selected(ref, frame=self._frame_on_select)

    def _set_selected(self, ref: RegionRef | None, *, frame: bool) -> None:
        self.about_to_change.emit()
        self._selected_ref = ref
        self.overlay.set_selected(ref)
        self.overlay.arrange_labels(self._view)
        if frame:
            self._frame_selected()
        self.current_changed.emit(ref)

    def _on_sort_chosen(self, index: int) -> None:
        if 0 <= index < len(SORT_CHOICES):
            _, column, order = SORT_CHOICES[index]
            self.table.sortByColumn(column, order)
            if self._selected_ref is not None:
                self.select(self._selected_ref, frame=False)

    # -- framing ----------------------------------------------------------------------------

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
