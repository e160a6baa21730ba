"""Local mode keeps its state owner-only (issue 8 §5): the demo database with its
(fake) personal data, the policy, the audit and approvals stores, checkpoints, the token
and the runtime files are 0600 in 0700 directories. A real local gateway, started the
way a kernel starts it, and stopped by its pid."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import warden.demo


@pytest.fixture
def local_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    base = Path(os.environ.get("TMPDIR", "/tmp")) / f"wpv-{os.getpid()}"  # short: unix socket path limit
    base.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WARDEN_")}
    env.update(JUPYTER_RUNTIME_DIR=str(base / "rt"), XDG_DATA_HOME=str(tmp_path / "data"))
    try:
        yield env
    finally:
        pid_file = base / "rt" / "warden" / "gateway.pid"
        if pid_file.exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
        shutil.rmtree(base, ignore_errors=True)


def modes(root: Path) -> dict[str, tuple[int, int]]:
    """Every directory and file under ``root`` (itself too): (mode, mode it must have)."""
    out = {".": (stat.S_IMODE(root.stat().st_mode), 0o700)}
    for p in root.rglob("*"):
        st = p.lstat()
        if stat.S_ISSOCK(st.st_mode) or stat.S_ISLNK(st.st_mode):
            continue
        out[str(p.relative_to(root))] = (stat.S_IMODE(st.st_mode), 0o700 if stat.S_ISDIR(st.st_mode) else 0o600)
    return out


def test_local_state_is_owner_only(local_env: dict[str, str]) -> None:
    data = Path(local_env["XDG_DATA_HOME"]) / "warden"
    # What an earlier version left behind: a world-readable policy in a 0755 directory.
    data.mkdir(parents=True)
    data.chmod(0o755)
    shutil.copy(Path(warden.demo.__file__).with_name("policy.yaml"), data / "policy.yaml")
    (data / "policy.yaml").chmod(0o644)

    starter = (
        "from warden.gateway.local import ensure_local_gateway\n"
        "from warden.gateway.client import GatewayClient\n"
        "gw = ensure_local_gateway()\n"
        "with GatewayClient('http://warden', token=gw.token, transport=gw.transport()) as c:\n"
        "    c.run('demo', 'SELECT id, email FROM customers LIMIT 2')\n"  # audit, approvals, WAL written
    )
    done = subprocess.run([sys.executable, "-c", starter], env=local_env, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr
    run = Path(local_env["JUPYTER_RUNTIME_DIR"]) / "warden"
    pid = int((run / "gateway.pid").read_text())
    try:
        found = {**{f"data/{k}": v for k, v in modes(data).items()}, **{f"run/{k}": v for k, v in modes(run).items()}}
        for name in ("data/demo.duckdb", "data/policy.yaml", "data/state/audit.duckdb", "data/state/approvals.duckdb",
                     "data/state/checkpoints.jsonl", "data/state/secret.key", "run/token", "run/gateway.yaml", "run/gateway.log"):  # fmt: skip
            assert name in found, f"{name} missing: {sorted(found)}"
        wrong = {name: oct(mode) for name, (mode, want) in found.items() if mode != want}
        assert wrong == {}, wrong
    finally:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
    # After a clean stop (checkpoint written, WAL folded in) nothing is readable by others either.
    leftover = {name: oct(mode) for name, (mode, want) in modes(data).items() if mode != want}
    assert leftover == {}, leftover
