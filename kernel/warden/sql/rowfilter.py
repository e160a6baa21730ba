"""Row-filter rewrite: add a predicate to every read of chosen tables, however nested.

Each reference to a filtered table becomes ``(SELECT * FROM t WHERE pred) AS alias``,
so the filter holds in CTEs, subqueries, joins, set operations and views' callers
alike. UPDATE and DELETE targets get the predicate ANDed into their WHERE.

A row filter belongs to the base table, so it follows every path to it: a view
whose body reads a filtered table (directly or through other views) is replaced
by its own body, rewritten the same way, as ``(SELECT ...) AS alias(columns)``.
A view that cannot be rewritten raises, and the statement is not run.
"""

from __future__ import annotations

from collections.abc import Mapping

import sqlglot
from sqlglot import exp
from sqlglot.optimizer.normalize_identifiers import normalize_identifiers

from warden.errors import AnalysisError
from warden.sql.catalog import Catalog
from warden.sql.lineage import resolve_table_schemas


def apply_row_filters(
    statement_sql: str,
    filters: Mapping[str, str],
    catalog: Catalog,
    *,
    search_path: tuple[str, ...] | None = None,
) -> str:
    """Rewrite one statement so every read of ``filters``' relations (``schema.table``)
    is restricted by its predicate. Returns SQL in the catalog's dialect."""
    dialect = catalog.dialect
    path = search_path or catalog.search_path
    try:
        stmt = sqlglot.parse_one(statement_sql, dialect=dialect)
    except sqlglot.errors.ParseError as exc:
        raise AnalysisError(f"cannot apply row filters: statement does not parse ({exc})") from None
    normalize_identifiers(stmt, dialect=dialect)
    resolve_table_schemas(stmt, catalog, path)
    predicates: dict[str, exp.Expr] = {}
    for relation, text in filters.items():
        try:
            predicates[relation] = sqlglot.parse_one(text, dialect=dialect)
        except sqlglot.errors.ParseError as exc:
            raise AnalysisError(f"row filter for {relation} does not parse: {exc}") from None

    target = stmt.this if isinstance(stmt, (exp.Update, exp.Delete)) else None
    if isinstance(target, exp.Table):
        pred = _predicate_for(target, predicates, catalog)
        if pred is not None:
            where = stmt.args.get("where")
            cond = pred.copy()
            if target.alias:
                cond = _qualify_columns(cond, target.alias)
            new = exp.and_(exp.paren(where.this.copy()), exp.paren(cond)) if isinstance(where, exp.Where) else cond
            stmt.set("where", exp.Where(this=new))

    _rewrite_reads(stmt, predicates, catalog, skip=target, stack=())
    return stmt.sql(dialect=dialect)


_MAX_VIEW_DEPTH = 16


def _rewrite_reads(
    stmt: exp.Expr,
    predicates: Mapping[str, exp.Expr],
    catalog: Catalog,
    *,
    skip: exp.Expr | None,
    stack: tuple[str, ...],
) -> None:
    for table in list(stmt.find_all(exp.Table)):
        if table is skip or not isinstance(table.this, exp.Identifier):
            continue
        if table.parent is stmt or (isinstance(table.parent, exp.Schema) and table.parent.parent is stmt):
            continue  # the written table of INSERT / CREATE, not a read
        pred = _predicate_for(table, predicates, catalog)
        alias = table.alias or table.name
        if pred is not None:
            inner = exp.select("*").from_(exp.Table(this=table.this.copy(), db=table.args.get("db"))).where(pred.copy())
            table.replace(exp.Subquery(this=inner, alias=exp.TableAlias(this=exp.to_identifier(alias))))
            continue
        rel = catalog.get(table.db, table.name) if table.db else None
        if rel is None or rel.kind != "view" or not _view_reads_filtered(rel.qualified, predicates, catalog, ()):
            continue
        body = _view_body(rel.qualified, catalog, stack)
        _rewrite_reads(body, predicates, catalog, skip=None, stack=(*stack, rel.qualified))
        columns = [exp.to_identifier(c) for c in rel.columns]
        table.replace(exp.Subquery(this=body, alias=exp.TableAlias(this=exp.to_identifier(alias), columns=columns)))


def _predicate_for(table: exp.Table, predicates: Mapping[str, exp.Expr], catalog: Catalog) -> exp.Expr | None:
    """The filter of a table, or of the root table it is a partition of."""
    pred = predicates.get(_name(table))
    if pred is None and table.db:
        rel = catalog.get(table.db, table.name)
        if rel is not None and rel.parent:
            pred = predicates.get(catalog.root(rel).qualified)
    return pred


def _view_body(qualified: str, catalog: Catalog, stack: tuple[str, ...]) -> exp.Expr:
    schema, _, name = qualified.partition(".")
    rel = catalog.get(schema, name)
    if rel is None or not rel.definition:
        raise AnalysisError(f"cannot apply row filters: view {qualified} has no readable definition")
    if qualified in stack or len(stack) > _MAX_VIEW_DEPTH:
        raise AnalysisError(f"cannot apply row filters: view {qualified} nests too deeply or refers to itself")
    try:
        body = sqlglot.parse_one(rel.definition, dialect=catalog.dialect)
    except sqlglot.errors.ParseError:
        raise AnalysisError(f"cannot apply row filters: view {qualified} does not parse") from None
    if not isinstance(body, exp.Query):
        raise AnalysisError(f"cannot apply row filters: view {qualified} is not a query")
    normalize_identifiers(body, dialect=catalog.dialect)
    resolve_table_schemas(body, catalog, (rel.schema, *catalog.search_path))
    return body


def _view_reads_filtered(qualified: str, predicates: Mapping[str, exp.Expr], catalog: Catalog, stack: tuple[str, ...]) -> bool:
    """Whether a view's body reads a filtered relation, through any number of views."""
    if qualified in stack or len(stack) > _MAX_VIEW_DEPTH:
        return True  # unknowable: rewrite, which then fails closed
    body = _view_body(qualified, catalog, stack)
    for table in body.find_all(exp.Table):
        if not isinstance(table.this, exp.Identifier) or not table.db:
            continue
        if _predicate_for(table, predicates, catalog) is not None:
            return True
        rel = catalog.get(table.db, table.name)
        if rel is not None and rel.kind == "view" and _view_reads_filtered(rel.qualified, predicates, catalog, (*stack, qualified)):
            return True
    return False


def _name(table: exp.Table) -> str:
    return f"{table.db}.{table.name}" if table.db else table.name


def _qualify_columns(pred: exp.Expr, alias: str) -> exp.Expr:
    for col in pred.find_all(exp.Column):
        if not col.table:
            col.set("table", exp.to_identifier(alias))
    return pred
