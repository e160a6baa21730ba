"""Approval requests for held cells.

A request is bound to one requester, one connection, the exact normalised
statements (``statement_hash``), the bound parameters (by hash) and a validity
window; it can be used a configured number of times. The requester can never
approve their own request. State lives in DuckDB (local mode) or PostgreSQL
(shared by gateway replicas); every change is one transaction, and using an
approval is an atomic compare-and-decrement.
"""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from warden.errors import WardenError
from warden.gateway.private import private_dir, private_file

STATUSES = ("pending", "approved", "denied", "expired", "used")


class ApprovalError(WardenError):
    """An approval cannot be created, decided or used; ``code`` says why."""

    def __init__(self, message: str, *, code: str) -> None:
        self.code = code
        super().__init__(message)


@dataclass(frozen=True)
class Approval:
    id: str
    requester: str
    connection: str
    statement_hash: str
    params_hash: str
    fingerprint: str
    sql: str  # redacted
    rule_ids: tuple[str, ...]
    reasons: tuple[str, ...]
    status: str
    created_at: datetime
    expires_at: datetime
    uses_left: int
    decided_by: str | None = None
    decided_at: datetime | None = None
    decision_reason: str | None = None
    #: the person behind the requester (a service account's ``owner``), else the subject
    requester_person: str = ""

    def effective_status(self, now: datetime | None = None) -> str:
        now = now or datetime.now(UTC)
        if self.status in ("pending", "approved") and now >= self.expires_at:
            return "expired"
        return self.status

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "requester": self.requester,
            "connection": self.connection,
            "statement_hash": self.statement_hash,
            "fingerprint": self.fingerprint,
            "sql": self.sql,
            "rule_ids": list(self.rule_ids),
            "reasons": list(self.reasons),
            "status": self.effective_status(),
            "created_at": self.created_at.isoformat(),
            "expires_at": self.expires_at.isoformat(),
            "uses_left": self.uses_left,
            "decided_by": self.decided_by,
            "decided_at": self.decided_at.isoformat() if self.decided_at else None,
            "decision_reason": self.decision_reason,
        }


