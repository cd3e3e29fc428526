"""Interactive plots (pyqtgraph): the shown map's probability histogram and a model's
shipped evaluation (operating points in ROC space, calibration and ROC AUC per patient).

Every plot pans and zooms with the mouse, right-click offers "View all" and export, and
hovering a point names it. Colours come from the Okabe–Ito palette (safe for the common
colour-vision deficiencies) and series differ by marker shape too, never by colour alone.
This is the only module that imports pyqtgraph.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QCheckBox, QHBoxLayout, QLabel, QVBoxLayout, QWidget

from wsiviewer.core.exports.colormaps import DEFAULT_COLORMAP, load_colormap, ramp_alpha
from wsiviewer.core.review.wording import format_threshold
from wsiviewer.training.report_tables import ModelEvaluation, PartMetrics

# Arrays are (H, W[, C]) everywhere in wsiviewer (STYLE.md): set once, here.
pg.setConfigOptions(imageAxisOrder="row-major", antialias=True)

#: Okabe & Ito (2008), "Color Universal Design": distinguishable with any colour vision.
OKABE_ITO = {
    "black": "#000000",
    "orange": "#E69F00",
    "sky_blue": "#56B4E9",
    "bluish_green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "reddish_purple": "#CC79A7",
}
#: The threshold line: vermillion, like nothing else in a viridis/cividis heatmap.
THRESHOLD_COLOR = OKABE_ITO["vermillion"]
#: What bins below the threshold fade towards, as the heatmap fades over the slide.
FADED_BIN_COLOR = "#E0E0E0"
#: Guides (chance, perfect calibration): grey dotted.
GUIDE_PEN_STYLE = Qt.PenStyle.DotLine
#: Marker per split part: shape tells them apart as well as colour.
PART_STYLES = {
    "validation": ("o", OKABE_ITO["bluish_green"]),
    "test": ("s", OKABE_ITO["blue"]),
    "out_of_fold": ("s", OKABE_ITO["blue"]),
    "out_of_fold_map": ("t", OKABE_ITO["vermillion"]),
}
#: How a part is named in legends.
PART_LABELS = {
    "out_of_fold": "out of fold",
    "out_of_fold_map": "map with context, complete",
}


def _text_color(widget: QWidget) -> QColor:
    return widget.palette().color(QPalette.ColorRole.WindowText)


def _guide_pen(widget: QWidget) -> QColor:
    color = QColor(_text_color(widget))
    color.setAlphaF(0.55)
    return color


def make_plot_widget(parent: QWidget, x_label: str, y_label: str) -> pg.PlotWidget:
    """A plot in the window's colours, axes labelled, the mouse zooming and panning."""
    background = parent.palette().color(QPalette.ColorRole.Base)
    plot = pg.PlotWidget(parent, background=background)
    text = _text_color(parent)
    for name, label in (("bottom", x_label), ("left", y_label)):
        axis = plot.getAxis(name)
        axis.setPen(text)
        axis.setTextPen(text)
        axis.setLabel(label)
    plot.showGrid(x=True, y=True, alpha=0.15)
    plot.setMenuEnabled(True)
    plot.setMinimumHeight(180)
    return plot


# -- the shown map --------------------------------------------------------------------------------


