"""The C COPY decoder against streams no PostgreSQL would send.

A fake server on 127.0.0.1 speaks just enough of the protocol (start-up, then a COPY
OUT of whatever payloads the test sets) for ``_pgcopy`` to read from it. Well-formed
streams of known values must decode to exactly those values; mutated ones (flipped,
cut, inserted bytes, lying lengths and counts) must end in ``PgError`` or in batches
that Arrow's full validation accepts: never a crash, never a read past a field.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import random
import socket
import struct
import threading
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pytest

from warden.gateway import copy_read

pgcopy = copy_read.module()
pytestmark = pytest.mark.skipif(pgcopy is None, reason="warden.gateway._pgcopy was not built (libpq-dev missing)")

SIGNATURE = b"PGCOPY\n\xff\r\n\0" + struct.pack("!ii", 0, 0)
TRAILER = struct.pack("!h", -1)


def _message(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!i", len(body) + 4) + body


class FakeServer:
    """Answers every simple Query with a COPY OUT of ``payloads`` (one CopyData each)."""

    def __init__(self) -> None:
        self.payloads: list[bytes] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user=fuzz dbname=fuzz sslmode=disable gssencmode=disable connect_timeout=5"

    def close(self) -> None:
        # shutdown() wakes the accept() blocked in the thread (close() alone does not).
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(10)
        assert not self._thread.is_alive(), "the fake server did not stop"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    @staticmethod
    def _read(conn: socket.socket, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return data

    def _serve(self, conn: socket.socket) -> None:
        try:
            size = struct.unpack("!i", self._read(conn, 4))[0]
            self._read(conn, size - 4)  # the start-up packet
            out = _message(b"R", struct.pack("!i", 0))  # authentication ok
            for key, value in (("server_version", "16.0"), ("client_encoding", "UTF8"), ("integer_datetimes", "on")):
                out += _message(b"S", key.encode() + b"\0" + value.encode() + b"\0")
            conn.sendall(out + _message(b"K", struct.pack("!ii", 1, 2)) + _message(b"Z", b"I"))
            while True:
                kind = self._read(conn, 1)
                body_size = struct.unpack("!i", self._read(conn, 4))[0]
                self._read(conn, body_size - 4)
                if kind == b"X":
                    return
                if kind == b"Q":
                    out = _message(b"H", struct.pack("!bh", 1, 0))
                    out += b"".join(_message(b"d", p) for p in self.payloads)
                    conn.sendall(out + _message(b"c", b"") + _message(b"C", b"COPY 1\0") + _message(b"Z", b"I"))
        except (EOFError, OSError):
            pass
        finally:
            conn.close()


@pytest.fixture
def server() -> Iterator[FakeServer]:
    fake = FakeServer()
    try:
        yield fake
    finally:
        fake.close()


def _field(body: bytes | None) -> bytes:
    return struct.pack("!i", -1) if body is None else struct.pack("!i", len(body)) + body


# (type OID, a value's binary encoding, the value Arrow should hold)
EPOCH = dt.datetime(2000, 1, 1)


def _encoders() -> dict[int, Any]:
    return {
        16: lambda r: (lambda v: (struct.pack("!?", v), v))(r.random() < 0.5),
        21: lambda r: (lambda v: (struct.pack("!h", v), v))(r.randint(-(2**15), 2**15 - 1)),
        23: lambda r: (lambda v: (struct.pack("!i", v), v))(r.randint(-(2**31), 2**31 - 1)),
        20: lambda r: (lambda v: (struct.pack("!q", v), v))(r.randint(-(2**63), 2**63 - 1)),
        701: lambda r: (lambda v: (struct.pack("!d", v), v))(r.uniform(-1e300, 1e300)),
        25: lambda r: (lambda v: (v.encode(), v))("".join(r.choice("aé☕\n\"'x") for _ in range(r.randint(0, 12)))),
        17: lambda r: (lambda v: (v, v))(bytes(r.getrandbits(8) for _ in range(r.randint(0, 12)))),
        1082: lambda r: (lambda d: (struct.pack("!i", d), dt.date(2000, 1, 1) + dt.timedelta(days=d)))(r.randint(-700000, 2900000)),
        1114: lambda r: (lambda us: (struct.pack("!q", us), EPOCH + dt.timedelta(microseconds=us)))(r.randint(-(10**16), 10**16)),
    }


def test_well_formed_streams_decode_to_exactly_their_values(server: FakeServer) -> None:
    assert pgcopy is not None
    encoders = _encoders()
    r = random.Random(5)
    con = pgcopy.CopyConnection(server.dsn)
    try:
        for _ in range(60):
            oids = [r.choice(list(encoders)) for _ in range(r.randint(1, 5))]
            want: list[list[Any]] = [[] for _ in oids]
            rows = []
            for _ in range(r.randint(0, 40)):
                fields = []
                for i, oid in enumerate(oids):
                    if r.random() < 0.2:
                        fields.append(_field(None))
                        want[i].append(None)
                    else:
                        body, value = encoders[oid](r)
                        fields.append(_field(body))
                        want[i].append(value)
                rows.append(struct.pack("!h", len(oids)) + b"".join(fields))
            server.payloads = [SIGNATURE + (rows[0] if rows else TRAILER), *rows[1:], *([TRAILER] if rows else [])]
            planned = copy_read.plan([(f"c{i}", oid, -1) for i, oid in enumerate(oids)])
            assert planned is not None
            kinds, schema = planned
            con.start("SELECT fuzz")
            batches = []
            while (got := con.read(kinds, r.choice([1, 7, 1000]), 1 << 20)) is not None:
                batch = copy_read.record_batch(schema, *got)
                batch.validate(full=True)
                batches.append(batch)
            table = pa.Table.from_batches(batches, schema=schema)
            for i, column in enumerate(table.columns):
                assert column.to_pylist() == want[i], (oids[i], column.to_pylist()[:3], want[i][:3])
            assert con.ok
    finally:
        con.close()


def _mutate(payload: bytes, r: random.Random) -> bytes:
    data = bytearray(payload)
    for _ in range(r.randint(1, 4)):
        op = r.random()
        if op < 0.4 and data:
            data[r.randrange(len(data))] = r.getrandbits(8)
        elif op < 0.6 and data:
            at = r.randrange(len(data))
            del data[at : at + r.randint(1, 4)]
        elif op < 0.8:
            at = r.randrange(len(data) + 1)
            data[at:at] = bytes(r.getrandbits(8) for _ in range(r.randint(1, 4)))
        else:
            del data[r.randrange(len(data) + 1) :]
    return bytes(data)


def _numeric(r: random.Random) -> bytes:
    digits = r.randint(0, 6)
    head = struct.pack("!hhHh", digits, r.choice([r.randint(-10, 10), 32767, -32768]), r.choice([0, 0x4000, 0xC000, 0xD000, 0xF000, 0x1234]),
                       r.choice([0, r.randint(0, 40), 16383, 32767]))  # fmt: skip
    return head + b"".join(struct.pack("!H", r.choice([r.randint(0, 9999), 10000, 65535])) for _ in range(digits))


def test_mutated_streams_end_in_an_error_or_in_valid_batches(server: FakeServer) -> None:
    assert pgcopy is not None
    encoders = _encoders()
    r = random.Random(11)
    con = pgcopy.CopyConnection(server.dsn)
    outcomes = {"rows": 0, "errors": 0}
    try:
        for _ in range(1500):
            oids = [r.choice([*encoders, 1700]) for _ in range(r.randint(1, 4))]
            rows = [
                struct.pack("!h", len(oids))
                + b"".join(_field(None if r.random() < 0.15 else _numeric(r) if oid == 1700 else encoders[oid](r)[0]) for oid in oids)
                for _ in range(r.randint(0, 20))
            ]
            payloads = [SIGNATURE + (rows[0] if rows else TRAILER), *rows[1:], *([TRAILER] if rows else [])]
            at = r.randrange(len(payloads))
            payloads[at] = _mutate(payloads[at], r)
            server.payloads = payloads
            if not con.ok:
                con.close()
                con = pgcopy.CopyConnection(server.dsn)
            planned = copy_read.plan([(f"c{i}", oid, -1) for i, oid in enumerate(oids)])
            assert planned is not None
            kinds, schema = planned
            try:
                con.start("SELECT fuzz")
                while (got := con.read(kinds, r.choice([1, 3, 1000]), r.choice([1, 50, 1 << 20]))) is not None:
                    batch = copy_read.record_batch(schema, *got)
                    try:
                        batch.validate(full=True)
                    except pa.ArrowInvalid as exc:
                        # Mutated text need not be UTF-8 (PostgreSQL's always is); the
                        # structure (offsets, bitmaps, lengths) must still be sound.
                        assert "UTF8" in str(exc) or "utf-8" in str(exc).lower(), exc
                        binary = [pa.Array.from_buffers(pa.binary(), len(c), c.buffers(), null_count=c.null_count) if pa.types.is_string(c.type) else c for c in batch.columns]
                        pa.RecordBatch.from_arrays(binary, names=batch.schema.names).validate(full=True)
                    outcomes["rows"] += batch.num_rows
            except pgcopy.PgError:
                outcomes["errors"] += 1
    finally:
        con.close()
    assert outcomes["errors"] > 100 and outcomes["rows"] > 1000, outcomes  # both kinds of ending were exercised
