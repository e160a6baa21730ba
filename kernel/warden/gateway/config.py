"""The gateway's configuration file (YAML). Every key is documented in docs/gateway.md.

    gateway_id: gw-1
    mode: shared                       # shared | local
    listen: {host: 127.0.0.1, port: 8787}   # or {unix_socket: /run/warden/gw.sock}
    policy: policy.yaml
    secret_file: secret.key            # HMAC mask key and checkpoint signing key derive from it
    state_dir: state                   # audit and approvals files in local mode
    auth: {mode: oidc, issuer: https://…, audience: warden}
    audit: {store: "duckdb:///…" | store_env: WARDEN_AUDIT_DSN, checkpoint_every: 1000}
    approvals: {ttl_seconds: 3600, uses: 1, webhook: https://…}
    limits: {statement_timeout_ms: 60000, max_rows: 1000000, max_bytes: 1073741824}
    capture: fingerprint               # none | fingerprint | sample:N | full
    workers: 1                         # > 1: that many processes, one chain each (PostgreSQL store)
"""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from warden.errors import WardenError
from warden.policy.model import Connection

SETTINGS: dict[str, tuple[str, ...]] = {
    "top": (
        "gateway_id", "mode", "listen", "policy", "secret_file", "state_dir", "auth", "audit",
        "approvals", "limits", "capture", "workers",
    ),
    "listen": ("host", "port", "unix_socket"),
    "auth": (
        "mode", "issuer", "audience", "groups_claim", "attribute_claims", "token_file",
        "jwks_cache_seconds", "leeway_seconds", "local_groups", "local_attributes",
        "failure_window_seconds", "hub_api_url", "hub_service_name", "hub_token_env", "hub_cache_seconds",
    ),
    "audit": ("store", "store_env", "checkpoint_every", "checkpoint_seconds", "checkpoint_file", "journal"),
    "approvals": ("store", "store_env", "ttl_seconds", "uses", "webhook", "max_wait_seconds"),
    "limits": ("statement_timeout_ms", "max_rows", "max_bytes", "events_per_minute", "event_bytes_per_minute"),
}  # fmt: skip


class ConfigError(WardenError):
    """The gateway configuration is malformed or incomplete."""


@dataclass(frozen=True)
class AuthSettings:
    mode: str = "oidc"  # oidc | local | jupyterhub (Hub tokens; plus OIDC JWTs when issuer is set)
    issuer: str = ""
    audience: str = ""
    groups_claim: str = "groups"
    attribute_claims: tuple[str, ...] = ()
    token_file: str = ""  # local mode: the bearer token kernels must present
    jwks_cache_seconds: int = 300
    leeway_seconds: int = 30
    failure_window_seconds: float = 60.0  # refused requests: one audit record per source per window
    hub_api_url: str = ""  # jupyterhub mode: the Hub API (default: $JUPYTERHUB_API_URL)
    hub_service_name: str = "warden"  # the scope access:services!service=<this> is required
    hub_token_env: str = "JUPYTERHUB_API_TOKEN"  # the gateway's own Hub token (reads token expiry)
    hub_cache_seconds: float = 30.0  # never past the token's own expiry


@dataclass(frozen=True)
class GatewayConfig:
    path: Path
    gateway_id: str
    mode: str
    host: str
    port: int
    unix_socket: str
    policy_path: Path
    secret_file: Path
    state_dir: Path
    auth: AuthSettings
    audit_store: str
    checkpoint_every: int
    checkpoint_seconds: float
    checkpoint_file: str
    approvals_store: str
    approval_ttl_seconds: int
    approval_uses: int
    approval_webhook: str
    approval_max_wait_seconds: int
    statement_timeout_ms: int
    max_rows: int
    max_bytes: int
    capture: str
    raw: dict[str, Any] = field(default_factory=dict, repr=False)
    # Kernel events (/v1/events) each identity may send per minute, by count and size.
    events_per_minute: int = 600
    event_bytes_per_minute: int = 2 << 20
    # Gateway processes sharing the listening socket (warden.gateway.workers); each is a
    # replica with its own chain, so more than one needs the PostgreSQL store.
    workers: int = 1
    worker_index: int = 0  # set by the supervisor in worker K's process (0: not a worker)
    audit_journal: bool = True  # DuckDB store: intents made durable in an fsynced journal

    def secret(self) -> bytes:
        """The gateway secret (32 random bytes), created with mode 0600 if missing."""
        path = self.secret_file
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(secrets.token_bytes(32))
        data = path.read_bytes()
        if len(data) < 32:
            raise ConfigError(f"secret_file {path} holds fewer than 32 bytes")
        return data


