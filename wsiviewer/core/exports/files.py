"""Writing files: staged sets of files, atomic single files, and what a summary may contain.

Every file wsiviewer writes for a user is written atomically (a temp file beside its target,
then ``os.replace``); a set of files is staged in a hidden folder and moved into place only
once all are written. Summaries lose every key that names a file, folder or path (privacy).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TextIO

import numpy as np

from wsiviewer.core.atomic import atomic_path
from wsiviewer.errors import ExportError

if TYPE_CHECKING:
    pass


#: Keys dropped from any summary we export (``path``, ``card_path``, ``filename``, ``dir``...):
#: a file name or path must never leak out.
_PRIVATE_KEY = re.compile(r"(^|_)(path|file|filename|file_name|dir|folder|directory)s?($|_)")


def write_staged(
    out_dir: str | os.PathLike[str], writers: Mapping[str, Callable[[Path], object]]
) -> dict[str, Path]:
    """Write a set of files into ``out_dir`` so that none appears unless all were written.

    Each ``writers[name](path)`` writes one file into a hidden staging folder inside
    ``out_dir`` (several at once: encoders release the GIL); the files are moved into place
    with :func:`os.replace` only once all are written. On any failure, or a cancel, none of
    them appears and older files stay as they were; only ``os.replace`` itself failing during
    the final moves could leave new and old files side by side, each of them whole.

    Raises
    ------
    ExportError
        If the folder cannot be created or a file cannot be written.
    """
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".wsiviewer-export-", dir=out_dir))
    except OSError as exc:
        raise ExportError(f"Cannot create output folder {out_dir}: {exc}") from exc
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            futures = [pool.submit(write, staging / name) for name, write in writers.items()]
            for future in futures:
                future.result()
        written: dict[str, Path] = {}
        for name in writers:
            os.replace(staging / name, out_dir / name)
            written[name] = out_dir / name
        return written
    except OSError as exc:
        raise ExportError(f"Cannot write outputs to {out_dir}: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def as_json(value: object) -> Any:
    """A summary object as JSON-ready data: ``to_dict()``, a dataclass, or a mapping."""
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        value = to_dict()
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    return json.loads(json.dumps(value, default=_json_default))


def _json_default(value: object) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    if isinstance(value, Path):
        return None  # never export a path
    return str(value)


def without_paths(value: Any) -> Any:
    """``value`` without keys that name a file, folder or path (DESIGN.md, Privacy)."""
    if isinstance(value, Mapping):
        return {
            key: without_paths(item)
            for key, item in value.items()
            if not _PRIVATE_KEY.search(str(key).lower())
        }
    if isinstance(value, list):
        return [without_paths(item) for item in value]
    return value


def finite_or_none(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def write_text(
    path: str | os.PathLike[str], write: Callable[[TextIO], object], *, newline: str | None = None
) -> Path:
    path = Path(path)
    try:
        with atomic_path(path) as temp_path:
            with temp_path.open("w", encoding="utf-8", newline=newline) as handle:
                write(handle)
    except OSError as exc:
        raise ExportError(f"Cannot write {path}: {exc}") from exc
    return path


def write_binary(path: str | os.PathLike[str], write: Callable[[BinaryIO], object]) -> Path:
    path = Path(path)
    try:
        with atomic_path(path) as temp_path:
            with temp_path.open("wb") as handle:
                write(handle)
    except OSError as exc:
        raise ExportError(f"Cannot write {path}: {exc}") from exc
    return path
