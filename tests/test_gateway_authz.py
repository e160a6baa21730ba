"""Authorization gaps (issue 8 §4), against real gateway processes, a real OIDC issuer
and a real PostgreSQL: who may cancel a query, who may approve (humans by default,
never the requester under a second identity), sessions bound to their subject, and the
audit readers named by the policy."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import yaml

from gateway_harness import POLICY, GatewayProcess, seed_duckdb, seed_postgres
from oidc_issuer import OIDCIssuer
from pgserver import PostgresServer
from warden.gateway.client import GatewayClient, GatewayError, Held
from warden.gateway.frames import chunk_stream, read_frames

SLOW = "SELECT count(*) AS n FROM big a CROSS JOIN big b WHERE a.id + b.id > 3"


@pytest.fixture(scope="module")
def issuer() -> Iterator[OIDCIssuer]:
    with OIDCIssuer(audience="warden") as iss:
        yield iss


def _start(root: Path, name: str, dsn: str, issuer: OIDCIssuer, **policy_extra: Any) -> GatewayProcess:
    work = root / name
    work.mkdir()
    seed_duckdb(work / "data.duckdb")
    policy = json.loads(json.dumps(POLICY))
    policy["roles"]["platform"] = {"members": {"groups": ["platform"]}, "statements": ["select"]}
    policy.update(policy_extra)
    (work / "policy.yaml").write_text(yaml.safe_dump(policy))
    config = {
        "gateway_id": name, "mode": "shared", "policy": "policy.yaml", "state_dir": "state",
        "auth": {"mode": "oidc", "issuer": issuer.issuer, "audience": "warden", "attribute_claims": ["region", "owner"]},
        "limits": {"statement_timeout_ms": 30000},
    }  # fmt: skip
    return GatewayProcess(work, {**os.environ, "WARDEN_TEST_PG_DSN": dsn}, config).start()


@pytest.fixture(scope="module")
def pg_data(postgres: PostgresServer) -> str:
    dsn = postgres.create_database(prefix="authz")
    seed_postgres(dsn)
    return dsn


@pytest.fixture(scope="module")
def gw(pg_data: str, issuer: OIDCIssuer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """Default powers, plus admins (group platform) and auditors (group compliance)."""
    g = _start(tmp_path_factory.mktemp("authz"), "gw-authz", pg_data, issuer,
               admins={"roles": ["platform"]}, auditors={"groups": ["compliance"]})  # fmt: skip
    yield g
    g.stop()


@pytest.fixture(scope="module")
def gw_service_approvers(pg_data: str, issuer: OIDCIssuer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """Service accounts may approve here (kinds: [human, service])."""
    g = _start(tmp_path_factory.mktemp("authz-svc"), "gw-svc", pg_data, issuer,
               approvers={"groups": ["owners"], "kinds": ["human", "service"]})  # fmt: skip
    yield g
    g.stop()


def human(issuer: OIDCIssuer, sub: str, *groups: str, **claims: Any) -> str:
    return issuer.issue(sub=sub, groups=list(groups), region="emea", **claims)


def service(issuer: OIDCIssuer, client_id: str, *groups: str, **claims: Any) -> str:
    # client_id == sub: a client-credentials token (RFC 9068), an identity of kind "service"
    return issuer.issue(sub=client_id, client_id=client_id, groups=list(groups), **claims)


def auth(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def audit(gw: GatewayProcess, issuer: OIDCIssuer, **params: str) -> list[dict[str, Any]]:
    resp = httpx.get(gw.url + "/v1/audit", params={"limit": "1000", **params}, headers=auth(human(issuer, "carol", "compliance")))
    assert resp.status_code == 200, resp.text
    events: list[dict[str, Any]] = resp.json()["events"]
    return events


class Running:
    """A slow query streaming in a thread; ``query_id`` from its first (C) frame."""

    def __init__(self, gw: GatewayProcess, token: str) -> None:
        self.frames: list[tuple[bytes, bytes]] = []
        self.query_id = ""
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(gw, token), daemon=True)
        self._thread.start()
        assert self._ready.wait(20), "the query never started"

    def _run(self, gw: GatewayProcess, token: str) -> None:
        body = {"connection": "pg", "sql": SLOW}
        with httpx.stream("POST", gw.url + "/v1/cells", json=body, headers=auth(token), timeout=60) as resp:
            it = read_frames(chunk_stream(resp.iter_bytes()))
            kind, payload = next(it)
            assert kind == b"C"
            self.query_id = json.loads(payload)["query_id"]
            self._ready.set()
            self.frames.extend(it)

    def finish(self, timeout: float = 60) -> dict[bytes, Any]:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the query did not end"
        return {k: json.loads(p) for k, p in self.frames if k in (b"X", b"T")}


def wait_running(dsn: str) -> None:
    """Until the slow query runs in PostgreSQL (a cancel sent before it starts would
    have nothing to cancel there)."""
    deadline = time.monotonic() + 20
    with psycopg.connect(dsn, autocommit=True) as con:
        while time.monotonic() < deadline:
            row = con.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE %s AND state = 'active' AND pid <> pg_backend_pid()",
                ("%a.id + b.id > 3%",),
            ).fetchone()
            if row and row[0]:
                return
            time.sleep(0.05)
    raise AssertionError("the slow query never started in PostgreSQL")


def cancel(gw: GatewayProcess, token: str, query_id: str) -> httpx.Response:
    return httpx.post(f"{gw.url}/v1/queries/{query_id}/cancel", headers=auth(token))


# -- cancel ------------------------------------------------------------------------------


def test_only_the_owner_or_an_admin_cancels_and_every_attempt_is_audited(gw: GatewayProcess, issuer: OIDCIssuer, pg_data: str) -> None:
    ana, mallory, root = human(issuer, "ana", "analysts"), human(issuer, "mallory", "analysts"), human(issuer, "root", "platform")
    q = Running(gw, ana)
    wait_running(pg_data)
    refused = cancel(gw, mallory, q.query_id)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "not-owner"
    # Refused means not cancelled: the query still runs; its owner cancels it.
    assert cancel(gw, ana, q.query_id).status_code == 200
    ends = q.finish()
    assert ends[b"X"]["code"] == "cancelled" and ends[b"T"]["status"] == "cancelled"

    q2 = Running(gw, ana)
    wait_running(pg_data)
    assert cancel(gw, root, q2.query_id).status_code == 200  # an admin (policy admins: role platform)
    assert q2.finish()[b"T"]["status"] == "cancelled"
    assert cancel(gw, mallory, "q_doesnotexist").status_code == 404

    events = audit(gw, issuer, type="query.cancel")  # written before the cancel answers
    by = {(e["subject"], e["correlation_id"]): e for e in events}
    assert by[("mallory", q.query_id)]["status"] == "failure" and by[("mallory", q.query_id)]["error"] == "not-owner"
    assert by[("ana", q.query_id)]["status"] == "success"
    assert by[("root", q2.query_id)]["status"] == "success" and "owner ana" in by[("root", q2.query_id)]["sql"]
    assert by[("mallory", "q_doesnotexist")]["error"] == "not-found"


# -- approvals ---------------------------------------------------------------------------

HELD = "SELECT id FROM customers WHERE ssn = '123-45-6789'"  # classified column in WHERE: held


def request_approval(gw: GatewayProcess, token: str) -> str:
    with GatewayClient(gw.url, token=token) as c, pytest.raises(Held) as held:
        c.run("dk", HELD)
    return str(held.value.approval["id"])


def decide(gw: GatewayProcess, token: str, approval_id: str) -> httpx.Response:
    return httpx.post(f"{gw.url}/v1/approvals/{approval_id}/approve", json={"reason": "looks fine"}, headers=auth(token))


def test_service_accounts_do_not_approve_by_default(gw: GatewayProcess, issuer: OIDCIssuer) -> None:
    approval = request_approval(gw, human(issuer, "ana", "analysts"))
    bot = service(issuer, "svc-bot", "owners")  # in the approver group, but a service account
    me = httpx.get(gw.url + "/v1/whoami", headers=auth(bot)).json()
    assert me["kind"] == "service" and me["approver"] is False
    resp = decide(gw, bot, approval)
    assert resp.status_code == 403 and resp.json()["error"]["code"] == "approval/not-approver"
    # The re-run stays held: nothing was approved.
    with GatewayClient(gw.url, token=human(issuer, "ana", "analysts")) as c, pytest.raises(GatewayError):
        c.run("dk", HELD, approval_id=approval)
    assert decide(gw, human(issuer, "bob", "owners"), approval).status_code == 200  # a human approver


def test_no_self_approval_through_a_second_identity(gw_service_approvers: GatewayProcess, issuer: OIDCIssuer) -> None:
    gw = gw_service_approvers
    # ana's own service account (its token names her as owner) may not approve her request...
    approval = request_approval(gw, human(issuer, "ana", "analysts", "owners"))
    resp = decide(gw, service(issuer, "svc-ana", "owners", owner="ana"), approval)
    assert resp.status_code == 403 and resp.json()["error"]["code"] == "approval/self-approval"
    # ...nor may ana herself (she is an approver too).
    assert decide(gw, human(issuer, "ana", "owners"), approval).json()["error"]["code"] == "approval/self-approval"
    # A request made by ana's service account is hers as well.
    by_svc = request_approval(gw, service(issuer, "svc-ana", "analysts", owner="ana", region="emea"))
    assert decide(gw, human(issuer, "ana", "owners"), by_svc).json()["error"]["code"] == "approval/self-approval"
    # Someone else's service account may approve here (kinds: [human, service]).
    ok = decide(gw, service(issuer, "svc-bob", "owners", owner="bob"), approval)
    assert ok.status_code == 200 and ok.json()["decided_by"] == "svc-bob"


# -- sessions ----------------------------------------------------------------------------


def post_event(gw: GatewayProcess, token: str, **context: str) -> httpx.Response:
    return httpx.post(gw.url + "/v1/events", json={"type": "cell.execute", "context": context, "status": "ok"}, headers=auth(token))


def test_sessions_and_cell_runs_are_bound_to_their_subject(gw: GatewayProcess, issuer: OIDCIssuer, tmp_path: Path) -> None:
    ana, mallory = human(issuer, "ana", "analysts"), human(issuer, "mallory", "analysts")
    assert post_event(gw, ana, session_id="sess-ana", cell_run_id="run-ana-1").status_code == 201
    assert post_event(gw, ana, session_id="sess-ana", cell_run_id="run-ana-2").status_code == 201  # the owner, again
    for ctx in ({"session_id": "sess-ana"}, {"session_id": "sess-mallory", "cell_run_id": "run-ana-1"}):
        resp = post_event(gw, mallory, **ctx)
        assert resp.status_code == 403 and resp.json()["error"]["code"] == "session/not-yours", resp.text
    batch = httpx.post(gw.url + "/v1/events", headers=auth(mallory),
                       json={"events": [{"type": "cell.execute", "context": {"session_id": "sess-ana"}}]})  # fmt: skip
    assert batch.status_code == 403
    cell = httpx.post(gw.url + "/v1/cells", headers=auth(mallory),
                      json={"connection": "dk", "sql": "SELECT 1 AS one", "context": {"session_id": "sess-ana"}})  # fmt: skip
    assert cell.status_code == 403 and cell.json()["error"]["code"] == "session/not-yours"

    session = audit(gw, issuer, session_id="sess-ana")
    assert session and {e["subject"] for e in session} == {"ana"}  # nothing of mallory's attached
    refused = [e for e in audit(gw, issuer, type="session.refused") if e["subject"] == "mallory"]
    assert len(refused) >= 4 and all(e["status"] == "failure" and not e["session_id"] for e in refused)

    # The binding is state, not memory: it survives a restart of the gateway.
    gw.stop()
    gw.start()
    assert post_event(gw, mallory, session_id="sess-ana").status_code == 403
    assert post_event(gw, ana, session_id="sess-ana").status_code == 201


def test_cell_runs_named_under_a_session_belong_to_its_subject(gw: GatewayProcess, issuer: OIDCIssuer) -> None:
    """The kernel names cell runs "<session id>:<run>": such a run is the session owner's,
    with no binding row of its own (so a cell costs no state write)."""
    import sqlite3

    ana, mallory = human(issuer, "ana", "analysts"), human(issuer, "mallory", "analysts")
    lite = gw.workdir / "state" / "bindings.sqlite3"

    def rows() -> int:
        with contextlib.closing(sqlite3.connect(lite)) as con:
            return int(con.execute("SELECT count(*) FROM warden_bindings").fetchone()[0])

    assert post_event(gw, ana, session_id="sess-ana-2", cell_run_id="sess-ana-2:run-1").status_code == 201
    before = rows()
    for n in range(2, 6):
        assert post_event(gw, ana, session_id="sess-ana-2", cell_run_id=f"sess-ana-2:run-{n}").status_code == 201
    assert rows() == before  # no row per cell run
    # Someone else naming a run under ana's session, with or without a session of their own:
    for ctx in ({"session_id": "sess-mal-2", "cell_run_id": "sess-ana-2:run-9"}, {"cell_run_id": "sess-ana-2:anything"}):
        resp = post_event(gw, mallory, **ctx)
        assert resp.status_code == 403 and resp.json()["error"]["code"] == "session/not-yours", resp.text
    cell = httpx.post(gw.url + "/v1/cells", headers=auth(mallory),
                      json={"connection": "dk", "sql": "SELECT 1 AS one", "context": {"cell_run_id": "sess-ana-2:run-1"}})  # fmt: skip
    assert cell.status_code == 403
    # A run named under a session nobody holds yet binds that session to its first user.
    assert post_event(gw, mallory, cell_run_id="sess-new:run-1").status_code == 201
    assert post_event(gw, ana, session_id="sess-new").status_code == 403


# -- audit readers -----------------------------------------------------------------------


def test_audit_readers_come_from_the_policy(gw: GatewayProcess, issuer: OIDCIssuer) -> None:
    # This policy names auditors: {groups: [compliance]}; the role called "auditor" no
    # longer reads the log by its name alone.
    assert httpx.get(gw.url + "/v1/audit", headers=auth(human(issuer, "carol", "compliance"))).status_code == 200
    for token in (human(issuer, "aud", "audit"), human(issuer, "ana", "analysts")):
        resp = httpx.get(gw.url + "/v1/audit", headers=auth(token))
        assert resp.status_code == 403 and resp.json()["error"]["code"] == "not-auditor"
        assert httpx.post(gw.url + "/v1/audit/verify", headers=auth(token)).status_code == 403


def test_without_an_auditors_section_the_auditor_role_reads(gw_service_approvers: GatewayProcess, issuer: OIDCIssuer) -> None:
    gw = gw_service_approvers
    assert httpx.get(gw.url + "/v1/audit", headers=auth(human(issuer, "aud", "audit"))).status_code == 200
    assert httpx.get(gw.url + "/v1/audit", headers=auth(human(issuer, "carol", "compliance"))).status_code == 403
