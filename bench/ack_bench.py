"""Ack-path benchmark: relay against a bare Starlette endpoint, same machine, same flags.

    .venv/bin/python bench/ack_bench.py            # full run (~2.5 min)
    .venv/bin/python bench/ack_bench.py --quick    # ~45 s
    .venv/bin/python bench/ack_bench.py --kafka 127.0.0.1:9092 --profile var/bench-prof

Starts, as separate processes: a Kafka broker (``tests/kafka_broker.KafkaBroker``, unless
``--kafka``), ``relay serve`` with a generated config (spool in a temp dir, a fresh topic
prefix, one Bandwidth source with HTTP Basic), and ``bench/bare_app.py`` under uvicorn with
the flags relay uses (uvloop, httptools, access log off, one worker). The load comes from
``bench/loadgen.py`` processes (raw asyncio HTTP/1.1, keep-alive).

Phases, for each server:

1. closed loop, ``--connections`` connections, ``--duration`` s -> acknowledged postbacks/s
   (relay: then wait until its spool backlog is published, so the next phase is clean);
2. open loop at ``--rate`` postbacks/s for ``--rate-duration`` s -> ack latency measured
   from the scheduled send time (no coordinated omission).

The bench creates relay's topics before relay starts, with
``message.timestamp.type=LogAppendTime``: a record's timestamp is when the broker appended
it. A Kafka consumer (this process), assigned and positioned at the end of
``<prefix>delivery-receipts.v1`` before relay's open-loop phase, reads that phase's records
after it (``--live-consumer``: during it); ack-to-Kafka is a postback's last receipt's
append time minus the wall-clock time the load generator got the 200 (both this machine's
clock).

Prints a table and, last, one JSON line with every figure. Exit code 0 unless the run
itself failed (a server did not start...); missed aims are reported, not failures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import os
import secrets
import signal
import socket
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(1, str(REPO / "tests"))

from loadgen import parse_key  # noqa: E402

PASSWORD = secrets.token_urlsafe(18)
USER = "relay"
SOURCE = "bw"
ITEMS_PER_POSTBACK = 2  # every body template in loadgen.py is a 2-item callback array
CLK_TCK = os.sysconf("SC_CLK_TCK")

AIM_THROUGHPUT_RATIO = 0.8
AIM_P99_ACK_MS = 5.0
AIM_P99_KAFKA_MS = 50.0


# --- small helpers ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pct(values: list[float], q: float) -> float | None:
    """The ``q`` percentile (nearest rank) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, int(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def ms_summary(seconds: list[float]) -> dict[str, float | None]:
    """p50/p90/p99/p99.9/max in milliseconds."""
    out: dict[str, float | None] = {}
    for name, q in (("p50", 50), ("p90", 90), ("p99", 99), ("p999", 99.9)):
        v = pct(seconds, q)
        out[name] = None if v is None else round(v * 1000, 3)
    out["max"] = round(max(seconds) * 1000, 3) if seconds else None
    out["mean"] = round(statistics.fmean(seconds) * 1000, 3) if seconds else None
    return out


def cpu_seconds(pid: int | None) -> float:
    """utime + stime of a process (all its threads), from /proc."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def children_cpu(pid: int | None) -> float:
    """CPU seconds of a process's live descendants (relay: its spool writer and publisher processes)."""
    if pid is None:
        return 0.0
    total = 0.0
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                for child in (task / "children").read_text().split():
                    total += cpu_seconds(int(child)) + children_cpu(int(child))
    return total


def machine_busy() -> float:
    """CPU seconds all cores spent not idle since boot (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / CLK_TCK


async def wait_quiet(limit: float, threshold: float = 0.25) -> float:
    """Wait (at most ``limit`` s) for a second in which other processes use < ``threshold``
    cores; returns the load of the last second measured. Nothing of ours runs meanwhile
    but idle servers, so the machine's busy time is other people's work."""
    load = 0.0
    deadline = time.monotonic() + limit
    while True:
        b0, t0 = machine_busy(), time.monotonic()
        await asyncio.sleep(1.0)
        load = (machine_busy() - b0) / (time.monotonic() - t0)
        if load < threshold or time.monotonic() >= deadline:
            return load


def thread_cpu(pid: int | None) -> dict[str, float]:
    """CPU seconds of the main thread and of all other threads together."""
    out = {"main": 0.0, "other": 0.0}
    if pid is None:
        return out
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            secs = (int(fields[11]) + int(fields[12])) / CLK_TCK
            out["main" if task.name == str(pid) else "other"] += secs
    return out


async def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """A one-off GET over a fresh connection (status, body)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
                     .encode())  # fmt: skip
        data = await asyncio.wait_for(reader.read(-1), timeout)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head[9:12]), body


def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0], "sqlite": sqlite3.sqlite_version}
    for dist in ("relay", "uvicorn", "starlette", "uvloop", "httptools", "aiokafka", "orjson"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "-"
    return out


def machine() -> dict[str, Any]:
    model = "-"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "loadavg_at_start": os.getloadavg()[0],
    }


