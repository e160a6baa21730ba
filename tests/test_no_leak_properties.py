"""Property: however constructs are composed around a classified column, the output
carrying it is masked or the cell is denied. Runs in both dialects."""

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

EXPRESSION_WRAPPERS = [
    "lower({x})", "upper({x})", "coalesce({x}, 'n/a')", "CAST({x} AS VARCHAR)",
    "({x} || '-')", "('<' || {x})", "CASE WHEN c.id > 3 THEN {x} ELSE c.name END",
    "substring({x}, 1, 3)", "left({x}, 2)", "right({x}, 4)", "md5({x})", "trim({x})",
    "replace({x}, 'a', 'b')", "nullif({x}, '')", "concat({x}, c.name)",
    "regexp_replace({x}, '[0-9]', 'x')", "greatest({x}, c.name)", "reverse({x})",
]  # fmt: skip

AGGREGATES = ["max({x})", "min({x})", "string_agg({x}, ',')", "array_agg({x})"]

QUERY_WRAPPERS = [
    "SELECT out FROM ({q}) AS s",
    "WITH w AS ({q}) SELECT out FROM w",
    "WITH customers AS ({q}) SELECT out FROM customers",
    "SELECT s.out AS out FROM ({q}) AS s WHERE true",
    "SELECT out FROM ({q}) AS s UNION ALL SELECT name AS out FROM customers",
    "SELECT name AS out FROM customers UNION SELECT out FROM ({q}) AS s",
    "SELECT (SELECT max(s.out) FROM ({q}) AS s) AS out",
    "SELECT out FROM ({q}) AS s ORDER BY 1",
    "SELECT x.out AS out FROM orders o, LATERAL ({q}) AS x",
    "SELECT out FROM ({q}) AS s INTERSECT SELECT email AS out FROM customers",
]  # fmt: skip


@st.composite
def cells(draw: st.DrawFn) -> tuple[str, str]:
    expr = draw(st.sampled_from(CLASSIFIED))
    for wrapper in draw(st.lists(st.sampled_from(EXPRESSION_WRAPPERS), max_size=4)):
        expr = wrapper.format(x=expr)
    grouped = draw(st.booleans())
    if grouped:
        expr = draw(st.sampled_from(AGGREGATES)).format(x=expr)
    query = f"SELECT {expr} AS out FROM customers c"
    for wrapper in draw(st.lists(st.sampled_from(QUERY_WRAPPERS), max_size=3)):
        query = wrapper.format(q=query)
    dialect = draw(st.sampled_from(sorted(DIALECTS)))
    return dialect, query


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cells())
def test_classified_output_is_masked_or_denied(cell: tuple[str, str]) -> None:
    dialect, sql = cell
    analysis = analyze_cell(sql, CATALOGS[dialect])
    decision = decide(POLICY, ANALYST, analysis, DIALECTS[dialect][0])
    if decision.action == "deny":
        return
    masked = {m.column for m in decision.masks if m.operator.kind != "clear"}
    assert "out" in masked, f"{sql}\n-> {decision.action}: {decision.summary}"


@settings(max_examples=200, deadline=None)
@given(
    st.permutations(["email", "name", "ssn", "region"]),
    st.sampled_from(sorted(DIALECTS)),
)
def test_renaming_never_launders(names: list[str], dialect: str) -> None:
    # Alias each real column to another column's name, then select everything again.
    real = ["email", "name", "ssn", "region"]
    inner = ", ".join(f"{r} AS {n}" for r, n in zip(real, names, strict=True))
    sql = f"SELECT * FROM (SELECT {inner} FROM customers) AS t"
    analysis = analyze_cell(sql, CATALOGS[dialect])
    decision = decide(POLICY, ANALYST, analysis, DIALECTS[dialect][0])
    masked = {m.column for m in decision.masks}
    for r, n in zip(real, names, strict=True):
        assert (n in masked) == (r in ("email", "ssn")), f"{sql}: {masked}"
