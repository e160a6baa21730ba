"""The audit store interface, group commit, and :func:`open_store`.

Group commit
------------
``append`` never touches the database itself. It queues its drafts and sleeps (on a
lock of its own; ``append_async`` awaits a future). One writer thread takes everything
queued — all that arrived while the previous transaction was committing, up to
``max_batch`` events — and in one transaction locks the chain head, assigns ``seq`` and
hashes, inserts all records, writes a checkpoint when one is due, moves the head and
commits. Then it wakes every caller of the batch. Under load a transaction therefore
carries as many events as arrived during the previous commit: the commit is paid once
per batch rather than once per event, while each caller still returns only after
*its* records are durable. (The DuckDB store makes a batch durable in its intent
journal instead and absorbs it into DuckDB from another thread: ``duckdb_store``.)

If the transaction fails, nothing of it is visible (it is rolled back) and every
caller of the batch gets :class:`AuditUnavailable`; the next batch starts from the
head actually committed, so the chain continues without a gap once the store is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import queue
import socket
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from warden.audit.checkpoint import (
    Checkpoint,
    SigningKeyLike,
    append_checkpoint_file,
    key_id,
    public_key_pem,
    sign_checkpoint,
    signing_key_from,
)
from warden.audit.errors import AuditClosed, AuditConfigError, AuditUnavailable
from warden.audit.record import (
    FIELD_KINDS,
    FIELDS,
    AuditEvent,
    EventDraft,
    check_chain_id,
    json_texts,
    parse_time,
    seal_many,
    utcnow,
)
from warden.audit.schema import ARROW_SCHEMA, COLUMN_LIST, q

log = logging.getLogger("warden.audit")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

Order = Literal["newest", "seq"]


@dataclass(frozen=True)
class ChainHead:
    """The last record of a chain as the chain-head table records it."""

    chain_id: str
    last_seq: int
    last_hash: str
    updated_at: dt.datetime | None


@dataclass
class StoreStats:
    """Counters of the writer (for benchmarks and health endpoints)."""

    events: int = 0
    batches: int = 0
    largest_batch: int = 0
    failed_batches: int = 0
    checkpoints: int = 0


class _Request:
    """One caller's drafts (or a checkpoint request) and how to wake the caller.

    A thread caller sleeps on a plain ``Lock`` of its own that the writer releases
    (the cheapest way to park a thread in CPython; no shared condition to stampede on
    when a batch wakes 50 callers). An asyncio caller awaits a future instead, which
    the writer resolves with one ``call_soon_threadsafe`` per event loop per batch.
    """

    __slots__ = ("checkpoint", "drafts", "error", "events", "future", "lock", "loop", "signed")

    def __init__(
        self,
        drafts: list[EventDraft],
        *,
        checkpoint: bool = False,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.drafts = drafts
        self.checkpoint = checkpoint
        self.loop = loop
        self.future: asyncio.Future[list[AuditEvent]] | None = loop.create_future() if loop is not None else None
        self.lock: threading.Lock | None = None
        if loop is None:
            self.lock = threading.Lock()
            self.lock.acquire()
        self.events: list[AuditEvent] | None = None
        self.error: BaseException | None = None
        self.signed: Checkpoint | None = None

    def wait(self, timeout: float) -> bool:
        assert self.lock is not None
        return self.lock.acquire(timeout=timeout)

    def finish(self) -> None:
        if self.lock is not None:
            self.lock.release()


def _resolve(requests: list[_Request]) -> None:
    """Runs in the caller's event loop: hand each awaiting caller its outcome."""
    for r in requests:
        fut = r.future
        if fut is None or fut.done():  # cancelled (timed out) meanwhile
            continue
        if r.error is not None:
            fut.set_exception(r.error)
        else:
            fut.set_result(r.events or [])


def _wake(requests: list[_Request]) -> None:
    by_loop: dict[asyncio.AbstractEventLoop, list[_Request]] = {}
    for r in requests:
        if r.loop is None:
            r.finish()
        else:
            by_loop.setdefault(r.loop, []).append(r)
    for loop, rs in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the loop was closed: nobody is waiting any more
            loop.call_soon_threadsafe(_resolve, rs)


