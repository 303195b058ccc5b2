"""Unit tests for relay.spool: the durable SQLite group-commit spool."""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from structlog.testing import capture_logs

from relay.errors import SpoolUnavailable
from relay.schema import RawPostback
from relay.spool import (
    DEAD,
    FORMAT_VERSION,
    PENDING,
    PUBLISHED,
    Outcome,
    Spool,
    marks,
    row_to_raw,
)

REPO = Path(__file__).resolve().parent.parent
BIG = 1 << 30


def raw(body: bytes = b'{"a":1}', *, source: str = "bw", received_at: float = 1000.0,
        headers: tuple[tuple[str, str], ...] = (("content-type", "application/json"),),
        query: str = "") -> RawPostback:  # fmt: skip
    """A raw postback."""
    return RawPostback(source=source, received_at=received_at, remote_addr="203.0.113.5",
                       method="POST", path=f"/hooks/{source}", query=query, headers=headers,
                       body=body)  # fmt: skip


def size_of(r: RawPostback) -> int:
    """What a row counts against the size cap: body plus JSON headers."""
    return len(r.body) + len(orjson.dumps(r.headers))


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    """An open spool in a fresh directory, closed afterwards."""
    s = Spool(tmp_path / "spool", BIG).open()
    yield s
    s.close()


