"""SQL over the kernel's own DataFrames: ``%sql local SELECT … FROM df``.

JupySQL users query pandas/polars frames through an in-process DuckDB. On warden that is
the connection name ``local`` (when the policy has no connection of that name): the cell
runs in the kernel on an embedded, in-memory DuckDB that

* sees only the DataFrames / Arrow tables the SQL names (registered by name; DuckDB's
  replacement scans are off, so nothing else in the namespace is read),
* cannot touch files, extensions or other databases (``enable_external_access = false``:
  ``read_csv``, ``ATTACH``, ``COPY`` are refused by DuckDB itself),
* never reaches a protected database — frames that came from warden hold masked values
  only, so nothing is unmasked by running SQL over them.

It is recorded in the kernel's session record (``query.local``: the frames' names and
shapes, never their values) and, like every cell, in the ``cell.execute`` event the
gateway stores with the cell's redacted source. ``{{var}}`` / ``:var`` stay bound
parameters. The result carries ``attrs["warden"]`` with ``"connection": "local"`` and
``"action": "local"``; columns of a source frame that warden masked stay listed as masked.
"""

from __future__ import annotations

import re
from typing import Any

from warden.magic.params import BoundSQL

LOCAL = "local"
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def is_frame(value: Any) -> bool:
    """A pandas DataFrame (a warden ResultSet is one), a polars DataFrame or an Arrow table."""
    for cls in type(value).__mro__:
        if (cls.__module__.split(".")[0], cls.__name__) in (("pandas", "DataFrame"), ("polars", "DataFrame"), ("pyarrow", "Table")):
            return True
    return False


def frames_named(sql: str, namespace: dict[str, Any]) -> dict[str, Any]:
    """The frames in ``namespace`` whose names appear in ``sql`` as words."""
    names = set(_WORD.findall(sql))
    return {n: namespace[n] for n in sorted(names) if n in namespace and is_frame(namespace[n])}


def run_local(bound: BoundSQL, namespace: dict[str, Any], cell_run_id: str = "") -> tuple[Any, dict[str, Any]]:
    """Run ``bound`` on an embedded DuckDB over the frames it names; (result, record)."""
    import duckdb
    import pandas as pd

    from warden.magic.results import info_of

    frames = frames_named(bound.sql, namespace)
    con = duckdb.connect(":memory:", config={"enable_external_access": False})
    try:
        con.execute("SET python_enable_replacements = false")
        masked: dict[str, Any] = {}
        for name, frame in frames.items():
            con.register(name, frame)
            info = info_of(frame) or {}
            for column, mask in (info.get("masked") or {}).items():
                masked.setdefault(column, {**mask, "source": name})
        cursor = con.execute(bound.sql, list(bound.params))
        df = cursor.df() if cursor.description else pd.DataFrame()
    except duckdb.Error as exc:
        from warden.magic.parse import MagicSyntaxError

        raise MagicSyntaxError(f"the local query failed in the kernel's DuckDB (no database was touched): {exc}") from None
    finally:
        con.close()
    shapes = {n: list(getattr(f, "shape", (getattr(f, "num_rows", 0), getattr(f, "num_columns", 0)))) for n, f in frames.items()}
    df.attrs["warden"] = {
        "connection": LOCAL, "statement": 0, "kind": "select", "action": "local", "rule_ids": [],
        "masked": {c: m for c, m in masked.items() if c in df.columns}, "detectors": [], "event_id": "", "completion_event_id": "",
        "query_id": "", "approval_id": None, "rows": len(df), "truncated": False, "cell_run_id": cell_run_id, "frames": shapes,
    }  # fmt: skip
    record = {"type": "query.local", "connection": LOCAL, "frames": shapes, "rows": len(df)}
    return df, record
