"""The durable spool: every acknowledged postback is here, fsynced, before relay says yes.

On-disk format
--------------
One SQLite database, ``<spool.dir>/spool.db``, in WAL mode with ``synchronous=FULL`` (the
WAL is fsynced at every commit), and beside it the dedup record ``seen.db``
(:mod:`relay.seen`). Tables::

    raw(id INTEGER PRIMARY KEY,   -- the raw_id, strictly increasing: the order of arrival
        source, received_at REAL, remote_addr, method, path, query,
        headers BLOB,             -- JSON [[name, value], ...], only the kept headers
        body BLOB,                -- the exact body bytes
        size INTEGER,             -- len(body) + len(headers): what counts against max_bytes
        state INTEGER,            -- 0 pending, 1 published, 2 dead-lettered (published to DLQ)
        error TEXT,               -- why it was dead-lettered
        done_at REAL)             -- when its records were acknowledged by Kafka
    meta(key PRIMARY KEY, value)   -- format version: "2" (format 1 also held the seen ids;
                                   -- opening it moves them to seen.db)

Invariants
----------
* A row exists before its postback is acknowledged: :meth:`Spool.append` returns only
  after the transaction holding it has committed (and so been fsynced).
* ``state`` moves 0 -> 1 or 0 -> 2 (and 2 -> 1 when a dead letter is replayed after a
  fix), only after Kafka acknowledged every record derived from the row. A row only some
  of whose events Kafka took stays 0, and the ids it took go to ``seen.db`` so the retry
  skips them.
* Pruning deletes only rows that are not pending *and* older than the retention; a
  pending row is never deleted, whatever its age or the size cap.
* ``seen.db`` holds the ids of events published within the dedup window; they are
  written (by the process that published them) before their raw row is marked done.
* A transaction holding appends is fsynced at commit (``synchronous=FULL``). One holding
  only completions is not (``NORMAL``): the WAL is sequential, so the next append's
  fsync (or the next checkpoint) makes it durable too. An OS crash in between can only
  turn published rows back to pending, never lose a row.

Group commit
------------
``relay serve`` makes its writes in a writer process (:mod:`relay.writer`), which runs
each batch of requests it reads as one group with :meth:`Spool.transact`. In one process
(tests with their own publisher, CLI tools), writes are made on the event loop that asks
for them, on one write connection, as follows. A write
is queued and its future awaited; the first one queued schedules a flush with
``call_soon``, which runs once the callbacks already ready have run: every request
handled in that loop iteration has queued its append by then. The flush inserts the
appends (multi-row INSERTs, 200 rows a statement), runs the other queued writes
(completions from the publisher), commits once (one fsync for the whole group) and
resolves the futures. No thread hand-off: a writer thread had to win the GIL back from
the busy event loop after every fsync, which cost acks milliseconds (a thread doing only
the COMMIT was measured too: no more throughput, and a worse p99 at 1,000/s).

The loop does block for the commit (an fsync, about 0.3 ms here); a request that arrives
meanwhile waits in the socket buffer and joins the next group. What could block it for
long runs elsewhere: WAL checkpoints run every second on a thread of their own
connection (``wal_autocheckpoint`` is off) and copy while commits go on. Once the WAL
holds 64 MiB, a checkpoint copies its last few frames holding the transaction lock, so
that the next commit starts the WAL over: under steady load the WAL file is rewritten in
place instead of growing for as long as the load lasts (``bench/spool_bench.py``: 1.46x
the rows per second of a WAL that never starts over).
Pruning runs in a thread in transactions of at most 500 rows. A lock serialises
transactions from threads (pruning, CLI tools, that last checkpoint pass) with the
loop's flushes. Reads use a second connection (WAL readers do not block the writer).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, TypeVar

import orjson

from relay.errors import SpoolUnavailable
from relay.observability import get_logger
from relay.schema import RawPostback
from relay.seen import SeenStore

log = get_logger("relay.spool")

FORMAT_VERSION = "2"
PENDING, PUBLISHED, DEAD = 0, 1, 2
STATE_NAMES = {PENDING: "pending", PUBLISHED: "published", DEAD: "dead-letter"}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS raw (
    id INTEGER PRIMARY KEY,
    source TEXT NOT NULL,
    received_at REAL NOT NULL,
    remote_addr TEXT NOT NULL,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    query TEXT NOT NULL,
    headers BLOB NOT NULL,
    body BLOB NOT NULL,
    size INTEGER NOT NULL,
    state INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    done_at REAL
);
CREATE INDEX IF NOT EXISTS raw_pending ON raw(id) WHERE state = 0;
CREATE INDEX IF NOT EXISTS raw_dead ON raw(id) WHERE state = 2;
CREATE INDEX IF NOT EXISTS raw_received ON raw(received_at);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

_COLUMNS = "id, source, received_at, remote_addr, method, path, query, headers, body"
_ROWS_PER_INSERT = 200  # 9 parameters a row: well under SQLite's 32,766
_PRUNE_CHUNK = 500  # rows a prune transaction deletes at most
_CHECKPOINT_TAIL = 256  # WAL frames (pages) a checkpoint copies holding the write lock, at most
_CHECKPOINT_PASSES = 4  # lock-free passes a checkpoint makes to get there
_WAL_RESTART_FRAMES = 16384  # frames (64 MiB of 4 KiB pages) after which the WAL starts over
_WAL_KEEP = 128 << 20  # bytes of WAL file kept after it starts over (rewritten, not regrown)


@lru_cache(maxsize=_ROWS_PER_INSERT)
def _insert_many(rows: int) -> str:
    """``INSERT INTO raw ... VALUES (...), (...)`` for ``rows`` rows."""
    values = ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?)"] * rows)
    return ("INSERT INTO raw (source, received_at, remote_addr, method, path, query, headers,"  # noqa: S608 (placeholders only)
            f" body, size) VALUES {values}")

T = TypeVar("T")


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """A connection with relay's pragmas (WAL, synchronous=FULL)."""
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False,
                               isolation_level=None)
    else:
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=10000")
    return conn


