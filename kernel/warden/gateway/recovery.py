"""Closing the intents a killed gateway left open, when it starts again.

A gateway that dies mid-query (SIGKILL, a crash, a lost host) leaves the query's intent
(``query.submitted``) without a completion. When it starts again on the same chain it
appends, for each such intent, a ``query.failed`` record with the same correlation and
query id saying what is known: the process stopped while the query ran, and whether
the database finished it is unknown. So the chain stays exact (every intent has an
outcome) and ``warden audit verify`` no longer has to guess. Only the records after
the chain's last ``close`` checkpoint are read: a clean stop drains every query first.
"""

from __future__ import annotations

import sys
from typing import Any, Final

from warden.audit.record import DRAFT_FIELDS, EventDraft

__all__ = ["close_interrupted"]

_INTENT: Final = "query.submitted"
_COMPLETIONS: Final = frozenset({"query.executed", "query.failed"})
_KEEP: Final = frozenset(DRAFT_FIELDS) - {"event_id", "event_time", "type", "status", "error", "action", "rows", "bytes",
                                         "duration_ms", "result_fingerprint", "capture_ref", "parent_event_id"}  # fmt: skip
INTERRUPTED: Final = (
    "interrupted: the gateway process stopped (killed or crashed) while this query ran; "
    "whether the database finished it is unknown. Check the database before running it again."
)


#: Records read back at most: the intents a crash left open are among the last ones
#: (a local gateway that is never stopped cleanly must not read its whole history).
SCAN_LIMIT: Final = 50_000


def close_interrupted(store: Any, chain_id: str, *, gateway_id: str, warden_version: str) -> int:
    """Append a ``query.failed`` for every open intent of ``chain_id``; return how many.

    Best effort: a store it cannot read back (damaged, tampered with) is reported by
    ``warden audit verify``, not by refusing to start, so nothing is recorded then."""
    try:
        drafts = _closing_records(store, chain_id, gateway_id=gateway_id, warden_version=warden_version)
    except Exception as exc:
        print(f"warden gateway {gateway_id}: could not look for intents left open by an earlier stop "
              f"({type(exc).__name__}); run `warden audit verify`", file=sys.stderr, flush=True)  # fmt: skip
        return 0
    if drafts:
        store.append(drafts)
    return len(drafts)


def _closing_records(store: Any, chain_id: str, *, gateway_id: str, warden_version: str) -> list[EventDraft]:
    closes = [cp.seq for cp in store.checkpoints(chain_id) if cp.mark == "close"]
    head = next((h.last_seq for h in store.chains() if h.chain_id == chain_id), 0)
    start = max(max(closes) + 1 if closes else 1, head - SCAN_LIMIT + 1, 1)
    open_: dict[str, Any] = {}
    balance: dict[str, int] = {}
    for rec in store.read_chain(chain_id, start_seq=start):
        key = rec.correlation_id
        if not key or (rec.type != _INTENT and rec.type not in _COMPLETIONS):
            continue
        balance[key] = balance.get(key, 0) + (1 if rec.type == _INTENT else -1)
        if rec.type == _INTENT:
            open_[key] = rec
        if balance[key] <= 0:
            balance.pop(key)
            open_.pop(key, None)
    drafts: list[EventDraft] = []
    for key, rec in open_.items():
        data = {f: getattr(rec, f) for f in _KEEP if getattr(rec, f, None) not in (None, "")}
        data.update(type="query.failed", status="failure", error=INTERRUPTED, parent_event_id=rec.event_id,
                    gateway_id=gateway_id, warden_version=warden_version)  # fmt: skip
        drafts.extend(EventDraft(**data) for _ in range(balance.get(key, 1)))
    return drafts
