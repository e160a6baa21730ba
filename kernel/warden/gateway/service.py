"""The enforcement pipeline, independent of HTTP:

    identity -> analysis -> decision -> [approval] -> audit intent -> execute -> mask -> audit -> Arrow

Nothing runs before the intent record is durable; if the audit store cannot be
written the cell is denied. Only masked data is ever framed for the wire.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import itertools
import json
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from warden import __version__
from warden.errors import WardenError
from warden.gateway.approvals import Approval, ApprovalError, ApprovalStore
from warden.gateway.config import GatewayConfig, connection_dsn
from warden.gateway.errors_redact import redact_db_error
from warden.gateway.execute import (
    DuckDBExecutor,
    ExecutionError,
    Executor,
    Limits,
    PostgresExecutor,
    Session,
    StatementResult,
)
from warden.gateway.frames import ArrowStreamPieces, frame_header, json_frame
from warden.gateway.shape import check_origins, check_result_shape
from warden.gateway.state import setup_state
from warden.masking.detectors import scan_and_mask_values
from warden.masking.operators import mask_array
from warden.policy.conditions import Deferred, parse_condition
from warden.policy.decision_cache import DecisionCache
from warden.policy.engine import (
    Classifier,
    Decision,
    Identity,
    Reason,
    matching_roles,
    statement_facts,
)
from warden.policy.model import Policy, Principals, load_policy
from warden.sql.analyze import analyze_cell
from warden.sql.catalog import Catalog
from warden.sql.catalog_live import CatalogCache, load_duckdb_catalog, load_postgres_catalog
from warden.sql.kinds import KIND_GROUPS
from warden.sql.model import CellAnalysis
from warden.sql.rowfilter import apply_row_filters
from warden.sql.sqlmask import apply_sql_masks

AuditAppend = Callable[[list[dict[str, Any]]], list[str]]


class AuditUnavailableError(WardenError):
    """The audit store could not record an event: the cell is denied."""


class ContextRefused(WardenError):
    """A request's session or cell-run id belongs to another subject."""

    def __init__(self, message: str, *, code: str) -> None:
        self.code = code
        super().__init__(message)


def person_of(identity: Identity) -> str:
    """The person behind an identity: a service account's ``owner`` attribute (when
    the gateway copies that claim), else the subject itself."""
    return str(identity.attributes.get("owner") or identity.subject)


@dataclass(frozen=True)
class CellRequest:
    connection: str
    sql: str
    params: tuple[Any, ...] = ()
    context: dict[str, Any] = field(default_factory=dict)
    approval_id: str | None = None
    max_rows: int | None = None


@dataclass
class CellOutcome:
    status: str  # "denied" | "held" | "stream" | "error"
    body: dict[str, Any]
    frames: Iterator[bytes] | None = None
    http_status: int = 200


