"""Gateway state shared by replicas, in the state database (the approvals store:
DuckDB in local mode, PostgreSQL for replicas):

* ``warden_bindings``: which subject opened a session id or a cell run id. Events and
  cells naming an id that another subject holds are refused, so nobody can attach
  records to someone else's session (issue 8 §4).
* ``warden_taints``: classifications a copy carried into a column (CTAS, INSERT ...
  SELECT of classified data). They outlive a restart and every replica sees them, so a
  copy is masked like its source everywhere (issue 8 §6).
* ``warden_catalog_epochs``: a counter per connection, moved on by DDL through any
  replica; a replica that sees it move reloads that connection's catalog, so a table
  created through one gateway is known to all of them at their next cell.

Both only grow; rows are never updated, so a replica's cache can only be behind, never
wrong. A taint is committed before the statement that creates the copy runs.

With DuckDB state (one gateway process owns it) the bindings live in a SQLite file
beside it instead (``bindings.sqlite3``): every cell names a new cell run id, and a
durable single-row insert costs DuckDB ~2 ms of CPU but SQLite (WAL, synchronous=FULL)
~0.1 ms (benchmarks/profile_gateway.py, "session binding"). Bindings an older version
wrote into DuckDB's ``warden_bindings`` are copied over once.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime

from warden.gateway.approvals import ApprovalStore

_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS warden_bindings (
        kind TEXT NOT NULL,
        id TEXT NOT NULL,
        subject TEXT NOT NULL,
        created_at TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (kind, id)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS warden_taints (
        column_name TEXT NOT NULL,
        classification TEXT NOT NULL,
        created_at TIMESTAMPTZ NOT NULL,
        created_by TEXT NOT NULL,
        PRIMARY KEY (column_name, classification)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS warden_catalog_epochs (
        connection TEXT PRIMARY KEY,
        epoch BIGINT NOT NULL
    )
    """,
)


class SessionBindings:
    """Session and cell-run ids, each bound to the subject that used it first."""

    CACHE = 50_000

    def __init__(self, db: ApprovalStore) -> None:
        self._db = db
        self._known: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._lock = threading.Lock()
        self._lite: sqlite3.Connection | None = None
        self._lite_lock = threading.Lock()
        if db.kind == "duckdb":
            self._lite = _open_sqlite(db)

    def close(self) -> None:
        lite, self._lite = self._lite, None
        if lite is not None:
            with self._lite_lock, contextlib.suppress(sqlite3.Error):
                lite.close()

    def owner(self, kind: str, id_: str, subject: str) -> str:
        """The subject ``id_`` is bound to: ``subject`` if it was free (now bound)."""
        key = (kind, id_)
        with self._lock:
            found = self._known.get(key)
            if found is not None:
                self._known.move_to_end(key)
                return found
        if self._lite is not None:
            bound = self._owner_sqlite(kind, id_, subject)
        else:
            # Insert-if-absent (one round trip when the id is new), else read the owner:
            # concurrent first uses (two replicas) agree on one owner.
            rows = self._db.execute(
                "INSERT INTO warden_bindings (kind, id, subject, created_at) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT DO NOTHING RETURNING subject",
                (kind, id_, subject, datetime.now(UTC)),
            )
            if not rows:
                rows = self._db.execute("SELECT subject FROM warden_bindings WHERE kind = %s AND id = %s", (kind, id_))
            bound = str(rows[0][0]) if rows else subject
        with self._lock:
            self._known[key] = bound
            while len(self._known) > self.CACHE:
                self._known.popitem(last=False)
        return bound

    def _owner_sqlite(self, kind: str, id_: str, subject: str) -> str:
        lite = self._lite
        if lite is None:
            raise sqlite3.ProgrammingError("the session bindings are closed")
        with self._lite_lock:  # one connection: the insert and the read-back belong together
            cur = lite.execute(
                "INSERT OR IGNORE INTO warden_bindings (kind, id, subject, created_at) VALUES (?, ?, ?, ?)",
                (kind, id_, subject, datetime.now(UTC).isoformat()),
            )
            if cur.rowcount == 1:
                return subject  # committed (autocommit, synchronous=FULL): durable now
            row = lite.execute("SELECT subject FROM warden_bindings WHERE kind = ? AND id = ?", (kind, id_)).fetchone()
        return str(row[0]) if row else subject


