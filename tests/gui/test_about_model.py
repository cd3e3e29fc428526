"""Help › About this model…: the page, the example gallery on a worker, and closing it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PySide6.QtCore import QSettings, QThreadPool

from tests.conftest import REPO
from wsiviewer.core.model.about import IDC_DATA_ENV
from wsiviewer.core.model.cards import ModelCard
from wsiviewer.gui.about_model import IDC_FOLDER_KEY, AboutModelDialog
from wsiviewer.gui.main_window import MainWindow
from wsiviewer.gui.model_panel import ModelPanel


@pytest.fixture
def card() -> ModelCard:
    return ModelCard.from_file(REPO / "models" / "resnet8-cv.json")


@pytest.fixture
def idc_subset(idc_dir: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "idc"
    shutil.copytree(idc_dir / "13916", folder / "13916")
    return folder


@pytest.fixture(autouse=True)
def no_dataset_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(IDC_DATA_ENV, raising=False)


def wait_for_workers(qtbot) -> None:  # type: ignore[no-untyped-def]
    pool = QThreadPool.globalInstance()
    qtbot.waitUntil(lambda: pool.activeThreadCount() == 0, timeout=60_000)


def test_page_without_the_dataset_says_where_examples_come_from(
    qtbot, card: ModelCard, settings: QSettings
) -> None:
    dialog = AboutModelDialog(card, settings)
    qtbot.addWidget(dialog)
    text = " ".join(dialog.browser.toPlainText().split())
    figures = card.extra["metrics"]["out_of_fold"]
    assert f"of 100 IDC patches it flags about {round(figures['sensitivity'] * 100)};" in text
    assert "Research use only" in text
    assert not dialog.running
    assert dialog.gallery.count() == 0
    assert "not shipped" in dialog.status.text()
    assert IDC_DATA_ENV in dialog.status.text()
    assert dialog.choose_button.isEnabled()


def test_chosen_folder_makes_examples_and_is_remembered(
    qtbot, card: ModelCard, settings: QSettings, idc_subset: Path
) -> None:
    dialog = AboutModelDialog(card, settings)
    qtbot.addWidget(dialog)
    with qtbot.waitSignal(dialog.examples_finished, timeout=60_000):
        dialog.choose_folder(idc_subset)
    assert settings.value(IDC_FOLDER_KEY) == str(idc_subset)
    assert dialog.gallery.count() > 0
    for row in range(dialog.gallery.count()):
        item = dialog.gallery.item(row)
        assert item.text().startswith("13916 · non-IDC")
        assert not item.icon().isNull()
    assert "Not in the folder" in dialog.status.text()
    # A new dialog finds the remembered folder by itself.
    again = AboutModelDialog(card, settings)
    qtbot.addWidget(again)
    assert again.running
    with qtbot.waitSignal(again.examples_finished, timeout=60_000):
        pass
    assert again.gallery.count() == dialog.gallery.count()
    wait_for_workers(qtbot)


def test_bad_folder_shows_the_error(qtbot, card: ModelCard, tmp_path: Path) -> None:
    dialog = AboutModelDialog(card)
    qtbot.addWidget(dialog)
    with qtbot.waitSignal(dialog.examples_finished, timeout=60_000):
        dialog.start_examples(tmp_path)
    assert "Cannot make the example patches" in dialog.status.text()
    assert "None of the patients" in dialog.status.text()
    wait_for_workers(qtbot)


def test_closing_stops_the_worker(
    qtbot, card: ModelCard, settings: QSettings, idc_subset: Path
) -> None:
    settings.setValue(IDC_FOLDER_KEY, str(idc_subset))
    dialog = AboutModelDialog(card, settings)
    qtbot.addWidget(dialog)
    dialog.show()
    assert dialog.running
    with qtbot.waitSignal(dialog.examples_finished) as stopped:
        dialog.close()
    assert stopped.args == ["stopped"]
    assert not dialog.running
    wait_for_workers(qtbot)
    assert dialog.gallery.count() == 0


@pytest.mark.shipped_models
def test_model_panel_button_opens_the_chosen_models_page(qtbot, settings: QSettings) -> None:
    from wsiviewer.core.model.cards import available_models

    panel = ModelPanel(settings=settings)
    qtbot.addWidget(panel)
    panel.set_cards(available_models(), preferred="resnet8")
    panel.about_button.click()
    dialog = panel.about_dialog
    assert dialog is not None
    assert dialog.card.name == "resnet8"
    assert dialog.settings is settings
    assert "resnet8 0.1.0" in dialog.windowTitle()
    dialog.close()
    wait_for_workers(qtbot)


def test_help_menu_opens_the_page_and_the_window_closes_it(
    qtbot, window: MainWindow, installed_model: Path
) -> None:
    window.reload_models()
    help_actions = [a for m in window.menuBar().actions() for a in m.menu().actions()]
    assert window.about_model_action in help_actions
    window.about_model_action.trigger()
    dialog = window.model_panel.about_dialog
    assert dialog is not None
    assert dialog.card.name == window.model_panel.card.name  # type: ignore[union-attr]
    text = " ".join(dialog.browser.toPlainText().split())
    assert "no measured sensitivity or specificity" in text
    assert "names no weak patients" in dialog.status.text()
    window.close()
    assert window.model_panel.about_dialog is None


def test_help_menu_without_any_model_shows_an_error(qtbot, window: MainWindow) -> None:
    assert window.model_panel.card is None
    with qtbot.waitSignal(window.error_shown) as shown:
        window.about_model_action.trigger()
    assert "No model is installed" in shown.args[0]
    assert window.model_panel.about_dialog is None


def test_the_card_reads_its_threshold_to_three_decimals(card: ModelCard) -> None:
    from dataclasses import replace

    from wsiviewer.gui.model_panel import model_card_html

    text = model_card_html(replace(card, threshold=0.137872))
    assert "P ≥ 0.138 (regions are drawn at this probability)" in text
    assert "0.137872" not in text