class Gateway:
    def __init__(
        self,
        config: GatewayConfig,
        *,
        audit: AuditAppend,
        audit_later: AuditAppend | None = None,
        policy: Policy | None = None,
    ) -> None:
        self.config = config
        self.policy = policy or load_policy(config.policy_path)
        self.decisions = DecisionCache(self.policy)
        self._audit_append = audit
        # Records that need not be durable before the response goes on (refused-token
        # aggregates) are queued in order without waiting for their commit.
        self._audit_later = audit_later or audit
        secret = config.secret()
        self.mask_key = hashlib.sha256(b"warden-mask-key\x00" + secret).digest()
        self.approvals = ApprovalStore(config.approvals_store)
        self._executors: dict[str, Executor] = {}
        self._catalogs: dict[str, CatalogCache] = {}
        # Session/cell-run bindings and taints live in the state database (shared by
        # replicas, kept across restarts), not in this process.
        self.bindings, self.taints = setup_state(self.approvals)
        self._running: dict[str, threading.Event] = {}
        self._owners: dict[str, str] = {}  # running query id -> the subject that started it
        self._epochs_seen: dict[str, int] = {}  # connection -> catalog epoch this replica loaded
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._active = 0
        self._idle = threading.Condition(self._lock)
        # A worker's query ids name it (q_w2_…), so a cancel that reaches another
        # worker of the same gateway is passed on to the one running the query.
        self._query_prefix = f"q_w{config.worker_index}_" if config.worker_index else "q_"
        self.internal_token = hmac.new(secret, b"warden-worker-internal", hashlib.sha256).hexdigest()

    # -- connections ----------------------------------------------------------------------

    def executor(self, name: str) -> Executor:
        with self._lock:
            found = self._executors.get(name)
            if found is not None:
                return found
        conn = self.policy.connections[name]
        if conn.dialect == "duckdb":
            path = self._duckdb_path(name)
            ex: Executor = DuckDBExecutor(path, read_only=conn.read_only)
        else:
            ex = PostgresExecutor(connection_dsn(conn))
        with self._lock:
            return self._executors.setdefault(name, ex)

    def _duckdb_path(self, name: str) -> str:
        from pathlib import Path

        conn = self.policy.connections[name]
        p = Path(conn.path or "")
        return str(p if p.is_absolute() else Path(self.policy.source).resolve().parent / p)

    def catalog(self, name: str) -> Catalog:
        with self._lock:
            cache = self._catalogs.get(name)
        if cache is None:
            conn = self.policy.connections[name]

            def loader() -> Catalog:
                ex = self.executor(name)
                if isinstance(ex, DuckDBExecutor):
                    cat = load_duckdb_catalog(ex._db.cursor())
                else:
                    cat = load_postgres_catalog(connection_dsn(conn))
                return cat.with_search_path(conn.search_path) if conn.search_path else cat

            cache = CatalogCache(loader, ttl=300)
            with self._lock:
                cache = self._catalogs.setdefault(name, cache)
        return cache.get()

    def refresh_catalog(self, name: str) -> None:
        with self._lock:
            cache = self._catalogs.get(name)
        if cache is not None:
            cache.refresh()

    # -- audit ----------------------------------------------------------------------------

    def audit(self, events: list[dict[str, Any]]) -> list[str]:
        try:
            return self._audit_append(events)
        except Exception as exc:
            raise AuditUnavailableError(f"the audit store cannot record events ({type(exc).__name__}); no query runs unaudited") from None

    def audit_later(self, events: list[dict[str, Any]]) -> list[str]:
        try:
            return self._audit_later(events)
        except Exception as exc:
            raise AuditUnavailableError(f"the audit store cannot record events ({type(exc).__name__})") from None

    def base_event(self, identity: Identity, context: dict[str, Any], client_ip: str = "") -> dict[str, Any]:
        return {
            "subject": identity.subject,
            "display_name": identity.display_name or identity.subject,
            "subject_kind": identity.kind,
            "roles": [r.name for r in matching_roles(self.policy, identity)],
            "groups": sorted(identity.groups),
            "auth_method": str(identity.attributes.get("auth_method", self.config.auth.mode)),
            "client_ip": client_ip,
            "session_id": str(context.get("session_id", "")),
            "kernel_id": str(context.get("kernel_id", "")),
            "notebook_path": str(context.get("notebook_path", "")),
            "cell_id": str(context.get("cell_id", "")),
            "execution_count": context.get("execution_count"),
            "gateway_id": self.config.gateway_id,
            "warden_version": __version__,
            "mode": self.config.mode,
            "correlation_id": str(context.get("cell_run_id", "")),
        }

    # -- the pipeline -----------------------------------------------------------------------

    def run_cell(self, identity: Identity, req: CellRequest, *, client_ip: str = "") -> CellOutcome:
        if self._closing.is_set():
            return CellOutcome("error", _error("shutting-down", "the gateway is shutting down; retry shortly"), http_status=503)
        started = time.monotonic()
        base = self.base_event(identity, req.context, client_ip)
        query_id = self._query_prefix + uuid.uuid4().hex[:20]
        try:
            self.claim_context(identity, req.context, client_ip)
        except ContextRefused as exc:
            return CellOutcome("error", _error(exc.code, str(exc)), http_status=403)
        except AuditUnavailableError as exc:
            return CellOutcome("error", _error("audit-unavailable", str(exc)), http_status=503)
        base["correlation_id"] = base["correlation_id"] or query_id
        if req.connection not in self.policy.connections:
            decision = Decision(
                "deny",
                (Reason("unknown-connection", f"connection {req.connection!r} is not defined (known: {', '.join(sorted(self.policy.connections))})", "deny"),),
            )
            return self._deny(base, req, None, decision, query_id)
        try:
            taints = self.taints.current()
        except Exception as exc:  # the state database is down: fail closed, like the audit store
            return CellOutcome("error", _error("state-unavailable", f"the gateway's state store (beside the audit store) cannot be read ({type(exc).__name__}); no query runs"), http_status=503)
        epoch = self.taints.epoch(req.connection)
        if self._epochs_seen.get(req.connection, 0) != epoch:
            # DDL ran through some replica since this one loaded the catalog.
            with contextlib.suppress(WardenError):
                self.refresh_catalog(req.connection)
            self._epochs_seen[req.connection] = epoch
        try:
            catalog = self.catalog(req.connection)
        except WardenError as exc:
            decision = Decision("deny", (Reason("fail-closed/catalog", f"the catalog of {req.connection} cannot be read: {exc}", "deny"),))
            return self._deny(base, req, None, decision, query_id)
        analysis = analyze_cell(req.sql, catalog)
        decision = self.decisions.decide(identity, analysis, req.connection, taints=taints)
        decision = self._check_pending(decision, analysis, identity, req, catalog, taints)
        params_hash = _params_hash(req.params)

        if decision.action == "deny":
            return self._deny(base, req, analysis, decision, query_id)
        approval: Approval | None = None
        if decision.action == "hold":
            if req.approval_id:
                try:
                    approval = self.approvals.consume(
                        req.approval_id, requester=identity.subject, connection=req.connection,
                        statement_hash=analysis.statement_hash, params_hash=params_hash,
                    )  # fmt: skip
                except ApprovalError as exc:
                    refused = Decision("deny", (Reason(f"approval/{exc.code}", str(exc), "deny"),), decision.roles, redacted_sql=decision.redacted_sql)
                    return self._deny(base, req, analysis, refused, query_id)
            else:
                return self._hold(base, req, analysis, decision, query_id, params_hash, identity)

        # Write-ahead: the intent is durable before anything runs.
        submitted = self._event(base, "query.submitted", req, analysis, decision, query_id)
        outcome_type = "query.masked" if decision.action == "mask" else "query.allowed"
        decided = self._event(base, outcome_type, req, analysis, decision, query_id)
        if approval is not None:
            submitted["approval_id"] = decided["approval_id"] = approval.id
            submitted["approver"] = decided["approver"] = approval.decided_by or ""
        try:
            ids = self.audit([submitted, decided])
        except AuditUnavailableError as exc:
            return CellOutcome("error", _error("audit-unavailable", str(exc)), http_status=503)
        if decision.taints:
            # Durable before the copy is made: a restart or another replica never
            # sees the copied column without its classification.
            try:
                self.taints.add(((f"{req.connection}.{t.column.qualified}", t.classifications) for t in decision.taints), by=identity.subject)
            except Exception as exc:
                return CellOutcome("error", _error("state-unavailable", f"the gateway's state store cannot record a taint ({type(exc).__name__}); nothing ran"), http_status=503)
        header = {
            "action": decision.action,
            "rule_ids": list(decision.rule_ids),
            "reasons": [r.message for r in decision.reasons],
            "event_id": ids[-1] if ids else "",
            "query_id": query_id,
            "approval_id": approval.id if approval else None,
            "statements": len(analysis.statements),
        }
        limits = self._limits(identity, req)
        ddl = req.connection if any(k in KIND_GROUPS["ddl"] for k in analysis.kinds) else None
        frames = self._owned(query_id, identity.subject, self._execute(identity, req, analysis, decision, base, query_id, header, limits, started, catalog), ddl)
        return CellOutcome("stream", header, frames)

    def _owned(self, query_id: str, subject: str, frames: Iterator[bytes], ddl_on: str | None) -> Iterator[bytes]:
        """The query's frames, with its owner known (for cancel) while they flow; after
        DDL, the catalog is reloaded here and every replica is told to reload."""
        with self._lock:
            self._owners[query_id] = subject
        try:
            yield from frames
        finally:
            with self._lock:
                self._owners.pop(query_id, None)
            if ddl_on is not None:
                self._after_ddl(ddl_on)

    def _after_ddl(self, connection: str) -> None:
        try:
            self.taints.bump_epoch(connection)
        except Exception as exc:  # the others still reload when their catalog's TTL ends
            print(f"warden gateway: could not announce DDL on {connection} to other replicas: {type(exc).__name__}", file=sys.stderr, flush=True)
        with contextlib.suppress(WardenError):
            self.refresh_catalog(connection)

    def _check_pending(
        self, decision: Decision, analysis: CellAnalysis, identity: Identity, req: CellRequest, catalog: Catalog, taints: Mapping[str, frozenset[str]]
    ) -> Decision:
        """Hold conditions that need the database's row estimate are evaluated now."""
        if not decision.pending or decision.action == "deny":
            return decision
        reasons = list(decision.reasons)
        classify = Classifier(self.policy, req.connection, taints)
        ex = self.executor(req.connection)
        for p in decision.pending:
            st = analysis.statements[p.statement]
            estimate = ex.estimate_rows(st.sql, req.params, session=Session(st.search_path, st.settings)) if st.kind == "select" else None
            facts = statement_facts(st, classify, len(analysis.statements), rows_estimate=estimate)
            try:
                hit = parse_condition(p.condition).evaluate(facts)
            except Deferred:
                # No estimate available: fail closed by holding.
                reasons.append(Reason(p.rule, f"statement {p.statement + 1}: {p.condition!r} could not be evaluated (no row estimate); held", "hold", p.statement))
                continue
            if hit:
                reasons.append(Reason(p.rule, f"statement {p.statement + 1}: matches {p.condition!r} (estimate {estimate} rows)", "hold", p.statement))
        if any(r.action == "hold" for r in reasons):
            return Decision("hold", tuple(reasons), decision.roles, decision.masks, decision.row_filters, decision.taints, (), decision.redacted_sql)
        return decision

    def _limits(self, identity: Identity, req: CellRequest) -> Limits:
        roles = [r for r in matching_roles(self.policy, identity) if r.serves(req.connection)]
        timeout, rows, size = self.config.statement_timeout_ms, self.config.max_rows, self.config.max_bytes
        for r in roles:
            lim = r.limits
            if lim.statement_timeout_ms:
                timeout = min(timeout, lim.statement_timeout_ms) if timeout else lim.statement_timeout_ms
            if lim.max_rows:
                rows = min(rows, lim.max_rows) if rows else lim.max_rows
            if lim.max_bytes:
                size = min(size, lim.max_bytes) if size else lim.max_bytes
        if req.max_rows:
            rows = min(rows, req.max_rows) if rows else req.max_rows
        from warden.sql.kinds import KIND_GROUPS, expand_kinds

        writes = KIND_GROUPS["dml"] | KIND_GROUPS["ddl"] | KIND_GROUPS["dcl"]
        read_only = not any(expand_kinds(tuple(r.statements)) & writes for r in roles)
        return Limits(statement_timeout_ms=timeout, max_rows=rows, max_bytes=size, read_only=read_only)

    def _event(self, base: dict[str, Any], type_: str, req: CellRequest, analysis: CellAnalysis | None, decision: Decision, query_id: str) -> dict[str, Any]:
        ev = dict(base)
        ev.update(
            type=type_,
            connection=req.connection,
            dialect=analysis.dialect if analysis else "",
            statement_kinds=list(analysis.kinds) if analysis else [],
            sql=decision.redacted_sql if decision.redacted_sql else ("<not analysed>" if analysis is None else analysis.sql),
            fingerprint=analysis.fingerprint if analysis else "",
            statement_hash=analysis.statement_hash if analysis else "",
            params={"count": len(req.params), "sha256": _params_hash(req.params)} if req.params else None,
            objects=_objects(analysis, Classifier(self.policy, req.connection)) if analysis else [],
            objects_modified=sorted({w for s in analysis.statements for w in s.writes}) if analysis else [],
            lineage=_lineage(analysis) if analysis else [],
            action=decision.action,
            rule_ids=list(decision.rule_ids),
            reasons=[r.message for r in decision.reasons],
            masks=[{"statement": m.statement, "column": m.column, "operator": m.operator.spec, "classifications": list(m.classifications)} for m in decision.masks],
            row_filters=[{"statement": f.statement, "relation": f.relation, "rule": f.rule} for f in decision.row_filters],
            approval_id="",
            approver="",
            query_id=query_id,
        )
        return ev

    def _deny(self, base: dict[str, Any], req: CellRequest, analysis: CellAnalysis | None, decision: Decision, query_id: str) -> CellOutcome:
        ev = self._event(base, "query.denied", req, analysis, decision, query_id)
        ev["status"] = "denied"
        try:
            ids = self.audit([ev])
        except AuditUnavailableError as exc:
            return CellOutcome("error", _error("audit-unavailable", str(exc)), http_status=503)
        body = {
            "status": "denied",
            "rule_ids": list(decision.rule_ids),
            "reasons": [{"rule": r.rule, "message": r.message, "statement": r.statement} for r in decision.reasons if r.action == "deny"],
            "event_id": ids[0] if ids else "",
            "next": "change the statement, or ask an admin about the rule named above",
        }
        return CellOutcome("denied", body, http_status=403)

    def _hold(self, base: dict[str, Any], req: CellRequest, analysis: CellAnalysis, decision: Decision, query_id: str, params_hash: str, identity: Identity) -> CellOutcome:
        holding = tuple(r for r in decision.reasons if r.action == "hold")
        approval = self.approvals.create(
            requester=str(base["subject"]), connection=req.connection, statement_hash=analysis.statement_hash,
            params_hash=params_hash, fingerprint=analysis.fingerprint, sql=decision.redacted_sql,
            rule_ids=tuple(dict.fromkeys(r.rule for r in holding)), reasons=tuple(r.message for r in holding),
            ttl_seconds=self.config.approval_ttl_seconds, uses=self.config.approval_uses,
            requester_person=person_of(identity),
        )  # fmt: skip
        held = self._event(base, "query.held", req, analysis, decision, query_id)
        requested = self._event(base, "approval.requested", req, analysis, decision, query_id)
        held["approval_id"] = requested["approval_id"] = approval.id
        try:
            ids = self.audit([held, requested])
        except AuditUnavailableError as exc:
            return CellOutcome("error", _error("audit-unavailable", str(exc)), http_status=503)
        self.notify("approval.requested", approval)
        body = {
            "status": "held",
            "approval": approval.to_json(),
            "approvers": self.policy.approvers.to_json(),
            "event_id": ids[0] if ids else "",
            "next": f"an approver runs `warden approvals approve {approval.id} --reason ...`; then re-run the cell with approval {approval.id}",
        }
        return CellOutcome("held", body, http_status=202)

    def notify(self, event: str, approval: Approval) -> None:
        """Queue a JSON notification for the configured webhook: one ordered delivery
        queue per gateway, with bounded retries (gateway/webhooks.py)."""
        if not self.config.approval_webhook:
            return
        from warden.gateway.webhooks import webhooks_for

        webhooks_for(self).enqueue({"event": event, "approval": approval.to_json(), "gateway_id": self.config.gateway_id})

    def _holds(self, power: Principals, identity: Identity) -> bool:
        roles = frozenset(r.name for r in matching_roles(self.policy, identity))
        return power.admits(identity.subject, identity.groups, roles, identity.kind)

    def can_approve(self, identity: Identity) -> bool:
        """An approver under the policy (``approvers``; humans only unless ``kinds`` says so)."""
        return self._holds(self.policy.approvers, identity)

    def is_auditor(self, identity: Identity) -> bool:
        """May read and verify the audit log (the policy's ``auditors``)."""
        return self._holds(self.policy.auditors, identity)

    def is_admin(self, identity: Identity) -> bool:
        """May act on other users' queries (the policy's ``admins``)."""
        return self._holds(self.policy.admins, identity)

    def decide_approval(self, identity: Identity, approval_id: str, *, approve: bool, reason: str, client_ip: str = "") -> Approval:
        # Local mode is advisory (the user owns the gateway and its files), so a user may
        # approve their own request there, explicitly and recorded as a self-approval;
        # a shared gateway never allows it.
        own = self.approvals.get(approval_id) if self.config.mode == "local" and approve else None
        self_approval = own is not None and own.requester == identity.subject
        if not self_approval and not self.can_approve(identity):
            kinds = ", ".join(sorted(self.policy.approvers.kinds))
            hint = " (in local mode you may approve your own requests)" if self.config.mode == "local" else ""
            raise ApprovalError(f"you are not an approver under the policy (approvers: groups, users or roles; kinds: {kinds}){hint}", code="not-approver")
        if self_approval:
            reason = f"self-approval (local mode): {reason}" if reason.strip() else reason
        decided = self.approvals.decide(approval_id, approver=identity.subject, approver_person=person_of(identity), approve=approve,
                                        reason=reason, allow_self=self_approval)  # fmt: skip
        ev = self.base_event(identity, {}, client_ip)
        ev.update(type="approval.granted" if approve else "approval.rejected", approval_id=decided.id, approver=identity.subject,
                  connection=decided.connection, fingerprint=decided.fingerprint, statement_hash=decided.statement_hash,
                  sql=decided.sql, reasons=[reason], status=decided.status,
                  rule_ids=["approval/self-approval-local"] if self_approval else [])  # fmt: skip
        self.audit([ev])
        self.notify(ev["type"], decided)
        return decided

    # -- kernel events and completions ------------------------------------------------------

    KERNEL_EVENTS = ("cell.execute", "session.start", "session.end")

    def record_kernel_events(self, identity: Identity, items: list[Any], *, client_ip: str = "") -> list[str]:
        """Several kernel events in one audit append (all or none)."""
        if not items or len(items) > 1000:
            raise ValueError("'events' must hold 1 to 1000 events")
        built = [self._kernel_event(identity, item, client_ip) for item in items]
        for item in items:
            self.claim_context(identity, item.get("context") or {}, client_ip)
        return self.audit(built)

    def record_kernel_event(self, identity: Identity, data: dict[str, Any], *, client_ip: str = "") -> str:
        """A cell or session event reported by a kernel: best-effort evidence, recorded as such."""
        event = self._kernel_event(identity, data, client_ip)
        self.claim_context(identity, data.get("context") or {}, client_ip)
        return (self.audit([event]) or [""])[0]

    def _kernel_event(self, identity: Identity, data: Any, client_ip: str) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise ValueError("each event must be an object")
        type_ = data.get("type")
        if type_ not in self.KERNEL_EVENTS:
            raise ValueError(f"'type' must be one of {', '.join(self.KERNEL_EVENTS)}")
        context = data.get("context") or {}
        if not isinstance(context, dict):
            raise ValueError("'context' must be an object")
        ev = self.base_event(identity, context, client_ip)
        status = data.get("status", "ok")
        if status not in ("ok", "error", "aborted"):
            raise ValueError("'status' must be ok, error or aborted")
        source = data.get("source_redacted", "")
        if not isinstance(source, str) or len(source) > 1_000_000:
            raise ValueError("'source_redacted' must be a string under 1 MB")
        duration = data.get("duration_ms")
        if duration is not None and not isinstance(duration, (int, float)):
            raise ValueError("'duration_ms' must be a number")
        ev.update(
            type=type_, sql=source, fingerprint=str(data.get("source_sha256", ""))[:128],
            status="ok" if status == "ok" else "failed", error=str(data.get("error", ""))[:2000] or None,
            duration_ms=duration, correlation_id=str(context.get("cell_run_id", "")),
        )  # fmt: skip
        return ev

    def completions(self, identity: Identity, connection: str) -> dict[str, list[str]]:
        """Tables (schema.table) and their columns this user may name on ``connection``."""
        import fnmatch

        if connection not in self.policy.connections:
            raise ValueError(f"connection {connection!r} is not defined")
        roles = [r for r in matching_roles(self.policy, identity) if r.serves(connection)]
        if not roles:
            return {}
        out: dict[str, list[str]] = {}
        for rel in self.catalog(connection).relations.values():
            full = f"{connection}.{rel.qualified}"
            if any(fnmatch.fnmatchcase(full, p) for r in roles for p in r.deny_tables):
                continue
            if all(r.tables is not None for r in roles) and not any(
                fnmatch.fnmatchcase(full, p) for r in roles for p in (r.tables or ())
            ):
                continue
            out[rel.qualified] = list(rel.columns)
        return out

    # -- execution ------------------------------------------------------------------------

    def cancel(self, identity: Identity, query_id: str, *, client_ip: str = "") -> str:
        """Cancel a running query: ``cancelled``, ``not-found`` or ``not-owner``. Only
        its owner (same subject) or an admin may; every attempt is audited."""
        outcome, owner = self.cancel_here(query_id, identity.subject, admin=self.is_admin(identity))
        peer = _QUERY_WORKER.match(query_id)
        if outcome == "not-found" and peer and int(peer.group(1)) != self.config.worker_index and self.config.worker_index:
            outcome, owner = self._cancel_on_worker(int(peer.group(1)), query_id, identity.subject, admin=self.is_admin(identity))
        ev = self.base_event(identity, {}, client_ip)
        ev.update(type="query.cancel", correlation_id=query_id, status="ok" if outcome == "cancelled" else "denied",
                  error=None if outcome == "cancelled" else outcome, sql=f"cancel {query_id}" + (f" (owner {owner})" if owner and owner != identity.subject else ""))  # fmt: skip
        self.audit([ev])
        return outcome

    def cancel_here(self, query_id: str, subject: str, *, admin: bool) -> tuple[str, str | None]:
        """Cancel ``query_id`` if this process runs it: (outcome, owner); not audited."""
        with self._lock:
            event = self._running.get(query_id)
            owner = self._owners.get(query_id)
        if event is None:
            return "not-found", None
        if owner != subject and not admin:
            return "not-owner", owner
        event.set()
        return "cancelled", owner

    def _cancel_on_worker(self, index: int, query_id: str, subject: str, *, admin: bool) -> tuple[str, str | None]:
        """Ask worker ``index`` of this gateway (its private socket) to cancel the query."""
        import httpx

        from warden.gateway.config import worker_socket

        path = worker_socket(self.config, index)
        try:
            with httpx.Client(transport=httpx.HTTPTransport(uds=str(path)), timeout=5.0) as http:
                resp = http.post("http://worker/v1/internal/cancel", json={"query_id": query_id, "subject": subject, "admin": admin},
                                 headers={"x-warden-internal": self.internal_token})  # fmt: skip
            data = resp.json()
            return str(data["outcome"]), data.get("owner")
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            return "not-found", None  # that worker is gone (restarting): so is the query

    # -- sessions ---------------------------------------------------------------------------

    def claim_context(self, identity: Identity, context: Mapping[str, Any], client_ip: str = "") -> None:
        """Bind the context's session id and cell run id to the caller on first use;
        refuse (audited, ContextRefused) an id another subject holds."""
        for kind, key in (("session", "session_id"), ("cell_run", "cell_run_id")):
            value = context.get(key)
            if not value or not isinstance(value, str):
                continue
            bound_kind, bound_id = kind, value
            session, named_under, _run = value.partition(":")
            if kind == "cell_run" and named_under and session:
                # "<session id>:<run>" (how the warden kernel names its cell runs) belongs
                # to whoever holds that session id: no state write per cell.
                bound_kind, bound_id = "session", session
            try:
                owner = self.bindings.owner(bound_kind, bound_id, identity.subject)
            except Exception as exc:
                raise AuditUnavailableError(f"the gateway's state store cannot bind the {key} ({type(exc).__name__})") from None
            if owner != identity.subject:
                ev = self.base_event(identity, {}, client_ip)  # not the foreign ids: nothing attaches to that session
                ev.update(type="session.refused", status="denied", error=f"{key} is bound to another subject",
                          sql=f"{key}={value[:200]}")  # fmt: skip
                self.audit([ev])
                raise ContextRefused(f"{key} {value[:200]!r} belongs to another user's session; start your own", code="session/not-yours")

    def _execute(
        self, identity: Identity, req: CellRequest, analysis: CellAnalysis, decision: Decision,
        base: dict[str, Any], query_id: str, header: dict[str, Any], limits: Limits, started: float, catalog: Catalog,
    ) -> Iterator[bytes]:  # fmt: skip
        cancel = threading.Event()
        with self._lock:
            self._running[query_id] = cancel
            self._active += 1
        executor = self.executor(req.connection)
        total_rows = total_bytes = 0
        digest = hashlib.sha256()
        status, error = "ok", None
        detectors_fired: list[dict[str, Any]] = []
        sample: list[dict[str, Any]] = []
        capture = self.config.capture
        sample_size = int(capture.split(":", 1)[1]) if capture.startswith("sample:") else 0
        captured: list[str] = []
        capture_file: Any = None
        try:
            yield json_frame(b"C", header)
            for st in analysis.statements:
                sql = st.sql
                filters = {f.relation: f.predicate for f in decision.row_filters if f.statement == st.index}
                if filters:
                    sql = apply_row_filters(sql, filters, catalog, search_path=st.search_path)
                masks = {m.position: m for m in decision.masks if m.statement == st.index}
                sql_masks = {p: m.operator for p, m in masks.items() if m.operator.kind == "sql"}
                if sql_masks:
                    sql = apply_sql_masks(sql, [o.name for o in st.outputs], sql_masks, analysis.dialect)
                returns_rows = bool(st.outputs) and st.kind in ("select", "insert", "update", "delete", "merge")
                sql, params = statement_params(sql, analysis.dialect, req.params)
                # The search path and settings the analysis resolved this statement
                # under; a SET itself runs nowhere: it is applied to the statements
                # after it in this cell, and never to a shared connection.
                session = Session(st.search_path, st.settings)
                if returns_rows:
                    # The database's own account of each column (PostgreSQL's row
                    # description), before anything runs: independent of sqlglot.
                    shape_key = f"{analysis.fingerprint}\x00{st.index}"
                    check_origins(st, executor.describe_origins(sql, timeout_ms=limits.statement_timeout_ms, key=shape_key, session=session), catalog)
                if st.kind == "set":
                    result = StatementResult(None, iter(()), rowcount=0)
                else:
                    result = executor.run(sql, params, limits, cancel, returns_rows=returns_rows, retry_safe=st.kind == "select", session=session,
                                      writes=st.kind != "select", row_bound=st.row_bound)
                rows = size = 0
                truncated = False
                found: dict[tuple[int, str, str], int] = {}
                try:
                    schema = result.schema
                    # What the database returns must be what the analysis predicted, before
                    # anything of it is framed: masks are applied by position.
                    check_result_shape(st, schema, analysis.dialect, masks)
                    yield json_frame(b"S", {
                        "index": st.index, "kind": st.kind,
                        "columns": [f.name for f in schema] if schema is not None else [],
                        "masks": [{"position": p, "column": m.column, "operator": m.operator.spec,
                                   "classifications": list(m.classifications), "rules": list(m.rules)} for p, m in masks.items()],
                    })  # fmt: skip
                    if schema is not None and capture == "full":
                        # The masked result, exactly as sent, kept beside the audit store.
                        path = self.config.state_dir / "captures" / f"{query_id}-{st.index}.arrows"
                        path.parent.mkdir(parents=True, exist_ok=True)
                        capture_file = open(path, "wb")  # noqa: SIM115 - closed at the statement's end
                        captured.append(str(path))
                    if schema is not None:
                        pieces = ArrowStreamPieces()

                        def send(payloads: list[Any], capture: Any = capture_file) -> Iterator[Any]:
                            # Each payload is its own A frame, sent without copying it.
                            for payload in payloads:
                                view = memoryview(payload)
                                digest.update(view)
                                if capture is not None:
                                    capture.write(view)
                                yield frame_header(b"A", view.nbytes)
                                yield view

                        for batch in _prefetch(result.batches):
                            batch = self._mask_batch(batch, masks, found, st.index)
                            if limits.max_rows and rows + batch.num_rows > limits.max_rows:
                                batch = batch.slice(0, limits.max_rows - rows)
                                truncated = True
                            if limits.max_bytes and size + batch.nbytes > limits.max_bytes and rows:
                                truncated = True
                                cancel.set()  # the statement stops now, as for max_rows
                                break
                            rows += batch.num_rows
                            size += batch.nbytes
                            if len(sample) < sample_size:
                                sample.extend(batch.slice(0, sample_size - len(sample)).to_pylist())
                            yield from send(pieces.add(batch))
                            if truncated:
                                cancel.set()
                                break
                        yield from send(pieces.close(schema))
                    else:
                        rows = max(result.rowcount, 0)
                finally:
                    if capture_file is not None:
                        capture_file.close()
                        capture_file = None
                    if result.close is not None:
                        result.close()
                    if truncated:
                        cancel.clear()
                total_rows += rows
                total_bytes += size
                # The second net's findings go with the statement (column, detector, rows;
                # never a value), so the kernel marks those columns as masked.
                findings = [{"statement": st.index, "position": pos, "column": col, "detector": det, "rows": n}
                            for (pos, col, det), n in found.items()]  # fmt: skip
                detectors_fired.extend(findings)
                yield json_frame(b"E", {"index": st.index, "rows": rows, "bytes": size, "truncated": truncated,
                                        "rowcount": result.rowcount if schema is None else rows, "detectors": findings})  # fmt: skip
        except ExecutionError as exc:
            # Database text in ``exc`` is redacted already (errors_redact): errors are data.
            status, error = ("cancelled" if exc.code == "cancelled" else "failed"), str(exc)
            yield json_frame(b"X", {"code": exc.code, "message": str(exc), "sqlstate": exc.sqlstate})
        except GeneratorExit:
            status, error = "cancelled", "the client went away"
            cancel.set()
            raise
        except Exception as exc:
            # A driver's or Arrow's text may quote a value as well: redacted like the database's.
            status, error = "failed", f"{type(exc).__name__}: {redact_db_error(str(exc)[:300])}"
            yield json_frame(b"X", {"code": "internal", "message": error})
        finally:
            with self._lock:
                self._running.pop(query_id, None)
                self._active -= 1
                self._idle.notify_all()
            done = dict(base)
            done.update(
                type="query.executed" if status == "ok" else "query.failed",
                connection=req.connection, dialect=analysis.dialect, statement_kinds=list(analysis.kinds),
                sql=decision.redacted_sql, fingerprint=analysis.fingerprint, statement_hash=analysis.statement_hash,
                action=decision.action, rule_ids=list(decision.rule_ids), query_id=query_id, status=status, error=error,
                rows=total_rows, bytes=total_bytes, duration_ms=round((time.monotonic() - started) * 1000, 3),
                result_fingerprint="" if capture == "none" else digest.hexdigest(), detectors=detectors_fired,
                masks=[{"statement": m.statement, "column": m.column, "operator": m.operator.spec, "classifications": list(m.classifications)} for m in decision.masks],
                capture_ref=json.dumps(sample, default=str) if sample else json.dumps(captured) if captured else "",
            )  # fmt: skip
            completion_id = ""
            try:
                # Durable before the trailer leaves: a client told "ok" can always find
                # the completion, even if this process dies next (group commit batches
                # the concurrent ones into one transaction).
                completion_id = (self.audit([done]) or [""])[0]
            except AuditUnavailableError:
                status = "audit-failed"
            with contextlib.suppress(GeneratorExit, RuntimeError):
                yield json_frame(b"T", {"status": status, "rows": total_rows, "bytes": total_bytes,
                                        "duration_ms": done["duration_ms"], "event_id": completion_id, "query_id": query_id})  # fmt: skip

    def _mask_batch(self, batch: pa.RecordBatch, masks: dict[int, Any], found: dict[tuple[int, str, str], int], index: int) -> pa.RecordBatch:
        columns = list(batch.columns)
        names = batch.schema.names
        try:
            for pos, m in masks.items():
                if pos >= len(columns):  # check_result_shape stops this earlier; never pass it
                    raise ExecutionError(f"statement {index + 1}: a mask applies to column {pos + 1}, which the result does not have", code="result-shape-mismatch")
                if m.operator.kind == "sql":
                    continue  # applied in the query
                columns[pos] = mask_array(columns[pos], m.operator, key=self.mask_key)
            masked = pa.RecordBatch.from_arrays(columns, names=names)
            # Second net: detectors on every textual rendering (strings, json, xml, bytes,
            # lists, structs, maps) of the columns lineage left unmasked.
            candidates = [i for i in range(len(names)) if i not in masks]
            if candidates:
                table, findings = scan_and_mask_values(pa.Table.from_batches([masked]), candidates)
                for f in findings:
                    key = (f.position if f.position is not None else -1, f.column, f.detector)
                    found[key] = found.get(key, 0) + f.rows
                if findings:
                    batches = table.combine_chunks().to_batches()
                    if batches:
                        masked = batches[0]
        except ExecutionError:
            raise
        except (pa.ArrowException, ValueError, TypeError) as exc:
            # Fail closed: a value that cannot be masked is not sent at all.
            raise ExecutionError(
                f"[fail-closed/mask] statement {index + 1}: a result column could not be masked ({type(exc).__name__}); "
                "nothing more of this statement was sent. Cast nested or binary columns to text in the query.",
                code="mask-failed",
            ) from None
        return masked

    # -- lifecycle ------------------------------------------------------------------------

    def close(self, *, drain_seconds: float = 30) -> None:
        """Stop taking cells, wait for running ones (bounded), close connections."""
        self._closing.set()
        deadline = time.monotonic() + drain_seconds
        with self._idle:
            while self._active and time.monotonic() < deadline:
                self._idle.wait(timeout=0.2)
        for ex in list(self._executors.values()):
            ex.close()
        self.bindings.close()
        self.approvals.close()


