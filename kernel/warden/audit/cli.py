"""``warden audit verify``, ``export``, ``public-key`` (here) and ``query``, ``tail``,
``replay`` (against the running gateway: warden.audit.terminal).

Wired into the main parser by ``warden.cli`` with ``register(sub)``; ``main()`` runs
the same subcommands standalone (``python -m warden.audit.cli audit verify ...``).

Exit codes: 0 ok, 1 verify found problems, 2 bad input (arguments, unreadable key
or checkpoint file, store that cannot be opened).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from warden.errors import WardenError

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_BAD_INPUT = 2
STORE_ENV = "WARDEN_AUDIT_STORE"


def register(subparsers: Any) -> None:
    """Add the ``audit`` command (``verify``, ``export``, ``public-key``, ``query``, ``tail``, ``replay``) to an argparse subparsers object."""
    audit = subparsers.add_parser("audit", help="query, follow, replay, verify or export the audit log", description="Tools for the tamper-evident audit log.")
    actions = audit.add_subparsers(metavar="ACTION")
    audit.set_defaults(func=lambda _args: _usage(audit))

    v = actions.add_parser(
        "verify",
        help="recompute the hash chains and report any edit, deletion, insertion, reordering or truncation",
        description="Verify an audit store (URL) or a directory of exported segments. Exit 0 when intact, 1 when not.",
    )
    v.add_argument("--store", default=os.environ.get(STORE_ENV), help=f"store URL (duckdb:///path or postgresql://...) or export directory; default ${STORE_ENV}")
    v.add_argument(
        "--checkpoints", metavar="FILE", action="append",
        help="JSONL file of signed checkpoints kept outside the store (repeat for several replicas); each must also be in the store",
    )  # fmt: skip
    v.add_argument("--public-key", metavar="FILE", help="PEM public key that signed the checkpoints/manifests (from `warden audit public-key`)")
    v.add_argument("--strict", action="store_true", help="records after the last signed checkpoint are an error (verify a stopped gateway's store)")
    v.add_argument("--json", action="store_true", help="machine-readable report")
    v.set_defaults(func=_verify)

    e = actions.add_parser("export", help="write sealed Parquet/JSONL segments with signed manifests, or OCSF JSONL for a SIEM", description="Export chains as sealed segments.")
    e.add_argument("--store", default=os.environ.get(STORE_ENV), help=f"store URL; default ${STORE_ENV}")
    e.add_argument("--format", choices=("parquet", "jsonl", "ocsf"), default="parquet",
                   help="data file format (default parquet); ocsf: OCSF Datastore Activity (6005) JSONL for a SIEM, one file per chain")
    e.add_argument("--since", metavar="ISO", help="first event time to export (ISO-8601; UTC when no offset is given)")
    e.add_argument("--out", required=True, metavar="DIR", help="directory for the segments")
    e.add_argument("--chain", help="export only this chain")
    e.add_argument("--signing-key", metavar="FILE", help="file with the PEM Ed25519 private key or the gateway secret")
    e.set_defaults(func=_export)

    k = actions.add_parser(
        "public-key",
        help="print the public key (PEM) that verifies checkpoints and manifests",
        description="Print the checkpoint public key of a gateway: from its config (--config, which names its secret_file), "
        "a key or secret file (--signing-key), or, with no argument, the local gateway's. The key id goes to stderr.",
    )
    src = k.add_mutually_exclusive_group()
    src.add_argument("--config", metavar="YAML", help="the gateway's config file; its secret_file is read the way the gateway reads it")
    src.add_argument("--signing-key", metavar="FILE", help="file with the PEM Ed25519 private key or the gateway secret (secret_file)")
    k.set_defaults(func=_public_key)

    from warden.audit.terminal import register_live

    register_live(actions)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_BAD_INPUT


def _fail(message: str) -> int:
    print(f"warden: error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _verify(args: argparse.Namespace) -> int:
    from warden.audit.verify import report_json, verify

    if not args.store:
        return _fail(f"audit verify needs --store (or ${STORE_ENV})")
    try:
        report = verify(args.store, checkpoints=args.checkpoints, public_key=Path(args.public_key) if args.public_key else None, strict=args.strict)
    except WardenError as exc:
        return _fail(str(exc))
    print(report_json(report) if args.json else report.format())
    return EXIT_OK if report.ok else EXIT_PROBLEMS


def _export(args: argparse.Namespace) -> int:
    from warden.audit.export import export

    if not args.store:
        return _fail(f"audit export needs --store (or ${STORE_ENV})")
    since: dt.datetime | None = None
    if args.since:
        try:
            since = dt.datetime.fromisoformat(args.since)
        except ValueError:
            return _fail(f"--since {args.since!r} is not an ISO-8601 time (e.g. 2024-05-01T00:00:00Z)")
        if since.tzinfo is None:
            since = since.replace(tzinfo=dt.UTC)
    if args.format == "ocsf":
        from warden.audit.ocsf import export_ocsf

        try:
            files = export_ocsf(args.store, args.out, since, chain_id=args.chain)
        except WardenError as exc:
            return _fail(str(exc))
        for chain, path, count in files:
            print(json.dumps({"chain_id": chain, "records": count, "data": str(path), "format": "ocsf"}))
        if not files:
            print("nothing to export", file=sys.stderr)
        return EXIT_OK
    from warden.audit.checkpoint import signing_key_from_file

    try:
        key = signing_key_from_file(args.signing_key) if args.signing_key else None
        segments = export(args.store, args.out, args.format, since, chain_id=args.chain, signing_key=key)
    except WardenError as exc:
        return _fail(str(exc))
    for seg in segments:
        print(json.dumps({"chain_id": seg.chain_id, "first_seq": seg.first_seq, "last_seq": seg.last_seq, "records": seg.count, "data": str(seg.data_path), "manifest": str(seg.manifest_path), "signed": seg.signed}))
    if not segments:
        print("nothing to export", file=sys.stderr)
    return EXIT_OK


def _public_key(args: argparse.Namespace) -> int:
    from warden.audit.checkpoint import key_id, public_key_pem, signing_key_from_file

    try:
        if args.signing_key:
            key = signing_key_from_file(args.signing_key)
        else:
            key = signing_key_from_file(_secret_file(args.config))
    except WardenError as exc:
        return _fail(str(exc))
    print(public_key_pem(key), end="")
    print(f"key id {key_id(key)}", file=sys.stderr)
    return EXIT_OK


def _secret_file(config_path: str | None) -> Path:
    """The secret file of a gateway config, or of the local gateway (no config given):
    the same settings the gateway itself loads. Never creates a secret."""
    from warden.audit.errors import AuditConfigError
    from warden.gateway.config import secret_file_of

    if config_path is None:
        from warden.gateway.local import local_config_path

        config_path = str(local_config_path())
    secret = secret_file_of(config_path)
    if not secret.is_file():
        raise AuditConfigError(f"the gateway's secret_file {secret} does not exist (has that gateway ever run?)")
    return secret


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="warden")
    register(parser.add_subparsers(metavar="COMMAND"))
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad arguments; keep that code
        return int(exc.code) if isinstance(exc.code, int) else EXIT_BAD_INPUT
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return EXIT_BAD_INPUT
    code: int = func(args)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
