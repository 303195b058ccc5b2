"""Skycore Messaging API V2 postbacks (documented today as the Sinch MMS JSON API).

One JSON object per request (an array of them is accepted too), told apart by ``origin``
and ``code``:

* ``MMS_MT`` / ``SMS_MT`` status postbacks: ``code`` (N101 sent, N102 delivered, N103
  expired, E101 failed, E102 rejected/unrecognised, N201/N202/E201/E202 for SMS; on an
  MMS, N202/E202 are the fallback SMS), ``status``, ``status-details``, ``from``
  (``from-mask`` for an alphanumeric sender), ``to``, ``timestamp``, ``operator-id``,
  ``operator-name``, ``tracking-id`` (also spelled ``trackingid``), ``client-reference``,
  ``campaign-ref``, ``sent-as``, ``mms-id``;
* ``SMS_MO`` (N211) and ``MMS_MO`` (N401) inbound messages: ``from``, ``to``,
  ``message-text``, ``keyword`` (the campaign keyword Skycore matched, kept as the flag
  ``keyword:<KEYWORD>``), ``message-subject``, ``content[].file`` (URLs on the provider's
  storage, the ``.smil`` part included, typed by file extension) and, for group MMS,
  ``copy-to[].number`` (participants: ``to`` first, then the copies);
* template and transcoding notifications (N003, N013, E002-E004) and the device-discovery
  probe (N5xx/E5xx), which are not the status of a message: :class:`~relay.schema.Notice`.

Codes map through ``relay/data/skycore.toml``; a code it does not know maps to
``unknown`` with ``provider_status`` kept. Numbers come in international format without
``+`` (``17745550001``) and are always read as international (``default_region`` is not
used: it could misread them as national numbers); short codes are kept and flagged.
``operator-id`` becomes the carrier's MCC/MNC only when it is a 6-digit MCC+MNC.
``client-reference`` (else ``campaign-ref``) becomes ``client_ref``.

Authentication: nothing is signed. A source uses a secret URL token
(``/hooks/{source}/{token}``) and the source-IP allowlist given at onboarding. Skycore
retries anything but exactly HTTP 200, which is what relay answers.

Dedup keys: statuses ``(tracking-id, code)`` (N101 and N102 share a tracking-id), inbound
``tracking-id``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from relay.errors import NormalisationError
from relay.providers import Provider, SourceContext
from relay.providers.common import address, load_json, status_of, table, text, timestamp
from relay.schema import (
    Carrier,
    Channel,
    ErrorInfo,
    Event,
    Media,
    Notice,
    Output,
    RawPostback,
    Status,
    event_id,
    rfc3339,
)

NAME = "skycore"
FALLBACK = "fallback_sms"


def tracking_id(item: Mapping[str, Any]) -> str | None:
    """``tracking-id``, or its other spelling ``trackingid``."""
    for key in ("tracking-id", "trackingid", "tracking_id"):
        value = text(item.get(key))
        if value is not None:
            return value
    return None


def resolve_status(code: str, origin: str | None,
                   words: str) -> tuple[Status, bool, tuple[str, ...]]:  # fmt: skip
    """``(status, final, flags)`` of an MT postback; ``words`` is its status text, lower case."""
    for rule in table(NAME)["refinements"]:
        if (code in rule["codes"] and rule.get("origin", origin) == origin
                and rule.get("status_contains", "") in words):  # fmt: skip
            flags = (str(rule["flag"]),) if rule.get("flag") else ()
            return rule["status"], bool(rule["final"]), flags
    status, final = status_of(NAME, code)
    return status, final, ()


def carrier(item: Mapping[str, Any]) -> Carrier | None:
    """``operator-name``, and MCC/MNC from ``operator-id`` when it is 6 digits."""
    name, operator = text(item.get("operator-name")), text(item.get("operator-id"))
    mcc = mnc = None
    if operator and len(operator) == 6 and operator.isascii() and operator.isdigit():
        mcc, mnc = operator[:3], operator[3:]
    if name is None and mcc is None:
        return None
    return Carrier(name=name, mcc=mcc, mnc=mnc)


def media_type(url: str) -> str | None:
    """The media type a file URL's extension names (``[media_types]``), or None."""
    path = url.split("?", 1)[0].split("#", 1)[0].rsplit("/", 1)[-1]
    if "." not in path:
        return None
    found = table(NAME)["media_types"].get(path.rsplit(".", 1)[1].lower())
    return str(found) if found else None


def media(content: object) -> tuple[Media, ...]:
    """Every ``content[].file`` (or bare URL string) as :class:`Media`."""
    if not isinstance(content, list):
        return ()
    found = []
    for part in content:
        url = text(part.get("file")) if isinstance(part, dict) else text(part)
        if url is None:
            continue
        given = text(part.get("content-type")) if isinstance(part, dict) else None
        found.append(Media(url=url, content_type=given or media_type(url)))
    return tuple(found)


