"""Output-column lineage and column usage, in one pass over sqlglot's scopes.

sqlglot's own ``lineage()`` walks the tree once per output column; a reporting
query with dozens of columns then costs tens of milliseconds. Here every scope
is visited once, bottom-up, and each scope's output columns are computed from
its children's, so the whole query costs one traversal.

Everything that cannot be resolved for certain becomes an ``Unresolved`` entry:
callers fail closed on those.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from sqlglot import exp
from sqlglot.optimizer.qualify import qualify
from sqlglot.optimizer.scope import Scope, build_scope
from sqlglot.schema import MappingSchema

from warden.sql.catalog import Catalog, Relation
from warden.sql.model import ColumnRef, ColumnUse, LiteralSpan, OutputColumn, Unresolved, Usage

# Table functions that read files, other databases or server state: their rows
# come from outside the catalog, so no lineage can be known.
FILE_READERS = frozenset(
    {
        "read_csv", "read_csv_auto", "read_parquet", "parquet_scan", "read_json",
        "read_json_auto", "read_json_objects", "read_ndjson", "read_ndjson_auto",
        "read_ndjson_objects", "read_text", "read_blob", "read_xlsx", "query_table",
        "query", "glob", "sniff_csv", "iceberg_scan", "delta_scan", "postgres_scan",
        "postgres_query", "sqlite_scan", "mysql_scan", "parquet_metadata", "parquet_schema",
        "pg_read_file", "pg_read_binary_file", "pg_ls_dir", "pg_stat_file", "lo_import",
        "lo_export", "lo_get", "dblink", "dblink_exec", "dblink_open", "dblink_fetch",
        "csvread", "readcsv", "readparquet", "readjson",
    }
)  # fmt: skip

# Functions with side effects or that reach outside the query: never allowed.
DANGEROUS_FUNCTIONS = FILE_READERS | frozenset(
    {
        "set_config", "pg_terminate_backend", "pg_cancel_backend", "pg_reload_conf",
        "pg_rotate_logfile", "pg_promote", "pg_switch_wal", "pg_create_restore_point",
        "lo_from_bytea", "lo_put", "lo_unlink", "lo_create", "lo_open", "pg_file_write",
        "pg_sleep", "pg_advisory_lock", "txid_current", "current_setting",
        "getenv", "system", "shell",
    }
)  # fmt: skip

# Set-returning functions whose rows derive only from their arguments.
SAFE_TABLE_FUNCTIONS = frozenset(
    {
        "generate_series", "range", "unnest", "generate_subscripts", "json_each",
        "json_each_text", "jsonb_each", "jsonb_each_text", "json_array_elements",
        "jsonb_array_elements", "json_array_elements_text", "jsonb_array_elements_text",
        "regexp_split_to_table", "string_to_table", "json_to_recordset",
        "jsonb_to_recordset", "json_populate_recordset", "jsonb_populate_recordset",
        "regexp_matches", "json_object_keys", "jsonb_object_keys", "exploding_generate_series",
        "generate_date_array", "generate_timestamp_array", "explode",
    }
)  # fmt: skip

# Functions sqlglot does not model but whose result is a plain transformation of
# their arguments (lineage flows through them; the output counts as transformed).
KNOWN_FUNCTIONS = frozenset(
    {
        "row", "to_json", "to_jsonb", "row_to_json", "json_build_object",
        "jsonb_build_object", "json_build_array", "jsonb_build_array", "json_object",
        "jsonb_object", "array_to_json", "jsonb_agg", "jsonb_object_agg", "json_object_agg",
        "struct_pack", "list_value", "format", "concat_ws", "initcap", "translate", "btrim",
        "ltrim", "rtrim", "lpad", "rpad", "split_part", "reverse", "overlay", "to_char",
        "to_number", "to_date", "to_timestamp", "date_part", "date_trunc", "extract", "age",
        "regexp_replace", "regexp_substr", "regexp_match", "regexp_matches", "substr",
        "strpos", "position", "md5", "sha256", "sha224", "sha384", "sha512", "digest",
        "encode", "decode", "quote_ident", "quote_literal", "quote_nullable", "ascii", "chr",
        "repeat", "replace", "left", "right", "length", "char_length", "octet_length",
        "bit_length", "lower", "upper", "trim", "nullif", "greatest", "least", "abs", "round",
        "floor", "ceil", "ceiling", "array_agg", "string_agg", "array_length",
        "array_to_string", "string_to_array", "array_cat", "array_append", "array_prepend",
        "cardinality", "jsonb_extract_path", "jsonb_extract_path_text", "json_extract_path",
        "json_extract_path_text", "jsonb_set", "jsonb_strip_nulls", "json_strip_nulls",
        "jsonb_pretty", "mode", "percentile_cont", "percentile_disc", "bool_and", "bool_or",
        "every", "first", "last", "any_value", "arbitrary", "list", "histogram", "struct_extract",
        "list_extract", "hash", "md5_number", "epoch", "strftime", "strptime", "printf",
        "text", "varchar", "concat", "prefix", "suffix", "starts_with", "contains", "ilike",
        "like", "similar", "inet", "host", "width_bucket", "row_number", "rank", "dense_rank",
        "ntile", "percent_rank", "cume_dist", "lag", "lead", "first_value", "last_value",
        "nth_value",
    }
)  # fmt: skip

_COMPARISONS: tuple[type[exp.Expr], ...] = (
    exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE, exp.Like, exp.ILike, exp.In,
    exp.Between, exp.NullSafeEQ, exp.NullSafeNEQ, exp.RegexpLike, exp.RegexpILike,
    exp.SimilarTo, exp.Glob, exp.Is,
)  # fmt: skip

_CLAUSE_USAGE = {
    "where": Usage.PREDICATE,
    "having": Usage.PREDICATE,
    "qualify": Usage.PREDICATE,
    "group": Usage.GROUP,
    "order": Usage.ORDER,
    "distinct": Usage.GROUP,
}

_MAX_RECURSIVE_ROUNDS = 8


def function_name(node: exp.Expr) -> str:
    """Lower-case SQL name of a function node (``Anonymous`` or a modelled one)."""
    if isinstance(node, exp.Anonymous):
        return str(node.this).lower()
    if isinstance(node, exp.Func):
        return node.sql_name().lower()
    return ""


@dataclass
class Flow:
    """What flows from an expression: base columns, opaque ones, and whether it is a copy."""

    sources: set[ColumnRef] = field(default_factory=set)
    opaque: set[ColumnRef] = field(default_factory=set)
    direct: bool = False

    def absorb(self, other: Flow) -> None:
        self.sources |= other.sources
        self.opaque |= other.opaque

    def output(self, name: str) -> OutputColumn:
        return OutputColumn(
            name=name,
            sources=frozenset(self.sources),
            transformed=not (self.direct and len(self.sources) == 1),
            opaque=frozenset(self.opaque),
        )


class SchemaCache:
    """sqlglot schemas per catalog version: building one is the expensive part of qualify."""

    def __init__(self) -> None:
        self._by_version: dict[str, MappingSchema] = {}
        self._views: dict[tuple[str, str, str], _ViewLineage | Unresolved] = {}

    def schema(self, catalog: Catalog) -> MappingSchema:
        found = self._by_version.get(catalog.version)
        if found is None:
            mapping: dict[str, object] = dict(catalog.schema_mapping())
            found = MappingSchema(mapping, dialect=catalog.dialect, normalize=False)
            if len(self._by_version) > 16:
                self._by_version.clear()
            self._by_version[catalog.version] = found
        return found

    def view_outputs(
        self, catalog: Catalog, view: Relation, stack: tuple[str, ...]
    ) -> _ViewLineage | Unresolved:
        key = (catalog.version, view.schema, view.name)
        found = self._views.get(key)
        if found is not None:
            return found
        result = _analyse_view(catalog, view, stack, self)
        if len(self._views) > 4096:
            self._views.clear()
        self._views[key] = result
        return result


SCHEMAS = SchemaCache()


def resolve_table_schemas(
    stmt: exp.Expr, catalog: Catalog, search_path: tuple[str, ...]
) -> None:
    """Give every unqualified table its schema from the search path, unless a CTE
    visible at that point has its name (a CTE is not visible in its own body,
    unless the WITH is RECURSIVE, nor in the CTEs before it)."""
    has_ctes = any(True for _ in stmt.find_all(exp.CTE))
    for table in stmt.find_all(exp.Table):
        if not isinstance(table.this, exp.Identifier) or table.args.get("db"):
            continue
        if has_ctes and table.name in _visible_ctes(table):
            continue
        rel = catalog.resolve(table.name, search_path)
        if rel is not None:
            table.set("db", exp.to_identifier(rel.schema, quoted=True))


def _clause_of(node: exp.Expr, owner: exp.Expr) -> str | None:
    """The argument of ``owner`` (``where``, ``order``, ``expressions`` ...) holding ``node``."""
    current = node
    while current.parent is not None:
        if current.parent is owner:
            return current.arg_key
        current = current.parent
    return None


def _visible_ctes(table: exp.Expr) -> set[str]:
    visible: set[str] = set()
    node: exp.Expr = table
    while node.parent is not None:
        parent = node.parent
        if isinstance(node, exp.CTE) and isinstance(parent, exp.With):
            names = [c.alias_or_name for c in parent.expressions]
            k = parent.expressions.index(node)
            visible.update(names[: k + 1] if parent.args.get("recursive") else names[:k])
        elif not isinstance(node, exp.With):
            with_ = parent.args.get("with_")
            if isinstance(with_, exp.With):
                visible.update(c.alias_or_name for c in with_.expressions)
        node = parent
    return visible


class QueryLineage:
    """Lineage, usage and literal bindings of one query (SELECT, set operation, ...)."""

    def __init__(
        self,
        catalog: Catalog,
        search_path: tuple[str, ...],
        *,
        views_stack: tuple[str, ...] = (),
        schemas: SchemaCache = SCHEMAS,
    ) -> None:
        self.catalog = catalog
        self.search_path = search_path
        self.views_stack = views_stack
        self.schemas = schemas
        self.uses: set[ColumnUse] = set()
        self.reads: dict[str, None] = {}  # ordered set
        self.unresolved: list[Unresolved] = []
        self.literals: list[LiteralSpan] = []
        self._outputs: dict[int, list[OutputColumn]] = {}
        self._scope_of: dict[int, Scope] = {}
        self._cycle = False

    # -- entry points -------------------------------------------------------------------

    def qualify(self, query: exp.Expr) -> exp.Expr:
        """Qualify columns and expand stars in place (tables must carry their schema)."""
        return qualify(
            query,
            dialect=self.catalog.dialect,
            schema=self.schemas.schema(self.catalog),
            validate_qualify_columns=False,
            quote_identifiers=False,
            identify=False,
        )

    def analyse(self, query: exp.Expr, *, usage: Usage = Usage.PROJECTED) -> list[OutputColumn]:
        """Outputs of ``query`` (already qualified). Records uses, reads and literals."""
        root = build_scope(query)
        if root is None:
            self._fail("unsupported-query", "the query's structure could not be analysed", query)
            return []
        scopes = list(root.traverse())
        for scope in scopes:
            self._scope_of[id(scope.expression)] = scope
        earlier_problems = list(self.unresolved)
        for _ in range(_MAX_RECURSIVE_ROUNDS):
            before = {k: list(v) for k, v in self._outputs.items()}
            self._cycle = False
            # Only the last round's problems count: earlier rounds of a recursive CTE
            # see its self-reference half-resolved.
            self.unresolved = list(earlier_problems)
            for scope in scopes:
                self._outputs[id(scope.expression)] = self._scope_outputs(scope, record=True)
            if not self._cycle or self._outputs == before:
                break
        else:
            self._fail("recursive-cte", "a recursive CTE's lineage did not converge", query)
        outputs = self._outputs[id(root.expression)]
        if usage is not Usage.PROJECTED:
            for out in outputs:
                for src in out.sources:
                    self.uses.add(ColumnUse(src, usage))
        return outputs

    def expression_flow(self, node: exp.Expr, scope_expr: exp.Expr, usage: Usage) -> Flow:
        """Flow of ``node`` evaluated in the scope rooted at ``scope_expr`` (after ``analyse``)."""
        scope = self._scope_of.get(id(scope_expr))
        if scope is None:
            self._fail("unsupported-query", "expression outside any analysed scope", node)
            return Flow()
        return self._flow(node, scope, usage, record=True)

    # -- scopes -------------------------------------------------------------------------

    def _scope_outputs(self, scope: Scope, *, record: bool) -> list[OutputColumn]:
        expr = scope.expression
        if isinstance(expr, exp.SetOperation):
            return self._set_operation_outputs(scope)
        if isinstance(expr, exp.Select):
            return self._select_outputs(scope, record=record)
        if isinstance(expr, exp.Values):
            names = _alias_columns(expr) or [
                f"column{i + 1}" for i in range(len(_first_row(expr)))
            ]
            return [OutputColumn(name) for name in names]
        if isinstance(expr, exp.Lateral):
            inner = scope.sources.get("")
            if isinstance(inner, Scope):
                outs = self._outputs.get(id(inner.expression), [])
                names = _alias_columns(expr)
                if names and len(names) == len(outs):
                    outs = [OutputColumn(n, o.sources, o.transformed, o.opaque) for n, o in zip(names, outs, strict=True)]
                return list(outs)
            return self._udtf_outputs(expr, scope, record=record)
        if isinstance(expr, (exp.Unnest, exp.Func)):
            return self._udtf_outputs(expr, scope, record=record)
        self._fail("unsupported-query", f"unsupported query part {expr.key}", expr)
        return []

    def _set_operation_outputs(self, scope: Scope) -> list[OutputColumn]:
        branches = [self._outputs.get(id(s.expression)) for s in scope.set_operation_scopes]
        present = [b for b in branches if b is not None]
        if not present:
            return []
        width = len(present[0])
        if any(len(b) != width for b in present):
            self._fail("unsupported-query", "set operation branches differ in column count", scope.expression)
        outs = []
        for i in range(width):
            srcs: set[ColumnRef] = set()
            opaque: set[ColumnRef] = set()
            transformed = False
            for b in present:
                if i < len(b):
                    srcs |= b[i].sources
                    opaque |= b[i].opaque
                    transformed = transformed or b[i].transformed
            # Rows of different origins merge into one column: a copy only if all agree.
            transformed = transformed or len(srcs) > 1
            outs.append(OutputColumn(present[0][i].name, frozenset(srcs), transformed, frozenset(opaque)))
        return outs

    def _udtf_outputs(self, expr: exp.Expr, scope: Scope, *, record: bool) -> list[OutputColumn]:
        fn = expr.this if isinstance(expr, exp.Lateral) else expr
        flow = Flow()
        for arg in _function_args(fn):
            flow.absorb(self._flow(arg, scope, Usage.PROJECTED, record=record))
        names = _alias_columns(expr) or [expr.alias or "unnest"]
        return [OutputColumn(n, frozenset(flow.sources), True, frozenset(flow.opaque)) for n in names]

    def _select_outputs(self, select: Scope, *, record: bool) -> list[OutputColumn]:
        expr = select.expression
        assert isinstance(expr, exp.Select)
        for source in select.sources.values():
            if isinstance(source, exp.Table) and record:
                if isinstance(source.this, exp.Identifier):
                    self._check_table(source)
                else:
                    self._table_function_columns(source, select, record=False)
        outs: list[OutputColumn] = []
        for projection in expr.selects:
            if isinstance(projection, exp.Star) or (
                isinstance(projection, exp.Column) and isinstance(projection.this, exp.Star)
            ):
                # A star qualify could not expand: some source has unknown columns.
                self._fail("unknown-columns", "cannot expand * over a source with unknown columns", projection)
                continue
            flow = self._flow(projection.unalias(), select, Usage.PROJECTED, record=record)
            outs.append(flow.output(projection.alias_or_name))
        if record:
            self._record_clauses(select)
        return outs

    def _record_clauses(self, scope: Scope) -> None:
        expr = scope.expression
        assert isinstance(expr, exp.Select)
        for key, usage in _CLAUSE_USAGE.items():
            clause = expr.args.get(key)
            if isinstance(clause, exp.Expr):
                self._flow(clause, scope, usage, record=True)
                if usage is Usage.PREDICATE:
                    self._bind_predicate_literals(clause, scope)
        for join in expr.args.get("joins") or []:
            for key in ("on", "using"):
                cond = join.args.get(key)
                if isinstance(cond, exp.Expr):
                    self._flow(cond, scope, Usage.JOIN, record=True)
                    self._bind_predicate_literals(cond, scope)
                elif isinstance(cond, list):
                    for ident in cond:
                        self._using_column(ident, scope)
        for projection in expr.selects:
            for cmp in _walk_scope(projection, self._scope_of, scope.expression):
                if isinstance(cmp, _COMPARISONS):
                    self._bind_literals(cmp, scope)

    def _using_column(self, ident: exp.Expr, scope: Scope) -> None:
        name = ident.name
        for alias, source in scope.sources.items():
            for out in self._source_columns(alias, source, scope, record=False):
                if out.name == name:
                    for src in out.sources:
                        self.uses.add(ColumnUse(src, Usage.JOIN))

    # -- expressions --------------------------------------------------------------------

    def _flow(self, node: exp.Expr, scope: Scope, usage: Usage, *, record: bool) -> Flow:
        flow = Flow()
        try:
            self._flow_into(node, scope, usage, flow, record)
        except RecursionError:
            self._fail("too-deep", "expression nesting is too deep to analyse", node)
        if isinstance(node, exp.Column) and not isinstance(node.this, exp.Star):
            pass  # direct stays as the column resolution set it
        else:
            flow.direct = False
        return flow

    def _flow_into(self, node: exp.Expr, scope: Scope, usage: Usage, flow: Flow, record: bool) -> None:
        if isinstance(node, exp.Column):
            self._column_flow(node, scope, usage, flow, record)
            return
        if isinstance(node, exp.TableColumn):
            # A whole-row reference (``SELECT c FROM t c``, ``row_to_json(c)``).
            found = self._find_source(node.name, scope)
            if found is None:
                self._fail("unknown-table", f"no table or alias named {node.name!r} in scope", node)
                return
            self._add(flow, self._source_columns(node.name, found[1], found[0], record=record), usage, record)
            return
        if isinstance(node, (exp.Select, exp.SetOperation)) or (
            isinstance(node, exp.Subquery) and id(node.this) in self._scope_of
        ):
            inner = node.this if isinstance(node, exp.Subquery) else node
            child = self._scope_of.get(id(inner))
            outs = self._outputs.get(id(child.expression)) if child is not None else None
            if outs is None:
                self._fail("unsupported-query", "a subquery could not be analysed", node)
                return
            for out in outs:
                flow.sources |= out.sources
                flow.opaque |= out.opaque
                if record and usage is not Usage.PROJECTED:
                    for src in out.sources:
                        self.uses.add(ColumnUse(src, usage))
            return
        if isinstance(node, exp.Count):
            # A count reveals how many, not what: its argument carries no value out.
            sink = Flow()
            for counted in node.iter_expressions():
                self._flow_into(counted, scope, usage, sink, record)
            return
        if isinstance(node, exp.Window):
            self._flow_into(node.this, scope, usage, flow, record)
            sink = Flow()
            for key in ("partition_by", "order"):
                part = node.args.get(key)
                parts = part if isinstance(part, list) else [part]
                for p in parts:
                    if isinstance(p, exp.Expr):
                        self._flow_into(p, scope, Usage.WINDOW, sink, record)
            return
        if isinstance(node, exp.Func) and not isinstance(node, exp.Count):
            name = function_name(node)
            if name in DANGEROUS_FUNCTIONS:
                self._fail("dangerous-function", f"function {name}() reads or changes state outside the query", node)
            if isinstance(node, exp.Anonymous) and name not in KNOWN_FUNCTIONS:
                # Unknown function: what it returns cannot be reasoned about.
                inner_flow = Flow()
                for operand in node.iter_expressions():
                    self._flow_into(operand, scope, usage, inner_flow, record)
                flow.sources |= inner_flow.sources
                flow.opaque |= inner_flow.sources | inner_flow.opaque
                return
        for sub in node.iter_expressions():
            self._flow_into(sub, scope, usage, flow, record)

    def _column_flow(self, col: exp.Column, scope: Scope, usage: Usage, flow: Flow, record: bool) -> None:
        table = col.table
        if isinstance(col.this, exp.Star):
            outs = self._lookup_source_columns(table, scope, col, record=record)
            self._add(flow, [o for o in outs], usage, record)
            return
        if not table:
            name = col.name
            # ORDER BY / GROUP BY may name an output alias.
            expr = scope.expression
            if isinstance(expr, exp.Select) and _clause_of(col, expr) not in (None, "expressions"):
                for projection in expr.selects:
                    if isinstance(projection, exp.Alias) and projection.alias == name:
                        self._flow_into(projection.this, scope, usage, flow, record)
                        return
            # A bare table alias is a whole-row reference: every column flows.
            found = self._find_source(name, scope)
            if found is not None:
                outs = self._source_columns(name, found[1], found[0], record=record)
                self._add(flow, outs, usage, record)
                return
            self._fail("unknown-column", f"cannot resolve column {name!r}", col)
            return
        outs = self._lookup_source_columns(table, scope, col, record=record)
        for out in outs:
            if out.name == col.name:
                self._add(flow, [out], usage, record)
                flow.direct = not out.transformed and len(out.sources) == 1
                return
        if outs or self._find_source(table, scope) is not None:
            self._fail("unknown-column", f"column {table}.{col.name} does not exist", col)

    def _add(self, flow: Flow, outs: list[OutputColumn], usage: Usage, record: bool) -> None:
        for out in outs:
            flow.sources |= out.sources
            flow.opaque |= out.opaque
            if record:
                for src in out.sources:
                    self.uses.add(ColumnUse(src, usage))

    def _find_source(self, name: str, scope: Scope) -> tuple[Scope, exp.Table | Scope] | None:
        current: Scope | None = scope
        while current is not None:
            source = current.sources.get(name)
            if source is None and hasattr(current, "lateral_sources"):
                source = current.lateral_sources.get(name)
            if source is not None:
                return current, source
            current = current.parent
        return None

    def _lookup_source_columns(
        self, name: str, scope: Scope, node: exp.Expr, *, record: bool
    ) -> list[OutputColumn]:
        found = self._find_source(name, scope)
        if found is None:
            self._fail("unknown-table", f"no table or alias named {name!r} in scope", node)
            return []
        return self._source_columns(name, found[1], found[0], record=record)

    def _source_columns(
        self, alias: str, source: exp.Table | Scope, scope: Scope, *, record: bool
    ) -> list[OutputColumn]:
        if isinstance(source, Scope):
            outs = self._outputs.get(id(source.expression))
            if outs is None:
                # A recursive CTE refers to itself before its union is known: use the
                # branches computed so far and iterate to a fixpoint.
                self._cycle = True
                branches = getattr(source, "set_operation_scopes", None) or []
                outs = []
                for branch in branches:
                    got = self._outputs.get(id(branch.expression))
                    if got is not None:
                        outs = got
                        break
            return outs
        return self._table_columns(source, scope, record=record)

    def _table_columns(self, table: exp.Table, scope: Scope, *, record: bool) -> list[OutputColumn]:
        if isinstance(table.this, exp.Func) or not isinstance(table.this, exp.Identifier):
            return self._table_function_columns(table, scope, record=record)
        rel = self.catalog.get(table.db, table.name) if table.db else None
        if rel is None:
            return []
        if record:
            self.reads[rel.qualified] = None
        if rel.kind == "view" and rel.definition:
            result = self.schemas.view_outputs(self.catalog, rel, self.views_stack)
            if isinstance(result, Unresolved):
                self.unresolved.append(result)
                return []
            if record:
                for rel_name in result.reads:
                    self.reads[rel_name] = None
            return list(result.outputs)
        return [OutputColumn(c, frozenset({ColumnRef(rel.schema, rel.name, c)})) for c in rel.columns]

    def _table_function_columns(self, table: exp.Table, scope: Scope, *, record: bool) -> list[OutputColumn]:
        fn = table.this
        name = function_name(fn) if isinstance(fn, exp.Expr) else ""
        if isinstance(fn, (exp.ReadCSV, exp.ReadParquet)) or name in FILE_READERS:
            self._fail("file-reader", f"{name or 'a file reader'}() reads data from outside the catalog", table)
            return []
        if name not in SAFE_TABLE_FUNCTIONS:
            self._fail("unknown-table-function", f"table function {name}() is not known to be safe", table)
            return []
        flow = Flow()
        if isinstance(fn, exp.Expr):
            for arg in _function_args(fn):
                flow.absorb(self._flow(arg, scope, Usage.PROJECTED, record=record))
        names = _alias_columns(table) or [table.alias or name]
        return [OutputColumn(n, frozenset(flow.sources), True, frozenset(flow.opaque)) for n in names]

    def _check_table(self, table: exp.Table) -> None:
        if not isinstance(table.this, exp.Identifier):
            return
        if not table.db or self.catalog.get(table.db, table.name) is None:
            name = table.name
            if "/" in name or "." in name or "*" in name or ":" in name:
                self._fail("file-reader", f"{name!r} reads a file, which is outside the catalog", table)
            else:
                shown = f"{table.db}.{name}" if table.db else name
                self._fail(
                    "unknown-table",
                    f"table {shown} is not in the catalog (search_path: {', '.join(self.search_path)})",
                    table,
                )

    # -- literals -----------------------------------------------------------------------

    def _bind_predicate_literals(self, clause: exp.Expr, scope: Scope) -> None:
        # Each conjunct binds its literals to every column it mentions: a literal
        # searched for next to a classified column is itself sensitive.
        root = clause.this if isinstance(clause, (exp.Where, exp.Having, exp.Qualify)) else clause
        for part in _conjuncts(root):
            self._bind_literals(part, scope)

    def _bind_literals(self, node: exp.Expr, scope: Scope) -> None:
        literals = [n for n in _walk_scope(node, self._scope_of, scope.expression) if isinstance(n, exp.Literal)]
        if not literals:
            return
        flow = self._flow(node, scope, Usage.PREDICATE, record=False)
        if flow.sources:
            self.bind(literals, frozenset(flow.sources))

    def bind(self, literals: list[exp.Literal], columns: frozenset[ColumnRef]) -> None:
        for lit in literals:
            if isinstance(lit.parent, exp.Parameter):
                continue  # the 1 of a $1 placeholder: the value is bound, not in the text
            start, end = lit.meta.get("start"), lit.meta.get("end")
            if isinstance(start, int) and isinstance(end, int):
                self.literals.append(LiteralSpan(start, end + 1, columns))

    # -- errors -------------------------------------------------------------------------

    def _fail(self, code: str, message: str, node: exp.Expr) -> None:
        line, col = _position(node)
        self.unresolved.append(Unresolved(code, message, line, col))


@dataclass(frozen=True)
class _ViewLineage:
    outputs: tuple[OutputColumn, ...]
    reads: tuple[str, ...]  # relations the view reads, nested views included


def _analyse_view(
    catalog: Catalog, view: Relation, stack: tuple[str, ...], schemas: SchemaCache
) -> _ViewLineage | Unresolved:
    """Lineage of a view's columns, from its definition, renamed to the view's column names."""
    import sqlglot  # local: avoids a cycle at import time
    from sqlglot.optimizer.normalize_identifiers import normalize_identifiers

    if view.qualified in stack:
        return Unresolved("view-cycle", f"view {view.qualified} refers to itself")
    try:
        query = sqlglot.parse_one(view.definition or "", dialect=catalog.dialect)
    except Exception as exc:
        return Unresolved("view-unparseable", f"view {view.qualified} could not be parsed: {type(exc).__name__}")
    if not isinstance(query, exp.Query):
        return Unresolved("view-unparseable", f"view {view.qualified} is not a query")
    path = (view.schema, *catalog.search_path)
    normalize_identifiers(query, dialect=catalog.dialect)
    resolve_table_schemas(query, catalog, path)
    lineage = QueryLineage(catalog, path, views_stack=(*stack, view.qualified), schemas=schemas)
    try:
        qualified = lineage.qualify(query)
        outs = lineage.analyse(qualified)
    except Exception as exc:
        return Unresolved("view-unresolved", f"view {view.qualified} could not be analysed: {type(exc).__name__}")
    if lineage.unresolved:
        first = lineage.unresolved[0]
        return Unresolved(first.code, f"in view {view.qualified}: {first.message}")
    if len(outs) != len(view.columns):
        return Unresolved("view-unresolved", f"view {view.qualified} has {len(view.columns)} columns but its definition gives {len(outs)}")
    return _ViewLineage(
        tuple(OutputColumn(name, o.sources, o.transformed, o.opaque) for name, o in zip(view.columns, outs, strict=True)),
        tuple(lineage.reads),
    )


def _alias_columns(expr: exp.Expr) -> list[str]:
    alias = expr.args.get("alias")
    if isinstance(alias, exp.TableAlias):
        return [c.name for c in alias.columns]
    return []


def _first_row(values: exp.Values) -> list[exp.Expr]:
    rows = values.expressions
    if rows and isinstance(rows[0], exp.Tuple):
        return list(rows[0].expressions)
    return list(rows[:1])


def _function_args(fn: exp.Expr) -> Iterator[exp.Expr]:
    yield from fn.iter_expressions()


def _conjuncts(node: exp.Expr) -> Iterator[exp.Expr]:
    if isinstance(node, (exp.And, exp.Or)):
        yield from _conjuncts(node.left)
        yield from _conjuncts(node.right)
    elif isinstance(node, (exp.Paren, exp.Not)):
        yield from _conjuncts(node.this)
    else:
        yield node


def _walk_scope(node: exp.Expr, scope_of: dict[int, Scope], own: exp.Expr) -> Iterator[exp.Expr]:
    """Nodes under ``node`` that belong to the same scope (child scopes pruned)."""
    stack = [node]
    while stack:
        current = stack.pop()
        if current is not own and id(current) in scope_of and current is not node:
            continue
        yield current
        stack.extend(current.iter_expressions())


def _position(node: exp.Expr) -> tuple[int | None, int | None]:
    for candidate in (node, *node.find_all(exp.Identifier, exp.Literal)):
        meta = candidate.meta
        if "line" in meta:
            return int(meta["line"]), int(meta.get("col", 0))
        if isinstance(candidate, exp.Column) and isinstance(candidate.this, exp.Identifier):
            m = candidate.this.meta
            if "line" in m:
                return int(m["line"]), int(m.get("col", 0))
    return None, None
