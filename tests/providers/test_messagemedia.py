"""Sinch MessageMedia: delivery reports, replies, status mapping and RSA-signed webhooks."""

from __future__ import annotations

import base64
import contextlib
import time
from collections.abc import Iterator
from email.utils import formatdate
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from harness import basic, consume, make_settings, relay_server, validate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient
from strategies import INT64, json_documents

from relay.app import create_app
from relay.errors import AuthenticationFailed, ConfigError, NormalisationError
from relay.providers import SourceContext
from relay.providers.common import table
from relay.providers.messagemedia import FIELDS, Options, configure, normalise, resolve_status
from relay.schema import STATUSES, Event, RawPostback
from relay.service import Service
from relay.settings import SourceConfig, parse
from relay.verify import MessageMediaVerifier, Request

FIXTURES = Path(__file__).parent / "fixtures" / "messagemedia"
KEY1 = "5f3c2a1e-8d4b-4f6a-9c7e-1b2d3e4f5a60"
KEY2 = "6a4d3b2f-9e5c-4a7b-8d8f-2c3e4f5a6b71"
NOW = 1_740_823_300.0  # 2025-03-01T10:01:40Z
DATE = formatdate(NOW, usegmt=True)
CTX = SourceContext(name="mm", provider="messagemedia", default_region="AU")
HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "SHA224": hashes.SHA224, "SHA256": hashes.SHA256, "SHA512": hashes.SHA512,
}  # fmt: skip
SIGNING = {"keys": {KEY1: f"file:{FIXTURES}/mm1-public.pem", KEY2: f"file:{FIXTURES}/mm2-public.b64"},
           "max_skew_seconds": 300}  # fmt: skip


