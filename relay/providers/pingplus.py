"""Ping+ Media webhooks: SMS, WhatsApp and RCS delivery receipts and inbound messages.

Ping+ Media publishes only that its webhooks carry "message ID, status, timestamp and
operator metadata" and "HMAC-SHA256 signatures". relay follows the agreed contract
(``docs/providers/pingplus.md``): Standard Webhooks signing (``webhook-id``,
``webhook-timestamp``, ``webhook-signature`` with ``v1,<base64>`` entries, ``whsec_``
secrets, several at once for rotation) and an envelope per event::

    {"type": "message.status", "id": "evt_01J...", "created_at": "2025-03-01T10:00:05Z",
     "data": {"message_id": "msg_01J...", "client_ref": "order-8812", "channel": "sms",
              "to": "+447700900123", "from": "PINGPLUS", "status": "delivered",
              "status_reason": null, "error_code": null, "segments": 1,
              "operator": {"mcc": "234", "mnc": "15", "name": "Vodafone UK"},
              "occurred_at": "2025-03-01T10:00:04Z"}}

``message.inbound`` carries ``from``, ``to``, ``text``, ``media`` (objects with ``url`` and
``content_type``) and, when Ping+ keyword routing matched, ``keyword`` and
``keyword_action``: those are only kept as a flag (``provider_keyword:<action>``), relay's
own keyword detection runs centrally on ``text``. The status enum is the normalised set
(``relay/data/pingplus.toml``, identity); anything else is ``unknown``.

Tolerance: a body without the ``data`` envelope is read flat; a missing ``type`` is
inferred (a ``status`` field means a receipt, else an inbound message); a JSON array of
events is accepted; unknown fields are ignored. A receipt without ``message_id``, or an
unknown ``type``, is dead-lettered.

Dedup key: the ``webhook-id`` header (kept with the raw postback), else the body's ``id``
(for an array: each item's ``id``, else ``webhook-id`` and the position).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from relay.errors import ConfigError, NormalisationError
from relay.providers import Provider, Setup, SourceContext
from relay.providers.common import address, integer, load_json, status_of, text, timestamp
from relay.providers.generic import signing
from relay.providers.mapping import unknown_key
from relay.schema import (
    Carrier,
    Channel,
    ErrorInfo,
    Event,
    Media,
    Output,
    RawPostback,
    event_id,
    rfc3339,
)
from relay.settings import SourceConfig

NAME = "pingplus"
STATUS = "message.status"
INBOUND = "message.inbound"
_CHANNELS: Mapping[str, Channel] = {"sms": "sms", "mms": "mms", "whatsapp": "whatsapp",
                                     "rcs": "rcs", "rbm": "rcs"}  # fmt: skip


def configure(source: SourceConfig) -> Setup:
    """A Ping+ source needs ``signing`` (Standard Webhooks secrets)."""
    unknown_key(source.options, ("signing",), source.key)
    if "signing" not in source.options:
        raise ConfigError(f"{source.key}.signing", "is required: Ping+ Media signs every "
                          "webhook; signing = { secrets = ['env:PINGPLUS_WHSEC'] }")  # fmt: skip
    verifier = signing(source.options["signing"], f"{source.key}.signing", "standard-webhooks",
                       source.environ)
    return Setup(verifiers=(verifier,))


def _kind(item: Mapping[str, Any], data: Mapping[str, Any]) -> str:
    kind = (text(item.get("type")) or "").strip().lower().replace("_", ".")
    if not kind:
        return STATUS if data.get("status") is not None else INBOUND
    if kind not in (STATUS, INBOUND):
        raise NormalisationError(f"unknown Ping+ event type {kind!r}")
    return kind


def _carrier(data: Mapping[str, Any]) -> Carrier | None:
    operator = data.get("operator")
    if isinstance(operator, str):
        return Carrier(name=operator)
    if not isinstance(operator, dict):
        return None
    name, mcc, mnc = (text(operator.get(k)) for k in ("name", "mcc", "mnc"))
    return Carrier(name=name, mcc=mcc, mnc=mnc) if name or mcc or mnc else None


def _media(data: Mapping[str, Any]) -> tuple[Media, ...]:
    found = data.get("media")
    result = []
    for entry in found if isinstance(found, list) else []:
        url = text(entry.get("url")) if isinstance(entry, dict) else text(entry)
        kind = text(entry.get("content_type")) if isinstance(entry, dict) else None
        if url:
            result.append(Media(url=url, content_type=kind))
    return tuple(result)


def _flags(data: Mapping[str, Any]) -> tuple[str, ...]:
    action = text(data.get("keyword_action")) or text(data.get("keyword"))
    return (f"provider_keyword:{action.strip().lower()}",) if action else ()


def _error(data: Mapping[str, Any]) -> ErrorInfo | None:
    code = text(data.get("error_code"))
    reason = text(data.get("status_reason"))
    if code is None and reason is None:
        return None
    return ErrorInfo(code=code or "", description=reason)


def _event(item: object, dedup: str | None, raw: RawPostback, ctx: SourceContext) -> Event:
    if not isinstance(item, dict):
        raise NormalisationError("Ping+ event is not a JSON object")
    data = item["data"] if isinstance(item.get("data"), dict) else item
    kind = _kind(item, data)
    msg_id = text(data.get("message_id"))
    provider_status = text(data.get("status"))
    when = (data.get("occurred_at") or data.get("received_at") or data.get("timestamp")
            or item.get("created_at"))  # fmt: skip
    sender, from_kind = address(data.get("from"), ctx.default_region)
    to, to_kind = address(data.get("to"), ctx.default_region)
    key = (dedup,) if dedup else (kind, msg_id, provider_status, text(when))
    common: dict[str, Any] = {
        "id": event_id(NAME, *key), "source": ctx.name, "provider": NAME,
        "channel": _CHANNELS.get((text(data.get("channel")) or "").lower(), "unknown"),
        "message_id": msg_id, "provider_status": provider_status, "from_": sender, "to": to,
        "from_kind": from_kind, "to_kind": to_kind, "occurred_at": timestamp(when),
        "received_at": rfc3339(raw.received_at), "raw_id": raw.id,
        "client_ref": text(data.get("client_ref")), "error": _error(data),
        "segments": integer(data.get("segments")), "carrier": _carrier(data),
    }  # fmt: skip
    if kind == INBOUND:
        return Event(type="inbound_message", status=None, final=False, text=text(data.get("text")),
                     media=_media(data), flags=_flags(data), **common)  # fmt: skip
    if msg_id is None:
        raise NormalisationError("Ping+ message.status without data.message_id")
    status, final = status_of(NAME, provider_status)
    return Event(type="delivery_receipt", status=status, final=final, **common)


def _dedup_keys(data: object, webhook_id: str | None) -> list[tuple[object, str | None]]:
    if not isinstance(data, list):
        body_id = text(data.get("id")) if isinstance(data, dict) else None
        return [(data, webhook_id or body_id)]
    keyed = []
    for i, item in enumerate(data):
        item_id = text(item.get("id")) if isinstance(item, dict) else None
        keyed.append((item, item_id or (f"{webhook_id}#{i}" if webhook_id else None)))
    return keyed


def normalise(raw: RawPostback, ctx: SourceContext) -> list[Output]:
    """The events of a Ping+ webhook body (one event object, or an array of them)."""
    items = _dedup_keys(load_json(raw.body), text(raw.header("webhook-id")))
    return [_event(item, dedup, raw, ctx) for item, dedup in items]


PROVIDER = Provider(
    name=NAME,
    normalise=normalise,
    kept_headers=frozenset({"webhook-id"}),
    configure=configure,
    description="Ping+ Media SMS/WhatsApp/RCS (Standard Webhooks HMAC-SHA256 signatures)",
)
