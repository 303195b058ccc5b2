"""Sinch MessageMedia Messages API: delivery reports and replies.

MessageMedia pushes JSON in two ways, both accepted on the same source:

* to the per-message ``callback_url``: a delivery report (``delivery_report_id``,
  ``message_id``, ``status``, ``error_code``, ``submitted_date``, ``date_received``,
  ``source_number``, ``billing_units``, ``metadata``...) or a reply (``reply_id``,
  ``message_id`` of the MT it answers, ``source_number``, ``destination_number``,
  ``content``, ``date_received``, ``metadata``);
* through account webhooks (Webhooks Management API), whose body is a Velocity template
  of the account's choosing. Templates that reproduce the callback shape are read as
  above; the template-variable names (``type``, ``mtId``/``messageId``,
  ``drId``/``reportId``, ``moId``/``replyId``, ``status``, ``statusCode``,
  ``sourceAddress``, ``destinationAddress``, ``moContent``, ``submittedTimestamp``,
  ``receivedTimestamp``, ``billingUnits``, ``attachments``, ``metadata``) are accepted
  too, and a variable Velocity left unrendered (``"$drId"``) counts as absent.

A body may also be an array of such items, or a polling page (``{"delivery_reports": [...]}``
or ``{"replies": [...]}``).

Quirks: ``source_number`` of a delivery report is the *recipient* of the original MT
(the report comes from the handset), so a report's ``to`` is ``source_number``; a reply's
``from`` is ``source_number`` and its ``to`` is ``destination_number``. Inbound MMS
(``RECEIVED_MMS``) carries its attachments inline, base64: the content is never copied
into the event (it stays in the raw postback, found by ``raw_id``); each attachment
becomes ``Media(url="messagemedia-attachment:<reply_id>/<index>[?name=<original_name>]")``
with its ``content_type`` and the event is flagged ``inline_media``. ``metadata`` (the
MT's metadata echoed back) becomes ``client_ref``: compact JSON with sorted keys, or the
value of one metadata key when the source sets ``client_ref_key``.

Authentication: signed webhooks (``signing`` option, see :func:`configure` and
:class:`relay.verify.MessageMediaVerifier`) or the common ``basic_auth``/``token`` keys.

Dedup keys: reports ``delivery_report_id``, replies ``reply_id`` (the same id arrives
through either push mechanism, so both yield the same event id).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import orjson

from relay.errors import ConfigError, NormalisationError
from relay.providers import Provider, Setup, SourceContext
from relay.providers.common import address, load_json, table, text, timestamp
from relay.schema import (
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
from relay.settings import SourceConfig, resolve_secret
from relay.verify import MessageMediaVerifier, Verifier, load_rsa_public_key

NAME = "messagemedia"
FAILURES: frozenset[Status] = frozenset({"failed", "rejected", "expired", "undeliverable"})
KEPT_HEADERS = frozenset({
    "date", "x-messagemedia-key-id", "x-messagemedia-signature",
    "x-messagemedia-digest-type", "x-messagemedia-cipher-type",
})  # fmt: skip
#: A template variable Velocity left as it was because it had no value (``$drId``).
_VELOCITY = re.compile(
    r"^\$!?\{?(type|mtId|messageId|drId|reportId|moId|replyId|accountId|submittedTimestamp"
    r"|receivedTimestamp|status|statusCode|metadata|sourceAddress|destinationAddress|mtContent"
    r"|moContent|retryCount|billingUnits|attachments)\b[^\s]*\}?$"
)

#: Each field under its callback name first, then its webhook-template spellings.
FIELDS: dict[str, tuple[str, ...]] = {
    "dr_id": ("delivery_report_id", "drId", "reportId", "deliveryReportId"),
    "reply_id": ("reply_id", "moId", "replyId"),
    "message_id": ("message_id", "mtId", "messageId"),
    "status": ("status",),
    "code": ("error_code", "statusCode", "status_code", "errorCode"),
    "submitted": ("submitted_date", "submittedTimestamp", "submittedDate"),
    "received": ("date_received", "receivedTimestamp", "dateReceived"),
    "source": ("source_number", "sourceAddress", "sourceNumber"),
    "destination": ("destination_number", "destinationAddress", "destinationNumber"),
    "content": ("content", "moContent"),
    "billing": ("billing_units", "billingUnits"),
    "type": ("type",),
}


@dataclass(frozen=True)
class Options:
    """The normaliser's view of a source's options."""

    client_ref_key: str | None = None


# --- reading fields ---------------------------------------------------------------------------


def field(item: Mapping[str, Any], name: str) -> str | None:
    """The first present spelling of field ``name`` as text (unrendered Velocity is absent)."""
    for key in FIELDS[name]:
        value = text(item.get(key))
        if value is not None and not _VELOCITY.match(value):
            return value
    return None


def _integer(value: str | None) -> int | None:
    if value is None or not value.isascii() or not value.isdigit():
        return None
    return int(value)


def client_ref(metadata: object, key: str | None) -> str | None:
    """``metadata`` as compact sorted JSON, or its value at ``key`` when one is configured."""
    if isinstance(metadata, dict):
        if key is not None:
            return text(metadata.get(key))
        return orjson.dumps(metadata, option=orjson.OPT_SORT_KEYS).decode() if metadata else None
    return None if key is not None else text(metadata)


def status_name(item: Mapping[str, Any]) -> str | None:
    """The DR status, lower-cased: ``status``, else the prefix of ``type`` (``DELIVERED_DR``)."""
    status = field(item, "status")
    if status is not None:
        return status.lower()
    kind = (field(item, "type") or "").upper()
    return kind.removesuffix("_DR").lower() if kind.endswith("_DR") else None


def resolve_status(name: str | None, code: str | None) -> tuple[Status, bool]:
    """``(status, final)`` of a delivery report from its status name and ``error_code``."""
    data = table(NAME)
    entry = data["statuses"].get(name or "")
    by_code = data["codes"].get(code or "")
    refinable = entry is None or name in data["refine"]["by_code"]
    if by_code is not None and refinable and (entry is None or by_code["status"] in FAILURES):
        return by_code["status"], bool(by_code["final"])
    if entry is not None:
        return entry["status"], bool(entry["final"])
    return "unknown", False


def _kind(item: Mapping[str, Any]) -> str:
    kind = (field(item, "type") or "").upper()
    if kind.endswith("_DR"):
        return "report"
    if kind in table(NAME)["inbound_types"]:
        return "reply"
    if field(item, "dr_id") is not None:
        return "report"
    if field(item, "reply_id") is not None:
        return "reply"
    if field(item, "status") is not None or field(item, "code") is not None:
        return "report"
    if field(item, "content") is not None or isinstance(item.get("attachments"), list):
        return "reply"
    raise NormalisationError("item is neither a delivery report nor a reply")


# --- events -----------------------------------------------------------------------------------


def _common(item: Mapping[str, Any], raw: RawPostback, ctx: SourceContext) -> dict[str, Any]:
    opts = ctx.options if isinstance(ctx.options, Options) else Options()
    return {
        "source": ctx.name,
        "provider": NAME,
        "received_at": rfc3339(raw.received_at),
        "raw_id": raw.id,
        "client_ref": client_ref(item.get("metadata"), opts.client_ref_key),
        "segments": _integer(field(item, "billing")),
    }


def report(item: Mapping[str, Any], raw: RawPostback, ctx: SourceContext) -> Event:
    """A delivery report: ``to`` is ``source_number`` (the recipient of the MT)."""
    dr_id, msg_id = field(item, "dr_id"), field(item, "message_id")
    if dr_id is None and msg_id is None:
        raise NormalisationError("delivery report has neither delivery_report_id nor message_id")
    name, code = status_name(item), field(item, "code")
    status, final = resolve_status(name, code)
    submitted = field(item, "submitted")
    error = None
    if status in FAILURES:
        meaning = table(NAME)["codes"].get(code or "", {}).get("meaning")
        error = ErrorInfo(code=code or "", description=meaning)
    to, to_kind = address(field(item, "source"), ctx.default_region)
    sender, from_kind = address(field(item, "destination"), ctx.default_region)
    key = (dr_id,) if dr_id else (None, msg_id, name, code, submitted)
    return Event(
        id=event_id(NAME, "report", *key), type="delivery_receipt", channel="sms",
        message_id=msg_id, status=status, final=final,
        provider_status=":".join(p for p in (name, code) if p) or None,
        from_=sender, to=to, from_kind=from_kind, to_kind=to_kind,
        occurred_at=timestamp(submitted) or timestamp(field(item, "received")),
        error=error, **_common(item, raw, ctx),
    )  # fmt: skip


def attachment(ref: str, index: int, item: Mapping[str, Any]) -> Media:
    """A reference to inline attachment ``index`` (its content stays in the raw postback)."""
    content_type = text(item.get("content_type")) or text(item.get("contentType"))
    url = text(item.get("url"))
    if url is not None:
        return Media(url=url, content_type=content_type)
    name = text(item.get("original_name")) or text(item.get("originalName"))
    suffix = f"?name={quote(name, safe='')}" if name else ""
    return Media(url=f"messagemedia-attachment:{quote(ref, safe='')}/{index}{suffix}",
                 content_type=content_type)  # fmt: skip


def reply(item: Mapping[str, Any], raw: RawPostback, ctx: SourceContext) -> Event:
    """A reply (inbound SMS or MMS): ``from`` is ``source_number``."""
    reply_id, received = field(item, "reply_id"), field(item, "received")
    sender, from_kind = address(field(item, "source"), ctx.default_region)
    to, to_kind = address(field(item, "destination"), ctx.default_region)
    content = field(item, "content")
    key = (reply_id,) if reply_id else (None, field(item, "message_id"), sender, received, content)
    ident = event_id(NAME, "reply", *key)
    found = item.get("attachments")
    parts = [(i, a) for i, a in enumerate(found) if isinstance(a, dict)] if isinstance(
        found, list) else []  # fmt: skip
    media = tuple(attachment(reply_id or ident, i, a) for i, a in parts)
    inbound = table(NAME)["inbound_types"].get((field(item, "type") or "").upper(), {})
    channel: Channel = "mms" if media or inbound.get("channel") == "mms" else "sms"
    flags = [inbound["flag"]] if inbound.get("flag") else []
    if any(m.url.startswith("messagemedia-attachment:") for m in media):
        flags.append("inline_media")
    return Event(
        id=ident, type="inbound_message", channel=channel, message_id=reply_id, status=None,
        final=False, provider_status=(field(item, "type") or "reply"), from_=sender, to=to,
        from_kind=from_kind, to_kind=to_kind, occurred_at=timestamp(received), text=content,
        media=media, flags=tuple(flags), **_common(item, raw, ctx),
    )  # fmt: skip


def _items(data: object) -> list[object]:
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        for key in ("delivery_reports", "replies"):  # a polling page
            if isinstance(data.get(key), list):
                return list(data[key])
    return [data]


def _event(item: object, raw: RawPostback, ctx: SourceContext) -> Event:
    if not isinstance(item, dict):
        raise NormalisationError("item is not a JSON object")
    return report(item, raw, ctx) if _kind(item) == "report" else reply(item, raw, ctx)


def normalise(raw: RawPostback, ctx: SourceContext) -> list[Output]:
    """Every delivery report and reply in a MessageMedia body (object, array or page)."""
    return [_event(item, raw, ctx) for item in _items(load_json(raw.body))]


# --- configuration ----------------------------------------------------------------------------

_OPTION_KEYS = {"signing", "client_ref_key"}
_SIGNING_KEYS = {"keys", "max_skew_seconds", "request_path"}


def _unknown(data: Mapping[str, Any], allowed: set[str], where: str) -> None:
    for key in data:
        if key not in allowed:
            raise ConfigError(f"{where}.{key}", f"unknown key for provider {NAME}")


def signing_verifier(signing: object, where: str,
                     environ: Mapping[str, str]) -> MessageMediaVerifier:  # fmt: skip
    """The verifier a ``signing = { keys = {...}, max_skew_seconds, request_path }`` table sets."""
    if not isinstance(signing, dict):
        raise ConfigError(where, "must be a table { keys = { key-id = 'file:...' }, ... }")
    _unknown(signing, _SIGNING_KEYS, where)
    keys = signing.get("keys")
    if not isinstance(keys, dict) or not keys:
        raise ConfigError(f"{where}.keys", "must be a table of key id -> 'env:'/'file:' reference")
    loaded = {}
    for key_id, ref in keys.items():
        secret = resolve_secret(ref, f"{where}.keys.{key_id}", environ)
        try:
            loaded[key_id] = load_rsa_public_key(secret.reveal())
        except ValueError as exc:
            raise ConfigError(f"{where}.keys.{key_id}", str(exc)) from None
    skew = signing.get("max_skew_seconds", 300)
    if isinstance(skew, bool) or not isinstance(skew, int | float) or skew <= 0:
        raise ConfigError(f"{where}.max_skew_seconds", "must be a number greater than zero")
    path = signing.get("request_path")
    if path is not None and (not isinstance(path, str) or not path.startswith("/")):
        raise ConfigError(f"{where}.request_path", "must be a path starting with '/'")
    return MessageMediaVerifier(keys=loaded, max_skew=float(skew), path_override=path)


def configure(source: SourceConfig, environ: Mapping[str, str] | None = None) -> Setup:
    """Validate the source's options: ``signing`` (optional) and ``client_ref_key``."""
    opts = source.options
    _unknown(opts, _OPTION_KEYS, source.key)
    ref_key = opts.get("client_ref_key")
    if ref_key is not None and (not isinstance(ref_key, str) or not ref_key):
        raise ConfigError(f"{source.key}.client_ref_key", "must be a non-empty string")
    verifiers: tuple[Verifier, ...] = ()
    if "signing" in opts:
        env = source.environ if environ is None else environ
        verifiers = (signing_verifier(opts["signing"], f"{source.key}.signing", env),)
    return Setup(options=Options(client_ref_key=ref_key), verifiers=verifiers, requires_auth=True)


PROVIDER = Provider(
    name=NAME,
    normalise=normalise,
    kept_headers=KEPT_HEADERS,
    configure=configure,
    description="Sinch MessageMedia (RSA-signed webhooks, or HTTP Basic / URL token)",
)
