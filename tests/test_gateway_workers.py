"""`workers: N`: one listening socket, N gateway processes, one chain each (issue 14 §3).

Under 50 concurrent clients, with one worker SIGKILLed mid-load: the supervisor starts it
again, every query a client was told `ok` has exactly one intent and one completion in
the store, no event id appears twice, every chain verifies (no gap, no fork), and the
queries the killed worker was running show as intents without a completion, never as
duplicated records.
"""

from __future__ import annotations

import collections
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import yaml

from gateway_harness import POLICY, GatewayProcess, seed_postgres
from oidc_issuer import OIDCIssuer
from pgserver import PostgresServer

pytestmark = pytest.mark.postgres

WORKERS = 2
CLIENTS = 50


@pytest.fixture(scope="module")
def issuer() -> Iterator[OIDCIssuer]:
    with OIDCIssuer(audience="warden") as iss:
        yield iss


def _config(tmp_path: Path, issuer: OIDCIssuer, **extra: Any) -> dict[str, Any]:
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(POLICY))))
    secret = tmp_path / "secret.key"
    secret.write_bytes(secrets.token_bytes(32))
    secret.chmod(0o600)
    return {
        "gateway_id": "gw", "mode": "shared", "policy": "policy.yaml", "state_dir": "state", "secret_file": str(secret),
        "auth": {"mode": "oidc", "issuer": issuer.issuer, "audience": "warden", "attribute_claims": ["region"]},
        "audit": {"store_env": "WARDEN_AUDIT_DSN", "checkpoint_file": str(tmp_path / "checkpoints.jsonl")},
        "workers": WORKERS, **extra,
    }  # fmt: skip


def _worker_pids(log: Path, deadline: float) -> dict[int, int]:
    """Worker index -> pid of its latest start, from the supervisor's log."""
    pids: dict[int, int] = {}
    while time.monotonic() < deadline:
        pids = {int(k): int(p) for k, p in re.findall(r"worker (\d+) \(gw-w\d+\) started, pid (\d+)", log.read_text())}
        if len(pids) == WORKERS:
            return pids
        time.sleep(0.05)
    raise AssertionError(f"workers did not start:\n{log.read_text()[-2000:]}")


def _two_workers(postgres: PostgresServer, issuer: OIDCIssuer, tmp_path: Path, prefix: str) -> tuple[GatewayProcess, str]:
    """A started gateway with WORKERS workers on seeded data, and its audit store's DSN."""
    data = postgres.create_database(prefix=f"{prefix}data")
    seed_postgres(data)
    store = postgres.create_database(prefix=f"{prefix}store")
    gw = GatewayProcess(tmp_path, {**os.environ, "WARDEN_TEST_PG_DSN": data, "WARDEN_AUDIT_DSN": store}, _config(tmp_path, issuer))
    gw.start(timeout=60)  # healthy: at least one worker serves
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # every worker serves (each prints this when it listens)
        text = gw.log.read_text()
        if all(f"gateway gw-w{k} (shared) listening" in text for k in range(1, WORKERS + 1)):
            return gw, store
        time.sleep(0.05)
    gw.stop()
    raise AssertionError(f"not every worker started:\n{gw.log.read_text()[-2000:]}")