def fresh_rows(path: Path) -> list[tuple[int, int]]:
    """(id, state) of every row, read through an independent SQLite connection."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [(int(i), int(s)) for i, s in conn.execute("SELECT id, state FROM raw ORDER BY id")]
    finally:
        conn.close()


# --- lifecycle and format ---------------------------------------------------------------------


def test_open_creates_wal_database_with_format(tmp_path: Path) -> None:
    """open() creates <dir>/spool.db in WAL mode with the format version recorded."""
    directory = tmp_path / "a" / "b"
    with Spool(directory, BIG) as s:
        assert s.path == directory / "spool.db"
        assert s.path.exists()
        assert s.bytes_used == 0
    conn = sqlite3.connect(directory / "spool.db")
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT value FROM meta WHERE key='format'").fetchone()[0] == \
            FORMAT_VERSION
    finally:
        conn.close()


async def test_closed_spool_refuses_writes_and_reads(tmp_path: Path) -> None:
    """A spool that is not open raises SpoolUnavailable for writes and reads."""
    s = Spool(tmp_path, BIG)
    with pytest.raises(SpoolUnavailable):
        await s.append(raw())
    with pytest.raises(SpoolUnavailable):
        s.append_sync(raw())
    with pytest.raises(SpoolUnavailable):
        s.pending()
    s.open()
    s.close()
    with pytest.raises(SpoolUnavailable):
        await s.append(raw())
    with pytest.raises(SpoolUnavailable):
        s.stats()


# --- append -----------------------------------------------------------------------------------


async def test_append_round_trips_every_field(spool: Spool) -> None:
    """A stored postback reads back byte for byte with its new raw_id."""
    original = raw(b"\x00\xffbinary\r\n", query="a=1&b=%20",
                   headers=(("content-type", "x/y"), ("x-sig", "é"), ("x-sig", "2")))  # fmt: skip
    raw_id = await spool.append(original)
    (got,) = spool.pending()
    assert got.id == raw_id
    assert got.body == original.body
    assert got.headers == original.headers
    assert (got.source, got.received_at, got.remote_addr, got.method, got.path, got.query) == (
        original.source, original.received_at, original.remote_addr, original.method,
        original.path, original.query)  # fmt: skip
    assert spool.bytes_used == size_of(original)


async def test_append_returns_only_after_commit(spool: Spool) -> None:
    """When append returns, an independent connection already sees the row."""
    for _ in range(5):
        raw_id = await spool.append(raw())
        assert (raw_id, PENDING) in fresh_rows(spool.path)


async def test_many_concurrent_appends_share_few_commits(tmp_path: Path) -> None:
    """200 concurrent appends get distinct, ordered ids in far fewer than 200 commits."""
    commits = 0

    def counted() -> None:
        nonlocal commits
        commits += 1

    s = Spool(tmp_path, BIG, on_commit=counted).open()
    try:
        bodies = [f'{{"n":{i}}}'.encode() for i in range(200)]
        ids = await asyncio.gather(*(s.append(raw(b)) for b in bodies))
    finally:
        s.close()
    assert len(set(ids)) == 200
    assert ids == sorted(ids)
    assert ids == list(range(ids[0], ids[0] + 200))
    assert 1 <= commits <= 20
    with Spool(tmp_path, BIG) as reopened:
        rows = reopened.pending(limit=1000)
        assert [r.id for r in rows] == ids
        assert [r.body for r in rows] == bodies
        assert reopened.bytes_used == sum(size_of(raw(b)) for b in bodies)


async def test_size_cap_refuses_with_retry_after_and_stores_nothing(tmp_path: Path) -> None:
    """Past the size cap append raises SpoolUnavailable(retry_after=30) and stores nothing."""
    first = raw(b"x" * 100, headers=())
    with Spool(tmp_path, size_of(first)) as s:
        await s.append(first)  # exactly at the cap is allowed
        with pytest.raises(SpoolUnavailable) as info:
            await s.append(raw(b"y", headers=()))
        assert info.value.retry_after == 30
        assert info.value.status == 503
        assert info.value.headers() == {"Retry-After": "30"}
        assert s.stats().total == 1
        assert s.bytes_used == size_of(first)
    assert len(fresh_rows(tmp_path / "spool.db")) == 1


async def test_size_cap_refusal_does_not_fail_the_rest_of_the_group(tmp_path: Path) -> None:
    """In one group, only the append over the cap fails; the others commit."""
    small = raw(b"s" * 10, headers=())
    with Spool(tmp_path, 3 * size_of(small)) as s:
        results = await asyncio.gather(
            s.append(small), s.append(raw(b"b" * 1000, headers=())), s.append(small),
            return_exceptions=True,
        )  # fmt: skip
        assert isinstance(results[1], SpoolUnavailable)
        assert isinstance(results[0], int)
        assert isinstance(results[2], int)
        assert [r.id for r in s.pending()] == [results[0], results[2]]
        assert s.bytes_used == 2 * size_of(small)


def test_append_sync_respects_size_cap(tmp_path: Path) -> None:
    """append_sync, like append, refuses a postback over the size cap and stores nothing."""
    with Spool(tmp_path, 10) as s:
        with pytest.raises(SpoolUnavailable):
            s.append_sync(raw(b"z" * 100))
        assert s.stats().total == 0


async def test_disk_failure_is_spool_unavailable_and_recovers(spool: Spool) -> None:
    """A real write failure (file size limit) is SpoolUnavailable; the spool recovers after."""
    before = await spool.append(raw())
    used = spool.bytes_used
    wal = spool.path.with_name("spool.db-wal")
    limit = max(wal.stat().st_size, spool.path.stat().st_size) + 64 * 1024
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a signal
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, old_limit[1]))
    try:
        with pytest.raises(SpoolUnavailable) as info:
            await spool.append(raw(b"x" * (1 << 20)))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)
    assert info.value.retriable
    assert "spool write failed" in info.value.detail
    assert spool.broken is not None
    assert spool.bytes_used == used
    assert [r.id for r in spool.pending()] == [before]
    after = await spool.append(raw(b"ok"))
    assert spool.broken is None
    assert after > before
    assert [r.body for r in spool.pending()] == [b'{"a":1}', b"ok"]


def test_durable_after_sigkill_right_after_append(tmp_path: Path) -> None:
    """A row whose append returned survives the process being SIGKILLed at once."""
    script = textwrap.dedent(f"""
        import asyncio, os, signal, sys
        from pathlib import Path
        from relay.schema import RawPostback
        from relay.spool import Spool

        async def main():
            s = Spool(Path({str(tmp_path)!r}), 1 << 30).open()
            ids = []
            for i in range(3):
                r = RawPostback(source="bw", received_at=1.0 + i, remote_addr="1.2.3.4",
                                method="POST", path="/hooks/bw", query="",
                                headers=(("content-type", "text/plain"),),
                                body=b"durable-%d" % i)
                ids.append(await s.append(r))
            sys.stdout.write(" ".join(map(str, ids)) + "\\n")
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)

        asyncio.run(main())
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, cwd=REPO, check=False)  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    ids = [int(x) for x in proc.stdout.split()]
    assert len(ids) == 3
    with Spool(tmp_path, BIG) as s:
        rows = s.pending()
        assert [r.id for r in rows] == ids
        assert [r.body for r in rows] == [b"durable-0", b"durable-1", b"durable-2"]
        assert rows[0].headers == (("content-type", "text/plain"),)


