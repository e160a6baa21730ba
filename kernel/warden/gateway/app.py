"""The gateway's HTTP API (Starlette). Versioned under /v1; OpenAPI at /v1/openapi.json.

Errors are JSON ``{"status": "error", "error": {"code", "message"}}`` with a 4xx/5xx
status; a malformed request is a 400 that says what is wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from warden import __version__
from warden.errors import WardenError
from warden.gateway.approvals import ApprovalError
from warden.gateway.authfail import AuthFailures
from warden.gateway.frames import CONTENT_TYPE
from warden.gateway.service import AuditUnavailableError, CellRequest, ContextRefused, Gateway
from warden.policy.engine import Identity, matching_roles

Authenticate = Callable[[str | None], Identity]
MAX_BODY = 4 << 20  # 4 MiB of SQL and parameters is plenty; more is an error
MAX_DEPTH = 32  # JSON nesting: requests are flat objects; deeper is an error, not a RecursionError
_MAX_INT = (1 << 63) - 1  # the audit store's BIGINT


class HTTPError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        self.status = status
        self.code = code
        self.message = message


def error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"status": "error", "error": {"code": code, "message": message}}, status_code=status)


def create_app(gateway: Gateway, authenticate: Authenticate, *, audit_reader: Any = None, audit_verifier: Any = None, audit_sql: Any = None) -> Starlette:
    """The ASGI app. ``authenticate`` maps the Authorization header to an Identity or
    raises a WardenError with a ``code``; ``audit_reader`` serves /v1/audit;
    ``audit_sql`` (gateway/audit_sql.py) serves the built-in ``audit`` connection."""
    from warden.gateway.audit_sql import AUDIT_CONNECTION, may_audit
    from warden.gateway.quota import EventQuota

    quota = EventQuota(gateway.config.events_per_minute, gateway.config.event_bytes_per_minute)
    # Refused tokens are counted per source and interval, not written one by one.
    failures = AuthFailures(
        lambda ip: gateway.base_event(Identity(subject="(unauthenticated)"), {}, ip),
        gateway.audit_later,
        interval=gateway.config.auth.failure_window_seconds,
    )

    cached_identity = getattr(authenticate, "cached", None)

    async def identity_of(request: Request) -> Identity:
        header = request.headers.get("authorization")
        if cached_identity is not None:
            with contextlib.suppress(WardenError):
                found: Identity | None = cached_identity(header)
                if found is not None:
                    return found
        try:
            return await in_thread(authenticate, header)
        except WardenError as exc:
            code = getattr(exc, "code", "unauthorized")
            failures.note(request.client.host if request.client else "", str(code), str(exc))
            raise HTTPError(401, f"auth/{code}", str(exc)) from None

    async def body_of(request: Request) -> dict[str, Any]:
        return parse_body(await read_body(request))

    def handler(fn: Callable[[Request], Any]) -> Callable[[Request], Any]:
        async def wrapped(request: Request) -> Response:
            try:
                result: Response = await fn(request)
                return result
            except HTTPError as exc:
                return error_response(exc.status, exc.code, exc.message)
            except ApprovalError as exc:
                status = {"not-found": 404, "not-approver": 403, "self-approval": 403}.get(exc.code, 409)
                return error_response(status, f"approval/{exc.code}", str(exc))
            except AuditUnavailableError as exc:
                return error_response(503, "audit-unavailable", str(exc))
            except ContextRefused as exc:
                return error_response(403, exc.code, str(exc))

        return wrapped

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "gateway_id": gateway.config.gateway_id, "version": __version__, "mode": gateway.config.mode})

    async def whoami(request: Request) -> Response:
        who = await identity_of(request)
        roles = [r.name for r in matching_roles(gateway.policy, who)]
        body = {
            "subject": who.subject, "display_name": who.display_name, "kind": who.kind,
            "groups": sorted(who.groups), "roles": roles, "mode": gateway.config.mode,
            "gateway_id": gateway.config.gateway_id, "approver": gateway.can_approve(who),
            "connections": sorted(gateway.policy.connections), "auditor": may_audit(gateway, who),
        }  # fmt: skip
        if body["auditor"] and audit_sql is not None:
            body["connections"] = sorted({*gateway.policy.connections, AUDIT_CONNECTION})
        if gateway.config.mode == "local":
            body["note"] = ("local mode is advisory: the gateway runs as your own OS user, so it "
                            "records and masks but cannot stop you from reading the files yourself; "
                            "you are also the auditor of your own log (%%sql audit)")  # fmt: skip
        return JSONResponse(body)

    async def run_cell(request: Request) -> Response:
        who = await identity_of(request)
        data = await body_of(request)
        req = _cell_request(data)
        ip = request.client.host if request.client else ""
        def start() -> tuple[Any, bytes]:
            # Run the cell and take its first frame (the decision, with the query id a
            # client needs to cancel) in the same thread hop.
            if req.connection == AUDIT_CONNECTION and audit_sql is not None:
                outcome = audit_sql.run(who, req, client_ip=ip)  # the auditor's SQL over the live log
            else:
                outcome = gateway.run_cell(who, req, client_ip=ip)
            first = next(outcome.frames, b"") if outcome.frames is not None else b""
            return outcome, first

        outcome, first = await in_thread(start)
        if outcome.frames is None:
            return JSONResponse(outcome.body, status_code=outcome.http_status)
        qid = str((outcome.body or {}).get("query_id", ""))
        return CellResponse(first, outcome.frames, on_gone=(lambda: gateway.cancel_here(qid, who.subject, admin=True)) if qid else None)

    async def cancel(request: Request) -> Response:
        who = await identity_of(request)
        ip = request.client.host if request.client else ""
        query_id = request.path_params["query_id"]
        outcome = await run_in_threadpool(lambda: gateway.cancel(who, query_id, client_ip=ip))
        if outcome == "not-owner":
            raise HTTPError(403, "not-owner", "only the user who started a query (or an admin under the policy) may cancel it")
        return JSONResponse({"cancelled": outcome == "cancelled"}, status_code=200 if outcome == "cancelled" else 404)

    async def internal_cancel(request: Request) -> Response:
        # Another worker of this gateway passing on a cancel (workers.py); it checked the
        # token and audits the attempt itself. Only on the private socket of a worker.
        import hmac

        if not gateway.config.worker_index or not hmac.compare_digest(request.headers.get("x-warden-internal", ""), gateway.internal_token):
            raise HTTPError(404, "not-found", "no such endpoint")
        data = await body_of(request)
        query_id, subject, admin = str(data.get("query_id", "")), str(data.get("subject", "")), data.get("admin") is True
        outcome, owner = await run_in_threadpool(lambda: gateway.cancel_here(query_id, subject, admin=admin))
        return JSONResponse({"outcome": outcome, "owner": owner})

    async def approvals_list(request: Request) -> Response:
        who = await identity_of(request)
        status = request.query_params.get("status")
        mine = not gateway.can_approve(who)
        items = await run_in_threadpool(gateway.approvals.list, status=status, requester=who.subject if mine else None)
        return JSONResponse({"approvals": [a.to_json() for a in items]})

    async def approval_get(request: Request) -> Response:
        who = await identity_of(request)
        a = await run_in_threadpool(gateway.approvals.get, request.path_params["approval_id"])
        if a is None or (a.requester != who.subject and not gateway.can_approve(who)):
            raise HTTPError(404, "approval/not-found", f"no approval request {request.path_params['approval_id']}")
        return JSONResponse(a.to_json())

    async def approval_decide(request: Request) -> Response:
        who = await identity_of(request)
        data = await body_of(request)
        reason = data.get("reason")
        if not isinstance(reason, str) or not reason.strip():
            raise HTTPError(400, "bad-request", "'reason' (a non-empty string) is required")
        verb = request.path_params["verb"]
        if verb not in ("approve", "deny"):
            raise HTTPError(404, "not-found", f"no such action {verb!r}; use approve or deny")
        approve = verb == "approve"
        ip = request.client.host if request.client else ""
        a = await run_in_threadpool(
            lambda: gateway.decide_approval(who, request.path_params["approval_id"], approve=approve, reason=reason, client_ip=ip)
        )
        return JSONResponse(a.to_json())

    async def audit_query(request: Request) -> Response:
        who = await identity_of(request)
        if not may_audit(gateway, who):
            raise HTTPError(403, "not-auditor", "reading the audit log needs the policy's 'auditors' (groups, users or roles)")
        if audit_reader is None:
            raise HTTPError(501, "not-configured", "this gateway has no audit reader")
        params = dict(request.query_params)
        ev = gateway.base_event(who, {}, request.client.host if request.client else "")
        ev.update(type="audit.read", status="ok", sql=json.dumps(params, sort_keys=True))
        await run_in_threadpool(gateway.audit, [ev])
        return await read_events(params)

    async def read_events(params: dict[str, str]) -> Response:
        try:
            rows = await run_in_threadpool(audit_reader, params)
        except (ValueError, WardenError) as exc:
            raise HTTPError(400, "bad-request", str(exc)) from None
        return JSONResponse({"events": rows}, headers={"cache-control": "no-store"})

    async def kernel_event(request: Request) -> Response:
        who = await identity_of(request)
        data = await body_of(request)
        ip = request.client.host if request.client else ""
        count = len(data["events"]) if isinstance(data.get("events"), list) else 1
        size = len(json.dumps(data, default=str))
        if not quota.admit(who.subject, count, size):
            if quota.refused(who.subject):
                ev = gateway.base_event(who, {}, ip)
                ev.update(type="events.throttled", status="failure",
                          error=f"more than {quota.per_minute} events or {quota.bytes_per_minute} bytes a minute")  # fmt: skip
                await run_in_threadpool(gateway.audit_later, [ev])
            raise HTTPError(
                429, "quota",
                f"kernel events are limited to {quota.per_minute} a minute and {quota.bytes_per_minute} bytes a minute "
                "per identity; the kernel keeps its cells running and sends again later",
            )  # fmt: skip
        try:
            if "events" in data:
                items = data["events"]
                if not isinstance(items, list):
                    raise ValueError("'events' must be a list of events")
                for i, item in enumerate(items):
                    if isinstance(item, dict):
                        check_context(item.get("context"), f"events[{i}].context")
                ids = await run_in_threadpool(lambda: gateway.record_kernel_events(who, items, client_ip=ip))
                return JSONResponse({"event_ids": ids}, status_code=201)
            check_context(data.get("context"))
            event_id = await run_in_threadpool(lambda: gateway.record_kernel_event(who, data, client_ip=ip))
        except ValueError as exc:
            raise HTTPError(400, "bad-request", str(exc)) from None
        return JSONResponse({"event_id": event_id}, status_code=201)

    async def my_events(request: Request) -> Response:
        """The caller's own recent events (any user): what %warden audit shows."""
        who = await identity_of(request)
        if audit_reader is None:
            raise HTTPError(501, "not-configured", "this gateway has no audit reader")
        params = {k: v for k, v in request.query_params.items() if k in ("session_id", "since", "until", "type", "limit")}
        params["subject"] = who.subject
        return await read_events(params)

    async def completions(request: Request) -> Response:
        who = await identity_of(request)
        connection = request.query_params.get("connection", "")
        if connection == AUDIT_CONNECTION and audit_sql is not None and may_audit(gateway, who):
            return JSONResponse({"connection": connection, "tables": audit_sql.completions()})
        try:
            tables = await run_in_threadpool(gateway.completions, who, connection)
        except ValueError as exc:
            raise HTTPError(404, "unknown-connection", str(exc)) from None
        except WardenError as exc:
            raise HTTPError(503, "catalog-unavailable", str(exc)) from None
        return JSONResponse({"connection": connection, "tables": tables})

    async def audit_verify(request: Request) -> Response:
        who = await identity_of(request)
        if not may_audit(gateway, who):
            raise HTTPError(403, "not-auditor", "verifying the audit log needs the policy's 'auditors' (groups, users or roles)")
        if audit_verifier is None:
            raise HTTPError(501, "not-configured", "this gateway cannot verify its audit store")
        report = await run_in_threadpool(audit_verifier)
        ev = gateway.base_event(who, {}, request.client.host if request.client else "")
        ev.update(type="audit.verify", status="ok" if report.get("ok") else "failed",
                  error=None if report.get("ok") else f"{len(report.get('issues', []))} issue(s) found")  # fmt: skip
        await run_in_threadpool(gateway.audit, [ev])
        return JSONResponse(report, headers={"cache-control": "no-store"})

    async def openapi(request: Request) -> Response:
        return JSONResponse(OPENAPI)

    routes = [
        Route("/v1/health", handler(health), methods=["GET"]),
        Route("/v1/whoami", handler(whoami), methods=["GET"]),
        Route("/v1/cells", handler(run_cell), methods=["POST"]),
        Route("/v1/internal/cancel", handler(internal_cancel), methods=["POST"]),
        Route("/v1/queries/{query_id}/cancel", handler(cancel), methods=["POST"]),
        Route("/v1/approvals", handler(approvals_list), methods=["GET"]),
        Route("/v1/approvals/{approval_id}", handler(approval_get), methods=["GET"]),
        Route("/v1/approvals/{approval_id}/{verb:str}", handler(approval_decide), methods=["POST"]),
        Route("/v1/audit", handler(audit_query), methods=["GET"]),
        Route("/v1/audit/verify", handler(audit_verify), methods=["POST"]),
        Route("/v1/events", handler(kernel_event), methods=["POST"]),
        Route("/v1/me/events", handler(my_events), methods=["GET"]),
        Route("/v1/completions", handler(completions), methods=["GET"]),
        Route("/v1/openapi.json", openapi, methods=["GET"]),
    ]

    async def not_found(request: Request, exc: Exception) -> Response:
        return error_response(404, "not-found", f"no such endpoint: {request.method} {request.url.path}")

    async def method_not_allowed(request: Request, exc: Exception) -> Response:
        return error_response(405, "method-not-allowed", f"{request.method} is not allowed on {request.url.path}")

    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: method_not_allowed})
    app.state.auth_failures = failures  # closed (remaining counts recorded) with the gateway
    return app


