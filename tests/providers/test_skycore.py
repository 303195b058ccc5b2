"""Skycore Messaging API V2 postbacks: codes, notices, numbers, URL token and IP allowlist."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from harness import consume, make_settings, relay_server, validate
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient
from strategies import INT64, json_documents

from relay.app import create_app
from relay.errors import NormalisationError
from relay.providers import SourceContext, get
from relay.providers.common import table
from relay.providers.skycore import normalise, resolve_status
from relay.schema import STATUSES, Event, Notice, Output, RawPostback
from relay.service import Service
from relay.settings import parse

FIXTURES = Path(__file__).parent / "fixtures" / "skycore"
NOW = 1_740_823_300.0
CTX = SourceContext(name="sky", provider="skycore", default_region="GB")


def raw_of(body: bytes) -> RawPostback:
    """A spooled postback holding ``body``."""
    return RawPostback(source="sky", received_at=NOW, remote_addr="203.0.113.9", method="POST",
                       path="/hooks/sky/{token}", query="", headers=(), body=body, id=11)


def outputs(name: str) -> list[Output]:
    """What a fixture normalises to."""
    return normalise(raw_of((FIXTURES / f"{name}.json").read_bytes()), CTX)


def fixture(name: str) -> list[dict[str, Any] | Notice]:
    """Events of a fixture as published JSON; notices as they are."""
    return [o if isinstance(o, Notice) else o.to_dict() for o in outputs(name)]  # type: ignore[union-attr]


# --- normalisation of every fixture -------------------------------------------------------------

T = "2025-03-01T10:00:09.512Z"


def mt(tracking: str, code: str, status: str, final: bool, to: str, *, channel: str = "mms",
       at: str | None = T, **extra: Any) -> dict[str, Any]:
    """The expected fields of an MT status from short code 28444."""
    return {"type": "delivery_receipt", "channel": channel, "message_id": tracking,
            "provider_status": code, "status": status, "final": final, "from": "28444",
            "from_kind": "short_code", "to": to, "to_kind": "e164", "occurred_at": at,
            "error": None, "flags": [], "client_ref": None, "carrier": None, **extra}  # fmt: skip


def err(code: str, description: str) -> dict[str, str]:
    """An expected error object."""
    return {"code": code, "description": description}


def carrier(name: str | None, mcc: str | None = None, mnc: str | None = None) -> dict[str, Any]:
    """An expected carrier object."""
    return {"name": name, "mcc": mcc, "mnc": mnc}


EXPECTED: dict[str, list[dict[str, Any] | Notice]] = {
    "mms-mt-sent-n101": [mt("MMSMT8f3kQ2", "N101", "sent", False, "+17745550001",
                            client_ref="order-8812")],
    "mms-mt-delivered-n102": [mt("MMSMT8f3kQ2", "N102", "delivered", True, "+17745550001",
                                 client_ref="order-8812",
                                 carrier=carrier("Verizon Wireless", "310", "012"))],
    "mms-mt-rejected-e102": [mt("MMSMT8f3kQ3", "E102", "rejected", True, "+17745550002",
                                at="2025-03-01T10:00:12.000Z", client_ref="order-8813",
                                error=err("E102", "Message Rejected"))],
    "mms-mt-unrecognised-e102": [mt("MMSMT8f3kQ4", "E102", "undeliverable", True,
                                    "+17745550003", client_ref="spring-sale",
                                    error=err("E102", "Destination unrecognised"))],
    "mms-mt-expired-n103": [mt("MMSMT8f3kQ5", "N103", "expired", True, "+17745550004")],
    "mms-mt-failed-e101": [mt("MMSMT8f3kQ6", "E101", "failed", True, "+17745550005",
                              error=err("E101", "Impossible to send MMS"))],
    "mms-mt-fallback-delivered-n202": [mt("MMSMT8f3kQ7", "N202", "delivered", True,
                                          "+17745550006", flags=["fallback_sms"],
                                          carrier=carrier("Verizon", "311", "480"))],
    "mms-mt-fallback-failed-e202": [mt("MMSMT8f3kQ8", "E202", "failed", True, "+17745550007",
                                       flags=["fallback_sms"], error=err(
                                           "E202", "MMS as SMS delivery was not successful"))],
    "mms-mt-content-invalid-e011": [mt("MMSMT8f3kQ9", "E011", "rejected", True, "+17745550008",
                                       error=err("E011", "Content validation failed"))],
    "mms-mt-transcode-failed-e012": [mt("MMSMT8f3kR0", "E012", "rejected", True,
                                        "+17745550009",
                                        error=err("E012", "Encoding of MMS audio failed"))],
    "mms-mt-queue-error-e999": [mt("MMSMT8f3kR1", "E999", "failed", True, "+17745550010",
                                   error=err("E999", "Queue processing error"))],
    "mms-mt-short-operator-id": [mt("MMSMT8f3kR2", "N102", "delivered", True, "+447700900123",
                                    carrier=carrier("EE"))],
    "mms-mt-unknown-code": [mt("MMSMT8f3kR3", "N777", "unknown", False, "+17745550011")],
    "mms-notice-transcoded-n003": [Notice(
        "N003", "saved MMS transcoding completed, template available; Template available")],
    "mms-notice-transcoded-sent-n013": [Notice(
        "N013", "transcoding completed, sending triggered; tracking-id MMSMT8f3kR4")],
    "mms-notice-image-failed-e004": [Notice(
        "E004", "image transcoding failed (savemms); Encoding of MMS image failed")],
    "mms-notice-device-discovery-n502": [Notice(
        "N502", "device discovery message delivered; tracking-id MMSMT8f3kR5")],
    "sms-mt-sent-n201": [mt("smsmt01a", "N201", "sent", False, "+17745550020", channel="sms",
                            at="2025-03-01T10:10:00.000Z", client_ref="welcome")],
    "sms-mt-alphanumeric-sender": [mt("smsmt01b", "N201", "sent", False, "+447700900124",
                                      channel="sms", at="2025-03-01T10:10:30.000Z",
                                      **{"from": "ACMESHOP", "from_kind": "alphanumeric"})],
    "sms-mt-delivered-trackingid": [mt("smsmt01a", "N202", "delivered", True, "+17745550020",
                                       channel="sms", at="2025-03-01T10:10:05.000Z",
                                       carrier=carrier("T-Mobile USA", "310", "260"))],
    "sms-mt-failed-e201": [mt("smsmt02", "E201", "failed", True, "+17745550021", channel="sms",
                              at="2025-03-01T10:11:00.000Z", error=err("E201", "Failed"))],
    "sms-mt-rejected-e202": [mt("smsmt03", "E202", "rejected", True, "+17745550022",
                                channel="sms", at="2025-03-01T10:12:00.000Z",
                                error=err("E202", "Rejected"))],
    "sms-mt-expired-e202": [mt("smsmt04", "E202", "expired", True, "+17745550023",
                               channel="sms", at="2025-03-01T10:13:00.000Z",
                               error=err("E202", "Message Sent/Expired"))],
    "sms-mt-no-origin": [mt("smsmt05", "N201", "sent", False, "+17745550024", channel="sms",
                            at=None)],
    "sms-mo-stop": [{"type": "inbound_message", "channel": "sms",
                     "message_id": "smsmo09ea1b9215", "provider_status": "N211", "status": None,
                     "from": "+17745550001", "from_kind": "e164", "to": "28444",
                     "to_kind": "short_code", "text": "STOP", "media": [], "flags": [],
                     "occurred_at": "2025-03-01T10:05:54.000Z", "participants": []}],
    "sms-mo-minimal": [{"type": "inbound_message", "channel": "sms",
                        "message_id": "smsmo09ea1b9216", "from": "+17745550025", "to": "28444",
                        "text": "what are your hours?", "occurred_at": None, "carrier": None}],
    "mms-mo-n401": [{
        "type": "inbound_message", "channel": "mms", "message_id": "MMSMOYhGml849",
        "provider_status": "N401", "from": "+17745550001", "to": "+18885551234", "text": None,
        "to_kind": "e164", "occurred_at": "2025-03-01T10:06:00.000Z", "flags": ["keyword:INFO"],
        "carrier": carrier(None, "310", "012"), "participants": [], "media": [
            {"url": "https://messagecontent-public.s3.amazonaws.com/part-967.jpg",
             "content_type": "image/jpeg"},
            {"url": "https://messagecontent-public.s3.amazonaws.com/smil003.smil",
             "content_type": "application/smil"}]}],
    "mms-mo-group": [{
        "type": "inbound_message", "channel": "mms", "message_id": "MMSMOYhGml850",
        "from": "+17745550030", "to": "+18885551234", "flags": [],
        "participants": ["+18885551234", "+17745550031", "+17745550032"], "media": [
            {"url": "https://messagecontent-public.s3.amazonaws.com/part-968.txt",
             "content_type": "text/plain"},
            {"url": "https://messagecontent-public.s3.amazonaws.com/clip.3GP?v=2",
             "content_type": "video/3gpp"},
            {"url": "https://messagecontent-public.s3.amazonaws.com/blob",
             "content_type": None}]}],
    "array-two": [mt("MMSMT8f3kR6", "N101", "sent", False, "+17745550040"),
                  mt("MMSMT8f3kR6", "N102", "delivered", True, "+17745550040")],
}  # fmt: skip


def test_every_fixture_has_expectations() -> None:
    """Each valid fixture has an exact expectation here (a new fixture must add one)."""
    names = sorted(p.name.removesuffix(".json") for p in FIXTURES.glob("*.json")
                   if not p.name.startswith("invalid"))  # fmt: skip
    assert names == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_normalises_to_the_expected_output(name: str) -> None:
    """Every fixture yields exactly the expected events or notices, field by field."""
    found = fixture(name)
    assert len(found) == len(EXPECTED[name])
    for item, expected in zip(found, EXPECTED[name], strict=True):
        if isinstance(expected, Notice):
            assert item == expected
            continue
        assert isinstance(item, dict)
        assert {k: item[k] for k in expected} == expected
        assert (item["raw_id"], item["source"], item["provider"]) == (11, "sky", "skycore")


def test_event_ids_are_deterministic_and_distinct() -> None:
    """Ids do not change on a second pass; N101 and N102 of one tracking-id differ."""
    def ids() -> list[str]:
        return [o["id"] for n in sorted(EXPECTED) for o in fixture(n) if isinstance(o, dict)]
    first = ids()
    assert first == ids()
    assert len(set(first)) == len(first)


def test_both_tracking_id_spellings_give_the_same_event() -> None:
    """tracking-id and trackingid are the same field: the same postback, the same id."""
    body = {"origin": "SMS_MT", "code": "N202", "to": "17745550020", "tracking-id": "t-1"}
    (a,) = normalise(raw_of(orjson.dumps(body)), CTX)
    del body["tracking-id"]
    (b,) = normalise(raw_of(orjson.dumps({**body, "trackingid": "t-1"})), CTX)
    assert isinstance(a, Event) and isinstance(b, Event)
    assert a.id == b.id and a.message_id == b.message_id == "t-1"


def test_numbers_are_read_as_international_whatever_the_default_region() -> None:
    """Digits without '+' are international even on a source whose default region differs."""
    body = b'{"origin": "SMS_MO", "code": "N211", "from": "447700900125", "to": "60777"}'
    for region in (None, "GB", "US", "DE"):
        (e,) = normalise(raw_of(body), SourceContext("sky", "skycore", default_region=region))
        assert isinstance(e, Event)
        assert (e.from_, e.from_kind, e.to, e.to_kind) == ("+447700900125", "e164", "60777",
                                                           "short_code")


def test_mms_sent_as_sms_is_flagged_even_without_a_fallback_code() -> None:
    """An MMS_MT postback with sent-as SMS carries the fallback_sms flag."""
    body = b'{"origin": "MMS_MT", "code": "N101", "sent-as": "SMS", "tracking-id": "x"}'
    (e,) = normalise(raw_of(body), CTX)
    assert isinstance(e, Event) and e.flags == ("fallback_sms",) and e.status == "sent"


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("invalid*.json")))
def test_invalid_fixtures_raise_normalisation_error(name: str) -> None:
    """Bodies that are not JSON objects with a code are refused (dead-lettered)."""
    with pytest.raises(NormalisationError):
        normalise(raw_of((FIXTURES / name).read_bytes()), CTX)


@pytest.mark.parametrize("body", [b"", b"<POSTBACK/>", b"null", b"{}", b'{"code": ""}', b"[1]"])
def test_wrong_shapes_raise_normalisation_error(body: bytes) -> None:
    """Empty, XML (V1), scalar and code-less bodies raise NormalisationError."""
    with pytest.raises(NormalisationError):
        normalise(raw_of(body), CTX)


# --- the code table -----------------------------------------------------------------------------


@pytest.mark.parametrize(("code", "origin", "words", "expected"), [
    ("N101", "MMS_MT", "sent", ("sent", False, ())),
    ("N201", "SMS_MT", "sent", ("sent", False, ())),
    ("N102", "MMS_MT", "delivered", ("delivered", True, ())),
    ("N202", "SMS_MT", "delivered", ("delivered", True, ())),
    ("N202", "MMS_MT", "delivered", ("delivered", True, ("fallback_sms",))),
    ("N103", "MMS_MT", "expired", ("expired", True, ())),
    ("E101", "MMS_MT", "failed", ("failed", True, ())),
    ("E201", "SMS_MT", "failed", ("failed", True, ())),
    ("E202", "MMS_MT", "failed", ("failed", True, ("fallback_sms",))),
    ("E999", "MMS_MT", "", ("failed", True, ())),
    ("E102", "MMS_MT", "rejected", ("rejected", True, ())),
    ("E202", "SMS_MT", "rejected", ("rejected", True, ())),
    ("E102", "MMS_MT", "unrecognised", ("undeliverable", True, ())),
    ("E202", "SMS_MT", "unrecognized", ("undeliverable", True, ())),
    ("E202", "SMS_MT", "message sent/expired", ("expired", True, ())),
    ("E011", "MMS_MT", "", ("rejected", True, ())),
    ("E012", "MMS_MT", "", ("rejected", True, ())),
    ("E013", "MMS_MT", "", ("rejected", True, ())),
    ("N999", "MMS_MT", "", ("unknown", False, ())),
    ("N202", None, "", ("delivered", True, ())),
])  # fmt: skip
def test_codes_map_as_the_reference_table_says(code: str, origin: str | None, words: str,
                                                expected: tuple[Any, ...]) -> None:  # fmt: skip
    """Each row of providers.md section 3 'Normalisation' maps to its status, final and flags."""
    assert resolve_status(code, origin, words) == expected


@pytest.mark.parametrize("code", ["N003", "N013", "E002", "E003", "E004", "N501", "E502"])
def test_transcoding_and_discovery_codes_are_notices(code: str) -> None:
    """Codes that are not a message status become a Notice and no event."""
    body = orjson.dumps({"origin": "MMS_MT", "code": code.lower(), "tracking-id": "t"})
    assert normalise(raw_of(body), CTX) == [Notice(code, f"{table('skycore')['notices'][code]}"
                                                         "; tracking-id t")]  # fmt: skip


def test_every_table_entry_is_a_known_status() -> None:
    """Every [statuses] and [[refinements]] entry of skycore.toml names a schema status."""
    data = table("skycore")
    for entry in [*data["statuses"].values(), *data["refinements"]]:
        assert entry["status"] in STATUSES and isinstance(entry["final"], bool)
    assert not set(data["notices"]) & {k.upper() for k in data["statuses"]}


# --- robustness ---------------------------------------------------------------------------------

_keys = st.sampled_from(["origin", "code", "status", "status-details", "from", "from-mask", "to",
                         "timestamp", "operator-id", "operator-name", "tracking-id", "trackingid",
                         "client-reference", "campaign-ref", "sent-as", "message-text",
                         "keyword", "content", "copy-to", "file", "number", "content-type"])
_scalars = st.one_of(st.none(), st.booleans(), INT64,
                     st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20),
                     st.sampled_from(["MMS_MT", "SMS_MO", "MMS_MO", "N101", "E102", "N202",
                                      "N003", "N401", "17745550001", "28444", "310012", "²³",
                                      "http://[bad", "x.smil", "Unrecognised"]))  # fmt: skip
_json = json_documents(_scalars, _keys | st.text(max_size=5), max_size=8, max_leaves=24)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_only_ever_raise_normalisation_error(body: bytes) -> None:
    """Arbitrary bytes either normalise or raise NormalisationError, nothing else."""
    with contextlib.suppress(NormalisationError):
        normalise(raw_of(body), CTX)


@settings(max_examples=500, deadline=None)
@given(_json)
def test_random_json_only_ever_raises_normalisation_error(document: Any) -> None:
    """JSON built from Skycore's field names and odd values never crashes the adapter."""
    try:
        out = normalise(raw_of(orjson.dumps(document)), CTX)
    except NormalisationError:
        return
    for item in out:
        assert isinstance(item, Notice) or item.to_json()


