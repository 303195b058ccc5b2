"""Ping+ Media webhooks: parsing, status mapping, Standard Webhooks signatures, HTTP answers.

The ``*.headers.json`` fixtures hold a ``webhook-signature`` made with ``whsec.txt`` at
``webhook-timestamp`` 1740823210 over the exact fixture bytes: a fixture edited by hand
must be re-signed (see :func:`sign`).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
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
from relay.errors import AuthenticationFailed, ConfigError, NormalisationError
from relay.pipeline import Normaliser
from relay.providers import SourceContext
from relay.providers.pingplus import PROVIDER, configure, normalise
from relay.schema import STATUSES, TERMINAL, Carrier, ErrorInfo, Event, Media, RawPostback, event_id
from relay.settings import SourceConfig, parse
from relay.sources import build_one
from relay.verify import Request, StandardWebhooksVerifier, Verifier

FIXTURES = Path(__file__).parent / "fixtures" / "pingplus"
NEW_SECRET = FIXTURES / "whsec.txt"
OLD_SECRET = FIXTURES / "whsec-old.txt"
STAMP = 1_740_823_210
CTX = SourceContext(name="pp", provider="pingplus")
OPTIONS = tomllib.loads((FIXTURES / "source.toml").read_text())
SECRETS = [f"file:{NEW_SECRET}", f"file:{OLD_SECRET}"]


def key_of(path: Path) -> bytes:
    """The HMAC key of a ``whsec_`` secret file."""
    return base64.b64decode(path.read_text().strip().removeprefix("whsec_"))


def sign(body: bytes, msg_id: str, stamp: int, key: bytes) -> str:
    """A Standard Webhooks ``v1,`` signature entry."""
    mac = hmac.new(key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def headers_of(name: str) -> dict[str, str]:
    """The fixture's headers (empty when it has none)."""
    path = FIXTURES / f"{name}.headers.json"
    return json.loads(path.read_text()) if path.exists() else {}


def raw(body: bytes, headers: dict[str, str] | None = None, raw_id: int = 9) -> RawPostback:
    """A stored postback holding ``body``."""
    return RawPostback(source="pp", received_at=1_740_823_300.0, remote_addr="203.0.113.9",
                       method="POST", path="/hooks/pp", query="",
                       headers=tuple((headers or {}).items()), body=body, id=raw_id)


def events(name: str, ctx: SourceContext = CTX) -> list[Event]:
    """The events of a fixture, with its headers."""
    out = normalise(raw((FIXTURES / f"{name}.json").read_bytes(), headers_of(name)), ctx)
    assert all(isinstance(e, Event) for e in out)
    return out  # type: ignore[return-value]


def verifier(**signing: Any) -> Verifier:
    """The verifier of a Ping+ source with the fixture secrets and ``signing`` overrides."""
    options = {"signing": {"secrets": SECRETS, "tolerance_seconds": 300, **signing}}
    (found,) = configure(SourceConfig(name="pp", provider="pingplus", options=options)).verifiers
    return found


def request(body: bytes, headers: dict[str, str]) -> Request:
    """A verifier request."""
    return Request("POST", "/hooks/pp", "", {k.lower(): v for k, v in headers.items()}, body)


# --- normalisation --------------------------------------------------------------------------


def test_delivered_sms_receipt_maps_every_field() -> None:
    """A delivered SMS receipt keeps id, ref, numbers, segments, time and the operator as carrier."""
    (e,) = events("status-delivered-sms")
    assert (e.type, e.status, e.final, e.provider_status) == (
        "delivery_receipt", "delivered", True, "delivered")
    assert (e.channel, e.message_id, e.client_ref, e.segments) == (
        "sms", "msg_01JNB3XZ9A1", "order-8812", 1)
    assert (e.from_, e.from_kind, e.to, e.to_kind) == ("PINGPLUS", "alphanumeric",
                                                        "+447700900123", "e164")
    assert e.carrier == Carrier(name="Vodafone UK", mcc="234", mnc="15")
    assert (e.occurred_at, e.received_at) == ("2025-03-01T10:00:04.000Z",
                                              "2025-03-01T10:01:40.000Z")
    assert e.error is None and e.raw_id == 9 and e.key == "msg_01JNB3XZ9A1"
    assert e.id == event_id("pingplus", "msg_2tK0000Pp")


