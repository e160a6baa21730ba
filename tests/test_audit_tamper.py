"""verify names the kind and seq of every tampering, on a real DuckDB file and PostgreSQL.

Each test writes a clean chain of 20 records through the store, closes it (which
writes a final signed checkpoint at seq 20), edits rows with plain SQL, and verifies.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from test_audit_support import BACKENDS, SECRET, StoreEnv, draft, forge, make_env
from warden.audit import Checkpoint, derive_signing_key, public_key_pem, verify
from warden.audit.checkpoint import read_checkpoint_file, sign_checkpoint
from warden.audit.record import genesis_hash

CHAIN = "gw-test"
N = 20
PUBLIC = public_key_pem(derive_signing_key(SECRET))


@pytest.fixture(params=BACKENDS)
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreEnv]:
    e = make_env(request.param, request, tmp_path)
    yield e
    e.close_all()


@pytest.fixture
def chain(env: StoreEnv) -> StoreEnv:
    """A closed store holding seq 1..20 of chain gw-test, checkpoints in a JSONL file too."""
    store = env.open(signing_key=SECRET, checkpoint_every=10, checkpoint_file=env.tmp_path / "checkpoints.jsonl")
    for i in range(N):
        store.append([draft(i)])
    store.close()
    return env


def check(env: StoreEnv, kind: str, seq: int, **kw: object) -> None:
    report = verify(env.url, public_key=PUBLIC, **kw)  # type: ignore[arg-type]
    assert not report.ok, report.format()
    assert report.find(kind, seq), f"expected {kind} at seq {seq}:\n{report.format()}"
    first = report.issues[0]
    assert first.kind == kind and first.seq is not None and first.seq <= seq, report.format()


def test_clean_store_verifies(chain: StoreEnv) -> None:
    report = verify(chain.url, public_key=PUBLIC, checkpoints=chain.tmp_path / "checkpoints.jsonl")
    assert report.ok, report.format()
    assert report.records == N
    assert report.chains[CHAIN].last_seq == N
    assert report.checkpoints_checked >= 2 and report.signatures_checked


def test_edited_record(chain: StoreEnv) -> None:
    chain.sql("UPDATE audit_events SET subject = 'mallory' WHERE chain_id = ? AND seq = 7", [CHAIN])
    check(chain, "edited", 7)
    report = verify(chain.url, public_key=PUBLIC)
    assert [(i.kind, i.seq) for i in report.issues] == [("edited", 7)], report.format()


def test_edited_and_rehashed_record(chain: StoreEnv) -> None:
    rec = chain.record(CHAIN, 7)
    forged = forge(CHAIN, 7, rec.prev_hash)
    chain.sql(
        "UPDATE audit_events SET subject = ?, cell_id = ?, event_time = ?, event_id = ?, record_hash = ? WHERE chain_id = ? AND seq = 7",
        [forged.subject, forged.cell_id, forged.event_time, forged.event_id, "x" * 64, CHAIN],
    )
    # the attacker recomputes the hash of the edited row correctly
    edited = chain.record(CHAIN, 7)
    chain.sql("UPDATE audit_events SET record_hash = ? WHERE chain_id = ? AND seq = 7", [edited.compute_hash(), CHAIN])
    check(chain, "edited", 7)


def test_deleted_record(chain: StoreEnv) -> None:
    chain.sql("DELETE FROM audit_events WHERE chain_id = ? AND seq = 7", [CHAIN])
    check(chain, "deleted", 7)
    report = verify(chain.url, public_key=PUBLIC)
    assert [(i.kind, i.seq, i.seq_end) for i in report.issues] == [("deleted", 7, 7)], report.format()


def test_deleted_and_renumbered(chain: StoreEnv) -> None:
    chain.sql("DELETE FROM audit_events WHERE chain_id = ? AND seq IN (7, 8)", [CHAIN])
    chain.renumber(CHAIN, 9, -2)
    last = chain.record(CHAIN, N - 2)
    chain.set_head(CHAIN, N - 2, last.record_hash)
    check(chain, "deleted", 7)
    report = verify(chain.url, public_key=PUBLIC)
    issue = report.find("deleted", 7)[0]
    assert (issue.seq, issue.seq_end) == (7, 8), report.format()
    assert report.find("truncated", N), "the signed checkpoint at seq 20 is now beyond the end"


def test_inserted_duplicate_seq(chain: StoreEnv) -> None:
    if chain.kind == "postgres":  # an attacker with DDL rights drops the key first
        chain.sql("ALTER TABLE audit_events DROP CONSTRAINT audit_events_pkey")
    prev = chain.record(CHAIN, 6)
    chain.insert_event(forge(CHAIN, 7, prev.record_hash))
    check(chain, "inserted", 7)
    report = verify(chain.url, public_key=PUBLIC)
    assert [(i.kind, i.seq) for i in report.issues] == [("inserted", 7)], report.format()


def test_inserted_and_renumbered(chain: StoreEnv) -> None:
    prev = chain.record(CHAIN, 6)
    chain.renumber(CHAIN, 7, +1)
    chain.insert_event(forge(CHAIN, 7, prev.record_hash))
    check(chain, "inserted", 7)
    report = verify(chain.url, public_key=PUBLIC)
    assert [(i.kind, i.seq) for i in report.issues if i.kind != "checkpoint_mismatch"] == [("inserted", 7)], report.format()


def test_reordered_records(chain: StoreEnv) -> None:
    chain.sql("UPDATE audit_events SET seq = -1 WHERE chain_id = ? AND seq = 7", [CHAIN])
    chain.sql("UPDATE audit_events SET seq = 7 WHERE chain_id = ? AND seq = 8", [CHAIN])
    chain.sql("UPDATE audit_events SET seq = 8 WHERE chain_id = ? AND seq = -1", [CHAIN])
    check(chain, "reordered", 7)
    report = verify(chain.url, public_key=PUBLIC)
    assert [(i.kind, i.seq, i.seq_end) for i in report.issues] == [("reordered", 7, 8)], report.format()
    assert "between 6 and 7" in report.issues[0].message


def test_reordered_by_timestamps_only_is_not_a_change(chain: StoreEnv) -> None:
    # Sorting by time is a view; the chain order is seq. Editing a time is an edit.
    chain.sql("UPDATE audit_events SET event_time = event_time - INTERVAL 1 HOUR WHERE chain_id = ? AND seq = 9".replace("INTERVAL 1 HOUR", "INTERVAL '1 hour'"), [CHAIN])
    check(chain, "edited", 9)


def test_truncation_needs_the_checkpoint_file(chain: StoreEnv) -> None:
    # A thorough attacker: cut the tail, move the head row, delete the checkpoints table.
    chain.sql("DELETE FROM audit_events WHERE chain_id = ? AND seq > 15", [CHAIN])
    chain.set_head(CHAIN, 15, chain.record(CHAIN, 15).record_hash)
    chain.sql("DELETE FROM audit_checkpoints")
    assert verify(chain.url, public_key=PUBLIC).ok, "without outside evidence the shorter chain is consistent"
    check(chain, "truncated", 16, checkpoints=chain.tmp_path / "checkpoints.jsonl")
    report = verify(chain.url, public_key=PUBLIC, checkpoints=chain.tmp_path / "checkpoints.jsonl")
    issue = report.find("truncated")[0]
    assert (issue.seq, issue.seq_end) == (16, N), report.format()


def test_truncation_detected_by_head_row(chain: StoreEnv) -> None:
    chain.sql("DELETE FROM audit_events WHERE chain_id = ? AND seq > 15", [CHAIN])
    chain.sql("DELETE FROM audit_checkpoints")
    check(chain, "truncated", 16)


def test_rewritten_chain_caught_by_checkpoint(chain: StoreEnv) -> None:
    # Rewrite 12..20 with every hash recomputed: self-consistent, only a checkpoint knows.
    prev = chain.record(CHAIN, 11).record_hash
    chain.sql("DELETE FROM audit_events WHERE chain_id = ? AND seq >= 12", [CHAIN])
    for seq in range(12, N + 1):
        ev = forge(CHAIN, seq, prev, i=seq, subject="nobody")
        chain.insert_event(ev)
        prev = ev.record_hash
    chain.set_head(CHAIN, N, prev)
    report = verify(chain.url, public_key=PUBLIC)
    assert [(i.kind, i.seq) for i in report.issues] == [("checkpoint_mismatch", N)], report.format()


def test_forged_checkpoint_is_rejected(chain: StoreEnv) -> None:
    other = Ed25519PrivateKey.generate()
    good = chain.record(CHAIN, 15)
    forged = sign_checkpoint(other, CHAIN, 15, good.record_hash, good.event_time)
    chain.sql("INSERT INTO audit_checkpoints VALUES (?, ?, ?, ?, ?, ?)", [forged.chain_id, forged.seq, forged.record_hash, forged.time, forged.key_id, forged.signature])
    check(chain, "bad_signature", 15)


def test_altered_checkpoint_is_rejected(chain: StoreEnv) -> None:
    cps = read_checkpoint_file(chain.tmp_path / "checkpoints.jsonl")
    assert [c.seq for c in cps] == [10, 20]
    # claim the chain reached seq 25, keeping the old signature
    bad = Checkpoint(CHAIN, 25, cps[-1].record_hash, cps[-1].time, cps[-1].key_id, cps[-1].signature)
    report = verify(chain.url, public_key=PUBLIC, checkpoints=[bad])
    assert [(i.kind, i.seq) for i in report.issues] == [("bad_signature", 25)], report.format()


def test_first_record_replaced(chain: StoreEnv) -> None:
    chain.sql("UPDATE audit_events SET prev_hash = ? WHERE chain_id = ? AND seq = 1", ["0" * 64, CHAIN])
    check(chain, "edited", 1)
    assert chain.record(CHAIN, 2).prev_hash != genesis_hash(CHAIN)
