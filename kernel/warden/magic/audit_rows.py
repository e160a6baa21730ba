"""The rows of ``%warden audit``: one line per record of the session, oldest first,
as a table with headers (time, cell number, type, connection, action, rows, short SQL).

Takes the gateway's records (``/v1/me/events``) or the kernel's own history entries
(when the gateway does not let the identity read the log), which spell a few fields
differently."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

AUDIT_HEADERS = ("time (UTC)", "cell", "type", "connection", "action", "rows", "sql")
SQL_WIDTH = 60


def short_sql(text: Any, width: int = SQL_WIDTH) -> str:
    """The SQL (or cell source) on one line, cut at ``width`` characters with …"""
    one = " ".join(str(text or "").split())
    return one if len(one) <= width else one[: width - 1] + "…"


def audit_rows(events: Iterable[Mapping[str, Any]], limit: int) -> list[tuple[str, ...]]:
    def when(ev: Mapping[str, Any]) -> str:
        return str(ev.get("event_time") or ev.get("time") or "")

    ordered = sorted(events, key=when)[-limit:] if limit > 0 else []
    rows: list[tuple[str, ...]] = []
    for ev in ordered:
        count = ev.get("execution_count")
        rows_out = ev.get("rows")
        rows.append((
            when(ev)[:19].replace("T", " "),
            "" if count is None else f"[{count}]",
            str(ev.get("type") or ""),
            str(ev.get("connection") or ""),
            str(ev.get("action") or ev.get("status") or ""),
            "" if rows_out is None else str(rows_out),
            short_sql(ev.get("sql") or ev.get("source") or ""),
        ))  # fmt: skip
    return rows
