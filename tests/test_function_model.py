"""The function model: the per-engine allow tables, names as typed, unknown means denied."""

from __future__ import annotations

import duckdb
import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine_fixtures import DIALECTS, fixture_catalog, fixture_policy
from warden.errors import PolicyError
from warden.policy.engine import Identity, decide
from warden.policy.model import parse_policy
from warden.sql.analyze import analyze_cell
from warden.sql.catalog import Catalog, Relation
from warden.sql.catalog_live import load_duckdb_catalog, load_postgres_catalog
from warden.sql.functions import DANGEROUS, FunctionClass, function_table

POLICY = fixture_policy()
ANA = Identity("ana", frozenset({"analysts"}), {"region": "emea"})


def _listed(dialect: str) -> dict[str, FunctionClass]:
    table = function_table(dialect)
    names = {n: i.kind for n, i in table.scalars.items() if i.kind is not FunctionClass.SYNTAX}
    names.update({n: i.kind for n, i in table.tables.items()})
    return names


def test_every_postgres_function_exists_in_the_engine(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as con:
        rows = con.execute(
            "SELECT p.proname, bool_or(p.proretset) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname = 'pg_catalog' GROUP BY 1"
        ).fetchall()
    engine = {name: retset for name, retset in rows}
    listed = _listed("postgres")
    missing = sorted(n for n in listed if n not in engine)
    assert not missing, f"listed for PostgreSQL but not in pg_proc: {missing}"
    # Table functions really return sets (those that take a column definition list
    # may return one record).
    table = function_table("postgres")
    not_sets = sorted(
        n for n, k in listed.items()
        if k is FunctionClass.TABLE and not engine[n] and table.tables[n].columns != ("*definition",)
    )  # fmt: skip
    assert not not_sets, not_sets


def test_every_duckdb_function_exists_in_the_pinned_engine() -> None:
    assert duckdb.__version__ == "2.0.1", "the DuckDB function table is pinned to 2.0.1: review it for the new version"
    con = duckdb.connect()
    engine = {r[0] for r in con.execute("SELECT DISTINCT function_name FROM duckdb_functions()").fetchall()}
    missing = sorted(n for n in _listed("duckdb") if n not in engine)
    assert not missing, f"listed for DuckDB but not in duckdb_functions(): {missing}"


@pytest.mark.parametrize("dialect", sorted(DIALECTS))
def test_no_dangerous_function_is_listed(dialect: str) -> None:
    listed = set(_listed(dialect))
    assert not listed & DANGEROUS
    for name in listed:
        assert not name.startswith(("pg_read", "read_", "query", "lo_", "dblink", "duckdb_", "pragma_")), name


_NAMES = st.from_regex(r"[a-z][a-z0-9_]{2,20}", fullmatch=True)


@settings(max_examples=150, deadline=None)
@given(name=_NAMES, dialect=st.sampled_from(sorted(DIALECTS)), with_column=st.booleans())
def test_a_function_the_table_does_not_know_is_denied(name: str, dialect: str, with_column: bool) -> None:
    table = function_table(dialect)
    if table.scalar(name) or table.table(name) or name in DANGEROUS:
        return
    arg = "name" if with_column else "1"
    sql = f"SELECT {name}({arg}) AS x FROM customers"
    decision = decide(POLICY, ANA, analyze_cell(sql, fixture_catalog(dialect)), DIALECTS[dialect][0])
    assert decision.action == "deny", (sql, decision.summary)
    # Some names are SQL keywords and fail to parse; either way nothing runs.
    assert any(r.startswith("fail-closed/") for r in decision.rule_ids), decision.rule_ids


@pytest.mark.parametrize(
    ("dialect", "sql", "name"),
    [
        ("postgres", "SELECT now() AS x", "now"),
        ("postgres", "SELECT string_agg(name, ',') AS x FROM customers", None),
        ("postgres", 'SELECT "lower"(name) AS x FROM customers', None),
        ("postgres", "SELECT pg_catalog.lower(name) AS x FROM customers", None),
        ("duckdb", "SELECT list_transform([1, 2], x -> x + 1) AS x", None),
        ("duckdb", "SELECT strftime(now(), '%Y') AS x", None),
    ],
)
def test_builtins_written_any_way_are_known(dialect: str, sql: str, name: str | None) -> None:
    analysis = analyze_cell(sql, fixture_catalog(dialect), cache=None)
    st0 = analysis.statements[0]
    assert not st0.functions and not st0.unresolved and not analysis.unresolved, (st0.functions, st0.unresolved)


@pytest.mark.parametrize("dialect", sorted(DIALECTS))
def test_a_user_function_that_shadows_a_builtin_is_opaque(dialect: str) -> None:
    schema = DIALECTS[dialect][1]
    catalog = Catalog.build(dialect, [Relation(schema, "customers", ("id", "name", "ssn"))], user_functions=[(schema, "lower")])
    analysis = analyze_cell("SELECT lower(name) AS x FROM customers", catalog, cache=None)
    assert analysis.statements[0].functions == ("lower",)
    plain = Catalog.build(dialect, [Relation(schema, "customers", ("id", "name", "ssn"))])
    assert analyze_cell("SELECT lower(name) AS x FROM customers", plain, cache=None).statements[0].functions == ()


def test_live_catalogs_load_user_functions(pg_dsn: str, tmp_path: object) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as con:
        con.execute("CREATE SCHEMA crm")
        con.execute("CREATE FUNCTION crm.ssn_of(i int) RETURNS text LANGUAGE sql AS 'SELECT ''x'''")
        # An extension's functions are the admin's code: citext's lower(citext) does
        # not make every lower() call opaque.
        con.execute("CREATE EXTENSION IF NOT EXISTS citext")
    pg = load_postgres_catalog(pg_dsn)
    assert {"ssn_of", "crm.ssn_of"} <= pg.user_functions
    assert "lower" not in pg.user_functions and "citext_eq" not in pg.user_functions
    con = duckdb.connect()
    con.execute("CREATE MACRO twice(x) AS x * 2")
    dk = load_duckdb_catalog(con)
    assert {"twice", "main.twice"} <= dk.user_functions
    assert "lower" not in dk.user_functions


def test_functions_section_errors_carry_line_numbers() -> None:
    base = """version: 1
connections:
  pg: {dialect: postgres, dsn_env: X}
functions:
  pg.public.f: {reads: [pg.public.t.*]}
roles:
  r: {members: {groups: [g]}, statements: [select]}
"""
    with pytest.raises(PolicyError) as err:
        parse_policy(base, source="p.yaml")
    assert "p.yaml:5" in str(err.value) and "no globs" in str(err.value)
    with pytest.raises(PolicyError) as err:
        parse_policy(base.replace("pg.public.f:", "nope.public.f:").replace("pg.public.t.*", "pg.public.t.c"), source="p.yaml")
    assert "p.yaml:5" in str(err.value) and "connection" in str(err.value)
    with pytest.raises(PolicyError) as err:
        parse_policy(base.replace("reads: [pg.public.t.*]", "read: []"), source="p.yaml")
    assert "p.yaml:5" in str(err.value)
    ok = parse_policy(base.replace("pg.public.t.*", "pg.public.t.c"), source="p.yaml")
    assert ok.functions["pg.public.f"].reads == ("pg.public.t.c",)
