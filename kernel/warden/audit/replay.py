"""Replay a session as a notebook: an analyst's cells, in order, rebuilt from the log.

Input is what the auditor views give (``cells`` and ``queries`` rows, plus the
``capture_ref`` of ``query.executed`` records); output is an nbformat 4 notebook
(a dict, written with :func:`write_notebook`) that opens in JupyterLab:

- every ``cell.execute`` record becomes a code cell with its redacted source,
  execution count and time (cell metadata ``warden``);
- a SQL cell gets an output with the decision, rules, masks, rows and approval of each
  query it ran, and the captured (already masked) rows when capture was ``sample:N``;
- queries no cell record claims (a client outside a kernel) become cells of their own;
- notebook metadata ``warden.replay`` marks it as a replay (session, subject, source,
  generation time), and the first cell says so.

Only recorded, masked data is used: nothing here reads the databases.
"""

from __future__ import annotations

import datetime as dt
import html
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

#: What :func:`fetch_session` asks the audit connection (the views of docs/audit.md §9).
CELLS_SQL = "SELECT * FROM cells WHERE session_id = '{sid}' ORDER BY event_time, execution_count"
QUERIES_SQL = "SELECT * FROM queries WHERE session_id = '{sid}' ORDER BY event_time"
CAPTURES_SQL = "SELECT correlation_id, seq, capture_ref FROM events WHERE session_id = '{sid}' AND type = 'query.executed' AND capture_ref IS NOT NULL ORDER BY seq"
SESSION_SQL = "SELECT * FROM sessions WHERE session_id = '{sid}'"


def _quote(session_id: str) -> str:
    return session_id.replace("'", "''")


def fetch_session(run_sql: Any, session_id: str) -> dict[str, list[dict[str, Any]]]:
    """The session's rows through ``run_sql(sql) -> list[dict]`` (e.g. the ``audit``
    connection of a gateway client: :func:`gateway_runner`)."""
    sid = _quote(session_id)
    return {
        "session": run_sql(SESSION_SQL.format(sid=sid)),
        "cells": run_sql(CELLS_SQL.format(sid=sid)),
        "queries": run_sql(QUERIES_SQL.format(sid=sid)),
        "captures": run_sql(CAPTURES_SQL.format(sid=sid)),
    }


def gateway_runner(client: Any) -> Any:
    """``run_sql`` over a :class:`warden.gateway.client.GatewayClient` (audit connection)."""

    def run(sql: str) -> list[dict[str, Any]]:
        result = client.run("audit", sql)
        table = result.last.table if result.last is not None else None
        return list(table.to_pylist()) if table is not None else []

    return run


def replay_session(client: Any, session_id: str, out: str | Path | None = None) -> dict[str, Any]:
    """Fetch a session through the gateway and rebuild it; written to ``out`` if given."""
    data = fetch_session(gateway_runner(client), session_id)
    nb = build_notebook(session_id, data["cells"], data["queries"], data["captures"], data["session"], source=str(getattr(client, "where", "")))
    if out is not None:
        write_notebook(nb, out)
    return nb


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value) or type(value).__name__ == "NaTType":
        return ""  # None, NaN, NaT (rows from pandas)
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"
    return str(value)


def _list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def _masks(value: Any) -> list[dict[str, Any]]:
    if not value:
        return []
    try:
        data = json.loads(value) if isinstance(value, str) else value
    except ValueError:
        return []
    return [m for m in data if isinstance(m, dict)] if isinstance(data, list) else []


def _sample(capture_ref: Any) -> list[dict[str, Any]] | None:
    """Captured rows of ``capture: sample:N`` (a JSON list of row objects); ``full``
    captures are files beside the gateway's store, named but not read here."""
    if not capture_ref:
        return None
    try:
        data = json.loads(capture_ref)
    except ValueError:
        return None
    if isinstance(data, list) and data and all(isinstance(r, dict) for r in data):
        return data
    return None


