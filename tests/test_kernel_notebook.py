"""notebooks/quickstart.ipynb executes under nbclient with the warden kernel, in local mode
(the kernel starts its own gateway on a unix socket with the demo data)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "quickstart.ipynb"


@pytest.fixture
def local_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    from warden.kernel.install import install_kernelspec

    # Short paths: the gateway's unix socket lives under the runtime dir (108-byte limit).
    base = Path(os.environ.get("TMPDIR", "/tmp")) / f"wqs-{os.getpid()}"
    base.mkdir(parents=True, exist_ok=True)
    install_kernelspec(prefix=str(tmp_path / "prefix"))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "prefix" / "share" / "jupyter"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(base / "rt"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    for key in [k for k in os.environ if k.startswith("WARDEN_")]:
        monkeypatch.delenv(key)
    try:
        yield base / "rt" / "warden"
    finally:
        pid_file = base / "rt" / "warden" / "gateway.pid"
        if pid_file.exists():
            pid = int(pid_file.read_text())
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    os.kill(pid, 0)
                    time.sleep(0.1)
                os.kill(pid, signal.SIGKILL)
        import shutil

        shutil.rmtree(base, ignore_errors=True)


def test_quickstart_runs_under_nbclient(local_mode: Path) -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(nb, kernel_name="warden", timeout=120, startup_timeout=60, resources={"metadata": {"path": str(ROOT / "notebooks")}})
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    errors = [o for o in outputs if o.output_type == "error"]
    assert not errors, errors
    text = json.dumps(outputs)
    assert "mode=local" in text or "local" in text
    assert "warden-masked" in text  # masked columns marked
    assert "held for approval" in text.lower() and "re-run this cell" in text and "%warden approve apr_" in text
    assert "self-approval (local mode): checking one customer" in text  # approved by its requester, as local mode allows
    assert "Your SQL has an error" in text and "did you mean `name`?" in text and "^^^" in text
    assert "The policy does not allow this" in text and "deny_tables" in text
    assert "sk-demo-0000000000000000" not in text  # the secret never shows
    assert (local_mode / "gateway.sock").exists()
