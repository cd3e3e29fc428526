"""The slide label: the one name of a slide in output folders and file names.

By default it does not identify the patient: ``slide-<first 12 hex of the slide identity>``
(the identity is OpenSlide's quickhash of the slide's pixels and geometry, or a hash of the
file). Only when the user opts in (``--include-filename``) is it the file's stem, cleaned so
that it is one safe path component whatever the file is called.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from wsiviewer.core.paths import safe_component

#: Characters of the identity in a label: 48 bits, no collision in any real collection.
IDENTITY_CHARS = 12
#: Longest label made from a file name.
MAX_STEM_CHARS = 80


def slide_label(
    identity: str, path: str | Path | None = None, *, include_filename: bool = False
) -> str:
    """``slide-<hash>``; the cleaned file stem of ``path`` only with ``include_filename``.

    The stem keeps letters, digits, ``.``, ``_`` and ``-`` (accents dropped, anything else
    becomes ``_``), never starts with a dot or a dash, is never a Windows device name and is
    at most :data:`MAX_STEM_CHARS` long (:func:`~wsiviewer.core.paths.safe_component`); a stem
    with nothing left falls back to the hash label.
    """
    hashed = "slide-" + (re.sub(r"[^0-9a-f]", "", identity.lower())[:IDENTITY_CHARS] or "unknown")
    if not include_filename or path is None:
        return hashed
    stem = Path(path).name
    for suffix in (".ome.tiff", ".ome.tif"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    else:
        stem = Path(stem).stem
    return safe_component(stem, max_chars=MAX_STEM_CHARS, fallback=hashed)


def unique_labels(labels: Iterable[str]) -> list[str]:
    """``labels`` with repeats numbered (``a``, ``a-2``, ``a-3``...), compared ignoring case
    (folders on macOS and Windows do)."""
    used: set[str] = set()
    out: list[str] = []
    for label in labels:
        candidate, n = label, 2
        while candidate.lower() in used:
            candidate, n = f"{label}-{n}", n + 1
        used.add(candidate.lower())
        out.append(candidate)
    return out