def private(name: str) -> rsa.RSAPrivateKey:
    """A committed test private key."""
    key = serialization.load_pem_private_key((FIXTURES / f"{name}-private.pem").read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


def sign(body: bytes, *, key: rsa.RSAPrivateKey | None = None, key_id: str = KEY1,
         date: str = DATE, path: str = "/hooks/mm", digest: str = "SHA256") -> dict[str, str]:
    """The headers MessageMedia sends with a signed webhook."""
    signed = f"POST {path} HTTP/1.1".encode() + date.encode() + body
    sig = (key or private("mm1")).sign(signed, padding.PKCS1v15(), HASHES[digest]())
    return {"date": date, "x-messagemedia-key-id": key_id, "x-messagemedia-digest-type": digest,
            "x-messagemedia-cipher-type": "RSA",
            "x-messagemedia-signature": base64.b64encode(sig).decode()}  # fmt: skip


def source_config(**options: Any) -> SourceConfig:
    """A MessageMedia source configuration with the given provider options."""
    return SourceConfig(name="mm", provider="messagemedia", options=options)


def verifier(**signing: Any) -> MessageMediaVerifier:
    """The verifier a source with the test keys (and ``signing`` overrides) configures."""
    setup = configure(source_config(signing={**SIGNING, **signing}))
    (found,) = setup.verifiers
    assert isinstance(found, MessageMediaVerifier)
    return found


def request(body: bytes, headers: dict[str, str], path: str = "/hooks/mm") -> Request:
    """A verifier request as the web layer builds it."""
    return Request("POST", path, "", headers, body)


def raw_of(body: bytes) -> RawPostback:
    """A spooled postback holding ``body``."""
    return RawPostback(source="mm", received_at=NOW, remote_addr="203.0.113.9", method="POST",
                       path="/hooks/mm", query="", headers=(), body=body, id=7)


def events(body: bytes, ctx: SourceContext = CTX) -> list[Event]:
    """The events of a body."""
    out = normalise(raw_of(body), ctx)
    assert all(isinstance(e, Event) for e in out)
    return out  # type: ignore[return-value]


def fixture(name: str) -> list[dict[str, Any]]:
    """The published JSON of every event of a fixture."""
    return [e.to_dict() for e in events((FIXTURES / f"{name}.json").read_bytes())]


# --- normalisation of every fixture -------------------------------------------------------------

MT = "5b8e0c21-94a7-4f6e-8d3b-2a1c0e9f7d44"


def dr(msg: str, status: str, final: bool, provider_status: str, to: str, at: str,
       **extra: Any) -> dict[str, Any]:
    """The expected fields of a delivery receipt (``from`` is unknown unless given)."""
    return {"type": "delivery_receipt", "channel": "sms", "message_id": msg, "status": status,
            "final": final, "provider_status": provider_status, "to": to, "to_kind": "e164",
            "occurred_at": at, "from": None, "client_ref": None, "error": None, "segments": None,
            "flags": [], **extra}  # fmt: skip


def mo(reply_id: str, sender: str, to: str | None, text: str | None, at: str,
       **extra: Any) -> dict[str, Any]:
    """The expected fields of a reply."""
    return {"type": "inbound_message", "channel": "sms", "message_id": reply_id, "status": None,
            "final": False, "provider_status": "reply", "from": sender, "to": to, "text": text,
            "occurred_at": at, "client_ref": None, "media": [], "flags": [], **extra}  # fmt: skip


def err(code: str, description: str) -> dict[str, str]:
    """An expected error object."""
    return {"code": code, "description": description}


EXPECTED: dict[str, list[dict[str, Any]]] = {
    "dr-delivered": [dr(MT, "delivered", True, "delivered:221", "+61491570156",
                        "2025-03-01T10:00:04.980Z", client_ref='{"order":"8812"}', segments=1)],
    "dr-enroute-minimal": [dr(MT, "queued", False, "enroute:101", "+61491570156",
                              "2025-03-01T10:00:01.100Z")],
    "dr-submitted": [dr(MT, "sent", False, "submitted:212", "+61491570156",
                        "2025-03-01T10:00:02.300Z")],
    "dr-failed-no-route": [dr("77aa0b1c-2d3e-4f50-8a6b-7c8d9e0f1a2b", "failed", True,
                              "failed:332", "+61491570999", "2025-03-01T10:02:59.000Z",
                              error=err("332", "no route"))],
    "dr-failed-invalid-destination": [dr(
        "88bb1c2d-3e4f-4061-9b7c-8d9e0f1a2b3c", "undeliverable", True, "failed:411",
        "+61491570998", "2025-03-01T10:04:00.000Z", error=err("411", "invalid destination"),
        client_ref='{"campaign":"spring","order":"8813"}')],
    "dr-expired": [dr("99cc2d3e-4f50-4172-8c8d-9e0f1a2b3c4d", "expired", True, "expired:401",
                      "+61491570157", "2025-03-02T10:00:00.000Z",
                      error=err("401", "expired before delivery"))],
    "dr-rejected": [dr("aadd3e4f-5061-4283-9d9e-0f1a2b3c4d5e", "rejected", True, "rejected:302",
                       "+61491570158", "2025-03-01T11:00:00.000Z",
                       error=err("302", "destination blocked"))],
    "dr-cancelled": [dr("bbee4f50-6172-4394-8e0f-1a2b3c4d5e6f", "failed", True, "cancelled:405",
                        "+61491570159", "2025-03-01T12:00:00.000Z",
                        error=err("405", "cancelled or deleted by provider"))],
    "dr-unknown-status": [dr("ccff5061-7283-44a5-9f1a-2b3c4d5e6f70", "unknown", False,
                             "teleported:999", "+61491570160", "2025-03-01T13:00:00.000Z")],
    "dr-code-only": [dr("dd006172-8394-45b6-8a2b-3c4d5e6f7081", "delivered", True, "220",
                        "+61491570161", "2025-03-01T14:00:00.000Z")],
    "dr-array": [
        dr("ee117283-94a5-46c7-9b3c-4d5e6f708192", "sent", False, "submitted:210",
           "+61491570162", "2025-03-01T15:00:00.000Z"),
        dr("ee117283-94a5-46c7-9b3c-4d5e6f708192", "delivered", True, "delivered:220",
           "+61491570162", "2025-03-01T15:00:03.000Z"),
    ],
    "dr-polling-page": [dr("ff228394-a5b6-47d8-8c4d-5e6f708192a3", "delivered", True,
                           "delivered:221", "+61491570163", "2025-03-01T16:00:00.000Z",
                           client_ref='{"order":"9001"}')],
    "webhook-dr-variables": [dr("cc55b627-d8e9-4a0b-8f70-8192a3b4c5d6", "delivered", True,
                                "delivered:221", "+61491570166", "2025-03-01T19:00:00.000Z",
                                client_ref='{"order":"8814"}', segments=2,
                                **{"from": "+61491570157"})],
    "webhook-dr-unrendered": [dr("dd66c738-e9fa-4b1c-8081-92a3b4c5d6e7", "undeliverable", True,
                                 "failed:414", "+61491570167", "2025-03-01T20:00:00.000Z",
                                 error=err("414", "destination unreachable"))],
    "reply-sms": [mo("a175e797-2b54-468b-9850-41a3eab32f74", "+61491570156", "+61491570157",
                     "YES", "2025-03-01T10:05:00.000Z", client_ref='{"order":"8812"}')],
    "reply-no-destination": [mo("b286f8a8-3c65-479c-8961-52b4fbc43085", "+61491570156", None,
                                "Thanks, see you then", "2025-03-01T10:06:00.000Z")],
    "reply-stop": [mo("c397a9b9-4d76-48ad-9a72-63c50cd54196", "+61491570156", "+61491570157",
                      " stop ", "2025-03-01T10:07:00.000Z")],
    "replies-page": [
        mo("d4a8baca-5e87-49be-8b83-74d61de652a7", "+61491570164", "+61491570157",
           "Is the store open?", "2025-03-01T17:00:00.000Z", client_ref='{"store":"12"}'),
        mo("e5b9cbdb-6f98-4acf-9c94-85e72ef763b8", "+61491570164", "+61491570157",
           "Never mind", "2025-03-01T17:01:00.000Z", client_ref='{"store":"12"}'),
    ],
    "webhook-received-mms": [mo(
        "f6cadcec-7fa9-4bd0-8da5-96f83f0874c9", "+61491570165", "+61491570157", None,
        "2025-03-01T18:00:00.000Z", channel="mms", client_ref='{"order":"8812"}',
        flags=["inline_media"], media=[
            {"url": "messagemedia-attachment:f6cadcec-7fa9-4bd0-8da5-96f83f0874c9/0"
                    "?name=photo%201.jpg", "content_type": "image/jpeg"},
            {"url": "messagemedia-attachment:f6cadcec-7fa9-4bd0-8da5-96f83f0874c9/1"
                    "?name=text.txt", "content_type": "text/plain"}])],
    "webhook-received-sms-variables": [mo(
        "29fd0f1f-a2dc-4e03-90d8-c92b6c3ba7fc", "+61491570167", "+61491570157", "What time?",
        "2025-03-01T20:01:00.000Z", provider_status="RECEIVED_SMS")],
    "webhook-opt-out-variables": [mo(
        "3a0e1020-b3ed-4f14-81e9-da3c7d4cb80d", "+61491570168", "+61491570157", "Stop please",
        "2025-03-01T21:02:00.000Z", provider_status="OPT_OUT_SMS", flags=["provider_opt_out"])],
}


def _valid_fixtures() -> list[str]:
    return sorted(p.name.removesuffix(".json") for p in FIXTURES.glob("*.json")
                  if not p.name.startswith("invalid"))  # fmt: skip


def test_every_fixture_has_expectations() -> None:
    """Each valid fixture has an exact expectation here (a new fixture must add one)."""
    assert _valid_fixtures() == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_normalises_to_the_expected_events(name: str) -> None:
    """Every fixture yields exactly the expected events, field by field."""
    found = fixture(name)
    assert len(found) == len(EXPECTED[name])
    for event, expected in zip(found, EXPECTED[name], strict=True):
        assert {k: event[k] for k in expected} == expected
        assert event["raw_id"] == 7 and event["source"] == "mm"
        assert event["received_at"] == "2025-03-01T10:01:40.000Z"


def test_event_ids_are_deterministic_and_distinct() -> None:
    """Ids do not change on a second pass and no two fixture events share one."""
    first = [e["id"] for name in sorted(EXPECTED) for e in fixture(name)]
    again = [e["id"] for name in sorted(EXPECTED) for e in fixture(name)]
    assert first == again
    assert len(set(first)) == len(first)


def test_report_to_is_the_source_number_and_reply_from_is_it() -> None:
    """source_number is the report's recipient but the reply's sender (the inversion)."""
    (report,) = fixture("dr-delivered")
    (reply,) = fixture("reply-sms")
    assert report["to"] == reply["from"] == "+61491570156"
    assert report["from"] is None and reply["to"] == "+61491570157"


def test_the_same_reply_through_callback_and_template_has_one_id() -> None:
    """A reply pushed by callback_url and by a template-variables webhook dedups to one id."""
    callback = {"reply_id": "r-1", "source_number": "+61491570156", "content": "hi"}
    template = {"type": "RECEIVED_SMS", "moId": "r-1", "sourceAddress": "+61491570156",
                "moContent": "hi"}  # fmt: skip
    (a,), (b,) = events(orjson.dumps(callback)), events(orjson.dumps(template))
    assert a.id == b.id


def test_report_without_report_id_falls_back_to_a_composite_key() -> None:
    """A report with only message_id gets an id from message, status, code and time."""
    body = {"message_id": "m-1", "status": "delivered", "error_code": "220"}
    (a,) = events(orjson.dumps(body))
    (b,) = events(orjson.dumps({**body, "status": "submitted", "error_code": "212"}))
    assert a.id != b.id and a.message_id == b.message_id == "m-1"


def test_content_that_merely_starts_with_a_dollar_is_kept() -> None:
    """Only unrendered template variables count as absent, not text such as '$5 off'."""
    (e,) = events(b'{"reply_id": "r-2", "content": "$5 off?", "source_number": "+61491570156"}')
    assert e.text == "$5 off?"
    (u,) = events(b'{"reply_id": "r-3", "content": "$moContent", "source_number": "0491570156"}')
    assert u.text is None and u.from_ == "+61491570156"


def test_attachment_with_a_url_keeps_it_and_no_inline_flag() -> None:
    """An attachment that carries a URL instead of base64 content is used as it is."""
    body = {"type": "RECEIVED_MMS", "moId": "r-4", "attachments": [
        {"url": "https://example.com/a.png", "content_type": "image/png"}, "junk"]}
    (e,) = events(orjson.dumps(body))
    assert e.channel == "mms" and e.flags == ()
    assert [(m.url, m.content_type) for m in e.media] == [("https://example.com/a.png",
                                                           "image/png")]


def test_client_ref_key_picks_one_metadata_value() -> None:
    """With client_ref_key set, client_ref is that metadata value (absent key: None)."""
    setup = configure(source_config(client_ref_key="order"))
    ctx = SourceContext(name="mm", provider="messagemedia", options=setup.options)
    (e,) = events((FIXTURES / "dr-delivered.json").read_bytes(), ctx)
    assert e.client_ref == "8812"
    (none,) = events((FIXTURES / "dr-failed-invalid-destination.json").read_bytes(),
                     SourceContext("mm", "messagemedia", options=Options("missing")))
    assert none.client_ref is None


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("invalid*.json")))
def test_invalid_fixtures_raise_normalisation_error(name: str) -> None:
    """Bodies that are not JSON or not a report/reply are refused (dead-lettered)."""
    with pytest.raises(NormalisationError):
        normalise(raw_of((FIXTURES / name).read_bytes()), CTX)


