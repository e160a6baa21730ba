"""A real, minimal OIDC issuer for tests, served over HTTP on 127.0.0.1.

It serves

* ``GET  /.well-known/openid-configuration`` (discovery),
* ``GET  /jwks`` (the current public signing keys),
* ``POST /token`` (OAuth 2.0 client-credentials grant for registered clients, with
  ``client_secret_basic`` or ``client_secret_post``), issuing signed JWT access tokens,

and helpers to mint arbitrary (also deliberately broken) tokens, rotate keys, and make the
endpoints misbehave. Start/stop are bounded; the port comes from binding port 0 and the
server is stopped through its own handle.

    with OIDCIssuer() as issuer:
        issuer.register_client("etl-bot", "s3cret", groups=["etl"])
        token = issuer.issue(sub="alice", groups=["analysts"])
"""

from __future__ import annotations

import base64
import hmac
import json
import secrets
import threading
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote_plus

from joserfc import jws, jwt
from joserfc.errors import SecurityWarning
from joserfc.jwk import ECKey, JWKRegistry, Key, OKPKey, RSAKey


class _Omit:
    def __repr__(self) -> str:
        return "OMIT"


#: pass as a claim or header value to leave it out of the token: ``issue(exp=OMIT)``
OMIT: Any = _Omit()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_json(obj: Any) -> str:
    return b64url(json.dumps(obj, separators=(",", ":")).encode())


@dataclass(frozen=True)
class SigningKey:
    """A private key with its kid and JWS algorithm."""

    key: Key
    kid: str
    alg: str

    @classmethod
    def generate(cls, alg: str = "RS256", kid: str | None = None) -> SigningKey:
        kid = kid or f"{alg.lower()}-{uuid.uuid4().hex[:12]}"
        params: dict[str, Any] = {"kid": kid, "use": "sig", "alg": alg}
        key: Key
        if alg.startswith(("RS", "PS")):
            key = RSAKey.generate_key(2048, parameters=params)  # type: ignore[arg-type]
        elif alg == "ES256":
            key = ECKey.generate_key("P-256", parameters=params)  # type: ignore[arg-type]
        elif alg == "ES384":
            key = ECKey.generate_key("P-384", parameters=params)  # type: ignore[arg-type]
        elif alg in ("EdDSA", "Ed25519"):
            key = OKPKey.generate_key("Ed25519", parameters=params)  # type: ignore[arg-type]
        else:
            raise ValueError(f"unsupported test key algorithm {alg!r}")
        return cls(key=key, kid=kid, alg=alg)

    def public_jwk(self) -> dict[str, Any]:
        return dict(self.key.as_dict(private=False))

    def public_pem(self) -> bytes:
        assert isinstance(self.key, (RSAKey, ECKey, OKPKey))
        return self.key.as_pem(private=False)

    def sign(self, header: Mapping[str, Any], claims: Mapping[str, Any]) -> str:
        key = self.key
        if header.get("alg") != self.alg:  # deliberately misuse the key: drop its alg pin
            unpinned = {k: v for k, v in key.as_dict(private=True).items() if k != "alg"}
            key = JWKRegistry.import_key(unpinned)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SecurityWarning)  # "EdDSA is deprecated via RFC 9864"
            return jwt.encode(dict(header), dict(claims), key, algorithms=[header["alg"]])


@dataclass
class RegisteredClient:
    client_id: str
    client_secret: str
    scopes: frozenset[str] = frozenset()
    groups: tuple[str, ...] = ()
    audiences: frozenset[str] = frozenset()  # extra audiences it may request
    claims: dict[str, Any] = field(default_factory=dict)


