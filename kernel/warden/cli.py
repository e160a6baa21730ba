"""The ``warden`` command: one entry point, subcommands.

    warden explain --policy FILE --user NAME --groups G1,G2 --connection NAME [--json] SQL
    warden policy check FILE
    warden demo [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from warden import __version__
from warden.errors import WardenError

if TYPE_CHECKING:
    # Imported where used: the policy engine, sqlglot and the detectors take most of a
    # second to import, and `warden --version` or `warden approvals` need none of them.
    from warden.policy.engine import Decision
    from warden.policy.model import Connection, Policy
    from warden.sql.catalog import Catalog
    from warden.sql.model import CellAnalysis

EXIT_OK = 0
EXIT_DENIED = 1  # explain: the decision is deny (scripts can test it)
EXIT_ERROR = 2  # bad input: policy, catalog, arguments


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_ERROR
    try:
        code: int = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
    except WardenError as exc:
        print(f"warden: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:
        # `warden … | head`: the reader has gone; no traceback. Python's own advice:
        # point stdout at devnull so the exit-time flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a killed writer
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="warden", description="Audited SQL for Jupyter.")
    parser.add_argument("--version", action="version", version=f"warden {__version__}")
    sub = parser.add_subparsers(metavar="COMMAND")

    ex = sub.add_parser("explain", help="print the decision for a cell without running it")
    ex.add_argument("--policy", required=True, help="policy YAML file")
    ex.add_argument("--user", required=True, help="the subject to decide for")
    ex.add_argument("--groups", default="", help="comma-separated groups of the user")
    ex.add_argument("--attr", action="append", default=[], metavar="KEY=VALUE", help="a user attribute (row filters use :user.KEY)")
    ex.add_argument("--connection", required=True, help="connection name from the policy")
    ex.add_argument("--catalog", help="JSON/YAML catalog file instead of reading the live database")
    ex.add_argument("--json", action="store_true", help="machine-readable output")
    ex.add_argument("sql", help="the SQL cell ('-' reads standard input)")
    ex.set_defaults(func=_explain)

    pol = sub.add_parser("policy", help="policy tools")
    pol_sub = pol.add_subparsers(metavar="ACTION")
    check = pol_sub.add_parser("check", help="validate a policy file")
    check.add_argument("file")
    check.set_defaults(func=_policy_check)

    gw = sub.add_parser("gateway", help="run the gateway (the enforcement point)")
    gw.add_argument("--config", required=True, help="gateway YAML config (see docs/gateway.md)")
    gw.add_argument("--worker", help=argparse.SUPPRESS)  # K:FD, set by the supervisor of `workers: N`
    gw.set_defaults(func=_gateway)

    ap = sub.add_parser("approvals", help="list, show, approve or deny held cells")
    _client_options(ap)
    ap_sub = ap.add_subparsers(metavar="ACTION")
    ap_list = ap_sub.add_parser("list", help="approval requests (approvers see all, others their own)")
    ap_list.add_argument("--status", choices=["pending", "approved", "denied", "expired", "used"])
    ap_list.add_argument("--json", action="store_true")
    ap_list.set_defaults(func=_approvals_list)
    ap_show = ap_sub.add_parser("show", help="one request")
    ap_show.add_argument("id")
    ap_show.set_defaults(func=_approvals_show)
    for verb in ("approve", "deny"):
        p = ap_sub.add_parser(verb, help=f"{verb} a pending request (never your own)")
        p.add_argument("id")
        p.add_argument("--reason", required=True)
        p.set_defaults(func=_approvals_decide, verb=verb)

    from warden.audit.cli import register as register_audit
    from warden.hub.config import register as register_hub_config
    from warden.kernel.install import register as register_install

    register_audit(sub)
    register_install(sub)
    register_hub_config(sub)

    demo = sub.add_parser("demo", help="build the demo database and show decisions and masked results")
    demo.add_argument("--dir", help="where to put the demo files (default: a warden folder in the user's data dir)")
    demo.set_defaults(func=_demo)
    return parser


def _policy_check(args: argparse.Namespace) -> int:
    from warden.policy.model import load_policy

    policy = load_policy(args.file)
    print(
        f"{args.file}: ok — {len(policy.connections)} connection(s), "
        f"{len(policy.classifications)} classification(s), {len(policy.roles)} role(s)"
    )
    return EXIT_OK


def catalog_for(policy: Policy, connection: str, catalog_file: str | None) -> Catalog:
    from warden.sql.catalog import load_catalog_file

    conn = policy.connections.get(connection)
    if conn is None:
        raise WardenError(f"connection {connection!r} is not in the policy (known: {', '.join(sorted(policy.connections))})")
    if catalog_file:
        catalog = load_catalog_file(catalog_file, dialect=conn.dialect)
    else:
        catalog = _live_catalog(conn, policy)
    if conn.search_path:
        catalog = catalog.with_search_path(conn.search_path)
    return catalog


def _live_catalog(conn: Connection, policy: Policy) -> Catalog:
    from warden.gateway.config import connection_dsn
    from warden.sql.catalog_live import load_catalog

    if conn.dialect == "duckdb":
        path = Path(conn.path or "")
        if not path.is_absolute():
            path = Path(policy.source).resolve().parent / path
        if not path.exists():
            raise WardenError(f"connection {conn.name!r}: DuckDB file {path} does not exist")
        import duckdb

        from warden.demo import in_use_message

        try:
            return load_catalog("duckdb", str(path))
        except (duckdb.Error, WardenError) as exc:
            message = in_use_message(path, exc)  # the gateway holds the file: say what to do, not DuckDB's lock text
            if message is None:
                raise
            raise WardenError(f"{message} (Or give warden explain a catalog file: --catalog FILE.)") from None
    dsn = connection_dsn(conn)
    return load_catalog("postgres", dsn)


def _explain(args: argparse.Namespace) -> int:
    from warden.policy.engine import Identity, decide
    from warden.policy.model import load_policy
    from warden.sql.analyze import analyze_cell

    policy = load_policy(args.policy)
    catalog = catalog_for(policy, args.connection, args.catalog)
    sql = sys.stdin.read() if args.sql == "-" else args.sql
    attributes = {}
    for item in args.attr:
        key, sep, value = item.partition("=")
        if not sep:
            raise WardenError(f"--attr {item!r} must be KEY=VALUE")
        attributes[key] = value
    identity = Identity(
        subject=args.user,
        groups=frozenset(g.strip() for g in args.groups.split(",") if g.strip()),
        attributes=attributes,
    )
    analysis = analyze_cell(sql, catalog)
    decision = decide(policy, identity, analysis, args.connection)
    if args.json:
        print(json.dumps(explain_json(analysis, decision, policy, args.connection), indent=2, default=str))
    else:
        print(explain_text(analysis, decision, policy, args.connection))
    return EXIT_DENIED if decision.action == "deny" else EXIT_OK


def explain_json(analysis: CellAnalysis, decision: Decision, policy: Policy, connection: str) -> dict[str, Any]:
    from warden.policy.engine import Classifier

    classify = Classifier(policy, connection)
    names = engine_output_names(analysis.sql, analysis.dialect)
    statements = []
    for st in analysis.statements:
        masks = {m.position: m for m in decision.masks if m.statement == st.index}
        usage: dict[str, list[str]] = {}
        for use in sorted(st.uses, key=lambda u: (u.column, u.usage.value)):
            usage.setdefault(use.column.qualified, []).append(use.usage.value)
        statements.append(
            {
                "index": st.index,
                "kind": st.kind,
                "reads": list(st.reads),
                "writes": list(st.writes),
                "columns": usage,
                "outputs": [
                    {
                        "name": names.get((st.index, pos), out.name),
                        "sources": sorted(s.qualified for s in out.sources),
                        "transformed": out.transformed,
                        "classifications": sorted(classify.of(out.sources)),
                        "mask": masks[pos].operator.spec if pos in masks else None,
                        "mask_rules": list(masks[pos].rules) if pos in masks else [],
                    }
                    for pos, out in enumerate(st.outputs)
                ],
                "unresolved": [asdict(u) for u in st.unresolved],
            }
        )
    return {
        "action": decision.action,
        "rule_ids": list(decision.rule_ids),
        "reasons": [asdict(r) for r in decision.reasons],
        "roles": list(decision.roles),
        "row_filters": [asdict(f) for f in decision.row_filters],
        "taints": [{"column": t.column.qualified, "classifications": sorted(t.classifications)} for t in decision.taints],
        "pending": [asdict(p) for p in decision.pending],
        "fingerprint": analysis.fingerprint,
        "redacted_sql": decision.redacted_sql,
        "statements": statements,
    }


def engine_output_names(sql: str, dialect: str) -> dict[tuple[int, int], str]:
    """(statement, position) -> the name the engine gives an unaliased computed output
    (the analysis calls it ``_col_N``): PostgreSQL ``count``, ``upper``, ``?column?``;
    DuckDB its expression text (``count_star()``, ``(id + 1)``). Aliases, plain columns
    and everything after a ``*`` keep the analysis's names."""
    import sqlglot
    from sqlglot import exp

    try:
        trees = [t for t in sqlglot.parse(sql, read=dialect) if t is not None]
    except sqlglot.errors.SqlglotError:
        return {}
    names: dict[tuple[int, int], str] = {}
    for index, tree in enumerate(trees):
        select: Any = tree
        while isinstance(select, (exp.SetOperation, exp.Subquery)):
            select = select.this if isinstance(select, exp.Subquery) else select.left  # set operations take the left names
        if not isinstance(select, exp.Select):
            continue
        for pos, item in enumerate(select.expressions):
            if isinstance(item, exp.Star) or (isinstance(item, exp.Column) and isinstance(item.this, exp.Star)):
                break  # positions after a star depend on the catalog
            if isinstance(item, (exp.Alias, exp.Column)):
                continue
            names[(index, pos)] = _postgres_name(item) or "?column?" if dialect == "postgres" else _duckdb_name(item)
    return names


