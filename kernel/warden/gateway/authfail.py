"""Refused tokens, audited per source and interval instead of one durable write each.

A client sending junk tokens must not turn each one into a synchronous audit write
(that was a cheap way to load the store). The first failure from a source in an
interval is recorded at once (queued, not awaited: a refusal grants nothing); the
failures that follow from that source during the interval are counted and recorded as
one ``auth.failure`` record when the interval ends (or the gateway closes). Every
``auth.failure`` record says in ``rows`` how many refused requests it stands for, so
``SUM(rows)`` is the number of refusals. Memory is bounded: past ``max_sources``
sources in one interval, new sources share one bucket (``client_ip`` = ``(other)``).
"""

from __future__ import annotations

import collections
import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("warden.gateway.auth")

OTHER = "(other)"


@dataclass
class _Window:
    started: float
    first_time: dt.datetime
    count: int = 0  # failures after the first (the first is already recorded)
    last_time: dt.datetime | None = None
    codes: collections.Counter[str] = field(default_factory=collections.Counter)
    message: str = ""


class AuthFailures:
    """Per-source aggregation of ``auth.failure`` records.

    ``event(ip)`` builds the base event for a source (who/where fields);
    ``record(events)`` queues records on the audit store without waiting.
    """

    def __init__(
        self,
        event: Callable[[str], dict[str, Any]],
        record: Callable[[list[dict[str, Any]]], Any],
        *,
        interval: float = 60.0,
        max_sources: int = 10_000,
    ) -> None:
        if interval <= 0 or max_sources < 1:
            raise ValueError("interval must be > 0 and max_sources >= 1")
        self.interval = interval
        self.max_sources = max_sources
        self._event = event
        self._record = record
        self._windows: dict[str, _Window] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="warden-auth-failures", daemon=True)
        self._thread.start()

    def note(self, ip: str, code: str, message: str) -> None:
        """One refused request from ``ip``."""
        now_wall = dt.datetime.now(dt.UTC)
        first: dict[str, Any] | None = None
        with self._lock:
            source = ip if ip in self._windows or len(self._windows) < self.max_sources else OTHER
            window = self._windows.get(source)
            if window is None:
                self._windows[source] = _Window(time.monotonic(), now_wall, message=message)
                first = self._build(source, 1, {code: 1}, f"{code}: {message}", now_wall, now_wall)
            else:
                window.count += 1
                window.codes[code] += 1
                window.last_time = now_wall
                window.message = message
        if first is not None:
            self._write([first])

    def flush(self, *, everything: bool = False) -> None:
        """Record the counts of the intervals that ended (all of them when closing)."""
        now = time.monotonic()
        out = []
        with self._lock:
            for source, window in list(self._windows.items()):
                if everything or now - window.started >= self.interval:
                    del self._windows[source]
                    if window.count:
                        codes = ", ".join(f"{c} x{n}" for c, n in window.codes.most_common())
                        text = f"{window.count} more refused request(s) from {source} since {window.first_time.isoformat()} ({codes}); last: {window.message}"
                        out.append(self._build(source, window.count, dict(window.codes), text, window.first_time, window.last_time))
        if out:
            self._write(out)

    def close(self) -> None:
        """Stop the timer and record every open count."""
        self._stop.set()
        self._thread.join(timeout=5)
        self.flush(everything=True)

    def _build(self, source: str, count: int, codes: dict[str, int], text: str, first: dt.datetime, last: dt.datetime | None) -> dict[str, Any]:
        ev = self._event("" if source == OTHER else source)
        if source == OTHER:
            ev["client_ip"] = OTHER
        ev.update(type="auth.failure", status="denied", error=text[:2000], rows=count, reasons=sorted(codes))
        return ev

    def _write(self, events: list[dict[str, Any]]) -> None:
        try:
            self._record(events)
        except Exception as exc:  # the refusal stands; losing its record is logged loudly
            log.error("cannot record %d auth.failure record(s): %s", len(events), exc)

    def _run(self) -> None:
        # Wake a few times per interval so a count is recorded soon after its interval ends.
        step = max(0.05, self.interval / 4)
        while not self._stop.wait(step):
            self.flush()
