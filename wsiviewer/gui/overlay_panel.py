"""The heatmap controls: show/hide, colour map, opacity, THE threshold, the colour bar with
its alpha ramp, and the histogram of the shown probability map with the threshold as a line.

The threshold is one value for the heatmap and the regions (issue 13): the heatmap is opaque
from it up and fades below it, and the regions outlined on the slide are the patches at or
above it. It belongs to the region set shown (the card's operating point unless the user picks
another), so it changes with the slide, never carried from one slide to the next. Moving the
slider or the histogram's line recolours the heatmap live; letting go asks for the region set
at that threshold (:attr:`OverlayPanel.threshold_chosen`).
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QRectF, QSize, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QImage, QPainter, QPaintEvent, QPen
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QSlider,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from wsiviewer.core.analysis.grid import PatchGrid
from wsiviewer.core.exports.colormaps import COLORMAP_NAMES, DEFAULT_COLORMAP, legend_rgba
from wsiviewer.core.exports.legend import checkerboard, over
from wsiviewer.core.review.wording import format_threshold, map_units
from wsiviewer.core.units import um_from_px
from wsiviewer.gui.panels import notice_label
from wsiviewer.gui.plots import THRESHOLD_COLOR, ProbabilityHistogramWidget

#: What the colour bar shows, until a map says its patch size.
DEFAULT_CAPTION = "P(IDC) per patch, model output"

#: Opacity slider steps (0–100 %).
OPACITY_STEPS = 100
#: Threshold slider steps per unit: 0.001, the threshold's shown precision.
THRESHOLD_STEPS = 1000

#: The threshold shown before any map (a map's region set replaces it).
NO_MAP_THRESHOLD = 0.5

#: A threshold moved by keys or clicks is committed once it rests this long (ms).
COMMIT_DELAY_MS = 400


class ColorBarWidget(QWidget):
    """The colour map from 0 to 1 with its alpha ramp over a checkerboard (what shows the
    tissue through), ticks, and the threshold marked."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._colormap = DEFAULT_COLORMAP
        self._threshold = NO_MAP_THRESHOLD
        self.setMinimumHeight(46)
        self.setToolTip(
            "P(IDC) from 0 (left) to 1: the heatmap is opaque from the threshold up and fades "
            "to transparent below it, so the tissue stays readable under low probabilities"
        )

    def set_style(self, colormap: str, threshold: float) -> None:
        self._colormap = colormap
        self._threshold = threshold
        self.update()

    def sizeHint(self) -> QSize:
        return QSize(240, 46)

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        bar = QRectF(8, 4, max(self.width() - 16, 2), 16)
        width, height = int(bar.width()), int(bar.height())
        pixels = np.ascontiguousarray(
            over(
                checkerboard(height, width, 4),
                legend_rgba(width, height, self._threshold, self._colormap),
            )
        )
        image = QImage(pixels.data, width, height, 3 * width, QImage.Format.Format_RGB888).copy()
        painter.drawImage(bar, image)
        painter.setPen(QPen(self.palette().mid().color(), 1))
        painter.drawRect(bar)
        cut = bar.x() + bar.width() * min(max(self._threshold, 0.0), 1.0)
        painter.setPen(QPen(QColor(THRESHOLD_COLOR), 2))
        painter.drawLine(int(cut), int(bar.top()) - 3, int(cut), int(bar.bottom()) + 3)
        painter.setPen(self.palette().windowText().color())
        metrics = painter.fontMetrics()
        for tick in (0.0, 0.5, 1.0):
            x = bar.x() + bar.width() * tick
            painter.drawLine(int(x), int(bar.bottom()), int(x), int(bar.bottom()) + 4)
            text = f"{tick:g}"
            text_width = metrics.horizontalAdvance(text)
            left = min(max(x - text_width / 2, 0), self.width() - text_width)
            painter.drawText(int(left), int(bar.bottom()) + 6 + metrics.ascent(), text)


def _slider(maximum: int, value: int) -> QSlider:
    slider = QSlider(Qt.Orientation.Horizontal)
    slider.setRange(0, maximum)
    slider.setValue(value)
    return slider


