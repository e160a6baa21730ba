"""Kernel-side audit events: redaction of cell sources, the background sender, identity."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from warden.kernel.client import KernelGatewayClient
from warden.kernel.connect import (
    Endpoint,
    FileToken,
    IdentityError,
    StaticToken,
    TokenSource,
    endpoint_from_env,
    token_source_from_env,
)
from warden.kernel.events import (
    EventSender,
    cell_event,
    cell_language,
    redact_source,
    redact_sql,
    source_hash,
)
from warden.kernel.session import WardenSession, kernel_id_from_connection_file

REDACTION_CASES: list[tuple[str, list[str], list[str]]] = [
    # source, must not appear, must appear
    ("x = 1\nprint(x)", [], ["x = 1\nprint(x)"]),
    ('password = "hunter2"', ["hunter2"], ['password = "***"']),
    ("cfg = {'api_key': 'abc123', 'n': 1}", ["abc123"], ["'api_key': '***'", "'n': 1"]),
    ("DB_PASSWORD='p4ss'; token = f'tok-{n}'", ["p4ss", "tok-"], ["DB_PASSWORD='***'"]),
    ("url = 'postgresql://bob:s3cret@db/x'", ["s3cret"], ["postgresql://bob:***@db/x"]),
    ("send('ada@example.com')", ["ada@example.com"], ["[email]"]),
    ("card = '4111 1111 1111 1111'", ["4111 1111 1111 1111"], ["[card]"]),
    ("k = 'sk-abcdefghijklmnopqrstuvwxyz012345'", ["sk-abcdefghij"], ["[secret]"]),
    ("%%sql demo\nSELECT * FROM customers WHERE ssn = '123-45-6789' AND id = 1234567",
     ["123-45-6789", "1234567"], ["%%sql demo", "ssn = '?'", "id = ?"]),
    ("%%sql demo\nSELECT * FROM t WHERE a = '{{name}}' AND b = :x LIMIT 10", [], ["'{{name}}'", ":x", "LIMIT 10"]),
    ("%%sql demo\nSELECT $$secret text$$, \"Col'name\"", ["secret text"], ["$$?$$", "\"Col'name\""]),
    ("df = %sql SELECT * FROM t WHERE email = 'ada@example.com'", ["ada@example.com"], ["%sql SELECT * FROM t WHERE email = '?'"]),
]


@pytest.mark.parametrize(("source", "gone", "kept"), REDACTION_CASES)
def test_redact_source(source: str, gone: list[str], kept: list[str]) -> None:
    out = redact_source(source)
    for g in gone:
        assert g not in out, out
    for k in kept:
        assert k in out, out


def test_redact_sql_keeps_structure() -> None:
    assert redact_sql("SELECT 'a', E'b\\'c', 12, 123456, x1234567 -- 'c'") == "SELECT '?', '?', 12, ?, x1234567 -- 'c'"


def test_cell_event_shape() -> None:
    ctx = {"session_id": "s", "cell_run_id": "r"}
    ev = cell_event(context=ctx, source="%%sql demo\nSELECT 1", duration_ms=1.23456, status="ok")
    assert ev["type"] == "cell.execute" and ev["language"] == "sql" and ev["duration_ms"] == 1.235
    assert ev["source_sha256"] == source_hash("%%sql demo\nSELECT 1") and ev["context"] is ctx
    assert cell_language("import os") == "python" and cell_language("df = %sql SELECT 1") == "sql"


class Recorder:
    """A gateway's POST /v1/events: batch form ({"events": [...]}) or one event per request."""

    def __init__(self, status: int = 200, *, batch: bool = True) -> None:
        self.status = status
        self.batch = batch
        self.batches: list[list[dict[str, Any]]] = []
        self.calls = 0
        self.fail_first = 0

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        if self.fail_first > 0:
            self.fail_first -= 1
            raise httpx.ConnectError("down", request=request)
        if self.status != 200:
            return httpx.Response(self.status, json={"status": "error", "error": {"code": "not-found", "message": "no"}})
        body = json.loads(request.content)
        if "events" in body:
            if not self.batch:
                return httpx.Response(400, json={"status": "error", "error": {"code": "bad-request", "message": "'type' must be one of ..."}})
            self.batches.append(body["events"])
            return httpx.Response(201, json={"event_ids": [f"ev{i}" for i in range(len(body["events"]))]})
        self.batches.append([body])
        return httpx.Response(201, json={"event_id": f"ev{len(self.batches)}"})

    def client(self) -> KernelGatewayClient:
        return KernelGatewayClient(Endpoint("http://warden", None, "remote"), StaticToken("t"), transport=httpx.MockTransport(self.handler))


@pytest.mark.parametrize("batch", [True, False])
def test_sender_redacts_in_its_thread_and_batches(batch: bool) -> None:
    rec = Recorder(batch=batch)
    client = rec.client()
    sender = EventSender(lambda: client)
    for i in range(3):
        sender.submit(cell_event(context={"cell_run_id": str(i)}, source=f"password = 'pw{i}'", duration_ms=1, status="ok"))
    assert sender.flush(5)
    sent = [e for b in rec.batches for e in b]
    assert [e["context"]["cell_run_id"] for e in sent] == ["0", "1", "2"]
    assert all("pw" not in e["source_redacted"] and "source" not in e for e in sent)
    assert sender.supported is True and len(sender.sent) == 3
    assert len(rec.batches) == (1 if batch else 3)  # one request for the burst when the gateway takes batches
    sender.close()


