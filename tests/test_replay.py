"""Deduplication, the raw archive, dead letters and `relay replay`, end to end through Kafka."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import orjson
import pytest
from harness import consume, headers_of, relay_server, spool_and_kafka_toml, unique_prefix

from relay.replay import Filters, RateLimiter, spool_rows
from relay.service import Service
from relay.settings import load
from relay.sources import build
from relay.spool import DEAD, PUBLISHED, Spool

TOKEN = "acme-url-token-0123456789"
ENV = {"ACME_TOKEN": TOKEN, "BW_PASS": "pw"}
DELIVERED = {"direction": "outbound", "created": "2025-03-01T10:00:05Z",
             "data": {"id": "acme-0001", "state": "DELIVRD", "ts": "2025-03-01T10:00:04Z",
                      "from": "+15550001111", "to": "+15551234567"}}


def write_config(tmp_path: Path, bootstrap: str, prefix: str, *, statuses: str,
                 message_id: str = "data.id", name: str = "relay.toml") -> Path:
    """A relay config with a generic source 'acme' and a Bandwidth source 'bw'."""
    path = tmp_path / name
    path.write_text(spool_and_kafka_toml(tmp_path, bootstrap, prefix) + f"""
[[sources]]
name = "acme"
provider = "generic"
token = "env:ACME_TOKEN"
channel = "sms"
[sources.mapping]
message_id = "{message_id}"
status = "data.state"
occurred_at = "data.ts"
from = "data.from"
to = "data.to"
[sources.statuses]
{statuses}
[[sources]]
name = "bw"
provider = "bandwidth"
basic_auth = {{ username = "relay", password = "env:BW_PASS" }}
""")
    return path


def relay_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the relay command in a child process (as an operator would)."""
    return subprocess.run([sys.executable, "-m", "relay.cli", *args], capture_output=True,
                          text=True, env={**os.environ, **ENV}, timeout=120, check=False)


async def post_all(config: Path, bodies: list[bytes], *, wait_topic: str, count: int,
                   bootstrap: str) -> list[object]:
    """Serve relay with ``config``, post each body to acme, wait for ``count`` records."""
    os.environ.update(ENV)
    settings = load(config)
    async with relay_server(settings) as url, httpx.AsyncClient(base_url=url) as client:
        for body in bodies:
            resp = await client.post(f"/hooks/acme/{TOKEN}", content=body)
            assert resp.status_code == 200, resp.text
        return await consume(bootstrap, wait_topic, count, timeout=30)


pytestmark = pytest.mark.kafka