@pytest.mark.parametrize("body", [b"", b"null", b"[1]", b'"x"', b"{}", b'{"foo": [1, 2]}'])
def test_wrong_shapes_raise_normalisation_error(body: bytes) -> None:
    """Empty, scalar and unrecognisable bodies raise NormalisationError."""
    with pytest.raises(NormalisationError):
        normalise(raw_of(body), CTX)


# --- the status table ---------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "code", "expected"), [
    ("queued", None, ("accepted", False)), ("scheduled", None, ("accepted", False)),
    ("processed", None, ("accepted", False)), ("enroute", "101", ("queued", False)),
    ("enroute", "102", ("queued", False)), ("enroute", "151", ("queued", False)),
    ("submitted", "200", ("sent", False)), ("submitted", "213", ("sent", False)),
    ("delivered", "220", ("delivered", True)), ("delivered", "221", ("delivered", True)),
    ("read", None, ("read", True)), ("expired", "320", ("expired", True)),
    ("expired", "401", ("expired", True)), ("rejected", "301", ("rejected", True)),
    ("rejected", "305", ("rejected", True)), ("rejected", "402", ("rejected", True)),
    ("rejected", "403", ("rejected", True)), ("undeliverable", None, ("undeliverable", True)),
    ("failed", "400", ("undeliverable", True)), ("failed", "410", ("undeliverable", True)),
    ("failed", "414", ("undeliverable", True)), ("failed", "330", ("failed", True)),
    ("failed", "333", ("failed", True)), ("failed", "405", ("failed", True)),
    ("failed", None, ("failed", True)), ("failed", "221", ("failed", True)),
    ("failed", "401", ("expired", True)),
    ("cancelled", None, ("failed", True)), (None, "411", ("undeliverable", True)),
    ("whatever", "212", ("sent", False)), ("whatever", "999", ("unknown", False)),
    (None, None, ("unknown", False)),
])  # fmt: skip
def test_status_and_code_map_as_the_reference_table_says(
        status: str | None, code: str | None, expected: tuple[str, bool]) -> None:
    """Each row of providers.md section 2 'Normalisation' maps to its normalised status."""
    assert resolve_status(status, code) == expected


