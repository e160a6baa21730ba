"""Result display: escaped HTML with masked columns marked, and a plain-text form."""

from __future__ import annotations

import html.parser
import json
from typing import Any

import pyarrow as pa
import pytest

from warden.gateway.client import CellResult, StatementResult
from warden.magic import display as show
from warden.magic import formatters
from warden.magic.results import info_of, statement_info, to_output

HOSTILE = [
    "<script>alert(1)</script>",
    '<img src=x onerror="alert(2)">',
    "\"><svg onload=alert(3)>",
    "&lt;b&gt;already escaped&lt;/b&gt;",
    "\x1b[31mred\x1b[0m",
]


class _Tags(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs.extend(attrs)


def _cell(table: pa.Table, masks: list[dict[str, Any]], *, truncated: bool = False) -> tuple[CellResult, StatementResult]:
    st = StatementResult(0, "select", table, masks, rows=table.num_rows, truncated=truncated)
    header = {"action": "mask" if masks else "allow", "rule_ids": ["role:analyst/masks"], "event_id": "ev_1", "query_id": "q_1"}
    return CellResult(header, [st], {"status": "ok", "event_id": "ev_2"}), st


def _info(table: pa.Table, masks: list[dict[str, Any]], **kw: Any) -> dict[str, Any]:
    cell, st = _cell(table, masks, **kw)
    return statement_info(cell, st, {}, connection="demo", cell_run_id="run-1")


MASKS = [{"position": 1, "column": "email", "operator": "email", "classifications": ["pii.email"], "rules": ["role:analyst/masks"]}]


def test_html_escapes_every_value_and_name() -> None:
    table = pa.table({"id": list(range(len(HOSTILE))), "email": ["****@x.example"] * len(HOSTILE), "<b>note</b>": HOSTILE})
    df = to_output(table, _info(table, MASKS), "pandas")
    markup = formatters.frame_html(df)
    assert markup is not None
    parser = _Tags()
    parser.feed(markup)
    assert set(parser.tags) <= {"div", "table", "thead", "tbody", "tr", "th", "td", "b", "span"}  # span: the mask badge
    assert "script" not in parser.tags and "img" not in parser.tags and "svg" not in parser.tags
    assert not any(name.startswith("on") for name, _ in parser.attrs)
    assert "&lt;script&gt;" in markup and "&lt;img src=x onerror=&quot;alert(2)&quot;&gt;" in markup
    assert "&amp;lt;b&amp;gt;" in markup  # escaped once more: shown as typed
    assert "&lt;b&gt;note&lt;/b&gt;" in markup


def test_masked_columns_are_marked_with_operator_and_rule() -> None:
    table = pa.table({"id": [1, 2], "email": ["****@a.example", "****@b.example"]})
    info = _info(table, MASKS)
    df = to_output(table, info, "pandas")
    assert df.attrs["warden"]["masked"]["email"]["operator"] == "email"
    assert df.attrs["warden"]["masked"]["email"]["rules"] == ["role:analyst/masks"]
    assert df.attrs["warden"]["event_id"] == "ev_1" and df.attrs["warden"]["completion_event_id"] == "ev_2"
    markup = formatters.frame_html(df)
    assert markup is not None
    assert 'class="warden-masked"' in markup and "role:analyst/masks" in markup and "pii.email" in markup
    assert "2 rows" in markup and "audit event ev_1" in markup


def test_row_count_display_limit_and_truncation() -> None:
    table = pa.table({"id": list(range(50))})
    info = _info(table, [], truncated=True)
    columns, rows = show.table_rows(table, 10)
    markup = show.render_table_html(columns, rows, total_rows=50, info=info)
    assert "50 rows" in markup and "showing first 10" in markup and "truncated by the gateway" in markup
    assert markup.count("<tr>") == 11
    text = show.render_table_text(columns, rows, total_rows=50, info=info)
    # The plain text has no footer: it would read like a row of data (issue 12, item 8).
    assert "50 rows" not in text and "truncated" not in text and text.splitlines()[-1] == "9"


def test_plain_text_neutralises_control_sequences_and_stars_masked_columns() -> None:
    table = pa.table({"id": [1], "email": ["\x1b[2J\x1b[31mgotcha"]})
    df = to_output(table, _info(table, MASKS), "pandas")

    class P:
        out = ""

        def text(self, s: str) -> None:
            self.out += s

    p = P()
    formatters.frame_text(df, p, False)
    assert "\x1b" not in p.out and "\\x1b[2J" in p.out
    assert "email*" in p.out and "masked by the gateway" not in p.out


def test_frames_without_warden_info_keep_their_own_display() -> None:
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"a": [1]})
    assert formatters.frame_html(df) == df._repr_html_()
    assert formatters.table_html(pa.table({"a": [1]})) is None


def test_arrow_and_polars_outputs() -> None:
    table = pa.table({"id": [1], "email": ["****@a.example"]})
    info = _info(table, MASKS)
    arrow = to_output(table, info, "arrow")
    assert isinstance(arrow, pa.Table)
    assert json.loads(arrow.schema.metadata[b"warden"])["masked"]["email"]["operator"] == "email"
    assert info_of(arrow) == json.loads(json.dumps(info))
    markup = formatters.table_html(arrow)
    assert markup is not None and "warden-masked" in markup
    pl = pytest.importorskip("polars")
    frame = to_output(table, info, "polars")
    assert isinstance(frame, pl.DataFrame) and frame.shape == (1, 2)