def _rows_html(rows: list[dict[str, Any]]) -> str:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th style='text-align:left'>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td style='text-align:left'>{html.escape(_text(r.get(c)))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _rows_text(rows: list[dict[str, Any]]) -> str:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    widths = {c: max(len(c), *(len(_text(r.get(c))) for r in rows)) for c in cols}
    lines = ["  ".join(c.ljust(widths[c]) for c in cols)]
    lines += ["  ".join(_text(r.get(c)).ljust(widths[c]) for c in cols) for r in rows]
    return "\n".join(lines)


def query_summary(q: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(label, value) lines describing one query of the replay."""
    masks = _masks(q.get("masks"))
    lines = [
        ("decision", f"{q.get('action', '')} → {q.get('outcome', '')}"),
        ("connection", _text(q.get("connection"))),
        ("sql (as recorded)", _text(q.get("sql"))),
    ]
    if _list(q.get("rule_ids")):
        lines.append(("rules", ", ".join(_list(q.get("rule_ids")))))
    if masks:
        lines.append(("masks", "; ".join(f"{m.get('column')} {m.get('operator', m.get('detector', ''))} [{', '.join(_list(m.get('classifications')))}]" for m in masks)))
    if q.get("rows") is not None:
        lines.append(("rows", _text(q.get("rows"))))
    if q.get("approval_id"):
        lines.append(("approval", f"{q.get('approval_id')} by {q.get('approver') or '?'}"))
    if q.get("error"):
        lines.append(("error", _text(q.get("error"))))
    if q.get("duration_ms") is not None:
        lines.append(("duration", f"{float(q['duration_ms']):.1f} ms"))
    return lines


def _query_outputs(q: Mapping[str, Any], sample: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    lines = query_summary(q)
    text = "\n".join(f"{k}: {v}" for k, v in lines)
    rows_html = "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th><td style='text-align:left'><code>{html.escape(v)}</code></td></tr>" for k, v in lines)
    outputs: list[dict[str, Any]] = [{
        "output_type": "display_data",
        "data": {"text/plain": f"[warden replay] {text}", "text/html": f"<div class='warden-replay'><b>warden replay</b><table>{rows_html}</table></div>"},
        "metadata": {"warden": {"query_event_id": q.get("query_event_id"), "correlation_id": q.get("correlation_id")}},
    }]  # fmt: skip
    if sample:
        outputs.append({
            "output_type": "display_data",
            "data": {"text/plain": f"captured result (masked, first {len(sample)} rows)\n" + _rows_text(sample),
                     "text/html": f"<p>captured result (masked, first {len(sample)} rows)</p>" + _rows_html(sample)},
            "metadata": {"warden": {"captured": True}},
        })  # fmt: skip
    return outputs


def build_notebook(
    session_id: str,
    cells: Iterable[Mapping[str, Any]],
    queries: Iterable[Mapping[str, Any]],
    captures: Iterable[Mapping[str, Any]] = (),
    session: Iterable[Mapping[str, Any]] = (),
    *,
    source: str = "",
) -> dict[str, Any]:
    """The replay notebook (nbformat 4.5 as a dict)."""
    cell_rows = sorted(cells, key=lambda c: (_text(c.get("event_time")), c.get("execution_count") or 0))
    query_rows = list(queries)
    samples: dict[str, list[dict[str, Any]]] = {}
    for cap in captures:
        found = _sample(cap.get("capture_ref"))
        if found and cap.get("correlation_id"):
            samples.setdefault(str(cap["correlation_id"]), []).extend(found)
    by_run: dict[str, list[Mapping[str, Any]]] = {}
    for q in query_rows:
        by_run.setdefault(str(q.get("correlation_id") or ""), []).append(q)
    meta = next(iter(session), {})
    subject = _text(meta.get("subject")) or next((_text(c.get("subject")) for c in cell_rows), "")
    # (time, order, cell) so cells and unclaimed queries interleave by time.
    timed: list[tuple[str, int, dict[str, Any]]] = []
    claimed: set[str] = set()
    for i, c in enumerate(cell_rows):
        run = str(c.get("cell_run_id") or "")
        mine = by_run.get(run, []) if run else []
        claimed.add(run)
        outputs: list[dict[str, Any]] = []
        for q in mine:
            outputs.extend(_query_outputs(q, samples.get(run)))
        if c.get("status") == "failure":
            outputs.append({"output_type": "stream", "name": "stderr", "text": f"[warden replay] the cell failed: {_text(c.get('error')) or 'error'}\n"})
        timed.append((_text(c.get("event_time")), i, {
            "cell_type": "code", "id": f"replay-{i}", "execution_count": c.get("execution_count"),
            "source": _text(c.get("source")), "outputs": outputs,
            "metadata": {"warden": {"event_time": _text(c.get("event_time")), "status": _text(c.get("status")),
                                    "duration_ms": c.get("duration_ms"), "cell_id": _text(c.get("cell_id")),
                                    "event_id": _text(c.get("event_id")), "queries": len(mine)}},
        }))  # fmt: skip
    extra = len(timed)
    for q in query_rows:
        run = str(q.get("correlation_id") or "")
        if run in claimed:
            continue
        extra += 1
        timed.append((_text(q.get("event_time")), extra, {
            "cell_type": "code", "id": f"replay-q{extra}", "execution_count": q.get("execution_count"),
            "source": f"%%sql {_text(q.get('connection'))}\n{_text(q.get('sql'))}",
            "outputs": _query_outputs(q, samples.get(run)),
            "metadata": {"warden": {"event_time": _text(q.get("event_time")), "no_cell_record": True}},
        }))  # fmt: skip
    timed.sort(key=lambda t: (t[0], t[1]))
    generated = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    intro = (
        f"# Replay of session `{session_id}`\n\n"
        f"User **{subject or '?'}**, notebook `{_text(meta.get('notebook_path')) or '?'}`, "
        f"from {_text(meta.get('started_at')) or '?'} to {_text(meta.get('ended_at') or meta.get('last_event_at')) or '?'}.\n\n"
        f"Rebuilt from the audit log on {generated}: {len(cell_rows)} cell record(s), {len(query_rows)} query record(s). "
        "Sources are as the kernel recorded them (secrets redacted); outputs are the gateway's decisions and the "
        "captured, already masked rows. Cell records are best-effort evidence from the kernel; query records are the "
        "gateway's. Nothing here re-runs: this notebook is a record, not a session."
    )
    nb_cells: list[dict[str, Any]] = [{"cell_type": "markdown", "id": "replay-intro", "metadata": {}, "source": intro}] + [t[2] for t in timed]
    return {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python"},
            "warden": {"replay": True, "session_id": session_id, "subject": subject, "generated_at": generated,
                       "source": source, "cells": len(cell_rows), "queries": len(query_rows)},
        },
        "cells": nb_cells,
    }


def write_notebook(nb: Mapping[str, Any], out: str | Path) -> Path:
    """Validate (nbformat) and write the notebook."""
    import nbformat

    node = nbformat.from_dict(dict(nb))  # type: ignore[no-untyped-call]
    nbformat.validate(node)
    path = Path(out)
    nbformat.write(node, str(path))  # type: ignore[no-untyped-call]
    return path