# --- processes -------------------------------------------------------------------------------


class Server:
    """A server child process (relay or the bare app) and its log."""

    def __init__(self, name: str, argv: list[str], port: int, log: Path,
                 env: dict[str, str]) -> None:  # fmt: skip
        self.name, self.argv, self.port, self.log, self.env = name, argv, port, log, env
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    async def start(self, ready_path: str, timeout: float = 60.0) -> None:
        with self.log.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv, stdout=out, stderr=out, env=self.env, cwd=REPO)  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.returncode is not None:
                raise RuntimeError(f"{self.name} exited: {self.tail()}")
            with contextlib.suppress(OSError, TimeoutError, ValueError):
                status, body = await http_get(self.port, ready_path)
                if status == 200 and b"unreachable" not in body:
                    return
            await asyncio.sleep(0.1)
        raise TimeoutError(f"{self.name} did not get ready: {self.tail()}")

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(sig)

    async def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), timeout)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        return self.proc.returncode

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return "<no log>"


def relay_config(path: Path, spool: Path, bootstrap: str, prefix: str,
                 args: argparse.Namespace) -> None:  # fmt: skip
    extra = f"linger_ms = {args.linger_ms}\n" if args.linger_ms is not None else ""
    if args.batch_linger_ms is not None:
        extra += f"batch_linger_ms = {args.batch_linger_ms}\n"
    kafka = f"""[kafka]
bootstrap_servers = ["{bootstrap}"]
topic_prefix = "{prefix}"
create_topics = true
partitions = {args.partitions}
replication_factor = 1
compression = "{args.compression}"
{extra}"""
    if args.ack_only:
        kafka = "# --ack-only: no [kafka], postbacks stay in the spool\n"
    pause = "publisher_pause_above = 0  # --no-pause\n" if args.no_pause else ""
    path.write_text(f"""# generated by bench/ack_bench.py
[server]
host = "127.0.0.1"
port = 0
{pause}
[spool]
dir = "{spool}"

{kafka}
[log]
level = "warning"
format = "json"

[[sources]]
name = "{SOURCE}"
provider = "bandwidth"
basic_auth = {{ username = "{USER}", password = "env:BENCH_BW_PASSWORD" }}
default_region = "US"
""")


def fill_seen(spool: Path, count: int) -> None:
    """Put ``count`` random event ids, an hour old (inside the dedup window), into the
    dedup record relay will open (``<spool>/seen.db``), as ``bench/seen_bench.py`` fills it."""
    from seen_bench import fill

    from relay.seen import SeenStore

    store = SeenStore(spool / "seen.db").open()
    try:
        fill(store, 0, count, time.time() - 3600)
    finally:
        store.close()


# --- load generator --------------------------------------------------------------------------


async def loadgen(work: Path, port: int, *, mode: str, phase: str, run: str,
                  connections: int, duration: float, rate: float = 0.0, procs: int = 1,
                  record_acks: bool = False, watch: tuple[int | None, int | None] = (None, None),
                  ) -> dict[str, Any]:  # fmt: skip
    """Run ``procs`` load generator processes for one phase; merged results.

    ``watch`` is (server pid, Kafka broker pid): their CPU time is sampled when the load
    starts (all generators start at the same instant) and when the generators exit.
    """
    start_at = time.time() + 0.6 + 0.2 * procs
    children = []
    for k in range(procs):
        spec = {
            "host": "127.0.0.1", "port": port, "path": f"/hooks/{SOURCE}", "user": USER,
            "password": PASSWORD, "run": run, "phase": phase, "mode": mode,
            "connections": max(1, connections // procs + (k < connections % procs)),
            "duration": duration, "rate": rate / procs, "seq_start": k * 10**8,
            "record_acks": record_acks, "start_at": start_at,
        }  # fmt: skip
        spec_path = work / f"lg-{phase}-{k}.json"
        out_path = work / f"lg-{phase}-{k}.out.json"
        spec_path.write_bytes(orjson.dumps(spec))
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(BENCH / "loadgen.py"), str(spec_path), str(out_path), cwd=REPO)
        children.append((proc, out_path))
    await asyncio.sleep(max(0.0, start_at - time.time()))
    server_pid, kafka_pid = watch
    cpu0, th0, k0 = cpu_seconds(server_pid), thread_cpu(server_pid), cpu_seconds(kafka_pid)
    kids0 = children_cpu(server_pid)
    busy0, own0 = machine_busy(), time.process_time()
    t0 = time.monotonic()
    parts = []
    for proc, out_path in children:
        code = await asyncio.wait_for(proc.wait(), duration + 90)
        if code != 0:
            raise RuntimeError(f"load generator exited {code}")
        parts.append(orjson.loads(out_path.read_bytes()))
    window = time.monotonic() - t0
    cpu, th1, k1 = cpu_seconds(server_pid) - cpu0, thread_cpu(server_pid), cpu_seconds(kafka_pid)
    kids = children_cpu(server_pid) - kids0
    ours = (cpu + kids + (k1 - k0) + sum(p["cpu_seconds"] for p in parts)
            + time.process_time() - own0)  # fmt: skip
    foreign = max(0.0, (machine_busy() - busy0 - ours) / window)
    merged: dict[str, Any] = {
        "ok": sum(p["ok"] for p in parts),
        "errors": sum(p["errors"] for p in parts),
        "lost_in_flight": sum(p["lost_in_flight"] for p in parts),
        "unanswered": sum(p["unanswered"] for p in parts),
        "statuses": {},
        "elapsed": max(p["elapsed"] for p in parts),
        "rate": sum(p["ok"] / p["elapsed"] for p in parts if p["elapsed"] > 0),
        "latencies": [x for p in parts for x in p["latencies"]],
        "send_lag": [x for p in parts for x in p["send_lag"]],
        "queued": sum(p["queued"] for p in parts),
        "acks": [tuple(a) for p in parts for a in p["acks"]],
        "loadgen_cpu_share": [round(p["cpu_share"], 3) for p in parts],
        "body_sizes": parts[0]["body_sizes"],
        "connections": sum(p["connections"] for p in parts),
        "window": window,
        "server_cpu": cpu,
        "server_main_cpu": th1["main"] - th0["main"],
        "server_other_cpu": th1["other"] - th0["other"],
        "kafka_cpu": (k1 - k0) if kafka_pid else None,
        "children_cpu": kids,
        "foreign_cpu_cores": round(foreign, 2),
    }
    for p in parts:
        for code, n in p["statuses"].items():
            merged["statuses"][code] = merged["statuses"].get(code, 0) + n
    return merged


