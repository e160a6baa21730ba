"""Who is asking: OIDC bearer tokens, client-credentials service accounts, the local OS user.

The gateway calls :meth:`OIDCVerifier.verify` (or :meth:`LocalAuth.verify` in local mode)
for every request and gets back a :class:`~warden.policy.engine.Identity` or an
:class:`AuthError`. Nothing else ever escapes ``verify``: a token is either proven or the
request is refused (fail closed).

Verification (section 2 and 5 of docs/DESIGN.md):

* the issuer's discovery document is fetched lazily and its ``issuer`` must equal the
  configured one; its ``jwks_uri`` gives the signing keys, cached for ``jwks_cache_ttl``;
* a token whose ``kid`` is not cached triggers one JWKS refetch (at most once per
  ``jwks_refetch_interval``), so key rotation works without a restart;
* the ``alg`` must be in the configured allow-list, which may only contain asymmetric
  algorithms (never ``none``, never ``HS*``), and must fit the key the ``kid`` names;
* signature, ``iss`` (exact), ``aud`` (string or list), ``exp`` (required), ``nbf`` and
  ``iat`` are checked by joserfc with ``leeway`` seconds of clock skew; ``sub`` is required.

Error messages never contain the token (nor a client secret): they name what is wrong and
the configured expectation, and at most a sanitised, truncated ``kid``.
"""

from __future__ import annotations

import base64
import binascii
import getpass
import hmac
import ipaddress
import json
import logging
import re
import threading
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from types import ModuleType
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

import httpx
from joserfc import jwt
from joserfc.errors import (
    BadSignatureError,
    ExpiredTokenError,
    InvalidClaimError,
    JoseError,
    MissingClaimError,
    UnsupportedAlgorithmError,
)
from joserfc.jwa import JWSAlgModel
from joserfc.jwk import JWKRegistry, Key
from joserfc.jws import JWSRegistry

from warden.errors import WardenError
from warden.policy.engine import Identity

__all__ = [
    "DEFAULT_SERVICE_RULES",
    "AuthError",
    "AuthErrorCode",
    "LocalAuth",
    "OIDCConfig",
    "OIDCVerifier",
    "ServiceRule",
    "TokenVerifier",
    "bearer_token",
    "fetch_client_credentials_token",
]

log = logging.getLogger(__name__)

AuthErrorCode = Literal[
    "missing-token",  # no Authorization header / empty token
    "malformed",  # not a compact JWS, bad base64/JSON, bad claim types, bad header syntax
    "bad-algorithm",  # alg not in the allow-list ("none", HS*, ...) or does not fit the key
    "unknown-key",  # kid not in the issuer's JWKS, even after a refetch
    "bad-signature",  # signature does not verify
    "wrong-issuer",  # iss differs from the configured issuer
    "wrong-audience",  # aud does not contain the configured audience
    "expired",  # exp is in the past (beyond leeway)
    "not-yet-valid",  # nbf or iat in the future (beyond leeway)
    "missing-claim",  # a required claim (sub, exp, iss, aud) is absent
    "invalid-credentials",  # LocalAuth shared secret mismatch
    "token-request-failed",  # the token endpoint refused a client-credentials request
    "issuer-unavailable",  # discovery/JWKS/token endpoint unreachable or broken
    "misconfigured",  # bad OIDCConfig, or discovery says another issuer
    "insufficient-scope",  # a JupyterHub token without access to the warden service
]

_SERVER_SIDE: frozenset[str] = frozenset({"issuer-unavailable", "misconfigured"})


class AuthError(WardenError):
    """Authentication failed. ``code`` is machine-readable; ``str()`` is for humans.

    The message never contains the token or a secret, so it is safe to log and to return
    to the client.
    """

    def __init__(self, code: AuthErrorCode, message: str) -> None:
        self.code: AuthErrorCode = code
        self.message = message
        super().__init__(f"{code}: {message}")

    def __reduce__(self) -> tuple[type[AuthError], tuple[AuthErrorCode, str]]:
        return (type(self), (self.code, self.message))

    @property
    def http_status(self) -> int:
        """401 for anything the caller got wrong; 503 when the issuer is unreachable; 500
        when warden itself is misconfigured."""
        if self.code == "issuer-unavailable":
            return 503
        if self.code == "misconfigured":
            return 500
        if self.code == "insufficient-scope":
            return 403
        return 401

    @property
    def www_authenticate(self) -> str:
        """Value for the ``WWW-Authenticate`` response header (RFC 6750 section 3)."""
        if self.code == "missing-token":
            return 'Bearer realm="warden"'
        if self.code in _SERVER_SIDE:
            return 'Bearer realm="warden"'
        error = {"malformed": "invalid_request", "insufficient-scope": "insufficient_scope"}.get(self.code, "invalid_token")
        description = _header_safe(self.message)
        return f'Bearer realm="warden", error="{error}", error_description="{description}"'


