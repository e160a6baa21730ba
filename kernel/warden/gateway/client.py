"""The gateway's HTTP client: what the kernel, the CLI and the server extension use.

The transport is injectable (``httpx.HTTPTransport(uds=...)`` for a unix socket,
``httpx.MockTransport`` or an ASGI transport in tests). Errors form one tree:

    GatewayError
    ├── GatewayUnavailable   the gateway cannot be reached or vanished mid-query
    ├── Unauthorized         the token was refused (401)
    ├── Denied               the policy denied the cell (403): rule ids and reasons
    ├── Held                 the cell waits for an approver (202): the approval request
    └── QueryFailed          the database failed or cancelled the statement
"""

from __future__ import annotations

import functools
import os
import ssl
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import pyarrow as pa

from warden.errors import WardenError
from warden.gateway.frames import ArrowStreamAssembler, frame_views


class GatewayError(WardenError):
    def __init__(self, message: str, *, code: str = "error", body: dict[str, Any] | None = None) -> None:
        self.code = code
        self.body = body or {}
        super().__init__(message)


class GatewayUnavailable(GatewayError):
    pass


class Unauthorized(GatewayError):
    pass


class Denied(GatewayError):
    @property
    def rule_ids(self) -> list[str]:
        return list(self.body.get("rule_ids", []))


class Held(GatewayError):
    @property
    def approval(self) -> dict[str, Any]:
        approval: dict[str, Any] = self.body.get("approval", {})
        return approval


class QueryFailed(GatewayError):
    pass


@dataclass
class StatementResult:
    index: int
    kind: str
    table: pa.Table | None
    masks: list[dict[str, Any]] = field(default_factory=list)
    rows: int = 0
    truncated: bool = False
    rowcount: int = -1
    #: the content detectors' findings: column, position, detector, rows (never a value)
    detectors: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class CellResult:
    header: dict[str, Any]
    statements: list[StatementResult]
    trailer: dict[str, Any]

    @property
    def last(self) -> StatementResult | None:
        return self.statements[-1] if self.statements else None


def cell_body(
    connection: str,
    sql: str,
    params: Sequence[Any] = (),
    *,
    context: dict[str, Any] | None = None,
    approval_id: str | None = None,
    max_rows: int | None = None,
) -> dict[str, Any]:
    """The JSON body of ``POST /v1/cells``."""
    body: dict[str, Any] = {"connection": connection, "sql": sql, "params": list(params), "context": context or {}}
    if approval_id:
        body["approval_id"] = approval_id
    if max_rows is not None:
        body["max_rows"] = max_rows
    return body


@functools.lru_cache(maxsize=4)
def _tls_context(cert_file: str | None, cert_dir: str | None) -> ssl.SSLContext:
    """The verifying TLS context (the CA bundle, or SSL_CERT_FILE / SSL_CERT_DIR), built
    once per process: loading the CA bundle costs ~30 ms, which every new client paid."""
    return httpx.create_ssl_context()


