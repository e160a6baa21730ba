"""The shared audit store: PostgreSQL, written by several gateway replicas.

Every gateway appends to its own chain (``chain_id``, default the host name), so
replicas never contend for a chain and chains never interleave. Each batch is one
transaction that starts with ``SELECT ... FOR UPDATE`` on the chain's row in
``audit_chains``: should two processes be started with the same ``chain_id`` by
mistake, they serialise on that row lock and continue one chain instead of forking
it, and the primary key ``(chain_id, seq)`` rejects any duplicate seq outright.
Records reach the table through ``COPY``; the writer's session runs with
``synchronous_commit = on`` so a committed record is on disk when ``append`` returns.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
import pyarrow as pa
from psycopg import sql
from psycopg.rows import dict_row

from warden.audit.checkpoint import Checkpoint
from warden.audit.errors import AuditConfigError, AuditUnavailable
from warden.audit.record import FIELD_KINDS, FIELDS, AuditEvent, genesis_hash
from warden.audit.schema import (
    COLUMN_LIST,
    POSTGRES_MARK_COLUMN,
    POSTGRES_TRIGGERS,
    SCHEMA_VERSION,
    postgres_ddl,
)
from warden.audit.store import (
    AuditStore,
    _Batch,
    _first_line,
    record_rows,
    rows_to_arrow,
)

# Lists go to COPY as ready-made array literals typed text: psycopg's generic list
# dumper is pure Python and cost a third of the insert path.
_PG_COPY_TYPES = {"str": "text", "int": "int8", "float": "float8", "time": "timestamptz", "list": "text", "json": "text"}
_COPY_TYPES = [_PG_COPY_TYPES[FIELD_KINDS[f]] for f in FIELDS]
_COPY = f"COPY audit_events ({COLUMN_LIST}) FROM STDIN"
_INSERT = f"INSERT INTO audit_events ({COLUMN_LIST}) VALUES ({', '.join(['%s'] * len(FIELDS))})"
_INSERT_MAX = 4
_IDLE_CHECK = 30.0  # seconds of writer idleness after which the connection is pinged first
_LIST_COLUMNS = tuple(i for i, f in enumerate(FIELDS) if FIELD_KINDS[f] == "list")
_ARRAY_ESCAPE = str.maketrans({"\\": "\\\\", '"': '\\"'})


def _array_literal(values: tuple[str, ...]) -> str:
    """A PostgreSQL text[] literal: every element quoted, backslash and quote escaped."""
    return "{" + ",".join('"' + v.translate(_ARRAY_ESCAPE) + '"' for v in values) + "}"
_SCHEMA_LOCK = 0x77617264656E  # pg_advisory_xact_lock key ("warden") serialising schema setup


class PostgresStore(AuditStore):
    kind = "postgresql"
    _ph = "%s"
    exact_head = True

    def __init__(self, dsn: str, *, connect_timeout: float = 5.0, lock_timeout: float = 10.0, **options: Any) -> None:
        super().__init__(dsn, **options)
        self.connect_timeout = connect_timeout
        self.lock_timeout = lock_timeout
        self._conn: psycopg.Connection[Any] | None = None
        self._last_used = time.monotonic()
        self._reader_lock = threading.Lock()
        self._readers: list[psycopg.Connection[Any]] = []
        self._start()

    # ------------------------------------------------------------------ connections

    def _connect(self, *, autocommit: bool) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(
                self.url,
                autocommit=autocommit,
                connect_timeout=max(1, round(self.connect_timeout)),
                application_name="warden-audit",
            )
        except psycopg.Error as exc:
            raise AuditUnavailable(f"audit store {self.describe()} is unreachable: {_first_line(exc)}") from exc

    def _open_writer(self) -> None:
        conn = self._connect(autocommit=False)
        try:
            with conn.cursor() as cur:
                # Durable on return, whatever the server default; never wait forever
                # on a chain lock held by a stuck process.
                cur.execute("SET synchronous_commit = on")
                cur.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(f"{int(self.lock_timeout * 1000)}ms")))
            conn.commit()
            self._setup(conn)
        except AuditConfigError:
            conn.close()
            raise
        except psycopg.Error as exc:
            conn.close()
            raise AuditUnavailable(f"audit store {self.describe()} cannot be initialised: {_first_line(exc)}") from exc
        self._conn = conn

    def _setup(self, conn: psycopg.Connection[Any]) -> None:
        with conn.transaction(), conn.cursor() as cur:
            # Replicas starting together would race on CREATE TABLE IF NOT EXISTS
            # (it is not atomic against a concurrent creator): take turns.
            cur.execute("SELECT pg_advisory_xact_lock(%s)", [_SCHEMA_LOCK])
            for stmt in postgres_ddl():
                cur.execute(stmt)  # DDL from constants
            cur.execute(
                "SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = 'audit_checkpoints' AND column_name = 'mark'"
            )
            if cur.fetchone() is None:
                cur.execute(POSTGRES_MARK_COLUMN)
            for name, create in POSTGRES_TRIGGERS.items():
                cur.execute("SELECT 1 FROM pg_trigger WHERE tgname = %s AND tgrelid = 'audit_events'::regclass", [name])
                if cur.fetchone() is None:
                    cur.execute(create)
            cur.execute("INSERT INTO audit_meta VALUES ('schema_version', %s) ON CONFLICT (key) DO NOTHING", [str(SCHEMA_VERSION)])
            cur.execute("SELECT value FROM audit_meta WHERE key = 'schema_version'")
            row = cur.fetchone()
            if row is not None and int(row[0]) > SCHEMA_VERSION:
                raise AuditConfigError(f"audit store {self.describe()} has schema version {row[0]}, newer than this warden ({SCHEMA_VERSION})")
            cur.execute("SELECT 1 FROM audit_chains WHERE chain_id = %s", [self.chain_id])
            if cur.fetchone() is None:
                # A chain with records but no head row continues after its last record.
                cur.execute("SELECT seq, record_hash FROM audit_events WHERE chain_id = %s ORDER BY seq DESC LIMIT 1", [self.chain_id])
                last = cur.fetchone()
                seq, h = (int(last[0]), str(last[1])) if last else (0, genesis_hash(self.chain_id))
                cur.execute(
                    "INSERT INTO audit_chains VALUES (%s, %s, %s, now()) ON CONFLICT (chain_id) DO NOTHING",
                    [self.chain_id, seq, h],
                )
            key = self._key_row()
            if key is not None:
                cur.execute("INSERT INTO audit_keys VALUES (%s, %s, now()) ON CONFLICT (key_id) DO NOTHING", list(key))
            cur.execute("SELECT last_seq, last_hash FROM audit_chains WHERE chain_id = %s", [self.chain_id])
            head = cur.fetchone()
            assert head is not None
            self._committed_head = (int(head[0]), str(head[1]))

    def _ensure_writer(self) -> None:
        conn = self._conn
        if conn is not None and not conn.closed and time.monotonic() - self._last_used > _IDLE_CHECK:
            # A connection idle for a while may have been dropped (server restart, idle
            # timeout, NAT): find out with a ping rather than by failing a batch.
            try:
                conn.execute("SELECT 1")
                conn.rollback()
            except psycopg.Error:
                conn.close()
        if self._conn is None or self._conn.closed:
            self._conn = None
            self._open_writer()
        self._last_used = time.monotonic()

    def _writer_failed(self, exc: BaseException) -> None:
        conn = self._conn
        if conn is None:
            return
        try:
            if conn.closed or conn.broken:
                raise psycopg.OperationalError("connection lost")
            conn.rollback()
        except psycopg.Error:
            try:
                conn.close()
            finally:
                self._conn = None

    def _is_outage(self, exc: BaseException) -> bool:
        # OperationalError: connection refused/lost, server shutting down, disk full
        # (53100), out of memory, lock timeout; all say nothing about the data.
        return isinstance(exc, psycopg.OperationalError | AuditUnavailable) or (
            isinstance(exc, psycopg.Error) and (exc.sqlstate or "").startswith(("08", "53", "57", "58"))
        )

    def _close_connections(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        with self._reader_lock:
            readers, self._readers = self._readers, []
        for conn in readers:
            conn.close()

    # ------------------------------------------------------------------ writing

    def _lock_head(self, cur: psycopg.Cursor[Any]) -> tuple[int, str]:
        cur.execute("SELECT last_seq, last_hash FROM audit_chains WHERE chain_id = %s FOR UPDATE", [self.chain_id])
        row = cur.fetchone()
        if row is None:
            raise AuditUnavailable(f"audit store {self.describe()}: the head row of chain {self.chain_id!r} disappeared")
        return int(row[0]), str(row[1])

    def _payload(self, events: list[AuditEvent], canonicals: list[bytes]) -> Any:
        rows = record_rows(events)
        for row in rows:
            for i in _LIST_COLUMNS:
                row[i] = _array_literal(row[i])
        return rows

    def _commit(self, item: _Batch, checkpoint_for: Callable[[_Batch], Checkpoint | None]) -> Checkpoint | None:
        conn = self._conn
        assert conn is not None
        with conn.cursor() as cur:
            head = self._lock_head(cur)
            if head != item.base:
                # Another process appended to this chain (same chain_id by mistake). We
                # hold the row lock now: re-seal after its records instead of forking.
                self._reseal(item, head)
            if len(item.payload) <= _INSERT_MAX:
                # A lone caller's record: a prepared INSERT costs less than COPY's setup.
                cur.executemany(_INSERT, item.payload)
            else:
                with cur.copy(_COPY) as copy:
                    copy.set_types(_COPY_TYPES)
                    for row in item.payload:
                        copy.write_row(row)
            cp = checkpoint_for(item)
            if cp is not None:
                self._insert_checkpoint(cur, cp)
            assert item.events is not None
            last = item.events[-1]
            cur.execute(
                "UPDATE audit_chains SET last_seq = %s, last_hash = %s, updated_at = %s WHERE chain_id = %s",
                [last.seq, last.record_hash, item.now, self.chain_id],
            )
        conn.commit()
        return cp

    def _insert_checkpoint(self, cur: psycopg.Cursor[Any], cp: Checkpoint) -> None:
        cur.execute(
            "INSERT INTO audit_checkpoints (chain_id, seq, record_hash, checkpoint_time, key_id, signature, mark) VALUES (%s, %s, %s, %s, %s, %s, %s)",
            [cp.chain_id, cp.seq, cp.record_hash, cp.time, cp.key_id, cp.signature, cp.mark],
        )

    def _commit_checkpoint(self, now: dt.datetime, mark: str = "") -> Checkpoint | None:
        conn = self._conn
        assert conn is not None
        with conn.cursor() as cur:
            seq, h = self._lock_head(cur)
            if seq == 0 and mark != "open":  # only "a writer starts a new chain" signs the genesis
                conn.rollback()
                return None
            cp = self._sign(seq, h, now, mark)
            self._insert_checkpoint(cur, cp)
        conn.commit()
        return cp

    # ------------------------------------------------------------------ reading

    def _reader(self) -> psycopg.Connection[Any]:
        with self._reader_lock:
            while self._readers:
                conn = self._readers.pop()
                if not conn.closed and not conn.broken:
                    return conn
        conn = self._connect(autocommit=True)
        conn.execute("SET default_transaction_read_only = on")
        conn.execute("SET TimeZone = 'UTC'")
        return conn

    def _release(self, conn: psycopg.Connection[Any]) -> None:
        with self._reader_lock:
            if not self._closed and len(self._readers) < 4 and not conn.closed and not conn.broken:
                self._readers.append(conn)
                return
        conn.close()

    def _fetch_rows(self, query: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        conn = self._reader()
        try:
            with conn.cursor(row_factory=dict_row) as cur:
                cur.execute(query, list(params))
                return cur.fetchall() if cur.description else []
        except psycopg.Error as exc:
            conn.close()
            if isinstance(exc, psycopg.errors.UndefinedTable):
                raise AuditUnavailable(f"audit store {self.describe()} holds no audit tables") from exc
            raise AuditUnavailable(f"audit store {self.describe()} cannot be read: {_first_line(exc)}") from exc
        finally:
            self._release(conn)

    def _fetch_arrow(self, query: str, params: Sequence[Any]) -> pa.Table:
        return rows_to_arrow(self._fetch_rows(query, params))