class ProbabilityHistogramWidget(QWidget):
    """How many scored cells the shown map has at each P(IDC), with the threshold as a
    line: drag the line to move the threshold. A cell is a patch, or on a dense map a part of
    one (:meth:`set_probabilities` says which, and the axis and summary follow).

    Bars are coloured as the heatmap colours them, faded below the threshold by the same alpha
    ramp. Unscored cells (NaN: no tissue, or not scored yet) are not counted.

    Signals
    -------
    threshold_dragged(float)
        The user is dragging the threshold line: this P(IDC) (0–1, three decimals).
    threshold_released(float)
        The user let go of the line here.
    """

    threshold_dragged = Signal(float)
    threshold_released = Signal(float)

    #: Bin edges: 50 bins of 0.02 from 0 to 1 (1.0 falls in the last bin).
    BIN_EDGES = np.linspace(0.0, 1.0, 51)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._counts = np.zeros(len(self.BIN_EDGES) - 1, dtype=np.int64)
        self._scored = 0
        self._threshold = 0.5
        self._colormap = DEFAULT_COLORMAP
        self._syncing = False
        self._unit = "patches"
        self.plot_widget = make_plot_widget(self, "P(IDC), model output", self._unit)
        self.plot_widget.setMinimumHeight(150)
        self.plot_widget.setMouseEnabled(x=False, y=True)
        self.plot_widget.setXRange(0.0, 1.0, padding=0.04)
        zeros = np.zeros(len(self.BIN_EDGES) - 1)
        self.bars = pg.BarGraphItem(
            x0=self.BIN_EDGES[:-1], x1=self.BIN_EDGES[1:], y0=zeros, y1=zeros, pen=None
        )
        self.plot_widget.addItem(self.bars)
        self.threshold_line = pg.InfiniteLine(
            pos=self._threshold,
            angle=90,
            movable=True,
            bounds=(0.0, 1.0),
            pen=pg.mkPen(THRESHOLD_COLOR, width=2),
            hoverPen=pg.mkPen(THRESHOLD_COLOR, width=4),
            label="threshold {value:.3f}",
            labelOpts={"position": 0.92, "color": THRESHOLD_COLOR, "movable": True},
        )
        self.threshold_line.setToolTip(
            "Drag to change the threshold: cells at or above it are flagged and outlined"
        )
        self.plot_widget.addItem(self.threshold_line)
        self.log_box = QCheckBox("Log scale")
        self.log_box.setToolTip("Count axis in powers of ten: shows rare high-P bins")
        self.summary_label = QLabel()
        self.summary_label.setWordWrap(True)
        row = QHBoxLayout()
        row.addWidget(self.summary_label, 1)
        row.addWidget(self.log_box, 0, Qt.AlignmentFlag.AlignTop)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.plot_widget, 1)
        layout.addLayout(row)
        self.threshold_line.sigPositionChanged.connect(self._on_line_moved)
        self.threshold_line.sigPositionChangeFinished.connect(self._on_line_released)
        self.log_box.toggled.connect(self._redraw)
        self._redraw()

    @property
    def counts(self) -> np.ndarray:
        """Scored cells per bin of :attr:`BIN_EDGES` (a copy)."""
        return self._counts.copy()

    @property
    def scored_count(self) -> int:
        return self._scored

    @property
    def threshold(self) -> float:
        return self._threshold

    def set_probabilities(self, probabilities: np.ndarray | None, unit: str = "patches") -> None:
        """Count the map's scored cells (``None`` clears the histogram); ``unit`` names them
        (``patches``, or ``cells`` on a dense map)."""
        self._unit = unit
        self.plot_widget.getAxis("left").setLabel(unit)
        values = np.empty(0) if probabilities is None else np.asarray(probabilities).ravel()
        values = values[np.isfinite(values)]
        self._counts, _ = np.histogram(np.clip(values, 0.0, 1.0), bins=self.BIN_EDGES)
        self._sorted = np.sort(values.astype(np.float32))
        self._scored = int(values.size)
        self._redraw()

    _sorted: np.ndarray = np.empty(0, dtype=np.float32)

    def set_style(self, colormap: str, threshold: float) -> None:
        """Follow the heatmap's colour map and threshold (the line moves, bars recolour)."""
        self._colormap = colormap
        self._threshold = float(threshold)
        if not math.isclose(self.threshold_line.value(), self._threshold, abs_tol=1e-9):
            self._syncing = True
            try:
                self.threshold_line.setValue(self._threshold)
            finally:
                self._syncing = False
        self._redraw()

    def above_threshold_count(self) -> int:
        """Scored cells at or above the threshold (flagged), exactly."""
        first = np.searchsorted(self._sorted, np.float32(self._threshold), side="left")
        return int(self._sorted.size - first)

    def _on_line_moved(self) -> None:
        if self._syncing:
            return
        self.threshold_dragged.emit(round(float(self.threshold_line.value()), 3))

    def _on_line_released(self) -> None:
        if self._syncing:
            return
        self.threshold_released.emit(round(float(self.threshold_line.value()), 3))

    def _bar_brushes(self) -> list[QColor]:
        lut = load_colormap(self._colormap)
        centres = (self.BIN_EDGES[:-1] + self.BIN_EDGES[1:]) / 2
        # Opaque from the threshold up, fading below it like the heatmap (never invisible:
        # a count must stay readable).
        weights = np.maximum(ramp_alpha(centres, self._threshold), 0.15)
        grey = QColor(FADED_BIN_COLOR)
        faded = np.array([grey.red(), grey.green(), grey.blue()], dtype=np.float64)
        brushes = []
        for centre, weight in zip(centres, weights, strict=True):
            colour = lut[min(255, int(centre * 256))].astype(np.float64)
            r, g, b = (round(float(c)) for c in colour * weight + faded * (1 - weight))
            brushes.append(QColor(r, g, b))
        return brushes

    def _redraw(self) -> None:
        log = self.log_box.isChecked()
        counts = self._counts.astype(np.float64)
        if log:
            # Bars start at 10^-0.3 (about half a cell), so a bin of one cell still shows.
            base = -0.3
            heights = np.where(counts > 0, np.log10(np.maximum(counts, 1)), base)
            self.bars.setOpts(y0=np.full_like(heights, base), y1=heights)
        else:
            self.bars.setOpts(y0=np.zeros_like(counts), y1=counts)
        self.bars.setOpts(brushes=self._bar_brushes())
        self.plot_widget.getAxis("left").setLogMode(False, log)
        self.plot_widget.enableAutoRange(axis="y")
        if self._scored == 0:
            self.summary_label.setText(f"No scored {self._unit} shown.")
            return
        above = self.above_threshold_count()
        self.summary_label.setText(
            f"{self._scored:,} {self._unit} scored; {above:,} ({100 * above / self._scored:.1f} %) "
            f"flagged at P ≥ {format_threshold(self._threshold)}"
        )


