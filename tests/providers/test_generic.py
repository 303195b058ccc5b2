"""The generic provider: a JSON provider onboarded from configuration alone (mapping engine)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import time
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
from relay.providers.generic import configure, normalise
from relay.providers.mapping import parse_path, parse_paths
from relay.schema import Carrier, ErrorInfo, Event, Media, RawPostback, event_id
from relay.service import Service
from relay.settings import SourceConfig, parse
from relay.sources import build

FIXTURES = Path(__file__).parent / "fixtures" / "generic"
OPTIONS = tomllib.loads((FIXTURES / "source.toml").read_text())
KEY = b"generic-test-key-0123456789abcdef"
TOKEN = "acme-token-5d1f"


def context(options: dict[str, Any], name: str = "acme") -> SourceContext:
    """The context of a generic source configured with ``options``."""
    setup = configure(SourceConfig(name=name, provider="generic", options=options))
    return SourceContext(name=name, provider="generic", default_region="US",
                         options=setup.options)


CTX = context(OPTIONS)


def raw(body: bytes, source: str = "acme") -> RawPostback:
    """A stored postback holding ``body``."""
    return RawPostback(source=source, received_at=1_740_823_300.0, remote_addr="203.0.113.9",
                       method="POST", path=f"/hooks/{source}", query="", headers=(), body=body,
                       id=11)


def events_of(body: bytes | object, ctx: SourceContext = CTX) -> list[Event]:
    """The events of a body (bytes, or a value serialised as JSON)."""
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    out = normalise(raw(data, ctx.name), ctx)
    assert all(isinstance(e, Event) for e in out)
    return out  # type: ignore[return-value]


def events(name: str) -> list[Event]:
    """The events of a fixture, read with the fixture source options."""
    return events_of((FIXTURES / f"{name}.json").read_bytes())


# --- the fixtures ------------------------------------------------------------------------


def test_delivered_receipt_maps_every_configured_field() -> None:
    """DELIVRD is a final 'delivered' with every mapped field filled in."""
    (e,) = events("dlr-delivrd")
    assert (e.type, e.status, e.final, e.provider_status, e.provider) == (
        "delivery_receipt", "delivered", True, "DELIVRD", "generic")
    assert (e.message_id, e.client_ref, e.segments, e.channel) == ("acme-0001", "invoice-77", 1,
                                                                   "sms")
    assert (e.from_, e.to, e.occurred_at) == ("+15550001111", "+15551234567",
                                              "2025-03-01T10:00:04.000Z")
    assert e.carrier == Carrier(name="Verizon", mcc="311", mnc="480")
    assert e.id == event_id("generic", "acme", "status", "acme-0001", "DELIVRD")


def test_undeliverable_with_error_and_fallback_time() -> None:
    """UNDELIV carries its error; the time falls back to the second alternative path."""
    (e,) = events("dlr-undeliv")
    assert (e.status, e.final) == ("undeliverable", True)
    assert e.error == ErrorInfo(code="21", description="unknown subscriber")
    assert (e.to, e.from_, e.occurred_at) == ("+15551234568", "+15550001111",
                                              "2025-03-01T10:00:09.000Z")


def test_mapped_channel_and_case_insensitive_status() -> None:
    """'enroute' matches ENROUTE and a mapped 'WhatsApp' channel is whatsapp."""
    (e,) = events("dlr-enroute-whatsapp")
    assert (e.status, e.final, e.channel, e.to) == ("sent", False, "whatsapp", "+447700900123")
    assert e.occurred_at == "2025-03-01T10:00:01.000Z"


def test_normalised_status_names_map_to_themselves() -> None:
    """A status missing from the table that is a normalised name maps to itself."""
    (e,) = events("dlr-identity-read")
    assert (e.status, e.final, e.channel, e.occurred_at) == ("read", True, "rcs", None)


def test_unknown_status_and_channel() -> None:
    """An unlisted status is 'unknown' (not final); an unrecognised channel is 'unknown'."""
    (e,) = events("dlr-unknown-state")
    assert (e.status, e.final, e.provider_status, e.channel) == (
        "unknown", False, "PENDING_CARRIER", "unknown")


def test_inbound_uses_our_number_and_the_default_channel() -> None:
    """An inbound message without 'to' is addressed to our_number, on the default channel."""
    (e,) = events("inbound-sms")
    assert (e.type, e.status, e.text, e.channel) == ("inbound_message", None, "STOP", "sms")
    assert (e.from_, e.to, e.key) == ("+15557654321", "+15550001111",
                                      "+15550001111|+15557654321")
    assert e.id == event_id("generic", "acme", "inbound", "acme-mo-0001")


def test_inbound_media_are_paired_with_their_types() -> None:
    """[*] paths collect every media URL and pair it with its content type by position."""
    (e,) = events("inbound-mms-media")
    assert (e.channel, e.to, e.text) == ("mms", "+15550002222", "look")
    assert e.media == (Media("https://files.acme.example/a.png", "image/png"),
                       Media("https://files.acme.example/b.mp4", "video/mp4"))


def test_top_level_array_and_dedup_by_status() -> None:
    """A top-level array yields each event; two statuses of one message have distinct ids."""
    accepted, delivered = events("array-two")
    assert (accepted.status, accepted.final, delivered.status) == ("accepted", False, "delivered")
    assert accepted.message_id == delivered.message_id and accepted.id != delivered.id


def test_ids_are_scoped_by_source_and_deterministic() -> None:
    """The same payload through two generic sources gets two ids; twice through one, the same."""
    body = (FIXTURES / "dlr-delivrd.json").read_bytes()
    (a,) = events_of(body)
    (again,) = events_of(body)
    (other,) = events_of(body, context(OPTIONS, name="other"))
    assert a.id == again.id and a.id != other.id


@pytest.mark.parametrize("name", ["invalid-no-id", "invalid-truncated",
                                  "invalid-array-second-without-id"])
def test_unreadable_fixtures_are_dead_lettered(name: str) -> None:
    """A payload without message id (even one item of many) or broken JSON raises."""
    with pytest.raises(NormalisationError):
        events(name)


def test_a_dead_letter_reason_names_the_paths_looked_at() -> None:
    """The error says which path was expected to hold the message id."""
    with pytest.raises(NormalisationError, match=r"data\.id"):
        events("invalid-no-id")


def test_a_context_without_spec_is_a_dead_letter() -> None:
    """A generic context that was never configured dead-letters instead of guessing."""
    with pytest.raises(NormalisationError, match="no mapping"):
        normalise(raw(b"{}"), SourceContext(name="acme", provider="generic"))


# --- the path engine -------------------------------------------------------------------------

DOC = {"a": {"b": [{"c": 1}, {"c": 2}, {"d": 3}], "e.f": "dot", "n": None},
       "list": [10, 20, 30], "0": "zero"}


@pytest.mark.parametrize(("path", "value"), [
    ("a.b[0].c", 1), ("a.b[1].c", 2), ("a.b[-1].d", 3), ("a.b[3].c", None), ("a.b[*].c", [1, 2]),
    ("a.b[*].x", None), ("list[*]", [10, 20, 30]), ("list[-4]", None), ("a.n", None),
    ("0", "zero"), ("a.b.c", None), ("list.x", None), ("a[0]", None), ("missing.deep[2].x", None),
])  # fmt: skip
def test_paths_resolve_or_yield_none(path: str, value: object) -> None:
    """Dotted names, [n], negative indexes and [*] resolve; anything unmatched is None."""
    assert parse_path(path).value(DOC) == value


def test_a_top_level_index_addresses_an_array_body() -> None:
    """A path may start with an index, for bodies that are arrays."""
    assert parse_path("[1].id").value([{"id": "x"}, {"id": "y"}]) == "y"


@pytest.mark.parametrize("path", ["", ".a", "a.", "a..b", "a[", "a[]", "a[x]", "a]b", "a[1",
                                  "a.[0]", "a[*]b", "a[1.5]"])
def test_bad_paths_are_refused(path: str) -> None:
    """Malformed paths raise ValueError."""
    with pytest.raises(ValueError, match=r"\S"):
        parse_path(path)


def test_alternatives_take_the_first_that_matches() -> None:
    """Of a list of paths the first that reaches a value wins."""
    ctx = context({"mapping": {"message_id": ["nope", "id", "other"], "status": ["x", "s"]}})
    (e,) = events_of({"id": "first", "other": "second", "s": "sent"}, ctx)
    assert (e.message_id, e.status) == ("first", "sent")


def test_scalar_fields_skip_objects_to_the_next_alternative() -> None:
    """An alternative that reaches an object is skipped for a scalar field."""
    ctx = context({"mapping": {"message_id": "id", "error_description": ["err", "err.text"]}})
    (e,) = events_of({"id": "m", "err": {"text": "boom"}}, ctx)
    assert e.error == ErrorInfo(code="", description="boom")


@given(st.text(max_size=30))
def test_random_paths_only_raise_config_errors(path: str) -> None:
    """Any text is a path or a ConfigError, never another exception."""
    with contextlib.suppress(ConfigError):
        parse_paths(path, "sources[0].mapping.status")


# --- options -----------------------------------------------------------------------------


def test_items_path_reads_an_array_of_events() -> None:
    """items = "events" reads each element of body.events as one event."""
    ctx = context({"items": "payload.events", "mapping": {"message_id": "ref", "status": "st"}})
    first, second = events_of({"payload": {"events": [{"ref": "a", "st": "sent"},
                                                      {"ref": "b", "st": "failed"}]}}, ctx)
    assert (first.message_id, second.message_id, second.final) == ("a", "b", True)
    assert events_of({"payload": {"events": []}}, ctx) == []
    with pytest.raises(NormalisationError, match="not an array"):
        events_of({"payload": {"events": {"ref": "a"}}}, ctx)


@pytest.mark.parametrize(("rule", "body", "inbound"), [
    ({"path": "dir", "equals": "MO"}, {"dir": "mo"}, True),
    ({"path": "dir", "equals": ["in", "mo"]}, {"dir": "in"}, True),
    ({"path": "dir", "equals": "mo"}, {"dir": "mt"}, False),
    ({"path": "incoming", "equals": True}, {"incoming": True}, True),
    ({"path": "incoming", "equals": 1}, {"incoming": 0}, False),
    ({"path": "text", "exists": True}, {"text": "hi"}, True),
    ({"path": "text", "exists": True}, {"status": "sent"}, False),
    ({"always": True}, {"status": "sent"}, True),
])  # fmt: skip
def test_inbound_when_rules(rule: dict[str, Any], body: dict[str, Any], inbound: bool) -> None:
    """inbound_when matches by value (any case, lists, numbers, booleans), presence or always."""
    ctx = context({"mapping": {"message_id": "id", "status": "status"}, "inbound_when": rule})
    (e,) = events_of({"id": "m", **body}, ctx)
    assert (e.type == "inbound_message") is inbound


def test_without_inbound_when_everything_is_a_status() -> None:
    """A source without inbound_when reads every payload as a status callback."""
    ctx = context({"mapping": {"message_id": "id", "text": "text"}})
    (e,) = events_of({"id": "m", "text": "hello", "direction": "inbound"}, ctx)
    assert (e.type, e.status, e.provider_status) == ("delivery_receipt", "unknown", None)


def test_status_finality_defaults_and_overrides() -> None:
    """final follows the normalised status unless the table says otherwise."""
    ctx = context({"mapping": {"message_id": "id", "status": "s"}, "statuses": {
        "ok": "delivered", "gone": {"status": "unknown", "final": True},
        "soft": {"status": "failed", "final": False}, "7": "sent"}})
    cases = {"ok": ("delivered", True), "gone": ("unknown", True), "soft": ("failed", False),
             "OK": ("delivered", True)}
    for raw_status, expected in cases.items():
        (e,) = events_of({"id": "m", "s": raw_status}, ctx)
        assert (e.status, e.final) == expected
    (numeric,) = events_of({"id": "m", "s": 7}, ctx)
    assert (numeric.status, numeric.provider_status) == ("sent", "7")


def test_international_numbers_option_adds_the_plus() -> None:
    """numbers = 'international' reads digit-only numbers as carrying the country code."""
    mapping = {"message_id": "id", "to": "to"}
    body = {"id": "m", "to": "447911123456"}
    (auto,) = events_of(body, context({"mapping": mapping}))
    (intl,) = events_of(body, context({"mapping": mapping, "numbers": "international"}))
    assert intl.to == "+447911123456" and intl.to_kind == "e164"
    assert auto.to == "+447911123456"  # auto also gets there for a full international number
    (short,) = events_of({"id": "m", "to": "28444"},
                         context({"mapping": mapping, "numbers": "international"}))
    assert (short.to, short.to_kind) == ("28444", "short_code")


def test_subscriber_fills_to_of_statuses_and_from_of_inbound() -> None:
    """The subscriber field is the recipient of a status and the sender of an inbound message."""
    ctx = context({"mapping": {"message_id": "id", "subscriber": "msisdn"},
                   "inbound_when": {"path": "mo", "exists": True}, "our_number": "ACME"})
    (status,) = events_of({"id": "m", "msisdn": "+15551234567"}, ctx)
    (mo,) = events_of({"id": "m", "msisdn": "+15551234567", "mo": 1}, ctx)
    assert (status.from_, status.from_kind, status.to) == ("ACME", "alphanumeric", "+15551234567")
    assert (mo.from_, mo.to) == ("+15551234567", "ACME")


# --- configuration errors ----------------------------------------------------------------


def _settings(options: dict[str, Any]) -> dict[str, Any]:
    good = {"provider": "generic", "token": "env:ACME_TOKEN", "mapping": {"message_id": "id"}}
    return {"spool": {"dir": "/tmp/unused"}, "sources": [
        {"name": "a", **good}, {"name": "b", **good},
        {"name": "c", "provider": "generic", "token": "env:ACME_TOKEN", **options}]}


@pytest.mark.parametrize(("options", "key"), [
    ({}, "sources[2].mapping"),
    ({"mapping": ["id"]}, "sources[2].mapping"),
    ({"mapping": {"status": "state"}}, "sources[2].mapping.message_id"),
    ({"mapping": {"message_id": "id", "colour": "c"}}, "sources[2].mapping.colour"),
    ({"mapping": {"message_id": "id", "status": "data..state"}}, "sources[2].mapping.status"),
    ({"mapping": {"message_id": "id", "occurred_at": ["ts", "a[b]"]}},
     "sources[2].mapping.occurred_at[1]"),
    ({"mapping": {"message_id": "items[*].id"}}, "sources[2].mapping.message_id"),
    ({"mapping": {"message_id": "id"}, "statuses": {"DELIVRD": "done"}},
     "sources[2].statuses.DELIVRD"),
    ({"mapping": {"message_id": "id"}, "statuses": {"X": {"final": True}}},
     "sources[2].statuses.X"),
    ({"mapping": {"message_id": "id"}, "statuses": ["DELIVRD"]}, "sources[2].statuses"),
    ({"mapping": {"message_id": "id"}, "inbound_when": {"path": "d", "equals": {"x": 1}}},
     "sources[2].inbound_when.equals"),
    ({"mapping": {"message_id": "id"}, "inbound_when": "direction=inbound"},
     "sources[2].inbound_when"),
    ({"mapping": {"message_id": "id"}, "items": "events[*]"}, "sources[2].items"),
    ({"mapping": {"message_id": "id"}, "items": ["a", "b"]}, "sources[2].items"),
    ({"mapping": {"message_id": "id"}, "channel": 1}, "sources[2].channel"),
    ({"mapping": {"message_id": "id"}, "our_number": "+1"}, "sources[2].our_number"),
    ({"mapping": {"message_id": "id"}, "signing": {"scheme": "hmac", "secrets": ["env:X"]}},
     "sources[2].signing.scheme"),
    ({"mapping": {"message_id": "id"}, "signing": {"scheme": "standard-webhooks"}},
     "sources[2].signing.secrets"),
    ({"mapping": {"message_id": "id"}, "signing": {"scheme": "standard-webhooks",
                                                   "secrets": ["env:NOT_SET_ANYWHERE"]}},
     "sources[2].signing.secrets[0]"),
    ({"mapping": {"message_id": "id"}, "format": "json"}, "sources[2].format"),
])  # fmt: skip
def test_configuration_errors_name_the_key(options: dict[str, Any], key: str) -> None:
    """Every bad generic option stops start-up with a ConfigError naming its key."""
    settings = parse(_settings(options), environ={"ACME_TOKEN": TOKEN})
    with pytest.raises(ConfigError) as err:
        build(settings)
    assert err.value.key == key, err.value


def test_a_generic_source_needs_authentication() -> None:
    """A generic source with a mapping but no credentials or signing is refused."""
    settings = parse({"sources": [{"name": "c", "provider": "generic",
                                   "mapping": {"message_id": "id"}}]}, environ={})
    with pytest.raises(ConfigError, match="no authentication"):
        build(settings)


# --- configured entirely from TOML, over HTTP -------------------------------------------------

RELAY_TOML = """
[spool]
dir = "{spool}"

