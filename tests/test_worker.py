"""The publisher process: started, woken, watched, restarted, and gone with its parent."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import signal
import time
from pathlib import Path

import httpx
import pytest
from harness import (
    RelayProcess,
    basic,
    consume,
    free_port,
    make_settings,
    relay_server,
    unique_prefix,
)
from test_e2e import ENV, _write_config, dlr

from relay.errors import SpoolUnavailable
from relay.pipes import Outbox
from relay.service import Service
from relay.spool import DEAD, PUBLISHED, Outcome, Spool
from relay.worker import BurstGate, ForwardingReporter, RemoteStore, lower_priority

AUTH = basic("relay", "s3cret-for-tests")
BW = {"name": "bw", "provider": "bandwidth",
      "basic_auth": {"username": "relay", "password": "env:BW_PASS"}}


async def test_outbox_sends_one_message_per_loop_iteration() -> None:
    """Reports and a completion queued in one event-loop iteration reach the parent as one
    pipe message, in order."""
    read, write = multiprocessing.Pipe(duplex=False)
    errors: list[str] = []
    outbox = Outbox(write, errors.append)
    reporter = ForwardingReporter(outbox)
    reporter.published("t1", 2)
    reporter.duplicated("bw", 1)
    outbox.put("complete", 7, [], None)
    assert not read.poll()  # nothing sent before the loop runs the flush
    await asyncio.sleep(0)
    assert read.recv() == [("published", "t1", 2), ("duplicated", "bw", 1),
                           ("complete", 7, [], None)]
    reporter.kafka(True, None)
    await asyncio.sleep(0)
    assert read.recv() == [("kafka", True, None)] and not read.poll() and errors == []


async def test_completion_fails_when_the_parent_is_gone(tmp_path: Path) -> None:
    """A completion that cannot be sent fails with SpoolUnavailable instead of waiting."""
    spool = Spool(tmp_path / "spool", 1 << 20).open()
    requests_read, requests = multiprocessing.Pipe(duplex=False)
    replies, replies_write = multiprocessing.Pipe(duplex=False)
    store = RemoteStore(spool, requests, replies)
    requests_read.close()  # the parent's end: writes now fail
    try:
        with pytest.raises(SpoolUnavailable, match="parent unreachable"):
            await asyncio.wait_for(store.complete([Outcome(1, PUBLISHED)]), 5)
    finally:
        spool.close()
        for conn in (requests, replies, replies_write):
            conn.close()


async def test_completion_records_seen_ids_here_and_sends_marks(tmp_path: Path) -> None:
    """The child adds event ids to seen.db itself and sends the parent only (raw id, state,
    error) marks; the completion returns once the parent answers."""
    with Spool(tmp_path / "spool", 1 << 20):  # creates the database
        pass
    spool = Spool(tmp_path / "spool", 1 << 20).open_reader()
    requests_read, requests = multiprocessing.Pipe(duplex=False)
    replies_read, replies = multiprocessing.Pipe(duplex=False)
    store = RemoteStore(spool, requests, replies_read)
    try:
        task = asyncio.create_task(store.complete(
            [Outcome(5, PUBLISHED, ("e1", "e2")), Outcome(6, DEAD, (), "bad")], 70.0))
        await asyncio.sleep(0.05)
        assert requests_read.recv() == [
            ("complete", 1, ((5, PUBLISHED, None), (6, DEAD, "bad")), 70.0)]
        assert spool.seen_ids(["e1", "e2", "e3"], 60.0) == {"e1", "e2"}
        assert not task.done()
        asyncio.get_running_loop().add_reader(replies_read.fileno(), store.on_reply)
        replies.send(("ok", 1, None))
        await asyncio.wait_for(task, 5)
    finally:
        asyncio.get_running_loop().remove_reader(replies_read.fileno())
        spool.close()
        for conn in (requests, requests_read, replies, replies_read):
            conn.close()


def _priority_in_child(idle: bool, nice: int) -> tuple[str, int, int]:
    """Run :func:`lower_priority` in a new process: (its answer, policy, niceness)."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(_lowered, (idle, nice))


def _lowered(idle: bool, nice: int) -> tuple[str, int, int]:
    got = lower_priority(idle, nice)
    return got, os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, 0)


def test_lower_priority_takes_sched_idle() -> None:
    """With idle on, the process runs under SCHED_IDLE and its niceness is left alone."""
    got, policy, niceness = _priority_in_child(True, 10)
    assert (got, policy) == ("idle", os.SCHED_IDLE)
    assert niceness == os.getpriority(os.PRIO_PROCESS, 0)


