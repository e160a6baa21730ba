"""Building and serving the gateway: config -> audit store, identity, service, HTTP."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from warden.gateway.config import GatewayConfig, load_config
from warden.gateway.service import Gateway
from warden.policy.engine import Identity

_STATUS = {
    "ok": "success", "success": "success", "approved": "success", "used": "success",
    "denied": "failure", "failed": "failure", "cancelled": "failure", "audit-failed": "failure",
    "failure": "failure", "held": "pending", "pending": "pending",
}  # fmt: skip


def to_draft(event: dict[str, Any]) -> Any:
    """The gateway's event dict as the audit store's EventDraft."""
    from warden.audit.record import DRAFT_FIELDS, EventDraft

    data = {k: v for k, v in event.items() if k in DRAFT_FIELDS and v is not None and v != ""}
    if not data.get("correlation_id") and event.get("query_id"):
        data["correlation_id"] = event["query_id"]
    if "status" in data:
        data["status"] = _STATUS.get(str(data["status"]), "failure")
    if event.get("detectors"):
        masks = list(data.get("masks") or [])
        masks.extend({**d, "source": "detector"} for d in event["detectors"])
        data["masks"] = masks
    for key in ("roles", "groups", "statement_kinds", "objects_modified", "rule_ids", "reasons"):
        if key in data:
            data[key] = tuple(str(v) for v in data[key])
    return EventDraft(**data)


class _LaterAppends:
    """Queues records on the audit store without waiting, and checks their outcome
    in one background thread (a failure is logged; the next waited-for append
    will fail too, and so deny). ``flush()`` waits for all of them."""

    def __init__(self, store: Any) -> None:
        import queue
        import threading

        self._store = store
        self._pending: queue.Queue[Any] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="warden-audit-later", daemon=True)
        self._thread.start()

    def __call__(self, events: list[dict[str, Any]]) -> list[str]:
        drafts = [to_draft(e) for e in events]
        self._pending.put(self._store.append_nowait(drafts))
        return [d.event_id for d in drafts]

    def _run(self) -> None:
        import logging

        log = logging.getLogger("warden.gateway")
        while True:
            result = self._pending.get()
            try:
                result(None)
            except Exception as exc:
                log.error("an audit record could not be committed: %s", exc)
                print(f"warden gateway: an audit record could not be committed: {exc}", file=sys.stderr, flush=True)
            finally:
                self._pending.task_done()

    def flush(self, timeout: float = 30.0) -> None:
        import time

        deadline = time.monotonic() + timeout
        while self._pending.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.005)


class _VerifiedTokens:
    """Tokens verified in the last minute (never past their own ``exp``): a notebook
    sends the same token with every cell, and an RSA verify is the costliest step of
    a small query. Keyed by a hash of the token; bounded."""

    TTL = 60.0
    SIZE = 4096

    def __init__(self) -> None:
        import threading
        from collections import OrderedDict

        self._items: OrderedDict[str, tuple[float, Identity]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _key(token: str) -> str:
        import hashlib

        return hashlib.sha256(token.encode()).hexdigest()

    def get(self, token: str) -> Identity | None:
        import time

        key = self._key(token)
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            if time.time() >= item[0]:
                del self._items[key]
                return None
            return item[1]

    def put(self, token: str, identity: Identity) -> None:
        import base64
        import time

        try:
            payload = token.split(".")[1]
            claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            exp = float(claims["exp"])
        except (IndexError, ValueError, KeyError, TypeError):
            return  # no readable exp: do not cache
        until = min(exp, time.time() + self.TTL)
        with self._lock:
            self._items[self._key(token)] = (until, identity)
            while len(self._items) > self.SIZE:
                self._items.popitem(last=False)


@dataclass
class Built:
    config: GatewayConfig
    gateway: Gateway
    app: Any
    store: Any
    token: str  # local mode: the bearer token kernels present ("" otherwise)

    def close(self) -> None:
        from warden.gateway.webhooks import close_webhooks

        self.gateway.close()
        close_webhooks(self.gateway)  # after the drain: running cells may still notify
        failures = getattr(self.app.state, "auth_failures", None)
        if failures is not None:
            failures.close()  # the counts of open intervals go to the store before it closes
        self.flush()
        with contextlib.suppress(Exception):
            self.store.close()

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every queued (not yet awaited) audit record is committed."""
        later = getattr(self.gateway, "_audit_later", None)
        if isinstance(later, _LaterAppends):
            later.flush(timeout)


def local_token(config: GatewayConfig) -> str:
    """Local mode's shared secret, in a 0600 file next to the state (kernels read it)."""
    path = Path(config.auth.token_file) if config.auth.token_file else config.state_dir / "token"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


