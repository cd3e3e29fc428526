"""Where wsiviewer keeps its own files: the user data directory and what lives in it.

The data directory holds the results database and its map files (:mod:`wsiviewer.core.store`)
and a ``models`` folder for models the user adds. It is platformdirs' user data directory for
``wsiviewer`` unless the ``WSIVIEWER_DATA_DIR`` environment variable names another (tests always
set it). Nothing here ever writes next to a slide.
"""

from __future__ import annotations

import os
import re
import unicodedata
from pathlib import Path

from platformdirs import user_data_dir

#: Environment variable that overrides the user data directory.
DATA_DIR_ENV = "WSIVIEWER_DATA_DIR"

APP_NAME = "wsiviewer"


def data_dir() -> Path:
    """The user data directory, created if it does not exist yet.

    ``$WSIVIEWER_DATA_DIR`` when set and not empty (``~`` is expanded), else platformdirs'
    ``user_data_dir("wsiviewer")``.

    Raises
    ------
    OSError
        If the directory does not exist and cannot be created.
    """
    override = os.environ.get(DATA_DIR_ENV, "").strip()
    if override:
        path = Path(override).expanduser()
    else:
        # appauthor=False: no "<author>\" level on Windows; the app name is enough.
        path = Path(user_data_dir(APP_NAME, appauthor=False))
    path.mkdir(parents=True, exist_ok=True)
    return path


def user_models_dir() -> Path:
    """The folder where users add models (``<name>.safetensors`` + ``<name>.json``), created
    if it does not exist yet.

    Raises
    ------
    OSError
        If the directory does not exist and cannot be created.
    """
    path = data_dir() / "models"
    path.mkdir(exist_ok=True)
    return path


#: What a file-name component made from outside text may contain.
_UNSAFE_COMPONENT = re.compile(r"[^A-Za-z0-9._-]+")
_WINDOWS_DEVICES = frozenset(
    {"CON", "PRN", "AUX", "NUL"} | {f"{port}{n}" for port in ("COM", "LPT") for n in range(1, 10)}
)


def safe_component(text: str, *, max_chars: int = 80, fallback: str = "unnamed") -> str:
    """``text`` as one safe path component: letters, digits, ``.``, ``_`` and ``-`` only
    (accents dropped, anything else becomes ``_``), never starting with a dot or a dash, at
    most ``max_chars`` long, never a Windows device name; ``fallback`` if nothing is left.

    Whatever ``text`` holds (``..``, ``/``, ``\\``, a drive, an absolute path, control
    characters), the result names a file inside the folder it is joined to.
    """
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    cleaned = _UNSAFE_COMPONENT.sub("_", ascii_text).strip("._-")[:max_chars].rstrip("._-")
    if cleaned.split(".")[0].upper() in _WINDOWS_DEVICES:
        cleaned = f"_{cleaned}"  # CON, NUL, COM1... name devices on Windows, not files
    return cleaned or fallback


def inside(folder: Path, name: str) -> Path:
    """``folder / name``, refused unless it names an entry directly inside ``folder``.

    Raises
    ------
    ValueError
        If ``name`` is empty, ``.`` or ``..``, absolute, or has a path separator.
    """
    candidate = folder / name
    if (
        name in ("", ".", "..")
        or Path(name).is_absolute()
        or Path(name).name != name
        or "/" in name
        or "\\" in name
        or candidate.parent != folder
    ):
        raise ValueError(f"{name!r} is not a file name inside {folder}")
    return candidate


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (as far as this process can tell).

    Used to tell the temporary files of a running writer from those a killed one left.
    A process of another user counts as alive; so does any process where the question cannot
    be asked (not POSIX), so nothing a live writer owns is ever removed.
    """
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    if os.name != "posix":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, under another user
        return True
    return True


def pid_tag() -> str:
    """This process's id, as written into the names of temporary files and folders: those
    of a process that no longer runs are removed by later runs."""
    return str(os.getpid())


#: A temporary name with a writer's process id: ``<prefix><pid>-<anything>``.
_TAGGED = re.compile(r"(\d+)-")


def tagged_pid(name: str, prefix: str) -> int | None:
    """The process id in a temporary name ``<prefix><pid>-...``, or ``None``."""
    if not name.startswith(prefix):
        return None
    found = _TAGGED.match(name, len(prefix))
    return int(found.group(1)) if found else None
