"""The embedded audit store: one DuckDB file, written only by the gateway process.

DuckDB lets one process open a file for writing (it takes a file lock), which is
exactly the local deployment: one gateway per user. Inside the process the writer
thread owns the writing connection; readers use cursors of the same database, which
see committed data only (MVCC). DuckDB syncs its write-ahead log on commit, so a
record is durable when ``append`` returns.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from warden.audit.checkpoint import Checkpoint
from warden.audit.errors import AuditConfigError, AuditUnavailable
from warden.audit.record import AuditEvent, genesis_hash, utcnow
from warden.audit.schema import ARROW_SCHEMA, SCHEMA_VERSION, duckdb_ddl
from warden.audit.store import AuditStore, _Batch, _first_line, arrow_table, log

# DuckDB hands every connection of one process to the same database instance, so a
# second writable store on the same file in this process would not be stopped by the
# file lock, and two in-memory chain heads would fork the chain. Refuse it instead.
_OPEN_FILES: set[str] = set()
_OPEN_LOCK = threading.Lock()

# Errors that mean "the file cannot be written" (disk full, I/O error, failed commit,
# invalidated database) rather than "this data is wrong".
_OUTAGE = (duckdb.IOException, duckdb.TransactionException, duckdb.FatalException, duckdb.ConnectionException, duckdb.OutOfMemoryException, duckdb.PermissionException, OSError)


def _one(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
    # fetchall, not fetchone: DuckDB refuses further work on a connection whose last
    # result was not read to its end.
    rows = con.execute(sql, list(params)).fetchall()
    return rows[0] if rows else None


class DuckDBStore(AuditStore):
    kind = "duckdb"
    _ph = "?"

    def __init__(self, path: str | Path, **options: Any) -> None:
        if not str(path):
            raise AuditConfigError("the DuckDB audit store needs a file path (duckdb:///path/audit.duckdb)")
        self.path = Path(path)
        super().__init__(f"duckdb://{path}", **options)
        self._lock = threading.Lock()  # guards (re)opening the shared database handle
        self._db: duckdb.DuckDBPyConnection | None = None
        self._suspect = False
        self._claimed: str | None = None
        if self.read_only:
            self._db = self._connect(read_only=True)
        else:
            key = str(self.path.resolve())
            with _OPEN_LOCK:
                if key in _OPEN_FILES:
                    raise AuditConfigError(f"audit store {self.describe()} is already open for writing in this process")
                _OPEN_FILES.add(key)
            self._claimed = key
        try:
            self._start()
        except BaseException:
            self._release_claim()
            raise

    def _release_claim(self) -> None:
        if self._claimed is not None:
            with _OPEN_LOCK:
                _OPEN_FILES.discard(self._claimed)
            self._claimed = None

    # ------------------------------------------------------------------ connections

    def _connect(self, *, read_only: bool) -> duckdb.DuckDBPyConnection:
        if read_only and not self.path.is_file():
            raise AuditUnavailable(f"audit store {self.describe()}: no such DuckDB file")
        try:
            con = duckdb.connect(str(self.path), read_only=read_only)
        except duckdb.Error as exc:
            hint = ""
            if "lock" in str(exc).lower():
                hint = " (another process, probably the running gateway, has it open for writing; verify an export or stop the gateway)"
            raise AuditUnavailable(f"audit store {self.describe()} cannot be opened: {_first_line(exc)}{hint}") from exc
        con.execute("SET TimeZone = 'UTC'")
        if not read_only:
            con.execute("PRAGMA disable_optimizer")  # the writer runs trivial statements; planning them is pure overhead
        return con

    def _open_writer(self) -> None:
        with self._lock:
            con = self._connect(read_only=False)
            try:
                self._setup(con)
            except duckdb.Error as exc:
                con.close()
                raise AuditUnavailable(f"audit store {self.describe()} cannot be initialised: {_first_line(exc)}") from exc
            self._db = con
            self._suspect = False

    def _setup(self, con: duckdb.DuckDBPyConnection) -> None:
        con.execute("BEGIN TRANSACTION")
        try:
            for stmt in duckdb_ddl():
                con.execute(stmt)
            row = _one(con, "SELECT value FROM audit_meta WHERE key = 'schema_version'")
            if row is None:
                con.execute("INSERT INTO audit_meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])
            elif int(row[0]) > SCHEMA_VERSION:
                raise AuditConfigError(f"audit store {self.describe()} has schema version {row[0]}, newer than this warden ({SCHEMA_VERSION})")
            # The process holds DuckDB's file lock, so it is the chain's only writer: the
            # head lives in memory, loaded from the last record (authoritative; the
            # audit_chains row is only brought up to date at checkpoints and close).
            last = _one(con, "SELECT seq, record_hash FROM audit_events WHERE chain_id = ? ORDER BY seq DESC LIMIT 1", [self.chain_id])
            head = (int(last[0]), str(last[1])) if last else (0, genesis_hash(self.chain_id))
            if _one(con, "SELECT 1 FROM audit_chains WHERE chain_id = ?", [self.chain_id]) is None:
                con.execute("INSERT INTO audit_chains VALUES (?, ?, ?, now())", [self.chain_id, *head])
            key = self._key_row()
            if key is not None:
                con.execute("INSERT INTO audit_keys VALUES (?, ?, now()) ON CONFLICT DO NOTHING", list(key))
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        self._committed_head = head

    def _ensure_writer(self) -> None:
        if self._db is None:
            self._open_writer()
            return
        if self._suspect:
            try:
                self._db.execute("SELECT 1").fetchall()
                self._suspect = False
            except duckdb.Error:
                self._reopen()

    def _reopen(self) -> None:
        with self._lock:
            if self._db is not None:
                with contextlib.suppress(duckdb.Error):
                    self._db.close()
                self._db = None
        self._open_writer()

    def _writer_failed(self, exc: BaseException) -> None:
        if self._db is not None:
            with contextlib.suppress(duckdb.Error):
                self._db.execute("ROLLBACK")
        self._suspect = True

    def _is_outage(self, exc: BaseException) -> bool:
        return isinstance(exc, _OUTAGE)

    def _close_connections(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
        self._release_claim()

    # ------------------------------------------------------------------ writing

    def _payload(self, events: list[AuditEvent]) -> Any:
        return arrow_table(events)

    def _commit(self, item: _Batch, checkpoint_for: Callable[[_Batch], Checkpoint | None]) -> Checkpoint | None:
        con = self._db
        assert con is not None
        warden_audit_batch = item.payload  # noqa: F841 - read by DuckDB's replacement scan below
        cp = checkpoint_for(item)
        # DuckDB's per-statement cost dominates small batches, so the common case is a
        # single auto-committed INSERT (one transaction, no BEGIN/COMMIT round trips),
        # bound by name to the Arrow batch rather than by a 48-column list. The file
        # lock makes this process the only writer, so the head needs no lock or check.
        if cp is None:
            con.execute("INSERT INTO audit_events SELECT * FROM warden_audit_batch")
            return None
        con.execute("BEGIN TRANSACTION")
        con.execute("INSERT INTO audit_events SELECT * FROM warden_audit_batch")
        self._insert_checkpoint(con, cp)
        self._save_head(con, cp.seq, cp.record_hash, item.now)
        con.execute("COMMIT")
        return cp

    def _save_head(self, con: duckdb.DuckDBPyConnection, seq: int, record_hash: str, now: dt.datetime) -> None:
        con.execute("UPDATE audit_chains SET last_seq = ?, last_hash = ?, updated_at = ? WHERE chain_id = ?", [seq, record_hash, now, self.chain_id])

    def _insert_checkpoint(self, con: duckdb.DuckDBPyConnection, cp: Checkpoint) -> None:
        con.execute(
            "INSERT INTO audit_checkpoints (chain_id, seq, record_hash, checkpoint_time, key_id, signature, mark) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [cp.chain_id, cp.seq, cp.record_hash, cp.time, cp.key_id, cp.signature, cp.mark],
        )

    def _commit_checkpoint(self, now: dt.datetime, mark: str = "") -> Checkpoint | None:
        con = self._db
        assert con is not None
        seq, h = self._committed_head
        if seq == 0 and mark != "open":  # only "a writer starts a new chain" signs the genesis
            return None
        cp = self._sign(seq, h, now, mark)
        con.execute("BEGIN TRANSACTION")
        self._insert_checkpoint(con, cp)
        self._save_head(con, seq, h, now)
        con.execute("COMMIT")
        return cp

    def _finish(self) -> None:
        # Without a signing key no checkpoint moved the head row; bring it up to date.
        seq, h = self._committed_head
        if self._db is not None and seq:
            try:
                self._save_head(self._db, seq, h, utcnow())
            except duckdb.Error as exc:
                log.warning("cannot update the chain head of %s: %s", self.describe(), _first_line(exc))

    # ------------------------------------------------------------------ reading

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        with self._lock:
            if self._db is None:
                if self._closed:
                    raise AuditUnavailable(f"audit store {self.describe()} is closed")
                raise AuditUnavailable(f"audit store {self.describe()} is not open (a previous write failed)")
            cur = self._db.cursor()
        cur.execute("SET TimeZone = 'UTC'")
        return cur

    def _fetch_rows(self, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        cur = self._cursor()
        try:
            cur.execute(sql, list(params))
            names = [d[0] for d in cur.description or ()]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
        except duckdb.Error as exc:
            raise AuditUnavailable(f"audit store {self.describe()} cannot be read: {_first_line(exc)}") from exc
        finally:
            cur.close()

    def _fetch_arrow(self, sql: str, params: Sequence[Any]) -> pa.Table:
        cur = self._cursor()
        try:
            table = cur.sql(sql, params=list(params)).to_arrow_table()
        except duckdb.Error as exc:
            raise AuditUnavailable(f"audit store {self.describe()} cannot be read: {_first_line(exc)}") from exc
        finally:
            cur.close()
        return table.cast(ARROW_SCHEMA)
