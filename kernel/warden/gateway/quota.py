"""Per-identity quotas on kernel events (``/v1/events``): count and bytes per minute.

Kernel events are best-effort evidence that any analyst can send; without a bound
one of them can grow the audit store until the disk is full, and then every cell of
every user is denied (no audit, no access). A sliding one-minute window per subject.
"""

from __future__ import annotations

import threading
import time
from collections import deque


class EventQuota:
    def __init__(self, per_minute: int, bytes_per_minute: int, *, window: float = 60.0) -> None:
        self.per_minute = per_minute
        self.bytes_per_minute = bytes_per_minute
        self.window = window
        self._seen: dict[str, deque[tuple[float, int, int]]] = {}
        self._refused: dict[str, tuple[float, int]] = {}  # subject -> (window start, refused count)
        self._lock = threading.Lock()

    def admit(self, subject: str, count: int, nbytes: int) -> bool:
        """Take ``count`` events of ``nbytes`` for ``subject`` if the quota allows."""
        now = time.monotonic()
        with self._lock:
            q = self._seen.setdefault(subject, deque())
            while q and now - q[0][0] > self.window:
                q.popleft()
            used_n = sum(n for _, n, _ in q)
            used_b = sum(b for _, _, b in q)
            if used_n + count > self.per_minute or used_b + nbytes > self.bytes_per_minute:
                return False
            q.append((now, count, nbytes))
            if len(self._seen) > 100_000:  # bounded memory: forget idle subjects
                for key in [k for k, v in self._seen.items() if not v][:50_000]:
                    del self._seen[key]
            return True

    def refused(self, subject: str) -> int:
        """Count a refusal; returns 1 when it is the first in this window (record it), else 0."""
        now = time.monotonic()
        with self._lock:
            start, n = self._refused.get(subject, (now, 0))
            if now - start > self.window:
                start, n = now, 0
            self._refused[subject] = (start, n + 1)
            return 1 if n == 0 else 0
