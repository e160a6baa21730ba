"""``warden audit query``, ``warden audit tail`` and ``warden audit replay``: the live
log from a terminal, through the running gateway's ``audit`` connection (docs/audit.md
§9-10). The gateway is found from ``--url``/``--socket`` (or WARDEN_GATEWAY_URL /
WARDEN_GATEWAY_SOCKET), else the local-mode gateway's socket; the token from
``--token-file``/WARDEN_TOKEN_FILE/WARDEN_TOKEN, else the local token."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from warden.gateway.cli_client import client_for, client_options

EXIT_OK = 0
EXIT_DENIED = 1
EXIT_BAD_INPUT = 2
TAIL_MARK = "/* warden audit tail */"


def register_live(actions: Any) -> None:
    q = actions.add_parser("query", help="run a SELECT over the live log's views (through the gateway)",
                           description="SQL over the views events, queries, objects, approvals, sessions, cells (docs/audit.md §9).")  # fmt: skip
    client_options(q)
    q.add_argument("sql", help="the SQL ('-' reads standard input)")
    q.add_argument("--format", choices=("table", "json", "csv"), default="table", help="output (default: an aligned table)")
    q.add_argument("--width", type=int, default=60, help="widest column in table output (longer values are cut with …)")
    q.set_defaults(func=_query)

    t = actions.add_parser("tail", help="the newest records of the live log; --follow for new ones as they come")
    client_options(t)
    t.add_argument("-n", "--lines", type=int, default=20, help="how many records first (default 20)")
    t.add_argument("--follow", "-f", action="store_true", help="keep printing new records (Ctrl-C stops)")
    t.add_argument("--user", help="only this subject")
    t.add_argument("--type", help="only this event type, or a prefix such as query.*")
    t.add_argument("--interval", type=float, default=1.0, help="seconds between polls with --follow (default 1)")
    t.add_argument("--json", action="store_true", help="one JSON object per record")
    t.set_defaults(func=_tail)

    r = actions.add_parser("replay", help="rebuild a session as a notebook from the log")
    client_options(r)
    r.add_argument("session_id")
    r.add_argument("-o", "--out", required=True, help="notebook to write (e.g. session.ipynb)")
    r.set_defaults(func=_replay)


def _run(args: argparse.Namespace, sql: str) -> list[dict[str, Any]]:
    with client_for(args) as client:
        result = client.run("audit", sql)
    table = result.last.table if result.last is not None else None
    return list(table.to_pylist()) if table is not None else []


def _errors(fn: Any) -> Any:
    def wrapped(args: argparse.Namespace) -> int:
        from warden.errors import WardenError
        from warden.gateway.client import Denied

        try:
            code: int = fn(args)
            return code
        except Denied as exc:
            print(f"warden: {exc}", file=sys.stderr)
            return EXIT_DENIED
        except WardenError as exc:
            print(f"warden: error: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT

    return wrapped


def cell_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, (list, tuple)):
        return ",".join(cell_text(v) for v in value)
    return " ".join(str(value).split())


def text_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None, *, width: int = 60) -> str:
    """Rows as an aligned, left-aligned text table with a header line."""
    cols = list(columns) if columns is not None else list(dict.fromkeys(k for r in rows for k in r))

    def cut(s: str) -> str:
        return s if len(s) <= width else s[: width - 1] + "…"

    cells = [[cut(cell_text(r.get(c))) for c in cols] for r in rows]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines)


@_errors
def _query(args: argparse.Namespace) -> int:
    sql = sys.stdin.read() if args.sql == "-" else args.sql
    rows = _run(args, sql)
    if args.format == "json":
        for r in rows:
            print(json.dumps(r, default=str))
    elif args.format == "csv":
        import csv

        cols = list(dict.fromkeys(k for r in rows for k in r))
        writer = csv.DictWriter(sys.stdout, fieldnames=cols)
        writer.writeheader()
        writer.writerows({k: cell_text(v) if isinstance(v, (list, dt.datetime)) else v for k, v in r.items()} for r in rows)
    else:
        print(text_table(rows, width=args.width))
        print(f"({len(rows)} row{'s' if len(rows) != 1 else ''})", file=sys.stderr)
    return EXIT_OK


_TAIL_COLUMNS = ("event_time", "chain_id", "seq", "type", "subject", "connection", "action", "status", "rows", "sql")


def tail_sql(args: argparse.Namespace, after: dict[str, int] | None = None) -> str:
    """The tail's SELECT (marked, so a follower does not print its own audit.read records)."""

    def lit(s: str) -> str:
        return "'" + s.replace("'", "''") + "'"

    where = [f"NOT (type = 'audit.read' AND sql LIKE {lit('%' + TAIL_MARK + '%')})"]
    if args.user:
        where.append(f"subject = {lit(args.user)}")
    if args.type:
        kind = args.type[:-1] if args.type.endswith("*") else args.type
        where.append(f"starts_with(type, {lit(kind)})" if args.type.endswith("*") else f"type = {lit(kind)}")
    if after:
        known = " OR ".join(f"(chain_id = {lit(c)} AND seq > {int(s)})" for c, s in after.items())
        where.append(f"({known} OR chain_id NOT IN ({', '.join(lit(c) for c in after)}))")
    cols = ", ".join(f'"{c}"' for c in _TAIL_COLUMNS)
    limit = "" if after else f" LIMIT {max(int(args.lines), 1)}"
    order = "event_time, chain_id, seq" if after else "event_time DESC, chain_id, seq DESC"
    return f"{TAIL_MARK} SELECT {cols} FROM events WHERE {' AND '.join(where)} ORDER BY {order}{limit}"