_STOP = _Request([])  # queued by close(): the writer drains what came before it, then exits


class _Batch:
    """One unit of the writer's work: sealed records of several requests (or a
    checkpoint / stop / timer item), with the head they were sealed after."""

    __slots__ = ("base", "error", "events", "kind", "now", "payload", "requests")

    def __init__(self, requests: list[_Request], *, kind: str) -> None:
        self.requests = requests
        self.kind = kind  # append | checkpoint | tick | stop
        self.base: tuple[int, str] = (0, "")
        self.now: dt.datetime = _EPOCH
        self.events: list[AuditEvent] | None = None
        self.payload: Any = None
        self.error: BaseException | None = None


class AuditStore(ABC):
    """An append-only, hash-chained audit log. Use :func:`open_store` to get one.

    Thread-safe. Writes go through one writer thread (see module docstring); reads
    (``query``, ``tail``, ``read_chain``...) use their own connections and never
    block on, or wait for, the writer.
    """

    #: URL scheme this backend serves (for messages).
    kind: str = "?"
    #: Parameter placeholder of the backend's SQL driver.
    _ph: str = "?"
    #: Whether the audit_chains head row moves with every batch (PostgreSQL) rather
    #: than only at checkpoints and close (DuckDB); verify relies on it.
    exact_head: bool = False

    def __init__(
        self,
        url: str,
        *,
        chain_id: str | None = None,
        signing_key: SigningKeyLike | None = None,
        checkpoint_every: int = 1000,
        checkpoint_interval: float = 60.0,
        checkpoint_file: str | Path | None = None,
        max_batch: int = 5000,
        append_timeout: float = 30.0,
        gather_window: float = 0.0003,
        gather_max: float = 0.002,
        read_only: bool = False,
    ) -> None:
        if checkpoint_every < 1 or checkpoint_interval <= 0 or max_batch < 1 or append_timeout <= 0:
            raise AuditConfigError("checkpoint_every, checkpoint_interval, max_batch and append_timeout must be positive")
        self.url = url
        self.chain_id = check_chain_id(chain_id or default_chain_id())
        self.read_only = read_only
        self.checkpoint_every = checkpoint_every
        self.checkpoint_interval = checkpoint_interval
        self.checkpoint_file = Path(checkpoint_file) if checkpoint_file else None
        self.max_batch = max_batch
        self.append_timeout = append_timeout
        self.gather_window = gather_window
        self.gather_max = gather_max
        self._key: Ed25519PrivateKey | None = signing_key_from(signing_key)
        self.stats = StoreStats()
        self._queue: queue.SimpleQueue[_Request] = queue.SimpleQueue()
        self._state = threading.Lock()  # guards _closing against a racing close()
        self._closing = False
        self._closed = False
        self._since_checkpoint = 0
        self._last_checkpoint = time.monotonic()
        self._last_time: dt.datetime | None = None
        self._writer: threading.Thread | None = None
        self._committed_head: tuple[int, str] = (0, "")  # set by _open_writer, then by the writer thread
        self._last_batch_callers = 0
        self._last_commit = 0.0  # seconds the last batch transaction took

    def _start(self) -> None:
        """Called by subclasses once they can connect: open the writer, start its thread."""
        _warm_up()
        if self.read_only:
            return
        self._open_writer()  # fail fast (AuditUnavailable) if the store cannot be opened
        if self._key is not None:
            # Sign "a writer starts here" (at seq 0, the genesis, on a new chain): records
            # after a ``close`` checkpoint are then the new writer's, not an appended
            # forgery, and a signed chain always has a checkpoint (verify relies on both).
            self._write_checkpoint_now(mark="open")
        self._writer = threading.Thread(target=self._run, name=f"warden-audit-writer-{self.chain_id}", daemon=True)
        self._writer.start()

    # ------------------------------------------------------------------ public API

    @property
    def public_key(self) -> Ed25519PublicKey | None:
        """The public half of the checkpoint signing key (None when unsigned)."""
        return self._key.public_key() if self._key else None

    def public_key_pem(self) -> str | None:
        return public_key_pem(self._key) if self._key else None

    def append(self, drafts: EventDraft | Iterable[EventDraft]) -> list[AuditEvent]:
        """Append events to this store's chain; return them sealed, once committed.

        Raises :class:`AuditUnavailable` when the store cannot be written (nothing of
        this call is then stored) and :class:`AuditClosed` after :meth:`close`.
        """
        items = self._check(drafts)
        if not items:
            return []
        request = _Request(items)
        self._enqueue(request)
        if not request.wait(self.append_timeout):
            raise self._timed_out()
        if request.error is not None:
            raise request.error
        assert request.events is not None
        return request.events

    async def append_async(self, drafts: EventDraft | Iterable[EventDraft]) -> list[AuditEvent]:
        """:meth:`append` for asyncio code (the gateway's request handlers): same
        batching and guarantees, without parking a thread per caller."""
        items = self._check(drafts)
        if not items:
            return []
        request = _Request(items, loop=asyncio.get_running_loop())
        assert request.future is not None
        self._enqueue(request)
        try:
            return await asyncio.wait_for(request.future, self.append_timeout)
        except TimeoutError:
            raise self._timed_out() from None

    def _check(self, drafts: EventDraft | Iterable[EventDraft]) -> list[EventDraft]:
        items = [drafts] if isinstance(drafts, EventDraft) else list(drafts)
        for d in items:
            if not isinstance(d, EventDraft):
                raise TypeError(f"append() takes EventDraft objects, not {type(d).__name__}")
        if len(items) > 1 and len({d.event_id for d in items}) != len(items):
            raise ValueError("append() got the same event_id twice; build one draft per event")
        if self.read_only:
            raise AuditUnavailable(f"audit store {self.describe()} was opened read-only")
        return items

    def _enqueue(self, request: _Request) -> None:
        with self._state:
            if self._closing:
                raise AuditClosed(f"audit store {self.describe()} is closed")
            self._queue.put(request)

    def _timed_out(self) -> AuditUnavailable:
        # The batch may still commit later: the caller must treat the event as not
        # recorded (deny), and an extra record is harmless evidence.
        return AuditUnavailable(f"audit store {self.describe()} did not confirm the write within {self.append_timeout:.0f}s")

    def append_nowait(self, drafts: EventDraft | Iterable[EventDraft]) -> Callable[[float | None], list[AuditEvent]]:
        """Queue events for the writer and return at once, with a function that waits
        for their outcome (the sealed events, or the error).

        Order is kept: anything appended later commits after these, so a reader who
        appends first (``audit.read``) sees them. For records that need not be
        durable before the caller goes on, such as a query's completion.
        """
        items = self._check(drafts)
        request = _Request(items) if items else None
        if request is not None:
            self._enqueue(request)

        def result(timeout: float | None = None) -> list[AuditEvent]:
            if request is None:
                return []
            if not request.wait(self.append_timeout if timeout is None else timeout):
                raise self._timed_out()
            if request.error is not None:
                raise request.error
            assert request.events is not None
            return request.events

        return result

    def append_one(self, draft: EventDraft) -> AuditEvent:
        """``append([draft])[0]``."""
        return self.append([draft])[0]

    def checkpoint(self) -> Checkpoint | None:
        """Write a signed checkpoint of this chain's head now (None without a key or records)."""
        if self._key is None or self.read_only:
            return None
        request = _Request([], checkpoint=True)
        with self._state:
            if self._closing:
                raise AuditClosed(f"audit store {self.describe()} is closed")
            self._queue.put(request)  # behind everything queued: it covers all appended so far
        if not request.wait(self.append_timeout):
            raise AuditUnavailable(f"audit store {self.describe()} did not write the checkpoint within {self.append_timeout:.0f}s")
        if request.error is not None:
            raise request.error
        return request.signed

    def close(self) -> None:
        """Commit what is queued, write a final checkpoint, stop the writer. Idempotent."""
        with self._state:
            if self._closed or self._closing:
                return
            self._closing = True
            self._queue.put(_STOP)
        if self._writer is not None:
            self._writer.join()
        self._closed = True
        self._close_connections()

    def __enter__(self) -> AuditStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def describe(self) -> str:
        """The store's location without credentials (safe for messages)."""
        return redact_url(self.url)

    # ------------------------------------------------------------------ reading

    def query(
        self,
        *,
        since: dt.datetime | str | None = None,
        until: dt.datetime | str | None = None,
        types: str | Sequence[str] | None = None,
        subject: str | None = None,
        connection: str | None = None,
        session_id: str | None = None,
        chain_id: str | None = None,
        correlation_id: str | None = None,
        limit: int | None = 1000,
        order: Order = "newest",
    ) -> pa.Table:
        """Records matching every given filter, as an Arrow table (:data:`ARROW_SCHEMA`).

        ``since`` is inclusive, ``until`` exclusive. ``types`` takes event types or
        prefixes such as ``"query.*"``. ``order="newest"`` (default) sorts by
        ``event_time`` descending (then chain, seq descending): what an auditor
        browsing wants; ``order="seq"`` sorts by ``chain_id, seq`` ascending: chain
        order, what replay and export want. ``limit=None`` returns everything.
        """
        where, params = self._filters(since, until, types, subject, connection, session_id, chain_id, correlation_id)
        if order == "newest":
            order_by = "event_time DESC, chain_id, seq DESC"
        elif order == "seq":
            order_by = "chain_id, seq"
        else:
            raise ValueError(f"order must be 'newest' or 'seq', not {order!r}")
        sql = f"SELECT {COLUMN_LIST} FROM audit_events{where} ORDER BY {order_by}"
        if limit is not None:
            if limit < 0:
                raise ValueError("limit must be >= 0")
            sql += f" LIMIT {int(limit)}"
        return self._fetch_arrow(sql, params)

    def tail(self, n: int = 20) -> pa.Table:
        """The ``n`` newest records, newest first."""
        return self.query(limit=n, order="newest")

    def count(self, chain_id: str | None = None) -> int:
        sql = "SELECT count(*) AS n FROM audit_events"
        params: list[Any] = []
        if chain_id is not None:
            sql += f" WHERE chain_id = {self._ph}"
            params.append(chain_id)
        return int(self._fetch_rows(sql, params)[0]["n"])

    def chains(self) -> list[ChainHead]:
        """Heads of every chain in the store, by chain id."""
        rows = self._fetch_rows("SELECT chain_id, last_seq, last_hash, updated_at FROM audit_chains ORDER BY chain_id", [])
        return [
            ChainHead(r["chain_id"], int(r["last_seq"]), r["last_hash"], parse_time(r["updated_at"]) if r["updated_at"] else None)
            for r in rows
        ]

    def chain_ids(self) -> list[str]:
        """Chains that have records or a head (verify checks both)."""
        rows = self._fetch_rows("SELECT DISTINCT chain_id FROM audit_events UNION SELECT chain_id FROM audit_chains", [])
        return sorted(str(r["chain_id"]) for r in rows if r["chain_id"] is not None)

    def read_chain(self, chain_id: str, *, start_seq: int = 1, end_seq: int | None = None, page: int = 5000) -> Iterator[AuditEvent]:
        """Records of one chain in ``seq`` order (duplicates of a seq, if tampered, all of them)."""
        for rows in self._read_chain_pages(chain_id, start_seq, end_seq, page):
            for row in rows:
                yield AuditEvent.from_dict(row)

    def _read_chain_pages(self, chain_id: str, start_seq: int, end_seq: int | None, page: int) -> Iterator[list[dict[str, Any]]]:
        ph = self._ph
        nxt = start_seq
        while True:
            bound = f" AND seq <= {ph}" if end_seq is not None else ""
            params: list[Any] = [chain_id, nxt] + ([end_seq] if end_seq is not None else [])
            rows = self._fetch_rows(
                f"SELECT {COLUMN_LIST} FROM audit_events WHERE chain_id = {ph} AND seq >= {ph}{bound} "
                f"ORDER BY seq, event_id LIMIT {page}",
                params,
            )
            if len(rows) < page:
                if rows:
                    yield rows
                return
            last = rows[-1]["seq"]
            head = [r for r in rows if r["seq"] != last]
            if not head:  # one seq fills the page (tampered duplicates): take all of them
                yield self._fetch_rows(
                    f"SELECT {COLUMN_LIST} FROM audit_events WHERE chain_id = {ph} AND seq = {ph} ORDER BY event_id",
                    [chain_id, last],
                )
                nxt = last + 1
            else:
                yield head
                nxt = last

    def checkpoints(self, chain_id: str | None = None) -> list[Checkpoint]:
        """Checkpoints recorded in the store, by chain and seq."""
        where, params = "", []
        if chain_id is not None:
            where = f" WHERE chain_id = {self._ph}"
            params.append(chain_id)
        tail = where + " ORDER BY chain_id, seq, checkpoint_time"
        try:
            rows = self._fetch_rows("SELECT chain_id, seq, record_hash, checkpoint_time, key_id, signature, mark FROM audit_checkpoints" + tail, params)
        except AuditUnavailable:
            # A store written before checkpoint marks existed, opened read-only.
            rows = self._fetch_rows("SELECT chain_id, seq, record_hash, checkpoint_time, key_id, signature, '' AS mark FROM audit_checkpoints" + tail, params)
        return [
            Checkpoint(r["chain_id"], int(r["seq"]), r["record_hash"], parse_time(r["checkpoint_time"]), r["key_id"], r["signature"], str(r["mark"] or ""))
            for r in rows
        ]

    def stored_public_keys(self) -> dict[str, str]:
        """key_id -> PEM of keys the store says signed its checkpoints (not a trust anchor)."""
        return {r["key_id"]: r["public_key"] for r in self._fetch_rows("SELECT key_id, public_key FROM audit_keys", [])}

    def _filters(
        self,
        since: dt.datetime | str | None,
        until: dt.datetime | str | None,
        types: str | Sequence[str] | None,
        subject: str | None,
        connection: str | None,
        session_id: str | None,
        chain_id: str | None,
        correlation_id: str | None,
    ) -> tuple[str, list[Any]]:
        ph = self._ph
        clauses: list[str] = []
        params: list[Any] = []
        if since is not None:
            clauses.append(f"event_time >= {ph}")
            params.append(parse_time(since))
        if until is not None:
            clauses.append(f"event_time < {ph}")
            params.append(parse_time(until))
        if types is not None:
            wanted = [types] if isinstance(types, str) else list(types)
            alts = []
            for t in wanted:
                if t.endswith("*"):
                    alts.append(f"type LIKE {ph}")
                    params.append(t[:-1].replace("%", r"\%").replace("_", r"\_") + "%")
                else:
                    alts.append(f"type = {ph}")
                    params.append(t)
            clauses.append("(" + (" OR ".join(alts) or "FALSE") + ")")
        for column, value in (("subject", subject), ("connection", connection), ("session_id", session_id), ("chain_id", chain_id), ("correlation_id", correlation_id)):
            if value is not None:
                clauses.append(f"{q(column)} = {ph}")
                params.append(value)
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), params

    # ------------------------------------------------------------------ writer thread
    #
    # One thread takes every queued request, seals the records after the chain head,
    # builds the backend's payload (Arrow table / COPY rows) and commits it in one
    # transaction, then wakes the callers. (A two-stage sealer/committer pipeline was
    # measured too: under the GIL it only overlaps the database wait, and it halves
    # the batches, which costs more than it saves; see docs/audit.md.)

    def _run(self) -> None:
        held: _Request | None = None  # a checkpoint/stop request that ended the previous batch
        while True:
            if held is not None:
                first, held = held, None
            else:
                # Wake up for time-based checkpoints: with a key, at least once an interval
                # (never spinning: 50 ms at least); without one, only for requests.
                wait = None
                if self._key is not None:
                    due = self._checkpoint_wait()
                    wait = max(0.05, self.checkpoint_interval if due is None else due)
                try:
                    first = self._queue.get(timeout=wait)
                except queue.Empty:
                    self._dispatch(_Batch([], kind="tick"))  # the checkpoint interval may have elapsed
                    continue
            if first is _STOP or first.checkpoint:
                if self._dispatch(_Batch([first], kind="stop" if first is _STOP else "checkpoint")):
                    return
                continue
            batch = [first]
            size = len(first.drafts)
            # When the last batch had several callers, they are about to come back (each
            # woke up, built its next event and is re-queueing): linger while requests
            # keep arriving so one transaction carries them all. A lone caller never waits.
            # Lingering pays off only against a costly commit: spend at most half of
            # what the last one took (DuckDB's ~3 ms, PostgreSQL's ~0.5 ms), capped.
            linger = self.gather_window if self._last_batch_callers > 1 else 0.0
            deadline = time.monotonic() + min(self.gather_max, self._last_commit / 2)
            while size < self.max_batch:
                try:
                    nxt = self._queue.get(timeout=linger) if linger and time.monotonic() < deadline else self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt.checkpoint or nxt is _STOP:
                    held = nxt
                    break
                batch.append(nxt)
                size += len(nxt.drafts)
            self._last_batch_callers = len(batch)
            item = _Batch(batch, kind="append")
            try:
                self._prepare(item, self._committed_head)
            except Exception as exc:  # pragma: no cover - sealing is pure Python over validated drafts
                log.exception("audit writer: cannot seal a batch")
                item.events = None
                item.error = exc
            self._dispatch(item)

    def _prepare(self, item: _Batch, head: tuple[int, str]) -> None:
        """Seal the batch after ``head`` and build its payload (no database access)."""
        now = utcnow()
        if self._last_time is not None and now < self._last_time:
            now = self._last_time  # the clock stepped back: keep event_time monotonic along the chain
        self._last_time = now
        drafts = item.requests[0].drafts if len(item.requests) == 1 else [d for r in item.requests for d in r.drafts]
        item.base = head
        item.now = now
        item.events, canonicals = self._seal_batch(head[0], head[1], drafts, now)
        item.payload = self._payload(item.events, canonicals)

    def _dispatch(self, item: _Batch) -> bool:
        """Carry out one item; wake its callers. True when the writer should stop."""
        try:
            if item.kind == "append":
                self._commit_item(item)
            elif item.kind == "checkpoint":
                request = item.requests[0]
                try:
                    request.signed = self._write_checkpoint_now(raise_errors=True)
                except AuditUnavailable as exc:
                    request.error = exc
            elif item.kind == "tick":
                if self._since_checkpoint and self._checkpoint_wait() == 0.0:
                    self._write_checkpoint_now()
            else:  # stop
                if self._key is not None:
                    # Always, even with nothing new since the last one: a ``close``
                    # checkpoint tells verify the chain ends here (clean shutdown).
                    self._write_checkpoint_now(mark="close")
                self._finish()
                return True
        except Exception:  # pragma: no cover - a bug; keep the writer alive, callers get errors
            log.exception("audit writer: unexpected error")
            for r in item.requests:
                if r.events is None and r.error is None and not r.checkpoint:
                    r.error = AuditUnavailable("audit writer failed unexpectedly; see the gateway log")
        finally:
            _wake([r for r in item.requests if r is not _STOP])
        return False

    def _commit_item(self, item: _Batch) -> None:
        try:
            if item.events is None:
                raise item.error or AuditUnavailable("the batch could not be sealed")
            started = time.monotonic()
            events, cp = self._commit_or_raise(item)
            self._last_commit = time.monotonic() - started
        except Exception as exc:
            self.stats.failed_batches += 1
            error = exc if isinstance(exc, AuditUnavailable) else AuditUnavailable(f"audit writer failed: {_first_line(exc)}")
            if error.__cause__ is not None and not self._is_outage(error.__cause__) and len(item.requests) > 1:
                self._isolate(item)  # one caller's bad data must not fail the others
            else:
                for r in item.requests:
                    r.error = error
            return
        self._committed(events, cp)
        start = 0
        for r in item.requests:
            end = start + len(r.drafts)
            r.events = events[start:end]
            start = end

    def _isolate(self, item: _Batch) -> None:
        for r in item.requests:
            single = _Batch([r], kind="append")
            try:
                self._prepare(single, self._committed_head)
                events, cp = self._commit_or_raise(single)
            except AuditUnavailable as exc:
                r.error = exc
                continue
            self._committed(events, cp)
            r.events = events

    def _commit_or_raise(self, item: _Batch) -> tuple[list[AuditEvent], Checkpoint | None]:
        try:
            self._ensure_writer()
            if item.base != self._committed_head:
                self._reseal(item, self._committed_head)
            cp = self._commit(item, self._checkpoint_for)
            assert item.events is not None
            last = item.events[-1]
            self._committed_head = (last.seq, last.record_hash)
            return item.events, cp
        except AuditUnavailable:
            raise
        except Exception as exc:
            self._writer_failed(exc)
            raise AuditUnavailable(
                f"audit store {self.describe()} cannot be written ({type(exc).__name__}: {_first_line(exc)}); "
                "nothing of this batch was stored"
            ) from exc

    def _checkpoint_for(self, item: _Batch) -> Checkpoint | None:
        """The checkpoint to write with this batch, if one is due (called by _commit
        once the batch's final seq is known)."""
        assert item.events is not None
        if not self._checkpoint_due(len(item.events)):
            return None
        last = item.events[-1]
        return self._sign(last.seq, last.record_hash, item.now)

    def _reseal(self, item: _Batch, head: tuple[int, str]) -> None:
        """Seal the batch again after ``head`` (the backend found the chain moved)."""
        self._prepare(item, head)

    def _committed(self, events: list[AuditEvent], cp: Checkpoint | None) -> None:
        self.stats.events += len(events)
        self.stats.batches += 1
        self.stats.largest_batch = max(self.stats.largest_batch, len(events))
        self._since_checkpoint += len(events)
        if cp is not None:
            self._checkpoint_written(cp)

    def _checkpoint_wait(self) -> float | None:
        if self._key is None or not self._since_checkpoint:
            return None
        return max(0.0, self._last_checkpoint + self.checkpoint_interval - time.monotonic())

    def _checkpoint_written(self, cp: Checkpoint) -> None:
        self.stats.checkpoints += 1
        self._since_checkpoint = 0
        self._last_checkpoint = time.monotonic()
        if self.checkpoint_file is not None:
            try:
                append_checkpoint_file(self.checkpoint_file, cp)
            except OSError as exc:
                # The table copy is written; losing the second copy weakens truncation
                # evidence but must not stop the audit trail itself.
                log.error("cannot append checkpoint to %s: %s", self.checkpoint_file, exc)

    def _seal_batch(self, head_seq: int, head_hash: str, drafts: Sequence[EventDraft], now: dt.datetime) -> tuple[list[AuditEvent], list[bytes]]:
        """Assign seq and hashes after the given head: the records, and the canonical
        bytes each record's hash covers."""
        return seal_many(drafts, chain_id=self.chain_id, seq=head_seq, prev_hash=head_hash, now=now)

    def _checkpoint_due(self, added: int) -> bool:
        if self._key is None:
            return False
        return self._since_checkpoint + added >= self.checkpoint_every or (
            time.monotonic() - self._last_checkpoint >= self.checkpoint_interval
        )

    def _sign(self, seq: int, record_hash: str, now: dt.datetime, mark: str = "") -> Checkpoint:
        assert self._key is not None
        return sign_checkpoint(self._key, self.chain_id, seq, record_hash, now, mark)

    def _write_checkpoint_now(self, *, raise_errors: bool = False, mark: str = "") -> Checkpoint | None:
        if self._key is None:
            return None
        try:
            self._ensure_writer()
            cp = self._commit_checkpoint(utcnow(), mark)
        except Exception as exc:
            self._writer_failed(exc)
            message = f"cannot write an audit checkpoint to {self.describe()}: {_first_line(exc)}"
            if raise_errors:
                raise AuditUnavailable(message) from exc
            log.error("%s", message)
            return None
        if cp is not None:
            self._checkpoint_written(cp)
        return cp

    def _key_row(self) -> tuple[str, str] | None:
        return (key_id(self._key), public_key_pem(self._key)) if self._key else None

    # ------------------------------------------------------------------ backend hooks

    @abstractmethod
    def _open_writer(self) -> None:
        """Connect the writer, create the schema, make sure this chain has a head row,
        and set ``_committed_head``. Raise AuditUnavailable with a clear message when the
        store cannot be opened."""

    @abstractmethod
    def _ensure_writer(self) -> None:
        """Reconnect the writer if an earlier failure dropped it."""

    @abstractmethod
    def _writer_failed(self, exc: BaseException) -> None:
        """A write failed: roll back and drop the connection if it may be broken."""

    @abstractmethod
    def _payload(self, events: list[AuditEvent], canonicals: list[bytes]) -> Any:
        """The records in the form the backend inserts or journals (built before the
        transaction); ``canonicals`` are the bytes each record's hash covers."""

    @abstractmethod
    def _commit(self, item: _Batch, checkpoint_for: Callable[[_Batch], Checkpoint | None]) -> Checkpoint | None:
        """One transaction: lock the head (re-sealing the batch with ``_reseal`` if it
        is not ``item.base``), insert ``item.payload``, insert ``checkpoint_for(item)``
        if not None, move the head, commit. Return the checkpoint written."""

    @abstractmethod
    def _commit_checkpoint(self, now: dt.datetime, mark: str = "") -> Checkpoint | None:
        """One transaction: lock head, sign it (with ``mark``), insert the checkpoint, commit."""

    @abstractmethod
    def _is_outage(self, exc: BaseException) -> bool:
        """Whether an error means the store is unreachable/unwritable (vs. bad data)."""

    def _finish(self) -> None:  # noqa: B027 - optional hook, empty by default
        """Last words of the writer thread before close (after the final checkpoint)."""

    @abstractmethod
    def _fetch_rows(self, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        """Run a read-only query on a reader connection."""

    @abstractmethod
    def _fetch_arrow(self, sql: str, params: Sequence[Any]) -> pa.Table:
        """Run a read-only query returning audit_events columns as ARROW_SCHEMA."""

    @abstractmethod
    def _close_connections(self) -> None:
        """Close every connection (after the writer threads stopped)."""


# --------------------------------------------------------------------------- helpers


def default_chain_id() -> str:
    """The host name: stable across restarts of one gateway, distinct between replicas."""
    return socket.gethostname() or "warden"


def redact_url(url: str) -> str:
    """A store URL with any password removed."""
    if "://" in url and "@" in url.split("://", 1)[1].split("/", 1)[0]:
        scheme, rest = url.split("://", 1)
        creds, host = rest.split("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}" if ":" in creds else f"{scheme}://{user}@{host}"
    return url


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


_get_fields = attrgetter(*FIELDS)
_JSON_COLUMNS = tuple((i, name) for i, name in enumerate(FIELDS) if FIELD_KINDS[name] == "json")


def record_rows(events: Sequence[AuditEvent]) -> list[list[Any]]:
    """Records as rows in FIELDS order, JSON fields as their canonical text."""
    rows = []
    for ev in events:
        row = list(_get_fields(ev))
        texts = json_texts(ev)
        for i, name in _JSON_COLUMNS:
            row[i] = texts.get(name)
        rows.append(row)
    return rows


def arrow_table(events: Sequence[AuditEvent]) -> pa.Table:
    """Records as an Arrow table in :data:`ARROW_SCHEMA` (JSON fields as canonical text)."""
    columns = list(zip(*record_rows(events), strict=True)) if events else [() for _ in FIELDS]
    return pa.Table.from_arrays(
        [pa.array(col, type=f.type) for col, f in zip(columns, ARROW_SCHEMA, strict=True)], schema=ARROW_SCHEMA
    )


def _warm_up() -> None:
    # pyarrow initialises its timezone support on the first tz-aware conversion (~0.2 s
    # here); pay that when the store opens, not in the first caller's append.
    pa.array([utcnow()], type=pa.timestamp("us", tz="UTC"))


def rows_to_arrow(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=ARROW_SCHEMA)


StoreFactory = Callable[..., AuditStore]
