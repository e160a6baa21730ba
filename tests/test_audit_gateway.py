"""An auditor verifies a store written by a real gateway process, with exactly the
documented commands: export the key (``warden audit public-key``), stop the gateway,
``warden audit verify --strict --public-key --checkpoints`` -> exit 0, "OK".
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from gateway_harness import POLICY, ROOT, GatewayProcess, seed_duckdb
from warden.audit import derive_signing_key, public_key_pem
from warden.audit.checkpoint import key_id, read_checkpoint_file

WARDEN = str(Path(sys.executable).parent / "warden")


def run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([WARDEN, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False)


def duck_policy() -> dict[str, object]:
    policy = yaml.safe_load(yaml.safe_dump(POLICY))
    del policy["connections"]["pg"]
    return dict(policy)


@pytest.fixture
def stopped_gateway(tmp_path: Path) -> Iterator[GatewayProcess]:
    """A gateway that served a few cells and was stopped with SIGTERM."""
    seed_duckdb(tmp_path / "data.duckdb")
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(duck_policy()))
    config = {
        "gateway_id": "gw-audit",
        "mode": "shared",
        "policy": "policy.yaml",
        "state_dir": "state",
        # The checkpoint copy goes where the store's administrators cannot reach (here: another dir).
        "audit": {"checkpoint_file": "outside/checkpoints.jsonl", "checkpoint_every": 3},
        "auth": {"mode": "oidc", "issuer": "http://127.0.0.1:9", "audience": "warden"},
    }
    (tmp_path / "outside").mkdir()
    gw = GatewayProcess(tmp_path, dict(os.environ), config)
    try:
        gw.start()
        for _ in range(4):  # junk tokens: refusals are audited (auth.failure)
            assert httpx.post(gw.url + "/v1/cells", json={"connection": "dk", "sql": "SELECT 1"}, headers={"authorization": "Bearer junk"}).status_code == 401
        assert gw.stop() in (0, -15)
        yield gw
    finally:
        gw.kill()


def test_documented_key_export_verifies_a_real_gateway_store(stopped_gateway: GatewayProcess) -> None:
    work = stopped_gateway.workdir
    key = run("audit", "public-key", "--config", "gateway.yaml", cwd=work)
    assert key.returncode == 0, key.stderr
    (work / "audit.pub").write_text(key.stdout)
    secret = (work / "state" / "secret.key").read_bytes()
    assert key.stdout == public_key_pem(derive_signing_key(secret)), "the gateway's key, derived in one place"
    kid = key_id(derive_signing_key(secret))
    assert f"key id {kid}" in key.stderr

    cps = read_checkpoint_file(work / "outside" / "checkpoints.jsonl")
    assert cps and all(c.key_id == kid for c in cps), "every checkpoint names its key"
    assert cps[-1].mark == "close", "SIGTERM closes the chain with a signed close checkpoint"
    assert stat.S_IMODE((work / "outside" / "checkpoints.jsonl").stat().st_mode) == 0o600

    store = f"duckdb://{work / 'state' / 'audit.duckdb'}"
    out = run("audit", "verify", "--strict", "--public-key", "audit.pub", "--store", store, "--checkpoints", "outside/checkpoints.jsonl", cwd=work)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "OK" in out.stdout.splitlines()[0] and f"signatures verified with key {kid}" in out.stdout, out.stdout
    assert "(closed cleanly), 0 unsealed" in out.stdout, out.stdout

    # The key of the older derivation (HKDF of the raw secret) is not the gateway's.
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    seed = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"warden-audit-checkpoint-signing-key-v1").derive(secret.strip())
    (work / "wrong.pub").write_text(public_key_pem(Ed25519PrivateKey.from_private_bytes(seed)))
    bad = run("audit", "verify", "--public-key", "wrong.pub", "--store", store, cwd=work)
    assert bad.returncode == 1 and "bad_signature" in bad.stdout, bad.stdout


@pytest.fixture
def local_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    # Short runtime path: the local gateway's unix socket (108-byte limit).
    base = Path(os.environ.get("TMPDIR", "/tmp")) / f"wav-{os.getpid()}"
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
        import shutil

        shutil.rmtree(base, ignore_errors=True)


def _wait_gone(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise AssertionError(f"gateway {pid} did not stop within {timeout}s")


def readme_local_verify() -> list[str]:
    """The shell commands of the README's local verify block, continuation lines joined."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- local-verify:[^>]*-->\s*```bash\n(.*?)```", text, re.S)
    assert block, "README.md lost its local-verify block"
    return [line.strip() for line in block.group(1).replace("\\\n", " ").splitlines() if line.strip()]