_QUERY_WORKER = re.compile(r"^q_w(\d+)_[0-9a-f]+$")


def statement_params(sql: str, dialect: str, params: tuple[Any, ...]) -> tuple[str, tuple[Any, ...]]:
    """The ``$n`` parameters one statement of a cell uses, renumbered from ``$1``.

    A cell's parameters are numbered across the cell; each statement runs alone, so
    it gets exactly the values it references (``$3`` in the second statement
    becomes its ``$1``). Placeholders inside strings and comments are not touched.
    """
    from sqlglot.dialects.dialect import Dialect
    from sqlglot.tokens import TokenType  # type: ignore[attr-defined]

    if not params and "$" not in sql:
        return sql, ()  # nothing to renumber (the common case): no tokenising
    tokens = Dialect.get_or_raise(dialect).tokenize(sql)
    spans: list[tuple[int, int, int]] = []
    for tok, nxt in itertools.pairwise(tokens):
        if tok.token_type == TokenType.PARAMETER and nxt.token_type == TokenType.NUMBER and nxt.start == tok.end + 1 and nxt.text.isdigit():
            spans.append((tok.start, nxt.end + 1, int(nxt.text)))
    if not spans:
        return sql, ()
    order: dict[int, int] = {}
    for _, _, n in spans:
        if n < 1 or n > len(params):
            raise ExecutionError(f"the statement uses ${n} but the cell binds {len(params)} parameter(s)", code="bad-parameters")
        order.setdefault(n, len(order) + 1)
    out, pos = [], 0
    for start, end, n in spans:
        out.append(sql[pos:start])
        out.append(f"${order[n]}")
        pos = end
    out.append(sql[pos:])
    return "".join(out), tuple(params[n - 1] for n in order)


