"""Replay benchmark: how fast ``relay replay`` re-derives events from a spool, on one core.

    .venv/bin/python bench/replay_bench.py                 # 1,000,000 postbacks (~2-3 min)
    .venv/bin/python bench/replay_bench.py --quick         # 100,000 postbacks (~20 s)
    .venv/bin/python bench/replay_bench.py --rows 250000 --profile var/replay.prof

The requirement: replay re-derives events from a spool of a million raw postbacks at
20,000 or more per second on one core.

1. Builds a spool of ``--rows`` raw postbacks in a temp dir (deleted at exit): a
   :class:`relay.spool.Spool` creates the schema, then one ``executemany`` in one
   transaction fills the ``raw`` table (state 1, published) with a realistic mix: mostly
   Bandwidth status callbacks (message ids all different, numbers from a pool of a few
   thousand, some ``message-failed`` with error codes, some inbound, a few of them STOP),
   some Skycore and Ping+ postbacks.
2. Pins the process to one CPU and measures, in the same run:

   * **baseline**: every row read from the spool (``Spool.select``, which builds each
     :class:`~relay.schema.RawPostback`) plus ``orjson.loads`` of its body: the floor any
     replay pays;
   * **replay**: ``Replayer.run(spool_rows(...), spool)``, exactly what ``relay replay``
     runs (without its progress bar): select -> ``Normaliser.derive`` -> ``build_batch``
     (records fully serialised, headers included) -> publisher. The publisher is a
     do-nothing stand-in that acknowledges every record: Kafka throughput is *not* what
     this measures.

   The phases run baseline, replay, baseline (``--rounds`` times); the baseline figure is
   the mean of the baseline runs around the replay runs, so drift on a shared machine hits
   both sides alike.
3. Prints a table and, last, one JSON line. Exit code 0 unless the run itself failed; a
   missed aim is reported, not a failure.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import cProfile
import io
import os
import platform
import pstats
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from relay.publish import Record  # noqa: E402
from relay.replay import Filters, Replayer, gc_tuned, spool_rows  # noqa: E402
from relay.settings import Settings, parse  # noqa: E402
from relay.spool import PUBLISHED, Spool  # noqa: E402

AIM_POSTBACKS_PER_S = 20_000
START = 1_740_823_200.0  # 2025-03-01T10:00:00Z
WHSEC = "whsec_" + base64.b64encode(b"replay-bench-secret-32-bytes....").decode()
ENVIRON = {"BENCH_BW_PASS": "bench-password", "BENCH_SKY_TOKEN": "bench-url-token-0123456789",
           "BENCH_PP_WHSEC": WHSEC}

# Share of postbacks per kind (the rest of the mix is Bandwidth).
MIX = (
    ("bw_delivered", 0.46),
    ("bw_sent", 0.20),
    ("bw_sending_sent", 0.04),  # one callback array with two items (MMS)
    ("bw_failed", 0.07),
    ("bw_inbound", 0.05),
    ("bw_inbound_stop", 0.005),
    ("sky_mt", 0.10),
    ("sky_mo", 0.015),
    ("sky_mo_stop", 0.002),
    ("sky_notice", 0.003),
    ("pp_status", 0.04),
    ("pp_inbound", 0.01),
)
BW_ERRORS = (4360, 4432, 4470, 4720, 4750, 4770, 5600, 5620, 9902, 9999)
BW_TEXTS = ("Thanks!", "yes", "What time do you open?", "ok see you then", "Y", "call me",
            "Is my order shipped?", "NO")
STOP_WORDS = ("STOP", "stop", "Stop ", "UNSUBSCRIBE", "CANCEL")
SKY_MT = (
    ("MMS_MT", "N101", "Sent", "Message Sent", "MMS"),
    ("MMS_MT", "N102", "Delivered", "Message Delivered", "MMS"),
    ("MMS_MT", "E101", "Failed", "Impossible to send MMS", "MMS"),
    ("MMS_MT", "N202", "Delivered", "Message Delivered as SMS", "SMS"),
    ("SMS_MT", "N201", "Sent", "", "SMS"),
    ("SMS_MT", "N202", "Delivered", "", "SMS"),
    ("SMS_MT", "E202", "Rejected", "", "SMS"),
)
PP_STATUSES = ("queued", "sent", "delivered", "delivered", "delivered", "failed", "read")
PP_CHANNELS = ("sms", "whatsapp", "rcs")
OPERATORS = (("310012", "Verizon Wireless"), ("310260", "T-Mobile USA"), ("310410", "AT&T"))


# --- the spool -------------------------------------------------------------------------------


def settings_for(spool_dir: Path) -> Settings:
    """A Bandwidth, a Skycore and a Ping+ source, spool in ``spool_dir``."""
    return parse({
        "spool": {"dir": str(spool_dir)},
        "sources": [
            {"name": "bw", "provider": "bandwidth", "default_region": "US",
             "basic_auth": {"username": "relay", "password": "env:BENCH_BW_PASS"}},
            {"name": "sky", "provider": "skycore", "token": "env:BENCH_SKY_TOKEN"},
            {"name": "pp", "provider": "pingplus",
             "signing": {"secrets": ["env:BENCH_PP_WHSEC"]}},
        ],
    }, environ=ENVIRON)


def iso(ts: float) -> str:
    """RFC 3339 with milliseconds, as the providers write it."""
    whole = int(ts)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{int((ts % 1) * 1000):03d}Z"


class Generator:
    """Deterministic, realistic raw postback rows (the ``raw`` table's columns)."""

    def __init__(self, seed: int = 7) -> None:
        self.rng = random.Random(seed)
        rng = self.rng
        areas = (202, 212, 305, 312, 404, 415, 512, 617, 646, 702, 713, 718, 773, 786, 917)
        # Subscribers (a few thousand) and the customer's own sending numbers (a few).
        self.us = [f"+1{rng.choice(areas)}{rng.randint(200, 999)}{rng.randint(0, 9999):04d}"
                   for _ in range(3000)]
        self.owners = [f"+1{rng.choice(areas)}{rng.randint(200, 999)}{rng.randint(0, 9999):04d}"
                       for _ in range(8)]
        self.sky_subs = [f"1774555{rng.randint(0, 9999):04d}" for _ in range(1000)]
        self.uk = [f"+4477009{rng.randint(0, 99999):05d}" for _ in range(500)]
        self.kinds = [k for k, _ in MIX]
        self.weights = [w for _, w in MIX]
        self.seq = 0

    def _mid(self, prefix: str = "") -> str:
        self.seq += 1
        return f"{prefix}{1740823200000 + self.seq}{self.rng.getrandbits(48):012x}"

    def _bw_status(self, kind: str, t: float, sub: str, owner: str, mid: str,
                   media: bool = False, code: int | None = None) -> dict[str, Any]:
        descriptions = {"message-sending": "Message is sending to carrier",
                        "message-sent": "Message sent to carrier",
                        "message-delivered": "Message delivered to handset.",
                        "message-failed": "message-failed"}
        message: dict[str, Any] = {
            "id": mid, "owner": owner, "applicationId": "93de2206-9669-4e07-948d-329f4b722ee2",
            "time": iso(t - 1.2), "segmentCount": 1 + (self.rng.random() < 0.1),
            "direction": "out", "to": [sub], "from": owner, "text": "",
        }
        if media:
            message["media"] = ["https://messaging.bandwidth.com/api/v2/users/9900000/media/"
                                f"{mid}/0/a.jpg"]
        if self.rng.random() < 0.6:
            message["tag"] = f"order-{self.rng.randint(1000, 99999)}"
        item: dict[str, Any] = {"type": kind, "time": iso(t), "description": descriptions[kind],
                                "to": sub, "message": message}
        if code is not None:
            item["errorCode"] = code
        return item

    def _bandwidth(self, kind: str, t: float) -> bytes:
        rng = self.rng
        sub, owner, mid = rng.choice(self.us), rng.choice(self.owners), self._mid()
        if kind in ("bw_inbound", "bw_inbound_stop"):
            words = STOP_WORDS if kind == "bw_inbound_stop" else BW_TEXTS
            item = {"type": "message-received", "time": iso(t),
                    "description": "Incoming message received", "to": owner,
                    "message": {"id": mid, "owner": owner,
                                "applicationId": "93de2206-9669-4e07-948d-329f4b722ee2",
                                "time": iso(t), "segmentCount": 1, "direction": "in",
                                "to": [owner], "from": sub, "text": rng.choice(words)}}
            return orjson.dumps([item])
        if kind == "bw_sending_sent":
            return orjson.dumps([self._bw_status("message-sending", t - 1, sub, owner, mid, True),
                                 self._bw_status("message-sent", t, sub, owner, mid, True)])
        if kind == "bw_failed":
            return orjson.dumps([self._bw_status("message-failed", t, sub, owner, mid,
                                                 code=rng.choice(BW_ERRORS))])
        name = "message-delivered" if kind == "bw_delivered" else "message-sent"
        return orjson.dumps([self._bw_status(name, t, sub, owner, mid)])

    def _skycore(self, kind: str, t: float) -> bytes:
        rng = self.rng
        sub = rng.choice(self.sky_subs)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(int(t)))
        if kind in ("sky_mo", "sky_mo_stop"):
            words = STOP_WORDS if kind == "sky_mo_stop" else BW_TEXTS
            return orjson.dumps({"origin": "SMS_MO", "code": "N211", "from": sub, "to": "28444",
                                 "message-text": rng.choice(words),
                                 "tracking-id": self._mid("smsmo"), "timestamp": stamp})
        if kind == "sky_notice":
            return orjson.dumps({"origin": "MMS_MT", "code": "N003",
                                 "status": "Transcoding successful",
                                 "status-details": "Template available",
                                 "mms-id": str(rng.randint(10000, 99999)), "timestamp": stamp})
        origin, code, status, details, sent_as = rng.choice(SKY_MT)
        body: dict[str, Any] = {"origin": origin, "code": code, "sent-as": sent_as,
                                "status": status, "from": "28444", "to": sub,
                                "timestamp": stamp, "tracking-id": self._mid("MMSMT")}
        if details:
            body["status-details"] = details
        if code.startswith("N102") or rng.random() < 0.3:
            body["operator-id"], body["operator-name"] = rng.choice(OPERATORS)
        if rng.random() < 0.5:
            body["client-reference"] = f"order-{rng.randint(1000, 99999)}"
        return orjson.dumps(body)

    def _pingplus(self, kind: str, t: float) -> tuple[bytes, str]:
        rng = self.rng
        sub, evt = rng.choice(self.uk), self._mid("evt_")
        if kind == "pp_inbound":
            data: dict[str, Any] = {"message_id": self._mid("mo_"), "channel": "sms",
                                    "from": sub, "to": "+447700900000",
                                    "text": rng.choice(BW_TEXTS + STOP_WORDS[:1]), "media": [],
                                    "operator": {"mcc": "234", "mnc": "15"},
                                    "received_at": iso(t)}
            body = {"type": "message.inbound", "id": evt, "created_at": iso(t), "data": data}
        else:
            status = rng.choice(PP_STATUSES)
            data = {"message_id": self._mid("msg_"), "client_ref": f"order-{rng.randint(1, 9999)}",
                    "channel": rng.choice(PP_CHANNELS), "to": sub, "from": "PINGPLUS",
                    "status": status, "status_reason": "absent subscriber" if status == "failed"
                    else None, "error_code": "E3001" if status == "failed" else None,
                    "segments": 1, "operator": {"mcc": "234", "mnc": "15", "name": "Vodafone UK"},
                    "occurred_at": iso(t - 0.5)}
            body = {"type": "message.status", "id": evt, "created_at": iso(t), "data": data}
        return orjson.dumps(body), f"msg_{evt[4:]}"

    def rows(self, n: int) -> Iterator[tuple[Any, ...]]:
        """``n`` rows: (source, received_at, remote_addr, method, path, query, headers,
        body, size, state)."""
        rng = self.rng
        kinds = rng.choices(self.kinds, self.weights, k=n)
        bw_headers = orjson.dumps([["content-type", "application/json; charset=utf-8"],
                                   ["user-agent", "BandwidthAPI/v2"]])
        sky_headers = orjson.dumps([["content-type", "application/json"],
                                    ["user-agent", "Skycore-Postback/2.0"]])
        for i, kind in enumerate(kinds):
            t = START + i * 0.004 + rng.random() * 0.003
            if kind.startswith("bw_"):
                source, path, headers = "bw", "/hooks/bw", bw_headers
                body = self._bandwidth(kind, t)
                addr = "67.231.1.10"
            elif kind.startswith("sky_"):
                source, path, headers = "sky", "/hooks/sky/<token>", sky_headers
                body = self._skycore(kind, t)
                addr = "54.164.2.20"
            else:
                body, webhook_id = self._pingplus(kind, t)
                source, path, addr = "pp", "/hooks/pp", "18.200.3.30"
                headers = orjson.dumps([["content-type", "application/json"],
                                        ["user-agent", "PingPlus-Webhooks/1.4"],
                                        ["webhook-id", webhook_id]])
            yield (source, t + 0.05, addr, "POST", path, "", headers, body,
                   len(body) + len(headers), PUBLISHED)


