"""The audit stores: chain assignment, group commit under concurrency, queries,
checkpoints, and fail-closed behaviour when the store cannot be written.

Same test bodies for a real DuckDB file and the real PostgreSQL of the fixtures.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgserver import PostgresServer
from test_audit_support import BACKENDS, SECRET, StoreEnv, draft, make_env
from warden.audit import (
    AuditClosed,
    AuditConfigError,
    AuditEvent,
    AuditStore,
    AuditUnavailable,
    EventDraft,
    derive_signing_key,
    genesis_hash,
    open_store,
    public_key_pem,
    read_checkpoint_file,
    verify,
)
from warden.audit.duckdb_store import DuckDBStore
from warden.audit.schema import ARROW_SCHEMA
from warden.audit.store import _Batch, _Request
from warden.errors import WardenError

PUBLIC = public_key_pem(derive_signing_key(SECRET))


@pytest.fixture(params=BACKENDS)
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreEnv]:
    e = make_env(request.param, request, tmp_path)
    yield e
    e.close_all()


def test_append_assigns_seq_and_links(env: StoreEnv) -> None:
    store = env.open()
    first = store.append([draft(1), draft(2), draft(3)])
    more = [store.append_one(draft(4)), store.append(draft(5))[0]]
    events = first + more
    assert [e.seq for e in events] == [1, 2, 3, 4, 5]
    assert events[0].prev_hash == genesis_hash("gw-test")
    for a, b in itertools.pairwise(events):
        assert b.prev_hash == a.record_hash
    for e in events:
        assert e.chain_id == "gw-test"
        assert e.compute_hash() == e.record_hash
        assert e.event_time.tzinfo is dt.UTC
    stored = list(store.read_chain("gw-test"))
    assert stored == events, "what append returned is exactly what was stored"
    assert [e.event_time for e in stored] == sorted(e.event_time for e in stored)


def test_reopen_continues_the_chain(env: StoreEnv) -> None:
    store = env.open()
    store.append([draft(i) for i in range(3)])
    store.close()
    with pytest.raises(AuditClosed):
        store.append([draft(9)])
    again = env.open()
    [event] = again.append([draft(3)])
    assert event.seq == 4
    assert event.prev_hash == list(again.read_chain("gw-test"))[2].record_hash
    again.close()
    assert verify(env.url).ok


def test_query_filters_and_order(env: StoreEnv) -> None:
    store = env.open()
    t0 = dt.datetime(2024, 5, 1, tzinfo=dt.UTC)
    store.append([draft(i, event_time=t0 + dt.timedelta(minutes=i)) for i in range(10)])
    store.append([EventDraft(type="auth.failure", subject="eve", client_ip="192.0.2.1", status="failure")])
    table = store.query(limit=None)
    assert table.schema.equals(ARROW_SCHEMA, check_metadata=False)
    assert table.num_rows == 11
    assert table.column("type")[0].as_py() == "auth.failure", "newest first by default"
    by_seq = store.query(order="seq", limit=None).column("seq").to_pylist()
    assert by_seq == list(range(1, 12))
    assert store.query(subject="user3").column("seq").to_pylist() == [4]
    assert store.query(types="auth.failure").column("subject").to_pylist() == ["eve"]
    assert store.query(types="query.*", limit=None).num_rows == 10
    assert store.query(types=["auth.failure", "query.executed"], limit=3).num_rows == 3
    window = store.query(since=t0 + dt.timedelta(minutes=2), until="2024-05-01T00:05:00+00:00", order="seq")
    assert window.column("seq").to_pylist() == [3, 4, 5]
    assert store.query(session_id="s1", connection="warehouse", chain_id="gw-test", limit=None).num_rows == 2
    assert store.query(correlation_id="q7").column("cell_id").to_pylist() == ["cell-7"]
    assert store.tail(2).column("seq").to_pylist() == [11, 10]
    assert store.count() == 11
    row = store.query(correlation_id="q1").to_pylist()[0]
    assert row["masks"] == '[{"classifications":["pii.email"],"column":"email","operator":"redact"}]'
    assert row["roles"] == ["analyst"] and row["event_time"] == t0 + dt.timedelta(minutes=1)


def test_concurrent_appends_are_gap_free(env: StoreEnv) -> None:
    """50 threads append for a bounded time: no lost, duplicated or forked records."""
    store = env.open(signing_key=SECRET, checkpoint_every=500)
    returned: list[AuditEvent] = []
    lock = threading.Lock()
    errors: list[BaseException] = []
    stop = time.monotonic() + 1.5

    def worker(n: int) -> None:
        mine = []
        i = 0
        try:
            while time.monotonic() < stop:
                mine.extend(store.append([draft(n * 100_000 + i * 10 + k) for k in range(1 + i % 3 // 2)]))
                i += 1
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        with lock:
            returned.extend(mine)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    n = len(returned)
    assert n > 200
    assert sorted(e.seq for e in returned) == list(range(1, n + 1)), "every seq once, none missing"
    assert len({e.event_id for e in returned}) == n
    assert store.stats.batches < n, "group commit put several callers into one transaction"
    stored = list(store.read_chain("gw-test"))
    assert [e.seq for e in stored] == list(range(1, n + 1))
    assert {e.event_id for e in stored} == {e.event_id for e in returned}
    store.close()
    report = verify(env.url, public_key=PUBLIC)
    assert report.ok, report.format()
    assert report.records == n and report.checkpoints_checked >= 1


def test_checkpoints_every_n_events_and_on_close(env: StoreEnv) -> None:
    file = env.tmp_path / "cps.jsonl"
    store = env.open(signing_key=SECRET, checkpoint_every=5, checkpoint_file=file)
    for i in range(12):
        store.append([draft(i)])
    assert [c.seq for c in store.checkpoints()] == [0, 5, 10], "0: the writer's signed start of the chain"
    store.close()
    cps = read_checkpoint_file(file)
    assert [c.seq for c in cps] == [0, 5, 10, 12]
    key = derive_signing_key(SECRET).public_key()
    assert all(c.verify(key) for c in cps)
    with open_store(env.url, read_only=True) as ro:
        assert cps[-1].record_hash == list(ro.read_chain("gw-test"))[-1].record_hash
        assert ro.checkpoints() == cps
    report = verify(env.url, public_key=PUBLIC, checkpoints=file)
    assert report.ok and report.chains["gw-test"].checkpoints_ok == 4, report.format()


def test_checkpoint_after_interval_and_on_demand(env: StoreEnv) -> None:
    store = env.open(signing_key=SECRET, checkpoint_every=10_000, checkpoint_interval=0.2)
    store.append([draft(1)])
    deadline = time.monotonic() + 5
    while len(store.checkpoints()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [c.seq for c in store.checkpoints()] == [0, 1], "the writer signed the head when the interval elapsed"
    store.append([draft(2), draft(3)])
    cp = store.checkpoint()
    assert cp is not None and cp.seq == 3
    assert store.public_key_pem() == PUBLIC


def test_store_without_key_writes_no_checkpoints(env: StoreEnv) -> None:
    store = env.open(checkpoint_every=1)
    store.append([draft(1), draft(2)])
    assert store.checkpoint() is None
    store.close()
    with open_store(env.url, read_only=True) as ro:
        assert ro.checkpoints() == []
    assert verify(env.url).ok


def test_read_only_store_refuses_appends(env: StoreEnv) -> None:
    env.open().close()
    ro = open_store(env.url, read_only=True)
    with pytest.raises(AuditUnavailable, match="read-only"):
        ro.append([draft(1)])
    ro.close()


def test_invalid_drafts_fail_in_the_caller() -> None:
    with pytest.raises(ValueError, match="unknown audit event type"):
        EventDraft(type="query.exploded")
    with pytest.raises(ValueError, match="status"):
        EventDraft(type="query.failed", status="meh")
    with pytest.raises(ValueError, match="not JSON"):
        EventDraft(type="query.executed", objects={"x": object()})
    with pytest.raises(TypeError, match="roles"):
        EventDraft(type="query.executed", roles="analyst")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no timezone"):
        EventDraft(type="query.executed", event_time=dt.datetime(2024, 1, 1))


def test_a_draft_is_appended_once(tmp_path: Path) -> None:
    store = open_store(f"duckdb://{tmp_path / 'a.duckdb'}", chain_id="gw-test")
    d = draft(1)
    with pytest.raises(ValueError, match="twice"):
        store.append([d, d])
    with pytest.raises(TypeError):
        store.append(["not a draft"])  # type: ignore[list-item]
    assert store.append([]) == []
    store.close()


def test_bad_url_and_double_open(tmp_path: Path) -> None:
    with pytest.raises(AuditConfigError):
        open_store("mysql://nope")
    url = f"duckdb://{tmp_path / 'a.duckdb'}"
    store = open_store(url, chain_id="one")
    with pytest.raises(AuditConfigError, match="already open"):
        open_store(url, chain_id="two")
    store.close()
    open_store(url, chain_id="two").close()


# --------------------------------------------------------------------------- outages


def test_duckdb_path_is_a_directory(tmp_path: Path) -> None:
    path = tmp_path / "audit.duckdb"
    path.mkdir()
    with pytest.raises(AuditUnavailable, match="cannot be opened") as info:
        open_store(f"duckdb://{path}")
    assert isinstance(info.value, WardenError)


def test_duckdb_unwritable_then_recovers(tmp_path: Path) -> None:
    path = tmp_path / "audit.duckdb"
    store = open_store(f"duckdb://{path}", chain_id="gw-test", signing_key=SECRET)
    store.append([draft(i) for i in range(3)])
    # Make the write-ahead log impossible to create (running as root, chmod would not
    # stop writes): fold the log into the file, then put a directory where it goes.
    assert isinstance(store, DuckDBStore) and store._db is not None
    store._db.execute("CHECKPOINT")
    wal = Path(str(path) + ".wal")
    assert not wal.exists()
    wal.mkdir()
    with pytest.raises(AuditUnavailable, match="cannot be written"):
        store.append([draft(10)])
    with pytest.raises(AuditUnavailable):
        store.append([draft(11), draft(12)])
    assert store.count() == 3, "nothing of the failed appends is visible"
    shutil.rmtree(wal)
    [event] = store.append([draft(13)])
    assert event.seq == 4, "the chain continues without a gap"
    store.close()
    report = verify(f"duckdb://{path}")
    assert report.ok and report.records == 4, report.format()


@pytest.fixture(scope="module")
def outage_server() -> Iterator[PostgresServer]:
    """A PostgreSQL of its own, so stopping it does not disturb the other tests."""
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.stop()


def _stop(server: PostgresServer) -> None:
    server._terminate()  # stops the postmaster, keeps the data directory


def _restart(server: PostgresServer) -> None:
    assert server.port is not None
    server._proc = server._spawn(server.port)
    problem = server._wait_ready(server._proc, time.monotonic() + 30)
    assert problem is None, problem


def test_postgres_down_then_recovers(outage_server: PostgresServer) -> None:
    dsn = outage_server.create_database("outage")
    store = open_store(dsn, chain_id="gw-test", signing_key=SECRET, connect_timeout=2)
    try:
        store.append([draft(i) for i in range(3)])
        _stop(outage_server)
        t0 = time.monotonic()
        with pytest.raises(AuditUnavailable, match=r"cannot be written|unreachable"):
            store.append([draft(10)])
        assert time.monotonic() - t0 < 10
        failures: list[str] = []

        def attempt(i: int) -> None:
            try:
                store.append([draft(20 + i)])
            except AuditUnavailable as exc:
                failures.append(str(exc))

        threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(failures) == 8
        _restart(outage_server)
        [event] = store.append([draft(30)])
        assert event.seq == 4, "the chain continues without a gap"
        assert store.count() == 4
    finally:
        store.close()
        if outage_server._proc is None:
            _restart(outage_server)
    report = verify(dsn, public_key=PUBLIC)
    assert report.ok and report.records == 4, report.format()


# --------------------------------------------------------------------------- replicas


@pytest.mark.postgres
def test_replicas_share_postgres(pg_dsn: str) -> None:
    """Three gateways, each its own chain, plus one started by mistake with a used chain_id."""
    stores = [open_store(pg_dsn, chain_id=f"gw-{n}", signing_key=SECRET) for n in range(3)]
    twin = open_store(pg_dsn, chain_id="gw-0", signing_key=SECRET)  # the same chain: must not fork
    stop = time.monotonic() + 1.0
    counts = {id(s): 0 for s in [*stores, twin]}

    errors: list[BaseException] = []

    def worker(store: AuditStore) -> None:
        try:
            while time.monotonic() < stop:
                store.append([draft(1)])
                counts[id(store)] += 1
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(s,)) for s in [*stores, twin] for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in [*stores, twin]:
        s.close()
    assert not errors, errors
    report = verify(pg_dsn, public_key=PUBLIC)
    assert report.ok, report.format()
    assert sorted(report.chains) == ["gw-0", "gw-1", "gw-2"]
    assert report.chains["gw-0"].records == counts[id(stores[0])] + counts[id(twin)]
    assert report.chains["gw-0"].last_seq == report.chains["gw-0"].records


def test_isolates_a_failing_caller(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch that fails for a data reason is retried caller by caller."""
    store = open_store(f"duckdb://{tmp_path / 'a.duckdb'}", chain_id="gw-test")
    real = store._commit

    def picky(item: _Batch, cp: object) -> None:
        if any(e.subject == "poison" for e in item.events or ()):
            raise ValueError("rejected value")
        real(item, cp)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "_commit", picky)
    good, bad = _Request([draft(1)]), _Request([draft(2, subject="poison")])
    batch = _Batch([good, bad], kind="append")
    store._prepare(batch, store._committed_head)
    store._commit_item(batch)
    assert good.error is None and good.events is not None and good.events[0].seq == 1
    assert isinstance(bad.error, AuditUnavailable)
    [after] = store.append([draft(3)])
    assert after.seq == 2, "the failed caller left no gap"
    store.close()
    assert verify(f"duckdb://{tmp_path / 'a.duckdb'}").ok


def test_append_async(env: StoreEnv) -> None:
    """asyncio callers (the gateway's handlers) share the same batches and guarantees."""
    store = env.open()

    async def main() -> list[AuditEvent]:
        async def one(i: int) -> list[AuditEvent]:
            out = []
            for k in range(10):
                out += await store.append_async([draft(i * 100 + k)])
            return out

        results = await asyncio.gather(*(one(i) for i in range(20)))
        return [e for r in results for e in r]

    events = asyncio.run(main())
    assert sorted(e.seq for e in events) == list(range(1, 201))
    assert store.stats.largest_batch > 1
    store.append([draft(1000)])  # threads and asyncio callers mix
    report = verify(store)  # an open store verifies in-process (DuckDB allows one writing process)
    assert report.ok and report.records == 201, report.format()
