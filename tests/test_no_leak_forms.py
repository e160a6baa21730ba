"""Property: wrapping classified columns in the fail-closed forms never launders them.

Functions (declared user-defined ones too), table functions with short alias lists,
recursive CTEs that rotate values, star expressions (EXCLUDE/REPLACE), composite
values and casts are composed at random around classified columns. Every output
column is either masked or named ``clean_*`` (built only from unclassified data), or
the whole cell is denied. Both dialects.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine_fixtures import DIALECTS, fixture_catalog, fixture_policy
from warden.policy.engine import Identity, decide
from warden.sql.analyze import analyze_cell

POLICY = fixture_policy()
CATALOGS = {d: fixture_catalog(d) for d in DIALECTS}
ANALYST = Identity("ana", frozenset({"analysts"}), {"region": "emea"})

CLASSIFIED = ["c.email", "c.ssn", "c.phone"]
EXPR = {
    "postgres": ["lower({x})", "CAST({x} AS text)", "({x})::varchar", "ssn_of(c.id) || {x}", "shout({x})", "md5({x})",
                 "jsonb_build_object('k', {x})", "row({x}, 1)", "ARRAY[{x}]", "coalesce({x}, '')", "string_agg({x}, ',') OVER ()"],
    "duckdb": ["lower({x})", "CAST({x} AS VARCHAR)", "ssn_of(c.id) || {x}", "shout({x})", "md5({x})", "{{'k': {x}}}",
               "[{x}]", "coalesce({x}, '')", "struct_pack(v := {x})", "list_value({x}, 'a')"],
}  # fmt: skip
QUERY = {
    "postgres": [
        "SELECT s.* FROM ({q}) AS s",
        "SELECT j.* FROM ({q}) AS s, jsonb_each(jsonb_build_object('k', s.out)) AS j(clean_k)",
        "SELECT u.* FROM ({q}) AS s, unnest(ARRAY[s.out], ARRAY['x']) AS u(out)",
        "WITH RECURSIVE r(n, out, out2) AS (SELECT 1, out, '-' FROM ({q}) AS s "
        "UNION ALL SELECT n + 1, out2, out FROM r WHERE n < 3) SELECT out, out2 FROM r",
        "SELECT to_jsonb(s) AS out FROM ({q}) AS s",
        "SELECT s AS out FROM ({q}) AS s",
        "SELECT row_to_json(s) AS out FROM ({q}) AS s",
        "WITH w AS ({q}) SELECT out FROM w",
    ],
    "duckdb": [
        "SELECT s.* FROM ({q}) AS s",
        "SELECT * EXCLUDE (clean_id) FROM ({q}) AS s",
        "SELECT * REPLACE (upper(CAST(out AS VARCHAR)) AS out) FROM ({q}) AS s",
        "SELECT u.* FROM ({q}) AS s, unnest([s.out]) AS u(out)",
        "WITH RECURSIVE r(n, out, out2) AS (SELECT 1, CAST(out AS VARCHAR), '-' FROM ({q}) AS s "
        "UNION ALL SELECT n + 1, out2, out FROM r WHERE n < 3) SELECT out, out2 FROM r",
        "SELECT s AS out FROM ({q}) AS s",
        "SELECT {{'v': s.out}} AS out FROM ({q}) AS s",
        "FROM ({q}) AS s",
    ],
}  # fmt: skip


@st.composite
def cells(draw: st.DrawFn) -> tuple[str, str]:
    dialect = draw(st.sampled_from(sorted(DIALECTS)))
    expr = draw(st.sampled_from(CLASSIFIED))
    for wrapper in draw(st.lists(st.sampled_from(EXPR[dialect]), max_size=3)):
        expr = wrapper.format(x=expr)
    query = f"SELECT c.id AS clean_id, {expr} AS out FROM customers c"
    for wrapper in draw(st.lists(st.sampled_from(QUERY[dialect]), min_size=1, max_size=3)):
        query = wrapper.format(q=query)
    return dialect, query


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cells())
def test_every_output_is_masked_clean_or_denied(cell: tuple[str, str]) -> None:
    dialect, sql = cell
    analysis = analyze_cell(sql, CATALOGS[dialect])
    decision = decide(POLICY, ANALYST, analysis, DIALECTS[dialect][0])
    if decision.action == "deny":
        return
    masked = {(m.statement, m.position) for m in decision.masks if m.operator.kind != "clear"}
    for st_ in analysis.statements:
        for pos, out in enumerate(st_.outputs):
            if out.name.startswith("clean_") and not out.sources - {s for s in out.sources if s.column in ("id",)}:
                continue
            assert (st_.index, pos) in masked, f"{sql}\n-> column {out.name!r} not masked: {decision.summary}"
