"""The exception hierarchy of wsiviewer, re-exported from the package root."""

from __future__ import annotations


class WsiViewerError(Exception):
    """Base class of every error wsiviewer raises on purpose."""


class SlideOpenError(WsiViewerError):
    """A slide could not be opened (missing file, unsupported format, corrupt header)."""


class SlideReadError(WsiViewerError):
    """Pixels of an opened slide could not be read (bad level, corrupt tile)."""


class SlideTooLargeError(SlideReadError):
    """A slide, or a read of it, is too large to process within wsiviewer's memory bounds."""


class ResolutionError(WsiViewerError):
    """A slide's µm/px is missing, implausible, or too coarse for the model."""


class ModelError(WsiViewerError):
    """A model card or its weights are missing, malformed or do not match."""


class DeviceError(WsiViewerError):
    """The requested compute device is not available."""


class StoreError(WsiViewerError):
    """The results database could not be opened, migrated or written."""


class ExportError(WsiViewerError):
    """An output file could not be written."""


class OutputExistsError(ExportError):
    """An export would replace files that exist (``paths``); nothing was written."""

    def __init__(self, message: str, paths: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.paths = paths


class ReviewError(WsiViewerError):
    """A review action names a region that is not in the set, is deleted, or is invalid."""


class QuPathImportError(WsiViewerError):
    """A GeoJSON file of QuPath annotations could not be read."""


class SelectionError(WsiViewerError):
    """No analysis or region set of a slide matches what was asked for."""


class DatasetError(WsiViewerError):
    """The IDC patch dataset or a patient split could not be read."""


def escape_control(text: str) -> str:
    """``text`` with every control character written as an escape (``\\x1b``, ``\\n``...).

    Error messages quote file names, property values and library messages taken from the file:
    a crafted slide must not reach a terminal's escape sequences (ESC, CSI, OSC), rewrite a
    line (CR, backspace) or fake a second message (newline). Printable text, accents and
    symbols (µ, ×) are kept as they are.
    """
    if text.isprintable():
        return text
    return "".join(
        char if char.isprintable() or char == " " else char.encode("unicode_escape").decode()
        for char in text
    )
