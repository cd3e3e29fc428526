"""Two ways in that have no menu of their own: dropping a slide file, adding a model card."""

from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtCore import QMimeData, QPoint, Qt, QUrl
from PySide6.QtGui import QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import QApplication, QFileDialog

from wsiviewer.core.model.cards import ModelCard
from wsiviewer.gui.main_window import MainWindow


def _file_mime(*paths: Path | str) -> QMimeData:
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(path)) for path in paths])
    return mime


def _drop(window: MainWindow, mime: QMimeData) -> tuple[bool, bool]:
    """Drag ``mime`` over the window and drop it: (drag accepted, drop accepted)."""
    position = QPoint(window.width() // 2, window.height() // 2)
    actions = Qt.DropAction.CopyAction
    enter = QDragEnterEvent(
        position, actions, mime, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier
    )
    QApplication.sendEvent(window, enter)
    drop = QDropEvent(
        position.toPointF(),
        actions,
        mime,
        Qt.MouseButton.LeftButton,
        Qt.KeyboardModifier.NoModifier,
    )
    QApplication.sendEvent(window, drop)
    return enter.isAccepted(), drop.isAccepted()


def test_dropping_a_slide_file_opens_it(qtbot, window: MainWindow, generated_slide: Path) -> None:  # type: ignore[no-untyped-def]
    with qtbot.waitSignal(window.slide_opened, timeout=10_000) as blocker:
        entered, dropped = _drop(window, _file_mime(generated_slide))
    assert entered
    assert dropped
    assert blocker.args == [str(generated_slide)]
    assert window.slide_path == generated_slide
    assert window.view.slide is not None
    assert window.view.slide.dimensions == (3200, 2400)
    assert window.windowTitle().startswith(generated_slide.name)


def test_dropping_something_that_is_not_a_file_is_refused(
    qtbot, window: MainWindow, generated_slide: Path
) -> None:  # type: ignore[no-untyped-def]
    mime = QMimeData()
    mime.setUrls([QUrl("https://example.org/slide.svs")])
    mime.setText(str(generated_slide))
    entered, dropped = _drop(window, mime)
    assert not entered
    assert not dropped
    assert window.slide is None


def test_dropping_an_unopenable_file_shows_a_dialog(
    qtbot, window: MainWindow, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    junk = tmp_path / "not-a-slide.svs"
    junk.write_bytes(b"not a slide")
    with qtbot.waitSignal(window.error_shown) as blocker:
        _drop(window, _file_mime(junk))
    assert "not-a-slide.svs" in blocker.args[0]
    assert window.slide is None
    window.last_error_box.accept()


def test_add_model_copies_card_and_weights_and_the_chooser_lists_it(
    qtbot,
    window: MainWindow,
    tiny_model_card: Path,
    isolated_data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # type: ignore[no-untyped-def]
    card = ModelCard.from_file(tiny_model_card)
    chooser = window.model_panel.chooser
    listed_before = [chooser.itemText(i) for i in range(chooser.count())]
    assert not any(card.name in text for text in listed_before)
    asked: list[str] = []

    def fake_dialog(parent, caption, directory="", filter=""):  # type: ignore[no-untyped-def]
        asked.append(filter)
        return str(tiny_model_card), filter

    monkeypatch.setattr(QFileDialog, "getOpenFileName", staticmethod(fake_dialog))
    qtbot.mouseClick(window.model_panel.add_button, Qt.MouseButton.LeftButton)

    assert asked == ["Model card (*.json)"]
    models = isolated_data_dir / "models"
    assert (models / tiny_model_card.name).read_bytes() == tiny_model_card.read_bytes()
    weights = card.weights_path
    assert (models / weights.name).read_bytes() == weights.read_bytes()
    listed = [chooser.itemText(i) for i in range(chooser.count())]
    assert any(text.startswith(f"{card.name} v{card.version}") for text in listed)
    assert window.model_panel.card is not None
    assert window.model_panel.card.name == card.name
    # The chosen model is the installed copy, not the file the user picked.
    assert window.model_panel.card.weights_path.parent.resolve() == models.resolve()
    assert chooser.isEnabled()
    assert window.last_error_box is None


def test_cancelling_the_add_model_dialog_changes_nothing(
    qtbot, window: MainWindow, isolated_data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(
        QFileDialog, "getOpenFileName", staticmethod(lambda *args, **kwargs: ("", ""))
    )
    qtbot.mouseClick(window.model_panel.add_button, Qt.MouseButton.LeftButton)
    assert not list((isolated_data_dir / "models").glob("*.json"))
    assert window.model_panel.card is None