def test_every_table_entry_is_a_known_status() -> None:
    """Every [statuses] and [codes] entry of messagemedia.toml names a schema status."""
    data = table("messagemedia")
    for entry in [*data["statuses"].values(), *data["codes"].values()]:
        assert entry["status"] in STATUSES and isinstance(entry["final"], bool)
    assert {resolve_status(name, None)[0] for name in data["statuses"]} <= set(STATUSES)


# --- configuration ------------------------------------------------------------------------------


def test_configure_without_signing_requires_common_auth() -> None:
    """A source without signing has no verifier of its own and requires basic_auth or a token."""
    setup = configure(source_config())
    assert setup.verifiers == () and setup.requires_auth


@pytest.mark.parametrize(("options", "key"), [
    ({"colour": "red"}, "sources[0].colour"),
    ({"client_ref_key": ""}, "sources[0].client_ref_key"),
    ({"signing": "yes"}, "sources[0].signing"),
    ({"signing": {"keys": {}}}, "sources[0].signing.keys"),
    ({"signing": {**SIGNING, "extra": 1}}, "sources[0].signing.extra"),
    ({"signing": {**SIGNING, "max_skew_seconds": 0}}, "sources[0].signing.max_skew_seconds"),
    ({"signing": {**SIGNING, "max_skew_seconds": True}}, "sources[0].signing.max_skew_seconds"),
    ({"signing": {**SIGNING, "request_path": "hooks"}}, "sources[0].signing.request_path"),
    ({"signing": {"keys": {"k": "inline-pem"}}}, "sources[0].signing.keys.k"),
    ({"signing": {"keys": {"k": f"file:{FIXTURES}/mm1-private.pem"}}}, "sources[0].signing.keys.k"),
    ({"signing": {"keys": {"k": f"file:{FIXTURES}/nope.pem"}}}, "sources[0].signing.keys.k"),
])  # fmt: skip
def test_bad_options_are_config_errors_naming_the_key(options: dict[str, Any], key: str) -> None:
    """Unknown keys, empty or unreadable keys and bad skew/path values name the offending key."""
    with pytest.raises(ConfigError) as info:
        configure(source_config(**options))
    assert info.value.key == key


