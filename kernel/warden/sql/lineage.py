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
from dataclasses import dataclass, field, replace

from sqlglot import exp
from sqlglot.optimizer.qualify import qualify
from sqlglot.optimizer.scope import Scope, build_scope
from sqlglot.schema import MappingSchema

from warden.sql.catalog import Catalog, Relation
from warden.sql.functions import (
    FunctionClass,
    FunctionInfo,
    annotate_calls,
    classify_call,
    function_table,
)
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
        "csvread", "readcsv", "readparquet", "readjson", "read_duckdb",
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

# A recursive CTE can move a value one column per round; its lineage is iterated
# until no output's sources change. No fixpoint within this bound denies.
_MAX_RECURSIVE_ROUNDS = 64


@dataclass
class Flow:
    """What flows from an expression: base columns, unreviewed calls, and whether it is a copy."""

    sources: set[ColumnRef] = field(default_factory=set)
    functions: set[str] = field(default_factory=set)  # unreviewed calls the value passes
    direct: bool = False

    def absorb(self, other: Flow) -> None:
        self.sources |= other.sources
        self.functions |= other.functions

    def take(self, out: OutputColumn) -> None:
        self.sources |= out.sources
        self.functions |= out.functions

    def output(self, name: str) -> OutputColumn:
        return OutputColumn(
            name=name,
            sources=frozenset(self.sources),
            transformed=bool(self.functions) or not (self.direct and len(self.sources) == 1),
            functions=frozenset(self.functions),
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
        self.functions: dict[str, None] = {}  # unreviewed calls in views this query reads
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
        recursive = False
        for _ in range(_MAX_RECURSIVE_ROUNDS):
            before = {k: list(v) for k, v in self._outputs.items()}
            self._cycle = False
            # Only the last round's problems count: earlier rounds of a recursive CTE
            # see its self-reference half-resolved.
            self.unresolved = list(earlier_problems)
            for scope in scopes:
                self._outputs[id(scope.expression)] = self._scope_outputs(scope, record=True)
            recursive = recursive or self._cycle
            # A recursive CTE feeds its own outputs back: iterate until nothing changes.
            if not recursive or self._outputs == before:
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
            # Engine default names, overlaid by the alias list (PostgreSQL column1..,
            # DuckDB col0..); values carry no base column, but expressions in them may.
            width = len(_first_row(expr))
            defaults = [f"column{i + 1}" if self.catalog.dialect == "postgres" else f"col{i}" for i in range(width)]
            names = _overlay(_alias_columns(expr), defaults)
            flows = [Flow() for _ in range(width)]
            for row in expr.expressions:
                cells = row.expressions if isinstance(row, exp.Tuple) else [row]
                for i, cell in enumerate(cells[:width]):
                    flows[i].absorb(self._flow(cell, scope, Usage.PROJECTED, record=record))
            return [f.output(n) for f, n in zip(flows, names, strict=False)]
        if isinstance(expr, exp.Lateral):
            inner = scope.sources.get("")
            if isinstance(inner, Scope):
                outs = self._outputs.get(id(inner.expression), [])
                names = _alias_columns(expr)
                if names and len(names) > len(outs):
                    self._fail("column-aliases", f"{len(names)} column aliases for a subquery of {len(outs)} columns", expr)
                if names:
                    outs = [replace(o, name=n) for n, o in zip(_overlay(names, [o.name for o in outs]), outs, strict=True)]
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
            flow = Flow()
            transformed = False
            for b in present:
                if i < len(b):
                    flow.take(b[i])
                    transformed = transformed or b[i].transformed
            # Rows of different origins merge into one column: a copy only if all agree.
            out = flow.output(present[0][i].name)
            outs.append(replace(out, transformed=transformed or bool(flow.functions) or len(flow.sources) > 1))
        return outs

    def _udtf_outputs(self, expr: exp.Expr, scope: Scope, *, record: bool) -> list[OutputColumn]:
        """A set-returning function used as a row source (``LATERAL f(x)``, ``unnest(a)``)."""
        fn = expr.this if isinstance(expr, exp.Lateral) else expr
        if not isinstance(fn, exp.Func):
            self._fail("unsupported-query", f"unsupported row source {fn.key}", expr)
            return []
        return self._srf_columns(fn, expr, scope, record=record)

    def _srf_columns(self, fn: exp.Func, holder: exp.Expr, scope: Scope, *, record: bool) -> list[OutputColumn]:
        """Output columns of a set-returning function, exactly as the engine names them.

        The width comes from the function table, not from the alias list: a shorter
        alias list renames the first columns and the rest keep their own names."""
        call = classify_call(fn, self.catalog.dialect, self.catalog.user_functions, in_from=True)
        if isinstance(fn, (exp.ReadCSV, exp.ReadParquet)) or call.name in FILE_READERS:
            self._fail("file-reader", f"{call.name}() reads data from outside the catalog", holder)
            return []
        if call.dangerous:
            self._fail("dangerous-function", f"{call.name}() runs SQL text, reads files or server state, or changes state", holder)
            return []
        info = call.info
        if isinstance(fn, exp.Unnest) and info is None:
            info = function_table_entry(self.catalog.dialect, "unnest")
        if info is None or info.kind is not FunctionClass.TABLE:
            self._fail(
                "unknown-table-function",
                f"table function {call.key}() is not one warden knows the output of; "
                "ask an admin to review it, or select from a table or view",
                holder,
            )
            return []
        flow = Flow()
        args = list(_function_args(fn))
        for arg in args:
            flow.absorb(self._flow(arg, scope, Usage.PROJECTED, record=record))
        names = self._srf_names(info, holder, len(args))
        if names is None:
            return []
        return [replace(flow.output(n), transformed=True) for n in names]

    def _srf_names(self, info: FunctionInfo, holder: exp.Expr, nargs: int) -> list[str] | None:
        names, problem = srf_column_names(info, holder, nargs, self.catalog.dialect)
        if problem:
            self._fail(problem[0], problem[1], holder)
            return None
        return names

    def _select_outputs(self, select: Scope, *, record: bool) -> list[OutputColumn]:
        expr = select.expression
        assert isinstance(expr, exp.Select)
        for source in select.sources.values():
            if isinstance(source, exp.Table) and record:
                if isinstance(source.this, exp.Identifier):
                    self._check_table(source)
                    # Every relation in FROM is read, whether or not a column of it is named.
                    self._table_columns(source, select, record=True)
                else:
                    self._table_function_columns(source, select, record=False)
        outs: list[OutputColumn] = []
        for projection in expr.selects:
            inner = projection.unalias()
            if isinstance(inner, exp.Star) or (isinstance(inner, exp.Column) and isinstance(inner.this, exp.Star)):
                expanded = self._expand_star(inner, select, record=record)
                if expanded is None:
                    # A star qualify could not expand: some source has unknown columns.
                    self._fail("unknown-columns", "cannot expand * over a source with unknown columns", projection)
                    continue
                outs.extend(expanded)
                continue
            if isinstance(inner, (exp.Columns, exp.PositionalColumn)):
                what = "COLUMNS(...)" if isinstance(inner, exp.Columns) else "a positional column (#n)"
                self._fail(
                    "engine-projection",
                    f"{what} is resolved by the engine at run time, so warden cannot know which columns it returns; name the columns",
                    projection,
                )
                continue
            flow = self._flow(inner, select, Usage.PROJECTED, record=record)
            outs.append(flow.output(projection.alias_or_name))
        if record:
            self._record_clauses(select)
        return outs

    def _expand_star(self, star: exp.Expr, scope: Scope, *, record: bool) -> list[OutputColumn] | None:
        """``*`` or ``t.*`` over sources qualify could not expand (set-returning
        functions): expanded from the sources' known columns, or None."""
        expr = scope.expression
        if star.args.get("except_") or star.args.get("replace") or star.args.get("rename"):
            return None
        if any(j.args.get("using") or j.args.get("kind") == "NATURAL" or j.args.get("method") for j in expr.args.get("joins") or []):
            return None  # USING/NATURAL merge columns: leave it to qualify
        names = [star.table] if isinstance(star, exp.Column) and star.table else list(scope.selected_sources)
        outs: list[OutputColumn] = []
        for name in names:
            found = self._find_source(name, scope)
            if found is None:
                return None
            cols = self._source_columns(name, found[1], found[0], record=record)
            if not cols:
                return None
            for col in cols:
                if record:
                    for src in col.sources:
                        self.uses.add(ColumnUse(src, Usage.PROJECTED))
            outs.extend(cols)
        return outs

    def _record_clauses(self, scope: Scope) -> None:
        expr = scope.expression
        assert isinstance(expr, exp.Select)
        # ORDER BY ALL sorts by every (non-aggregate) output column: the order of the
        # raw values shows through the masks.
        group, order = expr.args.get("group"), expr.args.get("order")
        if isinstance(order, exp.Order) and any(
            isinstance(o, exp.Ordered) and isinstance(o.this, exp.Var) and o.this.name.upper() == "ALL" for o in order.expressions
        ):
            for projection in expr.selects:
                if projection.find(exp.AggFunc) is None:
                    self._flow(projection.unalias(), scope, Usage.ORDER, record=True)
        # A GROUP BY key that is itself an output (GROUP BY 1, an alias, the same
        # expression, GROUP BY ALL; a plain DISTINCT) is shown only through that
        # output's mask: the groups reveal no more than the masked column does. Keys
        # that are not outputs group by values the user never sees: those count.
        if isinstance(group, exp.Group) and group.args.get("all"):
            for projection in expr.selects:
                if projection.find(exp.AggFunc) is None:
                    self._flow(projection.unalias(), scope, Usage.GROUPED, record=True)
        if isinstance(group, exp.Group):
            shown = [p.unalias() for p in expr.selects]
            for key_expr in group.expressions:
                usage = Usage.GROUPED if any(key_expr == p for p in shown) else Usage.GROUP
                self._flow(key_expr, scope, usage, record=True)
            for part in ("grouping_sets", "cube", "rollup"):
                for node in group.args.get(part) or []:
                    if isinstance(node, exp.Expr):
                        self._flow(node, scope, Usage.GROUP, record=True)
        for key, usage in _CLAUSE_USAGE.items():
            if key == "group":
                continue
            clause = expr.args.get(key)
            if key == "distinct" and isinstance(clause, exp.Distinct) and not clause.args.get("on"):
                for projection in expr.selects:  # DISTINCT over the outputs: GROUP BY of output keys
                    if projection.find(exp.AggFunc) is None:
                        self._flow(projection.unalias(), scope, Usage.GROUPED, record=True)
                continue
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
        if isinstance(node, exp.Star):
            # A bare * inside an expression (DuckDB ``* LIKE 'e%'``, ``f(*)``) stands for
            # columns the engine picks at run time; only count(*) is plain.
            if not isinstance(node.parent, exp.Count):
                self._fail("engine-projection", "a * inside an expression selects columns the engine picks at run time; name the columns", node)
            return
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
                flow.take(out)
                if record and usage is not Usage.PROJECTED:
                    for src in out.sources:
                        self.uses.add(ColumnUse(src, usage))
            return
        if isinstance(node, exp.Count):
            # A count reveals how many, not what: its argument carries no value out.
            sink = Flow()
            for counted in node.iter_expressions():
                self._flow_into(counted, scope, usage, sink, record)
            flow.functions |= sink.functions
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
        if isinstance(node, exp.Dot) and isinstance(node.expression, exp.Func):
            self._flow_into(node.expression, scope, usage, flow, record)  # schema.fn(...)
            return
        if isinstance(node, exp.Func):
            call = classify_call(node, self.catalog.dialect, self.catalog.user_functions)
            if call.dangerous:
                self._fail("dangerous-function", f"function {call.name}() runs SQL text, reads files or server state, or changes state", node)
                return
            if call.info is None:
                # Not a reviewed built-in: what it returns cannot be traced. Its
                # arguments still flow; the policy's functions: section decides.
                inner_flow = Flow()
                for operand in node.iter_expressions():
                    self._flow_into(operand, scope, usage, inner_flow, record)
                flow.absorb(inner_flow)
                flow.functions.add(call.key)
                return
            if call.info.kind is FunctionClass.COUNT:
                tally = Flow()
                for argument in node.iter_expressions():
                    self._flow_into(argument, scope, usage, tally, record)
                flow.functions |= tally.functions
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
            self._fail("unknown-column", f"cannot resolve column {name!r}", col, name=name, candidates=self._columns_in_reach(scope))
            return
        outs = self._lookup_source_columns(table, scope, col, record=record)
        for out in outs:
            if out.name == col.name:
                self._add(flow, [out], usage, record)
                flow.direct = not out.transformed and len(out.sources) == 1
                return
        if outs or self._find_source(table, scope) is not None:
            self._fail(
                "unknown-column", f"column {table}.{col.name} does not exist", col,
                name=col.name, candidates=self._columns_in_reach(scope, only=table),
            )  # fmt: skip

    def _add(self, flow: Flow, outs: list[OutputColumn], usage: Usage, record: bool) -> None:
        for out in outs:
            flow.take(out)
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
            union = _recursive_union(source.expression, scope)
            if union is not None:
                # A recursive CTE's self-reference: sqlglot points it at the anchor
                # branch, but its rows are the whole union's. Use the union's outputs
                # from the previous round (the anchor's in the first) and iterate.
                self._cycle = True
                found = self._outputs.get(id(union))
                if found is not None:
                    return found
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
        if rel.kind == "view":
            if not rel.definition:
                self._fail("view-unresolved", f"view {rel.qualified} has no definition warden can read, so its columns' lineage is unknown", table)
                return []
            result = self.schemas.view_outputs(self.catalog, rel, self.views_stack)
            if isinstance(result, Unresolved):
                self.unresolved.append(result)
                return []
            if record:
                for rel_name in result.reads:
                    self.reads[rel_name] = None
                for fn in result.functions:
                    self.functions[fn] = None
            return list(result.outputs)
        if rel.parent:
            # A partition's (or inheritance child's) rows are its root table's: its
            # columns are the root's columns for classification, and reading it reads the root.
            root = self.catalog.root(rel)
            if record:
                self.reads[root.qualified] = None
            return [OutputColumn(c, frozenset({ColumnRef(root.schema, root.name, c)})) for c in rel.columns]
        return [OutputColumn(c, frozenset({ColumnRef(rel.schema, rel.name, c)})) for c in rel.columns]

    def _table_function_columns(self, table: exp.Table, scope: Scope, *, record: bool) -> list[OutputColumn]:
        fn = table.this
        if not isinstance(fn, exp.Func):
            self._fail("unsupported-query", f"unsupported row source {fn.key if isinstance(fn, exp.Expr) else fn!r}", table)
            return []
        return self._srf_columns(fn, table, scope, record=record)

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
                    name=name,
                    candidates=self._tables_in_reach(),
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

    def _fail(
        self, code: str, message: str, node: exp.Expr, *, name: str = "", candidates: tuple[tuple[str, str], ...] = ()
    ) -> None:
        line, col = _position(node)
        self.unresolved.append(Unresolved(code, message, line, col, name, candidates))

    def _columns_in_reach(self, scope: Scope, only: str | None = None) -> tuple[tuple[str, str], ...]:
        """(relation, column) of every column the scope can name (``only``: one alias)."""
        out: dict[tuple[str, str], None] = {}
        current: Scope | None = scope
        while current is not None:
            for alias, source in current.sources.items():
                if only is not None and alias != only:
                    continue
                if isinstance(source, exp.Table) and isinstance(source.this, exp.Identifier):
                    rel = self.catalog.get(source.db, source.name) if source.db else None
                    if rel is not None:
                        out.update(dict.fromkeys((rel.qualified, c) for c in rel.columns))
                    continue
                outs = self._outputs.get(id(source.expression)) if isinstance(source, Scope) else None
                for o in outs or []:
                    relation = next(iter(o.sources)).relation if len(o.sources) == 1 else ""
                    out[(relation, o.name)] = None
            current = current.parent
        return tuple(out)

    def _tables_in_reach(self) -> tuple[tuple[str, str], ...]:
        return tuple((rel.qualified, rel.name) for rel in self.catalog.relations.values())


@dataclass(frozen=True)
class _ViewLineage:
    outputs: tuple[OutputColumn, ...]
    reads: tuple[str, ...]  # relations the view reads, nested views included
    functions: tuple[str, ...] = ()  # unreviewed calls in the view's body, nested views included


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
    annotate_calls(query, view.definition or "", catalog.dialect)
    normalize_identifiers(query, dialect=catalog.dialect)
    resolve_table_schemas(query, catalog, path)
    complete_row_source_aliases(query, catalog)
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
    calls, problems = statement_calls(query, catalog)
    if problems:
        return Unresolved(problems[0].code, f"in view {view.qualified}: {problems[0].message}")
    return _ViewLineage(
        tuple(replace(o, name=name) for name, o in zip(view.columns, outs, strict=True)),
        tuple(lineage.reads),
        tuple(dict.fromkeys((*calls, *lineage.functions))),
    )


def srf_column_names(
    info: FunctionInfo, holder: exp.Expr, nargs: int, dialect: str
) -> tuple[list[str], tuple[str, str] | None]:
    """The columns a set-returning function yields as the engine names them, given
    the alias list on ``holder``; or a (code, message) problem."""
    aliases = _alias_columns(holder)
    alias = holder.alias if holder.args.get("alias") is not None else ""
    spec = info.columns
    if spec == ("*definition",):
        if not aliases:
            return [], ("column-definition", f"{info.name}() needs a column definition list (AS x(a int, ...))")
        return aliases, None
    if spec == ("=name",) or (spec == ("*args",) and (nargs <= 1 or dialect != "postgres")):
        defaults = [alias or info.name]
    elif spec == ("*args",):
        defaults = [info.name] * nargs
    else:
        defaults = list(spec)
    if len(aliases) > len(defaults):
        return [], ("column-aliases", f"{len(aliases)} column aliases for {info.name}(), which returns {len(defaults)} columns")
    return _overlay(aliases, defaults), None


def complete_row_source_aliases(stmt: exp.Expr, catalog: Catalog) -> None:
    """Spell out every set-returning function's full column list in its alias
    (``jsonb_each(x) AS j(k)`` becomes ``AS j(k, value)``), so that star expansion
    and column resolution see the width the engine really returns. Analysis only:
    the statement that runs is the user's text."""
    for node in list(stmt.find_all(exp.Table, exp.Unnest, exp.Lateral)):
        holder: exp.Expr = node
        if isinstance(node, (exp.Table, exp.Lateral)):
            fn = node.this
        elif isinstance(node.parent, (exp.From, exp.Join)):
            fn = node
        else:
            continue
        if not isinstance(fn, exp.Func):
            continue
        call = classify_call(fn, catalog.dialect, catalog.user_functions, in_from=True)
        info = call.info
        if info is None and isinstance(fn, exp.Unnest):
            info = function_table_entry(catalog.dialect, "unnest")
        if info is None or info.kind is not FunctionClass.TABLE or info.columns == ("*definition",):
            continue
        names, problem = srf_column_names(info, holder, len(list(_function_args(fn))), catalog.dialect)
        if problem or names == _alias_columns(holder):
            continue
        current = holder.args.get("alias")
        ident = current.this if isinstance(current, exp.TableAlias) and current.this else exp.to_identifier(names[0] if len(names) == 1 else info.name)
        holder.set("alias", exp.TableAlias(this=ident, columns=[exp.to_identifier(n) for n in names]))


# Built-in types sqlglot does not model (it parses them as user-defined).
_KNOWN_EXTRA_TYPES = {
    "postgres": frozenset({"tsvector", "tsquery", "regconfig", "regdictionary", "pg_lsn", "txid_snapshot", "macaddr8"}),
    "duckdb": frozenset({"varint", "bignum"}),
}


def _recursive_union(anchor: exp.Expr, scope: Scope) -> exp.Expr | None:
    """The union of a recursive CTE when ``anchor`` is its first branch and ``scope``
    lies inside that union (the self-reference), else None."""
    union = anchor.parent
    if not isinstance(union, exp.SetOperation) or union.this is not anchor:
        return None
    cte = union.parent
    with_ = cte.parent if isinstance(cte, exp.CTE) else None
    if not isinstance(with_, exp.With) or not with_.args.get("recursive"):
        return None
    node: exp.Expr | None = scope.expression
    while node is not None:
        if node is union:
            return union
        node = node.parent
    return None


def statement_calls(stmt: exp.Expr, catalog: Catalog) -> tuple[list[str], list[Unresolved]]:
    """Every call anywhere in ``stmt`` (any clause, any statement kind): the keys of
    unreviewed ones, and a problem for each dangerous one. Row-source calls in FROM
    are left to lineage, which knows their output columns."""
    keys: dict[str, None] = {}
    problems: list[Unresolved] = []
    for pivot in stmt.find_all(exp.Pivot):
        line, col = _position(pivot)
        problems.append(
            Unresolved(
                "engine-projection",
                "PIVOT/UNPIVOT output columns come from the data, so they cannot be resolved before the query runs; "
                "aggregate with GROUP BY or CASE instead",
                line,
                col,
            )
        )
    for dtype in stmt.find_all(exp.DataType):
        if dtype.this == exp.DataType.Type.USERDEFINED:
            name = dtype.sql(dialect=catalog.dialect).lower().strip('"')
            if name not in _KNOWN_EXTRA_TYPES.get(catalog.dialect, frozenset()):
                line, col = _position(dtype)
                # A user-defined type runs user code (a domain's CHECK, a type's input
                # function) on the value cast to it.
                problems.append(
                    Unresolved("unknown-type", f"{name} is not a built-in type: a cast to it can run code warden cannot see", line, col)
                )
    for node in stmt.find_all(exp.Func):
        parent = node.parent
        in_from = isinstance(parent, (exp.Table, exp.Lateral)) or (
            isinstance(node, exp.Unnest) and isinstance(parent, (exp.From, exp.Join))
        )
        call = classify_call(node, catalog.dialect, catalog.user_functions, in_from=in_from)
        if call.dangerous:
            line, col = _position(node)
            problems.append(
                Unresolved("dangerous-function", f"function {call.name}() runs SQL text, reads files or server state, or changes state", line, col)
            )
        elif call.info is None and not in_from:
            keys[call.key] = None
    return list(keys), problems


def function_table_entry(dialect: str, name: str) -> FunctionInfo | None:
    return function_table(dialect).table(name)


def _overlay(aliases: list[str], defaults: list[str]) -> list[str]:
    """Column names after an alias list: the aliases rename the first columns."""
    return aliases + defaults[len(aliases) :]


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
    """A call's arguments (an ``unnest``'s alias is a child node, not an argument)."""
    for arg in fn.iter_expressions():
        if not isinstance(arg, exp.TableAlias):
            yield arg


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
