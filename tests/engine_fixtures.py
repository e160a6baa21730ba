"""Shared loading of the table-driven fixtures (catalog, policy, decision cases)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from warden.policy.model import Policy, load_policy
from warden.sql.catalog import Catalog, catalog_from_mapping

FIXTURES = Path(__file__).parent / "fixtures"
DIALECTS = {"postgres": ("pg", "public"), "duckdb": ("dk", "main")}


def fixture_catalog(dialect: str) -> Catalog:
    schema = DIALECTS[dialect][1]
    raw = (FIXTURES / "catalog.yaml").read_text().replace("SCHEMA.", f"{schema}.")
    data = yaml.safe_load(raw)
    data["dialect"] = dialect
    data["search_path"] = [schema]
    return catalog_from_mapping(data)


def fixture_policy() -> Policy:
    return load_policy(FIXTURES / "policy.yaml")


def decision_cases() -> list[tuple[str, dict[str, Any]]]:
    cases = yaml.safe_load((FIXTURES / "decisions.yaml").read_text())
    out = []
    for case in cases:
        for dialect in case.get("dialects", list(DIALECTS)):
            out.append((dialect, case))
    return out