@lru_cache(maxsize=1024)
def _headers(blob: bytes) -> tuple[tuple[str, str], ...]:
    """Kept headers from their JSON (cached: a source sends the same few sets)."""
    return tuple((str(k), str(v)) for k, v in orjson.loads(blob))


def row_to_raw(row: Sequence[Any]) -> RawPostback:
    """A ``raw`` row (in ``_COLUMNS`` order) as a :class:`RawPostback`."""
    raw_id, source, received_at, remote_addr, method, path, query, headers, body = row
    # Positional: keywords cost a fifth more, and replay builds one per row.
    return RawPostback(source, received_at, remote_addr, method, path, query, _headers(headers),
                       bytes(body), raw_id)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one raw postback once Kafka acknowledged its records."""

    raw_id: int
    state: int
    event_ids: tuple[str, ...] = ()
    error: str | None = None


@dataclass(frozen=True, slots=True)
class SpoolStats:
    """Counts for /readyz and metrics."""

    pending: int
    dead: int
    total: int
    bytes: int


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A row listed by ``relay dead-letters``."""

    raw_id: int
    source: str
    received_at: float
    error: str
    size: int


class WriteOp:
    """A write in a group: ``fn`` to run, or (an append) ``row`` to insert."""

    __slots__ = ("append", "fn", "future", "row")

    def __init__(self, fn: Callable[[sqlite3.Connection], Any] | None,
                 future: asyncio.Future[Any] | None = None,
                 row: tuple[Any, ...] | None = None) -> None:
        self.fn = fn
        self.future = future
        self.row = row
        self.append = row is not None


WriteResult = tuple[WriteOp, Any, BaseException | None]

#: What marking a row done needs (an :class:`Outcome` without its event ids, which go to
#: ``seen.db``): ``(raw_id, state, error)``. Plain tuples: they cross two pipes, and a
#: dataclass costs 30 times as much to unpickle.
Mark = tuple[int, int, str | None]


def marks(outcomes: Iterable[Outcome]) -> tuple[Mark, ...]:
    """The marks of ``outcomes``."""
    return tuple((o.raw_id, o.state, o.error) for o in outcomes)


