"""``relay replay``: re-run stored raw postbacks through the current normalisers.

Reads raw postbacks from the local spool (or, with ``--from-kafka``, from the raw-archive
topic, for postbacks the spool has pruned), derives their events with the very code the
live pipeline runs (:class:`relay.pipeline.Normaliser`, :func:`relay.pipeline.build_batch`)
and publishes them, bypassing the dedup window on purpose. Event ids are the same as the
first time, so consumers that dedupe by id stay correct; every replayed record carries a
``relay_replay_id`` header and ``relay_original_received_at``.

A dead letter that now normalises, replayed to the normal topics, is marked published in
the spool (it leaves ``relay dead-letters``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson

from relay.pipeline import Derived, Normaliser, acknowledged, build_batch, raw_from_json
from relay.publish import KafkaPublisher, Publisher, Topics, ensure_topics, read_topic
from relay.schema import RawPostback, rfc3339
from relay.settings import Settings
from relay.sources import Source, build
from relay.spool import PUBLISHED, Outcome, Spool


@dataclass(frozen=True)
class Filters:
    """Which stored postbacks to replay."""

    since: float | None = None
    until: float | None = None
    sources: tuple[str, ...] = ()
    providers: tuple[str, ...] = ()
    raw_ids: tuple[int, ...] = ()
    dead_only: bool = False

    def matches(self, raw: RawPostback, sources: dict[str, Source], dead: bool | None = None
                ) -> bool:
        """Whether ``raw`` passes every filter (used for the Kafka raw topic)."""
        if self.since is not None and raw.received_at < self.since:
            return False
        if self.until is not None and raw.received_at >= self.until:
            return False
        if self.sources and raw.source not in self.sources:
            return False
        if self.raw_ids and raw.id not in self.raw_ids:
            return False
        if self.dead_only and dead is False:
            return False
        source = sources.get(raw.source)
        return not (self.providers and (source is None or
                                        source.provider.name not in self.providers))


@dataclass
class Summary:
    """What a replay did."""

    replay_id: str
    read: int = 0
    published: int = 0
    dead_lettered: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0
    events: list[dict[str, Any]] = field(default_factory=list)

    def line(self) -> str:
        """A one-line human summary."""
        rate = self.read / self.seconds if self.seconds else 0.0
        return (f"replay {self.replay_id}: read {self.read}, published {self.published}, "
                f"dead-lettered {self.dead_lettered}, skipped {self.skipped}, "
                f"failed {self.failed} in {self.seconds:.1f}s ({rate:,.0f} postbacks/s)")


class RateLimiter:
    """At most ``rate`` postbacks a second (None: unlimited), with a clock for tests."""

    def __init__(self, rate: float | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.clock = clock
        self.start = clock()
        self.count = 0

    def delay(self, n: int) -> float:
        """Seconds to wait before taking ``n`` more."""
        self.count += n
        if not self.rate:
            return 0.0
        due = self.start + self.count / self.rate
        return max(0.0, due - self.clock())


@contextlib.contextmanager
def gc_tuned() -> Iterator[None]:
    """Fewer garbage collections while replaying: replay makes millions of short-lived,
    acyclic objects, and the default thresholds collect every few hundred of them."""
    previous = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)
    try:
        yield
    finally:
        gc.set_threshold(*previous)
        gc.unfreeze()


def _chunks(items: Iterable[RawPostback], size: int) -> Iterator[list[RawPostback]]:
    chunk: list[RawPostback] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class Replayer:
    """Derives and publishes stored postbacks (see the module docstring)."""

    def __init__(self, settings: Settings, *, publisher: Publisher | None = None,
                 topic_prefix: str | None = None, dry_run: bool = False,
                 rate: float | None = None, batch_size: int = 1000,
                 out: TextIO | None = None) -> None:
        self.settings = settings
        self.sources: dict[str, Source] = dict(build(settings))
        self.normaliser = Normaliser(self.sources)
        self.topics = Topics(settings.kafka.topic_prefix if topic_prefix is None else topic_prefix)
        self.shadow = self.topics.prefix != settings.kafka.topic_prefix
        self.dry_run = dry_run
        self.publisher = publisher
        self.limiter = RateLimiter(rate)
        self.batch_size = batch_size
        self.out = out or sys.stdout
        self.summary = Summary(replay_id=str(uuid.uuid4()))
        self._replay_header = ("relay_replay_id", self.summary.replay_id.encode())

    def _headers(self, raw: RawPostback) -> tuple[tuple[str, bytes], ...]:
        return (self._replay_header,
                ("relay_original_received_at", rfc3339(raw.received_at).encode()))

    async def start(self) -> None:
        """Connect to Kafka and check the target topics (not in a dry run)."""
        if self.dry_run:
            return
        if self.publisher is None:
            cfg = self.settings.kafka
            await ensure_topics(cfg, [self.topics.for_kind(k) for k in
                                      ("delivery_receipt", "inbound_message", "consent",
                                       "dead_letter")])
            self.publisher = KafkaPublisher(cfg)
        await self.publisher.start()

    async def stop(self) -> None:
        """Flush and disconnect."""
        if self.publisher is not None and not self.dry_run:
            await self.publisher.stop()

    async def replay_batch(self, rows: Sequence[RawPostback]) -> list[Outcome]:
        """Derive and publish one batch; returns the outcomes Kafka acknowledged.

        Postbacks of sources no longer configured are skipped (counted, not published).
        """
        known = [raw for raw in rows if raw.source in self.sources]
        self.summary.read += len(rows)
        self.summary.skipped += len(rows) - len(known)
        derived = [self.normaliser.derive(raw) for raw in known]
        self.summary.dead_lettered += sum(1 for d in derived if d.error is not None)
        if self.dry_run:
            self._print(derived)
            return []
        batch = build_batch(derived, self.topics, skip=set(), archive=False,
                            headers_for=self._headers)
        assert self.publisher is not None
        results = await self.publisher.send_all(batch.records)
        done = acknowledged(batch, results)
        dead_topic = self.topics.for_kind("dead_letter")
        self.summary.failed += len(batch.outcomes) - len(done)
        self.summary.published += sum(1 for rec, res in zip(batch.records, results, strict=True)
                                      if res is None and rec.topic != dead_topic)
        return done

    def _print(self, derived: Sequence[Derived]) -> None:
        for d in derived:
            if d.error is not None:
                self.out.write(orjson.dumps({"raw_id": d.raw.id, "dead_letter": d.error}).decode())
                self.out.write("\n")
            for event in d.events:
                self.summary.published += 1
                self.out.write(event.to_json().decode() + "\n")

    async def run(self, rows: AsyncIterator[RawPostback] | Iterable[RawPostback],
                  spool: Spool | None = None, progress: Callable[[int], None] | None = None
                  ) -> Summary:
        """Replay every row; ``spool`` (when replaying from it) learns of fixed dead letters."""
        started = time.monotonic()
        with gc_tuned():
            await self._run(rows, spool, progress)
        self.summary.seconds = time.monotonic() - started
        return self.summary

    async def _run(self, rows: AsyncIterator[RawPostback] | Iterable[RawPostback],
                   spool: Spool | None, progress: Callable[[int], None] | None) -> None:
        async for chunk in _achunks(rows, self.batch_size):
            wait = self.limiter.delay(len(chunk))
            if wait:
                await asyncio.sleep(wait)
            done = await self.replay_batch(chunk)
            if spool is not None and not self.shadow and not self.dry_run:
                dead = spool.dead_among([o.raw_id for o in done if o.state == PUBLISHED])
                fixed = [Outcome(o.raw_id, PUBLISHED, o.event_ids) for o in done
                         if o.raw_id in dead]
                if fixed:
                    await spool.complete(fixed)
            if progress is not None:
                progress(len(chunk))


async def _achunks(rows: AsyncIterator[RawPostback] | Iterable[RawPostback], size: int
                   ) -> AsyncIterator[list[RawPostback]]:
    if not isinstance(rows, AsyncIterator):
        for block in _chunks(rows, size):
            yield block
            await asyncio.sleep(0)
        return
    chunk: list[RawPostback] = []
    async for raw in rows:
        chunk.append(raw)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


async def kafka_rows(settings: Settings, filters: Filters, sources: dict[str, Source]
                     ) -> AsyncIterator[RawPostback]:
    """Raw postbacks from the raw-archive topic that pass ``filters``."""
    topic = Topics(settings.kafka.topic_prefix).for_kind("raw")
    dead_ids: set[int] | None = None
    if filters.dead_only:
        dead_ids = set()
        async for value in read_topic(settings.kafka, Topics(settings.kafka.topic_prefix)
                                      .for_kind("dead_letter")):
            dead_ids.add(int(orjson.loads(value)["raw"]["raw_id"]))
    async for value in read_topic(settings.kafka, topic):
        raw = raw_from_json(orjson.loads(value))
        dead = None if dead_ids is None else raw.id in dead_ids
        if filters.matches(raw, sources, dead):
            yield raw


def spool_rows(spool: Spool, filters: Filters, sources: dict[str, Source]
               ) -> Iterator[RawPostback]:
    """Raw postbacks from the local spool that pass ``filters``."""
    names = list(filters.sources)
    if filters.providers:
        by_provider = [n for n, s in sources.items() if s.provider.name in filters.providers]
        names = [n for n in names if n in by_provider] if names else by_provider
        if not names:
            return iter(())
    return spool.select(since=filters.since, until=filters.until, sources=names,
                        raw_ids=filters.raw_ids, dead_only=filters.dead_only)


# --- the command ------------------------------------------------------------------------------


def _time(text: str) -> float:
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time") from None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def add_parser(sub: Any) -> None:
    """Register ``relay replay`` on the CLI's subparsers."""
    p = sub.add_parser("replay", help="re-run stored postbacks through the current normalisers",
                       description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--config", help="TOML config file (default: $RELAY_CONFIG)")
    p.add_argument("--since", type=_time, help="received at or after (ISO 8601, UTC default)")
    p.add_argument("--until", type=_time, help="received before (ISO 8601)")
    p.add_argument("--source", action="append", default=[], help="only this source (repeat)")
    p.add_argument("--provider", action="append", default=[], help="only this provider")
    p.add_argument("--raw-id", action="append", type=int, default=[], help="only this raw id")
    p.add_argument("--dead-letters", action="store_true", help="only dead-lettered postbacks")
    p.add_argument("--topic-prefix", help="publish under this prefix (e.g. 'replay.')")
    p.add_argument("--from-kafka", action="store_true",
                   help="read the raw-postbacks topic instead of the local spool")
    p.add_argument("--dry-run", action="store_true", help="print the events, publish nothing")
    p.add_argument("--rate", type=float, help="at most this many postbacks per second")
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_replay)


