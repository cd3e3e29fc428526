"""The review panel's small widget helpers: an action that names its keys, its button, a grid,
and giving the keyboard back to the slide.

Shared by the parts of the review panel (:mod:`wsiviewer.gui.review_panel`), so every review
action is made the same way: a window-wide shortcut (the window adds the actions to its Review
menu) and a tooltip that ends with the keys.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from PySide6.QtCore import QObject, Qt
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import QGridLayout, QSizePolicy, QToolButton, QWidget


def make_action(
    parent: QObject,
    text: str,
    slot: Callable[[], object],
    shortcuts: Sequence[str | QKeySequence.StandardKey] = (),
    tip: str = "",
) -> QAction:
    """An action calling ``slot``, its shortcuts window-wide, its tooltip naming the keys."""
    action = QAction(text, parent)
    action.setShortcuts([QKeySequence(s) for s in shortcuts])
    action.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
    if tip:
        keys = ", ".join(QKeySequence(s).toString() for s in shortcuts)
        action.setToolTip(f"{tip} ({keys})" if keys else tip)
        action.setStatusTip(tip)
    action.triggered.connect(lambda _=False: slot())
    return action


def tool_button(action: QAction, text: str) -> QToolButton:
    """A text button for ``action`` showing ``text`` (menus keep the action's own text)."""
    action.setIconText(text)
    button = QToolButton()
    button.setDefaultAction(action)
    button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
    button.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
    button.setFocusPolicy(Qt.FocusPolicy.NoFocus)
    return button


def button_grid(buttons: Sequence[tuple[QAction, str]], columns: int) -> QGridLayout:
    """``(action, text)`` buttons in rows of ``columns``, in order."""
    grid = QGridLayout()
    grid.setSpacing(4)
    for position, (action, text) in enumerate(buttons):
        grid.addWidget(tool_button(action, text), position // columns, position % columns)
    return grid


def give_keys_back(view: QWidget) -> None:
    """After typing in a field, the letter shortcuts work again at once: the keyboard goes
    back to the slide (issue 13: they were dead until the slide was clicked)."""
    view.setFocus(Qt.FocusReason.OtherFocusReason)
