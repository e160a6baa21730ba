"""The CLI (issue 12, item 11): lazy imports, the engine's names for unaliased outputs,
no traceback when the reader of a pipe goes away."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
POLICY = ROOT / "notebooks" / "policy.example.yaml"


def _catalog(tmp_path: Path) -> Path:
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps({"tables": {"public.customers": ["id", "name", "email"]}}))
    return path


def test_version_imports_neither_the_engine_nor_sqlglot() -> None:
    # --version exits through SystemExit: the modules are listed by an atexit hook.
    script = "import atexit, sys, json\natexit.register(lambda: print(json.dumps(sorted(m for m in sys.modules if m.startswith(('sqlglot', 'warden.policy', 'warden.masking', 'warden.sql'))))))\nfrom warden.cli import main\nmain(['--version'])"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert out.stdout.startswith("warden "), out
    assert json.loads(out.stdout.splitlines()[-1]) == []


def test_explain_names_unaliased_outputs_like_the_engine(tmp_path: Path) -> None:
    sql = "SELECT count(*), 1, upper(name), id::text, CASE WHEN id > 1 THEN 1 END, id + 1, email AS e, id FROM customers GROUP BY name, id, email"
    out = subprocess.run(
        [sys.executable, "-m", "warden.cli", "explain", "--policy", str(POLICY), "--user", "ana", "--groups", "analysts",
         "--attr", "region=emea", "--connection", "warehouse", "--catalog", str(_catalog(tmp_path)), "--json", sql],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode in (0, 1), out.stderr
    names = [o["name"] for o in json.loads(out.stdout)["statements"][0]["outputs"]]
    # What PostgreSQL itself calls them (FigureColname), never sqlglot's _col_N.
    assert names == ["count", "?column?", "upper", "id", "case", "?column?", "e", "id"]
    assert not any(n.startswith("_col_") for n in names)


def test_duckdb_names_are_its_expression_text() -> None:
    from warden.cli import engine_output_names

    names = engine_output_names("SELECT count(*), 1, upper(name), id + 1, x AS y FROM t", "duckdb")
    assert names == {(0, 0): "count_star()", (0, 1): "1", (0, 2): "upper(name)", (0, 3): "(id + 1)"}


def test_a_closed_pipe_is_no_traceback(tmp_path: Path) -> None:
    # Enough output to overflow a pipe buffer after the reader is gone.
    sql = ";\n".join(f"SELECT id, name AS n{i} FROM customers" for i in range(400))
    proc = subprocess.Popen(
        [sys.executable, "-m", "warden.cli", "explain", "--policy", str(POLICY), "--user", "ana", "--groups", "analysts",
         "--attr", "region=emea", "--connection", "warehouse", "--catalog", str(_catalog(tmp_path)), "--json", sql],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()  # like `| head -1`
    proc.stdout.close()
    err = proc.stderr.read().decode()
    code = proc.wait(timeout=120)
    assert first.strip() == b"{"
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert code == 141
