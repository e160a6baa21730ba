"""``%sqlcmd``, ``%sqlplot`` and ``%sqlrender``: JupySQL's helpers, through the gateway.

Everything they read is SQL sent through the warden gateway as the user — decided,
masked and recorded like a cell — or the policy-filtered catalog (``GET
/v1/completions``: only the tables and columns the user may name):

* ``%sqlcmd tables [-s SCHEMA]`` — the catalog's relations;
* ``%sqlcmd columns -t TABLE`` — the catalog's columns, with types from a ``LIMIT 0``
  query (so masked columns are marked the way the gateway returns them);
* ``%sqlcmd profile -t TABLE`` — count, distinct, min, max, mean, std per column in
  *one* SQL query: the gateway masks or refuses aggregates of classified columns exactly
  as it would in a cell;
* ``%sqlcmd test -t TABLE -c COL --greater/--less-than/--no-nulls`` — counts in SQL;
* ``%sqlcmd snippets [NAME] [-d NAME] [-A]`` — list, show (expanded), delete;
* ``%sqlcmd explore`` — refused: it is a widget that pages a whole table into the browser;
* ``%sqlplot histogram|boxplot|bar|pie -t TABLE -c COL [--with S]`` — the aggregates
  (bins and counts, quartiles, group counts) are computed in SQL; only they reach the
  kernel, and matplotlib draws them;
* ``%sqlrender NAME`` — a saved snippet with its snippets expanded (JupySQL deprecated it
  for ``%sqlcmd snippets NAME``; both work).
"""

from __future__ import annotations

import argparse
import shlex
from typing import TYPE_CHECKING, Any

from IPython.core.magic import Magics, line_magic, magics_class, no_var_expand

from warden.magic.parse import MagicLine, MagicSyntaxError

if TYPE_CHECKING:
    import pandas as pd

    from warden.magic.magics import SqlMagic


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse would exit the kernel's process
        raise MagicSyntaxError(f"{self.prog}: {message}")


def _args(prog: str, words: list[str], spec: list[Spec]) -> argparse.Namespace:
    p = _Parser(prog=prog, add_help=False)
    for flags, kw in spec:
        p.add_argument(*flags, **kw)
    return p.parse_args(words)


Spec = tuple[tuple[str, ...], dict[str, Any]]
_TABLE: Spec = (("-t", "--table"), {"required": True})
_SCHEMA: Spec = (("-s", "--schema"), {"default": None})
_WITH: Spec = (("-w", "--with"), {"action": "append", "dest": "with_", "default": []})
_CONN: Spec = (("--connection",), {"default": None})


def ident(name: str) -> str:
    """A table or column name as the user wrote it, checked to be a plain (dotted) name:
    it is written into SQL the gateway then analyses."""
    import re

    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*){0,2}", name):
        raise MagicSyntaxError(f"{name!r} is not a plain table or column name (letters, digits, _ and dots)")
    return name


