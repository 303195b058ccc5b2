"""Unit tests for relay.writer: the spool written by its own process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from relay.errors import SpoolUnavailable
from relay.schema import RawPostback
from relay.spool import DEAD, PENDING, PUBLISHED, Outcome
from relay.writer import SpoolProcess

BIG = 1 << 30


def raw(body: bytes = b'{"a":1}', received_at: float = 1000.0) -> RawPostback:
    """A raw postback."""
    return RawPostback(source="bw", received_at=received_at, remote_addr="203.0.113.5",
                       method="POST", path="/hooks/bw", query="",
                       headers=(("content-type", "application/json"),), body=body)


def rows(path: Path) -> list[tuple[int, int, bytes]]:
    """(id, state, body) of every row, read through an independent SQLite connection."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [(int(i), int(s), bytes(b))
                for i, s, b in conn.execute("SELECT id, state, body FROM raw ORDER BY id")]
    finally:
        conn.close()


@pytest.fixture
async def spool(tmp_path: Path) -> AsyncIterator[SpoolProcess]:
    """A started SpoolProcess in a fresh directory, stopped afterwards."""
    commits: list[int] = []
    s = SpoolProcess(tmp_path / "spool", BIG, on_commit=lambda: commits.append(1))
    s.commits = commits  # type: ignore[attr-defined]
    await s.start()
    yield s
    await s.stop()


async def test_appends_are_committed_by_the_writer_process(spool: SpoolProcess) -> None:
    """Concurrent appends return increasing raw ids once another process has committed
    them, and the commit is announced (the publisher's wake-up)."""
    assert spool.pid is not None and spool.pid != os.getpid()
    bodies = [f'{{"n":{i}}}'.encode() for i in range(50)]
    ids = await asyncio.gather(*(spool.append(raw(b)) for b in bodies))
    assert ids == sorted(ids) and len(set(ids)) == 50
    stored = await asyncio.to_thread(rows, spool.path)
    assert [(i, b) for i, _, b in stored] == list(zip(ids, bodies, strict=True))
    assert spool.commits  # type: ignore[attr-defined]
    assert spool.stats().total == 50 and spool.bytes_used > 0


async def test_completions_and_pruning_run_in_the_writer(spool: SpoolProcess) -> None:
    """complete() marks rows and remembers event ids; prune() deletes finished old rows."""
    a, b, c = [await spool.append(raw(received_at=t)) for t in (10.0, 20.0, 3000.0)]
    await spool.complete([Outcome(a, PUBLISHED, ("e1",)), Outcome(b, DEAD, (), "bad")],
                         now=100.0)
    assert [(i, s) for i, s, _ in await asyncio.to_thread(rows, spool.path)] == [
        (a, PUBLISHED), (b, DEAD), (c, PENDING)]
    assert spool.seen_ids(["e1", "e2"], since=0.0) == {"e1"}
    assert await spool.prune(older_than=2000.0, seen_before=50.0) == 2
    assert [i for i, _, _ in await asyncio.to_thread(rows, spool.path)] == [c]
    assert spool.seen_ids(["e1"], since=0.0) == {"e1"}  # seen at 100, after 50


async def test_over_the_cap_is_refused_with_retry_after(tmp_path: Path) -> None:
    """An append over the size cap fails with SpoolUnavailable (Retry-After 30), others
    of the same group are stored."""
    spool = SpoolProcess(tmp_path / "spool", 1000)
    await spool.start()
    try:
        small, big = await asyncio.gather(spool.append(raw(b"x" * 10)),
                                          spool.append(raw(b"y" * 2000)),
                                          return_exceptions=True)
        assert isinstance(small, int)
        assert isinstance(big, SpoolUnavailable) and big.retry_after == 30
        assert [b for _, _, b in await asyncio.to_thread(rows, spool.path)] == [b"x" * 10]
    finally:
        await spool.stop()


