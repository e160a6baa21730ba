"""Bound parameters: ``{{var}}`` and ``:var`` become ``$1 .. $n``, never text.

The scanner walks the SQL the way the database's lexer would and only looks for
placeholders in code, never inside

* string literals ``'…'`` (with ``''``), escape strings ``E'…'`` (with ``\\'``),
* quoted identifiers ``"…"`` and ```…```,
* comments ``-- …`` and ``/* … */`` (nested, as PostgreSQL nests them),
* dollar-quoted strings ``$$…$$`` and ``$tag$…$tag$``,

and it leaves ``::type`` casts, ``:=`` named arguments, slices (``a[1:n]``) and times
(``12:30``) alone. A literal that is exactly ``'{{var}}'`` binds ``var`` (a JupySQL habit:
the value travels as a parameter, quoted by nobody); ``{{var}}`` inside a longer literal is
an error that says how to write it (``'%' || {{var}} || '%'``), because substituting
into a string is exactly the injection this module exists to prevent.

Values must be JSON scalars on the wire: ``None``, ``bool``, ``int``, ``float``, ``str``;
dates, times, decimals and UUIDs travel as their ISO / text form; numpy scalars as their
Python value. Anything else is refused with its type named.
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from warden.errors import WardenError

_IDENT_START = re.compile(r"[A-Za-z_]")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DOTTED = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)\s*")
_DOLLAR_TAG = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$")
_POSITIONAL = re.compile(r"\$[0-9]+")
_TEMPLATE_IN_TEXT = re.compile(r"\{\{\s*[A-Za-z_][A-Za-z0-9_.]*\s*\}\}")
#: A ``:name`` placeholder may follow these (or the start of the text).
_BEFORE_COLON_PARAM = set(" \t\r\n(,=<>!+-*/%|&^~;{")

Scalar = str | int | float | bool | None


class ParameterError(WardenError):
    """A placeholder could not be bound: undefined name, unsupported value, misuse."""


@dataclass(frozen=True)
class BoundSQL:
    sql: str
    params: tuple[Scalar, ...] = ()
    names: tuple[str, ...] = ()  # the variable behind each $n, in order


def bind(sql: str, lookup: Callable[[str], Any]) -> BoundSQL:
    """Replace ``{{var}}`` / ``:var`` with ``$n`` and collect the values.

    ``lookup(name)`` returns the variable's value or raises ``KeyError``. A dotted
    ``{{obj.attr}}`` reads attributes (never evaluates code).
    """
    out: list[str] = []
    names: list[str] = []
    values: list[Scalar] = []
    index: dict[str, int] = {}
    positional = False
    i = 0
    n = len(sql)
    start = 0  # start of the pending code run not yet copied to out

    def placeholder(name: str) -> str:
        if name not in index:
            values.append(to_scalar(name, _resolve(name, lookup)))
            names.append(name)
            index[name] = len(values)
        return f"${index[name]}"

    while i < n:
        c = sql[i]
        nxt = sql[i + 1] if i + 1 < n else ""
        if c == "-" and nxt == "-":
            j = sql.find("\n", i)
            i = n if j < 0 else j + 1
            continue
        if c == "/" and nxt == "*":
            i = _skip_block_comment(sql, i)
            continue
        if c == "'":
            escape = i > 0 and sql[i - 1] in "eE" and (i < 2 or not _is_ident_char(sql[i - 2]))
            end = _skip_quoted(sql, i, "'", backslash=escape)
            body = sql[i + 1 : end - 1]
            m = re.fullmatch(r"\{\{" + _DOTTED.pattern + r"\}\}", body)
            if m and not escape:
                out.append(sql[start:i])
                out.append(placeholder(m.group(1)))
                start = end
            elif _TEMPLATE_IN_TEXT.search(body):
                found = _TEMPLATE_IN_TEXT.search(body)
                assert found is not None
                raise ParameterError(
                    f"{found.group(0)} inside the string literal {_short(sql[i:end])} would be string "
                    "substitution, which warden never does. Bind the whole value and build the text in "
                    f"SQL, e.g. '%' || {found.group(0)} || '%'"
                )
            i = end
            continue
        if c == '"' or c == "`":
            i = _skip_quoted(sql, i, c, backslash=False)
            continue
        if c == "$":
            if i > 0 and _is_ident_char(sql[i - 1]):
                i += 1  # part of an identifier (PostgreSQL allows $ inside names)
                continue
            m = _DOLLAR_TAG.match(sql, i)
            if m:
                close = sql.find(m.group(0), m.end())
                i = n if close < 0 else close + len(m.group(0))
                continue
            p = _POSITIONAL.match(sql, i)
            if p:
                positional = True
                i = p.end()
                continue
            i += 1
            continue
        if c == "{" and nxt == "{":
            close = sql.find("}}", i + 2)
            if close < 0:
                raise ParameterError(f"unclosed {{{{ in {_short(sql[i:])}")
            m = _DOTTED.fullmatch(sql, i + 2, close)
            if not m:
                raise ParameterError(
                    f"{_short(sql[i : close + 2])} is not a variable reference: only names and "
                    "attributes ({{name}}, {{obj.attr}}) are bound, expressions are not evaluated"
                )
            out.append(sql[start:i])
            out.append(placeholder(m.group(1)))
            i = start = close + 2
            continue
        if c == ":":
            if nxt == ":":
                i += 2  # ::cast
                continue
            prev = sql[i - 1] if i > 0 else " "
            m = _NAME.match(sql, i + 1)
            if m and prev in _BEFORE_COLON_PARAM:
                out.append(sql[start:i])
                out.append(placeholder(m.group(0)))
                i = start = m.end()
                continue
            i += 1
            continue
        if _is_ident_char(c):
            j = i + 1
            while j < n and (_is_ident_char(sql[j]) or sql[j] == "$"):
                j += 1
            # E'…' is handled at the quote; keep the identifier whole otherwise.
            if j < n and sql[j] == "'" and j - i == 1 and c in "eE":
                i = j
                continue
            i = j
            continue
        i += 1
    out.append(sql[start:])
    if positional and values:
        raise ParameterError(
            "this SQL mixes $n placeholders with {{var}} / :var; use one style (warden numbers "
            "{{var}} and :var for you)"
        )
    return BoundSQL("".join(out), tuple(values), tuple(names))


def _is_ident_char(c: str) -> bool:
    return c.isalnum() or c == "_"


def _skip_quoted(sql: str, i: int, quote: str, *, backslash: bool) -> int:
    """Index just past the closing quote (a doubled quote is an escaped one)."""
    j = i + 1
    n = len(sql)
    while j < n:
        c = sql[j]
        if backslash and c == "\\":
            j += 2
            continue
        if c == quote:
            if j + 1 < n and sql[j + 1] == quote:
                j += 2
                continue
            return j + 1
        j += 1
    return n  # unterminated: the database will say so


def _skip_block_comment(sql: str, i: int) -> int:
    depth = 0
    j = i
    n = len(sql)
    while j < n:
        if sql.startswith("/*", j):
            depth += 1
            j += 2
        elif sql.startswith("*/", j):
            depth -= 1
            j += 2
            if depth == 0:
                return j
        else:
            j += 1
    return n


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _resolve(name: str, lookup: Callable[[str], Any]) -> Any:
    head, *attrs = name.split(".")
    try:
        value = lookup(head)
    except KeyError:
        raise ParameterError(f"name {head!r} is not defined in the notebook (used as a bound parameter)") from None
    for attr in attrs:
        if attr.startswith("_"):
            raise ParameterError(f"{{{{{name}}}}}: private attributes are not bound")
        try:
            value = getattr(value, attr)
        except AttributeError:
            raise ParameterError(f"{{{{{name}}}}}: {type(value).__name__} has no attribute {attr!r}") from None
    return value


def to_scalar(name: str, value: Any) -> Scalar:
    """The JSON scalar a value travels as; refuses what has no faithful scalar form."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if _is_missing(value):
        return None
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            raise ParameterError(f"{name} is {value}: NaN and infinity cannot be bound (use NULL)")
        return float(value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            raise ParameterError(f"{name} is {value}: only finite decimals can be bound")
        return str(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    item = getattr(value, "item", None)
    if callable(item) and type(value).__module__.startswith("numpy"):
        return to_scalar(name, item())
    if isinstance(value, dt.timedelta):
        raise ParameterError(f"{name} is a timedelta: bind it as seconds or as an interval string")
    kind = type(value).__name__
    if isinstance(value, (list, tuple, set, frozenset, dict)):
        raise ParameterError(
            f"{name} is a {kind}: one placeholder binds one value. For a list, bind each value "
            "or filter in a join/ANY(...) over values the database already has"
        )
    raise ParameterError(f"{name} is a {kind}: only None, bool, int, float, str, dates, decimals and UUIDs can be bound")


def _is_missing(value: Any) -> bool:
    module = type(value).__module__
    if not module.startswith("pandas"):
        return False
    try:
        import pandas as pd

        return bool(value is pd.NA or value is pd.NaT)
    except ImportError:  # pragma: no cover
        return False
