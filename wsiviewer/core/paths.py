"""Where wsiviewer keeps its own files: the user data directory and what lives in it.

The data directory holds the results database and its map files (:mod:`wsiviewer.core.store`)
and a ``models`` folder for models the user adds. It is platformdirs' user data directory for
``wsiviewer`` unless the ``WSIVIEWER_DATA_DIR`` environment variable names another (tests always
set it). Nothing here ever writes next to a slide.
"""

from __future__ import annotations

import os
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