def test_workers_under_load_with_one_killed(issuer: OIDCIssuer, postgres: PostgresServer, tmp_path: Path) -> None:
    gw, store = _two_workers(postgres, issuer, tmp_path, "wk")
    token = issuer.issue(sub="ana", groups=["analysts"], region="emea")
    pids = _worker_pids(gw.log, time.monotonic() + 30)
    assert len(set(pids.values())) == WORKERS

    ok: list[str] = []  # query ids a client was told "ok"
    broken: list[str] = []  # requests cut off (the killed worker's)
    served_by: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()
    done_count = [0]
    per_client = 12

    def client(n: int) -> None:
        with httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {token}"}, timeout=60) as http:
            for i in range(per_client):
                body = {"connection": "pg", "sql": f"SELECT id, email FROM customers WHERE id = {1 + (n + i) % 3}"}
                try:
                    resp = http.post("/v1/cells", json=body)
                    text = resp.content
                except httpx.HTTPError as exc:
                    with lock:
                        broken.append(type(exc).__name__)
                        done_count[0] += 1
                    continue
                trailer = re.search(rb'\{"status":"(\w+)"[^}]*"query_id":"(q_\w+)"\}$', text)
                with lock:
                    done_count[0] += 1
                    if resp.status_code == 200 and trailer and trailer.group(1) == b"ok":
                        ok.append(trailer.group(2).decode())
                        # The masked value goes out, never the address itself.
                        assert b"ada@analytical.example" not in text and b"alan@bletchley.example" not in text
                    else:
                        broken.append(f"{resp.status_code}")
                try:
                    h = http.get("/v1/health").json()
                except httpx.HTTPError:
                    continue
                with lock:
                    served_by[h["gateway_id"]] += 1

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    for t in threads:
        t.start()
    # Mid-load (a third of the queries answered): kill worker 1 outright.
    deadline = time.monotonic() + 120
    while done_count[0] < CLIENTS * per_client // 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert done_count[0] >= CLIENTS * per_client // 3, "the load did not get going"
    os.kill(pids[1], signal.SIGKILL)
    for t in threads:
        t.join(180)
    assert not any(t.is_alive() for t in threads)

    # The supervisor started worker 1 again (a new pid), and both serve.
    restarted = _wait_restart(gw.log, pids[1], time.monotonic() + 30)
    assert restarted != pids[1]
    assert set(served_by) <= {"gw-w1", "gw-w2"} and len(served_by) == WORKERS, served_by
    total = CLIENTS * per_client
    assert len(ok) + len(broken) == total
    assert len(ok) >= total // 2, (len(ok), broken[:10])  # the survivor kept serving
    assert gw.stop() == 0

    with psycopg.connect(store) as con:
        rows = con.execute("SELECT chain_id, seq, event_id, type, correlation_id FROM audit_events ORDER BY chain_id, seq").fetchall()
    ids = [r[2] for r in rows]
    assert len(ids) == len(set(ids)), "an event id appears twice"
    by_chain: dict[str, list[int]] = collections.defaultdict(list)
    for chain, seq, *_ in rows:
        by_chain[chain].append(seq)
    assert set(by_chain) == {"gw-w1", "gw-w2"}
    for chain, seqs in by_chain.items():
        assert seqs == list(range(1, len(seqs) + 1)), f"chain {chain} has a gap or a repeat"
    kinds: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for _, _, _, type_, qid in rows:
        if qid:
            kinds[qid][type_] += 1
    for qid in ok:  # every "ok" has exactly one intent and one completion
        assert kinds[qid]["query.submitted"] == 1 and kinds[qid]["query.executed"] == 1, (qid, kinds[qid])
    for qid, c in kinds.items():
        assert c["query.submitted"] <= 1 and c["query.executed"] + c["query.failed"] <= 1, (qid, c)

    pub = _warden("audit", "public-key", "--config", str(tmp_path / "gateway.yaml"))
    assert pub.returncode == 0, pub.stderr
    (tmp_path / "audit.pub").write_text(pub.stdout)
    done = _warden("audit", "verify", "--store", store, "--public-key", str(tmp_path / "audit.pub"),
                   "--checkpoints", str(tmp_path / "checkpoints.jsonl"), "--json")  # fmt: skip
    report = json.loads(done.stdout)
    assert report["ok"], report["issues"]
    assert set(report["chains"]) == {"gw-w1", "gw-w2"}
    # The restarted worker closed what the killed one left open (query.failed,
    # interrupted), and both stopped cleanly: the strict check holds on every chain.
    assert all(c["incomplete"] == 0 and c["closed"] for c in report["chains"].values()), report["chains"]
    strict = _warden("audit", "verify", "--store", store, "--public-key", str(tmp_path / "audit.pub"),
                     "--checkpoints", str(tmp_path / "checkpoints.jsonl"), "--strict", "--json")  # fmt: skip
    assert strict.returncode == 0, strict.stdout
    with psycopg.connect(store) as con:
        interrupted = con.execute("SELECT chain_id, count(*) FROM audit_events WHERE type = 'query.failed' AND error LIKE 'interrupted:%' GROUP BY 1").fetchall()
    assert {c for c, _ in interrupted} <= {"gw-w1"}, interrupted


def _wait_restart(log: Path, old: int, deadline: float) -> int:
    while time.monotonic() < deadline:
        text = log.read_text()
        starts = re.findall(r"worker 1 \(gw-w1\) started, pid (\d+)", text)
        if len(starts) >= 2 and text.count("gateway gw-w1 (shared) listening") >= 2:
            return int(starts[-1])
        time.sleep(0.05)
    raise AssertionError(f"worker 1 was not started again:\n{log.read_text()[-2000:]}")


def _warden(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "warden.cli", *args], capture_output=True, text=True, timeout=120, check=False)


