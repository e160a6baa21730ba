"""Who is asking, according to JupyterHub: a Hub-issued API token in, an Identity out.

A kernel in a user's single-user server presents that server's ``JUPYTERHUB_API_TOKEN``.
The gateway asks the Hub who owns it (``GET {hub_api}/user`` with the token itself, what
jupyterhub's ``HubAuth`` does) and accepts it only if

* the Hub knows the token (not expired, not revoked) and it belongs to a *user* (a Hub
  service's token is refused: service accounts use OIDC client credentials);
* the token carries the scope ``access:services!service=<name>`` (or the unfiltered
  ``access:services``), which the Hub grants only through ``Spawner.server_token_scopes``
  / ``load_roles``, so a token meant for something else is not a warden credential.

The subject is the Hub user name and the groups are the Hub groups, both as the Hub
reports them for *that* token: nothing the client sends can name another user, so a
token of user A is always A.

Answers are cached for ``cache_seconds`` at most and never past the token's own
``expires_at``, which the gateway reads with its own service token (scope
``read:tokens``); when it cannot learn the expiry, it does not cache at all.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx

from warden.gateway.auth import AuthError
from warden.policy.engine import Identity

if TYPE_CHECKING:
    from warden.gateway.config import AuthSettings

__all__ = ["HubAuthConfig", "HubTokenVerifier", "combined_authenticator", "hub_authenticator", "looks_like_jwt"]

log = logging.getLogger(__name__)

_MAX_TOKEN = 1024
_MAX_GROUPS = 1000


@dataclass(frozen=True)
class HubAuthConfig:
    """How the gateway reaches the Hub and which service it is there."""

    api_url: str  # e.g. http://127.0.0.1:8081/hub/api (JUPYTERHUB_API_URL)
    service_name: str = "warden"
    #: the gateway's own Hub API token (managed services get JUPYTERHUB_API_TOKEN); used
    #: only to read a token's expiry. Empty: no expiry known, so nothing is cached.
    service_token: str = ""
    cache_seconds: float = 30.0
    http_timeout: float = 5.0
    cache_size: int = 4096

    def __post_init__(self) -> None:
        if not self.api_url.startswith(("http://", "https://")):
            raise AuthError("misconfigured", f"auth.hub_api_url must be an http(s) URL, got {self.api_url!r}")
        if not self.service_name or "/" in self.service_name:
            raise AuthError("misconfigured", "auth.hub_service_name must be a Hub service name")
        if self.cache_seconds < 0 or self.http_timeout <= 0:
            raise AuthError("misconfigured", "auth.hub_cache_seconds must be >= 0 and the timeout > 0")

    @property
    def accepted_scopes(self) -> frozenset[str]:
        return frozenset({"access:services", f"access:services!service={self.service_name}"})


class HubTokenVerifier:
    """Verifies Hub API tokens against the Hub. Thread-safe; one per gateway process."""

    def __init__(self, config: HubAuthConfig, *, transport: httpx.BaseTransport | None = None) -> None:
        self.config = config
        self._client = httpx.Client(timeout=config.http_timeout, transport=transport, follow_redirects=False)
        self._cache: OrderedDict[str, tuple[float, Identity]] = OrderedDict()
        self._lock = threading.Lock()
        self.hub_calls = 0  # requests to /user: what the cache saves (tests read it)

    def close(self) -> None:
        self._client.close()

    def cached_until(self, token: str) -> float | None:
        """Wall-clock time until which ``token``'s identity is cached (None: not cached)."""
        with self._lock:
            item = self._cache.get(_key(token))
        return item[0] if item else None

    def verify(self, token: str) -> Identity:
        if not isinstance(token, str) or not token:
            raise AuthError("missing-token", "no token was presented")
        if len(token) > _MAX_TOKEN or _has_control_chars(token):
            raise AuthError("malformed", "the token is not a JupyterHub API token")
        key = _key(token)
        with self._lock:
            item = self._cache.get(key)
            if item is not None:
                if time.time() < item[0]:
                    return item[1]
                del self._cache[key]
        model = self._whoami(token)
        identity = self._identity(model)
        until = self._cache_until(model)
        if until > time.time():
            with self._lock:
                self._cache[key] = (until, identity)
                while len(self._cache) > self.config.cache_size:
                    self._cache.popitem(last=False)
        return identity

    # -- the Hub ---------------------------------------------------------------------------

    def _get(self, path: str, token: str, what: str) -> httpx.Response:
        url = self.config.api_url.rstrip("/") + path
        try:
            return self._client.get(url, headers={"Authorization": f"token {token}"})
        except (httpx.HTTPError, httpx.InvalidURL, OSError, RuntimeError) as exc:
            raise AuthError("issuer-unavailable", f"cannot reach the Hub API for {what}: {type(exc).__name__}") from None

    def _whoami(self, token: str) -> Mapping[str, Any]:
        self.hub_calls += 1
        response = self._get("/user", token, "the token's owner")
        if response.status_code in (401, 403, 404):
            # The Hub answers 403 for a token it does not know (expired, revoked, made up).
            raise AuthError("invalid-credentials", "the Hub does not accept this token (unknown, expired or revoked)")
        if response.status_code != 200:
            raise AuthError("issuer-unavailable", f"the Hub API answered HTTP {response.status_code}")
        try:
            model = response.json()
        except ValueError:
            raise AuthError("issuer-unavailable", "the Hub API did not answer JSON") from None
        if not isinstance(model, dict):
            raise AuthError("issuer-unavailable", "the Hub API's answer is not an object")
        return model

    def _identity(self, model: Mapping[str, Any]) -> Identity:
        kind = model.get("kind")
        if kind != "user":  # fail closed: an answer without a kind is not a user's
            raise AuthError(
                "invalid-credentials",
                f"a Hub {kind!s:.20} token is not accepted; service accounts use OIDC client credentials",
            )
        scopes = model.get("scopes")
        if not isinstance(scopes, list) or not self.config.accepted_scopes.intersection(s for s in scopes if isinstance(s, str)):
            raise AuthError(
                "insufficient-scope",
                f"the Hub token lacks the scope access:services!service={self.config.service_name} "
                "(grant it through Spawner.server_token_scopes; see `warden hub-config`)",
            )
        name = model.get("name")
        if not isinstance(name, str) or not name or len(name) > 255 or _has_control_chars(name):
            raise AuthError("malformed", "the Hub's answer has no usable user name")
        groups = model.get("groups") or []
        if not isinstance(groups, list) or len(groups) > _MAX_GROUPS or not all(isinstance(g, str) for g in groups):
            raise AuthError("malformed", "the Hub's answer has malformed groups")
        attributes = {"auth_method": "hub-token", "hub_admin": "true" if model.get("admin") is True else "false"}
        return Identity(
            subject=name,
            groups=frozenset(groups),
            attributes=attributes,
            kind="human",
            display_name=name,
        )

    def _cache_until(self, model: Mapping[str, Any]) -> float:
        """Until when this answer may be reused: never past the token's expiry; not at all
        when the expiry cannot be read."""
        cfg = self.config
        token_id = model.get("token_id")
        if cfg.cache_seconds <= 0 or not cfg.service_token or not isinstance(token_id, str) or not token_id:
            return 0.0
        path = f"/users/{quote(str(model['name']), safe='')}/tokens/{quote(token_id, safe='')}"
        try:
            response = self._get(path, cfg.service_token, "the token's expiry")
        except AuthError:
            return 0.0
        if response.status_code != 200:
            log.warning("cannot read Hub token expiry (HTTP %s): not caching; grant the service read:tokens", response.status_code)
            return 0.0
        try:
            expires_at = response.json().get("expires_at")
        except (ValueError, AttributeError):
            return 0.0
        until = time.time() + cfg.cache_seconds
        if expires_at is None:
            return until  # a token without expiry (a server's token lives until the server stops)
        try:
            when = dt.datetime.fromisoformat(str(expires_at).replace("Z", "+00:00"))
        except ValueError:
            return 0.0
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        return min(until, when.timestamp())