# --- complete / seen ids ----------------------------------------------------------------------


def _format_1_spool(directory: Path, ids: list[tuple[str, int, float]]) -> None:
    """A spool.db as format 1 left it: the seen ids in a table of its own."""
    directory.mkdir(parents=True)
    conn = sqlite3.connect(directory / "spool.db")
    conn.executescript("""
        CREATE TABLE seen (event_id TEXT PRIMARY KEY, raw_id INTEGER NOT NULL,
                           seen_at REAL NOT NULL) WITHOUT ROWID;
        CREATE INDEX seen_at ON seen(seen_at);
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('format', '1');""")
    conn.executemany("INSERT INTO seen VALUES (?, ?, ?)", ids)
    conn.commit()
    conn.close()


def test_open_moves_format_1_seen_ids_to_seen_db(tmp_path: Path) -> None:
    """Opening a format-1 spool moves its seen ids to seen.db and drops them from spool.db."""
    directory = tmp_path / "spool"
    _format_1_spool(directory, [(f"e{i}", i, 100.0 + i) for i in range(25_000)])
    with capture_logs() as logs, Spool(directory, BIG) as s:
        assert s.seen_ids(["e0", "e24999", "other"], since=0.0) == {"e0", "e24999"}
        assert s.seen_ids(["e0", "e24999"], since=200.0) == {"e24999"}
    assert {"event": "seen_ids_moved", "count": 25_000, "to": str(directory / "seen.db"),
            "log_level": "info"} in logs
    conn = sqlite3.connect(directory / "spool.db")
    try:
        assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'seen'"
                            ).fetchone()[0] == 0
        assert conn.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()[0] == "2"
    finally:
        conn.close()
    with Spool(directory, BIG) as s:  # opening again moves nothing and loses nothing
        assert s.seen_ids(["e0"], since=0.0) == {"e0"}


async def test_complete_writes_event_ids_to_seen_db_not_the_spool(spool: Spool) -> None:
    """complete() puts event ids in seen.db; spool.db's commit carries the row states only."""
    a = await spool.append(raw())
    await spool.complete([Outcome(a, PUBLISHED, ("e1", "e2"))], now=7.0)
    conn = sqlite3.connect(spool.seen.path)
    try:
        assert sorted(conn.execute("SELECT event_id, raw_id, seen_at FROM seen")) == [
            ("e1", a, 7.0), ("e2", a, 7.0)]
    finally:
        conn.close()
    names = {r[0] for r in sqlite3.connect(spool.path).execute("SELECT name FROM sqlite_master")}
    assert "seen" not in names


async def test_complete_marks_rows_done_when_seen_db_fails(spool: Spool) -> None:
    """If seen.db refuses the ids, the rows are still marked done and the failure is logged."""
    a = await spool.append(raw())
    spool.seen.close()  # every seen.db call now raises sqlite3.Error
    with capture_logs() as logs:
        await spool.complete([Outcome(a, PUBLISHED, ("e1",))], now=7.0)
    assert spool.state_of(a) == PUBLISHED
    assert [e["event"] for e in logs] == ["seen_write_failed"]
    spool.seen.open()


def test_marks_are_plain_tuples_without_event_ids() -> None:
    """marks() keeps what the row update needs (raw id, state, error) and drops the ids."""
    got = marks([Outcome(3, PUBLISHED, ("e1", "e2")), Outcome(4, DEAD, (), "bad")])
    assert got == ((3, PUBLISHED, None), (4, DEAD, "bad"))


