"""The kernel session: who and where this kernel is, the cell now running, and the
gateway client (connected lazily, once, shared by the magic and the event sender).

The warden kernel creates one :class:`WardenSession` at start and registers it with
:func:`set_session`; the magic, also usable from a plain IPython kernel via
``%load_ext warden.magic``, takes :func:`get_session` (which makes a default one).
"""

from __future__ import annotations

import collections
import os
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from warden.kernel.client import KernelGatewayClient
from warden.kernel.connect import connect_from_env
from warden.kernel.events import EventSender, cell_event, now_iso, redact_error, session_event

_KERNEL_FILE = re.compile(r"kernel-([0-9a-fA-F-]{8,})\.json$")


def kernel_id_from_connection_file(path: str) -> str:
    m = _KERNEL_FILE.search(path or "")
    return m.group(1) if m else ""


@dataclass
class CellRun:
    cell_run_id: str
    cell_id: str
    execution_count: int | None
    source: str
    silent: bool
    started: float = field(default_factory=time.monotonic)
    query_ids: list[str] = field(default_factory=list)


class WardenSession:
    def __init__(
        self,
        *,
        kernel_id: str = "",
        notebook_path: str | None = None,
        connector: Callable[[], KernelGatewayClient] | None = None,
        send_events: bool = True,
    ) -> None:
        self.session_id = str(uuid.uuid4())
        self.kernel_id = kernel_id
        self.notebook_path = os.environ.get("JPY_SESSION_NAME", "") if notebook_path is None else notebook_path
        self.started = time.monotonic()
        self.current: CellRun | None = None
        self.cells = 0
        #: what this kernel knows of its own audit trail (for `%warden audit` when the
        #: gateway will not let this user read the log)
        self.history: collections.deque[dict[str, Any]] = collections.deque(maxlen=500)
        self._connector = connector or connect_from_env
        self._client: KernelGatewayClient | None = None
        self._connect_lock = threading.Lock()
        self._whoami: dict[str, Any] | None = None
        self.events: EventSender | None = EventSender(self.client) if send_events else None
        self._ended = False

    # -- the gateway ----------------------------------------------------------------------

    def client(self) -> KernelGatewayClient:
        """The gateway client, connecting (in local mode: starting the gateway) once."""
        with self._connect_lock:
            if self._client is None:
                self._client = self._connector()
            return self._client

    @property
    def connected(self) -> bool:
        return self._client is not None

    def whoami(self, *, refresh: bool = False) -> dict[str, Any]:
        if self._whoami is None or refresh:
            client = self.client()
            self._whoami = client.retrying(client.whoami)
        assert self._whoami is not None
        return self._whoami

    def known_connections(self) -> list[str] | None:
        try:
            return [str(c) for c in self.whoami().get("connections", [])]
        except Exception:
            return None

    # -- context sent with every request ---------------------------------------------------

    def context(self) -> dict[str, Any]:
        ctx: dict[str, Any] = {"session_id": self.session_id, "kernel_id": self.kernel_id, "notebook_path": self.notebook_path}
        run = self.current
        if run is not None:
            ctx.update(cell_id=run.cell_id, execution_count=run.execution_count, cell_run_id=run.cell_run_id)
        return ctx

    def ensure_cell(self, *, source: str = "", execution_count: int | None = None) -> CellRun:
        """The current cell run; outside the warden kernel, one is made per magic call."""
        if self.current is None:
            return CellRun(self.new_cell_run_id(), "", execution_count, source, False)
        return self.current

    # -- cells ------------------------------------------------------------------------------

    def new_cell_run_id(self) -> str:
        """``<session id>:<uuid>``: the gateway binds a cell run named under a session to
        that session's subject without a state write of its own (docs/gateway.md)."""
        return f"{self.session_id}:{uuid.uuid4()}"

    def begin_cell(self, source: str, *, cell_id: str | None, execution_count: int | None, silent: bool) -> CellRun:
        run = CellRun(self.new_cell_run_id(), cell_id or "", execution_count, source, silent)
        self.current = run
        return run

    def end_cell(self, run: CellRun, *, status: str, ename: str = "", evalue: str = "") -> None:
        duration_ms = (time.monotonic() - run.started) * 1000
        context = {"session_id": self.session_id, "kernel_id": self.kernel_id, "notebook_path": self.notebook_path,
                   "cell_id": run.cell_id, "execution_count": run.execution_count, "cell_run_id": run.cell_run_id}  # fmt: skip
        if self.current is run:
            self.current = None
        self.cells += 1
        if status == "aborted":
            error = evalue
        else:
            error = redact_error(ename, evalue) if status != "ok" and ename else ""
        self.history.append({"type": "cell.execute", "time": now_iso(), "cell_run_id": run.cell_run_id, "cell_id": run.cell_id,
                             "execution_count": run.execution_count, "status": status, "duration_ms": round(duration_ms, 3),
                             "query_ids": list(run.query_ids)})  # fmt: skip
        if self.events is not None:
            self.events.submit(cell_event(context=context, source=run.source, duration_ms=duration_ms, status=status,
                                          error=error, silent=run.silent, query_ids=run.query_ids))  # fmt: skip

    def record_aborted(self, source: str, *, cell_id: str | None, silent: bool) -> None:
        """An execute request the kernel did not run (an earlier cell failed)."""
        run = CellRun(self.new_cell_run_id(), cell_id or "", None, source, silent)
        self.end_cell(run, status="aborted", evalue="not run: an earlier cell in the queue failed")

    def record_query(self, entry: dict[str, Any]) -> None:
        run = self.current
        qid = entry.get("query_id")
        if run is not None and qid:
            run.query_ids.append(str(qid))
        self.history.append(entry)

    # -- session events ---------------------------------------------------------------------

    def start(self, **kernel_info: Any) -> None:
        self.history.append({"type": "session.start", "time": now_iso(), "session_id": self.session_id})
        if self.events is not None:
            self.events.submit(session_event("start", context=self.context(), kernel=kernel_info))

    def end(self, *, timeout: float = 3.0) -> None:
        if self._ended:
            return
        self._ended = True
        if self.events is not None:
            self.events.submit(session_event("end", context=self.context(), cells=self.cells,
                                             duration_ms=round((time.monotonic() - self.started) * 1000, 3)))  # fmt: skip
            self.events.close(timeout)
        client = self._client
        if client is not None:
            client.close()


_SESSION: WardenSession | None = None
_SESSION_LOCK = threading.Lock()


def get_session() -> WardenSession:
    global _SESSION
    with _SESSION_LOCK:
        if _SESSION is None:
            _SESSION = WardenSession()
        return _SESSION


def set_session(session: WardenSession | None) -> None:
    global _SESSION
    with _SESSION_LOCK:
        _SESSION = session