# -- a model's shipped evaluation -----------------------------------------------------------------


class EvaluationPlotWidget(QWidget):
    """One plot of a model's evaluation, with a caption saying what the data is."""

    #: Where the legend sits: pyqtgraph's offset from a corner (negative: right, bottom).
    LEGEND_OFFSET = (-6, -6)

    def __init__(self, x_label: str, y_label: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.plot_widget = make_plot_widget(self, x_label, y_label)
        self.legend = self.plot_widget.addLegend(
            offset=self.LEGEND_OFFSET, labelTextSize="8pt", labelTextColor=_text_color(self)
        )
        self.caption = QLabel()
        self.caption.setWordWrap(True)
        self.caption.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.plot_widget, 1)
        layout.addWidget(self.caption)

    def clear(self) -> None:
        self.plot_widget.clear()
        self.legend.clear()
        self.caption.clear()

    def set_evaluation(self, evaluation: ModelEvaluation | None) -> bool:
        """Plot it; ``False`` (and an empty plot) when it has nothing for this plot."""
        self.clear()
        if evaluation is None:
            return False
        return self._plot(evaluation)

    def _plot(self, evaluation: ModelEvaluation) -> bool:
        raise NotImplementedError

    def _add_guide(self, xs: Sequence[float], ys: Sequence[float], name: str) -> None:
        pen = pg.mkPen(_guide_pen(self), width=1, style=GUIDE_PEN_STYLE)
        self.plot_widget.plot(list(xs), list(ys), pen=pen, name=name)

    def _show_unit_square(self) -> None:
        """Both axes 0–1 (probabilities, rates); zooming in stays inside them."""
        margin = 0.05
        self.plot_widget.setLimits(xMin=-margin, xMax=1 + margin, yMin=-margin, yMax=1 + margin)
        self.plot_widget.setRange(xRange=(0.0, 1.0), yRange=(0.0, 1.0), padding=margin)


