"""Signed checkpoints: Ed25519 signatures over (chain_id, seq, record_hash, time).

A hash chain alone cannot show that its *end* was cut off: deleting the last records
leaves a perfectly consistent shorter chain. A checkpoint, signed with a key only the
gateway holds and copied to a second place (a JSONL file, ideally on another host or
write-once storage), pins the chain's head at a moment; ``verify`` then reports any
chain that no longer reaches, or no longer matches, a checkpoint.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from warden.audit.errors import AuditConfigError
from warden.audit.record import canonical_json, format_time, parse_time

_SIGNED_PREFIX = b"warden-audit-checkpoint-v1\n"
_MANIFEST_PREFIX = b"warden-audit-segment-v1\n"
_HKDF_INFO = b"warden-audit-checkpoint-signing-key-v1"
_SECRET_LABEL = b"warden-checkpoint-key\x00"

#: Checkpoint marks: a periodic/on-demand checkpoint has none; the store signs its head
#: with ``open`` when a writer starts on a chain that has records, and with ``close``
#: when it is closed cleanly. Records after a ``close`` checkpoint were not written by
#: the gateway that closed the chain.
MARKS = ("", "open", "close")

#: What may be given as a signing key: the key itself, a PEM private key, or a secret
#: (bytes/str) from which the key is derived (:func:`derive_signing_key`).
SigningKeyLike = Ed25519PrivateKey | bytes | str


def derive_signing_key(secret: bytes | str) -> Ed25519PrivateKey:
    """The checkpoint signing key of a gateway secret: the one derivation every part
    of warden uses (the gateway, ``warden audit public-key``, ``export``, tests).

    ``HKDF-SHA256(sha256("warden-checkpoint-key\\0" || secret), info=...)``: the
    labelled hash separates this key from the mask key derived from the same secret.
    The secret is used byte for byte (a secret *file* is not stripped).
    """
    raw = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    if len(raw) < 16:
        raise AuditConfigError("the audit signing secret must be at least 16 bytes long")
    labelled = hashlib.sha256(_SECRET_LABEL + raw).digest()
    seed = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO).derive(labelled)
    return Ed25519PrivateKey.from_private_bytes(seed)


def signing_key_from_file(path: str | Path) -> Ed25519PrivateKey:
    """The signing key held in a file: a PEM Ed25519 private key, or a gateway secret
    file (``secret_file``), read exactly as the gateway reads it."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise AuditConfigError(f"cannot read signing key file {path}: {exc.strerror}") from None
    key = signing_key_from(raw)
    assert key is not None
    return key


