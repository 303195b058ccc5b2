"""Every error relay raises on purpose, and what each one means to a provider.

Each error knows the HTTP status it answers with and whether the sender should retry.
The web layer turns any :class:`HookError` into a JSON body ``{"error": code, "detail": ...}``
without looking at its type; nothing else in relay builds error responses.

::

    RelayError                         (base; never raised itself)
    ├── ConfigError                    bad configuration: start-up stops, names key and problem
    ├── HookError                      answered to the caller: .status, .code, .retriable
    │   ├── UnknownSource         404  no source configured under that name
    │   ├── PayloadTooLarge       413  body over the source's max_body_bytes
    │   ├── Forbidden             403  source address not in the allowlist
    │   ├── AuthenticationFailed  401  bad/missing credentials, token or signature
    │   └── SpoolUnavailable      503  retriable: disk full, over cap, I/O error (Retry-After)
    ├── NormalisationError             authentic postback the provider adapter cannot read:
    │                                  never answered (the postback was acked), dead-lettered
    └── PublishError                   Kafka refused or timed out: retried by the pipeline

Details of an error are written for operators: they never contain secrets, message
text or the body.
"""

from __future__ import annotations


class RelayError(Exception):
    """Base of every error relay raises on purpose."""


class ConfigError(RelayError):
    """The configuration is invalid; ``key`` names where (``sources[0].basic_auth``)."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


class HookError(RelayError):
    """An error answered to the caller of ``/hooks/...``."""

    status: int = 500
    code: str = "internal"
    retriable: bool = False

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def headers(self) -> dict[str, str]:
        """Extra response headers this error needs."""
        return {}


class UnknownSource(HookError):
    """No source is configured under the requested name."""

    status = 404
    code = "unknown_source"


class PayloadTooLarge(HookError):
    """The body is larger than the source allows."""

    status = 413
    code = "payload_too_large"


class Forbidden(HookError):
    """The request comes from an address the source does not allow."""

    status = 403
    code = "forbidden"


class AuthenticationFailed(HookError):
    """Credentials, token or signature are missing or wrong."""

    status = 401
    code = "unauthenticated"

    def __init__(self, detail: str, challenge: str | None = None) -> None:
        super().__init__(detail)
        self.challenge = challenge

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": self.challenge} if self.challenge else {}


class SpoolUnavailable(HookError):
    """The spool cannot durably store the postback now; the provider should retry."""

    status = 503
    code = "spool_unavailable"
    retriable = True

    def __init__(self, detail: str, retry_after: int = 5) -> None:
        super().__init__(detail)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class NormalisationError(RelayError):
    """An authentic postback that its provider adapter cannot turn into events."""


class PublishError(RelayError):
    """Kafka did not take a record; the pipeline retries with backoff."""
