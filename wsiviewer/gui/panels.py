"""Side panels: slide information, the heatmap controls with its colour bar, the model card."""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PySide6.QtCore import QRectF, QSize, Qt, QUrl, Signal
from PySide6.QtGui import QColor, QImage, QPainter, QPaintEvent, QPen, QPixmap, QTextDocument
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QScrollArea,
    QSlider,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from wsiviewer import RESEARCH_USE_NOTICE
from wsiviewer.core.exports.colormaps import COLORMAP_NAMES, DEFAULT_COLORMAP, load_colormap
from wsiviewer.core.model.cards import ModelCard
from wsiviewer.core.slides import Slide
from wsiviewer.errors import SlideReadError
from wsiviewer.gui.images import rgb_to_qimage

NOTICE_STYLE = "color: #a00000; font-weight: bold;"


def notice_label(text: str = RESEARCH_USE_NOTICE) -> QLabel:
    label = QLabel(text)
    label.setWordWrap(True)
    label.setStyleSheet(NOTICE_STYLE)
    label.setObjectName("research_notice")
    return label


# -- slide information ------------------------------------------------------------------------


class SlideInfoPanel(QWidget):
    """Vendor, size, levels, µm/px and its source, objective power, public properties.

    Label, macro and identifying properties stay hidden until the user ticks the box
    (DESIGN.md, Privacy); untick it and they are hidden again.
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._slide: Slide | None = None
        self._user_mpp: float | None = None
        self.text = QTextBrowser()
        self.text.setOpenLinks(False)
        self.show_identifying = QCheckBox("Show identifying information (label, macro, names)")
        self.show_identifying.setToolTip(
            "Label and macro images and properties such as file name, user and date may "
            "identify a patient or operator; they are hidden unless you ask."
        )
        self.show_identifying.toggled.connect(self._refresh)
        self.images_row = QHBoxLayout()
        layout = QVBoxLayout(self)
        layout.addWidget(self.text, 1)
        layout.addWidget(self.show_identifying)
        layout.addLayout(self.images_row)
        self._image_buttons: list[QPushButton] = []
        self._dialogs: list[QDialog] = []
        self._refresh()

    def set_slide(self, slide: Slide | None, user_mpp: float | None = None) -> None:
        self._slide = slide
        self._user_mpp = user_mpp
        self.show_identifying.setChecked(False)
        self._refresh()

    def html(self) -> str:
        return self.text.toHtml()

    def plain_text(self) -> str:
        return self.text.toPlainText()

    def _refresh(self) -> None:
        for button in self._image_buttons:
            self.images_row.removeWidget(button)
            button.hide()  # deleteLater may wait for the event loop: never paint it meanwhile
            button.deleteLater()
        self._image_buttons = []
        slide = self._slide
        if slide is None:
            self.text.setHtml("<p>No slide open.</p>")
            return
        include = self.show_identifying.isChecked()
        info = slide.describe(include_identifying=include)
        rows: list[tuple[str, str]] = [
            ("Vendor", str(info["vendor"] or "unknown")),
            ("Size", f"{slide.dimensions[0]:,} × {slide.dimensions[1]:,} px"),
        ]
        mpp = slide.mpp
        if mpp is not None:
            source = {
                "metadata": "from the file's metadata",
                "objective-power": "guessed from the objective power (10 / power)",
                "user": "entered by you",
            }[mpp.source]
            rows.append(("µm/px", f"{mpp.value:.4g} ({source})"))
        elif self._user_mpp is not None:
            rows.append(("µm/px", f"{self._user_mpp:.4g} (entered by you)"))
        else:
            rows.append(("µm/px", "unknown: not in the metadata (you are asked before analysis)"))
        power = slide.objective_power
        rows.append(("Objective power", f"{power:g}x" if power else "unknown"))
        if mpp is not None:
            width_mm = slide.dimensions[0] * mpp.value / 1000
            height_mm = slide.dimensions[1] * mpp.value / 1000
            rows.append(("Physical size", f"{width_mm:.2f} × {height_mm:.2f} mm"))
        level_lines = "<br>".join(
            f"{i}: {w:,} × {h:,} px (downsample {d:g})"
            for i, ((w, h), d) in enumerate(
                zip(slide.level_dimensions, slide.level_downsamples, strict=True)
            )
        )
        rows.append(("Levels", level_lines))
        images = list(slide.public_associated_image_names(include))
        hidden = len(slide.associated_image_names) - len(images)
        image_text = ", ".join(images) or "none"
        if hidden:
            image_text += f" ({hidden} hidden: may identify the patient)"
        rows.append(("Associated images", html.escape(image_text)))
        properties = slide.public_properties(include)
        hidden_properties = len(slide.properties) - len(properties)
        body = "".join(
            f"<tr><td><b>{html.escape(k)}</b></td><td>{v}</td></tr>" for k, v in rows[:-1]
        )
        body += f"<tr><td><b>{rows[-1][0]}</b></td><td>{rows[-1][1]}</td></tr>"
        props = "".join(
            f"<tr><td>{html.escape(k)}</td><td>{html.escape(v[:200])}</td></tr>"
            for k, v in properties.items()
        )
        note = (
            f"<p><i>{hidden_properties} identifying properties hidden.</i></p>"
            if hidden_properties
            else ""
        )
        self.text.setHtml(
            f"<table cellspacing=4>{body}</table><h4>Properties</h4>{note}"
            f"<table cellspacing=2 style='font-size:small'>{props}</table>"
        )
        for name in images:
            button = QPushButton(f"View {name}")
            button.clicked.connect(lambda _=False, n=name: self._show_image(n))
            self.images_row.addWidget(button)
            self._image_buttons.append(button)

    def _show_image(self, name: str) -> None:
        if self._slide is None:
            return
        try:
            pixels = self._slide.associated_image(
                name, include_identifying=self.show_identifying.isChecked()
            )
        except SlideReadError as exc:
            label = QLabel(str(exc))
        else:
            label = QLabel()
            pixmap = QPixmap.fromImage(rgb_to_qimage(pixels))
            label.setPixmap(
                pixmap.scaled(
                    QSize(800, 600),
                    Qt.AspectRatioMode.KeepAspectRatio,
                    Qt.TransformationMode.SmoothTransformation,
                )
            )
        dialog = QDialog(self)
        dialog.setWindowTitle(f"Associated image: {name}")
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        QVBoxLayout(dialog).addWidget(label)
        dialog.open()


# -- heatmap controls -------------------------------------------------------------------------


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
            painter.setPen(QPen(QColor(200, 0, 0), 2))
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


class OverlayPanel(QWidget):
    """Show/hide, colour map, opacity, threshold, colour bar, and what the map is.

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
        self.opacity_slider = QSlider(Qt.Orientation.Horizontal)
        self.opacity_slider.setRange(0, 100)
        self.opacity_slider.setValue(50)
        self.threshold_slider = QSlider(Qt.Orientation.Horizontal)
        self.threshold_slider.setRange(0, 100)
        self.threshold_slider.setValue(50)
        self.opacity_label = QLabel()
        self.threshold_label = QLabel()
        self.color_bar = ColorBarWidget()
        self.analysis_label = QLabel("No analysis for this slide yet.")
        self.analysis_label.setWordWrap(True)
        self.analysis_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

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
        caption = QLabel("P(IDC) per 200 µm patch, model output")
        layout.addWidget(caption)
        layout.addWidget(self.color_bar)
        layout.addWidget(notice_label())
        layout.addWidget(self.analysis_label)
        layout.addStretch(1)

        self.visible_box.toggled.connect(self._changed)
        self.colormap_box.currentIndexChanged.connect(self._changed)
        self.opacity_slider.valueChanged.connect(self._changed)
        self.threshold_slider.valueChanged.connect(self._changed)
        self._update_labels()

    @property
    def colormap(self) -> str:
        return str(self.colormap_box.currentData())

    @property
    def opacity(self) -> float:
        return self.opacity_slider.value() / 100.0

    @property
    def threshold(self) -> float:
        return self.threshold_slider.value() / 100.0

    @property
    def visible(self) -> bool:
        return self.visible_box.isChecked()

    def set_colormap(self, name: str) -> None:
        index = self.colormap_box.findData(name)
        if index >= 0:
            self.colormap_box.setCurrentIndex(index)

    def _update_labels(self) -> None:
        self.opacity_label.setText(f"{self.opacity_slider.value()} %")
        self.threshold_label.setText(f"{self.threshold:.2f}")
        self.color_bar.set_style(self.colormap, self.threshold)

    def _changed(self) -> None:
        self._update_labels()
        self.style_changed.emit()


