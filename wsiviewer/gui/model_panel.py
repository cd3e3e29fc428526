"""The model chooser, the chosen model's card, plots of its shipped evaluation, its report.

The card says what the model is and how it was tested; the plots (:mod:`wsiviewer.gui.plots`)
draw the evaluation the model ships (:mod:`wsiviewer.training.report_tables`): operating points
in ROC space, calibration and ROC AUC per patient. The full report, with the ROC curve and the
patch-level reliability diagram, opens in :class:`ReportDialog`.
"""

from __future__ import annotations

import html
import json
import logging
from collections.abc import Sequence
from pathlib import Path

from PySide6.QtCore import QSettings, Qt, QUrl, Signal
from PySide6.QtGui import QTextDocument
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QHBoxLayout,
    QPushButton,
    QTabWidget,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from wsiviewer import RESEARCH_USE_NOTICE
from wsiviewer.core.model.cards import ModelCard, resolve_model
from wsiviewer.core.model.stain_check import describe_stain_check
from wsiviewer.core.review.wording import format_threshold
from wsiviewer.core.units import um_from_px
from wsiviewer.errors import ModelError
from wsiviewer.gui.about_model import AboutModelDialog
from wsiviewer.gui.panels import NOTICE_STYLE, notice_label
from wsiviewer.gui.plots import (
    CalibrationPlotWidget,
    EvaluationPlotWidget,
    PatientAucPlotWidget,
    RocPlotWidget,
)
from wsiviewer.training.report_tables import ModelEvaluation, load_model_evaluation

log = logging.getLogger(__name__)


#: Metrics shown on the model card, in order.
_CARD_METRICS = (
    ("balanced_accuracy", "Balanced accuracy"),
    ("sensitivity", "Sensitivity"),
    ("specificity", "Specificity"),
    ("roc_auc", "ROC AUC"),
    ("ece", "Calibration error (ECE)"),
)


#: Parts of the card's metrics, in display order, with their column heading.
_PART_NAMES = {
    "validation": "validation",
    "test": "test",
    "out_of_fold": "out of fold",
    "out_of_fold_map": "map with context, out of fold",
}


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
    parts = [part for part in _PART_NAMES if isinstance(metrics.get(part), dict)]
    if not parts:
        return ""
    head = "".join(
        f"<th align=left>{_PART_NAMES[part]} ({metrics[part].get('patients', '?')} "
        f"{'complete ' if part == 'out_of_fold_map' else ''}patients)</th>"
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
        "<small>Patients never seen in training (out of fold: each patient scored by a "
        "cross-validation model that never saw it); 95% intervals bootstrapped over patients."
        "</small>"
    )


def _operating_points_html(points: object) -> str:
    """``P ≥ threshold`` of each operating point the card names, in words."""
    names = {
        "balanced_accuracy": "best balanced accuracy (the threshold regions are drawn at)",
        "sensitivity_0.90": "≥ 0.90 sensitivity on validation",
        "patch_balanced_accuracy": "best balanced accuracy of single patches, out of fold",
        "patch_sensitivity_0.90": "≥ 0.90 sensitivity of single patches, out of fold",
    }
    if not isinstance(points, dict) or not points:
        return ""
    return "<br>".join(
        f"P ≥ {format_threshold(value)}: {html.escape(names.get(str(key), str(key)))}"
        for key, value in points.items()
        if isinstance(value, int | float)
    )


def _training_data_text(data: dict[str, object]) -> str:
    text = str(data.get("dataset", ""))
    if isinstance(data.get("patients"), str | int):
        return f"{text}; patients: {data['patients']}"
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
    field_um = um_from_px(card.input_size, card.input_mpp)

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
        (
            "Threshold",
            f"P ≥ {format_threshold(card.threshold)} (regions are drawn at this probability)",
        ),
        ("Trained on", block(training_data)),
        ("Split", block(extra.get("split"))),
        ("Metrics", metric_html),
        (
            "Operating points",
            _operating_points_html(extra.get("operating_points"))
            or block(extra.get("operating_points")),
        ),
        ("Intended use", html.escape(card.intended_use)),
        ("Stain check", html.escape(describe_stain_check(card.stain_check))),
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


def no_model_html(searched: str) -> str:
    """What to do when no model is installed."""
    return (
        f"<p style='{NOTICE_STYLE}'>{html.escape(RESEARCH_USE_NOTICE)}</p>"
        "<h3>No model installed</h3>"
        "<p>The models shipped with wsiviewer are missing from this installation. "
        "To analyse slides, reinstall or add a "
        "model: a card <code>&lt;name&gt;.json</code> and its weights "
        "<code>&lt;name&gt;.safetensors</code>, with <b>Add model…</b> or by copying "
        f"both into your models folder:</p><p><code>{html.escape(searched)}</code></p>"
    )


