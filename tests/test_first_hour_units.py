"""Small pieces of issue 12: relative expiry, the caret, the held box's wording when a
size rule had no estimate, and DuckDB's cardinality from its EXPLAIN plan."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import duckdb

from warden.gateway.execute import DuckDBExecutor, _duckdb_cardinality
from warden.magic import display as show

NOW = dt.datetime(2026, 12, 2, 4, 0, tzinfo=dt.UTC)


def test_relative_time() -> None:
    assert show.relative_time("2026-12-02T04:57:46.291510+00:00", NOW) == "in 57 min (04:57 UTC)"
    assert show.relative_time("2026-12-02T03:59:30+00:00", NOW) == "30 s ago (03:59 UTC)"
    assert show.relative_time("2026-12-02T06:00:00+00:00", NOW) == "in 2 h (06:00 UTC)"
    assert show.relative_time("2026-12-09T04:00:00+00:00", NOW) == "in 7 days (2026-12-09 04:00 UTC)"
    assert show.relative_time("not a time", NOW) == "not a time"


def test_caret_under_the_word_ending_at_the_column() -> None:
    assert show.caret_excerpt("SELECT a,\n  bogus FROM t", 2, 7) == "line 2:   bogus FROM t\n          ^^^^^"
    assert show.caret_excerpt("SELECT 1", 5, 1) == ""  # a position outside the text: no excerpt


def test_held_box_says_when_no_estimate_was_had() -> None:
    body = {"approval": {"id": "apr_1", "reasons": ["statement 1: 'rows_estimate > 100000' could not be evaluated (no row estimate); held"],
                         "rule_ids": ["role:analyst/hold[0]"]}, "approvers": {"groups": ["data-owners"]}}  # fmt: skip
    lines = show.held_lines(body, waited=0, wait=0, status="pending", local=True)
    assert any("gave no row estimate" in line for line in lines)
    assert lines[-1].startswith("to continue (local mode") and "%warden approve apr_1" in lines[-1]
    shared = show.held_lines(body, waited=0, wait=0, status="pending", local=False)
    assert "who can approve: group data-owners" in shared and "you may approve your own" not in " ".join(shared)


def test_duckdb_cardinality_from_explain(tmp_path: Path) -> None:
    path = tmp_path / "d.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE t AS SELECT range AS id FROM range(5000)")
    con.close()
    ex = DuckDBExecutor(path, read_only=True)
    try:
        assert ex.estimate_rows("SELECT * FROM t WHERE id < 0 AND id > 10", []) == 0  # proved empty by the optimizer
        assert ex.estimate_rows("SELECT * FROM t LIMIT 0", []) == 0
        assert ex.estimate_rows("SELECT * FROM t", []) == 5000
        assert ex.estimate_rows("SELECT id + 1 AS x FROM t", []) == 5000  # a projection takes its child's
        # A query that does not bind returns no row: it runs and fails with DuckDB's message.
        assert ex.estimate_rows("SELECT id, sum(id) FROM t", []) == 0
        assert ex.estimate_rows("SELECT * FROM nope", []) == 0
        assert ex.estimate_rows("SELEC * FROM t", []) is None  # no plan at all: unknown, the rule holds
    finally:
        ex.close()
    assert _duckdb_cardinality({"name": "HASH_JOIN", "children": [{}, {}], "extra_info": {}}) is None  # unknown: the rule holds


def test_a_name_without_a_position_is_found_in_the_cell() -> None:
    from warden.magic.magics import _caret, _find_name

    sql = "SELECT t.idd, name\nFROM customers t"
    where = _find_name(sql, "cannot resolve column 'idd'; did you mean `id`?")
    assert where == (1, 12) and _caret(sql, where) == "\nline 1: SELECT t.idd, name\n                 ^^^"
    assert _find_name("SELECT 1", "cannot resolve column 'zzz'") is None
