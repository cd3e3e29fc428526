"""The heatmap controls: show/hide, colour map, opacity, threshold, the colour bar, and the
histogram of the shown probability map with the threshold as a line."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QRectF, QSize, Qt, Signal
from PySide6.QtGui import QColor, QImage, QPainter, QPaintEvent, QPen
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QSlider,
    QVBoxLayout,
    QWidget,
)

from wsiviewer.core.analysis.grid import PatchGrid
from wsiviewer.core.exports.colormaps import COLORMAP_NAMES, DEFAULT_COLORMAP, load_colormap
from wsiviewer.core.units import um_from_px
from wsiviewer.gui.panels import notice_label
from wsiviewer.gui.plots import THRESHOLD_COLOR, ProbabilityHistogramWidget

#: What the colour bar shows, until a map says its patch size.
DEFAULT_CAPTION = "P(IDC) per patch, model output"

#: Slider steps per unit of opacity and of threshold (sliders are integers: 0–100).
SLIDER_STEPS = 100


class ColorBarWidget(QWidget):
    """The colour map from 0 to 1 with ticks; below the threshold it is greyed out."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._colormap = DEFAULT_COLORMAP
        self._threshold = 0.5
        self.setMinimumHeight(46)

    def set_style(self, colormap: str, threshold: float) -> None:
        self._colormap = colormap
        self._threshold = threshold
        self.update()

    def sizeHint(self) -> QSize:
        return QSize(240, 46)

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        lut = np.ascontiguousarray(load_colormap(self._colormap)[None, :, :])
        image = QImage(lut.data, 256, 1, 3 * 256, QImage.Format.Format_RGB888).copy()
        bar = QRectF(8, 4, self.width() - 16, 16)
        painter.drawImage(bar, image)
        cut = bar.x() + bar.width() * self._threshold
        if self._threshold > 0:
            painter.fillRect(
                QRectF(bar.x(), bar.y(), cut - bar.x(), bar.height()), QColor(255, 255, 255, 190)
            )
            painter.setPen(QPen(QColor(THRESHOLD_COLOR), 2))
            painter.drawLine(int(cut), int(bar.top()) - 2, int(cut), int(bar.bottom()) + 2)
        painter.setPen(self.palette().windowText().color())
        for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
            x = bar.x() + bar.width() * tick
            painter.drawLine(int(x), int(bar.bottom()), int(x), int(bar.bottom()) + 4)
            text = f"{tick:g}"
            width = painter.fontMetrics().horizontalAdvance(text)
            left = min(max(x - width / 2, 0), self.width() - width)
            painter.drawText(
                int(left), int(bar.bottom()) + 6 + painter.fontMetrics().ascent(), text
            )


def _percent_slider(value: int) -> QSlider:
    slider = QSlider(Qt.Orientation.Horizontal)
    slider.setRange(0, SLIDER_STEPS)
    slider.setValue(value)
    return slider


class OverlayPanel(QWidget):
    """Show/hide, colour map, opacity, threshold, colour bar, the shown map's histogram,
    and what the map is.

    Signals
    -------
    style_changed()
        Any control changed; read :attr:`colormap`, :attr:`opacity`, :attr:`threshold`,
        :attr:`visible`.
    """

    style_changed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.visible_box = QCheckBox("Show heatmap (H)")
        self.visible_box.setChecked(True)
        self.colormap_box = QComboBox()
        for name in COLORMAP_NAMES:
            label = f"{name} (default, colour-blind safe)" if name == DEFAULT_COLORMAP else name
            self.colormap_box.addItem(label, name)
        self.opacity_slider = _percent_slider(50)
        self.threshold_slider = _percent_slider(50)
        self.opacity_label = QLabel()
        self.threshold_label = QLabel()
        self.color_bar = ColorBarWidget()
        self.caption = QLabel(DEFAULT_CAPTION)
        self.histogram = ProbabilityHistogramWidget()
        self.histogram.setToolTip(
            "Scored patches of the shown map by P(IDC); drag the line to change the threshold"
        )
        self.analysis_label = QLabel("No analysis for this slide yet.")
        self.analysis_label.setWordWrap(True)
        # The texts escape model names and reasons (html.escape): render them as rich text, or
        # an apostrophe shows as "&#x27;".
        self.analysis_label.setTextFormat(Qt.TextFormat.RichText)
        self.analysis_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self._lay_out()

        self.visible_box.toggled.connect(self._changed)
        self.colormap_box.currentIndexChanged.connect(self._changed)
        self.opacity_slider.valueChanged.connect(self._changed)
        self.threshold_slider.valueChanged.connect(self._changed)
        self.histogram.threshold_dragged.connect(self.set_threshold)
        self._update_labels()

    def _lay_out(self) -> None:
        form = QFormLayout()
        form.addRow(self.visible_box)
        form.addRow("Colour map", self.colormap_box)
        opacity_row = QHBoxLayout()
        opacity_row.addWidget(self.opacity_slider, 1)
        opacity_row.addWidget(self.opacity_label)
        form.addRow("Opacity", opacity_row)
        threshold_row = QHBoxLayout()
        threshold_row.addWidget(self.threshold_slider, 1)
        threshold_row.addWidget(self.threshold_label)
        form.addRow("Hide below", threshold_row)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.caption)
        layout.addWidget(self.color_bar)
        layout.addWidget(self.histogram, 1)
        layout.addWidget(notice_label())
        layout.addWidget(self.analysis_label)

    @property
    def colormap(self) -> str:
        return str(self.colormap_box.currentData())

    @property
    def opacity(self) -> float:
        return self.opacity_slider.value() / SLIDER_STEPS

    @property
    def threshold(self) -> float:
        return self.threshold_slider.value() / SLIDER_STEPS

    @property
    def visible(self) -> bool:
        return self.visible_box.isChecked()

    def set_colormap(self, name: str) -> None:
        index = self.colormap_box.findData(name)
        if index >= 0:
            self.colormap_box.setCurrentIndex(index)

    def set_threshold(self, threshold: float) -> None:
        """Move the "hide below" control (clamped to 0–1, in steps of 0.01)."""
        self.threshold_slider.setValue(round(min(max(threshold, 0.0), 1.0) * SLIDER_STEPS))

    def set_probability_map(self, grid: PatchGrid | None, probabilities: np.ndarray | None) -> None:
        """The map the slide shows (``None``: none): its histogram and its patch size."""
        self.histogram.set_probabilities(probabilities)
        if grid is None:
            self.caption.setText(DEFAULT_CAPTION)
        else:
            patch_um = um_from_px(grid.input_size, grid.model_mpp)
            self.caption.setText(f"P(IDC) per {patch_um:g} µm patch, model output")

    def _update_labels(self) -> None:
        self.opacity_label.setText(f"{self.opacity_slider.value()} %")
        self.threshold_label.setText(f"{self.threshold:.2f}")
        self.color_bar.set_style(self.colormap, self.threshold)
        self.histogram.set_style(self.colormap, self.threshold)

    def _changed(self) -> None:
        self._update_labels()
        self.style_changed.emit()
