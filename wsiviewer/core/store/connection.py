"""The database file itself: refusing foreign files, the connection, migrations, transactions.

:class:`StoreConnection` is the base of every part of :class:`~.database.Store`. It owns the
one SQLite connection and the one lock that serialises its use by threads, and gives the parts
two ways in:

- :meth:`StoreConnection._reading`, for reads;
- :meth:`StoreConnection._transaction`, a write transaction that takes the write lock up front
  (``BEGIN IMMEDIATE``), so it never fails half-way on a lock, and waits for another process's
  writer for up to the busy timeout.

Both turn :class:`sqlite3.Error` into :class:`StoreError` naming the action and the database.

Opening checks the file before SQLite touches it (an empty or missing file is a new database;
anything else must carry the SQLite header), reads before anything writes (a corrupt database
fails then and stays untouched), switches to WAL, and applies the pending forward migrations it
is given, each in its own transaction. A database from a newer wsiviewer is refused, never
downgraded; a SQLite file that is not a wsiviewer database is refused and left untouched. The
migrations are a parameter rather than an import so that this module knows nothing of the
schema's content: :class:`~.database.Store` binds :data:`~.schema.MIGRATIONS` to it.
"""

from __future__ import annotations

import shutil
import sqlite3
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Self

from wsiviewer import __version__
from wsiviewer.core.paths import pid_tag
from wsiviewer.core.store.schema import SCHEMA_VERSION_TABLE, Migration
from wsiviewer.errors import StoreError

#: How long a writer waits for another process's write transaction before giving up.
DEFAULT_BUSY_TIMEOUT_S = 10.0

_SQLITE_HEADER = b"SQLite format 3\x00"

#: Least free space on the database's disk for an analysis to start (its map, its rows and
#: their WAL take a few MiB; a nearly full disk fails at commit, after the work).
MIN_FREE_BYTES = 64 * 2**20
#: Prefix of the files :meth:`StoreConnection.check_writable` creates and removes.
PROBE_PREFIX = ".wsiviewer-probe-"
#: A temporary file without its writer's process id (older versions) is stale after this.
STALE_UNTAGGED_S = 24 * 3600.0


