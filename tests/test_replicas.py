"""N gateway replicas on one PostgreSQL store (issue 8 §7, docs/deploy.md): started
together they do not race on the state tables; a table created through one is known to
the others at their next cell; a clean SIGTERM exits 0; a restarted replica keeps its
chain; `warden audit verify --strict` with one public key and every replica's checkpoint
file reports the whole store intact, with no query intent left without a completion."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import httpx
import psycopg
import pytest
import yaml

from gateway_harness import POLICY, GatewayProcess, seed_duckdb, seed_postgres
from oidc_issuer import OIDCIssuer
from pgserver import PostgresServer
from warden.gateway.client import GatewayClient
from warden.gateway.frames import chunk_stream, read_frames

N = 4


@pytest.fixture(scope="module")
def issuer() -> Iterator[OIDCIssuer]:
    with OIDCIssuer(audience="warden") as iss:
        yield iss


def replica(root: Path, i: int, issuer: OIDCIssuer, env: dict[str, str], secret: Path) -> GatewayProcess:
    work = root / f"gw-{i}"
    work.mkdir(exist_ok=True)
    if not (work / "data.duckdb").exists():
        seed_duckdb(work / "data.duckdb")
    (work / "policy.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(POLICY))))
    config = {
        "gateway_id": f"gw-{i}",  # stable per replica: a restart continues its chain
        "mode": "shared", "policy": "policy.yaml", "state_dir": "state", "secret_file": str(secret),
        "auth": {"mode": "oidc", "issuer": issuer.issuer, "audience": "warden", "attribute_claims": ["region"]},
        "audit": {"store_env": "WARDEN_AUDIT_DSN", "checkpoint_file": str(root / f"gw-{i}.checkpoints.jsonl")},
    }  # fmt: skip
    return GatewayProcess(work, {**os.environ, **env}, config)


def warden(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "warden.cli", *args], capture_output=True, text=True, timeout=120, env=env, check=False)


def test_replicas_on_one_store(issuer: OIDCIssuer, postgres: PostgresServer, tmp_path: Path) -> None:
    data = postgres.create_database(prefix="repdata")
    seed_postgres(data)
    store = postgres.create_database(prefix="repstore")
    secret = tmp_path / "shared.key"  # every replica: the same mask key and checkpoint key
    secret.write_bytes(secrets.token_bytes(32))
    secret.chmod(0o600)
    env = {"WARDEN_TEST_PG_DSN": data, "WARDEN_AUDIT_DSN": store}
    gws = [replica(tmp_path, i, issuer, env, secret) for i in range(N)]

    # Started at the same moment on an empty store: the schema is created once, in turn.
    errors: list[BaseException] = []

    def start(g: GatewayProcess) -> None:
        try:
            g.start()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(g,)) for g in gws]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert errors == [], errors
        token = issuer.issue(sub="eve", groups=["eng"], region="emea")
        clients = [GatewayClient(g.url, token=token) for g in gws]
        for c in clients:  # every replica has loaded its pg catalog before the DDL
            assert c.run("pg", "SELECT count(*) AS n FROM orders").trailer["status"] == "ok"
        clients[0].run("pg", "CREATE TABLE made_on_0 (id int, note text)")
        clients[0].run("pg", "INSERT INTO made_on_0 VALUES (1, 'x')")
        for c in clients[1:]:  # not "unknown table" for the 300 s catalog TTL
            st = c.run("pg", "SELECT id, note FROM made_on_0").last
            assert st is not None and st.table is not None and st.table.num_rows == 1
        # A session opened through one replica is its subject's on every other.
        def event(g: GatewayProcess, sub: str) -> int:
            body = {"type": "cell.execute", "context": {"session_id": "sess-shared-test"}}
            return httpx.post(g.url + "/v1/events", json=body, headers={"authorization": f"Bearer {issuer.issue(sub=sub, groups=['analysts'])}"}).status_code

        assert event(gws[0], "ana") == 201
        assert [event(g, "mallory") for g in gws] == [403] * N
        results: list[dict[str, Any]] = []
        for i in range(3 * N):
            results.append(clients[i % N].run("pg", "SELECT id FROM customers ORDER BY id").trailer)
        assert all(t["status"] == "ok" for t in results)
        for c in clients:
            c.close()

        # A clean stop exits 0 (not 143); a restarted replica keeps its gateway_id and chain.
        assert [g.stop() for g in gws] == [0] * N
        gws[1].start()
        with GatewayClient(gws[1].url, token=token) as c:
            assert c.run("pg", "SELECT 1 AS one").trailer["status"] == "ok"
        assert gws[1].stop() == 0
    finally:
        for g in gws:
            g.stop()

    pub = warden("audit", "public-key", "--config", str(gws[0].workdir / "gateway.yaml"))
    assert pub.returncode == 0, pub.stderr
    (tmp_path / "audit.pub").write_text(pub.stdout)
    cps = [a for i in range(N) for a in ("--checkpoints", str(tmp_path / f"gw-{i}.checkpoints.jsonl"))]
    done = warden("audit", "verify", "--store", store, "--public-key", str(tmp_path / "audit.pub"), *cps, "--strict", "--json")
    report = json.loads(done.stdout)
    assert done.returncode == 0 and report["ok"], report["issues"]
    assert set(report["chains"]) == {f"gw-{i}" for i in range(N)}
    assert all(c["closed"] and c["incomplete"] == 0 for c in report["chains"].values()), report["chains"]


def test_a_killed_gateway_leaves_an_incomplete_intent_that_verify_reports(issuer: OIDCIssuer, postgres: PostgresServer, tmp_path: Path) -> None:
    data = postgres.create_database(prefix="killdata")
    seed_postgres(data)
    secret = tmp_path / "k.key"
    secret.write_bytes(secrets.token_bytes(32))
    gw = replica(tmp_path, 9, issuer, {"WARDEN_TEST_PG_DSN": data}, secret)
    gw.config["audit"] = {"store": f"duckdb://{tmp_path / 'audit.duckdb'}", "checkpoint_file": str(tmp_path / "k.checkpoints.jsonl")}
    gw.start()
    token = issuer.issue(sub="ana", groups=["analysts"], region="emea")
    slow = "SELECT count(*) AS n FROM big a CROSS JOIN big b WHERE a.id + b.id > 3"

    def run() -> None:
        with contextlib.suppress(httpx.HTTPError):
            httpx.post(gw.url + "/v1/cells", json={"connection": "pg", "sql": slow}, headers={"authorization": f"Bearer {token}"}, timeout=60)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        with psycopg.connect(data, autocommit=True) as con:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                row = con.execute("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%a.id + b.id > 3%' AND state = 'active' AND pid <> pg_backend_pid()").fetchone()
                if row and row[0]:
                    break
                time.sleep(0.05)
            else:
                raise AssertionError("the slow query never started")
        gw.kill()  # mid-query: its intent is durable, its completion never comes
    finally:
        gw.kill()
        t.join(30)
        # The killed gateway's statement would run on in PostgreSQL (a cross join of
        # 200k x 200k rows) and slow every test after this one.
        with psycopg.connect(data, autocommit=True) as con:
            con.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE '%a.id + b.id > 3%' AND pid <> pg_backend_pid()")
    loose = warden("audit", "verify", "--store", f"duckdb://{tmp_path / 'audit.duckdb'}", "--json")
    report = json.loads(loose.stdout)
    assert report["ok"] and report["chains"]["gw-9"]["incomplete"] == 1, report
    assert any("without" in w or "no completion" in w for w in report["warnings"]), report["warnings"]
    strict = warden("audit", "verify", "--store", f"duckdb://{tmp_path / 'audit.duckdb'}", "--strict", "--json")
    kinds = {i["kind"] for i in json.loads(strict.stdout)["issues"]}
    assert strict.returncode == 1 and "incomplete" in kinds, strict.stdout

    # Started again on its chain, the gateway records the open intent's outcome as far as
    # it is known (query.failed, interrupted): verify has nothing left open.
    gw.start()
    assert gw.stop() == 0
    after = json.loads(warden("audit", "verify", "--store", f"duckdb://{tmp_path / 'audit.duckdb'}", "--json").stdout)
    assert after["ok"] and after["chains"]["gw-9"]["incomplete"] == 0, after
    rows = duckdb.connect(str(tmp_path / "audit.duckdb"), read_only=True).execute(
        "SELECT count(*) FROM audit_events WHERE type = 'query.failed' AND error LIKE 'interrupted:%' AND sql LIKE '%a.id + b.id > 3%'"
    ).fetchone()
    assert rows == (1,)


def test_every_ok_trailer_has_a_durable_completion_even_when_a_replica_is_killed(
    issuer: OIDCIssuer, postgres: PostgresServer, tmp_path: Path
) -> None:
    data = postgres.create_database(prefix="loaddata")
    seed_postgres(data)
    store = postgres.create_database(prefix="loadstore")
    secret = tmp_path / "l.key"
    secret.write_bytes(secrets.token_bytes(32))
    env = {"WARDEN_TEST_PG_DSN": data, "WARDEN_AUDIT_DSN": store}
    gws = [replica(tmp_path, 20 + i, issuer, env, secret).start() for i in range(3)]
    with psycopg.connect(store, autocommit=True) as con:
        # A slow disk: each audit commit takes 30 ms more. A completion that is only
        # queued when its trailer leaves is then, under load, often not yet committed
        # when the process dies; one committed before the trailer always is.
        con.execute("CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.03); RETURN NULL; END $$")
        con.execute("CREATE TRIGGER slow_commit AFTER INSERT ON audit_events FOR EACH STATEMENT EXECUTE FUNCTION slow_commit()")
    token = issuer.issue(sub="ana", groups=["analysts"], region="emea")
    confirmed: list[str] = []  # completion event ids of trailers that said ok
    lock = threading.Lock()
    stop = threading.Event()
    killed = threading.Event()

    def client(n: int) -> None:
        with httpx.Client(timeout=30) as http:
            i = 0
            while not stop.is_set():
                gw = gws[(n + i) % len(gws)]
                i += 1
                try:
                    resp = http.post(gw.url + "/v1/cells", json={"connection": "pg", "sql": "SELECT id, name FROM customers"},
                                     headers={"authorization": f"Bearer {token}"})  # fmt: skip
                    frames = dict(read_frames(chunk_stream(iter([resp.content]))))
                except (httpx.HTTPError, EOFError, ValueError):
                    continue  # the killed replica: no trailer, no promise
                trailer = json.loads(frames.get(b"T", b"{}"))
                if trailer.get("status") == "ok":
                    with lock:
                        confirmed.append(trailer["event_id"])
                        if len(confirmed) >= 150 and not killed.is_set():
                            killed.set()

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(12)]
    try:
        for t in threads:
            t.start()
        assert killed.wait(60), "the load never got going"
        gws[1].kill()  # mid-load, no drain, no flush
        with lock:
            at_kill = len(confirmed)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with lock:
                if len(confirmed) >= at_kill + 100:
                    break
            time.sleep(0.05)
        stop.set()
        for t in threads:
            t.join(60)
    finally:
        stop.set()
        for g in gws:
            g.stop()
    with psycopg.connect(store) as con:
        stored = {r[0] for r in con.execute("SELECT event_id FROM audit_events WHERE type = 'query.executed'")}
    lost = [e for e in confirmed if e not in stored]
    assert len(confirmed) >= 250 and lost == [], f"{len(lost)} of {len(confirmed)} completions reported ok are not in the store"
