"""Engine rules that need a policy of their own (the fixture policy lacks the role)."""

from __future__ import annotations

import pytest

from engine_fixtures import DIALECTS, fixture_catalog
from warden.policy.engine import Identity, decide
from warden.policy.model import parse_policy
from warden.sql.analyze import analyze_cell

POLICY = parse_policy(
    """
version: 1
connections:
  pg: {dialect: postgres, dsn_env: X}
  dk: {dialect: duckdb, path: x.duckdb}
functions:
  pg.public.orders_total: {reads: [pg.public.orders.amount]}
roles:
  writer:
    members: {groups: [w]}
    statements: [select, merge, update, delete]
    row_filters: {pg.public.orders: "region = :user.region", dk.main.orders: "region = :user.region"}
""",
    source="rules.yaml",
)
WRITER = Identity("w1", frozenset({"w"}), {"region": "emea"})


@pytest.mark.parametrize("dialect", sorted(DIALECTS))
def test_merge_into_a_filtered_table_is_denied(dialect: str) -> None:
    sql = "MERGE INTO orders o USING customers c ON o.customer_id = c.id WHEN MATCHED THEN UPDATE SET amount = 0"
    decision = decide(POLICY, WRITER, analyze_cell(sql, fixture_catalog(dialect), cache=None), DIALECTS[dialect][0])
    assert decision.action == "deny" and any("MERGE" in r.message for r in decision.reasons), decision.summary


@pytest.mark.parametrize("dialect", sorted(DIALECTS))
def test_update_of_a_filtered_table_gets_the_filter(dialect: str) -> None:
    sql = "UPDATE orders SET amount = 0 WHERE id = 1"
    decision = decide(POLICY, WRITER, analyze_cell(sql, fixture_catalog(dialect), cache=None), DIALECTS[dialect][0])
    assert decision.action == "allow", decision.summary
    assert [f.relation.split(".")[-1] for f in decision.row_filters] == ["orders"]


def test_declared_function_over_a_filtered_table_is_denied() -> None:
    decision = decide(POLICY, WRITER, analyze_cell("SELECT orders_total(1) AS t", fixture_catalog("postgres"), cache=None), "pg")
    assert decision.action == "deny" and any("cannot be filtered" in r.message for r in decision.reasons), decision.summary


def test_live_catalog_knows_partitions_and_children(pg_dsn: str) -> None:
    import psycopg

    from warden.sql.catalog_live import load_postgres_catalog

    with psycopg.connect(pg_dsn, autocommit=True) as con:
        con.execute("CREATE TABLE events (id int, region text, at date) PARTITION BY RANGE (at)")
        con.execute("CREATE TABLE events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')")
        con.execute("CREATE TABLE people (id int, email text)")
        con.execute("CREATE TABLE people_old () INHERITS (people)")
    catalog = load_postgres_catalog(pg_dsn)
    part = catalog.get("public", "events_2026")
    child = catalog.get("public", "people_old")
    assert part is not None and part.parent == "public.events"
    assert child is not None and child.parent == "public.people"
    assert catalog.root(part).qualified == "public.events"
    analysis = analyze_cell("SELECT email FROM people_old", catalog, cache=None)
    [out] = analysis.statements[0].outputs
    assert {s.qualified for s in out.sources} == {"public.people.email"}
    assert set(analysis.statements[0].reads) == {"public.people_old", "public.people"}