def _header_safe(text: str) -> str:
    return "".join(c if 0x20 <= ord(c) < 0x7F and c not in '"\\' else "?" for c in text)[:200]


def _shown(value: object, limit: int = 64) -> str:
    """A short, printable rendering of an untrusted value (a kid) for a message."""
    text = value if isinstance(value, str) else repr(value)
    text = "".join(c if c.isprintable() else "?" for c in text)
    if len(text) > limit:
        text = text[:limit] + "..."
    return repr(text)


# --------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class ServiceRule:
    """Recognises a client-credentials (service) token from its claims.

    With ``equals``, the claim must equal that string; with ``equals_claim``, it must
    equal the value of that other claim; with ``prefix``, it must start with it; with none
    of them, the claim merely has to be present (and not empty).
    """

    claim: str
    equals: str | None = None
    equals_claim: str | None = None
    prefix: str | None = None

    def matches(self, claims: Mapping[str, Any]) -> bool:
        value = claims.get(self.claim)
        if value is None or value == "" or isinstance(value, (dict, list, bool)):
            return False
        if self.equals is not None and value != self.equals:
            return False
        if self.equals_claim is not None and value != claims.get(self.equals_claim):
            return False
        if self.prefix is not None:
            return isinstance(value, str) and value.startswith(self.prefix)
        return True


#: client_id == sub is RFC 9068 (JWT access tokens) for the client-credentials grant and
#: what the test issuer, Okta (``cid``) and most IdPs do; Auth0 sets ``gty``; Entra ID sets
#: ``idtyp=app``. Keycloak: add ``ServiceRule("preferred_username", prefix="service-account-")``.
DEFAULT_SERVICE_RULES: tuple[ServiceRule, ...] = (
    ServiceRule("client_id", equals_claim="sub"),
    ServiceRule("azp", equals_claim="sub"),
    ServiceRule("cid", equals_claim="sub"),
    ServiceRule("gty", equals="client-credentials"),
    ServiceRule("idtyp", equals="app"),
)

#: Asymmetric JWS algorithms warden can verify with a public key from a JWKS.
_ALG_KEYS: dict[str, tuple[str, frozenset[str] | None]] = {
    "RS256": ("RSA", None),
    "RS384": ("RSA", None),
    "RS512": ("RSA", None),
    "PS256": ("RSA", None),
    "PS384": ("RSA", None),
    "PS512": ("RSA", None),
    "ES256": ("EC", frozenset({"P-256"})),
    "ES384": ("EC", frozenset({"P-384"})),
    "ES512": ("EC", frozenset({"P-521"})),
    "EdDSA": ("OKP", frozenset({"Ed25519", "Ed448"})),
    "Ed25519": ("OKP", frozenset({"Ed25519"})),
    "Ed448": ("OKP", frozenset({"Ed448"})),
}
_CURVES: dict[str, frozenset[str]] = {
    "EC": frozenset({"P-256", "P-384", "P-521"}),
    "OKP": frozenset({"Ed25519", "Ed448"}),
}
_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain"})


def _is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_url(url: str, what: str, allow_http: bool) -> None:
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        raise AuthError("misconfigured", f"{what} is not a valid URL") from None
    if parts.scheme not in ("https", "http") or not host:
        raise AuthError("misconfigured", f"{what} must be an http(s) URL with a host, got {url!r}")
    if parts.scheme == "http" and not allow_http and not _is_loopback(host):
        raise AuthError(
            "misconfigured",
            f"{what} {url!r} must use https (plain http is only accepted for loopback "
            "addresses, or with allow_http=True)",
        )