def _postgres_name(node: Any) -> str | None:
    """PostgreSQL's FigureColname: a column's name, a function's, a cast's argument (else
    its type), CASE, EXISTS, ARRAY; None where PostgreSQL says ``?column?``."""
    from sqlglot import exp

    if isinstance(node, exp.Column):
        return str(node.name)
    if isinstance(node, exp.Cast):
        return _postgres_name(node.this) or str(node.to.sql("postgres")).lower()
    if isinstance(node, exp.Case):
        return "case"
    if isinstance(node, exp.Exists):
        return "exists"
    if isinstance(node, exp.Array):
        return "array"
    if isinstance(node, exp.Anonymous):
        return str(node.name).lower()
    if isinstance(node, exp.Func):
        return str(node.sql_name()).lower()
    if isinstance(node, exp.Paren):
        return _postgres_name(node.this)
    return None


def _duckdb_name(node: Any) -> str:
    """DuckDB names a computed column by its expression text (close to it: DuckDB's own
    printer differs in quoting and spacing in places)."""
    from sqlglot import exp

    if isinstance(node, exp.Count) and isinstance(node.this, exp.Star):
        return "count_star()"
    text = str(node.sql("duckdb"))
    if isinstance(node, exp.Func):
        head, paren, rest = text.partition("(")
        text = head.lower() + paren + rest
    if isinstance(node, exp.Binary):
        text = f"({text})"
    return text


