"""End to end: real HTTP in, a real Kafka broker out, records read back from the topics."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from harness import (
    RelayProcess,
    basic,
    consume,
    free_port,
    headers_of,
    make_settings,
    relay_server,
    spool_and_kafka_toml,
    unique_prefix,
    validate,
)

from relay.errors import ConfigError
from relay.service import Service

pytestmark = pytest.mark.kafka

PASSWORD = "s3cret-for-tests"
ENV = {"BW_PASS": PASSWORD}
BW_SOURCE = {"name": "bw", "provider": "bandwidth", "default_region": "US",
             "basic_auth": {"username": "relay", "password": "env:BW_PASS"}}
AUTH = basic("relay", PASSWORD)


def dlr(n: int, kind: str = "message-delivered", **extra: Any) -> dict[str, Any]:
    """A Bandwidth status callback item for message ``n``."""
    return {
        "type": kind, "time": f"2025-03-01T10:00:{n % 60:02d}.120Z", "description": "ok",
        "to": "+15554443333", **extra,
        "message": {"id": f"msg-{n}", "owner": "+15552221111", "time": "2025-03-01T10:00:04Z",
                    "segmentCount": 1, "direction": "out", "to": ["+15554443333"],
                    "from": "+15552221111", "text": "", "tag": f"order-{n}"},
    }


def inbound(n: int, text: str) -> dict[str, Any]:
    """A Bandwidth message-received item."""
    return {
        "type": "message-received", "time": "2025-03-01T10:01:00.000Z", "to": "+15552221111",
        "description": "Incoming message received",
        "message": {"id": f"mo-{n}", "owner": "+15552221111", "time": "2025-03-01T10:01:00Z",
                    "segmentCount": 1, "direction": "in", "to": ["+15552221111"],
                    "from": "+15554443333", "text": text},
    }


async def test_postback_events_land_on_their_topics_with_keys_and_headers(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    """An acknowledged Bandwidth postback's events appear on the right topics, keyed and with CloudEvents headers."""
    settings = make_settings(tmp_path, kafka=kafka_bootstrap, sources=[BW_SOURCE], environ=ENV)
    prefix = settings.kafka.topic_prefix
    body = [dlr(1), dlr(2, "message-failed", errorCode=4720), inbound(3, " stop ")]
    async with relay_server(settings) as url, httpx.AsyncClient(base_url=url) as client:
        resp = await client.post("/hooks/bw", content=json.dumps(body), headers=AUTH)
        assert resp.status_code == 200
        assert resp.json()["status"] == "accepted"
        receipts = await consume(kafka_bootstrap, f"{prefix}delivery-receipts.v1", 2)
        inbound_recs = await consume(kafka_bootstrap, f"{prefix}inbound-messages.v1", 1)
        consent = await consume(kafka_bootstrap, f"{prefix}consent.v1", 1)
        raws = await consume(kafka_bootstrap, f"{prefix}raw-postbacks.v1", 1)
    by_key = {r.key: orjson.loads(r.value) for r in receipts}
    assert set(by_key) == {b"msg-1", b"msg-2"}
    assert by_key[b"msg-1"]["status"] == "delivered"
    assert by_key[b"msg-2"]["status"] == "undeliverable"
    assert by_key[b"msg-2"]["error"] == {"code": "4720", "description": "ok"}
    for rec in receipts:
        h = headers_of(rec)
        assert h["ce_specversion"] == b"1.0"
        assert h["ce_type"] == b"com.relay.messaging.delivery_receipt.v1"
        assert h["ce_source"] == b"/relay/sources/bw"
        assert h["ce_id"].decode() == orjson.loads(rec.value)["id"]
        assert h["content-type"] == b"application/json"
        assert h["ce_time"].decode() == orjson.loads(rec.value)["occurred_at"]
        validate("delivery_receipt", orjson.loads(rec.value))
    msg = orjson.loads(inbound_recs[0].value)
    assert inbound_recs[0].key == b"+15552221111|+15554443333"
    assert msg["keyword"] == "opt_out"
    validate("inbound_message", msg)
    assert consent[0].key == b"+15554443333"
    validate("consent", orjson.loads(consent[0].value))
    raw = orjson.loads(raws[0].value)
    validate("raw", raw)
    assert raws[0].key == b"bw"
    assert orjson.loads(__import__("base64").b64decode(raw["body_base64"])) == body


