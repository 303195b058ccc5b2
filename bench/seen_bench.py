"""Dedup record benchmark: what the publisher's ``seen.db`` work costs as the record grows.

    .venv/bin/python bench/seen_bench.py                        # 0, 0.5 M, 2 M ids (~2 min)
    .venv/bin/python bench/seen_bench.py --sizes 0,4000000 --batches 1000

The publisher, for every batch Kafka acknowledged, looks the batch's event ids up in
``seen.db`` (:meth:`relay.seen.SeenStore.seen_ids`) and adds them
(:meth:`~relay.seen.SeenStore.insert`, one transaction). This script does exactly that
with relay's own :class:`~relay.seen.SeenStore`, ``--per-batch`` ids a batch (20: the
10 postbacks of two receipts a 10 ms batch holds at 1,000 postbacks/s), on a record
filled beforehand to each of ``--sizes`` ids (random uuids, as event ids are). The
first size is the baseline, measured in the same run; a ``bench/ack_bench.py`` run
starts from an empty record, while a relay that has run for a day at 1,000 postbacks/s
holds about 170 million ids (``[spool] dedup_window_hours``, 48 by default).

Prints, for each size: CPU per id (this process, all threads: SQLite's checkpoints run
in the committing thread), bytes written and read through system calls per id
(``/proc/self/io``: the WAL, its checkpoints into the database, page reads), the file's
size, and the ratios to the baseline; the last line is JSON. The record stays in the
OS's page cache here (2 M ids are about 230 MB); a record larger than memory also reads
from the disk.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from relay.seen import SeenStore

FILL_CHUNK = 50_000


def io_counters() -> dict[str, int]:
    """This process's ``wchar`` and ``rchar`` (bytes through write and read calls)."""
    counters: dict[str, int] = {}
    for line in Path("/proc/self/io").read_text().splitlines():
        name, _, value = line.partition(":")
        counters[name] = int(value)
    return counters


def fill(store: SeenStore, have: int, want: int, stamp: float) -> None:
    """Add random ids until the record holds ``want`` (it holds ``have``)."""
    while have < want:
        n = min(FILL_CHUNK, want - have)
        store.insert([(str(uuid.uuid4()), have + i, stamp) for i in range(n)])
        have += n


def measure(store: SeenStore, batches: int, per_batch: int) -> dict[str, float]:
    """The publisher's lookup and insert, ``batches`` times; cost per id."""
    since = time.time() - 48 * 3600
    before, cpu0, wall0 = io_counters(), time.process_time(), time.perf_counter()
    for b in range(batches):
        ids = [str(uuid.uuid4()) for _ in range(per_batch)]
        store.seen_ids(ids, since)
        now = time.time()
        store.insert([(event_id, b, now) for event_id in ids])
    cpu, wall, after = time.process_time() - cpu0, time.perf_counter() - wall0, io_counters()
    ids_done = batches * per_batch
    return {
        "cpu_us_per_id": round(cpu / ids_done * 1e6, 1),
        "wall_us_per_id": round(wall / ids_done * 1e6, 1),
        "written_bytes_per_id": round((after["wchar"] - before["wchar"]) / ids_done),
        "read_bytes_per_id": round((after["rchar"] - before["rchar"]) / ids_done),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--sizes", default="0,500000,2000000",
                   help="ids in the record before each measurement (ascending); the first "
                        "is the baseline")
    p.add_argument("--batches", type=int, default=1500, help="batches measured at each size")
    p.add_argument("--per-batch", type=int, default=20, help="ids a batch looks up and adds")
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    if sizes != sorted(sizes):
        p.error("--sizes must be ascending")
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="relay-seen-bench-") as work:
        store = SeenStore(Path(work) / "seen.db").open()
        try:
            have = 0
            for size in sizes:
                fill(store, have, size, time.time() - 3600)
                have = size
                figures = measure(store, args.batches, args.per_batch)
                have += args.batches * args.per_batch
                figures["ids_before"] = size
                figures["file_mb"] = round(store.path.stat().st_size / 1e6, 1)
                results.append(figures)
                print(f"{size:>11,} ids: {figures}", flush=True)
        finally:
            store.close()
    base = results[0]
    for figures in results:
        figures["cpu_ratio"] = round(figures["cpu_us_per_id"] / base["cpu_us_per_id"], 2)
        figures["written_ratio"] = round(
            figures["written_bytes_per_id"] / max(1, base["written_bytes_per_id"]), 2)
        print(f"{figures['ids_before']:>11,} ids: CPU per id {figures['cpu_ratio']}x, "
              f"bytes written per id {figures['written_ratio']}x the baseline "
              f"({base['ids_before']:,} ids)")
    print(orjson.dumps({"config": vars(args), "results": results}).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