# --- through the HTTP app -----------------------------------------------------------------------

TOKEN = "sky-url-token-5b0c8f2e9d"
BODY = (FIXTURES / "mms-mt-delivered-n102.json").read_bytes()


def service(tmp_path: Path) -> Service:
    """A relay without Kafka: token sources 'sky' (any address) and 'sky-ip' (allowlisted)."""
    (tmp_path / "token").write_text(TOKEN + "\n")
    token = f"file:{tmp_path / 'token'}"
    settings = parse({
        "spool": {"dir": str(tmp_path / "spool")},
        "sources": [
            {"name": "sky", "provider": "skycore", "token": token},
            {"name": "sky-ip", "provider": "skycore", "tokens": ["env:OLD_TOKEN", token],
             "allow_ips": ["203.0.113.0/24"]},
        ],
    }, environ={"OLD_TOKEN": "old-token-1"}, base=tmp_path)  # fmt: skip
    return Service(settings, clock=lambda: NOW)


def test_right_token_is_answered_exactly_200_and_spooled(tmp_path: Path) -> None:
    """A postback to /hooks/sky/<token> gets exactly HTTP 200 and is stored."""
    svc = service(tmp_path)
    assert get("skycore") is not None and get("skycore").ack_status == 200  # type: ignore[union-attr]
    with TestClient(create_app(svc)) as client:
        resp = client.post(f"/hooks/sky/{TOKEN}", content=BODY,
                           headers={"content-type": "application/json"})
        assert resp.status_code == 200
        assert svc.spool.stats().total == 1
        (raw,) = svc.spool.pending(0, 10)
    assert raw.path == "/hooks/sky/{token}"  # the token is never stored
    (event,) = normalise(raw, svc.sources["sky"].context)
    assert isinstance(event, Event) and event.status == "delivered"


