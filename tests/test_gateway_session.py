"""A cell's session state (search path, settings) is its own.

The executors run each statement under the search path and settings its analysis
resolved it with, and never leave them on a shared or pooled connection: with one
pooled connection of each kind, a statement that ran under ``search_path = sales``
and ``timezone = Pacific/Apia`` is followed by one that must see the defaults.
Real PostgreSQL, real DuckDB file.
"""

from __future__ import annotations

import threading
from pathlib import Path

import duckdb
import psycopg

from warden.gateway.execute import DuckDBExecutor, Limits, PostgresExecutor, Session

SALES = Session(search_path=("sales", "public"), settings=(("timezone", "Pacific/Apia"),))


def _one(result: object) -> object:
    table = None
    batches = list(result.batches)  # type: ignore[attr-defined]
    if result.close is not None:  # type: ignore[attr-defined]
        result.close()  # type: ignore[attr-defined]
    if batches:
        import pyarrow as pa

        table = pa.Table.from_batches(batches)
    assert table is not None and table.num_rows == 1
    return table.column(0)[0].as_py()


def test_postgres_session_is_applied_per_statement_and_never_left_behind(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as con:
        con.execute("CREATE SCHEMA sales")
        con.execute("CREATE TABLE sales.leads (id int)")
        con.execute("INSERT INTO sales.leads VALUES (1), (2)")
        con.execute("CREATE TABLE public.only_public (id int)")
    ex = PostgresExecutor(pg_dsn, pool_size=1, result_connections=1)
    limits = Limits(statement_timeout_ms=5000)
    try:
        stop = threading.Event()
        # ADBC path (results) under the cell's session.
        got = _one(ex.run("SELECT count(*) FROM leads", (), limits, stop, returns_rows=True, session=SALES))
        assert got == 2
        tz = _one(ex.run("SELECT current_setting('TimeZone')", (), limits, stop, returns_rows=True, session=SALES))
        assert tz == "Pacific/Apia"
        # The next statement on the same (only) connection sees none of it.
        tz = _one(ex.run("SELECT current_setting('TimeZone')", (), limits, stop, returns_rows=True))
        assert tz != "Pacific/Apia"
        path = _one(ex.run("SELECT current_setting('search_path')", (), limits, stop, returns_rows=True))
        assert "sales" not in str(path)
        # psycopg path (commands): transaction-local.
        done = ex.run("INSERT INTO leads VALUES (3)", (), limits, stop, returns_rows=False, session=SALES)
        assert done.rowcount == 1
        with psycopg.connect(pg_dsn) as con:
            row = con.execute("SELECT count(*) FROM sales.leads").fetchone()
        assert row is not None and row[0] == 3
        failed = False
        try:
            ex.run("INSERT INTO leads VALUES (4)", (), limits, stop, returns_rows=False)
        except Exception as exc:  # the default path has no leads: the session did not stay
            failed = "leads" in str(exc)
        assert failed
        assert ex.estimate_rows("SELECT * FROM leads", (), session=SALES) is not None
        assert ex.estimate_rows("SELECT * FROM leads", ()) is None
    finally:
        ex.close()


def test_duckdb_session_is_applied_per_statement(tmp_path: Path) -> None:
    path = tmp_path / "s.duckdb"
    db = duckdb.connect(str(path))
    db.execute("CREATE SCHEMA sales")
    db.execute("CREATE TABLE sales.leads (id INTEGER)")
    db.execute("INSERT INTO sales.leads VALUES (1), (2)")
    db.close()
    ex = DuckDBExecutor(path)
    limits = Limits(statement_timeout_ms=5000)
    stop = threading.Event()
    try:
        session = Session(search_path=("sales", "main"))
        assert _one(ex.run("SELECT count(*) FROM leads", (), limits, stop, returns_rows=True, session=session)) == 2
        failed = False
        try:
            _one(ex.run("SELECT count(*) FROM leads", (), limits, stop, returns_rows=True))
        except Exception as exc:
            failed = "leads" in str(exc)
        assert failed
    finally:
        ex.close()


def test_a_database_that_went_down_gives_no_estimate_quickly() -> None:
    # The row estimate must not wait for the pool's 30 s timeout: no estimate (the cell
    # is then held and audited as such, fail closed) within a few seconds.
    import time

    from pgserver import PostgresServer

    with PostgresServer() as server:
        dsn = server.create_database(prefix="down")
        ex = PostgresExecutor(dsn, pool_size=1, result_connections=1)
        try:
            assert ex.estimate_rows("SELECT 1", ()) is not None
            server.pause()  # stopped by pid; data kept
            started = time.monotonic()
            assert ex.estimate_rows("SELECT 1", ()) is None
            assert time.monotonic() - started < 15
        finally:
            ex.close()
