"""The normalised event schema, v1, and the raw postback it is derived from.

Everything a provider adapter produces is an :class:`Event` (a delivery receipt or an
inbound message) or a :class:`ConsentEvent`. Their JSON form is specified by the JSON
Schemas in ``schemas/`` and documented in ``docs/events.md``; ``to_json`` is the only
serialiser, so the schema files and the records on Kafka cannot drift apart silently
(the test suite validates every event it produces against the schema files).

Event ids are deterministic: :func:`event_id` hashes the provider name and the
provider's own dedup key, so a retried postback or a replay yields the same id.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any, Literal, NamedTuple

import orjson

SCHEMA_VERSION = 1

EventType = Literal["delivery_receipt", "inbound_message"]
Channel = Literal["sms", "mms", "whatsapp", "rcs", "unknown"]
Status = Literal[
    "accepted",
    "queued",
    "sent",
    "delivered",
    "read",
    "failed",
    "rejected",
    "expired",
    "undeliverable",
    "unknown",
]
ConsentAction = Literal["opt_out", "opt_in", "help"]
AddressKind = Literal["e164", "short_code", "alphanumeric", "other"]

CHANNELS: tuple[Channel, ...] = ("sms", "mms", "whatsapp", "rcs", "unknown")

#: How far along its life a message is; a consumer keeps the highest rank it has seen,
#: so a late ``sent`` (3) never overwrites ``delivered`` (5). All terminal states share 5
#: except ``read`` (6), which can only follow a delivery.
STATUS_RANK: dict[Status, int] = {
    "unknown": 0,
    "accepted": 1,
    "queued": 2,
    "sent": 3,
    "delivered": 5,
    "failed": 5,
    "rejected": 5,
    "expired": 5,
    "undeliverable": 5,
    "read": 6,
}
STATUSES: tuple[Status, ...] = tuple(STATUS_RANK)
#: Statuses after which nothing more is expected (``unknown`` is final only when the
#: provider says so, e.g. Bandwidth 9902).
TERMINAL: frozenset[Status] = frozenset(
    {"delivered", "read", "failed", "rejected", "expired", "undeliverable"}
)

_ID_NAMESPACE = uuid.UUID("6f1c4a52-6c2e-4d8e-9a57-2b1f0d5c7e31")
_NAMESPACE_BYTES = _ID_NAMESPACE.bytes
#: Copied for each id (the namespace is hashed once); SHA-1 because uuid5 is defined so.
_NAMESPACE_SHA1 = hashlib.sha1(_NAMESPACE_BYTES, usedforsecurity=False)
_EPOCH = datetime(1970, 1, 1)
#: The RFC 4122 variant nibble (binary 10xx) for each hex digit of a digest.
_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}
#: ``.000Z`` to ``.999Z``: the end of an RFC 3339 time, by millisecond.
_MILLIS = tuple(f".{ms:03d}Z" for ms in range(1000))


def event_id(provider: str, *key: object) -> str:
    """The deterministic id of a provider event, from the provider's dedup key parts.

    The parts are stringified (``4720`` and ``"4720"`` are the same key) and encoded as a
    JSON array with None as null, so distinct keys never collide: ``event_id("p")``,
    ``event_id("p", None)`` and ``event_id("p", "")`` all differ.

    The id is exactly ``uuid.uuid5`` of the namespace and that JSON, formatted from the
    hex digest directly (no :class:`uuid.UUID` objects: replay makes millions of ids).
    """
    parts = orjson.dumps([provider, *[k if k is None or type(k) is str else str(k) for k in key]])
    sha = _NAMESPACE_SHA1.copy()
    sha.update(parts)
    digest = sha.hexdigest()
    # Version 5 in the high nibble of byte 6, the RFC 4122 variant in that of byte 8.
    return (f"{digest[:8]}-{digest[8:12]}-5{digest[13:16]}-"
            f"{_VARIANT[digest[16]]}{digest[17:20]}-{digest[20:32]}")


@lru_cache(maxsize=1024)
def rfc3339(ts: float) -> str:
    """A UNIX time as RFC 3339 UTC with millisecond precision: ``2025-03-01T10:00:05.120Z``.

    Exactly ``(epoch + timedelta(seconds=ts)).isoformat(timespec="milliseconds") + "Z"``:
    ``ts`` is rounded to the microsecond as :class:`~datetime.timedelta` rounds it (half to
    even), then truncated to the millisecond. Only the whole second goes through
    :mod:`datetime` (cached: consecutive postbacks share it).
    """
    seconds, micros = divmod(_micros(ts), 1_000_000)
    return _whole_second(seconds) + _MILLIS[micros // 1000]


def _micros(ts: float) -> int:
    """``ts`` in whole microseconds, rounded as ``timedelta(seconds=ts)`` rounds it: the
    fraction times 10**6 as a float, then half to even."""
    fraction, whole = math.modf(ts)
    return int(whole) * 1_000_000 + round(fraction * 1e6)


@lru_cache(maxsize=1024)
def _whole_second(seconds: int) -> str:
    """A whole UNIX second as ``YYYY-MM-DDTHH:MM:SS`` (UTC)."""
    return (_EPOCH + timedelta(seconds=seconds)).isoformat(timespec="seconds")


class RawPostback(NamedTuple):
    """A postback exactly as received; what the spool stores and replay re-reads.

    A named tuple, not a frozen dataclass: immutable all the same, and one is built for
    every acknowledged postback (a frozen dataclass costs four times as much to build).
    """

    source: str
    received_at: float
    remote_addr: str
    method: str
    path: str
    query: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    id: int = 0

    def header(self, name: str) -> str | None:
        """The first value of a header (``name`` in lower case), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """A provider error code and its description."""

    code: str
    description: str | None = None


