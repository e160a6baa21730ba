"""Local mode: one gateway per user on a unix socket, started on demand and shared
by every kernel of that user. The embedded default: DuckDB demo data and a DuckDB
audit file under the user's data dir. Honest about being advisory (mode=local).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

from warden.errors import WardenError
from warden.gateway.private import open_private, private_dir, write_private


class LocalGatewayError(WardenError):
    """The local gateway could not be started; the message says why and where the log is."""


@dataclass(frozen=True)
class LocalGateway:
    socket: Path
    token_file: Path
    log: Path

    @property
    def token(self) -> str:
        return self.token_file.read_text().strip()

    def transport(self) -> httpx.HTTPTransport:
        return httpx.HTTPTransport(uds=str(self.socket))


def runtime_dir() -> Path:
    try:
        from jupyter_core.paths import jupyter_runtime_dir

        base = Path(jupyter_runtime_dir())
    except ImportError:
        base = Path(os.environ.get("JUPYTER_RUNTIME_DIR") or Path.home() / ".local" / "share" / "jupyter" / "runtime")
    return base / "warden"


def local_config(data: Path, run: Path) -> dict[str, object]:
    return {
        "gateway_id": f"local-{os.getuid()}",
        "mode": "local",
        "listen": {"unix_socket": str(run / "gateway.sock")},
        "policy": str(data / "policy.yaml"),
        "state_dir": str(data / "state"),
        "auth": {
            "mode": "local",
            "token_file": str(run / "token"),
            "local_groups": ["analysts"],
            "local_attributes": {"region": "emea"},
        },
    }


def local_config_path(*, data_dir: str | None = None) -> Path:
    """The local gateway's config file, written where the local gateway writes it
    (``<runtime dir>/warden/gateway.yaml``) when it is missing, without starting it."""
    from warden.demo import data_dir as demo_data_dir

    run = runtime_dir()
    config = run / "gateway.yaml"
    if not config.exists():
        private_dir(run)
        write_private(config, yaml.safe_dump(local_config(demo_data_dir(data_dir), run)))
    return config


def _healthy(sock: Path) -> bool:
    if not sock.exists():
        return False
    try:
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), timeout=2) as c:
            return c.get("http://warden/v1/health").status_code == 200
    except httpx.HTTPError:
        return False


def ensure_local_gateway(*, data_dir: str | None = None, timeout: float = 60.0) -> LocalGateway:
    """The running local gateway, started (once, under a lock) if none answers."""
    run = private_dir(runtime_dir())
    sock, token, log = run / "gateway.sock", run / "token", run / "gateway.log"
    found = LocalGateway(sock, token, log)
    if _healthy(sock) and token.exists():
        return found
    return _start_locked(run, found, data_dir, timeout)


def _start_locked(run: Path, found: LocalGateway, data_dir: str | None, timeout: float) -> LocalGateway:
    from warden.demo import ensure_demo

    sock, token, log = found.socket, found.token_file, found.log
    with open_private(run / "start.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # kernels starting together start one gateway
        if _healthy(sock) and token.exists():
            return found
        data = ensure_demo(data_dir)
        config = run / "gateway.yaml"
        write_private(config, yaml.safe_dump(local_config(data, run)))
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()
        with open_private(log, "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "warden.cli", "gateway", "--config", str(config)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,  # outlives the kernel that started it
                umask=0o077,  # what the gateway creates (audit, approvals, token) is owner-only
            )  # fmt: skip
        write_private(run / "gateway.pid", str(proc.pid))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = log.read_text(errors="replace")[-2000:]
                raise LocalGatewayError(f"the local warden gateway exited (code {proc.returncode}); log {log}:\n{tail}")
            if _healthy(sock) and token.exists():
                return found
            time.sleep(0.1)
        raise LocalGatewayError(f"the local warden gateway did not answer within {timeout:.0f}s; see {log}")