# -- model ------------------------------------------------------------------------------------


#: Metrics shown on the model card, in order.
_CARD_METRICS = (
    ("balanced_accuracy", "Balanced accuracy"),
    ("sensitivity", "Sensitivity"),
    ("specificity", "Specificity"),
    ("roc_auc", "ROC AUC"),
    ("ece", "Calibration error (ECE)"),
)


def _metrics_html(metrics: object) -> str:
    """A table of the card's metrics: flat ``{name: value}``, or by part with 95% intervals."""
    if not isinstance(metrics, dict) or not metrics:
        return ""
    if all(isinstance(v, int | float) for v in metrics.values()):
        return (
            "<table>"
            + "".join(
                f"<tr><td>{html.escape(str(k))}</td><td>{v:.3g}</td></tr>"
                for k, v in metrics.items()
            )
            + "</table>"
        )
    parts = [part for part in ("validation", "test") if isinstance(metrics.get(part), dict)]
    if not parts:
        return ""
    head = "".join(
        f"<th align=left>{part} ({metrics[part].get('patients', '?')} patients)</th>"
        for part in parts
    )
    rows = []
    for key, label in _CARD_METRICS:
        cells = []
        for part in parts:
            value = metrics[part].get(key)
            interval = (metrics[part].get("intervals_95") or {}).get(key)
            text = "–" if not isinstance(value, int | float) else f"{value:.3f}"
            if isinstance(interval, list) and len(interval) == 2:
                text += f" <small>({interval[0]:.3f}–{interval[1]:.3f})</small>"
            cells.append(f"<td>{text}</td>")
        rows.append(f"<tr><td>{label}</td>{''.join(cells)}</tr>")
    return (
        f"<table cellspacing=2><tr><th></th>{head}</tr>{''.join(rows)}</table>"
        "<small>Patients never seen in training; 95% intervals bootstrapped over patients."
        "</small>"
    )


