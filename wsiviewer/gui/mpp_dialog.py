"""Asking a slide's µm/px when its metadata does not say.

The field starts empty unless the slide's objective power gives a guess: a value typed in for
the user (the old 0.25 "whatever the slide") is too easily accepted unread, and a wrong µm/px
analyses the slide at the wrong scale. Presets fill in the usual scan resolutions.
"""

from __future__ import annotations

from PySide6.QtGui import QDoubleValidator
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from wsiviewer.core.units import PLAUSIBLE_MPP_RANGE

#: (button, µm/px) of the usual scan resolutions.
PRESETS = (("40x: 0.25", 0.25), ("20x: 0.5", 0.5), ("10x: 1.0", 1.0))


class MppDialog(QDialog):
    """The slide's µm/px: a field (empty unless ``guess``), presets, OK once it is valid."""

    def __init__(self, why: str, guess: float | None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Slide resolution")
        self.setMinimumWidth(440)
        low, high = PLAUSIBLE_MPP_RANGE
        self.field = QLineEdit("" if guess is None else f"{guess:.4g}")
        self.field.setPlaceholderText(f"µm per pixel ({low:g}–{high:g})")
        validator = QDoubleValidator(low, high, 4, self.field)
        validator.setNotation(QDoubleValidator.Notation.StandardNotation)
        self.field.setValidator(validator)
        presets = QHBoxLayout()
        for text, value in PRESETS:
            button = QPushButton(text)
            button.setAutoDefault(False)
            button.clicked.connect(lambda _=False, v=value: self.field.setText(f"{v:g}"))
            presets.addWidget(button)
        self.buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        label = QLabel(why)
        label.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.addWidget(label)
        layout.addWidget(self.field)
        layout.addLayout(presets)
        layout.addWidget(self.buttons)
        self.field.textChanged.connect(self._update_ok)
        self._update_ok()

    @property
    def value(self) -> float | None:
        """The entered µm/px, ``None`` while the field is empty or out of range."""
        if not self.field.hasAcceptableInput():
            return None
        try:
            return float(self.field.text())
        except ValueError:
            return None

    def _update_ok(self) -> None:
        ok = self.buttons.button(QDialogButtonBox.StandardButton.Ok)
        ok.setEnabled(self.value is not None)
