"""Helpers every provider adapter uses: JSON, times, tables, addresses."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import cache, lru_cache
from importlib import resources
from typing import Any

import orjson

from relay.errors import NormalisationError
from relay.numbers import normalise_address
from relay.schema import AddressKind, Status, rfc3339

_UNKNOWN: tuple[Status, bool] = ("unknown", False)


def load_json(body: bytes) -> Any:
    """The body as JSON, or :class:`NormalisationError`."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise NormalisationError(f"body is not JSON: {exc.msg} at {exc.pos}") from None


def load_object(body: bytes) -> Mapping[str, Any]:
    """The body as one JSON object, or :class:`NormalisationError`."""
    data = load_json(body)
    if not isinstance(data, dict):
        raise NormalisationError(f"body is a JSON {type(data).__name__}, expected an object")
    return data


def text(value: object) -> str | None:
    """A scalar as a string (None and empty stay None); containers are refused."""
    if type(value) is str:
        return value or None
    if value is None or isinstance(value, dict | list):
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    result = str(value)
    return result if result != "" else None


def integer(value: object) -> int | None:
    """An integer from an int or a numeric string, else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        return int(value.strip())
    return None


def _is_rfc3339_utc_ms(value: str) -> bool:
    """``YYYY-MM-DDTHH:MM:SS.mmmZ`` already: relay's own format (Bandwidth sends it)."""
    return (len(value) == 24 and value[23] == "Z" and value[19] == "." and value[10] == "T"
            and value[4] == "-" and value[7] == "-" and value[13] == ":" and value[16] == ":"
            and value[:4].isdigit() and value[20:23].isdigit())


def timestamp(value: object) -> str | None:
    """A provider time as RFC 3339 UTC (``...Z``, milliseconds), or None if absent or
    unreadable.

    Accepts ISO 8601 with ``Z`` or an offset (naive times are taken as UTC) and UNIX
    seconds or milliseconds.
    """
    if isinstance(value, str) and _is_rfc3339_utc_ms(value):
        return value  # the common case first: relay's own format already
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str) and not (value.isascii() and value.isdigit()):
        return _cached_iso(value) if len(value) <= _CACHED_ISO_CHARS else _from_iso(value)
    try:
        if isinstance(value, int | float | str):
            seconds = float(value)
            if seconds > 1e11:
                seconds /= 1000.0
            return rfc3339(seconds)
    except (ValueError, OverflowError, OSError):
        return None
    return None


def _from_iso(value: str) -> str | None:
    """ISO 8601 text as RFC 3339 UTC with milliseconds, or None if unreadable."""
    try:
        dt = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
        if dt.tzinfo is not None:
            dt = dt.astimezone(UTC).replace(tzinfo=None)
        return dt.isoformat(timespec="milliseconds") + "Z"
    except (ValueError, OverflowError, OSError):
        return None


#: Providers that send whole seconds repeat a time for many postbacks: short times are
#: cached (only short ones, so a cache entry never holds a large body's text).
_CACHED_ISO_CHARS = 48
_cached_iso = lru_cache(maxsize=1024)(_from_iso)


def address(value: object, region: str | None) -> tuple[str | None, AddressKind | None]:
    """A number or sender id, normalised (see :mod:`relay.numbers`)."""
    return normalise_address(text(value), region)


@cache
def table(name: str) -> Mapping[str, Any]:
    """A provider's mapping table, ``relay/data/<name>.toml``."""
    data = resources.files("relay").joinpath("data", f"{name}.toml").read_bytes()
    return tomllib.loads(data.decode())


@cache
def _statuses(name: str) -> Mapping[str, tuple[Status, bool]]:
    """The ``[statuses]`` table of provider ``name`` as ``key: (status, final)``."""
    return {key: (entry["status"], bool(entry["final"]))
            for key, entry in table(name).get("statuses", {}).items()}


def status_of(name: str, key: str | None) -> tuple[Status, bool]:
    """``(status, final)`` for ``key`` in the ``[statuses]`` table of provider ``name``.

    A key the table does not know maps to ``("unknown", False)``.
    """
    return _statuses(name).get((key or "").lower(), _UNKNOWN)