def signing_key_from(value: SigningKeyLike | None) -> Ed25519PrivateKey | None:
    """Accept a key, a PEM private key (text or bytes) or a secret to derive one from."""
    if value is None or isinstance(value, Ed25519PrivateKey):
        return value
    raw = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    if raw.lstrip().startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_private_key(raw, password=None)
        except (ValueError, TypeError) as exc:
            raise AuditConfigError(f"cannot read the audit signing key: {exc}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise AuditConfigError("the audit signing key must be an Ed25519 key")
        return key
    return derive_signing_key(raw)


def _public(key: Ed25519PrivateKey | Ed25519PublicKey) -> Ed25519PublicKey:
    return key.public_key() if isinstance(key, Ed25519PrivateKey) else key


def key_id(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """Short identifier of a key: the first 16 hex digits of sha256(raw public key)."""
    raw = _public(key).public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_key_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The public key as PEM (SubjectPublicKeyInfo): what auditors pass to ``verify``."""
    return (
        _public(key)
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode("ascii")
    )


def load_public_key(data: Ed25519PublicKey | str | bytes | Path) -> Ed25519PublicKey:
    """A public key from PEM text/bytes, a PEM file path, or 64 hex digits of the raw key."""
    if isinstance(data, Ed25519PublicKey):
        return data
    if isinstance(data, Path) or (isinstance(data, str) and "-----BEGIN" not in data and len(data) != 64):
        source = Path(data)
        try:
            data = source.read_bytes()
        except OSError as exc:
            raise AuditConfigError(f"cannot read public key file {source}: {exc.strerror}") from None
    raw = data.encode("ascii", "replace") if isinstance(data, str) else data
    try:
        if b"-----BEGIN" in raw:
            key = serialization.load_pem_public_key(raw)
        else:
            key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(raw.decode("ascii").strip()))
    except (ValueError, TypeError) as exc:
        raise AuditConfigError(f"cannot read the public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise AuditConfigError("the public key must be an Ed25519 key")
    return key


@dataclass(frozen=True)
class Checkpoint:
    """A signed statement "chain ``chain_id`` had record ``seq`` with hash ``record_hash``
    at ``time``". ``signature`` is hex Ed25519 over :meth:`signed_bytes`."""

    chain_id: str
    seq: int
    record_hash: str
    time: dt.datetime
    key_id: str
    signature: str
    mark: str = ""  # "", "open" or "close" (see MARKS); signed

    def signed_bytes(self) -> bytes:
        return checkpoint_message(self.chain_id, self.seq, self.record_hash, self.time, self.mark)

    def verify(self, public_key: Ed25519PublicKey) -> bool:
        """True when ``signature`` is valid for ``public_key``."""
        try:
            public_key.verify(bytes.fromhex(self.signature), self.signed_bytes())
        except (InvalidSignature, ValueError):
            return False
        return True

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "chain_id": self.chain_id,
            "seq": self.seq,
            "record_hash": self.record_hash,
            "time": format_time(self.time),
            "key_id": self.key_id,
            "signature": self.signature,
        }
        if self.mark:
            out["mark"] = self.mark
        return out

    def to_json(self) -> str:
        return canonical_json(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Checkpoint:
        try:
            return cls(
                chain_id=str(d["chain_id"]),
                seq=int(d["seq"]),
                record_hash=str(d["record_hash"]),
                time=parse_time(d["time"]),
                key_id=str(d.get("key_id") or ""),
                signature=str(d.get("signature") or ""),
                mark=str(d.get("mark") or ""),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise AuditConfigError(f"malformed checkpoint {d!r}: {exc}") from None


def checkpoint_message(chain_id: str, seq: int, record_hash: str, time: dt.datetime, mark: str = "") -> bytes:
    fields: dict[str, Any] = {"chain_id": chain_id, "record_hash": record_hash, "seq": seq, "time": format_time(time)}
    if mark:  # unmarked checkpoints keep the original message (older signatures verify)
        fields["mark"] = mark
    return _SIGNED_PREFIX + canonical_json(fields).encode("utf-8")


def sign_checkpoint(key: Ed25519PrivateKey, chain_id: str, seq: int, record_hash: str, time: dt.datetime, mark: str = "") -> Checkpoint:
    if mark not in MARKS:
        raise ValueError(f"checkpoint mark must be one of {MARKS}, not {mark!r}")
    # Times are stored with microseconds only; sign exactly what will be read back.
    time = parse_time(format_time(time).replace("Z", "+00:00"))
    signature = key.sign(checkpoint_message(chain_id, seq, record_hash, time, mark)).hex()
    return Checkpoint(chain_id, seq, record_hash, time, key_id(key), signature, mark)


def append_checkpoint_file(path: str | Path, checkpoint: Checkpoint) -> None:
    """Append one checkpoint as a JSON line and fsync (the "separate place").

    Opened append-only and created 0600: the file is evidence, not for other users."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as fh:
        fh.write(checkpoint.to_json() + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_checkpoint_file(path: str | Path) -> list[Checkpoint]:
    """All checkpoints of a JSONL file (blank lines ignored)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise AuditConfigError(f"cannot read checkpoint file {path}: {exc.strerror}") from None
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise AuditConfigError(f"{path}:{lineno}: not JSON: {exc.msg}") from None
        if not isinstance(obj, dict):
            raise AuditConfigError(f"{path}:{lineno}: a checkpoint must be a JSON object")
        out.append(Checkpoint.from_dict(obj))
    return out


def iter_checkpoints(sources: Iterator[Checkpoint] | list[Checkpoint]) -> Iterator[Checkpoint]:
    """De-duplicate checkpoints coming from several places (table and file)."""
    seen: set[tuple[str, int, str, str]] = set()
    for cp in sources:
        k = (cp.chain_id, cp.seq, cp.record_hash, cp.signature)
        if k not in seen:
            seen.add(k)
            yield cp


def sign_manifest(key: Ed25519PrivateKey, body: dict[str, Any]) -> str:
    """Hex signature over a segment manifest (without its ``signature`` field)."""
    return key.sign(_MANIFEST_PREFIX + canonical_json(body).encode("utf-8")).hex()


def verify_manifest_signature(public_key: Ed25519PublicKey, body: dict[str, Any], signature: str) -> bool:
    try:
        public_key.verify(bytes.fromhex(signature), _MANIFEST_PREFIX + canonical_json(body).encode("utf-8"))
    except (InvalidSignature, ValueError):
        return False
    return True
