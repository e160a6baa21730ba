"""Completion inside ``%%sql`` cells: connection names on the magic line; table, view and
column names (from the gateway's catalog of that connection) and SQL keywords in the body.

The catalog comes from ``GET /v1/connections/{name}/catalog`` (what the caller's roles may
read, with each column's classification). A gateway without that endpoint gives keyword
completion only. Catalogs are cached per connection for five minutes; a failed fetch is
not retried for a minute, so completion never hangs on a slow gateway.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from typing import Any

from IPython.core.completer import (
    CompletionContext,
    SimpleCompletion,
    SimpleMatcherResult,
    context_matcher,
)

from warden.magic.parse import SQL_START_WORDS

KEYWORDS = sorted(
    SQL_START_WORDS
    | set(
        ["all", "and", "as", "asc", "between", "by", "case", "cast", "coalesce", "count", "cross", "current_date", "current_timestamp", "distinct", "else", "except", "exists", "false", "filter", "full", "group", "having", "ilike", "in", "inner", "intersect", "interval", "is", "join", "lateral", "left", "like", "limit", "not", "null", "nulls", "offset", "on", "or", "order", "outer", "over", "partition", "qualify", "right", "then", "true", "union", "using", "when", "where", "window"]
    )
)
CACHE_SECONDS = 300.0
RETRY_SECONDS = 60.0


class CatalogCache:
    def __init__(self, fetch: Callable[[str], dict[str, Any]]) -> None:
        self._fetch = fetch
        self._entries: dict[str, tuple[float, list[tuple[str, str]]]] = {}
        self._lock = threading.Lock()

    def names(self, connection: str) -> list[tuple[str, str]]:
        """(name, kind) pairs: relations (also schema-qualified) and columns."""
        now = time.monotonic()
        with self._lock:
            hit = self._entries.get(connection)
            if hit is not None and hit[0] > now:
                return hit[1]
        try:
            names = catalog_names(self._fetch(connection))
            expires = now + CACHE_SECONDS
        except Exception:
            names, expires = [], now + RETRY_SECONDS
        with self._lock:
            self._entries[connection] = (expires, names)
        return names


def catalog_names(catalog: dict[str, Any]) -> list[tuple[str, str]]:
    seen: dict[str, str] = {}
    for rel in catalog.get("relations", []) or []:
        name = str(rel.get("name", ""))
        if not name:
            continue
        kind = str(rel.get("kind", "table"))
        seen.setdefault(name, kind)
        if rel.get("schema"):
            seen.setdefault(f"{rel['schema']}.{name}", kind)
        for col in rel.get("columns", []) or []:
            cname = str(col.get("name", "") if isinstance(col, dict) else col)
            if cname:
                classes = col.get("classifications") if isinstance(col, dict) else None
                seen.setdefault(cname, "column" + (f" ({', '.join(classes)})" if classes else ""))
    return sorted(seen.items())


_WORD = re.compile(r"[A-Za-z_][\w.]*$")


def make_matcher(connection_of: Callable[[str], str | None], names_of: Callable[[str], list[tuple[str, str]]],
                 connections: Callable[[], list[str]]) -> Any:  # fmt: skip
    """An IPython (v2 API) matcher for ``%%sql`` cells."""

    @context_matcher(identifier="warden_sql")  # type: ignore[untyped-decorator]
    def warden_sql_matcher(context: CompletionContext) -> SimpleMatcherResult:
        text = context.full_text
        lines = text.split("\n")
        first = lines[0].lstrip() if lines else ""
        line_magic = context.line_with_cursor.lstrip().startswith("%sql")
        if not first.startswith("%%sql") and not line_magic:
            return {"completions": [], "suppress": False}
        before = context.text_until_cursor
        m = _WORD.search(before)
        prefix = m.group(0) if m else ""
        on_magic_line = context.cursor_line == 0 and first.startswith("%%sql")
        candidates: list[tuple[str, str]]
        if on_magic_line or (line_magic and before.strip() in ("%sql", f"%sql {prefix}".strip())):
            candidates = [(c, "connection") for c in _safe(connections)]
        else:
            head = lines[0] if first.startswith("%%sql") else context.line_with_cursor
            conn = connection_of(head)
            candidates = list(names_of(conn)) if conn else []
            candidates += [(k.upper(), "keyword") for k in KEYWORDS]
        low = prefix.lower()
        found = [SimpleCompletion(name, type=kind) for name, kind in candidates if name.lower().startswith(low) and name != prefix]
        return {"completions": found, "suppress": True, "matched_fragment": prefix}

    return warden_sql_matcher


def _safe(fn: Callable[[], list[str]]) -> list[str]:
    try:
        return fn()
    except Exception:
        return []
