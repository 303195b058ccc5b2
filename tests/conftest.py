"""Shared pytest fixtures."""

from __future__ import annotations

# ============================================================================================
# Kafka broker fixtures (implementation: tests/kafka_broker.py)
#
#   kafka_bootstrap       session-scoped "host:port" of a real broker shared by the session
#                         (RELAY_TEST_KAFKA, else Docker, else a local JVM from Maven jars).
#   kafka_broker_factory  function-scoped; make() -> a *dedicated*, started KafkaBroker that the
#                         test may stop()/kill()/restart(); all are closed at teardown.
#
# No broker obtainable: pytest.fail when $CI is set, pytest.skip (with the reason) otherwise.
# ============================================================================================
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

import pytest
from kafka_broker import KafkaBroker, KafkaUnavailableError, ensure_kafka_jars, kafka_for_tests


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _no_kafka(reason: str) -> NoReturn:
    if _in_ci():
        pytest.fail(f"{reason} (failing because $CI is set)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap address ("host:port") of the Kafka broker shared by the whole session."""
    try:
        bootstrap, stop = kafka_for_tests()
    except KafkaUnavailableError as exc:
        _no_kafka(f"no Kafka broker for tests: {exc}")
    try:
        yield bootstrap
    finally:
        if stop is not None:
            stop()


@pytest.fixture
def kafka_broker_factory(tmp_path: Path) -> Iterator[Callable[..., KafkaBroker]]:
    """Yield make(start=True, timeout=90) -> a dedicated jar-based KafkaBroker for this test.

    Each broker's workdir (config, data, broker.log) is under tmp_path, so its log outlives
    the test for post-mortems. Every broker made here is stopped at teardown.
    """
    created: list[KafkaBroker] = []

    def make(*, start: bool = True, timeout: float = 90) -> KafkaBroker:
        try:
            jars = ensure_kafka_jars()
        except KafkaUnavailableError as exc:
            _no_kafka(f"no Kafka jars for a dedicated broker: {exc}")
        broker = KafkaBroker(jars_dir=jars, workdir=tmp_path / f"kafka-{len(created)}")
        created.append(broker)
        if start:
            try:
                broker.start(timeout=timeout)
            except KafkaUnavailableError as exc:
                _no_kafka(f"dedicated Kafka broker did not start: {exc}")
        return broker

    yield make
    for broker in reversed(created):
        broker.close()


# ============================================================================================
# end of Kafka broker fixtures
# ============================================================================================
