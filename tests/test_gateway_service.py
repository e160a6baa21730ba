"""The gateway's pipeline in-process (real DuckDB data and audit store): result
capture, approval expiry, the webhook, parameter renumbering."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway_harness import POLICY, seed_duckdb
from warden.gateway.approvals import ApprovalError, ApprovalStore
from warden.gateway.config import config_from_mapping
from warden.gateway.server import Built, build
from warden.gateway.service import CellRequest, statement_params
from warden.policy.engine import Identity

ANA = Identity("ana", frozenset({"analysts"}), {"region": "emea"})
EVE = Identity("eve", frozenset({"eng"}))
BOB = Identity("bob", frozenset({"owners"}))


def duck_policy() -> dict[str, Any]:
    policy = json.loads(json.dumps(POLICY))
    del policy["connections"]["pg"]
    return policy


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Any]:
    seed_duckdb(tmp_path / "data.duckdb")
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(duck_policy()))
    built: list[Built] = []

    def factory(**extra: Any) -> Built:
        data = {"policy": "policy.yaml", "mode": "shared", "state_dir": f"state-{len(built)}",
                "auth": {"mode": "oidc", "issuer": "http://127.0.0.1:9", "audience": "warden"}, **extra}  # fmt: skip
        b = build(config_from_mapping(data, base=tmp_path))
        built.append(b)
        return b

    yield factory
    for b in built:
        b.close()


def run(b: Built, who: Identity, sql: str, **kw: Any) -> Any:
    out = b.gateway.run_cell(who, CellRequest("dk", sql, **kw))
    if out.frames is not None:
        for _ in out.frames:
            pass
    return out


def last_event(b: Built, type_: str) -> dict[str, Any]:
    b.flush()
    rows: list[dict[str, Any]] = b.store.query(types=type_, limit=1).to_pylist()
    assert rows, f"no {type_} event"
    return rows[0]


def test_capture_full_keeps_the_masked_result(make: Any) -> None:
    b = make(capture="full")
    run(b, ANA, "SELECT id, email FROM customers ORDER BY id")
    ev = last_event(b, "query.executed")
    paths = json.loads(ev["capture_ref"])
    data = Path(paths[0]).read_bytes()
    assert b"ada@analytical.example" not in data and b"@analytical.example" in data
    import pyarrow as pa

    table = pa.ipc.open_stream(data).read_all()
    assert table.column("email").to_pylist()[0] == "****@analytical.example"


def test_capture_sample_and_none(make: Any) -> None:
    sample = make(capture="sample:2")
    run(sample, ANA, "SELECT id, email FROM customers ORDER BY id")
    rows = json.loads(last_event(sample, "query.executed")["capture_ref"])
    assert len(rows) == 2 and "ada@analytical.example" not in json.dumps(rows)
    none = make(capture="none")
    run(none, ANA, "SELECT id FROM customers")
    ev = last_event(none, "query.executed")
    assert not ev["result_fingerprint"] and not ev["capture_ref"]


class _Hook(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        _Hook.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return


def test_webhook_hears_request_and_decision(make: Any) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        b = make(approvals={"webhook": f"http://127.0.0.1:{server.server_port}/hook"})
        held = run(b, EVE, "UPDATE orders SET amount = amount")
        assert held.status == "held"
        approval_id = held.body["approval"]["id"]
        b.gateway.decide_approval(BOB, approval_id, approve=False, reason="not today")
        import time

        deadline = time.monotonic() + 10
        while len(_Hook.received) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        events = [m["event"] for m in _Hook.received if m["approval"]["id"] == approval_id]
        assert events == ["approval.requested", "approval.rejected"]
        assert last_event(b, "approval.rejected")["approver"] == "bob"
    finally:
        server.shutdown()


def test_expired_approval_is_refused(tmp_path: Path) -> None:
    store = ApprovalStore(f"duckdb://{tmp_path / 'approvals.duckdb'}")
    a = store.create(requester="eve", connection="dk", statement_hash="h", params_hash="p", fingerprint="f",
                     sql="DELETE FROM t", rule_ids=("r",), reasons=("why",), ttl_seconds=0)  # fmt: skip
    with pytest.raises(ApprovalError) as info:
        store.decide(a.id, approver="bob", approve=True, reason="ok")
    assert info.value.code == "expired"
    with pytest.raises(ApprovalError) as info:
        store.consume(a.id, requester="eve", connection="dk", statement_hash="h", params_hash="p")
    assert info.value.code == "expired"
    store.close()


def test_statement_params_renumbering() -> None:
    assert statement_params("SELECT $2, $2, $1", "postgres", ("a", "b")) == ("SELECT $1, $1, $2", ("b", "a"))
    assert statement_params("SELECT '$1', 1", "duckdb", ("a",)) == ("SELECT '$1', 1", ())


def test_every_gateway_setting_is_documented() -> None:
    from warden.gateway.config import SETTINGS

    doc = (Path(__file__).parent.parent / "docs" / "gateway.md").read_text()
    missing = [key for keys in SETTINGS.values() for key in keys if f"`{key}`" not in doc and f"{key}:" not in doc]
    assert not missing, f"undocumented gateway settings: {missing}"


def test_append_nowait_keeps_order(tmp_path: Path) -> None:
    from warden.audit.record import EventDraft
    from warden.audit.store import open_store

    store = open_store(f"duckdb://{tmp_path / 'a.duckdb'}", chain_id="t")
    try:
        later = store.append_nowait([EventDraft(type="query.executed", subject="x")])
        then = store.append([EventDraft(type="audit.read", subject="y")])
        first = later(5.0)
        assert first[0].seq < then[0].seq
        types = [r["type"] for r in store.query(order="seq").to_pylist()]
        assert types == ["query.executed", "audit.read"]
    finally:
        store.close()


def test_read_only_limits_hold_in_the_database(pg_dsn: str) -> None:
    import psycopg

    from warden.gateway.execute import ExecutionError, Limits, PostgresExecutor

    with psycopg.connect(pg_dsn, autocommit=True) as con:
        con.execute("CREATE TABLE t (id int)")
        con.execute("INSERT INTO t VALUES (1), (2)")
    ex = PostgresExecutor(pg_dsn)
    try:
        ro = Limits(statement_timeout_ms=5000, read_only=True)
        sneaky = "WITH d AS (DELETE FROM t RETURNING id) SELECT * FROM d"
        for _ in range(2):  # also on a pooled session whose limits were already set
            with pytest.raises(ExecutionError, match="read-only"):
                res = ex.run(sneaky, (), ro, threading.Event(), returns_rows=True)
                list(res.batches)
        rw = Limits(statement_timeout_ms=5000, read_only=False)
        res = ex.run("SELECT count(*) AS n FROM t", (), rw, threading.Event(), returns_rows=True)
        assert [b.to_pylist() for b in res.batches] == [[{"n": 2}]]
        res.close()
    finally:
        ex.close()
    with psycopg.connect(pg_dsn) as con:
        assert con.execute("SELECT count(*) FROM t").fetchone() == (2,)
