"""What ``wsiviewer batch SOURCES...`` and the case list analyse: slide paths from sources.

A source is a slide file, a folder (searched recursively for every format OpenSlide reads,
:mod:`wsiviewer.core.slides.formats`), or a text file listing one path per line (blank lines
and ``#`` comments skipped; relative paths are relative to the list's folder). A file with a
slide extension is a slide; any other file is read as a list.

Folder search skips hidden files and folders (our own staging folders among them) and
everything under the folders given as ``exclude`` (the batch's output folder: its
``idc_mask.tif`` files are TIFFs too).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from wsiviewer.core.slides.formats import is_slide_file
from wsiviewer.errors import WsiViewerError

#: A text list larger than this is not a list of paths.
MAX_LIST_BYTES = 16 * 1024 * 1024


class SourceError(WsiViewerError):
    """A batch source is missing, unreadable, or neither a slide, a folder nor a list."""


def find_slides(sources: Sequence[str | Path], exclude: Iterable[str | Path] = ()) -> list[Path]:
    """The slide paths of ``sources``, in order, each once (by resolved path).

    Paths named in a list are returned even if they do not exist: the batch records them as
    failed ("Slide not found"), like any slide that cannot be opened.

    Raises
    ------
    SourceError
        If a source given directly does not exist, or a list cannot be read as text.
    """
    excluded = [_resolved(Path(folder)) for folder in exclude]
    found: list[Path] = []
    seen: set[Path] = set()

    def add(path: Path) -> None:
        resolved = _resolved(path)
        if resolved not in seen and not _is_under(resolved, excluded):
            seen.add(resolved)
            found.append(path)

    for source in map(Path, sources):
        if source.is_dir():
            for path in search_folder(source, excluded):
                add(path)
        elif not source.exists():
            raise SourceError(f"Source not found: {source}")
        elif is_slide_file(source):
            add(source)
        else:
            for path in read_list(source):
                add(path)
    return found


def search_folder(folder: str | Path, exclude: Iterable[str | Path] = ()) -> list[Path]:
    """Every slide file under ``folder`` (recursively, sorted, hidden entries skipped)."""
    folder = Path(folder)
    excluded = [_resolved(Path(path)) for path in exclude]
    found: list[Path] = []
    for root, folders, files in os.walk(folder, onerror=None):
        root_path = Path(root)
        folders[:] = sorted(
            name
            for name in folders
            if not name.startswith(".") and not _is_under(_resolved(root_path / name), excluded)
        )
        found += [
            root_path / name
            for name in sorted(files)
            if not name.startswith(".") and is_slide_file(name)
        ]
    return found


def read_list(path: str | Path) -> list[Path]:
    """The paths listed in a text file, one per line (see the module docstring).

    Raises
    ------
    SourceError
        If the file cannot be read, is too large or is not UTF-8 text.
    """
    path = Path(path)
    try:
        if path.stat().st_size > MAX_LIST_BYTES:
            raise SourceError(
                f"{path} is neither a slide format OpenSlide reads nor a list of slides "
                f"(a list is a text file under {MAX_LIST_BYTES // 2**20} MiB)"
            )
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise SourceError(
            f"{path} is neither a slide format OpenSlide reads nor a text list of slides"
        ) from None
    except OSError as exc:
        raise SourceError(f"Cannot read the slide list {path}: {exc}") from exc
    if "\x00" in text:
        raise SourceError(f"{path} is neither a slide format OpenSlide reads nor a list of slides")
    listed: list[Path] = []
    for line in text.splitlines():
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        listed.append(path.parent / Path(entry).expanduser())
    return listed


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except OSError:
        return path.absolute()


def _is_under(path: Path, folders: Sequence[Path]) -> bool:
    return any(path == folder or folder in path.parents for folder in folders)
