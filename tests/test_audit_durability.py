"""Durability of the DuckDB audit store under SIGKILL: a record whose ``append``
returned is in the store after a crash, exactly once, and the chain verifies.

A child process appends records (several threads, single events and small batches),
prints each confirmed record on stdout, and is SIGKILLed after N confirmations; the
test then reopens the store. Variants: the default intent journal, the journal with an
absorber that never runs (so every confirmed record exists only in the journal when the
process dies, with a torn frame added at its end), and ``journal=False``.
Reopening uses the default mode, which must replay a journal left by either.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import duckdb
import pytest

from warden.audit import EventDraft, open_store
from warden.audit.duckdb_store import DuckDBStore
from warden.audit.errors import AuditUnavailable
from warden.audit.journal import Journal
from warden.audit.verify import verify

SECRET = b"durability-secret-0123456789"
CONFIRMATIONS = 150
DEADLINE = 60.0

CHILD = textwrap.dedent(
    """
    import sys, threading
    from warden.audit import EventDraft, open_store
    from warden.audit.duckdb_store import DuckDBStore

    path, journal, mode = sys.argv[1], sys.argv[2] == "1", sys.argv[3]
    if mode == "no-absorb":
        # Journalled, never absorbed: every confirmed record lives only in the journal,
        # spread over many small segments.
        import warden.audit.journal
        warden.audit.journal.SEGMENT_BYTES = 16384
        DuckDBStore._absorb = lambda self, items: threading.Event().wait()
    store = open_store("duckdb://" + path, chain_id="durable", signing_key=SECRET,
                       checkpoint_every=40, checkpoint_file=path + ".checkpoints.jsonl", journal=journal)
    out = threading.Lock()

    def worker(n):
        i = 0
        while True:
            size = 1 if i % 3 else 4
            drafts = [EventDraft(type="cell.execute", subject=f"w{n}", cell_id=f"{n}-{i}-{k}") for k in range(size)]
            events = store.append(drafts)
            with out:
                for ev in events:
                    sys.stdout.write(f"{ev.seq} {ev.event_id}\\n")
                sys.stdout.flush()
            i += 1

    for n in range(4):
        threading.Thread(target=worker, args=(n,), daemon=True).start()
    threading.Event().wait()
    """
).replace("SECRET", repr(SECRET))


def _run_and_kill(tmp_path: Path, *, journal: bool, mode: str = "normal") -> dict[str, int]:
    """Start the child, read confirmations until CONFIRMATIONS, SIGKILL it; return
    event_id -> seq of every confirmed record."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "audit.duckdb"), "1" if journal else "0", mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    confirmed: dict[str, int] = {}
    deadline = time.monotonic() + DEADLINE
    try:
        while len(confirmed) < CONFIRMATIONS:
            remaining = deadline - time.monotonic()
            assert remaining > 0, "the child did not confirm enough appends in time"
            line = lines.get(timeout=remaining)
            if line is None:
                assert proc.stderr is not None
                pytest.fail(f"the child exited early: {proc.stderr.read()}")
            seq, event_id = line.split()
            confirmed[event_id] = int(seq)
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # mid-stream: its threads are still appending
        proc.wait(timeout=DEADLINE)
    reader.join(timeout=DEADLINE)
    # Lines printed before the kill landed are confirmations too.
    while True:
        try:
            line = lines.get_nowait()
        except queue.Empty:
            break
        if line is None:
            continue
        parts = line.split()
        if len(parts) == 2:  # a line cut by the kill is not a confirmation
            confirmed[parts[1]] = int(parts[0])
    assert proc.returncode == -signal.SIGKILL
    return confirmed


def _check_store(path: Path, confirmed: dict[str, int]) -> None:
    with open_store(f"duckdb://{path}", chain_id="durable", signing_key=SECRET) as store:
        rows = store.query(chain_id="durable", order="seq", limit=None).to_pylist()
    seen: dict[str, int] = {}
    for row in rows:
        assert row["event_id"] not in seen, f"record {row['event_id']} stored twice"
        seen[row["event_id"]] = row["seq"]
    missing = [e for e in confirmed if e not in seen]
    assert not missing, f"{len(missing)} confirmed record(s) lost, e.g. {missing[:3]}"
    assert all(seen[e] == s for e, s in confirmed.items()), "a confirmed record changed its seq"
    assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1)), "gap or duplicate seq"
    # The external checkpoint file got each checkpoint after the store (journal) did.
    report = verify(f"duckdb://{path}", checkpoints=Path(str(path) + ".checkpoints.jsonl"))
    assert report.ok, [str(i) for i in report.issues]
    assert report.checkpoints_checked > 0


