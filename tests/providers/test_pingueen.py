"""Pingueen (Pingup) WhatsApp callbacks: default mapping, remapping in config, URL token, IPs."""

from __future__ import annotations

import contextlib
import tomllib
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.testclient import TestClient
from strategies import INT64, json_documents

from relay.app import create_app
from relay.errors import ConfigError, NormalisationError
from relay.pipeline import Normaliser
from relay.providers import SourceContext
from relay.providers.pingueen import configure, default_spec, normalise
from relay.schema import ErrorInfo, Event, Media, RawPostback, event_id
from relay.service import Service
from relay.settings import Secret, SourceConfig, parse
from relay.sources import build_one

FIXTURES = Path(__file__).parent / "fixtures" / "pingueen"
OPTIONS = tomllib.loads((FIXTURES / "source.toml").read_text())
OURS = "+390212345678"
TOKEN = "pq-7f3c9a1e5b2d4c6a"


def context(options: dict[str, Any] | None = None, region: str | None = None) -> SourceContext:
    """The context of a Pingueen source configured with ``options``."""
    setup = configure(SourceConfig(name="pq", provider="pingueen", options=options or {}))
    return SourceContext(name="pq", provider="pingueen", default_region=region,
                         options=setup.options)


CTX = context(OPTIONS)


def raw(body: bytes, raw_id: int = 3) -> RawPostback:
    """A stored postback holding ``body``."""
    return RawPostback(source="pq", received_at=1_740_823_300.0, remote_addr="203.0.113.9",
                       method="POST", path="/hooks/pq/{token}", query="", headers=(),
                       body=body, id=raw_id)


def events_of(body: bytes, ctx: SourceContext = CTX) -> list[Event]:
    """The events of a body."""
    out = normalise(raw(body), ctx)
    assert all(isinstance(e, Event) for e in out)
    return out  # type: ignore[return-value]


def events(name: str, ctx: SourceContext = CTX) -> list[Event]:
    """The events of a fixture."""
    return events_of((FIXTURES / f"{name}.json").read_bytes(), ctx)


# --- normalisation with the built-in mapping -----------------------------------------------


@pytest.mark.parametrize(("name", "status", "final", "to"), [
    ("status-sent", "sent", False, "+393931234567"),
    ("status-delivered", "delivered", True, "+393931234567"),
    ("status-received", "delivered", True, "+393471234568"),
    ("status-read", "read", True, "+393931234567"),
    ("status-failed", "failed", True, "+447700900123"),
    ("status-failed-error-string", "failed", True, "+393931234569"),
    ("status-unknown", "unknown", False, "+393931234567"),
    ("status-unix-ms", "delivered", True, "+34612345678"),
])  # fmt: skip
def test_status_callbacks(name: str, status: str, final: bool, to: str) -> None:
    """Each status callback maps its status, is WhatsApp, and adds '+' to client_phone."""
    (e,) = events(name)
    assert (e.type, e.status, e.final, e.channel) == ("delivery_receipt", status, final,
                                                      "whatsapp")
    assert (e.to, e.to_kind, e.from_, e.from_kind) == (to, "e164", OURS, "e164")
    assert e.key == e.message_id


def test_delivered_fields_and_dedup_key() -> None:
    """A delivered callback keeps id, time and raw status; its id hashes message_id + status."""
    (e,) = events("status-delivered")
    assert (e.message_id, e.provider_status, e.occurred_at) == (
        "1232412421", "delivered", "2025-03-01T10:00:05.000Z")
    assert (e.error, e.received_at, e.raw_id) == (None, "2025-03-01T10:01:40.000Z", 3)
    assert e.id == event_id("pingueen", "status", "1232412421", "delivered")


def test_received_means_delivered() -> None:
    """'received' is a final delivered status, with the provider's word kept."""
    (e,) = events("status-received")
    assert (e.status, e.provider_status, e.status_rank) == ("delivered", "received", 5)