@dataclass(frozen=True)
class OIDCConfig:
    """How to trust one OIDC issuer.

    ``issuer`` must equal the ``iss`` claim of tokens and the ``issuer`` of the discovery
    document byte for byte (mind the trailing slash).
    """

    issuer: str
    audience: str
    groups_claim: str = "groups"
    #: claims copied into ``Identity.attributes`` (as strings; lists are comma-joined).
    #: Dotted names reach into nested objects (``"realm_access.roles"``).
    attributes_claims: tuple[str, ...] = ()
    #: any matching rule makes the token a service (client-credentials) token
    service_rules: tuple[ServiceRule, ...] = DEFAULT_SERVICE_RULES
    #: where a service token's client id is read from (first present wins; else ``sub``)
    client_id_claims: tuple[str, ...] = ("client_id", "azp", "cid", "appid")
    algorithms: tuple[str, ...] = ("RS256", "ES256", "EdDSA")
    leeway: int = 30
    jwks_cache_ttl: float = 300.0
    #: at most one JWKS refetch per this many seconds, on an unknown ``kid``
    jwks_refetch_interval: float = 10.0
    #: after a failed periodic refresh, cached keys stay usable this much longer
    jwks_max_stale: float = 3600.0
    http_timeout: float = 5.0
    #: skip discovery and use this JWKS URL
    jwks_uri: str | None = None
    #: accept plain http for non-loopback issuers (development only)
    allow_http: bool = False

    def __post_init__(self) -> None:
        # Accept lists from YAML/JSON for the tuple fields.
        for name in ("attributes_claims", "service_rules", "client_id_claims", "algorithms"):
            value = getattr(self, name)
            if isinstance(value, str):
                raise AuthError("misconfigured", f"oidc.{name} must be a list, not a string")
            object.__setattr__(self, name, tuple(value))
        if not isinstance(self.issuer, str) or not self.issuer:
            raise AuthError("misconfigured", "oidc.issuer is required")
        _check_url(self.issuer, "oidc.issuer", self.allow_http)
        if self.jwks_uri is not None:
            _check_url(self.jwks_uri, "oidc.jwks_uri", self.allow_http)
        if not isinstance(self.audience, str) or not self.audience:
            raise AuthError("misconfigured", "oidc.audience is required")
        if not self.algorithms:
            raise AuthError("misconfigured", "oidc.algorithms must not be empty")
        for alg in self.algorithms:
            if alg not in _ALG_KEYS:
                raise AuthError(
                    "misconfigured",
                    f"oidc.algorithms: {alg!r} is not an asymmetric JWS algorithm warden can "
                    f"verify with a public key (allowed: {', '.join(_ALG_KEYS)})",
                )
        for rule in self.service_rules:
            if not isinstance(rule, ServiceRule):
                raise AuthError("misconfigured", "oidc.service_rules must hold ServiceRule values")
        if not isinstance(self.leeway, int) or not 0 <= self.leeway <= 600:
            raise AuthError("misconfigured", "oidc.leeway must be an integer between 0 and 600")
        for name in ("jwks_cache_ttl", "jwks_refetch_interval", "jwks_max_stale"):
            if getattr(self, name) < 0:
                raise AuthError("misconfigured", f"oidc.{name} must not be negative")
        if self.http_timeout <= 0:
            raise AuthError("misconfigured", "oidc.http_timeout must be positive")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> OIDCConfig:
        """Build from a parsed config section (keys = field names; ``service_rules`` as a
        list of mappings with ``claim`` and optionally ``equals``/``equals_claim``/``prefix``)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise AuthError("misconfigured", f"unknown oidc setting(s): {', '.join(unknown)}")
        kwargs = dict(data)
        if "service_rules" in kwargs:
            rules: list[ServiceRule] = []
            for item in kwargs["service_rules"]:
                if not isinstance(item, Mapping) or not isinstance(item.get("claim"), str):
                    raise AuthError(
                        "misconfigured", "each oidc.service_rules entry needs a 'claim'"
                    )
                extra = set(item) - {"claim", "equals", "equals_claim", "prefix"}
                if extra:
                    raise AuthError(
                        "misconfigured", f"unknown service rule key(s): {sorted(extra)}"
                    )
                rules.append(ServiceRule(**item))
            kwargs["service_rules"] = tuple(rules)
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise AuthError("misconfigured", f"oidc settings: {exc}") from None


# --------------------------------------------------------------------------------------
# Token parsing helpers

_MAX_TOKEN_LENGTH = 16 * 1024
_MAX_HEADER_SEGMENT = 2048
_B64URL = re.compile(r"[A-Za-z0-9_-]*")


def _b64url_decode(segment: str) -> bytes:
    if not _B64URL.fullmatch(segment) or len(segment) % 4 == 1:
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _parse_header(token: object) -> tuple[str, str | None]:
    """The token's ``alg`` and ``kid``, checked for shape only (no trust yet)."""
    if not isinstance(token, str):
        raise AuthError("malformed", "the token must be a string")
    if not token:
        raise AuthError("missing-token", "no token was presented")
    if len(token) > _MAX_TOKEN_LENGTH:
        raise AuthError("malformed", f"the token is longer than {_MAX_TOKEN_LENGTH} characters")
    parts = token.split(".")
    if len(parts) == 5:
        raise AuthError("malformed", "encrypted tokens (JWE) are not accepted; send a signed JWT")
    if len(parts) != 3:
        raise AuthError("malformed", "the token is not a JWT (expected three dot-separated parts)")
    head, payload, signature = parts
    if not head or not payload:
        raise AuthError("malformed", "the token has an empty header or payload")
    if len(head) > _MAX_HEADER_SEGMENT:
        raise AuthError("malformed", "the token header is too long")
    if not _B64URL.fullmatch(payload) or not _B64URL.fullmatch(signature):
        raise AuthError("malformed", "the token is not base64url-encoded")
    try:
        header = json.loads(_b64url_decode(head))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise AuthError("malformed", "the token header is not base64url-encoded JSON") from None
    if not isinstance(header, dict):
        raise AuthError("malformed", "the token header is not a JSON object")
    alg = header.get("alg")
    if not isinstance(alg, str):
        raise AuthError("malformed", "the token header has no 'alg'")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise AuthError("malformed", "the token header 'kid' is not a string")
    if "crit" in header:
        raise AuthError(
            "malformed", "the token header has critical extensions warden does not support"
        )
    if not signature:
        raise AuthError("bad-algorithm", "unsigned tokens are not accepted")
    return alg, kid


