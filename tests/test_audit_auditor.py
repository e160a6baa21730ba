"""The auditor's terminal and files against a real gateway process: ``warden audit
query``, ``tail [--follow]``, ``replay`` and ``export --format ocsf``."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest

from audit_seed import CELLS, SESSION, SeededLog, seed, start_gateway
from oidc_issuer import OIDCIssuer
from warden.audit.ocsf import CLASS_UID
from warden.audit.record import AuditEvent, chain_hash, genesis_hash

WARDEN = str(Path(sys.executable).parent / "warden")


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeededLog]:
    with OIDCIssuer(audience="warden") as issuer:
        gw = start_gateway(tmp_path_factory.mktemp("auditor"), issuer)
        try:
            yield seed(gw, issuer)
        finally:
            gw.stop()


def env_for(log: SeededLog, token: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WARDEN_")}
    env.update(WARDEN_GATEWAY_URL=log.gateway.url, WARDEN_TOKEN=token or log.auditor_token())
    return env


def warden(log: SeededLog, *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([WARDEN, "audit", *args], env=env_for(log, token), capture_output=True, text=True, timeout=120, check=False)


def test_query_prints_a_table_with_headers(seeded: SeededLog) -> None:
    done = warden(seeded, "query", "SELECT subject, outcome, count(*) AS n FROM queries GROUP BY ALL ORDER BY subject, outcome")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["subject", "outcome", "n"] and set(lines[1]) == {"-", " "}
    assert any(line.split()[:2] == ["ana", "denied"] for line in lines[2:])
    as_json = warden(seeded, "query", "--format", "json", "SELECT count(*) AS n FROM cells")
    assert json.loads(as_json.stdout.splitlines()[0])["n"] == len(CELLS)


def test_query_denied_for_analysts_and_for_writes(seeded: SeededLog) -> None:
    analyst = warden(seeded, "query", "SELECT * FROM events", token=seeded.token("ana", ["analysts"]))
    assert analyst.returncode == 1 and "audit/not-auditor" in analyst.stderr
    write = warden(seeded, "query", "DELETE FROM events")
    assert write.returncode == 1 and "audit/read-only" in write.stderr


def test_tail_filters_by_user_and_type(seeded: SeededLog) -> None:
    done = warden(seeded, "tail", "-n", "50", "--user", "eve", "--type", "approval.*")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines and all(" eve " in f" {line} " and "approval." in line for line in lines)
    assert any("approval.requested" in line for line in lines)


def test_tail_follow_prints_new_records_as_they_arrive(seeded: SeededLog) -> None:
    proc = subprocess.Popen([WARDEN, "audit", "tail", "--follow", "--user", "ana", "--type", "query.*", "--interval", "0.2"],
                            env=env_for(seeded), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout or ()], daemon=True).start()
    try:
        # The first page is printed before following starts.
        first = lines.get(timeout=30)
        assert "query." in first and "ana" in first
        marker = "follow_marker_4711"
        with seeded.client("ana", ["analysts"], region="emea") as ana:
            ana.run("dk", f"SELECT id AS {marker} FROM orders")
        deadline = time.monotonic() + 30
        seen = ""
        while marker not in seen:
            seen = lines.get(timeout=max(deadline - time.monotonic(), 0.01))
        assert "query." in seen and "ana" in seen
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_replay_rebuilds_the_session_as_a_notebook(seeded: SeededLog, tmp_path: Path) -> None:
    out = tmp_path / "session.ipynb"
    done = warden(seeded, "replay", SESSION, "-o", str(out))
    assert done.returncode == 0, done.stderr
    nb = nbformat.read(str(out), as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["warden"]["replay"] is True and nb.metadata["warden"]["session_id"] == SESSION
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.source for c in code] == [source for source, _, _ in CELLS]
    assert [c.execution_count for c in code] == list(range(1, len(CELLS) + 1))
    assert all(c.metadata["warden"]["event_time"] for c in code)
    text = [json.dumps(c.outputs) for c in code]
    assert text[0] == "[]"  # a Python cell: no query
    assert "mask" in text[1] and "pii.email" in text[1] and "captured result (masked" in text[1]
    assert "ada@analytical.example" not in json.dumps(nb)  # captured rows are the masked ones
    assert "approval" in text[3] and "olga" in text[3]
    assert "deny" in text[4] and "statements" in text[4]
    assert "failure" in text[5] and "the cell failed" in text[5]


def test_replay_of_an_unknown_session_fails(seeded: SeededLog, tmp_path: Path) -> None:
    done = warden(seeded, "replay", "no-such-session", "-o", str(tmp_path / "x.ipynb"))
    assert done.returncode == 2


def test_ocsf_export_maps_every_record_and_keeps_the_chain(tmp_path: Path) -> None:
    with OIDCIssuer(audience="warden") as issuer:
        gw = start_gateway(tmp_path, issuer)
        try:
            seed(gw, issuer)
        finally:
            assert gw.stop() == 0
    store = f"duckdb://{tmp_path / 'state' / 'audit.duckdb'}"
    done = subprocess.run([WARDEN, "audit", "export", "--store", store, "--format", "ocsf", "--out", str(tmp_path / "siem")],
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    path = Path(json.loads(done.stdout.splitlines()[0])["data"])
    events = [json.loads(line) for line in path.read_text().splitlines()]
    assert events and all(e["class_uid"] == CLASS_UID and e["category_uid"] == 6 for e in events)
    assert all(e["type_uid"] == CLASS_UID * 100 + e["activity_id"] for e in events)
    by_type = {e["unmapped"]["warden"]["type"]: e for e in events}
    masked = by_type["query.masked"]
    assert masked["activity_name"] == "Read" and masked["actor"]["user"]["uid"] == "ana" and masked["database"]["name"] == "dk"
    assert masked["query_info"]["query_string"].startswith("SELECT name, email")
    assert by_type["query.denied"]["status_id"] == 2 and by_type["query.denied"]["activity_name"] == "Delete"
    # The chain can be re-verified from the SIEM copy alone.
    prev = genesis_hash(events[0]["metadata"]["log_name"])
    for e in events:
        w = e["unmapped"]["warden"]
        rec = AuditEvent.from_dict(w["record"], json_as_text=False)
        assert w["prev_hash"] == prev and chain_hash(prev, rec.canonical()) == w["record_hash"] == e["unmapped"]["warden"]["record"]["record_hash"]
        prev = w["record_hash"]
    assert [e["metadata"]["sequence"] for e in events] == list(range(1, len(events) + 1))


def test_replay_interleaves_queries_without_a_cell_record_by_time() -> None:
    import datetime as dt

    from warden.audit.replay import build_notebook

    t = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    cells = [
        {"event_time": t, "execution_count": 1, "source": "x = 1", "status": "success", "cell_run_id": "r1", "duration_ms": float("nan")},
        {"event_time": t + dt.timedelta(seconds=20), "execution_count": 2, "source": "1/0", "status": "failure", "error": "ZeroDivisionError", "cell_run_id": "r2"},
    ]
    queries = [{"event_time": t + dt.timedelta(seconds=10), "correlation_id": "q-cli", "connection": "dk", "sql": "SELECT 1", "action": "allow",
                "outcome": "success", "rows": 1, "execution_count": None}]  # fmt: skip
    nb = build_notebook("s", cells, queries)
    nbformat.validate(nbformat.from_dict(nb))
    sources = [c["source"] for c in nb["cells"][1:]]
    assert sources == ["x = 1", "%%sql dk\nSELECT 1", "1/0"]
    assert nb["cells"][2]["metadata"]["warden"]["no_cell_record"] is True
    assert "ZeroDivisionError" in json.dumps(nb["cells"][3]["outputs"])
    assert nb["metadata"]["warden"] | {"generated_at": ""} == {"replay": True, "session_id": "s", "subject": "", "generated_at": "", "source": "", "cells": 2, "queries": 1}
