"""Approval webhooks: one ordered delivery queue per gateway.

A notification per thread lets a decision overtake its request and drops failures.
Here one worker thread delivers notifications strictly in the order they were
queued: the head of the queue is retried (bounded attempts, exponential backoff)
before anything behind it is sent, so a receiver never sees ``approval.rejected``
before ``approval.requested``. The queue is bounded (a dead receiver cannot grow the
gateway's memory), and closing the gateway drains it for a bounded time.

Each payload gets ``delivery_id`` (stable across retries: receivers de-duplicate on it,
since a delivery whose response was lost is sent again) and ``delivery_seq`` (1, 2, 3…
per gateway process, in queue order).
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
import uuid
import weakref
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

log = logging.getLogger("warden.gateway.webhooks")

#: Statuses worth another attempt; other 4xx answers mean the payload itself is refused.
_RETRY_4XX = frozenset({408, 409, 425, 429})


@dataclass
class WebhookStats:
    queued: int = 0
    delivered: int = 0
    attempts: int = 0
    failed: int = 0  # gave up after the last attempt, or refused for good
    dropped: int = 0  # queue full, or left over when the close drain ran out


class WebhookQueue:
    """FIFO delivery of JSON POSTs to ``url`` from a single worker thread."""

    def __init__(
        self,
        url: str,
        *,
        max_queue: int = 10_000,
        attempts: int = 6,
        backoff: float = 0.25,
        max_backoff: float = 30.0,
        timeout: float = 5.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if max_queue < 1 or attempts < 1 or backoff < 0 or timeout <= 0:
            raise ValueError("max_queue and attempts must be >= 1, backoff >= 0, timeout > 0")
        self.url = url
        self.max_queue = max_queue
        self.attempts = attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.stats = WebhookStats()
        self._items: collections.deque[dict[str, Any]] = collections.deque()
        self._cond = threading.Condition()
        self._seq = itertools.count(1)
        self._closing = False
        self._deadline: float | None = None  # set by close(): the drain ends here
        self._busy = False  # the worker holds an item (sending or backing off)
        self._timeout = timeout
        self._client = httpx.Client(timeout=timeout, transport=transport)
        self._thread = threading.Thread(target=self._run, name="warden-webhooks", daemon=True)
        self._thread.start()

    def enqueue(self, payload: dict[str, Any]) -> bool:
        """Queue one notification (returns at once). False when it was not queued:
        the queue is full or closed (logged; the audit record of the event stands)."""
        with self._cond:
            if self._closing:
                log.warning("webhook %s: gateway closing, %s not sent", self.url, payload.get("event"))
                self.stats.dropped += 1
                return False
            if len(self._items) >= self.max_queue:
                log.error("webhook %s: %d notifications queued, dropping %s", self.url, len(self._items), payload.get("event"))
                self.stats.dropped += 1
                return False
            item = {**payload, "delivery_id": str(uuid.uuid4()), "delivery_seq": next(self._seq)}
            self._items.append(item)
            self.stats.queued += 1
            self._cond.notify_all()
        return True

    def pending(self) -> int:
        """Notifications not yet delivered or given up (queued or in flight)."""
        with self._cond:
            return len(self._items) + (1 if self._busy else 0)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until everything queued so far was delivered or given up."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._items or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self, drain_seconds: float = 5.0) -> None:
        """Stop taking notifications, keep delivering what is queued for at most
        ``drain_seconds`` (retries included), then stop the worker. Idempotent."""
        with self._cond:
            if not self._closing:
                self._closing = True
                self._deadline = time.monotonic() + drain_seconds
            self._cond.notify_all()
        self._thread.join(drain_seconds + self._timeout + 1.0)  # a POST in flight may take its timeout
        self._client.close()

    # ---------------------------------------------------------------- worker

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._items and not self._closing:
                    self._cond.wait()
                if not self._items or self._past_deadline():
                    left = len(self._items)
                    if left:
                        log.error("webhook %s: gateway closed with %d notification(s) undelivered", self.url, left)
                        self.stats.dropped += left
                        self._items.clear()
                    self._cond.notify_all()
                    return
                item = self._items[0]  # stays at the head until done: nothing overtakes it
                self._busy = True
            try:
                self._deliver(item)
            finally:
                with self._cond:
                    self._items.popleft()
                    self._busy = False
                    self._cond.notify_all()

    def _past_deadline(self) -> bool:
        return self._deadline is not None and time.monotonic() >= self._deadline

    def _deliver(self, item: dict[str, Any]) -> None:
        delay = self.backoff
        for attempt in range(1, self.attempts + 1):
            self.stats.attempts += 1
            error = self._post(item)
            if error is None:
                self.stats.delivered += 1
                return
            permanent = error.startswith("refused")
            if permanent or attempt == self.attempts:
                break
            log.warning("webhook %s: %s (attempt %d of %d); retrying in %.2fs", self.url, error, attempt, self.attempts, delay)
            if not self._pause(delay):
                error = f"{error}; the close drain ran out"
                break
            delay = min(delay * 2, self.max_backoff)
        self.stats.failed += 1
        log.error("webhook %s: gave up on %s (%s) after %d attempt(s): %s", self.url, item.get("event"), item["delivery_id"], attempt, error)

    def _post(self, item: dict[str, Any]) -> str | None:
        try:
            resp = self._client.post(self.url, json=item)
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"
        if 200 <= resp.status_code < 300:
            return None
        if 400 <= resp.status_code < 500 and resp.status_code not in _RETRY_4XX:
            return f"refused with HTTP {resp.status_code}"
        return f"HTTP {resp.status_code}"

    def _pause(self, seconds: float) -> bool:
        """Back off for ``seconds``, cut short by the close deadline. False when the
        deadline passed (the drain is over)."""
        end = time.monotonic() + seconds
        with self._cond:
            while True:
                limit = end if self._deadline is None else min(end, self._deadline)
                left = limit - time.monotonic()
                if left <= 0:
                    return not self._past_deadline()
                self._cond.wait(left)  # close() wakes us to re-check the deadline


# ------------------------------------------------------------------------ per gateway


class _Owner(Protocol):
    @property
    def config(self) -> Any: ...


_QUEUES: weakref.WeakKeyDictionary[Any, WebhookQueue] = weakref.WeakKeyDictionary()
_QUEUES_LOCK = threading.Lock()


def webhooks_for(owner: _Owner) -> WebhookQueue:
    """The one delivery queue of a gateway (created on first use, for its
    ``approvals.webhook`` URL)."""
    with _QUEUES_LOCK:
        found = _QUEUES.get(owner)
        if found is None:
            found = _QUEUES[owner] = WebhookQueue(str(owner.config.approval_webhook))
        return found


def close_webhooks(owner: object, drain_seconds: float = 5.0) -> None:
    """Drain (bounded) and stop a gateway's queue, if it has one."""
    with _QUEUES_LOCK:
        found = _QUEUES.pop(owner, None)
    if found is not None:
        found.close(drain_seconds)