class RocPlotWidget(EvaluationPlotWidget):
    """Operating points in ROC space: validation and test at the card's threshold (95%
    intervals as bars), each test patient at that threshold, and the sensitivity targets.

    Only the points ship with a model, not the curve (the report's ROC figure has it).
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("1 − specificity", "sensitivity", parent)
        #: ``part -> (1 - specificity, sensitivity)`` as plotted.
        self.part_points: dict[str, tuple[float, float]] = {}
        #: ``(N, 2)`` per-patient ``(1 - specificity, sensitivity)`` as plotted.
        self.patient_points = np.empty((0, 2))

    def _plot(self, evaluation: ModelEvaluation) -> bool:
        self.part_points = {}
        self.patient_points = np.empty((0, 2))
        self._add_guide((0.0, 1.0), (0.0, 1.0), "chance")
        patients = [(p, p.roc_point) for p in evaluation.patients if p.roc_point is not None]
        if patients:
            self.patient_points = np.array([point for _, point in patients])
            scatter = pg.ScatterPlotItem(
                pos=self.patient_points,
                data=[
                    f"patient {p.patient}: {p.patches:,} patches, {100 * p.idc_fraction:.0f} % "
                    f"IDC, sensitivity {p.sensitivity:.2f}, specificity {p.specificity:.2f}"
                    for p, _ in patients
                ],
                symbol="t",
                size=7,
                pen=pg.mkPen(OKABE_ITO["orange"]),
                brush=pg.mkBrush(None),
                hoverable=True,
                hoverSize=11,
                tip=lambda x, y, data: data,
                name=(
                    f"each {PART_LABELS.get(part_name, part_name)} patient"
                    if (part_name := evaluation.patients_part)
                    else "each evaluated patient"
                ),
            )
            self.plot_widget.addItem(scatter)
        for part in evaluation.parts:
            self._plot_part(part)
        self._mark_sensitivity_targets(evaluation)
        self._show_unit_square()
        self.caption.setText(self._caption(evaluation))
        return bool(self.part_points or patients)

    def _plot_part(self, part: PartMetrics) -> None:
        point = part.roc_point
        if point is None:
            return
        self.part_points[part.part] = point
        symbol, color = PART_STYLES.get(part.part, ("d", OKABE_ITO["reddish_purple"]))
        sensitivity_ci, specificity_ci = part.interval("sensitivity"), part.interval("specificity")
        if sensitivity_ci is not None and specificity_ci is not None:
            x, y = point
            bars = pg.ErrorBarItem(
                x=np.array([x]),
                y=np.array([y]),
                top=np.array([sensitivity_ci[1] - y]),
                bottom=np.array([y - sensitivity_ci[0]]),
                left=np.array([x - (1 - specificity_ci[1])]),
                right=np.array([(1 - specificity_ci[0]) - x]),
                beam=0.015,
                pen=pg.mkPen(color, width=1.5),
            )
            self.plot_widget.addItem(bars)
        label = PART_LABELS.get(part.part, part.part)
        name = label if part.patients is None else f"{label} ({part.patients} patients)"
        auc = part.value("roc_auc")
        if auc is not None:
            name += f": AUC {auc:.3f}"
        self.plot_widget.plot(
            [point[0]],
            [point[1]],
            pen=None,
            symbol=symbol,
            symbolSize=11,
            symbolBrush=pg.mkBrush(color),
            symbolPen=pg.mkPen(_text_color(self), width=1),
            name=name,
        )

    def _mark_sensitivity_targets(self, evaluation: ModelEvaluation) -> None:
        """Operating points named ``sensitivity_<target>``: the target as a dashed line (its
        test sensitivity and specificity are not shipped, so it has no point)."""
        for name, threshold in evaluation.operating_points.items():
            if not name.startswith("sensitivity_"):
                continue
            try:
                target = float(name.removeprefix("sensitivity_"))
            except ValueError:
                continue
            self.plot_widget.plot(
                [0.0, 1.0],
                [target, target],
                pen=pg.mkPen(OKABE_ITO["reddish_purple"], width=1.5, style=Qt.PenStyle.DashLine),
                name=f"sensitivity {target:g} on validation: P ≥ {threshold:.3f}",
            )

    @staticmethod
    def _caption(evaluation: ModelEvaluation) -> str:
        intervals = "; ".join(
            f"{PART_LABELS.get(part.part, part.part)} {low:.3f}–{high:.3f}"
            for part in evaluation.parts
            if (interval := part.interval("roc_auc")) is not None
            for low, high in [interval]
        )
        cross_validated = any(part.part == "out_of_fold" for part in evaluation.parts)
        where = (
            "each fold's own threshold (chosen on the other folds)"
            if cross_validated
            else f"the card's threshold P ≥ {evaluation.threshold:.3f}"
        )
        return (
            f"{evaluation.model}: patch-level sensitivity and specificity at {where}; bars: "
            "95 % intervals (bootstrap over patients)"
            + (f"; ROC AUC 95 %: {intervals}" if intervals else "")
            + ". Triangles: each patient of the report; hover for details. The ROC curve "
            "itself is in the evaluation report."
        )


class CalibrationPlotWidget(EvaluationPlotWidget):
    """Calibration per patient: mean predicted P(IDC) against the fraction of IDC patches,
    marker area by patch count. On the diagonal the model's probabilities are calibrated."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("mean P(IDC) of the patient's patches", "fraction of IDC patches", parent)
        #: ``(N, 2)`` per-patient ``(mean P, IDC fraction)`` as plotted.
        self.points = np.empty((0, 2))

    def _plot(self, evaluation: ModelEvaluation) -> bool:
        patients = evaluation.patients
        self.points = np.array([(p.mean_p_idc, p.idc_fraction) for p in patients]).reshape(-1, 2)
        if not patients:
            self.caption.setText("This model ships no per-patient results.")
            return False
        self._add_guide((0.0, 1.0), (0.0, 1.0), "perfect calibration")
        largest = max(p.patches for p in patients)
        sizes = [6 + 14 * math.sqrt(p.patches / largest) for p in patients]
        scatter = pg.ScatterPlotItem(
            pos=self.points,
            size=sizes,
            data=[
                f"patient {p.patient}: {p.patches:,} patches, mean P(IDC) {p.mean_p_idc:.2f}, "
                f"{100 * p.idc_fraction:.0f} % IDC"
                for p in patients
            ],
            symbol="o",
            pen=pg.mkPen(_text_color(self), width=0.5),
            brush=pg.mkBrush(QColor(OKABE_ITO["blue"]).lighter(110)),
            hoverable=True,
            tip=lambda x, y, data: data,
            name=f"{evaluation.patients_part or 'evaluated'} patients (area: patches)",
        )
        self.plot_widget.addItem(scatter)
        self._show_unit_square()
        part = evaluation.part(evaluation.patients_part or "test")
        ece = part.value("ece") if part is not None else None
        ece_ci = part.interval("ece") if part is not None else None
        ece_text = ""
        if ece is not None:
            ece_text = f" Patch-level expected calibration error {ece:.3f}"
            if ece_ci is not None:
                ece_text += f" (95 % {ece_ci[0]:.3f}–{ece_ci[1]:.3f})"
            ece_text += "; the patch-level reliability diagram is in the evaluation report."
        self.caption.setText(
            f"{evaluation.model}: below the diagonal the model overstates IDC for that patient, "
            f"above it understates.{ece_text}"
        )
        return True


