"""Kernel-side audit events: ``session.start``, ``cell.execute`` (every execute request,
Python cells too) and ``session.end``, sent to the gateway's ``POST /v1/events``.

These are best-effort evidence (DESIGN.md §2): the gateway's query records are the
authoritative ones. Sending never slows or fails a cell: events go to a queue and a
background thread posts them in batches; when the gateway is unreachable they wait
(bounded), when it has no events endpoint they are dropped and the kernel says so once.

A cell event carries the cell's ``cell_run_id``, the same id the magic sends in the
``context`` of every ``/v1/cells`` request of that cell, so the gateway's query events
link to the cell that ran them (``correlation_id``).

The source travels as a sha256 hash and a *redacted* copy: passwords in URLs, values
assigned to secret-looking names, SQL string literals and long numbers in ``%%sql``
cells, and anything the content detectors recognise (e-mail, card, SSN, IBAN, phone,
API keys and tokens) are replaced before it leaves the kernel.
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import hashlib
import logging
import re
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from warden.gateway.client import GatewayError, GatewayUnavailable
from warden.magic.parse import redact_credentials

log = logging.getLogger("warden.kernel")
# Inside a kernel, sys.stderr is the running cell's output: warnings about events go to
# the kernel process's own stderr (the server log) instead, never into a cell.
log.propagate = False
if not log.handlers:
    _handler = logging.StreamHandler(sys.__stderr__)
    _handler.setFormatter(logging.Formatter("[warden] %(levelname)s %(message)s"))
    log.addHandler(_handler)

MAX_SOURCE_CHARS = 64 * 1024
MAX_BUFFERED = 1000
BATCH = 100
#: how long the first queued event waits for company: one request (one audit append)
#: per burst of cells instead of one per cell, sent when the kernel is quiet
LINGER_SECONDS = 0.25

_SECRET_ASSIGN = re.compile(
    r"""(?ix)
    (\b[\w-]*(?:password|passwd|pwd|secret|token|api[_-]?key|apikey|credential|private[_-]?key|access[_-]?key)[\w-]*
      ["']?\s*(?:=|:)\s*[rbuf]{0,2})
    (["'])(?:(?!\2).)*\2
    """
)
_SQL_LITERALS = re.compile(
    r"""(?sx)
    (--[^\n]*)                                  # line comment: kept (detectors still run)
    | (/\*.*?\*/)                               # block comment: kept
    | ((?<![\w$])[eE]?'(?:[^'\\]|''|\\.)*')    # string literal
    | ("(?:[^"]|"")*")                          # quoted identifier: kept
    | (\$([A-Za-z_]\w*|)\$.*?\$\6\$)            # dollar-quoted string
    | ((?<![\w$.])\d{5,}(?:\.\d+)?(?![\w]))     # long number
    """
)
_TEMPLATE_LITERAL = re.compile(r"'\{\{\s*[A-Za-z_][\w.]*\s*\}\}'")
#: Worth a detector pass: an @, a run of digits, or a known secret prefix.
_DETECTOR_HINT = re.compile(r"@|\d{3}|eyJ|sk-|sk_|rk_|AKIA|ASIA|gh[pousr]_|github_pat_|xox|BEGIN |[A-Z]{2}\d{2}")


def source_hash(source: str) -> str:
    return hashlib.sha256(source.encode("utf-8", "surrogatepass")).hexdigest()


def redact_sql(sql: str) -> str:
    def repl(m: re.Match[str]) -> str:
        if m.group(3) is not None:
            return m.group(3) if _TEMPLATE_LITERAL.fullmatch(m.group(3)) else "'?'"
        if m.group(5) is not None:
            return "$$?$$"
        if m.group(7) is not None:
            return "?"
        return m.group(0)

    return _SQL_LITERALS.sub(repl, sql)


def redact_source(source: str) -> str:
    """A copy of a cell's source that is safe to keep in the audit log."""
    text = source[:MAX_SOURCE_CHARS]
    text = redact_credentials(text)
    stripped = text.lstrip()
    if stripped.startswith("%%sql"):
        head, _, body = stripped.partition("\n")
        text = head + "\n" + redact_sql(body) if body else head
    else:
        text = re.sub(r"(%sql\b[^\n]*)", lambda m: redact_sql(m.group(1)), text)
        text = _SECRET_ASSIGN.sub(lambda m: f"{m.group(1)}{m.group(2)}***{m.group(2)}", text)
    if _DETECTOR_HINT.search(text):
        text = _detectors(text)
    if len(source) > MAX_SOURCE_CHARS:
        text += f"\n… ({len(source) - MAX_SOURCE_CHARS} more characters)"
    return text


def _detectors(text: str) -> str:
    import pyarrow as pa

    from warden.masking.detectors import scan_and_mask

    table, _ = scan_and_mask(pa.table({"s": [text]}), ["s"])
    value = table.column("s")[0].as_py()
    return str(value) if value is not None else ""


def redact_error(ename: str, evalue: str) -> str:
    text = f"{ename}: {evalue}" if evalue else ename
    return redact_source(text[:500])


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def cell_language(source: str) -> str:
    stripped = source.lstrip()
    if stripped.startswith("%%sql") or re.search(r"(^|[=\s])%sql\b", source):
        return "sql"
    return "python"


def cell_event(
    *,
    context: dict[str, Any],
    source: str,
    duration_ms: float,
    status: str,
    error: str = "",
    silent: bool = False,
    query_ids: list[str] | None = None,
) -> dict[str, Any]:
    """The ``cell.execute`` event (its source is redacted when it is sent)."""
    return {
        "type": "cell.execute",
        "time": now_iso(),
        "context": context,
        "language": cell_language(source),
        "source_sha256": source_hash(source),
        "source": source,  # becomes "source_redacted" in the sender thread
        "duration_ms": round(duration_ms, 3),
        "status": status,
        "error": error,
        "silent": silent,
        "query_ids": list(query_ids or []),
    }


def session_event(kind: str, *, context: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": f"session.{kind}", "time": now_iso(), "context": context, **extra}


class EventSender:
    """Posts events from a background thread; never blocks the caller for long.

    ``client_factory`` gives the gateway client (it may block while a local gateway
    starts); it is called in the sender thread only.
    """

    def __init__(self, client_factory: Callable[[], Any], *, retry_seconds: float = 2.0, linger: float = LINGER_SECONDS) -> None:
        self._client_factory = client_factory
        self._queue: collections.deque[dict[str, Any]] = collections.deque()
        self._cond = threading.Condition()
        self._inflight = 0
        self._stopping = False
        self.supported: bool | None = None  # None: not known yet
        self.sent: list[str] = []  # gateway event ids of what was accepted (bounded)
        self.dropped = 0
        self.last_error = ""
        self.down = False  # the last attempt found the gateway unreachable
        self._retry = retry_seconds
        self._linger = linger
        self._hurry = False
        self._thread = threading.Thread(target=self._run, name="warden-events", daemon=True)
        self._thread.start()

    def submit(self, event: dict[str, Any]) -> None:
        with self._cond:
            if self.supported is False:
                return
            if len(self._queue) >= MAX_BUFFERED:
                self._queue.popleft()
                self.dropped += 1
            self._queue.append(event)
            self._cond.notify()

    def flush(self, timeout: float) -> bool:
        """Wait until everything queued was sent (or given up on); False on timeout."""
        if self.down:
            timeout = min(timeout, 0.5)  # do not hold a shutdown hostage to a gateway that is gone
        deadline = time.monotonic() + timeout
        with self._cond:
            self._hurry = True
            self._cond.notify_all()
            while (self._queue or self._inflight) and self.supported is not False:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.05))
            self._hurry = False
        return True

    def close(self, timeout: float = 2.0) -> None:
        self.flush(timeout)
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout=0.5)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if self._stopping and not self._queue:
                    return
                first = time.monotonic()
                while not (self._stopping or self._hurry) and len(self._queue) < BATCH:
                    left = first + self._linger - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                batch = [self._queue.popleft() for _ in range(min(BATCH, len(self._queue)))]
                self._inflight = len(batch)
            try:
                self._send(batch)
            except GatewayUnavailable as exc:
                self.last_error = str(exc)
                self.down = True
                with self._cond:
                    for ev in reversed(batch):
                        self._queue.appendleft(ev)
                    self._inflight = 0
                    if self._stopping:
                        self.dropped += len(self._queue)
                        self._queue.clear()
                        self._cond.notify_all()
                        return
                    self._cond.wait(self._retry)
                continue
            except Exception as exc:  # a refused batch is dropped, the kernel goes on
                self.last_error = f"{type(exc).__name__}: {exc}"
                self.dropped += len(batch)
                log.warning("warden: cell events not recorded: %s", self.last_error)
            with self._cond:
                self._inflight = 0
                self._cond.notify_all()

    def _send(self, batch: list[dict[str, Any]]) -> None:
        from warden.kernel.client import EndpointMissing

        for ev in batch:
            if "source" in ev:
                ev["source_redacted"] = redact_source(str(ev.pop("source")))
            if ev.get("error"):
                ev["error"] = redact_source(str(ev["error"]))[:500]
        client = self._client_factory()
        try:
            ids = client.retrying(lambda: client.post_events(batch))
        except EndpointMissing:
            with self._cond:
                self.supported = False
                self.dropped += len(batch) + len(self._queue)
                self._queue.clear()
                self._cond.notify_all()
            log.warning("warden: the gateway does not accept kernel events (POST /v1/events); cell events are not recorded")
            return
        except GatewayError as exc:
            if isinstance(exc, GatewayUnavailable):
                raise
            raise RuntimeError(str(exc)) from None
        self.supported = True
        self.down = False
        self.sent.extend(ids)
        del self.sent[:-MAX_BUFFERED]


def ignore_errors(fn: Callable[[], Any]) -> None:
    with contextlib.suppress(Exception):
        fn()
