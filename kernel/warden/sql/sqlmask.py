"""Masks written as SQL (``sql:EXPR``) are applied in the query itself.

The statement is wrapped so that each masked output column is replaced by the
policy's expression over it; the others pass through. Columns are renamed
positionally first (``AS _w(c1, c2, ...)``), so duplicate or odd output names
cannot confuse the wrapper.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sqlglot import exp

from warden.masking.operators import MaskOperator, render_sql


def apply_sql_masks(
    statement_sql: str,
    output_names: Sequence[str],
    masks: Mapping[int, MaskOperator],
    dialect: str,
) -> str:
    """Wrap a query so outputs at ``masks``' positions go through their SQL expression."""
    if not masks:
        return statement_sql
    inner = [f"c{i}" for i in range(len(output_names))]
    select = []
    for i, name in enumerate(output_names):
        column = f"_w.{inner[i]}"
        op = masks.get(i)
        expr = render_sql(op, column) if op is not None and op.kind == "sql" else column
        select.append(f"{expr} AS {exp.to_identifier(name, quoted=True).sql(dialect=dialect)}")
    body = statement_sql.strip().rstrip(";")
    return f"SELECT {', '.join(select)} FROM ({body}) AS _w({', '.join(inner)})"
