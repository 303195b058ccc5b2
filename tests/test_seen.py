"""Unit tests for relay.seen: the dedup record of published event ids."""

from __future__ import annotations

import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.seen import SeenStore
from relay.spool import PUBLISHED, Outcome


@pytest.fixture
def seen(tmp_path: Path) -> Iterator[SeenStore]:
    """An open seen store in a fresh directory, closed afterwards."""
    store = SeenStore(tmp_path / "seen.db").open()
    yield store
    store.close()


def test_open_uses_wal_and_normal_sync(tmp_path: Path) -> None:
    """seen.db is in WAL mode with synchronous=NORMAL: its commits are not fsynced."""
    store = SeenStore(tmp_path / "d" / "seen.db").open()
    try:
        conn = store._db()
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    finally:
        store.close()
    assert (tmp_path / "d" / "seen.db").exists()


def test_add_records_every_event_id_with_its_raw_row(seen: SeenStore) -> None:
    """add() stores each outcome's event ids with their raw id and time, in seen.db."""
    assert seen.add([Outcome(1, PUBLISHED, ("a", "b")), Outcome(2, PUBLISHED)], 50.0) == 2
    assert seen.add([], 60.0) == 0
    rows = sqlite3.connect(seen.path).execute(
        "SELECT event_id, raw_id, seen_at FROM seen ORDER BY event_id").fetchall()
    assert rows == [("a", 1, 50.0), ("b", 1, 50.0)]


def test_seen_ids_only_within_the_window(seen: SeenStore) -> None:
    """seen_ids answers only ids seen at or after ``since``; a re-add moves the time."""
    seen.add([Outcome(1, PUBLISHED, ("old",)), Outcome(2, PUBLISHED, ("x",))], 100.0)
    seen.add([Outcome(3, PUBLISHED, ("new",))], 200.0)
    assert seen.seen_ids(["old", "new", "x", "none"], 100.0) == {"old", "new", "x"}
    assert seen.seen_ids(["old", "new"], 150.0) == {"new"}
    seen.add([Outcome(4, PUBLISHED, ("old",))], 300.0)
    assert seen.seen_ids(["old", "new"], 250.0) == {"old"}


def test_prune_deletes_old_ids_in_chunks(seen: SeenStore) -> None:
    """prune() removes every id older than the cut, over several transactions, and no other."""
    seen.insert([(f"e{i}", i, 10.0) for i in range(1234)])
    seen.insert([("keep", 1, 20.0)])
    assert seen.prune(15.0) == 1234
    assert seen.seen_ids([f"e{i}" for i in range(1234)] + ["keep"], 0.0) == {"keep"}
    assert seen.prune(15.0) == 0


def test_absorb_keeps_the_newer_time(seen: SeenStore) -> None:
    """absorb() takes ids from elsewhere; for an id known to both, the newer time wins."""
    seen.insert([("both", 1, 500.0), ("late", 2, 100.0)])
    rows = iter([("both", 9, 400.0), ("late", 9, 900.0), ("only", 9, 300.0)])
    assert seen.absorb(rows) == 3
    assert seen.seen_ids(["both", "late", "only"], 450.0) == {"both", "late"}
    assert seen.seen_ids(["only"], 300.0) == {"only"}


def test_closed_store_raises_sqlite_error(tmp_path: Path) -> None:
    """A store that is not open raises a sqlite3.Error (which the spool logs), never hangs."""
    store = SeenStore(tmp_path / "seen.db")
    with pytest.raises(sqlite3.Error):
        store.add([Outcome(1, PUBLISHED, ("a",))], 1.0)
    with pytest.raises(sqlite3.Error):
        store.seen_ids(["a"], 0.0)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.text(min_size=1, max_size=8), st.integers(0, 20)), max_size=60),
       st.lists(st.text(min_size=1, max_size=8), max_size=30), st.integers(0, 21))
def test_seen_ids_matches_a_model(adds: list[tuple[str, int]], asked: list[str],
                                  since: int) -> None:
    """For any adds, seen_ids gives exactly the asked ids whose latest add is >= since."""
    latest: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        store = SeenStore(Path(tmp) / "seen.db").open()
        try:
            for i, (eid, at) in enumerate(adds):
                store.add([Outcome(i, PUBLISHED, (eid,))], float(at))
                latest[eid] = at  # re-adding keeps the last time given
            got = store.seen_ids(asked, float(since))
        finally:
            store.close()
    assert got == {e for e in asked if e in latest and latest[e] >= since}
