"""The mapping engine: JSON payloads of a provider relay has no code for, read by configuration.

A :class:`Spec` says where each normalised field lives in a payload (a JSON path per
field, or a list of alternative paths), how to tell an inbound message from a status
callback, and how the provider's statuses map onto relay's. ``generic`` sources build a
Spec from their options alone; ``pingueen`` starts from a built-in one
(``relay/data/pingueen.toml``) that a source may override key by key.

Paths are dotted names with ``[n]`` indexes (``data.items[0].id``, negative indexes count
from the end) and ``[*]``, which fans out over every element of an array
(``data.media[*].url``; only for the ``media`` and ``media_type`` fields). A name is any
run of characters other than ``.``, ``[`` and ``]``. A path that matches nothing yields
None; of a list of alternatives, the first that yields something wins.

Dedup keys (hashed by :func:`relay.schema.event_id`): a status is ``message_id`` plus the
provider's status, an inbound message ``message_id``; a generic source adds its own name
(two generic sources are two different providers whose ids may collide).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from relay.errors import ConfigError, NormalisationError
from relay.providers import SourceContext
from relay.providers.common import address, integer, load_json, text, timestamp
from relay.schema import (
    STATUSES,
    TERMINAL,
    AddressKind,
    Carrier,
    Channel,
    ErrorInfo,
    Event,
    Media,
    RawPostback,
    Status,
    event_id,
    rfc3339,
)

#: Normalised fields a mapping may name, and what each one means (see docs/providers/generic.md).
FIELDS: Mapping[str, str] = {
    "message_id": "the provider's message id (required: no id, dead letter)",
    "status": "the provider's status, looked up in the status table",
    "occurred_at": "event time: ISO 8601 or UNIX seconds/milliseconds",
    "from": "sender number or id",
    "to": "recipient number or id",
    "subscriber": "the end user's number: `to` of a status, `from` of an inbound message",
    "text": "inbound message text",
    "client_ref": "your own reference echoed back",
    "error_code": "provider error code",
    "error_description": "provider error text",
    "channel": "sms, mms, whatsapp or rcs (wa and rbm are understood)",
    "media": "media URLs: a string, a list of strings or of objects with `url`",
    "media_type": "content types of the media, by position",
    "segments": "number of message segments",
    "carrier_name": "operator name",
    "carrier_mcc": "operator mobile country code",
    "carrier_mnc": "operator mobile network code",
}
_FAN_OUT_FIELDS = frozenset({"media", "media_type"})
_CHANNELS: Mapping[str, Channel] = {
    "sms": "sms", "mms": "mms", "whatsapp": "whatsapp", "wa": "whatsapp", "rcs": "rcs",
    "rbm": "rcs",
}  # fmt: skip
_STEP = re.compile(r"(?P<dot>\.)?(?P<name>[^.\[\]]+)|\[(?P<index>\*|-?\d+)\]")
_SHORT_CODE_MAX = 8
Numbers = Literal["auto", "international"]
Step = str | int | None  # a key, an index, or None for [*]


# --- paths -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Path:
    """A parsed JSON path (see the module docstring)."""

    text: str
    steps: tuple[Step, ...]

    @property
    def fans_out(self) -> bool:
        """Whether the path holds a ``[*]`` step."""
        return None in self.steps

    def values(self, data: object) -> list[Any]:
        """Every value the path reaches in ``data`` (None values left out)."""
        current: list[Any] = [data]
        for step in self.steps:
            current = [v for item in current for v in _step(item, step)]
        return [v for v in current if v is not None]

    def value(self, data: object) -> Any:
        """The value at the path: a list if it fans out, None if it reaches nothing."""
        found = self.values(data)
        if self.fans_out:
            return found or None
        return found[0] if found else None


def _step(item: object, step: Step) -> list[Any]:
    if isinstance(step, str):
        return [item[step]] if isinstance(item, dict) and step in item else []
    if not isinstance(item, list):
        return []
    if step is None:
        return list(item)
    return [item[step]] if -len(item) <= step < len(item) else []


def parse_path(path: str) -> Path:
    """Parse ``path``; raises ValueError saying what is wrong."""
    if not path:
        raise ValueError("a path cannot be empty")
    steps: list[Step] = []
    pos = 0
    while pos < len(path):
        match = _STEP.match(path, pos)
        if match is None:
            raise ValueError(f"unexpected {path[pos]!r} at position {pos} of {path!r}")
        if match["name"] is not None:
            if bool(match["dot"]) != (pos > 0):
                raise ValueError(f"misplaced '.' at position {pos} of {path!r}")
            steps.append(match["name"])
        else:
            index = match["index"]
            steps.append(None if index == "*" else int(index))
        pos = match.end()
    return Path(path, tuple(steps))


Paths = tuple[Path, ...]


def first(paths: Paths, data: object, *, scalar: bool = False) -> Any:
    """The value of the first alternative that reaches something (with ``scalar``, something
    other than an object or array), or None."""
    for path in paths:
        found = path.value(data)
        if found is not None and not (scalar and isinstance(found, dict | list)):
            return found
    return None


# --- the spec ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InboundRule:
    """How to tell an inbound message: a path's value equals one of ``equals``, the path
    exists (``equals`` empty), or ``always``."""

    path: Path | None = None
    equals: tuple[str, ...] = ()
    always: bool = False

    def matches(self, item: object) -> bool:
        """Whether ``item`` is an inbound message."""
        if self.always:
            return True
        if self.path is None:
            return False
        found = self.path.value(item)
        if not self.equals:
            return found is not None
        return (text(found) or "").lower() in self.equals


@dataclass(frozen=True, slots=True)
class Spec:
    """Everything the engine needs to read one source's payloads."""

    provider: str
    paths: Mapping[str, Paths]
    inbound: InboundRule = field(default_factory=InboundRule)
    statuses: Mapping[str, tuple[Status, bool]] = field(default_factory=dict)
    channel: Channel = "unknown"
    our_number: str | None = None
    numbers: Numbers = "auto"
    items: Path | None = None
    scoped: bool = False


