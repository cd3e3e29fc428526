"""The case list: the slides of a folder with their analysis and review status (File › Open
folder…), "Analyze all" in the background, and a double-click to open a slide.

- Statuses come from the Store through the selection rule
  (:func:`wsiviewer.core.batch.cases.case_status`): not analysed, analysed, in review,
  reviewed. They are read on a worker thread when the folder is opened or refreshed.
- "Analyze all" runs a batch (:mod:`wsiviewer.gui.case_batch`) on a local Dask cluster, or on
  the scheduler given in the panel; each slide's status follows its task live (queued,
  analysing n %, saving, then analysed or failed), from the batch's events delivered as
  signals, never by polling the database.
- Columns sort by their values (max P and flagged area descending first).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Generator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import (
    QAbstractTableModel,
    QCoreApplication,
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    QSortFilterProxyModel,
    Qt,
    QThread,
    Signal,
)
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QTableView,
    QVBoxLayout,
    QWidget,
)
from superqt.utils import GeneratorWorker

from wsiviewer.core.batch.sources import search_folder
from wsiviewer.gui.case_batch import CaseBatchRunner
from wsiviewer.gui.panels import notice_label

if TYPE_CHECKING:
    from wsiviewer.core.batch.cases import CaseStatus
    from wsiviewer.core.batch.manifest import SlideRow
    from wsiviewer.core.batch.runner import BatchReport, ClusterInfo
    from wsiviewer.gui.main_window import MainWindow

log = logging.getLogger(__name__)

#: Role of the raw value a column sorts by.
SORT_ROLE = Qt.ItemDataRole.UserRole + 1
#: Role of the row's slide path (str).
PATH_ROLE = Qt.ItemDataRole.UserRole + 2

COLUMNS = ("Slide", "Status", "Max P", "Flagged mm²", "Regions")
NAME_COLUMN, STATUS_COLUMN, MAX_P_COLUMN, AREA_COLUMN, REGIONS_COLUMN = range(5)

#: Sort order of statuses: what needs attention first.
STATE_ORDER = {"not analysed": 0, "analysed": 1, "in review": 2, "reviewed": 3}

#: Colours of the batch states and the case states (text), readable on white and dark.
STATE_COLOURS = {
    "failed": QColor("#c62828"),
    "reviewed": QColor("#2e7d32"),
    "in review": QColor("#ef6c00"),
    "running": QColor("#1565c0"),
    "saving": QColor("#1565c0"),
}

#: The QSettings key of the scheduler address (empty: a local cluster).
SCHEDULER_SETTING = "batch/scheduler"


@dataclass(frozen=True)
class CaseEntry:
    """One slide of the list."""

    path: Path
    #: ``None`` until read from the Store.
    status: CaseStatus | None = None
    #: The batch's state of the slide, while a batch runs or after it: ``waiting`` (not
    #: planned yet), ``queued``, ``running``, ``saving``, ``done``, ``skipped``, ``failed``,
    #: ``cancelled``.
    batch_state: str = ""
    #: Progress of a running slide, 0–100.
    percent: int = 0
    #: Why it failed (tooltip), or the note of a finished slide.
    message: str = ""
    #: Figures from the batch (a done slide), shown until the Store is read again.
    max_p: float | None = None
    area_mm2: float | None = None
    regions: int | None = None

    @property
    def state(self) -> str:
        """The case state: ``"…"`` while unread."""
        return "…" if self.status is None else self.status.state

    @property
    def status_text(self) -> str:
        state = self.batch_state
        if state in {"waiting", "queued"}:
            return state
        if state == "running":
            return f"analysing {self.percent} %"
        if state == "saving":
            return "saving"
        if state == "failed":
            return "failed"
        if state == "cancelled" and (self.status is None or self.status.state == "not analysed"):
            return "not analysed (cancelled)"
        if self.status is None:
            return "cannot open" if self.message else "…"
        return self.status.text


class CaseTableModel(QAbstractTableModel):
    """The case entries, one row each."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.entries: list[CaseEntry] = []

    def set_entries(self, entries: list[CaseEntry]) -> None:
        self.beginResetModel()
        self.entries = entries
        self.endResetModel()

    def row_of(self, path: Path) -> int | None:
        for row, entry in enumerate(self.entries):
            if entry.path == path:
                return row
        return None

    def update(self, path: Path, **changes: Any) -> None:
        row = self.row_of(path)
        if row is None:
            return
        self.entries[row] = replace(self.entries[row], **changes)
        self.dataChanged.emit(self.index(row, 0), self.index(row, len(COLUMNS) - 1))

    def rowCount(self, parent: QModelIndex | QPersistentModelIndex | None = None) -> int:
        return 0 if parent is not None and parent.isValid() else len(self.entries)

    def columnCount(self, parent: QModelIndex | QPersistentModelIndex | None = None) -> int:
        return 0 if parent is not None and parent.isValid() else len(COLUMNS)

    def headerData(
        self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole
    ) -> Any:
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return COLUMNS[section]
        return None

    def data(
        self, index: QModelIndex | QPersistentModelIndex, role: int = Qt.ItemDataRole.DisplayRole
    ) -> Any:
        if not index.isValid():
            return None
        entry = self.entries[index.row()]
        column = index.column()
        if role == PATH_ROLE:
            return str(entry.path)
        if role == Qt.ItemDataRole.DisplayRole:
            return self._text(entry, column)
        if role == SORT_ROLE:
            return self._sort_value(entry, column)
        if role == Qt.ItemDataRole.ToolTipRole:
            tip = str(entry.path)
            return f"{tip}\n{entry.message}" if entry.message else tip
        if role == Qt.ItemDataRole.ForegroundRole and column == STATUS_COLUMN:
            key = entry.batch_state if entry.batch_state in STATE_COLOURS else entry.state
            return STATE_COLOURS.get(key)
        if role == Qt.ItemDataRole.TextAlignmentRole and column >= MAX_P_COLUMN:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None

    @staticmethod
    def _figures(entry: CaseEntry) -> tuple[float | None, float | None, int | None]:
        status = entry.status
        if status is not None and status.analysis_id is not None:
            return status.max_p, status.flagged_area_mm2, status.regions
        return entry.max_p, entry.area_mm2, entry.regions

    def _text(self, entry: CaseEntry, column: int) -> str:
        max_p, area, regions = self._figures(entry)
        if column == NAME_COLUMN:
            return entry.path.name
        if column == STATUS_COLUMN:
            return entry.status_text
        if column == MAX_P_COLUMN:
            # Two decimals, never rounded up to 1.00.
            return "" if max_p is None else f"{math.floor(max_p * 100) / 100:.2f}"
        if column == AREA_COLUMN:
            return "" if area is None else f"{area:.2f}"
        return "" if regions is None else str(regions)

    def _sort_value(self, entry: CaseEntry, column: int) -> Any:
        max_p, area, regions = self._figures(entry)
        if column == NAME_COLUMN:
            return entry.path.name.lower()
        if column == STATUS_COLUMN:
            return STATE_ORDER.get(entry.state, -1)
        value = {MAX_P_COLUMN: max_p, AREA_COLUMN: area, REGIONS_COLUMN: regions}[column]
        return -1.0 if value is None else float(value)


