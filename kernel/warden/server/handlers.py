"""REST handlers under ``/warden/api``: status, approvals (list and decide) and the
audit timeline of a kernel's session. Each handler calls the gateway in a worker thread
(the gateway client is synchronous httpx) with the server's own identity."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web

from warden import __version__
from warden.gateway.client import GatewayError, Unauthorized
from warden.kernel.client import KernelGatewayClient
from warden.kernel.connect import connect_from_env
from warden.kernel.tokens import IdentityError

T = TypeVar("T")

#: what the timeline needs of an audit record (objects and lineage stay at the gateway)
TIMELINE_FIELDS = (
    "event_id", "event_time", "type", "session_id", "kernel_id", "notebook_path", "cell_id", "execution_count",
    "connection", "statement_kinds", "sql", "action", "rule_ids", "reasons", "masks", "approval_id", "approver",
    "status", "error", "rows", "duration_ms", "correlation_id",
)  # fmt: skip


class GatewayLink:
    """One gateway client for this Jupyter server, built on first use.

    ``connect_from_env`` is the kernel's own discovery (local gateway and its token file,
    or WARDEN_GATEWAY_URL with WARDEN_TOKEN / WARDEN_TOKEN_FILE / client credentials /
    the Hub token). ``scrub=False``: the server's environment is what its kernels inherit,
    so it must keep their token.
    """

    def __init__(self, connector: Callable[[], KernelGatewayClient] | None = None) -> None:
        self._connector = connector or (lambda: connect_from_env(dict(os.environ), scrub=False))
        self._client: KernelGatewayClient | None = None
        self._lock = threading.Lock()

    def client(self) -> KernelGatewayClient:
        with self._lock:
            if self._client is None:
                self._client = self._connector()
            return self._client

    def where(self) -> str:
        c = self._client
        if c is None:
            return ""
        return c.endpoint.base_url if c.endpoint.socket is None else f"unix://{c.endpoint.socket}"

    async def call(self, fn: Callable[[KernelGatewayClient], T]) -> T:
        def run() -> T:
            client = self.client()
            return client.retrying(lambda: fn(client))  # type: ignore[no-any-return]

        return await asyncio.to_thread(run)


class WardenHandler(APIHandler):
    link: GatewayLink

    def initialize(self, link: GatewayLink) -> None:
        self.link = link

    def reply(self, body: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("cache-control", "no-store")
        self.finish(json.dumps(body))

    def gateway_error(self, exc: Exception) -> None:
        """A gateway error as JSON the panel can show (status 502 for an unreachable one)."""
        code = exc.code if isinstance(exc, GatewayError) else "identity"
        self.reply({"error": {"code": code, "message": str(exc)}}, 502)


class StatusHandler(WardenHandler):
    @web.authenticated
    async def get(self) -> None:
        body: dict[str, Any] = {"extension_version": __version__, "gateway_url": "", "health": None, "whoami": None, "error": None}
        try:
            body["health"] = await self.link.call(lambda c: c.health())
            body["whoami"] = await self.link.call(lambda c: c.whoami())
        except (GatewayError, IdentityError, OSError) as exc:
            body["error"] = {"code": getattr(exc, "code", "unavailable"), "message": str(exc)}
        body["gateway_url"] = self.link.where()
        self.reply(body)


class ApprovalsHandler(WardenHandler):
    @web.authenticated
    async def get(self) -> None:
        try:
            who = await self.link.call(lambda c: c.whoami())
            items = await self.link.call(lambda c: c.approvals())
        except (GatewayError, IdentityError, OSError) as exc:
            self.gateway_error(exc)
            return
        self.reply({"subject": who.get("subject"), "approver": bool(who.get("approver")), "kind": who.get("kind"), "approvals": items})


class DecideHandler(WardenHandler):
    @web.authenticated
    async def post(self, approval_id: str, verb: str) -> None:
        data = self.get_json_body() or {}
        reason = data.get("reason") if isinstance(data, dict) else None
        if not isinstance(reason, str) or not reason.strip():
            self.reply({"error": {"code": "bad-request", "message": "a reason is required"}}, 400)
            return
        try:
            # The gateway applies the binding rules (no self-approval, humans only) and
            # records approval.granted / approval.rejected with this server's subject.
            path = f"/v1/approvals/{approval_id}/{verb}"
            status, body = await self.link.call(lambda c: passthrough(c, "POST", path, json={"reason": reason.strip()}))
        except (GatewayError, IdentityError, OSError) as exc:
            self.gateway_error(exc)
            return
        self.reply(body, status)  # the gateway's own answer: 403 for self-approval, 409 when decided


class TimelineHandler(WardenHandler):
    @web.authenticated
    async def get(self) -> None:
        kernel_id = self.get_argument("kernel_id", "")
        session_id = self.get_argument("session_id", "")
        try:
            if not session_id and kernel_id:
                session_id = await self.link.call(lambda c: find_session(c, kernel_id))
            events: list[dict[str, Any]] = []
            if session_id:
                events = await self.link.call(lambda c: c.session_events(session_id, limit=500))
        except (GatewayError, IdentityError, OSError) as exc:
            self.gateway_error(exc)
            return
        rows = [timeline_row(e) for e in events]
        rows.sort(key=lambda e: str(e.get("event_time") or ""))
        self.reply({"kernel_id": kernel_id, "session_id": session_id, "events": rows})


def timeline_row(event: dict[str, Any]) -> dict[str, Any]:
    row = {k: event.get(k) for k in TIMELINE_FIELDS}
    masks = row.get("masks")
    if isinstance(masks, str):  # a JSON field comes back from the store as JSON text
        try:
            row["masks"] = json.loads(masks)
        except ValueError:
            row["masks"] = None
    return row


def find_session(client: KernelGatewayClient, kernel_id: str) -> str:
    """The newest warden session a kernel started (a restart starts a new one)."""
    for e in _session_starts(client):  # newest first
        if e.get("kernel_id") == kernel_id and e.get("session_id"):
            return str(e["session_id"])
    return ""


def _session_starts(client: KernelGatewayClient) -> list[dict[str, Any]]:
    status, body = passthrough(client, "GET", "/v1/me/events", params={"type": "session.start", "limit": "200"})
    if status >= 300:
        raise GatewayError(str(body.get("error", {}).get("message", f"HTTP {status}")), code="events", body=body)
    events: list[dict[str, Any]] = body.get("events", [])
    return events


def passthrough(client: KernelGatewayClient, method: str, path: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    """The gateway's status and JSON body as they are (401 raises, for the token refresh)."""
    resp = client.http.request(method, path, **kwargs)
    if resp.status_code == 401:
        raise Unauthorized("the gateway refused this server's token", code="unauthorized")
    try:
        body = resp.json()
    except ValueError:
        body = {}
    return resp.status_code, body if isinstance(body, dict) else {"body": body}


def setup_handlers(web_app: Any, link: GatewayLink | None = None) -> GatewayLink:
    link = link or GatewayLink()
    base = url_path_join(web_app.settings["base_url"], "warden", "api")
    args = {"link": link}
    web_app.add_handlers(
        ".*$",
        [
            (url_path_join(base, "status"), StatusHandler, args),
            (url_path_join(base, "approvals"), ApprovalsHandler, args),
            (url_path_join(base, "approvals", r"([A-Za-z0-9_.:-]+)", r"(approve|deny)"), DecideHandler, args),
            (url_path_join(base, "timeline"), TimelineHandler, args),
        ],
    )
    return link
