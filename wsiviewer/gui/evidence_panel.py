"""Why was this flagged: the evidence of the selected region, beside the review.

:class:`EvidencePanel` shows, for the region selected in the review, its highest patches and a
few of its lowest (:func:`~wsiviewer.core.review.evidence.region_evidence`), each at the model's
input (50×50 px at 4 µm/px, enlarged crisply) and at the slide's resolution, with the map's P,
the patch's P alone and its position; a click on a patch centres the slide on it. Saliency
(Grad-CAM or integrated gradients, :mod:`wsiviewer.core.model.saliency`) is computed on demand,
cached per analysis, and drawn over the model's input with its legend.

Both run on a worker thread that opens its own slide handle and Store connection: the view
never waits, a newer request cancels an older one, and a failure is shown, not swallowed.
"""

from __future__ import annotations

import logging
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QObject, Qt, QThreadPool, Signal
from PySide6.QtGui import QMouseEvent, QPixmap
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)
from superqt.utils import GeneratorWorker

from wsiviewer import WsiViewerError
from wsiviewer.core.exports.evidence_images import (
    KIND_WORDS,
    enlarge,
    fit,
    legend_bar,
    legend_text,
    saliency_rgb,
)
from wsiviewer.core.model.saliency_maps import METHOD_NAMES, METHODS
from wsiviewer.core.review.wording import format_probability
from wsiviewer.gui.analysis import forward_generator
from wsiviewer.gui.images import rgb_to_qimage
from wsiviewer.gui.panels import notice_label

if TYPE_CHECKING:
    from shapely.geometry import Polygon

    from wsiviewer.core.analysis.evidence import EvidencePatch
    from wsiviewer.core.model.saliency_maps import SaliencyMaps
    from wsiviewer.core.review.evidence import RegionEvidence

log = logging.getLogger(__name__)

#: Side, px, of each picture of a patch in the panel (the model's 50 px input ×2).
PICTURE_PX = 100


@dataclass(frozen=True)
class EvidenceRequest:
    """What to explain: a region (its outline and label) of an analysis of a slide file, or
    the cell under a level-0 point (``l0_point``; no outline or label then)."""

    slide_path: Path
    analysis_id: int
    polygon: Polygon | None = None
    region_label: str | None = None
    l0_point: tuple[float, float] | None = None

    @property
    def title(self) -> str:
        if self.l0_point is not None:
            return "The patch here"
        return f"Region {self.region_label}"


def load_evidence(
    request: EvidenceRequest,
) -> Generator[tuple[int, int], None, RegionEvidence]:
    """The region's evidence, read with this thread's own slide handle and Store."""
    from wsiviewer.core.model.cards import available_models
    from wsiviewer.core.review.evidence import point_evidence, region_evidence
    from wsiviewer.core.review.selection import installed_card
    from wsiviewer.core.slides import open_slide
    from wsiviewer.core.store.database import Store

    with open_slide(request.slide_path) as slide, Store.open() as store:
        record = store.analysis(request.analysis_id)
        card = installed_card(record, available_models())
        if request.l0_point is not None:
            yield 0, 1
            return point_evidence(store, slide, record, request.l0_point, card)
        assert request.polygon is not None
        assert request.region_label is not None
        return (
            yield from region_evidence(
                store, slide, record, request.polygon, request.region_label, card
            )
        )


def load_saliency(
    evidence: RegionEvidence,
) -> Generator[tuple[int, int], None, list[SaliencyMaps]]:
    """Saliency of every patch of ``evidence`` (cached per analysis)."""
    from wsiviewer.core.model.saliency import SaliencyExplainer
    from wsiviewer.core.review.evidence import SaliencyCache, patch_saliency
    from wsiviewer.core.store.database import Store
    from wsiviewer.errors import ModelError

    if evidence.card is None:
        raise ModelError("The analysis's model is not installed: its saliency cannot be computed")
    explainer = SaliencyExplainer(evidence.card)
    with Store.open() as store:
        cache = SaliencyCache(store.root, store.analysis(evidence.analysis_id))
        return (yield from patch_saliency(evidence.patches, explainer, cache))