def test_failed_error_object_and_error_string() -> None:
    """error {code, message} and a bare error string both become the event's error."""
    (obj,) = events("status-failed")
    assert obj.error == ErrorInfo(code="131047", description=(
        "Re-engagement message: more than 24 hours since the customer last replied"))
    (plain,) = events("status-failed-error-string")
    assert plain.error == ErrorInfo(code="", description="template paused")
    assert (plain.provider_status, plain.occurred_at) == ("FAILED", "2025-03-01T10:00:10.000Z")


def test_times_with_offsets_and_milliseconds() -> None:
    """Offset times are made UTC and UNIX milliseconds keep their milliseconds."""
    assert events("status-read")[0].occurred_at == "2025-03-01T09:01:00.000Z"
    (ms,) = events("status-unix-ms")
    assert (ms.occurred_at, ms.message_id) == ("2025-03-01T10:00:05.120Z", "1232412426")


def test_inbound_text() -> None:
    """An inbound message is from the customer (with '+') to our configured number."""
    (e,) = events("inbound-text")
    assert (e.type, e.status, e.final, e.channel) == ("inbound_message", None, False, "whatsapp")
    assert (e.from_, e.to, e.text) == ("+393471234567", OURS, "Ciao, a che ora aprite?")
    assert e.key == f"{OURS}|+393471234567"
    assert e.id == event_id("pingueen", "inbound", "wamid.HBgMMzkzNDcxMjM0NTY3FQIAEhgUM0E=")


def test_inbound_image() -> None:
    """media_url and media_type become one media item; a null text stays None."""
    (e,) = events("inbound-image")
    assert e.media == (Media("https://cdn.pingueen.example/media/9f8e.jpg", "image/jpeg"),)
    assert e.text is None and e.occurred_at == "2025-03-01T10:05:00.000Z"


def test_inbound_without_our_number_has_no_recipient() -> None:
    """Without our_number configured, an inbound message's 'to' is None."""
    (e,) = events("inbound-text", context())
    assert (e.to, e.from_) == (None, "+393471234567")


def test_inbound_stop_is_a_consent_event_through_the_pipeline() -> None:
    """'INBOUND' matches case-insensitively and ' stop ' is an opt-out by central detection."""
    src = build_one(_token_source(OPTIONS), 1 << 20)
    derived = Normaliser({"pq": src}).derive(raw((FIXTURES / "inbound-stop.json").read_bytes()))
    inbound, consent = derived.events
    assert isinstance(inbound, Event) and inbound.keyword == "opt_out"
    assert consent.type == "consent" and consent.key == "+393471234567"


def _token_source(options: dict[str, Any]) -> SourceConfig:
    return SourceConfig(name="pq", provider="pingueen", tokens=(Secret(TOKEN, "test"),),
                        options=options)


def test_dedup_key_is_message_id_and_status() -> None:
    """Two statuses of one message differ; a retry with another timestamp has the same id."""
    sent = {"message_id": "m-1", "status": "sent", "timestamp": "2025-03-01T10:00:00Z"}
    (a,) = events_of(orjson.dumps(sent))
    (b,) = events_of(orjson.dumps({**sent, "status": "read"}))
    (c,) = events_of(orjson.dumps({**sent, "timestamp": "2025-03-01T10:09:00Z"}))
    assert a.id != b.id and a.id == c.id


def test_every_normalised_status_maps_to_itself_beyond_the_table() -> None:
    """A status outside Pingueen's table that is a normalised name maps to itself."""
    (e,) = events_of(b'{"message_id": "m", "status": "Queued"}')
    assert (e.status, e.final) == ("queued", False)


def test_an_array_of_callbacks_is_accepted() -> None:
    """A JSON array of callbacks yields one event each."""
    body = orjson.dumps([{"message_id": "a", "status": "sent"}, {"message_id": "a", "status":
                                                                  "delivered"}])
    first, second = events_of(body)
    assert (first.status, second.status) == ("sent", "delivered")


def test_fixture_ids_are_distinct_and_deterministic() -> None:
    """All fixtures give distinct ids, the same on a second run."""
    names = sorted(p.stem for p in FIXTURES.glob("*.json") if not p.name.startswith("invalid"))
    ids = [e.id for n in names for e in events(n)]
    assert ids == [e.id for n in names for e in events(n)]
    assert len(set(ids)) == len(names)