async def read_body(request: Request, limit: int = MAX_BODY) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed ``limit``: from
    Content-Length before reading, else while reading (never buffered past the limit)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise HTTPError(413, "too-large", f"request body over {limit} bytes")
        except ValueError:
            raise HTTPError(400, "bad-request", "Content-Length is not a number") from None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPError(413, "too-large", f"request body over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_body(raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw or b"{}")
    except RecursionError:
        raise HTTPError(400, "bad-json", f"the request body nests JSON deeper than {MAX_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError):
        raise HTTPError(400, "bad-json", "the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise HTTPError(400, "bad-request", "the request body must be a JSON object")
    if _too_deep(data, MAX_DEPTH):
        raise HTTPError(400, "bad-json", f"the request body nests JSON deeper than {MAX_DEPTH} levels")
    return data


def _too_deep(value: Any, limit: int) -> bool:
    """Iterative (a recursive walk would hit the same RecursionError)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return False


#: Context fields that go into audit records, with the type each must have.
_CONTEXT_STR = ("session_id", "kernel_id", "notebook_path", "cell_id", "cell_run_id")


def check_context(context: Any, where: str = "'context'") -> dict[str, Any]:
    """The request context, or a 400 naming the bad field (before anything is audited:
    a value the audit record cannot hold must not surface as "audit unavailable")."""
    if context is None:
        return {}
    if not isinstance(context, dict):
        raise HTTPError(400, "bad-request", f"{where} must be an object")
    for key in _CONTEXT_STR:
        value = context.get(key)
        if value is not None and (not isinstance(value, str) or len(value) > 4096):
            raise HTTPError(400, "bad-request", f"{where}.{key} must be a string (at most 4096 characters)")
    count = context.get("execution_count")
    if count is not None and (not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= _MAX_INT):
        raise HTTPError(400, "bad-request", f"{where}.execution_count must be a non-negative integer or null")
    return context


_CHUNK = 256 << 10
_DIRECT = 64 << 10  # a payload at least this big is sent as is, never joined (copied)
_AHEAD = 8  # chunks the producer may be ahead of the socket


def _iterate(first: bytes, frames: Iterator[Any]) -> Generator[Any, None, None]:
    """The first frame at once, then small frames gathered into chunks of up to 256 KiB
    and large payloads (Arrow IPC messages, memoryviews) passed through uncopied."""
    try:
        yield first
        pending: list[Any] = []
        size = 0
        for piece in frames:
            n = piece.nbytes if isinstance(piece, memoryview) else len(piece)
            if n >= _DIRECT:
                if pending:
                    yield b"".join(pending)  # its header and whatever small came before
                    pending, size = [], 0
                yield piece  # as is: joining would copy it
                continue
            pending.append(piece)
            size += n
            if size >= _CHUNK:
                yield b"".join(pending)
                pending, size = [], 0
        if pending:
            yield b"".join(pending)
    finally:
        close = getattr(frames, "close", None)
        if close is not None:
            # In this thread: the statement sees GeneratorExit, is cancelled and audited
            # (its last frame, the trailer, has nowhere to go: RuntimeError).
            with contextlib.suppress(RuntimeError):
                close()


_END = object()
T = TypeVar("T")


def _take_two(chunks: Iterator[Any]) -> list[Any]:
    out = []
    for _ in range(2):
        item = next(chunks, _END)
        out.append(item)
        if item is _END:
            break
    return out


_REQUEST_THREADS = ThreadPoolExecutor(max_workers=64, thread_name_prefix="warden-request")


async def in_thread(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in the request threads: a plain executor hop, lighter than anyio's
    (no capacity limiter, task group or context copy) on the per-query path."""
    return await asyncio.get_running_loop().run_in_executor(_REQUEST_THREADS, fn, *args)


class CellResponse(Response):
    """The framed result of a cell, sent as it is produced.

    The first frame (the decision, with the query id a client needs to cancel) goes at
    once. A small result then costs one thread hop: its remaining frames come back
    together and go in one write, with no disconnect listener. A larger one is produced
    by a thread of its own while the event loop sends: fetching, masking and framing
    the next chunk overlap sending this one, up to ``_AHEAD`` chunks ahead (then the
    producer waits, so a slow client holds back the database, not the gateway's
    memory). When the client goes away (``http.disconnect``) the producer closes the
    frames in its own thread, so the statement is cancelled and its completion
    recorded as before."""

    media_type = CONTENT_TYPE

    def __init__(self, first: bytes, frames: Iterator[Any], on_gone: Callable[[], Any] | None = None) -> None:
        # No Response.__init__: it would set a Content-Length for an empty body.
        self.status_code, self.background = 200, None
        self.init_headers(None)
        self._chunks = _iterate(first, frames)
        self._on_gone = on_gone  # cancels the running statement (the client went away)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        chunks = self._chunks
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        gone = threading.Event()
        ending = threading.Event()  # the last body message is being sent
        done = False  # the frames generator ran to its end (or was closed) here

        async def listen() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            if ending.is_set():
                return  # uvicorn says "disconnect" once the response is complete, too
            gone.set()
            queue.put_nowait(_GONE)
            if self._on_gone is not None:
                loop.run_in_executor(_REQUEST_THREADS, self._on_gone)

        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        await send({"type": "http.response.body", "body": next(chunks), "more_body": True})
        listener = asyncio.create_task(listen())
        try:
            head = await in_thread(_take_two, chunks)
            if head[-1] is _END:
                done = True
                ending.set()
                await send({"type": "http.response.body", "body": b"".join(head[:-1]), "more_body": False})
                return
            for item in head:
                await send({"type": "http.response.body", "body": item, "more_body": True})
            slots = threading.Semaphore(_AHEAD)

            def put(item: Any) -> None:
                loop.call_soon_threadsafe(queue.put_nowait, item)

            def produce() -> None:
                try:
                    for chunk in chunks:
                        while not slots.acquire(timeout=0.25):
                            if gone.is_set():
                                return
                        if gone.is_set():
                            return
                        put(chunk)
                    put(_END)
                except BaseException as exc:  # handed to the response, which ends the stream
                    put(exc)
                finally:
                    chunks.close()

            threading.Thread(target=produce, name="warden-stream", daemon=True).start()
            done = True  # the producer owns the frames now, and closes them
            while True:
                item = await queue.get()
                if item is _END:
                    break
                if item is _GONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                slots.release()
                await send({"type": "http.response.body", "body": item, "more_body": True})
            ending.set()
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            gone.set()
            listener.cancel()
            if not done:
                # Not produced to the end here (the client went away, or a send failed):
                # close the frames in a thread, so the statement ends and is audited.
                with contextlib.suppress(ValueError):
                    threading.Thread(target=chunks.close, daemon=True).start()


_GONE = object()


def _cell_request(data: dict[str, Any]) -> CellRequest:
    connection, sql = data.get("connection"), data.get("sql")
    if not isinstance(connection, str) or not connection:
        raise HTTPError(400, "bad-request", "'connection' (the connection name) is required")
    if not isinstance(sql, str) or not sql.strip():
        raise HTTPError(400, "bad-request", "'sql' (the cell's SQL text) is required")
    params = data.get("params", [])
    if not isinstance(params, list) or not all(isinstance(p, (str, int, float, bool)) or p is None for p in params):
        raise HTTPError(400, "bad-request", "'params' must be a list of JSON scalars (bound as $1, $2, ...)")
    context = check_context(data.get("context", {}))
    approval_id = data.get("approval_id")
    if approval_id is not None and not isinstance(approval_id, str):
        raise HTTPError(400, "bad-request", "'approval_id' must be a string")
    max_rows = data.get("max_rows")
    if max_rows is not None and (not isinstance(max_rows, int) or isinstance(max_rows, bool) or max_rows < 0):
        raise HTTPError(400, "bad-request", "'max_rows' must be a non-negative integer")
    return CellRequest(connection, sql, tuple(params), {str(k): v for k, v in context.items()}, approval_id, max_rows)


def _schema(props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": required or []}


_ERROR = {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}

OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "warden gateway", "version": __version__},
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Error": _schema({"status": {"type": "string"}, "error": _schema({"code": {"type": "string"}, "message": {"type": "string"}})}),
            "CellRequest": _schema(
                {
                    "connection": {"type": "string", "minLength": 1},
                    "sql": {"type": "string", "minLength": 1},
                    "params": {"type": "array", "items": {"nullable": True}},
                    "context": {"type": "object"},
                    "approval_id": {"type": "string"},
                    "max_rows": {"type": "integer", "minimum": 0},
                },
                ["connection", "sql"],
            ),
            "Decision": _schema({"reason": {"type": "string", "minLength": 1}}, ["reason"]),
        },
    },
    "security": [{"bearer": []}],
    "paths": {
        "/v1/health": {"get": {"security": [], "responses": {"200": {"description": "alive"}}}},
        "/v1/whoami": {"get": {"responses": {"200": {"description": "identity, roles, mode"}, "401": _ERROR}}},
        "/v1/cells": {
            "post": {
                "requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CellRequest"}}}},
                "responses": {
                    "200": {"description": "framed results (C/S/A/E/X/T frames, Arrow IPC)", "content": {CONTENT_TYPE: {}}},
                    "202": {"description": "held for approval"},
                    "400": _ERROR, "401": _ERROR, "403": {"description": "denied, with rule ids and reasons"},
                    "503": _ERROR,
                },
            }
        },
        "/v1/queries/{query_id}/cancel": {
            "post": {"parameters": [{"name": "query_id", "in": "path", "required": True, "schema": {"type": "string"}}],
                     "responses": {"200": {"description": "cancelled"}, "403": _ERROR, "404": _ERROR}}
        },
        "/v1/approvals": {"get": {"parameters": [{"name": "status", "in": "query", "schema": {"type": "string"}}],
                                  "responses": {"200": {"description": "approval requests"}, "401": _ERROR}}},
        "/v1/approvals/{approval_id}": {
            "get": {"parameters": [{"name": "approval_id", "in": "path", "required": True, "schema": {"type": "string"}}],
                    "responses": {"200": {"description": "one request"}, "404": _ERROR}}
        },
        "/v1/approvals/{approval_id}/{verb}": {
            "post": {
                "parameters": [
                    {"name": "approval_id", "in": "path", "required": True, "schema": {"type": "string"}},
                    {"name": "verb", "in": "path", "required": True, "schema": {"type": "string", "enum": ["approve", "deny"]}},
                ],
                "requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Decision"}}}},
                "responses": {"200": {"description": "decided"}, "400": _ERROR, "403": _ERROR, "404": _ERROR, "409": _ERROR},
            }
        },
        "/v1/audit": {"get": {"parameters": [{"name": n, "in": "query", "schema": {"type": "string"}} for n in ("since", "until", "type", "subject", "connection", "session_id", "limit")],
                              "responses": {"200": {"description": "events"}, "403": _ERROR}}},
        "/v1/events": {
            "post": {
                "requestBody": {"required": True, "content": {"application/json": {"schema": _schema({
                    "type": {"type": "string", "enum": ["cell.execute", "session.start", "session.end"]},
                    "context": {"type": "object"}, "status": {"type": "string", "enum": ["ok", "error", "aborted"]},
                    "source_sha256": {"type": "string"}, "source_redacted": {"type": "string"},
                    "duration_ms": {"type": "number"}, "error": {"type": "string"},
                }, ["type"])}}},
                "responses": {"201": {"description": "recorded"}, "400": _ERROR, "401": _ERROR, "503": _ERROR},
            }
        },
        "/v1/audit/verify": {"post": {"responses": {"200": {"description": "the verify report (ok, issues)"}, "403": _ERROR}}},
        "/v1/me/events": {"get": {"parameters": [{"name": n, "in": "query", "schema": {"type": "string"}} for n in ("session_id", "since", "until", "type", "limit")],
                                  "responses": {"200": {"description": "the caller's own events"}, "401": _ERROR}}},
        "/v1/completions": {"get": {"parameters": [{"name": "connection", "in": "query", "required": True, "schema": {"type": "string"}}],
                                    "responses": {"200": {"description": "tables and columns the user may name"}, "404": _ERROR}}},
        "/v1/openapi.json": {"get": {"security": [], "responses": {"200": {"description": "this document"}}}},
    },
}  # fmt: skip
