"""Hostile cell text never crashes the analysis: it is decided, and broken SQL denies.

Fixture statements are mutated at random (tokens inserted, characters cut, control
characters, unbalanced quotes and brackets); every cell must come back as a
decision, and any cell the analysis could not resolve must be denied.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine_fixtures import DIALECTS, decision_cases, fixture_catalog, fixture_policy
from warden.policy.engine import Identity, decide
from warden.sql.analyze import analyze_cell

POLICY = fixture_policy()
CATALOGS = {d: fixture_catalog(d) for d in DIALECTS}
ANA = Identity("ana", frozenset({"analysts"}), {"region": "emea"})
SQLS = sorted({c["sql"] for _, c in decision_cases()})
PIECES = [
    " ", "(", ")", ",", "*", "'", '"', ";", "SELECT", "FROM", "WHERE", "::", "[", "]", "{", "}", "#",
    "->", "COLUMNS(", "unnest(", "LATERAL", "WITH", "RECURSIVE", "UNION", "AS", "t(", "ssn", "$1",
    ":p", "--", "/*", "*/", "\\", "\x00", "\u00fc", "$$", "E'", "U&\"",
]  # fmt: skip


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, str]:
    sql = draw(st.sampled_from(SQLS))
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(sql)))
        if draw(st.booleans()):
            sql = sql[:pos] + draw(st.sampled_from(PIECES)) + sql[pos:]
        else:
            sql = sql[:pos] + sql[pos + draw(st.integers(1, 5)) :]
    return draw(st.sampled_from(sorted(DIALECTS))), sql


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_hostile_text_is_decided_never_raised(cell: tuple[str, str]) -> None:
    dialect, sql = cell
    analysis = analyze_cell(sql, CATALOGS[dialect], cache=None)
    decision = decide(POLICY, ANA, analysis, DIALECTS[dialect][0])
    unresolved = bool(analysis.unresolved) or any(s.unresolved for s in analysis.statements)
    if unresolved:
        assert decision.action == "deny", (sql, decision.summary)