def build(config: GatewayConfig, *, store: Any = None, oidc_transport: Any = None) -> Built:
    from warden.audit.stores import open_store
    from warden.gateway.app import create_app
    from warden.gateway.auth import LocalAuth, OIDCConfig, OIDCVerifier, bearer_token
    from warden.gateway.private import private_dir, tighten_tree

    # State (audit, approvals, captures, checkpoints, the local token) is owner-only:
    # 0700 before anything is written, every file 0600 once the stores are open.
    private_dir(config.state_dir)
    if store is None:
        store = open_store(config.audit_store, chain_id=config.gateway_id, **_store_options(config))

    def append(events: list[dict[str, Any]]) -> list[str]:
        done = store.append([to_draft(e) for e in events])
        return [e.event_id for e in done]

    later = _LaterAppends(store)
    gateway = Gateway(config, audit=append, audit_later=later)
    token = ""
    authenticate: Callable[[str | None], Identity]
    if config.auth.mode == "local":
        token = local_token(config)
        local = LocalAuth(
            shared_secret=token,
            groups=tuple(config.raw.get("auth", {}).get("local_groups", ()) or ()),
            attributes={str(k): str(v) for k, v in (config.raw.get("auth", {}).get("local_attributes", {}) or {}).items()},
        )

        def authenticate(header: str | None) -> Identity:
            return local.verify(bearer_token(header))

        authenticate.cached = authenticate  # type: ignore[attr-defined]  # cheap: no thread hop needed

    elif config.auth.mode == "jupyterhub":  # Hub tokens, plus OIDC JWTs for service accounts
        from warden.hub.auth import hub_authenticator

        authenticate = hub_authenticator(config.auth, oidc_transport=oidc_transport)
    else:
        verifier = OIDCVerifier(
            OIDCConfig(
                issuer=config.auth.issuer,
                audience=config.auth.audience,
                groups_claim=config.auth.groups_claim,
                attributes_claims=config.auth.attribute_claims,
                leeway=config.auth.leeway_seconds,
                jwks_cache_ttl=float(config.auth.jwks_cache_seconds),
            ),
            transport=oidc_transport,
        )

        cache = _VerifiedTokens()

        def authenticate(header: str | None) -> Identity:
            token = bearer_token(header)
            found = cache.get(token)
            if found is not None:
                return found
            identity = verifier.verify(token)
            cache.put(token, identity)
            return identity

        def cached(header: str | None) -> Identity | None:
            return cache.get(bearer_token(header))

        # A token verified in the last minute is answered on the event loop (no thread
        # hop); a new one is verified (signature, JWKS) in the threadpool.
        authenticate.cached = cached  # type: ignore[attr-defined]

    def read_audit(params: dict[str, str]) -> list[dict[str, Any]]:
        limit = int(params.get("limit", "100"))
        filters: dict[str, Any] = {
            k: v for k, v in params.items() if k in ("since", "until", "subject", "connection", "session_id", "chain_id", "correlation_id")
        }
        if params.get("type"):
            filters["types"] = params["type"].split(",")
        table = store.query(limit=min(max(limit, 1), 10_000), **filters)
        rows: list[dict[str, Any]] = json.loads(json.dumps(table.to_pylist(), default=_json_default))
        return rows

    def verify_audit() -> dict[str, Any]:
        from warden.audit.verify import verify

        checkpoints = config.checkpoint_file or None
        if checkpoints and not Path(checkpoints).exists():
            checkpoints = None
        report = verify(store, checkpoints=checkpoints, public_key=store.public_key)
        result: dict[str, Any] = json.loads(json.dumps(report.to_dict(), default=_json_default))
        return result

    from warden.gateway.audit_sql import AuditConnection

    app = create_app(gateway, authenticate, audit_reader=read_audit, audit_verifier=verify_audit, audit_sql=AuditConnection(gateway, store))
    if config.auth.mode == "jupyterhub":  # also reachable through the Hub's proxy
        from warden.hub.prefix import StripServicePrefix, service_prefix

        app.add_middleware(StripServicePrefix, prefix=service_prefix(config.auth.hub_service_name, os.environ))
    if config.mode == "local":  # the user's own files: tighten what an earlier version left 0644
        tighten_tree(config.state_dir)
    from warden import __version__
    from warden.gateway.recovery import close_interrupted

    closed = close_interrupted(store, store.chain_id, gateway_id=config.gateway_id, warden_version=__version__)
    if closed:
        print(f"warden gateway {config.gateway_id}: {closed} query intent(s) left open by an earlier stop (killed or crashed) "
              "recorded as query.failed (interrupted)", flush=True)  # fmt: skip
    startup = {"type": "policy.loaded", "gateway_id": config.gateway_id, "mode": config.mode, "status": "ok",
               "subject": "(gateway)", "sql": str(config.policy_path)}  # fmt: skip
    append([startup])
    return Built(config, gateway, app, store, token)


