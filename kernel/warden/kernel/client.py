"""The kernel's gateway client: :class:`GatewayClient` plus what the analyst's path needs.

* :class:`CellStream` runs ``POST /v1/cells`` in a reader thread, so the magic can show
  progress while the query runs and can cancel it: the ``C`` frame carries the query id,
  and an interrupt calls ``POST /v1/queries/{id}/cancel`` (the database cancels it).
* ``post_events`` sends kernel-side audit events (``cell.execute``, ``session.start``,
  ``session.end``) to ``POST /v1/events``.
* ``catalog`` asks ``GET /v1/connections/{name}/catalog`` for table and column names
  (completion), ``session_events`` ``GET /v1/me/events`` for ``%warden audit``.

Endpoints the gateway may not have yet answer 404; callers treat that as
"not supported" (:class:`EndpointMissing`) and degrade, never fail a cell over it.
"""

from __future__ import annotations

import contextlib
import json
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import httpx

from warden.gateway.client import (
    CellResult,
    GatewayClient,
    GatewayError,
    GatewayUnavailable,
    QueryFailed,
    StatementResult,
    Unauthorized,
    cell_body,
    raise_for_response,
)
from warden.gateway.frames import ArrowStreamAssembler, frame_views
from warden.kernel.tokens import Endpoint, TokenSource


class EndpointMissing(GatewayError):
    """The gateway has no such endpoint (an older gateway): the feature is unavailable."""


class KernelGatewayClient(GatewayClient):
    def __init__(
        self, endpoint: Endpoint, tokens: TokenSource, *, timeout: float = 300.0, transport: httpx.BaseTransport | None = None
    ) -> None:
        self.endpoint = endpoint
        self.tokens = tokens
        super().__init__(endpoint.base_url, token=tokens.token(), transport=transport or endpoint.transport(), timeout=timeout)
        self._token_lock = threading.Lock()
        self._events_batch: bool | None = None  # does POST /v1/events take {"events": [...]}?

    @property
    def where(self) -> str:
        return self.endpoint.where

    @property
    def http(self) -> httpx.Client:
        return self._http

    def refresh_token(self) -> bool:
        """Ask the token source for a new token (after a 401); True if it gave one."""
        with self._token_lock:
            new = self.tokens.refresh()
            if not new:
                return False
            self._http.headers["authorization"] = f"Bearer {new}"
            return True

    def retrying(self, call: Callable[[], Any]) -> Any:
        """``call()``, once more after a token refresh if the gateway said 401."""
        try:
            return call()
        except Unauthorized:
            if not self.refresh_token():
                raise
            return call()

    # -- kernel-side audit events ------------------------------------------------------

    def post_events(self, events: Sequence[dict[str, Any]]) -> list[str]:
        """Record kernel events at the gateway; returns the gateway's event ids.

        ``POST /v1/events`` with ``{"events": [...]}`` (one audit append for the batch);
        a gateway that takes one event per request (it answers 400 to the batch form)
        gets them one by one from then on.
        """
        if not events:
            return []
        if self._events_batch is not False:
            resp = self._request("POST", "/v1/events", json={"events": list(events)})
            if resp.status_code in (404, 405):
                raise EndpointMissing("this gateway does not accept kernel events (POST /v1/events)", code="not-found")
            if resp.status_code < 300:
                self._events_batch = True
                body = resp.json()
                return [str(i) for i in body.get("event_ids", [body.get("event_id", "")])]
            if resp.status_code != 400 or self._events_batch:
                raise_for_response(resp)
            self._events_batch = False  # an older gateway: one event per request
        ids: list[str] = []
        for event in events:
            resp = self._request("POST", "/v1/events", json=event)
            if resp.status_code in (404, 405):
                raise EndpointMissing("this gateway does not accept kernel events (POST /v1/events)", code="not-found")
            raise_for_response(resp)
            ids.append(str(resp.json().get("event_id", "")))
        return ids

    # -- catalog for completion --------------------------------------------------------

    def catalog(self, connection: str, *, timeout: float = 3.0) -> dict[str, Any]:
        """``GET /v1/completions?connection=``: the tables and columns this user may name,
        as ``{"connection", "relations": [{"schema", "name", "columns"}]}``."""
        resp = self._request("GET", "/v1/completions", params={"connection": connection}, timeout=timeout)
        if resp.status_code in (404, 405) and _error_code(resp) in ("not-found", "method-not-allowed", ""):
            raise EndpointMissing("this gateway has no completions endpoint", code="not-found")
        raise_for_response(resp)
        body = resp.json()
        relations = []
        tables = body.get("tables", {}) if isinstance(body, dict) else {}
        for qualified, columns in (tables.items() if isinstance(tables, dict) else []):
            schema, _, name = str(qualified).rpartition(".")
            relations.append({"schema": schema, "name": name, "columns": list(columns or [])})
        return {"connection": connection, "relations": relations}

    # -- this session's audit events -------------------------------------------------------

    def session_events(self, session_id: str, *, limit: int = 50) -> list[dict[str, Any]]:
        params = {"session_id": session_id, "limit": str(limit)}
        resp = self._request("GET", "/v1/me/events", params=params)
        if resp.status_code == 404 and _error_code(resp) in ("not-found", ""):
            return self.audit(**params)  # an auditor may read them there
        raise_for_response(resp)
        events: list[dict[str, Any]] = resp.json()["events"]
        return events

    # -- cells ------------------------------------------------------------------------------

    def start_cell(
        self,
        connection: str,
        sql: str,
        params: Sequence[Any] = (),
        *,
        context: dict[str, Any] | None = None,
        approval_id: str | None = None,
        max_rows: int | None = None,
    ) -> CellStream:
        body = cell_body(connection, sql, params, context=context, approval_id=approval_id, max_rows=max_rows)
        stream = CellStream(self, body)
        stream.start()
        return stream