@pytest.mark.parametrize("journal", [True, False], ids=["journal", "direct"])
def test_sigkill_mid_stream_loses_no_confirmed_record(tmp_path: Path, journal: bool) -> None:
    confirmed = _run_and_kill(tmp_path, journal=journal)
    _check_store(tmp_path / "audit.duckdb", confirmed)


def test_sigkill_after_journal_before_absorb(tmp_path: Path) -> None:
    path = tmp_path / "audit.duckdb"
    confirmed = _run_and_kill(tmp_path, journal=True, mode="no-absorb")
    con = duckdb.connect(str(path), read_only=True)
    try:
        in_duckdb = con.execute("SELECT count(*) FROM audit_events").fetchall()[0][0]
    finally:
        con.close()
    assert in_duckdb == 0, "the absorber was disabled: DuckDB itself must hold none of the records"
    segments = Journal(path).segments()
    assert len(segments) > 2, "the confirmed records must be in the journal (several segments)"
    with open(segments[-1][1], "ab") as f:  # a frame whose write the kill cut short
        f.write(b"WJ01\xff\x00\x00\x00\x12\x34\x56\x78{half a frame")
    # A read-only open (what `warden audit verify` does) absorbs the journal first.
    report = verify(f"duckdb://{path}")
    assert report.ok, [str(i) for i in report.issues]
    assert report.records >= len(confirmed)
    assert not Journal(path).segments()
    _check_store(path, confirmed)


def test_reads_see_journalled_records(tmp_path: Path) -> None:
    with open_store(f"duckdb://{tmp_path / 'a.duckdb'}", chain_id="c", journal=True) as store:
        for i in range(20):
            ev = store.append_one(EventDraft(type="cell.execute", cell_id=str(i)))
            assert store.count() == i + 1  # no waiting: the read flushes the journal
            assert store.query(limit=1).to_pylist()[0]["event_id"] == ev.event_id


def test_failed_journal_write_fails_the_batch_and_recovers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "a.duckdb"
    store = open_store(f"duckdb://{path}", chain_id="c", signing_key=SECRET, journal=True)
    assert isinstance(store, DuckDBStore)
    try:
        store.append_one(EventDraft(type="cell.execute", cell_id="before"))
        real = Journal.append
        failures = iter([True])

        def failing(self: Journal, payload: bytes) -> int:
            if next(failures, False):
                self.broken = True
                raise OSError(28, "No space left on device")
            return real(self, payload)

        monkeypatch.setattr(Journal, "append", failing)
        with pytest.raises(AuditUnavailable):
            store.append_one(EventDraft(type="cell.execute", cell_id="lost"))
        after = store.append_one(EventDraft(type="cell.execute", cell_id="after"))
        assert after.seq == 2  # the failed batch left no gap
        assert [r["cell_id"] for r in store.query(order="seq").to_pylist()] == ["before", "after"]
    finally:
        store.close()
    report = verify(f"duckdb://{path}")
    assert report.ok, [str(i) for i in report.issues]


def test_absorbed_segments_are_deleted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("warden.audit.journal.SEGMENT_BYTES", 8192)
    path = tmp_path / "a.duckdb"
    with open_store(f"duckdb://{path}", chain_id="c", signing_key=SECRET, checkpoint_every=25, journal=True) as store:
        for i in range(60):
            store.append([EventDraft(type="cell.execute", cell_id=f"{i}-{k}") for k in range(1 + i % 4)])
            if i % 10 == 9:
                assert store.count() == store.stats.events  # a read: everything absorbed
                # Only the segment being written and the one before it may remain.
                assert len(Journal(path).segments()) <= 2
        assert store.stats.checkpoints > 2
    assert not Journal(path).segments(), "a clean close leaves no journal"
    report = verify(f"duckdb://{path}")
    assert report.ok and report.records == 150, [str(i) for i in report.issues]
