"""The pipeline: derive events, build records, publish in order, mark done only when acknowledged."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import orjson
import pytest
from harness import validate
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.observability import Metrics
from relay.pipeline import (
    Normaliser,
    Pipeline,
    build_batch,
    event_record,
    match_keyword,
    raw_from_json,
    raw_to_json,
    with_consent,
)
from relay.providers import Provider, SourceContext
from relay.publish import Record, Topics
from relay.schema import AnyEvent, ConsentEvent, Event, Notice, Output, RawPostback
from relay.settings import Keywords, parse
from relay.sources import build
from relay.spool import DEAD, PENDING, PUBLISHED, Spool


class MemoryPublisher:
    """An in-memory stand-in for Kafka (the pipeline's logic is under test, not Kafka)."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.fail_topics: set[str] = set()
        self.started = 0

    async def start(self) -> None:
        self.started += 1

    async def send_all(self, records: Sequence[Record]) -> list[BaseException | None]:
        out: list[BaseException | None] = []
        for rec in records:
            if rec.topic in self.fail_topics:
                out.append(TimeoutError("broker away"))
            else:
                self.records.append(rec)
                out.append(None)
        return out

    async def stop(self) -> None:
        pass


SETTINGS = parse({"sources": [
    {"name": "bw", "provider": "bandwidth", "token": "env:T"},
    {"name": "bw2", "provider": "bandwidth", "token": "env:T",
     "keywords": {"opt_out": ["ALTO"], "opt_in": ["GO"], "help": ["SOS"]}},
]}, environ={"T": "tok"})
SOURCES = build(SETTINGS)
TOPICS = Topics("messaging.")


def item(n: int, kind: str = "message-delivered", text: str = "") -> dict[str, object]:
    """A Bandwidth callback item."""
    direction = "in" if kind == "message-received" else "out"
    return {"type": kind, "time": "2025-03-01T10:00:00Z", "to": "+15554443333",
            "message": {"id": f"m{n}", "from": "+15552221111", "to": ["+15554443333"],
                        "direction": direction, "text": text}}


def raw(body: object, source: str = "bw", raw_id: int = 1) -> RawPostback:
    """A raw postback with a JSON body."""
    return RawPostback(source, 1_740_823_300.0, "203.0.113.1", "POST", f"/hooks/{source}", "",
                       (("content-type", "application/json"),), json.dumps(body).encode(), raw_id)


def test_keywords_match_whole_trimmed_text_in_any_case() -> None:
    """Keywords match the whole trimmed message, case-insensitively, and nothing else."""
    kw = Keywords()
    assert match_keyword("  stop ", kw) == ("opt_out", "STOP")
    assert match_keyword("Arret", kw) == ("opt_out", "ARRET")
    assert match_keyword("unstop", kw) == ("opt_in", "UNSTOP")
    assert match_keyword("HELP", kw) == ("help", "HELP")
    assert match_keyword("please stop", kw) is None
    assert match_keyword("", kw) is None


def test_inbound_keyword_yields_consent_event() -> None:
    """An inbound STOP carries its keyword and adds an opt_out consent event keyed by the subscriber."""
    derived = Normaliser(SOURCES).derive(raw([item(1, "message-received", "Stop")]))
    message, consent = derived.events
    assert message.type == "inbound_message" and message.keyword == "opt_out"
    assert consent.type == "consent"
    assert (consent.action, consent.keyword, consent.subscriber, consent.number) == (
        "opt_out", "STOP", "+15552221111", "+15554443333")
    assert consent.key == "+15552221111"
    validate("consent", orjson.loads(consent.to_json()))


def test_keywords_are_configurable_per_source() -> None:
    """A source's own keyword lists replace the defaults."""
    normaliser = Normaliser(SOURCES)
    assert len(normaliser.derive(raw([item(1, "message-received", "STOP")], "bw2")).events) == 1
    events = normaliser.derive(raw([item(1, "message-received", "sos")], "bw2")).events
    assert [e.type for e in events] == ["inbound_message", "consent"]


def test_adapter_failures_become_dead_letters() -> None:
    """Unparseable bodies and unknown sources are reported as errors, never raised."""
    normaliser = Normaliser(SOURCES)
    bad = RawPostback("bw", 0.0, "", "POST", "/", "", (), b"\xff\x00garbage")
    assert normaliser.derive(bad).error is not None
    assert "not configured" in (normaliser.derive(raw([item(1)], "gone")).error or "")


def test_batch_skips_seen_and_repeated_ids() -> None:
    """Event ids already seen, or repeated within the batch, are not published again."""
    normaliser = Normaliser(SOURCES)
    first = normaliser.derive(raw([item(1), item(2)], raw_id=1))
    retry = normaliser.derive(raw([item(2)], raw_id=2))
    seen = {first.events[0].id}
    batch = build_batch([first, retry], TOPICS, skip=seen)
    topics = [r.topic for r in batch.records]
    assert topics.count("messaging.delivery-receipts.v1") == 1
    assert topics.count("messaging.raw-postbacks.v1") == 2
    assert batch.duplicates == {"bw": 2}
    assert [o.event_ids for o in batch.outcomes] == [(first.events[1].id,), ()]


def test_event_record_carries_key_value_and_cloudevents_headers_in_order() -> None:
    """An event's record: its topic and key, its JSON, then the CloudEvents headers and extras."""
    (event,) = Normaliser(SOURCES).derive(raw([item(7)])).events
    record = event_record(event, TOPICS, (("relay_replay_id", b"r1"),))
    assert (record.topic, record.key, record.value) == (
        "messaging.delivery-receipts.v1", b"m7", event.to_json())
    assert record.headers == (
        ("ce_specversion", b"1.0"), ("ce_id", event.id.encode()),
        ("ce_source", b"/relay/sources/bw"),
        ("ce_type", b"com.relay.messaging.delivery_receipt.v1"),
        ("ce_time", b"2025-03-01T10:00:00.000Z"), ("content-type", b"application/json"),
        ("relay_replay_id", b"r1"))


def test_raw_json_round_trip() -> None:
    """The raw-archive form of a postback reads back into the same postback."""
    original = RawPostback("bw", 1.5, "::1", "POST", "/hooks/bw", "a=1",
                           (("date", "x"),), b"\x00\xffbytes", 9)
    document = raw_to_json(original)
    validate("raw", document)
    assert raw_from_json(orjson.loads(orjson.dumps(document))) == original


async def _pipeline(tmp_path: Path, publisher: MemoryPublisher) -> tuple[Pipeline, Spool]:
    spool = Spool(tmp_path, 1 << 30).open()
    pipeline = Pipeline(spool, Normaliser(SOURCES), publisher, TOPICS, Metrics(),
                        dedup_window=3600)
    return pipeline, spool


async def test_step_publishes_in_order_and_marks_done(tmp_path: Path) -> None:
    """A step publishes pending rows in arrival order and marks them published."""
    publisher = MemoryPublisher()
    pipeline, spool = await _pipeline(tmp_path, publisher)
    try:
        for n in range(5):
            await spool.append(raw([item(n)]))
        assert await pipeline.step() is True
        keys = [r.key for r in publisher.records if r.topic.endswith("delivery-receipts.v1")]
        assert keys == [f"m{n}".encode() for n in range(5)]
        assert spool.stats().pending == 0
        assert await pipeline.step() is False
    finally:
        spool.close()


async def test_unacknowledged_rows_stay_pending(tmp_path: Path) -> None:
    """When Kafka does not acknowledge a row's records, the row stays pending for a retry."""
    publisher = MemoryPublisher()
    publisher.fail_topics.add("messaging.delivery-receipts.v1")
    pipeline, spool = await _pipeline(tmp_path, publisher)
    try:
        raw_id = await spool.append(raw([item(1)]))
        with pytest.raises(Exception, match="not acknowledged"):
            await pipeline.step()
        assert spool.state_of(raw_id) == PENDING
        publisher.fail_topics.clear()
        assert await pipeline.step() is True
        assert spool.state_of(raw_id) == PUBLISHED
    finally:
        spool.close()


async def test_retried_postback_is_published_once(tmp_path: Path) -> None:
    """The same postback stored three times publishes its event once; the dedup counter counts two."""
    publisher = MemoryPublisher()
    pipeline, spool = await _pipeline(tmp_path, publisher)
    try:
        await spool.append(raw([item(7)]))
        await pipeline.step()
        await spool.append(raw([item(7)]))
        await spool.append(raw([item(7)]))
        await pipeline.step()
        receipts = [r for r in publisher.records if r.topic.endswith("delivery-receipts.v1")]
        assert len(receipts) == 1
        assert pipeline.reporter.duplicates.labels("bw")._value.get() == 2  # type: ignore[attr-defined]
    finally:
        spool.close()


async def test_dead_letter_is_published_and_marked(tmp_path: Path) -> None:
    """An unparseable postback is published to the dead-letter topic with its error and kept as DEAD."""
    publisher = MemoryPublisher()
    pipeline, spool = await _pipeline(tmp_path, publisher)
    try:
        raw_id = await spool.append(RawPostback("bw", 1.0, "", "POST", "/hooks/bw", "", (),
                                                b"not json"))
        await pipeline.step()
        (dead,) = [r for r in publisher.records if r.topic.endswith("dead-letter.v1")]
        document = orjson.loads(dead.value)
        validate("dead_letter", document)
        assert "not JSON" in document["error"]
        assert spool.state_of(raw_id) == DEAD
        assert spool.dead_letters()[0].raw_id == raw_id
    finally:
        spool.close()


async def test_run_loop_wakes_on_commit(tmp_path: Path) -> None:
    """The running loop publishes a row soon after it is committed, without polling delay."""
    publisher = MemoryPublisher()
    pipeline, spool = await _pipeline(tmp_path, publisher)
    spool.on_commit = pipeline.wake
    task = asyncio.create_task(pipeline.run())
    try:
        await asyncio.sleep(0.05)
        await spool.append(raw([item(1)]))
        for _ in range(40):  # well under the 1 s idle sleep: only a wake-up makes it
            if spool.stats().pending == 0:
                break
            await asyncio.sleep(0.01)
        assert spool.stats().pending == 0
        assert publisher.started == 1
    finally:
        await pipeline.stop()
        task.cancel()
        spool.close()


async def test_partly_acknowledged_postback_does_not_republish_what_kafka_took(
        tmp_path: Path) -> None:
    """When Kafka takes some of a postback's events and not others, the retry sends only the rest."""
    publisher = MemoryPublisher()
    publisher.fail_topics.add("messaging.consent.v1")
    pipeline, spool = await _pipeline(tmp_path, publisher)
    try:
        raw_id = await spool.append(raw([item(1, "message-received", "STOP")]))
        with pytest.raises(Exception, match="not acknowledged"):
            await pipeline.step()
        assert spool.state_of(raw_id) == PENDING
        publisher.fail_topics.clear()
        await pipeline.step()
        topics = [r.topic for r in publisher.records]
        assert topics.count("messaging.inbound-messages.v1") == 1
        assert topics.count("messaging.consent.v1") == 1
        assert spool.state_of(raw_id) == PUBLISHED
    finally:
        spool.close()


class GatedPublisher(MemoryPublisher):
    """A Kafka stand-in whose first ``held`` batches wait until ``release`` is set."""

    def __init__(self, held: int = 1, fail_first: bool = False) -> None:
        super().__init__()
        self.held = held
        self.fail_first = fail_first
        self.release = asyncio.Event()
        self.calls = 0
        self.sent: list[list[bytes]] = []  # the keys of each batch, in the order sent

    async def send_all(self, records: Sequence[Record]) -> list[BaseException | None]:
        self.calls += 1
        call = self.calls
        self.sent.append([r.key for r in records if r.topic.endswith("receipts.v1")])
        if call <= self.held:
            await self.release.wait()
        if call == 1 and self.fail_first:
            return [TimeoutError("broker away") for _ in records]
        return await super().send_all(records)


@contextlib.asynccontextmanager
async def _running(tmp_path: Path, publisher: GatedPublisher, batch_size: int,
                   first: Sequence[RawPostback]) -> AsyncIterator[Spool]:
    """A running pipeline over a spool that holds ``first`` when it starts; stopped after."""
    spool = Spool(tmp_path, 1 << 30).open()
    for r in first:
        await spool.append(r)
    pipeline = Pipeline(spool, Normaliser(SOURCES), publisher, TOPICS, Metrics(),
                        dedup_window=3600, batch_size=batch_size)
    spool.on_commit = pipeline.wake
    task = asyncio.create_task(pipeline.run())
    try:
        yield spool
    finally:
        publisher.release.set()
        await pipeline.stop()
        task.cancel()
        spool.close()


async def _until(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    """Wait until ``condition()`` holds, or fail after ``seconds``."""
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


async def test_next_batch_is_sent_while_the_first_waits_for_kafka(tmp_path: Path) -> None:
    """Rows committed while a batch waits for Kafka's ack are sent without waiting for it."""
    publisher = GatedPublisher(held=1)
    async with _running(tmp_path, publisher, 2, [raw([item(0)]), raw([item(1)])]) as spool:
        await _until(lambda: publisher.calls == 1)
        await asyncio.gather(spool.append(raw([item(2)])), spool.append(raw([item(3)])))
        await _until(lambda: publisher.calls == 2)  # the first is still held
        assert publisher.sent == [[b"m0", b"m1"], [b"m2", b"m3"]]
        assert spool.stats().pending == 2
        publisher.release.set()
        await _until(lambda: spool.stats().pending == 0)


async def test_retry_in_a_later_batch_is_published_once_while_first_in_flight(
        tmp_path: Path) -> None:
    """A provider retry landing in the next batch, while the first is in flight, is a duplicate."""
    publisher = GatedPublisher(held=1)
    async with _running(tmp_path, publisher, 1, [raw([item(5)])]) as spool:
        await _until(lambda: publisher.calls == 1)
        await spool.append(raw([item(5)]))
        await _until(lambda: publisher.calls == 2)
        publisher.release.set()
        await _until(lambda: spool.stats().pending == 0)
        receipts = [r for r in publisher.records if r.topic.endswith("delivery-receipts.v1")]
        assert len(receipts) == 1


async def test_failed_batch_is_retried_after_later_batches_without_republishing_them(
        tmp_path: Path) -> None:
    """When the first batch fails and the second succeeds, the retry sends only the first's rows."""
    publisher = GatedPublisher(held=1, fail_first=True)
    async with _running(tmp_path, publisher, 1, [raw([item(1)])]) as spool:
        await _until(lambda: publisher.calls == 1)
        await spool.append(raw([item(2)]))
        await _until(lambda: publisher.calls == 2)
        publisher.release.set()
        await _until(lambda: spool.stats().pending == 0)
        receipts = [r.key for r in publisher.records if r.topic.endswith("delivery-receipts.v1")]
        assert sorted(receipts) == [b"m1", b"m2"]
        assert publisher.sent[2:] == [[b"m1"]]


# --- derive: the receipt fast path equals running every event through with_consent ---------


def reference_split(outputs: Sequence[Output], ctx: SourceContext
                    ) -> tuple[list[AnyEvent], list[Notice]]:
    """Normaliser.derive's loop as first written: every Event through with_consent."""
    events: list[AnyEvent] = []
    notices: list[Notice] = []
    for output in outputs:
        if isinstance(output, Notice):
            notices.append(output)
        elif isinstance(output, Event):
            events.extend(with_consent(output, ctx))
        else:
            events.append(output)
    return events, notices


def _event(n: int, inbound: bool, text: str | None) -> Event:
    """An event of the fake provider: a receipt, or an inbound message saying ``text``."""
    return Event(id=f"e{n}", type="inbound_message" if inbound else "delivery_receipt",
                 source="bw", provider="fake", channel="sms", message_id=f"m{n}",
                 status=None if inbound else "delivered", final=not inbound,
                 provider_status="x", from_="+15552221111", to="+15554443333",
                 occurred_at=None, received_at="2025-03-01T10:00:00.000Z", raw_id=1, text=text)


_TEXTS = st.one_of(st.none(), st.sampled_from(["STOP", " stop ", "start", "HELP", "ALTO", "sos",
                                               "hello", ""]), st.text(max_size=8))
_OUTPUTS = st.lists(st.one_of(
    st.builds(_event, st.integers(0, 9), st.booleans(), _TEXTS),
    st.builds(Notice, st.sampled_from(["N003", "E002"]), st.one_of(st.none(), st.text(max_size=5))),
    st.builds(lambda n: ConsentEvent(id=f"c{n}", action="opt_in", keyword="START", source="bw",
                                     provider="fake", channel="sms", subscriber="+1555",
                                     number=None, message_id=None, occurred_at=None,
                                     received_at="2025-03-01T10:00:00.000Z", raw_id=1),
              st.integers(0, 9)),
), max_size=5)


@settings(max_examples=300, deadline=None)
@given(_OUTPUTS, st.sampled_from(["bw", "bw2"]))
def test_derive_splits_outputs_as_with_consent_on_every_event(outputs: list[Output],
                                                              source: str) -> None:
    """derive's events and notices equal those of passing every event through with_consent."""
    fake = Provider(name="fake", normalise=lambda raw, ctx: list(outputs))
    sources = {source: dataclasses.replace(SOURCES[source], provider=fake)}
    derived = Normaliser(sources).derive(raw([], source))
    assert derived.error is None
    assert (derived.events, derived.notices) == reference_split(outputs, sources[source].context)


async def test_inline_reads_publish_like_threaded_reads(tmp_path: Path) -> None:
    """With reads on the loop (the publisher process's setting) a step publishes and dedupes alike."""
    publisher = MemoryPublisher()
    spool = Spool(tmp_path, 1 << 30).open()
    pipeline = Pipeline(spool, Normaliser(SOURCES), publisher, TOPICS, Metrics(),
                        dedup_window=3600, read_in_thread=False)
    try:
        await spool.append(raw([item(1), item(2)]))
        assert await pipeline.step() is True
        await spool.append(raw([item(2), item(3)]))
        assert await pipeline.step() is True
        keys = [r.key for r in publisher.records if r.topic.endswith("delivery-receipts.v1")]
        assert keys == [b"m1", b"m2", b"m3"]
        assert spool.stats().pending == 0
    finally:
        spool.close()


async def test_no_new_batch_starts_while_the_ack_path_holds(tmp_path: Path) -> None:
    """While ``hold`` asks for time, pending rows wait; once it is over they are published."""
    publisher = MemoryPublisher()
    held = [60.0]
    spool = Spool(tmp_path, 1 << 30).open()
    pipeline = Pipeline(spool, Normaliser(SOURCES), publisher, TOPICS, Metrics(),
                        dedup_window=3600, hold=lambda: held[0])
    spool.on_commit = pipeline.wake
    task = asyncio.create_task(pipeline.run())
    try:
        await spool.append(raw([item(1)]))
        await asyncio.sleep(0.3)  # six looks at the hold, none of which starts a batch
        assert publisher.records == [] and spool.stats().pending == 1
        held[0] = 0.0
        await _until(lambda: spool.stats().pending == 0)
        assert [r.key for r in publisher.records if r.topic.endswith("receipts.v1")] == [b"m1"]
    finally:
        await pipeline.stop()
        task.cancel()
        spool.close()


class TimedPublisher(MemoryPublisher):
    """A Kafka stand-in that notes when each batch was sent, its postbacks, and whether
    the pipeline was listening for wakes at that moment."""

    def __init__(self, listening: list[bool]) -> None:
        super().__init__()
        self.listening = listening
        self.batches: list[tuple[float, list[bytes], bool]] = []

    async def send_all(self, records: Sequence[Record]) -> list[BaseException | None]:
        keys = [r.key for r in records if r.topic.endswith("receipts.v1")]
        self.batches.append((time.monotonic(), keys, self.listening[-1]))
        return await super().send_all(records)


@contextlib.asynccontextmanager
async def _lingering(tmp_path: Path, linger: float, batch_size: int = 256,
                     first: Sequence[RawPostback] = ()
                     ) -> AsyncIterator[tuple[Spool, TimedPublisher, list[bool]]]:
    """A running pipeline with ``linger`` whose ``listen`` calls are recorded."""
    listening = [True]
    publisher = TimedPublisher(listening)
    spool = Spool(tmp_path, 1 << 30).open()
    for r in first:
        await spool.append(r)
    pipeline = Pipeline(spool, Normaliser(SOURCES), publisher, TOPICS, Metrics(),
                        dedup_window=3600, batch_size=batch_size, linger=linger,
                        listen=listening.append)
    spool.on_commit = pipeline.wake
    task = asyncio.create_task(pipeline.run())
    try:
        yield spool, publisher, listening
    finally:
        await pipeline.stop()
        task.cancel()
        spool.close()


async def test_rows_committed_within_the_linger_go_as_one_batch(tmp_path: Path) -> None:
    """The first postback goes at once; the next ones, committed one by one within the
    linger, wait for it to pass and go together in one batch."""
    async with _lingering(tmp_path, linger=0.3) as (spool, publisher, _):
        started = time.monotonic()
        await spool.append(raw([item(1)], raw_id=1))
        await _until(lambda: len(publisher.batches) == 1)
        assert publisher.batches[0][0] - started < 0.2  # no wait after a quiet spell
        for n in (2, 3, 4):
            await spool.append(raw([item(n)], raw_id=n))
            await asyncio.sleep(0.02)
        await _until(lambda: spool.stats().pending == 0)
        assert [keys for _, keys, _ in publisher.batches] == [[b"m1"], [b"m2", b"m3", b"m4"]]
        assert publisher.batches[1][0] - publisher.batches[0][0] >= 0.29


async def test_a_full_batch_is_followed_at_once_despite_the_linger(tmp_path: Path) -> None:
    """A backlog goes out in full batches back to back; only a batch that was not full
    makes the next one wait for the linger."""
    first = [raw([item(n)], raw_id=n) for n in range(1, 6)]
    async with _lingering(tmp_path, linger=30.0, batch_size=2, first=first) as (
            spool, publisher, _):
        await _until(lambda: spool.stats().pending == 0, seconds=3.0)
        assert [keys for _, keys, _ in publisher.batches] == [
            [b"m1", b"m2"], [b"m3", b"m4"], [b"m5"]]
        await spool.append(raw([item(6)], raw_id=6))  # after a batch of one: 30 s to wait
        await asyncio.sleep(0.3)
        assert spool.stats().pending == 1 and len(publisher.batches) == 3


async def test_wakes_are_wanted_only_while_waiting_for_rows(tmp_path: Path) -> None:
    """``listen`` is off while a batch is taken and sent, and on again once the loop waits."""
    async with _lingering(tmp_path, linger=0.0) as (spool, publisher, listening):
        await spool.append(raw([item(1)], raw_id=1))
        await _until(lambda: spool.stats().pending == 0)
        await _until(lambda: listening[-1] is True)
        assert [on for _, _, on in publisher.batches] == [False]
        assert False in listening