# --- validating options ----------------------------------------------------------------------


def parse_paths(value: object, key: str) -> Paths:
    """A path or a list of alternatives at config ``key`` (an empty list: not mapped)."""
    alternatives = value if isinstance(value, list) else [value]
    paths = []
    for i, alt in enumerate(alternatives):
        where = f"{key}[{i}]" if isinstance(value, list) else key
        if not isinstance(alt, str):
            raise ConfigError(where, "must be a path string or a list of path strings")
        try:
            paths.append(parse_path(alt))
        except ValueError as exc:
            raise ConfigError(where, str(exc)) from None
    return tuple(paths)


def parse_mapping(value: object, key: str) -> dict[str, Paths]:
    """The ``mapping`` table: normalised field -> paths."""
    if not isinstance(value, dict):
        raise ConfigError(key, "must be a table of normalised field = path")
    result = {}
    for name, paths in value.items():
        where = f"{key}.{name}"
        if name not in FIELDS:
            raise ConfigError(where, f"unknown normalised field (known: {', '.join(FIELDS)})")
        parsed = parse_paths(paths, where)
        if name not in _FAN_OUT_FIELDS and any(p.fans_out for p in parsed):
            raise ConfigError(where, "[*] is only allowed for media and media_type")
        result[name] = parsed
    return result


def parse_statuses(value: object, key: str) -> dict[str, tuple[Status, bool]]:
    """The ``statuses`` table: provider status -> status or {status, final}."""
    if not isinstance(value, dict):
        raise ConfigError(key, "must be a table of provider status = normalised status")
    result = {}
    for name, entry in value.items():
        where = f"{key}.{name}"
        final: object = None
        status = entry
        if isinstance(entry, dict):
            extra = set(entry) - {"status", "final"}
            if extra:
                raise ConfigError(f"{where}.{sorted(extra)[0]}", "unknown key")
            status, final = entry.get("status"), entry.get("final")
        if status not in STATUSES:
            raise ConfigError(where, f"{status!r} is not a normalised status "
                              f"({', '.join(STATUSES)})")  # fmt: skip
        if final is not None and not isinstance(final, bool):
            raise ConfigError(f"{where}.final", "must be true or false")
        result[name.lower()] = (status, status in TERMINAL if final is None else final)
    return result


def parse_inbound(value: object, key: str) -> InboundRule:
    """The ``inbound_when`` table: ``{path, equals}``, ``{path, exists = true}`` or
    ``{always = true}``."""
    if not isinstance(value, dict):
        raise ConfigError(key, "must be a table { path = ..., equals = ... }")
    extra = set(value) - {"path", "equals", "exists", "always"}
    if extra:
        raise ConfigError(f"{key}.{sorted(extra)[0]}", "unknown key")
    if value.get("always") is True and len(value) == 1:
        return InboundRule(always=True)
    if not isinstance(value.get("path"), str):
        raise ConfigError(f"{key}.path", "is required: the path of the field that tells")
    (path,) = parse_paths(value["path"], f"{key}.path")
    equals = value.get("equals")
    if equals is None:
        if value.get("exists") is not True:
            raise ConfigError(f"{key}.equals", "give equals = value(s), or exists = true")
        return InboundRule(path=path)
    values = equals if isinstance(equals, list) else [equals]
    if not values or not all(isinstance(v, str | int | bool) for v in values):
        raise ConfigError(f"{key}.equals", "must be a string, number, boolean or a list of them")
    return InboundRule(path=path, equals=tuple((text(v) or "").lower() for v in values))


