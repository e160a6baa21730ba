"""The embedded audit store: one DuckDB file, written only by the gateway process.

DuckDB lets one process open a file for writing (it takes a file lock), which is
exactly the local deployment: one gateway per user. Readers use cursors of the same
database, which see committed data only (MVCC).

Durability. With ``journal=True`` the writer thread makes each batch durable in
the intent journal (:mod:`warden.audit.journal`: one frame, ``fdatasync``, ~0.2 ms) and
wakes its callers; an *absorber* thread inserts what was journalled into DuckDB in large
transactions (DuckDB's commit costs ~3 ms however small the batch). Reads first wait
until everything journalled before them is absorbed, so a reader sees every record whose
append returned. Opening the store (read-only too) replays a journal left by a crash.
With ``journal=False`` (the default) the writer thread commits each batch to DuckDB
itself (DuckDB syncs its write-ahead log on commit), and fails the batch's callers when
DuckDB cannot be written; either way a record is durable when ``append`` returns, and
any open replays a journal left behind.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as dt
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from warden.audit.checkpoint import Checkpoint
from warden.audit.errors import AuditConfigError, AuditUnavailable
from warden.audit.journal import Journal, JournalCorrupt, checkpoint_line, event_lines
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


#: Journalled events not yet absorbed into DuckDB beyond which appends wait (and, past
#: ``append_timeout``, fail): bounds memory and replay time if DuckDB cannot keep up.
MAX_UNABSORBED = 200_000
#: Events the absorber inserts per transaction at most.
ABSORB_MAX = 20_000
#: The absorber waits up to this long (seconds) for this many events before it inserts:
#: DuckDB's INSERT costs milliseconds, partly under the GIL, nearly whatever its size, so
#: fewer, larger inserts leave the writer and its callers alone. A reader (or close)
#: that needs the records cuts the wait short.
ABSORB_DELAY = 0.5
ABSORB_MIN = 2_000


# Stores whose absorber runs: stopped at interpreter exit (a daemon thread inside DuckDB
# while the interpreter finalises aborts the process). What they did not absorb stays
# in the journal for the next open.
_ABSORBING: weakref.WeakSet[DuckDBStore] = weakref.WeakSet()


@atexit.register
def _stop_absorbers() -> None:
    for store in list(_ABSORBING):
        store._stop_absorber(timeout=5.0)


class _Absorb:
    """Journalled records (and checkpoints) waiting for the absorber."""

    __slots__ = ("checkpoints", "events", "segment")

    def __init__(self, events: list[AuditEvent], checkpoints: list[Checkpoint], segment: int) -> None:
        self.events = events
        self.checkpoints = checkpoints
        self.segment = segment


def _one(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
    # fetchall, not fetchone: DuckDB refuses further work on a connection whose last
    # result was not read to its end.
    rows = con.execute(sql, list(params)).fetchall()
    return rows[0] if rows else None


class DuckDBStore(AuditStore):
    kind = "duckdb"
    _ph = "?"

    def __init__(self, path: str | Path, *, journal: bool = False, **options: Any) -> None:
        if not str(path):
            raise AuditConfigError("the DuckDB audit store needs a file path (duckdb:///path/audit.duckdb)")
        self.path = Path(path)
        super().__init__(f"duckdb://{path}", **options)
        self._lock = threading.Lock()  # guards (re)opening the shared database handle
        self._db: duckdb.DuckDBPyConnection | None = None
        self._suspect = False
        self._claimed: str | None = None
        # Intent journal and absorber (see the module docstring). ``_jcond`` guards
        # everything below it; the absorber owns the DuckDB connection for writing.
        self.journal = journal and not self.read_only
        self._journal: Journal | None = None
        self._jcond = threading.Condition()
        self._pending: deque[_Absorb] = deque()
        self._pending_events = 0
        self._submitted = 0  # items handed to the absorber
        self._absorbed = 0  # items it has committed to DuckDB
        self._absorb_error: BaseException | None = None
        self._absorber: threading.Thread | None = None
        self._absorber_stop = False
        self._resync = False  # after a failed absorb: skip what DuckDB already holds
        self._flush_wanted = 0  # readers waiting for the absorber: absorb now
        if self.read_only:
            self._absorb_leftover_journal()
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
            # Replay a journal left by a crash whatever this store's own mode: a
            # journal=False writer must continue the chain after the journalled records.
            journal = Journal(self.path)
            try:
                replayed = self._setup(con, journal)
                journal.remove(replayed)  # DuckDB holds all of it now
                if self.journal:
                    journal.start()
            except (duckdb.Error, OSError, JournalCorrupt) as exc:
                con.close()
                raise AuditUnavailable(f"audit store {self.describe()} cannot be initialised: {_first_line(exc)}") from exc
            except BaseException:
                con.close()
                raise
            self._db = con
            self._suspect = False
            if self.journal:
                self._journal = journal
        if self.journal:
            self._start_absorber()

    def _setup(self, con: duckdb.DuckDBPyConnection, journal: Journal) -> list[Path]:
        """Create the schema, absorb what a crashed writer left in the journal, and load
        the chain head; return the journal segments now absorbed."""
        con.execute("BEGIN TRANSACTION")
        try:
            self._ddl(con)
            replayed = _replay(con, journal, self.describe())
            # The process holds DuckDB's file lock, so it is the chain's only writer: the
            # head lives in memory, loaded from the last record (authoritative; the
            # audit_chains row is only brought up to date at checkpoints and close).
            head = _last(con, self.chain_id)
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
        return replayed

    def _ddl(self, con: duckdb.DuckDBPyConnection) -> None:
        for stmt in duckdb_ddl():
            con.execute(stmt)
        row = _one(con, "SELECT value FROM audit_meta WHERE key = 'schema_version'")
        if row is None:
            con.execute("INSERT INTO audit_meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])
        elif int(row[0]) > SCHEMA_VERSION:
            raise AuditConfigError(f"audit store {self.describe()} has schema version {row[0]}, newer than this warden ({SCHEMA_VERSION})")

    def _absorb_leftover_journal(self) -> None:
        """A read-only open of a store whose writer crashed: absorb its journal first
        (what DuckDB does with its own write-ahead log), so readers and ``verify`` see
        every record whose append returned."""
        journal = Journal(self.path)
        try:
            if not journal.has_records():
                return
        except OSError:
            return
        with _OPEN_LOCK:
            if str(self.path.resolve()) in _OPEN_FILES:
                return  # a writer of this process owns the journal and absorbs it
        try:
            con = duckdb.connect(str(self.path))
        except duckdb.Error as exc:
            # Locked by a running writer (which owns and absorbs the journal): the
            # read-only open reports that as usual. Otherwise (no write permission) a
            # chain without its journalled tail must not be shown as the whole log.
            self._connect(read_only=True).close()
            raise AuditUnavailable(
                f"audit store {self.describe()}: its intent journal holds records a crashed writer did not absorb, "
                f"and the store cannot be opened for writing to absorb them ({_first_line(exc)}); "
                "open it once with write access (start the gateway)"
            ) from exc
        try:
            con.execute("SET TimeZone = 'UTC'")
            con.execute("BEGIN TRANSACTION")
            try:
                replayed = _replay(con, journal, self.describe())
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
            journal.remove(replayed)
        except (duckdb.Error, OSError, JournalCorrupt) as exc:
            raise AuditUnavailable(f"audit store {self.describe()}: cannot absorb its intent journal: {_first_line(exc)}") from exc
        finally:
            con.close()

    def _ensure_writer(self) -> None:
        if self._db is None:
            self._open_writer()
            return
        if self.journal:
            # DuckDB's health is the absorber's business; the writer needs the journal.
            if self._journal is None or self._journal.broken:
                self._restart_journal()
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

    def _restart_journal(self) -> None:
        """After a failed journal write: once the absorber has caught up, reopen the
        store (replaying whatever the journal holds) and start a fresh segment."""
        if not self._drain(self.append_timeout):
            raise AuditUnavailable(f"audit store {self.describe()}: the intent journal failed and DuckDB has not absorbed it yet")
        self._stop_absorber()
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        self._reopen()

    def _writer_failed(self, exc: BaseException) -> None:
        if self.journal:
            return  # the journal marks itself broken; the absorber owns the connection
        if self._db is not None:
            with contextlib.suppress(duckdb.Error):
                self._db.execute("ROLLBACK")
        self._suspect = True

    def _is_outage(self, exc: BaseException) -> bool:
        return isinstance(exc, _OUTAGE)

    def _close_connections(self) -> None:
        self._stop_absorber()
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
        self._release_claim()

    # ------------------------------------------------------------------ writing

    def _payload(self, events: list[AuditEvent], canonicals: list[bytes]) -> Any:
        return event_lines(events, canonicals) if self.journal else arrow_table(events)

    def _commit(self, item: _Batch, checkpoint_for: Callable[[_Batch], Checkpoint | None]) -> Checkpoint | None:
        if self.journal:
            assert item.events is not None
            cp = checkpoint_for(item)
            self._journal_append(item.payload + checkpoint_line(cp) if cp is not None else item.payload, item.events, cp)
            return cp
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
        if self.journal:
            self._journal_append(checkpoint_line(cp), [], cp)
            return cp
        con.execute("BEGIN TRANSACTION")
        self._insert_checkpoint(con, cp)
        self._save_head(con, seq, h, now)
        con.execute("COMMIT")
        return cp

    def _finish(self) -> None:
        if self.journal:
            drained = self._drain(max(self.append_timeout, 30.0))
            self._stop_absorber()
            journal, self._journal = self._journal, None
            if journal is not None:
                journal.close()
                if drained:
                    journal.remove([p for _, p in journal.segments()])
                else:
                    log.error("audit store %s: DuckDB did not absorb every journalled record; the next open absorbs them", self.describe())
                    return
        # Without a signing key no checkpoint moved the head row; bring it up to date.
        seq, h = self._committed_head
        if self._db is not None and seq:
            try:
                self._save_head(self._db, seq, h, utcnow())
            except duckdb.Error as exc:
                log.warning("cannot update the chain head of %s: %s", self.describe(), _first_line(exc))

    # ------------------------------------------------------------------ journal and absorber

    def _journal_append(self, payload: bytes, events: list[AuditEvent], cp: Checkpoint | None) -> None:
        """Make a batch durable in the journal, then queue it for the absorber."""
        journal = self._journal
        assert journal is not None
        with self._jcond:
            if self._pending_events >= MAX_UNABSORBED:  # DuckDB is not keeping up: wait for room
                deadline = time.monotonic() + self.append_timeout
                while self._pending_events >= MAX_UNABSORBED:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise AuditUnavailable(f"audit store {self.describe()}: DuckDB is {self._pending_events} records behind the intent journal")
                    self._jcond.wait(remaining)
        segment = journal.append(payload)  # durable from here on
        with self._jcond:
            self._pending.append(_Absorb(events, [cp] if cp is not None else [], segment))
            self._pending_events += len(events)
            self._submitted += 1
            self._jcond.notify_all()

    def _start_absorber(self) -> None:
        with self._jcond:
            self._absorber_stop = False
            self._absorb_error = None
        self._absorber = threading.Thread(target=self._absorb_loop, name=f"warden-audit-absorber-{self.chain_id}", daemon=True)
        self._absorber.start()
        _ABSORBING.add(self)

    def _stop_absorber(self, timeout: float | None = None) -> None:
        """Stop the absorber once it has absorbed what is queued (or, when DuckDB fails,
        at once: the journal keeps the rest)."""
        thread = self._absorber
        if thread is None:
            return
        with self._jcond:
            self._absorber_stop = True
            self._jcond.notify_all()
        thread.join(timeout)
        if not thread.is_alive():
            self._absorber = None
            _ABSORBING.discard(self)

    def _drain(self, timeout: float) -> bool:
        """Wait until the absorber has committed everything queued so far."""
        deadline = time.monotonic() + timeout
        with self._jcond:
            target = self._submitted
            self._flush_wanted += 1
            self._jcond.notify_all()
            try:
                while self._absorbed < target:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or self._absorber is None:
                        return False
                    self._jcond.wait(remaining)
            finally:
                self._flush_wanted -= 1
        return True

    def _wait_absorbed(self) -> None:
        """Before a read: everything journalled so far must be in DuckDB."""
        with self._jcond:
            if self._absorbed >= self._submitted:
                return
            target = self._submitted
            deadline = time.monotonic() + self.append_timeout
            self._flush_wanted += 1
            self._jcond.notify_all()
            try:
                self._wait_target(target, deadline)
            finally:
                self._flush_wanted -= 1

    def _wait_target(self, target: int, deadline: float) -> None:
        """(Holding ``_jcond``) wait until the absorber has committed ``target`` items."""
        while self._absorbed < target:
            if self._absorber is None:
                raise AuditUnavailable(f"audit store {self.describe()} cannot be read: journalled records are not in DuckDB (the store is closing)")
            if self._absorb_error is not None:
                raise AuditUnavailable(
                    f"audit store {self.describe()} cannot be read: journalled records are not in DuckDB yet "
                    f"({_first_line(self._absorb_error)})"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AuditUnavailable(f"audit store {self.describe()} cannot be read: DuckDB did not absorb the journal within {self.append_timeout:.0f}s")
            self._jcond.wait(remaining)

    def _absorb_loop(self) -> None:
        backoff = 0.05
        kept = 0  # journal segments before this one are deleted
        while True:
            with self._jcond:
                while not self._pending and not self._absorber_stop:
                    self._jcond.wait()
                deadline = time.monotonic() + ABSORB_DELAY
                while self._pending_events < ABSORB_MIN and not (self._absorber_stop or self._flush_wanted or self._absorb_error):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._jcond.wait(remaining)
                if not self._pending or (self._absorber_stop and self._absorb_error is not None):
                    return  # done, or closing while DuckDB fails: the journal keeps the rest
                items: list[_Absorb] = []
                size = 0
                for it in self._pending:
                    items.append(it)
                    size += len(it.events)
                    if size >= ABSORB_MAX:
                        break
            try:
                self._absorb(items)
            except Exception as exc:
                log.warning("audit store %s: cannot absorb the intent journal into DuckDB (retrying): %s", self.describe(), _first_line(exc))
                with self._jcond:
                    self._absorb_error = exc
                    self._resync = True
                    self._jcond.notify_all()
                    if not self._absorber_stop:
                        self._jcond.wait(backoff)  # a retry delay; close() cuts it short
                backoff = min(backoff * 2, 2.0)
                continue
            backoff = 0.05
            journal = self._journal
            if journal is not None and items[-1].segment > kept:
                with contextlib.suppress(OSError):
                    journal.discard_before(items[-1].segment)  # all older segments are in DuckDB now
                kept = items[-1].segment
            with self._jcond:
                for _ in items:
                    self._pending.popleft()
                self._pending_events -= size
                self._absorbed += len(items)
                self._absorb_error = None
                self._jcond.notify_all()

    def _absorb(self, items: list[_Absorb]) -> None:
        """One DuckDB transaction with the items' records and checkpoints."""
        events = items[0].events if len(items) == 1 else [e for it in items for e in it.events]
        checkpoints = [cp for it in items for cp in it.checkpoints]
        if self._resync:
            self._reconnect()
        con = self._db
        assert con is not None
        if self._resync:  # an earlier attempt may have committed after all
            last = _last(con, self.chain_id)[0]
            events = [e for e in events if e.seq > last]
            checkpoints = [cp for cp in checkpoints if not _has_checkpoint(con, cp)]
        warden_audit_batch = arrow_table(events) if events else None  # noqa: F841 - read by DuckDB's replacement scan
        try:
            if not checkpoints:
                if events:
                    con.execute("INSERT INTO audit_events SELECT * FROM warden_audit_batch")
            else:
                con.execute("BEGIN TRANSACTION")
                if events:
                    con.execute("INSERT INTO audit_events SELECT * FROM warden_audit_batch")
                for cp in checkpoints:
                    self._insert_checkpoint(con, cp)
                last_cp = checkpoints[-1]
                self._save_head(con, last_cp.seq, last_cp.record_hash, last_cp.time)
                con.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(duckdb.Error):
                con.execute("ROLLBACK")
            raise
        self._resync = False

    def _reconnect(self) -> None:
        """The absorber's connection check after a failure (reopen when it is broken)."""
        con = self._db
        if con is not None:
            try:
                con.execute("SELECT 1").fetchall()
                return
            except duckdb.Error:
                pass
        with self._lock:
            if self._db is not None:
                with contextlib.suppress(duckdb.Error):
                    self._db.close()
                self._db = None
            con = self._connect(read_only=False)
            try:
                con.execute("BEGIN TRANSACTION")
                self._ddl(con)
                con.execute("COMMIT")
            except BaseException:
                con.close()
                raise
            self._db = con

    # ------------------------------------------------------------------ reading

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        if self.journal and not self.read_only:
            self._wait_absorbed()
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