[[sources]]
name = "acme"
provider = "generic"
token = "env:ACME_TOKEN"
default_region = "US"
channel = "sms"
our_number = "+15550001111"
items = "events"

[sources.mapping]
message_id = "id"
status = "state"
occurred_at = ["ts", "created"]
to = "msisdn"
from = "sender"
text = "body"
client_ref = "ref"

[sources.inbound_when]
path = "direction"
equals = "inbound"

[sources.statuses]
DELIVRD = "delivered"
UNDELIV = {{ status = "undeliverable", final = true }}

[[sources]]
name = "acme-signed"
provider = "generic"
[sources.signing]
scheme = "standard-webhooks"
secrets = ["env:ACME_WHSEC"]
tolerance_seconds = 60
[sources.mapping]
message_id = "id"
status = "state"
"""


def _service(tmp_path: Path) -> Service:
    doc = tomllib.loads(RELAY_TOML.format(spool=tmp_path / "spool"))
    whsec = "whsec_" + base64.b64encode(KEY).decode()
    settings = parse(doc, environ={"ACME_TOKEN": TOKEN, "ACME_WHSEC": whsec})
    return Service(settings)


def test_a_provider_configured_from_toml_is_received_and_normalised(tmp_path: Path) -> None:
    """A relay TOML onboards a new provider: its postback is accepted and normalised."""
    service = _service(tmp_path)
    body = orjson.dumps({"events": [
        {"id": "x-1", "state": "DELIVRD", "msisdn": "2025550147", "ts": 1740823200, "ref": "r"},
        {"id": "x-2", "direction": "inbound", "sender": "(202) 555-0148", "body": "help"}]})
    with TestClient(create_app(service)) as client:
        assert client.post(f"/hooks/acme/{TOKEN}", content=body).status_code == 200
        assert client.post("/hooks/acme/wrong", content=body).status_code == 401
        assert service.spool.stats().total == 1
        (stored,) = service.spool.pending()
    derived = Normaliser(service.sources).derive(stored)
    receipt, inbound, consent = derived.events
    assert isinstance(receipt, Event) and isinstance(inbound, Event)
    assert (receipt.status, receipt.to, receipt.from_, receipt.client_ref) == (
        "delivered", "+12025550147", "+15550001111", "r")
    assert receipt.occurred_at == "2025-03-01T10:00:00.000Z"
    assert (inbound.from_, inbound.to, inbound.keyword) == ("+12025550148", "+15550001111",
                                                            "help")
    assert consent.type == "consent"


def _signed(body: bytes, stamp: int, key: bytes = KEY) -> dict[str, str]:
    mac = hmac.new(key, f"evt-1.{stamp}.".encode() + body, hashlib.sha256).digest()
    return {"webhook-id": "evt-1", "webhook-timestamp": str(stamp),
            "webhook-signature": "v1," + base64.b64encode(mac).decode()}


def test_standard_webhooks_signing_for_a_generic_provider(tmp_path: Path) -> None:
    """A generic source with signing accepts a signed body and refuses unsigned or stale ones."""
    service = _service(tmp_path)
    body = b'{"id": "s-1", "state": "delivered"}'
    now = int(time.time())
    with TestClient(create_app(service)) as client:
        assert client.post("/hooks/acme-signed", content=body).status_code == 401
        stale = _signed(body, now - 120)
        assert client.post("/hooks/acme-signed", content=body, headers=stale).status_code == 401
        wrong = _signed(body, now, b"w" * 32)
        assert client.post("/hooks/acme-signed", content=body, headers=wrong).status_code == 401
        assert service.spool.stats().total == 0
        good = _signed(body, now)
        assert client.post("/hooks/acme-signed", content=body, headers=good).status_code == 200
        assert service.spool.stats().total == 1


def test_basic_auth_for_a_generic_provider(tmp_path: Path) -> None:
    """A generic source may use HTTP Basic through the common key."""
    settings = parse({"spool": {"dir": str(tmp_path / "spool")}, "sources": [{
        "name": "b", "provider": "generic", "mapping": {"message_id": "id"},
        "basic_auth": {"username": "relay", "password": "env:B_PASS"}}]},
        environ={"B_PASS": "pw-123"})  # fmt: skip
    service = Service(settings)
    good = base64.b64encode(b"relay:pw-123").decode()
    bad = base64.b64encode(b"relay:pw-124").decode()
    with TestClient(create_app(service)) as client:
        resp = client.post("/hooks/b", content=b'{"id": 1}',
                           headers={"authorization": f"Basic {bad}"})
        assert resp.status_code == 401 and service.spool.stats().total == 0
        resp = client.post("/hooks/b", content=b'{"id": 1}',
                           headers={"authorization": f"Basic {good}"})
        assert resp.status_code == 200 and service.spool.stats().total == 1


# --- robustness -----------------------------------------------------------------------------


@given(st.binary(max_size=400))
def test_random_bytes_only_raise_normalisation_error(body: bytes) -> None:
    """Random bytes yield events or NormalisationError, never another exception."""
    with contextlib.suppress(NormalisationError):
        normalise(raw(body), CTX)


JSONS = json_documents(
    st.none() | st.booleans() | INT64 | st.floats() | st.text(max_size=8),
    st.sampled_from(["data", "id", "state", "direction", "media", "url", "err", "ts", "to",
                     "network", "channel", "parts"]), max_size=6, max_leaves=25)


@given(JSONS)
def test_random_json_only_raises_normalisation_error(data: object) -> None:
    """Random JSON shaped like the mapped fields never raises anything but NormalisationError."""
    with contextlib.suppress(NormalisationError):
        normalise(raw(orjson.dumps(data)), CTX)


# --- end to end -----------------------------------------------------------------------------


@pytest.mark.kafka
async def test_e2e_generic_provider_events_reach_their_topics(kafka_bootstrap: str,
                                                               tmp_path: Path) -> None:
    """A provider onboarded by mapping alone publishes receipts and inbound messages to Kafka."""
    from harness import consume, make_settings, relay_server, validate

    source = {"name": "acme", "provider": "generic", "token": "env:ACME_TOKEN",
              "default_region": "US", **OPTIONS}
    settings = make_settings(tmp_path, kafka=kafka_bootstrap, sources=[source],
                             environ={"ACME_TOKEN": TOKEN})
    prefix = settings.kafka.topic_prefix
    async with relay_server(settings) as url, httpx.AsyncClient(base_url=url) as client:
        for name in ("dlr-delivrd", "array-two", "inbound-sms"):
            body = (FIXTURES / f"{name}.json").read_bytes()
            assert (await client.post(f"/hooks/acme/{TOKEN}", content=body)).status_code == 200
        receipts = await consume(kafka_bootstrap, f"{prefix}delivery-receipts.v1", 3)
        inbound = await consume(kafka_bootstrap, f"{prefix}inbound-messages.v1", 1)
        consent = await consume(kafka_bootstrap, f"{prefix}consent.v1", 1)
    keys = sorted(r.key for r in receipts)
    assert keys == [b"acme-0001", b"acme-0006", b"acme-0006"]
    statuses = {orjson.loads(r.value)["status"] for r in receipts if r.key == b"acme-0006"}
    assert statuses == {"accepted", "delivered"}
    (mo,) = inbound
    assert mo.key == b"+15550001111|+15557654321"
    assert orjson.loads(consent[0].value)["action"] == "opt_out"
    for rec in [*receipts, *inbound]:
        document = orjson.loads(rec.value)
        validate(document["type"], document)
        assert document["provider"] == "generic" and document["source"] == "acme"
