"""SIEM export: the audit log as OCSF Datastore Activity (class 6005) JSONL.

One JSON object per record, per chain in ``seq`` order, each record re-verified
against its hash and link before it is written (a broken chain is refused, as for
``export``). The mapping is documented in docs/audit.md §11; the hash-chain fields
(``chain_id``, ``seq``, ``prev_hash``, ``record_hash``) and the canonical record itself
travel in ``unmapped.warden`` so a SIEM copy can still be verified.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any, Final

from warden import __version__
from warden.audit.record import AuditEvent

OCSF_VERSION: Final = "1.3.0"
CLASS_UID: Final = 6005  # Datastore Activity
CATEGORY_UID: Final = 6  # Application Activity

#: OCSF Datastore Activity activity ids.
ACTIVITY: Final = {"unknown": 0, "read": 1, "update": 2, "connect": 3, "query": 4, "write": 5, "create": 6, "delete": 7, "list": 8, "other": 99}

_KIND_ACTIVITY: Final = {
    "select": "read", "insert": "write", "copy": "write", "update": "update", "merge": "update",
    "delete": "delete", "truncate": "delete", "drop": "delete", "create": "create", "alter": "update",
}  # fmt: skip


def activity_of(rec: AuditEvent) -> str:
    """The OCSF activity of a record: its strongest statement kind for queries,
    ``connect`` for session and auth records, ``query`` for auditor reads."""
    if rec.type.startswith("query."):
        kinds = [_KIND_ACTIVITY.get(k, "other") for k in rec.statement_kinds]
        for name in ("delete", "create", "update", "write", "read"):
            if name in kinds:
                return name
        return "query" if not kinds else "other"
    if rec.type.startswith(("session.", "auth.")):
        return "connect"
    if rec.type in ("audit.read", "audit.verify"):
        return "query"
    return "other"


def _status(rec: AuditEvent) -> tuple[int, str]:
    if rec.type == "query.denied" or rec.action == "deny" or rec.status == "failure":
        return 2, "Failure"
    if rec.status == "success":
        return 1, "Success"
    return 0, "Unknown"


def _ms(t: dt.datetime | None) -> int | None:
    return int(t.timestamp() * 1000) if t is not None else None


def _json(text: Any) -> Any:
    if text is None or text == "":
        return None
    if not isinstance(text, str):  # a sealed record holds JSON fields as values already
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def to_ocsf(rec: AuditEvent) -> dict[str, Any]:
    """One record as an OCSF Datastore Activity event."""
    activity = activity_of(rec)
    activity_id = ACTIVITY[activity]
    status_id, status = _status(rec)
    severity_id = 1 if status_id != 2 else 3  # Informational; Medium for refusals and failures
    out: dict[str, Any] = {
        "class_uid": CLASS_UID,
        "class_name": "Datastore Activity",
        "category_uid": CATEGORY_UID,
        "category_name": "Application Activity",
        "activity_id": activity_id,
        "activity_name": activity.capitalize(),
        "type_uid": CLASS_UID * 100 + activity_id,
        "type_name": f"Datastore Activity: {activity.capitalize()}",
        "time": _ms(rec.event_time),
        "severity_id": severity_id,
        "severity": "Informational" if severity_id == 1 else "Medium",
        "status_id": status_id,
        "status": status,
        "message": f"{rec.type} by {rec.subject or '?'}" + (f" on {rec.connection}" if rec.connection else ""),
        "metadata": {
            "version": OCSF_VERSION,
            "uid": rec.event_id,
            "correlation_uid": rec.correlation_id,
            "log_name": rec.chain_id,
            "sequence": rec.seq,
            "event_code": rec.type,
            "product": {"name": "warden", "vendor_name": "warden", "version": rec.warden_version or __version__},
            "logged_time": _ms(rec.event_time),
        },
        "actor": {
            "user": {"uid": rec.subject, "name": rec.display_name or rec.subject,
                     "type": "System" if rec.subject_kind == "service" else "User",
                     "groups": [{"name": g} for g in rec.groups]},
            "session": {"uid": rec.session_id} if rec.session_id else None,
            "app_name": rec.notebook_path or None,
            "authorizations": [{"decision": rec.action, "policy": {"uid": r}} for r in rec.rule_ids] or None,
        },
        "src_endpoint": {"ip": rec.client_ip} if rec.client_ip else None,
        "dst_endpoint": {"hostname": rec.gateway_id} if rec.gateway_id else None,
        "database": {"name": rec.connection, "type": rec.dialect or None} if rec.connection else None,
        "query_info": {"query_string": rec.sql, "uid": rec.fingerprint or None, "bytes": rec.bytes} if rec.sql else None,
        "status_detail": rec.error,
        "duration": int(rec.duration_ms) if rec.duration_ms is not None else None,
        "unmapped": {"warden": {
            "type": rec.type, "chain_id": rec.chain_id, "seq": rec.seq, "prev_hash": rec.prev_hash,
            "record_hash": rec.record_hash, "mode": rec.mode, "roles": list(rec.roles), "auth_method": rec.auth_method,
            "kernel_id": rec.kernel_id, "cell_id": rec.cell_id, "execution_count": rec.execution_count,
            "statement_kinds": list(rec.statement_kinds), "statement_hash": rec.statement_hash,
            "objects": _json(rec.objects), "objects_modified": list(rec.objects_modified), "lineage": _json(rec.lineage),
            "params": _json(rec.params), "action": rec.action, "rule_ids": list(rec.rule_ids), "reasons": list(rec.reasons),
            "masks": _json(rec.masks), "row_filters": _json(rec.row_filters), "approval_id": rec.approval_id,
            "approver": rec.approver, "rows": rec.rows, "result_fingerprint": rec.result_fingerprint,
            "capture_ref": rec.capture_ref, "parent_event_id": rec.parent_event_id,
            # The record exactly as hashed: recompute sha256(prev_hash ‖ canonical) to verify.
            "record": rec.to_dict(),
        }},
    }
    if rec.approver:
        out["actor"]["authorizations"] = (out["actor"]["authorizations"] or []) + [{"decision": "approved", "policy": {"uid": rec.approval_id, "name": f"approved by {rec.approver}"}}]
    pruned: dict[str, Any] = _prune(out)
    return pruned


def _prune(value: Any) -> Any:
    """Drop nulls (OCSF omits absent attributes), but keep the hashed record verbatim."""
    if isinstance(value, dict):
        return {k: (v if k == "record" else _prune(v)) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_prune(v) for v in value]
    return value


def export_ocsf(store: Any, out_dir: str | Path, since: dt.datetime | None = None, *, chain_id: str | None = None) -> list[tuple[str, Path, int]]:
    """Write ``<chain>.ocsf.jsonl`` per chain; returns (chain, path, records)."""
    from warden.audit.export import _checked, _first_seq_since
    from warden.audit.stores import open_store

    owned = isinstance(store, str)
    st = open_store(store, read_only=True) if owned else store
    try:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        written: list[tuple[str, Path, int]] = []
        for cid in [chain_id] if chain_id else st.chain_ids():
            start = _first_seq_since(st, cid, since)
            if start is None:
                continue
            path = out / f"{cid}.ocsf.jsonl"
            tmp = path.with_suffix(".jsonl.tmp")
            count = 0
            with open(tmp, "w", encoding="utf-8") as fh:
                for rec in _checked(st, cid, start):
                    fh.write(json.dumps(to_ocsf(rec), ensure_ascii=False, separators=(",", ":"), default=str) + "\n")
                    count += 1
                fh.flush()
                os.fsync(fh.fileno())
            tmp.replace(path)
            written.append((cid, path, count))
        return written
    finally:
        if owned:
            st.close()
