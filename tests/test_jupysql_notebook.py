"""notebooks/jupysql/compose.ipynb — JupySQL's "Organizing Large Queries" page with only its
connection line changed (and its data mapped to warden's demo tables) — runs end to end
under nbclient on the warden kernel, in local mode (the kernel starts its own gateway)."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from test_kernel_notebook import ROOT, local_mode  # noqa: F401 - the fixture

NOTEBOOK = ROOT / "notebooks" / "jupysql" / "compose.ipynb"


def _results(cell: nbformat.NotebookNode) -> list[str]:
    return [o["data"].get("text/plain", "") for o in cell.get("outputs", []) if o.output_type == "execute_result"]


def test_jupysql_compose_notebook_runs_unchanged_but_for_the_connection(local_mode: Path) -> None:  # noqa: F811 - the fixture
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    # JupySQL's cells, as written (only the connection line names a warden connection)
    assert code[0].source == "%load_ext sql" and code[2].source.startswith("%%sql demo\n")
    assert sum("demo" in c.source for c in code) == 1
    client = NotebookClient(nb, kernel_name="warden", timeout=120, startup_timeout=60,
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}})  # fmt: skip
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    errors = [o for o in outputs if o.output_type == "error"]
    assert not errors, errors
    text = json.dumps(outputs)
    assert "warden's, already loaded" in text  # %load_ext sql said what it did
    # autolimit = 3: three rows came from the gateway (a header line and three rows)
    assert len(_results(code[2])[0].splitlines()) == 2 + 3, _results(code[2])  # header, rule, rows
    # the e-mail column is masked by the gateway, through the saved snippets too
    joined = _results(code[3])[0]
    assert "email*" in joined and "****@example.com" in joined
    # --with / --save composed the query that the gateway ran; .bar() drew it
    assert any("image/png" in o.get("data", {}) for o in code[7].outputs), "the bar chart"
    rendered = "".join(o.get("text", "") for o in code[8].outputs if o.output_type == "stream")
    assert rendered.startswith("WITH ") and all(f"{n} AS (" in rendered for n in ("orders_with_info", "orders_fav", "order_fav"))
    # `%%sql $final` ran the rendered query: the same rows as top_customer
    assert _results(code[9])[0].splitlines()[0].split()[:1] == ["customer"]
    assert len(_results(code[9])[0].splitlines()) == 2 + 3