def participants(item: Mapping[str, Any], to: str | None) -> tuple[str, ...]:
    """``to`` and every ``copy-to[].number`` of a group MMS, or () if there are no copies."""
    copies = item.get("copy-to")
    if not isinstance(copies, list):
        return ()
    numbers = [text(c.get("number")) if isinstance(c, dict) else text(c) for c in copies]
    found = [a for a in (address(n, None)[0] for n in numbers) if a]
    return tuple(dict.fromkeys([to, *found] if to else found)) if found else ()


def _channel(origin: str | None, code: str) -> Channel:
    if origin:
        prefix = origin.split("_", 1)[0]
        return "mms" if prefix == "MMS" else "sms" if prefix == "SMS" else "unknown"
    if code[1:2] in ("1", "4"):
        return "mms"
    return "sms" if code[1:2] == "2" else "unknown"


def _common(item: Mapping[str, Any], raw: RawPostback, ctx: SourceContext) -> dict[str, Any]:
    sender, from_kind = address(text(item.get("from")) or text(item.get("from-mask")), None)
    to, to_kind = address(item.get("to"), None)
    return {
        "source": ctx.name, "provider": NAME, "message_id": tracking_id(item),
        "from_": sender, "to": to, "from_kind": from_kind, "to_kind": to_kind,
        "occurred_at": timestamp(item.get("timestamp")), "received_at": rfc3339(raw.received_at),
        "raw_id": raw.id, "carrier": carrier(item),
        "client_ref": text(item.get("client-reference")) or text(item.get("campaign-ref")),
    }  # fmt: skip


def inbound(item: Mapping[str, Any], code: str, origin: str | None, raw: RawPostback,
            ctx: SourceContext) -> Event:  # fmt: skip
    """An SMS MO (N211) or MMS MO (N401)."""
    common = _common(item, raw, ctx)
    body, parts = text(item.get("message-text")), media(item.get("content"))
    channel: Channel = "mms" if origin == "MMS_MO" or code == "N401" or parts else "sms"
    tracking = common["message_id"]
    key = (tracking,) if tracking else (None, common["from_"], common["to"],
                                        common["occurred_at"], body)  # fmt: skip
    keyword = text(item.get("keyword"))
    return Event(
        id=event_id(NAME, "mo", *key), type="inbound_message", channel=channel, status=None,
        final=False, provider_status=code or origin, text=body, media=parts,
        participants=participants(item, common["to"]),
        flags=(f"keyword:{keyword}",) if keyword else (), **common,
    )  # fmt: skip


def status_report(item: Mapping[str, Any], code: str, origin: str | None, raw: RawPostback,
                  ctx: SourceContext) -> Event:  # fmt: skip
    """An MMS MT or SMS MT status postback."""
    common = _common(item, raw, ctx)
    detail = text(item.get("status-details")) or text(item.get("status"))
    words = " ".join(filter(None, (text(item.get("status")), text(item.get("status-details")))))
    status, final, flags = resolve_status(code, origin, words.lower())
    sent_as = (text(item.get("sent-as")) or "").upper()
    if origin == "MMS_MT" and sent_as == "SMS" and FALLBACK not in flags:
        flags = (*flags, FALLBACK)
    tracking = common["message_id"]
    key = (tracking, code) if tracking else (None, code, common["to"], common["occurred_at"])
    return Event(
        id=event_id(NAME, *key), type="delivery_receipt", channel=_channel(origin, code),
        status=status, final=final, provider_status=code, flags=flags,
        error=ErrorInfo(code=code, description=detail) if code.startswith("E") else None,
        **common,
    )  # fmt: skip


def notice(item: Mapping[str, Any], code: str) -> Notice:
    """A template/transcoding or device-discovery notification."""
    tracking = tracking_id(item)
    parts = (table(NAME)["notices"][code], text(item.get("status-details")),
             f"tracking-id {tracking}" if tracking else None)  # fmt: skip
    return Notice(code=code, detail="; ".join(p for p in parts if p))


def _output(item: object, raw: RawPostback, ctx: SourceContext) -> Output:
    if not isinstance(item, dict):
        raise NormalisationError("postback is not a JSON object")
    code = (text(item.get("code")) or "").strip().upper()
    origin = (text(item.get("origin")) or "").strip().upper() or None
    spec = table(NAME)
    if code in spec["inbound"]["codes"] or origin in spec["inbound"]["origins"]:
        return inbound(item, code, origin, raw, ctx)
    if not code:
        raise NormalisationError(f"postback has no code (origin {origin!r})")
    if code in spec["notices"]:
        return notice(item, code)
    return status_report(item, code, origin, raw, ctx)


def normalise(raw: RawPostback, ctx: SourceContext) -> list[Output]:
    """The event (or notice) of a Skycore postback (one object, or an array of them)."""
    data = load_json(raw.body)
    items = data if isinstance(data, list) else [data]
    return [_output(item, raw, ctx) for item in items]


PROVIDER = Provider(
    name=NAME,
    normalise=normalise,
    ack_status=200,
    description="Skycore Messaging API V2 / Sinch MMS JSON API (URL token + IP allowlist)",
)
