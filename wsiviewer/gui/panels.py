"""Small shared pieces of the side panels, and the slide information panel.

The heatmap controls live in :mod:`wsiviewer.gui.overlay_panel`, the model chooser and card in
:mod:`wsiviewer.gui.model_panel`, the review in :mod:`wsiviewer.gui.review_panel`.
"""

from __future__ import annotations

import html

from PySide6.QtCore import QSize, Qt
from PySide6.QtGui import QPixmap
from PySide6.QtWidgets import (
    QCheckBox,
    QDialog,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QScrollArea,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from wsiviewer import RESEARCH_USE_NOTICE
from wsiviewer.core.slides import Slide
from wsiviewer.core.units import mm_from_px
from wsiviewer.errors import SlideReadError
from wsiviewer.gui.images import rgb_to_qimage

NOTICE_STYLE = "color: #a00000; font-weight: bold;"

#: How the slide information names each source of µm/px.
MPP_SOURCE_TEXT = {
    "metadata": "from the file's metadata",
    "objective-power": "guessed from the objective power (10 / power)",
    "user": "entered by you",
}


def notice_label(text: str = RESEARCH_USE_NOTICE) -> QLabel:
    label = QLabel(text)
    label.setWordWrap(True)
    label.setStyleSheet(NOTICE_STYLE)
    label.setObjectName("research_notice")
    return label


def scroll_wrapped(widget: QWidget) -> QScrollArea:
    area = QScrollArea()
    area.setWidget(widget)
    area.setWidgetResizable(True)
    return area


# -- slide information ------------------------------------------------------------------------


def slide_rows(slide: Slide, user_mpp: float | None) -> list[tuple[str, str]]:
    """(name, HTML) rows: vendor, size, µm/px and its source, power, physical size, levels."""
    width, height = slide.dimensions
    rows: list[tuple[str, str]] = [
        ("Vendor", html.escape(str(slide.vendor or "unknown"))),
        ("Size", f"{width:,} × {height:,} px"),
    ]
    mpp = slide.mpp
    if mpp is not None:
        rows.append(("µm/px", f"{mpp.value:.4g} ({MPP_SOURCE_TEXT[mpp.source]})"))
    elif user_mpp is not None:
        rows.append(("µm/px", f"{user_mpp:.4g} (entered by you)"))
    else:
        rows.append(("µm/px", "unknown: not in the metadata (you are asked before analysis)"))
    power = slide.objective_power
    rows.append(("Objective power", f"{power:g}x" if power else "unknown"))
    if mpp is not None:
        width_mm, height_mm = mm_from_px(width, mpp.value), mm_from_px(height, mpp.value)
        rows.append(("Physical size", f"{width_mm:.2f} × {height_mm:.2f} mm"))
    rows.append(
        (
            "Levels",
            "<br>".join(
                f"{i}: {w:,} × {h:,} px (downsample {d:g})"
                for i, ((w, h), d) in enumerate(
                    zip(slide.level_dimensions, slide.level_downsamples, strict=True)
                )
            ),
        )
    )
    return rows


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
        rows = slide_rows(slide, self._user_mpp)
        images = list(slide.public_associated_image_names(include))
        hidden = len(slide.associated_image_names) - len(images)
        image_text = ", ".join(images) or "none"
        if hidden:
            image_text += f" ({hidden} hidden: may identify the patient)"
        rows.append(("Associated images", html.escape(image_text)))
        properties = slide.public_properties(include)
        hidden_properties = len(slide.properties) - len(properties)
        body = "".join(f"<tr><td><b>{html.escape(k)}</b></td><td>{v}</td></tr>" for k, v in rows)
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
