"""Unit tests for relay.sources: configured sources built once, ready for the request path."""

from __future__ import annotations

from relay.settings import parse
from relay.sources import build

SETTINGS = {
    "sources": [
        {"name": "bw", "provider": "bandwidth",
         "basic_auth": {"username": "relay", "password": "env:BW_PW"}},
        {"name": "sky", "provider": "skycore", "token": "env:SKY_TOKEN"},
    ],
}


def test_stored_path_is_the_route_with_the_token_masked() -> None:
    """The path kept in the spool is /hooks/{name}, and a URL token never appears in it."""
    sources = build(parse(SETTINGS, environ={"BW_PW": "pw", "SKY_TOKEN": "t0ken-secret"}))
    assert sources["bw"].stored_path(None) == "/hooks/bw"
    assert sources["sky"].stored_path("t0ken-secret") == "/hooks/sky/{token}"
    assert "t0ken" not in sources["sky"].stored_path("t0ken-secret")
