"""The function model: what each function call in a statement is, per dialect.

Only what the per-engine table lists is known (``function_tables/<dialect>.txt``,
pinned to the engine version). Every other call is unknown: a user-defined
function, a macro, an extension's function or a built-in warden has not
reviewed. Analysis reports those by name and the policy decides (its
``functions:`` section can allow one with the columns it reads); by default they
deny, because what they return cannot be traced. Dangerous functions (SQL text,
files, server state, sleeps, side effects) are simply never listed.

Names are the ones the user typed: sqlglot rewrites many calls into typed nodes
(``now()`` becomes ``CurrentTimestamp``), so the name is read back from the
source text through the node's position, and grammar forms that have no name
token (``CAST``, ``EXTRACT``, ``[1, 2]``) are recognised by node type.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from sqlglot import exp

_TABLES = Path(__file__).with_name("function_tables")


class FunctionClass(StrEnum):
    SCALAR = "scalar"  # a value computed from its arguments
    AGGREGATE = "aggregate"
    COUNT = "count"  # an aggregate that reveals how many, never a value
    WINDOW = "window"
    SYNTAX = "syntax"  # a grammar form that looks like a call (CAST, COALESCE, ARRAY[])
    TABLE = "table"  # set-returning, allowed in FROM with known output columns


@dataclass(frozen=True)
class FunctionInfo:
    name: str
    kind: FunctionClass
    # For table functions: the output columns. ``("=name",)`` one column named by
    # the alias or the function; ``("*args",)`` one per argument; ``("*definition",)``
    # the query's column definition list.
    columns: tuple[str, ...] = ()


@dataclass(frozen=True)
class FunctionTable:
    dialect: str
    scalars: dict[str, FunctionInfo]  # everything callable in an expression
    tables: dict[str, FunctionInfo]  # set-returning functions callable in FROM

    def scalar(self, name: str) -> FunctionInfo | None:
        return self.scalars.get(name)

    def table(self, name: str) -> FunctionInfo | None:
        return self.tables.get(name)


@functools.cache
def function_table(dialect: str) -> FunctionTable:
    """The allow table of ``dialect`` (parsed once per process)."""
    path = _TABLES / f"{dialect}.txt"
    scalars: dict[str, FunctionInfo] = {}
    tables: dict[str, FunctionInfo] = {}
    for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        try:
            kind = FunctionClass(parts[1])
        except (IndexError, ValueError):
            raise ValueError(f"{path}:{lineno}: expected 'name class [columns]'") from None
        if kind is FunctionClass.TABLE:
            if len(parts) != 3:
                raise ValueError(f"{path}:{lineno}: a table function needs its columns")
            tables[parts[0]] = FunctionInfo(parts[0], kind, tuple(parts[2].split(",")))
        else:
            scalars[parts[0]] = FunctionInfo(parts[0], kind)
    return FunctionTable(dialect, scalars, tables)


# Typed nodes sqlglot builds from grammar, not from a name token (no position).
_SYNTAX_NODES: dict[type[exp.Expr], str] = {
    exp.Cast: "cast", exp.TryCast: "try_cast", exp.Case: "case", exp.If: "if",
    exp.Array: "array", exp.Struct: "struct", exp.Substring: "substring", exp.Trim: "trim",
    exp.Extract: "extract", exp.StrPosition: "position", exp.Exists: "exists",
    exp.Unnest: "unnest", exp.CurrentDate: "current_date", exp.CurrentTime: "current_time",
    exp.CurrentTimestamp: "current_timestamp", exp.Coalesce: "coalesce", exp.Nullif: "nullif",
    exp.Greatest: "greatest", exp.Least: "least", exp.Collate: "collate",
    exp.Overlay: "overlay",
}  # fmt: skip


def call_name(node: exp.Func, source: str, dialect: str | None = None) -> str:
    """The function name as typed (lower case, unquoted), or the grammar form's name.

    A node sqlglot built without a name token (``string_agg`` parsed into
    ``GroupConcat``) is named by how the dialect writes it back: that text is what
    runs when the gateway rewrites the statement."""
    if isinstance(node, exp.Anonymous):
        return str(node.this).lower()
    start, end = node.meta.get("start"), node.meta.get("end")
    if isinstance(start, int) and isinstance(end, int) and 0 <= start <= end < len(source):
        word = source[start : end + 1].strip()
        if word.startswith('"') and word.endswith('"') and len(word) >= 2:
            return word[1:-1].replace('""', '"')  # a quoted name keeps its case
        if word and (word[0].isalpha() or word[0] == "_"):
            return word.lower()
    for cls in type(node).__mro__:
        if cls in _SYNTAX_NODES:
            return _SYNTAX_NODES[cls]
    if isinstance(node, (exp.Binary, exp.Unary, exp.Connector, exp.Predicate)):
        return OPERATOR  # written as an operator (AND, @>, ->>, ~): no name token
    if dialect:
        written = node.sql(dialect=dialect)
        m = _LEADING_NAME.match(written)
        if m:
            return m.group(1).lower()
    return node.sql_name().lower()


# The name of calls written as operators; no typed name can look like it.
OPERATOR = "<operator>"

_LEADING_NAME = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*\(")


def qualifier(node: exp.Func) -> str | None:
    """``schema`` of a schema-qualified call (``crm.ssn_of(1)``), else None."""
    parent = node.parent
    if isinstance(parent, exp.Dot) and parent.expression is node:
        left = parent.this
        parts = [p.name for p in left.parts] if isinstance(left, (exp.Column, exp.Dot)) else [left.name]
        return ".".join(p for p in parts if p) or None
    return None


__all__ = ["FunctionClass", "FunctionInfo", "FunctionTable", "call_name", "function_table", "qualifier"]


# Never allowed, whatever a policy says: they run SQL text, read files or server
# state, sleep, or change state. Listed so that the denial names the reason; the
# allow table already leaves them out.
DANGEROUS = frozenset(
    {
        "query_to_xml", "query_to_xml_and_xmlschema", "query_to_xmlschema", "table_to_xml",
        "table_to_xml_and_xmlschema", "table_to_xmlschema", "schema_to_xml",
        "schema_to_xml_and_xmlschema", "schema_to_xmlschema", "database_to_xml",
        "database_to_xml_and_xmlschema", "database_to_xmlschema", "cursor_to_xml",
        "cursor_to_xmlschema", "ts_stat", "ts_rewrite", "set_config", "current_setting",
        "pg_read_file", "pg_read_binary_file", "pg_ls_dir", "pg_stat_file", "pg_sleep",
        "pg_sleep_for", "pg_sleep_until", "pg_terminate_backend", "pg_cancel_backend",
        "pg_reload_conf", "pg_rotate_logfile", "pg_promote", "pg_switch_wal",
        "pg_create_restore_point", "pg_file_write", "pg_advisory_lock", "pg_notify",
        "lo_import", "lo_export", "lo_get", "lo_put", "lo_from_bytea", "lo_unlink", "lo_create",
        "lo_open", "dblink", "dblink_exec", "dblink_open", "dblink_fetch", "nextval", "setval",
        "txid_current", "query", "query_table", "json_execute_serialized_sql",
        "json_serialize_sql", "json_deserialize_sql", "getenv", "system", "shell", "sleep_ms",
        "read_csv", "read_csv_auto", "read_parquet", "parquet_scan", "read_json",
        "read_json_auto", "read_json_objects", "read_ndjson", "read_ndjson_auto",
        "read_ndjson_objects", "read_text", "read_blob", "read_xlsx", "glob", "sniff_csv",
        "iceberg_scan", "delta_scan", "postgres_scan", "postgres_query", "sqlite_scan",
        "mysql_scan", "parquet_metadata", "parquet_schema", "csvread", "readcsv",
        "readparquet", "readjson", "read_duckdb", "write_log",
    }
)  # fmt: skip

# Schemas whose functions are the engine's own (a call qualified with one of them
# is a built-in when the table lists it).
SYSTEM_SCHEMAS = {"postgres": frozenset({"pg_catalog"}), "duckdb": frozenset({"system", "main", "system.main"})}


@dataclass(frozen=True)
class Call:
    """How analysis sees one call in an expression."""

    name: str  # as typed, lower case
    info: FunctionInfo | None  # None: not a reviewed built-in (user-defined or unknown)
    key: str  # ``schema.name`` when qualified, else ``name``: what a policy's functions: names
    dangerous: bool = False


def annotate_calls(stmt: exp.Expr, source: str, dialect: str) -> None:
    """Remember each call's typed name on its node (positions are lost by rewrites)."""
    for node in stmt.find_all(exp.Func):
        node.meta["warden_fn"] = call_name(node, source, dialect)
        q = qualifier(node)
        if q:
            node.meta["warden_fn_schema"] = q


