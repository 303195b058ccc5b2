"""Hypothesis strategies shared by the property tests of parsers and normalisers."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

INT64 = st.integers(-(2**63), 2**63 - 1)


def json_documents(scalars: SearchStrategy[Any], keys: SearchStrategy[str], *,
                   max_size: int = 6, max_leaves: int = 20) -> SearchStrategy[Any]:
    """JSON-shaped values: ``scalars`` at the leaves, lists of up to 4 items and objects of
    up to ``max_size`` members named by ``keys``."""
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=max_size),
        max_leaves=max_leaves)
