"""Small results: what the analysis proves about a result's size, and the executor's
whole-result path for PostgreSQL.

``row_bound`` is an upper bound on the rows a statement returns, proven from its text
(a literal LIMIT, or one row: aggregates without GROUP BY, or no FROM, and nothing
that could return a set). ``limit`` (a policy fact) is the LIMIT only when it caps the
row count: ``LIMIT 10 PERCENT`` and ``FETCH ... WITH TIES`` cap nothing.

A PostgreSQL statement with ``row_bound <= WHOLE_RESULT_ROWS`` (one row) is read with
a plain query instead of COPY; it must return the same Arrow types and values, and the
database's own log shows which way it ran: a LIMIT of two already streams. Real
PostgreSQL.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pytest
from psycopg import sql as pgsql

from arrow_results import read_table
from pgserver import PostgresServer
from warden.gateway.execute import WHOLE_RESULT_ROWS, Limits, PostgresExecutor
from warden.sql.analyze import analyze_cell
from warden.sql.catalog import catalog_from_mapping

# (sql, limit fact, row_bound): the same on both dialects.
BOUNDS: list[tuple[str, int | None, int | None]] = [
    ("SELECT a FROM t", None, None),
    ("SELECT a FROM t LIMIT 5", 5, 5),
    ("SELECT * FROM t LIMIT 3 OFFSET 10", 3, 3),
    ("SELECT a FROM t LIMIT 0", 0, 0),
    ("SELECT a FROM t UNION ALL SELECT a FROM t LIMIT 7", 7, 7),
    ("SELECT a FROM t ORDER BY a FETCH FIRST 4 ROWS ONLY", 4, 4),
    # Caps nothing: every row tied with the 4th comes too; a share of the rows.
    ("SELECT a FROM t ORDER BY a FETCH FIRST 4 ROWS WITH TIES", None, None),
    ("SELECT a FROM t LIMIT 10 PERCENT", None, None),
    ("SELECT count(*) FROM t", None, 1),
    ("SELECT count(DISTINCT a), max(b) FROM t WHERE a > 2", None, 1),
    ("SELECT sum(a) + 1 AS s, CAST(count(*) AS TEXT) FROM t", None, 1),
    ("SELECT CASE WHEN count(*) > 0 THEN 'y' ELSE 'n' END FROM t", None, 1),
    ("SELECT count(*) FROM t LIMIT 0", 0, 0),
    ("SELECT 1", None, 1),
    ("SELECT 1 AS x, 'two' AS y", None, 1),
    # A set-returning function in the SELECT list makes many rows of one.
    ("SELECT count(*), unnest([1, 2]) FROM t", None, None),
    ("SELECT generate_series(1, 3)", None, None),
    ("SELECT unnest([1, 2, 3])", None, None),
    # Unknown shapes: grouped, windowed, filtered aggregates, scalar subqueries.
    ("SELECT a, count(*) FROM t GROUP BY a", None, None),
    ("SELECT count(*) OVER () FROM t", None, None),
    ("SELECT count(*) FILTER (WHERE a > 1) FROM t", None, None),
    ("SELECT (SELECT max(a) FROM t) AS m FROM t", None, None),
    ("SELECT a FROM t WHERE a = 1", None, None),
]


@pytest.mark.parametrize("dialect", ["postgres", "duckdb"])
@pytest.mark.parametrize(("sql", "limit", "bound"), BOUNDS)
def test_row_bound_and_limit_are_what_the_text_proves(dialect: str, sql: str, limit: int | None, bound: int | None) -> None:
    if dialect == "postgres":
        sql = sql.replace("[", "ARRAY[")
    catalog = catalog_from_mapping({"t": ["a", "b"]}, dialect=dialect)
    st = analyze_cell(sql, catalog, cache=None).statements[0]
    assert (st.limit, st.row_bound) == (limit, bound), sql


def test_a_cached_analysis_keeps_the_bound_of_its_own_limit() -> None:
    catalog = catalog_from_mapping({"t": ["a", "b"]}, dialect="postgres")
    small = analyze_cell("SELECT a FROM t LIMIT 10", catalog).statements[0]
    large = analyze_cell("SELECT a FROM t LIMIT 100000", catalog).statements[0]
    assert (small.row_bound, large.row_bound) == (10, 100000)


# Every type a result column commonly has, NULLs and edge values included.
TYPED = [
    "1::int2", "2::int4", "3::int8", "1.5::numeric", "'123456789012345678901234567890.123'::numeric",
    "'NaN'::numeric", "'t'::text", "'v'::varchar(3)", "'c'::char(3)", "true", "'2024-01-02'::date",
    "'2024-01-02 03:04:05.123456'::timestamp", "'2024-01-02 03:04:05+02'::timestamptz",
    "'1 year 2 mons 3 days 04:05:06'::interval", "'\\x0102'::bytea", "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid",
    "'{\"a\": 1}'::json", "'{\"a\": 1}'::jsonb", "ARRAY[1, 2]", "ARRAY['a', 'b']", "'{1,NULL}'::int[]",
    "1.5::float4", "'Infinity'::float8", "'12:34:56'::time", "'12:00+01'::timetz", "'10.0.0.1'::inet",
    "'1'::money", "NULL::int", "NULL::text", "'a'::name", "'x'::\"char\"", "B'101'", "'1'::oid",
    "'[1,3)'::int4range", "'infinity'::timestamp", "'-infinity'::date", "'café ☕'::text",
]  # fmt: skip


_table = read_table


@pytest.fixture
def executor(pg_dsn: str) -> Iterator[PostgresExecutor]:
    ex = PostgresExecutor(pg_dsn, pool_size=1, result_connections=1)
    try:
        yield ex
    finally:
        ex.close()


def test_a_whole_result_has_the_same_types_and_values_as_a_streamed_one(executor: PostgresExecutor) -> None:
    limits, stop = Limits(statement_timeout_ms=10_000), threading.Event()
    for expr in TYPED:
        query = f"SELECT {expr} AS v, {expr} AS w"
        streamed = _table(executor.run(query, (), limits, stop, returns_rows=True))
        whole = _table(executor.run(query, (), limits, stop, returns_rows=True, row_bound=1))
        assert whole.schema.equals(streamed.schema, check_metadata=True), expr
        assert whole.equals(streamed), expr
    # Bind parameters.
    query = "SELECT g, 'n' || g AS name, g * $2::numeric AS x FROM generate_series($1::int, 10) g ORDER BY g LIMIT 1"
    streamed = _table(executor.run(query, (7, "1.5"), limits, stop, returns_rows=True))
    whole = _table(executor.run(query, (7, "1.5"), limits, stop, returns_rows=True, row_bound=1))
    row = whole.to_pylist()
    assert len(row) == 1 and (row[0]["g"], row[0]["name"], str(row[0]["x"])) == (7, "n7", "10.5"), row
    assert whole.equals(streamed)


def test_errors_and_cancel_work_on_the_whole_result_path(executor: PostgresExecutor) -> None:
    from warden.gateway.execute import ExecutionError

    limits, stop = Limits(statement_timeout_ms=10_000), threading.Event()
    with pytest.raises(ExecutionError) as err:
        _table(executor.run("SELECT 1 / 0 LIMIT 1", (), limits, stop, returns_rows=True, row_bound=1))
    assert "division by zero" in str(err.value)
    # The statement timeout still ends a slow one.
    with pytest.raises(ExecutionError) as err:
        _table(executor.run("SELECT pg_sleep(5) LIMIT 1", (), Limits(statement_timeout_ms=200), stop, returns_rows=True, row_bound=1))
    assert "timeout" in str(err.value).lower() or "cancel" in str(err.value).lower()
    # The pooled connection is usable afterwards.
    assert _table(executor.run("SELECT 7 AS v", (), limits, stop, returns_rows=True, row_bound=1)).column(0).to_pylist() == [7]


def test_the_database_log_shows_copy_only_for_unbounded_results(postgres: PostgresServer, pg_dsn: str) -> None:
    dbname = pg_dsn.rsplit("/", 1)[-1].split("?", 1)[0]
    import psycopg

    with psycopg.connect(pg_dsn, autocommit=True) as con:
        con.execute(pgsql.SQL("ALTER DATABASE {} SET log_statement = 'all'").format(pgsql.Identifier(dbname)))
    ex = PostgresExecutor(pg_dsn, pool_size=1, result_connections=1)  # new connections: the setting applies
    limits, stop = Limits(statement_timeout_ms=10_000), threading.Event()
    marks = {name: uuid.uuid4().hex for name in ("bounded", "just_over", "unbounded")}
    try:
        _table(ex.run(f"SELECT 1 AS {'m' + marks['bounded']} LIMIT {WHOLE_RESULT_ROWS}", (), limits, stop, returns_rows=True, row_bound=WHOLE_RESULT_ROWS))
        _table(ex.run(f"SELECT 1 AS {'m' + marks['just_over']} LIMIT {WHOLE_RESULT_ROWS + 1}", (), limits, stop,
                      returns_rows=True, row_bound=WHOLE_RESULT_ROWS + 1))  # fmt: skip
        _table(ex.run(f"SELECT 1 AS {'m' + marks['unbounded']}", (), limits, stop, returns_rows=True))
    finally:
        ex.close()
    log = postgres.log_path.read_text(errors="replace")
    statements = {name: [line for line in log.splitlines() if "LOG:" in line and mark in line] for name, mark in marks.items()}
    assert statements["bounded"] and not any("COPY" in line for line in statements["bounded"]), statements
    assert statements["just_over"] and all("COPY" in line for line in statements["just_over"]), statements
    assert statements["unbounded"] and all("COPY" in line for line in statements["unbounded"]), statements


def test_composites_take_the_same_fallback_on_the_whole_result_path(executor: PostgresExecutor, pg_dsn: str) -> None:
    import psycopg

    with psycopg.connect(pg_dsn, autocommit=True) as con:
        con.execute("CREATE TABLE customers (id int, name text)")
        con.execute("INSERT INTO customers VALUES (1, 'a'), (2, 'b')")
    limits, stop = Limits(statement_timeout_ms=10_000), threading.Event()
    for query in ("SELECT c FROM customers c ORDER BY id DESC LIMIT 1", "SELECT id, ROW(id, name) AS r FROM customers ORDER BY id DESC LIMIT 1"):
        streamed = _table(executor.run(query, (), limits, stop, returns_rows=True, retry_safe=True))
        whole = _table(executor.run(query, (), limits, stop, returns_rows=True, retry_safe=True, row_bound=1))
        assert whole.equals(streamed) and whole.schema.equals(streamed.schema), query
        assert '"name": "b"' in str(whole.to_pylist()) or '"f2": "b"' in str(whole.to_pylist()), whole.to_pylist()
