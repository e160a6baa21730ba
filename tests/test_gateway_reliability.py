"""The gateway when things go wrong: killed mid-query, databases restarted, the audit
store gone, many clients at once, hostile request bodies. PostgreSQL audit store."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway_harness import POLICY, GatewayProcess, seed_duckdb, seed_postgres
from oidc_issuer import OIDCIssuer
from pgserver import PostgresServer
from warden.gateway.client import GatewayClient, GatewayUnavailable
from warden.gateway.frames import chunk_stream, read_frames


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    work = tmp_path_factory.mktemp("reliability")
    with PostgresServer() as data_pg, PostgresServer() as audit_pg, OIDCIssuer(audience="warden") as issuer:
        dsn = data_pg.create_database(prefix="data")
        seed_postgres(dsn)
        seed_duckdb(work / "data.duckdb")
        audit_dsn = audit_pg.create_database(prefix="audit")
        (work / "policy.yaml").write_text(yaml.safe_dump(POLICY))
        config = {
            "gateway_id": "gw-rel",
            "mode": "shared",
            "policy": "policy.yaml",
            "state_dir": "state",
            "auth": {"mode": "oidc", "issuer": issuer.issuer, "audience": "warden", "attribute_claims": ["region"]},
            "audit": {"store_env": "WARDEN_AUDIT_DSN", "checkpoint_every": 100},
            "limits": {"statement_timeout_ms": 30000},
        }
        process_env = {**os.environ, "WARDEN_TEST_PG_DSN": dsn, "WARDEN_AUDIT_DSN": audit_dsn}
        gw = GatewayProcess(work, process_env, config).start()
        try:
            yield {"gw": gw, "issuer": issuer, "data_pg": data_pg, "audit_pg": audit_pg, "audit_dsn": audit_dsn, "dsn": dsn}
        finally:
            gw.kill()


def token(env: dict[str, Any], sub: str = "eve", groups: tuple[str, ...] = ("eng", "audit")) -> str:
    issuer: OIDCIssuer = env["issuer"]
    return issuer.issue(sub=sub, groups=list(groups), region="emea", expires_in=3600)


def verify_ok(env: dict[str, Any]) -> Any:
    from warden.audit.verify import verify

    report = verify(env["audit_dsn"])
    assert report.ok, report
    return report


def events(env: dict[str, Any], sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(env["audit_dsn"]) as con:
        return con.execute(sql, params).fetchall()


def test_many_clients_no_lost_or_duplicated_records(env: dict[str, Any]) -> None:
    gw: GatewayProcess = env["gw"]
    auth = {"authorization": f"Bearer {token(env)}"}
    done: list[str] = []
    failures: list[str] = []
    lock = threading.Lock()
    # A fixed amount of work (not a time window): correctness under concurrency, not
    # speed, which the benchmarks measure. The deadline only bounds a hung gateway.
    per_worker = 3
    stop_at = time.monotonic() + 180.0

    def worker(n: int) -> None:
        with httpx.Client(base_url=gw.url, headers=auth, timeout=60) as http:
            i = 0
            while time.monotonic() < stop_at and i < per_worker:
                i += 1
                session = f"load-{n}-{i}"
                body = {"connection": "pg", "sql": f"SELECT id FROM customers WHERE id = {1 + i % 3}", "context": {"session_id": session}}
                resp = http.post("/v1/cells", json=body)
                with lock:
                    (done if resp.status_code == 200 and resp.content.endswith(b"}") else failures).append(session)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(200)
    assert not failures and len(done) == 50 * per_worker
    # Completions are committed just after each response: give the last ones a moment.
    deadline = time.monotonic() + 20
    while True:
        rows = events(env, "SELECT session_id, type, count(*) FROM audit_events WHERE session_id LIKE 'load-%%' GROUP BY 1, 2")
        per_session: dict[str, dict[str, int]] = {}
        for session, type_, count in rows:
            per_session.setdefault(session, {})[type_] = count
        if sum(c.get("query.executed", 0) for c in per_session.values()) >= len(done) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert set(per_session) == set(done)
    for counts in per_session.values():
        assert counts == {"query.submitted": 1, "query.allowed": 1, "query.executed": 1}
    report = verify_ok(env)
    assert report is not None


def test_killed_mid_query_leaves_intent_and_a_valid_chain(env: dict[str, Any]) -> None:
    gw: GatewayProcess = env["gw"]
    auth = {"authorization": f"Bearer {token(env)}"}
    body = {"connection": "pg", "sql": "SELECT count(*) FROM big a CROSS JOIN big b WHERE a.id > 2"}
    query_id = ""
    with httpx.stream("POST", gw.url + "/v1/cells", json=body, headers=auth, timeout=60) as resp:
        assert resp.status_code == 200
        frames = read_frames(chunk_stream(resp.iter_bytes()))
        kind, payload = next(frames)
        assert kind == b"C"
        query_id = json.loads(payload)["query_id"]
        gw.kill()  # SIGKILL: no drain, no flush
        with pytest.raises((EOFError, httpx.HTTPError)):
            list(frames)
    with GatewayClient(gw.url, token=token(env)) as c, pytest.raises(GatewayUnavailable):
        c.run("pg", "SELECT 1 AS one")
    types = [t for (t,) in events(env, "SELECT type FROM audit_events WHERE correlation_id = %s ORDER BY seq", query_id)]
    assert types == ["query.submitted", "query.allowed"]  # the intent, and no completion
    gw.start()
    verify_ok(env)
    with GatewayClient(gw.url, token=token(env)) as c:
        assert c.run("pg", "SELECT 1 AS one").trailer["status"] == "ok"


def test_database_restarted_under_the_pool(env: dict[str, Any]) -> None:
    gw: GatewayProcess = env["gw"]
    data_pg: PostgresServer = env["data_pg"]
    with GatewayClient(gw.url, token=token(env)) as c:
        assert c.run("pg", "SELECT count(*) AS n FROM customers").trailer["status"] == "ok"
        data_pg.pause()
        data_pg.resume()
        result = c.run("pg", "SELECT count(*) AS n FROM customers")
        assert result.last is not None and result.last.table is not None
        assert result.last.table.column("n").to_pylist() == [3]
        result = c.run("pg", "UPDATE orders SET amount = amount WHERE id = 1")
        assert result.trailer["status"] == "ok"


def test_audit_store_down_denies_then_recovers(env: dict[str, Any]) -> None:
    gw: GatewayProcess = env["gw"]
    audit_pg: PostgresServer = env["audit_pg"]
    marker = "audit-down-marker"
    with GatewayClient(gw.url, token=token(env)) as c:
        audit_pg.pause()
        try:
            with pytest.raises(GatewayUnavailable, match="audit"):
                c.run("pg", f"INSERT INTO secrets VALUES (99, '{marker}')")
        finally:
            audit_pg.resume()
        deadline = time.monotonic() + 20
        while True:
            try:
                assert c.run("pg", "SELECT 1 AS one").trailer["status"] == "ok"
                break
            except GatewayUnavailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    # nothing ran while unaudited
    with psycopg.connect(env["dsn"]) as con:
        assert con.execute("SELECT count(*) FROM secrets WHERE token = %s", (marker,)).fetchone() == (0,)
    verify_ok(env)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    st.one_of(
        st.binary(max_size=200),
        st.dictionaries(
            st.sampled_from(["connection", "sql", "params", "context", "approval_id", "max_rows", "junk"]),
            st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=40), st.lists(st.integers(), max_size=3),
                      st.dictionaries(st.text(max_size=5), st.integers(), max_size=2)),
            max_size=6,
        ).map(lambda d: json.dumps(d).encode()),
    )
)  # fmt: skip
def test_fuzzed_bodies_never_crash_the_gateway(env: dict[str, Any], body: bytes) -> None:
    gw: GatewayProcess = env["gw"]
    resp = httpx.post(gw.url + "/v1/cells", content=body, headers={"authorization": f"Bearer {token(env)}", "content-type": "application/json"}, timeout=30)
    assert resp.status_code in (200, 202, 400, 403, 413), resp.text
    if resp.status_code >= 400 and resp.headers.get("content-type", "").startswith("application/json"):
        data = resp.json()
        assert data.get("status") in ("error", "denied")


def test_sigterm_right_after_start_stops_the_gateway(tmp_path: Any) -> None:
    """A service manager (or the workers' supervisor) that stops a gateway the moment it
    says it listens: the signal is not lost before the HTTP server has its own handlers;
    the gateway stops cleanly (exit 0), every time."""
    import signal
    import subprocess
    import sys

    from pgserver import free_port

    seed_duckdb(tmp_path / "data.duckdb")
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump({**POLICY, "connections": {"dk": POLICY["connections"]["dk"]}}))
    config = {"gateway_id": "gw-sig", "mode": "shared", "policy": "policy.yaml", "state_dir": "state",
              "auth": {"mode": "oidc", "issuer": "http://127.0.0.1:9", "audience": "warden"},
              "listen": {"host": "127.0.0.1", "port": free_port()}}  # fmt: skip
    (tmp_path / "gateway.yaml").write_text(yaml.safe_dump(config))
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-u", "-m", "warden.cli", "gateway", "--config", str(tmp_path / "gateway.yaml")],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path)  # fmt: skip
        try:
            assert proc.stdout is not None
            seen = b""
            for line in proc.stdout:
                seen += line
                if b"listening on" in line:
                    break
            assert b"listening on" in seen, seen.decode(errors="replace")[-2000:]
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