@pytest.mark.parametrize("name", ["invalid-no-message-id", "invalid-not-json",
                                  "invalid-json-string"])
def test_unreadable_fixtures_are_dead_lettered(name: str) -> None:
    """Bodies without a message id, non-JSON and non-objects raise NormalisationError."""
    with pytest.raises(NormalisationError):
        events(name)


@given(st.binary(max_size=400))
def test_random_bytes_only_raise_normalisation_error(body: bytes) -> None:
    """Random bytes yield events or NormalisationError, never another exception."""
    with contextlib.suppress(NormalisationError):
        normalise(raw(body), CTX)


JSONS = json_documents(
    st.none() | st.booleans() | INT64 | st.floats() | st.text(max_size=8),
    st.sampled_from(["message_id", "status", "direction", "client_phone", "error", "media_url",
                     "media", "timestamp", "text_message"]), max_size=6, max_leaves=20)


@given(JSONS)
def test_random_json_only_raises_normalisation_error(data: object) -> None:
    """Random JSON with Pingueen's field names never raises anything but NormalisationError."""
    with contextlib.suppress(NormalisationError):
        normalise(raw(orjson.dumps(data)), CTX)


# --- remapping in configuration --------------------------------------------------------------

REMAPPED = """
our_number = "+390299999999"

[mapping]
message_id = "msg.uuid"
status = ["event.state", "event.status"]
subscriber = "msg.contact.wa_id"
occurred_at = "event.at"
text = "msg.body"
error_code = "event.error[0].code"

[inbound_when]
path = "event.kind"
equals = ["mo", "incoming"]

[statuses]
consegnato = "delivered"
letto = { status = "read" }
errore = { status = "failed", final = true }
"""


def test_field_names_are_remapped_by_configuration() -> None:
    """A source maps other field names and statuses without code; other defaults stay."""
    ctx = context(tomllib.loads(REMAPPED))
    status = {"msg": {"uuid": "u-1", "contact": {"wa_id": "393331112222"}},
              "event": {"state": "errore", "at": 1740823200, "error": [{"code": 470}]}}
    (e,) = events_of(orjson.dumps(status), ctx)
    assert (e.type, e.message_id, e.status, e.final, e.provider_status) == (
        "delivery_receipt", "u-1", "failed", True, "errore")
    assert (e.to, e.from_, e.channel) == ("+393331112222", "+390299999999", "whatsapp")
    assert (e.occurred_at, e.error) == ("2025-03-01T10:00:00.000Z", ErrorInfo("470", None))
    (read,) = events_of(orjson.dumps({**status, "event": {"status": "letto"}}), ctx)
    assert (read.status, read.final) == ("read", True)
    (delivered,) = events_of(orjson.dumps({**status, "event": {"state": "DELIVERED"}}), ctx)
    assert delivered.status == "delivered"  # the built-in table still applies


def test_remapped_inbound_messages() -> None:
    """inbound_when is replaced by the source's rule and media keep the built-in paths."""
    ctx = context(tomllib.loads(REMAPPED))
    body = {"msg": {"uuid": "u-2", "contact": {"wa_id": "393331112222"}, "body": "Ciao"},
            "event": {"kind": "incoming"}, "media_url": "https://x.example/a.jpg"}
    (e,) = events_of(orjson.dumps(body), ctx)
    assert (e.type, e.from_, e.to, e.text) == ("inbound_message", "+393331112222",
                                               "+390299999999", "Ciao")
    assert e.media == (Media("https://x.example/a.jpg", None),)
    (old_style,) = events_of(orjson.dumps({**body, "direction": "inbound", "event": {}}), ctx)
    assert old_style.type == "delivery_receipt"


def test_a_remapped_key_can_be_switched_off() -> None:
    """An empty list unmaps a built-in field."""
    ctx = context({"mapping": {"text": []}})
    (e,) = events("inbound-text", ctx)
    assert e.text is None