# --- Kafka consumer --------------------------------------------------------------------------


class ReceiptWatcher:
    """Consumes delivery receipts and stamps when each postback's records arrived."""

    def __init__(self, bootstrap: str, topic: str, run: str, phase: str) -> None:
        self.bootstrap, self.topic, self.run, self.phase = bootstrap, topic, run, phase
        self.consumer: Any = None
        self.task: asyncio.Task[None] | None = None
        # seq -> [records seen, last receive wall time, last record timestamp (s)]
        self.seen: dict[int, list[float]] = {}
        self.records = 0
        self.foreign = 0
        self.timestamp_types: set[int] = set()  # 1: LogAppendTime, 0: CreateTime

    async def start(self, timeout: float = 30.0) -> None:
        """Connect, assign every partition and resolve the end offsets now: records
        published from here on are the phase's. Consuming starts with :meth:`consume`."""
        from aiokafka import AIOKafkaConsumer, TopicPartition

        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False,
            auto_offset_reset="latest", fetch_max_wait_ms=100, fetch_min_bytes=1,
        )  # fmt: skip
        await consumer.start()
        self.consumer = consumer
        deadline = time.monotonic() + timeout
        while not (parts := consumer.partitions_for_topic(self.topic)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"topic {self.topic} did not appear")
            await consumer._client.force_metadata_update()
            await asyncio.sleep(0.2)
        tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        for tp in tps:  # resolve the positions now, before the phase starts
            await consumer.position(tp)

    def consume(self) -> None:
        """Start reading records (during the phase with ``--live-consumer``, else after it:
        a consumer polling during the phase takes CPU from the servers it measures)."""
        if self.task is None:
            self.task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        run, phase = self.run, self.phase
        while True:
            batch = await self.consumer.getmany(timeout_ms=200, max_records=2000)
            now = time.time()
            for records in batch.values():
                for rec in records:
                    self.records += 1
                    parsed = parse_key(rec.key or b"")
                    if parsed is None or parsed[0] != run or parsed[1] != phase:
                        self.foreign += 1
                        continue
                    entry = self.seen.setdefault(parsed[2], [0, 0.0, 0.0])
                    entry[0] += 1
                    entry[1] = max(entry[1], now)
                    entry[2] = max(entry[2], rec.timestamp / 1000)
                    self.timestamp_types.add(rec.timestamp_type)

    async def wait_for(self, expected: dict[int, int], timeout: float) -> float:
        """Wait until every seq in ``expected`` has its record count; returns seconds."""
        began = time.monotonic()
        while time.monotonic() - began < timeout:
            if all(self.seen.get(s, (0,))[0] >= n for s, n in expected.items()):
                break
            await asyncio.sleep(0.1)
        return time.monotonic() - began

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        if self.consumer is not None:
            await self.consumer.stop()


# --- phases ----------------------------------------------------------------------------------


async def quiet(args: argparse.Namespace) -> None:
    if args.quiet_wait > 0:
        load = await wait_quiet(args.quiet_wait)
        if load >= 0.25:
            say(f"  machine still busy ({load:.2f} cores used by other processes), going on")