async def test_rejections_get_their_status_and_nothing_is_spooled(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    """Bad credentials, a disallowed IP, an oversized body and an unknown source are refused and never stored."""
    allowed = {**BW_SOURCE, "name": "bw-allow", "allow_ips": ["203.0.113.0/24"]}
    settings = make_settings(tmp_path, kafka=kafka_bootstrap, sources=[BW_SOURCE, allowed],
                             environ=ENV, server={"max_body_bytes": 1024})
    service = Service(settings)
    body = json.dumps([dlr(1)])
    async with relay_server(settings, service) as url, httpx.AsyncClient(base_url=url) as client:
        bad = await client.post("/hooks/bw", content=body, headers=basic("relay", "wrong"))
        assert bad.status_code == 401
        assert bad.headers["www-authenticate"].startswith("Basic realm=")
        assert bad.json()["error"] == "unauthenticated"
        ip = await client.post("/hooks/bw-allow", content=body, headers=AUTH)
        assert ip.status_code == 403
        big = await client.post("/hooks/bw", content=b"[" + b" " * 2048 + b"]", headers=AUTH)
        assert big.status_code == 413
        unknown = await client.post("/hooks/nope", content=body, headers=AUTH)
        assert unknown.status_code == 404
        assert service.spool.stats().total == 0
        ok = await client.post("/hooks/bw", content=body, headers=AUTH)
        assert ok.status_code == 200
        assert service.spool.stats().total == 1


async def test_kafka_down_then_up_delivers_every_event_exactly_once(
        kafka_broker_factory: Any, tmp_path: Path) -> None:
    """With Kafka stopped, postbacks are still acknowledged; once it is back each event arrives exactly once."""
    broker = kafka_broker_factory()
    settings = make_settings(tmp_path, kafka=broker.bootstrap, sources=[BW_SOURCE], environ=ENV)
    prefix = settings.kafka.topic_prefix
    total = 60
    async with relay_server(settings) as url, httpx.AsyncClient(base_url=url) as client:
        for n in range(10):  # while Kafka is up
            assert (await client.post("/hooks/bw", content=json.dumps([dlr(n)]),
                                      headers=AUTH)).status_code == 200
        await consume(broker.bootstrap, f"{prefix}delivery-receipts.v1", 10, timeout=30)
        await asyncio.to_thread(broker.stop)
        for n in range(10, total):  # Kafka down: the acks go on
            resp = await client.post("/hooks/bw", content=json.dumps([dlr(n)]), headers=AUTH)
            assert resp.status_code == 200
        ready = (await client.get("/readyz")).json()
        assert ready["ready"] is True
        assert ready["pending"] > 0
        await asyncio.to_thread(broker.restart)
        records = await consume(broker.bootstrap, f"{prefix}delivery-receipts.v1", total,
                                timeout=90, settle=3.0)
    keys = sorted(r.key for r in records)
    assert keys == sorted(f"msg-{n}".encode() for n in range(total))


def _write_config(tmp_path: Path, bootstrap: str, prefix: str) -> Path:
    config = tmp_path / "relay.toml"
    config.write_text(spool_and_kafka_toml(tmp_path, bootstrap, prefix) + """
[server]
host = "127.0.0.1"
[log]
format = "json"
[[sources]]
name = "bw"
provider = "bandwidth"
basic_auth = { username = "relay", password = "env:BW_PASS" }
""")
    return config


async def test_killed_relay_loses_nothing_it_acknowledged(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    """relay killed with SIGKILL mid-stream and restarted: every acknowledged postback's events reach Kafka."""
    prefix = unique_prefix()
    proc = RelayProcess(_write_config(tmp_path, kafka_bootstrap, prefix), free_port(), ENV)
    proc.start()
    acked: list[int] = []

    async def post_until_killed(client: httpx.AsyncClient) -> None:
        for n in range(100_000):
            try:
                resp = await client.post("/hooks/bw", content=json.dumps([dlr(n)]), headers=AUTH)
            except httpx.HTTPError:
                return
            if resp.status_code == 200:
                acked.append(n)

    async with httpx.AsyncClient(base_url=proc.url, timeout=5) as client:
        poster = asyncio.create_task(post_until_killed(client))
        while len(acked) < 150:
            await asyncio.sleep(0.01)
        proc.kill()
        await poster
    proc.start()
    try:
        records = await consume(kafka_bootstrap, f"{prefix}delivery-receipts.v1", len(acked),
                                timeout=60)
    finally:
        proc.terminate()
    published = {r.key for r in records}
    assert {f"msg-{n}".encode() for n in acked} <= published


async def test_sigterm_exits_cleanly_and_keeps_unpublished_postbacks(tmp_path: Path) -> None:
    """SIGTERM ends relay with exit 0 and postbacks not yet published stay pending in the spool."""
    dead_port = free_port()  # nothing listens there: Kafka unreachable
    proc = RelayProcess(_write_config(tmp_path, f"127.0.0.1:{dead_port}", unique_prefix()),
                        free_port(), ENV)
    proc.start()
    async with httpx.AsyncClient(base_url=proc.url) as client:
        for n in range(5):
            assert (await client.post("/hooks/bw", content=json.dumps([dlr(n)]),
                                      headers=AUTH)).status_code == 200
        ready = (await client.get("/readyz")).json()
    assert ready["kafka"].startswith("unreachable")
    assert proc.proc is not None
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.proc.wait(30) == 0
    from relay.spool import Spool

    with Spool(tmp_path / "spool", 1 << 30) as spool:
        assert spool.stats().pending == 5


async def test_missing_topic_stops_start_up_naming_it(kafka_bootstrap: str, tmp_path: Path) -> None:
    """With create_topics off and a topic missing, start-up fails with an error naming the topic."""
    settings = make_settings(tmp_path, kafka=kafka_bootstrap, sources=[BW_SOURCE], environ=ENV,
                             kafka_options={"create_topics": False})
    service = Service(settings)
    with pytest.raises(ConfigError, match=rf"topic {settings.kafka.topic_prefix}\S+ does not exist"):
        await service.start()
