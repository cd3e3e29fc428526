"""The viewer and untrusted slides: any failure opening one is a dialog, a crash of the slide
reader happens in a child process, and a probed slide opens without probing again."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from wsiviewer.gui import main_window as main_window_module
from wsiviewer.gui.main_window import MainWindow


def test_an_unexpected_exception_opening_a_slide_is_a_dialog(
    window: MainWindow,
    generated_slide: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An exception that is not ours (an IndexError from a fast path, say) used to escape
    open_slide: the window lived on but showed nothing."""

    def broken(path: Path) -> None:
        raise IndexError("tuple index out of range")

    monkeypatch.setattr(main_window_module, "open_slide", broken)
    with caplog.at_level(logging.ERROR):
        assert window.open_slide(generated_slide) is False
    assert window.last_error_box is not None
    text = window.last_error_box.text()
    assert "generated-slide.tif cannot be opened" in text
    assert "Unexpected error: IndexError: tuple index out of range" in text
    assert any(record.exc_info for record in caplog.records)  # the traceback is logged
    assert window.slide is None


def test_an_unexpected_exception_reading_pixels_is_a_dialog(
    window: MainWindow, generated_slide: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(slide: object) -> None:
        raise ValueError("The truth value of an array is ambiguous")

    monkeypatch.setattr(main_window_module, "read_base_image", broken)
    assert window.open_slide(generated_slide) is False
    assert window.last_error_box is not None
    assert "its pixels cannot be read" in window.last_error_box.text()


def test_a_reader_crash_is_a_dialog_and_the_slide_is_not_opened(
    window: MainWindow, generated_slide: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.core.slides.test_probe import CRASHING_CHILD
    from wsiviewer.core.slides.probe import SlideProber
    from wsiviewer.gui import slide_probe

    crashing = SlideProber(command=[sys.executable, "-c", CRASHING_CHILD])
    opened: list[Path] = []
    monkeypatch.setattr(slide_probe, "shared_prober", lambda: crashing)
    monkeypatch.setattr(main_window_module, "open_slide", lambda path: opened.append(path))
    try:
        assert window.open_slide(generated_slide) is False
    finally:
        crashing.close()
    assert opened == []  # never opened in the viewer's own process
    assert window.last_error_box is not None
    assert "crashed (SIGSEGV)" in window.last_error_box.text()
    # The verdict is remembered: the file is not handed to a reader again until it changes.
    monkeypatch.setattr(slide_probe, "shared_prober", lambda: pytest.fail("probed again"))
    assert window.open_slide(generated_slide) is False


def test_a_probed_slide_is_not_probed_again_until_it_changes(
    window: MainWindow, generated_slide: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from wsiviewer.gui import slide_probe

    copy = tmp_path / "copy.tif"
    copy.write_bytes(generated_slide.read_bytes())
    probes: list[Path] = []
    real = slide_probe.shared_prober()

    class Counting:
        def probe(self, path: Path) -> object:
            probes.append(path)
            return real.probe(path)

    monkeypatch.setattr(slide_probe, "shared_prober", Counting)
    assert window.open_slide(copy)
    assert window.open_slide(copy)
    assert len(probes) == 1
    copy.write_bytes(generated_slide.read_bytes() + b"\0")  # changed: size and time
    assert window.open_slide(copy)
    assert len(probes) == 2
    window.close_slide()