# --------------------------------------------------------------------------------------
# Keys


class _AllowListRegistry(JWSRegistry):
    """joserfc's registry restricted to an explicit allow-list, without joserfc's
    per-call ``SecurityWarning`` for the name ``EdDSA`` (RFC 9864 prefers ``Ed25519``; the
    signature scheme itself is sound, and warden only lists it because IdPs still emit it)."""

    max_header_length = 2048  # joserfc's 512 is too small for headers with x5t/x5c/jku

    def get_alg(self, name: str) -> JWSAlgModel:
        if not self.allowed or name not in self.allowed or name not in self.algorithms:
            raise UnsupportedAlgorithmError("algorithm not allowed")
        return self.algorithms[name]


@dataclass(frozen=True)
class _Jwk:
    key: Key
    kty: str
    crv: str | None
    alg: str | None

    def fits(self, alg: str) -> bool:
        kty, curves = _ALG_KEYS[alg]
        if self.kty != kty:
            return False
        if curves is not None and self.crv not in curves:
            return False
        return self.alg is None or self.alg == alg


@dataclass(frozen=True)
class _KeySnapshot:
    by_kid: Mapping[str, tuple[_Jwk, ...]]
    all: tuple[_Jwk, ...]
    fetched_at: float  # time.monotonic()

    def candidates(self, kid: str | None, alg: str) -> tuple[tuple[_Jwk, ...], bool]:
        """Keys that may verify ``alg`` for ``kid``, and whether the kid is known at all."""
        if kid is None:
            return tuple(k for k in self.all if k.fits(alg)), bool(self.all)
        named = self.by_kid.get(kid, ())
        return tuple(k for k in named if k.fits(alg)), bool(named)


def _public_jwk(data: Mapping[str, Any]) -> _Jwk | None:
    """Import one JWKS entry as a public verification key, or None if it is not one."""
    kty = data.get("kty")
    if kty not in ("RSA", "EC", "OKP"):
        return None
    if data.get("use", "sig") != "sig":
        return None
    key_ops = data.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
        return None
    alg = data.get("alg")
    if alg is not None and (not isinstance(alg, str) or alg not in _ALG_KEYS):
        return None
    crv = data.get("crv")
    if kty in _CURVES and crv not in _CURVES[kty]:
        return None
    if kty == "RSA":
        n = data.get("n")
        if not isinstance(n, str):
            return None
        try:
            modulus = _b64url_decode(n).lstrip(b"\0")
        except (ValueError, binascii.Error):
            return None
        if len(modulus) * 8 < 2048:
            return None
    public = {k: v for k, v in data.items() if k not in _PRIVATE_MEMBERS}
    try:
        key = JWKRegistry.import_key(public)
    except (JoseError, ValueError, TypeError, KeyError):
        return None
    return _Jwk(key=key, kty=kty, crv=crv if isinstance(crv, str) else None, alg=alg)


def _snapshot(jwks: object, fetched_at: float) -> _KeySnapshot:
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
        raise AuthError("issuer-unavailable", "the issuer's JWKS is not a JSON object with 'keys'")
    by_kid: dict[str, list[_Jwk]] = {}
    usable: list[_Jwk] = []
    for entry in jwks["keys"][:100]:
        if not isinstance(entry, dict):
            continue
        jwk = _public_jwk(entry)
        if jwk is None:
            continue
        usable.append(jwk)
        kid = entry.get("kid")
        if isinstance(kid, str):
            by_kid.setdefault(kid, []).append(jwk)
    return _KeySnapshot(
        by_kid={k: tuple(v) for k, v in by_kid.items()}, all=tuple(usable), fetched_at=fetched_at
    )


# --------------------------------------------------------------------------------------
# Claims → Identity


