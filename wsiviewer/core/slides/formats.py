"""The slide formats OpenSlide reads, by file extension: one list for the viewer's File › Open
filter, folder search in ``wsiviewer batch`` and the viewer's case list.

An extension is a hint, not a promise: a ``.tif`` may be a plain image and a ``.dcm`` one file
of a multi-file DICOM slide; whoever opens the file finds out (:func:`~.open_slide`).
"""

from __future__ import annotations

from pathlib import Path

#: (vendor or kind, extensions) in the order the File › Open filter lists them.
SLIDE_FORMATS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Aperio", (".svs", ".tif")),
    ("Hamamatsu", (".ndpi", ".vms", ".vmu")),
    ("Leica", (".scn",)),
    ("MIRAX", (".mrxs",)),
    ("Philips TIFF", (".tiff",)),
    ("Sakura", (".svslide",)),
    ("Ventana", (".bif", ".tif")),
    ("DICOM", (".dcm",)),
    ("Zeiss", (".czi",)),
    ("Generic tiled TIFF", (".tif", ".tiff")),
)


#: Every extension of :data:`SLIDE_FORMATS`, lower case with the dot.
SLIDE_EXTENSIONS: tuple[str, ...] = (
    ".svs",
    ".tif",
    ".tiff",
    ".ndpi",
    ".vms",
    ".vmu",
    ".scn",
    ".mrxs",
    ".svslide",
    ".bif",
    ".dcm",
    ".czi",
)


def is_slide_file(path: str | Path) -> bool:
    """Whether ``path`` has the extension of a format OpenSlide reads (any case)."""
    return Path(path).suffix.lower() in SLIDE_EXTENSIONS


def slide_file_filter() -> str:
    """A Qt file dialog filter: all slide formats, each format, then all files."""

    def patterns(extensions: tuple[str, ...]) -> str:
        return " ".join(f"*{ext}" for ext in extensions)

    parts = [f"Slides ({patterns(SLIDE_EXTENSIONS)})"]
    parts += [f"{name} ({patterns(extensions)})" for name, extensions in SLIDE_FORMATS]
    parts.append("All files (*)")
    return ";;".join(parts)