@pytest.mark.parametrize("path", ["/hooks/sky/wrong-token", f"/hooks/sky/{TOKEN}x",
                                  "/hooks/sky", "/hooks/sky/old-token-1"])
def test_wrong_or_missing_token_is_401_and_nothing_is_spooled(tmp_path: Path, path: str) -> None:
    """A wrong, extended, other source's or missing token is refused with 401."""
    svc = service(tmp_path)
    with TestClient(create_app(svc)) as client:
        resp = client.post(path, content=BODY)
        assert resp.status_code == 401
        assert svc.spool.stats().total == 0


def test_address_outside_the_allowlist_is_403(tmp_path: Path) -> None:
    """Even with the right token, a caller outside allow_ips gets 403 and nothing is stored."""
    svc = service(tmp_path)
    with TestClient(create_app(svc), client=("198.51.100.7", 40000)) as client:
        resp = client.post(f"/hooks/sky-ip/{TOKEN}", content=BODY)
        assert resp.status_code == 403
        assert svc.spool.stats().total == 0


@pytest.mark.parametrize("token", [TOKEN, "old-token-1"])
def test_allowed_address_with_either_token_is_accepted(tmp_path: Path, token: str) -> None:
    """From an allowed address, each token of a rotation is accepted with exactly 200."""
    svc = service(tmp_path)
    with TestClient(create_app(svc), client=("203.0.113.20", 40000)) as client:
        assert client.post(f"/hooks/sky-ip/{token}", content=BODY).status_code == 200
        assert client.post("/hooks/sky-ip/nope", content=BODY).status_code == 401
        assert svc.spool.stats().total == 1


