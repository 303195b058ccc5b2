"""The generated status-mapping document."""

from __future__ import annotations

from pathlib import Path

from relay.providers import registry
from relay.statustable import render

DOC = Path(__file__).resolve().parent.parent / "docs" / "status-mapping.md"


def test_document_is_up_to_date() -> None:
    """docs/status-mapping.md is exactly what `relay status-table` prints (run `make docs`)."""
    assert DOC.read_text() == render()


def test_every_provider_has_a_section() -> None:
    """Each registered provider has its own heading in the document."""
    text = render()
    for name in registry():
        assert f"\n## {name}\n" in text


def test_table_rows_come_from_the_data() -> None:
    """Rows show the data tables' mappings, e.g. Bandwidth 4720 and Skycore N102."""
    text = render()
    assert "| code 4720\u20134721 | `undeliverable` |" in text
    assert "| `n102` | `delivered` | yes |" in text
