"""How the command line reaches a gateway: ``--url``, ``--socket`` or the local one.

Shared by ``warden approvals`` and ``warden audit query/tail/replay``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any


def client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=os.environ.get("WARDEN_GATEWAY_URL", ""), help="gateway URL (env WARDEN_GATEWAY_URL)")
    parser.add_argument("--socket", default=os.environ.get("WARDEN_GATEWAY_SOCKET", ""), help="gateway unix socket (env WARDEN_GATEWAY_SOCKET)")
    parser.add_argument("--token-file", default=os.environ.get("WARDEN_TOKEN_FILE", ""), help="bearer token file (env WARDEN_TOKEN_FILE; or WARDEN_TOKEN)")


def client_for(args: argparse.Namespace) -> Any:
    """A gateway client from the options, or for the local-mode gateway if it runs."""
    import httpx

    from warden.errors import WardenError
    from warden.gateway.client import GatewayClient

    token = os.environ.get("WARDEN_TOKEN", "")
    if args.token_file:
        try:
            token = Path(args.token_file).read_text().strip()
        except OSError as exc:
            raise WardenError(f"cannot read token file {args.token_file}: {exc.strerror}") from None
    if args.url:
        return GatewayClient(args.url, token=token)
    socket = args.socket
    if not socket:
        from warden.gateway.local import runtime_dir

        run = runtime_dir()
        if not (run / "gateway.sock").exists():
            raise WardenError("no gateway: give --url or --socket (or WARDEN_GATEWAY_URL), or start the local one (open a warden kernel)")
        socket = str(run / "gateway.sock")
        if not token and (run / "token").exists():
            token = (run / "token").read_text().strip()
    return GatewayClient("http://warden", token=token, transport=httpx.HTTPTransport(uds=socket))
