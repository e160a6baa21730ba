"""Saved snippets: JupySQL's ``--save NAME``, ``--with NAME`` and automatic expansion.

A snippet is a query kept by name in the kernel (``%%sql --save big --no-execute``).
A later cell that reads from ``big`` (``FROM big``, ``JOIN big``), or names it with
``--with big``, is sent to the gateway with the snippet in front as a CTE::

    WITH big AS (<the snippet's SQL>)
    <the cell's SQL>

Snippets may use other snippets; they are put in front in dependency order, each once.
A cell that starts with its own ``WITH`` gets the snippets added to that list. The
expansion happens in the kernel, before binding: the gateway analyses, decides on and
records the expanded SQL, exactly as if it had been typed. Nothing here is a security
boundary; it only writes SQL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from warden.magic.parse import MagicSyntaxError

_WITH_START = re.compile(r"(?is)\A(\s*(?:--[^\n]*\n\s*|/\*.*?\*/\s*)*)with(\s+recursive)?\b")
#: where a relation name may stand: FROM x, JOIN x, and the items of a FROM list (, x)
_RELATION = re.compile(r"(?i)\b(?:from|join)\s+([A-Za-z_][A-Za-z0-9_]*)\b|,\s*([A-Za-z_][A-Za-z0-9_]*)\b")
_CTE_NAME = re.compile(r"(?i)(?:\bwith(?:\s+recursive)?|,)\s*([A-Za-z_][A-Za-z0-9_]*)\s+as\s*(?:not\s+)?(?:materialized\s*)?\(")
_QUOTED = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|--[^\n]*|/\*.*?\*/", re.S)


@dataclass
class SnippetStore:
    """The kernel's saved snippets: name -> SQL as typed."""

    snippets: dict[str, str] = field(default_factory=dict)

    def save(self, name: str, sql: str) -> None:
        if name in references(sql, {name: ""}):
            raise MagicSyntaxError(f"snippet {name} cannot read from itself")
        self.snippets[name] = sql.strip().rstrip(";").rstrip()

    def delete(self, name: str) -> None:
        if name not in self.snippets:
            raise MagicSyntaxError(f"no snippet named {name}; saved: {', '.join(sorted(self.snippets)) or 'none'}")
        users = [n for n, sql in self.snippets.items() if n != name and name in references(sql, self.snippets)]
        if users:
            raise MagicSyntaxError(f"snippet {name} is used by {', '.join(sorted(users))}: delete those first")
        del self.snippets[name]

    def dependencies(self, sql: str, explicit: tuple[str, ...] = (), exclude: str | None = None) -> list[str]:
        """The snippets ``sql`` needs, dependencies first (each once)."""
        for name in explicit:
            if name not in self.snippets:
                raise MagicSyntaxError(f"--with {name}: no snippet of that name; saved: {', '.join(sorted(self.snippets)) or 'none'}")
        ordered: list[str] = []
        visiting: list[str] = []

        def visit(name: str) -> None:
            if name in ordered:
                return
            if name in visiting:
                raise MagicSyntaxError(f"snippets read from each other in a circle: {' -> '.join([*visiting, name])}")
            visiting.append(name)
            for dep in references(self.snippets[name], self.snippets, exclude=name):
                visit(dep)
            visiting.pop()
            ordered.append(name)

        for name in [*explicit, *references(sql, self.snippets, exclude=exclude)]:
            visit(name)
        return ordered

    def expand(self, sql: str, explicit: tuple[str, ...] = (), exclude: str | None = None) -> tuple[str, list[str]]:
        """``sql`` with the snippets it needs in front as CTEs, and their names."""
        deps = self.dependencies(sql, explicit, exclude)
        if not deps:
            return sql, []
        ctes = ",\n".join(f"{name} AS (\n{self.snippets[name]}\n)" for name in deps)
        found = _WITH_START.match(sql)
        if found is not None:
            # The cell has its own WITH: the snippets go first in its list.
            head = sql[: found.end()]
            return f"{head} {ctes},{sql[found.end():]}", deps
        return f"WITH {ctes}\n{sql.strip()}", deps


def references(sql: str, snippets: dict[str, str], exclude: str | None = None) -> list[str]:
    """Names of saved snippets that ``sql`` reads as relations, in order of appearance
    (names it defines as its own CTEs, and text in strings and comments, do not count)."""
    if not snippets:
        return []
    parsed = _tables_by_parser(sql)
    if parsed is not None:
        return [n for n in parsed if n in snippets and n != exclude]
    return _references_by_scan(sql, snippets, exclude)


def _tables_by_parser(sql: str) -> list[str] | None:
    """Unqualified table names the SQL reads that are not its own CTEs (sqlglot, which
    the kernel has anyway), or None when it does not parse (the scan below decides)."""
    try:
        import sqlglot
        from sqlglot import exp

        trees = [t for t in sqlglot.parse(sql) if t is not None]
    except Exception:  # any parser failure: fall back to the scan
        return None
    found: list[str] = []
    for tree in trees:
        own = {c.alias_or_name for c in tree.find_all(exp.CTE)}
        for table in tree.find_all(exp.Table):
            if not table.db and table.name and table.name not in own and table.name not in found:
                found.append(table.name)
    return found


def _references_by_scan(sql: str, snippets: dict[str, str], exclude: str | None) -> list[str]:
    code = _QUOTED.sub(lambda m: " " * len(m.group(0)), sql)
    own = {m.group(1).lower() for m in _CTE_NAME.finditer(code)}
    found: list[str] = []
    for m in _RELATION.finditer(code):
        name = m.group(1) or m.group(2)
        if name in snippets and name != exclude and name.lower() not in own and name not in found:
            found.append(name)
    return found