def utc_now() -> str:
    """The time stamp of every row: ISO-8601 UTC to the millisecond."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class StoreConnection:
    """An open, migrated results database at ``path``; the parts of the Store build on it.

    Raises
    ------
    StoreError
        If the file is not a SQLite database or not a wsiviewer one (it is left untouched),
        comes from a newer wsiviewer, cannot be opened, or cannot be migrated.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S,
        migrations: Sequence[Migration],
    ) -> None:
        self.path = Path(path)
        #: The folder that map paths are relative to.
        self.root = self.path.parent
        self._lock = threading.RLock()
        self._connection: sqlite3.Connection | None = None
        self._check_file()
        self._connection = self._connect(busy_timeout_s)
        try:
            self._migrate(migrations)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection; further calls raise :class:`StoreError`. Idempotent."""
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    @property
    def closed(self) -> bool:
        return self._connection is None

    @property
    def schema_version(self) -> int:
        with self._reading("read the schema version") as connection:
            return self._read_schema_version(connection)

    @property
    def journal_mode(self) -> str:
        with self._reading("read the journal mode") as connection:
            return str(connection.execute("PRAGMA journal_mode").fetchone()[0])

    def check_writable(self) -> None:
        """Refuse, before any work starts, a database this process cannot write to.

        Checks that the disk holding it has at least :data:`MIN_FREE_BYTES` free, that a file
        can be created beside it, and that the write lock can be taken (waiting up to the busy
        timeout for another writer): a read-only, full, locked or foreign database fails here,
        not after an analysis.

        Raises
        ------
        StoreError
            Naming what is wrong.
        """
        try:
            free = shutil.disk_usage(self.root).free
        except OSError as exc:
            raise StoreError(
                f"Cannot check the disk of results database {self.path}: {exc}"
            ) from exc
        if free < MIN_FREE_BYTES:
            raise StoreError(
                f"Only {free / 2**20:.0f} MiB free on the disk of results database {self.path}; "
                f"at least {MIN_FREE_BYTES / 2**20:.0f} MiB are needed to record an analysis"
            )
        self._check_folder_writable(self.root)
        with self._lock:
            connection = self._open_connection()
            try:
                connection.execute("BEGIN IMMEDIATE")
                connection.execute("ROLLBACK")
            except sqlite3.Error as exc:
                raise StoreError(f"Cannot write results database {self.path}: {exc}") from exc

    def _check_folder_writable(self, folder: Path) -> None:
        """A file can be created (and removed) in ``folder``, created if missing."""
        probe = folder / f"{PROBE_PREFIX}{pid_tag()}-{uuid.uuid4().hex[:12]}.tmp"
        try:
            folder.mkdir(exist_ok=True)
            probe.touch(exist_ok=False)
            probe.unlink()
        except OSError as exc:
            raise StoreError(f"Cannot write in {folder} (results database): {exc}") from exc

    # -- for the parts of the Store -------------------------------------------------------

    @contextmanager
    def _reading(self, action: str) -> Iterator[sqlite3.Connection]:
        with self._lock:
            connection = self._open_connection()
            try:
                yield connection
            except sqlite3.Error as exc:
                raise StoreError(f"Cannot {action} in {self.path}: {exc}") from exc

    @contextmanager
    def _transaction(self, action: str) -> Iterator[sqlite3.Connection]:
        """A write transaction holding the write lock from its start (waits up to the busy
        timeout for it); commits on success, rolls back on any exception."""
        with self._lock:
            connection = self._open_connection()
            try:
                connection.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StoreError(f"Cannot {action} in {self.path}: {exc}") from exc
            try:
                yield connection
                connection.execute("COMMIT")
            except BaseException as exc:
                if connection.in_transaction:
                    connection.rollback()
                if isinstance(exc, sqlite3.Error):
                    raise StoreError(f"Cannot {action} in {self.path}: {exc}") from exc
                raise

    def _require(self, connection: sqlite3.Connection, table: str, row_id: int, what: str) -> None:
        found = connection.execute(f"SELECT 1 FROM {table} WHERE id = ?", (row_id,)).fetchone()
        if found is None:
            raise StoreError(f"No {what} {row_id} in {self.path}")

    def _open_connection(self) -> sqlite3.Connection:
        if self._connection is None:
            raise StoreError(f"Results database {self.path} is closed")
        return self._connection

    # -- opening --------------------------------------------------------------------------

    def _check_file(self) -> None:
        """Refuse, without touching it, a file that is not a SQLite database."""
        if not self.root.is_dir():
            raise StoreError(f"Folder {self.root} of the results database does not exist")
        if self.path.exists() and not self.path.is_file():
            raise StoreError(f"Results database {self.path} is not a file")
        try:
            with self.path.open("rb") as file:
                header = file.read(len(_SQLITE_HEADER))
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StoreError(f"Cannot read results database {self.path}: {exc}") from exc
        # An empty file is a new database to SQLite; anything else must carry its header.
        if header and header != _SQLITE_HEADER:
            raise StoreError(
                f"{self.path} is not a SQLite database; it was left untouched. Move it aside "
                "to start a new results database."
            )

    def _connect(self, busy_timeout_s: float) -> sqlite3.Connection:
        try:
            # isolation_level=None: no implicit transactions, we BEGIN IMMEDIATE ourselves.
            connection = sqlite3.connect(
                self.path,
                timeout=busy_timeout_s,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise StoreError(f"Cannot open results database {self.path}: {exc}") from exc
        try:
            connection.row_factory = sqlite3.Row
            connection.execute(f"PRAGMA busy_timeout = {round(busy_timeout_s * 1000)}")
            connection.execute("PRAGMA foreign_keys = ON")
            # Read before anything writes: a corrupt database fails here and stays untouched.
            connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.Error as exc:
            connection.close()
            raise StoreError(
                f"Cannot open results database {self.path} (is it corrupt?): {exc}"
            ) from exc
        return connection

    def _migrate(self, migrations: Sequence[Migration]) -> None:
        """Check the schema version, switch to WAL, and apply the pending migrations."""
        for index, migration in enumerate(migrations):
            if migration.version != index + 1:
                raise StoreError(
                    f"Migration {index} has version {migration.version}, expected {index + 1}"
                )
        latest = len(migrations)
        with self._reading("read the schema version") as connection:
            # Refuse a foreign or newer database before anything writes to it.
            current = self._read_schema_version(connection)
            self._refuse_newer(current, latest)
            connection.execute("PRAGMA journal_mode = WAL").fetchone()
            # In WAL mode NORMAL cannot corrupt the database; a power cut may lose the last
            # commits, never half of one.
            connection.execute("PRAGMA synchronous = NORMAL")
        while current < latest:
            with self._transaction("migrate the schema") as connection:
                connection.execute(SCHEMA_VERSION_TABLE)
                # Again under the write lock: another process may have migrated meanwhile.
                current = self._read_schema_version(connection)
                self._refuse_newer(current, latest)
                if current == latest:
                    break
                current = self._apply(connection, migrations[current])

    def _apply(self, connection: sqlite3.Connection, migration: Migration) -> int:
        """Run one migration inside the caller's transaction and record it; its version."""
        try:
            for statement in migration.statements:
                connection.execute(statement)
        except sqlite3.Error as exc:
            raise StoreError(
                f"Cannot migrate results database {self.path} to schema version "
                f"{migration.version} ({migration.description}): {exc}"
            ) from exc
        connection.execute(
            "INSERT INTO schema_version (version, description, applied_at, "
            "software_version) VALUES (?, ?, ?, ?)",
            (migration.version, migration.description, utc_now(), __version__),
        )
        return migration.version

    def _refuse_newer(self, current: int, latest: int) -> None:
        if current > latest:
            raise StoreError(
                f"Results database {self.path} has schema version {current}, newer than this "
                f"wsiviewer {__version__} knows ({latest}); upgrade wsiviewer to open it"
            )

    def _read_schema_version(self, connection: sqlite3.Connection) -> int:
        has_table = connection.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
        ).fetchone()
        if has_table is None:
            other = connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' "
                "AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' LIMIT 1"
            ).fetchone()
            if other is not None:
                raise StoreError(
                    f"{self.path} is a SQLite database but not a wsiviewer results database "
                    f"(table {other[0]!r}, no schema_version); it was left untouched"
                )
            return 0
        version = connection.execute("SELECT max(version) FROM schema_version").fetchone()[0]
        return int(version or 0)
