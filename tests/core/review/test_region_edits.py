"""Region edits (issue 13, item 6): split, brush, vertices, merge; each one audited decision
that one undo takes back; and the schema migration that made room for them."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import shapely
from shapely.geometry import LineString, Polygon, box

from tests.core.store.test_store import make_analysis
from wsiviewer.core.review import session as session_module
from wsiviewer.core.review.log import RegionRef, review_state
from wsiviewer.core.review.session import ReviewSession, open_review
from wsiviewer.core.store.connection import StoreConnection
from wsiviewer.core.store.database import Store
from wsiviewer.core.store.schema import MIGRATIONS
from wsiviewer.errors import ReviewError, StoreError

#: Region 1 of :func:`make_analysis` at P ≥ 0.5: the 2 x 2 block of 400 px cells.
BLOCK = box(0, 0, 800, 800)


@pytest.fixture
def store(isolated_data_dir: Path) -> Iterator[Store]:
    with Store.open() as opened:
        yield opened


@pytest.fixture
def session(store: Store) -> ReviewSession:
    return open_review(store, store.save_analysis(make_analysis()), 0.5, 0.0, "dr-a")


def first_two(session: ReviewSession) -> tuple[RegionRef, RegionRef]:
    first, second = (item.ref for item in session.state().items)
    return first, second


def test_split_along_a_line_is_one_decision_and_one_undo(session: ReviewSession) -> None:
    block, lone = first_two(session)
    assert session.state().item(block).polygon.equals(BLOCK)
    session.accept(block)
    session.set_note(block, "tumour and stroma")
    parts = session.split(block, [(300, -50), (300, 850)])
    state = session.state()
    assert [item.ref for item in state.items] == [lone, *parts]
    big, small = (state.item(ref) for ref in parts)
    assert big.polygon.area == pytest.approx(500 * 800)
    assert small.polygon.area == pytest.approx(300 * 800)
    assert big.area_mm2 == pytest.approx(500 * 800 * 0.5**2 / 1e6)
    # The parts keep the status and note of what they replaced; the split is said.
    for part in (big, small):
        assert (part.status, part.note, part.origin) == ("accepted", "tumour and stroma", "edit")
        assert (part.edit_kind, part.derived_from) == ("split", (1,))
    assert [item.label for item in state.items] == ["2", "M3", "M4"]
    # Then the part that is not tumour is rejected: the split made that possible.
    session.reject(small.ref)
    history = session.history()
    assert [row["action"] for row in history] == ["accept", "note", "edit", "reject"]
    edit = history[2]
    assert (edit["edit_kind"], edit["replaced"], edit["added"]) == ("split", ["1"], ["M3", "M4"])
    assert session.undo()  # the reject
    assert session.undo()  # the split, whole
    state = session.state()
    assert [item.ref for item in state.items] == [block, lone]
    assert (state.item(block).status, state.item(block).note) == ("accepted", "tumour and stroma")


def test_a_line_that_does_not_cross_is_refused(session: ReviewSession) -> None:
    block, _ = first_two(session)
    with pytest.raises(ReviewError, match="does not cut region 1 in two"):
        session.split(block, [(300, 100), (300, 700)])  # starts and ends inside
    with pytest.raises(ReviewError, match="two points"):
        session.split(block, [(300, 100)])
    assert session.history() == []


def test_brush_erase_and_add(session: ReviewSession) -> None:
    block, lone = first_two(session)
    # Erasing a band through the middle cuts the region in two.
    band = LineString([(400, -100), (400, 900)]).buffer(50)
    parts = session.brush(block, band, erase=True)
    assert len(parts) == 2
    state = session.state()
    assert sum(state.item(ref).polygon.area for ref in parts) == pytest.approx(
        BLOCK.difference(band).area
    )
    assert {state.item(ref).edit_kind for ref in parts} == {"brush-erase"}
    # Adding a stroke that touches the region grows it; one that does not is refused.
    _, top, right, bottom = state.item(parts[0]).polygon.bounds
    middle = (top + bottom) / 2
    grown = session.brush(
        parts[0], LineString([(right - 50, middle), (right + 300, middle)]).buffer(40)
    )
    assert len(grown) == 1
    assert session.state().item(grown[0]).polygon.area > state.item(parts[0]).polygon.area
    with pytest.raises(ReviewError, match="does not touch"):
        session.brush(lone, box(0, 1300, 100, 1400))
    with pytest.raises(ReviewError, match="delete it instead"):
        session.brush(lone, box(1000, 1000, 2000, 2000), erase=True)
    # A stroke past the slide's edge is cut to the slide.
    edge = session.brush(lone, box(1700, 1000, 2500, 1300))
    assert session.state().item(edge[0]).polygon.bounds[2] == 1900
    assert [row["edit_kind"] for row in session.history()] == [
        "brush-erase",
        "brush-add",
        "brush-add",
    ]


def test_move_vertices(session: ReviewSession) -> None:
    block, _ = first_two(session)
    moved = Polygon([(0, 0), (800, 0), (800, 800), (200, 800)])
    ref = session.move_vertices(block, moved)
    item = session.state().item(ref)
    assert item.polygon.equals(moved)
    assert (item.edit_kind, item.derived_from, item.status) == ("vertices", (1,), "pending")
    with pytest.raises(ReviewError, match="Invalid manual region polygon"):
        session.move_vertices(ref, Polygon([(0, 0), (800, 800), (800, 0), (0, 800)]))
    with pytest.raises(ReviewError, match="did not change"):
        session.move_vertices(ref, moved)
    assert len(session.history()) == 1


def test_merge_joins_neighbours_and_refuses_distant_regions(
    session: ReviewSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    block, lone = first_two(session)
    session.reject(lone)
    session.accept(block)
    with pytest.raises(ReviewError, match="at least two"):
        session.merge([block, block])
    monkeypatch.setattr(session_module, "MERGE_MAX_GAP_UM", 100.0)
    with pytest.raises(ReviewError, match=r"more than 0\.1 mm apart"):
        session.merge([block, lone])
    monkeypatch.undo()
    merged = session.merge([block, lone])  # ~450 µm apart: bridged
    state = session.state()
    assert [item.ref for item in state.items] == [merged]
    item = state.item(merged)
    assert isinstance(item.polygon, Polygon)
    assert item.polygon.contains(BLOCK.buffer(-1))
    assert item.status == "accepted"  # the first region's
    assert (item.edit_kind, item.derived_from) == ("merge", (1, 2))
    history = session.history()
    assert history[-1]["replaced"] == ["1", "2"]
    assert session.undo()
    assert {i.ref: i.status for i in session.state().items} == {
        block: "accepted",
        lone: "rejected",
    }


def test_edits_of_an_imported_region_keep_its_class(session: ReviewSession) -> None:
    imported = session.add_manual_region(
        box(1000, 100, 1400, 500),
        status="pending",
        origin="imported",
        name="stroma band",
        classification="Stroma",
        color=(10, 200, 30),
    )
    parts = session.split(imported, [(1200, 0), (1200, 600)])
    for ref in parts:
        item = session.state().item(ref)
        assert (item.classification, item.source_name, item.color) == (
            "Stroma",
            "stroma band",
            (10, 200, 30),
        )


def test_edits_are_append_only_and_checked_by_the_database(
    store: Store, session: ReviewSession
) -> None:
    block, _ = first_two(session)
    session.split(block, [(300, -50), (300, 850)])
    with pytest.raises(StoreError, match="append-only"):
        with store._transaction("tamper") as connection:
            connection.execute("DELETE FROM region_edits")
    with pytest.raises(StoreError, match="append-only"):
        with store._transaction("tamper") as connection:
            connection.execute("UPDATE region_edits SET role = 'source'")
    with pytest.raises(StoreError, match="CHECK"):
        with store._transaction("tamper") as connection:
            connection.execute(
                "INSERT INTO review_decisions (region_set_id, region_id, action, reviewer, "
                "model_name, threshold, created_at) VALUES (?, ?, 'edit', 'x', 'm', 0.5, 'now')",
                (session.region_set_id, block.id),
            )
    with pytest.raises(StoreError, match="Invalid region edit"):
        store.record_region_edit(session.region_set_id, "rotate", "x", [(block.id, None)], [])


class _StoreAtVersion2(Store):
    """A Store whose code stops at schema v2: a database made by the previous release."""

    def __init__(self, path: Path) -> None:
        StoreConnection.__init__(self, path, busy_timeout_s=5.0, migrations=MIGRATIONS[:2])


def test_a_version_2_database_migrates_with_its_review_intact(isolated_data_dir: Path) -> None:
    path = isolated_data_dir / "wsiviewer.sqlite"
    with _StoreAtVersion2(path) as old:
        assert old.schema_version == 2
        analysis_id = old.save_analysis(make_analysis())
        from wsiviewer.core.analysis.regions import find_regions

        region_set_id = old.save_region_set(
            analysis_id, find_regions(old.load_probability_map(old.analysis(analysis_id)), 0.5)
        )
        first = old.regions(region_set_id)[0].id
        with old._transaction("v2 decisions") as connection:
            for action, undoes in (("accept", None), ("note", None), ("undo", 2)):
                connection.execute(
                    "INSERT INTO review_decisions (region_set_id, region_id, action, note, "
                    "undoes_id, reviewer, model_name, threshold, created_at) "
                    "VALUES (?, ?, ?, 'n', ?, 'dr-old', 'm', 0.5, '2024-01-01T00:00:00+00:00')",
                    (region_set_id, first, action, undoes),
                )
            connection.execute(
                "INSERT INTO manual_regions (region_set_id, polygon_wkb, area_mm2, created_at, "
                "reviewer) VALUES (?, ?, 0.1, 'now', 'dr-old')",
                (region_set_id, shapely.to_wkb(box(0, 0, 10, 10), byte_order=1)),
            )
    with Store(path) as store:
        assert store.schema_version == len(MIGRATIONS) == 3
        decisions = store.review_decisions(region_set_id)
        assert [(d.id, d.action, d.undoes_id, d.edit_kind) for d in decisions] == [
            (1, "accept", None, None),
            (2, "note", None, None),
            (3, "undo", 2, None),
        ]
        state = review_state(store, region_set_id)
        assert state.items[0].status == "accepted"
        assert state.items[0].note == ""  # the note was undone
        # The rebuilt log keeps its rules: append-only, undone once, of its own set.
        with pytest.raises(StoreError, match="append-only"):
            with store._transaction("tamper") as connection:
                connection.execute("DELETE FROM review_decisions")
        with pytest.raises(StoreError, match="UNIQUE"):
            with store._transaction("undo twice") as connection:
                connection.execute(
                    "INSERT INTO review_decisions (region_set_id, region_id, action, undoes_id, "
                    "reviewer, model_name, threshold, created_at) "
                    "VALUES (?, ?, 'undo', 2, 'x', 'm', 0.5, 'now')",
                    (region_set_id, first),
                )
        # Sessions keep working: a new decision, an edit, an undo.
        session = ReviewSession(store, region_set_id, "dr-new")
        session.split(RegionRef("model", first), [(300, -50), (300, 850)])
        assert session.undo()
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert raw.execute("PRAGMA foreign_key_check").fetchall() == []
