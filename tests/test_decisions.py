"""The fixture table: SQL <-> expected decision and masks, for both dialects."""

from __future__ import annotations

from typing import Any

import pytest

from engine_fixtures import DIALECTS, decision_cases, fixture_catalog, fixture_policy
from warden.masking.operators import parse_operator
from warden.policy.engine import Identity, decide
from warden.sql.analyze import analyze_cell

POLICY = fixture_policy()
CATALOGS = {d: fixture_catalog(d) for d in DIALECTS}
CASES = decision_cases()


@pytest.mark.parametrize(
    ("dialect", "case"), CASES, ids=[f"{d}:{c['name']}" for d, c in CASES]
)
def test_decision(dialect: str, case: dict[str, Any]) -> None:
    connection = DIALECTS[dialect][0]
    identity = Identity(
        subject=case.get("user", "ana"),
        groups=frozenset(case.get("groups", ["analysts"])),
        attributes=case.get("attributes", {"region": "emea"}),
    )
    analysis = analyze_cell(case["sql"], CATALOGS[dialect])
    decision = decide(POLICY, identity, analysis, connection)
    context = f"{decision.action}: {decision.summary}"
    assert decision.action == case["action"], context
    if "masks" in case:
        got = {m.column: m.operator for m in decision.masks}
        want = {col: parse_operator(op) for col, op in case["masks"].items()}
        assert got == want, context
    for rule in case.get("rules", []):
        assert any(rule in r for r in decision.rule_ids), f"{rule} not in {decision.rule_ids}"
    schema = DIALECTS[dialect][1]
    reads = {r for st in analysis.statements for r in st.reads}
    for rel in case.get("reads", []):
        assert (rel if "." in rel else f"{schema}.{rel}") in reads, f"{rel} not in reads {sorted(reads)}"
    filtered = {f.relation for f in decision.row_filters}
    for rel in case.get("filters", []):
        assert (rel if "." in rel else f"{schema}.{rel}") in filtered, f"no row filter on {rel}: {sorted(filtered)}"
    if "kind" in case:
        assert analysis.kinds[0] == case["kind"], analysis.kinds
    for taint in case.get("taints", []):
        assert any(t.column.qualified.endswith(taint) for t in decision.taints), decision.taints
    for rel in case.get("row_filters", []):
        assert any(f.relation.endswith(rel) for f in decision.row_filters), decision.row_filters


def test_every_case_runs_in_at_least_one_dialect() -> None:
    names = {c["name"] for _, c in CASES}
    assert len(names) >= 70
