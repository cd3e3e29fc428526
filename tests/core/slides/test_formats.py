"""The slide formats list: one source for the viewer's filter and folder search."""

from __future__ import annotations

import pytest

from wsiviewer.core.slides.formats import (
    SLIDE_EXTENSIONS,
    SLIDE_FORMATS,
    is_slide_file,
    slide_file_filter,
)


@pytest.mark.parametrize(
    "name", ["a.svs", "b.TIF", "c.tiff", "d.ndpi", "e.mrxs", "f.dcm", "g.czi", "h.SvSlide"]
)
def test_slide_extensions_are_recognised_in_any_case(name: str) -> None:
    assert is_slide_file(name)


@pytest.mark.parametrize("name", ["notes.txt", "slides.csv", "image.png", "noextension", ".svs"])
def test_other_files_are_not_slides(name: str) -> None:
    assert not is_slide_file(name)


def test_the_filter_lists_every_extension_once_then_each_format() -> None:
    text = slide_file_filter()
    first, *formats, last = text.split(";;")
    assert first == "Slides (" + " ".join(f"*{ext}" for ext in SLIDE_EXTENSIONS) + ")"
    assert [part.split(" (")[0] for part in formats] == [name for name, _ in SLIDE_FORMATS]
    assert last == "All files (*)"
    assert len(set(SLIDE_EXTENSIONS)) == len(SLIDE_EXTENSIONS)
    assert {ext for _, exts in SLIDE_FORMATS for ext in exts} == set(SLIDE_EXTENSIONS)