async def test_a_killed_writer_fails_appends_then_is_replaced(spool: SpoolProcess) -> None:
    """When the writer dies, appends fail with SpoolUnavailable (503, never a 2xx) until a
    new writer runs; what was committed before is kept."""
    first = await spool.append(raw(b"before"))
    old = spool.pid
    assert old is not None
    os.kill(old, signal.SIGKILL)
    with pytest.raises(SpoolUnavailable):
        for _ in range(200):  # until the main process has noticed
            await spool.append(raw(b"lost?"))
            await asyncio.sleep(0.01)
    for _ in range(300):
        if spool.pid not in (None, old):
            break
        await asyncio.sleep(0.05)
    after = await spool.append(raw(b"after"))
    assert spool.pid not in (None, old) and after > first
    stored = {b: i for i, _, b in await asyncio.to_thread(rows, spool.path)}
    assert stored[b"before"] == first and stored[b"after"] == after
    assert spool.broken is None


async def test_stop_answers_appends_in_flight_and_ends_the_writer(tmp_path: Path) -> None:
    """stop() lets queued appends commit (each answered with its id), then the writer
    exits; appends after stop are refused."""
    spool = SpoolProcess(tmp_path / "spool", BIG)
    await spool.start()
    pid = spool.pid
    pending = [asyncio.ensure_future(spool.append(raw(f"{i}".encode()))) for i in range(20)]
    await asyncio.sleep(0)
    await spool.stop()
    ids = [await p for p in pending]
    assert len(set(ids)) == 20
    assert len(await asyncio.to_thread(rows, spool.path)) == 20
    assert pid is not None and not await asyncio.to_thread(os.path.exists, f"/proc/{pid}")
    with pytest.raises(SpoolUnavailable):
        await spool.append(raw())


async def test_writer_ignores_sigterm_until_the_main_process_lets_go(spool: SpoolProcess
                                                                      ) -> None:  # fmt: skip
    """A SIGTERM sent to every process (a service manager stopping relay) does not stop
    the writer while the main process still needs it."""
    assert spool.pid is not None
    os.kill(spool.pid, signal.SIGTERM)
    await asyncio.sleep(0.2)
    assert await spool.append(raw(b"still written")) > 0


async def test_start_fails_clearly_when_the_spool_cannot_be_opened(tmp_path: Path) -> None:
    """A spool directory that cannot be created makes start() raise, naming the problem."""
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    spool = SpoolProcess(blocker / "spool", BIG)
    with pytest.raises(SpoolUnavailable, match="could not open the spool"):
        await spool.start()


async def test_stop_does_not_wait_for_a_writer_that_died(tmp_path: Path) -> None:
    """If the writer dies while relay stops, the appends waiting fail at once and stop()
    returns promptly instead of waiting out its grace period."""
    spool = SpoolProcess(tmp_path / "spool", BIG)
    await spool.start()
    pid = spool.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # the writer takes the request but never answers
    waiting = asyncio.ensure_future(spool.append(raw(b"never answered")))
    await asyncio.sleep(0.05)
    stopping = asyncio.ensure_future(spool.stop())
    await asyncio.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    await asyncio.wait_for(stopping, 10)
    with pytest.raises(SpoolUnavailable):
        await waiting


async def test_writer_logs_in_relays_format(tmp_path: Path,
                                            capfd: pytest.CaptureFixture[str]) -> None:
    """The writer process logs as relay is configured to (here JSON): moving a format-1
    spool's seen ids shows as one JSON line."""
    directory = tmp_path / "spool"
    directory.mkdir()
    conn = sqlite3.connect(directory / "spool.db")
    conn.executescript("""CREATE TABLE seen (event_id TEXT PRIMARY KEY, raw_id INTEGER NOT NULL,
                                             seen_at REAL NOT NULL) WITHOUT ROWID;
                          INSERT INTO seen VALUES ('e1', 1, 5.0);""")
    conn.commit()
    conn.close()
    s = SpoolProcess(directory, BIG, logging=("info", "json"))
    await s.start()
    try:
        assert s.seen_ids(["e1"], since=0.0) == {"e1"}
    finally:
        await s.stop()
    lines = [json.loads(line) for line in capfd.readouterr().err.splitlines()
             if "seen_ids_moved" in line]
    assert [(d["event"], d["count"], d["level"]) for d in lines] == [("seen_ids_moved", 1, "info")]