def cmd_replay(args: argparse.Namespace) -> int:
    """Run ``relay replay``."""
    from relay.cli import _settings

    settings = _settings(args.config)
    filters = Filters(args.since, args.until, tuple(args.source), tuple(args.provider),
                      tuple(args.raw_id), args.dead_letters)
    if not args.dry_run and not settings.kafka.configured:
        print("relay replay: [kafka] bootstrap_servers is not configured (use --dry-run)",
              file=sys.stderr)
        return 2
    summary = asyncio.run(_replay(settings, filters, args))
    print(summary.line(), file=sys.stderr)
    return 1 if summary.failed else 0


async def _replay(settings: Settings, filters: Filters, args: argparse.Namespace) -> Summary:
    from rich.progress import Progress

    replayer = Replayer(settings, topic_prefix=args.topic_prefix, dry_run=args.dry_run,
                        rate=args.rate, batch_size=args.batch_size)
    await replayer.start()
    spool = None if args.from_kafka else Spool(settings.spool.dir, settings.spool.max_bytes)
    try:
        rows: AsyncIterator[RawPostback] | Iterable[RawPostback]
        if spool is None:
            rows, total = kafka_rows(settings, filters, replayer.sources), None
        else:
            spool.open()
            rows, total = spool_rows(spool, filters, replayer.sources), spool.stats().total
        with Progress(disable=args.no_progress or args.dry_run, transient=True,
                      console=None) as progress:
            task = progress.add_task("replaying", total=total)
            return await replayer.run(rows, spool, lambda n: progress.advance(task, n))
    finally:
        await replayer.stop()
        if spool is not None:
            spool.close()
