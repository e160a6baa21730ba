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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pyarrow.parquet as pq

from warden.audit.checkpoint import (
    SigningKeyLike,
    key_id,
    public_key_pem,
    sign_manifest,
    signing_key_from,
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
from warden.audit.store import AuditStore, arrow_table
from warden.audit.stores import open_store

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


