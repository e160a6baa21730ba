"""Row-filter rewrite: add a predicate to every read of chosen tables, however nested.

Each reference to a filtered table becomes ``(SELECT * FROM t WHERE pred) AS alias``,
so the filter holds in CTEs, subqueries, joins, set operations and views' callers
alike. UPDATE and DELETE targets get the predicate ANDed into their WHERE.
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
        pred = predicates.get(_name(target))
        if pred is not None:
            where = stmt.args.get("where")
            cond = pred.copy()
            if target.alias:
                cond = _qualify_columns(cond, target.alias)
            new = exp.and_(exp.paren(where.this.copy()), exp.paren(cond)) if isinstance(where, exp.Where) else cond
            stmt.set("where", exp.Where(this=new))

    for table in list(stmt.find_all(exp.Table)):
        if table is target or not isinstance(table.this, exp.Identifier):
            continue
        if table.parent is stmt or (isinstance(table.parent, exp.Schema) and table.parent.parent is stmt):
            continue  # the written table of INSERT / CREATE, not a read
        pred = predicates.get(_name(table))
        if pred is None:
            continue
        alias = table.alias or table.name
        inner = exp.select("*").from_(exp.Table(this=table.this.copy(), db=table.args.get("db"))).where(pred.copy())
        table.replace(exp.Subquery(this=inner, alias=exp.TableAlias(this=exp.to_identifier(alias))))
    return stmt.sql(dialect=dialect)


def _name(table: exp.Table) -> str:
    return f"{table.db}.{table.name}" if table.db else table.name


def _qualify_columns(pred: exp.Expr, alias: str) -> exp.Expr:
    for col in pred.find_all(exp.Column):
        if not col.table:
            col.set("table", exp.to_identifier(alias))
    return pred
