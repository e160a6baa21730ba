"""Where the gateway is and who the kernel is to it. The kernel holds no database
credentials: only the user's (or service account's) bearer token.

Environment (first match wins):

``WARDEN_GATEWAY_URL``
    ``http(s)://host:port`` or ``unix:///path/to/gateway.sock``. Unset (and no
    ``WARDEN_GATEWAY_SOCKET``) means **local mode**: the kernel calls
    :func:`warden.gateway.local.ensure_local_gateway` and uses its socket and token.
``WARDEN_GATEWAY_SOCKET``
    a unix socket path (the same as ``unix://`` above).
``WARDEN_TOKEN`` / ``WARDEN_TOKEN_FILE``
    the bearer token, or a file holding it (re-read when the gateway refuses the token,
    so a rotated file is picked up).
``WARDEN_CLIENT_ID`` + ``WARDEN_CLIENT_SECRET`` + ``WARDEN_OIDC_ISSUER``
    a service account: a token from the OAuth 2.0 client-credentials grant
    (``WARDEN_OIDC_AUDIENCE``, default ``warden``), fetched again when it expires.

The token and the client secret never stay in the kernel's environment block:
``python -m warden.kernel`` hands them over through an in-memory file and re-executes
itself without them (:mod:`warden.kernel.handoff`); what is still in ``os.environ`` when
the client is built is taken out once read. docs/kernel.md lists what a cell can reach.
"""

from __future__ import annotations

import os
from collections.abc import Callable, MutableMapping

from warden.kernel.client import KernelGatewayClient
from warden.kernel.handoff import SECRET_ENV
from warden.kernel.tokens import (
    ClientCredentialsToken,
    Endpoint,
    FileToken,
    IdentityError,
    StaticToken,
    TokenSource,
    endpoint_from_env,
    token_source_from_env,
)

__all__ = [
    "SECRET_ENV", "ClientCredentialsToken", "Connector", "Endpoint", "FileToken", "IdentityError",
    "StaticToken", "TokenSource", "connect_from_env", "endpoint_from_env", "token_source_from_env",
]  # fmt: skip

Connector = Callable[[], KernelGatewayClient]


def connect_from_env(env: MutableMapping[str, str] | None = None, *, scrub: bool = True) -> KernelGatewayClient:
    """A client for the configured gateway, or for the local one (started if needed)."""
    env = os.environ if env is None else env
    endpoint = endpoint_from_env(env)
    if endpoint is None:
        from warden.gateway.local import ensure_local_gateway

        for key in SECRET_ENV:  # the local gateway inherits our environment: give it none
            if scrub:
                env.pop(key, None)
        local = ensure_local_gateway()
        source: TokenSource = FileToken(local.token_file, describe="local gateway token")
        endpoint = Endpoint("http://warden", str(local.socket), "local")
    else:
        source = token_source_from_env(env, scrub=scrub)
    return KernelGatewayClient(endpoint, source)
