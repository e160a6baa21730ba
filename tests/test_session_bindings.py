"""Session and cell-run bindings on the single-process (DuckDB) state: a SQLite file
beside the DuckDB state, durable when ``owner`` returns, with older DuckDB rows honoured.

(The HTTP behaviour, 403 ``session/not-yours`` and the ``session.refused`` record, is
tested end to end in test_gateway_authz.py; PostgreSQL state in the replica tests.)
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from warden.gateway.approvals import ApprovalStore
from warden.gateway.state import SessionBindings, setup_state

ROOT = Path(__file__).resolve().parent.parent


def _open(path: Path) -> tuple[ApprovalStore, SessionBindings]:
    store = ApprovalStore(f"duckdb://{path}")
    bindings, _taints = setup_state(store)
    return store, bindings


@contextlib.contextmanager
def _opened(path: Path) -> Iterator[SessionBindings]:
    store, bindings = _open(path)
    try:
        yield bindings
    finally:
        bindings.close()
        store.close()


def test_first_subject_wins_and_survives_a_reopen(tmp_path: Path) -> None:
    store, bindings = _open(tmp_path / "state" / "approvals.duckdb")
    assert bindings.owner("session", "s-1", "ana") == "ana"
    assert bindings.owner("session", "s-1", "mallory") == "ana"
    assert bindings.owner("cell_run", "s-1", "mallory") == "mallory"  # another kind: another id
    bindings.close()
    store.close()

    lite = tmp_path / "state" / "bindings.sqlite3"
    assert lite.exists() and stat.S_IMODE(lite.stat().st_mode) == 0o600
    with _opened(tmp_path / "state" / "approvals.duckdb") as bindings:
        assert bindings.owner("session", "s-1", "mallory") == "ana"
        assert bindings.owner("cell_run", "s-1", "ana") == "mallory"


def test_bindings_an_older_version_kept_in_duckdb_still_bind(tmp_path: Path) -> None:
    path = tmp_path / "approvals.duckdb"
    store = ApprovalStore(f"duckdb://{path}")
    store.setup(
        "CREATE TABLE IF NOT EXISTS warden_bindings (kind TEXT NOT NULL, id TEXT NOT NULL, subject TEXT NOT NULL, "
        "created_at TIMESTAMPTZ NOT NULL, PRIMARY KEY (kind, id))"
    )
    store.execute("INSERT INTO warden_bindings VALUES (%s, %s, %s, %s)", ("session", "old-sess", "ana", datetime.now(UTC)))
    store.close()
    assert not (tmp_path / "bindings.sqlite3").exists()

    with _opened(path) as bindings:
        assert bindings.owner("session", "old-sess", "mallory") == "ana"


def test_concurrent_first_uses_agree_on_one_owner(tmp_path: Path) -> None:
    store, bindings = _open(tmp_path / "approvals.duckdb")
    owners: dict[str, list[str]] = {f"run-{i}": [] for i in range(40)}
    lock = threading.Lock()

    def claim(subject: str) -> None:
        for id_ in owners:
            got = bindings.owner("cell_run", id_, subject)
            with lock:
                owners[id_].append(got)

    threads = [threading.Thread(target=claim, args=(f"user-{n}",)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    try:
        assert all(not t.is_alive() for t in threads)
        for id_, seen in owners.items():
            assert len(seen) == 6 and len(set(seen)) == 1, (id_, seen)
    finally:
        bindings.close()
        store.close()


_BIND_AND_WAIT = """
import sys
from warden.gateway.approvals import ApprovalStore
from warden.gateway.state import SessionBindings, setup_state
store = ApprovalStore("duckdb://" + sys.argv[1])
bindings, _ = setup_state(store)
assert bindings.owner("cell_run", "run-killed", "ana") == "ana"
print("bound", flush=True)
sys.stdin.read()  # until killed
"""


def test_a_binding_is_durable_when_owner_returns_even_if_the_gateway_is_killed(tmp_path: Path) -> None:
    path = tmp_path / "approvals.duckdb"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "kernel")}
    proc = subprocess.Popen([sys.executable, "-c", _BIND_AND_WAIT, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"bound"
        os.kill(proc.pid, signal.SIGKILL)  # no close, no checkpoint: only what was committed
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    with _opened(path) as bindings:
        assert bindings.owner("cell_run", "run-killed", "mallory") == "ana"
