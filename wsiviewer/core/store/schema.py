"""The schema of the results database: forward migrations, each a list of statements."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Migration:
    """One forward step of the schema: the statements that take version - 1 to version."""

    version: int
    description: str
    #: Run one by one inside one transaction (never ``executescript``: it commits first).
    statements: tuple[str, ...]


_SCHEMA_V1 = (
    # A slide by content identity and geometry; never a path or file name (privacy).
    # mpp/mpp_source: the resolution its latest analysis used.
    """
    CREATE TABLE slides (
        id INTEGER PRIMARY KEY,
        identity TEXT NOT NULL UNIQUE,
        vendor TEXT,
        l0_width INTEGER NOT NULL CHECK (l0_width >= 0),
        l0_height INTEGER NOT NULL CHECK (l0_height >= 0),
        mpp REAL NOT NULL CHECK (mpp > 0),
        mpp_source TEXT NOT NULL,
        first_seen_at TEXT NOT NULL,
        last_seen_at TEXT NOT NULL
    )
    """,
    # A model is its weights and its card; card_json is the ModelSummary recorded with it.
    """
    CREATE TABLE models (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        version TEXT NOT NULL,
        architecture TEXT NOT NULL,
        weights_sha256 TEXT NOT NULL,
        card_sha256 TEXT NOT NULL,
        input_mpp REAL NOT NULL,
        threshold REAL NOT NULL,
        card_json TEXT NOT NULL,
        UNIQUE (weights_sha256, card_sha256)
    )
    """,
    # One row per finished run. map_path is relative to the database's folder.
    """
    CREATE TABLE analyses (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        analysis_key TEXT NOT NULL,
        slide_id INTEGER NOT NULL REFERENCES slides (id),
        model_id INTEGER NOT NULL REFERENCES models (id),
        mpp REAL NOT NULL CHECK (mpp > 0),
        mpp_source TEXT NOT NULL,
        tissue_settings_json TEXT NOT NULL,
        grid_json TEXT NOT NULL,
        device TEXT NOT NULL,
        batch_size INTEGER NOT NULL,
        started_at TEXT NOT NULL,
        finished_at TEXT NOT NULL,
        timings_json TEXT NOT NULL,
        warnings_json TEXT NOT NULL,
        cell_count INTEGER NOT NULL,
        tissue_count INTEGER NOT NULL,
        scored_count INTEGER NOT NULL,
        software_version TEXT NOT NULL,
        map_path TEXT NOT NULL UNIQUE
    )
    """,
    "CREATE INDEX analyses_by_key ON analyses (analysis_key)",
    "CREATE INDEX analyses_by_slide_model ON analyses (slide_id, model_id)",
    "CREATE INDEX analyses_by_model ON analyses (model_id)",
    # Regions of one analysis at one threshold and minimum area; frozen_at is set when review
    # starts. content_sha256 (of the regions) lets an identical recomputation reuse the set.
    """
    CREATE TABLE region_sets (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        analysis_id INTEGER NOT NULL REFERENCES analyses (id),
        threshold REAL NOT NULL CHECK (threshold BETWEEN 0 AND 1),
        min_area_mm2 REAL NOT NULL CHECK (min_area_mm2 >= 0),
        region_count INTEGER NOT NULL,
        content_sha256 TEXT NOT NULL,
        created_at TEXT NOT NULL,
        frozen_at TEXT
    )
    """,
    "CREATE INDEX region_sets_by_analysis ON region_sets (analysis_id, threshold, min_area_mm2)",
    # polygon_wkb: level-0 px outline (WKB, little-endian). grid_cells: zlib-compressed
    # little-endian int32 (row, col) pairs.
    """
    CREATE TABLE regions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        region_set_id INTEGER NOT NULL REFERENCES region_sets (id),
        number INTEGER NOT NULL CHECK (number >= 1),
        area_mm2 REAL NOT NULL,
        max_prob REAL NOT NULL,
        mean_prob REAL NOT NULL,
        cell_count INTEGER NOT NULL,
        polygon_wkb BLOB NOT NULL,
        grid_cells BLOB NOT NULL,
        UNIQUE (region_set_id, number)
    )
    """,
    # Region sets and regions are immutable; review decisions will reference regions.id.
    """
    CREATE TRIGGER region_sets_immutable
    BEFORE UPDATE OF id, analysis_id, threshold, min_area_mm2, region_count, content_sha256,
        created_at ON region_sets
    BEGIN
        SELECT RAISE(ABORT, 'region sets are immutable: compute a new one');
    END
    """,
    """
    CREATE TRIGGER region_sets_stay_frozen
    BEFORE UPDATE OF frozen_at ON region_sets
    WHEN OLD.frozen_at IS NOT NULL
    BEGIN
        SELECT RAISE(ABORT, 'region set is frozen');
    END
    """,
    """
    CREATE TRIGGER region_sets_frozen_kept
    BEFORE DELETE ON region_sets
    WHEN OLD.frozen_at IS NOT NULL
    BEGIN
        SELECT RAISE(ABORT, 'a frozen region set cannot be deleted');
    END
    """,
    """
    CREATE TRIGGER regions_immutable
    BEFORE UPDATE ON regions
    BEGIN
        SELECT RAISE(ABORT, 'regions are immutable: compute a new region set');
    END
    """,
    """
    CREATE TRIGGER regions_frozen_kept
    BEFORE DELETE ON regions
    WHEN (SELECT frozen_at FROM region_sets WHERE id = OLD.region_set_id) IS NOT NULL
    BEGIN
        SELECT RAISE(ABORT, 'regions of a frozen region set cannot be deleted');
    END
    """,
    """
    CREATE TRIGGER regions_frozen_closed
    BEFORE INSERT ON regions
    WHEN (SELECT frozen_at FROM region_sets WHERE id = NEW.region_set_id) IS NOT NULL
    BEGIN
        SELECT RAISE(ABORT, 'region set is frozen');
    END
    """,
)


#: Actions of the review log (``review_decisions.action``).
REVIEW_ACTIONS = ("accept", "reject", "reset", "note", "add", "delete", "undo")


#: The review log's triggers: append-only; a decision belongs to its region set (an undo
#: undoes a non-undo of its set); the first decision freezes the set, in its own transaction.
#: Schema v3 rebuilds the table and creates them again.
_REVIEW_DECISION_TRIGGERS = (
    """
    CREATE TRIGGER review_decisions_append_only_update
    BEFORE UPDATE ON review_decisions
    BEGIN
        SELECT RAISE(ABORT, 'review decisions are append-only');
    END
    """,
    """
    CREATE TRIGGER review_decisions_append_only_delete
    BEFORE DELETE ON review_decisions
    BEGIN
        SELECT RAISE(ABORT, 'review decisions are append-only');
    END
    """,
    """
    CREATE TRIGGER review_decisions_same_set
    BEFORE INSERT ON review_decisions
    WHEN (NEW.region_id IS NOT NULL AND NEW.region_set_id IS NOT
            (SELECT region_set_id FROM regions WHERE id = NEW.region_id))
        OR (NEW.manual_region_id IS NOT NULL AND NEW.region_set_id IS NOT
            (SELECT region_set_id FROM manual_regions WHERE id = NEW.manual_region_id))
        OR (NEW.undoes_id IS NOT NULL AND NOT EXISTS
            (SELECT 1 FROM review_decisions WHERE id = NEW.undoes_id
                AND region_set_id = NEW.region_set_id AND action <> 'undo'))
    BEGIN
        SELECT RAISE(ABORT, 'review decision does not belong to its region set');
    END
    """,
    """
    CREATE TRIGGER review_decisions_freeze_set
    AFTER INSERT ON review_decisions
    BEGIN
        UPDATE region_sets SET frozen_at = NEW.created_at
        WHERE id = NEW.region_set_id AND frozen_at IS NULL;
    END
    """,
)


_SCHEMA_V2 = (
    # Regions a reviewer drew or imported: level-0 px outline (WKB, little-endian), area at the
    # analysis's µm/px. Whether one exists is derived from the log (its 'add' not undone).
    """
    CREATE TABLE manual_regions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        region_set_id INTEGER NOT NULL REFERENCES region_sets (id),
        polygon_wkb BLOB NOT NULL,
        area_mm2 REAL NOT NULL CHECK (area_mm2 > 0),
        created_at TEXT NOT NULL,
        reviewer TEXT NOT NULL CHECK (length(reviewer) > 0)
    )
    """,
    "CREATE INDEX manual_regions_by_set ON manual_regions (region_set_id)",
    # The append-only review log of a region set; the review state is derived from it. Every
    # row names its reviewer, and the model and threshold the set was drawn with.
    """
    CREATE TABLE review_decisions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        region_set_id INTEGER NOT NULL REFERENCES region_sets (id),
        region_id INTEGER REFERENCES regions (id),
        manual_region_id INTEGER REFERENCES manual_regions (id),
        action TEXT NOT NULL CHECK (action IN
            ('accept', 'reject', 'reset', 'note', 'add', 'delete', 'undo')),
        note TEXT,
        undoes_id INTEGER REFERENCES review_decisions (id),
        reviewer TEXT NOT NULL CHECK (length(reviewer) > 0),
        model_name TEXT NOT NULL,
        threshold REAL NOT NULL,
        created_at TEXT NOT NULL,
        CHECK ((region_id IS NULL) <> (manual_region_id IS NULL)),
        CHECK ((action = 'undo') = (undoes_id IS NOT NULL)),
        CHECK (action <> 'add' OR manual_region_id IS NOT NULL)
    )
    """,
    "CREATE INDEX review_decisions_by_set ON review_decisions (region_set_id, id)",
    # An action is undone at most once.
    """
    CREATE UNIQUE INDEX review_decisions_undone_once ON review_decisions (undoes_id)
    WHERE undoes_id IS NOT NULL
    """,
    *_REVIEW_DECISION_TRIGGERS,
    """
    CREATE TRIGGER manual_regions_immutable
    BEFORE UPDATE ON manual_regions
    BEGIN
        SELECT RAISE(ABORT, 'manual regions are immutable: delete and add another');
    END
    """,
    """
    CREATE TRIGGER manual_regions_kept
    BEFORE DELETE ON manual_regions
    BEGIN
        SELECT RAISE(ABORT, 'manual regions are kept: delete them by a review decision');
    END
    """,
)


#: Actions of the review log from schema v3 on: ``edit`` replaces regions by others (a split,
#: a brush stroke, moved vertices, a merge) in one decision.
REVIEW_ACTIONS_V3 = (*REVIEW_ACTIONS, "edit")

#: Kinds of ``edit`` (``review_decisions.edit_kind``).
EDIT_KINDS = ("split", "brush-add", "brush-erase", "vertices", "merge")

#: Where a manual region came from (``manual_regions.origin``; NULL: recorded before v3).
MANUAL_ORIGINS = ("drawn", "imported", "edit")


_SCHEMA_V3 = (
    # The review log gains the 'edit' action (and its kind). SQLite cannot change a CHECK
    # constraint in place: the table is rebuilt with every row copied as it was, then its
    # indexes and triggers are made again. (DROP TABLE's implicit delete fires no trigger.)
    """
    CREATE TABLE review_decisions_v3 (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        region_set_id INTEGER NOT NULL REFERENCES region_sets (id),
        region_id INTEGER REFERENCES regions (id),
        manual_region_id INTEGER REFERENCES manual_regions (id),
        action TEXT NOT NULL CHECK (action IN
            ('accept', 'reject', 'reset', 'note', 'add', 'delete', 'undo', 'edit')),
        note TEXT,
        undoes_id INTEGER REFERENCES review_decisions_v3 (id),
        reviewer TEXT NOT NULL CHECK (length(reviewer) > 0),
        model_name TEXT NOT NULL,
        threshold REAL NOT NULL,
        created_at TEXT NOT NULL,
        edit_kind TEXT CHECK (edit_kind IS NULL OR edit_kind IN
            ('split', 'brush-add', 'brush-erase', 'vertices', 'merge')),
        CHECK ((region_id IS NULL) <> (manual_region_id IS NULL)),
        CHECK ((action = 'undo') = (undoes_id IS NOT NULL)),
        CHECK (action <> 'add' OR manual_region_id IS NOT NULL),
        CHECK ((action = 'edit') = (edit_kind IS NOT NULL))
    )
    """,
    """
    INSERT INTO review_decisions_v3 (id, region_set_id, region_id, manual_region_id, action,
        note, undoes_id, reviewer, model_name, threshold, created_at)
    SELECT id, region_set_id, region_id, manual_region_id, action, note, undoes_id, reviewer,
        model_name, threshold, created_at
    FROM review_decisions ORDER BY id
    """,
    "DROP TABLE review_decisions",
    "ALTER TABLE review_decisions_v3 RENAME TO review_decisions",
    "CREATE INDEX review_decisions_by_set ON review_decisions (region_set_id, id)",
    """
    CREATE UNIQUE INDEX review_decisions_undone_once ON review_decisions (undoes_id)
    WHERE undoes_id IS NOT NULL
    """,
    *_REVIEW_DECISION_TRIGGERS,
    # Manual regions say where they came from; a drawn one may start accepted (the reviewer
    # drew what they judged IDC); an imported one keeps its QuPath name, class and colour, and
    # the key of the feature it came from (re-importing the same feature adds nothing).
    # Rows recorded before v3 keep NULL origin and start pending, as they did.
    """
    ALTER TABLE manual_regions ADD COLUMN origin TEXT
        CHECK (origin IS NULL OR origin IN ('drawn', 'imported', 'edit'))
    """,
    """
    ALTER TABLE manual_regions ADD COLUMN initial_status TEXT NOT NULL DEFAULT 'pending'
        CHECK (initial_status IN ('pending', 'accepted'))
    """,
    "ALTER TABLE manual_regions ADD COLUMN name TEXT",
    "ALTER TABLE manual_regions ADD COLUMN classification TEXT",
    # '#rrggbb', or NULL.
    "ALTER TABLE manual_regions ADD COLUMN color TEXT",
    "ALTER TABLE manual_regions ADD COLUMN import_key TEXT",
    "CREATE INDEX manual_regions_by_import_key ON manual_regions (region_set_id, import_key)",
    # What an 'edit' decision replaced (sources) and by what (results: manual regions it
    # added), one row each. Append-only, like the log.
    """
    CREATE TABLE region_edits (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        decision_id INTEGER NOT NULL REFERENCES review_decisions (id),
        role TEXT NOT NULL CHECK (role IN ('source', 'result')),
        region_id INTEGER REFERENCES regions (id),
        manual_region_id INTEGER REFERENCES manual_regions (id),
        CHECK ((region_id IS NULL) <> (manual_region_id IS NULL)),
        CHECK (role = 'source' OR manual_region_id IS NOT NULL)
    )
    """,
    "CREATE INDEX region_edits_by_decision ON region_edits (decision_id)",
    """
    CREATE TRIGGER region_edits_of_an_edit
    BEFORE INSERT ON region_edits
    WHEN NOT EXISTS (SELECT 1 FROM review_decisions WHERE id = NEW.decision_id
            AND action = 'edit')
        OR (NEW.region_id IS NOT NULL AND
            (SELECT region_set_id FROM regions WHERE id = NEW.region_id) IS NOT
            (SELECT region_set_id FROM review_decisions WHERE id = NEW.decision_id))
        OR (NEW.manual_region_id IS NOT NULL AND
            (SELECT region_set_id FROM manual_regions WHERE id = NEW.manual_region_id) IS NOT
            (SELECT region_set_id FROM review_decisions WHERE id = NEW.decision_id))
    BEGIN
        SELECT RAISE(ABORT, 'a region edit belongs to an edit decision of its own set');
    END
    """,
    """
    CREATE TRIGGER region_edits_append_only_update
    BEFORE UPDATE ON region_edits
    BEGIN
        SELECT RAISE(ABORT, 'region edits are append-only');
    END
    """,
    """
    CREATE TRIGGER region_edits_append_only_delete
    BEFORE DELETE ON region_edits
    BEGIN
        SELECT RAISE(ABORT, 'region edits are append-only');
    END
    """,
)


#: Forward migrations, in order: ``MIGRATIONS[i]`` takes the schema from version i to i + 1.
#: Append new steps; never edit a released one.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "slides, models, analyses, region sets, regions", _SCHEMA_V1),
    Migration(2, "review: manual regions and the review decision log", _SCHEMA_V2),
    Migration(
        3,
        "review: region edits (split, brush, vertices, merge), where manual regions came from",
        _SCHEMA_V3,
    ),
)


SCHEMA_VERSION_TABLE = """
    CREATE TABLE IF NOT EXISTS schema_version (
        version INTEGER PRIMARY KEY,
        description TEXT NOT NULL,
        applied_at TEXT NOT NULL,
        software_version TEXT NOT NULL
    )
"""
