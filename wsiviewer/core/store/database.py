"""The results database: analyses, their probability maps, region sets and the review log.

One SQLite database, ``wsiviewer.sqlite`` in the user data directory (:mod:`.paths`), which the
CLI and the GUI (and several processes at once) read and write:

- WAL mode, so readers never block the writer and the writer never blocks readers;
- a busy timeout, so two writers queue for the write lock instead of failing;
- foreign keys on, and write transactions that take the write lock up front
  (``BEGIN IMMEDIATE``), so a transaction never fails half-way on a lock;
- a ``schema_version`` table and :data:`MIGRATIONS`, forward steps applied in order, each in
  its own transaction. A database from a newer wsiviewer is refused, never downgraded; a file
  that is not a wsiviewer database is refused and left untouched.

Privacy: the database records a slide by its content identity (OpenSlide quickhash) and its
geometry, never by its path or file name.

:class:`Store` is composed of one part per responsibility, each a mixin over
:class:`~.connection.StoreConnection` in its own module:

- :mod:`.connection`: the file checks, the connection, the migration runner, and the read and
  write-transaction helpers every part goes through (one lock, one connection);
- :mod:`.analyses`: analyses, their slide and model rows, and the ``maps/*.npz`` files;
- :mod:`.region_sets`: region sets and their regions;
- :mod:`.review_log`: review decisions, manual regions and undo.

Mixins rather than small classes the Store delegates to: callers (CLI, GUI, review, exports)
use one object with one connection, and every part needs that connection's lock and
transactions; delegation would forward every public method by hand. Each part only uses what
:class:`~.connection.StoreConnection` provides, never another part. The schema lives in
:mod:`.schema`, and rows become records in :mod:`.records`.

A :class:`Store` may be shared by threads (its calls are serialised); each process opens its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from wsiviewer.core.paths import data_dir as default_data_dir
from wsiviewer.core.store.analyses import MAPS_DIR, AnalysesMixin
from wsiviewer.core.store.connection import DEFAULT_BUSY_TIMEOUT_S
from wsiviewer.core.store.region_sets import RegionSetsMixin
from wsiviewer.core.store.review_log import ReviewLogMixin
from wsiviewer.core.store.schema import MIGRATIONS, SCHEMA_VERSION_TABLE
from wsiviewer.errors import StoreError

if TYPE_CHECKING:
    from wsiviewer.core.analysis.pipeline import Analysis
    from wsiviewer.core.analysis.regions import RegionSet

__all__ = [
    "DATABASE_NAME",
    "DEFAULT_BUSY_TIMEOUT_S",
    "MAPS_DIR",
    "MIGRATIONS",
    "SCHEMA_VERSION_TABLE",
    "Store",
]

#: File name of the database in the data directory.
DATABASE_NAME = "wsiviewer.sqlite"


class Store(AnalysesMixin, RegionSetsMixin, ReviewLogMixin):
    """The results database at ``path``, with its map files in ``path.parent / "maps"``.

    Create it with :meth:`open` (the user data directory) or ``Store(path)``; use it as a
    context manager or call :meth:`close`.

    Raises
    ------
    StoreError
        If the file is not a SQLite database or not a wsiviewer one (it is left untouched),
        comes from a newer wsiviewer, cannot be opened, or cannot be migrated.
    """

    def __init__(self, path: Path | str, *, busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S) -> None:
        # This module binds the schema: MIGRATIONS is read here, at opening, not imported by
        # the migration runner.
        super().__init__(path, busy_timeout_s=busy_timeout_s, migrations=MIGRATIONS)

    def save_analysis_and_regions(
        self, analysis: Analysis, region_set: RegionSet, *, map_path: str | None = None
    ) -> tuple[int, int]:
        """Record an analysis, its map and one region set, all rows in one transaction:
        ``(analysis id, region set id)``. A kill or an error leaves neither recorded.

        ``map_path`` as for :meth:`save_analysis`.
        """
        prepared = self._prepare_region_set(region_set)
        analysis_id, region_set_id = self._save_analysis(
            analysis,
            map_path=map_path,
            then=lambda connection, analysis_id: self._insert_region_set(
                connection, analysis_id, region_set, prepared
            ),
        )
        assert region_set_id is not None
        return analysis_id, region_set_id

    @classmethod
    def open(
        cls, data_dir: Path | None = None, *, busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S
    ) -> Store:
        """The database ``wsiviewer.sqlite`` in ``data_dir`` (default: the user data directory,
        or ``$WSIVIEWER_DATA_DIR``), created with its folder if missing."""
        try:
            root = default_data_dir() if data_dir is None else Path(data_dir)
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"Cannot create the data directory: {exc}") from exc
        return cls(root / DATABASE_NAME, busy_timeout_s=busy_timeout_s)