_DONE = object()


def _prefetch(batches: Iterator[pa.RecordBatch], depth: int = 4) -> Iterator[pa.RecordBatch]:
    """Fetch the next batches in a thread while this one is masked and sent.

    The database driver (ADBC, DuckDB) decodes in C++ without the GIL, so fetching,
    masking and writing to the socket overlap on two cores. Errors are re-raised
    here, in the caller's thread, in order.
    """
    import queue

    # Small results (one or two batches) need no thread: fetch those inline.
    for _ in range(2):
        batch = next(batches, _DONE)
        if batch is _DONE:
            return
        yield batch
    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def pump() -> None:
        try:
            for batch in batches:
                while not stop.is_set():
                    try:
                        q.put(batch, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(_DONE)
        except BaseException as exc:  # handed to the consumer
            q.put(exc)

    thread = threading.Thread(target=pump, name="warden-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


def _params_hash(params: tuple[Any, ...] | list[Any]) -> str:
    return hashlib.sha256(json.dumps(list(params), default=str, sort_keys=True).encode()).hexdigest()


def _objects(analysis: CellAnalysis, classify: Classifier | None = None) -> list[dict[str, Any]]:
    out = []
    for st in analysis.statements:
        cols: dict[str, set[str]] = {}
        classified: dict[str, list[str]] = {}
        for u in st.uses:
            cols.setdefault(u.column.qualified, set()).add(u.usage.value)
            # The classification at decision time, kept with the record: the auditor's
            # `objects` view answers "who touched pii.*" without today's policy.
            found = classify(u.column) if classify is not None else frozenset()
            if found:
                classified[u.column.qualified] = sorted(found)
        out.append({"statement": st.index, "reads": list(st.reads), "writes": list(st.writes),
                    "functions": list(st.functions),
                    "columns": {k: sorted(v) for k, v in sorted(cols.items())},
                    "classified": dict(sorted(classified.items()))})  # fmt: skip
    return out


def _lineage(analysis: CellAnalysis) -> list[dict[str, Any]]:
    return [
        {"statement": st.index, "column": o.name, "sources": sorted(s.qualified for s in o.sources), "transformed": o.transformed}
        for st in analysis.statements
        for o in st.outputs
    ]


def _error(code: str, message: str) -> dict[str, Any]:
    return {"status": "error", "error": {"code": code, "message": message}}
