"""The contract every provider adapter keeps: its fixtures normalise into schema-valid events."""

from __future__ import annotations

import tomllib
from pathlib import Path

import orjson
import pytest
from harness import validate

from relay.pipeline import Normaliser
from relay.providers import registry
from relay.schema import RawPostback
from relay.settings import Secret, SourceConfig
from relay.sources import build_one

FIXTURES = Path(__file__).parent / "fixtures"


def _source_config(provider: str) -> SourceConfig:
    options_file = FIXTURES / provider / "source.toml"
    options = tomllib.loads(options_file.read_text()) if options_file.exists() else {}
    return SourceConfig(name=f"contract-{provider}", provider=provider,
                        tokens=(Secret("contract-token", "test"),), default_region="US",
                        options=options)


def _cases() -> list[tuple[str, Path]]:
    return [(name, path) for name in sorted(registry())
            for path in sorted((FIXTURES / name).glob("*.json"))
            if not path.name.endswith(".headers.json")]


def _raw(provider: str, path: Path, raw_id: int) -> RawPostback:
    headers_file = path.with_name(path.name.removesuffix(".json") + ".headers.json")
    headers = orjson.loads(headers_file.read_bytes()) if headers_file.exists() else {}
    return RawPostback(source=f"contract-{provider}", received_at=1_740_823_300.0,
                       remote_addr="203.0.113.9", method="POST", path=f"/hooks/{provider}",
                       query="", headers=tuple((k.lower(), v) for k, v in headers.items()),
                       body=path.read_bytes(), id=raw_id)


@pytest.mark.parametrize("provider", sorted(registry()))
def test_every_provider_has_fixtures(provider: str) -> None:
    """Each registered provider ships at least three request-body fixtures."""
    assert len([c for c in _cases() if c[0] == provider]) >= 3


@pytest.mark.parametrize(("provider", "path"), _cases(), ids=lambda v: getattr(v, "name", v))
def test_fixture_events_validate_against_the_schemas(provider: str, path: Path) -> None:
    """Every event a fixture yields validates against its JSON Schema; invalid-* fixtures dead-letter."""
    source = build_one(_source_config(provider), 1 << 20)
    derived = Normaliser({source.name: source}).derive(_raw(provider, path, 42))
    if path.name.startswith("invalid"):
        assert derived.error is not None
        assert derived.events == []
        return
    assert derived.error is None, derived.error
    for event in derived.events:
        document = orjson.loads(event.to_json())
        validate(event.type, document)
        assert document["raw_id"] == 42
        assert document["provider"] == provider
    again = Normaliser({source.name: source}).derive(_raw(provider, path, 43))
    assert [e.id for e in again.events] == [e.id for e in derived.events]