def _has_control_chars(text: str) -> bool:
    return any(not c.isprintable() for c in text)


def _key(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def looks_like_jwt(token: str) -> bool:
    """A compact JWS/JWE (dots); JupyterHub tokens never contain a dot."""
    return "." in token


def combined_authenticator(
    hub: HubTokenVerifier,
    oidc: Callable[[str], Identity] | None,
    bearer: Callable[[str | None], str],
) -> Callable[[str | None], Identity]:
    """``auth.mode: jupyterhub``: Hub tokens go to the Hub; JWTs go to the OIDC verifier
    when an issuer is configured (service accounts via client credentials), else are
    refused. The shape decides, so neither verifier ever sees the other's tokens."""

    def authenticate(header: str | None) -> Identity:
        token = bearer(header)
        if looks_like_jwt(token):
            if oidc is None:
                raise AuthError("malformed", "JWTs are not accepted: this gateway has no OIDC issuer configured")
            return oidc(token)
        return hub.verify(token)

    return authenticate


def hub_authenticator(
    settings: AuthSettings, *, oidc_transport: httpx.BaseTransport | None = None, environ: Mapping[str, str] | None = None
) -> Callable[[str | None], Identity]:
    """The gateway's ``authenticate`` for ``auth.mode: jupyterhub``, from its
    :class:`~warden.gateway.config.AuthSettings`."""
    import os

    from warden.gateway.auth import OIDCConfig, OIDCVerifier, bearer_token

    env = os.environ if environ is None else environ
    hub = HubTokenVerifier(
        HubAuthConfig(
            api_url=settings.hub_api_url,
            service_name=settings.hub_service_name,
            service_token=env.get(settings.hub_token_env, "").strip() if settings.hub_token_env else "",
            cache_seconds=settings.hub_cache_seconds,
        )
    )
    oidc: Callable[[str], Identity] | None = None
    if settings.issuer:
        oidc = OIDCVerifier(
            OIDCConfig(
                issuer=settings.issuer,
                audience=settings.audience,
                groups_claim=settings.groups_claim,
                attributes_claims=settings.attribute_claims,
                leeway=settings.leeway_seconds,
                jwks_cache_ttl=float(settings.jwks_cache_seconds),
            ),
            transport=oidc_transport,
        ).verify
    return combined_authenticator(hub, oidc, bearer_token)
