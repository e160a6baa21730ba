"""``%%sql audit``: the auditor's SQL over the live audit log, served by the gateway.

The gateway is the only process that opens the store (DuckDB allows one), so an
auditor's query runs there, on a cursor of the store's own DuckDB connection (MVCC:
it sees every committed record and never blocks the writer). Before anything runs:

- the caller must be an auditor under the policy (``auditors:``; in local mode the OS
  user audits their own log);
- the cell goes through the same analysis as any other (``analyze_cell``) against a
  catalog that holds only the views (docs/audit.md §9): SELECT only, every
  relation one of the views, every function in the DuckDB allow table, no file reader,
  no ATTACH/COPY/PRAGMA/SET/INSTALL, nothing unresolved; otherwise it is denied;
- an ``audit.read`` record with the auditor's SQL is durable (no audit, no access),
  denied attempts included.

Results use the gateway's frame protocol, so the kernel builds a DataFrame as for any
other connection.
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from warden.audit.views import SCHEMA, VIEW_COLUMNS, views_catalog, with_views
from warden.gateway.frames import json_frame
from warden.gateway.service import (
    AuditUnavailableError,
    CellOutcome,
    CellRequest,
    ContextRefused,
    Gateway,
    statement_params,
)
from warden.policy.engine import Identity
from warden.sql.analyze import analyze_cell
from warden.sql.model import CellAnalysis

#: The built-in connection name (a policy connection of this name is shadowed).
AUDIT_CONNECTION = "audit"
_VIEWS = frozenset(f"{SCHEMA}.{name}" for name in VIEW_COLUMNS)
_CATALOG = views_catalog()


def may_audit(gateway: Gateway, identity: Identity) -> bool:
    """An auditor under the policy's ``auditors`` section; in local mode the OS user is
    the auditor of their own log (the gateway runs as that user and says so)."""
    return gateway.config.mode == "local" or gateway.is_auditor(identity)


def check(analysis: CellAnalysis) -> list[dict[str, Any]]:
    """Why an auditor's cell may not run (empty: it may). Fail closed on anything the
    analysis could not resolve."""
    reasons: list[dict[str, Any]] = []
    for problem in analysis.unresolved:
        reasons.append({"rule": f"audit/{problem.code}", "message": problem.message, "statement": None})
    if not analysis.statements and not analysis.unresolved:
        reasons.append({"rule": "audit/empty", "message": "the cell holds no SQL statement", "statement": None})
    for st in analysis.statements:
        label = f"statement {st.index + 1} ({st.kind})"
        for problem in st.unresolved:
            reasons.append({"rule": f"audit/{problem.code}", "message": f"{label}: {problem.message}", "statement": st.index})
        if st.kind != "select":
            reasons.append({"rule": "audit/read-only", "message": f"{label}: the audit connection runs SELECT only", "statement": st.index})
        other = [r for r in st.reads if r not in _VIEWS]
        if other or st.writes:
            names = ", ".join(sorted({*other, *st.writes}))
            reasons.append({"rule": "audit/views-only", "message": f"{label}: only the views {', '.join(VIEW_COLUMNS)} may be named, not {names}", "statement": st.index})
        if st.functions:
            reasons.append({"rule": "audit/function", "message": f"{label}: {', '.join(st.functions)} is not a reviewed built-in function", "statement": st.index})
    return reasons


class AuditConnection:
    """Runs auditors' cells for one gateway over its audit store (DuckDB)."""

    def __init__(self, gateway: Gateway, store: Any) -> None:
        self.gateway = gateway
        self.store = store

    def completions(self) -> dict[str, list[str]]:
        return {f"{SCHEMA}.{name}": list(cols) for name, cols in VIEW_COLUMNS.items()}

    def run(self, identity: Identity, req: CellRequest, *, client_ip: str = "") -> CellOutcome:
        base = self.gateway.base_event(identity, req.context, client_ip)
        query_id = "q_" + uuid.uuid4().hex[:20]
        try:
            # The session and cell-run ids are the caller's own, as for any cell: an
            # audit.read never lands in another user's session.
            self.gateway.claim_context(identity, req.context, client_ip)
        except ContextRefused as exc:
            return CellOutcome("error", {"status": "error", "error": {"code": exc.code, "message": str(exc)}}, http_status=403)
        except AuditUnavailableError as exc:
            return CellOutcome("error", {"status": "error", "error": {"code": "audit-unavailable", "message": str(exc)}}, http_status=503)
        base["correlation_id"] = base["correlation_id"] or query_id
        analysis = analyze_cell(req.sql, _CATALOG)
        reasons = [] if may_audit(self.gateway, identity) else [
            {"rule": "audit/not-auditor", "message": "reading the audit log needs the policy's 'auditors' (groups, users or roles)", "statement": None}
        ]  # fmt: skip
        reasons = reasons or check(analysis)
        if self._kind() is None:
            reasons = reasons or [{"rule": "audit/store", "message": "this gateway's audit store cannot be queried through the audit connection",
                                   "statement": None}]  # fmt: skip
        event = dict(base)
        event.update(
            type="audit.read", connection=AUDIT_CONNECTION, dialect="duckdb", sql=req.sql,
            statement_kinds=list(analysis.kinds), fingerprint=analysis.fingerprint, statement_hash=analysis.statement_hash,
            action="deny" if reasons else "allow", rule_ids=list(dict.fromkeys(r["rule"] for r in reasons)),
            reasons=[r["message"] for r in reasons], status="denied" if reasons else "ok", query_id=query_id,
        )  # fmt: skip
        try:
            ids = self.gateway.audit([event])
        except AuditUnavailableError as exc:
            return CellOutcome("error", {"status": "error", "error": {"code": "audit-unavailable", "message": str(exc)}}, http_status=503)
        if reasons:
            body = {"status": "denied", "rule_ids": event["rule_ids"], "reasons": reasons, "event_id": ids[0] if ids else "",
                    "next": "the audit connection answers SELECTs over the views " + ", ".join(VIEW_COLUMNS)}  # fmt: skip
            return CellOutcome("denied", body, http_status=403)
        header: dict[str, Any] = {"action": "allow", "rule_ids": [], "reasons": [], "event_id": ids[0] if ids else "", "query_id": query_id,
                  "approval_id": None, "statements": len(analysis.statements)}  # fmt: skip
        max_rows = min(x for x in (req.max_rows or 0, self.gateway.config.max_rows or 0, 1_000_000) if x)
        timeout = (self.gateway.config.statement_timeout_ms or 60_000) / 1000
        return CellOutcome("stream", header, self._frames(analysis, req.params, header, max_rows, timeout))

    def _kind(self) -> str | None:
        name = type(self.store).__name__
        return {"DuckDBStore": "duckdb", "PostgresStore": "postgres"}.get(name)

    def _select(self, sql: str, params: tuple[Any, ...], max_rows: int, timeout: float) -> pa.Table:
        """One analysed SELECT over the views: a cursor on the DuckDB store's own
        connection, or a read-only transaction on the PostgreSQL store."""
        if self._kind() == "postgres":
            return self._select_postgres(sql, params, max_rows, timeout)
        cur = self.store._cursor()
        # DuckDB has no statement timeout: interrupt the cursor from a timer.
        timer = threading.Timer(timeout, cur.interrupt)
        timer.start()
        try:
            # Streamed and cut at max_rows + 1: a huge result is never materialised.
            reader = cur.sql(with_views(sql), params=list(params) or None).to_arrow_reader(65536)
            batches: list[pa.RecordBatch] = []
            count = 0
            for batch in reader:
                batches.append(batch)
                count += batch.num_rows
                if count > max_rows:
                    break
            return pa.Table.from_batches(batches, schema=reader.schema)
        finally:
            timer.cancel()
            cur.close()

    def _select_postgres(self, sql: str, params: tuple[Any, ...], max_rows: int, timeout: float) -> pa.Table:
        conn = self.store._reader()
        try:
            with conn.transaction():
                # Read-only and bounded, whatever the (transpiled) statement turns out to be.
                conn.execute("SET TRANSACTION READ ONLY")
                conn.execute(f"SET LOCAL statement_timeout = {max(int(timeout * 1000), 1)}")
                with conn.cursor() as cur:
                    cur.execute(with_views(_inline_params(sql, params), "postgres").encode())
                    names = [d.name for d in cur.description or ()]
                    rows = cur.fetchmany(max_rows + 1)
        except Exception:
            conn.close()
            raise
        finally:
            self.store._release(conn)
        if not rows:
            return pa.table({n: pa.array([], pa.string()) for n in names})
        return pa.Table.from_pylist([dict(zip(names, r, strict=True)) for r in rows])

    def _frames(self, analysis: CellAnalysis, params_all: tuple[Any, ...], header: dict[str, Any], max_rows: int, timeout: float) -> Iterator[bytes]:
        started = time.monotonic()
        yield json_frame(b"C", header)
        total = size = 0
        status = "ok"
        for st in analysis.statements:
            try:
                # Bound parameters ({{var}}, :var) stay parameters, numbered per statement.
                sql, params = statement_params(st.sql, "duckdb", params_all)
                table = self._select(sql, params, max_rows, timeout)
            except Exception as exc:
                status = "failed"
                message = str(exc).splitlines()[0][:500] if str(exc) else type(exc).__name__
                code = "timeout" if "interrupt" in message.lower() or "statement timeout" in message.lower() else "failed"
                yield json_frame(b"X", {"code": code, "message": f"statement {st.index + 1}: {message}", "sqlstate": None})
                break
            truncated = table.num_rows > max_rows
            if truncated:
                table = table.slice(0, max_rows)
            yield json_frame(b"S", {"index": st.index, "kind": st.kind, "columns": table.column_names, "masks": []})
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, table.schema) as writer:
                writer.write_table(table, max_chunksize=65536)
            data = sink.getvalue().to_pybytes()
            for i in range(0, len(data), 1 << 20):
                chunk = data[i : i + (1 << 20)]
                yield b"A" + len(chunk).to_bytes(4, "big") + chunk
            total += table.num_rows
            size += len(data)
            yield json_frame(b"E", {"index": st.index, "rows": table.num_rows, "bytes": len(data), "truncated": truncated,
                                    "rowcount": table.num_rows, "detectors": []})  # fmt: skip
        yield json_frame(b"T", {"status": status, "rows": total, "bytes": size, "duration_ms": round((time.monotonic() - started) * 1000, 3),
                                "event_id": header["event_id"], "query_id": header["query_id"]})  # fmt: skip


def _inline_params(sql: str, params: tuple[Any, ...]) -> str:
    """The (DuckDB) statement with the auditor's bound values as SQL literals, before it
    is transpiled for PostgreSQL (sqlglot quotes them; psycopg binds ``%s``, not the
    ``$n`` of the cell)."""
    import sqlglot
    from sqlglot import exp

    if not params:
        return sql
    tree = sqlglot.parse_one(sql, read="duckdb")

    def literal(value: Any) -> exp.Expr:
        if value is None:
            return exp.Null()
        if isinstance(value, bool):
            return exp.Boolean(this=value)
        if isinstance(value, (int, float)):
            return exp.Literal.number(value)
        return exp.Literal.string(str(value))

    for node in list(tree.find_all(exp.Placeholder, exp.Parameter)):
        index = str(node.this.this if isinstance(node.this, exp.Expr) else node.this or "")
        if index.isdigit() and 1 <= int(index) <= len(params):
            node.replace(literal(params[int(index) - 1]))
    return tree.sql(dialect="duckdb")


def fingerprint(sql: str) -> str:
    """Short id of an auditor query (for display)."""
    return hashlib.sha256(sql.encode()).hexdigest()[:12]