def _operating_points_html(points: object) -> str:
    """``P ≥ threshold`` of each operating point the card names, in words."""
    names = {
        "balanced_accuracy": "best balanced accuracy on validation",
        "sensitivity_0.90": "≥ 0.90 sensitivity on validation",
    }
    if not isinstance(points, dict) or not points:
        return ""
    return "<br>".join(
        f"P ≥ {value:.3f}: {html.escape(names.get(str(key), str(key)))}"
        for key, value in points.items()
        if isinstance(value, int | float)
    )


def _training_data_text(data: dict[str, object]) -> str:
    text = str(data.get("dataset", ""))
    patients = data.get("patients")
    patches = data.get("patches")
    if isinstance(patients, dict) and isinstance(patches, dict):
        parts = ", ".join(
            f"{part} {patients.get(part, '?')} patients / {patches.get(part, '?'):,} patches"
            for part in ("train", "validation", "test")
        )
        text += f"; {parts}"
    return text


def model_card_html(card: ModelCard) -> str:
    """What a pathologist should know about a model before reading its heatmap."""
    extra = card.extra
    field_um = card.input_size * card.input_mpp

    def block(value: object) -> str:
        if value in (None, "", {}, []):
            return "<i>not stated on the card</i>"
        if isinstance(value, dict | list):
            return f"<pre>{html.escape(json.dumps(value, indent=2, ensure_ascii=False))}</pre>"
        return html.escape(str(value))

    metric_html = _metrics_html(extra.get("metrics"))
    if not metric_html:
        metric_html = block(extra.get("metrics"))
    training_data = extra.get("training_data")
    if isinstance(training_data, dict):
        training_data = _training_data_text(training_data)
    rows = [
        ("Model", f"{html.escape(card.name)} v{html.escape(card.version)} ({card.architecture})"),
        (
            "Input scale",
            f"{card.input_size}×{card.input_size} px at {card.input_mpp:g} µm/px "
            f"({field_um:g} µm square patches)",
        ),
        ("Classes", html.escape(", ".join(card.classes))),
        ("Threshold", f"{card.threshold:g} (regions are drawn at this probability)"),
        ("Trained on", block(training_data)),
        ("Split", block(extra.get("split"))),
        ("Metrics", metric_html),
        (
            "Operating points",
            _operating_points_html(extra.get("operating_points"))
            or block(extra.get("operating_points")),
        ),
        ("Intended use", html.escape(card.intended_use)),
        ("Weights sha256", f"<code>{card.weights_sha256[:16]}…</code>"),
        ("Card", html.escape(str(card.path))),
    ]
    body = "".join(f"<tr><td valign=top nowrap><b>{k}</b></td><td>{v}</td></tr>" for k, v in rows)
    return (
        f"<p style='{NOTICE_STYLE}'>{html.escape(RESEARCH_USE_NOTICE)}</p>"
        f"<table cellspacing=4>{body}</table>"
    )