@dataclass(frozen=True, slots=True)
class Media:
    """One media attachment of an inbound message."""

    url: str
    content_type: str | None = None


@dataclass(frozen=True, slots=True)
class Carrier:
    """The operator that handled the message, as far as the provider tells."""

    name: str | None = None
    mcc: str | None = None
    mnc: str | None = None


@dataclass(slots=True)
class Event:
    """A normalised delivery receipt or inbound message (see ``schemas/``).

    Treated as immutable (use :func:`dataclasses.replace`); not frozen only because a
    frozen dataclass costs a third more to build, and replay builds millions.
    """

    id: str
    type: EventType
    source: str
    provider: str
    channel: Channel
    message_id: str | None
    status: Status | None
    final: bool
    provider_status: str | None
    from_: str | None
    to: str | None
    occurred_at: str | None
    received_at: str
    raw_id: int
    client_ref: str | None = None
    error: ErrorInfo | None = None
    text: str | None = None
    media: tuple[Media, ...] = ()
    segments: int | None = None
    carrier: Carrier | None = None
    from_kind: AddressKind | None = None
    to_kind: AddressKind | None = None
    participants: tuple[str, ...] = ()
    keyword: ConsentAction | None = None
    flags: tuple[str, ...] = ()

    @property
    def status_rank(self) -> int:
        """The rank of ``status`` in a message's life (see :data:`STATUS_RANK`)."""
        return STATUS_RANK[self.status] if self.status else 0

    @property
    def key(self) -> str:
        """The Kafka key: the message id for receipts, the conversation for inbound."""
        if self.type == "delivery_receipt":
            return self.message_id or self.id
        return f"{self.to or ''}|{self.from_ or ''}"

    def to_dict(self) -> dict[str, Any]:
        """The event's JSON object, as published (see ``schemas/``)."""
        error, carrier = self.error, self.carrier
        data: dict[str, Any] = {
            "id": self.id,
            "schema_version": SCHEMA_VERSION,
            "type": self.type,
            "source": self.source,
            "provider": self.provider,
            "channel": self.channel,
            "message_id": self.message_id,
            "client_ref": self.client_ref,
            "status": self.status,
            "status_rank": self.status_rank,
            "final": self.final,
            "provider_status": self.provider_status,
            "error": None if error is None else {"code": error.code,
                                                 "description": error.description},
            "from": self.from_,
            "to": self.to,
            "from_kind": self.from_kind,
            "to_kind": self.to_kind,
            "segments": self.segments,
            "carrier": None if carrier is None else {"name": carrier.name, "mcc": carrier.mcc,
                                                     "mnc": carrier.mnc},
            "participants": list(self.participants),
            "flags": list(self.flags),
            "occurred_at": self.occurred_at,
            "received_at": self.received_at,
            "raw_id": self.raw_id,
        }
        if self.type == "inbound_message":
            data["text"] = self.text
            data["media"] = [{"url": m.url, "content_type": m.content_type} for m in self.media]
            data["keyword"] = self.keyword
        return data

    def to_json(self) -> bytes:
        """The event as JSON bytes."""
        return orjson.dumps(self.to_dict())


@dataclass(frozen=True, slots=True)
class ConsentEvent:
    """A subscriber's opt-out, opt-in or help request, derived from an inbound message."""

    id: str
    action: ConsentAction
    keyword: str
    source: str
    provider: str
    channel: Channel
    subscriber: str | None
    number: str | None
    message_id: str | None
    occurred_at: str | None
    received_at: str
    raw_id: int
    type: Literal["consent"] = field(default="consent")

    @property
    def key(self) -> str:
        """The Kafka key: the subscriber's number, so one subscriber's changes stay ordered."""
        return self.subscriber or self.id

    def to_dict(self) -> dict[str, Any]:
        """The event's JSON object, as published."""
        data = asdict(self)
        data["schema_version"] = SCHEMA_VERSION
        return data

    def to_json(self) -> bytes:
        """The event as JSON bytes."""
        return orjson.dumps(self.to_dict())


@dataclass(frozen=True, slots=True)
class Notice:
    """A provider notification that is not a message status (e.g. an MMS transcoding
    notice): logged and counted, never published."""

    code: str
    detail: str | None = None


AnyEvent = Event | ConsentEvent
#: What a provider adapter's ``normalise`` returns items of.
Output = Event | ConsentEvent | Notice
