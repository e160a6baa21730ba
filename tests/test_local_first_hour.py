"""Local mode while the gateway runs (issue 12, items 6 and 10): `warden demo` goes through
the running gateway, `warden explain` says what to do instead of DuckDB's lock error, and
a stopped gateway leaves neither its socket nor its pid file."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def local_gateway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, dict[str, str], int]]:
    base = Path(os.environ.get("TMPDIR", "/tmp")) / f"wlg-{os.getpid()}"  # short: the socket path limit
    base.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(base / "rt"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    for key in [k for k in os.environ if k.startswith("WARDEN_")]:
        monkeypatch.delenv(key)
    from warden.gateway.local import ensure_local_gateway

    gw = ensure_local_gateway()
    pid = int((gw.socket.parent / "gateway.pid").read_text())
    from warden.gateway.client import GatewayClient

    with GatewayClient("http://warden", token=gw.token, transport=gw.transport()) as client:
        client.run("demo", "SELECT count(*) AS n FROM orders")  # the gateway opens (and holds) the demo database
    try:
        yield gw.socket.parent, dict(os.environ), pid
    finally:
        _stop(pid)
        shutil.rmtree(base, ignore_errors=True)


def _stop(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done, _ = os.waitpid(pid, os.WNOHANG)  # our child: reap it, or it stays a zombie
        if done:
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


def _warden(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "warden.cli", *args], env=env, capture_output=True, text=True, timeout=180, check=False)


def test_demo_goes_through_the_running_gateway(local_gateway: tuple[Path, dict[str, str], int]) -> None:
    _, env, _ = local_gateway
    out = _warden(env, "demo")
    assert out.returncode == 0, out.stderr
    assert "goes through it" in out.stdout and "decision: MASK" in out.stdout and "decision: DENY" in out.stdout
    assert "****@example.com" in out.stdout or "@example.com" in out.stdout  # a masked result came back
    assert "lock" not in (out.stdout + out.stderr).lower() and "Traceback" not in out.stderr


def test_explain_says_what_to_do_instead_of_a_lock_error(local_gateway: tuple[Path, dict[str, str], int]) -> None:
    _, env, pid = local_gateway
    policy = Path(env["XDG_DATA_HOME"]) / "warden" / "policy.yaml"
    out = _warden(env, "explain", "--policy", str(policy), "--user", "ana", "--groups", "analysts", "--connection", "demo", "SELECT id FROM customers")
    assert out.returncode == 2
    assert f"the local warden gateway (pid {pid})" in out.stderr and f"kill {pid}" in out.stderr and "--catalog" in out.stderr
    assert "Could not set lock" not in out.stderr and "IO Error" not in out.stderr and "Traceback" not in out.stderr


def test_a_stopped_gateway_leaves_no_socket_and_no_pid_file(local_gateway: tuple[Path, dict[str, str], int]) -> None:
    run, _, pid = local_gateway
    assert (run / "gateway.sock").exists() and (run / "gateway.pid").exists()
    _stop(pid)
    assert not (run / "gateway.sock").exists() and not (run / "gateway.pid").exists()
    assert (run / "token").exists()  # the token stays: the next gateway reuses or replaces it
