"""``verify``: recompute every chain and say precisely what is wrong, and where.

For each chain, records are read in ``seq`` order and each one is recomputed:
``sha256(prev_hash || canonical(record))`` must equal its ``record_hash``, and its
``prev_hash`` must be the ``record_hash`` of the record that originally preceded it.
Each record gets an *original seq*: its own when its hash verifies; otherwise the seq
at which its hash does verify, found by following its ``prev_hash`` to a record seen
earlier (or trying its neighbours). That separates the kinds of tampering:

==================== ===========================================================
kind                 what it means (``seq`` names where)
==================== ===========================================================
edited               a record's content no longer matches its hash, or a record
                     was rewritten with a recomputed hash (its successor links to
                     a different hash)
deleted              seq N..M are missing (a gap), or records were removed and the
                     later ones renumbered to hide the gap
inserted             a duplicate seq, a copy of another record, or records placed
                     into the chain (later records renumbered to make room)
reordered            intact records sit at the wrong seq (prev_hash link broken
                     between N and N+1)
truncated            the chain ends before seq a signed checkpoint (or its head
                     row) says it reached
checkpoint_mismatch  the record at a checkpoint's seq has another hash than the
                     checkpoint signed: the chain was rewritten up to there
bad_signature        a checkpoint or segment manifest is not validly signed by
                     the trusted key
segment_modified     an exported data file differs from its manifest
checkpoint_missing   a checkpoint of the external file (the copy kept outside the
                     store) is not in the store: checkpoints were deleted there
unsealed             records after the last signed checkpoint, when the chain was
                     closed cleanly (a signed ``close`` checkpoint), when a signed
                     chain has no valid checkpoint at all (every writer signs
                     ``open`` when it starts), or under ``strict``; otherwise the
                     tail is only a warning (a running or crashed gateway has one)
head_mismatch        the chain-head row is behind the last record where it must
                     not be (PostgreSQL, or a chain closed cleanly): records were
                     appended without the gateway
incomplete           a query's intent (``query.submitted``) has no completion
                     (``query.executed`` / ``query.failed``) with its
                     ``correlation_id`` in the same chain: an error under
                     ``strict`` or after a clean close, otherwise a warning (a
                     gateway killed mid-query leaves exactly that)
==================== ===========================================================

A chain that was rewritten from some record onwards *with all hashes recomputed* is
self-consistent; only a signed checkpoint taken before the rewrite (kept outside the
store) reveals it. That is what checkpoints are for.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from warden.audit.checkpoint import (
    Checkpoint,
    iter_checkpoints,
    key_id,
    load_public_key,
    read_checkpoint_file,
    verify_manifest_signature,
)
from warden.audit.errors import AuditConfigError
from warden.audit.export import MANIFEST_SUFFIX, _sha256, load_manifests, read_segment_rows
from warden.audit.record import AuditEvent, genesis_hash
from warden.audit.store import AuditStore
from warden.audit.stores import open_store

#: Records remembered (by hash) to recognise moved records; a record moved further
#: than this is reported as edited rather than reordered.
WINDOW = 100_000

#: How far a record may have been renumbered and still be recognised as moved.
SEARCH = 32

_INTENT_TYPES = frozenset({"query.submitted", "query.executed", "query.failed"})

KINDS = (
    "edited",
    "deleted",
    "inserted",
    "reordered",
    "truncated",
    "checkpoint_mismatch",
    "bad_signature",
    "segment_modified",
    "checkpoint_missing",
    "unsealed",
    "head_mismatch",
    "incomplete",
)


@dataclass(frozen=True)
class Issue:
    """One problem: its kind (see module doc), the chain and the seq (range) it concerns."""

    kind: str
    chain_id: str
    seq: int | None
    message: str
    seq_end: int | None = None

    def __str__(self) -> str:
        where = "" if self.seq is None else f" seq {self.seq}" + (f"..{self.seq_end}" if self.seq_end not in (None, self.seq) else "")
        return f"{self.kind}: chain {self.chain_id}{where}: {self.message}"


@dataclass
class ChainSummary:
    chain_id: str
    records: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    last_hash: str | None = None
    checkpoints_ok: int = 0
    sealed_seq: int | None = None  # seq of the last valid checkpoint
    unsealed: int = 0  # records after it
    closed: bool = False  # the last valid checkpoint is a clean-close one
    incomplete: int = 0  # query intents without a completion


@dataclass
class VerifyReport:
    """Outcome of :func:`verify`. ``ok`` is True when no issue was found."""

    source: str
    issues: list[Issue] = field(default_factory=list)
    chains: dict[str, ChainSummary] = field(default_factory=dict)
    checkpoints_checked: int = 0
    signatures_checked: bool = False
    warnings: list[str] = field(default_factory=list)
    trusted_key_id: str | None = None
    strict: bool = False

    @property
    def ok(self) -> bool:
        return not self.issues

    @property
    def records(self) -> int:
        return sum(c.records for c in self.chains.values())

    def find(self, kind: str | None = None, seq: int | None = None, chain_id: str | None = None) -> list[Issue]:
        """Issues of ``kind`` whose seq range covers ``seq`` (any if None)."""
        out = []
        for i in self.issues:
            if kind is not None and i.kind != kind:
                continue
            if chain_id is not None and i.chain_id != chain_id:
                continue
            if seq is not None and (i.seq is None or not i.seq <= seq <= (i.seq_end if i.seq_end is not None else i.seq)):
                continue
            out.append(i)
        return out

    def format(self) -> str:
        head = "OK" if self.ok else f"FAILED: {len(self.issues)} problem(s)"
        lines = [f"audit verify {self.source}: {head}"]
        for c in self.chains.values():
            span = f"seq {c.first_seq}..{c.last_seq}" if c.records else "empty"
            sealed = "no signed checkpoint" if c.sealed_seq is None else f"sealed to seq {c.sealed_seq}{' (closed cleanly)' if c.closed else ''}"
            lines.append(f"  chain {c.chain_id}: {c.records} record(s), {span}, {c.checkpoints_ok} checkpoint(s) ok, {sealed}, {c.unsealed} unsealed"
                         + (f", {c.incomplete} query intent(s) without a completion" if c.incomplete else ""))  # fmt: skip
        key = f" with key {self.trusted_key_id}" if self.trusted_key_id else ""
        lines.append(f"  checkpoints checked: {self.checkpoints_checked}; signatures {'verified' + key if self.signatures_checked else 'NOT verified'}")
        lines += [f"  warning: {w}" for w in self.warnings]
        lines += [f"  {i}" for i in self.issues]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "ok": self.ok,
            "records": self.records,
            "issues": [asdict(i) for i in self.issues],
            "chains": {k: asdict(v) for k, v in self.chains.items()},
            "checkpoints_checked": self.checkpoints_checked,
            "signatures_checked": self.signatures_checked,
            "trusted_key_id": self.trusted_key_id,
            "strict": self.strict,
            "unsealed": sum(c.unsealed for c in self.chains.values()),
            "warnings": list(self.warnings),
        }


# --------------------------------------------------------------------------- entry point


CheckpointSource = str | Path | Iterable[Checkpoint] | Iterable[str | Path]


def verify(
    store_or_url: AuditStore | str | Path,
    *,
    checkpoints: CheckpointSource | None = None,
    public_key: Ed25519PublicKey | str | bytes | Path | None = None,
    strict: bool = False,
) -> VerifyReport:
    """Verify a store (object or URL) or a directory/manifest of exported segments.

    ``checkpoints``: JSONL checkpoint file(s) (the copy kept outside the store) or
    Checkpoint objects; the store's own checkpoint table is always used too, and every
    external checkpoint must also be in the store.
    ``public_key``: the trusted checkpoint/manifest key (PEM text/bytes/file or key).
    Without it, keys recorded in the store are used and the report says so.
    ``strict``: records after the last signed checkpoint are an error even when the
    chain was not closed cleanly (use it on a stopped gateway's store).
    """
    key = load_public_key(public_key) if public_key is not None else None
    extra = _load_checkpoints(checkpoints)
    if isinstance(store_or_url, AuditStore):
        return _verify_store(store_or_url, extra, key, strict=strict)
    path = Path(store_or_url) if not str(store_or_url).startswith(("duckdb://", "postgresql://", "postgres://")) else None
    if path is not None and (path.is_dir() or path.name.endswith(".manifest.json")):
        return verify_segments(path, checkpoints=extra, public_key=key)
    store = open_store(store_or_url, read_only=True)
    try:
        return _verify_store(store, extra, key, strict=strict)
    finally:
        store.close()


def _load_checkpoints(checkpoints: CheckpointSource | None) -> list[Checkpoint]:
    if checkpoints is None:
        return []
    if isinstance(checkpoints, str | Path):
        return read_checkpoint_file(checkpoints)
    out: list[Checkpoint] = []
    for item in checkpoints:
        if isinstance(item, Checkpoint):
            out.append(item)
        else:  # several files: one per replica, or rotated copies
            out.extend(read_checkpoint_file(item))
    return out


def _verify_store(store: AuditStore, extra: list[Checkpoint], key: Ed25519PublicKey | None, *, strict: bool = False) -> VerifyReport:
    report = VerifyReport(source=store.describe(), strict=strict)
    stored = store.checkpoints()
    cps = list(iter_checkpoints(stored + extra))
    keys = _trusted_keys(report, key, store.stored_public_keys() if cps else {})
    good = _check_signatures(report, cps, keys)
    _check_external(report, stored, extra, good)
    # Heads are read before the walk (a live writer only moves them forward, so a head
    # beyond the last record read is a truncation) and again after it (a head behind
    # the last record read is then an append that bypassed the gateway).
    heads = {h.chain_id: h for h in store.chains()}
    chains = sorted(set(store.chain_ids()) | {cp.chain_id for cp in good})
    checkers: dict[str, ChainChecker] = {}
    signed = bool(keys)  # a trusted key, or the store says a key signed it
    for chain_id in chains:
        chain_cps = [cp for cp in good if cp.chain_id == chain_id]
        wanted = {cp.seq for cp in chain_cps}
        rows = (row for page in store._read_chain_pages(chain_id, 1, None, 5000) for row in page)
        checker = ChainChecker(chain_id, report, start_seq=1, start_prev=genesis_hash(chain_id), capture=wanted)
        checker.run(rows)
        checkers[chain_id] = checker
        head = heads.get(chain_id)
        if head is not None:
            checker.check_head(head.last_seq, head.last_hash)
        _check_checkpoints(report, checker, chain_cps)
        _check_tail(report, checker, chain_cps, strict=strict, signed=signed)
        _check_incomplete(report, checker, strict=strict)
    heads_after = {h.chain_id: h for h in store.chains()}
    for chain_id, checker in checkers.items():
        head = heads_after.get(chain_id)
        if head is not None and (store.exact_head or checker.summary.closed):
            checker.check_head_behind(head.last_seq)
    report.issues.sort(key=lambda i: (i.chain_id, i.seq if i.seq is not None else -1, KINDS.index(i.kind) if i.kind in KINDS else 99))
    return report


def _check_external(report: VerifyReport, stored: list[Checkpoint], extra: list[Checkpoint], good: list[Checkpoint]) -> None:
    """Every validly signed checkpoint of the outside copy must be in the store too:
    the store gets each one first (the file is appended after the commit)."""
    if not extra:
        return
    have = {(cp.chain_id, cp.seq, cp.signature) for cp in stored}
    valid = {(cp.chain_id, cp.seq, cp.signature) for cp in good}
    missing = [cp for cp in iter_checkpoints(extra) if (cp.chain_id, cp.seq, cp.signature) in valid - have]
    for cp in missing:
        what = f"{cp.mark} checkpoint" if cp.mark else "checkpoint"
        report.issues.append(
            Issue(
                "checkpoint_missing",
                cp.chain_id,
                cp.seq,
                f"the {what} signed at {cp.time.isoformat()} for seq {cp.seq} is in the external checkpoint file "
                "but not in the store: checkpoints were deleted from the store",
            )
        )


def _check_incomplete(report: VerifyReport, checker: ChainChecker, *, strict: bool) -> None:
    """Intents whose completion never reached the store (a crash mid-query)."""
    open_ = checker.intents
    checker.summary.incomplete = sum(n for n, _ in open_.values())
    if not open_:
        return
    first = min(seq for _, seq in open_.values())
    names = ", ".join(sorted(open_)[:5]) + (" ..." if len(open_) > 5 else "")
    message = f"{checker.summary.incomplete} query intent(s) have no completion record (correlation ids {names})"
    if strict or checker.summary.closed:
        report.issues.append(Issue("incomplete", checker.chain_id, first, message))
    else:
        report.warnings.append(f"chain {checker.chain_id}: {message}; a gateway that stopped mid-query leaves these")


def _check_tail(report: VerifyReport, checker: ChainChecker, cps: list[Checkpoint], *, strict: bool, signed: bool = False) -> None:
    """Records after the last valid checkpoint: no signature covers them yet.

    With a signing key, a chain with records but no valid checkpoint at all is an error
    even without ``strict``: every signing writer signs ``open`` when it starts a chain
    (at seq 0 for a new one), so its checkpoints were deleted (or forged)."""
    summary = checker.summary
    last = checker.last_seq or 0
    final = max(cps, key=lambda c: (c.seq, c.time), default=None)
    summary.sealed_seq = final.seq if final is not None else None
    summary.closed = final is not None and final.mark == "close"
    sealed = final.seq if final is not None else 0
    summary.unsealed = max(0, last - sealed)
    if not summary.unsealed:
        return
    first = sealed + 1
    n = summary.unsealed
    if summary.closed:
        assert final is not None
        checker._issue(
            "unsealed",
            first,
            f"{n} record(s) after seq {sealed}, where the gateway closed the chain cleanly (signed close checkpoint at "
            f"{final.time.isoformat()}), and no gateway signed it open again: they were appended afterwards, not by the gateway",
            last,
        )
    elif final is None and signed:
        checker._issue(
            "unsealed",
            first,
            f"{n} record(s) and not one valid signed checkpoint, although every signing gateway signs an open checkpoint "
            "when it starts a chain: the chain's checkpoints were deleted or replaced",
            last,
        )
    elif strict:
        where = f"the last signed checkpoint (seq {sealed})" if final is not None else "the start: no signed checkpoint covers this chain"
        checker._issue("unsealed", first, f"{n} record(s) after {where} are not covered by any signature (--strict)", last)
    else:
        report.warnings.append(
            f"chain {checker.chain_id}: {n} record(s) (seq {first}..{last}) after the last signed checkpoint are unsealed; "
            "normal while its gateway runs or after a crash. Stop the gateway cleanly and verify with --strict to cover them"
        )


def _trusted_keys(report: VerifyReport, key: Ed25519PublicKey | None, stored: Mapping[str, str]) -> dict[str, Ed25519PublicKey]:
    if key is not None:
        report.signatures_checked = True
        report.trusted_key_id = key_id(key)
        return {key_id(key): key}
    if stored:
        report.warnings.append(
            "no --public-key given: checkpoint signatures were checked against keys recorded in the store itself, "
            "which an attacker with write access could have replaced"
        )
        out = {}
        for kid, pem in stored.items():
            try:
                out[kid] = load_public_key(pem)
            except AuditConfigError:
                report.warnings.append(f"key {kid} recorded in the store cannot be read")
        report.signatures_checked = bool(out)
        return out
    return {}


def _check_signatures(report: VerifyReport, cps: list[Checkpoint], keys: Mapping[str, Ed25519PublicKey]) -> list[Checkpoint]:
    """Checkpoints whose signature holds (all of them when no key is available)."""
    if not keys:
        if cps:
            report.warnings.append(f"{len(cps)} checkpoint(s) compared without checking signatures (no public key)")
        return cps
    good = []
    for cp in cps:
        k = keys.get(cp.key_id)
        if k is None:
            trusted = ", ".join(sorted(keys))
            report.issues.append(
                Issue("bad_signature", cp.chain_id, cp.seq, f"checkpoint signed by key {cp.key_id or '(none)'}, which is not the trusted key ({trusted})")
            )
        elif not cp.verify(k):
            report.issues.append(Issue("bad_signature", cp.chain_id, cp.seq, f"checkpoint signature is invalid (key {cp.key_id}); it was forged or altered"))
        else:
            good.append(cp)
    return good


def _check_checkpoints(report: VerifyReport, checker: ChainChecker, cps: list[Checkpoint]) -> None:
    summary = report.chains.setdefault(checker.chain_id, ChainSummary(checker.chain_id))
    failed: set[int] = set()  # one issue per seq (a periodic and a close checkpoint may share one)
    for cp in sorted(cps, key=lambda c: c.seq):
        report.checkpoints_checked += 1
        last = checker.last_seq
        if cp.seq in failed:
            continue
        if cp.seq == 0:  # a writer started the chain: it signed the genesis, no record
            if cp.record_hash == genesis_hash(checker.chain_id):
                summary.checkpoints_ok += 1
            else:
                failed.add(0)
                report.issues.append(Issue("checkpoint_mismatch", cp.chain_id, 0, "the checkpoint at seq 0 does not sign this chain's genesis"))
            continue
        if last is None or cp.seq > last:
            failed.add(cp.seq)
            start = (last or 0) + 1
            report.issues.append(
                Issue(
                    "truncated",
                    cp.chain_id,
                    start,
                    f"a checkpoint signed at {cp.time.isoformat()} says the chain reached seq {cp.seq}, "
                    f"but it ends at {last if last is not None else 'nothing'}: records {start}..{cp.seq} (at least) are gone",
                    seq_end=cp.seq,
                )
            )
        elif checker.captured.get(cp.seq) != cp.record_hash:
            failed.add(cp.seq)
            report.issues.append(
                Issue(
                    "checkpoint_mismatch",
                    cp.chain_id,
                    cp.seq,
                    f"the record at seq {cp.seq} has hash {str(checker.captured.get(cp.seq))[:16]}..., the checkpoint signed "
                    f"{cp.record_hash[:16]}...: the chain was altered (rewritten or renumbered) at or before this seq",
                )
            )
        else:
            summary.checkpoints_ok += 1


# --------------------------------------------------------------------------- chain walk


def _hash_as(record: AuditEvent, seq: int) -> str | None:
    """The record's hash if it had been written at ``seq`` (None if unhashable)."""
    clone = object.__new__(AuditEvent)
    clone.__dict__.update(record.__dict__)
    clone.__dict__["seq"] = seq
    try:
        return clone.compute_hash()
    except Exception:  # tampered values (NaN, bad JSON) cannot be hashed: not intact
        return None


class ChainChecker:
    """Walks one chain in seq order, keeping O(WINDOW) memory, and files issues."""

    def __init__(self, chain_id: str, report: VerifyReport, *, start_seq: int, start_prev: str, capture: Iterable[int] = ()) -> None:
        self.chain_id = chain_id
        self.report = report
        self.summary = report.chains.setdefault(chain_id, ChainSummary(chain_id))
        self.start_seq = start_seq
        self.start_prev = start_prev
        self.expected = start_seq
        self.by_hash: OrderedDict[str, int] = OrderedDict()  # record_hash -> original seq
        self.flagged: set[int] = set()  # seqs that already have an issue
        self.region: list[tuple[int, int]] = []  # consecutive displaced records: (seq, original seq)
        self.capture = set(capture)
        self.captured: dict[int, str] = {}
        self.last_seq: int | None = None
        self.last_hash: str | None = None
        self.streak = False  # the previous record was edited (unexplained)
        # correlation_id -> (intents minus completions, seq of the first open intent)
        self.intents: dict[str, tuple[int, int]] = {}

    def _issue(self, kind: str, seq: int | None, message: str, seq_end: int | None = None) -> None:
        self.report.issues.append(Issue(kind, self.chain_id, seq, message, seq_end))
        if seq is not None:
            self.flagged.update(range(seq, (seq_end if seq_end is not None else seq) + 1))

    def _remember(self, record_hash: str, orig: int) -> None:
        self.by_hash[record_hash] = orig
        if len(self.by_hash) > WINDOW:
            self.by_hash.popitem(last=False)

    def run(self, rows: Iterable[Mapping[str, Any]]) -> None:
        # One group of lookahead: among duplicates of a seq, the genuine record is the
        # one the next record links to.
        pending: list[Mapping[str, Any]] | None = None
        for group in _groups_by_seq(rows):
            if pending is not None:
                self._group(pending, group[0].get("prev_hash"))
            pending = group
        if pending is not None:
            self._group(pending, None)
        self._close_region(at_end=True)
        s = self.summary
        s.last_seq, s.last_hash = self.last_seq, self.last_hash

    def _group(self, group: list[Mapping[str, Any]], next_prev: Any) -> None:
        seq = int(group[0]["seq"])
        if seq > self.expected:
            self._close_region(at_end=False)
            self._issue("deleted", self.expected, f"records {self.expected}..{seq - 1} are missing (gap in seq)", seq - 1)
        elif seq < self.expected:  # only possible below start_seq
            self._issue("inserted", seq, f"record with seq {seq} precedes the start of the chain ({self.start_seq})")
        self.expected = seq + 1
        parsed: list[tuple[AuditEvent, int | None]] = []
        for row in group:
            try:
                rec = AuditEvent.from_dict(row)
            except Exception as exc:
                self._issue("edited", seq, f"record {row.get('event_id')} cannot be read back: {exc}")
                continue
            parsed.append((rec, self._original_seq(rec)))
        if not parsed:
            return
        # Of several records claiming one seq, the genuine one is intact, in place and
        # linked; the others were inserted.
        parsed.sort(key=lambda p: (p[1] != seq, not self._linked(p[0], seq), p[0].record_hash != next_prev))
        rec, orig = parsed[0]
        for extra, _ in parsed[1:]:
            self._issue("inserted", seq, f"duplicate seq {seq}: record {extra.event_id} was added next to {rec.event_id}")
        self._record(rec, orig)

    def _record(self, rec: AuditEvent, orig: int | None) -> None:
        seq = rec.seq
        self.summary.records += 1
        if rec.type in _INTENT_TYPES and rec.correlation_id:
            n, first = self.intents.get(rec.correlation_id, (0, seq))
            n += 1 if rec.type == "query.submitted" else -1
            if n > 0:
                self.intents[rec.correlation_id] = (n, first)
            else:  # all closed (bounded memory on long chains)
                self.intents.pop(rec.correlation_id, None)
        if self.summary.first_seq is None:
            self.summary.first_seq = seq
        self.last_seq, self.last_hash = seq, rec.record_hash
        if seq in self.capture:
            self.captured[seq] = rec.record_hash
        self.streak = orig is None
        if orig is None:
            self._close_region(at_end=False)
            self._issue("edited", seq, f"record {rec.event_id} does not match its record_hash: its content was changed")
            self._remember(rec.record_hash, seq)
            return
        if orig != seq:
            if rec.record_hash in self.by_hash:
                self._close_region(at_end=False)
                self._issue("inserted", seq, f"record {rec.event_id} is a copy of the record at seq {self.by_hash[rec.record_hash]}")
                return
            self.region.append((seq, orig))
            self._remember(rec.record_hash, orig)
            return
        region_before = bool(self.region)
        self._close_region(at_end=False)
        if not self._linked(rec, seq) and not region_before and seq - 1 not in self.flagged:
            self._broken_link(rec)
        self._remember(rec.record_hash, seq)

    def _linked(self, rec: AuditEvent, orig: int) -> bool:
        if orig == self.start_seq:
            return rec.prev_hash == self.start_prev
        return self.by_hash.get(rec.prev_hash) == orig - 1

    def _broken_link(self, rec: AuditEvent) -> None:
        seq = rec.seq
        target = self.by_hash.get(rec.prev_hash)
        if target is None or seq - 1 < self.start_seq:
            at = seq - 1 if seq - 1 >= self.start_seq else seq
            self._issue(
                "edited",
                at,
                f"prev_hash link broken between {seq - 1} and {seq}: the record at seq {at} was rewritten "
                f"(its hash was recomputed, but seq {seq} links to a hash that is not in the chain)",
            )
        elif target < seq - 1:
            self._issue("inserted", target + 1, f"seq {seq} links to seq {target}: the records between were put into the chain", seq - 1)
        else:
            self._issue("reordered", seq, f"prev_hash link broken between {seq - 1} and {seq}: seq {seq} follows the record originally at {target}")

    def _original_seq(self, rec: AuditEvent) -> int | None:
        if _hash_as(rec, rec.seq) == rec.record_hash:
            return rec.seq
        candidates: list[int] = []
        linked = self.by_hash.get(rec.prev_hash)
        if linked is not None:
            candidates.append(linked + 1)
        if rec.prev_hash == self.start_prev:
            candidates.append(self.start_seq)
        if self.region:
            s, o = self.region[-1]
            candidates.append(rec.seq - (s - o))
        candidates += [rec.seq + 1, rec.seq - 1]
        if not self.streak:
            # The first anomaly of a run: records may have been renumbered by more than
            # one (several deleted or inserted); look a little further. Later records of
            # the run are found through the region's shift, so this stays cheap.
            candidates += [rec.seq + k * sign for k in range(2, SEARCH + 1) for sign in (1, -1)]
        tried = {rec.seq}
        for c in candidates:
            if c in tried or c < self.start_seq:
                continue
            tried.add(c)
            if _hash_as(rec, c) == rec.record_hash:
                return c
        return None

    def _close_region(self, *, at_end: bool) -> None:
        region, self.region = self.region, []
        if not region:
            return
        first, last = region[0][0], region[-1][0]
        shifts = {s - o for s, o in region}
        if at_end and len(shifts) == 1:
            d = shifts.pop()
            if d > 0:
                self._issue(
                    "inserted",
                    first - d,
                    f"{d} record(s) were put into the chain at seq {first - d}..{first - 1}; the original records from "
                    f"there on were renumbered (+{d}) up to seq {last}",
                    first - 1,
                )
                return
            self._issue(
                "deleted",
                first,
                f"{-d} record(s) originally at seq {first}..{first - d - 1} were deleted and the later records renumbered ({d}) to hide the gap",
                first - d - 1,
            )
            return
        moved = ", ".join(f"{s}<-{o}" for s, o in region[:6]) + (", ..." if len(region) > 6 else "")
        self._issue(
            "reordered",
            first,
            f"prev_hash link broken between {first - 1} and {first}: records at seq {first}..{last} are out of order (seq<-original: {moved})",
            last if last != first else None,
        )

    def check_head(self, head_seq: int, head_hash: str) -> None:
        """Compare with the store's chain-head row (a lower bound in DuckDB, exact in PostgreSQL)."""
        last = self.last_seq or 0
        if head_seq > last:
            self._issue("truncated", last + 1, f"the chain head records seq {head_seq} but the chain ends at {last}", head_seq)
        elif head_seq == last and last and head_hash != self.last_hash and last not in self.flagged:
            self._issue("edited", last, f"the chain head records another hash for seq {last}: the last record was replaced")

    def check_head_behind(self, head_seq: int) -> None:
        """Where the head row must be current, a last record beyond it was not written
        by the gateway (which moves the head in the same transaction, or at close)."""
        last = self.last_seq or 0
        if head_seq < last:
            self._issue(
                "head_mismatch",
                head_seq + 1,
                f"the chain head row says the chain ends at seq {head_seq}, but records run to {last}: "
                f"seq {head_seq + 1}..{last} were appended without moving the head",
                last,
            )


def _groups_by_seq(rows: Iterable[Mapping[str, Any]]) -> Iterator[list[Mapping[str, Any]]]:
    group: list[Mapping[str, Any]] = []
    for row in rows:
        if group and row["seq"] != group[0]["seq"]:
            yield group
            group = []
        group.append(row)
    if group:
        yield group


def report_json(report: VerifyReport) -> str:
    return json.dumps(report.to_dict(), indent=2, default=str)


# -- exported segments (verify reads what export wrote; export never imports verify) --


def verify_segments(
    path: str | Path,
    *,
    checkpoints: Iterable[Checkpoint] = (),
    public_key: Ed25519PublicKey | str | bytes | Path | None = None,
) -> VerifyReport:
    """Verify exported segments (a directory or one manifest) without the store."""
    root = Path(path)
    report = VerifyReport(source=str(root))
    key = load_public_key(public_key) if public_key is not None else None
    manifests = load_manifests(root)
    if not manifests:
        raise AuditConfigError(f"no segment manifests (*{MANIFEST_SUFFIX}) in {root}")
    if key is not None:
        report.signatures_checked = True
    else:
        report.warnings.append("no --public-key given: manifest signatures were checked against the key each manifest carries")
    by_chain: dict[str, list[tuple[Path, dict[str, Any]]]] = {}
    for mpath, m in manifests:
        by_chain.setdefault(str(m.get("chain_id")), []).append((mpath, m))
    for chain_id, items in sorted(by_chain.items()):
        items.sort(key=lambda item: int(item[1].get("first_seq", 0)))
        wanted = {cp.seq for cp in checkpoints if cp.chain_id == chain_id}
        checker: ChainChecker | None = None
        prev_m: dict[str, Any] | None = None
        for mpath, m in items:
            if not _manifest_ok(report, mpath, m, key):
                prev_m = None
                checker = None
                continue
            first_seq, first_prev = int(m["first_seq"]), str(m["first_prev_hash"])
            if prev_m is not None:
                if first_seq > int(prev_m["last_seq"]) + 1:
                    report.issues.append(Issue("deleted", chain_id, int(prev_m["last_seq"]) + 1, "no segment holds these records", first_seq - 1))
                    checker = None
                elif first_seq <= int(prev_m["last_seq"]):
                    report.issues.append(Issue("inserted", chain_id, first_seq, f"segment {mpath.name} overlaps the previous one"))
                    checker = None
                elif first_prev != prev_m["last_record_hash"]:
                    report.issues.append(Issue("reordered", chain_id, first_seq, f"segment {mpath.name} does not link to the previous segment"))
                    checker = None
            if checker is None:
                checker = ChainChecker(chain_id, report, start_seq=first_seq, start_prev=first_prev, capture=wanted)
                if first_seq == 1 and first_prev != genesis_hash(chain_id):
                    report.issues.append(Issue("edited", chain_id, 1, "the first segment does not start from the chain's genesis"))
            before = checker.summary.records
            try:
                checker.run(read_segment_rows(mpath.parent / str(m["data_file"]), str(m["data_format"])))
            except Exception as exc:  # a damaged file: pyarrow/json errors of many kinds
                report.issues.append(Issue("segment_modified", chain_id, first_seq, f"{m['data_file']} cannot be read: {exc}"))
                checker = None
                prev_m = None
                continue
            got = checker.summary.records - before
            if got != int(m["count"]) or checker.last_seq != int(m["last_seq"]) or checker.last_hash != m["last_record_hash"]:
                report.issues.append(
                    Issue("segment_modified", chain_id, int(m["first_seq"]), f"{m['data_file']} holds {got} record(s) ending at seq {checker.last_seq}, its manifest says {m['count']} ending at {m['last_seq']}", int(m["last_seq"]))
                )
            prev_m = m
        lo = int(items[0][1].get("first_seq", 1))
        hi = int(items[-1][1].get("last_seq", 0))
        cps = [cp for cp in checkpoints if cp.chain_id == chain_id and cp.seq > 0]  # seq 0: a writer's start, no record
        outside = [cp for cp in cps if not lo <= cp.seq <= hi]
        if outside:
            # An export covers a range; a checkpoint taken after it proves nothing about it.
            report.warnings.append(f"{len(outside)} checkpoint(s) of chain {chain_id} lie outside the exported seq {lo}..{hi}")
        inside = [cp for cp in cps if lo <= cp.seq <= hi]
        if inside and checker is not None:
            good = _check_signatures(report, inside, {key_id(key): key} if key is not None else {})
            _check_checkpoints(report, checker, good)
    return report


def _manifest_ok(report: VerifyReport, mpath: Path, m: dict[str, Any], key: Ed25519PublicKey | None) -> bool:
    chain_id = str(m.get("chain_id"))
    first = m.get("first_seq")
    body = {k: v for k, v in m.items() if k != "signature"}
    signature = m.get("signature")
    if signature is None:
        if key is not None:
            report.issues.append(Issue("bad_signature", chain_id, first, f"{mpath.name} is not signed"))
            return False
        report.warnings.append(f"{mpath.name} is not signed: only its digest protects it")
    else:
        trusted = key
        if trusted is None and m.get("public_key"):
            try:
                trusted = load_public_key(str(m["public_key"]))
            except AuditConfigError:
                trusted = None
        if trusted is None or not verify_manifest_signature(trusted, body, str(signature)):
            report.issues.append(Issue("bad_signature", chain_id, first, f"{mpath.name}: the manifest signature is invalid for the trusted key"))
            return False
    data = mpath.parent / str(m.get("data_file"))
    if not data.is_file():
        report.issues.append(Issue("segment_modified", chain_id, first, f"data file {data.name} is missing"))
        return False
    digest, size = _sha256(data)
    if digest != m.get("data_sha256") or size != m.get("data_bytes"):
        # Still walk the records (the caller does): that names the record that changed.
        report.issues.append(
            Issue("segment_modified", chain_id, first, f"{data.name} was modified after export (sha256 differs from its manifest)", m.get("last_seq"))
        )
    return True