def test_keys_resolve_from_the_environment() -> None:
    """A key given as env:NAME holding base64 SPKI is loaded."""
    spki = (FIXTURES / "mm2-public.b64").read_text().strip()
    setup = configure(source_config(signing={"keys": {KEY2: "env:MM_KEY2"}}), {"MM_KEY2": spki})
    (found,) = setup.verifiers
    body = b"{}"
    found.verify(request(body, sign(body, key=private("mm2"), key_id=KEY2)), NOW)


# --- the verifier -------------------------------------------------------------------------------

BODY = (FIXTURES / "dr-delivered.json").read_bytes()


@pytest.mark.parametrize("digest", ["SHA224", "SHA256", "SHA512", "sha256"])
def test_correctly_signed_request_passes(digest: str) -> None:
    """A body signed with the configured key and any supported digest is accepted."""
    headers = sign(BODY, digest=digest.upper())
    headers["x-messagemedia-digest-type"] = digest
    verifier().verify(request(BODY, headers), NOW)


def test_either_key_of_a_rotation_passes() -> None:
    """With two keys configured, a signature by either (named by its key id) is accepted."""
    v = verifier()
    v.verify(request(BODY, sign(BODY)), NOW)
    v.verify(request(BODY, sign(BODY, key=private("mm2"), key_id=KEY2)), NOW)