def test_default_mapping_is_read_from_the_data_table() -> None:
    """The built-in spec comes from relay/data/pingueen.toml."""
    spec = default_spec()
    assert (spec.channel, spec.numbers, spec.provider) == ("whatsapp", "international",
                                                           "pingueen")
    assert spec.statuses["received"] == ("delivered", True)
    assert [p.text for p in spec.paths["subscriber"]] == ["client_phone", "phone"]


@pytest.mark.parametrize(("options", "key"), [
    ({"mapping": {"colour": "x"}}, "sources[1].mapping.colour"),
    ({"mapping": {"status": "event..state"}}, "sources[1].mapping.status"),
    ({"mapping": {"status": ["ok", "event[x]"]}}, "sources[1].mapping.status[1]"),
    ({"mapping": {"status": "events[*].state"}}, "sources[1].mapping.status"),
    ({"mapping": {"message_id": []}}, "sources[1].mapping.message_id"),
    ({"mapping": {"text": 5}}, "sources[1].mapping.text"),
    ({"mapping": "message_id=id"}, "sources[1].mapping"),
    ({"statuses": {"consegnato": "consegnato"}}, "sources[1].statuses.consegnato"),
    ({"statuses": {"x": {"status": "sent", "final": "yes"}}}, "sources[1].statuses.x.final"),
    ({"statuses": {"x": {"status": "sent", "rank": 3}}}, "sources[1].statuses.x.rank"),
    ({"inbound_when": {"equals": "mo"}}, "sources[1].inbound_when.path"),
    ({"inbound_when": {"path": "kind"}}, "sources[1].inbound_when.equals"),
    ({"inbound_when": {"path": "kind", "equals": []}}, "sources[1].inbound_when.equals"),
    ({"inbound_when": {"path": "kind", "is": "mo"}}, "sources[1].inbound_when.is"),
    ({"our_number": "0212345678"}, "sources[1].our_number"),
    ({"channel": "telegram"}, "sources[1].channel"),
    ({"numbers": "e164"}, "sources[1].numbers"),
    ({"callback_secret": "env:X"}, "sources[1].callback_secret"),
])  # fmt: skip
def test_configuration_errors_name_the_key(options: dict[str, Any], key: str) -> None:
    """Each bad option is a ConfigError naming the key, found at start-up."""
    with pytest.raises(ConfigError) as err:
        configure(SourceConfig(name="pq", provider="pingueen", options=options, index=1))
    assert err.value.key == key


def test_a_source_needs_some_authentication() -> None:
    """A Pingueen source without token (or other credentials) is refused."""
    with pytest.raises(ConfigError, match="no authentication"):
        build_one(SourceConfig(name="pq", provider="pingueen", index=4), 1 << 20)


# --- over HTTP ------------------------------------------------------------------------------


def _client(tmp_path: Path, *, allow: list[str] | None = None, peer: str = "testclient",
            proxies: list[str] | None = None) -> tuple[TestClient, Service]:  # fmt: skip
    source: dict[str, Any] = {"name": "pq", "provider": "pingueen", "token": "env:PQ_TOKEN",
                              "our_number": OURS}
    if allow is not None:
        source["allow_ips"] = allow
    settings = parse({"server": {"trusted_proxies": proxies or []},
                      "spool": {"dir": str(tmp_path / "spool")}, "sources": [source]},
                     environ={"PQ_TOKEN": TOKEN})  # fmt: skip
    service = Service(settings)
    return TestClient(create_app(service), client=(peer, 50000)), service


def _body() -> bytes:
    return (FIXTURES / "status-delivered.json").read_bytes()


def test_right_token_is_accepted_and_spooled(tmp_path: Path) -> None:
    """A postback to /hooks/pq/<token> is answered 200 and spooled."""
    client, service = _client(tmp_path)
    with client:
        resp = client.post(f"/hooks/pq/{TOKEN}", content=_body())
        assert resp.status_code == 200
        assert service.spool.stats().total == 1
        (stored,) = service.spool.pending()
    assert stored.path == "/hooks/pq/{token}"  # the secret is not stored


@pytest.mark.parametrize("path", [f"/hooks/pq/{TOKEN}x", "/hooks/pq/wrong", "/hooks/pq",
                                  f"/hooks/pq/{TOKEN[:-1]}"])
