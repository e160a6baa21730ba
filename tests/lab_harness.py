"""A real JupyterLab server for browser tests and benchmarks: its own config, data and
runtime dirs, loopback only, started and stopped by pid; plus Debian's chromium through
Playwright (``executable_path=/usr/bin/chromium``: no browser download, ever)."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from pgserver import free_port

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
LABEXTENSION = ROOT / "kernel" / "warden" / "labextension"


def labextension_built() -> bool:
    return (LABEXTENSION / "package.json").exists()


@dataclass
class LabServer:
    """``python -m jupyterlab`` in ``root`` with ``env`` (the identity the server and its
    kernels have); ``warden_extension=False`` disables the labextension (page_config) for
    load-time comparisons."""

    root: Path
    env: dict[str, str]
    warden_extension: bool = True
    port: int = 0
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    proc: subprocess.Popen[bytes] | None = None
    #: the Jupyter runtime dir (local mode keeps the gateway's socket there: keep it short)
    runtime_dir: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def lab_url(self, path: str = "lab") -> str:
        return f"{self.url}/{path}?token={self.token}"

    @property
    def log(self) -> Path:
        return self.root / ".lab.log"

    def start(self, kernelspec_path: str | None = None) -> LabServer:
        self.port = free_port()
        home = self.root / ".jupyter-home"
        config = home / "config"
        (config / "labconfig").mkdir(parents=True, exist_ok=True)
        if not self.warden_extension:
            (config / "labconfig" / "page_config.json").write_text(json.dumps({"disabledExtensions": {"jupyterlab-warden": True}}))
        env = {k: v for k, v in self.env.items()}
        env.update(JUPYTER_CONFIG_DIR=str(config), JUPYTER_RUNTIME_DIR=str(self.runtime_dir or home / "runtime"), JUPYTER_DATA_DIR=str(home / "data"))
        if kernelspec_path:
            env["JUPYTER_PATH"] = kernelspec_path
        args = [
            sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={self.port}",
            f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.root}",
            f"--LabApp.workspaces_dir={home / 'workspaces'}", "--ServerApp.jpserver_extensions={'warden.server': True}",
            "--LabApp.news_url=None", "--LabApp.expose_app_in_browser=True", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        ]  # fmt: skip
        if os.getuid() == 0:
            args.append("--allow-root")
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(args, cwd=self.root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def wait_ready(self, timeout: float = 60.0) -> LabServer:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited ({self.proc.returncode}):\n{self.log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/api/status", params={"token": self.token}, timeout=2).status_code == 200:
                    return self
            if time.monotonic() > deadline:
                raise RuntimeError(f"JupyterLab did not answer in {timeout:.0f} s:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.1)

    def api(self, path: str, **kwargs: Any) -> Any:
        resp = httpx.get(f"{self.url}/{path}", params={"token": self.token}, timeout=30, **kwargs)
        resp.raise_for_status()
        return resp.json()

    def stop(self) -> None:
        """SIGTERM to the server's process group (its kernels too), then SIGKILL; by pid."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def write_notebook(path: Path, sources: list[str], kernel: str = "warden") -> Path:
    cells = [
        {"cell_type": "code", "id": f"cell-{i}", "metadata": {}, "source": src, "outputs": [], "execution_count": None}
        for i, src in enumerate(sources)
    ]
    nb = {
        "cells": cells,
        "metadata": {"kernelspec": {"name": kernel, "display_name": "Python 3 (warden)", "language": "python"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path.write_text(json.dumps(nb, indent=1))
    return path


def launch_chromium(playwright: Any) -> Any:
    return playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