def test_failed_whatsapp_receipt_carries_the_error() -> None:
    """A failed WhatsApp receipt is final with error_code and status_reason as the error."""
    (e,) = events("status-failed-whatsapp")
    assert (e.channel, e.status, e.final) == ("whatsapp", "failed", True)
    assert e.error == ErrorInfo(code="131026", description="recipient not on WhatsApp")
    assert e.from_ is None and e.carrier is None


def test_read_rcs_receipt_keeps_a_leading_zero_mnc() -> None:
    """An RCS read receipt ranks 6, keeps mnc '01' as text and millisecond times."""
    (e,) = events("status-read-rcs")
    assert (e.channel, e.status, e.status_rank) == ("rcs", "read", 6)
    assert e.carrier == Carrier(name="Orange F", mcc="208", mnc="01")
    assert e.occurred_at == "2025-03-01T10:02:58.250Z"


def test_numeric_operator_codes_and_numbers_without_plus() -> None:
    """Numeric MCC/MNC become strings, '2' segments an int, digits get '+', a short code stays."""
    (e,) = events("status-sent-numeric-operator")
    assert (e.status, e.final) == ("sent", False)
    assert e.carrier == Carrier(name="T-Mobile USA", mcc="310", mnc="260")
    assert (e.segments, e.to, e.from_, e.from_kind) == (2, "+12025550147", "28444", "short_code")
    assert e.occurred_at == "2025-03-01T10:00:01.000Z"


def test_uppercase_status_and_channel_and_unix_milliseconds() -> None:
    """'EXPIRED' and 'SMS' are read case-insensitively; a numeric error code becomes text."""
    (e,) = events("status-expired-uppercase")
    assert (e.status, e.final, e.provider_status, e.channel) == ("expired", True, "EXPIRED", "sms")
    assert e.error == ErrorInfo(code="408", description="validity period elapsed")
    assert e.occurred_at == "2025-03-02T10:00:00.000Z"


def test_unknown_status_is_unknown_and_not_final() -> None:
    """A status outside the normalised set is 'unknown', not final, with the raw value kept."""
    (e,) = events("status-unknown-value")
    assert (e.status, e.final, e.provider_status, e.status_rank) == (
        "unknown", False, "pending_review", 0)
    assert e.occurred_at == "2025-03-01T10:00:06.000Z"  # falls back to created_at


def test_body_without_data_envelope_is_read_flat() -> None:
    """A receipt whose fields sit at the top level (no 'data') is still understood."""
    (e,) = events("status-rejected-flat")
    assert (e.status, e.message_id, e.from_) == ("rejected", "msg_01JNB3XZ9A7", "PINGPLUS")
    assert e.error == ErrorInfo(code="R12", description="sender id not registered")


def test_missing_type_is_inferred_and_body_id_is_the_dedup_key() -> None:
    """Without 'type' a body with a status is a receipt; without webhook-id the body id dedups."""
    assert headers_of("status-queued-no-type") == {}
    (e,) = events("status-queued-no-type")
    assert (e.type, e.status, e.client_ref) == ("delivery_receipt", "queued", "batch-7/42")
    assert e.id == event_id("pingplus", "evt_01JNB3Y0R2D7")


def test_operator_given_as_a_name_and_offset_time() -> None:
    """An operator given as a plain string is the carrier name; +01:00 times become UTC."""
    (e,) = events("status-undeliverable-operator-name")
    assert (e.status, e.final) == ("undeliverable", True)
    assert e.carrier == Carrier(name="Telekom DE")
    assert e.occurred_at == "2025-03-01T10:04:59.000Z"