def _tampered() -> bytes:
    changed = bytearray(BODY)
    changed[10] ^= 0x01
    return bytes(changed)


def _other_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.mark.parametrize(("case", "make"), [
    ("one body byte changed", lambda: (_tampered(), sign(BODY))),
    ("signed by an unknown key", lambda: (BODY, sign(BODY, key=_other_key()))),
    ("key id of the other key", lambda: (BODY, sign(BODY, key_id=KEY2))),
    ("key id not configured", lambda: (BODY, sign(BODY, key_id="nope"))),
    ("stale Date", lambda: (BODY, sign(BODY, date=formatdate(NOW - 301, usegmt=True)))),
    ("future Date", lambda: (BODY, sign(BODY, date=formatdate(NOW + 301, usegmt=True)))),
    ("other path signed", lambda: (BODY, sign(BODY, path="/hooks/other"))),
    ("missing signature", lambda: (BODY, _without("x-messagemedia-signature"))),
    ("missing key id", lambda: (BODY, _without("x-messagemedia-key-id"))),
    ("missing digest", lambda: (BODY, _without("x-messagemedia-digest-type"))),
    ("missing Date", lambda: (BODY, _without("date"))),
    ("garbage base64", lambda: (BODY, {**sign(BODY), "x-messagemedia-signature": "%%not b64"})),
    ("truncated signature", lambda: (BODY, {**sign(BODY), "x-messagemedia-signature": "AAAA"})),
    ("bad digest name", lambda: (BODY, {**sign(BODY), "x-messagemedia-digest-type": "MD5"})),
    ("digest not the one used", lambda: (BODY, {**sign(BODY),
                                                "x-messagemedia-digest-type": "SHA512"})),
    ("cipher not RSA", lambda: (BODY, {**sign(BODY), "x-messagemedia-cipher-type": "DSA"})),
    ("malformed Date", lambda: (BODY, {**sign(BODY), "date": "yesterday"})),
    ("non-ASCII signature", lambda: (BODY, {**sign(BODY), "x-messagemedia-signature": "é=="})),
])  # fmt: skip
def test_bad_requests_raise_authentication_failed(case: str, make: Any) -> None:
    """Tampering, wrong or unknown keys, stale dates, missing or malformed headers: 401."""
    body, headers = make()
    with pytest.raises(AuthenticationFailed):
        verifier().verify(request(body, headers), NOW)


def _without(name: str) -> dict[str, str]:
    headers = sign(BODY)
    del headers[name]
    return headers


def test_date_within_the_configured_skew_passes_and_beyond_fails() -> None:
    """max_skew_seconds bounds how old the Date may be."""
    headers = sign(BODY, date=formatdate(NOW - 50, usegmt=True))
    verifier(max_skew_seconds=60).verify(request(BODY, headers), NOW)
    with pytest.raises(AuthenticationFailed):
        verifier(max_skew_seconds=30).verify(request(BODY, headers), NOW)


def test_request_path_rebuilds_the_line_the_provider_signed() -> None:
    """Behind a proxy, request_path is the path MessageMedia signed, not the one received."""
    headers = sign(BODY, path="/hooks/mm")
    verifier(request_path="/hooks/mm").verify(request(BODY, headers, "/internal/x"), NOW)
    with pytest.raises(AuthenticationFailed):
        verifier().verify(request(BODY, headers, "/internal/x"), NOW)


