"""Live catalog loaders against a real PostgreSQL server and a real DuckDB file."""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pytest
import sqlglot
from psycopg.rows import dict_row
from sqlglot import exp

from pgserver import PostgresServer, free_port
from warden.errors import CatalogError
from warden.sql.catalog import Catalog
from warden.sql.catalog_live import (
    duckdb_view_query,
    load_catalog,
    load_duckdb_catalog,
    load_postgres_catalog,
)

PG_SETUP = """
CREATE SCHEMA "Sales";
CREATE TABLE "Sales"."Orders" (
    "OrderId" int PRIMARY KEY, "customerEmail" text, amount numeric, "Obsolete" text
);
ALTER TABLE "Sales"."Orders" DROP COLUMN "Obsolete";
ALTER TABLE "Sales"."Orders" ADD COLUMN "Region" text;
CREATE TABLE "Sales"."orders" (lower_only int);
CREATE VIEW "Sales"."BigOrders" AS
    SELECT "OrderId", "customerEmail", amount FROM "Sales"."Orders" WHERE amount > 100;
CREATE VIEW "Sales"."TopOrders" ("Id", "Email") AS
    SELECT "OrderId", "customerEmail" FROM "Sales"."BigOrders" ORDER BY amount DESC LIMIT 10;
CREATE MATERIALIZED VIEW public.region_totals AS
    SELECT "Region", sum(amount) AS total FROM "Sales"."Orders" GROUP BY "Region";
CREATE SCHEMA audit;
CREATE TABLE audit.events (id bigint, "Payload" jsonb, at timestamptz);
CREATE TABLE public.measurements (id int, taken date) PARTITION BY RANGE (taken);
CREATE TABLE public.measurements_2024 PARTITION OF public.measurements
    FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE FOREIGN DATA WRAPPER dummy_fdw;
CREATE SERVER dummy_srv FOREIGN DATA WRAPPER dummy_fdw;
CREATE FOREIGN TABLE public.remote_things (thing_id int, "Label" text) SERVER dummy_srv;
CREATE SCHEMA warden_admin;
"""


def _pg_setup(dsn: str, extra: str = "") -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(PG_SETUP + extra)


def _tables_in(sql: str, dialect: str) -> set[str]:
    tree = sqlglot.parse_one(sql, read=dialect)
    assert isinstance(tree, exp.Query), sql
    return {t.name for t in tree.find_all(exp.Table)}


def _output_names(sql: str, dialect: str) -> list[str]:
    tree = sqlglot.parse_one(sql, read=dialect)
    assert isinstance(tree, exp.Query), sql
    return list(tree.named_selects)


# --------------------------------------------------------------------------- PostgreSQL


def test_postgres_tables_columns_views_and_kinds(pg_dsn: str) -> None:
    _pg_setup(pg_dsn)
    cat = load_postgres_catalog(pg_dsn)

    assert isinstance(cat, Catalog)
    assert cat.dialect == "postgres"
    assert set(cat.relations) == {
        ("Sales", "Orders"),
        ("Sales", "orders"),
        ("Sales", "BigOrders"),
        ("Sales", "TopOrders"),
        ("public", "region_totals"),
        ("audit", "events"),
        ("public", "measurements"),
        ("public", "measurements_2024"),
        ("public", "remote_things"),
    }
    orders = cat.relations[("Sales", "Orders")]
    # Dropped column gone, added column last, names exactly as spelled.
    assert orders.columns == ("OrderId", "customerEmail", "amount", "Region")
    assert orders.kind == "table" and orders.definition is None
    assert cat.relations[("Sales", "orders")].columns == ("lower_only",)
    assert cat.get("sales", "Orders") is None  # case-sensitive, as PostgreSQL is
    assert cat.relations[("audit", "events")].columns == ("id", "Payload", "at")
    assert cat.relations[("public", "measurements")].kind == "table"  # partitioned
    assert cat.relations[("public", "measurements_2024")].columns == ("id", "taken")
    assert cat.relations[("public", "remote_things")].columns == ("thing_id", "Label")
    assert cat.relations[("public", "remote_things")].kind == "table"  # foreign

    big = cat.relations[("Sales", "BigOrders")]
    assert big.kind == "view"
    assert big.columns == ("OrderId", "customerEmail", "amount")
    assert big.definition is not None and not big.definition.endswith(";")
    assert _tables_in(big.definition, "postgres") == {"Orders"}
    assert _output_names(big.definition, "postgres") == list(big.columns)

    top = cat.relations[("Sales", "TopOrders")]
    assert top.kind == "view"
    assert top.columns == ("Id", "Email")  # renamed by the view's column list
    assert top.definition is not None
    assert _tables_in(top.definition, "postgres") == {"BigOrders"}
    assert _output_names(top.definition, "postgres") == ["Id", "Email"]

    mat = cat.relations[("public", "region_totals")]
    assert mat.kind == "view"
    assert mat.columns == ("Region", "total")
    assert mat.definition is not None
    assert _tables_in(mat.definition, "postgres") == {"Orders"}

    # Definitions are runnable SQL whose output columns are the view's columns.
    with psycopg.connect(pg_dsn) as conn:
        for rel in (big, top, mat):
            cur = conn.execute(f"SELECT * FROM ({rel.definition}) AS q LIMIT 0")
            assert tuple(d.name for d in cur.description or ()) == rel.columns

    # Fresh connection: default search_path "$user", public, and schema warden_admin exists.
    assert cat.search_path == ("warden_admin", "public")
    assert cat.resolve("region_totals") is mat