def test_workers_need_the_postgres_store(tmp_path: Path, issuer: OIDCIssuer) -> None:
    from warden.gateway.config import ConfigError, config_from_mapping

    cfg = _config(tmp_path, issuer)
    cfg["audit"] = {"store": f"duckdb://{tmp_path / 'a.duckdb'}"}
    with pytest.raises(ConfigError, match=r"workers: 2 needs a PostgreSQL audit store"):
        config_from_mapping(cfg, base=tmp_path)
    for bad in (0, -1, "2", 1.5, True):
        with pytest.raises(ConfigError, match="workers must be a whole number"):
            config_from_mapping({**cfg, "workers": bad}, base=tmp_path)


def test_a_cancel_reaching_another_worker_is_passed_on(issuer: OIDCIssuer, postgres: PostgresServer, tmp_path: Path) -> None:
    from warden.gateway.frames import chunk_stream, read_frames

    gw, store = _two_workers(postgres, issuer, tmp_path, "wkc")
    auth = {"authorization": f"Bearer {issuer.issue(sub='ana', groups=['analysts'], region='emea')}"}
    slow = "SELECT count(*) AS n FROM big a CROSS JOIN big b WHERE a.id + b.id > 3"
    try:
        for _ in range(2):  # two slow queries: each is cancelled through the *other* worker
            started: list[str] = []
            trailer: dict[str, Any] = {}
            ready = threading.Event()

            def run(started: list[str] = started, ready: threading.Event = ready, trailer: dict[str, Any] = trailer) -> None:
                with httpx.Client(timeout=120) as http, http.stream("POST", gw.url + "/v1/cells", json={"connection": "pg", "sql": slow}, headers=auth) as resp:
                    frames = read_frames(chunk_stream(resp.iter_bytes()))
                    kind, payload = next(frames)
                    assert kind == b"C"
                    started.append(json.loads(payload)["query_id"])
                    ready.set()
                    for kind, payload in frames:
                        if kind == b"T":
                            trailer.update(json.loads(payload))

            t = threading.Thread(target=run)
            t.start()
            assert ready.wait(60), "the slow query did not start"
            qid = started[0]
            runner = int(re.match(r"q_w(\d+)_", qid).group(1))  # type: ignore[union-attr]
            other = 2 if runner == 1 else 1
            # Straight to the other worker's own socket: it does not run the query.
            via = httpx.HTTPTransport(uds=str(tmp_path / "state" / "workers" / f"w{other}.sock"))
            with httpx.Client(transport=via, timeout=30) as http:
                # Someone else may not cancel it, through any worker.
                mallory = {"authorization": f"Bearer {issuer.issue(sub='mallory', groups=['analysts'], region='emea')}"}
                assert http.post(f"http://gw/v1/queries/{qid}/cancel", headers=mallory).status_code == 403
                # The internal endpoint wants the gateway's own token.
                assert http.post("http://gw/v1/internal/cancel", json={"query_id": qid, "subject": "ana", "admin": True}).status_code == 404
                resp = http.post(f"http://gw/v1/queries/{qid}/cancel", headers=auth)
            assert resp.status_code == 200 and resp.json() == {"cancelled": True}, resp.text
            t.join(60)
            assert not t.is_alive() and trailer.get("status") == "cancelled", trailer
    finally:
        assert gw.stop() == 0
    with psycopg.connect(store) as con:
        cancels = con.execute("SELECT chain_id, status FROM audit_events WHERE type = 'query.cancel' ORDER BY seq").fetchall()
    assert sorted(s for _, s in cancels).count("success") == 2, cancels


def test_a_burst_of_connections_is_spread_over_the_workers(issuer: OIDCIssuer, postgres: PostgresServer, tmp_path: Path) -> None:
    """Each worker has its own SO_REUSEPORT socket, so the kernel spreads a burst of new
    connections over them (with one shared socket, the worker that woke first took most
    of a burst, and kept those clients: 24/21/5 of 50 on three workers)."""
    import http.client
    from urllib.parse import urlsplit

    gw, _store = _two_workers(postgres, issuer, tmp_path, "wb")
    try:
        where = urlsplit(gw.url)
        conns = [http.client.HTTPConnection(where.hostname or "127.0.0.1", where.port, timeout=30) for _ in range(40)]
        for c in conns:
            c.connect()  # all 40 open before any request: the burst a pool of clients makes
        served_by: collections.Counter[str] = collections.Counter()
        for _round in range(2):  # the same connection stays with its worker
            for c in conns:
                c.request("GET", "/v1/health")
                served_by[json.loads(c.getresponse().read())["gateway_id"]] += 1
        for c in conns:
            c.close()
        assert set(served_by) == {f"gw-w{k}" for k in range(1, WORKERS + 1)}
        # Binomial(40, 1/2) below 8 has a probability of ~1e-5: not a flaky bound.
        assert min(served_by.values()) >= 2 * 8, served_by
    finally:
        gw.stop()
