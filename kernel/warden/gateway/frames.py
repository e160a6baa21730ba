"""The result stream's framing: JSON headers and Arrow IPC, in one HTTP response.

Each frame is one type byte, a 4-byte big-endian length and the payload:

    C  JSON  the cell: decision, event id, statements            (once, first)
    S  JSON  a statement starts: index, kind, columns, masks
    A  bytes a chunk of that statement's Arrow IPC stream
    E  JSON  the statement ended: rows, bytes, truncated, detectors (column, position,
             detector, rows: what the second net masked, never a value)
    X  JSON  an error: code, message (redacted), sqlstate (the cell stops here)
    T  JSON  the trailer: status, duration, completion event id   (once, last)

Arrow IPC streams are self-delimiting, so a client concatenates a statement's A
frames and opens them with ``pyarrow.ipc.open_stream``.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Iterator
from typing import Any, BinaryIO

CONTENT_TYPE = "application/vnd.warden.frames"
_HEADER = struct.Struct(">cI")


def frame(kind: bytes, payload: bytes) -> bytes:
    return _HEADER.pack(kind, len(payload)) + payload


def json_frame(kind: bytes, data: dict[str, Any]) -> bytes:
    return frame(kind, json.dumps(data, default=str, separators=(",", ":")).encode())


def read_frames(stream: BinaryIO) -> Iterator[tuple[bytes, bytes]]:
    """Yield (kind, payload) from a byte stream; raises EOFError on a cut-off stream."""
    while True:
        head = _read_exact(stream, _HEADER.size, allow_eof=True)
        if head is None:
            return
        kind, size = _HEADER.unpack(head)
        payload = _read_exact(stream, size, allow_eof=False)
        assert payload is not None
        yield kind, payload


def _read_exact(stream: BinaryIO, size: int, *, allow_eof: bool) -> bytes | None:
    chunks = []
    remaining = size
    while remaining:
        chunk = stream.read(remaining)
        if not chunk:
            if allow_eof and remaining == size:
                return None
            raise EOFError("the gateway's result stream ended early (gateway gone mid-query?)")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


class _ChunkReader(io.RawIOBase):
    """A readable raw stream over an iterator of byte chunks (no quadratic copying)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not len(self._buf):
            try:
                self._buf = memoryview(next(self._chunks))
            except StopIteration:
                return 0
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


def chunk_stream(chunks: Iterator[bytes], buffer_size: int = 1 << 16) -> BinaryIO:
    """A buffered binary stream over an iterator of chunks (an HTTP body, say)."""
    return io.BufferedReader(_ChunkReader(chunks), buffer_size=buffer_size)
