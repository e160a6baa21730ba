"""Running statements against the databases: PostgreSQL and DuckDB.

Results leave the database as Arrow record batches, never as a Python object per
value: PostgreSQL through ADBC (libpq's binary COPY into Arrow; the fastest path
measured, see benchmarks/bench_gateway.py), DuckDB natively. Control work
(DML, DDL, EXPLAIN estimates, cancellation) goes through psycopg.

Every statement runs with the role's limits: a statement timeout, a read-only
transaction for roles that only read, and a cap on rows and bytes (the caller
learns the result was truncated).
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pyarrow as pa

from warden.errors import WardenError
from warden.gateway import copy_read
from warden.gateway.errors_redact import redact_db_error


class ExecutionError(WardenError):
    """The database refused or failed a statement, or the gateway stopped it (fail closed).

    A database's own text arrives here only redacted (``errors_redact``): errors are data.
    """

    def __init__(self, message: str, *, code: str = "execution-failed", sqlstate: str | None = None) -> None:
        self.code = code
        self.sqlstate = sqlstate
        super().__init__(message)


class Cancelled(ExecutionError):
    def __init__(self) -> None:
        super().__init__("the query was cancelled", code="cancelled")


@dataclass(frozen=True)
class Limits:
    statement_timeout_ms: int = 0  # 0: no timeout
    max_rows: int = 0  # 0: unlimited
    max_bytes: int = 0  # 0: unlimited
    read_only: bool = False


@dataclass(frozen=True)
class Session:
    """The session state a statement was analysed under: the search path and the
    settings a SET earlier in its cell put in force. Applied around that statement
    only (transaction-local, or on a connection of its own), so that one user's SET
    never reaches another user's statement on a shared or pooled connection, and
    what runs resolves names exactly as the analysis did."""

    search_path: tuple[str, ...] = ()
    settings: tuple[tuple[str, str], ...] = ()

    def pg_assignments(self) -> list[tuple[str, str]]:
        out = []
        if self.search_path:
            out.append(("search_path", ", ".join('"' + s.replace('"', '""') + '"' for s in self.search_path)))
        out.extend((_PG_SETTING_NAMES.get(name, name), value) for name, value in self.settings)
        return out

    def pg_sql(self, *, local: bool) -> tuple[str, list[str]] | None:
        """One ``SELECT set_config(...)`` for every assignment, or None."""
        pairs = self.pg_assignments()
        if not pairs:
            return None
        flag = "true" if local else "false"
        sql = "SELECT " + ", ".join(f"set_config(%s, %s, {flag})" for _ in pairs)
        return sql, [x for pair in pairs for x in pair]

    def duckdb_statements(self) -> list[str]:
        out = []
        if self.search_path:
            out.append("SET search_path = " + _sql_string(",".join(self.search_path)))
        out.extend(f"SET {name} = {_sql_string(value)}" for name, value in self.settings)
        return out


_PG_SETTING_NAMES = {"time zone": "timezone"}


_ESTIMATE_WAIT_S = 3.0


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@dataclass
class StatementResult:
    """One statement's outcome: a stream of batches (queries) or a row count (others)."""

    schema: pa.Schema | None
    batches: Iterator[pa.RecordBatch]
    rowcount: int = -1
    close: Any = None  # callable releasing the database resources


class Executor:
    """Runs statements for one connection of the policy."""

    dialect = ""

    def run(
        self,
        sql: str,
        params: Sequence[Any],
        limits: Limits,
        cancel: threading.Event,
        *,
        returns_rows: bool,
        retry_safe: bool = False,
        session: Session = Session(),
        writes: bool = False,
        row_bound: int | None = None,
    ) -> StatementResult:  # pragma: no cover - interface
        """Run one statement. ``row_bound``: at most this many rows come back, as the
        analysis proved it from the text (a literal LIMIT, an aggregate without GROUP
        BY); an executor may read such a small result in one piece."""
        raise NotImplementedError

    def estimate_rows(self, sql: str, params: Sequence[Any], *, session: Session = Session()) -> int | None:
        return None

    def describe_origins(
        self, sql: str, *, timeout_ms: int = 0, key: str = "", session: Session = Session()
    ) -> list[tuple[str, str, str] | None] | None:
        """Per result column, the base-table column it is a plain reference to (schema,
        table, column), as the database itself resolves the query; None where it is not
        one. None for all: the engine cannot tell without running the query."""
        return None

    def close(self) -> None:
        return None


