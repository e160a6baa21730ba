"""Errors are data: database error text is redacted before it reaches anyone.

A database's error can echo the value that failed. PostgreSQL answers
``SELECT email::int`` with ``invalid input syntax for type integer: "ada@…"``; DuckDB with
``Could not convert string 'ada@…' to INT32``; DETAIL and CONTEXT lines quote whole rows
(``Failing row contains (…)``) and query text. The client, the audit record and
``/v1/me/events`` would all carry the raw value. :func:`redact_db_error` keeps what tells
the analyst what went wrong (the SQLSTATE, the error class and the sentence) and replaces
every value in it. It prefers redacting too much:

1. Only the primary line is kept. DETAIL, HINT, CONTEXT, QUERY, ``LINE n:`` and caret
   lines are dropped, and the message says so.
2. Quoted text (``'…'`` and ``"…"``, doubled quotes inside) becomes ``<redacted>``, except
   an identifier-shaped name right after an object word (``column "x"``, ``relation
   "y"``, ``constraint "z"``): those name schema objects from the query, not data.
3. Text after a colon in the sentence (``…: text = integer``, ``Input: ada@…``) becomes
   ``<redacted>`` unless it is only a redacted quote. The class prefix (``Conversion
   Error:``) is not such a colon.
4. Standalone numbers become ``<n>`` (``Overflow in multiplication of INT32 (123456789 *
   1000)``). Digits inside names (``INT32``) stay.
5. The content detectors (e-mail, card, SSN, IBAN, phone, secrets) run over the result as a
   last net.

Pure functions; the gateway calls them wherever database text becomes an error message.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["PLACEHOLDER", "redact_db_error"]

PLACEHOLDER: Final = "<redacted>"
NUMBER: Final = "<n>"

# DuckDB's error class ("Conversion Error: ", "Binder Error: "), kept as it is.
_CLASS_PREFIX: Final = re.compile(r"^[A-Z][A-Za-z ]{0,40}?(?:Error|Exception):\s+")

# Words after which a quoted, identifier-shaped name is a schema object, not a value.
_OBJECT_WORD: Final = re.compile(
    r"\b(?:column|columns|relation|table|view|schema|database|constraint|index|sequence|"
    r"function|type|role|trigger|extension|operator|collation|catalog|alias)\s+$",
    re.IGNORECASE,
)
_IDENTIFIER: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}(?:\.[A-Za-z_][A-Za-z0-9_$]{0,62}){0,2}$")

# A quoted string: '…' or "…", a doubled quote inside is part of it. An unterminated one
# runs to the end of the line (the database cut it off, or it was truncated).
_QUOTED: Final = re.compile(r"'(?:[^']|'')*(?:'|$)|\"(?:[^\"]|\"\")*(?:\"|$)")
_NUMBER: Final = re.compile(r"(?<![\w.<])[-+]?\d+(?:[.,]\d+)*(?:[eE][-+]?\d+)?(?![\w>])")


def redact_db_error(text: str, *, sqlstate: str | None = None) -> str:
    """The redacted form of a database error message (see the module docstring)."""
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    primary = lines[0] if lines else ""
    dropped = len(lines) > 1  # DETAIL, HINT, CONTEXT, the query echo: each may quote data
    prefix = ""
    m = _CLASS_PREFIX.match(primary)
    if m:
        prefix, primary = primary[: m.end()], primary[m.end() :]
    body = _redact_quotes(primary)
    body = _redact_after_colon(body)
    body = _NUMBER.sub(NUMBER, body)
    body = _detector_net(body)
    out = (prefix + body).strip() or "the database reported an error"
    if dropped:
        out += " (details withheld: they may quote data)"
    if sqlstate and re.fullmatch(r"[0-9A-Z]{5}", sqlstate):
        out += f" [SQLSTATE {sqlstate}]"
    return out


def _redact_quotes(text: str) -> str:
    out: list[str] = []
    pos = 0
    for m in _QUOTED.finditer(text):
        out.append(text[pos : m.start()])
        quote = m.group(0)[0]
        inner = m.group(0)[1:]
        if inner.endswith(quote) and len(inner) >= 1:
            inner = inner[:-1]
        before = "".join(out)
        if _OBJECT_WORD.search(before) and _IDENTIFIER.match(inner):
            out.append(m.group(0))
        else:
            out.append(f"{quote}{PLACEHOLDER}{quote}")
        pos = m.end()
    out.append(text[pos:])
    return "".join(out)


def _redact_after_colon(text: str) -> str:
    idx = text.find(":")
    if idx < 0:
        return text
    tail = text[idx + 1 :].strip()
    if not tail or tail in (f'"{PLACEHOLDER}"', f"'{PLACEHOLDER}'"):
        return text
    return text[: idx + 1] + " " + PLACEHOLDER


def _detector_net(text: str) -> str:
    if not text:
        return text
    import pyarrow as pa

    from warden.masking.detectors import scan_and_mask

    table, findings = scan_and_mask(pa.table({"m": pa.array([text])}))
    if not findings:
        return text
    return str(table.column("m")[0].as_py())
