"""wsiviewer: whole-slide images with a CancerNet IDC probability heatmap.

Research use only: the probabilities are a model's output, not a diagnosis.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from wsiviewer.errors import (
    DatasetError,
    DeviceError,
    ExportError,
    ModelError,
    OutputExistsError,
    QuPathImportError,
    ResolutionError,
    ReviewError,
    SelectionError,
    SlideOpenError,
    SlideReadError,
    SlideTooLargeError,
    StoreError,
    WsiViewerError,
)

try:
    __version__ = version("wsiviewer")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

RESEARCH_USE_NOTICE = (
    "Research use only. Not for diagnosis: IDC probabilities are a model's output "
    "and must be reviewed by a pathologist."
)

__all__ = [
    "RESEARCH_USE_NOTICE",
    "DatasetError",
    "DeviceError",
    "ExportError",
    "ModelError",
    "OutputExistsError",
    "QuPathImportError",
    "ResolutionError",
    "ReviewError",
    "SelectionError",
    "SlideOpenError",
    "SlideReadError",
    "SlideTooLargeError",
    "StoreError",
    "WsiViewerError",
    "__version__",
]
