"""Help › About this model: the model explained, with example patches of where it fails.

The page is :func:`wsiviewer.core.model.about.describe_model`'s HTML. Below it, when the IDC
dataset's folder is known (chosen here and remembered, or ``WSIVIEWER_IDC_DATA``), a worker
scores the weakest patients' patches (:mod:`wsiviewer.training.failure_examples`) and the
gallery shows the model's most confident errors as they arrive. The worker stops when the
dialog closes; nothing it makes is written anywhere.
"""

from __future__ import annotations

import logging
from collections.abc import Generator
from pathlib import Path

from PySide6.QtCore import QSettings, QSize, Qt, Signal
from PySide6.QtGui import QCloseEvent, QIcon, QPixmap
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QListView,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSplitter,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)
from superqt.utils import GeneratorWorker

from wsiviewer import WsiViewerError
from wsiviewer.core.model.about import IDC_DATA_ENV, ModelDescription, describe_model
from wsiviewer.core.model.cards import ModelCard
from wsiviewer.errors import ModelError
from wsiviewer.gui.images import rgb_to_qimage
from wsiviewer.gui.panels import NOTICE_STYLE
from wsiviewer.training.failure_examples import (
    ExamplesProgress,
    FailureExample,
    FailureExamples,
    enlarged,
    failure_examples,
)

log = logging.getLogger(__name__)

#: QSettings key of the IDC dataset folder chosen in the dialog.
IDC_FOLDER_KEY = "about_model/idc_folder"
#: Each example is shown this many times larger (each px a block).
GALLERY_SCALE = 2


def _examples(
    card: ModelCard, folder: Path, description: ModelDescription
) -> Generator[ExamplesProgress, None, FailureExamples]:
    """The worker's generator: failure examples, the model loaded one load at a time (torch's
    ONNX export is not thread-safe) and torch's RuntimeErrors made ours (superqt would turn
    them into warnings)."""
    from wsiviewer.core.model.predictor import Predictor
    from wsiviewer.gui.analysis import _LOAD_LOCK

    try:
        with _LOAD_LOCK:
            predictor = Predictor(card, device="cpu")
        return (yield from failure_examples(card, folder, description, predictor=predictor))
    except RuntimeError as exc:
        raise ModelError(f"Scoring the example patches failed: {exc}") from exc


