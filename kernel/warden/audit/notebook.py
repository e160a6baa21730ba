"""Helpers for auditor notebooks (notebooks/audit/): checks over rows the ``audit``
connection returned, so a notebook can verify the chain and the checkpoints it reads
while the gateway runs (the store itself is the gateway's to open).

``verify_rows(events, checkpoints, public_key)`` recomputes every record's hash from its
fields, checks ``seq`` has no gap and each ``prev_hash`` links to the record before, and
checks each checkpoint's Ed25519 signature and that it names a record that is there with
that hash (checkpoints beyond the rows read, signed while reading, are skipped: read
the checkpoints first). It is the chain walk of ``warden audit verify`` over what the gateway served
(not its moved-record classification: an auditor wanting that stops the gateway and runs
the CLI, docs/audit.md §5).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from warden.audit.checkpoint import Checkpoint, key_id, load_public_key
from warden.audit.record import AuditEvent, genesis_hash


@dataclass
class RowsReport:
    ok: bool
    records: int
    chains: dict[str, dict[str, Any]] = field(default_factory=dict)
    issues: list[dict[str, Any]] = field(default_factory=list)
    key: str = ""

    def rows(self) -> list[dict[str, Any]]:
        """One row per chain, for a DataFrame."""
        return [{"chain_id": c, **v} for c, v in sorted(self.chains.items())]

    def _repr_html_(self) -> str:
        verdict = "OK" if self.ok else f"{len(self.issues)} PROBLEM(S)"
        color = "#1a7f37" if self.ok else "#cf222e"
        chains = "".join(
            f"<tr><td style='text-align:left'>{c}</td><td style='text-align:left'>{v['records']}</td><td style='text-align:left'>{v['first_seq']}..{v['last_seq']}</td>"
            f"<td style='text-align:left'>{v['checkpoints_valid']}/{v['checkpoints']}</td><td style='text-align:left'>{v['sealed_to']}</td></tr>"
            for c, v in sorted(self.chains.items())
        )
        issues = "".join(f"<li>{i['kind']} in {i['chain_id']} at seq {i['seq']}: {i['detail']}</li>" for i in self.issues[:50])
        return (f"<div><b style='color:{color}'>chain verification: {verdict}</b> — {self.records} records; {self.key}"
                "<table><thead><tr><th style='text-align:left'>chain</th><th style='text-align:left'>records</th><th style='text-align:left'>seq</th>"
                "<th style='text-align:left'>valid checkpoints</th><th style='text-align:left'>sealed to seq</th></tr></thead>"
                f"<tbody>{chains}</tbody></table><ul>{issues}</ul></div>")  # fmt: skip

    def __repr__(self) -> str:
        head = f"chain verification: {'OK' if self.ok else f'{len(self.issues)} PROBLEM(S)'} ({self.records} records; {self.key})"
        lines = [head] + [f"  {c}: {v['records']} records, seq {v['first_seq']}..{v['last_seq']}, "
                          f"{v['checkpoints_valid']}/{v['checkpoints']} checkpoints valid, sealed to {v['sealed_to']}"
                          for c, v in sorted(self.chains.items())]  # fmt: skip
        lines += [f"  {i['kind']} in {i['chain_id']} at seq {i['seq']}: {i['detail']}" for i in self.issues]
        return "\n".join(lines)


def verify_rows(events: Iterable[Mapping[str, Any]], checkpoints: Iterable[Mapping[str, Any]] = (), public_key: Any = None) -> RowsReport:
    """Verify ``events`` rows (every field, any order) and ``checkpoints`` rows.

    ``public_key``: the PEM (text, bytes or path) the auditor holds; ``None`` trusts the
    keys recorded in the store (the report says so)."""
    by_chain: dict[str, list[AuditEvent]] = {}
    for row in events:
        rec = AuditEvent.from_dict(dict(row))
        by_chain.setdefault(rec.chain_id, []).append(rec)
    issues: list[dict[str, Any]] = []
    chains: dict[str, dict[str, Any]] = {}
    hashes: dict[tuple[str, int], str] = {}
    total = 0
    for cid, recs in by_chain.items():
        recs.sort(key=lambda r: r.seq)
        prev = genesis_hash(cid) if recs and recs[0].seq == 1 else None
        expected = recs[0].seq if recs else 1
        if recs and recs[0].seq != 1:
            issues.append({"kind": "deleted", "chain_id": cid, "seq": 1, "detail": f"the chain starts at seq {recs[0].seq}"})
        for rec in recs:
            total += 1
            if rec.seq != expected:
                kind = "deleted" if rec.seq > expected else "inserted"
                issues.append({"kind": kind, "chain_id": cid, "seq": expected, "detail": f"seq {expected} expected, {rec.seq} found"})
            if rec.compute_hash() != rec.record_hash:
                issues.append({"kind": "edited", "chain_id": cid, "seq": rec.seq, "detail": "the record does not match its hash"})
            if prev is not None and rec.prev_hash != prev:
                issues.append({"kind": "reordered", "chain_id": cid, "seq": rec.seq, "detail": "prev_hash does not link to the record before"})
            hashes[(cid, rec.seq)] = rec.record_hash
            prev, expected = rec.record_hash, rec.seq + 1
        chains[cid] = {"records": len(recs), "first_seq": recs[0].seq if recs else 0, "last_seq": recs[-1].seq if recs else 0,
                       "checkpoints": 0, "checkpoints_valid": 0, "sealed_to": 0, "closed": False}  # fmt: skip
    trusted = load_public_key(public_key) if public_key is not None else None
    key_note = f"signatures checked with key {key_id(trusted)}" if trusted is not None else "signatures checked with keys recorded in the store (pass the key you hold)"
    for row in checkpoints:
        cp = Checkpoint(str(row["chain_id"]), int(row["seq"]), str(row["record_hash"]), row["checkpoint_time"], str(row["key_id"]), str(row["signature"]), str(row.get("mark") or ""))
        info = chains.setdefault(cp.chain_id, {"records": 0, "first_seq": 0, "last_seq": 0, "checkpoints": 0, "checkpoints_valid": 0, "sealed_to": 0, "closed": False})
        info["checkpoints"] += 1
        key = trusted if trusted is not None else (load_public_key(str(row["public_key"])) if row.get("public_key") else None)
        if key is None or not cp.verify(key):
            issues.append({"kind": "bad_signature", "chain_id": cp.chain_id, "seq": cp.seq, "detail": f"checkpoint ({cp.mark or 'periodic'}) not signed by the trusted key"})
            continue
        if cp.seq > info["last_seq"]:
            # Signed after the rows were read (the log grows while we look): nothing to
            # compare it with; not a truncation.
            info["checkpoints"] -= 1
            continue
        if cp.seq and hashes.get((cp.chain_id, cp.seq)) != cp.record_hash:
            kind = "truncated" if (cp.chain_id, cp.seq) not in hashes else "checkpoint_mismatch"
            issues.append({"kind": kind, "chain_id": cp.chain_id, "seq": cp.seq, "detail": "the signed hash is not the record's"})
            continue
        info["checkpoints_valid"] += 1
        if cp.seq >= info["sealed_to"]:
            info["sealed_to"], info["closed"] = cp.seq, cp.mark == "close"
    return RowsReport(ok=not issues, records=total, chains=chains, issues=issues, key=key_note)
