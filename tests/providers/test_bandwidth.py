"""Bandwidth Messaging v2 callbacks: parsing, status mapping, authentication."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from harness import basic
from hypothesis import given
from hypothesis import strategies as st
from starlette.testclient import TestClient
from strategies import INT64, json_documents

from relay.app import create_app
from relay.errors import NormalisationError
from relay.providers import SourceContext
from relay.providers.bandwidth import error_status, normalise
from relay.schema import Event, RawPostback
from relay.service import Service
from relay.settings import parse

FIXTURES = Path(__file__).parent / "fixtures" / "bandwidth"
CTX = SourceContext(name="bw", provider="bandwidth", default_region="US")


def events(name: str) -> list[Event]:
    """The events of a fixture body."""
    raw = RawPostback(source="bw", received_at=1_740_823_300.0, remote_addr="203.0.113.9",
                      method="POST", path="/hooks/bw", query="", headers=(),
                      body=(FIXTURES / name).read_bytes(), id=5)
    out = normalise(raw, CTX)
    assert all(isinstance(e, Event) for e in out)
    return out  # type: ignore[return-value]


def test_delivered_receipt_fields() -> None:
    """A message-delivered callback becomes a final 'delivered' receipt with every field mapped."""
    (e,) = events("delivered.json")
    assert (e.type, e.status, e.final, e.status_rank) == ("delivery_receipt", "delivered", True, 5)
    assert e.message_id == "1740823204123abcd1234efgh5678"
    assert (e.from_, e.to, e.client_ref, e.segments) == ("+15552221111", "+15554443333",
                                                         "order-8812", 1)
    assert e.occurred_at == "2025-03-01T10:00:05.120Z"
    assert e.received_at == "2025-03-01T10:01:40.000Z"
    assert e.channel == "sms" and e.error is None and e.raw_id == 5


def test_failed_codes_map_to_their_status() -> None:
    """message-failed carries errorCode and description, and the code picks the status."""
    (e,) = events("failed-forbidden-country.json")
    assert (e.status, e.final, e.provider_status) == ("rejected", True, "message-failed:4432")
    assert e.error is not None and (e.error.code, e.error.description) == (
        "4432", "rejected-forbidden-country")
    (expired,) = events("failed-expired.json")
    assert expired.status == "expired"
    (dlr,) = events("failed-dlr-expired.json")
    assert (dlr.status, dlr.final) == ("unknown", True)


@pytest.mark.parametrize(("code", "status"), [
    (4001, "rejected"), (4360, "expired"), (4432, "rejected"), (4470, "rejected"),
    (4700, "undeliverable"), (4720, "undeliverable"), (4721, "undeliverable"),
    (4730, "undeliverable"), (4740, "undeliverable"), (4750, "rejected"), (4775, "rejected"),
    (4795, "rejected"), (5100, "failed"), (5620, "failed"), (9902, "unknown"),
    (9999, "failed"), (None, "failed"), (1234, "failed"),
])
def test_error_code_table(code: int | None, status: str) -> None:
    """Each errorCode range of the reference table maps to its normalised status."""
    assert error_status(code) == status


def test_sending_and_sent_are_not_final_and_single_object_body_is_accepted() -> None:
    """message-sending is queued and message-sent is sent, neither final; a lone object works too."""
    sending, sent = events("sending-sent-mms.json")
    assert (sending.status, sending.final, sending.channel) == ("queued", False, "mms")
    assert (sent.status, sent.final) == ("sent", False)
    assert sending.id != sent.id
    (single,) = events("failed-expired.json")
    assert single.message_id == "1740823205999exp"


def test_group_delivery_to_carrier_is_per_recipient() -> None:
    """Group statuses are keyed per recipient and 'delivered to carrier' is flagged, not delivered."""
    first, second = events("delivered-to-carrier-group.json")
    assert (first.to, second.to) == ("+15554443333", "+15557778888")
    assert first.id != second.id and first.key == second.key == "1740823209grp"
    assert (first.status, first.final, first.flags) == ("sent", True, ("delivered_to_carrier",))
    assert first.carrier is not None and first.carrier.name == "Verizon"
    assert first.participants == ("+15554443333", "+15557778888")


def test_read_receipt_is_rcs() -> None:
    """message-read from RBM is a final 'read' on the rcs channel."""
    (e,) = events("read-rbm.json")
    assert (e.status, e.channel, e.status_rank) == ("read", "rcs", 6)


def test_inbound_messages() -> None:
    """message-received becomes an inbound message with text, media and conversation key."""
    (stop,) = events("inbound-stop.json")
    assert (stop.type, stop.text, stop.status) == ("inbound_message", "STOP", None)
    assert stop.key == "+15552221111|+15554443333"
    one, two = events("inbound-group-mms.json")
    assert one.channel == "mms" and one.media[0].url.endswith("photo.jpg")
    assert (one.to, two.to) == ("+15552221111", "+15557778888")
    assert one.id != two.id


def test_short_code_is_kept_and_flagged() -> None:
    """A short code is not mangled into E.164 and is flagged as such."""
    (e,) = events("inbound-shortcode-single.json")
    assert (e.to, e.to_kind, e.from_kind) == ("28444", "short_code", "e164")


def test_suggestion_response_text() -> None:
    """An RBM suggestion response is an inbound rcs message carrying the chosen text."""
    (e,) = events("suggestion-response.json")
    assert (e.type, e.channel, e.text) == ("inbound_message", "rcs", "Yes please")


@pytest.mark.parametrize("name", ["invalid-not-json.json", "invalid-unknown-type.json",
                                  "invalid-no-message.json"])
def test_unreadable_bodies_raise_normalisation_error(name: str) -> None:
    """Bodies that are not Bandwidth callbacks raise NormalisationError (they are dead-lettered)."""
    with pytest.raises(NormalisationError):
        events(name)


def test_event_ids_are_deterministic() -> None:
    """Normalising the same body twice yields the same ids."""
    assert [e.id for e in events("sending-sent-mms.json")] == [
        e.id for e in events("sending-sent-mms.json")]


@given(st.binary(max_size=512))
def test_random_bytes_never_crash(body: bytes) -> None:
    """Random bytes yield events or NormalisationError, never another exception."""
    raw = RawPostback("bw", 0.0, "", "POST", "/", "", (), body)
    with contextlib.suppress(NormalisationError):
        normalise(raw, CTX)


json_values = json_documents(
    st.none() | st.booleans() | INT64 | st.floats(allow_nan=False) | st.text(max_size=20),
    st.text(max_size=10), max_size=4, max_leaves=20)
shaped = st.fixed_dictionaries({
    "type": st.sampled_from(["message-delivered", "message-failed", "message-received",
                             "message-read", "bogus"]) | st.text(max_size=5),
    "message": st.dictionaries(st.sampled_from(["id", "to", "from", "media", "text", "tag",
                                                "segmentCount", "channel"]), json_values),
}, optional={"to": json_values, "time": json_values, "errorCode": json_values})


@given(st.lists(shaped, max_size=3))
def test_random_callback_shapes_never_crash(items: list[object]) -> None:
    """Callback-shaped JSON with random field values never raises anything but NormalisationError."""
    import orjson

    raw = RawPostback("bw", 0.0, "", "POST", "/", "", (), orjson.dumps(items))
    try:
        out = normalise(raw, CTX)
    except NormalisationError:
        return
    for event in out:
        event.to_json()


def _client(tmp_path: Path) -> tuple[TestClient, Service]:
    settings = parse({"spool": {"dir": str(tmp_path)}, "sources": [{
        "name": "bw", "provider": "bandwidth",
        "basic_auth": {"username": "relay", "password": "env:P"}}]}, environ={"P": "pw"})
    service = Service(settings)
    return TestClient(create_app(service)), service


@pytest.mark.parametrize("headers", [
    {}, basic("relay", "nope"), basic("other", "pw"), {"authorization": "Basic !!!"},
    {"authorization": "Bearer pw"}, {"authorization": "Basic cmVsYXk="},
])
def test_bad_basic_auth_is_challenged_and_not_spooled(tmp_path: Path,
                                                      headers: dict[str, str]) -> None:
    """Missing, wrong or malformed Basic credentials get 401 with a challenge and nothing stored."""
    client, service = _client(tmp_path)
    with client:
        resp = client.post("/hooks/bw", content=(FIXTURES / "delivered.json").read_bytes(),
                           headers=headers)
        assert resp.status_code == 401
        assert resp.headers["www-authenticate"].startswith("Basic ")
        assert service.spool.stats().total == 0


def test_good_basic_auth_is_spooled(tmp_path: Path) -> None:
    """Right credentials get 200 once the postback is stored."""
    client, service = _client(tmp_path)
    with client:
        resp = client.post("/hooks/bw", content=(FIXTURES / "delivered.json").read_bytes(),
                           headers=basic("relay", "pw"))
        assert resp.status_code == 200
        assert service.spool.stats().total == 1
