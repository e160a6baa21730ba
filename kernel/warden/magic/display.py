"""How results, holds and denials look: escaped HTML plus a plain-text form.

Every value and every name that came from the database or the gateway is escaped with
:func:`html.escape` (quotes too) before it is put in markup, so no HTML from the data
ever renders: a ``<script>`` or ``<img onerror>`` in a row is shown as text. The
plain-text form neutralises terminal control sequences (Jupyter renders ANSI colours in
text output), so data cannot repaint the reader's screen either.

Masked columns are marked in the header (a "masked" badge, plain text so that it renders
without an emoji font, and a tooltip naming operator, classification and rule) and listed
under the table; the footer says how many rows there are, how many are shown, and whether
the gateway truncated the result. The plain-text form stars masked column names and has
no footer (a footer in the text would read like a row of data).
"""

from __future__ import annotations

import datetime as dt
import html
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

MAX_CELL_CHARS = 200
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
#: the mark on a masked column: text, not a glyph (a lock emoji is a box without an emoji
#: font); the labextension may add an icon through the ``warden-mask-badge`` class.
MASK_BADGE = "masked"
_BADGE_STYLE = "font-size:10px;font-weight:normal;color:#7b341e;background:#feebc8;border:1px solid #dd6b20;border-radius:3px;padding:0 3px;margin-left:4px"

