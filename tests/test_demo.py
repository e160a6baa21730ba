"""The demo (what the README's run command runs) shows masked data, never the raw values."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from warden.demo import run_demo


def test_demo_masks_what_it_shows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_demo(str(tmp_path)) == 0
    out = capsys.readouterr().out
    con = duckdb.connect(str(tmp_path / "demo.duckdb"), read_only=True)
    raw = con.execute("SELECT email, ssn, notes FROM customers ORDER BY id LIMIT 8").fetchall()
    con.close()
    assert "MASK" in out and "HOLD" in out and "DENY" in out
    for email, ssn, notes in raw:
        assert email not in out
        assert ssn not in out
        if "@" in notes:
            assert notes.split()[-1] not in out
    assert "sk-demo-0000000000000000" not in out