# --------------------------------------------------------------------------- replay


def _last(con: duckdb.DuckDBPyConnection, chain_id: str) -> tuple[int, str]:
    """(seq, record_hash) of a chain's last stored record, or its genesis."""
    last = _one(con, "SELECT seq, record_hash FROM audit_events WHERE chain_id = ? ORDER BY seq DESC LIMIT 1", [chain_id])
    return (int(last[0]), str(last[1])) if last else (0, genesis_hash(chain_id))


def _has_checkpoint(con: duckdb.DuckDBPyConnection, cp: Checkpoint) -> bool:
    return _one(con, "SELECT 1 FROM audit_checkpoints WHERE chain_id = ? AND seq = ? AND signature = ?", [cp.chain_id, cp.seq, cp.signature]) is not None


def _replay(con: duckdb.DuckDBPyConnection, journal: Journal, where: str) -> list[Path]:
    """Insert (inside the caller's transaction) every journalled record after its
    chain's stored head, and every journalled checkpoint not stored yet; return the
    segments read. Raises JournalCorrupt when the journal does not continue the chain."""
    replay = journal.read()
    if replay.torn:
        log.warning("audit store %s: discarding %d bytes of an unfinished intent-journal frame (never confirmed)", where, replay.torn)
    heads: dict[str, tuple[int, str]] = {}
    events: list[AuditEvent] = []
    checkpoints: list[Checkpoint] = []
    for entry in replay.entries:
        if isinstance(entry, Checkpoint):
            if not _has_checkpoint(con, entry):
                checkpoints.append(entry)
            continue
        head = heads.get(entry.chain_id)
        if head is None:
            head = heads[entry.chain_id] = _last(con, entry.chain_id)
        if entry.seq <= head[0]:
            continue  # absorbed before the crash
        if entry.seq != head[0] + 1 or entry.prev_hash != head[1] or entry.compute_hash() != entry.record_hash:
            raise JournalCorrupt(f"journalled record seq {entry.seq} of chain {entry.chain_id!r} does not continue the stored chain (head seq {head[0]})")
        heads[entry.chain_id] = (entry.seq, entry.record_hash)
        events.append(entry)
    if events:
        warden_audit_batch = arrow_table(events)  # noqa: F841 - read by DuckDB's replacement scan
        con.execute("INSERT INTO audit_events SELECT * FROM warden_audit_batch")
    for cp in checkpoints:
        con.execute(
            "INSERT INTO audit_checkpoints (chain_id, seq, record_hash, checkpoint_time, key_id, signature, mark) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [cp.chain_id, cp.seq, cp.record_hash, cp.time, cp.key_id, cp.signature, cp.mark],
        )
    now = utcnow()
    for chain_id in {e.chain_id for e in events} | {cp.chain_id for cp in checkpoints}:
        seq, h = heads.get(chain_id) or _last(con, chain_id)
        if _one(con, "SELECT 1 FROM audit_chains WHERE chain_id = ?", [chain_id]) is None:
            con.execute("INSERT INTO audit_chains VALUES (?, ?, ?, ?)", [chain_id, seq, h, now])
        else:
            con.execute("UPDATE audit_chains SET last_seq = ?, last_hash = ?, updated_at = ? WHERE chain_id = ?", [seq, h, now, chain_id])
    if events or checkpoints:
        log.warning("audit store %s: absorbed %d record(s) and %d checkpoint(s) from the intent journal", where, len(events), len(checkpoints))
    return replay.segments