_TABLE_STYLE = "border-collapse:collapse;font-size:12px"
_TH_STYLE = "text-align:left;padding:2px 8px;border-bottom:1px solid #999"
_TD_STYLE = "text-align:left;padding:2px 8px;border-bottom:1px solid #eee;white-space:pre-wrap"
_MASKED_STYLE = "background:#fff4d6"
_NOTE_STYLE = "font-size:11px;color:#555;margin:4px 0"


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def plain(value: object) -> str:
    """Text with control characters shown as escapes (no ANSI sequences reach a terminal)."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group(0)):02x}", str(value))


def cell_text(value: Any, operator: str = "") -> str:
    """One value as display text (not yet escaped), shortened to MAX_CELL_CHARS.

    ``operator`` is the column's mask: a ``year`` mask keeps the column's date type (1
    January of the year), which would read like a real birthday, so only the year shows.
    """
    if operator == "year" and isinstance(getattr(value, "year", None), int) and not isinstance(value, str):
        return str(value.year)
    if value is None:
        text = "NULL"
    elif isinstance(value, float):
        # pandas holds a missing value of a float or text column as NaN: for SQL results
        # that is a NULL (a genuine floating-point NaN shows the same way).
        text = "NULL" if math.isnan(value) else repr(value)
    elif isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        text = "\\x" + raw[:64].hex() + ("…" if len(raw) > 64 else "")
    elif isinstance(value, dt.datetime):
        text = value.isoformat(sep=" ")
    else:
        text = _missing_or_str(value)
    if len(text) > MAX_CELL_CHARS:
        text = text[: MAX_CELL_CHARS - 1] + "…"
    return text


def _missing_or_str(value: Any) -> str:
    module = type(value).__module__
    if module.startswith("pandas"):
        import pandas as pd

        if value is pd.NA or value is pd.NaT:
            return "NULL"
    return str(value)


def mask_by_column(info: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    masked: dict[str, dict[str, Any]] = dict(info.get("masked", {}) or {})
    return masked


def mask_title(name: str, mask: Mapping[str, Any]) -> str:
    if mask.get("detectors"):
        return f"masked by the warden gateway: {mask.get('reason') or 'content detector ' + str(mask.get('detector'))}"
    parts = [f"masked by the warden gateway: {mask.get('operator', '?')}"]
    if mask.get("classifications"):
        parts.append("classification " + ", ".join(map(str, mask["classifications"])))
    if mask.get("rules"):
        parts.append("rule " + ", ".join(map(str, mask["rules"])))
    if mask.get("detector"):
        parts.append(f"detector {mask['detector']}")
    return "; ".join(parts)


def mask_note(mask: Mapping[str, Any]) -> str:
    """How one masked column is listed under the table: operator (or detector) and rule."""
    if mask.get("detectors"):
        rows = int(mask.get("rows", 0) or 0)
        return f"content detector {mask.get('detector')}, {rows} row{'s' if rows != 1 else ''}"
    rules = mask.get("rules") or []
    return str(mask.get("operator", "?")) + (" · " + ", ".join(map(str, rules)) if rules else "")


def footer_parts(info: Mapping[str, Any], total_rows: int, shown: int) -> list[str]:
    parts = [f"{total_rows} row{'s' if total_rows != 1 else ''}"]
    if shown < total_rows:
        parts.append(f"showing first {shown}")
    if info.get("truncated"):
        parts.append(f"truncated by the gateway at {info.get('rows', total_rows)} rows (row limit)")
    if info.get("connection"):
        parts.append(f"connection {info['connection']}")
    if info.get("event_id"):
        parts.append(f"audit event {info['event_id']}")
    return parts


def render_table_html(
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    total_rows: int,
    info: Mapping[str, Any],
) -> str:
    """An escaped HTML table with masked columns marked; ``rows`` are the shown rows."""
    masked = mask_by_column(info)
    head = []
    for name in columns:
        mask = masked.get(str(name))
        if mask is not None:
            head.append(
                f'<th class="warden-masked" style="{_TH_STYLE};{_MASKED_STYLE}" title="{esc(mask_title(str(name), mask))}">'
                f'{esc(name)}<span class="warden-mask-badge" style="{_BADGE_STYLE}">{MASK_BADGE}</span></th>'
            )
        else:
            head.append(f'<th style="{_TH_STYLE}">{esc(name)}</th>')
    body = []
    shown = 0
    masked_pos = {i for i, name in enumerate(columns) if str(name) in masked}
    ops = _operators(columns, masked)
    for row in rows:
        shown += 1
        cells = []
        for i, value in enumerate(row):
            style = f"{_TD_STYLE};{_MASKED_STYLE}" if i in masked_pos else _TD_STYLE
            cells.append(f'<td style="{style}">{esc(cell_text(value, ops[i]))}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    notes = [f'<div class="warden-footer" style="{_NOTE_STYLE}">{esc(" · ".join(footer_parts(info, total_rows, shown)))}</div>']
    if masked:
        items = ", ".join(f"{esc(name)} ({esc(mask_note(m))})" for name, m in masked.items())
        notes.append(f'<div class="warden-masks" style="{_NOTE_STYLE}">masked by the gateway: {items}</div>')
    return (
        '<div class="warden-result">'
        f'<table class="warden-table" style="{_TABLE_STYLE}"><thead><tr>{"".join(head)}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>{''.join(notes)}</div>"
    )


def _operators(columns: Sequence[str], masked: Mapping[str, Mapping[str, Any]]) -> list[str]:
    return [str((masked.get(str(name)) or {}).get("operator") or "") for name in columns]


def render_table_text(columns: Sequence[str], rows: Sequence[Sequence[Any]], *, total_rows: int, info: Mapping[str, Any]) -> str:
    """The plain-text form: aligned columns, masked ones starred; no footer (in text it
    would read like data: the HTML form and ``df.attrs["warden"]`` carry it)."""
    masked = mask_by_column(info)
    names = [plain(n) + ("*" if str(n) in masked else "") for n in columns]
    ops = _operators(columns, masked)
    cells = [[plain(cell_text(v, ops[i])).replace("\n", "\\n") for i, v in enumerate(row)] for row in rows]
    widths = [len(n) for n in names]
    for row in cells:
        for i, text in enumerate(row):
            widths[i] = min(max(widths[i], len(text)), 40)

    def fmt(values: Sequence[str]) -> str:
        return "  ".join(_fit(v, widths[i]) for i, v in enumerate(values)).rstrip()

    lines = [fmt(names), "  ".join("-" * w for w in widths)]
    lines.extend(fmt(r) for r in cells)
    return "\n".join(lines)


def _fit(text: str, width: int) -> str:
    if len(text) > width:
        return text[: width - 1] + "…"
    return text.ljust(width)


def frame_rows(df: Any, limit: int) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Column names and the first ``limit`` rows (0 = all) of a pandas DataFrame.

    One slice and one object conversion: per-column indexing would deep-copy
    ``df.attrs`` once per column and dominate the cost of a small result's display.
    """
    n = len(df) if limit <= 0 else min(limit, len(df))
    columns = [str(c) for c in df.columns]
    if n == 0:
        return columns, []
    values = df.iloc[:n].to_numpy(dtype=object).tolist()
    return columns, [tuple(_py(v) for v in row) for row in values]