def classify_call(
    node: exp.Func, dialect: str, user_functions: frozenset[str] = frozenset(), *, in_from: bool = False
) -> Call:
    """The class of ``node``. ``user_functions``: names (``name`` and ``schema.name``) the
    database defines outside the engine: a built-in name shadowed by one is not trusted."""
    name = node.meta.get("warden_fn") or call_name(node, "", dialect)
    schema = node.meta.get("warden_fn_schema")
    key = f"{schema}.{name}" if schema else name
    if name in DANGEROUS:
        return Call(name, None, key, dangerous=True)
    table = function_table(dialect)
    if schema and schema.lower() not in SYSTEM_SCHEMAS.get(dialect, frozenset()):
        return Call(name, None, key)
    if name in user_functions:
        return Call(name, None, key)
    if name == OPERATOR and not in_from:
        return Call(name, FunctionInfo(name, FunctionClass.SYNTAX), key)
    info = table.table(name) if in_from else (table.scalar(name) or table.table(name))
    if info is None and not in_from and not isinstance(node, exp.Anonymous):
        for cls in type(node).__mro__:
            if cls in _SYNTAX_NODES and node.meta.get("start") is None:
                info = FunctionInfo(_SYNTAX_NODES[cls], FunctionClass.SYNTAX)
                break
    return Call(name, info, key)