async def test_complete_moves_state_and_records_seen_ids(spool: Spool) -> None:
    """complete() marks rows published or dead and records their event ids."""
    a = await spool.append(raw(b"a"))
    b = await spool.append(raw(b"b"))
    c = await spool.append(raw(b"c"))
    await spool.complete([Outcome(a, PUBLISHED, ("e1", "e2")),
                          Outcome(b, DEAD, (), "cannot parse")], now=5000.0)  # fmt: skip
    assert spool.state_of(a) == PUBLISHED
    assert spool.state_of(b) == DEAD
    assert spool.state_of(c) == PENDING
    assert spool.state_of(99999) is None
    assert [r.id for r in spool.pending()] == [c]
    assert spool.seen_ids(["e1", "e2", "e3"], since=4000.0) == {"e1", "e2"}
    (dead,) = spool.dead_letters()
    assert (dead.raw_id, dead.error, dead.source) == (b, "cannot parse", "bw")
    assert sorted(fresh_rows(spool.path)) == [(a, PUBLISHED), (b, DEAD), (c, PENDING)]


async def test_dead_letter_replayed_moves_to_published(spool: Spool) -> None:
    """A dead-lettered row completed again as published leaves the dead letters."""
    a = await spool.append(raw())
    await spool.complete([Outcome(a, DEAD, error="bad")])
    assert [d.raw_id for d in spool.dead_letters()] == [a]
    await spool.complete([Outcome(a, PUBLISHED, ("e",))])
    assert spool.dead_letters() == []
    assert spool.state_of(a) == PUBLISHED


async def test_seen_ids_window(spool: Spool) -> None:
    """seen_ids finds ids published at or after ``since`` only."""
    a = await spool.append(raw())
    b = await spool.append(raw())
    await spool.complete([Outcome(a, PUBLISHED, ("old",))], now=100.0)
    await spool.complete([Outcome(b, PUBLISHED, ("new",))], now=200.0)
    assert spool.seen_ids(["old", "new"], since=100.0) == {"old", "new"}
    assert spool.seen_ids(["old", "new"], since=100.5) == {"new"}
    assert spool.seen_ids(["old", "new"], since=200.1) == set()
    assert spool.seen_ids([], since=0) == set()


async def test_seen_ids_more_than_one_chunk(spool: Spool) -> None:
    """seen_ids works for lists longer than one SQL chunk (500)."""
    a = await spool.append(raw())
    published = tuple(f"ev-{i}" for i in range(0, 1300, 7))
    await spool.complete([Outcome(a, PUBLISHED, published)], now=10.0)
    asked = [f"ev-{i}" for i in range(1300)]
    assert spool.seen_ids(asked, since=0.0) == set(published)


async def test_complete_refreshes_seen_time(spool: Spool) -> None:
    """Publishing an event id again moves its seen time forward."""
    a = await spool.append(raw())
    await spool.complete([Outcome(a, PUBLISHED, ("e",))], now=100.0)
    await spool.complete([Outcome(a, PUBLISHED, ("e",))], now=300.0)
    assert spool.seen_ids(["e"], since=250.0) == {"e"}


# --- pending ----------------------------------------------------------------------------------


async def test_pending_order_after_and_limit(spool: Spool) -> None:
    """pending() lists pending rows in arrival order, after ``after``, up to ``limit``."""
    ids = [await spool.append(raw(b"%d" % i)) for i in range(6)]
    await spool.complete([Outcome(ids[1], PUBLISHED), Outcome(ids[4], DEAD, error="x")])
    assert [r.id for r in spool.pending()] == [ids[0], ids[2], ids[3], ids[5]]
    assert [r.id for r in spool.pending(after=ids[2])] == [ids[3], ids[5]]
    assert [r.id for r in spool.pending(limit=2)] == [ids[0], ids[2]]
    assert spool.pending(after=ids[5]) == []


# --- prune ------------------------------------------------------------------------------------