def _claim(claims: Mapping[str, Any], name: str) -> Any:
    if name in claims:
        return claims[name]
    if "." in name:
        node: Any = claims
        for part in name.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return None
            node = node[part]
        return node
    return None


def _scalar(value: Any) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return str(value)
    return None


def _as_attribute(value: Any) -> str | None:
    if isinstance(value, list):
        items = [s for s in (_scalar(v) for v in value) if s is not None]
        return ",".join(items)
    return _scalar(value)


_GROUP_SPLIT = re.compile(r"[\s,]+")


def _groups(value: Any) -> frozenset[str]:
    if value is None:
        return frozenset()
    if isinstance(value, str):
        return frozenset(g for g in _GROUP_SPLIT.split(value) if g)
    if isinstance(value, list):
        out: set[str] = set()
        for item in value:
            s = _scalar(item)
            if s is not None and s.strip():
                out.add(s.strip())
        return frozenset(out)
    raise AuthError("malformed", "the groups claim is neither a list nor a string")


def _has_control_chars(text: str) -> bool:
    return any(ord(c) < 0x20 or ord(c) == 0x7F for c in text)


# --------------------------------------------------------------------------------------
# Verifiers


class TokenVerifier(Protocol):
    """What the gateway needs: a token in, an Identity out, AuthError otherwise."""

    def verify(self, token: str) -> Identity: ...