class DuckDBExecutor(Executor):
    """A DuckDB file. DuckDB allows one writing process per file: the gateway is it."""

    dialect = "duckdb"

    def __init__(self, path: str | Path, *, read_only: bool = False) -> None:
        import duckdb

        self.path = str(path)
        self._db = duckdb.connect(self.path, read_only=read_only)
        self._lock = threading.Lock()

    def run(
        self,
        sql: str,
        params: Sequence[Any],
        limits: Limits,
        cancel: threading.Event,
        *,
        returns_rows: bool,
        retry_safe: bool = False,
        session: Session = Session(),
        writes: bool = False,
        row_bound: int | None = None,
    ) -> StatementResult:
        import duckdb

        con = self._db.cursor()  # a cursor is its own connection to the same database
        watcher = _Watcher(cancel, con.interrupt)
        if limits.statement_timeout_ms:
            watcher.deadline(limits.statement_timeout_ms / 1000)

        def fail(exc: BaseException) -> ExecutionError:
            watcher.stop()
            with contextlib.suppress(Exception):
                con.close()
            if watcher.timed_out:
                return ExecutionError(f"statement timeout ({limits.statement_timeout_ms} ms) reached", code="timeout")
            if isinstance(exc, duckdb.InterruptException) or cancel.is_set():
                return Cancelled()
            return ExecutionError(redact_db_error(str(exc)))

        try:
            for setting in session.duckdb_statements():  # this cursor's own session
                con.execute(setting)
            if not returns_rows:
                cur = con.execute(sql, list(params) if params else None)
                row = cur.fetchone() if cur.description else None
                watcher.stop()
                con.close()
                count = int(row[0]) if row and isinstance(row[0], int) else -1
                return StatementResult(None, iter(()), rowcount=count)
            reader = con.sql(sql, params=list(params) if params else None).to_arrow_reader(65536)
        except duckdb.Error as exc:
            raise fail(exc) from None

        def batches() -> Iterator[pa.RecordBatch]:
            try:
                for batch in reader:
                    if cancel.is_set():
                        raise Cancelled()
                    yield batch
            except duckdb.Error as exc:
                raise fail(exc) from None
            except pa.ArrowException as exc:
                raise fail(exc) from None

        def close() -> None:
            watcher.stop()
            with contextlib.suppress(Exception):
                con.close()

        return StatementResult(reader.schema, batches(), close=close)

    def estimate_rows(self, sql: str, params: Sequence[Any], *, session: Session = Session()) -> int | None:
        import json

        import duckdb

        con = self._db.cursor()
        try:
            for setting in session.duckdb_statements():
                con.execute(setting)
            rows = con.execute("EXPLAIN (FORMAT JSON) " + sql, list(params) if params else None).fetchall()
            plan = json.loads(rows[0][1]) if rows else None
        except (duckdb.BinderException, duckdb.CatalogException):
            # The query does not bind (a missing GROUP BY, a type error): run, it fails the
            # same way with DuckDB's own message and returns no row. Holding it would make
            # an approver sign off on an error.
            return 0
        except (duckdb.Error, ValueError, IndexError):
            return None
        finally:
            con.close()
        if not plan or not isinstance(plan, list):
            return None
        return _duckdb_cardinality(plan[0])

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._db.close()


def _duckdb_cardinality(node: Any) -> int | None:
    """DuckDB's own estimate for a plan: an ``EMPTY_RESULT`` plan (``WHERE id < 0``,
    ``LIMIT 0``: the optimizer proved it empty) is 0 rows; a node without an estimate
    (a projection on top) takes its only child's, an upper bound; else unknown."""
    while isinstance(node, dict):
        if node.get("name") == "EMPTY_RESULT":
            return 0
        info = node.get("extra_info")
        value = info.get("Estimated Cardinality") if isinstance(info, dict) else None
        if value is not None:
            try:
                return int(str(value).lstrip("~"))
            except ValueError:
                return None
        children = node.get("children") or []
        if len(children) != 1:
            return None
        node = children[0]
    return None


# A result of at most this many rows (as the analysis proves it) is read with a plain
# query instead of COPY: cheaper (1 row: 0.12 vs 0.28 ms, half of PostgreSQL's CPU),
# same Arrow types and values (a test compares them type by type). The whole result is
# buffered in libpq, so only one row: COPY must hold a whole row too, but reading 100
# rows whole would let one query hold 100 rows of up to 1 GB each (streamed, they come
# a batch at a time and max_bytes stops them).
WHOLE_RESULT_ROWS: Final = 1
_USE_COPY: Final = "adbc.postgresql.use_copy"


