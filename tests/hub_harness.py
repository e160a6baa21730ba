"""A real JupyterHub for the tests: jupyterhub from pip, configurable-http-proxy from npm
(scripts/bootstrap.sh puts it in .node/), DummyAuthenticator with groups from config,
SimpleLocalProcessSpawner with per-user homes under a temp dir. Everything listens on
127.0.0.1; the Hub and its proxy are stopped by pid."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from pgserver import free_port

ROOT = Path(__file__).resolve().parent.parent
CHP = ROOT / ".node" / "node_modules" / ".bin" / "configurable-http-proxy"


def wait_for(condition: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll ``condition`` until it returns something truthy (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@dataclass
class HubProcess:
    """One Hub. ``fragment`` is `warden hub-config` output; ``groups`` maps group -> users."""

    workdir: Path
    fragment: str
    groups: dict[str, list[str]]
    extra_config: str = ""
    admin_token: str = field(default_factory=lambda: secrets.token_hex(32))
    service_token: str = field(default_factory=lambda: secrets.token_hex(32))
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0
    hub_port: int = 0
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.workdir / "jupyterhub.log"

    @property
    def url(self) -> str:
        """The public URL (through configurable-http-proxy)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        """The Hub API as a service reaches it (the Hub itself, not the proxy)."""
        return f"http://127.0.0.1:{self.hub_port}/hub/api"

    @property
    def service_token_file(self) -> Path:
        return self.workdir / "warden-service.token"

    def config_text(self) -> str:
        homes = self.workdir / "homes"
        groups = {name: {"users": users} for name, users in self.groups.items()}
        root_args = '\nc.Spawner.args.append("--allow-root")' if os.geteuid() == 0 else ""
        return f"""c = get_config()  # noqa
{self.fragment}
# ---- test settings: loopback only, state in the temp dir ----
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {self.port}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {self.hub_port}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{free_port()}"
c.ConfigurableHTTPProxy.command = [{str(CHP)!r}]
c.ConfigurableHTTPProxy.pid_file = {str(self.workdir / "proxy.pid")!r}
c.JupyterHub.pid_file = {str(self.workdir / "hub.pid")!r}
c.JupyterHub.db_url = "sqlite:///{self.workdir / "jupyterhub.sqlite"}"
c.JupyterHub.cookie_secret_file = {str(self.workdir / "cookie_secret")!r}
c.JupyterHub.authenticator_class = "dummy"
c.DummyAuthenticator.password = "warden-test"
c.Authenticator.allow_all = True
c.JupyterHub.load_groups = {groups!r}
c.JupyterHub.spawner_class = "simple"
c.SimpleLocalProcessSpawner.home_dir_template = {str(homes) + "/{username}"!r}
c.Spawner.start_timeout = 60
c.Spawner.http_timeout = 60
c.JupyterHub.cleanup_servers = True
# a test-only admin service: creates tokens, starts servers, reads server state
c.JupyterHub.services.append({{"name": "test-admin", "api_token": {self.admin_token!r}}})
c.JupyterHub.load_roles.append({{
    "name": "test-admin",
    "scopes": ["admin:users", "admin:servers", "admin:server_state", "tokens", "list:users", "read:users",
               "read:services", "read:roles", "access:servers", "groups"],
    "services": ["test-admin"],
}}){root_args}
{self.extra_config}
"""

    def start(self, timeout: float = 45.0) -> HubProcess:
        if not CHP.exists():
            raise RuntimeError(f"{CHP} is missing: run scripts/bootstrap.sh (it installs configurable-http-proxy)")
        self.port = self.port or free_port()
        self.hub_port = self.hub_port or free_port()  # preset when a service must know it first
        fd = os.open(self.service_token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(self.service_token + "\n")
        (self.workdir / "homes").mkdir(exist_ok=True)
        config = self.workdir / "jupyterhub_config.py"
        config.write_text(self.config_text())
        env = {k: v for k, v in os.environ.items() if not k.startswith(("WARDEN_", "JUPYTERHUB_"))}
        # The single-user servers find jupyterhub-singleuser and node in this venv's PATH.
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "jupyterhub", "-f", str(config)],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir, env=env,
            )  # fmt: skip

        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"the Hub exited with {self.proc.returncode}:\n{self.tail()}")
            with contextlib.suppress(httpx.HTTPError):  # through the proxy: both are up
                return httpx.get(self.url + "/hub/api/", timeout=2).status_code == 200
            return False

        try:
            wait_for(ready, timeout=timeout, what="the Hub behind its proxy")
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"the Hub did not come up:\n{self.tail()}") from None
        return self

    def tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""

    def api(self, method: str, path: str, *, token: str | None = None, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"token {token or self.admin_token}"}
        return httpx.request(method, self.api_url + path, headers=headers, timeout=30, **kwargs)

    def new_token(self, user: str, scopes: list[str], *, expires_in: int | None = None) -> tuple[str, str]:
        """A fresh API token of ``user`` with exactly ``scopes``: (token, token id)."""
        body: dict[str, Any] = {"scopes": scopes, "note": "warden test"}
        if expires_in is not None:
            body["expires_in"] = expires_in
        r = self.api("POST", f"/users/{user}/tokens", json=body)
        if r.status_code != 201:
            raise RuntimeError(f"token for {user}: HTTP {r.status_code} {r.text}")
        data = r.json()
        return str(data["token"]), str(data["id"])

    def start_server(self, user: str, timeout: float = 60.0) -> dict[str, Any]:
        r = self.api("POST", f"/users/{user}/server")
        if r.status_code not in (201, 202):
            raise RuntimeError(f"start server for {user}: HTTP {r.status_code} {r.text}\n{self.tail()}")

        def ready() -> dict[str, Any] | None:
            model = self.api("GET", f"/users/{user}").json()
            server = model.get("servers", {}).get("")
            return server if server and server.get("ready") else None

        result: dict[str, Any] = wait_for(ready, timeout=timeout, what=f"{user}'s server", interval=0.2)
        return result

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the Hub (it stops its servers and proxy), then make sure the proxy it
        started is gone too (by the pid it recorded)."""
        proxy_pid = self._pid("proxy.pid")
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if proxy_pid and _is_proxy(proxy_pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(proxy_pid, signal.SIGTERM)

    def _pid(self, name: str) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int((self.workdir / name).read_text().strip())
        return None


def _is_proxy(pid: int) -> bool:
    """Still our configurable-http-proxy (not a reused pid)?"""
    try:
        return b"configurable-http-proxy" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


class KernelSession:
    """A kernel in a user's single-user server, driven like JupyterLab drives it: REST to
    start it, the ``/channels`` websocket (through the Hub's proxy) to execute cells."""

    def __init__(self, hub: HubProcess, user: str, token: str, kernel_name: str | None = None) -> None:
        import websocket  # websocket-client (a jupyter_server dependency)

        self.base = f"{hub.url}/user/{user}/api"
        self.headers = {"Authorization": f"token {token}"}
        body = {"name": kernel_name} if kernel_name else {}
        r = httpx.post(f"{self.base}/kernels", json=body, headers=self.headers, timeout=60)
        if r.status_code != 201:
            raise RuntimeError(f"start kernel for {user}: HTTP {r.status_code} {r.text}")
        self.model: dict[str, Any] = r.json()
        ws_url = f"ws://127.0.0.1:{hub.port}/user/{user}/api/kernels/{self.model['id']}/channels"
        self.ws = websocket.create_connection(ws_url, header=[f"Authorization: token {token}"], timeout=60)
        self.session = secrets.token_hex(8)

    def execute(self, code: str, timeout: float = 60.0) -> dict[str, Any]:
        """Run one cell: its stdout, error and rich results (text/plain)."""
        import json
        import uuid

        msg_id = uuid.uuid4().hex
        self.ws.send(json.dumps({
            "header": {"msg_id": msg_id, "username": "test", "session": self.session, "msg_type": "execute_request",
                       "version": "5.3", "date": ""},
            "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
            "content": {"code": code, "silent": False, "store_history": True, "user_expressions": {},
                        "allow_stdin": False, "stop_on_error": True},
        }))  # fmt: skip
        out: dict[str, Any] = {"stdout": "", "error": None, "results": []}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.ws.settimeout(max(0.1, deadline - time.monotonic()))
            msg = json.loads(self.ws.recv())
            if msg.get("parent_header", {}).get("msg_id") != msg_id or msg.get("channel") != "iopub":
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                out["stdout"] += content.get("text", "")
            elif kind == "error":
                out["error"] = f"{content.get('ename')}: {content.get('evalue')}"
            elif kind in ("execute_result", "display_data"):
                out["results"].append(content.get("data", {}).get("text/plain", ""))
            elif kind == "status" and content.get("execution_state") == "idle":
                return out
        raise TimeoutError(f"the cell did not finish in {timeout}s")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ws.close()
        with contextlib.suppress(httpx.HTTPError):
            httpx.delete(f"{self.base}/kernels/{self.model['id']}", headers=self.headers, timeout=30)
