"""Several gateway processes behind one listening socket (``workers: N``).

One Python process is bounded by the GIL, so a gateway on a machine with several cores
runs N worker processes. The supervisor (this module, what ``warden gateway`` runs when
``workers > 1``) binds the listening socket once and starts N copies of
``warden gateway --worker K:FD``; each inherits its socket (over TCP one SO_REUSEPORT
socket per worker on the same address) and the kernel spreads the connections among
them. It opens no store and serves nothing itself.

Each worker is a replica in the sense of docs/deploy.md: gateway id
``<gateway_id>-w<K>``, so its own hash chain in the shared PostgreSQL audit store, and
the shared state database (approvals, bindings, taints, catalog epochs). Records are
never handed between processes, so none can be lost, duplicated or forked between
them. A worker that dies (killed, crashed) is started again with the same K: it
continues its chain from the head row, and the queries it was running stay visible as
intents without a completion (``warden audit verify`` reports them; no client was told
``ok`` for them).

SIGTERM/SIGINT to the supervisor: every worker gets SIGTERM, drains its cells, signs a
``close`` checkpoint and exits; the supervisor exits 0 when they all did.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

from warden.gateway.config import GatewayConfig

__all__ = ["serve_workers", "worker_id"]

#: A worker that keeps dying this soon after its start is not restarted for ever.
_CRASH_WINDOW_S = 30.0
_MAX_QUICK_RESTARTS = 5
_STOP_GRACE_S = 45.0  # a worker drains for up to 30 s, then closes its store


def worker_id(gateway_id: str, index: int) -> str:
    """The gateway id (and so the audit chain id) of worker ``index`` (1-based)."""
    return f"{gateway_id}-w{index}"


class _Stop(Exception):
    pass


def _bind(config: GatewayConfig, *, port: int | None = None, reuse_port: bool = False) -> socket.socket:
    if config.unix_socket:
        path = Path(config.unix_socket)
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        address: Any = str(path)
    else:
        family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        address = (config.host, config.port if port is None else port)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _listeners(config: GatewayConfig) -> list[socket.socket]:
    """One listening socket per worker (index k-1 is worker k's). Over TCP each is its
    own SO_REUSEPORT socket on the same address, so the kernel spreads new connections
    evenly by their addresses; one shared socket instead lets whichever worker wakes
    first take a whole burst of connections, which its clients then keep (24/21/5 of
    50 on three workers, p99 over 1 s). The supervisor holds them all: connections that
    arrive for a worker being restarted wait in its backlog. A unix socket is shared."""
    if config.unix_socket or not hasattr(socket, "SO_REUSEPORT"):
        return [_bind(config)] * config.workers
    socks = [_bind(config, reuse_port=True)]
    port = socks[0].getsockname()[1]  # port 0: the others join the port the first got
    try:
        while len(socks) < config.workers:
            socks.append(_bind(config, port=port, reuse_port=True))
    except OSError:
        for sock in socks:
            sock.close()
        raise
    return socks


def _say(message: str) -> None:
    print(f"warden gateway: {message}", flush=True)


def serve_workers(config_path: str | Path, config: GatewayConfig) -> int:
    """Run ``config.workers`` gateway processes on one socket until SIGTERM/SIGINT."""
    socks = _listeners(config)
    where = config.unix_socket or f"http://{config.host}:{config.port}"
    children: dict[int, subprocess.Popen[bytes]] = {}
    started: dict[int, list[float]] = {k: [] for k in range(1, config.workers + 1)}

    def start(k: int) -> None:
        fd = socks[k - 1].fileno()
        cmd = [sys.executable, "-m", "warden.cli", "gateway", "--config", str(config_path), "--worker", f"{k}:{fd}"]
        children[k] = subprocess.Popen(cmd, pass_fds=(fd,))
        started[k] = [t for t in started[k] if time.monotonic() - t < _CRASH_WINDOW_S] + [time.monotonic()]
        _say(f"worker {k} ({worker_id(config.gateway_id, k)}) started, pid {children[k].pid}")

    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise _Stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    code = 0
    try:
        for k in range(1, config.workers + 1):
            start(k)
        _say(f"{config.gateway_id} ({config.mode}) listening on {where} with {config.workers} workers")
        while True:
            pid, status = os.wait()  # any worker; a signal interrupts it with _Stop
            found = next((i for i, p in children.items() if p.pid == pid), None)
            if found is None:
                continue
            k = found
            rc = os.waitstatus_to_exitcode(status)
            children[k].returncode = rc
            _say(f"worker {k} (pid {pid}) exited with {rc}; starting it again")
            if len(started[k]) >= _MAX_QUICK_RESTARTS:
                _say(f"worker {k} exited {len(started[k])} times within {_CRASH_WINDOW_S:.0f} s: stopping the gateway (see the log above)")
                code = 1
                break
            start(k)
    except _Stop:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second signal must not cut the drain short
        code = _stop_all(children) or code
        for sock in {id(s): s for s in socks}.values():
            sock.close()
        if config.unix_socket:
            with contextlib.suppress(FileNotFoundError):
                Path(config.unix_socket).unlink()
    _say(f"{config.gateway_id} stopped: {config.workers} workers drained")
    return code


def _stop_all(children: dict[int, subprocess.Popen[bytes]]) -> int:
    for p in children.values():
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + _STOP_GRACE_S
    code = 0
    for k, p in children.items():
        try:
            rc = p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _say(f"worker {k} (pid {p.pid}) did not stop within {_STOP_GRACE_S:.0f} s: killed")
            p.kill()
            rc = p.wait()
        if rc != 0:
            code = 1
    return code
