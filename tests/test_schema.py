"""Unit tests for relay.schema: event ids, timestamps, events and their JSON form."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.schema import (
    CHANNELS,
    SCHEMA_VERSION,
    STATUS_RANK,
    STATUSES,
    TERMINAL,
    Carrier,
    ConsentEvent,
    ErrorInfo,
    Event,
    Media,
    RawPostback,
    _micros,
    event_id,
    rfc3339,
)

SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"
RFC3339_MS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


def schema(name: str) -> dict[str, Any]:
    """The JSON Schema ``schemas/<name>.v1.json``."""
    return json.loads((SCHEMAS / f"{name}.v1.json").read_text(encoding="utf-8"))


def receipt(**changes: Any) -> Event:
    """A delivery receipt event."""
    event = Event(
        id=event_id("bandwidth", "msg-1", "delivered"), type="delivery_receipt",
        source="bw", provider="bandwidth", channel="sms", message_id="msg-1",
        status="delivered", final=True, provider_status="message-delivered",
        from_="+12025550143", to="+17745550001", occurred_at="2025-03-01T10:00:04.000Z",
        received_at="2025-03-01T10:00:05.120Z", raw_id=7, client_ref="ref-1",
        error=ErrorInfo("0", "ok"), segments=1, carrier=Carrier("Verizon", "311", "480"),
        from_kind="e164", to_kind="e164", flags=("x",),
    )  # fmt: skip
    return replace(event, **changes)


def inbound(**changes: Any) -> Event:
    """An inbound message event."""
    event = Event(
        id=event_id("bandwidth", "in-1"), type="inbound_message", source="bw",
        provider="bandwidth", channel="mms", message_id="in-1", status=None, final=True,
        provider_status="message-received", from_="+12025550143", to="28444",
        occurred_at=None, received_at="2025-03-01T10:00:05.120Z", raw_id=8,
        text="STOP", media=(Media("https://m.example/1.jpg", "image/jpeg"), Media("u")),
        from_kind="e164", to_kind="short_code", participants=("+12025550143", "28444"),
        keyword="opt_out",
    )  # fmt: skip
    return replace(event, **changes)


def consent(**changes: Any) -> ConsentEvent:
    """A consent event."""
    event = ConsentEvent(
        id=event_id("bandwidth", "in-1", "opt_out"), action="opt_out", keyword="STOP",
        source="bw", provider="bandwidth", channel="sms", subscriber="+12025550143",
        number="28444", message_id="in-1", occurred_at=None,
        received_at="2025-03-01T10:00:05.120Z", raw_id=8,
    )  # fmt: skip
    return replace(event, **changes)


# --- event_id ---------------------------------------------------------------------------------


def test_event_id_is_deterministic_uuid5() -> None:
    """The same provider and key give the same UUIDv5 every time."""
    a = event_id("bandwidth", "msg-1", "delivered")
    assert a == event_id("bandwidth", "msg-1", "delivered")
    assert uuid.UUID(a).version == 5
    assert str(uuid.UUID(a)) == a


@pytest.mark.parametrize(
    ("one", "two"),
    [
        (("bandwidth", "m1"), ("skycore", "m1")),
        (("bandwidth", "m1"), ("bandwidth", "m2")),
        (("bandwidth", "a", "bc"), ("bandwidth", "ab", "c")),
        (("bandwidth", "a b"), ("bandwidth", "a", "b")),
        (("bandwidth", "m1"), ("bandwidth", "m1", "")),
        (("bandwidth", "m1", None), ("bandwidth", "m1", "None")),
    ],
)
def test_event_id_distinct_for_distinct_keys(one: tuple[Any, ...], two: tuple[Any, ...]) -> None:
    """Different providers or key parts (including a shifted boundary) give different ids."""
    assert event_id(*one) != event_id(*two)


def test_event_id_none_part_differs_from_empty_string() -> None:
    """A missing (None) key part, an empty one and no part at all give three different ids."""
    ids = {event_id("p", "m", None), event_id("p", "m", ""), event_id("p", "m")}
    assert len(ids) == 3


def test_event_id_stringifies_parts() -> None:
    """Non-string key parts are hashed by their str form."""
    assert event_id("p", 42, 1.5) == event_id("p", "42", "1.5")


@settings(max_examples=300, deadline=None)
@given(
    a=st.tuples(st.text(max_size=8),
                st.lists(st.text(alphabet="ab01 ", max_size=4), min_size=1, max_size=3)),
    b=st.tuples(st.text(max_size=8),
                st.lists(st.text(alphabet="ab01 ", max_size=4), min_size=1, max_size=3)),
)
def test_event_id_injective_on_provider_and_key(a: tuple[str, list[str]],
                                                b: tuple[str, list[str]]) -> None:  # fmt: skip
    """Distinct (provider, non-empty key) pairs never share an id (no separators in keys)."""
    if a != b:
        assert event_id(a[0], *a[1]) != event_id(b[0], *b[1])
    else:
        assert event_id(a[0], *a[1]) == event_id(b[0], *b[1])


# --- rfc3339 ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ts", "text"),
    [
        (0, "1970-01-01T00:00:00.000Z"),
        (1_740_823_205.12, "2025-03-01T10:00:05.120Z"),
        (1_740_823_205.0009, "2025-03-01T10:00:05.000Z"),
        (1_740_823_205.9999, "2025-03-01T10:00:05.999Z"),
        (-0.5, "1969-12-31T23:59:59.500Z"),
        (4_102_444_800, "2100-01-01T00:00:00.000Z"),
    ],
)
def test_rfc3339_format(ts: float, text: str) -> None:
    """rfc3339 renders UTC with milliseconds truncated and a 'Z' suffix."""
    assert rfc3339(ts) == text


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=-30_000_000_000, max_value=250_000_000_000))
def test_rfc3339_always_matches_schema_pattern_and_round_trips(ts: float) -> None:
    """Every time from year 1000 to 9999 renders in the schema's pattern, truncated to 1 ms."""
    text = rfc3339(ts)
    assert RFC3339_MS.match(text)
    back = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()
    slack = 1e-6 * max(1.0, abs(ts) / 1e6)  # microsecond rounding and float resolution
    assert -slack <= ts - back < 0.001 + slack


