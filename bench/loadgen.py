"""A lean HTTP/1.1 load generator for ``bench/ack_bench.py`` (its own process).

Raw asyncio protocols on uvloop, keep-alive connections, requests built from pre-encoded
templates (fixed Content-Length, ``Authorization: Basic``), responses parsed only as far
as the status line, the headers and a Content-Length body. No httpx: a Python HTTP
client would be slower than the servers it measures.

Modes (``spec["mode"]``):

* ``closed``: ``connections`` connections each send the next request as soon as the
  previous answer arrived, for ``duration`` seconds -> requests/s and service latency;
* ``open``: ``rate`` requests/s on a timer for ``duration`` seconds, each sent on an
  idle connection (queued if all ``connections`` are busy). Latency is measured from the
  *scheduled* send time, so a stalled server is not hidden (no coordinated omission).

Run as ``python bench/loadgen.py SPEC.json OUT.json``; the result is JSON in OUT.json.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

SEQ_DIGITS = 9


def message_id(run: str, phase: str, seq: int, item: int) -> str:
    """The Bandwidth ``message.id`` of item ``item`` of postback ``seq``: also its Kafka key.

    ``bw-<run>-<phase><seq, 9 digits>-<item>``; :func:`parse_key` inverts it.
    """
    return f"bw-{run}-{phase}{seq:0{SEQ_DIGITS}d}-{item}"


def parse_key(key: bytes) -> tuple[str, str, int] | None:
    """``(run, phase, seq)`` of a delivery-receipt key built by :func:`message_id`."""
    parts = key.split(b"-")
    if len(parts) != 4 or parts[0] != b"bw" or len(parts[2]) <= SEQ_DIGITS:
        return None
    middle = parts[2]
    try:
        return parts[1].decode(), middle[:-SEQ_DIGITS].decode(), int(middle[-SEQ_DIGITS:])
    except ValueError:
        return None


# --- realistic Bandwidth Messaging v2 callbacks ----------------------------------------------

_ID = "\x00ID\x00"  # placeholder, replaced by %s in the byte template
_TAG = "\x00TAG\x00"
APP_ID = "93de2206-9669-4e07-948d-329f4b722ee2"


def _status_item(kind: str, to: str, owner: str, when: str, **extra: Any) -> dict[str, Any]:
    item: dict[str, Any] = {
        "time": when,
        "type": kind,
        "to": to,
        "description": "ok" if kind == "message-delivered" else "",
        "message": {
            "id": _ID, "owner": owner, "applicationId": APP_ID, "time": when,
            "segmentCount": 1, "direction": "out", "to": [to], "from": owner, "text": "",
            "tag": _TAG, "media": [], "priority": "default",
        },
    }  # fmt: skip
    item.update(extra)
    return item


def _templates(now: datetime) -> list[list[dict[str, Any]]]:
    t = now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"
    a, b, c, own = "+15554443333", "+15557778888", "+447700900123", "+15552221111"
    carrier = {"carrierName": "T-Mobile USA, Inc."}
    return [
        # two receipts for two messages of the same campaign
        [_status_item("message-delivered", a, own, t, **carrier),
         _status_item("message-delivered", b, own, t, **carrier)],
        # delivered + failed (carrier rejection)
        [_status_item("message-delivered", a, own, t),
         _status_item("message-failed", c, own, t, errorCode=4720,
                      description="Carrier Rejected as Invalid Destination Address")],
        # delivered + failed (unreachable handset), one with the carrier name
        [_status_item("message-failed", b, own, t, errorCode=4405,
                      description="Unknown error from Bandwidth", **carrier),
         _status_item("message-delivered", c, own, t)],
    ]  # fmt: skip


class Bodies:
    """Byte templates of Bandwidth callback bodies; :meth:`body` fills in the ids."""

    def __init__(self, run: str, phase: str) -> None:
        self.run, self.phase = run, phase
        self.templates: list[tuple[bytes, int]] = []
        for items in _templates(datetime.now(UTC)):
            raw = orjson.dumps(items).replace(b"%", b"%%")
            raw = raw.replace(_ID.encode().replace(b"\x00", b"\\u0000"), b"%s")
            raw = raw.replace(_TAG.encode().replace(b"\x00", b"\\u0000"), b"%s")
            self.templates.append((raw, len(items)))

    def body(self, seq: int) -> bytes:
        """The body of postback ``seq`` (unique message ids and tags)."""
        raw, count = self.templates[seq % len(self.templates)]
        values: list[bytes] = []
        for item in range(count):
            values.append(message_id(self.run, self.phase, seq, item).encode())
            values.append(f"campaign-7-{seq}".encode())
        return raw % tuple(values)


def request_builder(spec: dict[str, Any]) -> tuple[Callable[[int], bytes], list[int]]:
    """A function seq -> whole request bytes, and the body sizes of the templates."""
    bodies = Bodies(spec["run"], spec["phase"])
    token = base64.b64encode(f"{spec['user']}:{spec['password']}".encode()).decode()
    head = (
        f"POST {spec['path']} HTTP/1.1\r\nHost: {spec['host']}:{spec['port']}\r\n"
        "User-Agent: BandwidthAPI/v2\r\nContent-Type: application/json; charset=utf-8\r\n"
        f"Accept: */*\r\nAuthorization: Basic {token}\r\nContent-Length: "
    ).encode()
    sizes = [len(bodies.body(i)) for i in range(len(bodies.templates))]

    def build(seq: int) -> bytes:
        body = bodies.body(seq)
        return b"%s%d\r\n\r\n%s" % (head, len(body), body)

    return build, sizes


# --- the client ------------------------------------------------------------------------------


class Conn(asyncio.Protocol):
    """One keep-alive connection with at most one request in flight."""

    def __init__(self, gen: Generator) -> None:
        self.gen = gen
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.need = -1
        self.status = 0
        self.seq = -1
        self.t_ref = 0.0
        self.closed = False
        self.busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, seq: int, t_ref: float, data: bytes) -> None:
        self.seq, self.t_ref, self.busy = seq, t_ref, True
        assert self.transport is not None
        self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while True:
            if self.need < 0:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(buf[:end]).lower()
                self.status = int(head[9:12])
                at = head.find(b"\r\ncontent-length:")
                if at < 0:
                    self.need = 0
                else:
                    stop = head.find(b"\r\n", at + 17)
                    self.need = int(head[at + 17 : stop if stop > 0 else len(head)])
                del buf[: end + 4]
            if len(buf) < self.need:
                return
            del buf[: self.need]
            self.need = -1
            self.busy = False
            self.gen.done(self, self.status)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.gen.lost(self)


class Generator:
    """Drives one phase (closed or open loop) and collects the figures."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.build, self.sizes = request_builder(spec)
        self.seq0 = int(spec.get("seq_start", 0))
        self.next_seq = self.seq0
        self.conns: list[Conn] = []
        self.idle: list[Conn] = []
        self.backlog: collections.deque[tuple[int, float]] = collections.deque()
        self.latencies: list[float] = []
        self.send_lag: list[float] = []
        self.acks: list[tuple[int, float]] = []
        self.record_acks = bool(spec.get("record_acks", False))
        self.statuses: collections.Counter[int] = collections.Counter()
        self.ok = 0
        self.lost_in_flight = 0
        self.deadline = float("inf")
        self.stopping = False
        self.expected = -1
        self.finished = asyncio.Event()
        self.in_flight = 0
        self.queued = 0  # open loop: scheduled while every connection was busy

    async def connect(self, count: int) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(count):
            _, conn = await loop.create_connection(
                lambda: Conn(self), self.spec["host"], self.spec["port"])  # fmt: skip
            self.conns.append(conn)

    def _issue(self, conn: Conn, seq: int, t_ref: float) -> None:
        self.in_flight += 1
        conn.send(seq, t_ref, self.build(seq))

    def done(self, conn: Conn, status: int) -> None:
        now = time.perf_counter()
        self.in_flight -= 1
        if now <= self.deadline:
            self.statuses[status] += 1
            if 200 <= status < 300:
                self.ok += 1
                self.latencies.append(now - conn.t_ref)
                if self.record_acks:
                    self.acks.append((conn.seq, time.time()))
        if self.spec["mode"] == "closed":
            if now < self.deadline and not self.stopping:
                seq = self.next_seq
                self.next_seq += 1
                self._issue(conn, seq, time.perf_counter())
            elif self.in_flight == 0:
                self.finished.set()
            return
        if self.backlog:
            seq, sched = self.backlog.popleft()
            self._issue(conn, seq, sched)
        else:
            self.idle.append(conn)
        if sum(self.statuses.values()) >= self.expected and self.in_flight == 0:
            self.finished.set()

    def lost(self, conn: Conn) -> None:
        if conn.busy:
            conn.busy = False
            self.lost_in_flight += 1
            self.in_flight -= 1
        with contextlib.suppress(ValueError):
            self.idle.remove(conn)

    async def run_closed(self, duration: float) -> float:
        start = time.perf_counter()
        self.deadline = start + duration
        for conn in self.conns:
            seq = self.next_seq
            self.next_seq += 1
            self._issue(conn, seq, time.perf_counter())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.finished.wait(), duration + 15)
        return duration

    async def run_open(self, rate: float, duration: float) -> float:
        total = int(rate * duration)
        self.expected = total
        self.idle = list(self.conns)
        start = time.perf_counter()
        self.deadline = float("inf")
        sent = 0
        while sent < total:
            due = min(total, int((time.perf_counter() - start) * rate) + 1)
            while sent < due:
                sched = start + sent / rate
                seq = self.seq0 + sent
                if self.idle:
                    conn = self.idle.pop()
                    self.send_lag.append(time.perf_counter() - sched)
                    self._issue(conn, seq, sched)
                else:
                    self.backlog.append((seq, sched))
                    self.queued += 1
                sent += 1
            delay = start + sent / rate - time.perf_counter()
            await asyncio.sleep(max(0.0, delay))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.finished.wait(), 30)
        return time.perf_counter() - start


