"""Configured sources, ready to serve: provider, address allowlist, verifier, limits.

:func:`build` turns the validated settings into :class:`Source` objects once, at start-up,
so the request path only looks a source up in a dict. It is also where a source without
any authentication is refused: every source must prove its postbacks (Basic, URL token or
a signature), because a 2xx stores whatever it is given.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from relay.errors import ConfigError
from relay.providers import COMMON_HEADERS, Provider, SourceContext, get, registry
from relay.settings import Settings, SourceConfig
from relay.verify import AllOf, BasicAuthVerifier, IPAllowlist, TokenVerifier, Verifier


@dataclass(frozen=True)
class Source:
    """One source as the request path and the pipeline use it."""

    name: str
    provider: Provider
    allowlist: IPAllowlist
    verifier: Verifier
    context: SourceContext
    kept_headers: frozenset[str]
    max_body_bytes: int
    uses_token: bool

    def stored_path(self, token: str | None) -> str:
        """The path the spool keeps for a postback to this source: the route's, with a URL
        token masked (a token is a secret)."""
        return f"/hooks/{self.name}" if token is None else f"/hooks/{self.name}/{{token}}"


def _verifier(cfg: SourceConfig, extra: tuple[Verifier, ...], requires_auth: bool) -> Verifier:
    verifiers: list[Verifier] = []
    if cfg.basic_auth is not None:
        verifiers.append(BasicAuthVerifier(cfg.basic_auth.username, cfg.basic_auth.password))
    if cfg.tokens:
        verifiers.append(TokenVerifier(cfg.tokens))
    verifiers.extend(extra)
    if not verifiers and requires_auth:
        raise ConfigError(f"{cfg.key}", f"source {cfg.name!r} has no authentication: set "
                          "basic_auth, token, or the provider's signing keys")
    return AllOf(tuple(verifiers))


def build_one(cfg: SourceConfig, default_max_body: int) -> Source:
    """A ready :class:`Source` from its configuration (raises :class:`ConfigError`)."""
    provider = get(cfg.provider)
    if provider is None:
        known = ", ".join(sorted(registry()))
        raise ConfigError(f"{cfg.key}.provider", f"unknown provider {cfg.provider!r} "
                          f"(known: {known})")
    setup = provider.configure(cfg)
    context = SourceContext(name=cfg.name, provider=provider.name,
                            default_region=cfg.default_region, keywords=cfg.keywords,
                            options=setup.options)
    return Source(
        name=cfg.name,
        provider=provider,
        allowlist=IPAllowlist(cfg.allow_ips),
        verifier=_verifier(cfg, setup.verifiers, setup.requires_auth),
        context=context,
        kept_headers=COMMON_HEADERS | provider.kept_headers,
        max_body_bytes=cfg.max_body_bytes or default_max_body,
        uses_token=bool(cfg.tokens),
    )


def build(settings: Settings) -> Mapping[str, Source]:
    """Every configured source by name."""
    return {c.name: build_one(c, settings.server.max_body_bytes) for c in settings.sources}