async def test_same_postback_three_times_is_published_once_even_across_restart(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    """A postback retried three times (and again after a restart) is acked each time, published once."""
    prefix = unique_prefix()
    config = write_config(tmp_path, kafka_bootstrap, prefix, statuses='DELIVRD = "delivered"')
    body = json.dumps(DELIVERED).encode()
    topic = f"{prefix}delivery-receipts.v1"
    await post_all(config, [body, body, body], wait_topic=f"{prefix}raw-postbacks.v1", count=3,
                   bootstrap=kafka_bootstrap)
    await post_all(config, [body], wait_topic=f"{prefix}raw-postbacks.v1", count=4,
                   bootstrap=kafka_bootstrap)
    records = await consume(kafka_bootstrap, topic, 1, timeout=20, settle=3.0)
    assert len(records) == 1
    raws = await consume(kafka_bootstrap, f"{prefix}raw-postbacks.v1", 4, timeout=20)
    assert len(raws) == 4  # every acknowledged postback is archived, duplicates included


async def test_replay_after_mapping_fix_republishes_corrected_events_with_same_ids(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    """A status the mapping did not know is corrected by a replay under the fixed mapping, same id."""
    prefix = unique_prefix()
    old = write_config(tmp_path, kafka_bootstrap, prefix, statuses='ENROUTE = "sent"')
    topic = f"{prefix}delivery-receipts.v1"
    (first,) = await post_all(old, [json.dumps(DELIVERED).encode()], wait_topic=topic, count=1,
                              bootstrap=kafka_bootstrap)
    assert orjson.loads(first.value)["status"] == "unknown"  # type: ignore[attr-defined]
    fixed = write_config(tmp_path, kafka_bootstrap, prefix, name="fixed.toml",
                         statuses='ENROUTE = "sent"\nDELIVRD = "delivered"')
    result = relay_cli("replay", "--config", str(fixed), "--source", "acme", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "read 1, published 1" in result.stderr
    records = await consume(kafka_bootstrap, topic, 2, timeout=30)
    before, after = (orjson.loads(r.value) for r in records)
    assert before["id"] == after["id"]
    assert (before["status"], after["status"]) == ("unknown", "delivered")
    headers = headers_of(records[1])
    assert len(headers["relay_replay_id"]) == 36
    assert headers["relay_original_received_at"].decode() == before["received_at"]
    assert "relay_replay_id" not in headers_of(records[0])


async def test_shadow_replay_writes_only_under_the_shadow_prefix(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    """--topic-prefix sends replayed events to the shadow topics and leaves the live ones alone."""
    prefix = unique_prefix()
    config = write_config(tmp_path, kafka_bootstrap, prefix, statuses='DELIVRD = "delivered"')
    topic = f"{prefix}delivery-receipts.v1"
    await post_all(config, [json.dumps(DELIVERED).encode()], wait_topic=topic, count=1,
                   bootstrap=kafka_bootstrap)
    shadow = unique_prefix()
    result = relay_cli("replay", "--config", str(config), "--topic-prefix", shadow,
                       "--no-progress")
    assert result.returncode == 0, result.stderr
    shadow_records = await consume(kafka_bootstrap, f"{shadow}delivery-receipts.v1", 1)
    assert orjson.loads(shadow_records[0].value)["message_id"] == "acme-0001"
    live = await consume(kafka_bootstrap, topic, 1, timeout=10, settle=2.0)
    assert len(live) == 1


async def test_dead_letter_is_listed_then_replayed_after_the_fix(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    """A postback the mapping cannot read is dead-lettered, listed, and published by a replay after the fix."""
    prefix = unique_prefix()
    broken = write_config(tmp_path, kafka_bootstrap, prefix, statuses='DELIVRD = "delivered"',
                          message_id="data.msg_id")
    dead = await post_all(broken, [json.dumps(DELIVERED).encode()],
                          wait_topic=f"{prefix}dead-letter.v1", count=1,
                          bootstrap=kafka_bootstrap)
    letter = orjson.loads(dead[0].value)  # type: ignore[attr-defined]
    assert letter["raw"]["source"] == "acme" and letter["error"]
    listing = relay_cli("dead-letters", "--config", str(broken))
    assert listing.returncode == 0
    assert "acme" in listing.stdout and "1 dead letter(s)" in listing.stdout
    fixed = write_config(tmp_path, kafka_bootstrap, prefix, name="fixed.toml",
                         statuses='DELIVRD = "delivered"')
    dry = relay_cli("replay", "--config", str(fixed), "--dead-letters", "--dry-run")
    assert dry.returncode == 0 and '"message_id":"acme-0001"' in dry.stdout
    result = relay_cli("replay", "--config", str(fixed), "--dead-letters", "--no-progress")
    assert result.returncode == 0, result.stderr
    records = await consume(kafka_bootstrap, f"{prefix}delivery-receipts.v1", 1)
    assert orjson.loads(records[0].value)["status"] == "delivered"
    assert "0 dead letter(s)" in relay_cli("dead-letters", "--config", str(fixed)).stdout
    with Spool(tmp_path / "spool", 1 << 30) as spool:
        assert spool.state_of(letter["raw"]["raw_id"]) == PUBLISHED


async def test_replay_from_the_raw_topic_with_the_spool_gone(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    """With the local spool deleted, --from-kafka re-derives events from the raw-postbacks topic."""
    prefix = unique_prefix()
    config = write_config(tmp_path, kafka_bootstrap, prefix, statuses='DELIVRD = "delivered"')
    topic = f"{prefix}delivery-receipts.v1"
    bodies = [json.dumps({**DELIVERED, "data": {**DELIVERED["data"], "id": f"acme-{n}"}}).encode()
              for n in range(3)]
    first = await post_all(config, bodies, wait_topic=topic, count=3, bootstrap=kafka_bootstrap)
    shutil.rmtree(tmp_path / "spool")
    result = relay_cli("replay", "--config", str(config), "--from-kafka", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "read 3, published 3" in result.stderr
    records = await consume(kafka_bootstrap, topic, 6, timeout=30)
    ids = [orjson.loads(r.value)["id"] for r in records]
    assert sorted(ids[:3]) == sorted(ids[3:]) == sorted(
        orjson.loads(r.value)["id"] for r in first)  # type: ignore[attr-defined]


def test_pruning_never_removes_an_unpublished_postback(tmp_path: Path) -> None:
    """Pruning removes old published rows, never pending ones, however old."""
    with Spool(tmp_path, 1 << 30) as spool:
        from relay.schema import RawPostback
        from relay.spool import Outcome

        ids = [spool.append_sync(RawPostback("bw", 100.0 + n, "", "POST", "/", "", (), b"{}"))
               for n in range(4)]
        spool.complete_sync([Outcome(ids[0], PUBLISHED), Outcome(ids[1], DEAD, (), "bad")])
        removed = spool.prune_sync(older_than=10_000.0, seen_before=0.0)
        assert removed == 2
        assert [r.id for r in spool.select()] == ids[2:]
        assert spool.stats().pending == 2


def test_spool_rows_filters_by_provider_and_source(tmp_path: Path) -> None:
    """Replay's spool reader keeps only the sources of the requested providers."""
    os.environ.update(ENV)
    settings = load(write_config(tmp_path, "127.0.0.1:9", "x.", statuses='A = "sent"'))
    sources = dict(build(settings))
    from relay.schema import RawPostback

    with Spool(tmp_path / "spool", 1 << 30) as spool:
        for source in ("acme", "bw", "acme"):
            spool.append_sync(RawPostback(source, 1.0, "", "POST", "/", "", (), b"{}"))
        assert [r.source for r in spool_rows(spool, Filters(providers=("generic",)), sources)] \
            == ["acme", "acme"]
        assert [r.id for r in spool_rows(spool, Filters(sources=("bw",)), sources)] == [2]
        assert list(spool_rows(spool, Filters(providers=("skycore",)), sources)) == []


def test_rate_limiter_spaces_batches() -> None:
    """The rate limiter asks for the wait that keeps the average at the configured rate."""
    now = [0.0]
    limiter = RateLimiter(100.0, clock=lambda: now[0])
    assert limiter.delay(100) == pytest.approx(1.0)
    now[0] = 1.0
    assert limiter.delay(50) == pytest.approx(0.5)
    assert RateLimiter(None).delay(10_000) == 0.0


def test_service_refuses_source_without_authentication(tmp_path: Path) -> None:
    """A source with no way to authenticate its postbacks is a configuration error."""
    from relay.errors import ConfigError
    from relay.settings import parse

    settings = parse({"spool": {"dir": str(tmp_path)},
                      "sources": [{"name": "open", "provider": "bandwidth"}]}, environ={})
    with pytest.raises(ConfigError, match=r"sources\[0\].*no authentication"):
        Service(settings)
