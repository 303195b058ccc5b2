"""End-to-end helpers: relay served over real HTTP (uvicorn) and records read back from Kafka."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from aiokafka import AIOKafkaConsumer, TopicPartition

from relay.app import create_app
from relay.service import Service
from relay.settings import Settings, parse

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def unique_prefix() -> str:
    """A topic prefix no other test uses."""
    return f"t{uuid.uuid4().hex[:10]}."


def make_settings(tmp: Path, *, kafka: str | None, sources: Sequence[Mapping[str, Any]],
                  prefix: str | None = None, environ: Mapping[str, str] | None = None,
                  server: Mapping[str, Any] | None = None, spool: Mapping[str, Any] | None = None,
                  kafka_options: Mapping[str, Any] | None = None) -> Settings:
    """Settings for a test: spool under ``tmp``, topics under a fresh prefix, auto-created."""
    data: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 0, **(server or {})},
        "spool": {"dir": str(tmp / "spool"), **(spool or {})},
        "sources": list(sources),
    }
    if kafka:
        data["kafka"] = {
            "bootstrap_servers": [kafka], "topic_prefix": prefix or unique_prefix(),
            "create_topics": True, "partitions": 2, "replication_factor": 1,
            "request_timeout_ms": 5000, "linger_ms": 2, **(kafka_options or {}),
        }
    return parse(data, environ=environ or {}, base=tmp)


def spool_and_kafka_toml(tmp: Path, bootstrap: str, prefix: str) -> str:
    """The ``[spool]`` and ``[kafka]`` tables of a test's config file: the spool under
    ``tmp``, topics under ``prefix``, auto-created, short timeouts."""
    return f"""
[spool]
dir = "{tmp / 'spool'}"
[kafka]
bootstrap_servers = ["{bootstrap}"]
topic_prefix = "{prefix}"
create_topics = true
partitions = 2
request_timeout_ms = 5000
"""


def basic(user: str, password: str) -> dict[str, str]:
    """An Authorization header for HTTP Basic."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"authorization": f"Basic {token}"}


@contextlib.asynccontextmanager
async def relay_server(settings: Settings, service: Service | None = None
                       ) -> AsyncIterator[str]:
    """relay's app served by uvicorn on a free port in this event loop; yields the base URL."""
    service = service or Service(settings)
    port = free_port()
    config = uvicorn.Config(create_app(service), host="127.0.0.1", port=port, lifespan="on",
                            access_log=False, log_level="warning")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 30
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("relay server stopped during start-up")
        if time.monotonic() > deadline:
            raise TimeoutError("relay server did not start")
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def consume(bootstrap: str, topic: str, count: int, timeout: float = 30.0,
                  settle: float = 0.0) -> list[Any]:
    """Read ``topic`` from the beginning until ``count`` records arrived (or ``timeout``).

    ``settle`` keeps reading that long after ``count`` was reached, to catch extra records
    (duplicates) that must not be there.
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    try:
        partitions = await _partitions(consumer, topic, timeout)
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        records: list[Any] = []
        deadline = time.monotonic() + timeout
        settle_until: float | None = None
        while time.monotonic() < deadline:
            if len(records) >= count and settle_until is None:
                settle_until = time.monotonic() + settle
            if settle_until is not None and time.monotonic() >= settle_until:
                break
            batch = await consumer.getmany(timeout_ms=200)
            for recs in batch.values():
                records.extend(recs)
        return records
    finally:
        await consumer.stop()


async def _partitions(consumer: AIOKafkaConsumer, topic: str, timeout: float
                      ) -> list[TopicPartition]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        parts = consumer.partitions_for_topic(topic)
        if parts:
            return [TopicPartition(topic, p) for p in sorted(parts)]
        await consumer._client.force_metadata_update()
        await asyncio.sleep(0.2)
    raise TimeoutError(f"topic {topic} did not appear")


def headers_of(record: Any) -> dict[str, bytes]:
    """A Kafka record's headers as a dict."""
    return {k: v for k, v in (record.headers or ())}


class RelayProcess:
    """``relay serve`` as a child process (for kill -9 and restart tests)."""

    def __init__(self, config: Path, port: int, env: Mapping[str, str] | None = None) -> None:
        self.config = config
        self.port = port
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = config.with_suffix(".log")

    @property
    def url(self) -> str:
        """The base URL."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        """Start and wait for /healthz."""
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "relay.cli", "serve", "--config", str(self.config),
                 "--port", str(self.port)], stdout=out, stderr=out, env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"relay exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"relay did not start: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        """SIGKILL, no chance to clean up."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait for a clean exit; returns the exit code."""
        assert self.proc is not None
        self.proc.terminate()
        return self.proc.wait(timeout)


_SCHEMA_FILES = {
    "delivery_receipt": "delivery_receipt.v1.json",
    "inbound_message": "inbound_message.v1.json",
    "consent": "consent.v1.json",
    "raw": "raw_postback.v1.json",
    "dead_letter": "dead_letter.v1.json",
}


def _validators() -> dict[str, Any]:
    import json

    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource

    docs = {n: json.loads((REPO / "schemas" / f).read_text()) for n, f in _SCHEMA_FILES.items()}
    registry: Registry[Any] = Registry().with_resources(
        (f, Resource.from_contents(docs[n])) for n, f in _SCHEMA_FILES.items())
    return {n: Draft202012Validator(d, registry=registry,
                                    format_checker=Draft202012Validator.FORMAT_CHECKER)
            for n, d in docs.items()}


_VALIDATORS: dict[str, Any] = {}


def validate(kind: str, document: Any) -> None:
    """Raise if ``document`` does not match the JSON Schema of ``kind`` (an event type,
    ``raw`` or ``dead_letter``)."""
    if not _VALIDATORS:
        _VALIDATORS.update(_validators())
    _VALIDATORS[kind].validate(document)