async def throughput_phase(server: Server, work: Path, args: argparse.Namespace, run: str,
                           phase: str, kafka_pid: int | None) -> dict[str, Any]:  # fmt: skip
    res = await loadgen(work, server.port, mode="closed", phase=phase, run=run,
                        connections=args.connections, duration=args.duration,
                        procs=args.loadgen_procs, watch=(server.pid, kafka_pid))  # fmt: skip
    wall, cpu = res["window"], res["server_cpu"]
    served = res["ok"] + res["errors"]
    return {
        "postbacks_per_s": round(res["rate"], 1),
        "ok": res["ok"], "errors": res["errors"], "statuses": res["statuses"],
        "lost_in_flight": res["lost_in_flight"], "connections": res["connections"],
        "duration_s": args.duration,
        "service_latency_ms": ms_summary(res["latencies"]),
        "server_cpu_cores": round(cpu / wall, 2),
        "server_cpu_us_per_postback": round(cpu / served * 1e6, 1) if served else None,
        "server_main_thread_cpu_cores": round(res["server_main_cpu"] / wall, 2),
        "server_other_threads_cpu_cores": round(res["server_other_cpu"] / wall, 2),
        "kafka_broker_cpu_cores": round(res["kafka_cpu"] / wall, 2) if kafka_pid else None,
        "child_processes_cpu_cores": round(res["children_cpu"] / wall, 2),
        "loadgen_cpu_share": res["loadgen_cpu_share"],
        "other_processes_cpu_cores": res["foreign_cpu_cores"],
    }  # fmt: skip


async def rate_phase(server: Server, work: Path, args: argparse.Namespace, run: str,
                     phase: str, kafka_pid: int | None, record_acks: bool = False,
                     ) -> tuple[dict[str, Any], dict[str, Any]]:  # fmt: skip
    res = await loadgen(work, server.port, mode="open", phase=phase, run=run,
                        connections=args.rate_connections, duration=args.rate_duration,
                        rate=args.rate, procs=1, record_acks=record_acks,
                        watch=(server.pid, kafka_pid))  # fmt: skip
    wall, cpu = res["window"], res["server_cpu"]
    out = {
        "target_rate": args.rate, "achieved_rate": round(res["ok"] / res["elapsed"], 1),
        "ok": res["ok"], "errors": res["errors"], "unanswered": res["unanswered"],
        "statuses": res["statuses"], "duration_s": args.rate_duration,
        "ack_latency_ms": ms_summary(res["latencies"]),
        "generator_lag_p99_ms": round((pct(res["send_lag"], 99) or 0) * 1000, 3),
        "queued_all_connections_busy": res["queued"],
        "server_cpu_cores": round(cpu / wall, 2),
        "server_main_thread_cpu_cores": round(res["server_main_cpu"] / wall, 2),
        "server_cpu_us_per_postback": round(cpu / res["ok"] * 1e6, 1) if res["ok"] else None,
        "kafka_broker_cpu_cores": round(res["kafka_cpu"] / wall, 2) if kafka_pid else None,
        "child_processes_cpu_cores": round(res["children_cpu"] / wall, 2),
        "loadgen_cpu_share": res["loadgen_cpu_share"],
        "other_processes_cpu_cores": res["foreign_cpu_cores"],
    }  # fmt: skip
    return out, res


async def wait_drained(port: int, timeout: float) -> tuple[float, int]:
    """Wait until relay's spool has no pending rows; (seconds, pending at start)."""
    began = time.monotonic()
    first = -1
    while time.monotonic() - began < timeout:
        with contextlib.suppress(OSError, TimeoutError, ValueError):
            _, body = await http_get(port, "/readyz")
            pending = int(orjson.loads(body)["pending"])
            if first < 0:
                first = pending
            if pending == 0:
                break
        await asyncio.sleep(0.2)
    return time.monotonic() - began, first


async def relay_readiness(port: int) -> dict[str, Any]:
    with contextlib.suppress(OSError, TimeoutError, ValueError):
        _, body = await http_get(port, "/readyz")
        data: dict[str, Any] = orjson.loads(body)
        return data
    return {}


# --- the run ---------------------------------------------------------------------------------


