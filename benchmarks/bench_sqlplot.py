"""``%sqlplot histogram`` over 1M rows: warden (through the gateway) against JupySQL's own
path, on the same DuckDB file, in one run.

    python benchmarks/bench_sqlplot.py [--rows 1000000] [--bins 50] [--repeat 3]
                                       [--jupysql-python /tmp/jsvenv/bin/python]

Builds ``measurements(id, value)`` in a DuckDB file, then times one cell from the
execute_request to the kernel going idle (the chart drawn and sent):

1. warden kernel: ``%sqlplot histogram`` — bins and counts computed in SQL by DuckDB
   behind the gateway (analysed, decided, audited), 50 rows to the kernel;
2. warden kernel, for reference: all 1M values through the gateway and ``plt.hist`` in
   the kernel (what computing the histogram client-side would cost);
3. JupySQL: ``%sql duckdb:///FILE`` then the same ``%sqlplot histogram`` (DuckDB in the
   kernel process through SQLAlchemy, no gateway).

JupySQL is never a dependency of warden: it runs from a throwaway venv
(``python -m venv /tmp/jsvenv && /tmp/jsvenv/bin/pip install jupysql duckdb-engine
matplotlib ipykernel``); without it part 3 says so and is skipped. The gateway is stopped
before JupySQL opens the file (one DuckDB writer per file).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import duckdb
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from bench_kernel import Kernel, write_spec  # noqa: E402
from gateway_harness import GatewayProcess  # noqa: E402
from oidc_issuer import OIDCIssuer  # noqa: E402


def build(path: Path, rows: int) -> None:
    con = duckdb.connect(str(path))
    con.execute(f"CREATE TABLE measurements AS SELECT i AS id, (random() * 100 + (i % 7)) AS value FROM range({rows}) t(i)")
    con.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--bins", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per path after one warm-up (median)")
    ap.add_argument("--jupysql-python", default="/tmp/jsvenv/bin/python", help="a Python with jupysql, duckdb-engine, matplotlib, ipykernel")
    args = ap.parse_args()
    jupysql = args.jupysql_python if Path(args.jupysql_python).exists() else None

    with OIDCIssuer(audience="warden") as issuer, tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        db = work / "bench.duckdb"
        print(f"building {args.rows:,} rows in {db.name} ...", flush=True)
        build(db, args.rows)
        policy = {
            "version": 1,
            "connections": {"dk": {"dialect": "duckdb", "path": str(db)}},
            "roles": {"analyst": {"members": {"groups": ["analysts"]}, "statements": ["select"]}},
        }
        (work / "policy.yaml").write_text(yaml.safe_dump(policy))
        config = {
            "gateway_id": "bench-sqlplot", "mode": "shared", "policy": "policy.yaml", "state_dir": "state",
            "auth": {"mode": "oidc", "issuer": issuer.issuer, "audience": "warden"},
            "limits": {"max_rows": 0, "max_bytes": 0, "statement_timeout_ms": 0},
        }  # fmt: skip
        prefix = work / "prefix"
        write_spec(prefix, "warden-bench", [sys.executable, "-m", "warden.kernel", "-f", "{connection_file}"])
        if jupysql:
            write_spec(prefix, "jupysql-bench", [jupysql, "-m", "ipykernel_launcher", "-f", "{connection_file}"])
        os.environ["JUPYTER_PATH"] = str(prefix / "share" / "jupyter")
        env = {k: v for k, v in os.environ.items() if not k.startswith("WARDEN_")}
        env["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
        plot = f"%sqlplot histogram --table measurements --column value --bins {args.bins}"
        rows: list[tuple[str, float]] = []

        gw = GatewayProcess(work, dict(os.environ), config).start()
        token = issuer.issue(sub="bench", groups=["analysts"], expires_in=7200)
        warden = Kernel("warden-bench", {**env, "WARDEN_GATEWAY_URL": gw.url, "WARDEN_TOKEN": token})
        try:
            warden.run("%sql dk")
            cell = f"ax = {plot}"
            warden.run(cell)
            rows.append(("warden %sqlplot histogram (SQL via gateway)", statistics.median(warden.run(cell)[0] for _ in range(args.repeat))))
            warden.run("assert sum(int(v) for v in ax.patches[0].get_data().values) == " + str(args.rows))
            local = (f"import matplotlib.pyplot as plt\nv = %sql dk SELECT value FROM measurements\n"
                     f"_ = plt.hist(v['value'], bins={args.bins}); plt.show()")  # fmt: skip
            warden.run(local)
            rows.append(("warden: 1M values to the kernel + plt.hist", statistics.median(warden.run(local)[0] for _ in range(args.repeat))))
        finally:
            warden.stop()
            gw.stop()

        if jupysql:
            js = Kernel("jupysql-bench", env)
            try:
                js.run(f"%load_ext sql\n%sql duckdb:///{db}")
                cell = f"ax = {plot}"
                js.run(cell)
                rows.append(("JupySQL %sqlplot histogram (DuckDB in kernel)", statistics.median(js.run(cell)[0] for _ in range(args.repeat))))
            finally:
                js.stop()

    print(f"\n%sqlplot histogram over {args.rows:,} rows, {args.bins} bins, one cell (median of {args.repeat}, seconds)")
    print(f"{'path':<48} {'seconds':>8} {'x warden':>9}")
    print("-" * 67)
    w = rows[0][1]
    for name, secs in rows:
        print(f"{name:<48} {secs:>8.3f} {secs / w:>9.2f}")
    if not jupysql:
        print("\nJupySQL is not installed: pass --jupysql-python (see the docstring) to compare")


if __name__ == "__main__":
    main()
