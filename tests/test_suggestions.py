"""Typos get a suggestion among names the user may see, never a hidden one."""

from __future__ import annotations

import pytest

from engine_fixtures import DIALECTS, fixture_catalog, fixture_policy
from warden.policy.engine import Identity, decide
from warden.sql.analyze import analyze_cell

POLICY = fixture_policy()
ANA = Identity("ana", frozenset({"analysts"}), {"region": "emea"})

# (sql, a substring the denial must carry, substrings it must not)
CASES = [
    ("SELECT nme FROM customers", "did you mean `name`?", []),
    ("SELECT c.emial FROM customers c", "did you mean `email`?", []),
    ("SELECT id FROM custmers", "did you mean `customers`", ["cannot resolve column 'id'"]),
    ("SELECT id FROM orderz", "`orders`", []),
    # secret.keys is denied to analysts: neither its name nor its columns are suggested.
    ("SELECT id FROM key", "is not in the catalog", ["`keys`", "did you mean"]),
    ("SELECT k.kk FROM secret.keys k", "deny_tables", ["`k`"]),
    ("SELECT zzzz FROM customers", "cannot resolve column 'zzzz'", ["did you mean"]),
    # id exists in customers, but not in the derived table: never "did you mean `id`?"
    ("SELECT x.id FROM (SELECT name FROM customers) x", "id", ["did you mean `id`"]),
]


@pytest.mark.parametrize("dialect", sorted(DIALECTS))
@pytest.mark.parametrize(("sql", "want", "never"), CASES, ids=[c[0] for c in CASES])
def test_suggestions(dialect: str, sql: str, want: str, never: list[str]) -> None:
    decision = decide(POLICY, ANA, analyze_cell(sql, fixture_catalog(dialect), cache=None), DIALECTS[dialect][0])
    assert decision.action == "deny"
    text = " ".join(r.message + " " + r.rule for r in decision.reasons)
    assert want in text, text
    for bad in never:
        assert bad not in text, text
