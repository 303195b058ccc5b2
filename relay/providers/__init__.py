"""Provider adapters: one module per provider, found by :func:`registry`.

An adapter never sees the web framework. It is a :class:`Provider`: a name, the headers
it needs kept in the spool, a ``configure`` hook that validates the source's
provider-specific options and returns the verifiers the provider's signing scheme needs,
and ``normalise``, which turns a stored :class:`~relay.schema.RawPostback` into zero or
more :class:`~relay.schema.Event` (or raises :class:`~relay.errors.NormalisationError`,
and the postback is dead-lettered). ``normalise`` must be a pure function of the raw
postback and the source context: replay runs the same code months later.

Any module in this package that defines a module-level ``PROVIDER`` is registered; see
``docs/adding-a-provider.md``.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from relay.schema import Output, RawPostback
from relay.settings import Keywords, SourceConfig
from relay.verify import Verifier

#: Headers every source keeps with the raw postback, beside the provider's own.
COMMON_HEADERS = frozenset({"content-type", "user-agent", "content-encoding"})


@dataclass(frozen=True)
class SourceContext:
    """What a normaliser knows about the source a postback came through."""

    name: str
    provider: str
    default_region: str | None = None
    keywords: Keywords = field(default_factory=Keywords)
    options: Any = None


@dataclass(frozen=True)
class Setup:
    """What a provider's ``configure`` returns for one source."""

    options: Any = None
    verifiers: tuple[Verifier, ...] = ()
    requires_auth: bool = True


def _no_setup(source: SourceConfig) -> Setup:
    if source.options:
        from relay.errors import ConfigError

        key = next(iter(source.options))
        raise ConfigError(f"{source.key}.{key}", f"unknown key for provider {source.provider}")
    return Setup()


@dataclass(frozen=True)
class Provider:
    """A provider adapter (see the module docstring)."""

    name: str
    normalise: Callable[[RawPostback, SourceContext], list[Output]]
    kept_headers: frozenset[str] = frozenset()
    configure: Callable[[SourceConfig], Setup] = _no_setup
    ack_status: int = 200
    description: str = ""


@cache
def registry() -> Mapping[str, Provider]:
    """Every provider module in this package, by provider name."""
    found: dict[str, Provider] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_") or info.name == "common":
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        provider = getattr(module, "PROVIDER", None)
        if isinstance(provider, Provider):
            found[provider.name] = provider
    return found


def get(name: str) -> Provider | None:
    """The provider called ``name``, or None."""
    return registry().get(name)