async def test_prune_never_deletes_pending_rows(spool: Spool) -> None:
    """Prune deletes old done rows only; a pending row survives any age."""
    old_pending = await spool.append(raw(b"p", received_at=1.0))
    old_published = await spool.append(raw(b"pub", received_at=2.0))
    old_dead = await spool.append(raw(b"dead", received_at=3.0))
    new_published = await spool.append(raw(b"new", received_at=500.0))
    await spool.complete([Outcome(old_published, PUBLISHED), Outcome(old_dead, DEAD, error="e"),
                          Outcome(new_published, PUBLISHED)])  # fmt: skip
    removed = await spool.prune(older_than=100.0, seen_before=0.0)
    assert removed == 2
    assert spool.state_of(old_pending) == PENDING
    assert spool.state_of(old_published) is None
    assert spool.state_of(old_dead) is None
    assert spool.state_of(new_published) == PUBLISHED
    assert await spool.prune(older_than=1e12, seen_before=0.0) == 1
    assert [r.id for r in spool.pending()] == [old_pending]


async def test_prune_frees_bytes(tmp_path: Path) -> None:
    """Pruned rows no longer count against the size cap, and room is available again."""
    body = b"x" * 100
    cap = 2 * size_of(raw(body))
    with Spool(tmp_path, cap) as s:
        a = await s.append(raw(body, received_at=1.0))
        await s.append(raw(body, received_at=2.0))
        with pytest.raises(SpoolUnavailable):
            await s.append(raw(body, received_at=3.0))
        await s.complete([Outcome(a, PUBLISHED)])
        assert await s.prune(older_than=10.0, seen_before=0.0) == 1
        assert s.bytes_used == size_of(raw(body))
        assert s.stats().bytes == size_of(raw(body))
        await s.append(raw(body, received_at=4.0))
        assert s.stats().total == 2
    with Spool(tmp_path, cap) as reopened:
        assert reopened.bytes_used == cap


async def test_prune_deletes_old_seen_ids(spool: Spool) -> None:
    """Prune drops seen ids older than ``seen_before`` and keeps newer ones."""
    a = await spool.append(raw(received_at=1e9))
    await spool.complete([Outcome(a, PUBLISHED, ("old",))], now=100.0)
    await spool.complete([Outcome(a, PUBLISHED, ("new",))], now=300.0)
    assert await spool.prune(older_than=0.0, seen_before=200.0) == 0
    assert spool.seen_ids(["old", "new"], since=0.0) == {"new"}
    assert spool.state_of(a) == PUBLISHED


async def test_prune_in_chunks_removes_every_old_row_and_frees_bytes(spool: Spool) -> None:
    """A prune of more rows than one chunk holds removes them all and frees their bytes."""
    bodies = [f'{{"n":{i}}}'.encode() for i in range(1234)]
    ids = await asyncio.gather(*(spool.append(raw(b, received_at=1.0)) for b in bodies))
    keep = await spool.append(raw(b"pending", received_at=1.0))
    await spool.complete([Outcome(i, PUBLISHED, (f"e{i}",)) for i in ids], now=5.0)
    assert await spool.prune(older_than=10.0, seen_before=10.0) == len(ids)
    assert spool.bytes_used == size_of(raw(b"pending"))
    assert [r.id for r in spool.pending()] == [keep]
    assert spool.seen_ids([f"e{i}" for i in ids], since=0.0) == set()


async def test_checkpoint_thread_copies_the_wal_into_the_database(tmp_path: Path) -> None:
    """The checkpoint thread, not the committing loop, moves committed pages into spool.db."""
    idle = Spool(tmp_path / "idle", BIG, checkpoint_interval=3600).open()
    busy = Spool(tmp_path / "busy", BIG, checkpoint_interval=0.05).open()
    try:
        before = {s: s.path.stat().st_size for s in (idle, busy)}
        for s in (idle, busy):
            await asyncio.gather(*(s.append(raw(b"x" * 4000)) for _ in range(200)))
        await asyncio.sleep(0.5)
        assert idle.path.stat().st_size == before[idle]  # autocheckpoint off: all in the WAL
        assert busy.path.stat().st_size > before[busy] + 200 * 4000
    finally:
        idle.close()
        busy.close()