class OIDCVerifier:
    """Verifies bearer JWTs from one OIDC issuer. Thread-safe; one per gateway process.

    The fast path (keys cached and fresh) takes no lock and does no I/O.
    """

    def __init__(self, config: OIDCConfig, *, transport: httpx.BaseTransport | None = None) -> None:
        self.config = config
        self._client = httpx.Client(
            transport=transport,
            timeout=config.http_timeout,
            follow_redirects=False,
            headers={"Accept": "application/json", "User-Agent": "warden-gateway"},
        )
        self._lock = threading.Lock()
        self._keys: _KeySnapshot | None = None
        self._jwks_uri: str | None = config.jwks_uri
        self._discovery: Mapping[str, Any] | None = None
        self._last_attempt = float("-inf")  # monotonic time of the last JWKS fetch attempt
        self._last_failure: AuthError | None = None
        self._registry = _AllowListRegistry(
            algorithms=list(config.algorithms), strict_check_header=False
        )
        self._claims = jwt.JWTClaimsRegistry(
            leeway=config.leeway,
            iss={"essential": True, "value": config.issuer},
            aud={"essential": True, "value": config.audience},
            sub={"essential": True},
            exp={"essential": True},
        )
        self.jwks_fetches = 0  # observability (and tests): successful JWKS downloads

    # -- lifecycle ----------------------------------------------------------------------

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> OIDCVerifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- public -------------------------------------------------------------------------

    def discovery(self) -> Mapping[str, Any]:
        """The issuer's discovery document (fetched once, issuer checked)."""
        with self._lock:
            return self._discover()

    def refresh(self) -> None:
        """Fetch discovery and JWKS now (e.g. at gateway start-up, as a health check)."""
        with self._lock:
            self._fetch_keys()

    def verify(self, token: str) -> Identity:
        """The identity the token proves, or :class:`AuthError`. Never anything else."""
        try:
            return self._verify(token)
        except AuthError:
            raise
        except Exception:  # fail closed: whatever breaks, the token is not accepted
            log.exception("unexpected error while verifying a token")
            raise AuthError("malformed", "the token could not be verified") from None

    # -- verification -------------------------------------------------------------------

    def _verify(self, token: str) -> Identity:
        alg, kid = _parse_header(token)
        if alg not in self.config.algorithms:
            raise AuthError(
                "bad-algorithm",
                f"the token's algorithm is not accepted (allowed: {', '.join(self.config.algorithms)})",
            )
        keys = self._current_keys()
        candidates, known = keys.candidates(kid, alg)
        if not known and kid is not None:
            keys = self._refetch_for(kid)
            candidates, known = keys.candidates(kid, alg)
        if not known:
            if kid is None:
                raise AuthError(
                    "unknown-key", "the token has no 'kid' and the issuer publishes no keys"
                )
            raise AuthError("unknown-key", f"no key with kid {_shown(kid)} in the issuer's JWKS")
        if not candidates:
            which = "no published key" if kid is None else f"the key {_shown(kid)}"
            raise AuthError("bad-algorithm", f"{which} can verify {alg} signatures")

        claims: dict[str, Any] | None = None
        for jwk in candidates:
            try:
                claims = jwt.decode(
                    token, jwk.key, algorithms=[alg], registry=self._registry
                ).claims
                break
            except BadSignatureError:
                continue
            except (JoseError, ValueError, TypeError, UnicodeDecodeError, RecursionError):
                raise AuthError("malformed", "the token is not a well-formed signed JWT") from None
        if claims is None:
            raise AuthError("bad-signature", "the token's signature does not verify")
        self._validate_claims(claims)
        return self._identity(claims)

    def _validate_claims(self, claims: dict[str, Any]) -> None:
        cfg = self.config
        try:
            self._claims.validate(claims)
        except ExpiredTokenError:
            raise AuthError("expired", "the token has expired") from None
        except MissingClaimError as exc:
            raise AuthError(
                "missing-claim", f"the token lacks required claim(s): {exc.claim}"
            ) from None
        except InvalidClaimError as exc:
            name = exc.claim
            if name == "iss":
                raise AuthError(
                    "wrong-issuer",
                    f"the token was not issued by the configured issuer {cfg.issuer!r}",
                ) from None
            if name == "aud":
                raise AuthError(
                    "wrong-audience", f"the token is not meant for audience {cfg.audience!r}"
                ) from None
            if name in ("nbf", "iat") and _is_number(claims.get(name)):
                what = (
                    "is not valid yet (nbf)" if name == "nbf" else "was issued in the future (iat)"
                )
                raise AuthError("not-yet-valid", f"the token {what}") from None
            if name == "sub" and claims.get("sub") == "":
                raise AuthError("missing-claim", "the token has an empty 'sub'") from None
            raise AuthError("malformed", f"the token's {_shown(name)} claim is invalid") from None
        except JoseError:
            raise AuthError("malformed", "the token's claims are invalid") from None

    def _identity(self, claims: Mapping[str, Any]) -> Identity:
        cfg = self.config
        subject = claims["sub"]  # a non-empty str: checked by the claims registry
        if len(subject) > 1024 or _has_control_chars(subject):
            raise AuthError("malformed", "the token's 'sub' is too long or has control characters")
        attributes: dict[str, str] = {}
        for name in cfg.attributes_claims:
            value = _as_attribute(_claim(claims, name))
            if value is not None:
                attributes[name] = value
        service = any(rule.matches(claims) for rule in cfg.service_rules)
        kind = "service" if service else "human"
        client_id: str | None = None
        if service:
            for name in cfg.client_id_claims:
                value = claims.get(name)
                if isinstance(value, str) and value:
                    client_id = value
                    break
            attributes["client_id"] = client_id or subject
        attributes["auth_method"] = "oidc"
        display = ""
        for name in ("name", "preferred_username"):
            value = claims.get(name)
            if isinstance(value, str) and value.strip():
                display = value.strip()
                break
        return Identity(
            subject=subject,
            groups=_groups(_claim(claims, cfg.groups_claim)),
            attributes=attributes,
            kind=kind,
            display_name=display or (client_id or subject),
        )

    # -- keys -----------------------------------------------------------------------------

    def _current_keys(self) -> _KeySnapshot:
        snap = self._keys
        if snap is not None and time.monotonic() - snap.fetched_at < self.config.jwks_cache_ttl:
            return snap
        with self._lock:
            snap = self._keys
            now = time.monotonic()
            if snap is not None and now - snap.fetched_at < self.config.jwks_cache_ttl:
                return snap
            throttled = now - self._last_attempt < self.config.jwks_refetch_interval
            if snap is None:
                if throttled and self._last_failure is not None:
                    raise self._failure_again()
                return self._fetch_keys()
            # Stale: refresh, but an unreachable issuer does not invalidate keys we hold
            # until jwks_max_stale has passed.
            usable = now - snap.fetched_at < self.config.jwks_cache_ttl + self.config.jwks_max_stale
            if throttled and self._last_failure is not None:
                if usable:
                    return snap
                raise self._failure_again()
            try:
                return self._fetch_keys()
            except AuthError as exc:
                if exc.code == "issuer-unavailable" and usable:
                    log.warning("JWKS refresh failed (%s); using cached keys", exc.message)
                    return snap
                raise

    def _failure_again(self) -> AuthError:
        """The last fetch failure, as a fresh exception (within the retry interval)."""
        last = self._last_failure
        assert last is not None
        return AuthError(last.code, last.message)

    def _refetch_for(self, kid: str) -> _KeySnapshot:
        with self._lock:
            snap = self._keys
            if snap is None:
                return self._fetch_keys()
            if kid in snap.by_kid:
                return snap  # another thread already fetched it
            if time.monotonic() - self._last_attempt < self.config.jwks_refetch_interval:
                return snap
            log.info("unknown kid %s: refetching the issuer's JWKS", _shown(kid))
            return self._fetch_keys()

    def _get_json(self, url: str, what: str) -> Any:
        try:
            response = self._client.get(url)
        except (httpx.HTTPError, httpx.InvalidURL, OSError, RuntimeError) as exc:
            # RuntimeError: the client was closed
            raise AuthError(
                "issuer-unavailable", f"cannot fetch the issuer's {what}: {type(exc).__name__}"
            ) from exc
        if response.status_code != 200:
            raise AuthError(
                "issuer-unavailable", f"the issuer's {what} answered HTTP {response.status_code}"
            )
        if len(response.content) > 1_000_000:
            raise AuthError("issuer-unavailable", f"the issuer's {what} is too large")
        try:
            return response.json()
        except ValueError:
            raise AuthError("issuer-unavailable", f"the issuer's {what} is not JSON") from None

    def _discover(self) -> Mapping[str, Any]:
        """Caller holds the lock."""
        if self._discovery is not None:
            return self._discovery
        cfg = self.config
        url = cfg.issuer.rstrip("/") + "/.well-known/openid-configuration"
        doc = self._get_json(url, "discovery document")
        if not isinstance(doc, dict):
            raise AuthError(
                "issuer-unavailable", "the issuer's discovery document is not a JSON object"
            )
        if doc.get("issuer") != cfg.issuer:
            raise AuthError(
                "misconfigured",
                f"the discovery document at {url!r} names another issuer than {cfg.issuer!r}",
            )
        jwks_uri = doc.get("jwks_uri")
        if not isinstance(jwks_uri, str):
            raise AuthError("issuer-unavailable", "the issuer's discovery document has no jwks_uri")
        _check_url(jwks_uri, "the discovered jwks_uri", cfg.allow_http)
        self._discovery = doc
        return doc

    def _fetch_keys(self) -> _KeySnapshot:
        """Caller holds the lock. Records the attempt for rate limiting."""
        self._last_attempt = time.monotonic()
        try:
            if self._jwks_uri is None:
                self._jwks_uri = str(self._discover()["jwks_uri"])
            jwks = self._get_json(self._jwks_uri, "JWKS")
            snap = _snapshot(jwks, time.monotonic())
        except AuthError as exc:
            self._last_failure = exc
            if self.config.jwks_uri is None:  # rediscover next time: the jwks_uri may have moved
                self._discovery = None
                self._jwks_uri = None
            raise
        self._last_failure = None
        self._keys = snap
        self.jwks_fetches += 1
        return snap


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class LocalAuth:
    """Local mode: everyone who can reach the gateway is the OS user running it.

    Honest about being advisory (``auth_method=local``). With ``shared_secret``, a request
    must present it as its bearer token (use this when the gateway listens on TCP).
    """

    def __init__(
        self,
        *,
        user: str | None = None,
        shared_secret: str | None = None,
        groups: Iterable[str] = (),
        attributes: Mapping[str, str] | None = None,
    ) -> None:
        if user is None:
            try:
                user = getpass.getuser()
            except (OSError, KeyError) as exc:
                raise AuthError("misconfigured", "cannot determine the local OS user") from exc
        if shared_secret is not None and not shared_secret:
            raise AuthError("misconfigured", "the local shared secret must not be empty")
        self._secret = shared_secret.encode() if shared_secret is not None else None
        attrs = dict(attributes or {})
        attrs["auth_method"] = "local"
        self._identity = Identity(
            subject=user,
            groups=frozenset(groups),
            attributes=attrs,
            kind="human",
            display_name=_full_name(user) or user,
        )

    @property
    def identity(self) -> Identity:
        return self._identity

    def verify(self, token: str | None = None) -> Identity:
        if self._secret is not None:
            if not token:
                raise AuthError("missing-token", "the local gateway requires its shared secret")
            if not isinstance(token, str) or not hmac.compare_digest(token.encode(), self._secret):
                raise AuthError(
                    "invalid-credentials", "the token is not the local gateway's secret"
                )
        return self._identity