def test_local_mode_readme_commands_verify_the_local_gateway(local_env: dict[str, str], tmp_path: Path) -> None:
    # Start the real local gateway the way a kernel does, run a cell, stop it by pid.
    starter = (
        "from warden.gateway.local import ensure_local_gateway\n"
        "from warden.gateway.client import GatewayClient, GatewayError\n"
        "gw = ensure_local_gateway()\n"
        "with GatewayClient('http://warden', token=gw.token, transport=gw.transport()) as c:\n"
        "    try:\n"
        "        c.run('demo', 'SELECT count(*) FROM customers')\n"
        "    except GatewayError:\n"  # a denial is audited too; the store is what matters here
        "        pass\n"
    )
    started = subprocess.run([sys.executable, "-c", starter], env=local_env, capture_output=True, text=True, timeout=180, check=False)
    assert started.returncode == 0, started.stderr
    pid = int((Path(local_env["JUPYTER_RUNTIME_DIR"]) / "warden" / "gateway.pid").read_text())
    os.kill(pid, signal.SIGTERM)
    _wait_gone(pid, 30)

    state = Path(local_env["XDG_DATA_HOME"]) / "warden" / "state"
    assert stat.S_IMODE((state / "checkpoints.jsonl").stat().st_mode) == 0o600
    work = tmp_path / "auditor"
    work.mkdir()
    (work / ".venv").symlink_to(ROOT / ".venv")  # the README's commands are relative to the checkout
    commands = readme_local_verify()
    assert any("public-key" in c for c in commands) and any("--checkpoints" in c and "--strict" in c for c in commands)
    for command in commands:
        done = subprocess.run(["bash", "-c", command], cwd=work, env=local_env, capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
    assert "OK" in done.stdout.splitlines()[0] and "signatures verified" in done.stdout, done.stdout

    # The same commands catch a record appended to the stopped store.
    import duckdb

    con = duckdb.connect(str(state / "audit.duckdb"))
    con.execute("INSERT INTO audit_events SELECT * REPLACE (seq + 1 AS seq) FROM audit_events ORDER BY seq DESC LIMIT 1")
    con.close()
    done = subprocess.run(["bash", "-c", commands[-1]], cwd=work, env=local_env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1 and "unsealed" in done.stdout, done.stdout


def test_public_key_from_a_replica_config_needs_only_the_secret(tmp_path: Path) -> None:
    # A PostgreSQL replica's config names its store through an environment variable the
    # auditor's shell does not have; the key comes from secret_file alone.
    (tmp_path / "conf").mkdir()
    config = {"gateway_id": "gw-2", "policy": "policy.yaml", "secret_file": "../keys/gw.secret",
              "audit": {"store_env": "WARDEN_TEST_UNSET_DSN"},
              "auth": {"mode": "oidc", "issuer": "http://127.0.0.1:9", "audience": "warden"}}  # fmt: skip
    (tmp_path / "conf" / "gateway.yaml").write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if k != "WARDEN_TEST_UNSET_DSN"}
    missing = run("audit", "public-key", "--config", "conf/gateway.yaml", cwd=tmp_path, env=env)
    assert missing.returncode == 2 and "does not exist" in missing.stderr, missing.stderr
    assert not (tmp_path / "keys").exists(), "public-key never creates a secret"
    (tmp_path / "keys").mkdir()
    secret = os.urandom(32)
    (tmp_path / "keys" / "gw.secret").write_bytes(secret)
    out = run("audit", "public-key", "--config", "conf/gateway.yaml", cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout == public_key_pem(derive_signing_key(secret))
