"""The decision cache (policy/decision_cache.py): reused across literal values of one
shape, never across what a decision depends on (identity, attributes, taints,
connection, structural literals), and never for a cell with unresolved parts. Each
reused decision equals the one computed afresh, redacted SQL included."""

from __future__ import annotations

from dataclasses import replace

import pytest

from engine_fixtures import DIALECTS, fixture_catalog
from warden.policy.decision_cache import DecisionCache
from warden.policy.engine import Identity, decide
from warden.policy.model import parse_policy
from warden.sql.analyze import AnalysisCache, analyze_cell

POLICY = parse_policy(
    """
version: 1
connections:
  pg: {dialect: postgres, dsn_env: X}
  dk: {dialect: duckdb, path: x.duckdb}
classifications:
  pii.email: ["*.*.customers.email"]
defaults: {classified_in_predicates: allow}
roles:
  analyst:
    members: {groups: [a]}
    statements: [select, delete]
    masks: {pii.email: email}
    row_filters: {pg.public.orders: "region = :user.region", dk.main.orders: "region = :user.region"}
    hold: ["kind in (delete) and not where"]
""",
    source="cache.yaml",
)
ANA = Identity("ana", frozenset({"a"}), {"region": "emea"})

# (first cell, second cell of the same shape): the decision of the second, reused, must
# equal a fresh one.
SAME_SHAPE = [
    ("SELECT id, email FROM customers WHERE id = 1", "SELECT id, email FROM customers WHERE id = 2"),
    ("SELECT id, email FROM customers WHERE email = 'a@x.example'", "SELECT id, email FROM customers WHERE email = 'secret@y.example'"),
    ("SELECT amount FROM orders WHERE id > 10", "SELECT amount FROM orders WHERE id > 99"),
    ("DELETE FROM orders WHERE id = 1", "DELETE FROM orders WHERE id = 7"),
    ("SELECT id FROM customers LIMIT 5", "SELECT id FROM customers LIMIT 5000000"),  # a limit is structural
    ("SELECT id, email FROM customers ORDER BY 1", "SELECT id, email FROM customers ORDER BY 2"),  # an ordinal too
]


@pytest.mark.parametrize("dialect", sorted(DIALECTS))
@pytest.mark.parametrize(("first", "second"), SAME_SHAPE)
def test_a_reused_decision_equals_a_fresh_one(dialect: str, first: str, second: str) -> None:
    catalog = fixture_catalog(dialect)
    conn = DIALECTS[dialect][0]
    analyses = AnalysisCache()
    cache = DecisionCache(POLICY)
    cache.decide(ANA, analyze_cell(first, catalog, cache=analyses), conn)
    again = analyze_cell(second, catalog, cache=analyses)
    got = cache.decide(ANA, again, conn)
    fresh = decide(POLICY, ANA, analyze_cell(second, catalog, cache=None), conn)
    assert got == fresh
    assert "secret@y.example" not in got.redacted_sql  # the literal compared with an email stays redacted


def test_hits_across_literals_and_misses_across_identities_and_taints() -> None:
    catalog = fixture_catalog("postgres")
    analyses = AnalysisCache()
    cache = DecisionCache(POLICY)
    sql = "SELECT o.id, o.amount FROM orders o WHERE o.id = {}"
    first = cache.decide(ANA, analyze_cell(sql.format(1), catalog, cache=analyses), "pg")
    cache.decide(ANA, analyze_cell(sql.format(2), catalog, cache=analyses), "pg")
    assert (cache.hits, cache.misses) == (1, 1)
    # Another region: another row filter, so never the cached decision.
    bob = Identity("bob", frozenset({"a"}), {"region": "amer"})
    other = cache.decide(bob, analyze_cell(sql.format(3), catalog, cache=analyses), "pg")
    assert cache.misses == 2
    assert [f.predicate for f in first.row_filters] != [f.predicate for f in other.row_filters]
    assert "'amer'" in other.row_filters[0].predicate
    # Same user, another attribute value (a changed claim): recomputed.
    ana_moved = replace(ANA, attributes={"region": "apac"})
    moved = cache.decide(ana_moved, analyze_cell(sql.format(4), catalog, cache=analyses), "pg")
    assert cache.misses == 3 and "'apac'" in moved.row_filters[0].predicate
    # A taint on a selected column (a copy of classified data): recomputed, and masked.
    taints = {"pg.public.orders.amount": frozenset({"pii.email"})}
    tainted = cache.decide(ANA, analyze_cell(sql.format(5), catalog, cache=analyses), "pg", taints=taints)
    assert cache.misses == 4 and [m.column for m in tainted.masks] == ["amount"]
    assert not first.masks


def test_unresolved_cells_are_never_cached() -> None:
    catalog = fixture_catalog("postgres")
    cache = DecisionCache(POLICY)
    for n in range(3):
        d = cache.decide(ANA, analyze_cell(f"SELECT nosuchcol FROM customers WHERE id = {n}", catalog), "pg")
        assert d.action == "deny"
    assert cache.hits == 0
