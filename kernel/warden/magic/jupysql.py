"""The JupySQL steps of a ``%sql`` cell, between parsing and the gateway, and after it.

Before (:func:`prepare_sql`): ``--file`` (the kernel reads the file; its text then goes
through the gateway like a cell), ``{{var}}`` names and whole-query templates
(:mod:`warden.magic.templates`), ``--save`` / ``--with`` / automatic snippet expansion and
``--no-execute`` (:mod:`warden.magic.snippets`). After (:func:`shape_output`): the
result as a :class:`~warden.magic.resultset.ResultSet`, or per ``autopandas`` /
``autopolars``, and ``column_local_vars``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from warden.magic.parse import MagicLine, MagicSyntaxError, check_credentials

if TYPE_CHECKING:
    from warden.magic.magics import SqlMagic


def read_file(path: str) -> str:
    """The SQL of ``--file PATH`` (relative to the kernel's working directory)."""
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MagicSyntaxError(f"--file {path}: no such file (the kernel's working directory is {Path.cwd()})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise MagicSyntaxError(f"--file {path}: cannot read it ({exc})") from None
    check_credentials(text)  # a file is refused for a password exactly like a cell
    return text


def prepare_sql(magic: SqlMagic, parsed: MagicLine, lookup: Callable[[str], Any]) -> str | None:
    """The SQL to send for this cell, or None when nothing is to run (``--no-execute``)."""
    from warden.magic.templates import render

    sql = parsed.sql
    if parsed.file:
        if sql.strip():
            raise MagicSyntaxError("--file runs the file's SQL: leave the cell body empty")
        sql = read_file(parsed.file)
    sql = render(sql, lookup)
    if parsed.save:
        magic.snippets.save(parsed.save, sql)
    if parsed.no_execute:
        if not parsed.save:
            raise MagicSyntaxError("--no-execute only saves: give the snippet a name with --save NAME")
        magic._note(f"warden: saved snippet {parsed.save} (not run); read it with FROM {parsed.save} in another cell")
        return None
    expanded, used = magic.snippets.expand(sql, parsed.with_, exclude=parsed.save)
    if used:
        magic._note(f"warden: snippets {', '.join(used)} put in front as CTEs (the gateway checks the whole query)")
    return expanded


def shape_output(magic: SqlMagic, output: Any, fmt_given: bool) -> Any:
    """A pandas result as JupySQL would hand it over (ResultSet, plain pandas, polars)."""
    import pandas as pd

    from warden.magic.resultset import as_resultset

    if not isinstance(output, pd.DataFrame):
        return output
    if not fmt_given and magic.autopolars:
        from warden.magic.resultset import ResultSet

        return ResultSet.PolarsDataFrame(as_resultset(output))
    if magic.autopandas:
        return output
    return as_resultset(output)


def assign_columns(magic: SqlMagic, output: Any) -> bool:
    """``column_local_vars``: each column of the result becomes a variable (JupySQL)."""
    import pandas as pd

    if not magic.column_local_vars or magic.shell is None or not isinstance(output, pd.DataFrame):
        return False
    from warden.magic.resultset import as_resultset

    for name, values in as_resultset(output).dict().items():
        if name.isidentifier():
            magic.shell.user_ns[name] = list(values)
    return True


def refuse_engine_variable(magic: SqlMagic, name: str, connections: Callable[[], list[str]]) -> None:
    """``%sql engine`` with ``engine`` a Python variable holding an engine: refused now."""
    from warden.magic.compat import engine_variable_message

    shell = magic.shell
    if shell is None or name not in shell.user_ns:
        return
    known = connections()
    if name in known:
        return  # a warden connection that shares its name with a variable: the name wins
    message = engine_variable_message(name, shell.user_ns[name], known)
    if message is not None:
        raise MagicSyntaxError(message)


def deliver_local(magic: SqlMagic, parsed: MagicLine, bound: Any, namespace: dict[str, Any]) -> Any:
    """``%sql local …``: run on the kernel's embedded DuckDB (:mod:`warden.magic.local`)
    and hand the result over as a gateway result would be."""
    from warden.kernel.events import now_iso
    from warden.magic.local import run_local

    session = magic.session
    df, record = run_local(bound, namespace, cell_run_id=str(session.context().get("cell_run_id", "")))
    session.record_query({**record, "time": now_iso()})
    out = shape_output(magic, df, parsed.format is not None)
    if parsed.format == "arrow":
        import pyarrow as pa

        from warden.magic.results import to_output

        out = to_output(pa.Table.from_pandas(df, preserve_index=False), df.attrs["warden"], "arrow")
    if magic.shell is not None:
        magic.shell.user_ns["_sql_results"] = [out]
    if assign_columns(magic, out):
        return None
    if parsed.target:
        if magic.shell is not None:
            magic.shell.user_ns[parsed.target] = out
        return None
    return None if parsed.quiet else out
