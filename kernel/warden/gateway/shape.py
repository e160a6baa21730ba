"""The run-time check that a result is what the analysis predicted.

Masks are applied by position. If the database returns more, fewer or other columns than
the analysis accounted for (a table function whose alias list is shorter than its output, a
view redefined behind the catalog cache, an engine-specific projection), every mask after
the first difference lands on the wrong column. So before the first row of a statement is
framed, :func:`check_result_shape` compares the result's schema with the analysis:

* the column count must be equal;
* a column the analysis sees as a plain copy of one base column (``transformed`` False)
  must have the same name in the result, case-insensitively on DuckDB. Names of computed
  columns are the engine's own invention (PostgreSQL ``?column?`` or ``upper``, DuckDB
  ``CAST(email AS VARCHAR)``) and sqlglot's synthetic ``_col_N`` aliases, so those are
  not compared: the count and the plain columns pin the positions;
* every masked column's Arrow type must be one its mask operator applies to.

A statement that fails any of these is stopped before anything of it is sent.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

import pyarrow as pa

from warden.gateway.execute import ExecutionError
from warden.masking.operators import mask_supported
from warden.sql.catalog import Catalog
from warden.sql.model import StatementAnalysis

__all__ = ["ORIGIN_RULE", "SHAPE_RULE", "ShapeMismatchError", "check_origins", "check_result_shape"]

SHAPE_RULE: Final = "fail-closed/result-shape"
ORIGIN_RULE: Final = "fail-closed/result-origin"
_SYNTHETIC: Final = re.compile(r"^_col_\d+$")
# Statements that return the engine's own metadata (settings, plans), not table values.
_METADATA_KINDS: Final = frozenset({"show", "explain"})


class ShapeMismatchError(ExecutionError):
    """The result is not the shape the analysis predicted: the statement is stopped."""

    def __init__(self, message: str, *, code: str = "result-shape-mismatch") -> None:
        super().__init__(message, code=code)


def check_result_shape(
    st: StatementAnalysis,
    schema: pa.Schema | None,
    dialect: str,
    masks: Mapping[int, Any] | None = None,
) -> None:
    """Raise :class:`ShapeMismatchError` unless ``schema`` is what ``st`` predicts.

    ``masks`` maps a column position to the decision's mask (``.operator``, ``.column``).
    """
    number = st.index + 1
    advice = (
        "Nothing of this statement was sent and later statements did not run. "
        "Give every output column an alias, list every column a table function returns in "
        "its alias list, or ask an admin to refresh the catalog if a view changed."
    )
    if schema is None:
        return
    names: Sequence[str] = schema.names
    expected = st.outputs
    if not expected and st.kind in _METADATA_KINDS:
        return
    if len(names) != len(expected):
        raise ShapeMismatchError(
            f"[{SHAPE_RULE}] statement {number}: the database returned {len(names)} column(s) "
            f"but the analysis accounted for {len(expected)}; masks are applied by position, so "
            f"the result cannot be masked safely. {advice}"
        )
    fold = dialect == "duckdb"
    for pos, (got, out) in enumerate(zip(names, expected, strict=True)):
        if out.transformed or _SYNTHETIC.match(out.name):
            continue
        same = got.casefold() == out.name.casefold() if fold else got == out.name
        if not same:
            raise ShapeMismatchError(
                f"[{SHAPE_RULE}] statement {number}: column {pos + 1} of the result is named "
                f"{got!r} but the analysis expected {out.name!r} there; masks are applied by "
                f"position, so the result cannot be masked safely. {advice}"
            )
    for pos, m in sorted((masks or {}).items()):
        if pos >= len(names):
            raise ShapeMismatchError(
                f"[{SHAPE_RULE}] statement {number}: a mask applies to column {pos + 1}, which the result does not have. {advice}"
            )
        t = schema.field(pos).type
        if not _mask_fits(m.operator, t):
            raise ShapeMismatchError(
                f"[fail-closed/mask-type] statement {number}: column {pos + 1} ({names[pos]!r}) has type {t} "
                f"that the mask {m.operator.spec!r} cannot apply to; nothing of this statement was sent. "
                "Cast the column to text in the query, or ask an admin for a mask that fits its type.",
                code="mask-unsupported-type",
            )


_FITS: dict[tuple[Any, Any], bool] = {}


def _mask_fits(op: Any, t: pa.DataType) -> bool:
    """``mask_supported``, remembered per (operator, type): it masks a probe row."""
    key = (op, t)
    found = _FITS.get(key)
    if found is None:
        found = _FITS[key] = mask_supported(op, t)
        if len(_FITS) > 4096:  # bounded: operators and types are few, but never grow without end
            _FITS.clear()
    return found


def check_origins(
    st: StatementAnalysis, origins: Sequence[tuple[str, str, str] | None] | None, catalog: Catalog | None = None
) -> None:
    """The cross-check that does not depend on sqlglot (PostgreSQL).

    ``origins`` is what the database's row description says each result column is a plain
    reference to (``PostgresExecutor.describe_origins``). Where it names a base-table
    column, that column must be among the analysis's sources of the output at that
    position: otherwise classification and masks were decided for some other column.
    A partition or inheritance child stands for its root table (``catalog``), as the
    analysis attributes its columns to the root.
    """
    if origins is None:
        return
    number = st.index + 1
    if len(origins) != len(st.outputs):
        if not st.outputs and st.kind in _METADATA_KINDS:
            return
        raise ShapeMismatchError(
            f"[{SHAPE_RULE}] statement {number}: the database describes {len(origins)} column(s) "
            f"but the analysis accounted for {len(st.outputs)}; nothing of this statement ran or was sent. "
            "Give every output column an alias, list every column a table function returns in its alias list, "
            "or ask an admin to refresh the catalog if a view changed."
        )
    for pos, (origin, out) in enumerate(zip(origins, st.outputs, strict=True)):
        if origin is None:
            continue
        schema, table, column = origin
        rel = catalog.get(schema, table) if catalog is not None else None
        if catalog is not None and rel is not None and rel.parent:
            root = catalog.root(rel)
            schema, table = root.schema, root.name
        known = {(s.schema, s.table, s.column) for s in out.sources}
        if (schema, table, column) not in known:
            traced = ", ".join(sorted(s.qualified for s in out.sources)) or "no column"
            raise ShapeMismatchError(
                f"[{ORIGIN_RULE}] statement {number}: column {pos + 1} ({out.name!r}) of the result is "
                f"{schema}.{table}.{column} in the database, but the analysis traced it to {traced}; "
                "nothing of this statement ran or was sent. Qualify the columns with their table, "
                "or ask an admin to check the connection's search_path against the policy's.",
                code="result-origin-mismatch",
            )
