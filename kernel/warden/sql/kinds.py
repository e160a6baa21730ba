"""Statement kinds: what a statement does, as the policy's ``statements:`` names it."""

from __future__ import annotations

from sqlglot import exp

KINDS = (
    "select", "insert", "update", "delete", "merge", "copy",
    "create", "alter", "drop", "truncate", "comment",
    "grant", "revoke", "set", "show", "call", "do", "execute",
    "transaction", "explain", "other",
)  # fmt: skip

# Groups a policy may name instead of single kinds.
KIND_GROUPS: dict[str, frozenset[str]] = {
    "read": frozenset({"select", "show", "explain"}),
    "dml": frozenset({"insert", "update", "delete", "merge", "copy"}),
    "ddl": frozenset({"create", "alter", "drop", "truncate", "comment"}),
    "dcl": frozenset({"grant", "revoke"}),
    "all": frozenset(KINDS),
}

_BY_TYPE: tuple[tuple[type[exp.Expr], str], ...] = (
    (exp.Query, "select"),  # Select and set operations (UNION ...)
    (exp.Insert, "insert"),
    (exp.Update, "update"),
    (exp.Delete, "delete"),
    (exp.Merge, "merge"),
    (exp.Copy, "copy"),
    (exp.Create, "create"),
    (exp.Alter, "alter"),
    (exp.Drop, "drop"),
    (exp.TruncateTable, "truncate"),
    (exp.Comment, "comment"),
    (exp.Grant, "grant"),
    (exp.Revoke, "revoke"),
    (exp.Set, "set"),
    (exp.Transaction, "transaction"),
    (exp.Commit, "transaction"),
    (exp.Rollback, "transaction"),
    (exp.Describe, "show"),
    (exp.Show, "show"),
)

_COMMANDS = {
    "SET": "set", "RESET": "set", "SHOW": "show", "CALL": "call", "DO": "do",
    "EXECUTE": "execute", "PREPARE": "execute", "EXPLAIN": "explain",
    "BEGIN": "transaction", "START": "transaction", "COMMIT": "transaction",
    "ROLLBACK": "transaction", "END": "transaction", "SAVEPOINT": "transaction",
    "RELEASE": "transaction", "GRANT": "grant", "REVOKE": "revoke",
    "TRUNCATE": "truncate", "COMMENT": "comment", "CREATE": "create",
    "ALTER": "alter", "DROP": "drop", "COPY": "copy",
}  # fmt: skip


def statement_kind(node: exp.Expr) -> str:
    """The kind of one parsed statement; ``other`` when it is none of the known ones."""
    if isinstance(node, exp.Command):
        word = str(node.this).upper()
        return _COMMANDS.get(word, "other")
    for cls, kind in _BY_TYPE:
        if isinstance(node, cls):
            return kind
    return "other"


# How much a statement can do, weakest first: a statement is as strong as the
# strongest statement inside it (a DELETE in a CTE makes the query a delete).
_STRENGTH = (
    "select", "show", "explain", "set", "transaction", "comment", "insert", "update",
    "merge", "delete", "copy", "create", "alter", "truncate", "drop", "grant", "revoke",
    "call", "do", "execute", "other",
)  # fmt: skip


def strongest_kind(kinds: list[str] | tuple[str, ...]) -> str:
    return max(kinds, key=lambda k: _STRENGTH.index(k) if k in _STRENGTH else len(_STRENGTH))


def expand_kinds(names: list[str] | tuple[str, ...]) -> frozenset[str]:
    """Kinds named by a policy, with groups (``ddl``, ``dml`` …) expanded."""
    out: set[str] = set()
    for name in names:
        out |= KIND_GROUPS.get(name, frozenset({name}))
    return frozenset(out)
