"""Sustained append throughput of the audit stores, against a naive one-transaction-per-event writer.

Run: python benchmarks/bench_audit.py [--seconds S] [--threads 1,8,50] [--event full|typical]
                                      [--duckdb journal,direct] [--pg-dsn DSN] [--skip-postgres]

For each store (a DuckDB file, "duckdb-j" with its intent journal, ``journal=True``,
and "duckdb" committing every batch to DuckDB directly, the default; PostgreSQL: a throwaway
server from tests/pgserver.py unless --pg-dsn is given) and each thread count, every
thread loops for S seconds:
build one EventDraft, ``append`` it, measure how long the append took (until the
record is committed). Reported: events/s, p50/p99 append latency, the mean number of
events per transaction (what group commit achieved), and the same figures for a naive
writer measured in the same run on the same store type: one transaction per event
(lock the head, hash, INSERT one row, move the head, COMMIT) behind a mutex, which
is what a straightforward implementation does. Extra rows show the batch API (threads
appending 250-500 events per call; latency is then per call) and asyncio callers
(``append_async``, 50 tasks). Every measurement ends with a read, which waits until
DuckDB has absorbed everything journalled: the rates are sustained, not just journalled.
After each store, one line gives the latency of a single caller's durable append.

Goal: >= 20 000 events/s sustained. "full" events fill every field of the record
(four JSON fields); "typical" events are what a query.executed record carries.
The test PostgreSQL runs with fsync=off (the store still asks for synchronous_commit).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kernel"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # pgserver

from warden.audit import EventDraft, open_store
from warden.audit.record import FIELDS, genesis_hash, seal
from warden.audit.schema import duckdb_ddl, postgres_ddl
from warden.audit.store import AuditStore, record_rows

GOAL = 20_000


def full_event(i: int) -> EventDraft:
    return EventDraft(
        type="query.executed", subject=f"user{i % 50}", display_name="Some User", subject_kind="human",
        roles=("analyst",), groups=("analysts", "emea"), auth_method="oidc", client_ip="10.0.0.7",
        session_id=f"s{i % 20}", kernel_id="k-1", notebook_path="work/analysis.ipynb", cell_id=f"c{i}",
        execution_count=i, gateway_id="gw-1", mode="shared", connection="warehouse", dialect="postgres",
        statement_kinds=("select",), sql="SELECT name, email FROM customers WHERE id = ?", fingerprint="f" * 16,
        statement_hash="0" * 64, params=["<redacted>"],
        objects=[{"relation": "public.customers", "columns": {"email": ["projected"], "id": ["predicate"]}}],
        lineage={"email": ["public.customers.email"]}, action="mask", rule_ids=("role:analyst/masks/pii.email",),
        reasons=("email is pii",), masks=[{"column": "email", "operator": "redact", "classifications": ["pii.email"]}],
        status="success", rows=10, bytes=1000, duration_ms=1.5, correlation_id=f"q{i}",
    )  # fmt: skip


def typical_event(i: int) -> EventDraft:
    return EventDraft(
        type="query.executed", subject=f"user{i % 50}", subject_kind="human", roles=("analyst",),
        session_id=f"s{i % 20}", kernel_id="k-1", cell_id=f"c{i}", execution_count=i, gateway_id="gw-1",
        mode="shared", connection="warehouse", fingerprint="f" * 16, action="allow", status="success",
        rows=10, bytes=1000, duration_ms=1.5, correlation_id=f"q{i}",
    )  # fmt: skip


# --------------------------------------------------------------------------- group commit


def run_threads(store: AuditStore, make: Callable[[int], EventDraft], threads: int, seconds: float) -> dict[str, float]:
    latencies: list[list[float]] = [[] for _ in range(threads)]
    stop = time.monotonic() + seconds
    barrier = threading.Barrier(threads + 1)

    def worker(n: int) -> None:
        mine = latencies[n]
        i = n * 10_000_000
        barrier.wait()
        while time.monotonic() < stop:
            d = make(i)
            t = time.perf_counter()
            store.append([d])
            mine.append(time.perf_counter() - t)
            i += 1

    pool = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for t in pool:
        t.start()
    before = (store.stats.events, store.stats.batches)
    barrier.wait()
    t0 = time.perf_counter()
    for t in pool:
        t.join()
    store.tail(1)  # a read: waits until everything appended is in DuckDB itself
    elapsed = time.perf_counter() - t0
    flat = sorted(x for lst in latencies for x in lst)
    return summarise(flat, elapsed, store.stats.events - before[0], store.stats.batches - before[1])


def run_batch_api(store: AuditStore, make: Callable[[int], EventDraft], threads: int, per_call: int, seconds: float) -> dict[str, float]:
    latencies: list[list[float]] = [[] for _ in range(threads)]
    stop = time.monotonic() + seconds
    before = (store.stats.events, store.stats.batches)

    def worker(n: int) -> None:
        i = n * 10_000_000
        while time.monotonic() < stop:
            drafts = [make(i + k) for k in range(per_call)]
            t = time.perf_counter()
            store.append(drafts)
            latencies[n].append(time.perf_counter() - t)
            i += per_call

    pool = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    t0 = time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    store.tail(1)
    flat = sorted(x for lst in latencies for x in lst)
    return summarise(flat, time.perf_counter() - t0, store.stats.events - before[0], store.stats.batches - before[1])


def run_async(store: AuditStore, make: Callable[[int], EventDraft], tasks: int, seconds: float) -> dict[str, float]:
    lat: list[float] = []
    before = (store.stats.events, store.stats.batches)

    async def main() -> float:
        stop = time.monotonic() + seconds

        async def task(n: int) -> None:
            i = n * 10_000_000
            while time.monotonic() < stop:
                d = make(i)
                t = time.perf_counter()
                await store.append_async([d])
                lat.append(time.perf_counter() - t)
                i += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(task(n) for n in range(tasks)))
        store.tail(1)
        return time.perf_counter() - t0

    elapsed = asyncio.run(main())
    return summarise(sorted(lat), elapsed, store.stats.events - before[0], store.stats.batches - before[1])


def summarise(latencies: list[float], elapsed: float, events: int, batches: int) -> dict[str, float]:
    if not latencies:
        return {"rate": 0.0, "p50": 0.0, "p90": 0.0, "p99": 0.0, "batch": 0.0}
    return {
        "rate": events / elapsed,
        "p50": statistics.median(latencies) * 1e3,
        "p90": latencies[min(len(latencies) - 1, int(len(latencies) * 0.9))] * 1e3,
        "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1e3,
        "batch": events / batches if batches else 0.0,
    }


# --------------------------------------------------------------------------- naive writer


class NaiveWriter:
    """One transaction per event, serialised by a mutex: the obvious implementation."""

    def __init__(self, kind: str, target: str) -> None:
        self.kind = kind
        self.lock = threading.Lock()
        self.head = (0, genesis_hash("naive"))
        cols = ", ".join(f'"{f}"' for f in FIELDS)
        if kind == "duckdb":
            self.con: Any = duckdb.connect(target)
            for stmt in duckdb_ddl():
                self.con.execute(stmt)
            self.insert = f"INSERT INTO audit_events ({cols}) VALUES ({', '.join('?' for _ in FIELDS)})"
            self.con.execute("INSERT INTO audit_chains VALUES ('naive', 0, ?, now())", [self.head[1]])
        else:
            self.con = psycopg.connect(target)
            with self.con.cursor() as cur:
                for stmt in postgres_ddl():
                    cur.execute(stmt)
                cur.execute("INSERT INTO audit_chains VALUES ('naive', 0, %s, now()) ON CONFLICT DO NOTHING", [self.head[1]])
            self.con.commit()
            self.con.execute("SET synchronous_commit = on")
            self.con.commit()
            self.insert = f"INSERT INTO audit_events ({cols}) VALUES ({', '.join('%s' for _ in FIELDS)})"

    def append(self, draft: EventDraft) -> None:
        with self.lock:
            now = dt.datetime.now(dt.UTC)
            if self.kind == "duckdb":
                self.con.execute("BEGIN TRANSACTION")
                seq, prev = self.con.execute("SELECT last_seq, last_hash FROM audit_chains WHERE chain_id = 'naive'").fetchall()[0]
                ev = seal(draft, chain_id="naive", seq=seq + 1, prev_hash=prev, now=now)
                self.con.execute(self.insert, record_rows([ev])[0])
                self.con.execute("UPDATE audit_chains SET last_seq = ?, last_hash = ? WHERE chain_id = 'naive'", [ev.seq, ev.record_hash])
                self.con.execute("COMMIT")
            else:
                with self.con.cursor() as cur:
                    cur.execute("SELECT last_seq, last_hash FROM audit_chains WHERE chain_id = 'naive' FOR UPDATE")
                    seq, prev = cur.fetchone()
                    ev = seal(draft, chain_id="naive", seq=seq + 1, prev_hash=prev, now=now)
                    cur.execute(self.insert, [list(v) if isinstance(v, tuple) else v for v in record_rows([ev])[0]])
                    cur.execute("UPDATE audit_chains SET last_seq = %s, last_hash = %s WHERE chain_id = 'naive'", [ev.seq, ev.record_hash])
                self.con.commit()

    def close(self) -> None:
        self.con.close()


def run_naive(naive: NaiveWriter, make: Callable[[int], EventDraft], threads: int, seconds: float) -> dict[str, float]:
    latencies: list[list[float]] = [[] for _ in range(threads)]
    stop = time.monotonic() + seconds

    def worker(n: int) -> None:
        i = n * 10_000_000
        while time.monotonic() < stop:
            d = make(i)
            t = time.perf_counter()
            naive.append(d)
            latencies[n].append(time.perf_counter() - t)
            i += 1

    pool = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    t0 = time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    flat = sorted(x for lst in latencies for x in lst)
    return summarise(flat, time.perf_counter() - t0, len(flat), len(flat))


# --------------------------------------------------------------------------- main


def bench_store(
    name: str, url: str, naive_target: Callable[[], str], make: Callable[[int], EventDraft], args: argparse.Namespace, **options: Any
) -> list[tuple[Any, ...]]:
    rows: list[tuple[Any, ...]] = []
    naive = NaiveWriter("duckdb" if name.startswith("duckdb") else "postgres", naive_target())
    store = open_store(url, chain_id="bench", signing_key=b"bench-secret-0123456789abcdef", checkpoint_every=10_000, **options)
    try:
        for threads in args.threads:
            got = run_threads(store, make, threads, args.seconds)
            base = run_naive(naive, make, threads, args.seconds)
            rows.append((name, f"{threads} thread(s)", got, base))
            print_row(*rows[-1])
        for threads, per_call in ((1, 500), (4, 250)):
            got = run_batch_api(store, make, threads, per_call, args.seconds)
            rows.append((name, f"{threads} thr x {per_call}/call", got, None))
            print_row(*rows[-1])
        got = run_async(store, make, 50, args.seconds)
        rows.append((name, "50 asyncio tasks", got, None))
        print_row(*rows[-1])
        one = run_threads(store, make, 1, args.seconds)
        print(f"{name:<9} 1-caller durable append latency: p50 {one['p50']:.2f} ms, p90 {one['p90']:.2f} ms, p99 {one['p99']:.2f} ms ({one['rate']:.0f} events/s)", flush=True)
    finally:
        store.close()
        naive.close()
    return rows


def print_header() -> None:
    print(f"\n{'store':<9} {'callers':<20} {'events/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'ev/txn':>7} | {'naive ev/s':>10} {'naive p50':>9} {'ratio':>7}  goal")
    print("-" * 108)


def print_row(store: str, mode: str, got: dict[str, float], base: dict[str, float] | None) -> None:
    naive = f"{base['rate']:>10.0f} {base['p50']:>9.2f} {got['rate'] / base['rate']:>6.1f}x" if base and base["rate"] else f"{'-':>10} {'-':>9} {'-':>7}"
    flag = "met" if got["rate"] >= GOAL else "no"
    print(f"{store:<9} {mode:<20} {got['rate']:>9.0f} {got['p50']:>8.2f} {got['p99']:>8.2f} {got['batch']:>7.1f} | {naive}  {flag}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each measurement (default 3)")
    parser.add_argument("--threads", default="1,8,50", help="thread counts (default 1,8,50)")
    parser.add_argument("--event", choices=("full", "typical"), default="full", help="event shape (default full)")
    parser.add_argument("--duckdb", default="journal,direct", help="DuckDB modes: journal (journal=True), direct (journal=False, the default)")
    parser.add_argument("--pg-dsn", help="use this PostgreSQL (an empty database) instead of a throwaway server")
    parser.add_argument("--skip-postgres", action="store_true")
    args = parser.parse_args()
    args.threads = [int(x) for x in args.threads.split(",")]
    make = full_event if args.event == "full" else typical_event
    print(f"audit append benchmark: {args.event} events, {args.seconds:.0f} s per measurement, {os.cpu_count()} CPU(s), goal >= {GOAL} events/s")
    print_header()
    with tempfile.TemporaryDirectory() as tmp:
        for mode in filter(None, args.duckdb.split(",")):  # --duckdb "": PostgreSQL only
            if mode == "journal":
                bench_store("duckdb-j", f"duckdb://{tmp}/audit.duckdb", lambda: f"{tmp}/naive.duckdb", make, args, journal=True)
            elif mode == "direct":
                bench_store("duckdb", f"duckdb://{tmp}/direct.duckdb", lambda: f"{tmp}/naive2.duckdb", make, args, journal=False)
            else:
                parser.error(f"unknown DuckDB mode {mode!r}")
        if args.skip_postgres:
            return
        if args.pg_dsn:
            bench_store("postgres", args.pg_dsn, lambda: args.pg_dsn, make, args)
            return
        from pgserver import PostgresServer

        server = PostgresServer().start()
        try:
            bench_store("postgres", server.create_database("bench"), lambda: server.create_database("naive"), make, args)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
