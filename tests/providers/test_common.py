"""Unit tests for relay.providers.common: the fast paths equal the formulas they replace."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.providers.common import status_of, table, timestamp
from relay.schema import Status, rfc3339


def reference_timestamp(value: object) -> str | None:
    """timestamp as first written (relay's own format checked after the type tests)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        if isinstance(value, str) and not (value.isascii() and value.isdigit()):
            if (len(value) == 24 and value[23] == "Z" and value[19] == "." and value[10] == "T"
                    and value[4] == "-" and value[7] == "-" and value[13] == ":"
                    and value[16] == ":" and value[:4].isdigit() and value[20:23].isdigit()):
                return value
            dt = datetime.fromisoformat(value.strip().replace("Z", "+00:00")
                                        .replace("z", "+00:00"))
            if dt.tzinfo is not None:
                dt = dt.astimezone(UTC).replace(tzinfo=None)
            return dt.isoformat(timespec="milliseconds") + "Z"
        if isinstance(value, int | float | str):
            seconds = float(value)
            if seconds > 1e11:
                seconds /= 1000.0
            return rfc3339(seconds)
    except (ValueError, OverflowError, OSError):
        return None
    return None


def reference_status_of(name: str, key: str | None) -> tuple[Status, bool]:
    """status_of as first written (a table lookup per call)."""
    entry = table(name).get("statuses", {}).get((key or "").lower())
    if entry is None:
        return "unknown", False
    return entry["status"], bool(entry["final"])


class _Text(str):
    """A str subclass (JSON never yields one, callers might)."""

    __slots__ = ()


_DATETIMES = st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31))
_TIME_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
    st.text(max_size=30), st.text(alphabet="0123456789", min_size=1, max_size=14),
    _DATETIMES.map(lambda d: d.isoformat(timespec="milliseconds") + "Z"),
    _DATETIMES.map(lambda d: d.isoformat()),
    st.builds(lambda d, z: d.isoformat(timespec="seconds") + z, _DATETIMES,
              st.sampled_from(["Z", "z", "+02:00", "-05:30", "", " "])),
    st.text(alphabet="0123456789-T:.Zz+ ", min_size=20, max_size=26),
    _DATETIMES.map(lambda d: _Text(d.isoformat(timespec="milliseconds") + "Z")),
    _DATETIMES.map(lambda d: " " * 40 + d.isoformat() + "+01:00 "),  # long: not cached
    st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=2), st.integers(),
                                                         max_size=2),
)


@settings(max_examples=2000, deadline=None)
@given(_TIME_VALUES)
def test_timestamp_equals_the_reference_formula(value: object) -> None:
    """timestamp (own format first, ISO parses cached) equals the original for any value."""
    assert timestamp(value) == reference_timestamp(value)
    assert timestamp(value) == reference_timestamp(value)  # again: from the cache


_PROVIDERS = ("bandwidth", "skycore", "pingplus")


@pytest.mark.parametrize("name", _PROVIDERS)
def test_status_of_knows_every_table_key_in_any_case(name: str) -> None:
    """Every [statuses] key, as written, upper-cased or unknown, maps as the table says."""
    for key in [*table(name)["statuses"], "no-such-status", "", None]:
        for variant in {key, key.upper() if key else key}:
            assert status_of(name, variant) == reference_status_of(name, variant)


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(_PROVIDERS), st.one_of(st.none(), st.text(max_size=20)))
def test_status_of_equals_the_table_lookup(name: str, key: str | None) -> None:
    """status_of (a prebuilt dict) equals a lookup in the provider's table for any key."""
    assert status_of(name, key) == reference_status_of(name, key)