class PostgresExecutor(Executor):
    """PostgreSQL: ADBC for results (Arrow straight from libpq), psycopg for the rest."""

    dialect = "postgres"

    def __init__(self, dsn: str, *, pool_size: int = 8, result_connections: int = 16) -> None:
        from psycopg_pool import ConnectionPool

        self._dsn = dsn
        # check_connection on checkout: a server restart must not hand out dead sessions.
        self._pool = ConnectionPool(
            dsn, min_size=1, max_size=pool_size, open=False, kwargs={"autocommit": False},
            check=ConnectionPool.check_connection,
        )  # fmt: skip
        self._pool.open(wait=False)
        self._adbc: list[Any] = []
        self._results_lock = threading.Lock()
        # At most ``result_connections`` result streams at once; more requests wait
        # for one (opening a connection per request would cost more than waiting).
        self._result_slots = threading.BoundedSemaphore(result_connections)
        self._result_connections = result_connections
        self._in_use = 0  # result connections checked out (under _results_lock)
        # Plain reads whose columns the C COPY decoder knows (copy_read): its own libpq
        # connections, in the same slots and under the same lock as ADBC's.
        self._copy_module = copy_read.module()
        self._copy: list[Any] = []
        self._copy_unsupported = copy_read.UnsupportedShapes()
        self._applied: dict[int, tuple[int, str, Session]] = {}  # id(connection) -> session limits set
        # Row descriptions of recent statements (describe_origins): a repeated query costs
        # no round trip. Short-lived, like the catalog the analysis used.
        self._origins: OrderedDict[str, tuple[float, list[tuple[str, str, str] | None]]] = OrderedDict()
        self._origins_lock = threading.Lock()
        # Table OID -> its columns' (schema, table, column), for the row descriptions of new
        # statements; as short-lived as the descriptions (a rename within it only denies).
        self._relations: dict[int, tuple[float, dict[tuple[int, int], tuple[str, str, str]]]] = {}

    def _adbc_get(self) -> Any:
        import adbc_driver_postgresql.dbapi as adbc

        idle = self._checkout(self._adbc, self._copy)
        if idle is not None:
            return idle
        try:
            # Autocommit: each statement is its own transaction, so a failed query never
            # leaves the pooled session in an aborted transaction, and session settings
            # (set_config(..., false)) stick.
            return adbc.connect(self._dsn, autocommit=True)
        except Exception:
            self._release_slot()
            raise

    def _copy_get(self) -> Any:
        assert self._copy_module is not None
        idle = self._checkout(self._copy, self._adbc)
        if idle is not None:
            return idle
        try:
            return self._copy_module.CopyConnection(self._dsn)
        except self._copy_module.PgError as exc:
            self._release_slot()
            raise ExecutionError(_pg_message(exc), code="unavailable") from None
        except BaseException:
            self._release_slot()
            raise

    def _checkout(self, mine: list[Any], other: list[Any]) -> Any:
        """Take a result slot, then an idle connection of this kind, or None to open
        one: when the new one would make more than ``result_connections`` open at
        once, an idle one of the other kind is closed first."""
        if not self._result_slots.acquire(timeout=60):
            raise ExecutionError("all database connections are busy; try again shortly", code="busy")
        victim = None
        with self._results_lock:
            self._in_use += 1
            if mine:
                return mine.pop()
            if other and self._in_use + len(mine) + len(other) > self._result_connections:
                victim = other.pop(0)
                self._applied.pop(id(victim), None)
        if victim is not None:
            with contextlib.suppress(Exception):
                victim.close()
        return None

    def _copy_put(self, con: Any, *, broken: bool) -> None:
        self._put(self._copy, con, broken=broken or not con.ok)

    def _adbc_put(self, con: Any, *, broken: bool) -> None:
        self._put(self._adbc, con, broken=broken)

    def _put(self, idle: list[Any], con: Any, *, broken: bool) -> None:
        try:
            if broken:
                # Forget its session settings: a new connection may reuse the id.
                self._applied.pop(id(con), None)
                with contextlib.suppress(Exception):
                    con.close()
                return
            with self._results_lock:
                idle.append(con)
        finally:
            self._release_slot()

    def _release_slot(self) -> None:
        with self._results_lock:
            self._in_use -= 1
        self._result_slots.release()

    def run(
        self,
        sql: str,
        params: Sequence[Any],
        limits: Limits,
        cancel: threading.Event,
        *,
        returns_rows: bool,
        retry_safe: bool = False,
        session: Session = Session(),
        writes: bool = False,
        row_bound: int | None = None,
    ) -> StatementResult:
        # Reads stream through ADBC. A statement that writes (``writes``: a data-modifying
        # CTE too) runs once, in a psycopg transaction, like any other write: ADBC
        # runs a statement in full before its first row is read, and a result it cannot
        # decode could then not be read again without running the write twice.
        if returns_rows and _returns_rows(sql) and not writes:
            whole = row_bound is not None and row_bound <= WHOLE_RESULT_ROWS
            return self._query(sql, params, limits, cancel, retry_safe=retry_safe, session=session, whole=whole)
        return self._command(sql, params, limits, cancel, session=session)

    def _query(
        self, sql: str, params: Sequence[Any], limits: Limits, cancel: threading.Event, *, retry_safe: bool,
        session: Session = Session(), whole: bool = False,
    ) -> StatementResult:  # fmt: skip
        """``whole``: the result is known to be small; read it in one piece (a plain
        query, not COPY), which saves PostgreSQL and the driver most of a COPY's setup."""
        import adbc_driver_manager

        wanted, setup = _session_setup(limits, session)
        if not whole and not params and retry_safe and self._copy_module is not None:
            text = copy_read.copy_text(sql)
            if text is not None and text not in self._copy_unsupported:
                copied = self._copy_query(text, cancel, wanted, setup)
                if copied is not None:
                    return copied
        # Session limits are set once per pooled connection (and again when they
        # change). A pooled connection may have died (server restarted): a failure
        # before the user's SQL was sent, or of a read-only statement, is retried once
        # on a fresh connection.
        for attempt in (1, 2):
            con = self._adbc_get()
            cur = con.cursor()
            sent = False
            watcher: _Watcher | None = None
            try:
                if self._applied.get(id(con)) != wanted:
                    cur.execute("RESET ALL")
                    cur.execute(setup)
                    cur.fetchall()
                    self._applied[id(con)] = wanted
                if whole:
                    cur.adbc_statement.set_options(**{_USE_COPY: "false"})
                watcher = _Watcher(cancel, cur.adbc_cancel)  # the server enforces statement_timeout
                sent = True
                cur.execute(sql, tuple(params) if params else None)
                reader = cur.fetch_record_batch()
                break
            except adbc_driver_manager.Error as exc:
                if watcher is not None:
                    watcher.stop()
                self._adbc_put(con, broken=True)
                lost = _connection_lost(exc)
                if attempt == 1 and lost and (not sent or retry_safe) and not cancel.is_set():
                    continue
                if not sent:
                    raise ExecutionError(_pg_message(exc), code="unavailable") from None
                raise _pg_error(exc, cancel) from None
        assert watcher is not None
        if any(_has_struct(f.type) for f in reader.schema):
            # ADBC cannot decode composite values (a whole row, ROW(...), a record-returning
            # function): it fails on the first row ("Expected nested record type to have 13
            # fields but got 7"). Such a result is read again through psycopg, composites as
            # JSON text. Only a plain SELECT is run twice; anything else is refused.
            watcher.stop()
            with contextlib.suppress(Exception):
                reader.close()
                cur.close()
            self._adbc_put(con, broken=True)
            if not retry_safe:
                raise ExecutionError(
                    "this statement returns composite (row) values, which the gateway reads only for a plain SELECT; "
                    "return the fields one by one, or to_jsonb(...) of the row",
                    code="composite-unsupported",
                )
            return self._query_text(sql, params, limits, cancel, reader.schema, session=session)

        def batches() -> Iterator[pa.RecordBatch]:
            try:
                for batch in reader:
                    if cancel.is_set():
                        raise Cancelled()
                    yield batch
            except (adbc_driver_manager.Error, pa.ArrowException, OSError) as exc:
                # Errors while streaming surface through Arrow's reader as OSError.
                done["broken"] = True  # never hand a session that failed mid-stream back out
                raise _pg_error(exc, cancel) from None

        done = {"broken": False}

        def close() -> None:
            watcher.stop()
            try:
                reader.close()
                cur.close()
            except Exception:
                done["broken"] = True
            self._adbc_put(con, broken=done["broken"] or cancel.is_set())

        return StatementResult(reader.schema, batches(), close=close)

    def _copy_query(self, text: str, cancel: threading.Event, wanted: tuple[int, str, Session], setup: str) -> StatementResult | None:
        """A plain read through the C COPY decoder (copy_read), or None when a column's
        type is one it does not decode (then ADBC reads it; nothing ran yet)."""
        assert self._copy_module is not None
        pg_error = self._copy_module.PgError
        for attempt in (1, 2):
            con = self._copy_get()
            sent = set_up = False
            # A cancel reaches the set-up and the description too, not only the COPY.
            watcher = _Watcher(cancel, con.cancel)
            try:
                if self._applied.get(id(con)) != wanted:
                    con.execute("RESET ALL; " + setup)
                    self._applied[id(con)] = wanted
                set_up = True
                # The row description on this connection, in the transaction the COPY
                # then runs in: the decoder's types are the statement's, and stay so.
                planned = copy_read.plan(con.describe(text))
                if planned is None:
                    watcher.stop()
                    self._copy_unsupported.add(text)
                    con.execute("ROLLBACK")
                    self._copy_put(con, broken=False)
                    return None
                kinds, schema = planned
                sent = True
                con.start(text)  # the server enforces statement_timeout
                break
            except pg_error as exc:
                watcher.stop()
                lost = _connection_lost(exc)
                self._copy_put(con, broken=lost or not con.ok)
                if attempt == 1 and lost and not cancel.is_set():
                    continue  # a plain read: safe to send again on a fresh connection
                if not set_up or (not sent and lost):
                    raise ExecutionError(_pg_message(exc), code="unavailable") from None
                raise _pg_error(exc, cancel) from None
            except BaseException:
                # Anything else (an interrupt, a bug): the slot and the connection go back.
                watcher.stop()
                self._copy_put(con, broken=True)
                raise
        done = {"broken": False}

        def batches() -> Iterator[pa.RecordBatch]:
            try:
                while True:
                    if cancel.is_set():
                        raise Cancelled()
                    got = con.read(kinds, copy_read.BATCH_ROWS, copy_read.BATCH_BYTES)
                    if got is None:
                        return
                    yield copy_read.record_batch(schema, *got)
            except pg_error as exc:
                done["broken"] = True
                raise _pg_error(exc, cancel) from None

        def close() -> None:
            watcher.stop()
            # A COPY read to its end leaves the connection ready (``ok``); one stopped
            # early (an error, a cancel, max_rows) is closed, which ends the statement.
            self._copy_put(con, broken=done["broken"] or cancel.is_set())

        return StatementResult(schema, batches(), close=close)

    def _query_text(
        self, sql: str, params: Sequence[Any], limits: Limits, cancel: threading.Event, adbc_schema: pa.Schema,
        *, session: Session = Session(),
    ) -> StatementResult:  # fmt: skip
        """A query read through psycopg in text form, for results ADBC cannot decode.

        Composite columns come back as JSON text (``{"id": "1", "email": "…"}``: field names
        from the catalog, ``f1``… for an anonymous record, each field PostgreSQL's text of
        it); other columns keep their type where the text converts exactly (integers,
        booleans, text), else they are text. A server-side cursor streams the rows.
        """
        import psycopg

        conn = self._pool.getconn()
        watcher = _Watcher(cancel, conn.cancel_safe if hasattr(conn, "cancel_safe") else conn.cancel)
        state = {"broken": False}
        try:
            conn.execute(f"SET LOCAL statement_timeout = {int(limits.statement_timeout_ms)}")
            if limits.read_only:
                conn.execute("SET TRANSACTION READ ONLY")
            local = session.pg_sql(local=True)
            if local is not None:
                conn.execute(local[0], local[1])
            cur = psycopg.RawServerCursor(conn, "warden_text_result")
            cur.adapters.register_loader("text", _text_loader())
            for info in psycopg.postgres.types:
                cur.adapters.register_loader(info.oid, _text_loader())
                if info.array_oid:
                    cur.adapters.register_loader(info.array_oid, _text_loader())
            cur.execute(sql, list(params) if params else None)
            desc = cur.description or []
            oids = [d.type_code for d in desc]
            layout = _composite_fields(conn, oids)
            schema = pa.schema([pa.field(d.name, _text_arrow_type(adbc_schema, i, oids[i] in layout)) for i, d in enumerate(desc)])
        except psycopg.errors.QueryCanceled:
            watcher.stop()
            self._release(conn, broken=True)
            raise Cancelled() if cancel.is_set() else ExecutionError("canceling statement due to statement timeout", code="timeout") from None
        except psycopg.Error as exc:
            watcher.stop()
            self._release(conn, broken=True)
            raise ExecutionError(_pg_message(exc), sqlstate=_sqlstate(exc)) from None

        def batches() -> Iterator[pa.RecordBatch]:
            try:
                while True:
                    if cancel.is_set():
                        raise Cancelled()
                    rows = cur.fetchmany(8192)
                    if not rows:
                        return
                    arrays = [_text_column([r[i] for r in rows], schema.field(i).type, layout.get(oids[i], False)) for i in range(len(oids))]
                    yield pa.RecordBatch.from_arrays(arrays, schema=schema)
            except psycopg.errors.QueryCanceled:
                state["broken"] = True
                raise Cancelled() if cancel.is_set() else ExecutionError("canceling statement due to statement timeout", code="timeout") from None
            except psycopg.Error as exc:
                state["broken"] = True
                raise ExecutionError(_pg_message(exc), sqlstate=_sqlstate(exc)) from None

        def close() -> None:
            watcher.stop()
            try:
                cur.close()
            except Exception:
                state["broken"] = True
            self._release(conn, broken=state["broken"] or cancel.is_set())

        return StatementResult(schema, batches(), close=close)

    def _release(self, conn: Any, *, broken: bool) -> None:
        with contextlib.suppress(Exception):
            conn.rollback()  # the read ran in a transaction of its own; nothing to keep
        if broken:
            with contextlib.suppress(Exception):
                conn.close()
        self._pool.putconn(conn)

    def _command(
        self, sql: str, params: Sequence[Any], limits: Limits, cancel: threading.Event, *, session: Session = Session()
    ) -> StatementResult:
        import psycopg

        with self._pool.connection() as conn:
            watcher = _Watcher(cancel, conn.cancel_safe if hasattr(conn, "cancel_safe") else conn.cancel)
            try:
                with conn.transaction():
                    cur = psycopg.RawCursor(conn)
                    cur.execute(f"SET LOCAL statement_timeout = {int(limits.statement_timeout_ms)}")
                    if limits.read_only:
                        cur.execute("SET TRANSACTION READ ONLY")
                    local = session.pg_sql(local=True)
                    if local is not None:
                        psycopg.Cursor(conn).execute(local[0], local[1])
                    cur.execute(sql, list(params) if params else None)
                    rowcount = cur.rowcount
                    rows = cur.fetchall() if cur.description else None
                    names = [d.name for d in cur.description] if cur.description else []
                    oids = [d.type_code for d in cur.description] if cur.description else []
                    layout = _composite_fields(conn, oids) if rows else {}
            except psycopg.errors.QueryCanceled:
                raise Cancelled() if cancel.is_set() else ExecutionError("canceling statement due to statement timeout", code="timeout") from None
            except psycopg.Error as exc:
                raise ExecutionError(_pg_message(exc), sqlstate=_sqlstate(exc)) from None
            finally:
                watcher.stop()
        if rows is not None:
            # RETURNING rows: small by nature; built from the rows psycopg returned.
            # Composite values as JSON text, as a read returns them (``_query_text``).
            columns = [
                _text_column([_record_text(r[i]) for r in rows], pa.string(), layout[oids[i]]) if oids[i] in layout else pa.array([r[i] for r in rows])
                for i in range(len(names))
            ]
            # By position: RETURNING may repeat a name.
            table = pa.Table.from_arrays(columns, names=names) if names else pa.table({})
            return StatementResult(table.schema, iter(table.to_batches()), rowcount=rowcount)
        return StatementResult(None, iter(()), rowcount=rowcount)

    def estimate_rows(self, sql: str, params: Sequence[Any], *, session: Session = Session()) -> int | None:
        import psycopg
        from psycopg_pool import PoolTimeout

        try:
            # A database that is down must not keep the cell waiting for the pool's own
            # timeout: no estimate within a few seconds means no estimate (held, audited).
            with self._pool.connection(timeout=_ESTIMATE_WAIT_S) as conn:
                try:
                    local = session.pg_sql(local=True)
                    if local is not None:
                        conn.execute(local[0], local[1])
                    cur = psycopg.RawCursor(conn)
                    cur.execute("EXPLAIN (FORMAT JSON) " + sql, list(params) if params else None)
                    row = cur.fetchone()
                    conn.rollback()
                except psycopg.Error:
                    with contextlib.suppress(psycopg.Error):
                        conn.rollback()
                    return None
        except (PoolTimeout, psycopg.OperationalError):
            return None
        if not row:
            return None
        plan = row[0][0]["Plan"] if isinstance(row[0], list) else None
        return int(plan.get("Plan Rows", 0)) if isinstance(plan, dict) else None

    def _relation_names_seen(self, now: float) -> set[int]:
        with self._origins_lock:
            return {oid for oid, (at, _) in self._relations.items() if now - at < _ORIGINS_TTL}

    def _known_columns(self, oids: Sequence[int], now: float) -> dict[tuple[int, int], tuple[str, str, str]]:
        out: dict[tuple[int, int], tuple[str, str, str]] = {}
        with self._origins_lock:
            for oid in oids:
                hit = self._relations.get(oid)
                if hit is not None and now - hit[0] < _ORIGINS_TTL:
                    out.update(hit[1])
            if len(self._relations) > _ORIGINS_MAX:
                self._relations.clear()
        return out

    def describe_origins(
        self, sql: str, *, timeout_ms: int = 0, key: str = "", session: Session = Session()
    ) -> list[tuple[str, str, str] | None] | None:
        """The row description's table OID and attribute number of each result column
        (Parse and Describe of the statement: nothing runs), named from pg_class and
        pg_attribute. Columns of views are not resolved further (None); so are
        expressions. None when the statement cannot be described (it will fail to run).

        ``key`` names the statement for the cache of recent descriptions: its shape with
        literals normalised (which columns a statement returns, and from where, does not
        depend on its literals), so ``WHERE id = 1`` and ``WHERE id = 2`` share one."""
        import time

        import psycopg

        now = time.monotonic()
        key = (key or sql) + "\x00" + repr(session)  # names resolve along the session's search path
        with self._origins_lock:
            hit = self._origins.get(key)
            if hit is not None and now - hit[0] < _ORIGINS_TTL:
                self._origins.move_to_end(key)
                return hit[1]
        try:
            with self._pool.connection() as conn:
                try:
                    # Parsing takes table locks: bounded like the statement itself (or 10 s),
                    # in a transaction of its own so the settings end with it.
                    bound = str(int(timeout_ms) or 10000)
                    setup, args = "SELECT set_config('statement_timeout', %s, true), set_config('lock_timeout', %s, true)", [bound, bound]
                    local = session.pg_sql(local=True)
                    if local is not None:  # one round trip for the limits and the session
                        setup += ", " + local[0].removeprefix("SELECT ")
                        args += local[1]
                    conn.execute(setup, args)
                    pg = conn.pgconn
                    if pg.prepare(b"", sql.encode(), None).status != psycopg.pq.ExecStatus.COMMAND_OK:
                        return None
                    desc = pg.describe_prepared(b"")
                    if desc.status != psycopg.pq.ExecStatus.COMMAND_OK:
                        return None
                    cols = [(int(desc.ftable(i)), int(desc.ftablecol(i))) for i in range(desc.nfields)]
                    oids = sorted({t for t, _ in cols if t})
                    names = self._known_columns(oids, now)
                    missing = [o for o in oids if o not in self._relation_names_seen(now)]
                    if missing:
                        rows = conn.execute(
                            "SELECT c.oid::int, n.nspname::text, c.relname::text, a.attnum::int, a.attname::text "
                            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                            "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped "
                            "WHERE c.oid = ANY(%s) AND c.relkind IN ('r', 'p', 'f')",  # views, matviews: lineage goes through them
                            (missing,),
                        ).fetchall()
                        fresh = {(oid, num): (schema, rel, att) for oid, schema, rel, num, att in rows}
                        names.update(fresh)
                        with self._origins_lock:
                            for oid in missing:  # views and the like too: known to have no plain columns
                                self._relations[oid] = (now, {k: v for k, v in fresh.items() if k[0] == oid})
                finally:
                    conn.rollback()
        except psycopg.Error:
            return None
        found = [names.get(c) for c in cols]
        with self._origins_lock:
            self._origins[key] = (now, found)
            while len(self._origins) > _ORIGINS_MAX:
                self._origins.popitem(last=False)
        return found

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._pool.close()
        with self._results_lock:
            for con in [*self._adbc, *self._copy]:
                with contextlib.suppress(Exception):
                    con.close()
            self._adbc.clear()
            self._copy.clear()
            self._applied.clear()


