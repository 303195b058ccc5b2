"""After the ack: spooled raw postbacks -> normalised events -> Kafka -> marked done.

One path serves both the live relay and ``relay replay``:

* :class:`Normaliser` derives everything a raw postback yields (events, consent events,
  notices, or the reason it must be dead-lettered). It never raises.
* :func:`build_batch` turns derivations into Kafka records (with CloudEvents headers),
  skipping event ids already published inside the dedup window.
* :class:`Pipeline` is the background task: it reads pending rows in order, publishes
  their records (several batches in flight), and marks a row done only when Kafka
  acknowledged all of them. Kafka down or slow: rows stay pending and the loop retries
  with backoff.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Protocol, TypeVar

import orjson

from relay.errors import ConfigError, NormalisationError, PublishError, SpoolUnavailable
from relay.observability import get_logger
from relay.providers import SourceContext
from relay.publish import Publisher, Record, Topics
from relay.schema import (
    AnyEvent,
    ConsentAction,
    ConsentEvent,
    Event,
    Notice,
    RawPostback,
    event_id,
    rfc3339,
)
from relay.settings import Keywords
from relay.sources import Source
from relay.spool import DEAD, PENDING, PUBLISHED, Outcome

T = TypeVar("T")
log = get_logger("relay.pipeline")
_HOLD_STEP = 0.05  # s between looks at the ack path's hold (or a stop) while it lasts

CE_SPECVERSION = b"1.0"
CE_TYPES = {
    "delivery_receipt": b"com.relay.messaging.delivery_receipt.v1",
    "inbound_message": b"com.relay.messaging.inbound_message.v1",
    "consent": b"com.relay.messaging.consent.v1",
    "dead_letter": b"com.relay.messaging.dead_letter.v1",
    "raw": b"com.relay.messaging.raw_postback.v1",
}
JSON = b"application/json"
_SPECVERSION_HEADER = ("ce_specversion", CE_SPECVERSION)
_CONTENT_TYPE_HEADER = ("content-type", JSON)


# --- deriving events -----------------------------------------------------------------------


def match_keyword(message: str | None, keywords: Keywords) -> tuple[ConsentAction, str] | None:
    """The consent action of a message that is exactly a keyword (trimmed, any case)."""
    if not message:
        return None
    word = message.strip().upper()
    for action, words in (("opt_out", keywords.opt_out), ("opt_in", keywords.opt_in),
                          ("help", keywords.help)):
        if word in words:
            return action, word  # type: ignore[return-value]
    return None


def with_consent(event: Event, ctx: SourceContext) -> list[AnyEvent]:
    """An inbound message, plus its consent event when the text is a keyword."""
    found = match_keyword(event.text, ctx.keywords) if event.type == "inbound_message" else None
    if found is None:
        return [event]
    action, word = found
    consent = ConsentEvent(
        id=event_id("consent", event.id), action=action, keyword=word, source=event.source,
        provider=event.provider, channel=event.channel, subscriber=event.from_,
        number=event.to, message_id=event.message_id, occurred_at=event.occurred_at,
        received_at=event.received_at, raw_id=event.raw_id,
    )
    return [dataclasses.replace(event, keyword=action), consent]


@dataclass(slots=True)
class Derived:
    """Everything one raw postback yields.

    Treated as immutable; not frozen only because a frozen dataclass costs three times as
    much to build, and replay builds one per postback.
    """

    raw: RawPostback
    provider: str
    events: list[AnyEvent] = field(default_factory=list)
    notices: list[Notice] = field(default_factory=list)
    error: str | None = None


class Normaliser:
    """Runs each raw postback through its source's provider adapter."""

    def __init__(self, sources: Mapping[str, Source]) -> None:
        self.sources = sources

    def derive(self, raw: RawPostback) -> Derived:
        """What ``raw`` yields; an adapter failure becomes ``error`` (a dead letter)."""
        source = self.sources.get(raw.source)
        if source is None:
            return Derived(raw, "", error=f"source {raw.source!r} is not configured")
        provider = source.provider.name
        try:
            output = source.provider.normalise(raw, source.context)
        except NormalisationError as exc:
            return Derived(raw, provider, error=str(exc))
        except Exception as exc:  # an adapter bug must not stop the pipeline
            return Derived(raw, provider, error=f"adapter error {type(exc).__name__}: {exc}")
        events: list[AnyEvent] = []
        notices: list[Notice] = []
        for item in output:
            if isinstance(item, Event) and item.type == "inbound_message":
                events.extend(with_consent(item, source.context))
            elif isinstance(item, Notice):
                notices.append(item)
            else:  # a receipt (never a keyword) or a consent event
                events.append(item)
        return Derived(raw, provider, events, notices)


