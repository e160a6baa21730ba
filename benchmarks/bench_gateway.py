"""Gateway throughput, against the peers measured in the same run.

    python benchmarks/bench_gateway.py [--rows 1000000] [--clients 50] [--seconds 10]

Starts its own PostgreSQL (tests/pgserver.py), OIDC issuer and gateway process on
127.0.0.1, then prints two tables:

1. 1M rows x 8 columns from PostgreSQL into Arrow/pandas: the gateway (analysed,
   masked, audited, streamed over HTTP) against pandas.read_sql through SQLAlchemy
   and the fastest raw driver installed (ADBC; psycopg fetchall for reference).
   Goals: <= 1.25x the fastest raw driver, >= 3x faster than pandas.read_sql.
2. Small queries: N concurrent clients for a bounded time: queries/s, p50, p99.
   Goals: >= 300 queries/s with p99 <= 100 ms at 50 clients.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psycopg
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from bench_data import BIG_SQL, seed  # noqa: E402
from gateway_harness import GatewayProcess  # noqa: E402
from oidc_issuer import OIDCIssuer  # noqa: E402
from pgserver import PostgresServer  # noqa: E402
from proc_stat import machine_busy_seconds, tree_cpu_seconds  # noqa: E402
from warden.gateway.client import GatewayClient  # noqa: E402


def timed(fn: Callable[[], object], repeat: int = 3, warmup: int = 2) -> float:
    """Median of ``repeat`` runs after ``warmup`` untimed ones (first queries load the
    catalog and open driver connections; with several workers, on each of them)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                    help="gateway worker processes (default: one per core; > 1 puts the audit on PostgreSQL)")
    ap.add_argument("--skip-bulk", action="store_true", help="only the small-query part")
    ap.add_argument("--skip-small", action="store_true", help="only the 1M-row part")
    args = ap.parse_args()

    with PostgresServer() as pg, OIDCIssuer(audience="warden") as issuer, tempfile.TemporaryDirectory() as tmp:
        dsn = pg.create_database(prefix="bench")
        print(f"seeding {args.rows:,} rows x 8 columns ...", flush=True)
        seed(dsn, args.rows)
        work = Path(tmp)
        policy = {
            "version": 1,
            "connections": {"pg": {"dialect": "postgres", "dsn_env": "BENCH_DSN"}},
            "classifications": {"pii.email": ["*.*.big.email"]},
            "roles": {"analyst": {"members": {"groups": ["analysts"]}, "statements": ["select"],
                                  "masks": {"pii.email": "email"}}},
        }  # fmt: skip
        (work / "policy.yaml").write_text(yaml.safe_dump(policy))
        config = {
            "gateway_id": "bench", "mode": "shared", "policy": "policy.yaml", "state_dir": "state",
            "auth": {"mode": "oidc", "issuer": issuer.issuer, "audience": "warden"},
            "limits": {"max_rows": 0, "max_bytes": 0, "statement_timeout_ms": 0},
        }  # fmt: skip
        env = {**os.environ, "BENCH_DSN": dsn}
        if args.workers > 1:
            # One chain per worker in a shared PostgreSQL store (a DuckDB file has one writer).
            env["BENCH_AUDIT_DSN"] = pg.create_database(prefix="benchaudit")
            config.update(workers=args.workers, audit={"store_env": "BENCH_AUDIT_DSN"})
        print(f"gateway: {args.workers} worker process(es), audit store: {'PostgreSQL' if args.workers > 1 else 'DuckDB'}", flush=True)
        gw = GatewayProcess(work, env, config).start()
        token = issuer.issue(sub="bench", groups=["analysts"], expires_in=3600)
        try:
            if not args.skip_bulk:
                bulk(dsn, gw, token, args)
            if args.skip_small:
                return
            small(gw, token, args)
            if shutil.which("wrk"):
                small_wrk(gw, token, args, work, pg.pid or -1)
            else:
                print("(install wrk -- apt-get install wrk -- to measure with a load generator that costs little CPU)")
        finally:
            gw.stop()


