"""verify names the kind and seq of every tampering, on a real DuckDB file and PostgreSQL.

Each test writes a clean chain of 20 records through the store, closes it (which
writes a final signed ``close`` checkpoint at seq 20), edits rows with plain SQL, and
verifies. The tests at the end run the auditor's documented command (``warden audit
verify --public-key --checkpoints --strict``) and expect a nonzero exit for each attack.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from test_audit_support import BACKENDS, SECRET, StoreEnv, draft, forge, make_env
from warden.audit import Checkpoint, derive_signing_key, public_key_pem, verify
from warden.audit.checkpoint import read_checkpoint_file, sign_checkpoint
from warden.audit.cli import main as audit_main
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
    # The renumbered chain also runs one record past the signed close at seq 20.
    assert [(i.kind, i.seq) for i in report.issues if i.kind != "checkpoint_mismatch"] == [
        ("inserted", 7),
        ("unsealed", N + 1),
        ("head_mismatch", N + 1),
    ], report.format()


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
    # The store alone still knows a signed chain must have a checkpoint (the writer's
    # open at seq 0), but not where the chain ended:
    alone = verify(chain.url, public_key=PUBLIC)
    assert [(i.kind, i.seq, i.seq_end) for i in alone.issues] == [("unsealed", 1, 15)], alone.format()
    # the outside copy does.
    report = verify(chain.url, public_key=PUBLIC, checkpoints=chain.tmp_path / "checkpoints.jsonl")
    issue = report.find("truncated")[0]
    assert (issue.seq, issue.seq_end) == (16, N), report.format()
    assert {i.seq for i in report.find("checkpoint_missing")} == {0, 10, N}, report.format()


def test_truncation_detected_by_head_row(chain: StoreEnv) -> None:
    chain.sql("DELETE FROM audit_events WHERE chain_id = ? AND seq > 15", [CHAIN])
    chain.sql("DELETE FROM audit_checkpoints")
    report = verify(chain.url, public_key=PUBLIC)
    assert report.find("truncated", 16) and report.find("unsealed", 1), report.format()


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
    chain.sql(
        "INSERT INTO audit_checkpoints (chain_id, seq, record_hash, checkpoint_time, key_id, signature) VALUES (?, ?, ?, ?, ?, ?)",
        [forged.chain_id, forged.seq, forged.record_hash, forged.time, forged.key_id, forged.signature],
    )
    check(chain, "bad_signature", 15)


def test_altered_checkpoint_is_rejected(chain: StoreEnv) -> None:
    cps = read_checkpoint_file(chain.tmp_path / "checkpoints.jsonl")
    assert [(c.seq, c.mark) for c in cps] == [(0, "open"), (10, ""), (20, ""), (20, "close")]
    # claim the chain reached seq 25, keeping the old signature
    bad = Checkpoint(CHAIN, 25, cps[-1].record_hash, cps[-1].time, cps[-1].key_id, cps[-1].signature)
    report = verify(chain.url, public_key=PUBLIC, checkpoints=[bad])
    assert [(i.kind, i.seq) for i in report.issues] == [("bad_signature", 25)], report.format()


def test_first_record_replaced(chain: StoreEnv) -> None:
    chain.sql("UPDATE audit_events SET prev_hash = ? WHERE chain_id = ? AND seq = 1", ["0" * 64, CHAIN])
    check(chain, "edited", 1)
    assert chain.record(CHAIN, 2).prev_hash != genesis_hash(CHAIN)


# --------------------------------------------------------------------------- the sealed end
# What an auditor runs (docs/audit.md, "How an auditor verifies"): the CLI with the
# trusted public key, the external checkpoint file and --strict on a stopped gateway.


def cli_verify(env: StoreEnv, *extra: str, checkpoints: bool = True, strict: bool = True) -> int:
    key = env.tmp_path / "audit.pub"
    key.write_text(PUBLIC)
    args = ["audit", "verify", "--store", env.url, "--public-key", str(key), *extra]
    if checkpoints:
        args += ["--checkpoints", str(env.tmp_path / "checkpoints.jsonl")]
    if strict:
        args.append("--strict")
    return audit_main(args)


def test_the_documented_commands_pass_a_clean_store(chain: StoreEnv) -> None:
    assert cli_verify(chain) == 0


def test_forged_record_appended_after_the_close(chain: StoreEnv) -> None:
    last = chain.record(CHAIN, N)
    chain.insert_event(forge(CHAIN, N + 1, last.record_hash))
    # Even a plain verify (no file, no --strict) knows: the chain was closed at seq 20.
    report = verify(chain.url, public_key=PUBLIC)
    assert report.find("unsealed", N + 1) and report.find("head_mismatch", N + 1), report.format()
    assert report.chains[CHAIN].unsealed == 1
    chain.set_head(CHAIN, N + 1, forge(CHAIN, N + 1, last.record_hash).record_hash)  # a careful forger moves the head too
    assert cli_verify(chain, checkpoints=False, strict=False) == 1
    assert cli_verify(chain) == 1


def test_forged_append_with_the_close_checkpoint_deleted(chain: StoreEnv) -> None:
    last = chain.record(CHAIN, N)
    forged = forge(CHAIN, N + 1, last.record_hash)
    chain.insert_event(forged)
    chain.set_head(CHAIN, N + 1, forged.record_hash)
    chain.sql("DELETE FROM audit_checkpoints WHERE mark = 'close'")
    # Now the store alone looks like a gateway that crashed after seq 21: a warning,
    report = verify(chain.url, public_key=PUBLIC)
    assert report.ok and any("unsealed" in w for w in report.warnings), report.format()
    # which --strict turns into an error, and the outside copy proves outright.
    assert verify(chain.url, public_key=PUBLIC, strict=True).find("unsealed", N + 1)
    report = verify(chain.url, public_key=PUBLIC, checkpoints=chain.tmp_path / "checkpoints.jsonl")
    # (the file's close checkpoint also shows the chain was closed at 20: seq 21 is unsealed)
    assert [(i.kind, i.seq) for i in report.issues] == [("checkpoint_missing", N), ("unsealed", N + 1)], report.format()
    assert cli_verify(chain, strict=False) == 1
    assert cli_verify(chain, checkpoints=False) == 1


def test_every_checkpoint_deleted_from_the_store(chain: StoreEnv) -> None:
    chain.sql("DELETE FROM audit_checkpoints")
    report = verify(chain.url, public_key=PUBLIC, checkpoints=chain.tmp_path / "checkpoints.jsonl")
    assert {(i.kind, i.seq) for i in report.issues} == {("checkpoint_missing", s) for s in (0, 10, N)}, report.format()
    assert cli_verify(chain, strict=False) == 1
    # Without the outside copy: a signed chain with no checkpoint at all fails too.
    assert cli_verify(chain, checkpoints=False, strict=False) == 1


def test_truncation_after_deleting_checkpoints(chain: StoreEnv) -> None:
    chain.sql("DELETE FROM audit_events WHERE chain_id = ? AND seq > 15", [CHAIN])
    chain.set_head(CHAIN, 15, chain.record(CHAIN, 15).record_hash)
    chain.sql("DELETE FROM audit_checkpoints WHERE seq > 15")
    assert cli_verify(chain) == 1
    report = verify(chain.url, public_key=PUBLIC, checkpoints=chain.tmp_path / "checkpoints.jsonl", strict=True)
    assert report.find("truncated", 16) and report.find("checkpoint_missing", N), report.format()


def test_reordered_records_fail_the_documented_command(chain: StoreEnv) -> None:
    chain.sql("UPDATE audit_events SET seq = -1 WHERE chain_id = ? AND seq = 3", [CHAIN])
    chain.sql("UPDATE audit_events SET seq = 3 WHERE chain_id = ? AND seq = 4", [CHAIN])
    chain.sql("UPDATE audit_events SET seq = 4 WHERE chain_id = ? AND seq = -1", [CHAIN])
    assert cli_verify(chain) == 1


def test_full_rebuild_with_another_key(chain: StoreEnv) -> None:
    # The attacker throws the store away and writes a consistent history of their own,
    # signed (and closed cleanly) with a key of their own, with the same chain id.
    for table in ("audit_events", "audit_chains", "audit_checkpoints", "audit_keys", "audit_meta"):
        chain.sql(f"DROP TABLE {table}")
    store = chain.open(signing_key=b"mallory-has-her-own-secret-0123456789")
    for i in range(N):
        store.append([draft(i, subject="nobody")])
    store.close()
    # The store alone is self-consistent, and its own recorded key vouches for it:
    assert verify(chain.url).ok
    # the trusted key does not,
    report = verify(chain.url, public_key=PUBLIC)
    assert report.find("bad_signature") and not report.ok, report.format()
    # and the outside copy names what the rebuilt store lacks.
    report = verify(chain.url, public_key=PUBLIC, checkpoints=chain.tmp_path / "checkpoints.jsonl")
    assert report.find("checkpoint_missing", N) and report.find("checkpoint_mismatch", N), report.format()
    assert cli_verify(chain) == 1


def test_live_tail_is_a_warning_and_a_restart_is_not_a_forgery(env: StoreEnv) -> None:
    file = env.tmp_path / "checkpoints.jsonl"
    store = env.open(signing_key=SECRET, checkpoint_every=1000, checkpoint_file=file)
    for i in range(5):
        store.append([draft(i)])
    store.close()
    # A second run of the gateway continues the chain: it signs "open" at seq 5 first.
    store = env.open(signing_key=SECRET, checkpoint_every=1000, checkpoint_file=file)
    store.append([draft(6), draft(7)])
    live = verify(store, public_key=PUBLIC, checkpoints=file)
    assert live.ok and live.chains[CHAIN].unsealed == 2, live.format()
    assert any("2 record(s) (seq 6..7)" in w for w in live.warnings), live.format()
    assert verify(store, public_key=PUBLIC, checkpoints=file, strict=True).find("unsealed", 6)
    store.close()
    assert [(c.seq, c.mark) for c in read_checkpoint_file(file)] == [(0, "open"), (5, "close"), (5, "open"), (7, "close")]
    report = verify(env.url, public_key=PUBLIC, checkpoints=file, strict=True)
    assert report.ok and report.chains[CHAIN].closed, report.format()