_COLUMNS = (
    "id, requester, connection, statement_hash, params_hash, fingerprint, sql, rule_ids, reasons, "
    "status, created_at, expires_at, uses_left, decided_by, decided_at, decision_reason, requester_person"
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS warden_approvals (
    id TEXT PRIMARY KEY,
    requester TEXT NOT NULL,
    connection TEXT NOT NULL,
    statement_hash TEXT NOT NULL,
    params_hash TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    sql TEXT NOT NULL,
    rule_ids TEXT NOT NULL,
    reasons TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    uses_left INTEGER NOT NULL,
    decided_by TEXT,
    decided_at TIMESTAMPTZ,
    decision_reason TEXT,
    requester_person TEXT
)
"""

#: pg_advisory_xact_lock key the audit store's schema setup takes (audit/postgres_store.py):
#: replicas starting together create the state tables one at a time.
SCHEMA_LOCK = 0x77617264656E


class ApprovalStore:
    """Approvals in a DuckDB file (``duckdb:///path``) or PostgreSQL (a DSN)."""

    def __init__(self, url: str) -> None:
        self._lock = threading.Lock()
        #: the DuckDB file (None in memory or on PostgreSQL)
        self.path: Path | None
        if url.startswith("duckdb://"):
            import duckdb

            self._kind = "duckdb"
            path = url[len("duckdb://") :] or ":memory:"
            self.path = None if path == ":memory:" else Path(path)
            if path != ":memory:":
                private_dir(Path(path).parent)
            self._duck = duckdb.connect(path)
            if path != ":memory:":
                private_file(Path(path))
        else:
            from psycopg_pool import ConnectionPool

            self._kind = "postgres"
            self.path = None
            self._pool = ConnectionPool(url, min_size=1, max_size=4, open=True, kwargs={"autocommit": True})
        self.setup(_SCHEMA, "ALTER TABLE warden_approvals ADD COLUMN IF NOT EXISTS requester_person TEXT")

    @property
    def kind(self) -> str:
        """``duckdb`` (one process owns the file) or ``postgres`` (shared by replicas)."""
        return self._kind

    def setup(self, *ddl: str) -> None:
        """Create state tables: in PostgreSQL in one transaction under the audit schema
        lock, so replicas starting together do not race (UniqueViolation on the type)."""
        if self._kind == "duckdb":
            with self._lock:
                for statement in ddl:
                    self._duck.execute(statement)
            return
        with self._pool.connection() as con, con.transaction():
            con.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            for statement in ddl:
                con.execute(statement.encode())

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """One statement on the state database (``%s`` placeholders); its rows, if any."""
        return self._exec(sql, params)

    # -- SQL plumbing (one statement per call; DuckDB is serialised by the lock) ---------

    def _exec(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        if self._kind == "duckdb":
            with self._lock:
                duck = self._duck.execute(sql.replace("%s", "?"), list(params))
                return duck.fetchall() if duck.description else []
        with self._pool.connection() as con:
            pg = con.execute(sql.encode(), params)
            return pg.fetchall() if pg.description else []

    # -- operations ---------------------------------------------------------------------

    def create(
        self,
        *,
        requester: str,
        connection: str,
        statement_hash: str,
        params_hash: str,
        fingerprint: str,
        sql: str,
        rule_ids: tuple[str, ...],
        reasons: tuple[str, ...],
        ttl_seconds: int,
        uses: int = 1,
        requester_person: str = "",
    ) -> Approval:
        now = datetime.now(UTC)
        approval = Approval(
            id="apr_" + uuid.uuid4().hex[:20],
            requester=requester,
            connection=connection,
            statement_hash=statement_hash,
            params_hash=params_hash,
            fingerprint=fingerprint,
            sql=sql,
            rule_ids=rule_ids,
            reasons=reasons,
            status="pending",
            created_at=now,
            expires_at=now + timedelta(seconds=ttl_seconds),
            uses_left=uses,
            requester_person=requester_person or requester,
        )
        self._exec(
            f"INSERT INTO warden_approvals ({_COLUMNS}) VALUES ({', '.join(['%s'] * 17)})",
            (
                approval.id, requester, connection, statement_hash, params_hash, fingerprint, sql,
                json.dumps(list(rule_ids)), json.dumps(list(reasons)), "pending", now,
                approval.expires_at, uses, None, None, None, approval.requester_person,
            ),
        )  # fmt: skip
        return approval

    def get(self, approval_id: str) -> Approval | None:
        rows = self._exec(f"SELECT {_COLUMNS} FROM warden_approvals WHERE id = %s", (approval_id,))
        return _row(rows[0]) if rows else None

    def list(self, *, status: str | None = None, requester: str | None = None, limit: int = 100) -> list[Approval]:
        rows = self._exec(
            f"SELECT {_COLUMNS} FROM warden_approvals ORDER BY created_at DESC LIMIT %s", (max(1, min(limit * 4, 4000)),)
        )
        out = []
        for r in rows:
            a = _row(r)
            if status and a.effective_status() != status:
                continue
            if requester and a.requester != requester:
                continue
            out.append(a)
            if len(out) >= limit:
                break
        return out

    def decide(
        self, approval_id: str, *, approver: str, approve: bool, reason: str, approver_person: str = "", allow_self: bool = False
    ) -> Approval:
        """``approver_person``: the person behind the approver (a service account's
        owner); approver and requester must be different people, not only subjects.
        ``allow_self``: local mode's explicit self-approval (the service decides when)."""
        current = self.get(approval_id)
        if current is None:
            raise ApprovalError(f"no approval request {approval_id}", code="not-found")
        theirs = {current.requester, current.requester_person or current.requester}
        if not allow_self and (approver in theirs or (approver_person and approver_person in theirs)):
            raise ApprovalError("a requester can never approve or deny their own request, under any identity of theirs", code="self-approval")
        status = current.effective_status()
        if status != "pending":
            raise ApprovalError(f"request {approval_id} is {status}, not pending", code=status)
        if not reason.strip():
            raise ApprovalError("a decision needs a reason", code="reason-required")
        new = "approved" if approve else "denied"
        rows = self._exec(
            "UPDATE warden_approvals SET status = %s, decided_by = %s, decided_at = %s, decision_reason = %s "
            "WHERE id = %s AND status = 'pending' RETURNING id",
            (new, approver, datetime.now(UTC), reason, approval_id),
        )
        if not rows:
            raise ApprovalError(f"request {approval_id} was decided by someone else meanwhile", code="conflict")
        decided = self.get(approval_id)
        assert decided is not None
        return decided

    def consume(
        self, approval_id: str, *, requester: str, connection: str, statement_hash: str, params_hash: str
    ) -> Approval:
        """Use an approved request for exactly the cell it was granted for."""
        current = self.get(approval_id)
        if current is None:
            raise ApprovalError(f"no approval request {approval_id}", code="not-found")
        if current.requester != requester:
            raise ApprovalError(f"approval {approval_id} was granted to another user", code="wrong-requester")
        if current.connection != connection:
            raise ApprovalError(f"approval {approval_id} is for connection {current.connection}", code="wrong-connection")
        if current.statement_hash != statement_hash or current.params_hash != params_hash:
            raise ApprovalError(
                f"approval {approval_id} was granted for a different statement or parameters; "
                "re-run the exact cell that was approved, or request a new approval",
                code="wrong-statement",
            )
        status = current.effective_status()
        if status == "pending":
            raise ApprovalError(f"approval {approval_id} is still waiting for an approver", code="pending")
        if status != "approved":
            raise ApprovalError(f"approval {approval_id} is {status}", code=status)
        rows = self._exec(
            "UPDATE warden_approvals SET uses_left = uses_left - 1, "
            "status = CASE WHEN uses_left - 1 <= 0 THEN 'used' ELSE status END "
            "WHERE id = %s AND status = 'approved' AND uses_left > 0 AND expires_at > %s RETURNING id",
            (approval_id, datetime.now(UTC)),
        )
        if not rows:
            raise ApprovalError(f"approval {approval_id} has been used up or expired", code="used")
        used = self.get(approval_id)
        assert used is not None
        return used

    def close(self) -> None:
        if self._kind == "duckdb":
            with self._lock:
                self._duck.close()
        else:
            self._pool.close()


def _row(r: tuple[Any, ...]) -> Approval:
    def ts(v: Any) -> datetime:
        if isinstance(v, datetime):
            return v if v.tzinfo else v.replace(tzinfo=UTC)
        return datetime.fromisoformat(str(v))

    return Approval(
        id=r[0], requester=r[1], connection=r[2], statement_hash=r[3], params_hash=r[4],
        fingerprint=r[5], sql=r[6], rule_ids=tuple(json.loads(r[7])), reasons=tuple(json.loads(r[8])),
        status=r[9], created_at=ts(r[10]), expires_at=ts(r[11]), uses_left=int(r[12]),
        decided_by=r[13], decided_at=ts(r[14]) if r[14] is not None else None, decision_reason=r[15],
        requester_person=r[16] or r[1],
    )  # fmt: skip