def connection_dsn(conn: Connection) -> str:
    """The DSN of a PostgreSQL connection, from the environment or a file. Never printed.

    Here (not in the CLI) so the gateway reads credentials without importing the top layer."""
    if conn.dsn_env:
        value = os.environ.get(conn.dsn_env)
        if not value:
            raise WardenError(f"connection {conn.name!r}: environment variable {conn.dsn_env} is not set")
        return value
    if conn.dsn_file:
        try:
            return Path(conn.dsn_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise WardenError(f"connection {conn.name!r}: cannot read dsn_file: {exc.strerror}") from None
    raise WardenError(f"connection {conn.name!r} has no credentials configured")


def _resolve(base: Path, value: str) -> Path:
    p = Path(os.path.expandvars(os.path.expanduser(value)))
    return p if p.is_absolute() else (base / p)


def _read_mapping(p: Path) -> dict[str, Any]:
    """The gateway config file's YAML mapping, or a ConfigError naming the file."""
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read gateway config {p}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the configuration must be a mapping")
    return data


def load_config(path: str | Path, *, overrides: dict[str, Any] | None = None) -> GatewayConfig:
    p = Path(path)
    data = _read_mapping(p)
    data.update(overrides or {})
    return config_from_mapping(data, base=p.resolve().parent, path=p)


def config_from_mapping(data: dict[str, Any], *, base: Path, path: Path | None = None) -> GatewayConfig:
    _check_keys(data, "top", "")
    listen = _section(data, "listen")
    auth = _section(data, "auth")
    audit = _section(data, "audit")
    approvals = _section(data, "approvals")
    limits = _section(data, "limits")
    mode = str(data.get("mode", "shared"))
    if mode not in ("shared", "local"):
        raise ConfigError("mode must be 'shared' or 'local'")
    if "policy" not in data:
        raise ConfigError("'policy' (the policy file) is required")
    state_dir = _state_dir(data, base)
    auth_mode = str(auth.get("mode", "local" if mode == "local" else "oidc"))
    if auth_mode not in ("oidc", "local", "jupyterhub"):
        raise ConfigError("auth.mode must be oidc, local or jupyterhub")
    if auth_mode == "local" and mode != "local":
        raise ConfigError("auth.mode 'local' (the OS user) is only allowed with mode: local")
    if auth_mode == "oidc" and not (auth.get("issuer") and auth.get("audience")):
        raise ConfigError("auth.mode oidc needs auth.issuer and auth.audience")
    hub_api_url = str(auth.get("hub_api_url") or os.environ.get("JUPYTERHUB_API_URL", ""))
    if auth_mode == "jupyterhub":
        if mode != "shared":
            raise ConfigError("auth.mode 'jupyterhub' needs mode: shared")
        if not hub_api_url:
            raise ConfigError("auth.mode jupyterhub needs auth.hub_api_url (or $JUPYTERHUB_API_URL)")
        if bool(auth.get("issuer")) != bool(auth.get("audience")):
            raise ConfigError("auth.mode jupyterhub: OIDC service accounts need both auth.issuer and auth.audience")
    audit_store = _store(audit, default=f"duckdb://{state_dir / 'audit.duckdb'}", what="audit")
    approvals_store = _store(approvals, default=_sibling_store(audit_store, state_dir), what="approvals")
    capture = str(data.get("capture", "fingerprint"))
    workers = _workers(data.get("workers", 1), mode, audit_store, approvals_store)
    if not (capture in ("none", "fingerprint", "full") or capture.startswith("sample:")):
        raise ConfigError("capture must be none, fingerprint, sample:N or full")
    return GatewayConfig(
        path=path or base / "gateway.yaml",
        gateway_id=str(data.get("gateway_id") or socket.gethostname()),
        mode=mode,
        host=str(listen.get("host", "127.0.0.1")),
        port=int(listen.get("port", 8787)),
        unix_socket=str(listen.get("unix_socket", "")),
        policy_path=_resolve(base, str(data["policy"])),
        secret_file=_secret_path(data, base),
        state_dir=state_dir,
        auth=AuthSettings(
            mode=auth_mode,
            issuer=str(auth.get("issuer", "")),
            audience=str(auth.get("audience", "")),
            groups_claim=str(auth.get("groups_claim", "groups")),
            attribute_claims=tuple(auth.get("attribute_claims", ()) or ()),
            token_file=str(_resolve(base, str(auth["token_file"]))) if auth.get("token_file") else "",
            jwks_cache_seconds=int(auth.get("jwks_cache_seconds", 300)),
            leeway_seconds=int(auth.get("leeway_seconds", 30)),
            failure_window_seconds=_positive(auth.get("failure_window_seconds", 60.0), "auth.failure_window_seconds"),
            hub_api_url=hub_api_url,
            hub_service_name=str(auth.get("hub_service_name") or os.environ.get("JUPYTERHUB_SERVICE_NAME") or "warden"),
            hub_token_env=str(auth.get("hub_token_env", "JUPYTERHUB_API_TOKEN")),
            hub_cache_seconds=float(auth.get("hub_cache_seconds", 30.0)),
        ),
        audit_store=audit_store,
        checkpoint_every=int(audit.get("checkpoint_every", 1000)),
        checkpoint_seconds=float(audit.get("checkpoint_seconds", 60)),
        checkpoint_file=_checkpoint_file(audit, base, state_dir, mode),
        audit_journal=_flag(audit.get("journal", True), "audit.journal"),
        approvals_store=approvals_store,
        approval_ttl_seconds=int(approvals.get("ttl_seconds", 3600)),
        approval_uses=int(approvals.get("uses", 1)),
        approval_webhook=str(approvals.get("webhook", "")),
        approval_max_wait_seconds=int(approvals.get("max_wait_seconds", 300)),
        statement_timeout_ms=int(limits.get("statement_timeout_ms", 300_000)),
        max_rows=int(limits.get("max_rows", 1_000_000)),
        max_bytes=int(limits.get("max_bytes", 1 << 30)),
        events_per_minute=int(limits.get("events_per_minute", 600)),
        event_bytes_per_minute=int(limits.get("event_bytes_per_minute", 2 << 20)),
        capture=capture,
        workers=workers,
        raw=data,
    )


def worker_socket(config: GatewayConfig, index: int) -> Path:
    """Worker ``index``'s private unix socket (state_dir is 0700): how the other workers
    reach it, e.g. to cancel a query it runs."""
    return config.state_dir / "workers" / f"w{index}.sock"


def _workers(value: Any, mode: str, audit_store: str, approvals_store: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"workers must be a whole number >= 1 (got {value!r})")
    if value == 1:
        return 1
    if mode != "shared":
        raise ConfigError("workers > 1 needs mode: shared (the local gateway is one process)")
    for what, store in (("audit", audit_store), ("approvals", approvals_store)):
        if store.startswith("duckdb://"):
            raise ConfigError(
                f"workers: {value} needs a PostgreSQL {what} store ({what}.store or {what}.store_env): every worker "
                "process writes its own audit chain and shares the state, and a DuckDB file has one writing process. "
                "Use workers: 1 with DuckDB."
            )
    return value


def _state_dir(data: dict[str, Any], base: Path) -> Path:
    return _resolve(base, str(data.get("state_dir", "state")))


def _secret_path(data: dict[str, Any], base: Path) -> Path:
    return _resolve(base, str(data.get("secret_file", _state_dir(data, base) / "secret.key")))


def secret_file_of(path: str | Path) -> Path:
    """Where the gateway configured in ``path`` keeps its secret, resolved exactly as
    the gateway resolves it, without needing the rest of its settings (a store DSN in
    an environment variable, say): what ``warden audit public-key --config`` reads."""
    p = Path(path)
    data = _read_mapping(p)
    return _secret_path(data, p.resolve().parent)


def _flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false (got {value!r})")
    return value


def _positive(value: Any, name: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number of seconds") from None
    if out <= 0:
        raise ConfigError(f"{name} must be positive")
    return out


def _checkpoint_file(audit: dict[str, Any], base: Path, state_dir: Path, mode: str) -> str:
    if audit.get("checkpoint_file"):
        return str(_resolve(base, str(audit["checkpoint_file"])))
    # Local mode keeps a copy of every checkpoint outside the DuckDB file by default:
    # store-only verify cannot see a truncation or a store rebuilt without checkpoints.
    return str(state_dir / "checkpoints.jsonl") if mode == "local" else ""


def _section(data: dict[str, Any], name: str) -> dict[str, Any]:
    value = data.get(name) or {}
    if not isinstance(value, dict):
        raise ConfigError(f"'{name}' must be a mapping")
    _check_keys(value, name, name + ".")
    return value


def _check_keys(data: dict[str, Any], section: str, prefix: str) -> None:
    for key in data:
        if key not in SETTINGS[section]:
            raise ConfigError(f"unknown setting '{prefix}{key}'; expected one of: {', '.join(SETTINGS[section])}")


def _store(section: dict[str, Any], *, default: str, what: str) -> str:
    if section.get("store_env"):
        value = os.environ.get(str(section["store_env"]))
        if not value:
            raise ConfigError(f"{what}.store_env: environment variable {section['store_env']} is not set")
        return value
    return str(section.get("store") or default)


def _sibling_store(audit_store: str, state_dir: Path) -> str:
    # PostgreSQL audit: approvals share that database (replicas share both).
    if audit_store.startswith("duckdb://"):
        return f"duckdb://{state_dir / 'approvals.duckdb'}"
    return audit_store
