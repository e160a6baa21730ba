"""Layout rules from reading the code (issue 8 §9): dependencies flow one way.

The import graph is read from the source (every ``import``, lazy ones inside
functions included; ``if TYPE_CHECKING:`` blocks excluded, they never run), so a
cycle hidden in a function body is still a cycle here."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from warden.audit import record

ROOT = Path(__file__).resolve().parents[1] / "kernel"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for child in node.body for n in ast.walk(child))
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("warden"):
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("warden"))
    return out


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in (ROOT / "warden").rglob("*.py")}
    return {name: {i for i in _imports(path) if i in modules and i != name} for name, path in modules.items()}


def _reaches(graph: dict[str, set[str]], start: str, goal: str) -> bool:
    seen, todo = set(), [start]
    while todo:
        node = todo.pop()
        if node == goal:
            return True
        if node not in seen:
            seen.add(node)
            todo.extend(graph.get(node, ()))
    return False


def test_the_gateway_does_not_import_the_cli(graph: dict[str, set[str]]) -> None:
    offenders = sorted(m for m, deps in graph.items() if m.startswith("warden.gateway") and "warden.cli" in deps)
    assert offenders == []
    assert "warden.gateway.config" in graph["warden.gateway.service"]  # connection_dsn lives there now


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("warden.audit.store", "warden.audit.duckdb_store"),
        ("warden.audit.store", "warden.audit.postgres_store"),
        ("warden.audit.export", "warden.audit.verify"),
        ("warden.kernel.client", "warden.kernel.connect"),
    ],
)
def test_no_import_cycle(graph: dict[str, set[str]], a: str, b: str) -> None:
    assert not (_reaches(graph, a, b) and _reaches(graph, b, a)), f"{a} and {b} import each other"


def test_the_audit_package_has_no_cycle(graph: dict[str, set[str]]) -> None:
    audit = {m for m in graph if m.startswith("warden.audit.")}
    cyclic = sorted(m for m in audit for d in graph[m] if d in audit and _reaches(graph, d, m))
    assert cyclic == []


def test_record_fields_are_declared_once() -> None:
    # One declaration: the sealed record's fields (storage order) and the draft's are
    # the same table; FIELD_KINDS is derived from it, never written out by hand.
    src = (ROOT / "warden" / "audit" / "record.py").read_text(encoding="utf-8")
    assert src.count("    parent_event_id: str | None = None") == 1
    assert "FIELD_KINDS: Final[dict[str, str]] = {" not in src
    sealed = [f.name for f in dataclasses.fields(record.AuditEvent)]
    assert sealed == list(record.FIELDS) == list(record.FIELD_KINDS)
    assert {f.name for f in dataclasses.fields(record.EventDraft)} == set(record.FIELDS) - set(record.CHAIN_FIELDS)
    assert record.FIELD_KINDS["roles"] == "list" and record.FIELD_KINDS["params"] == "json"
    assert record.FIELD_KINDS["event_time"] == "time" and record.FIELD_KINDS["duration_ms"] == "float"