class AboutModelDialog(QDialog):
    """What the model is, how it was tested, where it does worst, with example patches.

    Signals
    -------
    examples_finished(str)
        The example worker stopped; the text says how (what the status line shows).
    """

    examples_finished = Signal(str)

    def __init__(
        self,
        card: ModelCard,
        settings: QSettings | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.card = card
        self.settings = settings
        self.description = describe_model(card)
        self.setWindowTitle(f"About this model: {card.name} {card.version}")
        self._worker: GeneratorWorker[ExamplesProgress, None, FailureExamples] | None = None
        self._count = 0

        self.browser = QTextBrowser()
        self.browser.setOpenLinks(False)
        self.browser.setHtml(self.description.to_html())
        self.gallery = QListWidget()
        self.gallery.setViewMode(QListView.ViewMode.IconMode)
        self.gallery.setMovement(QListView.Movement.Static)
        self.gallery.setResizeMode(QListView.ResizeMode.Adjust)
        self.gallery.setWrapping(True)
        self.gallery.setWordWrap(True)
        self.gallery.setSpacing(6)
        side = self.card.input_size * GALLERY_SCALE
        self.gallery.setIconSize(QSize(side, side))
        self.gallery.setGridSize(QSize(side + 64, side + 64))
        self.gallery.setSelectionMode(QListWidget.SelectionMode.NoSelection)
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.choose_button = QPushButton("Choose dataset folder…")
        self.choose_button.setToolTip(
            "The IDC dataset's folder (<patient>/<0|1>/<patch> files): example patches are made "
            "from it on this computer, never shipped or saved"
        )
        self.choose_button.clicked.connect(self.choose_folder)

        examples = QWidget()
        examples_layout = QVBoxLayout(examples)
        examples_layout.setContentsMargins(0, 0, 0, 0)
        heading = QLabel("<b>Example patches: the model's most confident errors</b>")
        examples_layout.addWidget(heading)
        examples_layout.addWidget(self.gallery, 1)
        row = QHBoxLayout()
        row.addWidget(self.status, 1)
        row.addWidget(self.choose_button, 0, Qt.AlignmentFlag.AlignTop)
        examples_layout.addLayout(row)
        splitter = QSplitter(Qt.Orientation.Vertical)
        splitter.addWidget(self.browser)
        splitter.addWidget(examples)
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 2)
        splitter.setChildrenCollapsible(False)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(splitter, 1)
        layout.addWidget(buttons)
        self.resize(900, 900)
        self.start_examples(self.dataset_folder())

    # -- the dataset ---------------------------------------------------------------------------

    def dataset_folder(self) -> Path | None:
        """The folder chosen before (remembered), else ``WSIVIEWER_IDC_DATA``; ``None`` if
        neither names a folder."""
        from wsiviewer.core.model.about import idc_data_folder

        chosen = self.settings.value(IDC_FOLDER_KEY) if self.settings is not None else None
        return idc_data_folder(str(chosen) if chosen else None)

    def choose_folder(self, folder: str | Path | None = None) -> None:
        """Ask for the IDC dataset's folder (or take ``folder``), remember it, make examples."""
        if not folder:
            start = str(self.dataset_folder() or Path.home())
            folder = QFileDialog.getExistingDirectory(self, "IDC dataset folder", start)
            if not folder:
                return
        if self.settings is not None:
            self.settings.setValue(IDC_FOLDER_KEY, str(folder))
        self.start_examples(Path(folder))

    # -- the worker ----------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._worker is not None

    def start_examples(self, folder: Path | None) -> None:
        """Score the weak patients of ``folder`` on a worker; without one, say where the
        examples would come from."""
        self.stop_examples()
        self.gallery.clear()
        self._count = 0
        patients = self.description.weak_patients
        if not patients:
            self._set_status("This model's report names no weak patients to show examples of.")
            self.choose_button.setEnabled(False)
            return
        if folder is None:
            self._set_status(
                "Example patches are made on this computer from the IDC dataset "
                f"(patients {', '.join(p.patient for p in patients)}), which is not shipped "
                "with wsiviewer: choose its folder (the one holding <patient>/<0|1>/<patch> "
                f"files), or set {IDC_DATA_ENV}."
            )
            return
        self._set_status(f"Scoring the patches of {len(patients)} patients from {folder} …")
        worker: GeneratorWorker[ExamplesProgress, None, FailureExamples] = GeneratorWorker(
            _examples, self.card, folder, self.description
        )
        worker.yielded.connect(self._on_yielded)
        worker.returned.connect(self._on_returned)
        worker.errored.connect(self._on_errored)
        worker.finished.connect(lambda *_: self._on_finished(worker))
        self._worker = worker
        worker.start()

    def stop_examples(self) -> None:
        """Ask the worker to stop after the patient in progress."""
        if self._worker is not None:
            self._worker.quit()
            self._worker = None
            self.examples_finished.emit("stopped")

    def _on_yielded(self, progress: ExamplesProgress) -> None:
        if self._worker is None:
            return  # stopped
        for example in progress.examples:
            self._add(example)
        note = " (not in the folder)" if progress.missing else ""
        self._set_status(
            f"Patient {progress.patient}{note}: {progress.done} of {progress.total} patients "
            f"scored, {self._count} examples …"
        )

    def _add(self, example: FailureExample) -> None:
        pixmap = QPixmap.fromImage(rgb_to_qimage(enlarged(example.pixels, GALLERY_SCALE)))
        text = (
            f"{example.patient} · {example.true_class}\nP(IDC) {example.probability:.2f}\n"
            f"{example.error}"
        )
        item = QListWidgetItem(QIcon(pixmap), text)
        item.setToolTip(f"{example.caption}\n{example.source}")
        item.setTextAlignment(Qt.AlignmentFlag.AlignHCenter)
        self.gallery.addItem(item)
        self._count += 1

    def _on_returned(self, result: FailureExamples) -> None:
        if self._worker is None:
            return
        shipped = (
            "scored by the shipped model, which was trained on these patients"
            if self.description.trained_on_named_patients
            else "scored by the model, which never saw these patients"
        )
        text = (
            f"{len(result.examples)} most confident errors at P(IDC) ≥ "
            f"{self.card.threshold:.2f} ({shipped}), from {result.folder}."
        )
        if result.missing:
            text += f" Not in the folder: patients {', '.join(result.missing)}."
        if not result.examples:
            text += " The model makes no such errors on these patients' patches."
        self._set_status(text)

    def _on_errored(self, exc: BaseException) -> None:
        if self._worker is None:
            return  # stopped: the dialog no longer shows this folder's examples
        if isinstance(exc, WsiViewerError | OSError):
            message = str(exc)
        else:
            log.error("Making the example patches failed", exc_info=exc)
            message = f"Unexpected error: {type(exc).__name__}: {exc}"
        self._set_status(f"Cannot make the example patches: {message}", error=True)

    def _on_finished(self, worker: object) -> None:
        if self._worker is worker:
            self._worker = None
            self.examples_finished.emit(self.status.text())

    def _set_status(self, text: str, *, error: bool = False) -> None:
        self.status.setStyleSheet(NOTICE_STYLE if error else "")
        self.status.setText(text)

    # -- closing -------------------------------------------------------------------------------

    def done(self, result: int) -> None:
        self.stop_examples()
        super().done(result)

    def closeEvent(self, event: QCloseEvent) -> None:
        self.stop_examples()
        super().closeEvent(event)