_ORIGINS_TTL = 60.0  # seconds
_ORIGINS_MAX = 2048


def _has_struct(t: pa.DataType) -> bool:
    """Whether an Arrow type holds a struct anywhere (PostgreSQL composites arrive so)."""
    if isinstance(t, pa.BaseExtensionType):
        return _has_struct(t.storage_type)
    if pa.types.is_struct(t):
        return True
    return any(_has_struct(t.field(i).type) for i in range(t.num_fields)) if t.num_fields else False


def _text_loader() -> Any:
    from psycopg.types.string import TextLoader

    return TextLoader


_RECORD_OID = 2249


def _composite_fields(conn: Any, oids: Sequence[int]) -> dict[int, list[str] | None]:
    """For each composite type among ``oids``: its field names (None: an anonymous record)."""
    out: dict[int, list[str] | None] = {oid: None for oid in oids if oid == _RECORD_OID}
    wanted = sorted({oid for oid in oids if oid != _RECORD_OID})
    if not wanted:
        return out
    rows = conn.execute(
        "SELECT t.oid::int, array_agg(a.attname::text ORDER BY a.attnum) FROM pg_type t "
        "JOIN pg_attribute a ON a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped "
        "WHERE t.typtype = 'c' AND t.oid = ANY(%s) GROUP BY t.oid",
        (wanted,),
    ).fetchall()
    for oid, names in rows:
        out[int(oid)] = list(names)
    return out


