"""Review of a region set: decisions, notes, manual regions, undo, freezing, crash safety."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from shapely.geometry import Polygon, box

from tests.core.store.test_store import make_analysis
from wsiviewer.core.review.log import RegionRef, review_state
from wsiviewer.core.review.session import ReviewSession, open_review
from wsiviewer.core.store.database import Store
from wsiviewer.errors import ReviewError, StoreError

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def store(isolated_data_dir: Path) -> Iterator[Store]:
    with Store.open() as opened:
        yield opened


@pytest.fixture
def analysis_id(store: Store) -> int:
    return store.save_analysis(make_analysis())


@pytest.fixture
def session(store: Store, analysis_id: int) -> ReviewSession:
    return open_review(store, analysis_id, 0.5, 0.0, "dr-a")


def refs(session: ReviewSession) -> list[RegionRef]:
    return [item.ref for item in session.state().items]


def test_open_review_computes_and_saves_regions(
    store: Store, analysis_id: int, session: ReviewSession
) -> None:
    state = session.state()
    assert state.analysis_id == analysis_id
    assert (state.threshold, state.min_area_mm2) == (0.5, 0.0)
    # The hot 2x2 block (max 0.95) is region 1, the lone 0.85 cell region 2.
    assert [item.number for item in state.items] == [1, 2]
    assert [item.ref.kind for item in state.items] == ["model", "model"]
    assert state.items[0].max_prob == pytest.approx(0.95)
    assert state.items[0].area_mm2 == pytest.approx(4 * 0.2**2)
    assert {item.status for item in state.items} == {"pending"}
    assert state.items[0].note == ""
    assert state.items[0].reviewer is None
    assert state.progress_text == "0 of 2 reviewed"
    assert len(store.region_sets(analysis_id)) == 1
    assert not store.region_set(state.region_set_id).frozen
    # Opening again reuses the set, for any reviewer.
    again = open_review(store, analysis_id, 0.5, 0.0, "dr-b")
    assert again.region_set_id == session.region_set_id
    assert len(store.region_sets(analysis_id)) == 1


def test_decisions_notes_and_progress(store: Store, session: ReviewSession) -> None:
    first, second = refs(session)
    session.accept(first)
    state = session.state()
    assert state.items[0].status == "accepted"
    assert state.items[0].reviewer == "dr-a"
    assert state.items[0].decided_at is not None
    assert state.items[0].decided_at.endswith("+00:00")
    assert state.progress_text == "1 of 2 reviewed"
    session.reject(second)
    assert session.state().progress_text == "2 of 2 reviewed"
    assert session.state().reviewed_count == 2
    session.reset(second)
    assert session.state().items[1].status == "pending"
    assert session.state().progress_text == "1 of 2 reviewed"
    session.set_note(first, "solid nests, high grade")
    assert session.state().items[0].note == "solid nests, high grade"
    session.set_note(first, "")
    assert session.state().items[0].note == ""
    # Another reviewer's decision is the latest one.
    other = ReviewSession(store, session.region_set_id, "dr-b")
    other.reject(first)
    item = session.state().items[0]
    assert (item.status, item.reviewer) == ("rejected", "dr-b")


def test_first_decision_freezes_the_set(store: Store, session: ReviewSession) -> None:
    assert not store.region_set(session.region_set_id).frozen
    session.set_note(refs(session)[0], "look again")
    record = store.region_set(session.region_set_id)
    assert record.frozen
    assert store.freeze_region_set(record.id).frozen_at == record.frozen_at
    with pytest.raises(StoreError, match="frozen"):
        with store._transaction("tamper") as connection:
            connection.execute("DELETE FROM regions WHERE region_set_id = ?", (record.id,))


def test_undo_is_per_reviewer_and_covers_every_action(store: Store, session: ReviewSession) -> None:
    first, second = refs(session)
    assert session.undo() is False
    session.accept(first)
    session.set_note(first, "note 1")
    session.set_note(first, "note 2")
    other = ReviewSession(store, session.region_set_id, "dr-b")
    other.reject(second)

    assert session.undo()  # note 2 -> note 1
    assert session.state().items[0].note == "note 1"
    assert session.undo()  # note 1 -> ""
    assert session.state().items[0].note == ""
    assert session.undo()  # accept -> pending
    assert session.state().items[0].status == "pending"
    assert session.undo() is False
    # dr-b's decision was not touched by dr-a's undos.
    assert session.state().items[1].status == "rejected"
    assert other.undo()
    assert session.state().items[1].status == "pending"

    # Undo of a delete restores the region with its decisions.
    session.accept(second)
    session.delete(second)
    assert refs(session) == [first]
    assert session.state().progress_text == "0 of 1 reviewed"
    assert session.undo()
    item = session.state().items[1]
    assert (item.ref, item.status) == (second, "accepted")


def test_status_falls_back_to_the_previous_decision_on_undo(session: ReviewSession) -> None:
    first, _ = refs(session)
    session.reject(first)
    session.accept(first)
    session.undo()
    assert session.state().items[0].status == "rejected"


def test_manual_regions(store: Store, session: ReviewSession) -> None:
    square = box(1000, 1000, 1400, 1400)  # 400 px at 0.5 µm/px = 0.2 mm a side
    ref = session.add_manual_region(square, note="missed by the model")
    assert ref.kind == "manual"
    state = session.state()
    assert [item.number for item in state.items] == [1, 2, 3]
    manual = state.items[2]
    assert manual.ref == ref
    assert manual.area_mm2 == pytest.approx(0.04)
    assert (manual.max_prob, manual.mean_prob) == (None, None)
    # Issue 13, item 9: a region the reviewer drew is their judgement: accepted, by them, in
    # the one decision that added it.
    assert (manual.status, manual.reviewer, manual.origin) == ("accepted", "dr-a", "drawn")
    assert [row["action"] for row in session.history()] == ["add"]
    assert session.state().progress_text == "1 of 3 reviewed"
    assert manual.note == "missed by the model"
    assert manual.polygon.equals(square)
    assert store.region_set(session.region_set_id).frozen
    session.reject(ref)
    assert session.state().items[2].status == "rejected"
    session.accept(ref)
    assert session.state().items[2].status == "accepted"

    session.delete(ref)
    assert len(session.state().items) == 2
    session.undo()  # the delete
    assert session.state().items[2].status == "accepted"
    # A second manual region numbers after the first, even once the first is undone.
    second = session.add_manual_region(box(0, 0, 100, 100))
    assert session.state().items[3].number == 4
    session.undo()  # the add of the second
    assert second not in refs(session)
    with pytest.raises(ReviewError, match="deleted"):
        session.accept(second)
    third = session.add_manual_region(box(0, 0, 50, 50))
    numbers = {item.ref: item.number for item in session.state().items}
    assert numbers[third] == 5
    pending = session.add_manual_region(box(0, 0, 10, 10), status="pending")
    assert session.state().item(pending).status == "pending"


@pytest.mark.parametrize(
    ("polygon", "message"),
    [
        (Polygon(), "empty"),
        (Polygon([(0, 0), (10, 10), (10, 0), (0, 10)]), "Invalid manual region polygon"),
        (Polygon([(0, 0), (10, 0), (20, 0)]), "Invalid manual region polygon"),
        (Polygon([(0, 0), (float("inf"), 0), (0, 5)]), "non-finite"),
        (box(1e6, 1e6, 1e6 + 10, 1e6 + 10), "outside the slide"),
        (box(0, 0, 10, 10).buffer(0).boundary, "must be a shapely Polygon"),
    ],
)
def test_bad_manual_regions_are_clear_errors(
    session: ReviewSession, polygon: object, message: str
) -> None:
    with pytest.raises(ReviewError, match=message):
        session.add_manual_region(polygon)  # type: ignore[arg-type]
    assert session.history() == []


def test_unknown_regions_and_bad_arguments(
    store: Store, analysis_id: int, session: ReviewSession
) -> None:
    with pytest.raises(ReviewError, match="No model region 999"):
        session.accept(RegionRef("model", 999))
    with pytest.raises(ReviewError, match="reviewer"):
        ReviewSession(store, session.region_set_id, "  ")
    with pytest.raises(StoreError, match="No region set 42"):
        ReviewSession(store, 42, "dr-a")
    with pytest.raises(ReviewError, match=r"Threshold 1\.5"):
        open_review(store, analysis_id, 1.5, 0.0, "dr-a")
    with pytest.raises(StoreError, match="No analysis 77"):
        open_review(store, 77, 0.5, 0.0, "dr-a")
    # A region of another set is refused, by the session and by the database itself.
    other = open_review(store, analysis_id, 0.9, 0.0, "dr-a")
    foreign = refs(other)[0]
    with pytest.raises(ReviewError, match="No model region"):
        session.accept(foreign)
    with pytest.raises(StoreError, match="does not belong"):
        store.record_review_decision(session.region_set_id, "accept", "x", region_id=foreign.id)


def test_new_threshold_is_a_new_set_and_old_decisions_stay(
    store: Store, analysis_id: int, session: ReviewSession
) -> None:
    first, second = refs(session)
    session.accept(first)
    session.reject(second)
    stricter = open_review(store, analysis_id, 0.9, 0.0, "dr-a")
    assert stricter.region_set_id != session.region_set_id
    assert stricter.state().progress_text == "0 of 1 reviewed"
    assert not store.region_set(stricter.region_set_id).frozen
    old = review_state(store, session.region_set_id)
    assert [item.status for item in old.items] == ["accepted", "rejected"]
    # Back to the old threshold: the frozen set and its decisions, not a recomputation.
    back = open_review(store, analysis_id, 0.5, 0.0, "dr-b")
    assert back.region_set_id == session.region_set_id
    assert back.state().progress_text == "2 of 2 reviewed"
    # A different minimum area is a different set too.
    bigger = open_review(store, analysis_id, 0.5, 0.1, "dr-a")
    assert bigger.region_set_id not in {session.region_set_id, stricter.region_set_id}
    assert [item.number for item in bigger.state().items] == [1]


def test_history_is_the_audit_log(store: Store, session: ReviewSession) -> None:
    first, _ = refs(session)
    session.accept(first)
    manual = session.add_manual_region(box(0, 0, 400, 400), note="drawn")
    session.undo()
    history = session.history()
    assert [row["action"] for row in history] == ["accept", "add", "undo"]
    assert [row["undone"] for row in history] == [False, True, False]
    assert history[2]["undoes_id"] == history[1]["id"]
    assert history[1]["kind"] == "manual"
    assert history[1]["region_id"] == manual.id
    assert history[1]["note"] == "drawn"
    assert history[0]["number"] == 1
    for row in history:
        assert row["reviewer"] == "dr-a"
        assert row["model_name"] == "cancernet-test"
        assert row["threshold"] == 0.5
        assert row["created_at"]


def test_the_log_is_append_only(store: Store, session: ReviewSession) -> None:
    session.accept(refs(session)[0])
    with pytest.raises(StoreError, match="append-only"):
        with store._transaction("tamper") as connection:
            connection.execute("UPDATE review_decisions SET action = 'reject'")
    with pytest.raises(StoreError, match="append-only"):
        with store._transaction("tamper") as connection:
            connection.execute("DELETE FROM review_decisions")
    with sqlite3.connect(store.path) as raw:
        version = raw.execute("SELECT max(version) FROM schema_version").fetchone()[0]
    assert version == 3


def test_a_review_killed_midway_keeps_every_committed_decision(
    store: Store, analysis_id: int, isolated_data_dir: Path
) -> None:
    """A child records decisions, starts another write transaction and is SIGKILLed in it."""
    session = open_review(store, analysis_id, 0.5, 0.0, "dr-a")
    region_set_id = session.region_set_id
    store.close()
    child = textwrap.dedent(
        f"""
        import os, signal
        from shapely.geometry import box
        from wsiviewer.core.review.session import ReviewSession
        from wsiviewer.core.store.database import Store

        store = Store.open()
        session = ReviewSession(store, {region_set_id}, "dr-child")
        first, second = [item.ref for item in session.state().items]
        session.accept(first)
        session.set_note(first, "committed note")
        session.reject(second)
        manual = session.add_manual_region(box(0, 0, 400, 400), note="committed add")
        session.accept(manual)
        print("recorded", flush=True)
        with store._transaction("in flight") as connection:
            connection.execute(
                "INSERT INTO review_decisions (region_set_id, region_id, action, reviewer, "
                "model_name, threshold, created_at) VALUES (?, ?, 'reset', 'dr-child', 'm', "
                "0.5, 'now')",
                ({region_set_id}, first.id),
            )
            os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", child],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == -9, result.stderr
    assert result.stdout == "recorded\n"
    with Store.open() as reopened:
        history = [row["action"] for row in ReviewSession(reopened, region_set_id, "x").history()]
        assert history == ["accept", "note", "reject", "add", "accept"]
        state = review_state(reopened, region_set_id)
        assert [item.status for item in state.items] == ["accepted", "rejected", "accepted"]
        assert state.items[0].note == "committed note"
        assert state.items[2].note == "committed add"
        assert state.progress_text == "3 of 3 reviewed"
        assert reopened.region_set(region_set_id).frozen
        with reopened._reading("check") as connection:
            assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