def _error_code(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return ""
    err = body.get("error", {}) if isinstance(body, dict) else {}
    code = err.get("code", "") if isinstance(err, dict) else ""
    return str(code)


class _Reader:
    """One daemon thread that reads the cells' result streams, one after another:
    starting a thread for every cell costs more than a small query's whole read. A
    stream that arrives while it is busy (a cell started from another thread) gets a
    daemon thread of its own, as before."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._busy = False
        self._thread: threading.Thread | None = None

    def submit(self, job: Callable[[], None]) -> None:
        with self._lock:
            if self._busy:
                threading.Thread(target=job, name="warden-cell", daemon=True).start()
                return
            self._busy = True
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="warden-cell", daemon=True)
                self._thread.start()
        self._jobs.put(job)

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                job()
            finally:
                with self._lock:
                    self._busy = False


_READER = _Reader()


class CellStream:
    """One ``POST /v1/cells`` read by a background thread.

    The caller ``wait``s in short steps (so it can draw progress and take a
    KeyboardInterrupt), then takes ``result()``, which returns the :class:`CellResult`
    or raises what the gateway said (Held, Denied, QueryFailed, GatewayUnavailable, …).
    """

    def __init__(self, client: KernelGatewayClient, body: dict[str, Any]) -> None:
        self.client = client
        self.body = body
        self.started = time.monotonic()
        self.header: dict[str, Any] = {}
        self.trailer: dict[str, Any] = {}
        self.received = 0
        self.rows = 0
        #: per statement index: the S frame's fields plus the E frame's extras (bytes, detectors)
        self.statement_meta: dict[int, dict[str, Any]] = {}
        self.state = "submitting"
        self.cancelled = False
        self._done = threading.Event()
        self._result: CellResult | None = None
        self._error: BaseException | None = None
        self._response: httpx.Response | None = None

    @property
    def query_id(self) -> str | None:
        qid = self.header.get("query_id")
        return str(qid) if qid else None

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def start(self) -> None:
        _READER.submit(self._run)

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def join(self, timeout: float) -> None:
        self._done.wait(timeout)  # the reader sets it last, whatever happened

    def result(self) -> CellResult:
        self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def cancel(self) -> bool:
        """Cancel the query in the database (via the gateway); True if the gateway knew it.

        Before the gateway has named the query, the reader thread cancels it as soon as
        the name arrives; a stream already open is closed too (the gateway stops a cell
        whose client went away).
        """
        self.cancelled = True
        qid = self.query_id
        if qid:
            try:
                return self.client.cancel(qid)
            except GatewayError:
                return False
        resp = self._response
        if resp is not None:
            with contextlib.suppress(httpx.HTTPError, RuntimeError, OSError):
                resp.close()
        return False

    # -- the reader thread ------------------------------------------------------------

    def _run(self) -> None:
        try:
            try:
                self._result = self._request()
            except Unauthorized:
                if not self.client.refresh_token():
                    raise
                self._result = self._request()
        except httpx.TransportError as exc:
            if self.cancelled:
                self._error = QueryFailed("the cell was cancelled before the gateway started it", code="cancelled")
            else:
                self._error = GatewayUnavailable(
                    f"the warden gateway at {self.client.where} went away mid-query ({type(exc).__name__}); the result is incomplete",
                    code="unavailable",
                )
        except BaseException as exc:  # handed to the caller's thread
            self._error = exc
        finally:
            self._done.set()

    def _request(self) -> CellResult:
        try:
            with self.client.http.stream("POST", "/v1/cells", json=self.body) as resp:
                self._response = resp
                if resp.status_code != 200:
                    resp.read()
                    raise_for_response(resp)
                    raise GatewayError(f"unexpected HTTP {resp.status_code} from the gateway", code=str(resp.status_code))
                self.state = "running"
                return self._read(resp.iter_bytes())
        except httpx.ConnectError:
            raise GatewayUnavailable(
                f"the warden gateway cannot be reached at {self.client.where}; no query ran", code="unavailable"
            ) from None

    def _read(self, chunks: Iterator[bytes]) -> CellResult:
        statements: list[StatementResult] = []
        current: StatementResult | None = None
        current_meta: dict[str, Any] = {}
        parts = ArrowStreamAssembler()  # the statement's Arrow stream, decoded as it comes
        failure: QueryFailed | None = None
        try:
            for kind, pieces in frame_views(chunks):
                if kind == b"A":
                    parts.add(pieces)
                    self.received += sum(p.nbytes for p in pieces)
                    self.state = "fetching"
                    continue
                payload = b"".join(pieces)
                if kind == b"C":
                    self.header = json.loads(payload)
                    if self.cancelled and self.query_id:  # interrupted before the gateway named the query
                        with contextlib.suppress(GatewayError):
                            self.client.cancel(self.query_id)
                elif kind == b"S":
                    meta = json.loads(payload)
                    current = StatementResult(meta["index"], meta["kind"], None, meta.get("masks", []))
                    current_meta = meta
                    parts = ArrowStreamAssembler()
                elif kind == b"E":
                    end = json.loads(payload)
                    if current is not None:
                        current.table = parts.table()
                        current.rows, current.truncated = end.get("rows", 0), bool(end.get("truncated"))
                        current.rowcount = end.get("rowcount", -1)
                        current.detectors = list(end.get("detectors", []) or [])
                        extras = {k: v for k, v in end.items() if k not in ("index", "rows", "truncated", "rowcount")}
                        self.statement_meta[current.index] = {**current_meta, **extras}
                        statements.append(current)
                        self.rows += current.rows
                    current, parts = None, ArrowStreamAssembler()
                elif kind == b"X":
                    err = json.loads(payload)
                    failure = QueryFailed(err.get("message", "the query failed"), code=err.get("code", "failed"), body=err)
                elif kind == b"T":
                    self.trailer = json.loads(payload)
        except EOFError:
            raise GatewayUnavailable(
                f"the result stream from {self.client.where} ended early (gateway gone mid-query?); the result is incomplete",
                code="unavailable",
            ) from None
        if failure is not None:
            failure.body = {**failure.body, "trailer": self.trailer, "header": self.header}
            raise failure
        if not self.trailer:
            raise GatewayUnavailable("the gateway's result stream ended before its trailer; the result is incomplete", code="unavailable")
        return CellResult(self.header, statements, self.trailer)
