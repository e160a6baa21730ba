"""The README's run command, end to end, in Chromium (issue 12, items 3-5, 7, 8).

``scripts/run.sh`` (with WARDEN_RUN_DRY=1, so it prints the `jupyter lab` command it
would exec) prepares everything; the test starts that JupyterLab on loopback, opens the
quickstart in Debian's Chromium through Playwright, runs every cell, and saves
screenshots of the masked table, the held cell and the typo error under
``artifacts/screenshots/`` (gitignored). It checks that JupyterLab offers the warden
kernel first (with its logo) and that the repository's notebooks were not touched.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from pgserver import free_port

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "artifacts" / "screenshots"
CHROMIUM = Path("/usr/bin/chromium")

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is missing: scripts/install-system-deps.sh installs it")


def _status(path: str) -> str:
    return subprocess.run(["git", "status", "--porcelain", "--untracked-files=all", "--", path], cwd=ROOT, capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    base = Path(os.environ.get("TMPDIR", "/tmp")) / f"wss-{os.getpid()}"  # short: the gateway's socket path
    base.mkdir(parents=True, exist_ok=True)
    home = tmp_path_factory.mktemp("labhome")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WARDEN_", "JUPYTER"))}
    env.update(XDG_DATA_HOME=str(home / "data"), JUPYTER_RUNTIME_DIR=str(base / "rt"), JUPYTER_CONFIG_DIR=str(home / "config"),
               JUPYTERLAB_SETTINGS_DIR=str(home / "lab-settings"), JUPYTERLAB_WORKSPACES_DIR=str(home / "lab-workspaces"),
               WARDEN_RUN_DRY="1", HOME=str(home))  # fmt: skip
    # Every cell in the DOM (JupyterLab 4 renders only the visible ones by default).
    tracker = home / "lab-settings" / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    tracker.parent.mkdir(parents=True)
    tracker.write_text('{"windowingMode": "none"}')
    before = _status("notebooks")
    port, token = free_port(), secrets.token_hex(16)
    prep = subprocess.run(["bash", "scripts/run.sh", "--port", str(port), f"--IdentityProvider.token={token}", "--ServerApp.open_browser=False"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False)  # fmt: skip
    assert prep.returncode == 0, prep.stdout + prep.stderr
    env.pop("WARDEN_RUN_DRY")
    command = shlex.split(prep.stdout.strip().splitlines()[-1])
    log = open(home / "lab.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, (home / "lab.log").read_text()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/api/status", params={"token": token}, timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, "JupyterLab did not answer in 90 s"
            time.sleep(0.2)
        yield {"url": url, "token": token, "prep": prep.stdout, "work": home / "data" / "warden" / "notebooks", "before": before}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()
        pid_file = base / "rt" / "warden" / "gateway.pid"  # the local gateway the kernel started
        if pid_file.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid_file.read_text()), signal.SIGTERM)
        import shutil

        shutil.rmtree(base, ignore_errors=True)


def test_run_script_shows_progress_and_serves_a_working_copy(lab: dict[str, Any]) -> None:
    out = lab["prep"]
    assert [line.split("]")[0] for line in out.splitlines() if line.startswith("[")] == [f"[{n}/7" for n in range(1, 8)]
    assert (lab["work"] / "quickstart.ipynb").exists()
    assert "--notebook-dir" in out and str(lab["work"]) in out and "--MappingKernelManager.default_kernel_name=warden" in out


def test_jupyterlab_defaults_to_the_warden_kernel_with_its_logo(lab: dict[str, Any]) -> None:
    specs = httpx.get(f"{lab['url']}/api/kernelspecs", params={"token": lab["token"]}, timeout=10).json()
    assert specs["default"] == "warden" and list(specs["kernelspecs"]) == ["warden"]  # no plain Python to pick by mistake
    resources = specs["kernelspecs"]["warden"]["resources"]
    assert {"logo-svg", "logo-64x64"} <= set(resources)
    logo = httpx.get(lab["url"] + resources["logo-svg"], params={"token": lab["token"]}, timeout=10)
    assert logo.status_code == 200 and b"warden" in logo.content  # ours, not ipykernel's


def test_quickstart_in_chromium(lab: dict[str, Any]) -> None:
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{lab['url']}/lab/tree/quickstart.ipynb?token={lab['token']}", timeout=60_000)
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
            # JupyterLab may ask which kernel to start: warden must be preselected (and the
            # only one offered); then wait for the kernel to be idle.
            deadline = time.monotonic() + 90
            while True:
                assert time.monotonic() < deadline, "the warden kernel did not become idle in 90 s"
                dialog = page.locator(".jp-Dialog select")
                if dialog.count():
                    chosen = dialog.evaluate("s => s.options[s.selectedIndex].text")
                    offered = dialog.locator("option").all_inner_texts()
                    assert "warden" in chosen and not any("ipykernel" in t for t in offered), (chosen, offered)
                    page.get_by_role("button", name="Select").click()
                elif page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").count() or "Idle" in page.locator(".jp-StatusBar-Widget").all_inner_texts().__str__():
                    break
                page.wait_for_timeout(250)  # a bounded poll of the page
            def run_all() -> float:
                page.locator(".jp-Notebook").first.click()
                page.get_by_role("menuitem", name="Run", exact=True).click()
                page.get_by_text("Run All Cells", exact=True).click()
                return time.monotonic()

            clicked, clicks = run_all(), 1
            # Done when every code cell has a number in its prompt (no "[*]" or "[ ]").
            prompts: list[str] = []
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                started = page.evaluate(
                    "() => [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')].some(e => e.textContent.trim() !== '[ ]:')"
                )
                if not started and clicks < 4 and time.monotonic() - clicked > 15:
                    # The menu click landed before the notebook took focus (seen under load):
                    # nothing was queued, so ask again (bounded).
                    clicked, clicks = run_all(), clicks + 1
                if page.locator(".jp-Dialog select").count():  # asked late: choose warden, run again
                    chosen = page.locator(".jp-Dialog select").evaluate("s => s.options[s.selectedIndex].text")
                    assert "warden" in chosen, chosen
                    page.get_by_role("button", name="Select").click()
                    page.wait_for_timeout(1000)
                    page.get_by_role("menuitem", name="Run", exact=True).click()
                    page.get_by_text("Run All Cells", exact=True).click()
                prompts = page.evaluate("() => [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')].map(e => e.textContent.trim())")
                # "[15]:" (a labextension may add a word after the colon)
                if prompts and all(t.startswith("[") and t[1 : t.find("]")].isdigit() for t in prompts):
                    break
                page.wait_for_timeout(500)  # a bounded poll of the page, not a sleep for a guess
            else:
                page.screenshot(path=str(ARTIFACTS / "run-all-timeout.png"), full_page=True)
                raise AssertionError(f"the quickstart did not finish in 180 s: prompts {prompts}")
            table = page.locator(".jp-OutputArea-output:has(table.warden-table)").first
            held = page.locator(".jp-OutputArea-output:has(.warden-held)").first
            typo = page.locator(".jp-OutputArea-output:has(.warden-error)").first
            for name, loc in (("masked-table", table), ("held-cell", held), ("typo-error", typo)):
                loc.scroll_into_view_if_needed()
                loc.screenshot(path=str(ARTIFACTS / f"{name}.png"))
                assert (ARTIFACTS / f"{name}.png").stat().st_size > 1000
            badges = table.locator(".warden-mask-badge")
            assert badges.count() >= 3 and badges.first.inner_text() == "masked"
            box = badges.first.bounding_box()
            assert box is not None and box["width"] > 20  # drawn as text, not an empty glyph box
            assert "\N{LOCK}" not in table.inner_text()
            years = table.locator("td").all_inner_texts()
            assert any(len(t) == 4 and t.startswith("19") for t in years)  # the year mask shows 1973, not 1973-01-01
            held_text = held.inner_text()
            assert "%warden approve apr_" in held_text and "expires in" in held_text
            typo_text = typo.inner_text()
            assert "Your SQL has an error" in typo_text and "did you mean `name`?" in typo_text and "^^^" in typo_text
            assert page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']").count() == 0
        finally:
            browser.close()
    # JupyterLab saved into the working copy, never into the repository.
    assert _status("notebooks") == lab["before"]
