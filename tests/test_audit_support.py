"""Shared helpers of the audit tests: one store environment per backend.

``StoreEnv`` opens stores on a real DuckDB file or on the real PostgreSQL of the test
fixtures, and edits their rows with plain SQL the way an attacker with database
access would (for PostgreSQL with triggers disabled, as the table owner could).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pyarrow as pa
import pytest

from warden.audit import AuditEvent, AuditStore, EventDraft, open_store
from warden.audit.record import FIELDS, seal
from warden.audit.schema import ARROW_SCHEMA
from warden.audit.store import record_rows

SECRET = b"test-gateway-secret-0123456789"
BACKENDS = [pytest.param("duckdb", id="duckdb"), pytest.param("postgres", id="postgres", marks=pytest.mark.postgres)]


def draft(i: int = 0, **overrides: Any) -> EventDraft:
    """A representative query event; ``i`` varies the content."""
    values: dict[str, Any] = dict(
        type="query.executed",
        subject=f"user{i % 7}",
        display_name=f"User {i % 7}",
        subject_kind="human",
        roles=("analyst",),
        groups=("analysts", "emea"),
        auth_method="oidc",
        client_ip="10.0.0.7",
        session_id=f"s{i % 5}",
        kernel_id="k-1",
        notebook_path="work/analysis.ipynb",
        cell_id=f"cell-{i}",
        execution_count=i,
        gateway_id="gw-test",
        mode="shared",
        connection="warehouse",
        dialect="postgres",
        statement_kinds=("select",),
        sql="SELECT name, email FROM customers WHERE id = ?",
        fingerprint=f"fp{i % 3}",
        statement_hash="0" * 64,
        params=["<redacted>"],
        objects=[{"relation": "public.customers", "columns": {"email": ["projected"], "id": ["predicate"]}}],
        lineage={"email": ["public.customers.email"]},
        action="mask",
        rule_ids=("role:analyst/masks/pii.email",),
        reasons=("email is pii",),
        masks=[{"column": "email", "operator": "redact", "classifications": ["pii.email"]}],
        status="success",
        rows=i,
        bytes=100 * i,
        duration_ms=1.25,
        correlation_id=f"q{i}",
    )
    values.update(overrides)
    return EventDraft(**values)


class StoreEnv:
    """Stores of one backend plus raw SQL access to the same database."""

    def __init__(self, kind: str, tmp_path: Path, dsn: str | None = None) -> None:
        self.kind = kind
        self.tmp_path = tmp_path
        self.path = tmp_path / "audit.duckdb"
        self.dsn = dsn
        self.url = f"duckdb://{self.path}" if kind == "duckdb" else str(dsn)
        self.stores: list[AuditStore] = []

    def open(self, **options: Any) -> AuditStore:
        options.setdefault("chain_id", "gw-test")
        store = open_store(self.url, **options)
        self.stores.append(store)
        return store

    def close_all(self) -> None:
        for store in self.stores:
            store.close()

    # ------------------------------------------------------------------ raw SQL

    def sql(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run SQL on the store's database directly (``?`` placeholders)."""
        if self.kind == "duckdb":
            con = duckdb.connect(str(self.path))
            try:
                res = con.execute(statement, list(params))
                return res.fetchall() if res.description else []
            finally:
                con.close()
        with psycopg.connect(str(self.dsn), autocommit=True) as conn:
            conn.execute("SET session_replication_role = replica")  # the append-only trigger stops honest mistakes, not an owner
            cur = conn.execute(statement.replace("?", "%s"), list(params))
            return cur.fetchall() if cur.description else []

    def insert_event(self, event: AuditEvent) -> None:
        row = record_rows([event])[0]
        if self.kind == "duckdb":
            table = pa.Table.from_arrays([pa.array([v], type=f.type) for v, f in zip(row, ARROW_SCHEMA, strict=True)], schema=ARROW_SCHEMA)
            con = duckdb.connect(str(self.path))
            try:
                con.register("forged", table)
                con.execute("INSERT INTO audit_events SELECT * FROM forged")
            finally:
                con.close()
            return
        cols = ", ".join(f'"{f}"' for f in FIELDS)
        marks = ", ".join("?" for _ in FIELDS)
        self.sql(f"INSERT INTO audit_events ({cols}) VALUES ({marks})", [list(v) if isinstance(v, tuple) else v for v in row])

    def renumber(self, chain_id: str, from_seq: int, delta: int) -> None:
        """Shift seq of every record >= from_seq by delta (two steps: the PK forbids overlaps)."""
        self.sql("UPDATE audit_events SET seq = -(seq + ?) WHERE chain_id = ? AND seq >= ?", [delta, chain_id, from_seq])
        self.sql("UPDATE audit_events SET seq = -seq WHERE chain_id = ? AND seq < 0", [chain_id])

    def record(self, chain_id: str, seq: int) -> AuditEvent:
        cols = ", ".join(f'"{f}"' for f in FIELDS)
        rows = self.sql(f"SELECT {cols} FROM audit_events WHERE chain_id = ? AND seq = ?", [chain_id, seq])
        assert len(rows) == 1, rows
        return AuditEvent.from_dict(dict(zip(FIELDS, rows[0], strict=True)))

    def set_head(self, chain_id: str, seq: int, record_hash: str) -> None:
        self.sql("UPDATE audit_chains SET last_seq = ?, last_hash = ? WHERE chain_id = ?", [seq, record_hash, chain_id])


def make_env(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> StoreEnv:
    dsn = request.getfixturevalue("pg_dsn") if kind == "postgres" else None
    return StoreEnv(kind, tmp_path, dsn)


def forge(chain_id: str, seq: int, prev_hash: str, i: int = 999, **overrides: Any) -> AuditEvent:
    """A record an attacker computes with warden's own code."""
    return seal(draft(i, **overrides), chain_id=chain_id, seq=seq, prev_hash=prev_hash, now=dt.datetime.now(dt.UTC))
