"""Where a small query's milliseconds go inside the gateway.

    python benchmarks/profile_gateway.py [--queries 400] [--cached | --distinct]

Starts its own PostgreSQL (tests/pgserver.py), OIDC issuer and one gateway process on
127.0.0.1. The gateway runs with timers wrapped around its phases (installed by this
script in the gateway's own process, so warden itself carries no profiling code); one
client sends 1-row queries one after another over HTTP, and the table shows the mean
wall time per query in each phase, the gateway's CPU per query (its process's
user + system time over the run, from /proc), and what is left for HTTP (uvicorn,
routing, the client's socket): the client's latency minus the phases.

``--cached`` (the default) repeats one statement shape with a changing literal, so the
analysis and decision caches are warm: the figure of issue 14 (<= 1 ms gateway CPU).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "kernel"))

from proc_stat import cpu_seconds_of  # noqa: E402

# ---------------------------------------------------------------------------- in the gateway

_totals: dict[str, float] = defaultdict(float)
_cpu: dict[str, float] = defaultdict(float)  # the same phases in the calling thread's CPU time
_counts: dict[str, int] = defaultdict(int)
_lock = threading.Lock()
_thread_names: dict[int, str] = {}


def _add(phase: str, seconds: float, cpu: float) -> None:
    with _lock:
        _totals[phase] += seconds
        _cpu[phase] += cpu
        _counts[phase] += 1


def _timed(phase: str | Callable[..., str], fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            _add(phase(*args, **kwargs) if callable(phase) else phase, time.perf_counter() - t0, time.thread_time() - c0)

    return wrapper


def _timed_iter(phase: str, it: Iterator[Any]) -> Iterator[Any]:
    while True:
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            item = next(it)
        except StopIteration:
            _add(phase, time.perf_counter() - t0, time.thread_time() - c0)
            return
        _add(phase, time.perf_counter() - t0, time.thread_time() - c0)
        yield item


def _install_timers() -> None:
    import warden.audit.store as store_mod
    import warden.gateway.app as app_mod
    import warden.gateway.execute as execute_mod
    import warden.gateway.server as server_mod
    import warden.gateway.service as service_mod
    import warden.gateway.state as state_mod

    create_app = app_mod.create_app

    def create_app_timed(gateway: Any, authenticate: Any, **kw: Any) -> Any:
        return create_app(gateway, _timed("auth (token -> identity)", authenticate), **kw)

    app_mod.create_app = create_app_timed
    app_mod.parse_body = _timed("request body parse", app_mod.parse_body)
    G = service_mod.Gateway
    G.run_cell = _timed("run_cell (until the first frame)", G.run_cell)
    G.claim_context = _timed("  session binding (state DB)", G.claim_context)
    G.base_event = _timed("  audit: base event", G.base_event)
    G.catalog = _timed("  catalog lookup", G.catalog)
    G._event = _timed("  audit: event build", G._event)
    G._check_pending = _timed("  decision: row estimate", G._check_pending)
    G._mask_batch = _timed("  masking + detectors", G._mask_batch)
    state_mod.TaintStore.current = _timed("  taints (state DB)", state_mod.TaintStore.current)
    state_mod.TaintStore.epoch = _timed("  catalog epoch (state DB)", state_mod.TaintStore.epoch)
    service_mod.analyze_cell = _timed("  analysis (parse/lineage, cached)", service_mod.analyze_cell)
    try:
        import warden.policy.decision_cache as dc_mod

        dc_mod.DecisionCache.decide = _timed("  decision (policy, cached by shape)", dc_mod.DecisionCache.decide)
    except ImportError:  # an older warden (profiling it for comparison): no decision cache
        service_mod.decide = _timed("  decision (policy)", service_mod.decide)
    service_mod.check_result_shape = _timed("  result shape check", service_mod.check_result_shape)

    def audit_phase(self: Any, events: list[dict[str, Any]]) -> str:
        kind = events[0].get("type", "") if events else ""
        return "  audit: intent commit (durable)" if kind == "query.submitted" else "  audit: completion commit (durable)"

    G.audit = _timed(audit_phase, G.audit)
    server_mod.to_draft = _timed("  audit: draft", server_mod.to_draft)
    store_mod.AuditStore._seal_batch = _timed("(writer thread) audit: seal + hash", store_mod.AuditStore._seal_batch)
    PE = execute_mod.PostgresExecutor
    PE.describe_origins = _timed("  PostgreSQL row description (shape)", PE.describe_origins)
    PE.run = _timed("  PostgreSQL execute", PE.run)
    execute_ = G._execute

    def execute_timed(self: Any, *args: Any, **kwargs: Any) -> Iterator[bytes]:
        return _timed_iter("stream (execute, mask, frame, complete)", execute_(self, *args, **kwargs))

    G._execute = execute_timed

    # Native thread id -> Python thread name, so the client can name each thread's CPU time.
    boot = threading.Thread._bootstrap_inner  # type: ignore[attr-defined]

    def bootstrap_named(self: threading.Thread) -> None:
        _thread_names[threading.get_native_id()] = self.name
        boot(self)

    threading.Thread._bootstrap_inner = bootstrap_named  # type: ignore[attr-defined]
    _thread_names[threading.get_native_id()] = "MainThread (event loop)"

    out = os.environ["WARDEN_PROFILE_OUT"]

    def dump() -> None:
        from warden.sql.analyze import CACHE

        cache = {"analysis cache hits": CACHE.hits, "analysis cache misses": CACHE.misses}
        Path(out).write_text(json.dumps({"totals": _totals, "cpu": _cpu, "counts": _counts, "cache": cache, "threads": _thread_names}))

    atexit.register(dump)


def _serve(config: str) -> None:
    _install_timers()
    from warden.gateway.server import serve

    sys.exit(serve(config))


# ---------------------------------------------------------------------------- the client


def _cpu_seconds(pid: int) -> float:
    return sum(cpu_seconds_of(Path(f"/proc/{pid}/stat")))


def _thread_cpu(pid: int) -> dict[int, tuple[float, float]]:
    """CPU seconds (user, system) of each live thread of `pid`, by native thread id."""
    result: dict[int, tuple[float, float]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            result[int(task.name)] = cpu_seconds_of(task / "stat")
    return result


def main() -> None:
    from oidc_issuer import OIDCIssuer
    from pgserver import PostgresServer

    ap = argparse.ArgumentParser()
    ap.add_argument("--queries", type=int, default=400)
    ap.add_argument("--distinct", action="store_true", help="a new statement shape every query (cold analysis cache)")
    ap.add_argument("--limit", type=int, metavar="N", help="end the query with LIMIT N (LIMIT 1: a one-row result, read whole instead of through COPY)")
    ap.add_argument("--no-context", action="store_true", help="send no kernel context (by default each query carries the session id and a new cell run id, as the kernel's do)")
    ap.add_argument("--py-spy-all", action="store_true", help="with --py-spy: sample every thread that runs, not only the GIL holder")
    ap.add_argument("--py-spy", metavar="FILE", help="also sample the gateway's GIL holder with py-spy (if installed) into FILE (collapsed stacks)")
    args = ap.parse_args()

    with PostgresServer() as pg, OIDCIssuer(audience="warden") as issuer, tempfile.TemporaryDirectory() as tmp:
        dsn = pg.create_database(prefix="prof")
        with psycopg.connect(dsn, autocommit=True) as con:
            con.execute("CREATE TABLE small (id int PRIMARY KEY, name text, email text)")
            con.execute("INSERT INTO small SELECT g, 'n' || g, 'u' || g || '@example.com' FROM generate_series(1, 1000) g")
        work = Path(tmp)
        policy = {
            "version": 1,
            "connections": {"pg": {"dialect": "postgres", "dsn_env": "PROF_DSN"}},
            "classifications": {"pii.email": ["*.*.small.email"]},
            "roles": {"analyst": {"members": {"groups": ["analysts"]}, "statements": ["select"], "masks": {"pii.email": "email"}}},
        }
        (work / "policy.yaml").write_text(yaml.safe_dump(policy))
        port = _free_port()
        config = {
            "gateway_id": "prof", "mode": "shared", "policy": "policy.yaml", "state_dir": "state",
            "auth": {"mode": "oidc", "issuer": issuer.issuer, "audience": "warden"},
            "listen": {"host": "127.0.0.1", "port": port},
        }  # fmt: skip
        (work / "gateway.yaml").write_text(yaml.safe_dump(config))
        out = work / "profile.json"
        env = {**os.environ, "PROF_DSN": dsn, "WARDEN_PROFILE_OUT": str(out), "PYTHONPATH": str(ROOT / "kernel")}
        log = open(work / "gateway.log", "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen([sys.executable, __file__, "--serve", str(work / "gateway.yaml")], cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
        token = issuer.issue(sub="prof", groups=["analysts"], expires_in=3600)
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_healthy(proc, url, work)
            latencies = []
            session_id = str(uuid.uuid4())
            with httpx.Client(base_url=url, headers={"authorization": f"Bearer {token}"}, timeout=30) as http:
                def one(i: int) -> None:
                    sql = f"SELECT id, name, email FROM small WHERE id = {1 + i % 1000}"
                    if args.distinct:  # an alias is part of the shape: every query is new to the caches
                        sql = f"SELECT id AS c{i}, name, email FROM small WHERE id = {1 + i % 1000}"
                    if args.limit is not None:
                        sql += f" LIMIT {args.limit}"
                    body: dict[str, Any] = {"connection": "pg", "sql": sql}
                    if not args.no_context:  # as the kernel sends it: one session, a new cell run per cell
                        body["context"] = {"session_id": session_id, "cell_run_id": f"{session_id}:{uuid.uuid4()}", "execution_count": i}
                    t0 = time.perf_counter()
                    resp = http.post("/v1/cells", json=body)
                    latencies.append(time.perf_counter() - t0)
                    if resp.status_code != 200 or b'"status":"ok"' not in resp.content:
                        raise SystemExit(f"query failed: {resp.status_code} {resp.content[:300]!r}")

                for i in range(50):  # warm up: caches, pools, JIT-free but first-touch costs
                    one(i)
                latencies.clear()
                spy = None
                if args.py_spy:
                    spy_exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
                    spy = subprocess.Popen([spy_exe, "record", "--pid", str(proc.pid), "--format", "raw", "--rate", "1000",
                                            "--output", args.py_spy, "--threads"] + ([] if args.py_spy_all else ["--gil"]), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                cpu0, threads0 = _cpu_seconds(proc.pid), _thread_cpu(proc.pid)
                for i in range(args.queries):
                    one(10_000 + i)
                cpu, threads1 = _cpu_seconds(proc.pid) - cpu0, _thread_cpu(proc.pid)
                if spy is not None:
                    spy.send_signal(2)
                    spy.wait(timeout=30)
        finally:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)
            if proc.poll() is None:
                proc.kill()
            log.close()
        data = json.loads(out.read_text())
        n = args.queries + 50
        totals: dict[str, float] = data["totals"]
        mean_latency = statistics.mean(latencies) * 1000
        print(f"\ngateway profile: {args.queries} sequential 1-row queries ({'distinct shapes' if args.distinct else 'one cached shape'}), one client")
        print(f"{'phase':<46} {'ms/query':>9} {'CPU ms':>8} {'calls/query':>12}")
        print("-" * 78)
        ordered = [p for p in totals if not p.startswith("  ") and not p.startswith("(")]
        for top in ["auth (token -> identity)", "request body parse", "run_cell (until the first frame)", "stream (execute, mask, frame, complete)"]:
            if top not in totals:
                continue
            print(f"{top:<46} {totals[top] / n * 1000:>9.3f} {data['cpu'][top] / n * 1000:>8.3f} {data['counts'][top] / n:>12.1f}")
        for p in sorted((p for p in totals if p.startswith("  ")), key=lambda p: -totals[p]):
            print(f"{p:<46} {totals[p] / n * 1000:>9.3f} {data['cpu'][p] / n * 1000:>8.3f} {data['counts'][p] / n:>12.1f}")
        for p in (p for p in totals if p.startswith("(")):
            print(f"{p:<46} {totals[p] / n * 1000:>9.3f} {data['cpu'][p] / n * 1000:>8.3f} {data['counts'][p] / n:>12.1f}")
        inside = sum(totals[p] for p in ordered if p in totals) / n * 1000
        print(f"{'HTTP + event loop + client (latency - above)':<46} {mean_latency - inside:>9.3f}")
        print("-" * 78)
        print(f"{'client latency, mean':<46} {mean_latency:>9.3f}")
        print(f"{'client latency, p50 / p99':<46} {statistics.median(latencies) * 1000:>9.3f} / {sorted(latencies)[int(len(latencies) * 0.99)] * 1000:.3f}")
        print(f"{'gateway CPU (user+sys) per query':<46} {cpu / args.queries * 1000:>9.3f}")
        print("  ".join(f"{k}: {v}" for k, v in data.get("cache", {}).items()))
        names = {int(k): v for k, v in data.get("threads", {}).items()}
        by_name: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        for tid, (user, system) in threads1.items():
            user0, system0 = threads0.get(tid, (0.0, 0.0))
            total = by_name[names.get(tid, f"thread {tid}")]
            total[0] += user - user0
            total[1] += system - system0
        print(f"\n{'gateway thread (CPU ms per query)':<46} {'user':>8} {'system':>8}")
        for name, (user, system) in sorted(by_name.items(), key=lambda kv: -sum(kv[1])):
            if user + system > 0:
                print(f"{name:<46} {user / args.queries * 1000:>8.3f} {system / args.queries * 1000:>8.3f}")
        print("\nphases indented under run_cell/stream are parts of them; the writer thread's work overlaps the commits")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_healthy(proc: subprocess.Popen[bytes], url: str, work: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"gateway exited:\n{(work / 'gateway.log').read_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/v1/health", timeout=1).status_code == 200:
                return
        time.sleep(0.05)
    raise SystemExit("gateway did not become healthy")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        _serve(sys.argv[2])
    else:
        main()
