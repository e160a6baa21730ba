"""Local mode: the OS user is analyst and auditor of their own log, and says so. A real
warden kernel under nbclient starts its own gateway (unix socket, demo data) and reads
that gateway's live log through %%sql audit while it runs."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient


@pytest.fixture
def local_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    from warden.kernel.install import install_kernelspec

    # Short paths: the gateway's unix socket lives under the runtime dir (108-byte limit).
    base = Path(os.environ.get("TMPDIR", "/tmp")) / f"wal-{os.getpid()}"
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
        shutil.rmtree(base, ignore_errors=True)


def test_local_user_is_the_auditor_of_their_own_log(local_mode: Path, tmp_path: Path) -> None:
    cells = [
        "%warden whoami",
        "%%sql demo\nSELECT name, email FROM customers LIMIT 3",
        "%%sql audit mine <<\nSELECT subject, connection, action, outcome, \"rows\", sql FROM queries ORDER BY event_time",
        "print(json.dumps(mine.to_dict('records'), default=str))",
        "%%sql audit --no-raise\nDELETE FROM events",
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import json"), *(nbformat.v4.new_code_cell(c) for c in cells)],
                                  metadata={"kernelspec": {"name": "warden", "display_name": "warden", "language": "python"}})  # fmt: skip
    NotebookClient(nb, kernel_name="warden", timeout=120, startup_timeout=60, resources={"metadata": {"path": str(tmp_path)}}).execute()
    outs = [[o for o in c.outputs] for c in nb.cells]
    assert not [o for cell in outs for o in cell if o["output_type"] == "error"]
    whoami = json.dumps(outs[1])
    assert "auditor" in whoami and "your own log: local mode" in whoami and "you are also the auditor" in whoami
    printed = "".join(o.get("text", "") for o in outs[4])
    rows = json.loads(printed)
    me = os.environ.get("USER") or rows[0]["subject"]
    assert {"subject": me, "connection": "demo", "action": "mask", "outcome": "success", "rows": 3} == {k: rows[-1][k] for k in ("subject", "connection", "action", "outcome", "rows")}
    assert "audit/read-only" in json.dumps(outs[5])  # still analysed: writes are denied