async def test_wal_starts_over_under_steady_load(tmp_path: Path) -> None:
    """With commits never pausing, checkpoints still let the WAL start over once it is
    long, so its file stays a fraction of what was written instead of growing."""
    spool = Spool(tmp_path / "spool", BIG, checkpoint_interval=0.02,
                  wal_restart_frames=256).open()
    wal = f"{spool.path}-wal"
    written = 0
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        while written < 24 << 20 or loop.time() - started < 0.5:  # dozens of checkpoints
            await asyncio.gather(*(spool.append(raw(b"x" * 4000)) for _ in range(20)))
            written += 20 * 4000
        assert await asyncio.to_thread(os.path.getsize, wal) < written // 3
    finally:
        spool.close()


def test_checkpoint_copies_everything_and_the_next_commit_reuses_the_wal(tmp_path: Path
                                                                          ) -> None:  # fmt: skip
    """checkpoint() copies the whole WAL, and the next commit writes from its start."""
    spool = Spool(tmp_path / "spool", BIG, checkpoint_interval=3600,
                  wal_restart_frames=50).open()
    conn = sqlite3.connect(spool.path, isolation_level=None)
    try:
        for _ in range(50):
            spool.append_sync(raw(b"x" * 4000))
        assert spool.checkpoint(conn) is True
        spool.append_sync(raw(b"y"))
        frames = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]
        assert 0 < frames < 10  # one small commit's pages, not 50 rows' worth on top
    finally:
        conn.close()
        spool.close()


# --- select / dead letters / stats ------------------------------------------------------------


async def test_select_filters(spool: Spool) -> None:
    """select() filters by time range, sources, raw ids and dead-only, in arrival order."""
    ids = {}
    for name, source, t in [("a", "bw", 10.0), ("b", "sky", 20.0), ("c", "bw", 30.0),
                            ("d", "ping", 40.0), ("e", "bw", 50.0)]:  # fmt: skip
        ids[name] = await spool.append(raw(name.encode(), source=source, received_at=t))
    await spool.complete([Outcome(ids["c"], DEAD, error="x"), Outcome(ids["d"], DEAD, error="y"),
                          Outcome(ids["a"], PUBLISHED)])  # fmt: skip

    def bodies(**kw: object) -> list[bytes]:
        return [r.body for r in spool.select(**kw)]  # type: ignore[arg-type]

    assert bodies() == [b"a", b"b", b"c", b"d", b"e"]
    assert bodies(since=20.0) == [b"b", b"c", b"d", b"e"]
    assert bodies(until=30.0) == [b"a", b"b"]
    assert bodies(since=20.0, until=40.0) == [b"b", b"c"]
    assert bodies(sources=["bw"]) == [b"a", b"c", b"e"]
    assert bodies(sources=["sky", "ping"]) == [b"b", b"d"]
    assert bodies(raw_ids=[ids["e"], ids["a"]]) == [b"a", b"e"]
    assert bodies(dead_only=True) == [b"c", b"d"]
    assert bodies(dead_only=True, sources=["bw"]) == [b"c"]
    assert bodies(sources=["nobody"]) == []
    assert bodies(batch=2) == [b"a", b"b", b"c", b"d", b"e"]
    assert bodies(batch=1, sources=["bw"], since=5.0) == [b"a", b"c", b"e"]


async def test_dead_letters_newest_first_with_limit(spool: Spool) -> None:
    """dead_letters() lists dead rows newest first, with error and size, up to ``limit``."""
    rows = [raw(b"x" * n, received_at=float(n)) for n in (1, 2, 3)]
    ids = [await spool.append(r) for r in rows]
    await spool.complete([Outcome(i, DEAD, error=f"err{i}") for i in ids])
    dead = spool.dead_letters()
    assert [d.raw_id for d in dead] == ids[::-1]
    assert dead[0].error == f"err{ids[2]}"
    assert dead[0].size == size_of(rows[2])
    assert dead[0].received_at == 3.0
    assert [d.raw_id for d in spool.dead_letters(limit=2)] == ids[:0:-1]


