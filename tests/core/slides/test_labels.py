"""Slide labels and other names made from outside text are one safe path component."""

from __future__ import annotations

from pathlib import Path

import pytest

from wsiviewer.core.paths import inside, safe_component
from wsiviewer.core.slides.label import slide_label, unique_labels

IDENTITY = "3c60dde6d6da" + "0" * 52


@pytest.mark.parametrize(
    ("name", "label"),
    [
        ("...svs", "slide-3c60dde6d6da"),  # the stem is "..": nothing safe is left
        ("../../etc/passwd.svs", "passwd"),
        ("/abs/path/case 17.svs", "case_17"),
        ("-rf.tif", "rf"),
        (".hidden.tif", "hidden"),
        ("\x1b[2J\x1b]0;pwned\x07.tif", "2J_0_pwned"),
        ("a\nb.tif", "a_b"),
        ("CON.tif", "_CON"),
        ("nul.svs", "_nul"),
        ("\u202egnp.tif", "gnp"),
        ("Zoë Müller.ome.tiff", "Zoe_Muller"),
        ("x" * 200 + ".svs", "x" * 80),
    ],
)
def test_labels_from_hostile_file_names(name: str, label: str) -> None:
    made = slide_label(IDENTITY, Path(name), include_filename=True)
    assert made == label
    folder = Path("/out")
    assert inside(folder, made).parent == folder
    assert slide_label(IDENTITY, Path(name)) == "slide-3c60dde6d6da"  # the default: no name


def test_repeated_labels_are_numbered_ignoring_case() -> None:
    assert unique_labels(["a", "A", "a", "b"]) == ["a", "A-2", "a-3", "b"]


@pytest.mark.parametrize("text", ["..", ".", "", "/", "\\", "a/b", "C:\\x", "\x00"])
def test_safe_component_is_never_a_path(text: str) -> None:
    component = safe_component(text)
    assert "/" not in component
    assert "\\" not in component
    assert component not in ("", ".", "..")
    assert inside(Path("/base"), component) == Path("/base") / component
