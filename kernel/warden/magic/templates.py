"""``{{var}}`` as an identifier or as a whole query (JupySQL's Jinja habits), before binding.

What a template becomes, exactly:

* ``FROM {{t}}``, ``JOIN {{t}}``, ``INTO {{t}}``, ``UPDATE {{t}}``, ``TABLE {{t}}`` — a
  relation position — with ``t`` a ``str`` that is a plain name (``orders``,
  ``sales.orders``, ``db.sales.orders``: letters, digits, ``_``): the **name** is written
  into the SQL. Anything else there (a value with a quote, a space, a ``;``) is refused:
  the text could not be a name, so it is never pasted.
* The whole cell is one template (``%sql {{QUERY}}``, or JupySQL's older ``$QUERY`` /
  ``{QUERY}``) and ``QUERY`` is a ``str``: the text **is** the query (JupySQL's
  "programmatic SQL"). It is whatever the Python code built. ``$x`` or ``{x}`` anywhere
  else is left alone (never pasted: IPython's expansion is off in ``%sql``).
* Everywhere else (``WHERE x = {{v}}``, ``LIMIT {{n}}``, ``'{{v}}'``): a **bound
  parameter** ``$n`` (:mod:`warden.magic.params`), whatever the value is.

Either way the gateway analyses, decides on and records the rendered SQL like any other:
a name written here reads that table as far as the policy lets it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from warden.magic.params import ParameterError

_NAME_VALUE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*){0,2}")
_RELATION_TEMPLATE = re.compile(r"(?i)\b(from|join|into|update|table)(\s+)\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
#: the whole cell is one variable: ``{{q}}``, or JupySQL's older ``$q`` / ``{q}``
_WHOLE = re.compile(r"\A\s*(?:\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}|\$([A-Za-z_][A-Za-z0-9_]*)|\{([A-Za-z_][A-Za-z0-9_]*)\})\s*;?\s*\Z")


def render(sql: str, lookup: Callable[[str], Any]) -> str:
    """``sql`` with whole-query and relation-position templates rendered (see above)."""
    whole = _WHOLE.match(sql)
    if whole is not None:
        var = whole.group(1) or whole.group(2) or whole.group(3)
        value = _value(var, lookup)
        if isinstance(value, str):
            return value
        if whole.group(1) is None:
            raise ParameterError(f"the cell is only {sql.strip()!r}: {var} must hold the query text (a str)")
        return sql  # a single value: bound as a parameter by the caller

    def name(m: re.Match[str]) -> str:
        value = _value(m.group(3), lookup)
        if not isinstance(value, str) or not _NAME_VALUE.fullmatch(value):
            raise ParameterError(
                f"{{{{{m.group(3)}}}}} after {m.group(1).upper()} must hold a table name (letters, digits, _ "
                f"and dots), not {type(value).__name__} {str(value)[:40]!r}: a name is written into the SQL, "
                "so nothing else is"
            )
        return f"{m.group(1)}{m.group(2)}{value}"

    return _RELATION_TEMPLATE.sub(name, sql)


def _value(name: str, lookup: Callable[[str], Any]) -> Any:
    try:
        return lookup(name)
    except KeyError:
        raise ParameterError(f"{{{{{name}}}}}: no variable named {name!r}") from None
