"""Analysis details beyond decisions: usage, fingerprints, the cache, redaction, row filters."""

from __future__ import annotations

import pytest

from engine_fixtures import fixture_catalog, fixture_policy
from warden.policy.engine import Classifier, Identity, decide, redact_sql
from warden.sql.analyze import AnalysisCache, analyze_cell
from warden.sql.model import ColumnRef, Usage
from warden.sql.rowfilter import apply_row_filters

PG = fixture_catalog("postgres")
DK = fixture_catalog("duckdb")
POLICY = fixture_policy()


def uses(sql: str) -> set[tuple[str, str]]:
    st = analyze_cell(sql, PG).statements[0]
    return {(u.column.column, u.usage.value) for u in st.uses}


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT email FROM customers", {("email", "projected")}),
        ("SELECT id FROM customers WHERE ssn = 'x'", {("id", "projected"), ("ssn", "predicate")}),
        ("SELECT c.id FROM customers c JOIN orders o ON o.customer_id = c.id",
         {("id", "projected"), ("id", "join"), ("customer_id", "join")}),
        # region is grouped by and also an output: "grouped" (shown only through its mask)
        ("SELECT region FROM customers GROUP BY region HAVING count(email) > 1",
         {("region", "projected"), ("region", "grouped"), ("email", "predicate")}),
        ("SELECT count(*) FROM customers GROUP BY region", {("region", "group")}),
        ("SELECT id FROM customers ORDER BY name", {("id", "projected"), ("name", "order")}),
        ("SELECT lag(id) OVER (PARTITION BY region ORDER BY name) FROM customers",
         {("id", "projected"), ("region", "window"), ("name", "window")}),
        ("UPDATE orders SET amount = 1 WHERE id = 2 RETURNING region",
         {("id", "predicate"), ("region", "returning")}),
    ],
)  # fmt: skip
def test_column_usage(sql: str, expected: set[tuple[str, str]]) -> None:
    assert uses(sql) == expected


def test_objects_are_qualified_through_views() -> None:
    st = analyze_cell("SELECT who FROM v_who", PG).statements[0]
    assert set(st.reads) == {"public.v_who", "public.v_contacts", "public.customers"}
    assert st.outputs[0].sources == {ColumnRef("public", "customers", "email")}
    assert not st.outputs[0].transformed


def test_statement_kinds() -> None:
    sql = "BEGIN; SELECT 1; INSERT INTO orders VALUES (1,2,3,'x'); CREATE TABLE t (a int); GRANT SELECT ON orders TO bob; COMMIT"
    assert analyze_cell(sql, PG).kinds == ("transaction", "select", "insert", "create", "grant", "transaction")


def test_fingerprint_ignores_literals_and_spacing_but_hash_does_not() -> None:
    a = analyze_cell("SELECT id FROM customers WHERE name = 'Ada'", PG, cache=None)
    b = analyze_cell("select  id\nfrom customers where name='Bob'", PG, cache=None)
    c = analyze_cell("SELECT id FROM customers WHERE region = 'Ada'", PG, cache=None)
    assert a.fingerprint == b.fingerprint
    assert a.fingerprint != c.fingerprint
    assert a.statement_hash != b.statement_hash


def test_cache_reuses_shape_and_rebinds_literals() -> None:
    cache = AnalysisCache()
    first = analyze_cell("SELECT id FROM customers WHERE ssn = '111-22-3333'", PG, cache=cache)
    second = analyze_cell("SELECT id FROM customers WHERE ssn = '999-88-7777'", PG, cache=cache)
    assert cache.hits == 1
    assert second.sql.endswith("'999-88-7777'")
    span = second.statements[0].literals[0]
    assert second.sql[span.start : span.end] == "'999-88-7777'"
    assert first.statements[0].uses == second.statements[0].uses


def test_cache_does_not_confuse_file_names_with_tables() -> None:
    cache = AnalysisCache()
    ok = analyze_cell("SELECT * FROM 'customers.parquet'", DK, cache=cache)
    assert ok.statements[0].unresolved
    again = analyze_cell("SELECT * FROM 'other.parquet'", DK, cache=cache)
    assert again.statements[0].unresolved


def test_limit_is_part_of_the_cache_check() -> None:
    cache = AnalysisCache()
    a = analyze_cell("SELECT id FROM orders LIMIT 10", PG, cache=cache)
    b = analyze_cell("SELECT id FROM orders LIMIT 1000000", PG, cache=cache)
    assert (a.statements[0].limit, b.statements[0].limit) == (10, 1000000)


def test_redaction_hides_classified_literals_only() -> None:
    sql = "SELECT id FROM customers WHERE ssn = '123-45-6789' AND region = 'emea' AND lower(email) LIKE 'ada@%'"
    analysis = analyze_cell(sql, PG)
    red = redact_sql(analysis, Classifier(POLICY, "pg"))
    assert "123-45-6789" not in red
    assert "ada@" not in red
    assert "'emea'" in red


