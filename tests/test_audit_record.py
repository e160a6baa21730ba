"""The audit record: validation, canonical form, hash chain, checkpoint signatures."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from test_audit_support import SECRET, draft
from warden.audit import (
    AuditEvent,
    EventDraft,
    derive_signing_key,
    key_id,
    load_public_key,
    public_key_pem,
)
from warden.audit.checkpoint import Checkpoint, sign_checkpoint, signing_key_from
from warden.audit.errors import AuditConfigError
from warden.audit.record import (
    DRAFT_FIELDS,
    EVENT_TYPES,
    FIELDS,
    canonical_text,
    format_time,
    genesis_hash,
    seal,
)

T0 = dt.datetime(2024, 5, 1, 12, 30, 45, 123456, tzinfo=dt.UTC)


def reference_canonical(record: AuditEvent) -> str:
    """The definition: sorted-key compact JSON of every field but record_hash."""
    d = record.to_dict()
    del d["record_hash"]
    return json.dumps(d, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def sealed(d: EventDraft, seq: int = 1, prev: str | None = None) -> AuditEvent:
    return seal(d, chain_id="c1", seq=seq, prev_hash=prev or genesis_hash("c1"), now=T0)


def test_every_field_of_design_section_6() -> None:
    expected = {
        "event_id", "chain_id", "seq", "event_time", "prev_hash", "record_hash", "type",
        "subject", "display_name", "subject_kind", "roles", "groups", "auth_method", "client_ip",
        "session_id", "kernel_id", "notebook_path", "cell_id", "execution_count", "gateway_id", "warden_version", "mode",
        "connection", "dialect", "statement_kinds", "sql", "fingerprint", "statement_hash", "params", "objects", "objects_modified", "lineage",
        "action", "rule_ids", "reasons", "masks", "row_filters", "approval_id", "approver",
        "status", "error", "rows", "bytes", "duration_ms", "result_fingerprint", "capture_ref",
        "correlation_id", "parent_event_id",
    }  # fmt: skip
    assert set(FIELDS) == expected
    assert [f.name for f in dataclasses.fields(AuditEvent)] == list(FIELDS)
    assert {f.name for f in dataclasses.fields(EventDraft)} == set(DRAFT_FIELDS)
    assert len(EVENT_TYPES) == 21 and "events.throttled" in EVENT_TYPES


def test_golden_hash() -> None:
    """The canonical form is a format: changing it would break every stored chain."""
    d = EventDraft(type="query.denied", event_id="00000000-0000-4000-8000-000000000000", event_time=T0, subject="ana",
                   roles=("analyst",), masks=[{"column": "email", "operator": "redact", "classifications": ["pii"]}],
                   warden_version="0.1.0", duration_ms=2.5, rows=0)  # fmt: skip
    rec = sealed(d)
    text = canonical_text(rec)
    assert text.startswith('{"action":null,"approval_id":null,"approver":null,"auth_method":null,"bytes":null,')
    assert '"event_time":"2024-05-01T12:30:45.123456Z"' in text
    assert '"masks":[{"classifications":["pii"],"column":"email","operator":"redact"}]' in text
    assert rec.record_hash == hashlib.sha256(genesis_hash("c1").encode() + text.encode()).hexdigest()
    assert genesis_hash("c1") == hashlib.sha256(b"warden-audit-genesis:c1").hexdigest()
    assert rec.record_hash == "5847804a30206a626764647ce6cb56cf3dce6960ce8b0ab33acfcf36388d1f40"


def test_canonical_matches_the_definition() -> None:
    rec = sealed(draft(3))
    assert canonical_text(rec) == reference_canonical(rec)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(
    subject=st.none() | st.text(),
    roles=st.lists(st.text(), max_size=3),
    objects=json_values,
    rows=st.none() | st.integers(0, 2**63 - 1),
    duration=st.none() | st.floats(0, 1e12, allow_nan=False),
)
def test_canonical_and_round_trip_hold_for_any_content(subject: str | None, roles: list[str], objects: Any, rows: int | None, duration: float | None) -> None:
    d = EventDraft(type="query.executed", subject=subject, roles=roles, objects=objects, rows=rows, duration_ms=duration, event_time=T0)  # type: ignore[arg-type]
    rec = sealed(d)
    assert canonical_text(rec) == reference_canonical(rec)
    assert rec.compute_hash() == rec.record_hash
    again = AuditEvent.from_dict(json.loads(rec.to_json()), json_as_text=False)
    assert again == rec
    assert again.compute_hash() == rec.record_hash


def test_drafts_are_normalised_and_copied() -> None:
    objects: dict[Any, Any] = {10: ("a", "b"), 2: {"x": 1}}
    d = EventDraft(type="cell.execute", objects=objects, subject="a\x00b", roles=["r"], groups={"g"})  # type: ignore[arg-type]
    objects[10] = "changed later"
    assert d.objects == {"2": {"x": 1}, "10": ["a", "b"]}
    rec = sealed(d)
    assert canonical_text(rec) == reference_canonical(rec), "keys sort as the strings they became"
    assert AuditEvent.from_dict(json.loads(rec.to_json()), json_as_text=False).compute_hash() == rec.record_hash
    with pytest.raises(ValueError, match="not JSON"):
        EventDraft(type="cell.execute", objects={"t": 1, 2: 3})
    assert d.subject == "a\ufffdb", "NUL cannot be stored in PostgreSQL text"
    assert d.roles == ("r",) and d.groups == ("g",)
    assert EventDraft(type="cell.execute", subject="\ud800x").subject == "\ufffdx"
    assert EventDraft(type="cell.execute").event_id != EventDraft(type="cell.execute").event_id
    assert EventDraft(type="cell.execute", event_time=dt.datetime(2024, 1, 1, 2, tzinfo=dt.timezone(dt.timedelta(hours=2)))).event_time == dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.subject = "x"  # type: ignore[misc]
    with pytest.raises(ValueError):
        EventDraft(type="query.executed", duration_ms=float("nan"))
    with pytest.raises(ValueError):
        EventDraft(type="query.executed", rows=-1)
    with pytest.raises(TypeError):
        EventDraft(type="query.executed", rows=True)


def test_chain_links() -> None:
    a = sealed(draft(1))
    b = sealed(draft(2), seq=2, prev=a.record_hash)
    assert b.prev_hash == a.record_hash
    assert dataclasses.replace(b, subject="x").compute_hash() != b.record_hash
    assert dataclasses.replace(b, seq=3).compute_hash() != b.record_hash, "seq is covered by the hash"
    assert b.compute_hash(prev_hash="0" * 64) != b.record_hash, "so is the link"
    assert format_time(T0) == "2024-05-01T12:30:45.123456Z"


def test_checkpoint_signatures() -> None:
    key = derive_signing_key(SECRET)
    assert key_id(key) == key_id(derive_signing_key(SECRET)), "derivation is deterministic"
    cp = sign_checkpoint(key, "c1", 10, "ab" * 32, T0)
    public = load_public_key(public_key_pem(key))
    assert cp.verify(public)
    assert Checkpoint.from_dict(json.loads(cp.to_json())) == cp
    assert not dataclasses.replace(cp, seq=11).verify(public)
    assert not dataclasses.replace(cp, record_hash="cd" * 32).verify(public)
    assert not cp.verify(Ed25519PrivateKey.generate().public_key())
    raw_hex = public.public_bytes_raw().hex()
    assert key_id(load_public_key(raw_hex)) == key_id(key)
    pem = key.private_bytes_raw()
    assert key_id(signing_key_from(Ed25519PrivateKey.from_private_bytes(pem)) or key) == key_id(key)
    with pytest.raises(AuditConfigError, match="16 bytes"):
        derive_signing_key(b"short")
    with pytest.raises(AuditConfigError):
        load_public_key("-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")
