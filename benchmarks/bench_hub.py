"""warden on a real JupyterHub (issue 10), against the same Hub without warden, in one run.

    python benchmarks/bench_hub.py [--repeat 3] [--users 20] [--seconds 10]

Starts the Hub of tests/hub_harness.py (jupyterhub, configurable-http-proxy from .node/,
local-process spawner) configured by `warden hub-config`, and a gateway beside it with
``auth.mode: jupyterhub``, all on 127.0.0.1.

1. "Start server" to the first SQL result: from ``POST /hub/api/users/<u>/server`` to the
   first query result in a notebook kernel (start the default kernel over REST, run one
   cell over the websocket). With warden: the warden kernel's ``%%sql`` cell through the
   gateway. Without: a user whose server has the plain ``python3`` kernel (the fragment's
   kernel settings removed by a pre-spawn hook) running the same query with duckdb on a
   copy of the data file. Median of --repeat starts each.
2. Gateway throughput with --users Hub users at once, each with their own Hub token and
   client, running a small query in a loop for --seconds: queries/s, p50 and p99. The
   first request of each token is a Hub round trip (``GET /hub/api/user`` and the token's
   expiry), the rest are served from the gateway's identity cache: both are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from gateway_harness import POLICY, GatewayProcess, seed_duckdb  # noqa: E402
from hub_harness import HubProcess, KernelSession  # noqa: E402
from pgserver import free_port  # noqa: E402
from warden.gateway.client import GatewayClient  # noqa: E402

SQL = "SELECT id, name, email FROM customers ORDER BY id"
SMALL = "SELECT id, name FROM customers WHERE id = 2"
ACCESS = "access:services!service=warden"

# Users whose name starts with "plain" get the Hub's default kernels (python3): the
# fragment's kernel restrictions are taken out of their spawner's arguments.
PLAIN_HOOK = """
def _plain_kernels(spawner):
    if spawner.user.name.startswith("plain"):
        spawner.args = [a for a in spawner.args if "KernelSpecManager" not in a and "default_kernel_name" not in a]
c.Spawner.pre_spawn_hook = _plain_kernels
"""


def start_to_first_result(hub: HubProcess, user: str, code: str, check: str) -> float:
    started = time.perf_counter()
    hub.start_server(user)
    token, _ = hub.new_token(user, ["access:servers!user"])
    kernel = KernelSession(hub, user, token)
    try:
        out = kernel.execute(code)
        elapsed = time.perf_counter() - started
        if out["error"] or check not in out["stdout"] + "".join(out["results"]):
            raise RuntimeError(f"{user}: unexpected cell output {out}")
        return elapsed
    finally:
        kernel.close()
        hub.api("DELETE", f"/users/{user}/server")
        wait_stopped(hub, user)


def wait_stopped(hub: HubProcess, user: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if not hub.api("GET", f"/users/{user}").json().get("servers"):
            return
        time.sleep(0.2)
    raise TimeoutError(f"{user}'s server did not stop")


def throughput(gateway_url: str, tokens: list[str], seconds: float) -> tuple[int, float, list[float], list[float]]:
    first: list[float] = []
    rest: list[float] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def worker(token: str) -> None:
        with GatewayClient(gateway_url, token=token, timeout=60) as client:
            mine_first: float | None = None
            mine: list[float] = []
            while time.perf_counter() < stop_at:
                t = time.perf_counter()
                result = client.run("dk", SMALL)
                assert result.last is not None and result.last.rows == 1
                dt = time.perf_counter() - t
                if mine_first is None:
                    mine_first = dt
                else:
                    mine.append(dt)
        with lock:
            if mine_first is not None:
                first.append(mine_first)
            rest.extend(mine)

    began = time.perf_counter()
    with ThreadPoolExecutor(len(tokens)) as pool:
        list(pool.map(worker, tokens))
    wall = time.perf_counter() - began
    return len(first) + len(rest), wall, first, rest


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--users", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="warden-bench-hub-"))
    (root / "hub").mkdir()
    (root / "gw").mkdir()
    load_users = [f"u{i:02d}" for i in range(args.users)]
    hub = HubProcess(root / "hub", fragment="", groups={"analysts": ["warden-user", *load_users], "plain": ["plain-user"]},
                     hub_port=free_port(), extra_config=PLAIN_HOOK)  # fmt: skip
    gateway: GatewayProcess | None = None
    try:
        seed_duckdb(root / "gw" / "data.duckdb")
        shutil.copy(root / "gw" / "data.duckdb", root / "plain.duckdb")  # the no-warden copy
        policy = json.loads(json.dumps(POLICY))
        policy["connections"] = {"dk": policy["connections"]["dk"]}
        (root / "gw" / "policy.yaml").write_text(yaml.safe_dump(policy))
        config = {"gateway_id": "gw-bench-hub", "mode": "shared", "policy": "policy.yaml", "state_dir": "state",
                  "auth": {"mode": "jupyterhub", "hub_api_url": hub.api_url}}  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith(("WARDEN_", "JUPYTERHUB_"))}
        env["JUPYTERHUB_API_TOKEN"] = hub.service_token
        gateway = GatewayProcess(root / "gw", env, config).start()
        hub.fragment = subprocess.run(
            [sys.executable, "-m", "warden.cli", "hub-config", "--gateway-url", gateway.url,
             "--service-token-file", str(hub.service_token_file), "--kernelspec-prefix", str(root / "hub" / "kernels")],
            check=True, capture_output=True, text=True).stdout  # fmt: skip
        hub.start()

        warden_cell = f"%%sql dk df <<\n{SQL}"
        plain_cell = (f"import duckdb\ndf = duckdb.connect({str(root / 'plain.duckdb')!r}, read_only=True)"
                      f".execute({SQL!r}).fetchdf()\nprint(len(df))")  # fmt: skip
        with_warden: list[float] = []
        without: list[float] = []
        for _ in range(args.repeat):
            without.append(start_to_first_result(hub, "plain-user", plain_cell, "3"))
            with_warden.append(start_to_first_result(hub, "warden-user", warden_cell, ""))
        print("1. 'Start server' to the first SQL result (median of", args.repeat, "starts, seconds)")
        print(f"   {'without warden (python3 + duckdb)':<40} {statistics.median(without):8.2f}   runs: {', '.join(f'{v:.2f}' for v in without)}")
        print(f"   {'with warden (%%sql through the gateway)':<40} {statistics.median(with_warden):8.2f}   runs: {', '.join(f'{v:.2f}' for v in with_warden)}")
        print(f"   ratio warden / without: {statistics.median(with_warden) / statistics.median(without):.2f}x")

        tokens = [hub.new_token(u, [ACCESS])[0] for u in load_users]
        n, wall, first, rest = throughput(gateway.url, tokens, args.seconds)
        everything = first + rest
        print(f"\n2. {args.users} Hub users at once, {SMALL!r} in a loop for {args.seconds:.0f}s")
        print(f"   queries/s {n / wall:8.1f}   ({n} queries in {wall:.1f}s)")
        print(f"   latency ms: p50 {pct(everything, 0.5) * 1000:7.1f}   p99 {pct(everything, 0.99) * 1000:7.1f}")
        print(f"   first request per token (Hub round trip): p50 {pct(first, 0.5) * 1000:7.1f}   max {max(first) * 1000:7.1f}")
        print(f"   cached identity: p50 {pct(rest, 0.5) * 1000:7.1f}   p99 {pct(rest, 0.99) * 1000:7.1f}")
    finally:
        if gateway is not None:
            gateway.stop()
        hub.stop()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