class _Job(QObject):
    """One generator on a worker thread; ``progressed``, ``finished(value)``, ``failed``."""

    progressed = Signal(int, int)
    finished = Signal(object)
    failed = Signal(str)

    def __init__(self, generator: Generator[tuple[int, int], None, Any], parent: QObject) -> None:
        super().__init__(parent)
        self._generator: Generator[tuple[int, int], None, Any] | None = generator
        self.worker: GeneratorWorker[tuple[int, int], None, Any] | None = GeneratorWorker(
            forward_generator, generator
        )
        self.worker.yielded.connect(lambda step: self.progressed.emit(*step))
        self.worker.returned.connect(self.finished.emit)
        self.worker.errored.connect(self._on_errored)
        self.worker.finished.connect(self._on_finished)
        self.worker.start()

    @property
    def running(self) -> bool:
        return self.worker is not None

    def cancel(self) -> None:
        if self.worker is not None:
            self.worker.quit()

    def _on_errored(self, exc: BaseException) -> None:
        if isinstance(exc, WsiViewerError | OSError):
            self.failed.emit(str(exc))
        else:
            log.error("Evidence failed unexpectedly", exc_info=exc)
            self.failed.emit(f"Unexpected error: {type(exc).__name__}: {exc}")

    def _on_finished(self, *_: object) -> None:
        self.worker = None
        generator, self._generator = self._generator, None
        if generator is not None:
            generator.close()  # a cancelled job's slide handle and Store go now
        self.deleteLater()