# --- records ---------------------------------------------------------------------------------


def raw_to_json(raw: RawPostback) -> dict[str, Any]:
    """A raw postback as JSON (body base64): the raw archive and dead-letter form."""
    return {
        "raw_id": raw.id,
        "source": raw.source,
        "received_at": rfc3339(raw.received_at),
        "received_at_unix": raw.received_at,
        "remote_addr": raw.remote_addr,
        "method": raw.method,
        "path": raw.path,
        "query": raw.query,
        "headers": [list(h) for h in raw.headers],
        "body_base64": base64.b64encode(raw.body).decode(),
    }


def raw_from_json(data: Mapping[str, Any]) -> RawPostback:
    """The inverse of :func:`raw_to_json` (replay from the raw topic)."""
    return RawPostback(
        id=int(data["raw_id"]), source=str(data["source"]),
        received_at=float(data["received_at_unix"]), remote_addr=str(data["remote_addr"]),
        method=str(data["method"]), path=str(data["path"]), query=str(data["query"]),
        headers=tuple((str(k), str(v)) for k, v in data["headers"]),
        body=base64.b64decode(data["body_base64"]),
    )


@lru_cache(maxsize=1024)
def _ce_source(source: str) -> tuple[str, bytes]:
    return ("ce_source", f"/relay/sources/{source}".encode())


def _headers(ce_id: str, ce_type: bytes, source: str, ce_time: str,
             extra: Sequence[tuple[str, bytes]]) -> tuple[tuple[str, bytes], ...]:
    return (
        _SPECVERSION_HEADER,
        ("ce_id", ce_id.encode()),
        _ce_source(source),
        ("ce_type", ce_type),
        ("ce_time", ce_time.encode()),
        _CONTENT_TYPE_HEADER,
        *extra,
    )


def event_record(event: AnyEvent, topics: Topics,
                 extra: Sequence[tuple[str, bytes]] = ()) -> Record:
    """The Kafka record of one event."""
    kind = event.type
    headers = _headers(event.id, CE_TYPES[kind], event.source,
                       event.occurred_at or event.received_at, extra)
    # Positional (topic, key, value, headers): keywords double the cost of a NamedTuple.
    return Record(topics.for_kind(kind), event.key.encode(), event.to_json(), headers)


def raw_record(raw: RawPostback, topics: Topics) -> Record:
    """The raw-archive record of a postback, keyed by source."""
    return Record(
        topic=topics.for_kind("raw"), key=raw.source.encode(),
        value=orjson.dumps(raw_to_json(raw)),
        headers=_headers(f"raw-{raw.source}-{raw.id}", CE_TYPES["raw"], raw.source,
                         rfc3339(raw.received_at), ()),
    )


def dead_letter_record(derived: Derived, topics: Topics,
                       extra: Sequence[tuple[str, bytes]] = ()) -> Record:
    """The dead-letter record of a postback that could not be normalised."""
    raw = derived.raw
    value = {"error": derived.error, "provider": derived.provider, "raw": raw_to_json(raw)}
    return Record(
        topic=topics.for_kind("dead_letter"), key=raw.source.encode(), value=orjson.dumps(value),
        headers=_headers(f"dead-{raw.source}-{raw.id}", CE_TYPES["dead_letter"], raw.source,
                         rfc3339(raw.received_at), extra),
    )


@dataclass
class Batch:
    """Records of several raw postbacks and which postback each record belongs to."""

    records: list[Record] = field(default_factory=list)
    owner: list[int] = field(default_factory=list)
    event_ids: list[str | None] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)
    duplicates: dict[str, int] = field(default_factory=dict)

    def add(self, record: Record, index: int, event: str | None = None) -> None:
        """Add a record owned by outcome ``index`` (carrying event id ``event``, if any)."""
        self.records.append(record)
        self.owner.append(index)
        self.event_ids.append(event)


HeadersFor = Callable[[RawPostback], Sequence[tuple[str, bytes]]]


