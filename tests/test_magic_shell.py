"""The magic inside a real IPython shell, against a scripted gateway (httpx.MockTransport).

The real gateway is exercised through the kernel in tests/test_kernel.py; this file
covers the magic's own logic quickly: what it sends, holds and waits, denials,
multi-statement results, options and errors.
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pyarrow as pa
import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from warden.gateway.client import Denied, GatewayUnavailable, Held
from warden.gateway.frames import frame, json_frame
from warden.kernel.client import KernelGatewayClient
from warden.kernel.connect import Endpoint, StaticToken
from warden.kernel.session import WardenSession
from warden.magic import load_ipython_extension
from warden.magic.magics import SqlMagic


def arrow_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue()


def cell_frames(tables: list[pa.Table | None], masks: list[dict[str, Any]] | None = None, *, approval_id: str | None = None) -> bytes:
    out = [json_frame(b"C", {"action": "mask" if masks else "allow", "rule_ids": [], "event_id": "ev_dec", "query_id": "q_1",
                             "approval_id": approval_id, "statements": len(tables)})]  # fmt: skip
    for i, t in enumerate(tables):
        out.append(json_frame(b"S", {"index": i, "kind": "select" if t is not None else "update",
                                     "columns": t.column_names if t is not None else [], "masks": masks or [] if i == len(tables) - 1 else []}))  # fmt: skip
        if t is not None:
            out.append(frame(b"A", arrow_bytes(t)))
        out.append(json_frame(b"E", {"index": i, "rows": t.num_rows if t is not None else 0, "bytes": 1, "truncated": False,
                                     "rowcount": t.num_rows if t is not None else 7}))  # fmt: skip
    out.append(json_frame(b"T", {"status": "ok", "rows": 1, "event_id": "ev_done", "query_id": "q_1"}))
    return b"".join(out)


class FakeGateway:
    def __init__(self) -> None:
        self.cells: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.approval_status = "pending"
        self.polls = 0
        self.approve_after_polls = 2
        self.lock = threading.Lock()

    def handler(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/v1/whoami":
            return httpx.Response(200, json={"subject": "ana", "kind": "human", "groups": ["analysts"], "roles": ["analyst"],
                                             "connections": ["demo"], "mode": "shared", "gateway_id": "gw"})  # fmt: skip
        if path == "/v1/events":
            body = json.loads(request.content)
            batch = body.get("events", [body])
            self.events.extend(batch)
            return httpx.Response(201, json={"event_ids": [f"ev_k{len(self.events) - i}" for i in range(len(batch))]})
        if path == "/v1/completions":
            return httpx.Response(200, json={"connection": request.url.params.get("connection"),
                                             "tables": {"main.customers": ["id", "name", "email"], "main.orders": ["id", "amount"]}})  # fmt: skip
        if path.startswith("/v1/approvals/"):
            with self.lock:
                self.polls += 1
                if self.polls >= self.approve_after_polls and self.approval_status == "pending":
                    self.approval_status = "approved"
            return httpx.Response(200, json={"id": "apr_1", "status": self.approval_status, "decided_by": "bob",
                                             "decision_reason": "ok", "rule_ids": ["hold"], "reasons": ["ssn in WHERE"]})  # fmt: skip
        if path == "/v1/cells":
            body = json.loads(request.content)
            self.cells.append(body)
            sql = body["sql"]
            if "secret" in sql:
                return httpx.Response(403, json={"status": "denied", "rule_ids": ["role:analyst/deny_tables[0]"],
                                                 "reasons": [{"rule": "role:analyst/deny_tables[0]", "message": "secret.api_keys is denied"}],
                                                 "event_id": "ev_denied"})  # fmt: skip
            if "ssn =" in sql and body.get("approval_id") != "apr_1":
                return httpx.Response(202, json={"status": "held", "approval": {"id": "apr_1", "status": "pending", "reasons": ["ssn in WHERE"],
                                                                                 "rule_ids": ["hold"], "expires_at": "later"},
                                                 "approvers": {"groups": ["data-owners"]}, "event_id": "ev_held"})  # fmt: skip
            if "slow" in sql:
                time.sleep(0.8)
            if "fail" in sql:
                return httpx.Response(200, content=json_frame(b"C", {"query_id": "q_9", "event_id": "ev"})
                                      + json_frame(b"X", {"code": "failed", "message": "Catalog Error: no table fail"})
                                      + json_frame(b"T", {"status": "failed", "event_id": "ev_fail"}))  # fmt: skip
            table = pa.table({"id": [1, 2], "email": ["****@a.example", "<script>alert(1)</script>"]})
            masks = [{"position": 1, "column": "email", "operator": "email", "classifications": ["pii.email"], "rules": ["role:analyst/masks"]}]
            if ";" in sql.strip().rstrip(";"):
                return httpx.Response(200, content=cell_frames([None, pa.table({"n": [1]}), table], masks, approval_id=body.get("approval_id")))
            return httpx.Response(200, content=cell_frames([table], masks, approval_id=body.get("approval_id")))
        return httpx.Response(404, json={"status": "error", "error": {"code": "not-found", "message": path}})


@pytest.fixture
def fake() -> FakeGateway:
    return FakeGateway()


@pytest.fixture
def shell(fake: FakeGateway) -> Iterator[tuple[InteractiveShell, SqlMagic, WardenSession]]:
    sh = InteractiveShell.instance()

    def connector() -> KernelGatewayClient:
        return KernelGatewayClient(Endpoint("http://warden", None, "remote"), StaticToken("tok"), transport=httpx.MockTransport(fake.handler))

    session = WardenSession(kernel_id="k1", notebook_path="nb.ipynb", connector=connector, send_events=False)
    magic = load_ipython_extension(sh, session)
    magic.approval_poll_interval = 0.05
    try:
        yield sh, magic, session
    finally:
        sh.user_ns.pop("_sql_results", None)
        InteractiveShell.clear_instance()


def text(out: Any) -> str:
    """Everything a capture saw as text: stdout, stderr and displays (with updates)."""
    shown = "".join(o.data.get("text/plain", "") + "\n" for o in out.outputs)
    return out.stdout + out.stderr + shown


def run(sh: InteractiveShell, line: str, cell: str | None = None) -> Any:
    if cell is None:
        return sh.run_line_magic("sql", line)
    return sh.run_cell_magic("sql", line, cell)


def test_masked_result_is_a_dataframe_with_attrs(shell: Any, fake: FakeGateway) -> None:
    sh, _magic, session = shell
    df = run(sh, "demo", "SELECT id, email FROM customers")
    assert list(df.columns) == ["id", "email"]
    info = df.attrs["warden"]
    assert info["masked"]["email"] == {"operator": "email", "classifications": ["pii.email"], "rules": ["role:analyst/masks"], "position": 1}
    assert info["event_id"] == "ev_dec" and info["completion_event_id"] == "ev_done" and info["connection"] == "demo"
    sent = fake.cells[-1]
    assert sent["connection"] == "demo" and sent["params"] == []
    assert sent["context"]["session_id"] == session.session_id and sent["context"]["kernel_id"] == "k1"
    assert sent["context"]["notebook_path"] == "nb.ipynb" and sent["context"]["cell_run_id"]


def test_parameters_are_bound_not_substituted(shell: Any, fake: FakeGateway) -> None:
    sh, _, _ = shell
    sh.user_ns["who"] = "x' OR '1'='1"
    sh.user_ns["n"] = 3
    run(sh, "demo", "SELECT * FROM customers WHERE name = :who AND id < {{n}} AND note = ':who'")
    sent = fake.cells[-1]
    assert sent["sql"] == "SELECT * FROM customers WHERE name = $1 AND id < $2 AND note = ':who'"
    assert sent["params"] == ["x' OR '1'='1", 3]


def test_target_assignment_and_multi_statement_results(shell: Any, fake: FakeGateway) -> None:
    sh, _, _ = shell
    with capture_output() as out:
        assert run(sh, "demo res <<", "UPDATE t SET a = 1; SELECT 1 AS n; SELECT id, email FROM customers") is None
    res = sh.user_ns["res"]
    assert list(res.columns) == ["id", "email"]
    results = sh.user_ns["_sql_results"]
    assert len(results) == 3 and repr(results[0]) == "UPDATE: 7 rows affected" and list(results[1].columns) == ["n"]
    assert "res: 2 rows x 2 columns" in text(out) and "masked: email" in text(out)


def test_default_connection_and_switch(shell: Any, fake: FakeGateway) -> None:
    sh, _magic, _ = shell
    run(sh, "SELECT 1")  # the only connection the gateway lists
    assert fake.cells[-1]["connection"] == "demo"
    with capture_output() as out:
        run(sh, "other")
    assert "using connection other" in text(out)
    run(sh, "", "SELECT 1")
    assert fake.cells[-1]["connection"] == "other"


def test_denied_raises_naming_rule_and_reason(shell: Any) -> None:
    sh, _, session = shell
    with pytest.raises(Denied) as info:
        run(sh, "demo", "SELECT * FROM secret.api_keys")
    message = str(info.value)
    assert "role:analyst/deny_tables[0]" in message and "secret.api_keys is denied" in message and "nothing ran" in message
    assert any(h.get("type") == "query.denied" for h in session.history)


def test_no_raise_shows_the_denial_and_returns_none(shell: Any) -> None:
    sh, _, _ = shell
    with capture_output() as out:
        assert run(sh, "demo --no-raise", "SELECT * FROM secret.api_keys") is None
    shown = text(out)
    assert "The policy does not allow this — nothing ran" in shown and "role:analyst/deny_tables[0]" in shown
    assert shown.lower().count("nothing ran") == 1  # said once, not in the title and again in the line


def test_held_then_approved_continues_by_itself(shell: Any, fake: FakeGateway) -> None:
    sh, magic, _ = shell
    magic.wait_for_approval = 10
    with capture_output() as out:
        df = run(sh, "demo", "SELECT name FROM customers WHERE ssn = :s".replace(":s", "'x'"))
    assert list(df.columns) == ["id", "email"]
    assert [c.get("approval_id") for c in fake.cells] == [None, "apr_1"]
    assert "Held for approval" in text(out) and "group data-owners" in text(out) and "Approved by bob" in text(out)


def test_held_without_waiting_says_how_to_rerun_and_remembers(shell: Any, fake: FakeGateway) -> None:
    sh, magic, _ = shell
    magic.wait_for_approval = 0
    sql = "SELECT name FROM customers WHERE ssn = '1'"
    with pytest.raises(Held) as info, capture_output() as out:
        run(sh, "demo", sql)
    # The box says it all (once); the error under it is one short line pointing there.
    assert "apr_1" in str(info.value) and "above" in str(info.value) and getattr(info.value, "shown", False)
    assert "re-run this cell" in text(out) and "data-owners" in text(out) and text(out).count("Held for approval") == 1
    fake.approval_status = "approved"
    df = run(sh, "demo", sql)  # the re-run finds the approved request and uses it
    assert df is not None and fake.cells[-1]["approval_id"] == "apr_1"
    assert len(fake.cells) == 2  # the re-run did not ask for a second approval


def test_explicit_approval_option(shell: Any, fake: FakeGateway) -> None:
    sh, _, _ = shell
    run(sh, "demo --approval apr_1", "SELECT name FROM customers WHERE ssn = '1'")
    assert fake.cells[-1]["approval_id"] == "apr_1"


def test_failed_query_names_the_database_error(shell: Any) -> None:
    sh, _, _ = shell
    from warden.gateway.client import QueryFailed

    with pytest.raises(QueryFailed, match="no table fail") as info:
        run(sh, "demo", "SELECT * FROM fail")
    assert "ev_fail" in str(info.value)


def test_formats(shell: Any) -> None:
    sh, magic, _ = shell
    table = run(sh, "demo --format arrow", "SELECT 1")
    assert isinstance(table, pa.Table) and b"warden" in table.schema.metadata
    magic.format = "polars"
    pl = pytest.importorskip("polars")
    assert isinstance(run(sh, "demo", "SELECT 1"), pl.DataFrame)


def test_autolimit_is_sent_as_max_rows(shell: Any, fake: FakeGateway) -> None:
    sh, _magic, _ = shell
    sh.run_line_magic("config", "SqlMagic.autolimit = 5")
    run(sh, "demo", "SELECT 1")
    assert fake.cells[-1]["max_rows"] == 5
    run(sh, "demo --limit 2", "SELECT 1")
    assert fake.cells[-1]["max_rows"] == 2


def test_credentials_never_leave_the_kernel(shell: Any, fake: FakeGateway) -> None:
    sh, _, _ = shell
    from warden.magic.parse import CredentialsInCell

    with pytest.raises(CredentialsInCell):
        run(sh, "postgresql://bob:hunter2@db/x", "SELECT 1")
    assert fake.cells == []


def test_gateway_down_is_a_clear_error_and_no_fallback() -> None:
    sh = InteractiveShell.instance()
    try:
        def connector() -> KernelGatewayClient:
            from pgserver import free_port

            return KernelGatewayClient(Endpoint(f"http://127.0.0.1:{free_port()}", None, "remote"), StaticToken("t"))

        session = WardenSession(connector=connector, send_events=False)
        load_ipython_extension(sh, session)
        with pytest.raises(GatewayUnavailable) as info:
            sh.run_cell_magic("sql", "demo", "SELECT 1")
        assert "no query ran" in str(info.value) and "never connects to a database directly" in str(info.value)
    finally:
        InteractiveShell.clear_instance()


def test_whoami_and_audit_helpers(shell: Any) -> None:
    sh, _, session = shell
    me = sh.run_line_magic("warden", "whoami")
    assert me.data["subject"] == "ana" and "connections" in repr(me) and session.session_id in repr(me)
    run(sh, "demo", "SELECT 1")
    audit = sh.run_line_magic("warden", "audit")
    assert "this kernel's own record" in audit.title and "query.executed" in repr(audit)
    assert "whoami" in repr(sh.run_line_magic("warden", ""))


def test_short_errors_show_one_line(shell: Any) -> None:
    sh, _, _ = shell
    with capture_output() as out:
        result = sh.run_cell("%%sql demo\nSELECT * FROM secret.api_keys")
    assert isinstance(result.error_in_exec, Denied)
    assert "Traceback" not in text(out) + out.stderr


def _complete(sh: InteractiveShell, code: str) -> set[str]:
    from IPython.core.completer import provisionalcompleter

    with provisionalcompleter():
        return {c.text for c in sh.Completer.completions(code, len(code))}


def test_completion_of_tables_columns_keywords_and_connections(shell: Any) -> None:
    sh, _, session = shell
    session.client()  # completion never connects by itself
    assert "customers" in _complete(sh, "%%sql demo\nSELECT * FROM cust")
    assert "main.customers" in _complete(sh, "%%sql demo\nSELECT * FROM main.cu")
    assert "email" in _complete(sh, "%%sql demo\nSELECT em")
    assert "WHERE" in _complete(sh, "%%sql demo\nSELECT * FROM customers WHE")
    assert "demo" in _complete(sh, "%%sql de")
    assert "amount" in _complete(sh, "%sql demo SELECT amo")
    assert "zip" in _complete(sh, "zi")  # Python cells complete as usual


def test_long_queries_show_progress_then_the_result(shell: Any) -> None:
    sh, magic, _ = shell
    magic.progress_after = 0.0
    with capture_output() as out:
        df = run(sh, "demo", "SELECT * FROM slow")
    assert df is not None
    shown = text(out)
    assert "warden: submitting" in shown or "warden: running" in shown
    assert "interrupt the kernel to cancel" in shown and "warden: done" in shown


def test_displaylimit_setting(shell: Any) -> None:
    sh, _, _ = shell
    sh.run_line_magic("config", "SqlMagic.displaylimit = 1")
    df = run(sh, "demo", "SELECT id, email FROM customers")
    data, _ = sh.display_formatter.format(df)
    assert "showing first 1" in data["text/html"] and "2 rows" in data["text/html"]
    assert "2 rows" not in data["text/plain"] and len(data["text/plain"].splitlines()) == 3  # header, rule, one row
    assert "&lt;script&gt;" not in data["text/html"]  # the second row is not shown at all
    sh.run_line_magic("config", "SqlMagic.displaylimit = 0")
    data, _ = sh.display_formatter.format(df)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in data["text/html"] and "<script>" not in data["text/html"]
