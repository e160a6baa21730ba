"""The kernel's identity and the gateway's address, read from the environment (see
:mod:`warden.kernel.connect` for the variables). No dependency on the HTTP client, so
``client`` and ``connect`` both build on this module and neither imports the other
in a cycle."""

from __future__ import annotations

import threading
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from warden.errors import WardenError
from warden.kernel.handoff import SECRET_ENV, delivered


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


class HubToken(StaticToken):
    """The single-user server's ``JUPYTERHUB_API_TOKEN``: the Hub says whose it is, and
    ``warden hub-config`` gives it the scope access:services!service=warden. Not taken
    out of the environment: the server that started the kernel holds it anyway."""

    describe = "JUPYTERHUB_API_TOKEN (this JupyterHub server's token)"


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
    handed = delivered()  # what the kernel's start-up took out of its environment block
    token = (env.get("WARDEN_TOKEN") or handed.get("WARDEN_TOKEN", "")).strip()
    token_file = env.get("WARDEN_TOKEN_FILE", "").strip()
    client_id = env.get("WARDEN_CLIENT_ID", "").strip()
    secret = (env.get("WARDEN_CLIENT_SECRET") or handed.get("WARDEN_CLIENT_SECRET", "")).strip()
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
    hub_token = env.get("JUPYTERHUB_API_TOKEN", "").strip()
    if hub_token:  # in a JupyterHub single-user server: its own Hub token (auth.mode jupyterhub)
        return HubToken(hub_token)
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
