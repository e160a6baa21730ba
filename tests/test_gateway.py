"""The gateway over HTTP: a real process, a real PostgreSQL, a real OIDC issuer."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gateway_harness import CUSTOMERS, POLICY, GatewayProcess, seed_duckdb, seed_postgres
from oidc_issuer import OIDCIssuer
from pgserver import PostgresServer
from warden.gateway.client import (
    Denied,
    GatewayClient,
    GatewayError,
    GatewayUnavailable,
    Held,
    QueryFailed,
    Unauthorized,
)
from warden.gateway.frames import chunk_stream, read_frames


@pytest.fixture(scope="module")
def issuer() -> Iterator[OIDCIssuer]:
    with OIDCIssuer(audience="warden") as iss:
        yield iss


@pytest.fixture(scope="module")
def gateway(postgres: PostgresServer, issuer: OIDCIssuer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    work = tmp_path_factory.mktemp("gateway")
    dsn = postgres.create_database(prefix="gwdata")
    seed_postgres(dsn)
    seed_duckdb(work / "data.duckdb")
    (work / "policy.yaml").write_text(yaml.safe_dump(POLICY))
    config = {
        "gateway_id": "gw-test",
        "mode": "shared",
        "policy": "policy.yaml",
        "state_dir": "state",
        "auth": {"mode": "oidc", "issuer": issuer.issuer, "audience": "warden", "attribute_claims": ["region"]},
        "approvals": {"ttl_seconds": 3600},
        "limits": {"statement_timeout_ms": 20000, "max_rows": 1000000},
    }
    env = {**os.environ, "WARDEN_TEST_PG_DSN": dsn}
    gw = GatewayProcess(work, env, config).start()
    yield gw
    gw.stop()


def client(gw: GatewayProcess, issuer: OIDCIssuer, sub: str, groups: list[str], **claims: Any) -> GatewayClient:
    return GatewayClient(gw.url, token=issuer.issue(sub=sub, groups=groups, **claims))


def analyst(gw: GatewayProcess, issuer: OIDCIssuer) -> GatewayClient:
    return client(gw, issuer, "ana", ["analysts"], region="emea")


def test_health_and_openapi(gateway: GatewayProcess) -> None:
    assert httpx.get(gateway.url + "/v1/health").json()["gateway_id"] == "gw-test"
    doc = httpx.get(gateway.url + "/v1/openapi.json").json()
    assert "/v1/cells" in doc["paths"] and doc["openapi"].startswith("3.")


def test_whoami_maps_groups_to_roles(gateway: GatewayProcess, issuer: OIDCIssuer) -> None:
    with analyst(gateway, issuer) as c:
        me = c.whoami()
    assert me["subject"] == "ana" and me["roles"] == ["analyst"] and me["mode"] == "shared"


@pytest.mark.parametrize("conn", ["pg", "dk"])
def test_masked_results_never_carry_raw_values(gateway: GatewayProcess, issuer: OIDCIssuer, conn: str) -> None:
    token = issuer.issue(sub="ana", groups=["analysts"], region="emea")
    body = {"connection": conn, "sql": "SELECT id, name, email, ssn FROM customers ORDER BY id"}
    resp = httpx.post(gateway.url + "/v1/cells", json=body, headers={"authorization": f"Bearer {token}"})
    assert resp.status_code == 200, resp.text
    raw = resp.content
    for _, _, email, ssn, _ in CUSTOMERS:
        assert email.encode() not in raw
        assert ssn.encode() not in raw
    with analyst(gateway, issuer) as c:
        result = c.run(conn, "SELECT id, name, email, ssn FROM customers ORDER BY id")
    st = result.last
    assert st is not None and st.table is not None
    rows = st.table.to_pylist()
    assert rows[0]["name"] == "Ada Lovelace"
    assert rows[0]["email"] == "****@analytical.example"
    assert rows[0]["ssn"].endswith("6789") and "123-45" not in rows[0]["ssn"]
    assert {m["column"] for m in st.masks} == {"email", "ssn"}
    assert result.header["action"] == "mask" and result.trailer["status"] == "ok"


def test_view_cannot_launder_a_column(gateway: GatewayProcess, issuer: OIDCIssuer) -> None:
    with analyst(gateway, issuer) as c:
        st = c.run("pg", "SELECT reach FROM contacts ORDER BY who").last
    assert st is not None and st.table is not None
    assert all(v.startswith("****@") for v in st.table.column("reach").to_pylist())


def test_row_filter_limits_rows(gateway: GatewayProcess, issuer: OIDCIssuer) -> None:
    with analyst(gateway, issuer) as c:
        for conn in ("pg", "dk"):
            st = c.run(conn, "SELECT DISTINCT region FROM orders").last
            assert st is not None and st.table is not None
            assert st.table.column("region").to_pylist() == ["emea"]


def test_denied_cell_names_rule_and_runs_nothing(gateway: GatewayProcess, issuer: OIDCIssuer) -> None:
    with analyst(gateway, issuer) as c, pytest.raises(Denied) as info:
        c.run("pg", "SELECT id FROM customers; SELECT token FROM secrets")
    assert "role:analyst/deny_tables[0]" in info.value.rule_ids
    assert "tok-should-never-leak" not in str(info.value)


def test_bound_parameters_are_not_string_substituted(gateway: GatewayProcess, issuer: OIDCIssuer) -> None:
    hostile = "x' OR '1'='1"
    with client(gateway, issuer, "eve", ["eng"]) as c:
        st = c.run("pg", "SELECT id FROM customers WHERE name = $1", [hostile]).last
        assert st is not None and st.table is not None and st.table.num_rows == 0
        st = c.run("pg", "SELECT id FROM customers WHERE name = $1", ["Ada Lovelace"]).last
        assert st is not None and st.table is not None and st.table.column("id").to_pylist() == [1]


def test_hold_approve_and_rerun(gateway: GatewayProcess, issuer: OIDCIssuer) -> None:
    sql = "UPDATE orders SET amount = amount"  # held (no WHERE), harmless when run
    with client(gateway, issuer, "eve", ["eng"]) as eve, pytest.raises(Held) as held:
        eve.run("pg", sql)
    approval = held.value.approval
    assert approval["status"] == "pending" and "role:engineer/hold[0]" in approval["rule_ids"]
    with client(gateway, issuer, "eve", ["eng", "owners"]) as eve_owner, pytest.raises(GatewayError, match="own request"):
        eve_owner.decide(approval["id"], approve=True, reason="mine")
    with client(gateway, issuer, "bob", ["owners"]) as bob:
        decided = bob.decide(approval["id"], approve=True, reason="cleanup ticket 42")
    assert decided["status"] == "approved" and decided["decided_by"] == "bob"
    with client(gateway, issuer, "eve", ["eng"]) as eve:
        with pytest.raises(Denied, match="different statement"):
            eve.run("pg", "UPDATE orders SET amount = 0", approval_id=approval["id"])
        result = eve.run("pg", sql, approval_id=approval["id"])
        assert result.header["approval_id"] == approval["id"]
        assert result.last is not None and result.last.rowcount == 20
        with pytest.raises(Denied, match="used"):
            eve.run("pg", sql, approval_id=approval["id"])
    with client(gateway, issuer, "mallory", ["eng"]) as other, pytest.raises(Denied, match="another user"):
        other.run("pg", sql, approval_id=approval["id"])


def test_huge_select_is_held_by_estimate(gateway: GatewayProcess, issuer: OIDCIssuer) -> None:
    with analyst(gateway, issuer) as c, pytest.raises(Held) as held:
        c.run("pg", "SELECT * FROM big")
    assert any("rows_estimate" in r for r in held.value.approval["reasons"])


def test_bad_tokens_are_refused(gateway: GatewayProcess, issuer: OIDCIssuer) -> None:
    cases = {
        "expired": issuer.issue(sub="ana", groups=["analysts"], expires_in=-600),
        "wrong-audience": issuer.issue(sub="ana", groups=["analysts"], aud="someone-else"),
        "bad-signature": issuer.issue(sub="ana", groups=["analysts"], key=issuer.stranger_key()),
    }
    for token in cases.values():
        with GatewayClient(gateway.url, token=token) as c, pytest.raises(Unauthorized) as info:
            c.whoami()
        assert token not in str(info.value)
    with GatewayClient(gateway.url) as anonymous, pytest.raises(Unauthorized):
        anonymous.run("pg", "SELECT 1")


def test_service_account_client_credentials(gateway: GatewayProcess, issuer: OIDCIssuer) -> None:
    from warden.gateway.auth import fetch_client_credentials_token

    reg = issuer.register_client("etl-bot", groups=["eng"])
    token = fetch_client_credentials_token(issuer.issuer, reg.client_id, reg.client_secret, audience="warden")
    with GatewayClient(gateway.url, token=token) as c:
        me = c.whoami()
    assert me["kind"] == "service" and me["roles"] == ["engineer"]


def test_row_limit_truncates_and_says_so(gateway: GatewayProcess, issuer: OIDCIssuer) -> None:
    with analyst(gateway, issuer) as c:
        st = c.run("pg", "SELECT id FROM orders", max_rows=3).last
    assert st is not None and st.truncated and st.rows == 3


def test_statement_timeout(gateway: GatewayProcess, issuer: OIDCIssuer) -> None:
    slow = "SELECT count(*) FROM big a CROSS JOIN big b"
    with client(gateway, issuer, "eve", ["eng"]) as c, pytest.raises(QueryFailed) as info:
        c.run("pg", slow)
    assert info.value.code == "timeout"


def test_cancel_stops_the_query_in_the_database(gateway: GatewayProcess, issuer: OIDCIssuer, postgres: PostgresServer) -> None:
    token = issuer.issue(sub="eve", groups=["eng", "analysts"], region="emea")
    body = {"connection": "pg", "sql": "SELECT count(*) FROM big a CROSS JOIN big b WHERE a.id > 1"}
    headers = {"authorization": f"Bearer {token}"}
    frames: list[tuple[bytes, bytes]] = []
    started = time.monotonic()
    with httpx.stream("POST", gateway.url + "/v1/cells", json=body, headers=headers, timeout=60) as resp:
        assert resp.status_code == 200
        stream = chunk_stream(resp.iter_bytes())
        it = read_frames(stream)
        kind, payload = next(it)
        assert kind == b"C"
        query_id = json.loads(payload)["query_id"]
        threading.Timer(0.3, lambda: httpx.post(f"{gateway.url}/v1/queries/{query_id}/cancel", headers=headers)).start()
        frames.extend(it)
    kinds = [k for k, _ in frames]
    assert b"X" in kinds and kinds[-1] == b"T"
    err = json.loads(dict(frames)[b"X"])
    assert err["code"] in ("cancelled", "timeout"), err
    assert time.monotonic() - started < 10
    with postgres.connect() as con:
        running = con.execute("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%CROSS JOIN big b WHERE a.id > 1%' AND state = 'active' AND pid <> pg_backend_pid()").fetchone()
    assert running == (0,)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b"{}", "'connection'"),
        (b'{"connection": "pg"}', "'sql'"),
        (b'{"connection": "pg", "sql": "SELECT 1", "params": {"a": 1}}', "'params'"),
        (b'{"connection": "pg", "sql": "SELECT 1", "max_rows": -1}', "'max_rows'"),
    ],
)
def test_malformed_requests_get_clear_4xx(gateway: GatewayProcess, issuer: OIDCIssuer, body: bytes, fragment: str) -> None:
    token = issuer.issue(sub="ana", groups=["analysts"], region="emea")
    resp = httpx.post(gateway.url + "/v1/cells", content=body, headers={"authorization": f"Bearer {token}", "content-type": "application/json"})
    assert 400 <= resp.status_code < 500
    assert fragment in resp.json()["error"]["message"]


def test_unknown_connection_is_denied(gateway: GatewayProcess, issuer: OIDCIssuer) -> None:
    with analyst(gateway, issuer) as c, pytest.raises(Denied) as info:
        c.run("nope", "SELECT 1")
    assert "unknown-connection" in info.value.rule_ids


def test_gateway_down_is_a_clear_error() -> None:
    from pgserver import free_port

    with GatewayClient(f"http://127.0.0.1:{free_port()}", token="x") as c, pytest.raises(GatewayUnavailable, match="no query ran"):
        c.run("pg", "SELECT 1")


def test_audit_records_the_story(gateway: GatewayProcess, issuer: OIDCIssuer) -> None:
    with analyst(gateway, issuer) as c:
        c.run("pg", "SELECT email FROM customers WHERE id = 1", context={"session_id": "s-audit", "cell_id": "c1", "execution_count": 7})
    with client(gateway, issuer, "aud", ["audit"]) as auditor:
        events = auditor.audit(session_id="s-audit", limit="50")
    types = [e["type"] for e in events]
    assert {"query.submitted", "query.masked", "query.executed"} <= set(types)
    executed = next(e for e in events if e["type"] == "query.executed")
    assert executed["subject"] == "ana" and executed["cell_id"] == "c1" and executed["execution_count"] == 7
    assert executed["rows"] == 1 and executed["result_fingerprint"]
    # nothing raw reached the log
    dump = json.dumps(events)
    assert "ada@analytical.example" not in dump
    with analyst(gateway, issuer) as c, pytest.raises(GatewayError, match="auditor"):
        c.audit()


def test_each_statement_gets_the_parameters_it_uses(gateway: GatewayProcess, issuer: OIDCIssuer) -> None:
    sql = "SELECT name FROM customers WHERE id = $2; SELECT '$1' AS lit, id FROM customers WHERE name = $1"
    with client(gateway, issuer, "eve", ["eng"]) as c:
        result = c.run("pg", sql, ["Grace Hopper", 1])
    first, second = result.statements
    assert first.table is not None and first.table.column("name").to_pylist() == ["Ada Lovelace"]
    assert second.table is not None and second.table.to_pylist() == [{"lit": "$1", "id": 2}]
    with client(gateway, issuer, "eve", ["eng"]) as c, pytest.raises(QueryFailed, match=r"uses \$3"):
        c.run("pg", "SELECT $3::int AS x", [1])


def test_kernel_events_single_and_batch_and_my_events(gateway: GatewayProcess, issuer: OIDCIssuer) -> None:
    token = issuer.issue(sub="kim", groups=["analysts"], region="emea")
    headers = {"authorization": f"Bearer {token}"}
    ctx = {"session_id": "s-kim", "cell_run_id": "run-1", "cell_id": "c9", "execution_count": 3}
    one = {"type": "cell.execute", "context": ctx, "status": "ok", "source_sha256": "ab" * 32,
           "source_redacted": "x = 1", "duration_ms": 1.5}  # fmt: skip
    resp = httpx.post(gateway.url + "/v1/events", json=one, headers=headers)
    assert resp.status_code == 201 and resp.json()["event_id"]
    batch = {"events": [{"type": "session.start", "context": ctx}, {**one, "status": "error", "error": "NameError"}]}
    resp = httpx.post(gateway.url + "/v1/events", json=batch, headers=headers)
    assert resp.status_code == 201 and len(resp.json()["event_ids"]) == 2
    bad = httpx.post(gateway.url + "/v1/events", json={"type": "query.executed"}, headers=headers)
    assert bad.status_code == 400 and "'type' must be one of" in bad.json()["error"]["message"]
    mine = httpx.get(gateway.url + "/v1/me/events", params={"session_id": "s-kim"}, headers=headers).json()["events"]
    assert sorted(e["type"] for e in mine) == ["cell.execute", "cell.execute", "session.start"]
    assert all(e["subject"] == "kim" for e in mine)
    other = issuer.issue(sub="zed", groups=["analysts"], region="emea")
    theirs = httpx.get(gateway.url + "/v1/me/events", params={"session_id": "s-kim"}, headers={"authorization": f"Bearer {other}"})
    assert theirs.json()["events"] == []


def test_completions_hide_denied_tables(gateway: GatewayProcess, issuer: OIDCIssuer) -> None:
    token = issuer.issue(sub="ana", groups=["analysts"], region="emea")
    tables = httpx.get(gateway.url + "/v1/completions", params={"connection": "pg"}, headers={"authorization": f"Bearer {token}"}).json()["tables"]
    assert "public.customers" in tables and "email" in tables["public.customers"]
    assert "public.secrets" not in tables


def test_auditor_verifies_the_chain_over_http(gateway: GatewayProcess, issuer: OIDCIssuer) -> None:
    auditor = {"authorization": f"Bearer {issuer.issue(sub='aud', groups=['audit'])}"}
    report = httpx.post(gateway.url + "/v1/audit/verify", headers=auditor).json()
    assert report["ok"] is True
    analyst_token = {"authorization": f"Bearer {issuer.issue(sub='ana', groups=['analysts'], region='emea')}"}
    assert httpx.post(gateway.url + "/v1/audit/verify", headers=analyst_token).status_code == 403
    with client(gateway, issuer, "aud", ["audit"]) as c:
        assert any(e["type"] == "audit.verify" for e in c.audit(type="audit.verify"))


def test_a_client_that_goes_away_mid_query_cancels_it_in_the_database(gateway: GatewayProcess, issuer: OIDCIssuer) -> None:
    """The kernel died (or the notebook closed) while its query ran: the gateway notices the
    closed connection, cancels the statement in PostgreSQL (not at its timeout) and audits
    the query as cancelled."""
    import socket
    from urllib.parse import urlsplit

    import psycopg

    dsn = gateway.env["WARDEN_TEST_PG_DSN"]
    marker = f"a.id + b.id > {int(time.time() * 1000) % 100000 + 7}"  # this run's statement, no other
    slow = f"SELECT count(*) AS n FROM big a CROSS JOIN big b WHERE {marker}"
    body = json.dumps({"connection": "pg", "sql": slow}).encode()
    token = issuer.issue(sub="gone-user", groups=["analysts"], region="emea")
    url = urlsplit(gateway.url)
    sock = socket.create_connection((url.hostname, url.port), timeout=30)
    sock.sendall(b"POST /v1/cells HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
                 + f"Authorization: Bearer {token}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)  # fmt: skip
    first = sock.recv(65536)
    assert b" 200 " in first.split(b"\r\n", 1)[0], first[:200]

    def active() -> int:
        with psycopg.connect(dsn, autocommit=True) as con:
            row = con.execute("SELECT count(*) FROM pg_stat_activity WHERE query LIKE %s AND state = 'active' "
                              "AND backend_type = 'client backend' AND pid <> pg_backend_pid()", (f"%{marker}%",)).fetchone()
            return int(row[0]) if row else 0

    deadline = time.monotonic() + 20
    while active() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert active() == 1, "the slow query never started"
    sock.close()  # the client goes away
    deadline = time.monotonic() + 10  # far below the role's 20 s statement timeout
    while active() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert active() == 0, "the statement kept running after its client went away"
    with client(gateway, issuer, "aud", ["audit"]) as auditor:
        def done() -> list[dict[str, Any]]:
            return [e for e in auditor.audit(type="query.failed", subject="gone-user", limit="50") if marker in (e.get("sql") or "")]

        deadline = time.monotonic() + 10
        events = done()
        while not events and time.monotonic() < deadline:
            time.sleep(0.05)
            events = done()
    assert events and events[-1]["status"] == "failure" and "cancel" in (events[-1]["error"] or ""), events


# Stops the module's gateway: keep this test last in the file.
def test_graceful_shutdown_then_verify(gateway: GatewayProcess, tmp_path: Path) -> None:
    # Runs last in this module: stopping drains and writes a checkpoint.
    # uvicorn re-raises SIGTERM after its graceful shutdown: -15 is a clean exit here.
    assert gateway.stop() in (0, -15)
    assert "audit store closed" in gateway.log.read_text()
    from warden.audit.verify import verify

    report = verify(f"duckdb://{gateway.workdir / 'state' / 'audit.duckdb'}")
    assert report.ok, report
