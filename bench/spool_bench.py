"""Spool commit benchmark: the WAL started over under load, against a WAL that never is.

    .venv/bin/python bench/spool_bench.py                  # 3 rounds x 2 x 10 s, groups of 10
    .venv/bin/python bench/spool_bench.py --group 1 --seconds 5 --rounds 1

One event loop appends raw postbacks (900-byte bodies, as the ack bench sends) to a spool
in a fresh directory, ``--group`` at a time (the postbacks one event-loop iteration
shares a commit with), for ``--seconds``, with the checkpoint thread running as in
relay. Two spools, run alternately in each round:

* ``baseline``: ``wal_restart_frames`` so large that the WAL never starts over while
  commits go on (relay before 2026-11-24: the WAL grew for as long as the load lasted);
* ``relay``: relay's default (the WAL starts over once it holds 64 MiB).

Prints rows/s, commit latency (the time ``Spool.transact`` took) and the WAL file's size
at the end, for each, and the median ratio relay / baseline; the last line is JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from relay.schema import RawPostback
from relay.spool import Spool, WriteOp, WriteResult

NEVER = 1 << 62


class TimedSpool(Spool):
    """A Spool that records how long each group's transaction took."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commit_seconds: list[float] = []

    def transact(self, group: list[WriteOp]) -> list[WriteResult]:
        started = time.perf_counter()
        results = super().transact(group)
        self.commit_seconds.append(time.perf_counter() - started)
        return results


async def run(directory: Path, restart_frames: int | None, group: int, seconds: float
              ) -> dict[str, Any]:  # fmt: skip
    """Append for ``seconds``; rows/s, commit latency percentiles, WAL size.

    ``restart_frames`` None: relay's default.
    """
    options = {} if restart_frames is None else {"wal_restart_frames": restart_frames}
    spool = TimedSpool(directory, 1 << 40, **options).open()
    raw = RawPostback("bw", time.time(), "203.0.113.5", "POST", "/hooks/bw", "",
                      (("content-type", "application/json"),), b"x" * 900)
    rows = 0
    started = time.perf_counter()
    try:
        while time.perf_counter() - started < seconds:
            await asyncio.gather(*(spool.append(raw) for _ in range(group)))
            rows += group
        elapsed = time.perf_counter() - started
        wal = await asyncio.to_thread(os.path.getsize, f"{spool.path}-wal")
    finally:
        spool.close()
    ordered = sorted(spool.commit_seconds)
    return {
        "rows_per_s": round(rows / elapsed),
        "commit_ms_p50": round(ordered[len(ordered) // 2] * 1000, 3),
        "commit_ms_p99": round(ordered[int(len(ordered) * 0.99)] * 1000, 3),
        "wal_mb_at_end": round(wal / 1e6, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--group", type=int, default=10, help="appends sharing a commit")
    p.add_argument("--seconds", type=float, default=10.0, help="seconds per run")
    p.add_argument("--rounds", type=int, default=3, help="rounds of (baseline, relay)")
    args = p.parse_args(argv)
    results: dict[str, list[dict[str, Any]]] = {"baseline": [], "relay": []}
    with tempfile.TemporaryDirectory(prefix="relay-spool-bench-") as work:
        for r in range(args.rounds):
            for name, frames in (("baseline", NEVER), ("relay", None)):
                figures = asyncio.run(run(Path(work) / f"{name}-{r}", frames, args.group,
                                          args.seconds))
                results[name].append(figures)
                print(f"round {r + 1} {name:8} {figures}", flush=True)
    ratios = [rel["rows_per_s"] / base["rows_per_s"]
              for base, rel in zip(results["baseline"], results["relay"], strict=True)]
    ratio = round(statistics.median(ratios), 2)
    print(f"rows/s relay / baseline (median of {args.rounds}): {ratio}x")
    print(orjson.dumps({"config": vars(args), "results": results, "ratio": ratio}).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
