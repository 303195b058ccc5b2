"""``relay`` with bench-only knobs, for ``bench/ack_bench.py``.

    python bench/relay_wrapper.py [--profile OUT.prof] [--switch-interval S] -- serve ...

``--profile``: cProfile, off at start; SIGUSR1 turns it on, SIGUSR2 off (the bench brackets
relay's phases with them); the stats go to OUT.prof when relay exits. cProfile sees the
event-loop thread only: the spool checkpoint thread and ``asyncio.to_thread`` workers are
not in it (the bench reports their CPU time from /proc).

``--switch-interval``: ``sys.setswitchinterval`` before relay starts, an experiment on how
long relay's threads wait for the GIL (CPython's default is 5 ms).
"""

from __future__ import annotations

import argparse
import cProfile
import signal
import sys
from types import FrameType


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--profile")
    p.add_argument("--switch-interval", type=float)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    args = p.parse_args(argv[1:])
    rest = args.rest[1:] if args.rest[:1] == ["--"] else args.rest
    if args.switch_interval:
        sys.setswitchinterval(args.switch_interval)
    from relay.cli import main as relay_main

    if not args.profile:
        return relay_main(rest)
    profiler = cProfile.Profile()

    def on(signum: int, frame: FrameType | None) -> None:
        profiler.enable()

    def off(signum: int, frame: FrameType | None) -> None:
        profiler.disable()

    signal.signal(signal.SIGUSR1, on)
    signal.signal(signal.SIGUSR2, off)
    try:
        return relay_main(rest)
    finally:
        profiler.disable()
        profiler.dump_stats(args.profile)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