async def test_dead_letter_without_error_lists_empty_error(spool: Spool) -> None:
    """A dead row completed without an error text lists '' as its error."""
    a = await spool.append(raw())
    await spool.complete([Outcome(a, DEAD)])
    assert spool.dead_letters()[0].error == ""


async def test_stats_counts(spool: Spool) -> None:
    """stats() counts pending, dead and all rows and reports bytes held."""
    ids = [await spool.append(raw()) for _ in range(4)]
    await spool.complete([Outcome(ids[0], PUBLISHED), Outcome(ids[1], DEAD, error="e")])
    stats = spool.stats()
    assert (stats.pending, stats.dead, stats.total) == (2, 1, 4)
    assert stats.bytes == 4 * size_of(raw())


# --- sync API (no event loop) -----------------------------------------------------------------


def test_sync_api_without_event_loop(tmp_path: Path) -> None:
    """append_sync, complete_sync and prune_sync work from plain code without a loop."""
    with Spool(tmp_path, BIG) as s:
        a = s.append_sync(raw(b"one", received_at=1.0))
        b = s.append_sync(raw(b"two", received_at=2.0))
        assert b > a
        assert (a, PENDING) in fresh_rows(s.path)
        s.complete_sync([Outcome(a, PUBLISHED, ("ev",)), Outcome(b, DEAD, error="bad")], now=50.0)
        assert s.state_of(a) == PUBLISHED
        assert s.seen_ids(["ev"], since=50.0) == {"ev"}
        assert [d.raw_id for d in s.dead_letters()] == [b]
        assert s.prune_sync(older_than=1.5, seen_before=0.0) == 1
        assert s.state_of(a) is None
        assert s.state_of(b) == DEAD
        assert s.bytes_used == size_of(raw(b"two"))


async def test_sync_and_async_writes_interleave(spool: Spool) -> None:
    """A sync write from a worker thread and async appends share the writer safely."""
    sync_id, *async_ids = await asyncio.gather(
        asyncio.to_thread(spool.append_sync, raw(b"sync")),
        *(spool.append(raw(b"async")) for _ in range(10)),
    )
    assert len({sync_id, *async_ids}) == 11
    assert len(spool.pending(limit=100)) == 11


def test_reopen_restores_bytes_used(tmp_path: Path) -> None:
    """A reopened spool counts the bytes of the rows it holds."""
    rows = [raw(b"x" * 10), raw(b"y" * 20)]
    with Spool(tmp_path, BIG) as s:
        for r in rows:
            s.append_sync(r)
    with Spool(tmp_path, BIG) as s:
        assert s.bytes_used == sum(map(size_of, rows))
        assert s.stats().total == 2


async def test_only_groups_with_appends_are_fsynced_at_commit(spool: Spool) -> None:
    """A group with an append commits with synchronous=FULL; a completion-only group with NORMAL."""
    def level() -> int:
        assert spool._writer is not None
        return int(spool._writer.execute("PRAGMA synchronous").fetchone()[0])

    raw_id = await spool.append(raw())
    assert level() == 2  # FULL
    await spool.complete([Outcome(raw_id, PUBLISHED, ("e1",))])
    assert level() == 1  # NORMAL
    await spool.append(raw())
    assert level() == 2
    assert spool.state_of(raw_id) == PUBLISHED


def test_row_to_raw_maps_every_column_to_its_field() -> None:
    """A row in _COLUMNS order becomes the postback with each column in its own field."""
    row = (7, "bw", 1_740_823_200.5, "203.0.113.9", "PUT", "/hooks/bw", "a=1",
           b'[["content-type","application/json"],["user-agent","x"]]', b"body")
    assert row_to_raw(row) == RawPostback(
        id=7, source="bw", received_at=1_740_823_200.5, remote_addr="203.0.113.9", method="PUT",
        path="/hooks/bw", query="a=1",
        headers=(("content-type", "application/json"), ("user-agent", "x")), body=b"body")
