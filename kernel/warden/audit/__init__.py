"""warden.audit: the tamper-evident audit log (DESIGN.md §6; docs/audit.md).

    from warden.audit import EventDraft, open_store, verify

    with open_store("duckdb:///var/lib/warden/audit.duckdb", chain_id="gw-1",
                    signing_key=secret, checkpoint_file="/mnt/worm/checkpoints.jsonl") as store:
        [event] = store.append([EventDraft(type="query.submitted", subject="alice", ...)])
    report = verify("duckdb:///var/lib/warden/audit.duckdb", public_key=pem)
    assert report.ok, report.format()
"""

from __future__ import annotations

from warden.audit.checkpoint import (
    Checkpoint,
    derive_signing_key,
    key_id,
    load_public_key,
    public_key_pem,
    read_checkpoint_file,
    signing_key_from,
)
from warden.audit.errors import AuditClosed, AuditConfigError, AuditError, AuditUnavailable
from warden.audit.export import Segment, export
from warden.audit.record import EVENT_TYPES, FIELDS, AuditEvent, EventDraft, genesis_hash
from warden.audit.store import AuditStore, ChainHead, StoreStats
from warden.audit.stores import open_store
from warden.audit.verify import Issue, VerifyReport, verify, verify_segments

__all__ = [
    "EVENT_TYPES",
    "FIELDS",
    "AuditClosed",
    "AuditConfigError",
    "AuditError",
    "AuditEvent",
    "AuditStore",
    "AuditUnavailable",
    "ChainHead",
    "Checkpoint",
    "EventDraft",
    "Issue",
    "Segment",
    "StoreStats",
    "VerifyReport",
    "derive_signing_key",
    "export",
    "genesis_hash",
    "key_id",
    "load_public_key",
    "open_store",
    "public_key_pem",
    "read_checkpoint_file",
    "signing_key_from",
    "verify",
    "verify_segments",
]