def test_inbound_stop_keeps_provider_keyword_as_a_flag() -> None:
    """An inbound STOP keeps the text, and Ping+'s keyword routing only as a flag."""
    (e,) = events("inbound-stop-sms")
    assert (e.type, e.status, e.final, e.text) == ("inbound_message", None, False, "STOP")
    assert (e.from_, e.to, e.key) == ("+447700900123", "+447700900000",
                                      "+447700900000|+447700900123")
    assert e.flags == ("provider_keyword:opt_out",)
    assert e.carrier == Carrier(mcc="234", mnc="15") and e.media == ()
    assert e.occurred_at == "2025-03-01T10:00:59.000Z" and e.keyword is None


def test_inbound_stop_becomes_consent_through_the_central_detection() -> None:
    """The pipeline's own keyword detection turns the inbound STOP into an opt-out."""
    options = {"signing": {"secrets": SECRETS}}
    source = build_one(SourceConfig(name="pp", provider="pingplus", options=options), 1 << 20)
    derived = Normaliser({"pp": source}).derive(
        raw((FIXTURES / "inbound-stop-sms.json").read_bytes(), headers_of("inbound-stop-sms")))
    inbound, consent = derived.events
    assert isinstance(inbound, Event) and inbound.keyword == "opt_out"
    assert consent.type == "consent" and consent.key == "+447700900123"


def test_inbound_whatsapp_media() -> None:
    """Inbound WhatsApp media keeps each URL and its content type when given."""
    (e,) = events("inbound-whatsapp-media")
    assert (e.channel, e.text) == ("whatsapp", "photo")
    assert e.media == (Media("https://media.pingplus.example/m/abc.jpg", "image/jpeg"),
                       Media("https://media.pingplus.example/m/def.ogg", None))
    assert e.occurred_at == "2025-03-01T10:02:00.000Z"


def test_inbound_rcs_to_a_brand_sender() -> None:
    """An RCS message to an alphanumeric brand keeps it as given and the unicode text intact."""
    (e,) = events("inbound-rcs-unicode")
    assert (e.channel, e.to, e.to_kind, e.text) == ("rcs", "ACMEBRAND", "alphanumeric",
                                                    "Ça marche 👍")
    assert e.flags == ()


def test_array_body_yields_one_event_per_item() -> None:
    """An array of events yields each; an item without id is keyed by webhook-id and position."""
    receipt, inbound = events("batch-two-events")
    assert (receipt.status, receipt.final, inbound.type, inbound.text) == (
        "accepted", False, "inbound_message", "help")
    assert receipt.id == event_id("pingplus", "evt_01JNB3Y0R2DC")
    webhook_id = headers_of("batch-two-events")["webhook-id"]
    assert inbound.id == event_id("pingplus", f"{webhook_id}#1")


def test_national_numbers_use_the_default_region() -> None:
    """A national number is made E.164 with the source's default_region."""
    body = orjson.dumps({"type": "message.status", "id": "evt_n", "data": {
        "message_id": "m1", "status": "delivered", "to": "07911 123456"}})
    (e,) = normalise(raw(body), SourceContext(name="pp", provider="pingplus",
                                              default_region="GB"))
    assert isinstance(e, Event) and (e.to, e.to_kind) == ("+447911123456", "e164")


def test_without_any_id_the_dedup_key_is_derived_from_the_content() -> None:
    """With neither webhook-id nor body id, the id is derived from type, message, status, time."""
    body = orjson.dumps({"type": "message.status", "data": {
        "message_id": "m1", "status": "sent", "occurred_at": "2025-03-01T10:00:00Z"}})
    (e,) = normalise(raw(body), CTX)
    assert isinstance(e, Event)
    assert e.id == event_id("pingplus", "message.status", "m1", "sent", "2025-03-01T10:00:00Z")


def test_event_ids_are_deterministic_and_distinct() -> None:
    """Every fixture event has its own id, the same on every run."""
    names = sorted(p.name.removesuffix(".json") for p in FIXTURES.glob("*.json")
                   if not p.name.endswith(".headers.json") and not p.name.startswith("invalid"))
    first = [e.id for n in names for e in events(n)]
    assert first == [e.id for n in names for e in events(n)]
    assert len(set(first)) == len(first) == len(names) + 1  # the batch holds two