@pytest.fixture
def far_timezone(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The process runs in a time zone ten hours from UTC."""
    monkeypatch.setenv("TZ", "Pacific/Honolulu")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("far_timezone")
def test_a_date_without_zone_is_read_as_utc_whatever_the_host_zone() -> None:
    """A '-0000' Date is UTC, not the host's local time (a fixed bug of the verifier)."""
    date = formatdate(NOW, usegmt=True).replace("GMT", "-0000")
    verifier().verify(request(BODY, sign(BODY, date=date)), NOW)


_header_names = st.sampled_from(["date", "x-messagemedia-key-id", "x-messagemedia-signature",
                                 "x-messagemedia-digest-type", "x-messagemedia-cipher-type",
                                 "authorization", "content-type"])  # fmt: skip
_header_values = st.one_of(st.text(), st.sampled_from([KEY1, KEY2, "SHA256", "sha512", "RSA",
                                                       DATE, "AAAA", "=", "Thu, 99 Foo"]))


@cache
def _shared_verifier() -> MessageMediaVerifier:
    return verifier()


@cache
def _signed() -> dict[str, str]:
    return sign(BODY)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(_header_names, _header_values), st.binary(max_size=200))
def test_random_headers_only_ever_raise_authentication_failed(
        headers: dict[str, str], body: bytes) -> None:
    """Whatever headers and body arrive, the verifier raises AuthenticationFailed or passes."""
    v = _shared_verifier()
    for payload, candidate in ((body, headers), (BODY, {**_signed(), **headers})):
        with contextlib.suppress(AuthenticationFailed):
            v.verify(request(payload, candidate), NOW)


# --- robustness of the normaliser ---------------------------------------------------------------

_keys = st.sampled_from(sorted({k for names in FIELDS.values() for k in names}
                               | {"metadata", "attachments", "delivery_reports", "replies"}))
_scalars = st.one_of(st.none(), st.booleans(), INT64,
                     st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20),
                     st.sampled_from(["delivered", "failed", "DELIVERED_DR", "RECEIVED_MMS",
                                      "221", "²", "$drId", "+61491570156", "0491570156",
                                      "2025-03-01T10:00:00Z", "99999999999999"]))  # fmt: skip
