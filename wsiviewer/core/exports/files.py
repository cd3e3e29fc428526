"""Writing files: staged sets of files, atomic single files, and what a summary may contain.

Every file wsiviewer writes for a user is written atomically (a temp file beside its target,
then ``os.replace``); a set of files is staged in a hidden folder and moved into place only
once all are written, or, for the workflow, only once the Store has recorded the analysis
(:func:`deferred_moves`). Staging folders carry their writer's process id, so those a killed
process left are removed by the next write into the same folder. Summaries lose every key that
names a file, folder or path (privacy).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import numpy as np

from wsiviewer.core.atomic import atomic_path
from wsiviewer.core.paths import pid_tag, process_alive, tagged_pid
from wsiviewer.errors import ExportError, OutputExistsError

#: Keys dropped from any summary we export (``path``, ``card_path``, ``filename``, ``dir``...):
#: a file name or path must never leak out.
_PRIVATE_KEY = re.compile(r"(^|_)(path|file|filename|file_name|dir|folder|directory)s?($|_)")


#: Prefix of the hidden folder a set of files is staged in, inside its output folder; the
#: writer's process id follows (``.wsiviewer-export-<pid>-<random>``).
STAGING_PREFIX = ".wsiviewer-export-"
#: A file in a staging folder naming the journal (the workflow's) that finishes or undoes it.
JOURNAL_MARKER = ".journal"
#: A staging folder without a process id (older versions) is stale after this long.
STALE_UNTAGGED_S = 3600.0


@dataclass
class StagedFiles:
    """A set of files written into a staging folder, not yet in their output folder."""

    out_dir: Path
    staging: Path
    names: tuple[str, ...]
    #: Folders created to hold the outputs (deepest last): removed again if left empty.
    created: tuple[Path, ...] = ()

    @property
    def final_paths(self) -> dict[str, Path]:
        """Where each file goes, by name."""
        return {name: self.out_dir / name for name in self.names}

    def commit(self) -> dict[str, Path]:
        """Move every file into the output folder (``os.replace``); their final paths.

        Raises
        ------
        ExportError
            If a move fails; files already moved stay (each whole), the rest are removed.
        """
        try:
            for name in self.names:
                source = self.staging / name
                if source.exists():  # else moved by an earlier, interrupted commit
                    os.replace(source, self.out_dir / name)
        except OSError as exc:
            raise ExportError(f"Cannot write outputs to {self.out_dir}: {exc}") from exc
        finally:
            shutil.rmtree(self.staging, ignore_errors=True)
        return self.final_paths

    def discard(self) -> None:
        """Remove the staged files, and the output folders created for them if empty."""
        shutil.rmtree(self.staging, ignore_errors=True)
        for folder in reversed(self.created):
            try:
                folder.rmdir()  # only if empty: never anything the user put there
            except OSError:
                break


_DEFERRED: ContextVar[list[StagedFiles] | None] = ContextVar("deferred_moves", default=None)


@contextmanager
def deferred_moves() -> Iterator[list[StagedFiles]]:
    """Within this context :func:`write_staged` writes and stages its files but does not move
    them: it returns their final paths and adds the :class:`StagedFiles` to the list yielded,
    for the caller to :meth:`~StagedFiles.commit` once something else has succeeded (the
    workflow commits the Store first) or to :meth:`~StagedFiles.discard`.

    If the body raises, everything staged in it is discarded.
    """
    staged: list[StagedFiles] = []
    token = _DEFERRED.set(staged)
    try:
        yield staged
    except BaseException:
        for files in staged:
            files.discard()
        raise
    finally:
        _DEFERRED.reset(token)


def write_staged(
    out_dir: str | os.PathLike[str], writers: Mapping[str, Callable[[Path], object]]
) -> dict[str, Path]:
    """Write a set of files into ``out_dir`` so that none appears unless all were written.

    Each ``writers[name](path)`` writes one file into a hidden staging folder inside
    ``out_dir`` (several at once: encoders release the GIL); the files are moved into place
    with :func:`os.replace` only once all are written (or, inside :func:`deferred_moves`, when
    the caller commits them). On any failure, or a cancel, none of them appears, older files
    stay as they were, and a folder created for them is removed again; only ``os.replace``
    itself failing during the final moves could leave new and old files side by side, each of
    them whole. Staging folders that killed processes left in ``out_dir`` are removed.

    Raises
    ------
    ExportError
        If the folder cannot be created or a file cannot be written.
    """
    staged = stage_files(out_dir, writers)
    deferred = _DEFERRED.get()
    if deferred is not None:
        deferred.append(staged)
        return staged.final_paths
    try:
        return staged.commit()
    except BaseException:
        staged.discard()
        raise


def stage_files(
    out_dir: str | os.PathLike[str], writers: Mapping[str, Callable[[Path], object]]
) -> StagedFiles:
    """Write every file into a new staging folder inside ``out_dir`` (created if missing).

    Raises
    ------
    ExportError
        If the folder cannot be created or a file cannot be written; nothing is left then
        (not even the folder, if it was created here).
    """
    out_dir = Path(out_dir)
    created = _missing_folders(out_dir)
    staged = StagedFiles(
        out_dir,
        out_dir / f"{STAGING_PREFIX}{pid_tag()}-{uuid.uuid4().hex[:12]}",
        tuple(writers),
        created,
    )
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_staging(out_dir)
        staged.staging.mkdir()
    except OSError as exc:
        staged.discard()
        raise ExportError(f"Cannot create output folder {out_dir}: {exc}") from exc
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            futures = [pool.submit(write, staged.staging / name) for name, write in writers.items()]
            for future in futures:
                future.result()
    except BaseException as exc:
        staged.discard()
        if isinstance(exc, OSError):
            raise ExportError(f"Cannot write outputs to {out_dir}: {exc}") from exc
        raise
    return staged


def remove_stale_staging(out_dir: Path) -> list[Path]:
    """Remove the staging folders in ``out_dir`` that killed processes left; those removed.

    A staging folder whose writer still runs is left alone, and so is one a pending journal
    will finish or undo (it names the journal in :data:`JOURNAL_MARKER`, and the journal
    exists): the workflow's recovery decides what becomes of those.
    """
    removed: list[Path] = []
    try:
        entries = list(out_dir.iterdir())
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(STAGING_PREFIX) or not entry.is_dir():
            continue
        pid = tagged_pid(entry.name, STAGING_PREFIX)
        if pid is None:
            try:
                stale = time.time() - entry.stat().st_mtime > STALE_UNTAGGED_S
            except OSError:
                continue
        else:
            stale = not process_alive(pid)
        if not stale or _journal_pending(entry):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


def _journal_pending(staging: Path) -> bool:
    try:
        journal = Path((staging / JOURNAL_MARKER).read_text(encoding="utf-8").strip())
    except (OSError, UnicodeDecodeError):
        return False
    return journal.is_file()


def _missing_folders(folder: Path) -> tuple[Path, ...]:
    """The folders from the first missing ancestor of ``folder`` down to it."""
    missing: list[Path] = []
    current = folder
    while not current.exists() and current != current.parent:
        missing.append(current)
        current = current.parent
    return tuple(reversed(missing))


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


def refuse_to_replace(out_dir: str | os.PathLike[str], names: Iterable[str], what: str) -> None:
    """:class:`OutputExistsError` naming the files of ``names`` that exist in ``out_dir``
    (``what`` they are: "this export", "this explanation"); nothing is written then."""
    folder = Path(out_dir)
    existing = [folder / name for name in names if (folder / name).exists()]
    if existing:
        shown = ", ".join(path.name for path in existing[:4])
        more = f" and {len(existing) - 4} more" if len(existing) > 4 else ""
        raise OutputExistsError(
            f"{len(existing)} file(s) of {what} exist in {out_dir}: {shown}{more}; "
            "nothing was written (choose another folder, or overwrite: --force)",
            tuple(str(path) for path in existing),
        )


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