@pytest.mark.parametrize("status", STATUSES)
def test_status_table_is_the_identity(status: str) -> None:
    """Each normalised status maps to itself, final exactly when it is terminal."""
    body = orjson.dumps({"type": "message.status", "data": {"message_id": "m", "status": status}})
    (e,) = normalise(raw(body), CTX)
    assert isinstance(e, Event)
    assert (e.status, e.final) == (status, status in TERMINAL)


@pytest.mark.parametrize("name", ["invalid-not-json", "invalid-unknown-type",
                                  "invalid-status-without-message-id",
                                  "invalid-array-of-strings"])
def test_unreadable_fixtures_are_dead_lettered(name: str) -> None:
    """Non-JSON, an unknown type, a receipt without message id and non-objects raise."""
    with pytest.raises(NormalisationError):
        events(name)


@pytest.mark.parametrize("body", [b"", b"null", b"42", b'"message.status"', b"[1]",
                                  b'{"type": 7, "data": []}', b'{"type": "message.status"}'])
def test_wrong_shapes_are_dead_lettered(body: bytes) -> None:
    """Bodies of the wrong JSON shape raise NormalisationError."""
    with pytest.raises(NormalisationError):
        normalise(raw(body), CTX)


@given(st.binary(max_size=400), st.dictionaries(st.sampled_from(["webhook-id", "x"]),
                                                st.text(max_size=20)))
def test_random_bytes_only_raise_normalisation_error(body: bytes, headers: dict[str, str]) -> None:
    """Random bodies and headers yield events or NormalisationError, never another exception."""
    with contextlib.suppress(NormalisationError):
        normalise(raw(body, headers), CTX)


JSONS = json_documents(
    st.none() | st.booleans() | INT64 | st.floats() | st.text(max_size=8),
    st.sampled_from(["type", "data", "id", "message_id", "status", "operator", "media", "to",
                     "occurred_at", "channel"]), max_size=6, max_leaves=20)


@given(JSONS)
def test_random_json_only_raises_normalisation_error(data: object) -> None:
    """Random JSON using Ping+'s field names never raises anything but NormalisationError."""
    with contextlib.suppress(NormalisationError):
        normalise(raw(orjson.dumps(data)), CTX)


# --- configuration --------------------------------------------------------------------------


def _options(**signing: Any) -> dict[str, Any]:
    return {"signing": {"secrets": [f"file:{NEW_SECRET}"], **signing}}


@pytest.mark.parametrize(("options", "key"), [
    ({}, "sources[3].signing"),
    ({"signing": "file:/x"}, "sources[3].signing"),
    ({"signing": {}}, "sources[3].signing.secrets"),
    (_options(secrets=[]), "sources[3].signing.secrets"),
    (_options(secrets=["whsec_inline"]), "sources[3].signing.secrets[0]"),
    (_options(secrets=[f"file:{NEW_SECRET}", "env:RELAY_TEST_UNSET_VAR"]),
     "sources[3].signing.secrets[1]"),
    (_options(secrets=[f"file:{FIXTURES / 'source.toml'}"]), "sources[3].signing.secrets[0]"),
    (_options(tolerance_seconds=0), "sources[3].signing.tolerance_seconds"),
    (_options(tolerance_seconds="300"), "sources[3].signing.tolerance_seconds"),
    (_options(scheme="hmac-sha1"), "sources[3].signing.scheme"),
    (_options(algorithm="sha256"), "sources[3].signing.algorithm"),
    ({**_options(), "mapping": {}}, "sources[3].mapping"),
])  # fmt: skip
def test_configuration_errors_name_the_key(options: dict[str, Any], key: str) -> None:
    """Every bad Ping+ option is refused at start-up with a ConfigError naming its key."""
    with pytest.raises(ConfigError) as err:
        configure(SourceConfig(name="pp", provider="pingplus", options=options, index=3))
    assert err.value.key == key


