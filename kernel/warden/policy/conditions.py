"""Hold conditions: a tiny, safe expression language over a statement's facts.

    kind in (delete, update) and not where
    kind == drop
    rows_estimate > 100000

Parsed with Python's ``ast`` in eval mode and evaluated by a whitelist walker:
no attribute access, no calls, no subscripts. Bare names that are not facts are
read as statement kinds (``drop``), so policies stay readable.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from warden.sql.kinds import KIND_GROUPS, KINDS

FACTS = {
    "kind": "the statement kind (select, insert, update, delete, drop, ...)",
    "where": "true when the statement has a WHERE clause",
    "limit": "the LIMIT / FETCH FIRST value, or none",
    "tables": "relations the statement reads or writes (schema.table)",
    "statements": "number of statements in the cell",
    "classified": "true when the statement reads a classified column",
    "writes": "true when the statement writes (DML or DDL)",
    "rows_estimate": "the database's row estimate from EXPLAIN (evaluated by the gateway)",
}
DEFERRED_FACTS = frozenset({"rows_estimate"})
_CONSTANT_NAMES = frozenset(KINDS) | frozenset(KIND_GROUPS) | {"none", "true", "false"}


class ConditionError(ValueError):
    """A condition does not parse or uses something outside the language."""


class Deferred(Exception):
    """Evaluation needs a fact only the gateway knows (e.g. ``rows_estimate``)."""


@dataclass(frozen=True)
class Condition:
    source: str
    tree: ast.Expression
    deferred: frozenset[str]

    def evaluate(self, facts: Mapping[str, Any]) -> bool:
        """True/False, or raises ``Deferred`` when a needed fact is missing."""
        return bool(_eval(self.tree.body, facts))


_ALLOWED = (
    ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.Compare,
    ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.In, ast.NotIn, ast.Name,
    ast.Load, ast.Constant, ast.Tuple, ast.List,
)  # fmt: skip


def parse_condition(text: str) -> Condition:
    if not isinstance(text, str) or not text.strip():
        raise ConditionError("a condition must be a non-empty string")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise ConditionError(f"condition {text!r} does not parse: {exc.msg}") from None
    deferred: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED):
            raise ConditionError(
                f"condition {text!r} uses {type(node).__name__}; allowed: comparisons, "
                "and/or/not, in, names of facts and constants"
            )
        if isinstance(node, ast.Name):
            name = node.id
            if name in DEFERRED_FACTS:
                deferred.add(name)
            if name not in FACTS and name.lower() not in _CONSTANT_NAMES:
                raise ConditionError(
                    f"condition {text!r} names {name!r}, which is neither a fact "
                    f"({', '.join(FACTS)}) nor a statement kind"
                )
    return Condition(text.strip(), tree, frozenset(deferred))


def _eval(node: ast.AST, facts: Mapping[str, Any]) -> Any:
    if isinstance(node, ast.BoolOp):
        if isinstance(node.op, ast.And):
            return all(_eval(v, facts) for v in node.values)
        return any(_eval(v, facts) for v in node.values)
    if isinstance(node, ast.UnaryOp):
        return not _eval(node.operand, facts)
    if isinstance(node, ast.Compare):
        left = _eval(node.left, facts)
        for op, comp in zip(node.ops, node.comparators, strict=True):
            right = _eval(comp, facts)
            if not _compare(op, left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.Name):
        if node.id in FACTS:
            if node.id not in facts or (facts[node.id] is None and node.id in DEFERRED_FACTS):
                raise Deferred(node.id)
            return facts[node.id]
        lowered = node.id.lower()
        if lowered == "none":
            return None
        if lowered in ("true", "false"):
            return lowered == "true"
        return lowered
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.Tuple, ast.List)):
        return tuple(_eval(e, facts) for e in node.elts)
    raise ConditionError(f"unsupported expression {type(node).__name__}")


def _compare(op: ast.cmpop, left: Any, right: Any) -> bool:
    if isinstance(op, (ast.In, ast.NotIn)):
        members = _expand_groups(right)
        found = any(left == m or (isinstance(left, tuple) and m in left) for m in members)
        return found if isinstance(op, ast.In) else not found
    if isinstance(op, ast.Eq):
        return bool(left == right or (isinstance(right, str) and left in KIND_GROUPS.get(right, ())))
    if isinstance(op, ast.NotEq):
        return bool(left != right)
    if left is None or right is None:
        return False
    try:
        if isinstance(op, ast.Lt):
            return bool(left < right)
        if isinstance(op, ast.LtE):
            return bool(left <= right)
        if isinstance(op, ast.Gt):
            return bool(left > right)
        if isinstance(op, ast.GtE):
            return bool(left >= right)
    except TypeError:
        return False
    return False


def _expand_groups(value: Any) -> tuple[Any, ...]:
    items = value if isinstance(value, tuple) else (value,)
    out: list[Any] = []
    for item in items:
        if isinstance(item, str) and item in KIND_GROUPS:
            out.extend(sorted(KIND_GROUPS[item]))
        else:
            out.append(item)
    return tuple(out)