def parse_channel(value: object, key: str) -> Channel:
    """A default channel name."""
    channel = _CHANNELS.get(value.lower()) if isinstance(value, str) else None
    if channel is None:
        raise ConfigError(key, "must be one of sms, mms, whatsapp, rcs")
    return channel


def parse_number(value: object, key: str) -> str:
    """The source's own number (``our_number``), kept as E.164 when it is one."""
    if not isinstance(value, str):
        raise ConfigError(key, "must be a string")
    normalised, kind = address(value, None)
    if normalised is None or kind == "other" or (kind == "e164" and value[:1] != "+"):
        raise ConfigError(key, "must be a number in E.164 (+15550001111), a short code or "
                          "a sender id")  # fmt: skip
    return normalised


def parse_numbers(value: object, key: str) -> Numbers:
    """How digit-only numbers are read: ``auto`` or ``international``."""
    if value == "auto" or value == "international":
        return value
    raise ConfigError(key, "must be 'auto' (use default_region) or 'international' "
                      "(digits carry the country code without '+')")  # fmt: skip


def parse_items(value: object, key: str) -> Path:
    """The ``items`` path: one path, without ``[*]``."""
    items = parse_paths(value, key)
    if len(items) != 1 or items[0].fans_out:
        raise ConfigError(key, "must be one path without [*]")
    return items[0]


#: Engine options that replace the base value: option key -> (Spec field, parser).
_REPLACING: Mapping[str, tuple[str, Callable[[object, str], Any]]] = {
    "inbound_when": ("inbound", parse_inbound),
    "channel": ("channel", parse_channel),
    "our_number": ("our_number", parse_number),
    "numbers": ("numbers", parse_numbers),
    "items": ("items", parse_items),
}
ENGINE_KEYS = frozenset({"mapping", "statuses", *_REPLACING})


def spec_from_options(base: Spec, options: Mapping[str, Any], where: str) -> Spec:
    """``base`` with the engine options found in ``options`` applied over it.

    ``mapping`` and ``statuses`` override ``base`` key by key; the rest replace it.
    """
    changes: dict[str, Any] = {}
    if "mapping" in options:
        changes["paths"] = {**base.paths, **parse_mapping(options["mapping"], f"{where}.mapping")}
    if "statuses" in options:
        added = parse_statuses(options["statuses"], f"{where}.statuses")
        changes["statuses"] = {**base.statuses, **added}
    for key, (name, parser) in _REPLACING.items():
        if key in options:
            changes[name] = parser(options[key], f"{where}.{key}")
    spec = replace(base, **changes)
    if not spec.paths.get("message_id"):
        raise ConfigError(f"{where}.mapping.message_id", "is required: where the message id is")
    return spec


# --- normalising -----------------------------------------------------------------------------


def items_of(body: bytes, spec: Spec) -> list[Any]:
    """The events a body holds: ``items`` path, a top-level array, or the body itself."""
    data = load_json(body)
    if spec.items is not None:
        found = spec.items.value(data)
        if not isinstance(found, list):
            raise NormalisationError(f"items path {spec.items.text!r} is not an array")
        return found
    return data if isinstance(data, list) else [data]


def _get(spec: Spec, item: object, name: str) -> Any:
    return first(spec.paths.get(name, ()), item, scalar=name not in _FAN_OUT_FIELDS)


def _address(value: object, spec: Spec, region: str | None
             ) -> tuple[str | None, AddressKind | None]:  # fmt: skip
    raw = text(value)
    if spec.numbers == "international" and raw is not None:
        compact = raw.strip().replace(" ", "").replace("-", "")
        if compact.isdigit() and len(compact) > _SHORT_CODE_MAX:
            raw = "+" + compact
    return address(raw, region)


def _channel(value: object, spec: Spec) -> Channel:
    name = text(value)
    if name is None:
        return spec.channel
    return _CHANNELS.get(name.strip().lower(), "unknown")


