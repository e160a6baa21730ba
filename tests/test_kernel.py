"""The warden kernel through jupyter_client, against a real gateway process (OIDC mode,
real PostgreSQL, real OIDC issuer): masks, holds approved by a second identity,
denials, interrupts that cancel in the database, a gateway that is down, hostile
parameters and HTML in data; plus the cell events the kernel sends.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import yaml
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager

from gateway_harness import GatewayProcess, seed_duckdb
from oidc_issuer import OIDCIssuer
from pgserver import PostgresServer, free_port
from warden.gateway.client import GatewayClient

HOSTILE_NOTE = '<script>alert("x")</script><img src=x onerror="alert(1)">'

POLICY: dict[str, Any] = {
    "version": 1,
    "connections": {
        "pg": {"dialect": "postgres", "dsn_env": "WARDEN_TEST_PG_DSN"},
        "dk": {"dialect": "duckdb", "path": "data.duckdb"},
    },
    "defaults": {"mask": "redact", "classified_in_predicates": "hold"},
    "classifications": {"pii.email": ["*.*.customers.email"], "pii.ssn": ["*.*.customers.ssn"]},
    "roles": {
        "analyst": {
            "members": {"groups": ["analysts"]},
            "statements": ["select"],
            "deny_tables": ["*.*.secrets"],
            "masks": {"pii.email": "email", "pii.ssn": "last4"},
            "classified_in_predicates": "hold",
        },
        "auditor": {"members": {"groups": ["audit"]}, "statements": ["select"], "tables": ["*.*.orders"]},
    },
    "approvers": {"groups": ["owners"]},
}
CUSTOMERS = [
    (1, "Ada Lovelace", "ada@analytical.example", "123-45-6789", HOSTILE_NOTE),
    (2, "Grace Hopper", "grace@cobol.example", "987-65-4321", "plain"),
]
LONG_QUERY = "SELECT count(*) AS n FROM big a CROSS JOIN big b WHERE a.id + b.id > 7"


def seed(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as con:
        con.execute("CREATE TABLE customers (id int PRIMARY KEY, name text, email text, ssn text, notes text)")
        con.execute("CREATE TABLE secrets (id int, token text)")
        con.execute("INSERT INTO secrets VALUES (1, 'tok-should-never-leak')")
        con.execute("CREATE TABLE big AS SELECT g AS id FROM generate_series(1, 100000) g")
        with con.cursor() as cur:
            cur.executemany("INSERT INTO customers VALUES (%s, %s, %s, %s, %s)", CUSTOMERS)


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kernelspec(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from warden.kernel.install import install_kernelspec

    prefix = tmp_path_factory.mktemp("kernelspec")
    install_kernelspec(prefix=str(prefix))
    old = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = str(prefix / "share" / "jupyter")
    yield "warden"
    if old is None:
        os.environ.pop("JUPYTER_PATH", None)
    else:
        os.environ["JUPYTER_PATH"] = old


@pytest.fixture(scope="module")
def issuer() -> Iterator[OIDCIssuer]:
    with OIDCIssuer(audience="warden") as iss:
        yield iss


@pytest.fixture(scope="module")
def pg_data(postgres: PostgresServer) -> str:
    dsn = postgres.create_database(prefix="kerneldata")
    seed(dsn)
    return dsn


@pytest.fixture(scope="module")
def gateway(pg_data: str, issuer: OIDCIssuer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    work = tmp_path_factory.mktemp("kgateway")
    seed_duckdb(work / "data.duckdb")
    (work / "policy.yaml").write_text(yaml.safe_dump(POLICY))
    config = {
        "gateway_id": "gw-kernel-test",
        "mode": "shared",
        "policy": "policy.yaml",
        "state_dir": "state",
        "auth": {"mode": "oidc", "issuer": issuer.issuer, "audience": "warden", "attribute_claims": ["region"]},
        "limits": {"statement_timeout_ms": 30000, "max_rows": 1000000},
    }
    gw = GatewayProcess(work, {**os.environ, "WARDEN_TEST_PG_DSN": pg_data}, config).start()
    yield gw
    gw.stop()


class Kernel:
    """A running warden kernel and a blocking client; stopped by the fixture."""

    def __init__(self, kernel_name: str, env: dict[str, str]) -> None:
        self.km = KernelManager(kernel_name=kernel_name)
        self.km.start_kernel(env=env)
        self.kc: BlockingKernelClient = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)

    def run(self, code: str, *, cell_id: str | None = None, timeout: float = 60) -> tuple[dict[str, Any], list[tuple[str, dict[str, Any]]]]:
        """Execute like JupyterLab does (metadata.cellId); returns (reply, iopub outputs)."""
        content = {"code": code, "silent": False, "store_history": True, "user_expressions": {}, "allow_stdin": False, "stop_on_error": True}
        msg = self.kc.session.msg("execute_request", content, metadata={"cellId": cell_id} if cell_id else {})
        self.kc.shell_channel.send(msg)
        msg_id = msg["header"]["msg_id"]
        outputs: list[tuple[str, dict[str, Any]]] = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no idle after {timeout}s for {code[:60]!r}")
            try:
                m = self.kc.get_iopub_msg(timeout=left)
            except queue.Empty:
                continue
            if m["parent_header"].get("msg_id") != msg_id:
                continue
            if m["msg_type"] == "status" and m["content"]["execution_state"] == "idle":
                break
            outputs.append((m["msg_type"], m["content"]))
        reply = self.kc.get_shell_msg(timeout=timeout)
        while reply["parent_header"].get("msg_id") != msg_id:
            reply = self.kc.get_shell_msg(timeout=timeout)
        return reply["content"], outputs

    def eval_json(self, expr: str) -> Any:
        reply, outputs = self.run(f"import json as _j\nprint(_j.dumps({expr}, default=str))")
        assert reply["status"] == "ok", reply
        text = "".join(c.get("text", "") for t, c in outputs if t == "stream")
        return json.loads(text)

    def stop(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=False)


def all_text(outputs: list[tuple[str, dict[str, Any]]]) -> str:
    parts = []
    for _, content in outputs:
        parts.append(content.get("text", ""))
        for key in ("data",):
            for value in (content.get(key) or {}).values():
                parts.append(value if isinstance(value, str) else json.dumps(value))
        parts.extend(content.get("traceback", []) or [])
        parts.append(content.get("evalue", ""))
    return "\n".join(parts)


def kernel_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WARDEN_")}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def analyst(kernelspec: str, gateway: GatewayProcess, issuer: OIDCIssuer) -> Iterator[Kernel]:
    token = issuer.issue(sub="ana", groups=["analysts"], region="emea", expires_in=3600)
    k = Kernel(kernelspec, kernel_env(WARDEN_GATEWAY_URL=gateway.url, WARDEN_TOKEN=token, JPY_SESSION_NAME="work/analysis.ipynb"))
    try:
        yield k
    finally:
        k.stop()


# -- the kernel ---------------------------------------------------------------------------


def test_kernel_info_names_warden_and_has_no_debugger(analyst: Kernel) -> None:
    info = analyst.kc.kernel_info(reply=True, timeout=30)["content"]
    assert info["implementation"] == "warden" and info["language_info"]["name"] == "python"
    assert "debugger" not in info.get("supported_features", [])
    assert "warden" in info["banner"]
    spec = analyst.km.kernel_spec
    assert spec is not None and spec.metadata["debugger"] is False
    reply = analyst.kc.control_channel
    msg = analyst.kc.session.msg("debug_request", {"type": "request", "seq": 1, "command": "initialize", "arguments": {}})
    reply.send(msg)
    answer = analyst.kc.get_control_msg(timeout=10)
    assert answer["content"]["success"] is False and "switched off" in answer["content"]["message"]


def test_token_is_not_in_the_kernel_environment(analyst: Kernel) -> None:
    assert analyst.eval_json("sorted(k for k in __import__('os').environ if k.startswith('WARDEN_'))") == ["WARDEN_GATEWAY_URL"]


@pytest.mark.parametrize("conn", ["pg", "dk"])
def test_masked_results(analyst: Kernel, conn: str) -> None:
    reply, outputs = analyst.run(f"%%sql {conn}\nSELECT id, name, email, ssn FROM customers ORDER BY id", cell_id=f"cell-mask-{conn}")
    assert reply["status"] == "ok", reply
    text = all_text(outputs)
    for _, _, email, ssn, *_ in CUSTOMERS:
        assert email not in text and ssn not in text
    result = [c for t, c in outputs if t == "execute_result"]
    assert result and "warden-masked" in result[0]["data"]["text/html"] and "Ada Lovelace" in result[0]["data"]["text/html"]
    info = analyst.eval_json("_.attrs['warden']")
    assert set(info["masked"]) == {"email", "ssn"}
    assert info["masked"]["email"]["operator"] == "email" and info["masked"]["ssn"]["operator"].startswith("last")
    assert all(m["rules"] for m in info["masked"].values())
    assert info["event_id"] and info["completion_event_id"] and info["connection"] == conn
    assert analyst.eval_json("_.email.tolist()")[0] == "****@analytical.example"


def test_html_in_data_is_shown_as_text(analyst: Kernel) -> None:
    reply, outputs = analyst.run("%%sql pg\nSELECT id, notes FROM customers ORDER BY id")
    assert reply["status"] == "ok", reply
    markup = next(c for t, c in outputs if t == "execute_result")["data"]["text/html"]
    assert "<script" not in markup and "<img" not in markup and "onerror=\"" not in markup
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in markup and "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in markup


def test_bound_parameters_with_hostile_values(analyst: Kernel) -> None:
    for hostile in ["x' OR '1'='1", "'; DROP TABLE customers; --", "$1", "{{who}}", "Ada Lovelace' --"]:
        analyst.run(f"who = {hostile!r}")
        reply, _ = analyst.run("%%sql pg rows <<\nSELECT id FROM customers WHERE name = :who")
        assert reply["status"] == "ok", reply
        assert analyst.eval_json("rows.id.tolist()") == []
    analyst.run("who = 'Ada Lovelace'")
    analyst.run("%%sql pg rows <<\nSELECT id FROM customers WHERE name = {{who}}")
    assert analyst.eval_json("rows.id.tolist()") == [1]
    assert analyst.eval_json("len(__import__('warden.kernel.session', fromlist=['x']).get_session().history) > 0")


def test_denied_cell_names_rule_and_never_shows_values(analyst: Kernel) -> None:
    reply, outputs = analyst.run("%%sql pg\nSELECT token FROM secrets")
    assert reply["status"] == "error" and reply["ename"] == "Denied"
    assert "role:analyst/deny_tables[0]" in reply["evalue"] and "nothing ran" in reply["evalue"]
    assert "tok-should-never-leak" not in all_text(outputs)
    reply, outputs = analyst.run("%%sql pg --no-raise\nSELECT token FROM secrets")
    assert reply["status"] == "ok" and "The policy does not allow this" in all_text(outputs)


def test_held_then_approved_by_someone_else_continues(analyst: Kernel, gateway: GatewayProcess, issuer: OIDCIssuer) -> None:
    approved: list[dict[str, Any]] = []
    stop = threading.Event()

    def approver() -> None:
        with GatewayClient(gateway.url, token=issuer.issue(sub="bob", groups=["owners"], expires_in=3600)) as bob:
            while not stop.is_set():
                for a in bob.approvals("pending"):
                    if a["requester"] == "ana":
                        approved.append(bob.decide(a["id"], approve=True, reason="ticket 42"))
                        return
                time.sleep(0.2)

    t = threading.Thread(target=approver, daemon=True)
    t.start()
    try:
        analyst.run("%config SqlMagic.approval_poll_interval = 0.2")
        reply, outputs = analyst.run("%%sql pg --wait 30\nSELECT name FROM customers WHERE ssn = '123-45-6789'", timeout=60)
    finally:
        stop.set()
        t.join(10)
    assert reply["status"] == "ok", reply
    assert approved and approved[0]["decided_by"] == "bob"
    text = all_text(outputs)
    assert "Held for approval" in text and "group owners" in text and "Approved by bob" in text
    result = next(c for t_, c in outputs if t_ == "execute_result")
    assert "Ada Lovelace" in result["data"]["text/plain"]
    assert analyst.eval_json("_.attrs['warden']['approval_id']") == approved[0]["id"]


def test_held_without_waiting_tells_how_to_rerun(analyst: Kernel) -> None:
    reply, outputs = analyst.run("%%sql pg --wait 0\nSELECT name FROM customers WHERE ssn = '987-65-4321'")
    assert reply["status"] == "error" and reply["ename"] == "Held"
    shown = all_text([(t, c) for t, c in outputs if t == "display_data"])
    assert "re-run this cell" in shown and "owners" in shown  # in the box; the error line points to it
    assert "above" in reply["evalue"] and "re-run" not in reply["evalue"]
    assert "987-65-4321" not in all_text([(t, c) for t, c in outputs if t != "execute_input"])


def test_interrupt_cancels_the_query_in_the_database(analyst: Kernel, postgres: PostgresServer) -> None:
    result: dict[str, Any] = {}

    def go() -> None:
        result["reply"], result["outputs"] = analyst.run(f"%%sql pg\n{LONG_QUERY}", timeout=60)

    t = threading.Thread(target=go, daemon=True)
    t.start()
    deadline = time.monotonic() + 20
    with postgres.connect(autocommit=True) as con:
        while time.monotonic() < deadline and not _running(con):
            time.sleep(0.1)
        assert _running(con), "the long query never started in PostgreSQL"
        analyst.km.interrupt_kernel()
        t.join(30)
        assert "reply" in result
        stopped = time.monotonic() + 10
        while time.monotonic() < stopped and _running(con):
            time.sleep(0.1)
        assert not _running(con), "the query still runs in PostgreSQL after the interrupt"
    reply = result["reply"]
    assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt"
    assert "cancelled in the database" in all_text(result["outputs"])


def _running(con: psycopg.Connection[Any]) -> bool:
    row = con.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE %s AND state = 'active' AND pid <> pg_backend_pid()",
        ("%a.id + b.id > 7%",),
    ).fetchone()
    return bool(row and row[0])


def test_completion_of_tables_and_columns(analyst: Kernel) -> None:
    analyst.run("%%sql pg\nSELECT 1")
    for code, expected in [("%%sql pg\nSELECT * FROM cust", "customers"), ("%%sql pg\nSELECT ema", "email"), ("%%sql p", "pg")]:
        reply = analyst.kc.complete(code, len(code), reply=True, timeout=30)["content"]
        assert expected in reply["matches"], (code, reply["matches"])
    code = "%%sql pg\nSELECT * FROM secr"
    reply = analyst.kc.complete(code, len(code), reply=True, timeout=30)["content"]
    assert "secrets" not in reply["matches"]  # denied tables are not offered


def test_kernel_loads_no_database_driver(analyst: Kernel) -> None:
    loaded = analyst.eval_json("[m for m in ('psycopg', 'duckdb', 'adbc_driver_postgresql', 'sqlalchemy') if m in __import__('sys').modules]")
    assert loaded == []


def test_service_account_identity(kernelspec: str, gateway: GatewayProcess, issuer: OIDCIssuer) -> None:
    reg = issuer.register_client("report-bot", groups=["analysts"])
    env = kernel_env(WARDEN_GATEWAY_URL=gateway.url, WARDEN_CLIENT_ID=reg.client_id, WARDEN_CLIENT_SECRET=reg.client_secret,
                     WARDEN_OIDC_ISSUER=issuer.issuer)  # fmt: skip
    k = Kernel(kernelspec, env)
    try:
        reply, outputs = k.run("%warden whoami")
        assert reply["status"] == "ok", reply
        text = all_text(outputs)
        assert "(service)" in text and "service account (client credentials)" in text
        assert reg.client_secret not in text
        assert k.eval_json("'WARDEN_CLIENT_SECRET' in __import__('os').environ") is False
        reach = _secret_reach(k, reg.client_secret)
        assert reach == {"in_blocks": [False, False, False], "names": [], "fds": [], "environ": []}, reach
        reply, _ = k.run("%%sql pg\nSELECT id FROM customers ORDER BY id")
        assert reply["status"] == "ok", reply
    finally:
        k.stop()


# What the analyst's code can read of the process: the environment block the kernel was
# started with (/proc/self/environ, also readable by a child via /proc/<pid>/environ),
# a child's own environment, and every open file descriptor.
_PROBE = """
import os, subprocess
_blocks = [
    open('/proc/self/environ', 'rb').read(),
    subprocess.run(['cat', '/proc/self/environ'], capture_output=True, check=True).stdout,
    subprocess.run(['cat', f'/proc/{os.getpid()}/environ'], capture_output=True, check=True).stdout,
]
_fds = []
for _f in os.listdir('/proc/self/fd'):
    try:
        _fds.append(os.readlink(f'/proc/self/fd/{_f}'))
    except OSError:
        pass