async def main_async(spec: dict[str, Any]) -> dict[str, Any]:
    gen = Generator(spec)
    await gen.connect(int(spec["connections"]))
    start_at = float(spec.get("start_at", 0))
    if start_at > time.time():
        await asyncio.sleep(start_at - time.time())
    cpu0 = time.process_time()
    wall0 = time.perf_counter()
    if spec["mode"] == "closed":
        elapsed = await gen.run_closed(float(spec["duration"]))
    else:
        elapsed = await gen.run_open(float(spec["rate"]), float(spec["duration"]))
    wall = time.perf_counter() - wall0
    cpu = time.process_time() - cpu0
    for conn in gen.conns:
        if conn.transport is not None:
            conn.transport.close()
    return {
        "mode": spec["mode"],
        "phase": spec["phase"],
        "connections": len(gen.conns),
        "ok": gen.ok,
        "statuses": {str(k): v for k, v in gen.statuses.items()},
        "errors": sum(v for k, v in gen.statuses.items() if not 200 <= k < 300),
        "lost_in_flight": gen.lost_in_flight,
        "elapsed": elapsed,
        "cpu_seconds": cpu,
        "cpu_share": cpu / wall if wall > 0 else 0.0,
        "body_sizes": gen.sizes,
        "latencies": gen.latencies,
        "send_lag": gen.send_lag,
        "queued": gen.queued,
        "acks": gen.acks,
        "unanswered": (gen.expected - sum(gen.statuses.values())) if gen.expected >= 0 else 0,
    }


def main(argv: list[str]) -> int:
    spec = orjson.loads(Path(argv[1]).read_bytes())
    try:
        import uvloop

        result = uvloop.run(main_async(spec))
    except ImportError:  # pragma: no cover - uvloop is a relay dependency
        result = asyncio.run(main_async(spec))
    Path(argv[2]).write_bytes(orjson.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
