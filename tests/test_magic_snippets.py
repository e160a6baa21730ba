"""Saved snippets (JupySQL's --save/--with): which names a query reads, and the SQL sent."""

from __future__ import annotations

import pytest

from warden.magic.parse import MagicSyntaxError
from warden.magic.snippets import SnippetStore, references


@pytest.fixture
def store() -> SnippetStore:
    s = SnippetStore()
    s.save("b", "SELECT 1 AS x")
    s.save("big", "SELECT * FROM orders WHERE amount > 20;")
    s.save("top", "SELECT * FROM big WHERE amount > 28")
    return s


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT a, b FROM t", []),  # a column named like a snippet is not a read of it
        ("SELECT * FROM big JOIN b ON true", ["big", "b"]),
        ("WITH big AS (SELECT 1) SELECT * FROM big", []),  # the query's own CTE wins
        ("SELECT 'from big' FROM t -- join b", []),
        ("SELECT * FROM main.big", []),  # a qualified name is a table, not a snippet
        ("SELECT * FROM big WHERE (", ["big"]),  # does not parse: the scan still finds it
    ],
)
def test_references(store: SnippetStore, sql: str, expected: list[str]) -> None:
    assert references(sql, store.snippets) == expected


def test_expansion_orders_dependencies_and_joins_an_own_with(store: SnippetStore) -> None:
    sql, used = store.expand("SELECT count(*) FROM top")
    assert used == ["big", "top"]
    assert sql.index("big AS (") < sql.index("top AS (") and sql.endswith("SELECT count(*) FROM top")
    assert "amount > 20\n)" in sql  # the snippet's trailing ';' is gone
    sql, used = store.expand("WITH mine AS (SELECT id FROM top) SELECT * FROM mine")
    assert sql.startswith("WITH big AS (") and "), mine AS (SELECT id FROM top)" in sql
    assert store.expand("SELECT 1", ("b",))[0].startswith("WITH b AS (")


def test_mistakes_are_said(store: SnippetStore) -> None:
    with pytest.raises(MagicSyntaxError, match="no snippet of that name"):
        store.expand("SELECT 1", ("nope",))
    with pytest.raises(MagicSyntaxError, match="used by top"):
        store.delete("big")
    store.snippets["loop_a"] = "SELECT * FROM loop_b"
    store.snippets["loop_b"] = "SELECT * FROM loop_a"
    with pytest.raises(MagicSyntaxError, match="circle"):
        store.expand("SELECT * FROM loop_a")
    with pytest.raises(MagicSyntaxError, match="itself"):
        store.save("self_ref", "SELECT * FROM self_ref")