def build_spool(directory: Path, n: int, settings: Settings) -> dict[str, Any]:
    """A spool of ``n`` rows in ``directory``; returns how long it took and its size."""
    started = time.perf_counter()
    Spool(directory, settings.spool.max_bytes).open().close()  # schema, WAL mode
    conn = sqlite3.connect(directory / "spool.db", isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")  # a bench fixture: durability is not the point
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO raw (source, received_at, remote_addr, method, path, query, headers, body,"
        " size, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        Generator().rows(n),
    )
    conn.execute("COMMIT")
    counts = dict(conn.execute("SELECT source, count(*) FROM raw GROUP BY source").fetchall())
    total_bytes = conn.execute("SELECT sum(size) FROM raw").fetchone()[0]
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return {"seconds": time.perf_counter() - started, "by_source": counts,
            "bytes": int(total_bytes), "file_bytes": (directory / "spool.db").stat().st_size}


# --- the measured paths ----------------------------------------------------------------------


class NullPublisher:
    """Stands in for Kafka: acknowledges every record at once (Kafka is not measured)."""

    def __init__(self) -> None:
        self.records = 0
        self.value_bytes = 0

    async def start(self) -> None:
        return None

    async def send_all(self, records: Sequence[Record]) -> list[BaseException | None]:
        self.records += len(records)
        self.value_bytes += sum(len(r.value) for r in records)
        return [None] * len(records)

    async def stop(self) -> None:
        return None


@dataclass
class Run:
    """One measured pass over the spool."""

    phase: str
    postbacks: int
    events: int
    wall: float
    cpu: float

    @property
    def rate(self) -> float:
        return self.postbacks / self.wall if self.wall else 0.0

    @property
    def cpu_rate(self) -> float:
        """Postbacks per CPU second (less sensitive to other load on a shared machine)."""
        return self.postbacks / self.cpu if self.cpu else 0.0

    @property
    def event_rate(self) -> float:
        return self.events / self.wall if self.wall else 0.0


def run_baseline(settings: Settings) -> Run:
    """Read every row (``Spool.select``) and parse its body: the floor of any replay."""
    spool = Spool(settings.spool.dir, settings.spool.max_bytes).open()
    try:
        wall, cpu = time.perf_counter(), time.process_time()
        rows = items = 0
        loads = orjson.loads
        for raw in spool.select():
            data = loads(raw.body)
            rows += 1
            items += len(data) if isinstance(data, list) else 1
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        spool.close()
    return Run("baseline", rows, items, wall, cpu)


def run_derive(settings: Settings) -> Run:
    """Read every row and re-derive its events (``Normaliser.derive``): replay's
    normalisation alone, without building Kafka records."""
    from relay.pipeline import Normaliser
    from relay.sources import build

    normaliser = Normaliser(build(settings))
    spool = Spool(settings.spool.dir, settings.spool.max_bytes).open()
    try:
        wall, cpu = time.perf_counter(), time.process_time()
        rows = events = 0
        with gc_tuned():
            for raw in spool.select():
                events += len(normaliser.derive(raw).events)
                rows += 1
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        spool.close()
    return Run("derive", rows, events, wall, cpu)


async def _replay(settings: Settings, publisher: NullPublisher) -> Any:
    replayer = Replayer(settings, publisher=publisher)
    await replayer.start()
    spool = Spool(settings.spool.dir, settings.spool.max_bytes).open()
    try:
        rows = spool_rows(spool, Filters(), replayer.sources)
        return await replayer.run(rows, spool)
    finally:
        await replayer.stop()
        spool.close()


def run_replay(settings: Settings, profile: cProfile.Profile | None = None
               ) -> tuple[Run, dict[str, Any]]:
    """``Replayer.run`` over the whole spool (as ``relay replay`` runs it) with a null Kafka."""
    publisher = NullPublisher()
    wall, cpu = time.perf_counter(), time.process_time()
    if profile is not None:
        profile.enable()
    summary = asyncio.run(_replay(settings, publisher))
    if profile is not None:
        profile.disable()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    detail = {"read": summary.read, "published": summary.published,
              "dead_lettered": summary.dead_lettered, "skipped": summary.skipped,
              "failed": summary.failed, "records": publisher.records,
              "record_value_bytes": publisher.value_bytes,
              "replayer_seconds": summary.seconds}
    return Run("replay", summary.read, publisher.records, wall, cpu), detail


# --- the report ------------------------------------------------------------------------------


def pin_one_core() -> int | None:
    """Pin this process (and the threads it starts) to CPU 0, or the first CPU allowed."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    allowed = os.sched_getaffinity(0)
    cpu = 0 if 0 in allowed else min(allowed)
    os.sched_setaffinity(0, {cpu})
    return cpu


def mean(runs: list[Run], attr: str) -> float:
    return statistics.fmean(getattr(r, attr) for r in runs)


def print_table(results: dict[str, Any], base: list[Run], replay: list[Run],
                derive: list[Run]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(file=sys.stdout, width=120)
    table = Table(title=f"relay replay: {results['rows']:,} spooled postbacks, one core "
                        f"(CPU {results['cpu_pinned']}), Kafka replaced by a null publisher")
    for col in ("phase", "runs", "postbacks/s", "events/s", "per cpu-s", "wall s", "cpu s",
                "vs baseline"):
        table.add_column(col, justify="left" if col == "phase" else "right")
    b_rate = results["baseline"]["postbacks_per_s"]
    for name, runs in (("baseline: select + orjson.loads", base),
                       ("derive: select + Normaliser.derive", derive),
                       ("replay: Replayer.run", replay)):
        rate = mean(runs, "rate")
        table.add_row(name, str(len(runs)), f"{rate:,.0f}", f"{mean(runs, 'event_rate'):,.0f}",
                      f"{mean(runs, 'cpu_rate'):,.0f}", f"{mean(runs, 'wall'):.2f}", f"{mean(runs, 'cpu'):.2f}",
                      f"{rate / b_rate:.3f}" if b_rate else "-")
    console.print(table)
    r = results["replay"]
    verdict = "[green]met[/green]" if results["aim_met"] else "[red]NOT met[/red]"
    console.print(f"aim: replay >= {AIM_POSTBACKS_PER_S:,} postbacks/s on one core: {verdict} "
                  f"({r['postbacks_per_s']:,.0f}/s; replay costs "
                  f"{results['replay_us_per_postback']:.1f} us/postback, baseline "
                  f"{results['baseline_us_per_postback']:.1f} us)")
    d = results["replay_detail"]
    console.print(f"replay summary: read {d['read']:,}, published {d['published']:,}, "
                  f"dead-lettered {d['dead_lettered']:,}, records {d['records']:,} "
                  f"({d['record_value_bytes'] / max(d['records'], 1):.0f} B/record value)")
    console.print(f"spool: built in {results['spool']['seconds']:.1f}s, "
                  f"{results['spool']['file_bytes'] / 1e6:,.0f} MB, "
                  f"by source {results['spool']['by_source']}")


def print_profile(profile: cProfile.Profile, top: int) -> None:
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    out.write("\n")
    stats.sort_stats("cumulative").print_stats(top)
    print(out.getvalue())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--rows", type=int, default=None, help="postbacks in the spool (1,000,000)")
    p.add_argument("--quick", action="store_true", help="100,000 postbacks")
    p.add_argument("--rounds", type=int, default=1,
                   help="replay runs (each followed by a baseline run)")
    p.add_argument("--profile", metavar="FILE",
                   help="cProfile one extra replay run (after the measured ones) into FILE "
                        "and print the top functions")
    p.add_argument("--no-pin", action="store_true", help="do not pin to one CPU")
    args = p.parse_args(argv)
    rows = args.rows or (100_000 if args.quick else 1_000_000)

    cpu = None if args.no_pin else pin_one_core()
    with tempfile.TemporaryDirectory(prefix="relay-replay-bench-") as tmp:
        settings = settings_for(Path(tmp))
        print(f"building a spool of {rows:,} postbacks in {tmp} ...", flush=True)
        spool_info = build_spool(Path(tmp), rows, settings)
        run_baseline(settings)  # warm-up: page cache, imports, number cache is untouched
        base: list[Run] = [run_baseline(settings)]
        replay: list[Run] = []
        derive: list[Run] = []
        detail: dict[str, Any] = {}
        for i in range(args.rounds):
            print(f"round {i + 1}/{args.rounds}: derive, replay ...", flush=True)
            derive.append(run_derive(settings))
            run, detail = run_replay(settings)
            replay.append(run)
            base.append(run_baseline(settings))
        profile = None
        if args.profile:
            profile = cProfile.Profile()
            run_replay(settings, profile)
            profile.dump_stats(args.profile)

    b_rate, r_rate = mean(base, "rate"), mean(replay, "rate")
    results: dict[str, Any] = {
        "bench": "replay",
        "rows": rows,
        "cpu_pinned": cpu,
        "python": platform.python_version(),
        "kafka": "null publisher (not measured)",
        "spool": spool_info,
        "baseline": {"runs": len(base), "postbacks_per_s": round(b_rate),
                     "events_per_s": round(mean(base, "event_rate")),
                     "postbacks_per_cpu_s": round(mean(base, "cpu_rate")),
                     "per_run_postbacks_per_s": [round(r.rate) for r in base],
                     "cpu_s": round(mean(base, "cpu"), 3)},
        "replay": {"runs": len(replay), "postbacks_per_s": round(r_rate),
                   "events_per_s": round(mean(replay, "event_rate")),
                   "postbacks_per_cpu_s": round(mean(replay, "cpu_rate")),
                   "per_run_postbacks_per_s": [round(r.rate) for r in replay],
                   "cpu_s": round(mean(replay, "cpu"), 3)},
        "derive": {"runs": len(derive), "postbacks_per_s": round(mean(derive, "rate")),
                   "events_per_s": round(mean(derive, "event_rate")),
                   "postbacks_per_cpu_s": round(mean(derive, "cpu_rate"))},
        "derive_aim_met": mean(derive, "rate") >= AIM_POSTBACKS_PER_S,
        "replay_detail": detail,
        "ratio_replay_to_baseline": round(r_rate / b_rate, 4) if b_rate else None,
        "baseline_us_per_postback": 1e6 / b_rate if b_rate else None,
        "replay_us_per_postback": 1e6 / r_rate if r_rate else None,
        "aim_postbacks_per_s": AIM_POSTBACKS_PER_S,
        "aim_met": r_rate >= AIM_POSTBACKS_PER_S,
        "aim_met_per_cpu_s": mean(replay, "cpu_rate") >= AIM_POSTBACKS_PER_S,
    }
    print_table(results, base, replay, derive)
    if profile is not None:
        print_profile(profile, 35)
    with contextlib.suppress(TypeError):
        results["baseline_us_per_postback"] = round(results["baseline_us_per_postback"], 2)
        results["replay_us_per_postback"] = round(results["replay_us_per_postback"], 2)
    print(orjson.dumps(results).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
