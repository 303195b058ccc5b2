"""The durable spool: every acknowledged postback is here, fsynced, before relay says yes.

On-disk format
--------------
One SQLite database, ``<spool.dir>/spool.db``, in WAL mode with ``synchronous=FULL`` (the
WAL is fsynced at every commit). Tables::

    raw(id INTEGER PRIMARY KEY,   -- the raw_id, strictly increasing: the order of arrival
        source, received_at REAL, remote_addr, method, path, query,
        headers BLOB,             -- JSON [[name, value], ...], only the kept headers
        body BLOB,                -- the exact body bytes
        size INTEGER,             -- len(body) + len(headers): what counts against max_bytes
        state INTEGER,            -- 0 pending, 1 published, 2 dead-lettered (published to DLQ)
        error TEXT,               -- why it was dead-lettered
        done_at REAL)             -- when its records were acknowledged by Kafka
    seen(event_id PRIMARY KEY, raw_id, seen_at REAL)   -- published event ids (dedup window)
    meta(key PRIMARY KEY, value)                        -- format version

Invariants
----------
* A row exists before its postback is acknowledged: :meth:`Spool.append` returns only
  after the transaction holding it has committed (and so been fsynced).
* ``state`` moves 0 -> 1 or 0 -> 2 (and 2 -> 1 when a dead letter is replayed after a
  fix), only after Kafka acknowledged every record derived from the row. A row only some
  of whose events Kafka took stays 0, and the ids it took go to ``seen`` so the retry
  skips them.
* Pruning deletes only rows that are not pending *and* older than the retention; a
  pending row is never deleted, whatever its age or the size cap.
* ``seen`` holds the ids of events published within the dedup window; it is written in
  the same transaction that marks their raw row done.

Group commit
------------
All writes go through one writer thread that owns the write connection. Requests queue
an operation and await a future; the thread takes every queued append, inserts them in
one transaction (multi-row INSERTs, 200 rows a statement), commits once (one fsync for
the whole group) and resolves the futures. Other writes (completions, in chunks of 64
rows, and pruning) run in transactions of their own when no append is waiting, so an ack
never waits behind them. The event loop never
blocks on the disk. Reads use a second connection (WAL readers do not block the writer).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
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
from relay.schema import RawPostback

FORMAT_VERSION = "1"
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
CREATE TABLE IF NOT EXISTS seen (
    event_id TEXT PRIMARY KEY,
    raw_id INTEGER NOT NULL,
    seen_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS seen_at ON seen(seen_at);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

_COLUMNS = "id, source, received_at, remote_addr, method, path, query, headers, body"
_ROWS_PER_INSERT = 200  # 9 parameters a row: well under SQLite's 32,766


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


class _Op:
    """A queued write: ``fn`` to run, or (an append) ``row`` to insert."""

    __slots__ = ("append", "fn", "future", "loop", "notify", "row")

    def __init__(self, fn: Callable[[sqlite3.Connection], Any] | None,
                 future: asyncio.Future[Any] | None = None,
                 loop: asyncio.AbstractEventLoop | None = None,
                 notify: Callable[[Any, BaseException | None], None] | None = None,
                 row: tuple[Any, ...] | None = None) -> None:
        self.fn = fn
        self.future = future
        self.loop = loop
        self.notify = notify
        self.row = row
        self.append = row is not None


_STOP = object()
_Result = tuple[_Op, Any, BaseException | None]


class Spool:
    """The spool database; open with :meth:`open`, close with :meth:`close`."""

    def __init__(self, directory: Path, max_bytes: int, *, max_group: int = 1024,
                 on_commit: Callable[[], None] | None = None) -> None:
        self.path = Path(directory) / "spool.db"
        self.max_bytes = max_bytes
        self.max_group = max_group
        self.on_commit = on_commit
        self._queue: queue.SimpleQueue[_Op | object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._bytes = 0
        self._broken: str | None = None

    # --- lifecycle ------------------------------------------------------------------------

    def open_reader(self) -> Spool:
        """Open for reading only (no writer thread): the publisher process's view.

        The database must exist; writes go through the process that opened it with
        :meth:`open`, so there is one writer and commits never wait on another process.
        """
        self._reader = connect(self.path)
        return self

    def open(self) -> Spool:
        """Create or open the database and start the writer thread."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = connect(self.path)
        self._writer.executescript(_SCHEMA)
        self._writer.execute("INSERT OR IGNORE INTO meta VALUES ('format', ?)", (FORMAT_VERSION,))
        self._bytes = self._writer.execute("SELECT coalesce(sum(size), 0) FROM raw").fetchone()[0]
        self._reader = connect(self.path)
        self._thread = threading.Thread(target=self._run, name="relay-spool-writer", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Finish queued writes, stop the writer thread, close the connections."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join()
            self._thread = None
        for conn in (self._writer, self._reader):
            if conn is not None:
                conn.close()
        self._writer = self._reader = None

    def __enter__(self) -> Spool:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def bytes_used(self) -> int:
        """Bytes of postbacks held (bodies plus kept headers)."""
        return self._bytes

    # --- the writer thread ----------------------------------------------------------------

    def _take(self, block: bool) -> tuple[list[_Op], list[_Op], bool]:
        """Everything queued: (appends, other writes, stop seen)."""
        appends: list[_Op] = []
        others: list[_Op] = []
        stop = False
        while len(appends) + len(others) < self.max_group:
            try:
                item = self._queue.get() if block else self._queue.get_nowait()
            except queue.Empty:
                break
            block = False
            if item is _STOP:
                stop = True
                break
            assert isinstance(item, _Op)
            (appends if item.append else others).append(item)
        return appends, others, stop

    def _run(self) -> None:
        """Appends first, in one commit; other writes (completions, pruning) one per
        transaction after, each only once no append is waiting: an ack never waits for a
        big completion to be written."""
        conn = self._writer
        assert conn is not None
        backlog: list[_Op] = []
        stop = False
        while not (stop and not backlog):
            appends, others, stopped = self._take(block=not backlog and not stop)
            stop = stop or stopped
            backlog.extend(others)
            if appends:
                self._commit_appends(conn, appends)
            elif backlog:
                self._commit_group(conn, [backlog.pop(0)])

    def _transact(self, conn: sqlite3.Connection, group: list[_Op],
                  work: Callable[[sqlite3.Connection], list[_Result]]) -> None:
        """Run ``work`` in one transaction and hand out its results; if the database fails,
        roll back, restore the byte count and fail every op of the group."""
        size_before = self._bytes
        try:
            conn.execute("BEGIN IMMEDIATE")
            results = work(conn)
            conn.execute("COMMIT")
            self._broken = None
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            self._bytes = size_before
            self._broken = f"{type(exc).__name__}: {exc}"
            error = SpoolUnavailable(f"spool write failed: {exc}")
            results = [(op, None, error) for op in group]
        self._deliver(results)

    def _commit_appends(self, conn: sqlite3.Connection, group: list[_Op]) -> None:
        """Insert a group of appends with multi-row INSERTs and commit once.

        One statement per 200 rows, not one per row: each statement lets go of the GIL
        once, and every time it does, the writer may wait for the event loop to give it back.
        """

        def work(conn: sqlite3.Connection) -> list[_Result]:
            results: list[_Result] = []
            accepted: list[_Op] = []
            for op in group:
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
                results.extend((op, last - len(chunk) + 1 + i, None)
                               for i, op in enumerate(chunk))
            return results

        self._transact(conn, group, work)

    def _commit_group(self, conn: sqlite3.Connection, group: list[_Op]) -> None:
        """Run other writes (completions, pruning) in one transaction."""

        def work(conn: sqlite3.Connection) -> list[_Result]:
            results: list[_Result] = []
            for op in group:
                assert op.fn is not None
                try:
                    results.append((op, op.fn(conn), None))
                except sqlite3.Error:
                    raise  # the disk or database failed: the whole group fails
                except Exception as exc:  # this op refused; the others go on
                    results.append((op, None, exc))
            return results

        self._transact(conn, group, work)

    def _deliver(self, results: list[_Result]) -> None:
        """Hand each result to its waiter: one callback per event loop per group."""
        by_loop: dict[asyncio.AbstractEventLoop, list[_Result]] = {}
        for item in results:
            op = item[0]
            if op.notify is not None:
                op.notify(item[1], item[2])
            elif op.loop is not None:
                by_loop.setdefault(op.loop, []).append(item)
        for loop, items in by_loop.items():
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(_resolve, items, self.on_commit)

    async def _submit(self, fn: Callable[[sqlite3.Connection], T] | None,
                      row: tuple[Any, ...] | None = None) -> T:
        if self._thread is None:
            raise SpoolUnavailable("spool is not open")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Op(fn, future, loop, row=row))
        return await future

    def _submit_sync(self, fn: Callable[[sqlite3.Connection], T] | None,
                     row: tuple[Any, ...] | None = None) -> T:
        """Run a write from a thread without an event loop (CLI tools), once committed."""
        if self._thread is None:
            raise SpoolUnavailable("spool is not open")
        done = threading.Event()
        box: list[tuple[Any, BaseException | None]] = []

        def notify(value: Any, error: BaseException | None) -> None:
            box.append((value, error))
            done.set()

        self._queue.put(_Op(fn, notify=notify, row=row))
        done.wait()
        value, error = box[0]
        if error is not None:
            raise error
        return value  # type: ignore[no-any-return]

    # --- writes ---------------------------------------------------------------------------

    @staticmethod
    def _row(raw: RawPostback) -> tuple[Any, ...]:
        headers = orjson.dumps(raw.headers)
        return (raw.source, raw.received_at, raw.remote_addr, raw.method, raw.path, raw.query,
                headers, raw.body, len(raw.body) + len(headers))

    async def append(self, raw: RawPostback) -> int:
        """Store ``raw`` durably; returns its raw_id once committed (fsynced).

        Raises :class:`SpoolUnavailable` if the spool is over its size cap or the disk
        refuses the write.
        """
        return await self._submit(None, row=self._row(raw))

    def append_sync(self, raw: RawPostback) -> int:
        """:meth:`append` for code without an event loop (tests, tools)."""
        return self._submit_sync(None, row=self._row(raw))

    async def complete(self, outcomes: Sequence[Outcome], now: float | None = None) -> None:
        """Record that Kafka acknowledged everything derived from these rows.

        Written in chunks, each its own short transaction, so appends slip in between.
        """
        stamp = time.time() if now is None else now
        chunks = [outcomes[i:i + 64] for i in range(0, len(outcomes), 64)]
        await asyncio.gather(*(self._submit(partial(_complete, outcomes=chunk, stamp=stamp))
                               for chunk in chunks))

    def complete_sync(self, outcomes: Sequence[Outcome], now: float | None = None) -> None:
        """:meth:`complete` for code without an event loop (replay)."""
        stamp = time.time() if now is None else now
        self._submit_sync(lambda conn: _complete(conn, outcomes, stamp))

    async def prune(self, *, older_than: float, seen_before: float) -> int:
        """Delete published/dead rows received before ``older_than`` and old seen ids."""
        return await self._submit(lambda conn: self._prune(conn, older_than, seen_before))

    def prune_sync(self, *, older_than: float, seen_before: float) -> int:
        """:meth:`prune` for code without an event loop."""
        return self._submit_sync(lambda conn: self._prune(conn, older_than, seen_before))

    def _prune(self, conn: sqlite3.Connection, older_than: float, seen_before: float) -> int:
        freed = conn.execute(
            "SELECT coalesce(sum(size), 0), count(*) FROM raw WHERE state != 0 AND received_at < ?",
            (older_than,),
        ).fetchone()
        conn.execute("DELETE FROM raw WHERE state != 0 AND received_at < ?", (older_than,))
        conn.execute("DELETE FROM seen WHERE seen_at < ?", (seen_before,))
        self._bytes -= int(freed[0])
        return int(freed[1])

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
        """Which of ``event_ids`` were published at or after ``since``."""
        ids = list(event_ids)
        found: set[str] = set()
        conn = self._read()
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            found.update(r[0] for r in conn.execute(
                f"SELECT event_id FROM seen WHERE seen_at >= ? AND event_id IN ({marks})",  # noqa: S608
                (since, *chunk)))
        return found

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


def _complete(conn: sqlite3.Connection, outcomes: Sequence[Outcome], stamp: float) -> None:
    conn.executemany(
        "UPDATE raw SET state = ?, error = ?, done_at = ? WHERE id = ?",
        [(o.state, o.error, stamp, o.raw_id) for o in outcomes],
    )
    conn.executemany(
        "INSERT OR REPLACE INTO seen (event_id, raw_id, seen_at) VALUES (?, ?, ?)",
        [(eid, o.raw_id, stamp) for o in outcomes for eid in o.event_ids],
    )


def _resolve(items: list[_Result],
             on_commit: Callable[[], None] | None) -> None:
    for op, value, error in items:
        future = op.future
        if future is None or future.done():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)
    if on_commit is not None:
        on_commit()