async def create_topics(bootstrap: str, prefix: str, partitions: int) -> None:
    """relay's topics under ``prefix``, made before relay starts (it finds them), with
    ``message.timestamp.type=LogAppendTime``: a record's timestamp is then the moment the
    broker appended it, which is what "ack to in Kafka" measures."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    from relay.publish import TOPIC_NAMES

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([
            NewTopic(prefix + name, partitions, 1,
                     topic_configs={"message.timestamp.type": "LogAppendTime"})
            for name in TOPIC_NAMES.values()])  # fmt: skip
    finally:
        await admin.close()


async def bench(args: argparse.Namespace, work: Path, bootstrap: str,
                kafka_pid: int | None) -> dict[str, Any]:  # fmt: skip
    run = secrets.token_hex(3)
    prefix = f"bench{run}."
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env["BENCH_BW_PASSWORD"] = PASSWORD
    config = work / "relay.toml"
    relay_config(config, work / "spool", bootstrap, prefix, args)
    if args.seen_ids:
        say(f"filling relay's dedup record with {args.seen_ids:,} ids")
        await asyncio.to_thread(fill_seen, work / "spool", args.seen_ids)
    relay_port, bare_port = free_port(), free_port()
    relay_argv = [sys.executable, "-m", "relay.cli", "serve", "--config", str(config),
                  "--port", str(relay_port)]  # fmt: skip
    if args.profile or args.switch_interval:
        knobs = ["--profile", str(args.profile / "relay.prof")] if args.profile else []
        if args.switch_interval:
            knobs += ["--switch-interval", str(args.switch_interval)]
        relay_argv = [sys.executable, str(BENCH / "relay_wrapper.py"), *knobs, "--",
                      *relay_argv[3:]]  # fmt: skip
    relay = Server("relay", relay_argv, relay_port, work / "relay.log", env)
    bare = Server("bare", [
        sys.executable, "-m", "uvicorn", "bare_app:app", "--app-dir", str(BENCH),
        "--host", "127.0.0.1", "--port", str(bare_port), "--loop", "uvloop", "--http",
        "httptools", "--no-access-log", "--log-level", "warning", "--lifespan", "on",
        "--no-server-header", "--no-proxy-headers",
    ], bare_port, work / "bare.log", env)  # fmt: skip
    servers = {"bare": bare, "relay": relay}
    kpid = {"bare": kafka_pid, "relay": kafka_pid}
    result: dict[str, Any] = {"bare": {}, "relay": {}}
    watcher: ReceiptWatcher | None = None
    try:
        if not args.ack_only:
            await create_topics(bootstrap, prefix, args.partitions)
        await asyncio.gather(relay.start("/readyz"), bare.start("/healthz"))
        say(f"relay pid {relay.pid} on :{relay_port}, bare pid {bare.pid} on :{bare_port}, "
            f"kafka {bootstrap}, topics {prefix}*")  # fmt: skip

        for name, server in servers.items():
            say(f"{name}: warm-up {args.warmup:g} s")
            await loadgen(work, server.port, mode="closed", phase="w", run=run,
                          connections=args.connections, duration=args.warmup)  # fmt: skip
        if not args.ack_only:
            await wait_drained(relay_port, 60)

        rounds: dict[str, list[dict[str, Any]]] = {"bare": [], "relay": []}
        for r in range(args.rounds):
            for name, server in servers.items():
                if name == "relay" and args.profile:
                    relay.signal(signal.SIGUSR1)
                await quiet(args)
                say(f"{name}: closed loop, {args.connections} connections, {args.duration:g} s"
                    f" (round {r + 1}/{args.rounds})")  # fmt: skip
                figures = await throughput_phase(server, work, args, run, f"t{r}", kpid[name])
                if name == "relay" and not args.ack_only:
                    drain, backlog = await wait_drained(relay_port, args.drain_timeout)
                    figures["backlog_at_end"] = backlog
                    figures["drain_s"] = round(drain, 2)
                if name == "relay" and args.profile:
                    relay.signal(signal.SIGUSR2)
                rounds[name].append(figures)
                say(f"  {figures['postbacks_per_s']:.0f}/s")
        for name in servers:
            best = sorted(rounds[name], key=lambda f: f["postbacks_per_s"])
            result[name]["throughput"] = best[len(best) // 2]
            result[name]["throughput_rounds"] = [f["postbacks_per_s"] for f in rounds[name]]

        for name, server in servers.items():
            record = name == "relay" and not args.ack_only
            if record:
                watcher = ReceiptWatcher(bootstrap, f"{prefix}delivery-receipts.v1", run, "r")
                await watcher.start()
                if args.live_consumer:
                    watcher.consume()
                if args.profile:
                    relay.signal(signal.SIGUSR1)
            if name == "relay" and args.profile and not record:
                relay.signal(signal.SIGUSR1)
            await quiet(args)
            say(f"{name}: open loop, {args.rate:g}/s for {args.rate_duration:g} s")
            figures, raw = await rate_phase(server, work, args, run, "r" if record else "b",
                                            kpid[name], record_acks=record)  # fmt: skip
            say(f"  p50 {figures['ack_latency_ms']['p50']} ms, "
                f"p99 {figures['ack_latency_ms']['p99']} ms")
            result[name]["rate"] = figures
            result["body_bytes"] = raw["body_sizes"]
            if name == "relay" and args.profile and not record:
                relay.signal(signal.SIGUSR2)
            if record and watcher is not None:
                items = ITEMS_PER_POSTBACK
                expected = {seq: items for seq, _ in raw["acks"]}
                watcher.consume()
                waited = await watcher.wait_for(expected, args.kafka_timeout)
                if args.profile:
                    relay.signal(signal.SIGUSR2)
                result[name]["kafka"] = kafka_figures(raw["acks"], watcher, items, waited,
                                                      args.live_consumer)
                k = result[name]["kafka"]
                say(f"  ack->kafka p50 {k['ack_to_kafka_ms']['p50']} ms, "
                    f"p99 {k['ack_to_kafka_ms']['p99']} ms ({k['timestamp']})")
        result["relay"]["readyz_at_end"] = await relay_readiness(relay_port)
    finally:
        if watcher is not None:
            await watcher.stop()
        codes = await asyncio.gather(relay.stop(), bare.stop())
        result["exit_codes"] = {"relay": codes[0], "bare": codes[1]}
    result["run"] = run
    result["topic_prefix"] = prefix
    return result


def kafka_figures(acks: list[tuple[int, float]], watcher: ReceiptWatcher, items: int,
                  waited: float, live: bool) -> dict[str, Any]:  # fmt: skip
    """Ack -> in Kafka per postback (its last record's broker append time), and with a
    live consumer ack -> received by it."""
    to_consumer, to_log = [], []
    missing = 0
    for seq, acked in acks:
        entry = watcher.seen.get(seq)
        if entry is None or entry[0] < items:
            missing += 1
            continue
        to_consumer.append(entry[1] - acked)
        to_log.append(entry[2] - acked)
    log_append = watcher.timestamp_types == {1}
    figures: dict[str, Any] = {
        "postbacks": len(acks), "records_per_postback": items, "missing": missing,
        "records_consumed": watcher.records, "wait_after_phase_s": round(waited, 2),
        "timestamp": "LogAppendTime" if log_append else "CreateTime",
        "ack_to_kafka_ms": ms_summary(to_log),
        "note": "record timestamp minus the wall-clock time the load generator got the 200; "
                "the bench creates the topics with message.timestamp.type=LogAppendTime, so "
                "the timestamp is the broker's append time (ms resolution); with "
                "--live-consumer also ack_to_consumer_ms, the time the bench's consumer "
                "received the record",
    }  # fmt: skip
    if live:
        figures["ack_to_consumer_ms"] = ms_summary(to_consumer)
    return figures


# --- output ----------------------------------------------------------------------------------

QUIET = False


def say(text: str) -> None:
    if not QUIET:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 3)


def summarise(res: dict[str, Any]) -> dict[str, Any]:
    bare, relay = res["bare"], res["relay"]
    r_lat, b_lat = relay["rate"]["ack_latency_ms"], bare["rate"]["ack_latency_ms"]
    kafka_p99 = relay.get("kafka", {}).get("ack_to_kafka_ms", {}).get("p99")
    ratios = {
        "throughput": ratio(relay["throughput"]["postbacks_per_s"],
                            bare["throughput"]["postbacks_per_s"]),
        "p50_ack": ratio(r_lat["p50"], b_lat["p50"]),
        "p99_ack": ratio(r_lat["p99"], b_lat["p99"]),
        "cpu_per_postback": ratio(relay["throughput"]["server_cpu_us_per_postback"],
                                  bare["throughput"]["server_cpu_us_per_postback"]),
    }  # fmt: skip
    aims = {
        "throughput_ratio_ge_0.8": (ratios["throughput"] or 0) >= AIM_THROUGHPUT_RATIO,
        "p99_ack_lt_5ms": r_lat["p99"] is not None and r_lat["p99"] < AIM_P99_ACK_MS,
        "p99_ack_to_kafka_lt_50ms": (None if "kafka" not in relay
                                     else kafka_p99 is not None and kafka_p99 < AIM_P99_KAFKA_MS),
        "no_errors": all(res[s][p]["errors"] == 0 for s in ("bare", "relay")
                         for p in ("throughput", "rate")),
    }  # fmt: skip
    return {"ratios": ratios, "aims": aims}


def print_table(res: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    bare, relay, ratios = res["bare"], res["relay"], res["summary"]["ratios"]

    def f(v: Any, unit: str = "") -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:,.2f}{unit}" if abs(v) < 100 else f"{v:,.0f}{unit}"
        return f"{v}{unit}"

    m = res["machine"]
    pause = ", publisher never pauses" if res["config"].get("no_pause") else ""
    if res["config"].get("seen_ids"):
        pause += f", dedup record filled with {res['config']['seen_ids']:,} ids"
    broker = ("broker under SCHED_IDLE" if res["config"].get("broker_idle")
              else "broker at normal priority")
    table = Table(title=f"relay ack bench - nproc {m['nproc']}, {m['cpu_model']}, "
                  f"one uvicorn worker each, {broker}{pause}", title_justify="left")  # fmt: skip
    table.add_column("figure")
    table.add_column("bare starlette", justify="right")
    table.add_column("relay", justify="right")
    table.add_column("relay / bare", justify="right")
    bt, rt = bare["throughput"], relay["throughput"]
    table.add_row(f"max throughput, postbacks/s ({bt['connections']} conns, "
                  f"{bt['duration_s']:g} s)", f(bt["postbacks_per_s"]),
                  f(rt["postbacks_per_s"]), f(ratios["throughput"], "x"))  # fmt: skip
    table.add_row("  rounds", ", ".join(f"{x:.0f}" for x in bare["throughput_rounds"]),
                  ", ".join(f"{x:.0f}" for x in relay["throughput_rounds"]), "")
    table.add_row("  closed-loop latency p50 / p99, ms",
                  f"{f(bt['service_latency_ms']['p50'])} / {f(bt['service_latency_ms']['p99'])}",
                  f"{f(rt['service_latency_ms']['p50'])} / {f(rt['service_latency_ms']['p99'])}",
                  "")  # fmt: skip
    table.add_row("  server CPU, us per postback", f(bt["server_cpu_us_per_postback"]),
                  f(rt["server_cpu_us_per_postback"]), f(ratios["cpu_per_postback"], "x"))
    table.add_row("  server CPU, cores busy (event-loop thread)",
                  f"{f(bt['server_cpu_cores'])} ({f(bt['server_main_thread_cpu_cores'])})",
                  f"{f(rt['server_cpu_cores'])} ({f(rt['server_main_thread_cpu_cores'])})", "")
    table.add_row("  relay: backlog at end / drain s", "",
                  f"{rt.get('backlog_at_end', '-')} / {f(rt.get('drain_s'))}", "")
    table.add_row("  kafka broker CPU, cores", f(bt["kafka_broker_cpu_cores"]),
                  f(rt["kafka_broker_cpu_cores"]), "")
    table.add_row("  relay's child processes CPU (spool writer + publisher), cores", "",
                  f(rt["child_processes_cpu_cores"]), "")
    table.add_row("  load generator CPU share", f(bt["loadgen_cpu_share"]),
                  f(rt["loadgen_cpu_share"]), "")
    table.add_row("  other processes on the machine, cores", f(bt["other_processes_cpu_cores"]),
                  f(rt["other_processes_cpu_cores"]), "")
    br, rr = bare["rate"], relay["rate"]
    table.add_row(f"open loop {br['target_rate']:g}/s for {br['duration_s']:g} s: achieved/s",
                  f(br["achieved_rate"]), f(rr["achieved_rate"]), "")
    for key in ("p50", "p90", "p99", "p999", "max"):
        table.add_row(f"  ack latency {key}, ms", f(br["ack_latency_ms"][key]),
                      f(rr["ack_latency_ms"][key]),
                      f(ratio(rr["ack_latency_ms"][key], br["ack_latency_ms"][key]), "x"))
    table.add_row("  errors (non-2xx, lost)", f"{br['errors']}, {br['unanswered']}",
                  f"{rr['errors']}, {rr['unanswered']}", "")
    table.add_row("  server CPU, cores busy (event-loop thread)",
                  f"{f(br['server_cpu_cores'])} ({f(br['server_main_thread_cpu_cores'])})",
                  f"{f(rr['server_cpu_cores'])} ({f(rr['server_main_thread_cpu_cores'])})", "")
    table.add_row("  relay's child processes CPU (spool writer + publisher), cores", "",
                  f(rr["child_processes_cpu_cores"]), "")
    table.add_row("  other processes on the machine, cores", f(br["other_processes_cpu_cores"]),
                  f(rr["other_processes_cpu_cores"]), "")
    table.add_row("  server CPU, us per postback", f(br["server_cpu_us_per_postback"]),
                  f(rr["server_cpu_us_per_postback"]),
                  f(ratio(rr["server_cpu_us_per_postback"], br["server_cpu_us_per_postback"]),
                    "x"))  # fmt: skip
    k = relay.get("kafka")
    if k:
        for key in ("p50", "p90", "p99", "max"):
            table.add_row(f"  ack -> in Kafka ({k['timestamp']}) {key}, ms", "",
                          f(k["ack_to_kafka_ms"][key]), "")
        if "ack_to_consumer_ms" in k:
            table.add_row("  ack -> received by a live consumer p50 / p99, ms", "",
                          f"{f(k['ack_to_consumer_ms']['p50'])} / "
                          f"{f(k['ack_to_consumer_ms']['p99'])}", "")  # fmt: skip
        table.add_row("  postbacks missing from Kafka", "", f"{k['missing']} of {k['postbacks']}",
                      "")
    console = Console(stderr=False, width=110)
    console.print(table)
    aims = res["summary"]["aims"]
    verdict = {True: "PASS", False: "MISS", None: "not measured"}
    console.print("aims: " + ", ".join(f"{k} {verdict[v]}" for k, v in aims.items()))
    console.print("versions: " + ", ".join(f"{k} {v}" for k, v in res["versions"].items()))


# --- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="short phases, one round (~45 s)")
    p.add_argument("--duration", type=float, help="closed-loop seconds (10; quick 4)")
    p.add_argument("--connections", type=int, default=32, help="closed-loop connections")
    p.add_argument("--rounds", type=int, help="closed-loop rounds, bare/relay alternating; "
                   "the median round is reported (3; quick 1)")  # fmt: skip
    p.add_argument("--rate", type=float, default=1000.0, help="open-loop postbacks/s")
    p.add_argument("--rate-duration", type=float, help="open-loop seconds (10; quick 5)")
    p.add_argument("--rate-connections", type=int, default=16,
                   help="open-loop connection pool (a request waits if all are busy)")
    p.add_argument("--warmup", type=float, help="warm-up seconds per server (2; quick 1)")
    p.add_argument("--loadgen-procs", type=int, default=1,
                   help="load generator processes for the closed loop")
    p.add_argument("--kafka", metavar="HOST:PORT", help="use this broker, start none")
    p.add_argument("--broker-idle", action="store_true",
                   help="run the started broker under SCHED_IDLE (all its threads), so its "
                   "CPU use yields to relay's as if Kafka ran on another machine")  # fmt: skip
    p.add_argument("--ack-only", action="store_true",
                   help="diagnostic: relay without Kafka (no pipeline), ack path alone")
    p.add_argument("--no-pause", action="store_true",
                   help="relay's publisher never pauses for a busy ack path "
                        "([server] publisher_pause_above = 0)")
    p.add_argument("--partitions", type=int, default=6)
    p.add_argument("--compression", default="zstd", choices=["none", "gzip", "lz4", "zstd",
                                                             "snappy"])  # fmt: skip
    p.add_argument("--linger-ms", type=int, help="relay kafka.linger_ms (default: relay's)")
    p.add_argument("--batch-linger-ms", type=int,
                   help="relay kafka.batch_linger_ms (default: relay's)")
    p.add_argument("--live-consumer", action="store_true",
                   help="consume the delivery receipts during relay's open loop (as before "
                   "2026-12-07) and report when they were received, besides their broker "
                   "append time")  # fmt: skip
    p.add_argument("--drain-timeout", type=float, default=120.0,
                   help="seconds to wait for relay's backlog after the closed loop")
    p.add_argument("--kafka-timeout", type=float, default=30.0,
                   help="seconds to wait for the open-loop records to reach the consumer")
    p.add_argument("--profile", type=Path, metavar="DIR",
                   help="run relay under cProfile during its phases; stats in DIR/relay.prof "
                   "(slows relay: figures are not comparable)")  # fmt: skip
    p.add_argument("--switch-interval", type=float, metavar="S",
                   help="experiment: run relay with sys.setswitchinterval(S) (CPython: 0.005)")
    p.add_argument("--quiet-wait", type=float, metavar="S",
                   help="before each phase wait up to S s for other processes to use < 0.25 "
                   "cores (15; quick 3; 0 = don't wait)")  # fmt: skip
    p.add_argument("--seen-ids", type=int, default=0, metavar="N",
                   help="fill relay's dedup record (seen.db) with N random event ids before "
                   "it starts, as a relay that has run a while holds (0: empty, as new)")
    p.add_argument("--keep", action="store_true",
                   help="keep the work dir (logs, spool, the load generators' raw results)")
    p.add_argument("--json-only", action="store_true", help="print only the JSON line")
    args = p.parse_args(argv)
    quick = args.quick
    args.duration = args.duration or (4.0 if quick else 10.0)
    args.rounds = args.rounds or (1 if quick else 3)
    args.rate_duration = args.rate_duration or (5.0 if quick else 10.0)
    args.quiet_wait = args.quiet_wait if args.quiet_wait is not None else (3.0 if quick else 15.0)
    args.warmup = args.warmup if args.warmup is not None else (1.0 if quick else 2.0)
    return args


def main(argv: list[str] | None = None) -> int:
    global QUIET
    args = parse_args(argv)
    QUIET = args.json_only
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="relay-bench-"))
    broker = None
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
        args.profile = args.profile.resolve()
    try:
        if args.kafka or args.ack_only:
            bootstrap, kafka_pid = args.kafka or "-", None
        else:
            from kafka_broker import KafkaBroker, ensure_kafka_jars

            say("starting a Kafka broker")
            broker = KafkaBroker(jars_dir=ensure_kafka_jars(), workdir=work / "kafka")
            broker.start()
            bootstrap, kafka_pid = broker.bootstrap, broker.pid
            if args.broker_idle and kafka_pid is not None:
                say(f"broker under SCHED_IDLE: {idle_threads(kafka_pid)} threads")
        res = asyncio.run(bench(args, work, bootstrap, kafka_pid))
    finally:
        if broker is not None:
            broker.close()
        if not args.keep:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
        else:
            say(f"work dir kept: {work}")
    res["machine"] = machine()
    res["versions"] = versions()
    res["config"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    res["config"]["kafka_broker"] = "external" if args.kafka else "tests/kafka_broker.py"
    res["config"]["items_per_postback"] = ITEMS_PER_POSTBACK
    res["summary"] = summarise(res)
    res["wall_seconds"] = round(time.monotonic() - started, 1)
    if not args.json_only:
        print_table(res)
    if args.profile:
        report_profile(args.profile / "relay.prof")
    print(orjson.dumps(res).decode(), flush=True)
    return 0


def idle_threads(pid: int) -> int:
    """Put every thread of ``pid`` under SCHED_IDLE (threads it starts later inherit it)."""
    count = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError):
            os.sched_setscheduler(int(task.name), os.SCHED_IDLE, os.sched_param(0))
            count += 1
    return count


def report_profile(path: Path, limit: int = 35) -> None:
    import io
    import pstats

    if not path.exists():
        say(f"no profile at {path}")
        return
    out = io.StringIO()
    stats = pstats.Stats(str(path), stream=out)
    stats.sort_stats("tottime").print_stats(limit)
    stats.sort_stats("cumulative").print_stats(limit)
    text = out.getvalue()
    (path.parent / "relay-profile.txt").write_text(text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