class PatientAucPlotWidget(EvaluationPlotWidget):
    """ROC AUC of each patient, sorted, against the AUC over all patches (dashed)."""

    #: Top left, above the lowest AUCs.
    LEGEND_OFFSET = (6, 6)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("patients, sorted by ROC AUC", "ROC AUC", parent)
        #: Per-patient ``(patient, AUC)`` in plotted (ascending) order.
        self.aucs: list[tuple[str, float]] = []

    def _plot(self, evaluation: ModelEvaluation) -> bool:
        ranked = sorted(
            (p for p in evaluation.patients if p.roc_auc is not None),
            key=lambda p: p.roc_auc or 0.0,
        )
        self.aucs = [(p.patient, float(p.roc_auc or 0.0)) for p in ranked]
        if not ranked:
            self.caption.setText("This model ships no per-patient ROC AUC.")
            return False
        xs = np.arange(len(ranked), dtype=np.float64)
        heights = np.array([auc for _, auc in self.aucs])
        floor = min(0.5, float(heights.min()) - 0.05)
        bars = pg.BarGraphItem(
            x=xs, y0=floor, y1=heights, width=0.8, brush=pg.mkBrush(OKABE_ITO["blue"]), pen=None
        )
        self.plot_widget.addItem(bars)
        tips = pg.ScatterPlotItem(
            x=xs,
            y=heights,
            data=[
                f"patient {p.patient}: ROC AUC {p.roc_auc:.3f}, {p.patches:,} patches, "
                f"{100 * p.idc_fraction:.0f} % IDC"
                for p in ranked
            ],
            symbol="o",
            size=5,
            pen=None,
            brush=pg.mkBrush(_text_color(self)),
            hoverable=True,
            hoverSize=9,
            tip=lambda x, y, data: data,
        )
        self.plot_widget.addItem(tips)
        part = evaluation.part(evaluation.patients_part or "test")
        pooled = part.value("roc_auc") if part is not None else None
        if pooled is not None:
            self.plot_widget.plot(
                [-0.6, len(ranked) - 0.4],
                [pooled, pooled],
                pen=pg.mkPen(OKABE_ITO["vermillion"], width=2, style=Qt.PenStyle.DashLine),
                name=f"all patches: {pooled:.3f}",
            )
        self.plot_widget.getAxis("bottom").setTicks([[]])
        self.plot_widget.setLimits(xMin=-1.0, xMax=len(ranked), yMin=floor - 0.05, yMax=1.05)
        self.plot_widget.setRange(
            xRange=(-0.6, len(ranked) - 0.4), yRange=(floor, 1.0), padding=0.02
        )
        self.caption.setText(
            f"{evaluation.model}: {len(ranked)} {evaluation.patients_part or 'evaluated'} "
            "patients with "
            "patches of both classes; hover a bar for the patient. Small patients give noisy "
            "AUCs."
        )
        return True