"""


def _secret_reach(k: Kernel, secret: str) -> dict[str, Any]:
    reply, _ = k.run(_PROBE)
    assert reply["status"] == "ok", reply
    return {
        "in_blocks": k.eval_json(f"[{secret!r}.encode() in b for b in _blocks]"),
        "names": k.eval_json("[n for n in ('WARDEN_TOKEN', 'WARDEN_CLIENT_SECRET') if any(n.encode() + b'=' in b for b in _blocks)]"),
        "fds": k.eval_json("[f for f in _fds if 'warden-secrets' in f]"),
        "environ": k.eval_json("sorted(k for k in __import__('os').environ if k in ('WARDEN_TOKEN', 'WARDEN_CLIENT_SECRET', 'WARDEN_SECRETS_FD'))"),
    }


def test_token_is_in_no_environment_block_or_descriptor(kernelspec: str, gateway: GatewayProcess, issuer: OIDCIssuer) -> None:
    token = issuer.issue(sub="ana", groups=["analysts"], region="emea", expires_in=3600)
    k = Kernel(kernelspec, kernel_env(WARDEN_GATEWAY_URL=gateway.url, WARDEN_TOKEN=token))
    try:
        reach = _secret_reach(k, token)
        assert reach == {"in_blocks": [False, False, False], "names": [], "fds": [], "environ": []}, reach
        # and the kernel still is ana to the gateway: the token was handed over, not lost
        reply, outputs = k.run("%warden whoami")
        assert reply["status"] == "ok" and "ana" in all_text(outputs), reply
    finally:
        k.stop()


def test_no_identity_is_a_clear_error(kernelspec: str, gateway: GatewayProcess, issuer: OIDCIssuer) -> None:
    expired = issuer.issue(sub="ana", groups=["analysts"], expires_in=-600)
    for extra in ({}, {"WARDEN_TOKEN": expired}):
        k = Kernel(kernelspec, kernel_env(WARDEN_GATEWAY_URL=gateway.url, **extra))
        try:
            reply, _ = k.run("%%sql pg\nSELECT 1")
            assert reply["status"] == "error" and reply["ename"] == "Unauthorized", reply
            assert "WARDEN_TOKEN" in reply["evalue"] and expired not in reply["evalue"]
        finally:
            k.stop()


def test_gateway_down_is_a_clear_error(kernelspec: str, pg_data: str) -> None:
    # A DSN in the environment changes nothing: the kernel has no path to a database.
    k = Kernel(kernelspec, kernel_env(WARDEN_GATEWAY_URL=f"http://127.0.0.1:{free_port()}", WARDEN_TOKEN="t", DATABASE_URL=pg_data))
    try:
        reply, _outputs = k.run("%%sql pg\nSELECT 1")
        assert reply["status"] == "error" and reply["ename"] == "GatewayUnavailable"
        assert "cannot be reached" in reply["evalue"] and "no query ran" in reply["evalue"]
        assert "never connects to a database directly" in reply["evalue"]
        reply, _ = k.run("x = 41 + 1")  # Python cells are unaffected
        assert reply["status"] == "ok"
    finally:
        k.stop()


def test_session_audit_trail_links_cells_and_queries(analyst: Kernel, gateway: GatewayProcess, issuer: OIDCIssuer) -> None:
    doc = httpx.get(gateway.url + "/v1/openapi.json").json()
    assert "/v1/events" in doc["paths"]
    marker = uuid.uuid4().hex
    analyst.run(f"x_{marker} = 1", cell_id="py-cell")
    analyst.run("%%sql pg\nSELECT id FROM customers WHERE id = 1", cell_id="sql-cell")
    session_id = analyst.eval_json("__import__('warden.kernel.session', fromlist=['x']).get_session().session_id")
    analyst.eval_json("__import__('warden.kernel.session', fromlist=['x']).get_session().events.flush(5)")
    with GatewayClient(gateway.url, token=issuer.issue(sub="aud", groups=["audit"])) as auditor:
        events = auditor.audit(session_id=session_id, limit="500")
    cells = [e for e in events if e["type"] == "cell.execute"]
    sql_cell = next(e for e in cells if e["cell_id"] == "sql-cell")
    queries = [e for e in events if e["type"].startswith("query.") and e.get("correlation_id") == sql_cell["correlation_id"]]
    assert {"query.submitted", "query.executed"} <= {e["type"] for e in queries}
    assert any(e["cell_id"] == "py-cell" for e in cells)
    assert sql_cell["notebook_path"] == "work/analysis.ipynb"


# -- cell events, seen by a recording gateway -----------------------------------------------------


class _Recording(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        from test_magic_shell import FakeGateway

        self.fake = FakeGateway()
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Recording

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _serve(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        req = httpx.Request(self.command, f"http://warden{self.path}", headers=dict(self.headers), content=body)
        resp = self.server.fake.handler(req)
        data = resp.content
        self.send_response(resp.status_code)
        self.send_header("content-type", resp.headers.get("content-type", "application/json"))
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = _serve
    do_POST = _serve


def test_cell_events_reach_the_gateway(kernelspec: str) -> None:
    server = _Recording()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    k = Kernel(kernelspec, kernel_env(WARDEN_GATEWAY_URL=url, WARDEN_TOKEN="t", JPY_SESSION_NAME="reports/q3.ipynb"))
    try:
        k.run("password = 'hunter2'\nx = 1", cell_id="cell-a")
        k.run("1/0", cell_id="cell-b")
        k.run("%%sql demo\nSELECT id, email FROM customers WHERE name = 'Ada'", cell_id="cell-c")
        k.run("y = 2")  # nbclient-style: no cellId
        # queued after a failing cell: aborted, and recorded as such
        first = k.kc.execute("raise RuntimeError('stop here')")
        second = k.kc.execute("z = 3")
        replies = {}
        while len(replies) < 2:
            msg = k.kc.get_shell_msg(timeout=30)
            replies[msg["parent_header"]["msg_id"]] = msg["content"]["status"]
        assert replies == {first: "error", second: "aborted"}
    finally:
        k.stop()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(e["type"] == "session.end" for e in server.fake.events):
            time.sleep(0.1)
        server.shutdown()
    events = server.fake.events
    types = [e["type"] for e in events]
    assert types[0] == "session.start" and types[-1] == "session.end", types
    cells = [e for e in events if e["type"] == "cell.execute"]
    by_id = {e["context"]["cell_id"]: e for e in cells}
    assert {"cell-a", "cell-b", "cell-c", ""} <= set(by_id)
    a, b, c = by_id["cell-a"], by_id["cell-b"], by_id["cell-c"]
    assert "hunter2" not in json.dumps(events) and a["status"] == "ok" and a["language"] == "python"
    assert b["status"] == "error" and b["error"].startswith("ZeroDivisionError")
    assert c["language"] == "sql" and "'Ada'" not in c["source_redacted"] and c["source_sha256"]
    assert all(e["context"]["notebook_path"] == "reports/q3.ipynb" for e in cells)
    counts = [e["context"]["execution_count"] for e in cells if e["status"] != "aborted"]
    assert counts == sorted(counts) and len(set(counts)) == len(counts)
    sent = server.fake.cells[-1]
    assert sent["context"]["cell_run_id"] == c["context"]["cell_run_id"] and sent["context"]["cell_id"] == "cell-c"
    assert c["query_ids"] == ["q_1"] and c["duration_ms"] > 0
    assert len({e["context"]["session_id"] for e in events}) == 1
    aborted = [e for e in cells if e["status"] == "aborted"]
    assert len(aborted) == 1 and aborted[0]["source_sha256"]


def test_install_cli(tmp_path: Path) -> None:
    import argparse

    from warden.kernel.install import register

    parser = argparse.ArgumentParser(prog="warden")
    register(parser.add_subparsers())
    args = parser.parse_args(["install", "--prefix", str(tmp_path), "--name", "warden-x", "--env", "WARDEN_GATEWAY_URL=http://gw:8787"])
    assert args.func(args) == 0
    spec = json.loads((tmp_path / "share/jupyter/kernels/warden-x/kernel.json").read_text())
    assert spec["argv"][1:] == ["-m", "warden.kernel", "-f", "{connection_file}"]
    assert spec["metadata"]["debugger"] is False and spec["display_name"] == "warden-x"
    assert spec["env"] == {"WARDEN_GATEWAY_URL": "http://gw:8787"}
    from warden.errors import WardenError

    bad = parser.parse_args(["install", "--prefix", str(tmp_path), "--env", "WARDEN_TOKEN=abc"])
    with pytest.raises(WardenError, match="credential"):
        bad.func(bad)
