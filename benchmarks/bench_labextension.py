"""The labextension in a real browser: what it costs and how fast it follows a decision.

    python benchmarks/bench_labextension.py [--rounds 5]

Starts its own PostgreSQL, OIDC issuer, a shared-mode gateway and JupyterLab servers on
127.0.0.1, and drives Debian's chromium (/usr/bin/chromium) with Playwright:

1. JupyterLab load time with and without the extension, in the same run: a fresh browser
   context opens /lab until the launcher is shown (and, with the extension, until the
   status bar item shows a healthy gateway); the servers alternate each round.
2. Decision latency: the analyst's cell is held; the approver's panel shows the request
   (time from the hold to the card in the panel: panel polling), the approver decides
   through the server extension (approval.granted is recorded when that call returns),
   then the time until the analyst's cell shows its masked result (the kernel's
   approval polling, 1 s by default, plus the query).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from gateway_harness import seeded_gateway  # noqa: E402
from lab_harness import LabServer, labextension_built, launch_chromium, write_notebook  # noqa: E402
from oidc_issuer import OIDCIssuer  # noqa: E402
from pgserver import PostgresServer  # noqa: E402

KERNEL_IDLE = "() => window.jupyterapp?.shell.currentWidget?.sessionContext?.session?.kernel?.status === 'idle'"


def load_once(browser: Any, server: LabServer, with_ext: bool) -> tuple[float, float | None]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    t0 = time.monotonic()
    page.goto(server.lab_url())
    page.wait_for_selector(".jp-Launcher", timeout=60_000)
    ready = time.monotonic() - t0
    status = None
    if with_ext:
        page.wait_for_selector(".warden-status[data-health='ok']", timeout=60_000)
        status = time.monotonic() - t0
    context.close()
    return ready, status


def ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:7.0f} ms (min {min(values) * 1000:.0f}, max {max(values) * 1000:.0f})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    if not labextension_built():
        print("the labextension is not built: run scripts/bootstrap.sh", file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright

    from warden.kernel.install import install_kernelspec

    with tempfile.TemporaryDirectory(prefix="bench-lab-") as tmp:
        work = Path(tmp)
        install_kernelspec(prefix=str(work / "specs"))
        specs = str(work / "specs" / "share" / "jupyter")
        pg = PostgresServer().start()
        servers: list[LabServer] = []
        try:
            with OIDCIssuer(audience="warden") as issuer:
                (work / "gw").mkdir()
                with seeded_gateway(pg, issuer.issuer, work / "gw", gateway_id="gw-bench-lab") as gw:
                    base = {k: v for k, v in os.environ.items() if not k.startswith(("WARDEN_", "JUPYTER"))}

                    def lab(name: str, sub: str, groups: list[str], ext: bool) -> LabServer:
                        root = work / name
                        root.mkdir()
                        token = issuer.issue(sub=sub, groups=groups, region="emea", expires_in=3600)
                        env = {**base, "WARDEN_GATEWAY_URL": gw.gw.url, "WARDEN_TOKEN": token}
                        server = LabServer(root, env, warden_extension=ext).start(kernelspec_path=specs)
                        servers.append(server)
                        return server

                    with_ext = lab("with", "ana", ["analysts"], True)
                    without = lab("without", "ana", ["analysts"], False)
                    approver = lab("approver", "olga", ["owners"], True)
                    for s in servers:
                        s.wait_ready()
                    with sync_playwright() as p:
                        browser = launch_chromium(p)
                        try:
                            load_once(browser, with_ext, True)  # warm-up: first asset loads, caches
                            load_once(browser, without, False)
                            ready_with, status_with, ready_without = [], [], []
                            for _ in range(args.rounds):
                                r, s_ = load_once(browser, with_ext, True)
                                ready_with.append(r)
                                status_with.append(s_ or 0.0)
                                ready_without.append(load_once(browser, without, False)[0])
                            panel, continued = decision_rounds(browser, with_ext, approver, args.rounds)
                        finally:
                            browser.close()
        finally:
            for s in servers:
                s.stop()
            pg.stop()

    print(f"\nlabextension in chromium, {args.rounds} rounds (median, min, max)\n")
    print(f"{'measure':58} {'time':>40}")
    print(f"{'JupyterLab load, without the extension (launcher shown)':58} {ms(ready_without):>40}")
    print(f"{'JupyterLab load, with the extension (launcher shown)':58} {ms(ready_with):>40}")
    print(f"{'  with: until the status bar shows a healthy gateway':58} {ms(status_with):>40}")
    ratio = statistics.median(ready_with) / statistics.median(ready_without)
    print(f"{'  load time ratio with / without':58} {ratio:>39.2f}x")
    print(f"{'held request -> card in the approver panel':58} {ms(panel):>40}")
    print(f"{'approval.granted -> analyst cell shows masked result':58} {ms(continued):>40}")
    return 0


def decision_rounds(browser: Any, analyst: LabServer, approver: LabServer, rounds: int) -> tuple[list[float], list[float]]:
    sql = "%%sql pg --wait 60\nSELECT id, name, email FROM customers WHERE email LIKE '%example' ORDER BY id"
    write_notebook(analyst.root / "bench.ipynb", [sql])
    ana = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
    ana.goto(analyst.lab_url("lab/tree/bench.ipynb"))
    ana.wait_for_function(KERNEL_IDLE, timeout=60_000)
    olga = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
    olga.goto(approver.lab_url())
    olga.locator(".lm-TabBar-tab[data-id='warden-approvals']").click()
    olga.wait_for_selector("#warden-approvals:visible")
    panel: list[float] = []
    continued: list[float] = []
    for i in range(rounds):
        ana.wait_for_function(KERNEL_IDLE, timeout=60_000)
        # a distinct statement each round (an approval is bound to one statement)
        ana.evaluate("(i) => { const nb = window.jupyterapp.shell.currentWidget.content;"
                     " nb.activeCellIndex = 0; nb.activeCell.model.sharedModel.setSource("
                     f"{sql!r}.replace('ORDER BY id', 'ORDER BY id LIMIT ' + (10 + i))); }}", i)  # fmt: skip
        ana.evaluate("() => { void window.jupyterapp.commands.execute('notebook:run-cell'); }")
        ana.wait_for_selector(".warden-cell-badge[data-state='held']", timeout=30_000)
        held_at = time.monotonic()
        card = olga.locator(".warden-queue .warden-approval").first
        card.wait_for(timeout=30_000)
        panel.append(time.monotonic() - held_at)
        aid = card.get_attribute("data-approval-id")
        resp = httpx.post(f"{approver.url}/warden/api/approvals/{aid}/approve", json={"reason": f"bench {i}"},
                          headers={"authorization": f"token {approver.token}"}, timeout=30)  # fmt: skip
        resp.raise_for_status()
        granted = time.monotonic()
        ana.wait_for_selector(".jp-Cell th.warden-masked .warden-mask-icon", timeout=60_000)
        continued.append(time.monotonic() - granted)
        olga.wait_for_selector(f".warden-queue:not(:has([data-approval-id='{aid}']))", timeout=30_000)
    return panel, continued


if __name__ == "__main__":
    raise SystemExit(main())
