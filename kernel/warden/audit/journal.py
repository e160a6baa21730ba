"""The intent journal of the DuckDB store: an fsynced, append-only file that makes a
batch of sealed records durable before DuckDB has them.

A DuckDB commit costs ~3 ms however small the transaction (the INSERT of one 48-column
row and the write-ahead-log sync); appending a frame to a file and ``fdatasync`` costs
~0.2 ms. So the writer thread seals a batch, writes it here as one frame, syncs, and
only then wakes the batch's callers; a second thread (the *absorber*) inserts what was
journalled into DuckDB in large transactions and drops journal segments once DuckDB
holds everything they contain. After a crash, opening the store replays the journal:
every record after the chain's last stored seq is inserted, so nothing whose
``append`` returned is lost, and nothing already stored is inserted twice.

Layout: segment files ``<store file>.journal-NNNNNN`` (created 0600 next to the DuckDB
file, the directory synced on creation), each a sequence of frames::

    b"WJ01" | payload length (u32 LE) | crc32(payload) (u32 LE) | payload

A payload is lines, each ending in ``\\n``:

- ``E`` + record_hash (64 hex digits) + the record's canonical JSON (exactly the bytes
  the hash covers, so replay re-checks the hash and the link to the previous record);
- ``C`` + a signed checkpoint as canonical JSON (:meth:`Checkpoint.to_json`).

Canonical JSON never holds a raw newline (JSON escapes control characters), so lines
split unambiguously. A frame is written with one ``write`` (looped on short writes)
and synced before the next one starts; a crash can therefore only leave a torn frame
at the end of the newest segment, and replay stops there: that frame's callers were
never told their records were stored.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import threading
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from warden.audit.checkpoint import Checkpoint
from warden.audit.record import AuditEvent

MAGIC = b"WJ01"
_HEADER = struct.Struct("<4sII")
#: A new segment is started once the current one holds this many bytes; the absorber
#: deletes segments whose records DuckDB holds.
SEGMENT_BYTES = 32 << 20

_sync = getattr(os, "fdatasync", os.fsync)  # fdatasync also persists a grown file size


class JournalCorrupt(Exception):
    """A journal frame other than the newest one is damaged: replay cannot go on safely."""


def event_lines(events: Sequence[AuditEvent], canonicals: Sequence[bytes]) -> bytes:
    """Journal lines of sealed records (``canonicals``: the bytes each hash covers)."""
    parts: list[bytes] = []
    add = parts.extend
    for ev, canonical in zip(events, canonicals, strict=True):
        add((b"E", ev.record_hash.encode("ascii"), canonical, b"\n"))
    return b"".join(parts)


def checkpoint_line(cp: Checkpoint) -> bytes:
    return b"C" + cp.to_json().encode("utf-8") + b"\n"


def parse_payload(payload: bytes) -> list[AuditEvent | Checkpoint]:
    """The records and checkpoints of one frame, in order (nothing re-verified here)."""
    out: list[AuditEvent | Checkpoint] = []
    for line in payload.split(b"\n")[:-1]:
        kind = line[:1]
        if kind == b"E":
            values = json.loads(line[65:])
            values["record_hash"] = line[1:65].decode("ascii")
            out.append(AuditEvent.from_dict(values, json_as_text=False))
        elif kind == b"C":
            out.append(Checkpoint.from_dict(json.loads(line[1:])))
        else:
            raise JournalCorrupt(f"unknown journal line kind {kind!r}")
    return out


@dataclass
class Replay:
    """What the journal holds: entries in write order; ``torn`` bytes were discarded
    from the end of the newest segment (a frame whose sync never completed)."""

    entries: list[AuditEvent | Checkpoint] = field(default_factory=list)
    segments: list[Path] = field(default_factory=list)
    torn: int = 0


class Journal:
    """The segment files of one store file. Only the process holding DuckDB's file lock
    opens it for writing; within it, only the writer thread appends and only the
    absorber thread deletes absorbed segments."""

    def __init__(self, store_path: Path, *, segment_bytes: int | None = None) -> None:
        self.dir = store_path.parent
        self.prefix = store_path.name + ".journal-"
        self.segment_bytes = SEGMENT_BYTES if segment_bytes is None else segment_bytes
        self._fd: int | None = None
        self._segment = 0
        self._size = 0
        #: Set after a failed write or sync: what the file holds is uncertain, so the
        #: store must replay and restart the journal before appending again.
        self.broken = False
        self._files = threading.Lock()  # the writer rotates while the absorber deletes

    # ------------------------------------------------------------------ files

    def segments(self) -> list[tuple[int, Path]]:
        out = []
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return []
        for name in names:
            if name.startswith(self.prefix) and name[len(self.prefix) :].isdigit():
                out.append((int(name[len(self.prefix) :]), self.dir / name))
        return sorted(out)

    def _path(self, n: int) -> Path:
        return self.dir / f"{self.prefix}{n:06d}"

    def has_records(self) -> bool:
        return any(p.stat().st_size > 0 for _, p in self.segments())

    # ------------------------------------------------------------------ replay

    def read(self) -> Replay:
        """Every intact frame of every segment, oldest first. Raises JournalCorrupt when
        a damaged frame is followed by more journal (only the very end may be torn)."""
        replay = Replay()
        segs = self.segments()
        for i, (_, path) in enumerate(segs):
            data = path.read_bytes()
            replay.segments.append(path)
            pos = 0
            while pos < len(data):
                payload = _frame_at(data, pos)
                if payload is None:
                    if i != len(segs) - 1 and any(p.stat().st_size for _, p in segs[i + 1 :]):
                        raise JournalCorrupt(f"{path.name}: damaged frame at byte {pos} before the end of the journal")
                    replay.torn = len(data) - pos
                    break
                replay.entries.extend(parse_payload(payload))
                pos += _HEADER.size + len(payload)
        return replay

    def remove(self, paths: Sequence[Path]) -> None:
        for p in paths:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()

    # ------------------------------------------------------------------ appending

    def start(self) -> None:
        """Open a new, empty segment after any existing one."""
        segs = self.segments()
        self._open_segment((segs[-1][0] if segs else 0) + 1)

    def _open_segment(self, n: int) -> None:
        fd = os.open(self._path(n), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | getattr(os, "O_CLOEXEC", 0), 0o600)
        try:
            _sync_dir(self.dir)  # the new name must survive a crash before any frame in it counts
        except OSError:
            os.close(fd)
            raise
        with self._files:
            old, self._fd = self._fd, fd
            self._segment = n
            self._size = 0
        if old is not None:
            os.close(old)

    @property
    def segment(self) -> int:
        return self._segment

    def append(self, payload: bytes) -> int:
        """Write one frame and sync it; return the segment it went to. On any error the
        frame is rolled back (best effort) and the journal marked broken."""
        if self._fd is None or self.broken:
            raise OSError("the audit intent journal is not open")
        fd = self._fd
        frame = _HEADER.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload
        start = self._size
        try:
            view = memoryview(frame)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            _sync(fd)
        except OSError:
            self.broken = True
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
                _sync(fd)
            raise
        self._size = start + len(frame)
        segment = self._segment
        if self._size >= self.segment_bytes:
            try:
                self._open_segment(segment + 1)
            except OSError:
                self.broken = True  # this frame is durable; the next append replays first
        return segment

    def discard_before(self, segment: int) -> None:
        """Delete segments older than ``segment`` (their records are in DuckDB)."""
        with self._files:
            current = self._segment
        for n, path in self.segments():
            if n < segment and n < current:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    def close(self) -> None:
        with self._files:
            fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def _frame_at(data: bytes, pos: int) -> bytes | None:
    if len(data) - pos < _HEADER.size:
        return None
    magic, length, crc = _HEADER.unpack_from(data, pos)
    start = pos + _HEADER.size
    if magic != MAGIC or len(data) - start < length:
        return None
    payload = data[start : start + length]
    if zlib.crc32(payload) != crc:
        return None
    return payload


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