_json = json_documents(_scalars, _keys | st.text(max_size=5), max_size=6, max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_only_ever_raise_normalisation_error(body: bytes) -> None:
    """Arbitrary bytes either normalise or raise NormalisationError, nothing else."""
    with contextlib.suppress(NormalisationError):
        normalise(raw_of(body), CTX)


@settings(max_examples=500, deadline=None)
@given(_json)
def test_random_json_only_ever_raises_normalisation_error(document: Any) -> None:
    """JSON built from MessageMedia's field names and odd values never crashes the adapter."""
    try:
        out = normalise(raw_of(orjson.dumps(document)), CTX)
    except NormalisationError:
        return
    for event in out:
        assert isinstance(event, Event) and event.to_json()


# --- through the HTTP app -----------------------------------------------------------------------

PASSWORD = "mm-basic-password"


def service(tmp_path: Path) -> Service:
    """A relay without Kafka: a signed source 'mm' and a Basic-auth source 'mm-basic'."""
    (tmp_path / "pw").write_text(PASSWORD)
    settings = parse({
        "spool": {"dir": str(tmp_path / "spool")},
        "sources": [
            {"name": "mm", "provider": "messagemedia", "default_region": "AU",
             "signing": SIGNING},
            {"name": "mm-basic", "provider": "messagemedia",
             "basic_auth": {"username": "relay", "password": f"file:{tmp_path / 'pw'}"}},
        ],
    }, environ={}, base=tmp_path)  # fmt: skip
    return Service(settings, clock=lambda: NOW)


def test_signed_postback_is_accepted_and_spooled(tmp_path: Path) -> None:
    """A correctly signed delivery report gets 200 and is spooled with its signature headers."""
    svc = service(tmp_path)
    with TestClient(create_app(svc)) as client:
        resp = client.post("/hooks/mm", content=BODY, headers=sign(BODY))
        assert resp.status_code == 200
        assert resp.json()["status"] == "accepted"
        assert svc.spool.stats().total == 1
        (raw,) = svc.spool.pending(0, 10)
    assert raw.header("x-messagemedia-key-id") == KEY1 and raw.header("date") == DATE
    (event,) = normalise(raw, svc.sources["mm"].context)
    assert isinstance(event, Event) and event.status == "delivered"


@pytest.mark.parametrize(("case", "make"), [
    ("tampered", lambda: (_tampered(), sign(BODY))),
    ("unknown key id", lambda: (BODY, sign(BODY, key_id="nope"))),
    ("stale", lambda: (BODY, sign(BODY, date=formatdate(NOW - 3600, usegmt=True)))),
    ("missing", lambda: (BODY, _without("x-messagemedia-signature"))),
    ("garbage", lambda: (BODY, {**sign(BODY), "x-messagemedia-signature": "***"})),
    ("bad digest", lambda: (BODY, {**sign(BODY), "x-messagemedia-digest-type": "SHA1"})),
    ("unsigned", lambda: (BODY, {})),
])  # fmt: skip
def test_badly_signed_postbacks_get_401_and_nothing_is_spooled(
        tmp_path: Path, case: str, make: Any) -> None:
    """Every signature failure is answered 401 and leaves the spool empty."""
    svc = service(tmp_path)
    body, headers = make()
    with TestClient(create_app(svc)) as client:
        resp = client.post("/hooks/mm", content=body, headers=headers)
        assert resp.status_code == 401
        assert resp.json()["error"] == "unauthenticated"
        assert svc.spool.stats().total == 0


def test_basic_auth_source_without_signing(tmp_path: Path) -> None:
    """A source without signing takes Basic credentials: wrong ones 401, right ones 200."""
    svc = service(tmp_path)
    with TestClient(create_app(svc)) as client:
        assert client.post("/hooks/mm-basic", content=BODY).status_code == 401
        wrong = client.post("/hooks/mm-basic", content=BODY, headers=basic("relay", "nope"))
        assert wrong.status_code == 401
        assert svc.spool.stats().total == 0
        ok = client.post("/hooks/mm-basic", content=BODY, headers=basic("relay", PASSWORD))
        assert ok.status_code == 200
        assert svc.spool.stats().total == 1


def test_source_without_any_authentication_is_refused(tmp_path: Path) -> None:
    """A MessageMedia source with neither signing, basic_auth nor a token does not start."""
    settings = parse({"spool": {"dir": str(tmp_path / "spool")},
                      "sources": [{"name": "mm", "provider": "messagemedia"}]}, environ={})
    with pytest.raises(ConfigError):
        Service(settings)


# --- end to end (real HTTP, real Kafka) ----------------------------------------------------------


@pytest.mark.kafka
async def test_signed_postbacks_reach_their_topics(kafka_bootstrap: str, tmp_path: Path) -> None:
    """Signed reports and replies come out normalised, keyed, with the STOP as consent."""
    source = {"name": "mm", "provider": "messagemedia", "default_region": "AU",
              "signing": SIGNING}  # fmt: skip
    settings = make_settings(tmp_path, kafka=kafka_bootstrap, sources=[source])
    prefix = settings.kafka.topic_prefix
    report, stop = BODY, (FIXTURES / "reply-stop.json").read_bytes()
    async with relay_server(settings) as url, httpx.AsyncClient(base_url=url) as client:
        for body in (report, stop):
            headers = sign(body, date=formatdate(time.time(), usegmt=True))
            assert (await client.post("/hooks/mm", content=body, headers=headers)).status_code == 200
        now = formatdate(time.time(), usegmt=True)
        forged = await client.post("/hooks/mm", content=stop, headers=sign(report, date=now))
        assert forged.status_code == 401
        receipts = await consume(kafka_bootstrap, f"{prefix}delivery-receipts.v1", 1, settle=1.0)
        inbound = await consume(kafka_bootstrap, f"{prefix}inbound-messages.v1", 1, settle=1.0)
        consent = await consume(kafka_bootstrap, f"{prefix}consent.v1", 1)
    assert [(r.key, orjson.loads(r.value)["status"]) for r in receipts] == [
        (MT.encode(), "delivered")]
    validate("delivery_receipt", orjson.loads(receipts[0].value))
    (msg,) = [orjson.loads(r.value) for r in inbound]
    assert inbound[0].key == b"+61491570157|+61491570156"
    assert (msg["keyword"], msg["message_id"]) == ("opt_out", "c397a9b9-4d76-48ad-9a72-63c50cd54196")
    validate("inbound_message", msg)
    assert [r.key for r in consent] == [b"+61491570156"]