class ReportDialog(QDialog):
    """A model's evaluation report (Markdown with its plots), read-only."""

    def __init__(self, card: ModelCard, report: Path, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle(f"Evaluation report: {card.name} v{card.version}")
        self.browser = QTextBrowser()
        self.browser.setOpenExternalLinks(True)
        # Relative image paths resolve against the report's folder.
        self.browser.setSource(
            QUrl.fromLocalFile(str(report)), QTextDocument.ResourceType.MarkdownResource
        )
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(self.browser, 1)
        layout.addWidget(buttons)
        self.resize(900, 760)


class ModelPanel(QWidget):
    """The model chooser (shipped and user models) and the chosen model's card.

    Signals
    -------
    model_changed(object)
        The chosen :class:`ModelCard`, or ``None`` when no model is installed.
    add_requested()
        The user asked to add a model from a card file.
    """

    model_changed = Signal(object)
    add_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._cards: list[ModelCard] = []
        self.chooser = QComboBox()
        self.add_button = QPushButton("Add model…")
        self.add_button.setToolTip(
            "Copy a model (<name>.json + <name>.safetensors) into your models folder"
        )
        self.card_view = QTextBrowser()
        self.card_view.setOpenLinks(False)
        self.report_button = QPushButton("Evaluation report…")
        self.report_button.setToolTip(
            "Metrics on held-out patients, plots and per-patient results of this model"
        )
        self.report_dialog: ReportDialog | None = None
        row = QHBoxLayout()
        row.addWidget(self.chooser, 1)
        row.addWidget(self.add_button)
        layout = QVBoxLayout(self)
        layout.addLayout(row)
        layout.addWidget(self.card_view, 1)
        layout.addWidget(self.report_button, 0, Qt.AlignmentFlag.AlignRight)
        self.chooser.currentIndexChanged.connect(self._chosen)
        self.add_button.clicked.connect(self.add_requested)
        self.report_button.clicked.connect(self.show_report)

    @property
    def card(self) -> ModelCard | None:
        index = self.chooser.currentIndex()
        if not self._cards or index < 0:
            return None
        return self._cards[index]

    def set_cards(
        self, cards: Sequence[ModelCard], preferred: str | None = None, searched: str = ""
    ) -> None:
        self._cards = list(cards)
        self.chooser.blockSignals(True)
        self.chooser.clear()
        for card in self._cards:
            default = " (default)" if card.default else ""
            self.chooser.addItem(f"{card.name} v{card.version}{default}")
        self.chooser.setEnabled(bool(self._cards))
        if self._cards:
            names = [card.name for card in self._cards]
            default_index = next((i for i, c in enumerate(self._cards) if c.default), 0)
            index = names.index(preferred) if preferred in names else default_index
            self.chooser.setCurrentIndex(index)
        else:
            self.chooser.addItem("No model installed")
        self.chooser.blockSignals(False)
        self._chosen(searched=searched)

    def _chosen(self, *_: object, searched: str = "") -> None:
        card = self.card
        if card is None:
            self.card_view.setHtml(
                f"<p style='{NOTICE_STYLE}'>{html.escape(RESEARCH_USE_NOTICE)}</p>"
                "<h3>No model installed</h3>"
                "<p>The models shipped with wsiviewer are missing from this installation. "
                "To analyse slides, reinstall or add a "
                "model: a card <code>&lt;name&gt;.json</code> and its weights "
                "<code>&lt;name&gt;.safetensors</code>, with <b>Add model…</b> or by copying "
                f"both into your models folder:</p><p><code>{html.escape(searched)}</code></p>"
            )
        else:
            self.card_view.setHtml(model_card_html(card))
        self.report_button.setEnabled(card is not None and card.report_path is not None)
        self.model_changed.emit(card)

    def show_report(self) -> ReportDialog | None:
        """Open the chosen model's evaluation report; ``None`` if it has none."""
        card = self.card
        report = card.report_path if card is not None else None
        if card is None or report is None:
            return None
        if self.report_dialog is not None:
            self.report_dialog.close()
        self.report_dialog = ReportDialog(card, report, self)
        self.report_dialog.show()
        return self.report_dialog


def scroll_wrapped(widget: QWidget) -> QScrollArea:
    area = QScrollArea()
    area.setWidget(widget)
    area.setWidgetResizable(True)
    return area
