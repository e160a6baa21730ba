"""The gateway's pipeline in-process (real DuckDB data and audit store): result
capture, approval expiry, the webhook, parameter renumbering."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
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


class Receiver:
    """A loopback webhook receiver: keeps the JSON bodies it accepted, in arrival order.
    Attempts for which ``fails(attempt number)`` is true get a 503 (not kept). Tests
    wait on its condition."""

    def __init__(self, fails: Callable[[int], bool] = lambda n: False) -> None:
        self.received: list[dict[str, Any]] = []
        self.attempts = 0
        self.fails = fails
        self.cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                with receiver.cond:
                    receiver.attempts += 1
                    failing = receiver.fails(receiver.attempts)
                    if not failing:
                        receiver.received.append(body)
                    receiver.cond.notify_all()
                self.send_response(503 if failing else 204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, n: int, timeout: float = 20.0) -> list[dict[str, Any]]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.received) >= n, timeout), f"{len(self.received)} of {n} webhooks arrived in {timeout}s"
            return list(self.received)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def test_webhook_hears_request_and_decision(make: Any, receiver: Receiver) -> None:
    b = make(approvals={"webhook": receiver.url})
    held = run(b, EVE, "UPDATE orders SET amount = amount")
    assert held.status == "held"
    approval_id = held.body["approval"]["id"]
    b.gateway.decide_approval(BOB, approval_id, approve=False, reason="not today")
    got = receiver.wait_for(2)
    assert [(m["event"], m["approval"]["id"]) for m in got] == [("approval.requested", approval_id), ("approval.rejected", approval_id)]
    assert [m["delivery_seq"] for m in got] == [1, 2] and len({m["delivery_id"] for m in got}) == 2
    assert last_event(b, "approval.rejected")["approver"] == "bob"


def test_webhook_retries_a_failing_receiver_in_order(make: Any) -> None:
    receiver = Receiver(lambda n: n <= 3)  # the receiver is down for the first three attempts
    try:
        b = make(approvals={"webhook": receiver.url})
        ids = []
        for sql in ("UPDATE orders SET amount = amount", "DELETE FROM orders"):
            held = run(b, EVE, sql)
            assert held.status == "held"
            ids.append(held.body["approval"]["id"])
        b.gateway.decide_approval(BOB, ids[0], approve=True, reason="ok")
        got = receiver.wait_for(3)
        assert [(m["event"], m["approval"]["id"]) for m in got] == [
            ("approval.requested", ids[0]),
            ("approval.requested", ids[1]),
            ("approval.granted", ids[0]),
        ], "the retried head was not overtaken"
        assert [m["delivery_seq"] for m in got] == [1, 2, 3]
        assert receiver.attempts == 3 + 3
    finally:
        receiver.close()


def test_webhook_queue_is_bounded_and_close_drains_for_a_bounded_time() -> None:
    import time

    from warden.gateway.webhooks import WebhookQueue

    # In order, each once, through intermittent failures (every third attempt refused).
    flaky = Receiver(lambda n: n % 3 == 0)
    try:
        q = WebhookQueue(flaky.url, backoff=0.01)
        for i in range(30):
            assert q.enqueue({"event": "e", "n": i})
        got = flaky.wait_for(30)
        assert [m["n"] for m in got] == list(range(30)) and q.wait_idle(5)
        assert q.stats.delivered == 30 and q.stats.failed == 0 and q.stats.attempts > 30
        q.close()
    finally:
        flaky.close()

    # A receiver that never answers well: the queue stays bounded, close returns in time.
    down = Receiver(lambda n: True)
    try:
        q = WebhookQueue(down.url, max_queue=3, backoff=0.05, attempts=1000, timeout=2)
        assert all(q.enqueue({"event": "e", "n": i}) for i in range(3))
        assert not q.enqueue({"event": "e", "n": 3}), "a full queue refuses"
        started = time.monotonic()
        q.close(drain_seconds=0.5)
        assert time.monotonic() - started < 0.5 + 2 + 1.5
        assert q.stats.failed + q.stats.dropped == 4 and q.stats.delivered == 0
        assert not q.enqueue({"event": "late"})
    finally:
        down.close()


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
    from warden.audit.stores import open_store

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


def test_frame_views_read_frames_cut_anywhere() -> None:
    """The client's frame reader gives the same frames however the body is chunked, and
    a stream cut off inside a header or a payload is an EOFError, never a short frame."""
    import random

    from warden.gateway.frames import frame, frame_views

    body = frame(b"C", b'{"a":1}') + frame(b"A", bytes(range(256)) * 300) + frame(b"E", b"") + frame(b"T", b"{}")
    want = [(b"C", b'{"a":1}'), (b"A", bytes(range(256)) * 300), (b"E", b""), (b"T", b"{}")]
    rng = random.Random(7)
    for _ in range(50):
        cuts = sorted(rng.sample(range(1, len(body)), rng.randint(0, 40)))
        chunks = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
        chunks.insert(rng.randint(0, len(chunks)), b"")  # an empty chunk changes nothing
        assert [(k, b"".join(p)) for k, p in frame_views(chunks)] == want
    for end in (3, 7, 20, len(body) - 1):  # inside a header, a payload, the last frame
        with pytest.raises(EOFError):
            list(frame_views([body[:end]]))
    assert list(frame_views([])) == []


def test_the_arrow_stream_assembler_reads_any_framing_as_one_stream() -> None:
    """A statement's A frames become the same table whether each holds whole IPC
    messages (what the gateway sends: decoded as they arrive, zero-copy at the end),
    a message split anywhere, or dictionary messages; no frame at all is no table."""
    import random

    import pyarrow as pa

    from warden.gateway.frames import ArrowStreamAssembler, ArrowStreamPieces

    plain = pa.table({"id": pa.array([1, None, 3] * 1000), "s": pa.array(["a", "bb", None] * 1000)})
    coded = pa.table({"d": pa.array(["x", "y", "x"] * 100).dictionary_encode(), "n": pa.array(range(300))})
    empty = plain.schema.empty_table()
    rng = random.Random(11)
    for table in (plain, coded, empty):
        pieces = ArrowStreamPieces()
        payloads = [bytes(p) for b in table.to_batches(max_chunksize=700) for p in pieces.add(b)] + [bytes(p) for p in pieces.close(table.schema)]
        whole = b"".join(payloads)
        framings = [payloads, [whole]] + [
            [whole[a:b] for a, b in zip([0, *cuts], [*cuts, len(whole)], strict=True)]
            for cuts in (sorted(rng.sample(range(1, len(whole)), rng.randint(1, 30))) for _ in range(10))
        ]
        for frames in framings:
            assembler = ArrowStreamAssembler()
            for f in frames:
                # A frame's payload arrives as one or more views (HTTP chunks).
                cut = rng.randint(0, len(f))
                assembler.add([memoryview(f[:cut]), memoryview(f[cut:])] if cut else [memoryview(f)])
            got = assembler.table()
            assert got is not None and got.equals(table) and got.schema.equals(table.schema, check_metadata=True)
            if frames is payloads:  # the gateway's framing: decoded as it came, unless dictionaries
                assert assembler._general == (table is coded)
    assert ArrowStreamAssembler().table() is None


def test_the_copy_decoder_is_built_wherever_libpq_headers_are() -> None:
    """tests/test_copy_read.py and test_copy_fuzz.py skip without the C extension: this
    fails instead when it should have been built (libpq's headers are here) but was not,
    so a broken build cannot pass as 81 skipped tests."""
    import os
    import shutil
    from pathlib import Path

    from warden.gateway import copy_read

    headers = Path("/usr/include/postgresql/libpq-fe.h").exists() or shutil.which("pg_config") is not None
    turned_off = os.environ.get("WARDEN_NO_NATIVE") == "1"
    assert copy_read.module() is not None or not headers or turned_off, "libpq's headers are installed but warden.gateway._pgcopy was not built"