def bulk(dsn: str, gw: GatewayProcess, token: str, args: argparse.Namespace) -> None:
    import adbc_driver_postgresql.dbapi as adbc

    rows: list[tuple[str, float]] = []

    def via_adbc() -> None:
        with adbc.connect(dsn) as con, con.cursor() as cur:
            cur.execute(BIG_SQL)
            cur.fetch_arrow_table()

    def via_gateway() -> None:
        with GatewayClient(gw.url, token=token) as c:
            result = c.run("pg", BIG_SQL)
            assert result.last is not None and result.last.rows == args.rows

    def via_gateway_pandas() -> None:
        with GatewayClient(gw.url, token=token) as c:
            result = c.run("pg", BIG_SQL)
            assert result.last is not None and result.last.table is not None
            result.last.table.to_pandas()

    def via_psycopg() -> None:
        with psycopg.connect(dsn) as con:
            con.execute(BIG_SQL).fetchall()

    rows.append(("ADBC -> Arrow (fastest raw driver)", timed(via_adbc, args.repeat)))
    rows.append(("gateway -> masked Arrow (HTTP, audited)", timed(via_gateway, args.repeat)))
    rows.append(("gateway -> masked pandas DataFrame", timed(via_gateway_pandas, args.repeat)))
    rows.append(("psycopg fetchall (rows of Python objects)", timed(via_psycopg, 1, warmup=0)))
    try:
        import pandas as pd
        import sqlalchemy

        engine = sqlalchemy.create_engine(dsn.replace("postgresql://", "postgresql+psycopg://", 1))

        def via_pandas() -> None:
            with engine.connect() as con:
                pd.read_sql(BIG_SQL, con)

        rows.append(("pandas.read_sql (SQLAlchemy)", timed(via_pandas, 1, warmup=0)))
    except ImportError:
        print("(sqlalchemy not installed: pip install sqlalchemy to compare pandas.read_sql)")
    fastest_raw = rows[0][1]
    print(f"\n{args.rows:,} rows x 8 columns, PostgreSQL -> client (median of {args.repeat})")
    print(f"{'path':<44} {'seconds':>8} {'x ADBC':>7}")
    print("-" * 62)
    for name, secs in rows:
        print(f"{name:<44} {secs:>8.2f} {secs / fastest_raw:>7.2f}")
    gw_s = rows[1][1]
    pandas_s = next((s for n, s in rows if n.startswith("pandas.read_sql")), None)
    print(f"\ngoal gateway <= 1.25x ADBC: {gw_s / fastest_raw:.2f}x -> {'met' if gw_s <= 1.25 * fastest_raw else 'NOT met'}")
    if pandas_s:
        print(f"goal >= 3x faster than pandas.read_sql: {pandas_s / rows[2][1]:.1f}x -> {'met' if pandas_s >= 3 * rows[2][1] else 'NOT met'}")


def small(gw: GatewayProcess, token: str, args: argparse.Namespace) -> None:
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    stop_at = time.monotonic() + args.seconds

    def worker(n: int) -> None:
        nonlocal errors
        with httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {token}"}, timeout=30) as http:
            i = 0
            while time.monotonic() < stop_at:
                i += 1
                body = {"connection": "pg", "sql": f"SELECT id, name FROM small WHERE id = {1 + (n * 7919 + i) % 1000}"}
                t0 = time.perf_counter()
                resp = http.post("/v1/cells", json=body)
                ok = resp.status_code == 200 and resp.content.endswith(b"}")
                dt = time.perf_counter() - t0
                with lock:
                    latencies.append(dt)
                    errors += 0 if ok else 1

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(args.clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    lat = sorted(latencies)
    p50 = lat[len(lat) // 2] * 1000
    p99 = lat[int(len(lat) * 0.99)] * 1000
    qps = len(lat) / elapsed
    print(f"\nsmall queries, {args.clients} concurrent clients for {args.seconds:.0f}s (each query analysed, decided, audited)")
    print(f"{'queries':>8} {'errors':>7} {'q/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    print(f"{len(lat):>8} {errors:>7} {qps:>8.0f} {p50:>8.1f} {p99:>8.1f}")
    print(f"goal >= 300 q/s with p99 <= 100 ms: {'met' if qps >= 300 and p99 <= 100 else 'NOT met'}")


WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %s"
request = function()
  local id = math.random(1, 1000)
  local body = '{"connection": "pg", "sql": "SELECT id, name FROM small WHERE id = ' .. id .. '"}'
  return wrk.format(nil, "/v1/cells", nil, body)
end
"""


def small_wrk(gw: GatewayProcess, token: str, args: argparse.Namespace, work: Path, pg_pid: int) -> None:
    """The same small queries from wrk (C, one thread): the client takes little of the
    2 cores, so this shows what the gateway itself sustains."""
    script = work / "cells.lua"
    script.write_text(WRK_SCRIPT % token)
    roots = {"gateway": gw.proc.pid if gw.proc else -1, "PostgreSQL": pg_pid}
    cpu_before, busy_before = {k: tree_cpu_seconds(v) for k, v in roots.items()}, machine_busy_seconds()
    out = subprocess.run(
        ["wrk", "-t1", f"-c{args.clients}", f"-d{int(args.seconds)}s", "--latency", "-s", str(script), gw.url],
        capture_output=True, text=True, timeout=args.seconds + 60,
    ).stdout
    cpu = {k: tree_cpu_seconds(v) - cpu_before[k] for k, v in roots.items()}
    busy, elapsed = (b - a for a, b in zip(busy_before, machine_busy_seconds(), strict=True))
    qps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]

    def pct(p: str) -> float:
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out)
        if not m:
            return float("nan")
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    print(f"\nsmall queries from wrk, {args.clients} connections for {args.seconds:.0f}s")
    print(f"{'q/s':>8} {'p50 ms':>8} {'p75 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'non-2xx':>8}")
    print(f"{qps:>8.0f} {pct('50'):>8.1f} {pct('75'):>8.1f} {pct('90'):>8.1f} {pct('99'):>8.1f} {int(non2xx.group(1)) if non2xx else 0:>8}")
    print(f"goal >= 300 q/s with p99 <= 100 ms: {'met' if qps >= 300 and pct('99') <= 100 else 'NOT met'}")
    queries = max(1.0, qps * args.seconds)
    print(f"CPU per query (process trees, from /proc): gateway {cpu['gateway'] / queries * 1000:.2f} ms "
          f"(all workers), PostgreSQL {cpu['PostgreSQL'] / queries * 1000:.2f} ms (queries and audit); "
          f"the machine was busy {busy / elapsed:.2f} of {os.cpu_count()} cores")  # fmt: skip


if __name__ == "__main__":
    main()