def test_rfc3339_pads_years_before_1000() -> None:
    """Year 1 (Go's zero time, which some providers send) is rendered with four digits."""
    assert rfc3339(datetime(1, 1, 1, tzinfo=UTC).timestamp()) == "0001-01-01T00:00:00.000Z"


# --- status ranks -----------------------------------------------------------------------------


def test_status_rank_order() -> None:
    """Ranks grow along a message's life; terminal states share 5 and read is 6."""
    assert STATUS_RANK["unknown"] < STATUS_RANK["accepted"] < STATUS_RANK["queued"]
    assert STATUS_RANK["queued"] < STATUS_RANK["sent"] < STATUS_RANK["delivered"]
    assert {STATUS_RANK[s] for s in TERMINAL - {"read"}} == {5}
    assert STATUS_RANK["read"] == 6
    assert set(STATUSES) == set(STATUS_RANK)
    assert "unknown" not in TERMINAL


@pytest.mark.parametrize("status", STATUSES)
def test_event_status_rank_property(status: Any) -> None:
    """Event.status_rank is the rank of its status."""
    assert receipt(status=status).status_rank == STATUS_RANK[status]


def test_event_without_status_has_rank_zero() -> None:
    """An event without a status (inbound) has rank 0."""
    assert inbound().status_rank == 0


def test_status_rank_matches_schema() -> None:
    """The receipt schema's status enum lists exactly the known statuses."""
    props = schema("delivery_receipt")["properties"]
    assert set(props["status"]["enum"]) - {None} == set(STATUSES)
    assert props["status_rank"]["maximum"] == max(STATUS_RANK.values())
    assert tuple(props["channel"]["enum"]) == CHANNELS


# --- keys -------------------------------------------------------------------------------------


def test_receipt_key_is_message_id_else_event_id() -> None:
    """A receipt is keyed by its message id, or by its own id without one."""
    assert receipt().key == "msg-1"
    event = receipt(message_id=None)
    assert event.key == event.id


def test_inbound_key_is_conversation() -> None:
    """An inbound message is keyed by 'to|from' so a conversation stays ordered."""
    assert inbound().key == "28444|+12025550143"
    assert inbound(to=None, from_=None).key == "|"
    assert inbound(to="a", from_=None).key == "a|"