def _open_sqlite(db: ApprovalStore) -> sqlite3.Connection:
    """The bindings file beside the DuckDB state (in memory when that is in memory),
    created 0600, with the rows of DuckDB's ``warden_bindings`` copied in once."""
    from warden.gateway.private import private_file

    path = db.path.with_name("bindings.sqlite3") if db.path is not None else None
    if path is not None and not path.exists():
        path.touch(mode=0o600)
    lite = sqlite3.connect(str(path) if path is not None else ":memory:", isolation_level=None, check_same_thread=False)
    try:
        if path is not None:
            private_file(path)
            lite.execute("PRAGMA journal_mode=WAL")
        lite.execute("PRAGMA synchronous=FULL")  # a binding is durable when its insert returns
        lite.execute(
            "CREATE TABLE IF NOT EXISTS warden_bindings (kind TEXT NOT NULL, id TEXT NOT NULL, subject TEXT NOT NULL, "
            "created_at TEXT NOT NULL, PRIMARY KEY (kind, id)) WITHOUT ROWID"
        )
        if lite.execute("PRAGMA user_version").fetchone()[0] == 0:
            # Bindings made before this file existed, in DuckDB: still binding.
            rows = db.execute("SELECT kind, id, subject, created_at FROM warden_bindings")
            lite.execute("BEGIN")
            lite.executemany(
                "INSERT OR IGNORE INTO warden_bindings (kind, id, subject, created_at) VALUES (?, ?, ?, ?)",
                [(str(k), str(i), str(s), c.isoformat() if isinstance(c, datetime) else str(c)) for k, i, s, c in rows],
            )
            lite.execute("PRAGMA user_version = 1")
            lite.execute("COMMIT")
    except BaseException:
        lite.close()
        raise
    return lite


class TaintStore:
    """Taints (``connection.schema.table.column`` -> classifications) and catalog
    epochs, persisted; both read in one round trip per cell on PostgreSQL.

    DuckDB state belongs to one process: the cache is written through and is the whole
    truth. PostgreSQL is shared: every read asks the table (small: one row per tainted
    column and classification), so a taint written by one replica is seen by the next
    cell on any other.
    """

    def __init__(self, db: ApprovalStore) -> None:
        self._db = db
        self._shared = db.kind == "postgres"
        self._lock = threading.Lock()
        self._cache, self._epochs = self._load()

    def _load(self) -> tuple[dict[str, frozenset[str]], dict[str, int]]:
        out: dict[str, set[str]] = {}
        epochs: dict[str, int] = {}
        rows = self._db.execute(
            "SELECT 't', column_name, classification FROM warden_taints "
            "UNION ALL SELECT 'e', connection, CAST(epoch AS TEXT) FROM warden_catalog_epochs",
            (),
        )
        for what, key, value in rows:
            if what == "t":
                out.setdefault(str(key), set()).add(str(value))
            else:
                epochs[str(key)] = int(value)
        return {k: frozenset(v) for k, v in out.items()}, epochs

    def current(self) -> Mapping[str, frozenset[str]]:
        """Every taint (fresh from the table on PostgreSQL); raises if it cannot be read."""
        if self._shared:
            fresh, epochs = self._load()
            with self._lock:
                self._cache, self._epochs = fresh, epochs
            return fresh
        with self._lock:
            return self._cache

    def epoch(self, connection: str) -> int:
        """The connection's catalog epoch as of the last :meth:`current`."""
        with self._lock:
            return self._epochs.get(connection, 0)

    def bump_epoch(self, connection: str) -> int:
        """DDL ran on ``connection``: move its epoch on (every replica reloads)."""
        rows = self._db.execute(
            "INSERT INTO warden_catalog_epochs AS e (connection, epoch) VALUES (%s, 1) "
            "ON CONFLICT (connection) DO UPDATE SET epoch = e.epoch + 1 RETURNING epoch",
            (connection,),
        )
        new = int(rows[0][0]) if rows else 0
        with self._lock:
            self._epochs[connection] = max(new, self._epochs.get(connection, 0))
        return new

    def add(self, taints: Iterable[tuple[str, Iterable[str]]], *, by: str) -> None:
        """Record taints durably (raises if the state database cannot be written)."""
        rows = [(column, c) for column, classes in taints for c in sorted(set(classes))]
        if not rows:
            return
        now = datetime.now(UTC)
        for column, classification in rows:
            self._db.execute(
                "INSERT INTO warden_taints (column_name, classification, created_at, created_by) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT DO NOTHING",
                (column, classification, now, by),
            )
        with self._lock:
            merged = dict(self._cache)
            for column, classification in rows:
                merged[column] = merged.get(column, frozenset()) | {classification}
            self._cache = merged


def setup_state(db: ApprovalStore) -> tuple[SessionBindings, TaintStore]:
    db.setup(*_SCHEMA)
    return SessionBindings(db), TaintStore(db)
