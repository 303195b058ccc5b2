"""The dedup record: which event ids were published, and when.

On-disk format
--------------
One SQLite database beside the spool, ``<spool.dir>/seen.db``, in WAL mode with
``synchronous=NORMAL``::

    seen(event_id PRIMARY KEY, raw_id, seen_at REAL)   -- WITHOUT ROWID
    index seen_at(seen_at)                              -- for pruning

Why a database of its own
-------------------------
Event ids are uuids: every insert lands on a random leaf of the id's B-tree, so a batch
of 512 ids dirties about 400 pages where the 256 raw rows it marks done dirty about 40.
In the spool, those pages went into the WAL write that the next append's fsync waits for
(190 pages per fsync instead of 24), and the spool writer process, which runs at normal
priority beside the ack path, spent its CPU writing them. Here they are written by the
process that published the events (the publisher, at idle priority), and no commit
fsyncs them: a WAL commit under ``NORMAL`` is durable once the next checkpoint syncs.

Invariants
----------
* An id is added only after Kafka acknowledged its record, and before the raw row it came
  from is marked done: a row marked done has all its ids here, or had them (pruned).
* Losing ids can only cause a duplicate, never a loss. A process crash loses nothing
  (the WAL is in the OS's cache). An OS crash can lose the ids added since the last
  checkpoint; a provider's retry of such an event is then published again. The spool's
  own completions share that fate (they commit with ``synchronous=NORMAL``).
* Ids older than the dedup window are pruned (:meth:`SeenStore.prune`), in short
  transactions. Several processes may write (the publisher, a replay, the spool writer's
  pruning); SQLite's lock serialises them, and no ack ever waits on it.
"""

from __future__ import annotations

import itertools
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

SCHEMA = """
CREATE TABLE IF NOT EXISTS seen (
    event_id TEXT PRIMARY KEY,
    raw_id INTEGER NOT NULL,
    seen_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS seen_at ON seen(seen_at);
"""

_CHUNK = 500  # ids a lookup asks for, or rows a prune transaction deletes, at most


class Published(Protocol):
    """A raw row's outcome as far as the dedup record cares (:class:`relay.spool.Outcome`)."""

    @property
    def raw_id(self) -> int: ...

    @property
    def event_ids(self) -> tuple[str, ...]: ...


class SeenStore:
    """``seen.db``: open with :meth:`open`, close with :meth:`close`; safe across threads."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def open(self) -> SeenStore:
        """Create or open the database."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=10000")
            conn.executescript(SCHEMA)
        except sqlite3.Error:
            conn.close()
            raise
        self._conn = conn
        return self

    def close(self) -> None:
        """Close the connection (SQLite checkpoints the WAL when the last one closes)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise sqlite3.ProgrammingError("seen.db is not open")
        return self._conn

    def add(self, outcomes: Iterable[Published], stamp: float) -> int:
        """Record the event ids of ``outcomes`` as published at ``stamp`` (one
        transaction); returns how many."""
        rows = [(eid, o.raw_id, stamp) for o in outcomes for eid in o.event_ids]
        if rows:
            self.insert(rows)
        return len(rows)

    def insert(self, rows: Sequence[tuple[str, int, float]]) -> None:
        """Insert ``(event_id, raw_id, seen_at)`` rows in one transaction (a known id
        takes the time given)."""
        self._write("INSERT OR REPLACE INTO seen (event_id, raw_id, seen_at) VALUES (?, ?, ?)",
                    rows)

    def _write(self, sql: str, rows: Sequence[tuple[str, int, float]]) -> None:
        """``sql`` over ``rows`` in one transaction, rolled back if it fails."""
        with self._lock:
            conn = self._db()
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(sql, rows)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def seen_ids(self, event_ids: Iterable[str], since: float) -> set[str]:
        """Which of ``event_ids`` were published at or after ``since``."""
        ids = list(event_ids)
        found: set[str] = set()
        with self._lock:
            conn = self._db()
            for start in range(0, len(ids), _CHUNK):
                chunk = ids[start:start + _CHUNK]
                marks = ",".join("?" * len(chunk))
                found.update(r[0] for r in conn.execute(
                    f"SELECT event_id FROM seen WHERE seen_at >= ? AND event_id IN ({marks})",  # noqa: S608
                    (since, *chunk)))
        return found

    def prune(self, seen_before: float) -> int:
        """Delete ids seen before ``seen_before``, 500 a transaction; returns how many."""
        removed = 0
        while True:
            with self._lock:
                cur = self._db().execute(
                    "DELETE FROM seen WHERE event_id IN"
                    " (SELECT event_id FROM seen WHERE seen_at < ? LIMIT ?)",
                    (seen_before, _CHUNK))
            removed += max(cur.rowcount, 0)
            if cur.rowcount < _CHUNK:
                return removed

    def absorb(self, rows: Iterator[tuple[str, int, float]]) -> int:
        """Take ids kept elsewhere (the spool's own ``seen`` table before format 2),
        keeping the newer time of an id known to both; returns how many were read."""
        total = 0
        while chunk := list(itertools.islice(rows, 10_000)):
            self._write("INSERT INTO seen (event_id, raw_id, seen_at) VALUES (?, ?, ?)"
                        " ON CONFLICT(event_id) DO UPDATE SET raw_id = excluded.raw_id,"
                        " seen_at = excluded.seen_at WHERE excluded.seen_at > seen.seen_at",
                        chunk)
            total += len(chunk)
        return total