@_errors
def _tail(args: argparse.Namespace) -> int:
    def show(rows: list[dict[str, Any]]) -> None:
        for r in rows:
            if args.json:
                print(json.dumps(r, default=str), flush=True)
            else:
                sql = cell_text(r.get("sql"))
                sql = sql if len(sql) <= 80 else sql[:79] + "…"
                parts = [cell_text(r.get(c)) for c in ("event_time", "type", "subject", "connection", "action", "status")]
                rows_txt = f"rows={r['rows']}" if r.get("rows") is not None else ""
                print("  ".join(p for p in (*parts, rows_txt, sql) if p), flush=True)

    first = list(reversed(_run(args, tail_sql(args))))
    show(first)
    if not args.follow:
        return EXIT_OK
    heads: dict[str, int] = {}
    for r in first:
        heads[str(r["chain_id"])] = max(heads.get(str(r["chain_id"]), 0), int(r["seq"]))
    if not heads:  # nothing matched yet: start from the current heads
        for r in _run(args, f"{TAIL_MARK} SELECT chain_id, max(seq) AS seq FROM events GROUP BY chain_id"):
            heads[str(r["chain_id"])] = int(r["seq"])
    try:
        while True:
            # A poll, not a wait on a condition: the gateway has no push stream yet.
            time.sleep(max(args.interval, 0.1))
            rows = _run(args, tail_sql(args, heads))
            show(rows)
            for r in rows:
                heads[str(r["chain_id"])] = max(heads.get(str(r["chain_id"]), 0), int(r["seq"]))
    except KeyboardInterrupt:
        return EXIT_OK


@_errors
def _replay(args: argparse.Namespace) -> int:
    from warden.audit.replay import replay_session

    with client_for(args) as client:
        nb = replay_session(client, args.session_id, args.out)
    meta = nb["metadata"]["warden"]
    print(f"{args.out}: session {args.session_id} of {meta['subject'] or '?'}: {meta['cells']} cell(s), {meta['queries']} query record(s)")
    return EXIT_OK if meta["cells"] or meta["queries"] else EXIT_BAD_INPUT
