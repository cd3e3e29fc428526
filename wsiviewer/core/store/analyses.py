"""Analyses in the Store: their slide, model and analysis rows, and their probability map files.

Every finished run is recorded, even a repeat: ``analyses.analysis_key`` (what determines the
map, see :attr:`wsiviewer.core.analysis.pipeline.Analysis.key`) is indexed, not unique. Saving
adds or refreshes the slide's row (by its content identity, never its path) and the model's
(by weights and card sha256) in the same transaction as the analysis row.

Probability maps are arrays, so they live beside the database as compressed ``.npz`` files in
``maps/`` (``probabilities`` float32 with NaN = not scored, ``tissue`` bool), referenced from
their analysis row by a path relative to the database's folder. A map is written atomically and
made durable before the row that references it commits, and removed again if that transaction
fails, so a row never points at a missing or half-written file. Map files and their temporary
files carry their writer's process id: what a killed writer left is removed by a later run
(:meth:`AnalysesMixin.remove_stale_files`).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import uuid
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from wsiviewer import __version__
from wsiviewer.core.analysis.probability import ProbabilityMap
from wsiviewer.core.atomic import atomic_path
from wsiviewer.core.paths import pid_tag, process_alive, tagged_pid
from wsiviewer.core.store.connection import STALE_UNTAGGED_S, StoreConnection, utc_now
from wsiviewer.core.store.records import ANALYSIS_SELECT, AnalysisRecord, analysis_record
from wsiviewer.errors import StoreError

if TYPE_CHECKING:
    from wsiviewer.core.analysis.pipeline import Analysis, SlideSummary
    from wsiviewer.core.model.cards import ModelSummary

#: Folder, beside the database, of the probability map files.
MAPS_DIR = "maps"

_T = TypeVar("_T")


class AnalysesMixin(StoreConnection):
    """Saving, finding and reading analyses and their probability maps."""

    def save_analysis(self, analysis: Analysis, *, map_path: str | None = None) -> int:
        """Record a finished analysis and its probability map; return its id.

        The slide and model rows are added or refreshed, the map is written to its own file,
        then the analysis row is inserted, all slide/model/analysis rows in one transaction.
        If the transaction fails, the map file is removed again. Every call adds a new
        analysis row, even for a key already recorded. ``map_path`` (from
        :func:`new_map_path`) is where the map goes, when the caller must know it before the
        row commits (the workflow's journal).
        """
        analysis_id, _ = self._save_analysis(analysis, map_path=map_path)
        return analysis_id

    def _save_analysis(
        self,
        analysis: Analysis,
        *,
        map_path: str | None = None,
        then: Callable[[sqlite3.Connection, int], _T] | None = None,
    ) -> tuple[int, _T | None]:
        """:meth:`save_analysis`, and ``then(connection, analysis_id)`` in the same
        transaction (the Store adds the analysis's region set there)."""
        probabilities, tissue = _map_arrays(analysis.probability_map)
        # Everything that can be refused is encoded before the map file exists.
        columns = _AnalysisColumns.of(analysis, probabilities, tissue)
        map_path = map_path or new_map_path()
        map_file = self._map_file(map_path)
        # Compress outside the transaction: other processes keep writing meanwhile.
        _write_map(map_file, probabilities, tissue)
        result: _T | None = None
        try:
            with self._transaction("save the analysis") as connection:
                now = utc_now()
                slide_id = _upsert_slide(connection, analysis.slide, now)
                model_id = _add_model(connection, analysis.model, columns.card_json)
                analysis_id = _insert_analysis(
                    connection,
                    analysis,
                    columns,
                    slide_id=slide_id,
                    model_id=model_id,
                    map_path=map_path,
                    finished_at=now,
                )
                if then is not None:
                    result = then(connection, analysis_id)
        except BaseException:
            map_file.unlink(missing_ok=True)
            raise
        return analysis_id, result

    def has_map_path(self, map_path: str) -> bool:
        """Whether an analysis row references this map file (the workflow's recovery asks)."""
        with self._reading("find a map") as connection:
            found = connection.execute(
                "SELECT 1 FROM analyses WHERE map_path = ? LIMIT 1", (map_path,)
            ).fetchone()
        return found is not None

    def check_writable(self) -> None:
        """:meth:`StoreConnection.check_writable`, and a file can be created in ``maps/``."""
        super().check_writable()
        self._check_folder_writable(self.root / MAPS_DIR)

    def remove_stale_files(self) -> list[Path]:
        """Remove what killed writers left in ``maps/``; the files removed.

        That is: temporary map files (``.<map>.<hex>.tmp``) and map files no analysis row
        references, of processes that no longer run (their id is in the name), and of older
        versions' unnamed writers after :data:`STALE_UNTAGGED_S`. A file is removed only after
        its writer is known to be gone and then found unreferenced: a writer commits before it
        exits, so a map being committed is never taken.
        """
        folder = self.root / MAPS_DIR
        try:
            entries = list(folder.iterdir())
        except OSError:
            return []
        removed: list[Path] = []
        for entry in entries:
            name = entry.name
            temporary = name.endswith(".tmp")
            if not (temporary or name.endswith(".npz")) or not entry.is_file():
                continue
            pid = tagged_pid(name, "." if temporary else "")
            if pid is not None:
                stale = not process_alive(pid)
            else:
                try:
                    stale = time.time() - entry.stat().st_mtime > STALE_UNTAGGED_S
                except OSError:
                    continue
            if not stale or (not temporary and self.has_map_path(f"{MAPS_DIR}/{name}")):
                continue
            entry.unlink(missing_ok=True)
            removed.append(entry)
        return removed

    def analysis(self, analysis_id: int) -> AnalysisRecord:
        """The analysis with ``analysis_id``; :class:`StoreError` if there is none."""
        with self._reading("read an analysis") as connection:
            row = connection.execute(f"{ANALYSIS_SELECT} WHERE a.id = ?", (analysis_id,))
            found = row.fetchone()
        if found is None:
            raise StoreError(f"No analysis {analysis_id} in {self.path}")
        return analysis_record(found)

    def latest_analysis(
        self,
        slide_identity: str,
        weights_sha256: str | None = None,
        card_sha256: str | None = None,
    ) -> AnalysisRecord | None:
        """The most recently recorded analysis of a slide (by a model with these weights and
        this card, when given)."""
        query = f"{ANALYSIS_SELECT} WHERE s.identity = ?"
        parameters: tuple[object, ...] = (slide_identity,)
        if weights_sha256 is not None:
            query += " AND m.weights_sha256 = ?"
            parameters += (weights_sha256,)
        if card_sha256 is not None:
            query += " AND m.card_sha256 = ?"
            parameters += (card_sha256,)
        query += " ORDER BY a.id DESC LIMIT 1"
        with self._reading("find the latest analysis") as connection:
            found = connection.execute(query, parameters).fetchone()
        return None if found is None else analysis_record(found)

    def find_analyses(self, key: str) -> list[AnalysisRecord]:
        """Every recorded analysis with this analysis key, newest first."""
        with self._reading("find analyses") as connection:
            rows = connection.execute(
                f"{ANALYSIS_SELECT} WHERE a.analysis_key = ? ORDER BY a.id DESC", (key,)
            ).fetchall()
        return [analysis_record(row) for row in rows]

    def load_probability_map(self, record: AnalysisRecord) -> ProbabilityMap:
        """The probability map of a recorded analysis.

        Raises
        ------
        StoreError
            If the map file is missing, unreadable, corrupt, or does not match the grid.
        """
        map_file = self._map_file(record.map_path)
        what = f"Probability map {map_file} of analysis {record.id}"
        probabilities, tissue = _read_map(map_file, what)
        grid = record.grid
        if probabilities.shape != grid.shape or tissue.shape != grid.shape:
            raise StoreError(
                f"{what} is corrupt: arrays {probabilities.shape} and {tissue.shape} do not "
                f"match grid {grid.shape}"
            )
        if probabilities.dtype != np.float32 or tissue.dtype != np.bool_:
            raise StoreError(
                f"{what} is corrupt: dtypes {probabilities.dtype} and {tissue.dtype}, "
                "expected float32 and bool"
            )
        return ProbabilityMap(grid, probabilities, tissue)

    def map_file(self, map_path: str) -> Path:
        """The map file of a stored relative path, refusing paths that leave the folder.

        Raises
        ------
        StoreError
            For an absolute path, one with ``..``, or an empty one.
        """
        return self._map_file(map_path)

    def _map_file(self, map_path: str) -> Path:
        """The map file of a stored relative path, refusing paths that leave the folder."""
        relative = PurePosixPath(map_path)
        if relative.is_absolute() or ".." in relative.parts or not relative.parts:
            raise StoreError(f"Invalid probability map path {map_path!r} in {self.path}")
        return self.root.joinpath(*relative.parts)


@dataclass(frozen=True)
class _AnalysisColumns:
    """The columns of an analysis row that are computed or encoded from the analysis."""

    key: str
    tissue_settings_json: str
    grid_json: str
    card_json: str
    timings_json: str
    warnings_json: str
    tissue_count: int
    scored_count: int

    @classmethod
    def of(
        cls, analysis: Analysis, probabilities: np.ndarray, tissue: np.ndarray
    ) -> _AnalysisColumns:
        return cls(
            key=analysis.key,
            tissue_settings_json=_to_json(analysis.tissue_settings.to_dict(), "tissue settings"),
            grid_json=_to_json(analysis.probability_map.grid.to_dict(), "grid"),
            card_json=_to_json(analysis.model.to_dict(), "model card"),
            timings_json=_to_json(dict(analysis.timings_s), "timings"),
            warnings_json=_to_json(list(analysis.warnings), "warnings"),
            tissue_count=int(np.count_nonzero(tissue)),
            scored_count=int(np.count_nonzero(~np.isnan(probabilities))),
        )


def new_map_path() -> str:
    """A fresh map file path, relative to the database's folder, with this process's id in
    its name (so that one a killed writer left unreferenced can be told apart)."""
    return f"{MAPS_DIR}/{pid_tag()}-{uuid.uuid4().hex}.npz"


def _map_arrays(probability_map: ProbabilityMap) -> tuple[np.ndarray, np.ndarray]:
    """The map's ``(probabilities float32, tissue bool)``, refused unless they fit its grid."""
    grid = probability_map.grid
    probabilities = np.asarray(probability_map.probabilities, dtype=np.float32)
    tissue = np.asarray(probability_map.tissue, dtype=bool)
    if probabilities.shape != grid.shape or tissue.shape != grid.shape:
        raise StoreError(
            f"Probability map {probabilities.shape} and tissue {tissue.shape} do not match "
            f"grid {grid.shape}"
        )
    return probabilities, tissue


def _upsert_slide(connection: sqlite3.Connection, slide: SlideSummary, now: str) -> int:
    """Add the slide's row or refresh its vendor, µm/px and last-seen time; its id."""
    connection.execute(
        """
        INSERT INTO slides (identity, vendor, l0_width, l0_height, mpp, mpp_source,
                            first_seen_at, last_seen_at)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?)
        ON CONFLICT (identity) DO UPDATE SET
            vendor = coalesce(excluded.vendor, vendor),
            mpp = excluded.mpp,
            mpp_source = excluded.mpp_source,
            last_seen_at = excluded.last_seen_at
        """,
        (
            slide.identity,
            slide.vendor,
            int(slide.l0_dimensions[0]),
            int(slide.l0_dimensions[1]),
            float(slide.mpp.value),
            slide.mpp.source,
            now,
            now,
        ),
    )
    return _scalar(connection, "SELECT id FROM slides WHERE identity = ?", (slide.identity,))


def _add_model(connection: sqlite3.Connection, model: ModelSummary, card_json: str) -> int:
    """Add the model's row unless its weights and card are recorded; its id."""
    connection.execute(
        """
        INSERT INTO models (name, version, architecture, weights_sha256, card_sha256,
                            input_mpp, threshold, card_json)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?)
        ON CONFLICT (weights_sha256, card_sha256) DO NOTHING
        """,
        (
            model.name,
            str(model.version),
            model.architecture,
            model.weights_sha256,
            model.card_sha256,
            float(model.input_mpp),
            float(model.threshold),
            card_json,
        ),
    )
    return _scalar(
        connection,
        "SELECT id FROM models WHERE weights_sha256 = ? AND card_sha256 = ?",
        (model.weights_sha256, model.card_sha256),
    )


def _insert_analysis(
    connection: sqlite3.Connection,
    analysis: Analysis,
    columns: _AnalysisColumns,
    *,
    slide_id: int,
    model_id: int,
    map_path: str,
    finished_at: str,
) -> int:
    """Insert the analysis row; its id."""
    slide = analysis.slide
    cursor = connection.execute(
        """
        INSERT INTO analyses (analysis_key, slide_id, model_id, mpp, mpp_source,
            tissue_settings_json, grid_json, device, batch_size, started_at,
            finished_at, timings_json, warnings_json, cell_count, tissue_count,
            scored_count, software_version, map_path)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
        """,
        (
            columns.key,
            slide_id,
            model_id,
            float(slide.mpp.value),
            slide.mpp.source,
            columns.tissue_settings_json,
            columns.grid_json,
            analysis.device,
            int(analysis.batch_size),
            analysis.started_at,
            finished_at,
            columns.timings_json,
            columns.warnings_json,
            analysis.probability_map.grid.cell_count,
            columns.tissue_count,
            columns.scored_count,
            __version__,
            map_path,
        ),
    )
    analysis_id = cursor.lastrowid
    assert analysis_id is not None
    return analysis_id


def _write_map(map_file: Path, probabilities: np.ndarray, tissue: np.ndarray) -> None:
    """Write a map file atomically, and durably before the row that references it commits."""
    try:
        with atomic_path(map_file) as temporary, temporary.open("wb") as file:
            np.savez_compressed(file, probabilities=probabilities, tissue=tissue)
            file.flush()
            os.fsync(file.fileno())
    except OSError as exc:
        raise StoreError(f"Cannot write probability map {map_file}: {exc}") from exc


def _read_map(map_file: Path, what: str) -> tuple[np.ndarray, np.ndarray]:
    """The ``(probabilities, tissue)`` arrays of a map file, as stored (not yet checked)."""
    try:
        # Our own file handle: np.load leaks its own when the zip directory is unreadable.
        with map_file.open("rb") as file:
            loaded = np.load(file, allow_pickle=False)
            if not isinstance(loaded, np.lib.npyio.NpzFile):
                raise StoreError(f"{what} is corrupt: not an .npz archive")
            with loaded as npz:
                return np.asarray(npz["probabilities"]), np.asarray(npz["tissue"])
    except FileNotFoundError as exc:
        raise StoreError(f"{what} is missing") from exc
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise StoreError(f"{what} is corrupt: {exc}") from exc


def _to_json(value: object, what: str) -> str:
    try:
        return json.dumps(value, sort_keys=True, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"Cannot store the {what}: {exc}") from exc


def _scalar(connection: sqlite3.Connection, query: str, parameters: tuple[object, ...]) -> int:
    row = connection.execute(query, parameters).fetchone()
    assert row is not None
    return int(row[0])
