"""Tests of the test-suite Kafka infrastructure (tests/kafka_broker.py, tests/conftest.py)."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Callable

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError
from kafka_broker import KafkaBroker

pytestmark = pytest.mark.kafka


async def _create_topic(bootstrap: str) -> str:
    topic = f"test-{uuid.uuid4().hex[:12]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name=topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()
    return topic


async def _produce(bootstrap: str, topic: str, key: bytes, value: bytes) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


async def _consume_one(bootstrap: str, topic: str) -> tuple[bytes | None, bytes | None]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"g-{uuid.uuid4().hex[:8]}",  # exercises the group coordinator / offsets topic
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        async with asyncio.timeout(30):
            record = await consumer.getone()
        await consumer.commit()
    finally:
        await consumer.stop()
    return record.key, record.value


async def test_session_broker_round_trip(kafka_bootstrap: str) -> None:
    """The session broker stores a produced record and a consumer group reads it back."""
    topic = await _create_topic(kafka_bootstrap)
    await _produce(kafka_bootstrap, topic, b"k1", b"hello")
    assert await _consume_one(kafka_bootstrap, topic) == (b"k1", b"hello")


async def test_dedicated_broker_survives_restart(
    kafka_broker_factory: Callable[..., KafkaBroker],
) -> None:
    """A dedicated broker keeps its address and its data across restart()."""
    broker = await asyncio.to_thread(kafka_broker_factory)
    bootstrap = broker.bootstrap
    first_pid = broker.pid
    topic = await _create_topic(bootstrap)
    await _produce(bootstrap, topic, b"k", b"durable")

    await asyncio.to_thread(broker.restart)

    assert broker.running
    assert broker.bootstrap == bootstrap
    assert broker.pid != first_pid
    assert await _consume_one(bootstrap, topic) == (b"k", b"durable")


async def test_stop_ends_the_broker_process(
    kafka_broker_factory: Callable[..., KafkaBroker],
) -> None:
    """stop() ends the broker JVM, after which connections to its port fail."""
    broker = await asyncio.to_thread(kafka_broker_factory)
    pid = broker.pid
    assert pid is not None and broker.running

    await asyncio.to_thread(broker.stop)

    assert not broker.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # stop() waited for (reaped) the child, so the pid is gone
    host, port = broker.bootstrap.rsplit(":", 1)
    with pytest.raises(ConnectionRefusedError), socket.create_connection((host, int(port)), 2):
        pass
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, request_timeout_ms=2000)
    with pytest.raises(KafkaConnectionError):
        await producer.start()
    await producer.stop()
