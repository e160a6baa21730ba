"""The labextension in local mode, in chromium: the server extension finds (or starts)
the user's own gateway on its unix socket with its token file, as the kernel does, and
the status bar says the mode is advisory."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab_harness import CHROMIUM, ROOT, LabServer, labextension_built, launch_chromium

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (scripts/install-system-deps.sh)")
ARTIFACTS = ROOT / "tests" / "artifacts" / "labextension"


@pytest.fixture
def local_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabServer]:
    if not labextension_built():
        pytest.fail("the labextension is not built: run scripts/bootstrap.sh")
    base = Path(os.environ.get("TMPDIR", "/tmp")) / f"wlx-{os.getpid()}"  # short: the gateway's socket path
    home = tmp_path_factory.mktemp("locallab")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WARDEN_", "JUPYTER"))}
    env.update(XDG_DATA_HOME=str(home / "data"), HOME=str(home))
    server = LabServer(home, env)
    server.runtime_dir = base / "rt"
    server.start()
    try:
        yield server.wait_ready()
    finally:
        server.stop()
        pid_file = base / "rt" / "warden" / "gateway.pid"  # the local gateway the server extension started
        if pid_file.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid_file.read_text()), signal.SIGTERM)
        import shutil

        shutil.rmtree(base, ignore_errors=True)


def test_status_bar_in_local_mode(local_lab: LabServer) -> None:
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(local_lab.lab_url())
            page.wait_for_selector(".warden-status[data-health='ok']", timeout=60_000)
            text = page.locator(".warden-status").inner_text()
            assert text.startswith(f"warden: {os.environ.get('USER') or ''}".rstrip()) and text.endswith("· local (advisory)"), text
            page.locator(".warden-status").click()
            pop = page.locator(".warden-popover")
            pop.wait_for(timeout=5_000)
            assert pop.locator("tr[data-key='gateway'] td").inner_text().startswith("unix://")
            assert "advisory" in pop.locator(".warden-note").inner_text()
            page.screenshot(path=str(ARTIFACTS / "local-status.png"))
        finally:
            browser.close()
