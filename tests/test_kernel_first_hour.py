"""The analyst's first hour (issue 12), through a real kernel and a real gateway.

Shared mode (the OIDC gateway of tests/test_kernel.py, real PostgreSQL): a typo is an
SQL error with a caret, not a policy denial; a parse error is said once; a denial says
"nothing ran" once; a held cell returns at once with one box; self-approval is refused.
Local mode (the kernel starts its own gateway with the demo data): detector masks are
marked like lineage masks, a ``year`` mask shows the year, a held cell can be approved
by its own requester (recorded as a self-approval), a provably empty query is not held.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from test_kernel import Kernel, all_text, analyst, gateway, issuer, kernel_env, kernelspec, pg_data  # noqa: F401 - fixtures

Outputs = list[tuple[str, dict[str, Any]]]


def _shown(outputs: Outputs) -> str:
    """What the notebook shows: display data and the traceback (evalue is not rendered)."""
    parts = [v for t, c in outputs if t in ("display_data", "execute_result", "stream") for v in [c.get("text", ""), *(c.get("data") or {}).values()]]
    parts += [line for t, c in outputs if t == "error" for line in c["traceback"]]
    return "\n".join(str(p) for p in parts)


# -- shared mode: mistakes and denials --------------------------------------------------------


def test_misspelt_column_is_an_sql_error_with_a_suggestion_and_a_caret(analyst: Kernel) -> None:  # noqa: F811
    reply, outputs = analyst.run("%%sql pg\nSELECT id, nme FROM customers")
    assert reply["status"] == "error" and reply["ename"] == "SqlError", reply
    text = reply["evalue"]
    assert "your SQL has an error" in text and "did you mean `name`?" in text
    assert "polic" not in text.lower() and "denied" not in text.lower()  # a mistake, not a denial
    lines = text.splitlines()
    excerpt = next(i for i, ln in enumerate(lines) if ln.startswith("line 1: "))
    caret = lines[excerpt + 1]
    # The caret sits exactly under `nme` in the excerpt line.
    assert lines[excerpt][caret.index("^") : caret.index("^") + 3] == "nme" and caret.strip() == "^^^"
    assert _shown(outputs).count("your SQL has an error") == 1  # the traceback, once


def test_parse_error_is_said_once_with_line_column_and_caret(analyst: Kernel) -> None:  # noqa: F811
    reply, _ = analyst.run("%%sql pg\nSELECT 1;\nSELECT id FROM customers WHERE (id > 1")
    assert reply["ename"] == "SqlError", reply
    text = reply["evalue"]
    assert text.count("could not parse") == 1 and "(line 2, column" in text
    assert "none of your roles" not in text and "other statements" not in text  # a consequence, not news
    assert re.search(r"^line 2: SELECT id FROM customers WHERE \(id > 1\n\s+\^$", text, re.M), text
    reply, _ = analyst.run("%%sql pg\nSELEC id FROM customers")
    assert reply["ename"] == "SqlError" and "`SELEC` does not start an SQL statement; did you mean `SELECT`?" in reply["evalue"]
    assert "line 1: SELEC id FROM customers\n        ^^^^^" in reply["evalue"]


def test_misspelt_table_is_said_once(analyst: Kernel) -> None:  # noqa: F811
    reply, _ = analyst.run("%%sql pg\nSELECT * FROM custmers")
    assert reply["ename"] == "SqlError", reply
    assert "did you mean `customers`?" in reply["evalue"] and "cannot expand" not in reply["evalue"]


def test_a_policy_denial_is_a_denial_said_once(analyst: Kernel) -> None:  # noqa: F811
    reply, outputs = analyst.run("%%sql pg\nSELECT token FROM secrets")
    assert reply["ename"] == "Denied" and "role:analyst/deny_tables[0]" in reply["evalue"]
    assert reply["evalue"].lower().count("nothing ran") == 1 and reply["evalue"].lower().count("denied by") == 0
    reply, outputs = analyst.run("%%sql pg --no-raise\nSELECT token FROM secrets")
    box = [c["data"]["text/plain"] for t, c in outputs if t == "display_data"]
    assert reply["status"] == "ok" and len(box) == 1 and box[0].lower().count("nothing ran") == 1


def test_held_cell_returns_at_once_with_one_box(analyst: Kernel) -> None:  # noqa: F811
    started = time.monotonic()
    reply, outputs = analyst.run("%%sql pg\nSELECT name FROM customers WHERE ssn = '111-11-1111'")
    took = time.monotonic() - started
    assert reply["ename"] == "Held" and took < 15, (reply, took)  # no silent minute of blocking
    boxes = [c["data"]["text/plain"] for t, c in outputs if t in ("display_data", "update_display_data")]
    assert len(boxes) == 1 and "to continue: ask an approver" in boxes[0] and "re-run this cell" in boxes[0]
    assert re.search(r"expires in \d+ min \(\d\d:\d\d UTC\)", boxes[0]), boxes[0]  # relative, no microseconds
    assert "re-run" not in reply["evalue"] and "above" in reply["evalue"]  # the red line does not repeat the box
    aid = re.search(r"apr_\w+", boxes[0]).group(0)  # type: ignore[union-attr]
    # A shared gateway never lets the requester approve their own request.
    reply, _ = analyst.run(f'%warden approve {aid} --reason "mine"')
    assert reply["status"] == "error" and "not an approver" in reply["evalue"] and "local mode" not in reply["evalue"]


def test_warden_tables_have_headers_and_plain_results_have_no_footer(analyst: Kernel) -> None:  # noqa: F811
    reply, outputs = analyst.run("%warden approvals")
    assert reply["status"] == "ok"
    result = next(c for t, c in outputs if t == "execute_result")["data"]
    assert "<thead><tr><th" in result["text/html"] and ">status</th>" in result["text/html"] and "text-align:right" not in result["text/html"]
    assert result["text/plain"].splitlines()[1].split()[:3] == ["id", "status", "requester"]
    reply, outputs = analyst.run("%%sql pg\nSELECT id, email FROM customers ORDER BY id")
    result = next(c for t, c in outputs if t == "execute_result")["data"]
    assert "2 rows" in result["text/html"] and "audit event" in result["text/html"]
    text = result["text/plain"]
    assert "rows" not in text and "audit event" not in text and "masked by" not in text and text.splitlines()[0].split() == ["id", "email*"]


# -- local mode -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local(kernelspec: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kernel]:  # noqa: F811
    base = Path(os.environ.get("TMPDIR", "/tmp")) / f"wfh-{os.getpid()}"  # short: the socket path limit
    base.mkdir(parents=True, exist_ok=True)
    data = tmp_path_factory.mktemp("fhdata")
    k = Kernel(kernelspec, kernel_env(JUPYTER_RUNTIME_DIR=str(base / "rt"), XDG_DATA_HOME=str(data), JUPYTER_PATH=os.environ["JUPYTER_PATH"]))
    try:
        yield k
    finally:
        k.stop()
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


def test_detector_masks_are_marked_like_lineage_masks_and_year_shows_the_year(local: Kernel) -> None:
    reply, outputs = local.run("%%sql demo\nSELECT id, notes, birth_date FROM customers WHERE notes LIKE 'alt contact%' ORDER BY id LIMIT 3")
    assert reply["status"] == "ok", reply
    data = next(c for t, c in outputs if t == "execute_result")["data"]
    html, text = data["text/html"], data["text/plain"]
    info = local.eval_json("_.attrs['warden']")
    assert set(info["masked"]) == {"notes", "birth_date"} and info["detectors"], info
    assert info["masked"]["notes"]["detectors"] == ["email"] and info["masked"]["notes"]["rows"] == 3
    # The same header mark for both: a text badge (no emoji font needed), not a lock glyph.
    assert html.count('class="warden-masked"') == 2 and html.count(">masked</span>") == 2 and "\N{LOCK}" not in html
    assert "content detector email" in html and "[email]" in html
    assert text.splitlines()[0].split() == ["id", "notes*", "birth_date*"]
    years = re.findall(r"<td[^>]*>(\d{4}(?:-\d\d-\d\d)?)</td>", html)
    assert len(years) == 3 and all(re.fullmatch(r"19\d\d", y) for y in years), years  # 1973, not 1973-01-01


def test_domain_aggregate_is_not_held(local: Kernel) -> None:
    # Its grouping key is an output, masked: grouping reveals no more than selecting it.
    reply, outputs = local.run("%%sql demo\nSELECT split_part(email, '@', 2) AS domain, count(*) AS n FROM customers GROUP BY 1")
    assert reply["status"] == "ok", reply
    assert "Held" not in _shown(outputs)
    assert "domain" in local.eval_json("_.attrs['warden']['masked']")


def test_local_self_approval_then_rerun(local: Kernel) -> None:
    cell = "%%sql demo\nSELECT count(*) AS n FROM customers WHERE ssn LIKE '1%'"
    reply, outputs = local.run(cell)
    assert reply["ename"] == "Held", reply
    box = next(c["data"]["text/plain"] for t, c in outputs if t == "display_data")
    found = re.search(r'%warden approve (apr_\w+) --reason "why"', box)
    assert found and "you may approve your own request" in box, box
    aid = found.group(1)
    reply, outputs = local.run(f'%warden approve {aid} --reason "checking the SSN import"')
    assert reply["status"] == "ok", reply
    decided = local.eval_json("_.data")
    assert decided["status"] == "approved" and decided["decided_by"] == decided["requester"]
    assert decided["decision_reason"] == "self-approval (local mode): checking the SSN import"
    reply, outputs = local.run(cell)  # the re-run finds the approved request
    assert reply["status"] == "ok", reply
    assert local.eval_json("_.attrs['warden']['approval_id']") == aid
    reply, _ = local.run('%warden approve apr_nope --reason ""')
    assert reply["status"] == "error" and "usage: %warden approve ID" in reply["evalue"]


def test_provably_empty_query_is_not_held(local: Kernel) -> None:
    for sql in ("SELECT * FROM orders WHERE id < 0", "SELECT * FROM orders LIMIT 0"):
        reply, outputs = local.run(f"%%sql demo\n{sql}")
        assert reply["status"] == "ok", (sql, reply)
        assert "Held" not in _shown(outputs)
        assert local.eval_json("len(_)") == 0


def test_a_query_that_does_not_bind_fails_instead_of_being_held(local: Kernel) -> None:
    # No estimate because DuckDB cannot bind it: an approver would only approve an error.
    reply, outputs = local.run("%%sql demo\nSELECT region, sum(amount) AS total FROM orders")
    assert reply["status"] == "error" and reply["ename"] == "QueryFailed", reply
    assert "GROUP BY" in reply["evalue"] and "Held" not in _shown(outputs)