def test_wrong_or_missing_token_is_401_and_not_spooled(tmp_path: Path, path: str) -> None:
    """A wrong, truncated or missing token is answered 401 and nothing is spooled."""
    client, service = _client(tmp_path)
    with client:
        resp = client.post(path, content=_body())
        assert resp.status_code == 401
        assert service.spool.stats().total == 0


def test_allowlisted_address_is_accepted(tmp_path: Path) -> None:
    """A caller inside allow_ips with the right token is accepted."""
    client, service = _client(tmp_path, allow=["203.0.113.0/24"], peer="203.0.113.7")
    with client:
        assert client.post(f"/hooks/pq/{TOKEN}", content=_body()).status_code == 200
        assert service.spool.stats().total == 1


@pytest.mark.parametrize("peer", ["198.51.100.7", "testclient", "::1"])
def test_address_outside_the_allowlist_is_403_and_not_spooled(tmp_path: Path, peer: str) -> None:
    """A caller outside allow_ips is answered 403 even with the right token."""
    client, service = _client(tmp_path, allow=["203.0.113.0/24"], peer=peer)
    with client:
        resp = client.post(f"/hooks/pq/{TOKEN}", content=_body())
        assert resp.status_code == 403 and resp.json()["error"] == "forbidden"
        assert service.spool.stats().total == 0


def test_forwarded_address_counts_only_behind_a_trusted_proxy(tmp_path: Path) -> None:
    """X-Forwarded-For is honoured from a trusted proxy and ignored from anyone else."""
    client, service = _client(tmp_path, allow=["203.0.113.0/24"], peer="10.0.0.5",
                              proxies=["10.0.0.0/8"])
    forwarded = {"x-forwarded-for": "203.0.113.50"}
    with client:
        assert client.post(f"/hooks/pq/{TOKEN}", content=_body(),
                           headers=forwarded).status_code == 200
    client, service = _client(tmp_path / "b", allow=["203.0.113.0/24"], peer="192.0.2.1",
                              proxies=["10.0.0.0/8"])
    with client:
        assert client.post(f"/hooks/pq/{TOKEN}", content=_body(),
                           headers=forwarded).status_code == 403
        assert service.spool.stats().total == 0


# --- end to end -----------------------------------------------------------------------------


@pytest.mark.kafka
async def test_e2e_callbacks_reach_their_topics(kafka_bootstrap: str, tmp_path: Path) -> None:
    """Pingueen callbacks posted with the URL token come out normalised on their topics."""
    from harness import consume, make_settings, relay_server, validate

    source = {"name": "pq", "provider": "pingueen", "token": "env:PQ_TOKEN", "our_number": OURS}
    settings = make_settings(tmp_path, kafka=kafka_bootstrap, sources=[source],
                             environ={"PQ_TOKEN": TOKEN})
    prefix = settings.kafka.topic_prefix
    async with relay_server(settings) as url, httpx.AsyncClient(base_url=url) as client:
        for name in ("status-sent", "status-received", "inbound-text"):
            body = (FIXTURES / f"{name}.json").read_bytes()
            assert (await client.post(f"/hooks/pq/{TOKEN}", content=body)).status_code == 200
        assert (await client.post("/hooks/pq/nope", content=_body())).status_code == 401
        receipts = await consume(kafka_bootstrap, f"{prefix}delivery-receipts.v1", 2)
        inbound = await consume(kafka_bootstrap, f"{prefix}inbound-messages.v1", 1)
    by_key = {r.key: orjson.loads(r.value) for r in receipts}
    assert set(by_key) == {b"1232412420", b"1232412422"}
    assert by_key[b"1232412422"]["status"] == "delivered"
    assert by_key[b"1232412422"]["to"] == "+393471234568"
    (mo,) = inbound
    assert mo.key == f"{OURS}|+393471234567".encode()
    for rec in [*receipts, *inbound]:
        document = orjson.loads(rec.value)
        validate(document["type"], document)
        assert document["channel"] == "whatsapp"