@magics_class
class SqlCmdMagics(Magics):
    def __init__(self, shell: Any, magic: SqlMagic) -> None:
        super().__init__(shell=shell)
        self.magic = magic

    # -- running SQL through the gateway --------------------------------------------------

    def query(self, sql: str, connection: str | None, with_: list[str] | None = None) -> pd.DataFrame:
        """Run ``sql`` (snippets expanded) through the gateway; a pandas DataFrame."""
        import pandas as pd

        m = self.magic
        expanded, _ = m.snippets.expand(sql, tuple(with_ or ()))
        saved = (m.column_local_vars, m.autopolars)
        m.column_local_vars, m.autopolars = False, False  # helpers need the frame itself
        try:
            out = m._sql(MagicLine(connection=connection, sql=expanded, format="pandas"), {})
        finally:
            m.column_local_vars, m.autopolars = saved
        if not isinstance(out, pd.DataFrame):
            raise MagicSyntaxError("the query returned no rows to work with")
        return out

    def _connection(self, given: str | None) -> str:
        return given or self.magic._pick_connection(MagicLine(), self.magic.session)

    # -- %sqlcmd ----------------------------------------------------------------------------

    @line_magic
    @no_var_expand
    def sqlcmd(self, line: str) -> Any:
        """%sqlcmd tables | columns -t T | profile -t T | test -t T -c C ... | snippets [NAME] [-d NAME] [-A]"""
        words = shlex.split(line)
        if not words:
            raise MagicSyntaxError("%sqlcmd needs a command: tables, columns, profile, test, snippets (explore is not supported)")
        cmd, rest = words[0], words[1:]
        if cmd == "tables":
            a = _args("%sqlcmd tables", rest, [_SCHEMA, _CONN])
            return self._tables(self._connection(a.connection), a.schema)
        if cmd == "columns":
            a = _args("%sqlcmd columns", rest, [_TABLE, _SCHEMA, _CONN])
            return self._columns(self._connection(a.connection), a.table, a.schema)
        if cmd == "profile":
            a = _args("%sqlcmd profile", rest, [_TABLE, _SCHEMA, _CONN, (("-o", "--output"), {"default": None})])
            return self._profile(self._connection(a.connection), a.table, a.schema, a.output)
        if cmd == "test":
            spec: list[Spec] = [_TABLE, _CONN, (("-c", "--column"), {"required": True}), (("-g", "--greater"), {"type": float}),
                    (("-goe", "--greater-or-equal"), {"type": float}), (("-l", "--less-than"), {"type": float}),
                    (("-loe", "--less-than-or-equal"), {"type": float}), (("-nn", "--no-nulls"), {"action": "store_true"})]  # fmt: skip
            return self._test(_args("%sqlcmd test", rest, spec))
        if cmd == "snippets":
            a = _args("%sqlcmd snippets", rest, [(("name",), {"nargs": "?"}), (("-d", "--delete"), {"default": None}),
                                                 (("-A", "--delete-all"), {"action": "store_true"})])  # fmt: skip
            return self._snippets(a)
        if cmd == "explore":
            raise MagicSyntaxError("%sqlcmd explore is not supported: it pages a whole table into the browser. "
                                   "Query what you need with %%sql (--limit ROWS), or %sqlcmd profile -t TABLE")  # fmt: skip
        if cmd == "connect":
            raise MagicSyntaxError("%sqlcmd connect is not supported: the gateway owns every connection; `%sql --connections` lists yours")
        raise MagicSyntaxError(f"unknown %sqlcmd command {cmd!r}: tables, columns, profile, test, snippets")

    def _catalog(self, connection: str) -> list[dict[str, Any]]:
        client = self.magic.session.client()
        relations: list[dict[str, Any]] = client.retrying(lambda: client.catalog(connection, timeout=30.0))["relations"]
        return relations

    def _tables(self, connection: str, schema: str | None) -> Any:
        from warden.magic.magics import Report

        rels = [r for r in self._catalog(connection) if schema is None or r["schema"].split(".")[-1] == schema]
        rows = [(r["name"], r["schema"]) for r in sorted(rels, key=lambda r: (r["schema"], r["name"]))]
        return Report(f"tables of {connection} you may read: {len(rows)}", [r["name"] for r in rels], rows, headers=("name", "schema"))

    def _columns(self, connection: str, table: str, schema: str | None) -> Any:
        from warden.magic.magics import Report

        qualified = f"{schema}.{table}" if schema else table
        df = self.query(f"SELECT * FROM {ident(qualified)} LIMIT 0", connection)
        masked = (df.attrs.get("warden") or {}).get("masked", {})
        rows = [(str(c), str(t), "masked" if str(c) in masked else "") for c, t in zip(df.columns, df.dtypes, strict=True)]
        return Report(f"columns of {qualified}", [r[0] for r in rows], rows, headers=("name", "type", ""))

    def _profile(self, connection: str, table: str, schema: str | None, output: str | None) -> Any:
        import pandas as pd

        qualified = ident(f"{schema}.{table}" if schema else table)
        empty = self.query(f"SELECT * FROM {qualified} LIMIT 0", connection)
        parts: list[str] = []
        stats = ["count", "unique", "min", "max", "mean", "std"]
        for i, (col, dtype) in enumerate(zip(empty.columns, empty.dtypes, strict=True)):
            q = _quote(str(col))
            numeric = pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)
            parts += [f"count({q}) AS c{i}_count", f"count(DISTINCT {q}) AS c{i}_unique"]
            if numeric:
                parts += [f"min({q}) AS c{i}_min", f"max({q}) AS c{i}_max", f"avg({q}) AS c{i}_mean", f"stddev_samp({q}) AS c{i}_std"]
        row = self.query(f"SELECT {', '.join(parts)} FROM {qualified}", connection)
        values = row.iloc[0].to_dict() if len(row) else {}
        table_out = pd.DataFrame(
            {str(col): [values.get(f"c{i}_{s}", "") for s in stats] for i, col in enumerate(empty.columns)}, index=stats
        )
        table_out.attrs["warden"] = row.attrs.get("warden")
        if output:
            table_out.to_html(output)
        return table_out

    def _test(self, a: argparse.Namespace) -> bool:
        connection = self._connection(a.connection)
        col, table = _quote(ident(a.column)), ident(a.table)
        checks: list[tuple[str, str]] = []
        if a.greater is not None:
            checks.append((f"{col} <= {float(a.greater)!r}", f"{a.column} > {a.greater}"))
        if a.greater_or_equal is not None:
            checks.append((f"{col} < {float(a.greater_or_equal)!r}", f"{a.column} >= {a.greater_or_equal}"))
        if a.less_than is not None:
            checks.append((f"{col} >= {float(a.less_than)!r}", f"{a.column} < {a.less_than}"))
        if a.less_than_or_equal is not None:
            checks.append((f"{col} > {float(a.less_than_or_equal)!r}", f"{a.column} <= {a.less_than_or_equal}"))
        if a.no_nulls:
            checks.append((f"{col} IS NULL", f"{a.column} is not NULL"))
        if not checks:
            raise MagicSyntaxError("%sqlcmd test needs a check: --greater, --greater-or-equal, --less-than, --less-than-or-equal, --no-nulls")
        select = ", ".join(f"count(*) FILTER (WHERE {bad}) AS f{i}" for i, (bad, _) in enumerate(checks))
        row = self.query(f"SELECT {select} FROM {table}", connection).iloc[0]
        failed = [(what, int(row[f"f{i}"])) for i, (_, what) in enumerate(checks) if int(row[f"f{i}"])]
        if failed:
            raise MagicSyntaxError("test failed: " + "; ".join(f"{n} row(s) break `{what}`" for what, n in failed))
        return True

    def _snippets(self, a: argparse.Namespace) -> Any:
        store = self.magic.snippets
        if a.delete_all:
            store.snippets.clear()
            return "deleted all snippets"
        if a.delete:
            store.delete(a.delete)
            return f"deleted snippet {a.delete}"
        if a.name:
            if a.name not in store.snippets:
                raise MagicSyntaxError(f"no snippet named {a.name}; saved: {', '.join(sorted(store.snippets)) or 'none'}")
            return store.expand(store.snippets[a.name], exclude=a.name)[0]
        return ", ".join(sorted(store.snippets)) if store.snippets else "no snippets saved (save one with %%sql --save NAME)"

    @line_magic
    @no_var_expand
    def sqlrender(self, line: str) -> str:
        """%sqlrender NAME: the saved snippet with the snippets it uses expanded."""
        words = shlex.split(line)
        if len(words) != 1:
            raise MagicSyntaxError("usage: %sqlrender NAME")
        return str(self._snippets(argparse.Namespace(name=words[0], delete=None, delete_all=False)))

    # -- %sqlplot ---------------------------------------------------------------------------

    @line_magic
    @no_var_expand
    def sqlplot(self, line: str) -> Any:
        """%sqlplot histogram|boxplot|bar|pie --table T --column C [--bins N] [--with S]"""
        words = shlex.split(line)
        if not words:
            raise MagicSyntaxError("%sqlplot needs a plot: histogram, boxplot, bar, pie")
        kind, rest = {"hist": "histogram", "box": "boxplot"}.get(words[0], words[0]), words[1:]
        spec: list[Spec] = [(("-t", "--table"), {"required": True}), (("-c", "--column"), {"nargs": "+", "required": True}),
                (("-b", "--bins"), {"type": int, "default": 50}), (("-o", "--orient"), {"default": "v"}),
                (("-S", "--show-numbers"), {"action": "store_true"}), _WITH, _CONN]  # fmt: skip
        a = _args(f"%sqlplot {kind}", rest, spec)
        connection = self._connection(a.connection)
        table = ident(a.table)
        with_ = list(a.with_)
        if kind == "histogram":
            return self._histogram(connection, table, a.column, a.bins, with_)
        if kind == "boxplot":
            return self._boxplot(connection, table, a.column, with_, a.orient)
        if kind in ("bar", "pie"):
            return self._counts(kind, connection, table, a.column, with_, a.orient, a.show_numbers)
        raise MagicSyntaxError(f"unknown %sqlplot {words[0]!r}: histogram, boxplot, bar, pie")

    def histogram_data(self, connection: str, table: str, column: str, bins: int, with_: list[str]) -> tuple[list[float], list[int]]:
        """Bin edges and counts, computed in SQL (only ``bins`` rows reach the kernel)."""
        if bins < 1:
            raise MagicSyntaxError("--bins must be 1 or more")
        c = _quote(ident(column))
        sql = (f"WITH bounds AS (SELECT min({c}) AS lo, max({c}) AS hi FROM {table} WHERE {c} IS NOT NULL) "
               f"SELECT CASE WHEN b.hi = b.lo THEN 0 ELSE least(CAST(floor(({c} - b.lo) * {bins}.0 / (b.hi - b.lo)) AS INTEGER), {bins - 1}) END AS bin, "
               f"count(*) AS n, min(b.lo) AS lo, max(b.hi) AS hi FROM {table}, bounds b WHERE {c} IS NOT NULL GROUP BY 1 ORDER BY 1")  # fmt: skip
        df = self.query(sql, connection, with_)
        if not len(df):
            return [], []
        lo, hi = float(df["lo"].iloc[0]), float(df["hi"].iloc[0])
        width = (hi - lo) / bins if hi > lo else 1.0
        counts = [0] * bins
        for b, n in zip(df["bin"].tolist(), df["n"].tolist(), strict=True):
            counts[int(b)] = int(n)
        return [lo + i * width for i in range(bins + 1)], counts

    def _histogram(self, connection: str, table: str, columns: list[str], bins: int, with_: list[str]) -> Any:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots()
        for column in columns:
            edges, counts = self.histogram_data(connection, table, column, bins, with_)
            if counts:
                ax.stairs(counts, edges, fill=True, alpha=0.6 if len(columns) > 1 else 1.0, label=column)
        ax.set_title(f"{', '.join(columns)} from {table}")
        ax.set_xlabel(columns[0] if len(columns) == 1 else "value")
        ax.set_ylabel("Count")
        if len(columns) > 1:
            ax.legend()
        return ax

    def _boxplot(self, connection: str, table: str, columns: list[str], with_: list[str], orient: str) -> Any:
        import matplotlib.pyplot as plt

        stats = []
        for column in columns:
            c = _quote(ident(column))
            sql = (f"WITH q AS (SELECT percentile_cont(0.25) WITHIN GROUP (ORDER BY {c}) AS q1, "
                   f"percentile_cont(0.5) WITHIN GROUP (ORDER BY {c}) AS med, "
                   f"percentile_cont(0.75) WITHIN GROUP (ORDER BY {c}) AS q3 FROM {table} WHERE {c} IS NOT NULL) "
                   f"SELECT min(q.q1) AS q1, min(q.med) AS med, min(q.q3) AS q3, "
                   f"min({c}) FILTER (WHERE {c} >= q.q1 - 1.5 * (q.q3 - q.q1)) AS whislo, "
                   f"max({c}) FILTER (WHERE {c} <= q.q3 + 1.5 * (q.q3 - q.q1)) AS whishi "
                   f"FROM {table}, q WHERE {c} IS NOT NULL")  # fmt: skip
            row = self.query(sql, connection, with_).iloc[0]
            stats.append({"label": column, **{k: float(row[k]) for k in ("q1", "med", "q3", "whislo", "whishi")}, "fliers": []})
        _, ax = plt.subplots()
        ax.bxp(stats, orientation="horizontal" if orient == "h" else "vertical", showfliers=False)
        ax.set_title(f"{', '.join(columns)} from {table}")
        return ax

    def _counts(self, kind: str, connection: str, table: str, columns: list[str], with_: list[str], orient: str, numbers: bool) -> Any:
        import matplotlib.pyplot as plt

        c = _quote(ident(columns[0]))
        df = self.query(f"SELECT {c} AS label, count(*) AS n FROM {table} GROUP BY {c} ORDER BY {c}", connection, with_)
        labels, counts = [str(v) for v in df["label"].tolist()], [int(v) for v in df["n"].tolist()]
        _, ax = plt.subplots()
        if kind == "pie":
            ax.pie(counts, labels=labels)
        elif orient == "h":
            bars = ax.barh(labels, counts)
        else:
            bars = ax.bar(labels, counts)
        if kind == "bar" and numbers:
            ax.bar_label(bars)
        ax.set_title(f"{columns[0]} from {table}")
        return ax


def _quote(name: str) -> str:
    """A column name as a quoted identifier (each dotted part), for SQL we write."""
    return ".".join('"' + part.replace('"', '""') + '"' for part in name.split("."))


def register(shell: Any, magic: SqlMagic) -> SqlCmdMagics:
    cmd = SqlCmdMagics(shell, magic)
    shell.register_magics(cmd)
    return cmd
