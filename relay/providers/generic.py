"""``generic``: onboard a simple JSON provider relay has no adapter for, by configuration.

The source's options say where each normalised field is in the payload (``mapping``),
how to tell an inbound message from a status (``inbound_when``), what the provider's
statuses mean (``statuses``) and, optionally, where an array of events is (``items``); the
engine is :mod:`relay.providers.mapping`. Authentication is one of the schemes relay has:
HTTP Basic or a URL token through the common source keys (``basic_auth``, ``token``,
``tokens``, with ``allow_ips``), or an HMAC signature::

    signing = { scheme = "standard-webhooks", secrets = ["env:ACME_WHSEC"],
                tolerance_seconds = 300 }

Every option is validated when relay starts; a mistake is a :class:`ConfigError` naming the
key (``sources[2].mapping.status: ...``). Dedup key: source name + ``message_id`` +
provider status (inbound: source name + ``message_id``). See ``docs/providers/generic.md``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from relay.errors import ConfigError, NormalisationError
from relay.providers import Provider, Setup, SourceContext
from relay.providers.mapping import ENGINE_KEYS, Spec, spec_from_options, unknown_key
from relay.providers.mapping import normalise as normalise_with
from relay.schema import Output, RawPostback
from relay.settings import SourceConfig, resolve_secret
from relay.verify import StandardWebhooksVerifier, Verifier

NAME = "generic"
SCHEMES = ("standard-webhooks",)
MIN_KEY_BYTES = 16
DEFAULT_TOLERANCE = 300.0


# --- verification schemes --------------------------------------------------------------------


def _secrets(value: object, key: str, environ: Mapping[str, str]) -> tuple[bytes, ...]:
    refs = [value] if isinstance(value, str) else value
    if not isinstance(refs, list) or not refs:
        raise ConfigError(key, "must be a non-empty list of 'env:NAME' / 'file:PATH' references")
    keys: list[bytes] = []
    for i, ref in enumerate(refs):
        where = f"{key}[{i}]"
        secret = resolve_secret(ref, where, environ)
        try:
            (decoded,) = StandardWebhooksVerifier.from_secrets([secret]).keys
        except ValueError as exc:
            raise ConfigError(where, str(exc)) from None
        if len(decoded) < MIN_KEY_BYTES:
            raise ConfigError(where, f"the key is {len(decoded)} bytes: at least "
                              f"{MIN_KEY_BYTES} are needed")  # fmt: skip
        keys.append(decoded)
    return tuple(keys)


def _tolerance(value: object, key: str) -> float:
    if value is None:
        return DEFAULT_TOLERANCE
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(key, "must be a number of seconds greater than zero")
    return float(value)


def signing(value: object, key: str, default_scheme: str | None = None,
            environ: Mapping[str, str] | None = None) -> Verifier:
    """The verifier a ``signing`` table asks for (``scheme``, ``secrets``,
    ``tolerance_seconds``); ``default_scheme`` applies when ``scheme`` is left out."""
    if not isinstance(value, dict):
        raise ConfigError(key, "must be a table { scheme = ..., secrets = [...] }")
    unknown_key(value, ("scheme", "secrets", "tolerance_seconds"), key)
    scheme = value.get("scheme", default_scheme)
    if scheme not in SCHEMES:
        raise ConfigError(f"{key}.scheme", f"must be one of {', '.join(SCHEMES)}")
    if "secrets" not in value:
        raise ConfigError(f"{key}.secrets", "is required")
    keys = _secrets(value["secrets"], f"{key}.secrets",
                    os.environ if environ is None else environ)
    return StandardWebhooksVerifier(keys, _tolerance(value.get("tolerance_seconds"),
                                                     f"{key}.tolerance_seconds"))  # fmt: skip


# --- the provider ----------------------------------------------------------------------------


def setup_with(base: Spec, source: SourceConfig, options: Mapping[str, Any]) -> Setup:
    """Validate the engine and ``signing`` options of ``source`` over ``base``."""
    unknown_key(options, ENGINE_KEYS | {"signing"}, source.key)
    spec = spec_from_options(base, options, source.key)
    verifiers: tuple[Verifier, ...] = ()
    if "signing" in options:
        verifiers = (signing(options["signing"], f"{source.key}.signing",
                             environ=source.environ),)
    return Setup(options=spec, verifiers=verifiers)


def configure(source: SourceConfig) -> Setup:
    """A generic source: ``mapping`` is required, everything else optional."""
    if "mapping" not in source.options:
        raise ConfigError(f"{source.key}.mapping", "is required for provider generic: "
                          "normalised field = JSON path")  # fmt: skip
    return setup_with(Spec(provider=NAME, paths={}, scoped=True), source, source.options)


def normalise(raw: RawPostback, ctx: SourceContext) -> list[Output]:
    """The events of a body, read with the source's mapping."""
    if not isinstance(ctx.options, Spec):
        raise NormalisationError(f"source {ctx.name!r} has no mapping configured")
    return list(normalise_with(raw, ctx, ctx.options))


PROVIDER = Provider(
    name=NAME,
    normalise=normalise,
    configure=configure,
    description="any simple JSON provider, described by a field mapping in the configuration",
)