def build_batch(derivations: Iterable[Derived], topics: Topics, *, skip: set[str],
                archive: bool = True, headers_for: HeadersFor | None = None) -> Batch:
    """Records for many derivations; event ids in ``skip`` (and repeats) are left out.

    ``archive`` adds the raw-archive record (the live path); replay leaves it out and
    passes ``headers_for``, the extra headers of each postback's records.
    """
    batch = Batch()
    taken = set(skip)
    for derived in derivations:
        index = len(batch.outcomes)
        raw = derived.raw
        extra = headers_for(raw) if headers_for is not None else ()
        if archive:
            batch.add(raw_record(raw, topics), index)
        if derived.error is not None:
            batch.add(dead_letter_record(derived, topics, extra), index)
            batch.outcomes.append(Outcome(raw.id, DEAD, (), derived.error))
            continue
        ids = []
        for event in derived.events:
            ident = event.id
            if ident in taken:
                batch.duplicates[raw.source] = batch.duplicates.get(raw.source, 0) + 1
                continue
            taken.add(ident)
            ids.append(ident)
            batch.add(event_record(event, topics, extra), index, ident)
        batch.outcomes.append(Outcome(raw.id, PUBLISHED, tuple(ids)))
    return batch


def acknowledged(batch: Batch, results: Sequence[BaseException | None]) -> list[Outcome]:
    """The outcomes whose every record Kafka acknowledged."""
    failed = {batch.owner[i] for i, r in enumerate(results) if r is not None}
    return [o for i, o in enumerate(batch.outcomes) if i not in failed]


def partly_acknowledged(batch: Batch, results: Sequence[BaseException | None]
                        ) -> list[Outcome]:
    """For postbacks only some of whose records Kafka took: the event ids it did take.

    They are remembered (row still pending) so the retry does not publish them again.
    """
    failed = {batch.owner[i] for i, r in enumerate(results) if r is not None}
    taken: dict[int, list[str]] = {}
    for i, result in enumerate(results):
        event = batch.event_ids[i]
        if result is None and event is not None and batch.owner[i] in failed:
            taken.setdefault(batch.owner[i], []).append(event)
    return [Outcome(batch.outcomes[i].raw_id, PENDING, tuple(ids)) for i, ids in taken.items()]


# --- the background task --------------------------------------------------------------------


class Store(Protocol):
    """What the pipeline needs of the spool (a :class:`~relay.spool.Spool`, or the
    publisher process's view of the parent's spool)."""

    def pending(self, after: int = 0, limit: int = 500) -> list[RawPostback]: ...

    def seen_ids(self, event_ids: Iterable[str], since: float) -> set[str]: ...

    async def complete(self, outcomes: Sequence[Outcome], now: float | None = None) -> None: ...


class Reporter(Protocol):
    """Where the pipeline reports what it did (metrics; the worker forwards them)."""

    def published(self, topic: str, count: int) -> None: ...

    def duplicated(self, source: str, count: int) -> None: ...

    def dead_lettered(self, source: str) -> None: ...

    def noticed(self, source: str, code: str) -> None: ...

    def publish_failed(self) -> None: ...

    def kafka(self, connected: bool, problem: str | None) -> None: ...


@dataclass
class Backoff:
    """Exponential backoff with jitter, reset on success."""

    base: float = 0.2
    cap: float = 10.0
    attempt: int = 0

    def next(self) -> float:
        """The next delay."""
        delay: float = min(self.cap, self.base * (2**self.attempt))
        self.attempt += 1
        return delay * (0.5 + random.random() / 2)

    def reset(self) -> None:
        """Back to the first delay."""
        self.attempt = 0