def _text_arrow_type(adbc_schema: pa.Schema, i: int, composite: bool) -> pa.DataType:
    t = adbc_schema.field(i).type if i < len(adbc_schema) else pa.string()
    if composite:
        return pa.string()  # JSON text
    if pa.types.is_integer(t) or pa.types.is_boolean(t):
        return t
    return pa.string()


def _text_column(values: list[Any], t: pa.DataType, fields: list[str] | bool | None = False) -> pa.Array:
    """One column of a text-form result as Arrow (see ``_query_text``)."""
    import json

    if fields is not False:
        out: list[str | None] = []
        for v in values:
            if v is None:
                out.append(None)
                continue
            parsed = parse_record(str(v))
            names = fields if isinstance(fields, list) and len(fields) == len(parsed) else [f"f{k + 1}" for k in range(len(parsed))]
            out.append(json.dumps(dict(zip(names, parsed, strict=True)), ensure_ascii=False))
        return pa.array(out, type=pa.string())
    if pa.types.is_boolean(t):
        return pa.array([None if v is None else v == "t" for v in values], type=t)
    if pa.types.is_integer(t):
        return pa.array([None if v is None else int(v) for v in values], type=t)
    return pa.array([None if v is None else str(v) for v in values], type=pa.string())


def _record_text(value: Any) -> Any:
    """PostgreSQL's text form of a composite that psycopg loaded as a tuple (``record``)."""
    if not isinstance(value, tuple):
        return value

    def field(v: Any) -> str:
        if v is None:
            return ""
        text = str(v)
        return '"' + text.replace("\\", "\\\\").replace('"', '""') + '"'

    return "(" + ",".join(field(v) for v in value) + ")"