def _read_statuses(
    paths: list[Path], default_card: Any, cards: list[Any]
) -> Generator[tuple[Path, CaseStatus | None, str], None, None]:
    """On a worker thread: each slide's case status (``None`` and why, if it cannot be read)."""
    from wsiviewer.core.batch.cases import case_status
    from wsiviewer.core.slides import open_slide
    from wsiviewer.core.store.database import Store
    from wsiviewer.errors import WsiViewerError

    with Store.open() as store:
        for path in paths:
            try:
                with open_slide(path) as slide:
                    identity = slide.identity
                status = case_status(store, identity, default_card=default_card, cards=cards)
            except (WsiViewerError, OSError) as exc:
                yield path, None, str(exc)
                continue
            yield path, status, ""


class CaseListPanel(QWidget):
    """The case list of a folder (see the module docstring).

    Signals
    -------
    folder_opened(str)
    statuses_loaded()
        Every slide's status was read from the Store.
    slide_activated(str)
        A slide was double-clicked (the window opens it).
    batch_started()
    batch_finished(object)
        The :class:`~wsiviewer.core.batch.runner.BatchReport`, or ``None`` if it failed.
    """

    folder_opened = Signal(str)
    statuses_loaded = Signal()
    slide_activated = Signal(str)
    batch_started = Signal()
    batch_finished = Signal(object)

    def __init__(self, window: MainWindow) -> None:
        super().__init__(window)
        self._window = window
        self.folder: Path | None = None
        self.model = CaseTableModel(self)
        self.proxy = QSortFilterProxyModel(self)
        self.proxy.setSourceModel(self.model)
        self.proxy.setSortRole(SORT_ROLE)
        self.runner = CaseBatchRunner(self)
        self._loader: GeneratorWorker[tuple[Path, CaseStatus | None, str], None, None] | None = None
        #: Every loader until it has finished (a worker dropped while running loses its
        #: signals' source).
        self._loaders: set[object] = set()
        self._labels: dict[str, Path] = {}
        self._build()
        self._connect()
        self.update_buttons()

    # -- construction ---------------------------------------------------------------------

    def _build(self) -> None:
        self.folder_label = QLabel("No folder open: File › Open folder…")
        self.folder_label.setWordWrap(True)
        self.refresh_button = QPushButton("Refresh")
        self.refresh_button.setToolTip("Read every slide's status from the results database again")
        top = QHBoxLayout()
        top.addWidget(self.folder_label, 1)
        top.addWidget(self.refresh_button)

        self.table = QTableView()
        self.table.setModel(self.proxy)
        self.table.setSortingEnabled(True)
        self.table.sortByColumn(NAME_COLUMN, Qt.SortOrder.AscendingOrder)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.setAlternatingRowColors(True)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(NAME_COLUMN, QHeaderView.ResizeMode.Stretch)
        for column in range(1, len(COLUMNS)):
            header.setSectionResizeMode(column, QHeaderView.ResizeMode.ResizeToContents)

        self.scheduler_edit = QLineEdit()
        self.scheduler_edit.setPlaceholderText("local cluster on this computer")
        self.scheduler_edit.setToolTip(
            "Address of a Dask scheduler (tcp://host:8786) to analyse on, or empty for a local "
            "cluster; its workers need wsiviewer and read access to these slides"
        )
        saved = self._window.settings.value(SCHEDULER_SETTING)
        if isinstance(saved, str):
            self.scheduler_edit.setText(saved)
        scheduler_row = QHBoxLayout()
        scheduler_row.addWidget(QLabel("Run on:"))
        scheduler_row.addWidget(self.scheduler_edit, 1)

        self.analyze_button = QPushButton("Analyze all")
        self.cancel_button = QPushButton("Cancel")
        self.progress_label = QLabel()
        self.progress_label.setWordWrap(True)
        buttons = QHBoxLayout()
        buttons.addWidget(self.analyze_button)
        buttons.addWidget(self.cancel_button)
        buttons.addStretch(1)

        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.table, 1)
        layout.addLayout(scheduler_row)
        layout.addLayout(buttons)
        layout.addWidget(self.progress_label)
        layout.addWidget(notice_label())

    def _connect(self) -> None:
        self.refresh_button.clicked.connect(self.refresh)
        self.analyze_button.clicked.connect(self.analyze_all)
        self.cancel_button.clicked.connect(self.cancel_batch)
        self.table.doubleClicked.connect(self._on_double_clicked)
        self.slide_activated.connect(self._window.open_slide)
        self._window.model_panel.model_changed.connect(lambda _card: self.update_buttons())
        runner = self.runner
        runner.stopped.connect(self.update_buttons)
        runner.batch_finished.connect(self._on_batch_finished)
        runner.batch_failed.connect(self._on_batch_failed)
        bridge = runner.bridge
        bridge.cluster_ready.connect(self._on_cluster_ready)
        bridge.slide_planned.connect(self._on_planned)
        bridge.slide_progressed.connect(self._on_progressed)
        bridge.slide_computed.connect(self._on_computed)
        bridge.slide_finished.connect(self._on_finished)
        bridge.noted.connect(self.progress_label.setText)

    def update_buttons(self) -> None:
        running = self.runner.running
        card = self._window.model_panel.card
        has_slides = bool(self.model.entries)
        self.analyze_button.setEnabled(has_slides and card is not None and not running)
        if card is None:
            self.analyze_button.setToolTip("No model installed: add one in the Model panel")
        else:
            self.analyze_button.setToolTip(
                f"Analyse every slide not yet analysed with {card.name}, in the background"
            )
        self.cancel_button.setEnabled(running)
        self.refresh_button.setEnabled(self.folder is not None and not running)
        self.scheduler_edit.setEnabled(not running)

    # -- folder and statuses ----------------------------------------------------------------

    def set_folder(self, folder: str | Path) -> None:
        """List the slides of ``folder`` (recursively) and read their statuses."""
        folder = Path(folder)
        self.folder = folder
        paths = search_folder(folder)
        self.model.set_entries([CaseEntry(path) for path in paths])
        self.folder_label.setText(f"{folder} — {len(paths)} slide(s)")
        self.folder_label.setToolTip(str(folder))
        self.progress_label.clear()
        self.update_buttons()
        self.folder_opened.emit(str(folder))
        self.refresh()

    def refresh(self) -> None:
        """Read every slide's status from the Store (on a worker thread)."""
        self._stop_loader()
        paths = [entry.path for entry in self.model.entries]
        if not paths:
            self.statuses_loaded.emit()
            return
        from wsiviewer.core.model.cards import available_models

        card = self._window.model_panel.card
        worker: GeneratorWorker[tuple[Path, CaseStatus | None, str], None, None] = GeneratorWorker(
            _read_statuses, paths, card, available_models()
        )
        worker.yielded.connect(self._on_status_read)
        worker.finished.connect(lambda *_: self._on_loader_finished(worker))
        self._loaders.add(worker)
        worker.errored.connect(self._on_loader_errored)
        self._loader = worker
        worker.start()

    def _on_status_read(self, item: tuple[Path, CaseStatus | None, str]) -> None:
        if self._loader is None:
            return  # stopped: the list changed or the window is closing
        path, status, message = item
        self.model.update(path, status=status, message=message)

    def _on_loader_errored(self, exc: BaseException) -> None:
        log.error("Reading the case statuses failed", exc_info=exc)

    def _on_loader_finished(self, worker: object) -> None:
        self._loaders.discard(worker)
        if self._loader is worker:
            self._loader = None
            self.statuses_loaded.emit()

    def _stop_loader(self) -> None:
        if self._loader is not None:
            self._loader.quit()
            self._loader = None

    def entry(self, path: str | Path) -> CaseEntry | None:
        row = self.model.row_of(Path(path))
        return None if row is None else self.model.entries[row]

    def _on_double_clicked(self, index: QModelIndex) -> None:
        path = index.data(PATH_ROLE)
        if path:
            self.slide_activated.emit(str(path))

    # -- batch ----------------------------------------------------------------------------

    def analyze_all(self) -> bool:
        """Start a batch over the listed slides; ``False`` if it did not start."""
        from wsiviewer.core.batch.runner import BatchSettings

        card = self._window.model_panel.card
        paths = [entry.path for entry in self.model.entries]
        if card is None or not paths or self.runner.running:
            return False
        scheduler = self.scheduler_edit.text().strip()
        self._window.settings.setValue(SCHEDULER_SETTING, scheduler)
        settings = BatchSettings(
            card=card,
            device=self._window.device,
            batch_size=self._window.batch_size,
            scheduler=scheduler or None,
        )
        self._labels.clear()
        for entry in self.model.entries:
            # "waiting" until the batch plans the slide (queued, skipped or failed).
            self.model.update(entry.path, batch_state="waiting", percent=0, message="")
        self.runner.start(paths, settings)
        where = scheduler or "a local cluster"
        self.progress_label.setText(f"Starting {where}…")
        self.update_buttons()
        self.batch_started.emit()
        return True

    def cancel_batch(self) -> None:
        if self.runner.running:
            self.progress_label.setText("Cancelling: slides already analysed stay recorded…")
            self.runner.cancel()

    def shutdown(self, timeout_s: float = 60.0) -> bool:
        """The window is closing: stop reading statuses, cancel the batch, and wait for both
        to end (``True`` if they did within ``timeout_s``)."""
        self._stop_loader()
        self.runner.cancel()
        deadline = time.monotonic() + timeout_s
        while self._loaders or self.runner.running:
            if time.monotonic() > deadline:
                return False
            # Their end reaches this thread as queued signals.
            QCoreApplication.processEvents()
            QThread.msleep(10)
        return True

    def _on_cluster_ready(self, info: ClusterInfo) -> None:
        where = "a local cluster" if info.scheduler == "local" else info.scheduler
        text = f"Analysing on {where}: {info.workers} worker(s)."
        if info.dashboard:
            text += f" Dashboard: {info.dashboard}"
        self.progress_label.setText(text)

    def _on_planned(self, row: SlideRow) -> None:
        if row.label:
            self._labels[row.label] = row.path
        self.model.update(row.path, batch_state=row.status, message=row.error)

    def _on_progressed(self, label: str, stage: str, done: int, total: int) -> None:
        path = self._labels.get(label)
        if path is not None:
            percent = 100 * done // total if total else 0
            self.model.update(path, batch_state="running", percent=percent)

    def _on_computed(self, label: str) -> None:
        path = self._labels.get(label)
        entry = None if path is None else self.entry(path)
        if path is not None and entry is not None and entry.batch_state in {"queued", "running"}:
            self.model.update(path, batch_state="saving")

    def _on_finished(self, row: SlideRow) -> None:
        entry = self.entry(row.path)
        if entry is None:
            return
        changes: dict[str, Any] = {"batch_state": row.status, "message": row.error}
        if row.status == "done":
            from wsiviewer.core.batch.cases import CaseStatus

            state = entry.state if entry.state in {"in review", "reviewed"} else "analysed"
            if state == "analysed":
                changes["status"] = CaseStatus(
                    "analysed",
                    analysis_id=row.analysis_id,
                    max_p=row.max_p,
                    regions=row.regions,
                    flagged_area_mm2=row.idc_area_mm2,
                )
            if self._window.slide_path is not None and self._same(
                self._window.slide_path, row.path
            ):
                self._window.show_stored_analysis()
        self.model.update(row.path, **changes)
        self._show_counts()

    def _show_counts(self) -> None:
        states = [entry.batch_state for entry in self.model.entries]
        finished = sum(s in {"done", "skipped", "failed", "cancelled"} for s in states)
        failed = states.count("failed")
        text = f"{finished} of {len(states)} slides finished"
        if failed:
            text += f", {failed} failed (hover for why)"
        self.progress_label.setText(text + ".")

    def _on_batch_finished(self, report: BatchReport) -> None:
        done, skipped = report.count("done"), report.count("skipped")
        failed, cancelled = report.count("failed"), report.count("cancelled")
        text = f"Batch {'cancelled' if report.cancelled else 'finished'} in {report.wall_s:.0f} s: "
        text += f"{done} analysed, {skipped} already analysed"
        if failed:
            text += f", {failed} failed (hover for why)"
        if cancelled:
            text += f", {cancelled} not analysed"
        self.progress_label.setText(text + ".")
        self.batch_finished.emit(report)

    def _on_batch_failed(self, message: str) -> None:
        self.progress_label.setText(f"The batch could not run: {message}")
        for entry in self.model.entries:
            if entry.batch_state in {"waiting", "queued", "running", "saving"}:
                self.model.update(entry.path, batch_state="")
        self._window.show_error("Cannot analyse the folder", message)
        self.batch_finished.emit(None)

    @staticmethod
    def _same(a: Path, b: Path) -> bool:
        try:
            return a.resolve() == b.resolve()
        except OSError:
            return a == b