# --- end to end (real HTTP, real Kafka) ----------------------------------------------------------


@pytest.mark.kafka
async def test_postbacks_reach_their_topics(kafka_bootstrap: str, tmp_path: Path) -> None:
    """N101/N102, an SMS MO STOP and a notice: receipts keyed by tracking-id, MO and consent out."""
    (tmp_path / "token").write_text(TOKEN)
    source = {"name": "sky", "provider": "skycore", "token": f"file:{tmp_path / 'token'}"}
    settings = make_settings(tmp_path, kafka=kafka_bootstrap, sources=[source])
    prefix = settings.kafka.topic_prefix
    names = ["mms-mt-sent-n101", "mms-mt-delivered-n102", "mms-notice-transcoded-n003",
             "sms-mo-stop"]
    async with relay_server(settings) as url, httpx.AsyncClient(base_url=url) as client:
        for name in names:
            resp = await client.post(f"/hooks/sky/{TOKEN}",
                                     content=(FIXTURES / f"{name}.json").read_bytes())
            assert resp.status_code == 200
        assert (await client.post("/hooks/sky/bad", content=BODY)).status_code == 401
        receipts = await consume(kafka_bootstrap, f"{prefix}delivery-receipts.v1", 2, settle=1.0)
        inbound = await consume(kafka_bootstrap, f"{prefix}inbound-messages.v1", 1, settle=1.0)
        consent = await consume(kafka_bootstrap, f"{prefix}consent.v1", 1)
        raws = await consume(kafka_bootstrap, f"{prefix}raw-postbacks.v1", 4, settle=1.0)
    statuses = sorted((r.key, orjson.loads(r.value)["status"]) for r in receipts)
    assert statuses == [(b"MMSMT8f3kQ2", "delivered"), (b"MMSMT8f3kQ2", "sent")]
    for record in receipts:
        validate("delivery_receipt", orjson.loads(record.value))
    (msg,) = [orjson.loads(r.value) for r in inbound]
    assert inbound[0].key == b"28444|+17745550001" and msg["keyword"] == "opt_out"
    assert [r.key for r in consent] == [b"+17745550001"]
    assert len(raws) == 4  # the notice is archived raw, never published as an event