def parse_record(text: str) -> list[str | None]:
    """The fields of PostgreSQL's text form of a composite value, ``(1,"a b",,x)``.

    Unquoted fields run to the next comma (an empty one is NULL); quoted fields may hold
    commas, doubled quotes and backslash escapes. Nested composites stay as their text.
    """
    if len(text) < 2 or text[0] != "(" or text[-1] != ")":
        raise ValueError("not a composite value")
    s, n, i = text[1:-1], len(text) - 2, 0
    fields: list[str | None] = []
    while True:
        if i < n and s[i] == '"':
            buf: list[str] = []
            i += 1
            while i < n:
                c = s[i]
                if c == "\\" and i + 1 < n:
                    buf.append(s[i + 1])
                    i += 2
                elif c == '"':
                    if i + 1 < n and s[i + 1] == '"':
                        buf.append('"')
                        i += 2
                    else:
                        i += 1
                        break
                else:
                    buf.append(c)
                    i += 1
            fields.append("".join(buf))
        else:
            j = s.find(",", i)
            j = n if j < 0 else j
            fields.append(s[i:j] or None)
            i = j
        if i >= n:
            return fields
        i += 1  # the comma


def _session_setup(limits: Limits, session: Session) -> tuple[tuple[int, str, Session], str]:
    """The session limits a pooled connection must have, and the statement that sets
    them (after a RESET ALL: nothing of an earlier cell's SET survives on it)."""
    wanted = (int(limits.statement_timeout_ms), "on" if limits.read_only else "off", session)
    setup = (
        "SELECT set_config('statement_timeout', '{}', false), "
        "set_config('default_transaction_read_only', '{}', false)".format(*wanted[:2])
    )
    # The cell's session (search path, settings) is this connection's session until
    # the next statement that wants another.
    assignments = session.pg_assignments()
    if assignments:
        setup += "".join(
            ", set_config('{}', '{}', false)".format(n.replace("'", "''"), v.replace("'", "''")) for n, v in assignments
        )
    return wanted, setup