def explain_text(analysis: CellAnalysis, decision: Decision, policy: Policy, connection: str) -> str:
    data = explain_json(analysis, decision, policy, connection)
    lines = [f"decision: {decision.action.upper()}   (roles: {', '.join(decision.roles) or 'none'})"]
    for r in decision.reasons:
        lines.append(f"  {r.action:<5} [{r.rule}] {r.message}")
    for p in decision.pending:
        lines.append(f"  later [{p.rule}] {p.condition!r} is checked by the gateway before running")
    for f in decision.row_filters:
        lines.append(f"  row filter on {f.relation}: {f.predicate}  [{f.rule}]")
    for st in data["statements"]:
        lines.append("")
        lines.append(f"statement {st['index'] + 1}: {st['kind']}")
        if st["reads"]:
            lines.append(f"  reads:  {', '.join(st['reads'])}")
        if st["writes"]:
            lines.append(f"  writes: {', '.join(st['writes'])}")
        if st["columns"]:
            lines.append("  columns:")
            for col, uses in st["columns"].items():
                lines.append(f"    {col:<40} {', '.join(uses)}")
        if st["outputs"]:
            lines.append("  outputs:")
            for out in st["outputs"]:
                src = ", ".join(out["sources"]) or "(no column)"
                how = "transformed" if out["transformed"] else "copy"
                mask = f"  MASK {out['mask']} [{', '.join(out['classifications'])}]" if out["mask"] else ""
                lines.append(f"    {out['name']:<20} <- {src} ({how}){mask}")
    lines.append("")
    lines.append(f"audit sql: {decision.redacted_sql}")
    return "\n".join(lines)


def _gateway(args: argparse.Namespace) -> int:
    from warden.gateway.server import serve

    if args.worker:
        index, fd = (int(x) for x in args.worker.split(":", 1))
        return serve(args.config, worker=(index, fd))
    return serve(args.config)


def _client_options(parser: argparse.ArgumentParser) -> None:
    from warden.gateway.cli_client import client_options

    client_options(parser)


def _client(args: argparse.Namespace) -> Any:
    from warden.gateway.cli_client import client_for

    return client_for(args)


def _approvals_list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        items = client.approvals(args.status)
    if args.json:
        print(json.dumps(items, indent=2))
        return EXIT_OK
    if not items:
        print("no approval requests")
    for a in items:
        print(f"{a['id']}  {a['status']:<8} {a['requester']:<16} {a['connection']:<12} {a['created_at'][:19]}  {'; '.join(a['rule_ids'])}")
    return EXIT_OK


def _approvals_show(args: argparse.Namespace) -> int:
    with _client(args) as client:
        print(json.dumps(client.approval(args.id), indent=2))
    return EXIT_OK


def _approvals_decide(args: argparse.Namespace) -> int:
    with _client(args) as client:
        a = client.decide(args.id, approve=args.verb == "approve", reason=args.reason)
    print(f"{a['id']}: {a['status']} by {a['decided_by']} — {a['decision_reason']}")
    return EXIT_OK


def _demo(args: argparse.Namespace) -> int:
    from warden.demo import run_demo

    return run_demo(args.dir)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