def test_consent_key_is_subscriber_else_id() -> None:
    """A consent event is keyed by the subscriber, or by its id without one."""
    assert consent().key == "+12025550143"
    event = consent(subscriber=None)
    assert event.key == event.id


# --- to_dict / to_json ------------------------------------------------------------------------


def test_to_dict_uses_from_not_from_() -> None:
    """The JSON object has 'from' and never 'from_'."""
    data = receipt().to_dict()
    assert data["from"] == "+12025550143"
    assert "from_" not in data
    assert b'"from_"' not in receipt().to_json()


def test_receipt_to_dict_omits_text_media_keyword() -> None:
    """A delivery receipt's JSON has no text, media or keyword even if set."""
    data = receipt(text="secret body", media=(Media("u"),), keyword="help").to_dict()
    assert "text" not in data
    assert "media" not in data
    assert "keyword" not in data
    assert b"secret body" not in receipt(text="secret body").to_json()


def test_receipt_to_dict_fields() -> None:
    """A receipt's JSON carries rank, version, nested objects and lists."""
    data = receipt().to_dict()
    assert data["status_rank"] == 5
    assert data["schema_version"] == SCHEMA_VERSION
    assert data["error"] == {"code": "0", "description": "ok"}
    assert data["carrier"] == {"name": "Verizon", "mcc": "311", "mnc": "480"}
    assert data["flags"] == ["x"]
    assert data["participants"] == []


def test_inbound_to_dict_keeps_text_media_keyword() -> None:
    """An inbound message's JSON keeps text, media (as a list of objects) and keyword."""
    data = inbound().to_dict()
    assert data["text"] == "STOP"
    assert data["media"] == [{"url": "https://m.example/1.jpg", "content_type": "image/jpeg"},
                             {"url": "u", "content_type": None}]  # fmt: skip
    assert data["keyword"] == "opt_out"
    assert data["participants"] == ["+12025550143", "28444"]


def test_to_json_equals_to_dict() -> None:
    """to_json is exactly the JSON serialisation of to_dict."""
    for event in (receipt(), inbound(), consent()):
        assert orjson.loads(event.to_json()) == event.to_dict()


@pytest.mark.parametrize(
    ("make", "name"),
    [(receipt, "delivery_receipt"), (inbound, "inbound_message"), (consent, "consent")],
)
def test_events_validate_against_schema_files(make: Any, name: str) -> None:
    """Every kind of event validates against its JSON Schema file."""
    jsonschema.validate(orjson.loads(make().to_json()), schema(name))


def test_minimal_receipt_validates_against_schema() -> None:
    """A receipt with every optional field empty still validates."""
    event = receipt(message_id=None, status="unknown", final=False, provider_status=None,
                    from_=None, to=None, occurred_at=None, client_ref=None, error=None,
                    segments=None, carrier=None, from_kind=None, to_kind=None, flags=())  # fmt: skip
    jsonschema.validate(orjson.loads(event.to_json()), schema("delivery_receipt"))


def test_consent_to_dict() -> None:
    """A consent event's JSON has type 'consent' and the schema version."""
    data = consent().to_dict()
    assert data["type"] == "consent"
    assert data["schema_version"] == SCHEMA_VERSION
    assert data["action"] == "opt_out"


def test_raw_postback_header_lookup() -> None:
    """RawPostback.header returns the first value of a header, or None."""
    raw = RawPostback(source="s", received_at=0.0, remote_addr="1.2.3.4", method="POST",
                      path="/hooks/s", query="", body=b"", headers=(
                          ("content-type", "application/json"), ("x-a", "1"), ("x-a", "2")))  # fmt: skip
    assert raw.header("x-a") == "1"
    assert raw.header("content-type") == "application/json"
    assert raw.header("missing") is None
    assert raw.id == 0


# --- fast formulas equal the originals -----------------------------------------------------


_REFERENCE_NAMESPACE = uuid.UUID("6f1c4a52-6c2e-4d8e-9a57-2b1f0d5c7e31")