def test_sender_gives_up_quietly_when_the_gateway_has_no_events_endpoint() -> None:
    rec = Recorder(status=404)
    client = rec.client()
    sender = EventSender(lambda: client)
    sender.submit({"type": "session.start", "context": {}})
    assert sender.flush(5)
    assert sender.supported is False
    sender.submit({"type": "cell.execute", "context": {}})  # ignored from now on
    assert sender.flush(1) and rec.calls == 1
    sender.close()


def test_sender_retries_while_the_gateway_is_down() -> None:
    rec = Recorder()
    rec.fail_first = 2
    client = rec.client()
    sender = EventSender(lambda: client, retry_seconds=0.05)
    sender.submit({"type": "session.start", "context": {}})
    assert sender.flush(5)
    assert rec.calls == 3 and len(rec.batches) == 1
    sender.close()


def test_sender_never_blocks_the_caller() -> None:
    gate = threading.Event()

    def slow_factory() -> Any:
        gate.wait(5)
        return Recorder().client()

    sender = EventSender(slow_factory)
    started = time.perf_counter()
    for _ in range(100):
        sender.submit({"type": "cell.execute", "context": {}})
    assert time.perf_counter() - started < 0.1
    gate.set()
    assert sender.flush(5)
    sender.close()


def test_session_links_cells_and_queries() -> None:
    rec = Recorder()
    client = rec.client()
    session = WardenSession(kernel_id="k", notebook_path="a.ipynb", connector=lambda: client)
    session.start(implementation="warden")
    run = session.begin_cell("x = 1", cell_id="cell-1", execution_count=4, silent=False)
    ctx = session.context()
    assert ctx["cell_run_id"] == run.cell_run_id and ctx["cell_id"] == "cell-1" and ctx["execution_count"] == 4
    session.record_query({"type": "query.executed", "query_id": "q_1"})
    session.end_cell(run, status="error", ename="ValueError", evalue="bad ada@example.com")
    session.end(timeout=5)
    sent = [e for b in rec.batches for e in b]
    assert [e["type"] for e in sent] == ["session.start", "cell.execute", "session.end"]
    cell = sent[1]
    assert cell["context"]["cell_run_id"] == run.cell_run_id and cell["query_ids"] == ["q_1"]
    assert cell["status"] == "error" and "ada@example.com" not in cell["error"] and "ValueError" in cell["error"]
    assert sent[2]["cells"] == 1


def test_kernel_id_from_connection_file() -> None:
    assert kernel_id_from_connection_file("/run/jupyter/kernel-3f2a1b4c-aaaa-bbbb-cccc-123456789abc.json") == "3f2a1b4c-aaaa-bbbb-cccc-123456789abc"
    assert kernel_id_from_connection_file("") == ""


def test_identity_from_environment(tmp_path: Path) -> None:
    env = {"WARDEN_TOKEN": "abc", "WARDEN_CLIENT_SECRET": "s"}
    src = token_source_from_env(env)
    assert isinstance(src, StaticToken) and src.token() == "abc"
    assert "WARDEN_TOKEN" not in env and "WARDEN_CLIENT_SECRET" not in env  # scrubbed
    tok = tmp_path / "token"
    tok.write_text("first\n")
    src2 = token_source_from_env({"WARDEN_TOKEN_FILE": str(tok)})
    assert isinstance(src2, FileToken) and src2.token() == "first"
    tok.write_text("second")
    assert src2.refresh() == "second" and src2.refresh() is None
    assert type(token_source_from_env({})) is TokenSource
    with pytest.raises(IdentityError, match="WARDEN_OIDC_ISSUER"):
        token_source_from_env({"WARDEN_CLIENT_ID": "x", "WARDEN_CLIENT_SECRET": "y"})


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WARDEN_GATEWAY_URL": "http://gw:8787/"}, Endpoint("http://gw:8787", None, "remote")),
        ({"WARDEN_GATEWAY_URL": "unix:///run/warden.sock"}, Endpoint("http://warden", "/run/warden.sock", "remote")),
        ({"WARDEN_GATEWAY_SOCKET": "/tmp/gw.sock"}, Endpoint("http://warden", "/tmp/gw.sock", "remote")),
    ],
)
def test_endpoint_from_env(env: dict[str, str], expected: Endpoint | None) -> None:
    assert endpoint_from_env(env) == expected


def test_bad_gateway_url() -> None:
    with pytest.raises(IdentityError, match="http"):
        endpoint_from_env({"WARDEN_GATEWAY_URL": "postgresql://u:p@h/db"})


def test_token_refresh_after_401(tmp_path: Path) -> None:
    tok = tmp_path / "token"
    tok.write_text("old")
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization", ""))
        if request.headers.get("authorization") != "Bearer new":
            return httpx.Response(401, json={"status": "error", "error": {"code": "auth/expired", "message": "expired"}})
        return httpx.Response(200, json={"subject": "ana"})

    client = KernelGatewayClient(Endpoint("http://warden", None, "remote"), FileToken(tok), transport=httpx.MockTransport(handler))
    tok.write_text("new")
    assert client.retrying(client.whoami)["subject"] == "ana"
    assert seen == ["Bearer old", "Bearer new"]
