"""Unit tests for relay.errors: the error tree, statuses, codes and extra headers."""

from __future__ import annotations

import pytest

from relay.errors import (
    AuthenticationFailed,
    ConfigError,
    Forbidden,
    HookError,
    NormalisationError,
    PayloadTooLarge,
    PublishError,
    RelayError,
    SpoolUnavailable,
    UnknownSource,
)

HOOK_ERRORS = [
    (UnknownSource, 404, "unknown_source", False),
    (PayloadTooLarge, 413, "payload_too_large", False),
    (Forbidden, 403, "forbidden", False),
    (AuthenticationFailed, 401, "unauthenticated", False),
    (SpoolUnavailable, 503, "spool_unavailable", True),
]


@pytest.mark.parametrize(("cls", "status", "code", "retriable"), HOOK_ERRORS)
def test_hook_error_status_code_and_retriable(
    cls: type[HookError], status: int, code: str, retriable: bool
) -> None:
    """Each HookError subclass answers with its documented status, code and retriability."""
    err = cls("something happened")
    assert isinstance(err, HookError)
    assert isinstance(err, RelayError)
    assert err.status == status
    assert err.code == code
    assert err.retriable is retriable
    assert err.detail == "something happened"
    assert str(err) == "something happened"


def test_hook_error_codes_and_statuses_are_distinct() -> None:
    """No two HookError subclasses share a code or a status."""
    codes = [c.code for c, *_ in HOOK_ERRORS]
    statuses = [c.status for c, *_ in HOOK_ERRORS]
    assert len(set(codes)) == len(codes)
    assert len(set(statuses)) == len(statuses)


def test_base_hook_error_defaults() -> None:
    """A bare HookError is a non-retriable 500 'internal' error without extra headers."""
    err = HookError("boom")
    assert (err.status, err.code, err.retriable) == (500, "internal", False)
    assert err.headers() == {}


@pytest.mark.parametrize("cls", [UnknownSource, PayloadTooLarge, Forbidden])
def test_plain_hook_errors_have_no_headers(cls: type[HookError]) -> None:
    """Errors without a challenge or retry hint add no response headers."""
    assert cls("x").headers() == {}


def test_authentication_failed_with_challenge_sets_www_authenticate() -> None:
    """AuthenticationFailed with a challenge answers it in WWW-Authenticate."""
    err = AuthenticationFailed("bad", 'Basic realm="relay"')
    assert err.challenge == 'Basic realm="relay"'
    assert err.headers() == {"WWW-Authenticate": 'Basic realm="relay"'}


@pytest.mark.parametrize("challenge", [None, ""])
def test_authentication_failed_without_challenge_has_no_headers(challenge: str | None) -> None:
    """AuthenticationFailed without a (non-empty) challenge adds no WWW-Authenticate header."""
    assert AuthenticationFailed("bad", challenge).headers() == {}


def test_spool_unavailable_retry_after_default_and_custom() -> None:
    """SpoolUnavailable carries Retry-After: 5 by default and the given value otherwise."""
    assert SpoolUnavailable("full").retry_after == 5
    assert SpoolUnavailable("full").headers() == {"Retry-After": "5"}
    err = SpoolUnavailable("over cap", retry_after=30)
    assert err.retry_after == 30
    assert err.headers() == {"Retry-After": "30"}


def test_config_error_names_key_and_problem() -> None:
    """ConfigError keeps key and problem apart and joins them in its message."""
    err = ConfigError("sources[0].basic_auth", "must be a table")
    assert err.key == "sources[0].basic_auth"
    assert err.problem == "must be a table"
    assert str(err) == "sources[0].basic_auth: must be a table"
    assert isinstance(err, RelayError)
    assert not isinstance(err, HookError)


@pytest.mark.parametrize("cls", [NormalisationError, PublishError])
def test_non_hook_errors_are_relay_errors_but_never_answered(cls: type[RelayError]) -> None:
    """NormalisationError and PublishError are RelayErrors that are not HookErrors."""
    err = cls("x")
    assert isinstance(err, RelayError)
    assert not isinstance(err, HookError)


def test_hook_errors_can_be_caught_as_relay_error() -> None:
    """Raising a HookError subclass is caught by an except RelayError clause."""
    with pytest.raises(RelayError) as info:
        raise Forbidden("source address not allowed")
    assert info.value.status == 403  # type: ignore[attr-defined]
