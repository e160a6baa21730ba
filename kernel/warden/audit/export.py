"""Sealed export segments: Parquet (or JSONL) files with a signed manifest each.

A segment holds a contiguous run of one chain, in seq order. Its manifest records
the chain, first/last seq, the ``prev_hash`` of the first record (the link to the
previous segment), first/last record hash, the file's sha256 and size, and an
Ed25519 signature over all of that. :func:`verify_segments` checks a directory of
segments without the store: file digests, signatures, every record hash and link
inside each segment, and the links between consecutive segments of a chain.

Export refuses to seal records whose chain is already broken: a signature over
tampered data would launder it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pyarrow.parquet as pq
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from warden.audit.checkpoint import (
    Checkpoint,
    SigningKeyLike,
    key_id,
    load_public_key,
    public_key_pem,
    sign_manifest,
    signing_key_from,
    verify_manifest_signature,
)
from warden.audit.errors import AuditConfigError, AuditError
from warden.audit.record import (
    FIELD_KINDS,
    AuditEvent,
    canonical_json,
    format_time,
    genesis_hash,
    parse_time,
    utcnow,
)
from warden.audit.schema import ARROW_SCHEMA
from warden.audit.store import AuditStore, arrow_table, open_store

if TYPE_CHECKING:
    from warden.audit.verify import VerifyReport

Format = Literal["parquet", "jsonl"]
MANIFEST_SUFFIX = ".manifest.json"
_JSON_FIELDS = tuple(name for name, kind in FIELD_KINDS.items() if kind == "json")
MANIFEST_FORMAT = "warden-audit-segment"
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class Segment:
    """One written segment: its data file and manifest, and what they hold."""

    chain_id: str
    first_seq: int
    last_seq: int
    count: int
    data_path: Path
    manifest_path: Path
    signed: bool


def export(
    store: AuditStore | str,
    out_dir: str | Path,
    fmt: Format = "parquet",
    since: dt.datetime | str | None = None,
    *,
    chain_id: str | None = None,
    signing_key: SigningKeyLike | None = None,
    segment_size: int = 1_000_000,
) -> list[Segment]:
    """Write each chain (or ``chain_id``) from ``since`` on as sealed segments in ``out_dir``.

    ``since`` selects the first record whose ``event_time >= since`` and everything
    after it in the chain (segments are contiguous by seq). The manifests are signed
    with ``signing_key``, or the store's checkpoint key when it has one; unsigned
    manifests still carry the file digest, and verify warns about them.
    """
    if fmt not in ("parquet", "jsonl"):
        raise AuditConfigError(f"export format must be parquet or jsonl, not {fmt!r}")
    if segment_size < 1:
        raise AuditConfigError("segment_size must be >= 1")
    owned = not isinstance(store, AuditStore)
    st = open_store(store, read_only=True) if isinstance(store, str) else store
    try:
        key = signing_key_from(signing_key) if signing_key is not None else st._key
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        chains = [chain_id] if chain_id else st.chain_ids()
        segments: list[Segment] = []
        for cid in chains:
            start = _first_seq_since(st, cid, since)
            if start is None:
                continue
            batch: list[AuditEvent] = []
            for rec in _checked(st, cid, start):
                batch.append(rec)
                if len(batch) >= segment_size:
                    segments.append(_write_segment(out, batch, fmt, key))
                    batch = []
            if batch:
                segments.append(_write_segment(out, batch, fmt, key))
        return segments
    finally:
        if owned:
            st.close()


def _first_seq_since(store: AuditStore, chain_id: str, since: dt.datetime | str | None) -> int | None:
    ph = store._ph
    if since is None:
        rows = store._fetch_rows(f"SELECT min(seq) AS s FROM audit_events WHERE chain_id = {ph}", [chain_id])
    else:
        rows = store._fetch_rows(
            f"SELECT min(seq) AS s FROM audit_events WHERE chain_id = {ph} AND event_time >= {ph}", [chain_id, parse_time(since)]
        )
    value = rows[0]["s"] if rows else None
    return int(value) if value is not None else None


def _checked(store: AuditStore, chain_id: str, start: int) -> Iterator[AuditEvent]:
    """Records of the chain from ``start``, each re-verified before it is sealed."""
    prev: AuditEvent | None = None
    for rec in store.read_chain(chain_id, start_seq=start):
        problem = None
        if rec.compute_hash() != rec.record_hash:
            problem = "does not match its hash"
        elif prev is not None and (rec.seq != prev.seq + 1 or rec.prev_hash != prev.record_hash):
            problem = "does not link to the record before it"
        elif prev is None and rec.seq == 1 and rec.prev_hash != genesis_hash(chain_id):
            problem = "does not start from the chain's genesis"
        if problem:
            raise AuditError(
                f"refusing to export chain {chain_id}: the record at seq {rec.seq} {problem}; run `warden audit verify`"
            )
        prev = rec
        yield rec


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:80] or "chain"


def _write_segment(out: Path, records: Sequence[AuditEvent], fmt: Format, key: Any) -> Segment:
    first, last = records[0], records[-1]
    stem = f"{_safe(first.chain_id)}-{first.seq:012d}-{last.seq:012d}"
    data_path = out / f"{stem}.{fmt}"
    tmp = data_path.with_name(data_path.name + ".tmp")
    if fmt == "parquet":
        pq.write_table(arrow_table(records), tmp, compression="zstd")
    else:
        with open(tmp, "w", encoding="utf-8") as fh:
            for rec in records:
                fh.write(rec.to_json() + "\n")
    _fsync(tmp)
    digest, size = _sha256(tmp)
    body: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "chain_id": first.chain_id,
        "first_seq": first.seq,
        "last_seq": last.seq,
        "count": len(records),
        "first_prev_hash": first.prev_hash,
        "first_record_hash": first.record_hash,
        "last_record_hash": last.record_hash,
        "first_event_time": format_time(first.event_time),
        "last_event_time": format_time(last.event_time),
        "data_file": data_path.name,
        "data_format": fmt,
        "data_sha256": digest,
        "data_bytes": size,
        "created": format_time(utcnow()),
        "key_id": key_id(key) if key is not None else None,
        "public_key": public_key_pem(key) if key is not None else None,
    }
    manifest = dict(body, signature=sign_manifest(key, body) if key is not None else None)
    manifest_path = out / f"{stem}{MANIFEST_SUFFIX}"
    mtmp = manifest_path.with_name(manifest_path.name + ".tmp")
    mtmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    _fsync(mtmp)
    os.replace(tmp, data_path)
    os.replace(mtmp, manifest_path)  # the manifest appears last: a segment with one is complete
    return Segment(first.chain_id, first.seq, last.seq, len(records), data_path, manifest_path, key is not None)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


# --------------------------------------------------------------------------- reading


def read_segment_rows(data_path: Path, fmt: str) -> Iterator[dict[str, Any]]:
    """Rows of a segment's data file, as dicts (JSON fields as text or values)."""
    if fmt == "parquet":
        table = pq.read_table(data_path)
        if not table.schema.equals(ARROW_SCHEMA, check_metadata=False):
            table = table.cast(ARROW_SCHEMA)
        for batch in table.to_batches(max_chunksize=10_000):
            yield from batch.to_pylist()
    elif fmt == "jsonl":
        with open(data_path, encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    row = json.loads(line)
                    for name in _JSON_FIELDS:  # rows carry JSON fields as text, as the stores do
                        if row.get(name) is not None:
                            row[name] = canonical_json(row[name])
                    yield row
    else:
        raise AuditConfigError(f"unknown segment format {fmt!r}")


def load_manifests(path: Path) -> list[tuple[Path, dict[str, Any]]]:
    paths = [path] if path.is_file() else sorted(path.glob(f"*{MANIFEST_SUFFIX}"))
    out = []
    for p in paths:
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise AuditConfigError(f"cannot read segment manifest {p}: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
            raise AuditConfigError(f"{p} is not a warden audit segment manifest")
        out.append((p, data))
    return out


def verify_segments(
    path: str | Path,
    *,
    checkpoints: Iterable[Checkpoint] = (),
    public_key: Ed25519PublicKey | str | bytes | Path | None = None,
) -> VerifyReport:
    """Verify exported segments (a directory or one manifest) without the store."""
    from warden.audit.verify import (
        ChainChecker,
        Issue,
        VerifyReport,
        _check_checkpoints,
        _check_signatures,
    )

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
    from warden.audit.verify import Issue

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