def _json_default(value: Any) -> str:
    if hasattr(value, "isoformat"):
        return str(value.isoformat())
    return str(value)


def _store_options(config: GatewayConfig) -> dict[str, Any]:
    opts: dict[str, Any] = {
        # The store derives the checkpoint key from the secret with derive_signing_key,
        # the same function `warden audit public-key` uses (never stored apart).
        "signing_key": config.secret(),
        "checkpoint_every": config.checkpoint_every,
        "checkpoint_interval": config.checkpoint_seconds,
    }
    if config.checkpoint_file:
        opts["checkpoint_file"] = config.checkpoint_file
    if config.audit_store.startswith("duckdb://"):
        # An intent is durable once its journal frame is fsynced (~0.3 ms, not a ~3 ms
        # DuckDB commit); DuckDB absorbs it in the background (docs/audit.md).
        opts["journal"] = config.audit_journal
    return opts


def _remove_runtime_files(sock: Path) -> None:
    """A stopped gateway leaves neither its socket nor its pid file (local mode writes
    ``gateway.pid`` next to the socket): a stale pid may name another process later."""
    with contextlib.suppress(FileNotFoundError):
        sock.unlink()
    pid_file = sock.with_name("gateway.pid")
    with contextlib.suppress(OSError, ValueError):
        if int(pid_file.read_text().strip()) == os.getpid():
            pid_file.unlink()


def serve(config_path: str | Path, *, overrides: dict[str, Any] | None = None, worker: tuple[int, int] | None = None) -> int:
    """Run the gateway until SIGTERM/SIGINT; then drain running cells and flush the audit.

    With ``workers: N`` (N > 1) this process is the supervisor (warden.gateway.workers);
    ``worker=(K, FD)`` runs worker K of one on the listening socket FD it inherited."""
    import socket

    import uvicorn
    from starlette.applications import Starlette

    # A dedicated process: everything it creates (DuckDB files and their WAL, captures,
    # checkpoint copies) is owner-only, whatever umask it was started with.
    os.umask(0o077)
    config = load_config(config_path, overrides=overrides)
    if worker is None and config.workers > 1:
        from warden.gateway.workers import serve_workers

        return serve_workers(config_path, config)
    # Until uvicorn installs its own handlers (and afterwards, when it re-raises the
    # signal under the handler it found: this one, so a clean stop exits 0, not 143,
    # which service managers read as success), SIGTERM/SIGINT ask the server to stop
    # instead of killing the process or being lost: a supervisor stopping a worker that
    # is still starting gets a clean stop too.
    import signal

    stop_requested: list[int] = []
    started: list[Any] = []

    def stop_soon(signum: int, frame: Any) -> None:
        stop_requested.append(signum)
        for server in started:
            server.should_exit = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop_soon)
    if worker is not None:
        from dataclasses import replace

        from warden.gateway.workers import worker_id

        config = replace(config, gateway_id=worker_id(config.gateway_id, worker[0]), worker_index=worker[0])
    built = build(config)
    # What start-up built (policy, catalogs, drivers, caches) lives as long as the process:
    # keep the cycle collector off it, and let it run less often (a request allocates few
    # cycles; collections under load cost ~10% of the gateway's CPU: profile_gateway.py).
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        built.close()
        if config.unix_socket and worker is None:  # the supervisor owns a workers' socket
            _remove_runtime_files(Path(config.unix_socket))
        print(f"warden gateway {config.gateway_id} stopped: running cells drained, audit store closed", flush=True)

    built.app.router.lifespan_context = lifespan
    kwargs: dict[str, Any] = {"log_level": "warning", "timeout_graceful_shutdown": 30, "access_log": False}
    sockets: list[socket.socket] | None = None
    if worker is not None:
        from warden.gateway.config import worker_socket

        # The shared listening socket, and this worker's own (how the others reach it).
        private = worker_socket(config, worker[0])
        private.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            private.unlink()
        own = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        own.bind(str(private))
        own.listen(64)
        sockets = [socket.socket(fileno=worker[1]), own]
    elif config.unix_socket:
        sock = Path(config.unix_socket)
        sock.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()
        kwargs["uds"] = str(sock)
    else:
        kwargs["host"], kwargs["port"] = config.host, config.port
    server = uvicorn.Server(uvicorn.Config(built.app, **kwargs))
    where = config.unix_socket or f"http://{config.host}:{config.port}"
    print(f"warden gateway {config.gateway_id} ({config.mode}) listening on {where}", flush=True)
    if stop_requested:  # asked to stop while starting: start, then stop at once, cleanly
        server.should_exit = True
    started.append(server)
    # uvicorn handles SIGTERM/SIGINT: stop accepting, finish running responses, then
    # the lifespan above drains the gateway and closes (checkpoints) the audit store.
    server.run(sockets=sockets)
    return 0