class EvidenceTile(QFrame):
    """One patch: the model's input (or its saliency), the slide's pixels, a caption; a click
    asks to centre the view on it."""

    clicked = Signal(float, float)

    def __init__(self, patch: EvidencePatch, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.patch = patch
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.setCursor(Qt.CursorShape.PointingHandCursor)
        x_um, y_um = patch.um_centre
        self.setToolTip(
            f"Click to centre the slide on this patch (x {x_um:,.0f} µm, y {y_um:,.0f} µm)"
        )
        self.input_label = QLabel()
        self.input_label.setPixmap(_pixmap(enlarge(patch.model_input, 2)))
        side = patch.model_input.shape[0]
        self.input_label.setToolTip(
            f"What the model saw: {side}×{side} px at {patch.model_um_per_px:g} µm/px, enlarged ×2"
        )
        self.saliency_label = QLabel()
        self.saliency_label.hide()
        self.native_label = QLabel()
        self.native_label.setPixmap(_pixmap(fit(patch.native, PICTURE_PX)))
        self.native_label.setToolTip(
            f"The same patch from the slide at {patch.native_um_per_px:.2g} µm/px"
        )
        self.caption = QLabel(self._caption())
        self.caption.setWordWrap(True)
        pictures = QHBoxLayout()
        pictures.setSpacing(4)
        for label in (self.input_label, self.saliency_label, self.native_label):
            pictures.addWidget(label)
        pictures.addStretch(1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.setSpacing(2)
        layout.addLayout(pictures)
        layout.addWidget(self.caption)

    def _caption(self) -> str:
        patch = self.patch
        text = f"<b>{KIND_WORDS[patch.kind]}</b> · P {format_probability(patch.probability)}"
        if patch.patch_probability is not None:
            text += f" (patch alone {format_probability(patch.patch_probability)})"
        x_um, y_um = patch.um_centre
        return text + f"<br>x {x_um:,.0f} µm, y {y_um:,.0f} µm"

    def show_saliency(self, maps: SaliencyMaps | None, method: str) -> None:
        """Draw ``method``'s map over the model's input beside it (``None`` hides it)."""
        if maps is None:
            self.saliency_label.hide()
            return
        values = maps.method(method)[0]
        overlay = saliency_rgb(self.patch.model_input, values, method)
        self.saliency_label.setPixmap(_pixmap(enlarge(overlay, 2)))
        self.saliency_label.setToolTip(
            f"{METHOD_NAMES[method]} of the patch's IDC log-odds ({float(maps.log_odds[0]):+.2f})"
        )
        self.saliency_label.show()

    def mousePressEvent(self, event: QMouseEvent) -> None:
        # Accepted, so that the release comes here too (QWidget ignores presses).
        if event.button() == Qt.MouseButton.LeftButton:
            event.accept()
        else:
            super().mousePressEvent(event)

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:
        if event.button() == Qt.MouseButton.LeftButton and self.rect().contains(
            event.position().toPoint()
        ):
            l0_x, l0_y, width, height = self.patch.l0_box
            self.clicked.emit(l0_x + width / 2, l0_y + height / 2)
        super().mouseReleaseEvent(event)


def _pixmap(pixels: Any) -> QPixmap:
    return QPixmap.fromImage(rgb_to_qimage(pixels))


class EvidencePanel(QWidget):
    """The selected region's evidence patches and, on demand, their saliency.

    Signals
    -------
    centre_requested(float, float)
        Level-0 ``(x, y)`` of a patch the user clicked.
    evidence_shown(object)
        The :class:`RegionEvidence` now shown.
    saliency_shown()
        The saliency of every shown patch is drawn.
    failed(str)
        A message naming what went wrong (also shown in the panel).
    """

    centre_requested = Signal(float, float)
    evidence_shown = Signal(object)
    saliency_shown = Signal()
    failed = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._request: EvidenceRequest | None = None
        self._evidence: RegionEvidence | None = None
        self._maps: list[SaliencyMaps] | None = None
        self._job: _Job | None = None
        self._saliency_job: _Job | None = None
        self.tiles: list[EvidenceTile] = []

        self.title_label = QLabel("Select a region to see why it was flagged.")
        self.title_label.setWordWrap(True)
        self.progress_bar = QProgressBar()
        self.progress_bar.setTextVisible(True)
        self.progress_bar.hide()
        self.saliency_box = QCheckBox("Saliency")
        self.saliency_box.setToolTip(
            "Which pixels of each patch the network responded to (captum; computed once per "
            "analysis, then cached)"
        )
        self.method_box = QComboBox()
        for method in METHODS:
            self.method_box.addItem(METHOD_NAMES[method], method)
        self.legend_bar = QLabel()
        self.legend_text = QLabel()
        self.legend_text.setWordWrap(True)
        self.columns_label = QLabel()
        self.columns_label.setStyleSheet("color: #555;")
        self.columns_label.hide()
        self.tile_area = QScrollArea()
        self.tile_area.setWidgetResizable(True)
        self._tile_host = QWidget()
        self._tile_grid = QGridLayout(self._tile_host)
        self._tile_grid.setAlignment(Qt.AlignmentFlag.AlignTop)
        self.tile_area.setWidget(self._tile_host)

        controls = QHBoxLayout()
        controls.addWidget(self.saliency_box)
        controls.addWidget(self.method_box, 1)
        legend = QHBoxLayout()
        legend.addWidget(self.legend_bar)
        legend.addWidget(self.legend_text, 1)
        layout = QVBoxLayout(self)
        layout.addWidget(self.title_label)
        layout.addWidget(self.progress_bar)
        layout.addLayout(controls)
        layout.addLayout(legend)
        layout.addWidget(self.columns_label)
        layout.addWidget(self.tile_area, 1)
        layout.addWidget(
            notice_label("Research use only: patches and saliency explain the model, not the case.")
        )
        self.saliency_box.toggled.connect(self._on_saliency_toggled)
        self.method_box.currentIndexChanged.connect(lambda _=0: self._draw_saliency())
        self._update_legend()

    # -- state --------------------------------------------------------------------------------

    @property
    def evidence(self) -> RegionEvidence | None:
        return self._evidence

    @property
    def request(self) -> EvidenceRequest | None:
        """The region shown or being read."""
        return self._request

    @property
    def method(self) -> str:
        return str(self.method_box.currentData())

    @property
    def busy(self) -> bool:
        return any(job is not None and job.running for job in (self._job, self._saliency_job))

    # -- requests -----------------------------------------------------------------------------

    def show_region(self, request: EvidenceRequest) -> None:
        """Read the evidence of a region (again, if it is the one shown: its outline may
        have changed); a request in flight is cancelled."""
        self._cancel_jobs()
        self._request = request
        self._set_evidence(None)
        self.title_label.setText(f"{request.title}: reading its patches…")
        self._start_progress("Reading patches")
        job = _Job(load_evidence(request), self)
        job.progressed.connect(self._on_progress)
        job.finished.connect(lambda evidence, job=job: self._on_evidence(job, evidence))
        job.failed.connect(lambda message, job=job: self._on_failed(job, message))
        self._job = job

    def clear(self, text: str = "Select a region to see why it was flagged.") -> None:
        self._cancel_jobs()
        self._request = None
        self._set_evidence(None)
        self.progress_bar.hide()
        self.title_label.setText(text)

    def shutdown(self, timeout_ms: int = 30_000) -> bool:
        """Cancel any work and wait for its thread (the window is closing)."""
        self._cancel_jobs()
        return QThreadPool.globalInstance().waitForDone(timeout_ms)

    def _cancel_jobs(self) -> None:
        for job in (self._job, self._saliency_job):
            if job is not None:
                job.cancel()
        self._job = self._saliency_job = None

    # -- results ------------------------------------------------------------------------------

    def _on_progress(self, done: int, total: int) -> None:
        self.progress_bar.setRange(0, max(total, 1))
        self.progress_bar.setValue(done)

    def _start_progress(self, what: str) -> None:
        self.progress_bar.setRange(0, 0)
        self.progress_bar.setFormat(f"{what} %v of %m")
        self.progress_bar.show()

    def _on_evidence(self, job: _Job, evidence: RegionEvidence) -> None:
        if job is not self._job:
            return  # a stale answer to an older request
        self._job = None
        self.progress_bar.hide()
        self._set_evidence(evidence)
        shown, cells = len(evidence.patches), evidence.cell_count
        if not shown:
            self.title_label.setText(f"{evidence.title}: no tissue cell inside its outline.")
        elif evidence.region_label is None:
            (patch,) = evidence.patches
            row, col = patch.grid_rc
            self.title_label.setText(
                f"<b>The patch here</b> (cell row {row}, col {col}), as the model saw it. "
                "Click it to centre the slide on it."
            )
        else:
            top = sum(patch.kind == "top" for patch in evidence.patches)
            lowest = shown - top
            which = (
                f"all {shown} of its patches"
                if shown == cells
                else f"its {top} highest and {lowest} lowest of {cells} patches"
            )
            self.title_label.setText(
                f"<b>{evidence.title}</b>: {which}, highest first. Click one to centre the "
                "slide on it."
            )
        self._update_columns()
        self.evidence_shown.emit(evidence)
        if self.saliency_box.isChecked():
            self._start_saliency()

    def _on_failed(self, job: _Job, message: str) -> None:
        if job is not self._job and job is not self._saliency_job:
            return
        if job is self._saliency_job:
            self.saliency_box.setChecked(False)
        self._job = self._saliency_job = None
        self.progress_bar.hide()
        self.title_label.setText(f"Could not show the evidence: {message}")
        self.failed.emit(message)

    def _set_evidence(self, evidence: RegionEvidence | None) -> None:
        self._evidence = evidence
        self._maps = None
        for tile in self.tiles:
            self._tile_grid.removeWidget(tile)
            # Off screen now: deleteLater waits for the event loop.
            tile.hide()
            tile.setParent(None)
            tile.deleteLater()
        self.tiles = []
        if evidence is None:
            self.columns_label.hide()
            return
        for index, patch in enumerate(evidence.patches):
            tile = EvidenceTile(patch)
            tile.clicked.connect(self.centre_requested)
            self._tile_grid.addWidget(tile, index, 0)
            self.tiles.append(tile)

    # -- saliency -----------------------------------------------------------------------------

    def set_saliency(self, on: bool) -> None:
        self.saliency_box.setChecked(on)

    def _on_saliency_toggled(self, on: bool) -> None:
        self._update_legend()
        if not on:
            if self._saliency_job is not None:
                self._saliency_job.cancel()
                self._saliency_job = None
                self.progress_bar.hide()
            self._draw_saliency()
            return
        if self._maps is not None:
            self._draw_saliency()
        elif self._evidence is not None and self._job is None:
            self._start_saliency()

    def _start_saliency(self) -> None:
        evidence = self._evidence
        if evidence is None or not evidence.patches or self._saliency_job is not None:
            return
        self._start_progress("Saliency")
        job = _Job(load_saliency(evidence), self)
        job.progressed.connect(self._on_progress)
        job.finished.connect(lambda maps, job=job: self._on_saliency(job, evidence, maps))
        job.failed.connect(lambda message, job=job: self._on_failed(job, message))
        self._saliency_job = job

    def _on_saliency(self, job: _Job, evidence: RegionEvidence, maps: list[SaliencyMaps]) -> None:
        if job is not self._saliency_job or evidence is not self._evidence:
            return
        self._saliency_job = None
        self.progress_bar.hide()
        self._maps = maps
        self._draw_saliency()
        self.saliency_shown.emit()

    def _draw_saliency(self) -> None:
        self._update_legend()
        show = self.saliency_box.isChecked() and self._maps is not None
        for index, tile in enumerate(self.tiles):
            tile.show_saliency(self._maps[index] if show and self._maps else None, self.method)
        self._update_columns()

    def _update_columns(self) -> None:
        mpp = self.tiles[0].patch.model_um_per_px if self.tiles else None
        columns = [f"model input ({mpp:g} µm/px, ×2)" if mpp else "model input (×2)"]
        if self.saliency_box.isChecked() and self._maps is not None:
            columns.append(METHOD_NAMES[self.method])
        columns.append("slide")
        self.columns_label.setText(" · ".join(columns))
        self.columns_label.setVisible(bool(self.tiles))

    def _update_legend(self) -> None:
        on = self.saliency_box.isChecked()
        self.method_box.setEnabled(on)
        self.legend_bar.setVisible(on)
        self.legend_text.setVisible(on)
        if on:
            self.legend_bar.setPixmap(_pixmap(legend_bar(120, self.method)))
            self.legend_text.setText(legend_text(self.method))
