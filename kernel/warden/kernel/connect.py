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

The token and the client secret are taken out of ``os.environ`` once read, so
``%env``, ``os.environ`` dumps and child processes do not show them.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from warden.errors import WardenError

if TYPE_CHECKING:
    from warden.kernel.client import KernelGatewayClient

SECRET_ENV = ("WARDEN_TOKEN", "WARDEN_CLIENT_SECRET")


class IdentityError(WardenError):
    """No usable identity for the gateway (missing or unreadable token source)."""


class TokenSource:
    """Gives the current bearer token; ``refresh`` gets a new one if it can."""

    describe = "nowhere (no WARDEN_TOKEN, WARDEN_TOKEN_FILE or service account is set)"

    def token(self) -> str | None:
        return None

    def refresh(self) -> str | None:
        return None


class StaticToken(TokenSource):
    describe = "WARDEN_TOKEN"

    def __init__(self, token: str) -> None:
        self._token = token

    def token(self) -> str | None:
        return self._token


class FileToken(TokenSource):
    def __init__(self, path: str | Path, describe: str = "WARDEN_TOKEN_FILE") -> None:
        self.path = Path(path)
        self.describe = f"{describe} ({self.path})"
        self._token: str | None = None

    def token(self) -> str | None:
        if self._token is None:
            self._token = self._read()
        return self._token

    def refresh(self) -> str | None:
        new = self._read()
        if new == self._token:
            return None
        self._token = new
        return new

    def _read(self) -> str:
        try:
            return self.path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise IdentityError(f"cannot read the warden token file {self.path}: {exc.strerror}") from None


class ClientCredentialsToken(TokenSource):
    describe = "service account (client credentials)"

    def __init__(self, issuer: str, client_id: str, client_secret: str, audience: str | None) -> None:
        self.issuer, self.client_id, self._secret, self.audience = issuer, client_id, client_secret, audience
        self._token: str | None = None
        self._lock = threading.Lock()

    def token(self) -> str | None:
        with self._lock:
            if self._token is None:
                self._token = self._fetch()
            return self._token

    def refresh(self) -> str | None:
        with self._lock:
            self._token = self._fetch()
            return self._token

    def _fetch(self) -> str:
        from warden.gateway.auth import fetch_client_credentials_token

        return fetch_client_credentials_token(self.issuer, self.client_id, self._secret, audience=self.audience)


@dataclass(frozen=True)
class Endpoint:
    base_url: str
    socket: str | None
    mode: str  # "remote" | "local"

    @property
    def where(self) -> str:
        return f"unix socket {self.socket}" if self.socket else self.base_url

    def transport(self) -> httpx.HTTPTransport | None:
        return httpx.HTTPTransport(uds=self.socket) if self.socket else None


def token_source_from_env(env: MutableMapping[str, str], *, scrub: bool = True) -> TokenSource:
    token = env.get("WARDEN_TOKEN", "").strip()
    token_file = env.get("WARDEN_TOKEN_FILE", "").strip()
    client_id = env.get("WARDEN_CLIENT_ID", "").strip()
    secret = env.get("WARDEN_CLIENT_SECRET", "").strip()
    issuer = env.get("WARDEN_OIDC_ISSUER", "").strip()
    if scrub:
        for key in SECRET_ENV:
            env.pop(key, None)
    if token:
        return StaticToken(token)
    if token_file:
        return FileToken(token_file)
    if client_id or secret:
        if not (client_id and secret and issuer):
            raise IdentityError("a service account needs WARDEN_CLIENT_ID, WARDEN_CLIENT_SECRET and WARDEN_OIDC_ISSUER")
        audience = env.get("WARDEN_OIDC_AUDIENCE", "warden").strip() or None
        return ClientCredentialsToken(issuer, client_id, secret, audience)
    return TokenSource()


def endpoint_from_env(env: MutableMapping[str, str]) -> Endpoint | None:
    """The configured gateway, or None for local mode."""
    url = env.get("WARDEN_GATEWAY_URL", "").strip()
    sock = env.get("WARDEN_GATEWAY_SOCKET", "").strip()
    if url.startswith("unix:"):
        path = url[len("unix:") :]
        while path.startswith("//"):
            path = path[1:]
        return Endpoint("http://warden", path, "remote")
    if url:
        if not url.startswith(("http://", "https://")):
            raise IdentityError(f"WARDEN_GATEWAY_URL must be http(s)://host:port or unix:///path, not {url!r}")
        return Endpoint(url.rstrip("/"), None, "remote")
    if sock:
        return Endpoint("http://warden", sock, "remote")
    return None


Connector = Callable[[], "KernelGatewayClient"]


def connect_from_env(env: MutableMapping[str, str] | None = None, *, scrub: bool = True) -> KernelGatewayClient:
    """A client for the configured gateway, or for the local one (started if needed)."""
    from warden.kernel.client import KernelGatewayClient

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
