"""The analyst's path, per cell, against the peers measured in the same run.

    python benchmarks/bench_kernel.py [--cells 200] [--rows 1000000] [--repeat 3]
                                      [--jupysql-python /path/to/venv/bin/python]

Starts its own PostgreSQL (tests/pgserver.py), OIDC issuer and gateway process on
127.0.0.1, and real kernels through jupyter_client; times each cell from the
execute_request to the kernel going idle (what a notebook user waits for):

1. Per-cell overhead of a 1-row query: the warden kernel's ``%%sql`` cell (analysed,
   decided, audited twice, streamed as Arrow, a DataFrame with an escaped HTML display,
   plus the cell event) against a bare ipykernel running the same query with psycopg
   on an open connection (``fetchall``; and into a DataFrame, for reference).
   Goal: <= 5 ms median extra over psycopg.
2. 1M rows x 8 columns into a DataFrame: the warden cell against JupySQL's
   (``%config SqlMagic.autopandas = True``, SQLAlchemy + psycopg) on the same query.
   Goal: warden >= 3x faster. JupySQL is found in this environment or in the Python
   given by --jupysql-python (``python -m venv /tmp/jsvenv && /tmp/jsvenv/bin/pip install
   jupysql ipykernel 'psycopg[binary]'``); without it this part says so and skips.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import queue
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
import yaml
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from bench_data import BIG_SQL, seed  # noqa: E402
from gateway_harness import GatewayProcess  # noqa: E402
from oidc_issuer import OIDCIssuer  # noqa: E402
from pgserver import PostgresServer  # noqa: E402
from warden.gateway.client import GatewayClient  # noqa: E402

SMALL_SQL = "SELECT id, name FROM small WHERE id = 42"


def write_spec(prefix: Path, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
    d = prefix / "share" / "jupyter" / "kernels" / name
    d.mkdir(parents=True, exist_ok=True)
    spec: dict[str, Any] = {"argv": argv, "display_name": name, "language": "python", "interrupt_mode": "signal", "metadata": {"debugger": False}}
    if env:
        spec["env"] = env
    (d / "kernel.json").write_text(json.dumps(spec))


class Kernel:
    def __init__(self, name: str, env: dict[str, str]) -> None:
        self.km = KernelManager(kernel_name=name)
        self.km.start_kernel(env=env)
        self.kc: BlockingKernelClient = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)

    def run(self, code: str, timeout: float = 600) -> tuple[float, dict[str, Any]]:
        """Seconds from sending the request to the kernel going idle, and the reply."""
        t0 = time.perf_counter()
        msg_id = self.kc.execute(code)
        while True:
            try:
                m = self.kc.get_iopub_msg(timeout=timeout)
            except queue.Empty:
                raise TimeoutError(code) from None
            if m["parent_header"].get("msg_id") == msg_id and m["msg_type"] == "status" and m["content"]["execution_state"] == "idle":
                break
        elapsed = time.perf_counter() - t0
        reply = self.kc.get_shell_msg(timeout=timeout)
        while reply["parent_header"].get("msg_id") != msg_id:
            reply = self.kc.get_shell_msg(timeout=timeout)
        if reply["content"]["status"] != "ok":
            raise RuntimeError(f"{code[:60]!r} failed: {reply['content'].get('ename')}: {reply['content'].get('evalue')}")
        return elapsed, reply["content"]

    def stop(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=False)


def per_cell(kernel: Kernel, code: str, n: int, warmup: int = 10) -> list[float]:
    for _ in range(warmup):
        kernel.run(code)
    return [kernel.run(code)[0] for _ in range(n)]


def _timed(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def ms(values: list[float], q: float = 0.5) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * q))] * 1000


def find_jupysql(explicit: str | None) -> str | None:
    if explicit:
        return explicit
    if importlib.util.find_spec("sql") is not None and importlib.util.find_spec("sql.magic") is not None:
        return sys.executable
    return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cells", type=int, default=200, help="1-row cells per path (after 10 warm-up cells)")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3, help="runs of the big cell per path (median)")
    ap.add_argument("--jupysql-python", help="a Python with jupysql, ipykernel and psycopg installed")
    args = ap.parse_args()

    with PostgresServer() as pg, OIDCIssuer(audience="warden") as issuer, tempfile.TemporaryDirectory() as tmp:
        dsn = pg.create_database(prefix="benchk")
        print(f"seeding {args.rows:,} rows x 8 columns ...", flush=True)
        seed(dsn, args.rows)
        work = Path(tmp)
        policy = {
            "version": 1,
            "connections": {"pg": {"dialect": "postgres", "dsn_env": "BENCH_DSN"}},
            "classifications": {"pii.email": ["*.*.big.email"]},
            "roles": {"analyst": {"members": {"groups": ["analysts"]}, "statements": ["select"], "masks": {"pii.email": "email"}}},
        }
        (work / "policy.yaml").write_text(yaml.safe_dump(policy))
        config = {
            "gateway_id": "bench-kernel", "mode": "shared", "policy": "policy.yaml", "state_dir": "state",
            "auth": {"mode": "oidc", "issuer": issuer.issuer, "audience": "warden"},
            "limits": {"max_rows": 0, "max_bytes": 0, "statement_timeout_ms": 0},
        }  # fmt: skip
        gw = GatewayProcess(work, {**os.environ, "BENCH_DSN": dsn}, config).start()
        token = issuer.issue(sub="bench", groups=["analysts"], expires_in=7200)

        prefix = work / "prefix"
        write_spec(prefix, "warden-bench", [sys.executable, "-m", "warden.kernel", "-f", "{connection_file}"])
        write_spec(prefix, "bare-bench", [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"])
        jupysql = find_jupysql(args.jupysql_python)
        if jupysql:
            write_spec(prefix, "jupysql-bench", [jupysql, "-m", "ipykernel_launcher", "-f", "{connection_file}"])
        os.environ["JUPYTER_PATH"] = str(prefix / "share" / "jupyter")
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("WARDEN_")}
        try:
            small_table(args, gw, token, dsn, base_env)
            big_table(args, gw, token, dsn, base_env, jupysql)
        finally:
            gw.stop()


def small_table(args: argparse.Namespace, gw: GatewayProcess, token: str, dsn: str, env: dict[str, str]) -> None:
    warden = Kernel("warden-bench", {**env, "WARDEN_GATEWAY_URL": gw.url, "WARDEN_TOKEN": token})
    bare = Kernel("bare-bench", env)
    try:
        warden.run("%config SqlMagic.feedback = 1")
        bare.run(f"import psycopg, pandas as pd\ncon = psycopg.connect({dsn!r}, autocommit=True)")
        cells = {
            "bare ipykernel: psycopg fetchall": (bare, f"con.execute({SMALL_SQL!r}).fetchall()"),
            "bare ipykernel: psycopg -> DataFrame": (bare, f"_c = con.execute({SMALL_SQL!r}); pd.DataFrame(_c.fetchall(), columns=[d.name for d in _c.description])"),
            "bare ipykernel: Python no-op (1)": (bare, "1"),
            "warden kernel: Python no-op (1)": (warden, "1"),
            "warden kernel: %%sql pg (DataFrame)": (warden, f"%%sql pg\n{SMALL_SQL}"),
        }
        results: dict[str, list[float]] = {}
        for name, (kernel, code) in cells.items():
            print(f"  timing {name} ...", flush=True)
            results[name] = per_cell(kernel, code, args.cells)
        # Without kernels: what the gateway itself costs per request (analysis, decision,
        # write-ahead and completion audit records, execution, Arrow over HTTP).
        with GatewayClient(gw.url, token=token) as client, psycopg.connect(dsn, autocommit=True) as con:
            for _ in range(10):
                client.run("pg", SMALL_SQL)
            gateway_alone = [_timed(lambda: client.run("pg", SMALL_SQL)) for _ in range(args.cells)]
            psycopg_alone = [_timed(lambda: con.execute(SMALL_SQL).fetchall()) for _ in range(args.cells)]
    finally:
        warden.stop()
        bare.stop()
    base = ms(results["bare ipykernel: psycopg fetchall"])
    print(f"\n1-row query, one cell = execute_request -> idle (n={args.cells} each, after 10 warm-up cells)")
    print(f"{'path':<40} {'median ms':>10} {'p90 ms':>8} {'extra ms':>9} {'x psycopg':>10}")
    print("-" * 81)
    for name, values in results.items():
        med = ms(values)
        print(f"{name:<40} {med:>10.2f} {ms(values, 0.9):>8.2f} {med - base:>+9.2f} {med / base:>10.2f}")
    extra = ms(results["warden kernel: %%sql pg (DataFrame)"]) - base
    kernel_only = ms(results["warden kernel: Python no-op (1)"]) - ms(results["bare ipykernel: Python no-op (1)"])
    gateway_extra = ms(gateway_alone) - ms(psycopg_alone)
    print(f"{'(no kernel) psycopg query, same process':<40} {ms(psycopg_alone):>10.2f} {ms(psycopg_alone, 0.9):>8.2f}")
    print(f"{'(no kernel) gateway request, GatewayClient':<40} {ms(gateway_alone):>10.2f} {ms(gateway_alone, 0.9):>8.2f}")
    print(f"\ngoal <= 5 ms median extra per 1-row cell over psycopg: {extra:+.2f} ms -> {'met' if extra <= 5 else 'NOT met'}")
    print(f"  of which the gateway itself (request vs direct query, no kernel): {gateway_extra:+.2f} ms")
    print(f"  of which the kernel side (magic, streaming client, DataFrame, display, cell event): {extra - gateway_extra:+.2f} ms")
    print(f"  the warden kernel's own per-cell cost on a Python cell: {kernel_only:+.2f} ms")


def big_table(args: argparse.Namespace, gw: GatewayProcess, token: str, dsn: str, env: dict[str, str], jupysql: str | None) -> None:
    rows: list[tuple[str, float]] = []
    warden = Kernel("warden-bench", {**env, "WARDEN_GATEWAY_URL": gw.url, "WARDEN_TOKEN": token})
    try:
        warden.run(f"%%sql pg\n{SMALL_SQL}")
        times = [warden.run(f"%%sql pg df <<\n{BIG_SQL}")[0] for _ in range(args.repeat)]
        warden.run(f"assert len(df) == {args.rows}, len(df)")
        rows.append(("warden %%sql -> masked DataFrame", statistics.median(times)))
    finally:
        warden.stop()
    if jupysql:
        js = Kernel("jupysql-bench", env)
        try:
            url = dsn.replace("postgresql://", "postgresql+psycopg://", 1)
            js.run(f"%load_ext sql\n%config SqlMagic.autopandas = True\n%config SqlMagic.displaylimit = 10\n%sql {url}")
            js.run(f"%%sql\n{SMALL_SQL}")
            times = [js.run(f"%%sql df <<\n{BIG_SQL}")[0] for _ in range(args.repeat)]
            js.run(f"assert len(df) == {args.rows}, len(df)")
            rows.append(("JupySQL %%sql -> DataFrame (autopandas)", statistics.median(times)))
        finally:
            js.stop()
    print(f"\n{args.rows:,} rows x 8 columns into a DataFrame, one cell (median of {args.repeat}, seconds)")
    print(f"{'path':<44} {'seconds':>8} {'x warden':>9}")
    print("-" * 63)
    w = rows[0][1]
    for name, secs in rows:
        print(f"{name:<44} {secs:>8.2f} {secs / w:>9.2f}")
    if jupysql:
        ratio = rows[1][1] / w
        print(f"\ngoal warden >= 3x faster than JupySQL: {ratio:.1f}x -> {'met' if ratio >= 3 else 'NOT met'}")
    else:
        print("\nJupySQL is not installed here: pass --jupysql-python (see the docstring) to compare")


if __name__ == "__main__":
    main()
