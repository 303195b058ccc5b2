"""The providers' status mapping tables (``relay/data/<provider>.toml``) as Markdown.

``relay status-table`` prints it; ``docs/status-mapping.md`` is this output (``make docs``
writes it, and a test fails when it is stale), so the document an operator reads is the
data the code runs on.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from importlib import resources
from typing import Any

from relay.providers import registry
from relay.providers.common import table

HEADER = """# Status mapping

How each provider's statuses and codes become relay's normalised `status` and `final`
(see [events.md](events.md)). Generated from `relay/data/*.toml` by `relay status-table`
(`make docs`); do not edit by hand. A provider value not listed maps to `unknown`
(not final) and the event keeps it in `provider_status`.
"""

_RULE_KEYS = ("status", "final", "flag", "note", "meaning")


def _has_table(name: str) -> bool:
    return resources.files("relay").joinpath("data", f"{name}.toml").is_file()


def _cell(value: object) -> str:
    if isinstance(value, list):
        return ", ".join(f"`{v}`" for v in value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    return "" if value is None else str(value).replace("|", "\\|")


def _row(when: str, rule: Mapping[str, Any]) -> str:
    final = rule.get("final")
    return (f"| {when} | `{rule['status']}` | {'' if final is None else _cell(final)} | "
            f"{_cell(rule.get('flag'))} | {_cell(rule.get('note') or rule.get('meaning'))} |")


def _condition(rule: Mapping[str, Any]) -> str:
    parts = []
    if "from" in rule and "to" in rule:
        lo, hi = rule["from"], rule["to"]
        parts.append(f"code {lo}" if lo == hi else f"code {lo}\u2013{hi}")
    parts.extend(f"{k} {_cell(v)}" for k, v in rule.items()
                 if k not in (*_RULE_KEYS, "from", "to"))
    return ", ".join(parts) or "always"


def _section(name: str, data: Mapping[str, Any]) -> Iterator[str]:
    head = "| provider value | status | final | flag | note |\n|---|---|---|---|---|"
    for key, value in data.items():
        if isinstance(value, dict) and value and all(
                isinstance(v, dict) and "status" in v for v in value.values()):
            yield f"\n`[{key}]`\n\n{head}"
            yield from (_row(f"`{k}`", v) for k, v in value.items())
        elif isinstance(value, dict) and "status" in value:
            yield f"\n`[{key}]` (refinement)\n\n{head}"
            yield _row(_condition(value), value)
        elif isinstance(value, list) and value and all(
                isinstance(v, dict) and "status" in v for v in value):
            yield f"\n`[[{key}]]` (first match wins)\n\n{head}"
            yield from (_row(_condition(v), v) for v in value)
        elif key == "notices" and isinstance(value, dict):
            yield "\nNotices (logged and counted, never published):\n"
            yield from (f"- `{k}`: {_cell(v)}" for k, v in value.items())


def render() -> str:
    """Every provider's mapping, as Markdown."""
    lines = [HEADER]
    for name in sorted(registry()):
        provider = registry()[name]
        lines.append(f"## {name}\n\n{provider.description}".rstrip())
        if not _has_table(name):
            lines.append("\nNo built-in table: the source's `statuses` option maps them "
                         "(see providers/generic.md).")
        else:
            lines.extend(_section(name, table(name)))
        lines.append("")
    return "\n".join(lines)
