"""The labextension end to end, in Debian's chromium (Playwright), against two real
JupyterLab servers (an analyst's and an approver's, each with its own identity), a real
gateway in shared mode (OIDC) and a real PostgreSQL:

1. the analyst runs a cell that is held: the cell gets a "held" badge;
2. the approver sees it in the approvals panel and approves it with a reason;
3. the analyst's cell continues by itself and shows masked results (icon, tooltip);
4. the timeline panel tells the story, and a click scrolls to the cell;
5. the audit log has approval.granted with the approver's subject.

Screenshots of each step go to tests/artifacts/labextension/ (gitignored).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway_harness import SeededGateway, seeded_gateway
from lab_harness import (
    CHROMIUM,
    ROOT,
    LabServer,
    labextension_built,
    launch_chromium,
    write_notebook,
)
from oidc_issuer import OIDCIssuer
from pgserver import PostgresServer

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (scripts/install-system-deps.sh)")
ARTIFACTS = ROOT / "tests" / "artifacts" / "labextension"
KERNEL_IDLE = "() => window.jupyterapp?.shell.currentWidget?.sessionContext?.session?.kernel?.status === 'idle'"
HELD_SQL = "SELECT id, name, email FROM customers WHERE email LIKE '%example' ORDER BY id"


@dataclass
class Setup:
    gateway: SeededGateway
    issuer: OIDCIssuer
    analyst: LabServer
    approver: LabServer


@pytest.fixture(scope="module")
def setup(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    if not labextension_built():
        pytest.fail("the labextension is not built: run scripts/bootstrap.sh (it builds labextension/)")
    from warden.kernel.install import install_kernelspec

    specs = tmp_path_factory.mktemp("specs")
    install_kernelspec(prefix=str(specs))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with OIDCIssuer(audience="warden") as issuer:
        work = tmp_path_factory.mktemp("labgw")
        with seeded_gateway(postgres, issuer.issuer, work, gateway_id="gw-lab") as gw:
            servers = []
            base = {k: v for k, v in os.environ.items() if not k.startswith(("WARDEN_", "JUPYTER"))}
            for who, groups in (("ana", ["analysts"]), ("olga", ["owners"])):
                root = tmp_path_factory.mktemp(f"lab-{who}")
                token = issuer.issue(sub=who, groups=groups, region="emea", expires_in=3600)
                env = {**base, "WARDEN_GATEWAY_URL": gw.gw.url, "WARDEN_TOKEN": token}
                servers.append(LabServer(root, env).start(kernelspec_path=str(specs / "share" / "jupyter")))
            try:
                for s in servers:
                    s.wait_ready()
                yield Setup(gw, issuer, servers[0], servers[1])
            finally:
                for s in servers:
                    s.stop()


def shot(page: Any, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def open_lab(browser: Any, server: LabServer, path: str = "lab") -> Any:
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(server.lab_url(path))
    page.wait_for_selector(".warden-status[data-health='ok']", timeout=30_000)
    return page


def open_panel(page: Any, panel_id: str) -> None:
    tab = page.locator(f".lm-TabBar-tab[data-id='{panel_id}']")
    if "lm-mod-current" not in (tab.get_attribute("class") or ""):
        tab.click()
    page.wait_for_selector(f"#{panel_id}:visible", timeout=10_000)


def test_held_cell_approved_from_the_panel(setup: Setup) -> None:
    from playwright.sync_api import sync_playwright

    started = time.monotonic()
    write_notebook(setup.analyst.root / "analysis.ipynb", [f"%%sql pg --wait 60\n{HELD_SQL}"])
    with sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            ana = open_lab(browser, setup.analyst, "lab/tree/analysis.ipynb")
            # the status bar: who, groups and mode; the popover: roles, connections, URL, version
            status = ana.locator(".warden-status")
            assert status.inner_text().strip() == "warden: ana (analysts) · shared"
            status.click()
            pop = ana.locator(".warden-popover")
            pop.wait_for(timeout=5_000)
            assert pop.locator("tr[data-key='roles'] td").inner_text() == "analyst"
            assert pop.locator("tr[data-key='gateway'] td").inner_text() == setup.gateway.gw.url
            assert pop.locator("tr[data-key='version'] td").inner_text()
            shot(ana, "0-analyst-status")
            ana.keyboard.press("Escape")

            # 1. the analyst runs the cell: held, with a badge in its prompt area
            ana.wait_for_selector(".jp-Notebook .jp-Cell", timeout=30_000)
            ana.wait_for_function(KERNEL_IDLE, timeout=60_000)
            ana.locator(".jp-Cell .jp-InputArea-editor").first.click()
            ana.evaluate("() => { void window.jupyterapp.commands.execute('notebook:run-cell'); }")  # not awaited: it resolves when the cell ends
            ana.wait_for_selector(".jp-Cell .jp-InputArea-prompt .warden-cell-badge[data-state='held']", timeout=30_000)
            shot(ana, "1-analyst-held")

            # 2. the approver sees it in the panel and approves with a reason
            olga = open_lab(browser, setup.approver)
            olga.wait_for_selector(".lm-TabBar-tab.warden-tab-pending[data-id='warden-approvals']", timeout=20_000)
            open_panel(olga, "warden-approvals")
            card = olga.locator(".warden-queue .warden-approval").first
            card.wait_for(timeout=15_000)
            assert "ana on pg" in card.inner_text()
            assert "'***'" in card.locator(".warden-sql").inner_text()  # the redacted SQL
            assert olga.locator(".warden-mine .warden-approval").count() == 0
            approval_id = card.get_attribute("data-approval-id")
            shot(olga, "2-approver-queue")
            card.locator(".warden-approve").click()
            card.locator("input.warden-reason").fill("ticket 42: e-mail domains for the audit")
            shot(olga, "3-approver-reason")
            card.locator(".warden-confirm").click()
            decided = time.monotonic()
            olga.wait_for_selector(f".warden-mine, .warden-queue:not(:has([data-approval-id='{approval_id}']))", timeout=10_000)

            # 3. the analyst's cell continues by itself: masked results, marked
            icon = ana.locator(".jp-Cell th.warden-masked .warden-mask-icon").first
            icon.wait_for(timeout=30_000)
            continued = time.monotonic() - decided
            assert icon.get_attribute("data-operator") == "email"
            assert icon.get_attribute("data-classification") == "pii.email"
            assert "classification pii.email" in (ana.locator(".jp-Cell th.warden-masked").first.get_attribute("title") or "")
            badge = ana.locator(".jp-Cell .warden-cell-badge")
            badge.wait_for(timeout=5_000)
            assert badge.get_attribute("data-state") == "approved"
            out = ana.locator(".jp-Cell .jp-OutputArea").first.inner_text()
            assert "Ada Lovelace" in out and "ada@analytical.example" not in out
            shot(ana, "4-analyst-masked-result")

            # 4. the timeline tells the story; a click scrolls to the cell
            open_panel(ana, "warden-timeline")
            ana.wait_for_selector("#warden-timeline li[data-type='query.executed']", timeout=20_000)
            ana.wait_for_selector("#warden-timeline li[data-type='cell.execute']", timeout=20_000)
            types = ana.locator("#warden-timeline li.warden-event").evaluate_all("els => els.map(e => e.dataset.type)")
            assert types.index("query.held") < types.index("query.executed"), types
            executed = ana.locator("#warden-timeline li[data-type='query.executed']").last
            assert "masked: email" in executed.inner_text() and "3 rows" in executed.inner_text()
            approved = ana.locator("#warden-timeline li.warden-decision-approved").last
            assert f"approval {approval_id} by olga" in approved.inner_text()
            executed.click()
            ana.wait_for_selector(".jp-Cell.jp-mod-active.warden-flash", timeout=5_000)
            shot(ana, "5-analyst-timeline")

            # the approver cannot decide it again, and the analyst has no buttons on it
            assert ana.locator(".warden-approve").count() == 0
        except Exception:
            for i, page in enumerate([pg for c in browser.contexts for pg in c.pages]):
                shot(page, f"failed-{i}")
            raise
        finally:
            browser.close()

    # 5. the audit log: approval.granted by the approver
    auditor = setup.issuer.issue(sub="audra", groups=["audit"], expires_in=600)
    events = httpx.get(f"{setup.gateway.gw.url}/v1/audit", params={"type": "approval.granted", "limit": "10"},
                       headers={"authorization": f"Bearer {auditor}"}, timeout=10).json()["events"]  # fmt: skip
    granted = [e for e in events if e.get("approval_id") == approval_id]
    assert granted and granted[0]["subject"] == "olga", events
    print(f"labextension e2e: approval -> cell continued in {continued:.2f} s; whole test {time.monotonic() - started:.1f} s")


def _post(server: LabServer, path: str, body: dict[str, Any] | None, auth: bool = True) -> httpx.Response:
    headers = {"authorization": f"token {server.token}"} if auth else {}
    return httpx.post(f"{server.url}/warden/api/{path}", json=body, headers=headers, timeout=30)


def _held(setup: Setup, sub: str, groups: list[str], sql: str) -> str:
    from warden.gateway.client import GatewayClient, Held

    token = setup.issuer.issue(sub=sub, groups=groups, region="emea", expires_in=600)
    with GatewayClient(setup.gateway.gw.url, token=token) as c, pytest.raises(Held) as held:
        c.run("pg", sql)
    return str(held.value.approval["id"])


def test_decisions_through_the_server_keep_the_binding_rules(setup: Setup) -> None:
    """The server extension only relays: the gateway refuses self-approval (same subject
    through another token), a decision without a reason, a second decision; and the
    server's own authentication guards the API (the browser has no gateway token)."""
    own = _held(setup, "olga", ["owners", "analysts"], "SELECT id FROM customers WHERE email = 'x@y.example'")
    refused = _post(setup.approver, f"approvals/{own}/approve", {"reason": "mine"})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "approval/self-approval", refused.text

    other = _held(setup, "ana", ["analysts"], "SELECT id FROM customers WHERE email = 'z@y.example'")
    assert _post(setup.analyst, f"approvals/{other}/approve", {"reason": "please"}).status_code == 403  # not an approver
    assert _post(setup.approver, f"approvals/{other}/deny", {"reason": " "}).status_code == 400
    assert _post(setup.approver, f"approvals/{other}/deny", {"reason": "use the staging copy"}, auth=False).status_code == 403
    denied = _post(setup.approver, f"approvals/{other}/deny", {"reason": "use the staging copy"})
    assert denied.status_code == 200 and denied.json()["status"] == "denied" and denied.json()["decided_by"] == "olga"
    again = _post(setup.approver, f"approvals/{other}/approve", {"reason": "changed my mind"})
    assert again.status_code == 409, again.text

    mine = setup.analyst.api("warden/api/approvals")
    assert mine["subject"] == "ana" and mine["approver"] is False
    assert {a["id"]: a["status"] for a in mine["approvals"]}[other] == "denied"
    assert all(a["requester"] == "ana" for a in mine["approvals"])
    status = setup.analyst.api("warden/api/status")
    assert status["whoami"]["subject"] == "ana" and status["health"]["mode"] == "shared"
    assert "token" not in json.dumps(status).lower()  # nothing of the gateway token reaches the browser