def reference_event_id(provider: str, *key: object) -> str:
    """event_id as first written (bytearray bit-twiddling): the reference for the fast one."""
    parts = orjson.dumps([provider, *(None if k is None else str(k) for k in key)])
    sha = hashlib.sha1(_REFERENCE_NAMESPACE.bytes + parts, usedforsecurity=False)
    digest = bytearray(sha.digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50
    digest[8] = (digest[8] & 0x3F) | 0x80
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def reference_rfc3339(ts: float) -> str:
    """rfc3339 as first written (a datetime per call): the reference for the fast one."""
    return (datetime(1970, 1, 1) + timedelta(seconds=ts)).isoformat(timespec="milliseconds") + "Z"


class _Shouty(str):
    """A str subclass whose str() differs from its value."""

    __slots__ = ()

    def __str__(self) -> str:
        return self.upper()


_KEY_PARTS = st.one_of(st.none(), st.text(max_size=40), st.integers(), st.booleans(),
                       st.floats(allow_nan=True), st.text(max_size=5).map(_Shouty))


@settings(max_examples=1000, deadline=None)
@given(st.text(max_size=12), st.lists(_KEY_PARTS, max_size=6))
def test_event_id_equals_the_reference_formula(provider: str, key: list[object]) -> None:
    """The fast event_id equals the original formula and uuid.uuid5 for arbitrary key parts."""
    ident = event_id(provider, *key)
    assert ident == reference_event_id(provider, *key)
    name = orjson.dumps([provider, *(None if k is None else str(k) for k in key)]).decode()
    assert ident == str(uuid.uuid5(_REFERENCE_NAMESPACE, name))


def _outcome(fn: Any, ts: float) -> tuple[str, object]:
    """``("ok", text)`` or ``("raise", exception type name)`` of ``fn(ts)``."""
    try:
        return "ok", fn(ts)
    except (ValueError, OverflowError) as exc:
        return "raise", type(exc).__name__


_TIMES = st.one_of(
    st.floats(min_value=-62_135_596_800, max_value=253_402_300_800),  # years 1 to 9999
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-2**40, max_value=2**40).map(lambda n: n / 2**22),  # exact halves
    st.integers(min_value=-10**16, max_value=10**16).map(lambda n: n / 2_000_000),
    st.integers(min_value=-10**12, max_value=10**12),
)
_NEAR_MILLISECOND_EDGES = st.builds(
    lambda second, ms, offset: second + (ms * 1000 + offset) / 1e6,
    st.integers(min_value=-10**10, max_value=10**10), st.integers(min_value=-1, max_value=1000),
    st.sampled_from([-0.5, -0.5000001, -0.4999999, 0.4999999, 0.5, 0.5000001, 999.5, 0.0]))


@settings(max_examples=3000, deadline=None)
@given(st.one_of(_TIMES, _NEAR_MILLISECOND_EDGES))
def test_rfc3339_equals_the_reference_formula(ts: float) -> None:
    """The fast rfc3339 equals the datetime formula (text, or exception type) for any time."""
    assert _outcome(rfc3339, ts) == _outcome(reference_rfc3339, ts)


@settings(max_examples=3000, deadline=None)
@given(st.one_of(_TIMES, st.floats(min_value=-8e13, max_value=8e13)))
def test_micros_round_half_to_even_as_timedelta_does(ts: float) -> None:
    """_micros equals timedelta(seconds=ts) in microseconds (or raises the same exception)."""
    def reference(t: float) -> int:
        return timedelta(seconds=t) // timedelta(microseconds=1)

    def fast(t: float) -> int:
        micros = _micros(t)
        timedelta(microseconds=micros)  # the same range check
        return micros

    assert _outcome(fast, ts) == _outcome(reference, ts)


@pytest.mark.parametrize("ts", [0.0005, -0.0005, 1e-7, 0.9995, 0.9999995, -0.9999995,
                                1_740_823_200.0005, 253_402_300_799.9995, -62_135_596_800.0,
                                -62_135_596_800.000001, 253_402_300_800.0, 2.5e-7, 5e-7])
def test_rfc3339_equals_the_reference_at_rounding_edges(ts: float) -> None:
    """Half-microseconds, millisecond and year-range boundaries render as the datetime formula."""
    assert _outcome(rfc3339, ts) == _outcome(reference_rfc3339, ts)