def test_short_keys_are_refused(tmp_path: Path) -> None:
    """A whsec secret whose key is shorter than 16 bytes is refused."""
    short = tmp_path / "short.whsec"
    short.write_text("whsec_" + base64.b64encode(b"tiny").decode())
    with pytest.raises(ConfigError, match="at least 16"):
        configure(SourceConfig(name="pp", provider="pingplus",
                               options=_options(secrets=[f"file:{short}"])))


def test_fixture_source_options_configure_two_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fixture source.toml (paths relative to the repo root) yields one verifier, two keys."""
    monkeypatch.chdir(FIXTURES.parents[3])
    (found,) = configure(SourceConfig(name="pp", provider="pingplus", options=OPTIONS)).verifiers
    assert isinstance(found, StandardWebhooksVerifier)
    assert found.keys == (key_of(NEW_SECRET), key_of(OLD_SECRET)) and found.tolerance == 300


def test_webhook_id_is_a_kept_header() -> None:
    """The webhook-id header is stored with the raw postback for dedup."""
    assert "webhook-id" in PROVIDER.kept_headers


# --- verification ---------------------------------------------------------------------------

SIGNED = sorted(p.name.removesuffix(".headers.json") for p in FIXTURES.glob("*.headers.json"))


@pytest.mark.parametrize("name", SIGNED)
def test_signed_fixtures_verify(name: str) -> None:
    """Each fixture verifies with its stored signature at its timestamp."""
    body = (FIXTURES / f"{name}.json").read_bytes()
    verifier().verify(request(body, headers_of(name)), float(STAMP))


def _delivered() -> tuple[bytes, dict[str, str]]:
    return (FIXTURES / "status-delivered-sms.json").read_bytes(), headers_of("status-delivered-sms")


def test_one_changed_body_byte_fails() -> None:
    """Changing a single byte of the body breaks the signature."""
    body, headers = _delivered()
    changed = body.replace(b'"delivered"', b'"delivereD"', 1)
    assert len(changed) == len(body) and changed != body
    with pytest.raises(AuthenticationFailed):
        verifier().verify(request(changed, headers), float(STAMP))


def test_wrong_secret_fails(tmp_path: Path) -> None:
    """A signature made with another secret is refused."""
    other = tmp_path / "other.whsec"
    other.write_text("whsec_" + base64.b64encode(b"x" * 32).decode())
    body, headers = _delivered()
    with pytest.raises(AuthenticationFailed):
        verifier(secrets=[f"file:{other}"]).verify(request(body, headers), float(STAMP))


@pytest.mark.parametrize("skew", [301, -301, 86_400])
def test_stale_or_future_timestamp_fails(skew: int) -> None:
    """A timestamp more than 300 s away from now, in either direction, is refused."""
    body, headers = _delivered()
    with pytest.raises(AuthenticationFailed, match="tolerance"):
        verifier().verify(request(body, headers), float(STAMP + skew))


def test_timestamp_at_the_edge_of_the_tolerance_passes() -> None:
    """A timestamp exactly 300 s old still verifies."""
    body, headers = _delivered()
    verifier().verify(request(body, headers), float(STAMP + 300))


def test_tolerance_is_configurable() -> None:
    """tolerance_seconds = 30 refuses a 31-second-old signature the default accepts."""
    body, headers = _delivered()
    with pytest.raises(AuthenticationFailed):
        verifier(tolerance_seconds=30).verify(request(body, headers), float(STAMP + 31))
    verifier(tolerance_seconds=30).verify(request(body, headers), float(STAMP + 30))


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_header_fails(missing: str) -> None:
    """Leaving out any of the three Standard Webhooks headers is refused."""
    body, headers = _delivered()
    del headers[missing]
    with pytest.raises(AuthenticationFailed, match="missing"):
        verifier().verify(request(body, headers), float(STAMP))


@pytest.mark.parametrize(("name", "value"), [
    ("webhook-timestamp", "1740823210.0"), ("webhook-timestamp", "-1740823210"),
    ("webhook-timestamp", "\uff11\uff17\uff14\uff10"), ("webhook-timestamp", "9" * 40),
    ("webhook-signature", "v1,"), ("webhook-signature", "v1,***not-base64***"),
    ("webhook-signature", "garbage"), ("webhook-signature", "v2,c2lnbmF0dXJl"),
    ("webhook-signature", "v1a,c2lnbmF0dXJl"), ("webhook-id", "msg_é\udc80"),
])  # fmt: skip
def test_malformed_header_fails(name: str, value: str) -> None:
    """Malformed timestamps, signatures and ids are refused with AuthenticationFailed only."""
    body, headers = _delivered()
    headers[name] = value
    with pytest.raises(AuthenticationFailed):
        verifier().verify(request(body, headers), float(STAMP))


def test_rotation_accepts_the_old_secret() -> None:
    """With two secrets configured, a body signed with the older one verifies."""
    body, headers = _delivered()
    headers["webhook-signature"] = sign(body, headers["webhook-id"], STAMP, key_of(OLD_SECRET))
    verifier().verify(request(body, headers), float(STAMP))
    with pytest.raises(AuthenticationFailed):
        verifier(secrets=[f"file:{NEW_SECRET}"]).verify(request(body, headers), float(STAMP))


def test_several_signature_entries_any_valid_one_passes() -> None:
    """A header with several entries verifies when any v1 entry is valid."""
    body, headers = _delivered()
    good = headers["webhook-signature"]
    bogus = sign(body, headers["webhook-id"], STAMP, b"k" * 32)
    headers["webhook-signature"] = f"v1a,abcd {bogus}  {good} v2,zzz"
    verifier().verify(request(body, headers), float(STAMP))
    headers["webhook-signature"] = f"{bogus} v1,{good[3:][::-1]}"
    with pytest.raises(AuthenticationFailed):
        verifier().verify(request(body, headers), float(STAMP))


@given(st.dictionaries(st.sampled_from(["webhook-id", "webhook-timestamp", "webhook-signature",
                                        "x-other"]), st.text(max_size=60)),
       st.binary(max_size=64), st.floats(allow_nan=True, allow_infinity=True))
def test_random_headers_only_raise_authentication_failed(headers: dict[str, str], body: bytes,
                                                         now: float) -> None:
    """Whatever the headers, body and clock, the verifier passes or raises AuthenticationFailed."""
    with contextlib.suppress(AuthenticationFailed):
        verifier().verify(request(body, headers), now)


@given(st.sampled_from(["webhook-id", "webhook-timestamp", "webhook-signature"]),
       st.text(max_size=80))
def test_one_random_header_over_a_valid_request_fails(name: str, value: str) -> None:
    """Replacing any one header of a valid request by random text never passes by accident."""
    body, headers = _delivered()
    if headers[name] == value:
        return
    headers[name] = value
    with pytest.raises(AuthenticationFailed):
        verifier().verify(request(body, headers), float(STAMP))


# --- over HTTP ------------------------------------------------------------------------------


def _client(tmp_path: Path, clock: float = STAMP) -> tuple[TestClient, Any]:
    from relay.service import Service

    settings = parse({"spool": {"dir": str(tmp_path / "spool")}, "sources": [{
        "name": "pp", "provider": "pingplus", "signing": {
            "secrets": [f"file:{NEW_SECRET.resolve()}", f"file:{OLD_SECRET.resolve()}"]}}]},
        environ={})  # fmt: skip
    service = Service(settings, clock=lambda: clock)
    return TestClient(create_app(service)), service


def test_signed_postback_is_accepted_and_spooled_with_its_webhook_id(tmp_path: Path) -> None:
    """A correctly signed postback is answered 200 and spooled with its webhook-id header."""
    client, service = _client(tmp_path)
    body, headers = _delivered()
    with client:
        resp = client.post("/hooks/pp", content=body, headers=headers)
        assert resp.status_code == 200 and resp.json()["status"] == "accepted"
        assert service.spool.stats().total == 1
        (stored,) = service.spool.pending()
    assert stored.header("webhook-id") == "msg_2tK0000Pp" and stored.body == body
    (e,) = normalise(stored, CTX)
    assert e.id == event_id("pingplus", "msg_2tK0000Pp")


def _tampered(case: str) -> tuple[bytes, dict[str, str], float]:
    body, headers = _delivered()
    now = float(STAMP)
    if case == "body":
        body = body.replace(b"Vodafone", b"Vodafonf")
    elif case == "secret":
        headers["webhook-signature"] = sign(body, headers["webhook-id"], STAMP, b"z" * 32)
    elif case == "stale":
        now += 3600
    elif case == "malformed":
        headers["webhook-timestamp"] = "yesterday"
    else:
        del headers[case]
    return body, headers, now


@pytest.mark.parametrize("case", ["body", "secret", "stale", "malformed", "webhook-id",
                                  "webhook-timestamp", "webhook-signature"])
def test_bad_signatures_get_401_and_nothing_is_spooled(tmp_path: Path, case: str) -> None:
    """Each bad-signature case is answered 401 and nothing reaches the spool."""
    body, headers, now = _tampered(case)
    client, service = _client(tmp_path, now)
    with client:
        resp = client.post("/hooks/pp", content=body, headers=headers)
        assert resp.status_code == 401 and resp.json()["error"] == "unauthenticated"
        assert service.spool.stats().total == 0


# --- end to end -----------------------------------------------------------------------------


@pytest.mark.kafka
async def test_e2e_signed_postbacks_reach_their_topics(kafka_bootstrap: str,
                                                        tmp_path: Path) -> None:
    """Signed Ping+ postbacks come out as receipts keyed by message id and inbound by conversation."""
    from harness import consume, make_settings, relay_server, validate

    source = {"name": "pp", "provider": "pingplus",
              "signing": {"secrets": [f"file:{NEW_SECRET.resolve()}"]}}
    settings = make_settings(tmp_path, kafka=kafka_bootstrap, sources=[source])
    prefix = settings.kafka.topic_prefix
    key = key_of(NEW_SECRET)
    async with relay_server(settings) as url, httpx.AsyncClient(base_url=url) as client:
        for n, name in enumerate(["status-delivered-sms", "status-failed-whatsapp",
                                  "inbound-stop-sms"]):
            body = (FIXTURES / f"{name}.json").read_bytes()
            stamp = int(time.time())
            headers = {"webhook-id": f"msg_e2e_{n}", "webhook-timestamp": str(stamp),
                       "webhook-signature": sign(body, f"msg_e2e_{n}", stamp, key)}
            resp = await client.post("/hooks/pp", content=body, headers=headers)
            assert resp.status_code == 200
        receipts = await consume(kafka_bootstrap, f"{prefix}delivery-receipts.v1", 2)
        inbound = await consume(kafka_bootstrap, f"{prefix}inbound-messages.v1", 1)
        consent = await consume(kafka_bootstrap, f"{prefix}consent.v1", 1)
    by_key = {r.key: orjson.loads(r.value) for r in receipts}
    assert set(by_key) == {b"msg_01JNB3XZ9A1", b"msg_01JNB3XZ9A2"}
    assert by_key[b"msg_01JNB3XZ9A1"]["carrier"] == {"name": "Vodafone UK", "mcc": "234",
                                                      "mnc": "15"}
    assert by_key[b"msg_01JNB3XZ9A2"]["status"] == "failed"
    assert by_key[b"msg_01JNB3XZ9A1"]["id"] == event_id("pingplus", "msg_e2e_0")
    (mo,) = inbound
    assert mo.key == b"+447700900000|+447700900123"
    assert orjson.loads(mo.value)["keyword"] == "opt_out"
    assert consent[0].key == b"+447700900123"
    for rec in [*receipts, *inbound]:
        document = orjson.loads(rec.value)
        validate(document["type"], document)