def table_rows(table: Any, limit: int) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Column names and the first ``limit`` rows (0 = all) of a pyarrow Table."""
    head = table if limit <= 0 else table.slice(0, limit)
    columns = list(head.column_names)
    data = [col.to_pylist() for col in head.columns]
    return columns, list(zip(*data, strict=True)) if data else []


def _py(value: Any) -> Any:
    item = getattr(value, "item", None)
    if callable(item) and type(value).__module__.startswith("numpy"):
        try:
            return item()
        except (ValueError, TypeError):
            return value
    return value


# -- messages ---------------------------------------------------------------------------


def message_bundle(title: str, lines: Sequence[str], *, kind: str = "info", code: str = "") -> dict[str, str]:
    """A short boxed message (HTML and text); every line is escaped. ``code`` is shown
    monospaced under the lines (an SQL excerpt with a caret)."""
    colour = {"info": "#2b6cb0", "held": "#b7791f", "denied": "#c53030", "ok": "#2f855a", "error": "#6b46c1"}.get(kind, "#2b6cb0")
    body = "".join(f"<div>{esc(line)}</div>" for line in lines)
    if code:
        body += f'<pre class="warden-sql-excerpt" style="margin:4px 0;font-size:12px">{esc(code)}</pre>'
    markup = (
        f'<div class="warden-message warden-{esc(kind)}" style="border-left:4px solid {colour};padding:4px 10px;margin:4px 0">'
        f"<div><b>{esc(title)}</b></div>{body}</div>"
    )
    text = "\n".join([plain(title), *("  " + plain(line) for line in lines), *(["", code] if code else [])])
    return {"text/html": markup, "text/plain": text}


def relative_time(when: str | dt.datetime, now: dt.datetime | None = None) -> str:
    """``in 59 min (04:57 UTC)``: how far away an ISO time is, then the wall-clock time."""
    try:
        at = when if isinstance(when, dt.datetime) else dt.datetime.fromisoformat(str(when))
    except ValueError:
        return str(when)
    if at.tzinfo is None:
        at = at.replace(tzinfo=dt.UTC)
    now = now or dt.datetime.now(dt.UTC)
    seconds = (at - now).total_seconds()
    span = abs(seconds)
    if span < 60:
        amount = f"{span:.0f} s"
    elif span < 3600:
        amount = f"{span // 60:.0f} min"
    elif span < 172800:
        amount = f"{span / 3600:.0f} h" if span % 3600 < 60 or span >= 36000 else f"{span // 3600:.0f} h {span % 3600 // 60:.0f} min"
    else:
        amount = f"{span / 86400:.0f} days"
    clock = at.astimezone(dt.UTC).strftime("%H:%M UTC" if span < 86400 else "%Y-%m-%d %H:%M UTC")
    return f"{'in ' + amount if seconds >= 0 else amount + ' ago'} ({clock})"


def held_lines(
    body: Mapping[str, Any], *, waited: float, wait: float, status: str, local: bool = False, continue_hint: bool = True
) -> list[str]:
    """What a held cell shows: the request, why, who approves, when it expires, and one
    way to go on (in local mode: approve it yourself; else: ask an approver, re-run)."""
    a = body.get("approval", {}) or {}
    aid = a.get("id", "?")
    lines = [f"approval request {aid} — {status}"]
    for reason in a.get("reasons", []) or []:
        lines.append(f"why: {reason}")
        if "no row estimate" in str(reason):
            lines.append("  (the database gave no row estimate for this query, so the size rule holds it to be safe)")
    if a.get("rule_ids"):
        lines.append("rules: " + ", ".join(map(str, a["rule_ids"])))
    if not local:
        lines.append("who can approve: " + approvers_text(body.get("approvers", {}) or {}))
    if a.get("expires_at"):
        lines.append(f"expires {relative_time(str(a['expires_at']))}")
    if wait > 0:
        lines.append(f"waiting {waited:.0f} of {wait:.0f} s; the cell continues by itself once approved (interrupt to stop waiting)")
    elif continue_hint:
        if local:
            lines.append(f'to continue (local mode, you may approve your own request): %warden approve {aid} --reason "why", then re-run this cell')
        else:
            lines.append(f"to continue: ask an approver to approve {aid} (`warden approvals approve {aid} --reason ...`), then re-run this cell")
    return lines


def approvers_text(approvers: Mapping[str, Any]) -> str:
    parts = []
    for key, label in (("groups", "group"), ("users", "user"), ("roles", "role")):
        for item in approvers.get(key, []) or []:
            parts.append(f"{label} {item}")
    return ", ".join(parts) or "nobody (the policy names no approvers)"


def progress_bundle(state: str, *, elapsed: float, received: int, rows: int) -> dict[str, str]:
    size = f"{received / 1e6:.1f} MB" if received >= 100_000 else f"{received / 1e3:.0f} kB"
    text = f"warden: {state} · {elapsed:.0f} s · {size} received" + (f" · {rows} rows" if rows else "") + " (interrupt the kernel to cancel)"
    return {"text/plain": text, "text/html": f'<div class="warden-progress" style="{_NOTE_STYLE}">{esc(text)}</div>'}


def summary_line(target: str | None, info: Mapping[str, Any], rows: int, columns: int, statements: int) -> str:
    parts = []
    if target:
        parts.append(f"{target}: {rows} row{'s' if rows != 1 else ''} x {columns} column{'s' if columns != 1 else ''}")
    masked = list(mask_by_column(info))
    if masked:
        parts.append("masked: " + ", ".join(masked))
    if info.get("truncated"):
        parts.append("truncated by the gateway")
    if statements > 1:
        parts.append(f"{statements} statements (each result in _sql_results)")
    if info.get("event_id"):
        parts.append(f"audit event {info['event_id']}")
    return " · ".join(parts)


# -- SQL errors -----------------------------------------------------------------------------

_AT = re.compile(r"\s*\(line (\d+), column (\d+)\)")


def error_position(message: str) -> tuple[int, int] | None:
    """The ``(line N, column M)`` a gateway message ends with, if any."""
    found = _AT.search(message)
    return (int(found.group(1)), int(found.group(2))) if found else None


def strip_position(message: str) -> str:
    return _AT.sub("", message)


def caret_excerpt(sql: str, line: int, column: int) -> str:
    """The line of ``sql`` (1-based ``line``) with a caret under the word that ends at
    ``column`` (sqlglot points at the end of the token it stopped at)."""
    lines = sql.splitlines() or [""]
    if not 1 <= line <= len(lines):
        return ""
    text = plain(lines[line - 1])
    end = max(1, min(column, len(text)))
    start = end
    while start > 1 and (text[start - 2].isalnum() or text[start - 2] == "_"):
        start -= 1
    label = f"line {line}: "
    return f"{label}{text}\n{' ' * (len(label) + start - 1)}{'^' * (end - start + 1)}"
