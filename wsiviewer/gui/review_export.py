"""Exporting a review: the dialog that asks what and where, the question before replacing
files, and writing the files.

The files are written by core (:func:`wsiviewer.core.exports.review_outputs.export_review`),
exactly as ``wsiviewer export`` writes them, named after the slide's label; this module only
asks, and remembers the folder: the dialog opens in the folder used last. An export never
replaces files unasked (:func:`export_asking`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import QSettings, Qt
from PySide6.QtWidgets import (
    QApplication,
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from wsiviewer.errors import OutputExistsError
from wsiviewer.gui.panels import notice_label

if TYPE_CHECKING:
    from wsiviewer.core.model.cards import ModelCard
    from wsiviewer.core.slides import Slide
    from wsiviewer.core.store.database import Store

#: QSettings key of the last export folder.
EXPORT_DIR_KEY = "review/export_dir"


class ExportDialog(QDialog):
    """What to export from the review, and where."""

    def __init__(self, folder: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Export review")
        self.folder_edit = QLineEdit(folder)
        browse = QPushButton("Choose…")
        browse.clicked.connect(self._browse)
        self.geojson_box = QCheckBox("Regions as GeoJSON (QuPath)")
        self.mask_box = QCheckBox("Region mask (TIFF and PNG)")
        self.csv_box = QCheckBox("Regions table (CSV)")
        self.report_box = QCheckBox("Report")
        for box in (self.geojson_box, self.mask_box, self.csv_box, self.report_box):
            box.setChecked(True)
        self.accepted_only_box = QCheckBox("Accepted regions only")
        self.accepted_only_box.setToolTip(
            "Leave out pending and rejected regions (the report still counts them)"
        )
        self.include_name_box = QCheckBox("Name the files after the slide's file")
        self.include_name_box.setToolTip(
            "Off by default: files are named slide-<hash>_… and never name the slide unless "
            "you ask (privacy)"
        )
        folder_row = QHBoxLayout()
        folder_row.addWidget(self.folder_edit, 1)
        folder_row.addWidget(browse)
        form = QFormLayout()
        form.addRow("Folder", folder_row)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        for widget in (
            self.geojson_box,
            self.mask_box,
            self.csv_box,
            self.report_box,
            self.accepted_only_box,
            self.include_name_box,
        ):
            layout.addWidget(widget)
        layout.addWidget(notice_label("Every exported file says: research use only."))
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Export into", self.folder_edit.text())
        if folder:
            self.folder_edit.setText(folder)

    @property
    def folder(self) -> Path:
        return Path(self.folder_edit.text()).expanduser()

    @property
    def kinds(self) -> list[str]:
        chosen = (
            ("geojson", self.geojson_box),
            ("mask", self.mask_box),
            ("csv", self.csv_box),
            ("report", self.report_box),
        )
        return [kind for kind, box in chosen if box.isChecked()]


@dataclass(frozen=True)
class ExportChoice:
    """What the user chose to export, and where."""

    folder: Path
    #: ``geojson``, ``mask``, ``csv``, ``report`` (may be empty).
    kinds: tuple[str, ...]
    accepted_only: bool
    #: The slide's file name, only if the user asked for it in the files.
    slide_name: str | None
    #: The label the files are named after when the user asked for the file name (the
    #: cleaned file stem); ``None``: the default ``slide-<hash>``.
    label: str | None = None


def ask_export(
    parent: QWidget, settings: QSettings, slide_path: Path | None
) -> ExportChoice | None:
    """Ask with :class:`ExportDialog` (starting in the last export folder, which it then
    remembers); ``None`` if cancelled."""
    dialog = ExportDialog(last_export_folder(settings), parent)
    if dialog.exec() != QDialog.DialogCode.Accepted:
        return None
    kinds = tuple(dialog.kinds)
    if kinds:
        settings.setValue(EXPORT_DIR_KEY, str(dialog.folder))
    include_name = slide_path is not None and dialog.include_name_box.isChecked()
    label = None
    if include_name and slide_path is not None:
        from wsiviewer.core.slides.label import slide_label

        label = slide_label("", slide_path, include_filename=True)
        label = None if label.startswith("slide-") else label
    return ExportChoice(
        dialog.folder,
        kinds,
        dialog.accepted_only_box.isChecked(),
        slide_path.name if include_name and slide_path is not None else None,
        label,
    )


def last_export_folder(settings: QSettings) -> str:
    """The folder the user exported to last (any export, or a view saved as an image), else
    the home folder."""
    saved = settings.value(EXPORT_DIR_KEY)
    if isinstance(saved, str) and saved and Path(saved).is_dir():
        return saved
    return str(Path.home())


def write_review_export(
    store: Store,
    region_set_id: int,
    choice: ExportChoice,
    *,
    slide: Slide | None = None,
    card: ModelCard | None = None,
    force: bool = False,
) -> dict[str, Path]:
    """Write a region set's review as chosen (what, where, how named); the written files by
    name.

    ``card`` describes the analysis in the files only if it is the analysis's model. Files
    that exist are replaced only with ``force``.

    Raises
    ------
    OutputExistsError
        If files of this export exist and ``force`` is false (nothing is written).
    WsiViewerError, OSError
        If the review cannot be read or a file cannot be written.
    """
    from wsiviewer.core.exports.review_outputs import export_review, load_review_export

    export = load_review_export(store, region_set_id)
    if card is not None and card.weights_sha256 != export.analysis.model.weights_sha256:
        card = None  # another model's card would misdescribe the analysis
    return export_review(
        choice.folder,
        export,
        choice.kinds,
        slide=slide,
        accepted_only=choice.accepted_only,
        card=card,
        slide_name=choice.slide_name,
        label=choice.label,
        force=force,
    )


def export_asking(
    store: Store,
    region_set_id: int,
    choice: ExportChoice,
    confirm: Callable[[Sequence[str]], bool],
    *,
    slide: Slide | None = None,
    card: ModelCard | None = None,
) -> dict[str, Path] | None:
    """:func:`write_review_export` under a wait cursor; if it would replace files, ask
    ``confirm(paths)`` and, if it says so, write again replacing them. The written files by
    name, ``None`` if the user keeps the files (nothing is written).

    Raises
    ------
    WsiViewerError, OSError
        If the review cannot be read or a file cannot be written.
    """
    force = False
    while True:
        QApplication.setOverrideCursor(Qt.CursorShape.WaitCursor)
        try:
            return write_review_export(
                store, region_set_id, choice, slide=slide, card=card, force=force
            )
        except OutputExistsError as exc:
            existing = exc.paths
        finally:
            QApplication.restoreOverrideCursor()
        if force or not confirm(existing):
            return None
        force = True


def overwrite_box(parent: QWidget, paths: Sequence[str]) -> QMessageBox:
    """The question asked before an export replaces files (No is the default)."""
    names = "\n".join(Path(path).name for path in paths[:8])
    more = f"\n… and {len(paths) - 8} more" if len(paths) > 8 else ""
    box = QMessageBox(
        QMessageBox.Icon.Question,
        "Replace files?",
        f"{len(paths)} file(s) of this export exist in the folder:\n\n{names}{more}\n\n"
        "Replace them? (No keeps them, and nothing is written.)",
        QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
        parent,
    )
    box.button(QMessageBox.StandardButton.Yes).setText("Replace")
    box.setDefaultButton(QMessageBox.StandardButton.No)
    return box