def test_postgres_uses_the_connections_search_path_and_leaves_it_alone(pg_dsn: str) -> None:
    _pg_setup(pg_dsn, "CREATE TEMP TABLE scratch (x int);")
    with psycopg.connect(pg_dsn, row_factory=dict_row) as conn:  # not autocommit
        conn.execute('SET search_path TO "$user", "Sales", nope, public')
        conn.commit()
        conn.execute("CREATE TEMP TABLE my_temp (x int)")  # open transaction
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        cat = load_postgres_catalog(conn)
        # Caller's transaction is still open and usable; row factory untouched.
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        assert conn.execute("SELECT 1 AS one").fetchone() == {"one": 1}
        conn.rollback()
    # "$user" resolved, the missing schema dropped, order kept.
    assert cat.search_path == ("warden_admin", "Sales", "public")
    assert cat.resolve("BigOrders") is cat.relations[("Sales", "BigOrders")]
    assert not any(schema.startswith("pg_temp") for schema, _ in cat.relations)
    assert ("pg_catalog", "pg_class") not in cat.relations


def test_postgres_empty_search_path_stays_empty(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("SET search_path TO ''")
        assert load_postgres_catalog(conn).search_path == ()


def test_postgres_schema_filter_is_exact(pg_dsn: str) -> None:
    _pg_setup(pg_dsn)
    only_audit = load_postgres_catalog(pg_dsn, schemas=["audit"])
    assert set(only_audit.relations) == {("audit", "events")}
    assert set(load_postgres_catalog(pg_dsn, schemas=["sales"]).relations) == set()
    both = load_postgres_catalog(pg_dsn, schemas=("Sales", "audit"))
    assert {s for s, _ in both.relations} == {"Sales", "audit"}
    system = load_postgres_catalog(pg_dsn, schemas=["information_schema"])
    assert ("information_schema", "tables") in system.relations


def test_postgres_lists_only_what_the_role_may_use(pg_dsn: str, postgres: PostgresServer) -> None:
    dbname = psycopg.conninfo.conninfo_to_dict(pg_dsn)["dbname"]
    role = f"analyst_{dbname}"[:63]
    _pg_setup(
        pg_dsn,
        f"""
        CREATE ROLE "{role}" LOGIN;
        GRANT USAGE ON SCHEMA "Sales", audit TO "{role}";
        GRANT SELECT ON "Sales"."BigOrders" TO "{role}";
        GRANT SELECT ("id") ON audit.events TO "{role}";
        """,
    )
    try:
        dsn = psycopg.conninfo.make_conninfo(postgres.conninfo_for(str(dbname)), user=role)
        cat = load_postgres_catalog(dsn)
        assert set(cat.relations) == {("Sales", "BigOrders"), ("audit", "events")}
        # A column grant makes the table visible; all its columns are listed.
        assert cat.relations[("audit", "events")].columns == ("id", "Payload", "at")
    finally:
        with postgres.connect(autocommit=True) as admin:
            admin.execute(f'DROP DATABASE "{dbname}" WITH (FORCE)')
            admin.execute(f'DROP ROLE "{role}"')


def test_load_catalog_dispatches(pg_dsn: str, tmp_path: Path) -> None:
    _pg_setup(pg_dsn)
    assert ("Sales", "Orders") in load_catalog("postgres", pg_dsn).relations
    assert ("Sales", "Orders") in load_catalog("postgresql", pg_dsn).relations
    path = tmp_path / "d.duckdb"
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE TABLE t (a int)")
    assert load_catalog("duckdb", path).relations[("main", "t")].columns == ("a",)
    with pytest.raises(CatalogError, match="unsupported dialect"):
        load_catalog("oracle", pg_dsn)


# --------------------------------------------------------------------------- secrets

PASSWORD = "Sup3r-Secret-Pa55word-9xq"


def _assert_secret_free(err: CatalogError, secret: str = PASSWORD) -> None:
    text = str(err)
    rendered = "".join(traceback.format_exception(err))
    assert secret not in text and secret not in rendered, text
    assert err.__cause__ is None and err.__suppress_context__


@pytest.mark.parametrize(
    "template",
    [
        "postgresql://warden_admin:{pw}@127.0.0.1:{port}/postgres",
        "host=127.0.0.1 port={port} user=warden_admin password={pw} dbname=postgres",
        "host=127.0.0.1 port={port} user=warden_admin password='{pw}' dbname=postgres",
    ],
)
def test_unreachable_postgres_error_hides_password(template: str) -> None:
    port = free_port()  # nothing listens there
    with pytest.raises(CatalogError) as info:
        load_postgres_catalog(template.format(pw=PASSWORD, port=port))
    msg = str(info.value)
    assert "cannot connect to PostgreSQL" in msg
    assert "127.0.0.1" in msg and str(port) in msg  # says where it tried
    _assert_secret_free(info.value)


BAD_PERCENT = "Sup3r%zzSecret-Pa55"  # not valid percent-encoding: libpq echoes it


@pytest.mark.parametrize(
    ("dsn", "secret"),
    [
        (f"host=127.0.0.1 password={PASSWORD} oops", PASSWORD),  # a bad token is echoed
        (f"host=127.0.0.1 password={PASSWORD} bogus_option=1", PASSWORD),
        (f"postgresql://u:{PASSWORD}@127.0.0.1:99999999/db", PASSWORD),
        (f"postgresql://u:{PASSWORD.replace('-', '%2D')}@127.0.0.1/db?bogus=%zz", PASSWORD),
        (f"postgresql://u:{BAD_PERCENT}@127.0.0.1/db", BAD_PERCENT),
        (f"host=127.0.0.1 port=1 password='{PASSWORD} x' dbname=db", f"{PASSWORD} x"),
    ],
)
def test_malformed_dsn_error_hides_password(dsn: str, secret: str) -> None:
    with pytest.raises(CatalogError) as info:
        load_postgres_catalog(dsn)
    _assert_secret_free(info.value, secret)


def test_wrong_password_error_hides_it() -> None:
    with PostgresServer(host_auth="scram-sha-256") as server:
        good = server.conninfo_for("postgres")
        assert load_postgres_catalog(good).search_path == ("public",)
        bad = psycopg.conninfo.make_conninfo(good, password=PASSWORD)
        with pytest.raises(CatalogError, match="password authentication failed") as info:
            load_postgres_catalog(bad)
        _assert_secret_free(info.value)
        _assert_secret_free(info.value, server.password)


# --------------------------------------------------------------------------- DuckDB

DUCK_SETUP = """
CREATE SCHEMA "Sales";
CREATE TABLE "Sales"."Orders" ("OrderId" INTEGER, "customerEmail" VARCHAR, amount DECIMAL(10,2));
CREATE TABLE main.customers (id INTEGER, "FullName" VARCHAR, email VARCHAR);
CREATE VIEW "Sales"."BigOrders" AS
    SELECT "OrderId", "customerEmail", amount FROM "Sales"."Orders" WHERE amount > 100;
CREATE VIEW "Sales"."TopOrders" AS
    SELECT "OrderId" AS "Id", amount FROM "Sales"."BigOrders" ORDER BY amount DESC LIMIT 10;
CREATE VIEW main.renamed ("CustId", "Name") AS SELECT id, "FullName", email FROM customers;
CREATE VIEW main.starry (a, b) AS SELECT * FROM customers;
CREATE VIEW main.unioned (who) AS SELECT email FROM customers UNION SELECT "customerEmail"
    FROM "Sales"."Orders";
"""


@pytest.fixture
def duck_path(tmp_path: Path) -> Path:
    path = tmp_path / "warehouse.duckdb"
    with duckdb.connect(str(path)) as con:
        con.execute(DUCK_SETUP)
    return path


def _duck_columns(con: Any, sql: str) -> tuple[str, ...]:
    con.execute(f"SELECT * FROM ({sql}) AS q LIMIT 0")
    return tuple(d[0].lower() for d in con.description)


def test_duckdb_tables_views_and_definitions(duck_path: Path) -> None:
    cat = load_duckdb_catalog(str(duck_path))  # read-only by default
    assert cat.dialect == "duckdb"
    assert set(cat.relations) == {
        ("sales", "orders"),
        ("main", "customers"),
        ("sales", "bigorders"),
        ("sales", "toporders"),
        ("main", "renamed"),
        ("main", "starry"),
        ("main", "unioned"),
    }
    orders = cat.get("Sales", "Orders")
    assert orders is not None and orders.kind == "table"
    assert orders.columns == ("orderid", "customeremail", "amount")
    assert cat.relations[("main", "customers")].columns == ("id", "fullname", "email")

    big = cat.relations[("sales", "bigorders")]
    assert big.kind == "view" and big.definition is not None
    assert not big.definition.upper().startswith("CREATE")
    assert {t.lower() for t in _tables_in(big.definition, "duckdb")} == {"orders"}

    top = cat.relations[("sales", "toporders")]
    assert top.columns == ("id", "amount")
    assert top.definition is not None
    assert {t.lower() for t in _tables_in(top.definition, "duckdb")} == {"bigorders"}

    renamed = cat.relations[("main", "renamed")]
    assert renamed.columns == ("custid", "name", "email")
    assert renamed.definition is not None
    assert [n.lower() for n in _output_names(renamed.definition, "duckdb")] == list(renamed.columns)
    assert cat.relations[("main", "starry")].columns == ("a", "b", "email")
    assert cat.relations[("main", "unioned")].columns == ("who",)

    # Every definition runs and yields exactly the view's columns, in order.
    with duckdb.connect(str(duck_path), read_only=True) as con:
        for rel in cat.relations.values():
            if rel.kind == "view":
                assert rel.definition is not None
                assert _duck_columns(con, rel.definition) == rel.columns, rel.name

    assert cat.search_path == ("main",)
    assert cat.resolve("customers") is cat.relations[("main", "customers")]


def test_duckdb_connection_skips_temp_internal_and_attached(
    duck_path: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other.duckdb"
    with duckdb.connect(str(duck_path)) as con:
        con.execute("CREATE TEMP TABLE scratch (x INTEGER)")
        con.execute("CREATE TEMP VIEW scratch_v AS SELECT 1 AS x")
        con.execute(f"ATTACH '{other}' AS other")
        con.execute("CREATE TABLE other.main.elsewhere (y INTEGER)")
        con.execute("SET search_path = '\"Sales\",other.main,main'")
        cat = load_duckdb_catalog(con)
        # The caller's connection is still open.
        assert con.execute("SELECT count(*) FROM scratch").fetchone() == (0,)
    names = {name for _, name in cat.relations}
    assert "scratch" not in names and "scratch_v" not in names
    assert "elsewhere" not in names
    assert not any(schema in ("information_schema", "pg_catalog") for schema, _ in cat.relations)
    assert cat.search_path == ("sales", "main")  # other database's entry dropped


def test_duckdb_missing_file_is_catalog_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.duckdb"
    with pytest.raises(CatalogError, match="cannot open DuckDB database"):
        load_duckdb_catalog(missing)
    assert not missing.exists()  # read-only: never created


def test_duckdb_view_query_strips_create() -> None:
    assert duckdb_view_query("CREATE VIEW v AS SELECT 1 AS a;") == "SELECT 1 AS a"
    q = duckdb_view_query('CREATE VIEW v (x) AS SELECT "A", b FROM t;')
    assert q is not None and _output_names(q, "duckdb") == ["x", "b"]
    assert duckdb_view_query("SELECT 1") is None
    assert duckdb_view_query("this is not sql (") is None