def test_lower_priority_falls_back_to_nice() -> None:
    """With idle off, the process stays under the normal policy, ``nice`` steps lower."""
    got, policy, niceness = _priority_in_child(False, 7)
    assert (got, policy) == ("nice 7", os.SCHED_OTHER)
    assert niceness == min(19, os.getpriority(os.PRIO_PROCESS, 0) + 7)


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (Linux /proc)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found.extend(int(p) for p in text)
    return found


def alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.kafka
async def test_publisher_runs_in_its_own_process_and_reports_metrics(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    """Publishing happens in a lower-priority child process; its counts show in the parent's /metrics."""
    settings = make_settings(tmp_path, kafka=kafka_bootstrap, sources=[BW],
                             environ={"BW_PASS": "s3cret-for-tests"})
    service = Service(settings)
    prefix = settings.kafka.topic_prefix
    async with relay_server(settings, service) as url, httpx.AsyncClient(base_url=url) as client:
        assert service.worker is not None and service.worker.pid not in (None, os.getpid())
        await client.post("/hooks/bw", content=json.dumps([dlr(1), dlr(2)]), headers=AUTH)
        await consume(kafka_bootstrap, f"{prefix}delivery-receipts.v1", 2)
        for _ in range(50):
            text = (await client.get("/metrics")).text
            if f'relay_events_published_total{{topic="{prefix}delivery-receipts.v1"}} 2.0' in text:
                break
            await asyncio.sleep(0.1)
        assert f'relay_events_published_total{{topic="{prefix}delivery-receipts.v1"}} 2.0' in text
        assert (await client.get("/readyz")).json()["kafka"] == "connected"
        assert service.worker.pid is not None
        assert os.sched_getscheduler(service.worker.pid) == os.SCHED_IDLE


@pytest.mark.kafka
async def test_dead_publisher_is_restarted_and_nothing_is_lost(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    """Killing the publisher process loses nothing: a new one publishes what arrives next."""
    settings = make_settings(tmp_path, kafka=kafka_bootstrap, sources=[BW],
                             environ={"BW_PASS": "s3cret-for-tests"})
    service = Service(settings)
    prefix = settings.kafka.topic_prefix
    async with relay_server(settings, service) as url, httpx.AsyncClient(base_url=url) as client:
        assert service.worker is not None
        first = service.worker.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        for n in range(20):
            resp = await client.post("/hooks/bw", content=json.dumps([dlr(n)]), headers=AUTH)
            assert resp.status_code == 200
        records = await consume(kafka_bootstrap, f"{prefix}delivery-receipts.v1", 20,
                                timeout=60, settle=1.0)
        assert service.worker.pid != first
    assert sorted(r.key for r in records) == sorted(f"msg-{n}".encode() for n in range(20))


@pytest.mark.kafka
def test_publisher_exits_when_relay_is_killed(kafka_bootstrap: str, tmp_path: Path) -> None:
    """After kill -9 of relay, its publisher and spool writer processes notice and exit by
    themselves."""
    proc = RelayProcess(_write_config(tmp_path, kafka_bootstrap, unique_prefix()), free_port(),
                        ENV)
    proc.start()
    assert proc.proc is not None
    kids = children(proc.proc.pid)
    spawned = [k for k in kids if b"spawn_main" in Path(f"/proc/{k}/cmdline").read_bytes()]
    assert len(spawned) == 2, "relay serve with Kafka runs a spool writer and a publisher"
    proc.kill()
    deadline = time.monotonic() + 15
    while any(alive(k) for k in kids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(k) for k in kids)


@pytest.mark.kafka
async def test_lingering_publisher_exits_when_relay_is_killed(kafka_bootstrap: str,
                                                              tmp_path: Path) -> None:
    """A publisher that is not watching its wake pipe (lingering after a batch) still
    notices relay's kill -9, by its replies pipe, and exits within seconds."""
    prefix = unique_prefix()
    config = _write_config(tmp_path, kafka_bootstrap, prefix)
    config.write_text(config.read_text().replace("partitions = 2\n",
                                                 "partitions = 2\nbatch_linger_ms = 600000\n"))
    proc = RelayProcess(config, free_port(), ENV)
    proc.start()
    assert proc.proc is not None
    kids = children(proc.proc.pid)
    async with httpx.AsyncClient(base_url=proc.url) as client:
        resp = await client.post("/hooks/bw", content=json.dumps([dlr(1)]), headers=AUTH)
        assert resp.status_code == 200
    await consume(kafka_bootstrap, f"{prefix}delivery-receipts.v1", 1)  # one batch went:
    proc.kill()  # the publisher now lingers for ten minutes
    deadline = time.monotonic() + 8
    while any(alive(k) for k in kids) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert not any(alive(k) for k in kids)


class Ticks:
    """A clock and a CPU-time counter that a test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0
        self.cpu = 5.0

    def advance(self, seconds: float, cpu_share: float) -> None:
        self.now += seconds
        self.cpu += seconds * cpu_share


def _gate(threshold: float = 0.6, max_hold: float = 30.0) -> tuple[BurstGate, Ticks]:
    ticks = Ticks()
    gate = BurstGate(threshold, max_hold, linger=0.3, cpu_time=lambda: ticks.cpu,
                     clock=lambda: ticks.now)
    return gate, ticks


def test_burst_gate_hold_lasts_at_most_max_hold_until_a_quiet_sample() -> None:
    """A burst longer than max_hold is let publish; only after a quiet sample can a new
    hold begin."""
    gate, ticks = _gate(max_hold=1.0)
    gate.sample(0, 1000)
    held = []
    for _ in range(15):  # 1.5 s of a busy ack path
        ticks.advance(0.1, 0.9)
        held.append(gate.sample(0, 1000))
    released = held.index(False)  # the first sample 1 s after the hold began
    assert released in (10, 11) and all(held[:released]) and not any(held[released:])
    ticks.advance(0.1, 0.1)
    assert gate.sample(0, 1000) is False  # quiet: the burst is over
    ticks.advance(0.1, 0.9)
    assert gate.sample(0, 1000) is True  # a new burst holds again


def test_burst_gate_holds_while_the_ack_path_is_busy_and_a_little_after() -> None:
    """A busy sample holds publishing for ``linger`` s after it; quiet samples let it go."""
    gate, ticks = _gate()
    assert gate.sample(0, 1000) is False  # the first sample only sets the baseline
    ticks.advance(0.1, 0.3)
    assert gate.sample(0, 1000) is False and gate.share == pytest.approx(0.3)
    ticks.advance(0.1, 0.8)
    assert gate.sample(0, 1000) is True and gate.until == pytest.approx(ticks.now + 0.3)
    ticks.advance(0.1, 0.1)
    assert gate.sample(0, 1000) is True  # quiet, but within the linger
    ticks.advance(0.25, 0.1)
    assert gate.sample(0, 1000) is False and not gate.holding()


def test_burst_gate_never_holds_with_the_spool_half_full() -> None:
    """However busy the ack path, a spool at least half full is published at once."""
    gate, ticks = _gate()
    gate.sample(0, 1000)
    ticks.advance(0.1, 1.0)
    assert gate.sample(499, 1000) is True
    ticks.advance(0.1, 1.0)
    assert gate.sample(500, 1000) is False and gate.until == 0.0


def test_burst_gate_with_threshold_zero_never_holds() -> None:
    """publisher_pause_above = 0 turns holding off."""
    gate, ticks = _gate(0.0)
    gate.sample(0, 1000)
    ticks.advance(0.1, 1.0)
    assert gate.sample(0, 1000) is False


@pytest.mark.kafka
async def test_publisher_process_obeys_the_parents_hold(kafka_bootstrap: str,
                                                        tmp_path: Path) -> None:
    """While the parent's shared hold time lies ahead, the child process publishes nothing;
    once it has passed, the waiting postback is published."""
    settings = make_settings(tmp_path, kafka=kafka_bootstrap, sources=[BW],
                             environ={"BW_PASS": "s3cret-for-tests"},
                             server={"publisher_pause_above": 0})  # no gate: the test holds
    service = Service(settings)
    prefix = settings.kafka.topic_prefix
    async with relay_server(settings, service) as url, httpx.AsyncClient(base_url=url) as client:
        worker = service.worker
        assert worker is not None and worker._gate_task is None
        worker._hold_until.value = time.monotonic() + 1000
        response = await client.post("/hooks/bw", content=json.dumps([dlr(1)]), headers=AUTH)
        assert response.status_code == 200
        await asyncio.sleep(1.5)
        assert service.spool.stats().pending == 1
        worker._hold_until.value = 0.0
        (record,) = await consume(kafka_bootstrap, f"{prefix}delivery-receipts.v1", 1)
        assert record.key == b"msg-1"