class OverlayPanel(QWidget):
    """Show/hide, colour map, opacity, the threshold, colour bar, the shown map's histogram,
    and what the map is.

    Signals
    -------
    style_changed()
        Any control changed (the threshold too, live while it moves); read
        :attr:`colormap`, :attr:`opacity`, :attr:`threshold`, :attr:`visible`.
    threshold_chosen(float)
        The user let go of a new threshold (slider, keys, histogram line, card button): the
        region set at it should be shown.
    """

    style_changed = Signal()
    threshold_chosen = Signal(float)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._card_threshold: float | None = None
        self._committed = NO_MAP_THRESHOLD
        self.visible_box = QCheckBox("Show heatmap (H)")
        self.visible_box.setChecked(True)
        self.colormap_box = QComboBox()
        # The dock stays narrow: the box shrinks rather than the panel scrolling sideways.
        self.colormap_box.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
        )
        self.colormap_box.setMinimumContentsLength(8)
        for name in COLORMAP_NAMES:
            label = f"{name} (default, colour-blind safe)" if name == DEFAULT_COLORMAP else name
            self.colormap_box.addItem(label, name)
        self.opacity_slider = _slider(OPACITY_STEPS, 60)
        self.threshold_slider = _slider(THRESHOLD_STEPS, round(NO_MAP_THRESHOLD * THRESHOLD_STEPS))
        self.threshold_slider.setPageStep(10)
        self.threshold_slider.setToolTip(
            "One threshold for the heatmap and the regions: patches at or above it are flagged "
            "and outlined, the heatmap is opaque from it up and fades below it. It is kept "
            "with the region set of this slide."
        )
        self.card_button = QToolButton()
        self.card_button.setText("Card's")
        self.card_button.setToolTip("Back to the model card's operating point")
        self.card_button.setEnabled(False)
        self.opacity_label = QLabel()
        self.threshold_label = QLabel()
        self.threshold_label.setObjectName("threshold_value")
        self.color_bar = ColorBarWidget()
        self.caption = QLabel(DEFAULT_CAPTION)
        self.caption.setWordWrap(True)
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
        # Dragging recolours live; the region set is asked for once, when the slider settles:
        # on release after a drag, or once keys and clicks have rested a moment.
        self._commit_timer = QTimer(self)
        self._commit_timer.setSingleShot(True)
        self._commit_timer.setInterval(COMMIT_DELAY_MS)
        self._commit_timer.timeout.connect(self._commit_threshold)
        self.threshold_slider.valueChanged.connect(self._on_slider_moved)
        self.threshold_slider.sliderReleased.connect(self._commit_threshold)
        self.histogram.threshold_dragged.connect(self._on_line_dragged)
        self.histogram.threshold_released.connect(self._on_line_released)
        self.card_button.clicked.connect(self._back_to_card)
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
        threshold_row.addWidget(self.card_button)
        form.addRow("Threshold P ≥", threshold_row)
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
        return self.opacity_slider.value() / OPACITY_STEPS

    @property
    def threshold(self) -> float:
        """The threshold shown: the region set's exactly (e.g. the card's 0.137872), or the
        slider's value while the user moves it."""
        slider_value = self.threshold_slider.value() / THRESHOLD_STEPS
        if round(self._committed * THRESHOLD_STEPS) == self.threshold_slider.value():
            return self._committed
        return slider_value

    @property
    def visible(self) -> bool:
        return self.visible_box.isChecked()

    def set_colormap(self, name: str) -> None:
        index = self.colormap_box.findData(name)
        if index >= 0:
            self.colormap_box.setCurrentIndex(index)

    def set_threshold(self, threshold: float, *, card_threshold: float | None = None) -> None:
        """Show the region set's threshold (kept exactly; the slider rounds to 0.001);
        ``card_threshold`` is the model card's, for the "Card's" button. Emits no
        :attr:`threshold_chosen`."""
        self._committed = min(max(float(threshold), 0.0), 1.0)
        if card_threshold is not None:
            self._card_threshold = card_threshold
        self.card_button.setEnabled(
            self._card_threshold is not None
            and format_threshold(self._card_threshold) != format_threshold(self._committed)
        )
        if self._card_threshold is not None:
            self.card_button.setToolTip(
                f"Back to the model card's operating point, P ≥ "
                f"{format_threshold(self._card_threshold)}"
            )
        self.threshold_slider.blockSignals(True)
        self.threshold_slider.setValue(round(self._committed * THRESHOLD_STEPS))
        self.threshold_slider.blockSignals(False)
        self._changed()

    def choose_threshold(self, threshold: float) -> None:
        """As if the user picked ``threshold`` (tests, the histogram): move and commit."""
        self.threshold_slider.setValue(round(min(max(threshold, 0.0), 1.0) * THRESHOLD_STEPS))
        self._commit_threshold()

    def set_probability_map(self, grid: PatchGrid | None, probabilities: np.ndarray | None) -> None:
        """The map the slide shows (``None``: none): its histogram and its patch size."""
        units = map_units(grid.subdivision if grid is not None else 1)
        self.histogram.set_probabilities(probabilities, units)
        if grid is None:
            self.caption.setText(DEFAULT_CAPTION)
        else:
            patch_um = um_from_px(grid.input_size, grid.model_mpp)
            what = (
                f"{patch_um:g} µm patch"
                if grid.subdivision == 1
                else f"{patch_um / grid.subdivision:g} µm cell (dense: the mean of the "
                f"{grid.subdivision**2} {patch_um:g} µm patches covering it)"
            )
            self.caption.setText(f"P(IDC) per {what}, model output; opaque from the threshold up")

    def _update_labels(self) -> None:
        self.opacity_label.setText(f"{self.opacity_slider.value()} %")
        self.threshold_label.setText(format_threshold(self.threshold))
        self.color_bar.set_style(self.colormap, self.threshold)
        self.histogram.set_style(self.colormap, self.threshold)

    def _changed(self) -> None:
        self._update_labels()
        self.style_changed.emit()

    def _on_slider_moved(self) -> None:
        if not self.threshold_slider.isSliderDown():
            self._commit_timer.start()

    def _commit_threshold(self) -> None:
        self._commit_timer.stop()
        value = self.threshold_slider.value() / THRESHOLD_STEPS
        if round(self._committed * THRESHOLD_STEPS) == self.threshold_slider.value():
            return
        self._committed = value
        self.threshold_chosen.emit(value)

    def _on_line_dragged(self, threshold: float) -> None:
        self.threshold_slider.setValue(round(threshold * THRESHOLD_STEPS))

    def _on_line_released(self, threshold: float) -> None:
        self.threshold_slider.setValue(round(threshold * THRESHOLD_STEPS))
        self._commit_threshold()

    def _back_to_card(self) -> None:
        if self._card_threshold is None:
            return
        value = self._card_threshold
        self.set_threshold(value)
        self.threshold_chosen.emit(value)