class GatewayClient:
    def __init__(
        self,
        base_url: str = "http://warden",
        *,
        token: str | None = None,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 300.0,
    ) -> None:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(
            base_url=base_url, headers=headers, transport=transport, timeout=httpx.Timeout(timeout, connect=5.0),
            verify=_tls_context(os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR")),
        )  # fmt: skip

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise GatewayUnavailable(f"the warden gateway cannot be reached ({type(exc).__name__}); no query ran", code="unavailable") from None

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        resp = self._request(method, path, **kwargs)
        raise_for_response(resp)
        return resp.json()

    def health(self) -> dict[str, Any]:
        result: dict[str, Any] = self._json("GET", "/v1/health")
        return result

    def whoami(self) -> dict[str, Any]:
        result: dict[str, Any] = self._json("GET", "/v1/whoami")
        return result

    def approvals(self, status: str | None = None) -> list[dict[str, Any]]:
        params = {"status": status} if status else {}
        items: list[dict[str, Any]] = self._json("GET", "/v1/approvals", params=params)["approvals"]
        return items

    def approval(self, approval_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._json("GET", f"/v1/approvals/{approval_id}")
        return result

    def decide(self, approval_id: str, *, approve: bool, reason: str) -> dict[str, Any]:
        verb = "approve" if approve else "deny"
        result: dict[str, Any] = self._json("POST", f"/v1/approvals/{approval_id}/{verb}", json={"reason": reason})
        return result

    def cancel(self, query_id: str) -> bool:
        resp = self._request("POST", f"/v1/queries/{query_id}/cancel")
        return resp.status_code == 200

    def audit(self, **filters: str) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = self._json("GET", "/v1/audit", params=filters)["events"]
        return events

    def run(
        self,
        connection: str,
        sql: str,
        params: Sequence[Any] = (),
        *,
        context: dict[str, Any] | None = None,
        approval_id: str | None = None,
        max_rows: int | None = None,
    ) -> CellResult:
        body = cell_body(connection, sql, params, context=context, approval_id=approval_id, max_rows=max_rows)
        try:
            with self._http.stream("POST", "/v1/cells", json=body) as resp:
                if resp.status_code != 200:
                    resp.read()
                    raise_for_response(resp)
                return _read_cell(resp.iter_bytes())
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise GatewayUnavailable(f"the warden gateway cannot be reached ({type(exc).__name__}); no query ran", code="unavailable") from None
        except httpx.TransportError as exc:
            raise GatewayUnavailable(
                f"the warden gateway went away mid-query ({type(exc).__name__}); the result is incomplete", code="unavailable"
            ) from None


def _read_cell(chunks: Iterator[bytes]) -> CellResult:
    import json

    header: dict[str, Any] = {}
    trailer: dict[str, Any] = {}
    statements: list[StatementResult] = []
    current: StatementResult | None = None
    ipc = ArrowStreamAssembler()  # the statement's Arrow stream, decoded as it comes
    try:
        for kind, pieces in frame_views(chunks):
            if kind == b"A":
                ipc.add(pieces)
                continue
            payload = b"".join(pieces)
            if kind == b"C":
                header = json.loads(payload)
            elif kind == b"S":
                meta = json.loads(payload)
                current = StatementResult(meta["index"], meta["kind"], None, meta.get("masks", []))
                ipc = ArrowStreamAssembler()
            elif kind == b"E":
                end = json.loads(payload)
                if current is not None:
                    current.table = ipc.table()
                    current.rows, current.truncated = end["rows"], end["truncated"]
                    current.rowcount = end.get("rowcount", -1)
                    current.detectors = list(end.get("detectors", []) or [])
                    statements.append(current)
                current = None
            elif kind == b"X":
                err = json.loads(payload)
                raise QueryFailed(err.get("message", "the query failed"), code=err.get("code", "failed"), body=err)
            elif kind == b"T":
                trailer = json.loads(payload)
    except EOFError as exc:
        raise GatewayUnavailable(str(exc), code="unavailable") from None
    except httpx.TransportError as exc:
        raise GatewayUnavailable(f"the warden gateway went away mid-query ({type(exc).__name__})", code="unavailable") from None
    if not trailer:
        raise GatewayUnavailable("the gateway's result stream ended before its trailer; the result is incomplete", code="unavailable")
    return CellResult(header, statements, trailer)


def raise_for_response(resp: httpx.Response) -> None:
    """Raise the error of the tree above that a gateway response stands for (if any)."""
    if resp.status_code < 300 and resp.status_code != 202:
        return
    try:
        body = resp.json()
    except ValueError:
        body = {}
    if resp.status_code == 202:
        a = body.get("approval", {})
        raise Held(f"held for approval {a.get('id')}: {'; '.join(a.get('reasons', []))}", code="held", body=body)
    if resp.status_code == 403 and body.get("status") == "denied":
        reasons = "; ".join(f"[{r['rule']}] {r['message']}" for r in body.get("reasons", []))
        raise Denied(f"denied: {reasons}", code="denied", body=body)
    err = body.get("error", {}) if isinstance(body, dict) else {}
    message = err.get("message") or f"HTTP {resp.status_code}"
    code = err.get("code", str(resp.status_code))
    if resp.status_code == 401:
        raise Unauthorized(message, code=code, body=body)
    if resp.status_code == 503:
        raise GatewayUnavailable(message, code=code, body=body)
    raise GatewayError(message, code=code, body=body)