def _as_list(value: object) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _media(item: object, spec: Spec) -> tuple[Media, ...]:
    found = _as_list(_get(spec, item, "media"))
    types = _as_list(_get(spec, item, "media_type"))
    result = []
    for i, entry in enumerate(found):
        url = text(entry.get("url")) if isinstance(entry, dict) else text(entry)
        if url is None:
            continue
        kind = entry.get("content_type") if isinstance(entry, dict) else None
        kind = kind if kind is not None else (types[i] if i < len(types) else None)
        result.append(Media(url=url, content_type=text(kind)))
    return tuple(result)


def _carrier(item: object, spec: Spec) -> Carrier | None:
    name, mcc, mnc = (text(_get(spec, item, f"carrier_{k}")) for k in ("name", "mcc", "mnc"))
    return Carrier(name=name, mcc=mcc, mnc=mnc) if name or mcc or mnc else None


def _error(item: object, spec: Spec) -> ErrorInfo | None:
    code = text(_get(spec, item, "error_code"))
    description = text(_get(spec, item, "error_description"))
    if code is None and description is None:
        return None
    return ErrorInfo(code=code or "", description=description)


def _either(value: object, fallback: object) -> object:
    return fallback if value is None else value


def status_of(spec: Spec, provider_status: str | None) -> tuple[Status, bool]:
    """``(status, final)`` of a provider status: the table, else the identity for a
    normalised name, else ``unknown``."""
    key = (provider_status or "").strip().lower()
    if key in spec.statuses:
        return spec.statuses[key]
    if key in STATUSES:
        status: Status = key
        return status, status in TERMINAL
    return "unknown", False


def _parties(item: object, spec: Spec, inbound: bool, region: str | None) -> dict[str, Any]:
    subscriber = _get(spec, item, "subscriber")
    sender, recipient = _get(spec, item, "from"), _get(spec, item, "to")
    if inbound:
        sender, recipient = _either(sender, subscriber), _either(recipient, spec.our_number)
    else:
        sender, recipient = _either(sender, spec.our_number), _either(recipient, subscriber)
    from_, from_kind = _address(sender, spec, region)
    to, to_kind = _address(recipient, spec, region)
    return {"from_": from_, "from_kind": from_kind, "to": to, "to_kind": to_kind}


def _message_id(item: object, spec: Spec) -> str:
    msg_id = text(_get(spec, item, "message_id"))
    if msg_id is None:
        where = " or ".join(p.text for p in spec.paths.get("message_id", ()))
        raise NormalisationError(f"payload has no message id (looked at {where})")
    return msg_id


def event(item: object, raw: RawPostback, ctx: SourceContext, spec: Spec) -> Event:
    """One payload item as an :class:`Event` (raises :class:`NormalisationError`)."""
    msg_id = _message_id(item, spec)
    inbound = spec.inbound.matches(item)
    scope = (ctx.name,) if spec.scoped else ()
    provider_status = text(_get(spec, item, "status"))
    common: dict[str, Any] = {
        "source": ctx.name, "provider": spec.provider,
        "channel": _channel(_get(spec, item, "channel"), spec), "message_id": msg_id,
        "provider_status": provider_status, "received_at": rfc3339(raw.received_at),
        "occurred_at": timestamp(_get(spec, item, "occurred_at")), "raw_id": raw.id,
        "client_ref": text(_get(spec, item, "client_ref")), "error": _error(item, spec),
        "segments": integer(_get(spec, item, "segments")), "carrier": _carrier(item, spec),
        **_parties(item, spec, inbound, ctx.default_region),
    }  # fmt: skip
    if inbound:
        return Event(id=event_id(spec.provider, *scope, "inbound", msg_id),
                     type="inbound_message", status=None, final=False,
                     text=text(_get(spec, item, "text")), media=_media(item, spec),
                     **common)  # fmt: skip
    status, final = status_of(spec, provider_status)
    return Event(id=event_id(spec.provider, *scope, "status", msg_id, provider_status),
                 type="delivery_receipt", status=status, final=final, **common)  # fmt: skip


def normalise(raw: RawPostback, ctx: SourceContext, spec: Spec) -> list[Event]:
    """Every event of a body read with ``spec``."""
    return [event(item, raw, ctx, spec) for item in items_of(raw.body, spec)]


def unknown_key(options: Mapping[str, Any], allowed: Sequence[str] | frozenset[str],
                where: str) -> None:  # fmt: skip
    """Raise :class:`ConfigError` for the first key of ``options`` not in ``allowed``."""
    for key in options:
        if key not in allowed:
            raise ConfigError(f"{where}.{key}", "unknown key")
