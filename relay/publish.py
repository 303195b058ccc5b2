"""Kafka: the topics relay writes, the records it builds, and the one module using aiokafka.

:class:`Record` is what the pipeline hands to a :class:`Publisher`. :class:`KafkaPublisher`
is the real one: an idempotent aiokafka producer (``acks=all``, compression), which also
checks (and, when configured, creates) relay's topics.

Every record carries CloudEvents 1.0 binary-mode headers (``ce_specversion``, ``ce_id``,
``ce_source``, ``ce_type``, ``ce_time``, ``content-type``) and a JSON value.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from relay.errors import ConfigError, PublishError
from relay.settings import KafkaConfig

TOPIC_NAMES = {
    "delivery_receipt": "delivery-receipts.v1",
    "inbound_message": "inbound-messages.v1",
    "consent": "consent.v1",
    "dead_letter": "dead-letter.v1",
    "raw": "raw-postbacks.v1",
}


@dataclass(frozen=True, slots=True)
class Topics:
    """relay's topic names under a prefix (default ``messaging.``)."""

    prefix: str = "messaging."
    names: dict[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", {k: self.prefix + v for k, v in TOPIC_NAMES.items()})

    def for_kind(self, kind: str) -> str:
        """The topic of records of ``kind`` (an event type, ``dead_letter`` or ``raw``)."""
        return self.names[kind]

    def all(self) -> list[str]:
        """Every topic relay writes to."""
        return [self.prefix + name for name in TOPIC_NAMES.values()]


class Record(NamedTuple):
    """One Kafka record (a named tuple: replay builds millions)."""

    topic: str
    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()


class Publisher(Protocol):
    """Sends records and reports, per record, whether Kafka acknowledged it."""

    async def start(self) -> None: ...

    async def send_all(self, records: Sequence[Record]) -> list[BaseException | None]: ...

    async def stop(self) -> None: ...


def _ssl_context(cfg: KafkaConfig) -> ssl.SSLContext | None:
    if not cfg.security_protocol.endswith("SSL"):
        return None
    context = ssl.create_default_context(cafile=cfg.ssl_cafile)
    if cfg.ssl_certfile:
        context.load_cert_chain(cfg.ssl_certfile, cfg.ssl_keyfile)
    return context


def client_options(cfg: KafkaConfig) -> dict[str, Any]:
    """Connection options shared by the producer and the admin client."""
    options: dict[str, Any] = {
        "bootstrap_servers": list(cfg.bootstrap_servers),
        "client_id": cfg.client_id,
        "security_protocol": cfg.security_protocol,
        "request_timeout_ms": cfg.request_timeout_ms,
    }
    context = _ssl_context(cfg)
    if context is not None:
        options["ssl_context"] = context
    if cfg.sasl_mechanism:
        options["sasl_mechanism"] = cfg.sasl_mechanism
        options["sasl_plain_username"] = cfg.sasl_username
        options["sasl_plain_password"] = cfg.sasl_password.reveal() if cfg.sasl_password else None
    return options


class KafkaPublisher:
    """An idempotent aiokafka producer behind :class:`Publisher`."""

    def __init__(self, cfg: KafkaConfig) -> None:
        self.cfg = cfg
        self._producer: Any = None

    async def start(self) -> None:
        """Connect; raises :class:`PublishError` if the cluster cannot be reached."""
        compression = None if self.cfg.compression == "none" else self.cfg.compression
        producer = AIOKafkaProducer(
            **client_options(self.cfg),
            acks="all",
            enable_idempotence=True,
            compression_type=compression,
            linger_ms=self.cfg.linger_ms,
            max_batch_size=1 << 20,
        )
        try:
            await producer.start()
        except (KafkaError, OSError) as exc:
            await producer.stop()
            raise PublishError(f"cannot connect to Kafka: {exc}") from exc
        self._producer = producer

    async def send_all(self, records: Sequence[Record]) -> list[BaseException | None]:
        """Send every record; one result per record (None once acknowledged)."""
        if self._producer is None:
            raise PublishError("producer is not started")
        futures = []
        for rec in records:
            try:
                futures.append(await self._producer.send(
                    rec.topic, rec.value, key=rec.key, headers=list(rec.headers)))
            except (KafkaError, OSError) as exc:
                fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
                fut.set_exception(exc)
                futures.append(fut)
        results = await asyncio.gather(*futures, return_exceptions=True)
        return [r if isinstance(r, BaseException) else None for r in results]

    async def stop(self) -> None:
        """Flush what the producer holds and disconnect."""
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await producer.stop()


async def ensure_topics(cfg: KafkaConfig, topics: Sequence[str]) -> list[str]:
    """Check that ``topics`` exist, creating missing ones if ``cfg.create_topics``.

    Returns the topics created. Raises :class:`ConfigError` naming a missing topic when
    creation is off, :class:`PublishError` when the cluster cannot be reached.
    """
    admin = AIOKafkaAdminClient(**client_options(cfg))
    try:
        await admin.start()
        existing = set(await admin.list_topics())
        missing = [t for t in topics if t not in existing]
        if missing and not cfg.create_topics:
            raise ConfigError("kafka.create_topics", f"topic {missing[0]} does not exist "
                              "(create it, or set kafka.create_topics = true)")
        if missing:
            new = [NewTopic(t, cfg.partitions, cfg.replication_factor) for t in missing]
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(new)
        return missing
    except (KafkaError, OSError) as exc:
        raise PublishError(f"cannot reach Kafka to check topics: {exc}") from exc
    finally:
        await admin.close()


async def read_topic(cfg: KafkaConfig, topic: str) -> AsyncIterator[bytes]:
    """Every record value of ``topic`` from the beginning up to its end at call time."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(**client_options(cfg), enable_auto_commit=False,
                                auto_offset_reset="earliest", group_id=None)
    try:
        await consumer.start()
    except (KafkaError, OSError) as exc:
        raise PublishError(f"cannot connect to Kafka: {exc}") from exc
    try:
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic)
        if not parts:
            raise PublishError(f"topic {topic} does not exist")
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        await consumer.seek_to_beginning(*tps)
        remaining = {tp for tp in tps if ends[tp] > 0}
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=1000)
            for tp, records in batch.items():
                for rec in records:
                    if rec.offset < ends[tp]:
                        yield rec.value
                if records and records[-1].offset >= ends[tp] - 1:
                    remaining.discard(tp)
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()