class OIDCIssuer:
    """A running issuer (after :meth:`start`). Thread-safe against its own server thread."""

    def __init__(
        self,
        *,
        audience: str = "warden",
        alg: str = "RS256",
        path_prefix: str = "",
        token_ttl: int = 300,
        host: str = "127.0.0.1",
    ) -> None:
        self.audience = audience
        self.token_ttl = token_ttl
        self.path_prefix = path_prefix.rstrip("/")
        self._host = host
        self._lock = threading.Lock()
        self._keys: list[SigningKey] = [SigningKey.generate(alg)]
        self._current = self._keys[0]
        self._clients: dict[str, RegisteredClient] = {}
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.issuer = ""
        #: requests served, by path (without the prefix): {"/jwks": 2, ...}
        self.requests: Counter[str] = Counter()
        #: (client_id, auth method) of every successful token request
        self.token_requests: list[tuple[str, str]] = []
        #: make an endpoint answer this HTTP status instead (e.g. {"/jwks": 500})
        self.fail: dict[str, int] = {}
        #: merged into the discovery document (e.g. {"issuer": "https://evil"})
        self.discovery_overrides: dict[str, Any] = {}

    # -- lifecycle ----------------------------------------------------------------------

    def start(self, timeout: float = 5.0) -> OIDCIssuer:
        if self._server is not None:
            raise RuntimeError("issuer already started")
        server = ThreadingHTTPServer((self._host, 0), _handler_for(self))
        server.daemon_threads = True
        self._server = server
        port = server.server_address[1]
        self.issuer = f"http://{self._host}:{port}{self.path_prefix}"
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"oidc-issuer-{port}"
        )
        thread.daemon = True
        thread.start()
        self._thread = thread
        # The socket listens from the constructor on; wait until the loop answers, bounded.
        deadline = time.monotonic() + timeout
        import http.client

        while True:
            try:
                conn = http.client.HTTPConnection(self._host, port, timeout=1.0)
                conn.request("GET", f"{self.path_prefix}/.well-known/openid-configuration")
                conn.getresponse().read()
                conn.close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("the test OIDC issuer did not start") from None
                time.sleep(0.01)
        self.requests.clear()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout)

    def __enter__(self) -> OIDCIssuer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "issuer not started"
        return int(self._server.server_address[1])

    @property
    def token_endpoint(self) -> str:
        return f"{self.issuer}/token"

    @property
    def jwks_uri(self) -> str:
        return f"{self.issuer}/jwks"

    # -- keys ---------------------------------------------------------------------------

    @property
    def signing_key(self) -> SigningKey:
        with self._lock:
            return self._current

    @property
    def keys(self) -> tuple[SigningKey, ...]:
        with self._lock:
            return tuple(self._keys)

    def jwks(self) -> dict[str, Any]:
        with self._lock:
            return {"keys": [k.public_jwk() for k in self._keys]}

    def add_key(
        self, alg: str = "RS256", *, current: bool = False, kid: str | None = None
    ) -> SigningKey:
        """Publish a new key (and sign with it from now on if ``current``)."""
        key = SigningKey.generate(alg, kid)
        with self._lock:
            self._keys.append(key)
            if current:
                self._current = key
        return key

    def rotate_keys(self, alg: str = "RS256", *, remove_old: bool = False) -> SigningKey:
        """A new current signing key; the old ones stay published unless ``remove_old``."""
        key = SigningKey.generate(alg)
        with self._lock:
            if remove_old:
                self._keys.clear()
            self._keys.append(key)
            self._current = key
        return key

    def remove_key(self, kid: str) -> None:
        with self._lock:
            self._keys = [k for k in self._keys if k.kid != kid]

    @staticmethod
    def stranger_key(alg: str = "RS256", kid: str | None = None) -> SigningKey:
        """A key this issuer never publishes."""
        return SigningKey.generate(alg, kid or f"stranger-{uuid.uuid4().hex[:8]}")

    # -- clients --------------------------------------------------------------------------

    def register_client(
        self,
        client_id: str,
        client_secret: str | None = None,
        *,
        scopes: Iterable[str] = (),
        groups: Iterable[str] = (),
        audiences: Iterable[str] = (),
        claims: Mapping[str, Any] | None = None,
    ) -> RegisteredClient:
        client = RegisteredClient(
            client_id=client_id,
            client_secret=client_secret or secrets.token_urlsafe(24),
            scopes=frozenset(scopes),
            groups=tuple(groups),
            audiences=frozenset(audiences),
            claims=dict(claims or {}),
        )
        with self._lock:
            self._clients[client_id] = client
        return client

    # -- minting ----------------------------------------------------------------------------

    def claims(self, claims: Mapping[str, Any] | None = None, /, **more: Any) -> dict[str, Any]:
        """Default claims (iss, aud, sub=alice, iat, exp, jti) merged with the given ones;
        ``expires_in`` (seconds) sets exp relative to now; OMIT removes a claim."""
        now = int(time.time())
        merged = {**(claims or {}), **more}
        expires_in = merged.pop("expires_in", self.token_ttl)
        out: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": "alice",
            "iat": now,
            "exp": now + int(expires_in),
            "jti": uuid.uuid4().hex,
        }
        out.update(merged)
        return {k: v for k, v in out.items() if v is not OMIT}

    def issue(
        self,
        claims: Mapping[str, Any] | None = None,
        /,
        *,
        key: SigningKey | None = None,
        kid: Any = None,
        alg: str | None = None,
        header: Mapping[str, Any] | None = None,
        **more: Any,
    ) -> str:
        """A signed JWT. ``key`` defaults to the current signing key (use
        :meth:`stranger_key` for an unpublished one); ``kid`` overrides the header's kid
        (OMIT drops it); ``alg`` overrides the algorithm (must suit the key)."""
        key = key or self.signing_key
        head: dict[str, Any] = {"alg": alg or key.alg, "kid": key.kid if kid is None else kid}
        head.update(header or {})
        head = {k: v for k, v in head.items() if v is not OMIT}
        return key.sign(head, self.claims(claims, **more))

    def forge(
        self, header: Mapping[str, Any], claims: Mapping[str, Any], signature: bytes = b""
    ) -> str:
        """A token with exactly this header, claims and raw signature (no signing)."""
        return f"{b64url_json(dict(header))}.{b64url_json(dict(claims))}.{b64url(signature)}"

    def issue_unsigned(
        self, claims: Mapping[str, Any] | None = None, /, *, alg: str = "none", **more: Any
    ) -> str:
        """The ``alg: none`` attack: no signature, the kid of a real key."""
        return self.forge(
            {"alg": alg, "kid": self.signing_key.kid, "typ": "JWT"}, self.claims(claims, **more)
        )

    def issue_hmac_with_public_key(
        self,
        claims: Mapping[str, Any] | None = None,
        /,
        *,
        secret: bytes | None = None,
        alg: str = "HS256",
        **more: Any,
    ) -> str:
        """The key-confusion attack: HMAC over the token with the issuer's *public* key
        (PEM by default) as the secret, under the kid of that key."""
        import hashlib

        key = self.signing_key
        secret = key.public_pem() if secret is None else secret
        digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
        head = b64url_json({"alg": alg, "kid": key.kid, "typ": "JWT"})
        body = b64url_json(self.claims(claims, **more))
        signature = hmac.new(secret, f"{head}.{body}".encode(), digest).digest()
        return f"{head}.{body}.{b64url(signature)}"

    def sign_payload(self, payload: bytes, *, key: SigningKey | None = None) -> str:
        """A correctly signed JWS whose payload is arbitrary bytes (e.g. not JSON)."""
        key = key or self.signing_key
        return jws.serialize_compact(
            {"alg": key.alg, "kid": key.kid}, payload, key.key, algorithms=[key.alg]
        )

    # -- the token endpoint ------------------------------------------------------------------

    def _token_response(
        self, client: RegisteredClient, form: Mapping[str, str]
    ) -> tuple[int, dict[str, Any]]:
        requested = form.get("scope")
        if requested is None:
            scopes = sorted(client.scopes)
        else:
            scopes = sorted(set(requested.split()))
            if not set(scopes) <= client.scopes:
                return 400, {
                    "error": "invalid_scope",
                    "error_description": "scope not allowed for this client",
                }
        audience = form.get("audience") or self.audience
        if audience != self.audience and audience not in client.audiences:
            return 400, {"error": "invalid_target", "error_description": "audience not allowed"}
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": client.client_id,
            "aud": audience,
            "iat": now,
            "nbf": now,
            "exp": now + self.token_ttl,
            "jti": uuid.uuid4().hex,
            "client_id": client.client_id,
            "groups": list(client.groups),
        }
        if scopes:
            claims["scope"] = " ".join(scopes)
        claims.update(client.claims)
        key = self.signing_key
        token = key.sign({"alg": key.alg, "kid": key.kid, "typ": "at+jwt"}, claims)
        body: dict[str, Any] = {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": self.token_ttl,
        }
        if scopes:
            body["scope"] = " ".join(scopes)
        return 200, body

    def _authenticate_client(
        self, authorization: str | None, form: Mapping[str, str]
    ) -> tuple[RegisteredClient | None, str, dict[str, Any] | None]:
        """(client, method, error body); RFC 6749 section 2.3.1."""
        method = ""
        client_id = client_secret = None
        if authorization and authorization[:6].lower() == "basic ":
            method = "client_secret_basic"
            try:
                raw = base64.b64decode(authorization[6:].strip(), validate=True)
            except ValueError:
                return None, method, {"error": "invalid_client"}
            try:
                decoded = raw.decode()
            except UnicodeDecodeError:
                decoded = raw.decode("latin-1")  # what authlib sends for non-ASCII secrets
            client_id, _, client_secret = decoded.partition(":")
            if "client_secret" in form:
                return (
                    None,
                    method,
                    {
                        "error": "invalid_request",
                        "error_description": "more than one client authentication method",
                    },
                )
        elif "client_secret" in form:
            method = "client_secret_post"
            client_id, client_secret = form.get("client_id"), form["client_secret"]
        if not method or client_id is None or client_secret is None:
            return (
                None,
                method,
                {"error": "invalid_client", "error_description": "client authentication required"},
            )
        with self._lock:
            client = self._clients.get(client_id) or self._clients.get(unquote_plus(client_id))
        # RFC 6749 2.3.1 form-encodes id and secret inside Basic; many clients (authlib) do
        # not. Accept both spellings, like most servers do.
        if client is None or not any(
            hmac.compare_digest(client.client_secret.encode(), candidate.encode())
            for candidate in {client_secret, unquote_plus(client_secret)}
        ):
            return (
                None,
                method,
                {"error": "invalid_client", "error_description": "unknown client or bad secret"},
            )
        return client, method, None

    def _discovery(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "issuer": self.issuer,
            "jwks_uri": self.jwks_uri,
            "token_endpoint": self.token_endpoint,
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "response_types_supported": ["token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": sorted({k.alg for k in self.keys}),
        }
        doc.update(self.discovery_overrides)
        return doc


def _handler_for(issuer: OIDCIssuer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "warden-test-oidc/1"
        protocol_version = "HTTP/1.1"
        timeout = 2.0  # idle keep-alive connections end, so handler threads do not linger
        disable_nagle_algorithm = True  # headers and body are separate writes

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            return

        def _path(self) -> str | None:
            path = self.path.split("?", 1)[0]
            if not path.startswith(issuer.path_prefix):
                return None
            return path[len(issuer.path_prefix) :] or "/"

        def _send(self, status: int, body: Any, headers: Mapping[str, str] | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            path = self._path()
            if path is not None:
                issuer.requests[path] += 1
            if path in issuer.fail:
                self._send(issuer.fail[path], {"error": "server_error"})
            elif path == "/.well-known/openid-configuration":
                self._send(200, issuer._discovery())
            elif path == "/jwks":
                self._send(200, issuer.jwks())
            else:
                self._send(404, {"error": "not_found"})

        def do_POST(self) -> None:
            path = self._path()
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            if path is not None:
                issuer.requests[path] += 1
            if path in issuer.fail:
                self._send(issuer.fail[path], {"error": "server_error"})
                return
            if path != "/token":
                self._send(404, {"error": "not_found"})
                return
            if not (self.headers.get("Content-Type") or "").startswith(
                "application/x-www-form-urlencoded"
            ):
                self._send(
                    400, {"error": "invalid_request", "error_description": "form body required"}
                )
                return
            parsed = parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True)
            if any(len(v) > 1 for v in parsed.values()):
                self._send(
                    400, {"error": "invalid_request", "error_description": "repeated parameter"}
                )
                return
            form = {k: v[0] for k, v in parsed.items()}
            client, method, error = issuer._authenticate_client(
                self.headers.get("Authorization"), form
            )
            if error is not None or client is None:
                headers = (
                    {"WWW-Authenticate": 'Basic realm="test"'}
                    if method == "client_secret_basic"
                    else {}
                )
                status = 401 if (error or {}).get("error") == "invalid_client" else 400
                self._send(status, error or {"error": "invalid_client"}, headers)
                return
            if form.get("grant_type") != "client_credentials":
                self._send(400, {"error": "unsupported_grant_type"})
                return
            status, body = issuer._token_response(client, form)
            if status == 200:
                issuer.token_requests.append((client.client_id, method))
            self._send(status, body)

    return Handler
