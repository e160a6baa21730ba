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
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO, Final

import pyarrow as pa

CONTENT_TYPE = "application/vnd.warden.frames"
_HEADER = struct.Struct(">cI")


def frame(kind: bytes, payload: bytes) -> bytes:
    return _HEADER.pack(kind, len(payload)) + payload


def json_frame(kind: bytes, data: dict[str, Any]) -> bytes:
    return frame(kind, json.dumps(data, default=str, separators=(",", ":")).encode())


def frame_header(kind: bytes, length: int) -> bytes:
    """The 5 bytes before a payload that is sent as a piece of its own (not copied)."""
    return _HEADER.pack(kind, length)


#: End of an Arrow IPC stream (continuation marker, zero-length metadata).
_IPC_EOS: Final = b"\xff\xff\xff\xff\x00\x00\x00\x00"


class ArrowStreamPieces:
    """One statement's Arrow IPC stream, as the payloads of its ``A`` frames.

    Each batch becomes its own encapsulated IPC message (``RecordBatch.serialize``: one
    C++ pass into a fresh buffer, without the GIL), sent as is: no writer into a Python
    file object, no copy out of it and no copy into a framed ``bytes``. A schema with a
    dictionary anywhere needs dictionary messages, so it goes through the IPC writer.
    Every batch must have the stream's schema (a reader would misread another)."""

    def __init__(self) -> None:
        self._schema: pa.Schema | None = None
        self._writer: Any = None
        self._sink: io.BytesIO | None = None

    def add(self, batch: pa.RecordBatch) -> list[Any]:
        out: list[Any] = []
        if self._schema is None:
            self._schema = batch.schema
            if _has_dictionary(batch.schema):
                self._sink = io.BytesIO()
                self._writer = pa.ipc.new_stream(self._sink, batch.schema)
            else:
                out.append(batch.schema.serialize())
        elif not batch.schema.equals(self._schema):
            raise pa.ArrowInvalid("a result batch does not have the schema of the batches before it")
        if self._writer is None:
            out.append(batch.serialize())
            return out
        self._writer.write_batch(batch)
        return out + self._drain()

    def close(self, schema: pa.Schema | None) -> list[Any]:
        """The end of the stream (with the schema first when no batch came)."""
        if self._writer is not None:
            self._writer.close()
            return self._drain()
        if self._schema is None and schema is not None:
            if _has_dictionary(schema):
                self._sink = io.BytesIO()
                self._writer = pa.ipc.new_stream(self._sink, schema)
                return self.close(schema)
            return [schema.serialize(), _IPC_EOS]
        return [_IPC_EOS]

    def _drain(self) -> list[Any]:
        assert self._sink is not None
        chunk = self._sink.getvalue()
        self._sink.seek(0)
        self._sink.truncate()
        return [chunk] if chunk else []


class ArrowStreamAssembler:
    """A statement's Arrow IPC stream, read back from its ``A`` frames as they arrive.

    The gateway sends whole IPC messages per frame, so each frame is decoded when it
    comes (one copy of that frame, while the rest is still on the wire) and the table
    at the end is its batches, zero-copy: nothing of a large result is left to copy
    after its last byte. Any other framing (a message split over frames, dictionaries)
    is read the general way at the end: all frames joined, then one stream reader."""

    def __init__(self) -> None:
        self._frames: list[pa.Buffer] = []
        self._schema: pa.Schema | None = None
        self._batches: list[pa.RecordBatch] = []
        self._general = False

    def add(self, pieces: list[memoryview]) -> None:
        frame = pa.py_buffer(pieces[0] if len(pieces) == 1 else b"".join(pieces))
        self._frames.append(frame)
        if not self._general:
            try:
                self._decode(frame)
            except (pa.ArrowException, OSError, ValueError):
                self._general = True

    def _decode(self, frame: pa.Buffer) -> None:
        messages = pa.ipc.MessageReader.open_stream(frame)
        while True:
            try:
                message = messages.read_next_message()
            except StopIteration:
                return
            if message.type == "schema" and self._schema is None:
                self._schema = pa.ipc.read_schema(message)
            elif message.type == "record batch" and self._schema is not None:
                self._batches.append(pa.ipc.read_record_batch(message, self._schema))
            else:
                self._general = True
                return

    def table(self) -> pa.Table | None:
        """The statement's table (None when no frame came)."""
        if not self._frames:
            return None
        if self._general or self._schema is None:
            return pa.ipc.open_stream(pa.py_buffer(b"".join(self._frames))).read_all()
        return pa.Table.from_batches(self._batches, schema=self._schema)


def _has_dictionary(schema: pa.Schema) -> bool:
    def walk(t: Any) -> bool:
        if pa.types.is_dictionary(t):
            return True
        if isinstance(t, pa.BaseExtensionType):
            return walk(t.storage_type)
        return any(walk(t.field(i).type) for i in range(t.num_fields)) if t.num_fields else False

    return any(walk(f.type) for f in schema)


def frame_views(chunks: Iterable[bytes]) -> Iterator[tuple[bytes, list[memoryview]]]:
    """Yield (kind, payload pieces) from the chunks of a frame stream (an HTTP body).

    The pieces are views into the chunks: a client joins them once where it needs one
    buffer (a statement's whole Arrow stream) instead of copying every payload out of a
    buffered reader first. Raises EOFError on a cut-off stream."""
    source = iter(chunks)
    current = memoryview(b"")

    def take(n: int, *, allow_eof: bool = False) -> list[memoryview] | None:
        nonlocal current
        out: list[memoryview] = []
        while n:
            if not current:
                nxt = next(source, None)
                if nxt is None:
                    if allow_eof and not out:
                        return None
                    raise EOFError("the gateway's result stream ended early (gateway gone mid-query?)")
                current = memoryview(nxt).cast("B")
                continue
            piece = current[:n]
            out.append(piece)
            current = current[len(piece) :]
            n -= len(piece)
        return out

    while True:
        head = take(_HEADER.size, allow_eof=True)
        if head is None:
            return
        kind, size = _HEADER.unpack(b"".join(head))
        pieces = take(size)
        assert pieces is not None
        yield kind, pieces


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
                self._buf = memoryview(next(self._chunks)).cast("B")  # bytes, or an Arrow buffer's view
            except StopIteration:
                return 0
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


def chunk_stream(chunks: Iterator[bytes], buffer_size: int = 1 << 16) -> BinaryIO:
    """A buffered binary stream over an iterator of chunks (an HTTP body, say)."""
    return io.BufferedReader(_ChunkReader(chunks), buffer_size=buffer_size)
