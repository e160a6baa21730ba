"""JupySQL's ``--persist`` / ``--persist-replace`` / ``--append``: a DataFrame written
through the gateway, decided by policy like the DDL and ``INSERT`` it is.

``%sql [NAME] --persist df`` writes the frame ``df`` into table ``df`` of the connection:

* ``--persist``: ``CREATE TABLE df (…)`` then ``INSERT`` (fails if the table exists);
* ``--persist-replace``: ``DROP TABLE IF EXISTS df`` first;
* ``--append``: ``CREATE TABLE IF NOT EXISTS`` then ``INSERT``;
* ``-n/--no-index``: without the frame's index (JupySQL writes it as column ``index``).

Values travel as bound parameters, never as SQL text, in batches of :data:`BATCH` rows;
each batch is one gateway request, decided (roles' statement kinds, holds on writes,
denials) and recorded like any cell; the DDL goes first, as its own request. A frame that came
out of warden holds masked values only, so what is written is what the user saw: masked
columns stay masked (a note names them).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from warden.magic.params import BoundSQL, to_scalar
from warden.magic.parse import MagicLine, MagicSyntaxError

if TYPE_CHECKING:
    from warden.magic.magics import SqlMagic

BATCH = 500
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?")


def _quote(name: str) -> str:
    return '"' + str(name).replace('"', '""') + '"'


def _sql_type(dtype: Any) -> str:
    import pandas as pd

    if pd.api.types.is_bool_dtype(dtype):
        return "BOOLEAN"
    if pd.api.types.is_integer_dtype(dtype):
        return "BIGINT"
    if pd.api.types.is_float_dtype(dtype):
        return "DOUBLE PRECISION"
    if pd.api.types.is_datetime64_any_dtype(dtype):
        return "TIMESTAMP"
    return "TEXT"


def statements(table: str, frame: Any, *, mode: str, index: bool) -> list[BoundSQL]:
    """The requests that write ``frame`` into ``table``: the DDL, then the INSERT batches."""
    import pandas as pd

    df = frame.reset_index() if index else frame
    df = pd.DataFrame(df)
    columns = [str(c) for c in df.columns]
    if len(set(columns)) != len(columns):
        raise MagicSyntaxError(f"the frame has repeated column names: {columns}")
    ddl = []
    if mode == "replace":
        ddl.append(f"DROP TABLE IF EXISTS {table}")
    exists = " IF NOT EXISTS" if mode == "append" else ""
    ddl.append(f"CREATE TABLE{exists} {table} (" + ", ".join(f"{_quote(c)} {_sql_type(t)}" for c, t in zip(columns, df.dtypes, strict=True)) + ")")
    head = f"INSERT INTO {table} (" + ", ".join(_quote(c) for c in columns) + ") VALUES "
    out: list[BoundSQL] = []
    rows = list(df.itertuples(index=False, name=None))
    for start in range(0, max(len(rows), 1), BATCH):
        chunk = rows[start : start + BATCH]
        params: list[Any] = []
        groups = []
        for row in chunk:
            marks = []
            for c, value in zip(columns, row, strict=True):
                params.append(to_scalar(c, None if _missing(value) else value))
                marks.append(f"${len(params)}")
            groups.append("(" + ", ".join(marks) + ")")
        if groups:
            out.append(BoundSQL(head + ", ".join(groups), tuple(params)))
    # The DDL is its own request: the gateway analyses an INSERT against the catalog, in
    # which a table created in the same cell is not yet known (unknown tables fail closed).
    return [BoundSQL(";\n".join(ddl)), *out]


def _missing(value: Any) -> bool:
    import pandas as pd

    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def persist(magic: SqlMagic, parsed: MagicLine, namespace: dict[str, Any]) -> Any:
    """Write the frame ``parsed`` names through the gateway (see the module docstring)."""
    from warden.magic.local import is_frame
    from warden.magic.results import info_of

    words = parsed.sql.split()
    no_index = parsed.no_index or any(w in ("-n", "--no-index") for w in words)  # JupySQL puts it after the name too
    words = [w for w in words if w not in ("-n", "--no-index")]
    if len(words) > 1:
        raise MagicSyntaxError(f"--persist takes one DataFrame variable, not {' '.join(words)!r}")
    name = words[0] if words else ""
    connection = parsed.connection
    if not name and connection:  # `%sql --persist df`: the one word is the frame, not a connection
        name, connection = connection, None
    if not _NAME.fullmatch(name or ""):
        raise MagicSyntaxError("usage: %sql [CONNECTION] --persist VARIABLE (a DataFrame; the table gets its name)")
    frame = namespace.get(name.split(".")[-1])
    if frame is None or not is_frame(frame):
        raise MagicSyntaxError(f"{name!r} is not a DataFrame in this notebook")
    if type(frame).__module__.split(".")[0] in ("polars", "pyarrow"):
        frame = frame.to_pandas()
    session = magic.session
    target = magic._pick_connection(MagicLine(connection=connection), session)
    mode = "replace" if parsed.persist_replace else "append" if parsed.append else "create"
    client = magic._client(session)
    written = 0
    for bound in statements(name, frame, mode=mode, index=not no_index):
        result, _stream = magic._run_with_approval(client, session, target, bound, parsed)
        written += sum(max(st.rowcount, 0) for st in result.statements if st.kind == "insert")
    masked = sorted((info_of(frame) or {}).get("masked", {}) or {})
    note = f"warden: wrote {written} row{'s' if written != 1 else ''} into {name} on {target} through the gateway"
    if masked:
        note += f"; {', '.join(masked)} held masked values and were written masked"
    magic._note(note)
    return None
