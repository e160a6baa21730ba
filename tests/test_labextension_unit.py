"""The labextension's jest tests (labextension/test/*.test.ts: status bar, approvals panel,
timeline and markers rendered in jsdom), run from the test command; plus the server
extension's pure parts."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from warden.server import _jupyter_labextension_paths, _jupyter_server_extension_points
from warden.server.handlers import find_session, timeline_row

ROOT = Path(__file__).resolve().parent.parent
EXT = ROOT / "labextension"


def test_jest_unit_tests() -> None:
    jest = EXT / "node_modules" / ".bin" / "jest"
    if not jest.exists():
        if shutil.which("npm") is None:
            pytest.skip("node and npm are missing (scripts/install-system-deps.sh installs them)")
        pytest.fail("labextension/node_modules is missing: run scripts/bootstrap.sh")
    run = subprocess.run([str(jest), "--ci", "--silent"], cwd=EXT, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "failed" not in run.stderr.split("Tests:")[-1].split("\n")[0], run.stderr


def test_extension_points_and_build_output() -> None:
    assert _jupyter_server_extension_points() == [{"module": "warden.server"}]
    (path,) = _jupyter_labextension_paths()
    built = ROOT / "kernel" / "warden" / path["src"] / "package.json"
    if built.exists():  # scripts/bootstrap.sh builds it
        meta = json.loads(built.read_text())
        assert meta["name"] == path["dest"] == "jupyterlab-warden"
        assert meta["jupyterlab"]["_build"]["load"].startswith("static/remoteEntry.")
    config = json.loads((ROOT / "jupyter-config" / "jupyter_server_config.d" / "warden.json").read_text())
    assert config["ServerApp"]["jpserver_extensions"] == {"warden.server": True}


def test_timeline_rows_keep_only_what_the_panel_shows() -> None:
    row = timeline_row({"event_id": "e", "type": "query.executed", "objects": [{"t": "x"}], "lineage": {}, "masks": '[{"column": "email"}]'})
    assert row["masks"] == [{"column": "email"}]
    assert "objects" not in row and "lineage" not in row
    assert timeline_row({"masks": "not json"})["masks"] is None


class _Resp:
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status_code, self._body = status, body

    def json(self) -> dict[str, Any]:
        return self._body


class _Client:
    def __init__(self, events: list[dict[str, Any]], status: int = 200) -> None:
        self.events, self.status = events, status
        self.params: dict[str, Any] = {}

    @property
    def http(self) -> _Client:
        return self

    def request(self, method: str, path: str, **kwargs: Any) -> _Resp:
        self.params = kwargs.get("params", {})
        return _Resp(self.status, {"events": self.events})


def test_find_session_takes_the_newest_start_of_that_kernel() -> None:
    client = _Client([
        {"type": "session.start", "kernel_id": "k2", "session_id": "s3"},
        {"type": "session.start", "kernel_id": "k1", "session_id": "s2"},  # after a restart
        {"type": "session.start", "kernel_id": "k1", "session_id": "s1"},
    ])  # fmt: skip
    assert find_session(client, "k1") == "s2"  # type: ignore[arg-type]
    assert client.params == {"type": "session.start", "limit": "200"}
    assert find_session(client, "nope") == ""  # type: ignore[arg-type]