class ModelPanel(QWidget):
    """The model chooser (shipped and user models), the chosen model's card and the plots of
    its shipped evaluation.

    Signals
    -------
    model_changed(object)
        The chosen :class:`ModelCard`, or ``None`` when no model is installed.
    add_requested()
        The user asked to add a model from a card file.
    """

    model_changed = Signal(object)
    add_requested = Signal()

    def __init__(self, parent: QWidget | None = None, *, settings: QSettings | None = None) -> None:
        super().__init__(parent)
        #: Where the About page remembers the IDC dataset folder.
        self.settings = settings
        self._cards: list[ModelCard] = []
        self.evaluation: ModelEvaluation | None = None
        self.chooser = QComboBox()
        self.add_button = QPushButton("Add model…")
        self.add_button.setToolTip(
            "Copy a model (<name>.json + <name>.safetensors) into your models folder"
        )
        self.card_view = QTextBrowser()
        self.card_view.setOpenLinks(False)
        self.roc_plot = RocPlotWidget()
        self.calibration_plot = CalibrationPlotWidget()
        self.patients_plot = PatientAucPlotWidget()
        self.tabs = QTabWidget()
        self.tabs.setDocumentMode(True)
        self.tabs.addTab(self.card_view, "Card")
        for plot, title, tip in (
            (self.roc_plot, "ROC", "Sensitivity and specificity at the operating points"),
            (self.calibration_plot, "Calibration", "Mean P(IDC) against IDC fraction per patient"),
            (self.patients_plot, "Patients", "ROC AUC of each evaluated patient"),
        ):
            index = self.tabs.addTab(plot, title)
            self.tabs.setTabToolTip(index, tip)
        self.report_button = QPushButton("Evaluation report…")
        self.report_button.setToolTip(
            "Metrics on held-out patients, plots and per-patient results of this model"
        )
        self.report_dialog: ReportDialog | None = None
        self.about_button = QPushButton("About this model…")
        self.about_button.setToolTip(
            "The model in words: what it looks at, how it was tested, how often it is right "
            "and where it does worst, with example patches"
        )
        self.about_dialog: AboutModelDialog | None = None
        row = QHBoxLayout()
        row.addWidget(self.chooser, 1)
        row.addWidget(self.add_button)
        layout = QVBoxLayout(self)
        layout.addLayout(row)
        layout.addWidget(self.tabs, 1)
        layout.addWidget(notice_label("Research use only: every figure here is model output."))
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        buttons.addWidget(self.about_button)
        buttons.addWidget(self.report_button)
        layout.addLayout(buttons)
        self.chooser.currentIndexChanged.connect(self._chosen)
        self.add_button.clicked.connect(self.add_requested)
        self.report_button.clicked.connect(self.show_report)
        self.about_button.clicked.connect(lambda: self.show_about_model())

    @property
    def card(self) -> ModelCard | None:
        index = self.chooser.currentIndex()
        if not self._cards or index < 0:
            return None
        return self._cards[index]

    @property
    def plots(self) -> tuple[EvaluationPlotWidget, ...]:
        return (self.roc_plot, self.calibration_plot, self.patients_plot)

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
        self.card_view.setHtml(no_model_html(searched) if card is None else model_card_html(card))
        self._show_evaluation(card)
        self.report_button.setEnabled(card is not None and card.report_path is not None)
        self.model_changed.emit(card)

    def _show_evaluation(self, card: ModelCard | None) -> None:
        """Plot what the card and its report ship; a plot with nothing to show is disabled."""
        self.evaluation = None
        problem = ""
        if card is not None:
            try:
                self.evaluation = load_model_evaluation(card)
            except (ModelError, OSError) as exc:
                log.warning("Evaluation of %s cannot be read: %s", card.name, exc)
                problem = f"The evaluation shipped with this model cannot be read: {exc}"
        for plot in self.plots:
            shown = plot.set_evaluation(self.evaluation)
            index = self.tabs.indexOf(plot)
            self.tabs.setTabEnabled(index, shown)
            if problem:
                plot.caption.setText(problem)
        if not self.tabs.isTabEnabled(self.tabs.currentIndex()):
            self.tabs.setCurrentWidget(self.card_view)

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

    def show_about_model(self) -> AboutModelDialog | None:
        """Open the About page of the chosen model, else of the default one; ``None`` (and
        an error raised) when there is no model at all.

        Raises
        ------
        ModelError
            If no model is chosen and none is installed.
        """
        card = self.card or resolve_model(None)
        self.close_about_model()
        self.about_dialog = AboutModelDialog(card, self.settings, self)
        self.about_dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        self.about_dialog.destroyed.connect(self._forget_about_dialog)
        self.about_dialog.show()
        return self.about_dialog

    def close_about_model(self) -> None:
        """Close the About page, if open (its example worker stops)."""
        if self.about_dialog is not None:
            self.about_dialog.close()
            self.about_dialog = None

    def _forget_about_dialog(self, *_: object) -> None:
        self.about_dialog = None
