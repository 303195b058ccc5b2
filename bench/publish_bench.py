"""Publish benchmark: the CPU the pipeline spends per postback, against a bare producer.

    .venv/bin/python bench/publish_bench.py                        # starts a Kafka broker
    .venv/bin/python bench/publish_bench.py --kafka 127.0.0.1:9092 # use a running broker
    .venv/bin/python bench/publish_bench.py --rows 50000 --rounds 5 --profile var/pub.prof

What ``relay serve``'s publisher process does per postback, measured alone on one core:
read the pending row, normalise it (``Normaliser.derive``), build its records
(``build_batch``: the raw-archive record and one record per event, CloudEvents headers),
hand them to Kafka (``KafkaPublisher``: idempotent, ``acks=all``, zstd), wait for the
acknowledgement and mark the row done in the spool (``Spool.complete``, fsynced).

1. A spool (temp dir) is filled with ``--rows`` pending Bandwidth status callbacks, the
   bodies ``bench/ack_bench.py`` posts (two receipts each, message ids all different).
2. The process is pinned to one CPU. Alternating, ``--rounds`` times:

   * **bare**: a plain aiokafka producer with the same options sends the very records relay
     would send for those rows (built before the clock starts), one ``send`` each, then
     waits for all of them: the floor any publisher pays for these bytes;
   * **relay**: :class:`relay.pipeline.Pipeline` drains a fresh spool of ``--rows``
     postbacks, exactly as the publisher process runs it (spool reads inline), until none
     is pending.

   CPU is this process's (all threads: the spool's commits run on its thread here, in
   the writer process under ``relay serve``), so the figure is per postback, not per second.
3. Prints a table and, last, one JSON line with the medians and relay / bare.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import os
import pstats
import secrets
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import uvloop

REPO = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(REPO / "tests"))

from loadgen import Bodies  # noqa: E402

from relay.pipeline import Normaliser, Pipeline, build_batch  # noqa: E402
from relay.publish import KafkaPublisher, Record, Topics, ensure_topics  # noqa: E402
from relay.settings import Settings, parse  # noqa: E402
from relay.sources import build  # noqa: E402
from relay.spool import Spool  # noqa: E402

PASSWORD = "bench-" + secrets.token_hex(8)
HEADERS = orjson.dumps([["content-type", "application/json; charset=utf-8"],
                        ["user-agent", "BandwidthAPI/v2"]])  # fmt: skip


def settings_for(spool_dir: Path, bootstrap: str, prefix: str, partitions: int) -> Settings:
    """One Bandwidth source; Kafka as ``bench/ack_bench.py`` configures it."""
    return parse({
        "spool": {"dir": str(spool_dir)},
        "kafka": {"bootstrap_servers": [bootstrap], "topic_prefix": prefix,
                  "create_topics": True, "partitions": partitions, "replication_factor": 1,
                  "compression": "zstd"},
        "sources": [{"name": "bw", "provider": "bandwidth", "default_region": "US",
                     "basic_auth": {"username": "relay", "password": "env:BENCH_PW"}}],
    }, environ={"BENCH_PW": PASSWORD})  # fmt: skip


def fill_spool(directory: Path, rows: int, run: str, phase: str) -> None:
    """``rows`` pending postbacks in a new spool in ``directory``."""
    directory.mkdir(parents=True)
    Spool(directory, 1 << 40).open().close()  # schema, WAL mode
    bodies = Bodies(run, phase)
    now = time.time()
    conn = sqlite3.connect(directory / "spool.db", isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")  # a fixture: durability is not what is measured
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO raw (source, received_at, remote_addr, method, path, query, headers, body,"
        " size, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0)",
        ((("bw", now, "67.231.1.10", "POST", "/hooks/bw", "", HEADERS, b, len(b)))
         for b in map(bodies.body, range(rows))),
    )  # fmt: skip
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


class CountingReporter:
    """Counts the records the pipeline reports published; ignores the rest."""

    def __init__(self) -> None:
        self.records = 0

    def published(self, topic: str, count: int) -> None:
        self.records += count

    def duplicated(self, source: str, count: int) -> None: ...

    def dead_lettered(self, source: str) -> None: ...

    def noticed(self, source: str, code: str) -> None: ...

    def publish_failed(self) -> None: ...

    def kafka(self, connected: bool, problem: str | None) -> None: ...


def measure(fn: Any) -> tuple[float, float, Any]:
    """Run the coroutine function ``fn``: (CPU s, wall s, its result)."""
    cpu0, wall0 = time.process_time(), time.perf_counter()
    result = uvloop.run(fn())
    return time.process_time() - cpu0, time.perf_counter() - wall0, result


def records_for(settings: Settings, spool_dir: Path) -> list[Record]:
    """The records relay publishes for the rows of ``spool_dir`` (built untimed)."""
    spool = Spool(spool_dir, 1 << 40).open_reader()
    try:
        rows = spool.pending(0, 10**9)
    finally:
        spool.close()
    normaliser = Normaliser(build(settings))
    return build_batch([normaliser.derive(r) for r in rows],
                       Topics(settings.kafka.topic_prefix), skip=set()).records


async def bare(settings: Settings, records: Sequence[Record]) -> int:
    """Send ``records`` with a plain producer (relay's options), wait for every ack."""
    from aiokafka import AIOKafkaProducer

    from relay.publish import client_options

    producer = AIOKafkaProducer(**client_options(settings.kafka), acks="all",
                                enable_idempotence=True, compression_type="zstd",
                                linger_ms=settings.kafka.linger_ms, max_batch_size=1 << 20)
    await producer.start()
    try:
        futures = [await producer.send(r.topic, r.value, key=r.key, headers=list(r.headers))
                   for r in records]  # fmt: skip
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return len(records)


async def relay(settings: Settings, spool_dir: Path, profile: cProfile.Profile | None) -> int:
    """Drain the spool at ``spool_dir`` with relay's pipeline; the records published."""
    spool = Spool(spool_dir, 1 << 40).open()
    await spool.start()
    reporter = CountingReporter()
    publisher = KafkaPublisher(settings.kafka)
    await publisher.start()
    pipeline = Pipeline(spool, Normaliser(build(settings)), publisher,
                        Topics(settings.kafka.topic_prefix), reporter,
                        dedup_window=settings.spool.dedup_window_hours * 3600,
                        read_in_thread=False)  # fmt: skip
    pipeline.connected = True
    task = asyncio.create_task(pipeline.run())
    if profile is not None:
        profile.enable()
    try:
        while spool.stats().pending:
            await asyncio.sleep(0.05)  # stats() counts the pending rows: not too often
    finally:
        if profile is not None:
            profile.disable()
        await pipeline.stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await spool.stop()
        spool.close()
    return reporter.records


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kafka", help="bootstrap server of a running broker (else one is started)")
    p.add_argument("--rows", type=int, default=20000, help="postbacks per round (20000)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of each (3)")
    p.add_argument("--partitions", type=int, default=6)
    p.add_argument("--profile", type=Path, help="write a cProfile of relay's rounds here")
    p.add_argument("--no-pin", action="store_true", help="do not pin to one CPU")
    args = p.parse_args(argv)
    if not args.no_pin:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="relay-pub-")))
        bootstrap = args.kafka
        if bootstrap is None:
            from kafka_broker import KafkaBroker, ensure_kafka_jars

            broker = KafkaBroker(jars_dir=ensure_kafka_jars(), workdir=work / "kafka")
            broker.start()
            stack.callback(broker.close)
            bootstrap = broker.bootstrap
        run = secrets.token_hex(3)
        settings = settings_for(work / "unused", bootstrap, f"pubbench{run}.", args.partitions)
        asyncio.run(ensure_topics(settings.kafka, Topics(settings.kafka.topic_prefix).all()))
        profile = cProfile.Profile() if args.profile else None
        figures: dict[str, list[dict[str, float]]] = {"bare": [], "relay": []}
        for r in range(args.rounds):
            spool_dir = work / f"spool{r}"
            fill_spool(spool_dir, args.rows, run, f"p{r}")
            records = records_for(settings, spool_dir)
            cpu, wall, sent = measure(partial(bare, settings, records))
            figures["bare"].append({"cpu_us": cpu / args.rows * 1e6, "wall_s": wall,
                                    "records": sent})  # fmt: skip
            cpu, wall, sent = measure(partial(relay, settings, spool_dir, profile))
            figures["relay"].append({"cpu_us": cpu / args.rows * 1e6, "wall_s": wall,
                                     "records": sent})  # fmt: skip
            print(f"round {r + 1}: bare {figures['bare'][-1]['cpu_us']:.1f} us/postback, "
                  f"relay {figures['relay'][-1]['cpu_us']:.1f} us/postback "
                  f"({sent} records)", file=sys.stderr)  # fmt: skip
    med = {k: statistics.median(f["cpu_us"] for f in v) for k, v in figures.items()}
    summary = {"rows": args.rows, "records_per_postback": figures["relay"][0]["records"] / args.rows,
               "bare_cpu_us_per_postback": round(med["bare"], 1),
               "relay_cpu_us_per_postback": round(med["relay"], 1),
               "relay_over_bare": round(med["relay"] / med["bare"], 2), "rounds": figures}  # fmt: skip
    print(f"publisher CPU per postback: relay {med['relay']:.1f} us, bare producer "
          f"{med['bare']:.1f} us, ratio {med['relay'] / med['bare']:.2f}")
    if profile is not None:
        args.profile.parent.mkdir(parents=True, exist_ok=True)
        profile.dump_stats(args.profile)
        pstats.Stats(profile).sort_stats("cumulative").print_stats(30)
    print(orjson.dumps(summary).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