class Pipeline:
    """Publishes spooled postbacks, in order, until stopped.

    Up to ``max_in_flight`` batches are on their way at once: the next batch is read,
    derived and handed to the producer while earlier ones wait for Kafka's
    acknowledgement and for their completion to be committed, so a postback never waits
    for a whole earlier round trip before it is sent. A cursor (the last raw id taken)
    keeps batches disjoint; the event ids of batches in flight count as seen, so a
    provider's retry in a later batch is still published once. When a batch fails, the
    others are let finish, the cursor goes back to the start and the loop backs off: the
    rows still pending are read again.

    ``linger`` (s) spaces the batches out while the backlog is small: a new batch starts
    at least ``linger`` after the previous one began, unless that one was full (a backlog
    goes out back to back), so at a steady trickle the rows committed meanwhile go as one
    batch: one round trip to Kafka, one ``seen.db`` write and one completion, instead of
    one per commit. The first postback after a quiet spell goes at once. ``listen(on)``,
    when given, is told when the loop wants :meth:`wake` calls: only while it waits for
    new rows (the publisher process stops watching its wake pipe the rest of the time,
    which would otherwise wake it at every commit).
    """

    def __init__(self, spool: Store, normaliser: Normaliser, publisher: Publisher,
                 topics: Topics, reporter: Reporter, *, dedup_window: float,
                 ensure: Callable[[], Any] | None = None, batch_size: int = 256,
                 max_in_flight: int = 4, read_in_thread: bool = True,
                 hold: Callable[[], float] | None = None, linger: float = 0.0,
                 listen: Callable[[bool], None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.spool = spool
        self.normaliser = normaliser
        self.hold = hold  # seconds the ack path asks it to wait before a new batch
        self.publisher = publisher
        self.topics = topics
        self.reporter = reporter
        self.dedup_window = dedup_window
        self.ensure = ensure
        self.batch_size = batch_size
        self.max_in_flight = max_in_flight
        self.linger = linger
        self.listen = listen
        self.read_in_thread = read_in_thread
        self.clock = clock
        self.connected = False
        self.fatal: str | None = None
        self.last_error: str | None = None
        self._wake = asyncio.Event()
        self._stopping = False
        self._stopped = asyncio.Event()  # set while the loop is not running
        self._stopped.set()
        self._cursor = 0  # the last raw id taken into a batch
        self._started = float("-inf")  # time.monotonic() when the last batch was taken
        self._full = False  # whether that batch was full
        self._in_flight: dict[asyncio.Task[None], frozenset[str]] = {}

    def wake(self) -> None:
        """Tell the loop new rows were committed (called on the event loop)."""
        self._wake.set()

    def _listening(self, on: bool) -> None:
        if self.listen is not None:
            self.listen(on)

    async def _sleep(self, seconds: float) -> None:
        self._listening(True)
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    async def _connect(self) -> bool:
        try:
            if self.ensure is not None:
                await self.ensure()
            await self.publisher.start()
        except ConfigError as exc:  # a topic is missing and may not be created
            self.fatal = str(exc)
            log.error("kafka_topics_missing", problem=self.fatal)
            self.reporter.kafka(False, self.fatal)
            return False
        except PublishError as exc:
            self.last_error = str(exc)
            log.warning("kafka_unreachable", problem=str(exc))
            self.reporter.kafka(False, self.last_error)
            return False
        self.connected, self.fatal, self.last_error = True, None, None
        self.reporter.kafka(True, None)
        log.info("kafka_connected")
        return True

    async def run(self) -> None:
        """Loop until :meth:`stop`; never raises for Kafka trouble."""
        self._stopped.clear()
        try:
            await self._loop()
        finally:
            for task in self._in_flight:
                task.cancel()
            self._stopped.set()

    async def _loop(self) -> None:
        backoff = Backoff()
        while not self._stopping:
            if not self.connected and not await self._connect():
                await self._sleep(backoff.next() if self.fatal is None else 30.0)
                continue
            try:
                await self._advance()
            except (PublishError, SpoolUnavailable) as exc:
                self.last_error = str(exc)
                self.reporter.publish_failed()
                log.warning("publish_failed", problem=str(exc))
            except Exception as exc:  # a bug must not stop publishing for good
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("pipeline_error", problem=self.last_error)
            else:
                backoff.reset()
                continue
            await self._drain()
            self._cursor = 0  # read again whatever is still pending
            await self._sleep(backoff.next())
        await self._drain()

    async def _advance(self) -> None:
        """Start the next batch, or wait: for room, for new rows, while the ack path holds
        publishing (``hold``: see :class:`relay.worker.BurstGate`), or 1 s when idle.

        Raises the error of a batch that failed.
        """
        self._collect()
        if len(self._in_flight) >= self.max_in_flight:
            await asyncio.wait(self._in_flight, return_when=asyncio.FIRST_COMPLETED)
            return
        held = self.hold() if self.hold is not None else 0.0
        if held > 0:  # the ack path is busy: batches in flight finish, no new one starts
            await asyncio.sleep(min(held, _HOLD_STEP))
            return
        if await self._linger():
            return
        work = await self._take()
        if work is None:
            await self._wait(None if self._in_flight else 1.0)
            return
        derivations, batch = work
        task = asyncio.create_task(self._publish(derivations, batch), name="relay-batch")
        self._in_flight[task] = frozenset(i for i in batch.event_ids if i is not None)

    async def _linger(self) -> bool:
        """Wait out what is left of ``linger`` since the last batch began (in steps, so a
        stop is not kept waiting by a long one), unless that batch was full; True if it
        waited."""
        if self.linger <= 0 or self._full:
            return False
        due = self._started + self.linger - time.monotonic()
        if due <= 0:
            return False
        await asyncio.sleep(min(due, _HOLD_STEP))
        return True

    def _collect(self) -> None:
        """Forget finished batches; raise the first error among them."""
        error: BaseException | None = None
        for task in [t for t in self._in_flight if t.done()]:
            del self._in_flight[task]
            if not task.cancelled() and task.exception() is not None and error is None:
                error = task.exception()
        if error is not None:
            raise error

    async def _wait(self, idle: float | None) -> None:
        """Until new rows are committed or a batch finishes (or ``idle`` s pass)."""
        self._listening(True)
        if self._wake.is_set():
            return
        waker = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait([waker, *self._in_flight], timeout=idle,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            waker.cancel()

    async def _drain(self) -> None:
        """Let every batch in flight finish (their errors were or will be retried)."""
        while self._in_flight:
            await asyncio.wait(self._in_flight)
            try:
                self._collect()
            except Exception as exc:  # its rows stay pending: read again after the drain
                log.warning("publish_failed", problem=str(exc))

    async def _take(self) -> tuple[list[Derived], Batch] | None:
        """Read and derive the next pending rows after the cursor; None if there are none."""
        self._listening(False)
        self._wake.clear()
        rows = await self._read(self.spool.pending, self._cursor, self.batch_size)
        if not rows:
            return None
        self._started, self._full = time.monotonic(), len(rows) >= self.batch_size
        derivations = []
        for i, raw in enumerate(rows):
            derivations.append(self.normaliser.derive(raw))
            if i % 64 == 63:
                await asyncio.sleep(0)  # let acks in between
        ids = [e.id for d in derivations for e in d.events]
        since = self.clock() - self.dedup_window
        seen = await self._read(self.spool.seen_ids, ids, since) if ids else set()
        for taken in self._in_flight.values():
            seen.update(taken)
        self._cursor = rows[-1].id
        return derivations, build_batch(derivations, self.topics, skip=seen)

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        """A spool read: in a thread when this loop also serves acks, else inline (the
        publisher process: a thread hop costs more than the indexed read it saves)."""
        if self.read_in_thread:
            return await asyncio.to_thread(fn, *args)
        return fn(*args)

    async def _publish(self, derivations: list[Derived], batch: Batch) -> None:
        """Send a batch, wait for Kafka, record what it acknowledged; raise if not all."""
        results = await self.publisher.send_all(batch.records)
        done = acknowledged(batch, results)
        partial = partly_acknowledged(batch, results)
        if done or partial:
            await self.spool.complete([*done, *partial], self.clock())
        self._account(derivations, batch, results, done)
        if len(done) < len(batch.outcomes):
            first = next(r for r in results if r is not None)
            raise PublishError(f"{len(batch.outcomes) - len(done)} postbacks not acknowledged: "
                               f"{type(first).__name__}: {first}")

    async def step(self) -> bool:
        """Publish one batch of pending rows and wait for it; False when there was nothing
        to do. (The loop runs batches concurrently; this is the one-at-a-time form.)"""
        work = await self._take()
        if work is None:
            return False
        try:
            await self._publish(*work)
        except BaseException:
            self._cursor = 0
            raise
        return True

    def _account(self, derivations: Sequence[Derived], batch: Batch,
                 results: Sequence[BaseException | None], done: Sequence[Outcome]) -> None:
        done_ids = {o.raw_id for o in done}
        published: dict[str, int] = {}
        for rec, result in zip(batch.records, results, strict=True):
            if result is None:
                published[rec.topic] = published.get(rec.topic, 0) + 1
        for topic, count in published.items():
            self.reporter.published(topic, count)
        for source, count in batch.duplicates.items():
            self.reporter.duplicated(source, count)
        for d in derivations:
            if d.raw.id not in done_ids:
                continue
            for notice in d.notices:
                self.reporter.noticed(d.raw.source, notice.code)
                log.info("provider_notice", source=d.raw.source, raw_id=d.raw.id,
                         code=notice.code, detail=notice.detail)
            if d.error is not None:
                self.reporter.dead_lettered(d.raw.source)
                log.warning("dead_lettered", source=d.raw.source, raw_id=d.raw.id, error=d.error)

    async def stop(self, grace: float = 10.0) -> None:
        """Finish the batches in hand (up to ``grace`` s), then flush and close the producer.

        The caller cancels the task running :meth:`run` afterwards.
        """
        self._stopping = True
        self._wake.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopped.wait(), grace)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.publisher.stop(), grace)
        self.connected = False
        self.reporter.kafka(False, "stopped")