def _full_name(user: str) -> str:
    try:
        import pwd

        gecos = pwd.getpwnam(user).pw_gecos
    except (ImportError, KeyError, OSError):
        return ""
    return gecos.split(",")[0].strip()


# --------------------------------------------------------------------------------------
# Header parsing and client-credentials


_BEARER = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


def bearer_token(authorization_header: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header (RFC 6750 section 2.1)."""
    if authorization_header is None:
        raise AuthError(
            "missing-token", "no Authorization header; send 'Authorization: Bearer <token>'"
        )
    if not isinstance(authorization_header, str):
        raise AuthError("malformed", "the Authorization header is not text")
    value = authorization_header.strip(" \t")
    if not value:
        raise AuthError("missing-token", "the Authorization header is empty")
    if len(value) > _MAX_TOKEN_LENGTH + 16:
        raise AuthError("malformed", "the Authorization header is too long")
    scheme, _, rest = value.partition(" ")
    if scheme.lower() != "bearer":
        # Never echo the scheme: a client that forgot "Bearer " sends the token there.
        raise AuthError("malformed", "the Authorization header must use the Bearer scheme")
    token = rest.strip(" \t")
    if not token:
        raise AuthError(
            "missing-token", "the Authorization header has the Bearer scheme but no token"
        )
    if not _BEARER.fullmatch(token):
        raise AuthError("malformed", "the bearer token contains characters a token cannot have")
    return token


_authlib_lock = threading.Lock()
_authlib: ModuleType | None = None


def _authlib_httpx() -> ModuleType:
    """authlib's httpx integration, imported on first use (the gateway never needs it).

    authlib 1.9 warns that plain ``httpx`` is deprecated in favour of ``httpx2`` on import;
    warden uses httpx deliberately, so that one warning is silenced.
    """
    global _authlib
    with _authlib_lock:
        if _authlib is None:
            import authlib.deprecate  # type: ignore[import-untyped]  # noqa: F401  (installs its filter)

            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*httpx2.*", category=DeprecationWarning)
                from authlib.integrations import httpx_client  # type: ignore[import-untyped]
            _authlib = httpx_client
        return _authlib


def _token_endpoint(url: str, client: Any) -> str:
    """``url`` itself, unless it is an issuer whose discovery names a token endpoint."""
    try:
        response = client.request(
            "GET", url.rstrip("/") + "/.well-known/openid-configuration", withhold_token=True
        )
        doc = response.json() if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return url
    if (
        isinstance(doc, dict)
        and isinstance(doc.get("token_endpoint"), str)
        and str(doc.get("issuer", "")).rstrip("/") == url.rstrip("/")
    ):
        return str(doc["token_endpoint"])
    return url


def fetch_client_credentials_token(
    token_endpoint_or_issuer: str,
    client_id: str,
    client_secret: str,
    *,
    scope: str | Sequence[str] | None = None,
    audience: str | None = None,
    transport: httpx.BaseTransport | None = None,
    auth_method: Literal["client_secret_basic", "client_secret_post"] = "client_secret_basic",
    timeout: float = 10.0,
    allow_http: bool = False,
) -> str:
    """An access token for a service account (OAuth 2.0 client-credentials grant).

    ``token_endpoint_or_issuer`` may be the token endpoint itself or the issuer URL, in
    which case the endpoint comes from the discovery document. The secret only travels
    over https (or plain http to a loopback address, or with ``allow_http=True``).
    """
    if not client_id or not client_secret:
        raise AuthError("misconfigured", "client_id and client_secret are required")
    _check_url(token_endpoint_or_issuer, "the token endpoint or issuer", allow_http)
    scope_text = " ".join(scope) if scope is not None and not isinstance(scope, str) else scope
    module = _authlib_httpx()
    extra: dict[str, str] = {}
    if audience is not None:
        extra["audience"] = audience
    try:
        with module.OAuth2Client(
            client_id=client_id,
            client_secret=client_secret,
            token_endpoint_auth_method=auth_method,
            scope=scope_text,
            transport=transport,
            timeout=timeout,
            follow_redirects=False,
        ) as client:
            endpoint = _token_endpoint(token_endpoint_or_issuer, client)
            _check_url(endpoint, "the token endpoint", allow_http)
            token = client.fetch_token(endpoint, grant_type="client_credentials", **extra)
    except AuthError:
        raise
    except module.OAuthError as exc:
        error = _header_safe(str(getattr(exc, "error", "") or "error"))
        description = str(getattr(exc, "description", "") or "").replace(client_secret, "***")
        description = _header_safe(description)
        raise AuthError(
            "token-request-failed",
            f"the token endpoint refused client {client_id!r}: {error}"
            + (f" ({description})" if description else ""),
        ) from None
    except httpx.HTTPStatusError as exc:
        raise AuthError(
            "token-request-failed",
            f"the token endpoint answered HTTP {exc.response.status_code} for client {client_id!r}",
        ) from None
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise AuthError(
            "issuer-unavailable", f"cannot reach the token endpoint: {type(exc).__name__}"
        ) from None
    except UnicodeError:
        raise AuthError(
            "misconfigured", "the client id and secret must be latin-1 text for HTTP Basic"
        ) from None
    except ValueError:
        raise AuthError(
            "token-request-failed", "the token endpoint did not answer with a token"
        ) from None
    access = token.get("access_token") if isinstance(token, Mapping) else None
    if not isinstance(access, str) or not access:
        raise AuthError("token-request-failed", "the token endpoint's answer has no access_token")
    token_type = token.get("token_type", "Bearer")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise AuthError("token-request-failed", "the token endpoint issued a non-Bearer token")
    return access
