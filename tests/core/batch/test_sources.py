"""Batch sources: slide files, folders searched recursively, and text lists."""

from __future__ import annotations

from pathlib import Path

import pytest

from wsiviewer.core.batch.sources import SourceError, find_slides, read_list, search_folder


def touch(path: Path, content: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def test_folder_search_is_recursive_sorted_and_skips_hidden_and_other_files(
    tmp_path: Path,
) -> None:
    b = touch(tmp_path / "b.svs")
    a = touch(tmp_path / "a.NDPI")
    nested = touch(tmp_path / "case 2" / "deep" / "c.tiff")
    touch(tmp_path / "notes.txt")
    touch(tmp_path / ".hidden.svs")
    touch(tmp_path / ".wsiviewer-export-x" / "staged.tif")
    assert search_folder(tmp_path) == [a, b, nested]


def test_output_folder_inside_a_source_is_not_searched(tmp_path: Path) -> None:
    slide = touch(tmp_path / "slide.svs")
    touch(tmp_path / "out" / "slide-abc" / "idc_mask.tif")
    assert find_slides([tmp_path], exclude=[tmp_path / "out"]) == [slide]


def test_lists_are_relative_to_their_folder_and_skip_comments(tmp_path: Path) -> None:
    slide = touch(tmp_path / "slides" / "one.svs")
    absolute = touch(tmp_path / "elsewhere" / "two.svs")
    listing = tmp_path / "slides" / "todo.txt"
    listing.write_text(f"# today\n\none.svs\n  {absolute}  \nmissing.svs\n", encoding="utf-8")
    assert read_list(listing) == [slide, absolute, tmp_path / "slides" / "missing.svs"]


def test_sources_mix_and_each_slide_comes_once(tmp_path: Path) -> None:
    first = touch(tmp_path / "a" / "first.svs")
    second = touch(tmp_path / "b" / "second.tif")
    listing = tmp_path / "list"
    listing.write_text(f"{first}\n{second}\n", encoding="utf-8")
    found = find_slides([first, tmp_path / "a", listing, tmp_path / "a" / ".." / "a" / "first.svs"])
    assert found == [first, second]


def test_a_missing_source_or_a_binary_list_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"Source not found: .*nothing\.svs"):
        find_slides([tmp_path / "nothing.svs"])
    binary = touch(tmp_path / "image.png", bytes(range(256)))
    with pytest.raises(SourceError, match=r"image\.png is neither a slide format"):
        find_slides([binary])
