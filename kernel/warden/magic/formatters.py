"""Display formatters for results that carry warden info (``df.attrs["warden"]``).

Registered for pandas DataFrames and Arrow tables by type name (pandas is not imported
until a result needs it). Frames without warden info keep their own display.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import Any

from warden.magic import display as show
from warden.magic.results import info_of


def _limit() -> int:
    from warden.magic.magics import active

    m = active()
    return m.displayed_rows() if m is not None else 10


# Within one DisplayFormatter.format call (text/plain, then text/html, … of one object)
# the rows of a frame are read once; the memo lives only for that call, so a frame
# changed in place later is never drawn from stale rows.
_ROWS_MEMO: contextvars.ContextVar[dict[tuple[int, int], Any] | None] = contextvars.ContextVar("warden_rows_memo", default=None)


def _frame_rows(df: Any) -> tuple[list[str], list[tuple[Any, ...]]]:
    limit = _limit()
    memo = _ROWS_MEMO.get()
    if memo is None:
        return show.frame_rows(df, limit)
    key = (id(df), limit)
    if key not in memo:
        memo[key] = (df, show.frame_rows(df, limit))  # df kept: its id stays its own
    return memo[key][1]  # type: ignore[no-any-return]


def frame_html(df: Any) -> str | None:
    info = info_of(df)
    if info is None:
        own: Callable[[], str | None] | None = getattr(df, "_repr_html_", None)
        return own() if own is not None else None
    columns, rows = _frame_rows(df)
    return show.render_table_html(columns, rows, total_rows=len(df), info=info)


def table_html(table: Any) -> str | None:
    info = info_of(table)
    if info is None:
        return None
    columns, rows = show.table_rows(table, _limit())
    return show.render_table_html(columns, rows, total_rows=table.num_rows, info=info)


def frame_text(df: Any, p: Any, cycle: bool) -> None:
    info = info_of(df)
    if info is None or cycle:
        p.text(repr(df))
        return
    columns, rows = _frame_rows(df)
    p.text(show.render_table_text(columns, rows, total_rows=len(df), info=info))


def table_text(table: Any, p: Any, cycle: bool) -> None:
    info = info_of(table)
    if info is None or cycle:
        p.text(repr(table))
        return
    columns, rows = show.table_rows(table, _limit())
    p.text(show.render_table_text(columns, rows, total_rows=table.num_rows, info=info))


def _direct_format(display: Any, obj: Any, include: Any, exclude: Any) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """A warden DataFrame's text and HTML, without IPython asking each of its dozen
    formatters (each probes the frame for ``_repr_png_``, ``_repr_svg_``, …, and every
    probe is a slow pandas ``__getattr__``: ~0.3 ms of a 1-row cell). Only for a plain
    ``pandas.DataFrame`` or a ``%sql`` ResultSet (which adds no display of its own) when
    nothing else would have drawn it: no other formatter has a printer for the type,
    and pandas' own LaTeX / table-schema reprs are off. None: ask IPython as usual."""
    cls = type(obj)
    if cls.__name__ not in ("DataFrame", "ResultSet") or info_of(obj) is None:
        return None
    import pandas as pd

    from warden.magic.resultset import ResultSet

    if cls is not pd.DataFrame and cls is not ResultSet:
        return None
    if pd.get_option("styler.render.repr") == "latex" or pd.get_option("display.html.table_schema"):
        return None
    classes = cls.__mro__[: cls.__mro__.index(pd.DataFrame) + 1]
    names = {(c.__module__, c.__name__) for c in classes}

    def shown(mime: str, formatter: Any) -> bool:
        return bool(getattr(formatter, "enabled", True)) and (not include or mime in include) and not (exclude and mime in exclude)

    for mime, formatter in display.formatters.items():
        if mime in ("text/plain", "text/html") or not shown(mime, formatter):
            continue
        printers = getattr(formatter, "type_printers", {})
        if any(c in printers for c in classes) or names & set(getattr(formatter, "deferred_printers", {})):
            return None  # someone registered a display of their own for frames
    data: dict[str, Any] = {}
    for mime in ("text/plain", "text/html"):
        formatter = display.formatters.get(mime)
        if formatter is None or not shown(mime, formatter):
            continue
        value = formatter(obj)
        if value is not None:
            data[mime] = value
    return data, {}


def register(shell: Any) -> None:
    display = shell.display_formatter
    if not getattr(display, "_warden_memo", False):
        original = display.format

        def format(obj: Any, include: Any = None, exclude: Any = None) -> Any:
            token = _ROWS_MEMO.set({})
            try:
                direct = _direct_format(display, obj, include, exclude)
                return direct if direct is not None else original(obj, include=include, exclude=exclude)
            finally:
                _ROWS_MEMO.reset(token)

        display.format = format
        display._warden_memo = True
    formatters = shell.display_formatter.formatters
    html, text = formatters["text/html"], formatters["text/plain"]
    for module in ("pandas", "pandas.core.frame"):  # pandas 3 reports "pandas"
        html.for_type_by_name(module, "DataFrame", frame_html)
        text.for_type_by_name(module, "DataFrame", frame_text)
    html.for_type_by_name("pyarrow.lib", "Table", table_html)
    text.for_type_by_name("pyarrow.lib", "Table", table_text)