def _returns_rows(sql: str) -> bool:
    head = sql.lstrip().lstrip("(").split(None, 1)[0].upper() if sql.strip() else ""
    return head in ("SELECT", "WITH", "VALUES", "TABLE", "SHOW", "EXPLAIN")


def _connection_lost(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(s in text for s in ("server closed the connection", "no connection to the server", "terminating connection",
                                   "connection refused", "could not send", "eof detected", "broken pipe", "connection reset"))  # fmt: skip


def _pg_error(exc: BaseException, cancel: threading.Event) -> ExecutionError:
    raw = _pg_text(exc)
    if "statement timeout" in raw:
        return ExecutionError("canceling statement due to statement timeout", code="timeout", sqlstate="57014")
    if cancel.is_set() or "canceling statement" in raw:
        return Cancelled()
    return ExecutionError(_pg_message(exc), sqlstate=_sqlstate(exc))


def _pg_text(exc: BaseException) -> str:
    """The database's own text of an error (all its lines), without ADBC's prefix."""
    text = str(exc).strip()
    for marker in ("ERROR:", "FATAL:"):
        if marker in text:
            text = text.split(marker, 1)[1]
    return text.strip() or type(exc).__name__


def _sqlstate(exc: BaseException) -> str | None:
    # psycopg and ADBC both carry it; an error read from Arrow's stream (OSError) does not.
    state = getattr(exc, "sqlstate", None)
    return state if isinstance(state, str) and state else None


def _pg_message(exc: BaseException) -> str:
    """The redacted message of a PostgreSQL error: errors are data (``errors_redact``)."""
    return redact_db_error(_pg_text(exc), sqlstate=_sqlstate(exc))


class _Watchdog:
    """One thread for every running statement: calls a statement's cancel function
    when its cancel event is set or its deadline passes. (A thread per statement
    costs a start-up and a wake-up every few ms each, under load.)"""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[int, _Watcher] = {}
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, watcher: _Watcher) -> None:
        with self._lock:
            self._entries[id(watcher)] = watcher
            self._wake.set()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="warden-watchdog", daemon=True)
                self._thread.start()

    def remove(self, watcher: _Watcher) -> None:
        with self._lock:
            self._entries.pop(id(watcher), None)
            if not self._entries:
                self._wake.clear()

    def _run(self) -> None:
        import time

        while True:
            # Idle (no statement running): sleep until one starts, not every 20 ms.
            self._wake.wait()
            time.sleep(0.02)
            now = time.monotonic()
            with self._lock:
                entries = list(self._entries.values())
            for w in entries:
                w.check(now)


_WATCHDOG = _Watchdog()


class _Watcher:
    """Cancels one statement when ``event`` is set or its deadline passes."""

    def __init__(self, event: threading.Event, cancel_fn: Any) -> None:
        import time

        self._event = event
        self._fn = cancel_fn
        self._started = time.monotonic()
        self._timeout: float | None = None
        self._fired = False
        # check() (the watchdog's thread) calls the cancel function under this lock, and
        # stop() takes it: once stop() returns, no cancel can reach the connection, which
        # may already be running the next request's statement.
        self._lock = threading.Lock()
        self.timed_out = False
        _WATCHDOG.add(self)

    def deadline(self, seconds: float) -> None:
        self._timeout = seconds

    def check(self, now: float) -> None:
        with self._lock:
            if self._fired:
                return
            if self._timeout is not None and now - self._started > self._timeout:
                self.timed_out = True
                self._event.set()
            if self._event.is_set():
                self._fired = True
                _WATCHDOG.remove(self)
                with contextlib.suppress(Exception):
                    self._fn()

    def stop(self) -> None:
        with self._lock:
            self._fired = True
        _WATCHDOG.remove(self)
