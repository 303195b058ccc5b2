"""Pingueen (Pingup) WhatsApp Business API callbacks.

Pingueen publishes no callback schema and no signing. Its send API returns a
``message_id`` that "will be sent in the callback" (to the ``callback_url`` given per
message), so status callbacks are keyed by it::

    {"message_id": "1232412421", "status": "delivered", "timestamp": "2025-03-01T10:00:05Z",
     "client": "c_123", "client_phone": "393931234567", "error": null}

Inbound messages reuse the send API's field names and say ``"direction": "inbound"``
(``text_message``, ``client_phone``, ``media_url``/``media_type``). Statuses: ``sent``,
``delivered`` and ``received`` (both delivered), ``read``, ``failed`` (``error`` then holds
``{"code", "message"}``); anything else ``unknown``. Numbers carry the country code without
``+``. Channel: always WhatsApp.

This adapter is the generic mapping engine (:mod:`relay.providers.mapping`) with the
built-in defaults of ``relay/data/pingueen.toml``; a source whose account sends other
field names overrides ``mapping``/``statuses`` key by key, and may set ``inbound_when``,
``our_number`` (the ``to`` of inbound messages) and the other engine options, without code.
Authentication: a secret URL token (``/hooks/{source}/{token}``, common ``token`` key)
plus an optional ``allow_ips``. Dedup key: ``message_id`` + provider status (inbound:
``message_id``).
"""

from __future__ import annotations

from functools import cache

from relay.providers import Provider, Setup, SourceContext
from relay.providers.common import table
from relay.providers.generic import setup_with
from relay.providers.mapping import Spec, spec_from_options
from relay.providers.mapping import normalise as normalise_with
from relay.schema import Output, RawPostback
from relay.settings import SourceConfig

NAME = "pingueen"


@cache
def default_spec() -> Spec:
    """The built-in mapping, from ``relay/data/pingueen.toml``."""
    return spec_from_options(Spec(provider=NAME, paths={}), table(NAME), "data/pingueen.toml")


def configure(source: SourceConfig) -> Setup:
    """The built-in mapping with the source's overrides applied."""
    return setup_with(default_spec(), source, source.options)


def normalise(raw: RawPostback, ctx: SourceContext) -> list[Output]:
    """The events of a Pingueen callback body (one object, or an array of them)."""
    spec = ctx.options if isinstance(ctx.options, Spec) else default_spec()
    return list(normalise_with(raw, ctx, spec))


PROVIDER = Provider(
    name=NAME,
    normalise=normalise,
    configure=configure,
    description="Pingueen (Pingup) WhatsApp: URL token, field names remappable in config",
)
