"""Bandwidth Messaging API v2 callbacks.

The body is a JSON array of events (the OpenAPI spec says a single object: both are
accepted). Status callbacks (``message-sending``, ``-sent``, ``-delivered``, ``-failed``,
``-read``) become delivery receipts keyed by ``message.id``; ``message-received`` (and
the RBM ``suggestion-response`` / ``requested-location-response``) become inbound
messages. A group message yields one event per owned recipient (Bandwidth sends a
separate event, with its own ``message.id``, for each). Authentication is HTTP Basic,
configured on the source (``basic_auth``).

Dedup keys: statuses ``(type, message.id, top-level to, time, errorCode)``, inbound
``message.id``.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from relay.errors import NormalisationError
from relay.providers import Provider, SourceContext
from relay.providers.common import address, integer, load_json, status_of, table, text, timestamp
from relay.schema import (
    Carrier,
    Channel,
    ErrorInfo,
    Event,
    Media,
    Output,
    RawPostback,
    Status,
    event_id,
    rfc3339,
)

NAME = "bandwidth"
INBOUND_TYPES = {"message-received", "suggestion-response", "requested-location-response"}
_CHANNELS: dict[str, Channel] = {"sms": "sms", "mms": "mms", "rbm": "rcs"}


@lru_cache(maxsize=4096)
def error_status(code: int | None) -> Status:
    """The normalised status of a ``message-failed`` with ``errorCode`` ``code`` (cached:
    the same few codes recur)."""
    if code is None:
        return "failed"
    for rule in table(NAME)["error_codes"]:
        if rule["from"] <= code <= rule["to"]:
            return rule["status"]  # type: ignore[no-any-return]
    return "failed"


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _channel(message: Mapping[str, Any]) -> Channel:
    named = _CHANNELS.get((text(message.get("channel")) or "").lower())
    if named:
        return named
    return "mms" if message.get("media") else "sms"


def _receipt_status(item: Mapping[str, Any], kind: str, status: Status, final: bool,
                    code: int | None) -> tuple[Status, bool, tuple[str, ...]]:
    if kind == "message-failed":
        return error_status(code), True, ()
    carrier_only = table(NAME)["carrier_only"]
    description = (text(item.get("description")) or "").lower()
    if kind == "message-delivered" and carrier_only["description_contains"] in description:
        return carrier_only["status"], carrier_only["final"], (carrier_only["flag"],)
    return status, final, ()


def _event(item: object, raw: RawPostback, ctx: SourceContext, received_at: str) -> Event:
    if not isinstance(item, dict):
        raise NormalisationError("callback item is not a JSON object")
    kind = text(item.get("type"))
    message = item.get("message")
    if not isinstance(message, dict):
        raise NormalisationError(f"callback {kind!r} has no 'message' object")
    status, final = status_of(NAME, kind)
    inbound = kind in INBOUND_TYPES
    if kind is None or (not inbound and status == "unknown"):
        raise NormalisationError(f"unknown Bandwidth callback type {kind!r}")
    msg_id = text(message.get("id"))
    region = ctx.default_region
    recipients = _list(message.get("to"))
    participants: tuple[str, ...] = ()
    if len(recipients) > 1:  # a group message: every number on the thread
        participants = tuple(a for a in (address(r, region)[0] for r in recipients) if a)
        participants = participants if len(participants) > 1 else ()
    top_to = text(item.get("to")) or text(message.get("owner"))
    to, to_kind = address(top_to, region)
    sender, from_kind = address(message.get("from"), region)
    carrier_name = text(item.get("carrierName"))
    carrier = Carrier(name=carrier_name) if carrier_name else None
    when = item.get("time")
    if inbound:
        body = text(message.get("text"))
        if kind == "suggestion-response":
            response = message.get("suggestionResponse")
            body = text(response.get("text")) if isinstance(response, dict) else body
        media = tuple(Media(url=u) for u in _list(message.get("media")) if isinstance(u, str))
        return Event(
            id=event_id(NAME, "inbound", msg_id), type="inbound_message", source=ctx.name,
            provider=NAME, channel=_channel(message), message_id=msg_id, status=None,
            final=False, provider_status=kind, from_=sender, to=to,
            occurred_at=timestamp(when), received_at=received_at, raw_id=raw.id,
            client_ref=text(message.get("tag")), text=body, media=media,
            segments=integer(message.get("segmentCount")), carrier=carrier,
            from_kind=from_kind, to_kind=to_kind, participants=participants)
    code = integer(item.get("errorCode"))
    status, final, flags = _receipt_status(item, kind, status, final, code)
    error = None
    provider_status = kind
    if kind == "message-failed" or code is not None:
        error = ErrorInfo(code=str(code) if code is not None else "",
                          description=text(item.get("description")))
        if kind == "message-failed" and code is not None:
            provider_status = f"{kind}:{code}"
    return Event(
        id=event_id(NAME, kind, msg_id, top_to, text(when), code),
        type="delivery_receipt", source=ctx.name, provider=NAME, channel=_channel(message),
        message_id=msg_id, status=status, final=final, provider_status=provider_status,
        from_=sender, to=to, occurred_at=timestamp(when), received_at=received_at,
        raw_id=raw.id, client_ref=text(message.get("tag")), error=error,
        segments=integer(message.get("segmentCount")), carrier=carrier, from_kind=from_kind,
        to_kind=to_kind, participants=participants, flags=flags)


def normalise(raw: RawPostback, ctx: SourceContext) -> list[Output]:
    """Every event in a Bandwidth callback body (an array, or one object)."""
    data = load_json(raw.body)
    items = data if isinstance(data, list) else [data]
    received_at = rfc3339(raw.received_at)
    return [_event(item, raw, ctx, received_at) for item in items]


PROVIDER = Provider(
    name=NAME,
    normalise=normalise,
    description="Bandwidth Messaging API v2 (HTTP Basic authentication)",
)