def test_redaction_of_inserted_and_assigned_values() -> None:
    sql = "INSERT INTO sales.leads (id, email) VALUES (1, 'x@y.example'); UPDATE customers SET ssn = '555-11-2222' WHERE id = 3"
    analysis = analyze_cell(sql, PG)
    red = redact_sql(analysis, Classifier(POLICY, "pg"))
    assert "x@y.example" not in red and "555-11-2222" not in red
    assert "WHERE id = 3" in red


def test_unparseable_sql_redacts_every_literal() -> None:
    analysis = analyze_cell("SELEC id FROM customers WHERE ssn = '123-45-6789'", PG)
    decision = decide(POLICY, Identity("ana", frozenset({"analysts"})), analysis, "pg")
    assert decision.action == "deny"
    assert "123-45-6789" not in decision.redacted_sql


def test_deny_message_never_echoes_the_literal() -> None:
    analysis = analyze_cell("SELECT id FROM customers WHERE ssn = '123-45-6789'; SELECT * FROM secret.keys", PG)
    decision = decide(POLICY, Identity("ana", frozenset({"analysts"})), analysis, "pg")
    assert decision.action == "deny"
    assert all("123-45-6789" not in r.message for r in decision.reasons)


def test_parse_error_carries_position() -> None:
    analysis = analyze_cell("SELECT id FROM customers;\nSELECT id FROM WHERE x", PG)
    problem = analysis.unresolved[0]
    assert problem.code == "parse-error"
    assert problem.line == 2


@pytest.mark.parametrize(
    ("sql", "needle"),
    [
        ("SELECT * FROM orders o", "WHERE region = 'emea'"),
        ("WITH x AS (SELECT * FROM (SELECT region FROM orders) s) SELECT * FROM x", "WHERE region = 'emea'"),
        ("SELECT 1 FROM customers c WHERE EXISTS (SELECT 1 FROM orders o WHERE o.customer_id = c.id)", "WHERE region = 'emea'"),
        ("DELETE FROM orders WHERE id = 1", "(id = 1) AND (region = 'emea')"),
    ],
)
def test_row_filter_rewrite_reaches_nested_reads(sql: str, needle: str) -> None:
    out = apply_row_filters(sql, {"public.orders": "region = 'emea'"}, PG)
    assert needle in out
    # every read of orders is now filtered: no bare "orders" table outside a filtered subquery
    again = analyze_cell(out, PG, cache=None)
    assert not again.unresolved and not any(s.unresolved for s in again.statements)


def test_row_filter_rewrite_runs_on_duckdb() -> None:
    import duckdb

    con = duckdb.connect()
    con.execute("CREATE TABLE orders (id INT, customer_id INT, amount INT, region VARCHAR)")
    con.execute("INSERT INTO orders VALUES (1, 1, 5, 'emea'), (2, 1, 7, 'apac')")
    sql = apply_row_filters("SELECT sum(amount) FROM (SELECT * FROM orders) t", {"main.orders": "region = 'emea'"}, DK)
    assert con.execute(sql).fetchone() == (5,)


def test_usage_enum_filtering_flags() -> None:
    assert Usage.PREDICATE.reveals_by_filtering and not Usage.PROJECTED.reveals_by_filtering


def test_taint_makes_copied_column_masked_when_read_later() -> None:
    eng = Identity("eve", frozenset({"eng"}))
    copy = decide(POLICY, eng, analyze_cell("INSERT INTO orders (id, region) SELECT id, email FROM customers", PG), "pg")
    assert copy.action == "hold"
    taints = {f"pg.{t.column.qualified}": t.classifications for t in copy.taints}
    assert taints == {"pg.public.orders.region": frozenset({"pii.email"})}
    analyst = Identity("ana", frozenset({"analysts"}), {"region": "emea"})
    before = decide(POLICY, analyst, analyze_cell("SELECT region FROM orders", PG), "pg")
    after = decide(POLICY, analyst, analyze_cell("SELECT region FROM orders", PG), "pg", taints=taints)
    assert before.masks == ()
    assert [m.column for m in after.masks] == ["region"]


def test_sql_masks_are_applied_in_the_query(postgres: object, pg_dsn: str) -> None:
    import psycopg

    from warden.masking.operators import parse_operator
    from warden.sql.sqlmask import apply_sql_masks

    op = parse_operator("sql:left({col}, 2) || '***'")
    sql = apply_sql_masks(
        "SELECT 'ada@example.org' AS email, 1 AS id, 2 AS id", ["email", "id", "id"], {0: op}, "postgres"
    )
    with psycopg.connect(pg_dsn) as con:
        row = con.execute(sql).fetchone()
    assert row == ("ad***", 1, 2)
    assert "ada@example.org" not in str(row)


def test_catalog_cache_refreshes_and_keeps_last_good() -> None:
    from warden.errors import CatalogError
    from warden.sql.catalog_live import CatalogCache

    calls: list[int] = []

    def loader():  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 3:
            raise CatalogError("database went away")
        return PG

    cache = CatalogCache(loader, ttl=3600)
    assert cache.get() is PG and cache.get() is PG
    assert len(calls) == 1
    assert cache.refresh() is PG and len(calls) == 2
    with pytest.raises(CatalogError):
        cache.refresh()
    assert cache.get() is PG  # the last good catalog is still served
