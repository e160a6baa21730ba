"""Frozen results of SQL analysis. Pure values: safe to cache and share."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Usage(StrEnum):
    """How a statement uses a column."""

    PROJECTED = "projected"  # flows to the output (select list)
    PREDICATE = "predicate"  # WHERE, HAVING, QUALIFY
    JOIN = "join"  # JOIN ... ON / USING
    GROUP = "group"  # GROUP BY a key that is not an output, DISTINCT ON
    GROUPED = "grouped"  # GROUP BY a key that is also an output: shown only through its mask
    ORDER = "order"
    WINDOW = "window"  # PARTITION BY / ORDER BY inside OVER (...)
    RETURNING = "returning"
    ASSIGNED = "assigned"  # read to compute a written value (SET a = f(col), INSERT ... SELECT)

    @property
    def reveals_by_filtering(self) -> bool:
        """Usages that let a user learn a value without seeing it (by filtering or sorting)."""
        return self in _FILTERING


_FILTERING = frozenset({Usage.PREDICATE, Usage.JOIN, Usage.GROUP, Usage.ORDER, Usage.WINDOW})


@dataclass(frozen=True, order=True)
class ColumnRef:
    """A base-table column, ``schema.table.column``, spelled as the database spells it."""

    schema: str
    table: str
    column: str

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.table}.{self.column}"

    @property
    def relation(self) -> str:
        return f"{self.schema}.{self.table}"

    def __str__(self) -> str:
        return self.qualified


@dataclass(frozen=True)
class ColumnUse:
    column: ColumnRef
    usage: Usage


@dataclass(frozen=True)
class Unresolved:
    """Something analysis could not resolve for certain. Any of these fails the cell closed."""

    code: str  # e.g. "unknown-table", "file-reader", "dynamic-sql", "parse-error"
    message: str
    line: int | None = None
    col: int | None = None
    # For an unknown name: the name, and the names that were in reach, each with its
    # relation (``schema.table``, "" for a CTE or subquery), for "did you mean"
    # suggestions the policy engine filters (it never suggests a hidden name).
    name: str = ""
    candidates: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class OutputColumn:
    """One output column and the base columns that flow into it.

    ``transformed`` is False only for a plain copy of exactly one base column.
    ``functions`` names the calls that are not reviewed built-ins (user-defined or
    unknown, ``schema.name`` or ``name``) whose result flows into this column: the
    policy's ``functions:`` section says what each reads, or the cell is denied.
    """

    name: str
    sources: frozenset[ColumnRef] = frozenset()
    transformed: bool = False
    functions: frozenset[str] = frozenset()


@dataclass(frozen=True)
class LiteralSpan:
    """A literal in the cell text and the columns it is compared with, assigned or inserted to."""

    start: int  # offset in the cell text, inclusive
    end: int  # offset in the cell text, exclusive
    columns: frozenset[ColumnRef]


@dataclass(frozen=True)
class ColumnWrite:
    """A written column and the base columns whose values flow into it (taint)."""

    column: ColumnRef
    sources: frozenset[ColumnRef]


@dataclass(frozen=True)
class StatementAnalysis:
    index: int
    kind: str  # see warden.sql.kinds.KINDS
    sql: str  # the statement's own text, as typed
    reads: tuple[str, ...] = ()  # relations read (schema.table), views and their base tables
    writes: tuple[str, ...] = ()  # relations created, modified or dropped
    uses: frozenset[ColumnUse] = frozenset()
    outputs: tuple[OutputColumn, ...] = ()
    column_writes: tuple[ColumnWrite, ...] = ()
    has_where: bool = False
    limit: int | None = None
    # At most this many rows come back, as the text proves it (a literal LIMIT, or one
    # row: aggregates without GROUP BY); None when unknown. Not a policy fact.
    row_bound: int | None = None
    unresolved: tuple[Unresolved, ...] = ()
    literals: tuple[LiteralSpan, ...] = ()
    search_path: tuple[str, ...] = ()
    # Session settings a SET earlier in the cell put in force for this statement
    # (``search_path`` excepted: see ``search_path``), as ``(name, value text)``.
    settings: tuple[tuple[str, str], ...] = ()
    # Calls of functions that are not reviewed built-ins, anywhere in the statement
    # (views it reads included): ``schema.name`` when qualified, else ``name``.
    functions: tuple[str, ...] = ()

    def columns_used(self, *usages: Usage) -> frozenset[ColumnRef]:
        wanted = set(usages)
        return frozenset(u.column for u in self.uses if not wanted or u.usage in wanted)


@dataclass(frozen=True)
class CellAnalysis:
    sql: str
    dialect: str
    statements: tuple[StatementAnalysis, ...]
    fingerprint: str  # shape of the cell: literals replaced, case and spacing normalised
    statement_hash: str  # exact normalised text incl. literals (what an approval binds to)
    unresolved: tuple[Unresolved, ...] = field(default=())  # cell-level (e.g. parse errors)
    # Equal for two cells whose analyses differ only in plain literal values (same shape,
    # catalog version, search path and structural literals): what a decision may be
    # reused for. None when the analysis is not reusable (commands, parse errors).
    reuse_key: tuple[object, ...] | None = field(default=None, compare=False, repr=False)

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(s.kind for s in self.statements)