class Spool:
    """The spool database; open with :meth:`open`, close with :meth:`close`."""

    def __init__(self, directory: Path, max_bytes: int, *,
                 on_commit: Callable[[], None] | None = None,
                 checkpoint_interval: float = 1.0,
                 wal_restart_frames: int = _WAL_RESTART_FRAMES) -> None:
        self.path = Path(directory) / "spool.db"
        self.seen = SeenStore(Path(directory) / "seen.db")
        self.max_bytes = max_bytes
        self.on_commit = on_commit
        self.checkpoint_interval = checkpoint_interval
        self.wal_restart_frames = wal_restart_frames
        self._lock = threading.Lock()  # held for each transaction on the write connection
        self._group: list[WriteOp] = []  # writes queued on the event loop for the next flush
        self._flush_scheduled = False
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._checkpointer: threading.Thread | None = None
        self._closing = threading.Event()
        self._bytes = 0
        self._broken: str | None = None
        self._fsync_commits = True  # connect() sets synchronous=FULL

    # --- lifecycle ------------------------------------------------------------------------

    def open_reader(self) -> Spool:
        """Open for reading only (no writes): the publisher process's view.

        The database must exist; writes go through the process that opened it with
        :meth:`open`, so there is one writer and commits never wait on another process.
        """
        self._reader = connect(self.path)
        self.seen.open()
        return self

    def open(self) -> Spool:
        """Create or open the database and start the checkpoint thread."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = connect(self.path)
        self._writer.executescript(_SCHEMA)
        self.seen.open()
        self._move_seen(self._writer)
        self._writer.execute("INSERT OR REPLACE INTO meta VALUES ('format', ?)", (FORMAT_VERSION,))
        self._writer.execute("PRAGMA wal_autocheckpoint=0")  # the checkpoint thread does it
        self._writer.execute(f"PRAGMA journal_size_limit={_WAL_KEEP}")
        self._bytes = self._writer.execute("SELECT coalesce(sum(size), 0) FROM raw").fetchone()[0]
        self._reader = connect(self.path)
        self._closing.clear()
        self._checkpointer = threading.Thread(target=self._checkpoint_loop,
                                              name="relay-spool-checkpoint", daemon=True)
        self._checkpointer.start()
        return self

    def _move_seen(self, conn: sqlite3.Connection) -> None:
        """Format 1 kept the seen ids in the spool: move them to ``seen.db`` (copied
        first, then dropped: an interrupted move is done again at the next open)."""
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'seen'").fetchone() is None:
            return
        moved = self.seen.absorb(conn.execute("SELECT event_id, raw_id, seen_at FROM seen"))
        conn.execute("DROP TABLE seen")
        log.info("seen_ids_moved", count=moved, to=str(self.seen.path))

    def close(self) -> None:
        """Stop the checkpoint thread, checkpoint, close the connections.

        Writes still queued on an event loop fail with :class:`SpoolUnavailable` when
        their flush runs.
        """
        self._closing.set()
        if self._checkpointer is not None:
            self._checkpointer.join()
            self._checkpointer = None
        with self._lock:
            if self._writer is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._writer.execute("PRAGMA wal_checkpoint(PASSIVE)")
            for conn in (self._writer, self._reader):
                if conn is not None:
                    conn.close()
            self._writer = self._reader = None
        self.seen.close()

    async def start(self) -> None:
        """:meth:`open`, from an event loop (the service's lifecycle)."""
        await asyncio.to_thread(self.open)

    async def stop(self) -> None:
        """:meth:`close`, from an event loop."""
        await asyncio.to_thread(self.close)

    def __enter__(self) -> Spool:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def bytes_used(self) -> int:
        """Bytes of postbacks held (bodies plus kept headers)."""
        return self._bytes

    def _checkpoint_loop(self) -> None:
        """Checkpoint every ``checkpoint_interval`` s on a connection of its own, so no
        ack pays for the copying (see :meth:`checkpoint`)."""
        conn = connect(self.path)
        try:
            while not self._closing.wait(self.checkpoint_interval):
                with contextlib.suppress(sqlite3.Error):
                    self.checkpoint(conn)
        finally:
            conn.close()

    def checkpoint(self, conn: sqlite3.Connection) -> bool:
        """Copy the WAL into the database; once it is long, let the next commit start it over.

        PASSIVE passes copy the frames while acks go on committing. Under steady load
        they never catch up for good: frames are appended while they copy, and SQLite
        starts the WAL over only if every frame is in the database when a write
        begins. Without that the WAL file grows for as long as the load lasts, and
        commits slow down (``bench/spool_bench.py``: 0.68x the rows per second). So
        once the WAL holds ``wal_restart_frames`` frames, a last pass copies the few
        left (at most ``_CHECKPOINT_TAIL``) holding the transaction lock, so that no
        commit is in flight when it ends. Commits wait for that pass (a few ms under load), which
        is why it runs only every ``wal_restart_frames``, not every round. Returns
        whether the WAL was copied in full.
        """
        try:
            for _ in range(_CHECKPOINT_PASSES):  # each pass copies what came in meanwhile
                _, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                if frames - copied <= _CHECKPOINT_TAIL:
                    break
            else:
                return False  # a reader holds an old snapshot; the next round tries again
        finally:
            # SQLite syncs the database only after a pass that reached the WAL's end,
            # which under load is rare: the pages copied would pile up in the page cache
            # and then be flushed at once, stalling the commits' fsyncs on the same disk
            # for tens of ms. Syncing every round flushes about a second's worth.
            _fsync(self.path)
        if frames >= self.wal_restart_frames:
            with self._lock:  # even if all was copied: a commit in flight may have added more
                _, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return bool(frames == copied)

    # --- group commit -----------------------------------------------------------------------

    def transact(self, group: list[WriteOp]) -> list[WriteResult]:
        """Run a group in one transaction (appends first) and commit once; if the database
        fails, roll back, restore the byte count and fail every op of the group.

        Blocks for the commit; the writer process (:mod:`relay.writer`) calls it directly.
        """
        with self._lock:
            conn = self._writer
            if conn is None:
                closed = SpoolUnavailable("spool is not open")
                return [(op, None, closed) for op in group]
            size_before = self._bytes
            try:
                self._durability(conn, any(op.append for op in group))
                conn.execute("BEGIN IMMEDIATE")
                results = self._insert(conn, [op for op in group if op.append])
                results.extend(self._run_ops(conn, [op for op in group if not op.append]))
                conn.execute("COMMIT")
                self._broken = None
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                self._bytes = size_before
                self._broken = f"{type(exc).__name__}: {exc}"
                error = SpoolUnavailable(f"spool write failed: {exc}")
                results = [(op, None, error) for op in group]
        return results

    def _durability(self, conn: sqlite3.Connection, appends: bool) -> None:
        """``synchronous=FULL`` (fsync at commit) for a group with appends, NORMAL for
        one without: completions and marks reach the disk with the next append's fsync
        or checkpoint, and only an OS crash before that can lose them (their rows are
        then published again: never lost, possibly duplicated)."""
        if appends != self._fsync_commits:
            conn.execute(f"PRAGMA synchronous={'FULL' if appends else 'NORMAL'}")
            self._fsync_commits = appends

    def _insert(self, conn: sqlite3.Connection, appends: list[WriteOp]) -> list[WriteResult]:
        """Insert appends with multi-row INSERTs (200 rows a statement); refuse those over
        the size cap."""
        results: list[WriteResult] = []
        accepted: list[WriteOp] = []
        for op in appends:
            assert op.row is not None
            if self._bytes + op.row[8] > self.max_bytes:
                results.append((op, None, SpoolUnavailable("spool is over its size cap",
                                                           retry_after=30)))
            else:
                self._bytes += op.row[8]
                accepted.append(op)
        for start in range(0, len(accepted), _ROWS_PER_INSERT):
            chunk = accepted[start:start + _ROWS_PER_INSERT]
            cur = conn.execute(_insert_many(len(chunk)),
                               [value for op in chunk for value in op.row])  # type: ignore[union-attr]
            last = int(cur.lastrowid or 0)  # rowids of one INSERT are consecutive
            results.extend((op, last - len(chunk) + 1 + i, None) for i, op in enumerate(chunk))
        return results

    @staticmethod
    def _run_ops(conn: sqlite3.Connection, ops: list[WriteOp]) -> list[WriteResult]:
        """Other writes (completions, marks); a database error fails the whole group."""
        results: list[WriteResult] = []
        for op in ops:
            assert op.fn is not None
            try:
                results.append((op, op.fn(conn), None))
            except sqlite3.Error:
                raise
            except Exception as exc:  # this op refused; the others go on
                results.append((op, None, exc))
        return results

    def _submit(self, fn: Callable[[sqlite3.Connection], T] | None,
                row: tuple[Any, ...] | None = None) -> asyncio.Future[T]:
        """Queue a write for this loop's next flush; the future is done once it is
        committed. (A future, not a coroutine: the ack path awaits it directly.)"""
        if self._writer is None:
            raise SpoolUnavailable("spool is not open")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._group.append(WriteOp(fn, future, row=row))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        """Commit every write queued since the last flush, in one transaction (one fsync).

        Runs on the event loop after the callbacks that were ready when the first write
        was queued, so all the requests handled in one loop iteration share one commit.
        """
        self._flush_scheduled = False
        group, self._group = self._group, []
        for op, value, error in self.transact(group):
            future = op.future
            if future is None or future.done():
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(value)
        if self.on_commit is not None and any(op.append for op in group):
            self.on_commit()  # new rows for the publisher (not its own completions)

    def _submit_sync(self, fn: Callable[[sqlite3.Connection], T] | None,
                     row: tuple[Any, ...] | None = None) -> T:
        """Run a write in its own transaction from any thread (CLI tools, replay)."""
        if self._writer is None:
            raise SpoolUnavailable("spool is not open")
        ((_, value, error),) = self.transact([WriteOp(fn, row=row)])
        if error is not None:
            raise error
        return value  # type: ignore[no-any-return]

    # --- writes ---------------------------------------------------------------------------

    @staticmethod
    def _row(raw: RawPostback) -> tuple[Any, ...]:
        headers = orjson.dumps(raw.headers)
        return (raw.source, raw.received_at, raw.remote_addr, raw.method, raw.path, raw.query,
                headers, raw.body, len(raw.body) + len(headers))

    def append(self, raw: RawPostback) -> asyncio.Future[int]:
        """Store ``raw`` durably: a future of its raw_id, done once committed (fsynced).

        The future fails with :class:`SpoolUnavailable` if the spool is over its size cap
        or the disk refuses the write (a closed spool raises it at once). A future, not a
        coroutine: one per acknowledged postback, awaited by the ack path directly.
        """
        return self._submit(None, row=self._row(raw))

    def append_sync(self, raw: RawPostback) -> int:
        """:meth:`append` for code without an event loop (tests, tools)."""
        return self._submit_sync(None, row=self._row(raw))

    async def complete(self, outcomes: Sequence[Outcome], now: float | None = None) -> None:
        """Record that Kafka acknowledged everything derived from these rows: their event
        ids in ``seen.db`` (:meth:`remember`), then the rows' state (in the same
        transaction as the appends queued with it)."""
        stamp = time.time() if now is None else now
        self.remember(outcomes, stamp)
        await self.mark(marks(outcomes), stamp)

    def complete_sync(self, outcomes: Sequence[Outcome], now: float | None = None) -> None:
        """:meth:`complete` for code without an event loop (replay)."""
        stamp = time.time() if now is None else now
        self.remember(outcomes, stamp)
        self._submit_sync(completion(marks(outcomes), stamp))

    def remember(self, outcomes: Sequence[Outcome], stamp: float) -> None:
        """Add the outcomes' event ids to ``seen.db``. If it refuses, the rows are still
        marked done: a provider's retry of these events may then be published again,
        while leaving the rows pending would publish them all again for sure."""
        try:
            self.seen.add(outcomes, stamp)
        except sqlite3.Error as exc:
            log.warning("seen_write_failed", problem=f"{type(exc).__name__}: {exc}")

    async def mark(self, rows: Sequence[Mark], stamp: float) -> None:
        """Set the state of rows whose records Kafka acknowledged (their ids are in
        ``seen.db`` already)."""
        await self._submit(completion(rows, stamp))

    async def prune(self, *, older_than: float, seen_before: float) -> int:
        """Delete published/dead rows received before ``older_than`` and old seen ids.

        Runs in a thread, in transactions of at most 500 rows each, so a big prune never
        holds the event loop or a waiting ack for long.
        """
        return await asyncio.to_thread(self.prune_sync, older_than=older_than,
                                       seen_before=seen_before)

    def prune_sync(self, *, older_than: float, seen_before: float) -> int:
        """:meth:`prune` for code without an event loop."""
        removed = 0
        while True:
            rows = self._submit_sync(partial(self._prune_rows, older_than=older_than))
            removed += rows
            if rows < _PRUNE_CHUNK:
                break
        try:
            self.seen.prune(seen_before)
        except sqlite3.Error as exc:  # the next round tries again; rows were pruned anyway
            log.warning("seen_prune_failed", problem=f"{type(exc).__name__}: {exc}")
        return removed

    def _prune_rows(self, conn: sqlite3.Connection, older_than: float) -> int:
        """Delete up to ``_PRUNE_CHUNK`` finished rows received before ``older_than``."""
        found = conn.execute(
            "SELECT id, size FROM raw WHERE state != 0 AND received_at < ? LIMIT ?",
            (older_than, _PRUNE_CHUNK)).fetchall()
        conn.executemany("DELETE FROM raw WHERE id = ? AND state != 0",
                         [(row[0],) for row in found])
        self._bytes -= sum(int(row[1]) for row in found)
        return len(found)

    # --- reads (second connection; callers run them in a thread when in an event loop) ----

    def _read(self) -> sqlite3.Connection:
        if self._reader is None:
            raise SpoolUnavailable("spool is not open")
        return self._reader

    def pending(self, after: int = 0, limit: int = 500) -> list[RawPostback]:
        """Up to ``limit`` pending rows with id > ``after``, in arrival order."""
        rows = self._read().execute(
            f"SELECT {_COLUMNS} FROM raw WHERE state = 0 AND id > ? ORDER BY id LIMIT ?",  # noqa: S608
            (after, limit),
        ).fetchall()
        return [row_to_raw(r) for r in rows]

    def seen_ids(self, event_ids: Iterable[str], since: float) -> set[str]:
        """Which of ``event_ids`` were published at or after ``since`` (``seen.db``)."""
        return self.seen.seen_ids(event_ids, since)

    def stats(self) -> SpoolStats:
        """Pending, dead-lettered and total rows, and bytes held."""
        conn = self._read()  # each count walks an index, never the bodies
        pending = conn.execute("SELECT count(*) FROM raw WHERE state = 0").fetchone()[0]
        dead = conn.execute("SELECT count(*) FROM raw WHERE state = 2").fetchone()[0]
        total = conn.execute("SELECT count(*) FROM raw INDEXED BY raw_received").fetchone()[0]
        return SpoolStats(int(pending), int(dead), int(total), self._bytes)

    def select(self, *, since: float | None = None, until: float | None = None,
               sources: Sequence[str] = (), raw_ids: Sequence[int] = (),
               dead_only: bool = False, batch: int = 2000) -> Iterator[RawPostback]:
        """Stored rows matching the filters, in arrival order, read in batches."""
        where: list[str] = ["id > ?"]
        args: list[object] = []
        if since is not None:
            where.append("received_at >= ?")
            args.append(since)
        if until is not None:
            where.append("received_at < ?")
            args.append(until)
        if sources:
            where.append(f"source IN ({','.join('?' * len(sources))})")
            args.extend(sources)
        if raw_ids:
            where.append(f"id IN ({','.join('?' * len(raw_ids))})")
            args.extend(raw_ids)
        if dead_only:
            where.append("state = 2")
        sql = f"SELECT {_COLUMNS} FROM raw WHERE {' AND '.join(where)} ORDER BY id LIMIT ?"  # noqa: S608
        last = 0
        conn = self._read()
        while True:
            rows = conn.execute(sql, (last, *args, batch)).fetchall()
            if not rows:
                return
            for row in rows:
                yield row_to_raw(row)
            last = rows[-1][0]

    def dead_letters(self, limit: int = 1000) -> list[DeadLetter]:
        """Dead-lettered rows, newest first."""
        rows = self._read().execute(
            "SELECT id, source, received_at, coalesce(error, ''), size FROM raw WHERE state = 2"
            " ORDER BY id DESC LIMIT ?",
            (limit,),
        ).fetchall()
        return [DeadLetter(int(r[0]), r[1], float(r[2]), r[3], int(r[4])) for r in rows]

    def dead_among(self, raw_ids: Sequence[int]) -> set[int]:
        """Which of ``raw_ids`` are dead-lettered (one query for a batch)."""
        if not raw_ids:
            return set()
        rows = self._read().execute(
            "SELECT id FROM raw WHERE state = 2 AND id BETWEEN ? AND ?",
            (min(raw_ids), max(raw_ids))).fetchall()
        wanted = set(raw_ids)
        return {int(r[0]) for r in rows if r[0] in wanted}

    def state_of(self, raw_id: int) -> int | None:
        """The state of one row, or None if it does not exist (pruned)."""
        row = self._read().execute("SELECT state FROM raw WHERE id = ?", (raw_id,)).fetchone()
        return None if row is None else int(row[0])

    @property
    def broken(self) -> str | None:
        """The last write error, or None if the last group committed."""
        return self._broken


def _fsync(path: Path) -> None:
    """Flush a file's written pages to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def completion(rows: Sequence[Mark], stamp: float) -> Callable[[sqlite3.Connection], None]:
    """The write that marks ``rows`` done (picklable: the writer process runs it)."""
    return partial(_complete, rows=tuple(rows), stamp=stamp)


def _complete(conn: sqlite3.Connection, rows: Sequence[Mark], stamp: float) -> None:
    conn.executemany("UPDATE raw SET state = ?, error = ?, done_at = ? WHERE id = ?",
                     [(state, error, stamp, raw_id) for raw_id, state, error in rows])