def test_values_render_sql_style() -> None:
    assert show.cell_text(None) == "NULL"
    assert show.cell_text(float("nan")) == "NULL"
    assert show.cell_text("x" * 500).endswith("…") and len(show.cell_text("x" * 500)) == show.MAX_CELL_CHARS
    assert show.cell_text(b"\x00\x01") == "\\x0001"


def test_messages_are_escaped() -> None:
    body = {
        "approval": {"id": "apr_<1>", "reasons": ["<script>x</script> in WHERE"], "rule_ids": ["r1"], "expires_at": "2026"},
        "approvers": {"groups": ["data-owners"]},
    }
    bundle = show.message_bundle("Held", show.held_lines(body, waited=3, wait=10, status="pending"), kind="held")
    assert "<script>" not in bundle["text/html"] and "&lt;script&gt;" in bundle["text/html"]
    assert "group data-owners" in bundle["text/plain"] and "apr_<1>" in bundle["text/plain"]
    assert "waiting 3 of 10 s" in bundle["text/plain"]


def test_detector_findings_count_as_masked_columns() -> None:
    table = pa.table({"notes": ["call [phone]"]})
    cell, st = _cell(table, [])
    info = statement_info(cell, st, {"detectors": [{"statement": 0, "column": "notes", "detector": "phone", "rows": 1}]}, connection="demo")
    assert info["masked"]["notes"]["detector"] == "phone"


def test_a_frame_changed_in_place_is_drawn_anew() -> None:
    """Within one display both mime types read the rows once; a later display of the same
    frame, changed in place, shows the new values (the rows are never reused across calls)."""
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    formatters.register(shell)
    formatters.register(shell)  # idempotent
    table = pa.table({"id": [1, 2], "email": ["****@a.example", "****@b.example"]})
    df = to_output(table, _info(table, MASKS), "pandas")
    calls: list[int] = []
    real = show.frame_rows

    def counting(frame: Any, limit: int) -> Any:
        calls.append(1)
        return real(frame, limit)

    show.frame_rows = counting  # type: ignore[assignment]
    try:
        data, _ = shell.display_formatter.format(df)
        assert "****@a.example" in data["text/html"] and "****@a.example" in data["text/plain"]
        assert len(calls) == 1  # one read for both mime types
        df.loc[0, "email"] = "changed@c.example"
        data, _ = shell.display_formatter.format(df)
        assert "changed@c.example" in data["text/html"] and "changed@c.example" in data["text/plain"]
        assert len(calls) == 2
    finally:
        show.frame_rows = real  # type: ignore[assignment]
        InteractiveShell.clear_instance()


def test_a_warden_frame_is_drawn_directly_as_ipython_would_draw_it() -> None:
    """The short cut past IPython's dozen formatters gives the very bundle IPython's own
    route gives; it steps aside when something else would draw frames (a printer of the
    user's for DataFrame, pandas' table-schema repr), and for frames without warden info."""
    import pandas as pd
    from IPython.core.formatters import DisplayFormatter
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    formatters.register(shell)
    display = shell.display_formatter
    table = pa.table({"id": [1, 2], "email": ["****@a.example", "****@b.example"], "note": ["<b>x</b>", None]})
    df = to_output(table, _info(table, MASKS), "pandas")
    try:
        direct = display.format(df)
        assert formatters._direct_format(display, df, None, None) is not None  # the short cut was taken
        assert direct == DisplayFormatter.format(display, df)  # IPython's own route, formatter by formatter
        assert set(direct[0]) == {"text/plain", "text/html"} and "&lt;b&gt;" in direct[0]["text/html"]
        assert display.format(df, include={"text/plain"})[0].keys() == {"text/plain"}
        assert display.format(df, exclude={"text/html"})[0].keys() == {"text/plain"}

        plain = pd.DataFrame({"a": [1]})
        assert formatters._direct_format(display, plain, None, None) is None  # not a warden result
        with pd.option_context("display.html.table_schema", True):
            assert formatters._direct_format(display, df, None, None) is None
            assert "application/vnd.dataresource+json" in display.format(df)[0]
        latex = display.formatters["text/latex"]
        latex.for_type(pd.DataFrame, lambda frame: "\\begin{tabular}\\end{tabular}")
        try:
            assert formatters._direct_format(display, df, None, None) is None
            assert display.format(df)[0]["text/latex"].startswith("\\begin{tabular}")
        finally:
            latex.pop(pd.DataFrame)
    finally:
        InteractiveShell.clear_instance()


def test_a_sql_result_set_is_drawn_directly_too() -> None:
    from IPython.core.formatters import DisplayFormatter
    from IPython.core.interactiveshell import InteractiveShell

    from warden.magic.resultset import ResultSet

    shell = InteractiveShell.instance()
    formatters.register(shell)
    display = shell.display_formatter
    table = pa.table({"id": [1], "email": ["****@a.example"]})
    df = to_output(table, _info(table, MASKS), "pandas")
    result = ResultSet(df)
    result.attrs = dict(df.attrs)
    try:
        assert formatters._direct_format(display, result, None, None) is not None
        assert display.format(result) == DisplayFormatter.format(display, result)
        assert "****@a.example" in display.format(result)[0]["text/html"]
    finally:
        InteractiveShell.clear_instance()
