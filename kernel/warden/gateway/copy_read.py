"""Plain PostgreSQL reads through the C extension ``warden.gateway._pgcopy``.

PostgreSQL's binary COPY is decoded straight into Arrow buffers, for a result whose
columns all have one of the types below. The Arrow types, field metadata and values
are exactly those ADBC's driver produces for the same result (``tests/test_copy_read.py``
compares the two over every type, NULLs and edge values), so a statement reads the
same either way; any other result type goes through ADBC.

Why: ADBC's generic decoder costs ~55 ns a field; this one a few, which is most of the
gateway's own CPU on a large result (``benchmarks/bench_gateway.py``).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from types import ModuleType
from typing import Any, Final

import pyarrow as pa

#: PostgreSQL type OID -> (the decoder's column kind, the Arrow type, the type's name
#: as ADBC writes it into the field metadata). Built-in OIDs never change.
TYPES: Final[dict[int, tuple[int, pa.DataType, str]]] = {
    16: (0, pa.bool_(), "bool"),
    21: (1, pa.int16(), "int2"),
    23: (2, pa.int32(), "int4"),
    20: (3, pa.int64(), "int8"),
    700: (4, pa.float32(), "float4"),
    701: (5, pa.float64(), "float8"),
    25: (6, pa.string(), "text"),
    1043: (6, pa.string(), "varchar"),
    1042: (6, pa.string(), "bpchar"),
    19: (6, pa.string(), "name"),
    17: (6, pa.binary(), "bytea"),
    1082: (7, pa.date32(), "date"),
    1114: (8, pa.timestamp("us"), "timestamp"),
    1184: (8, pa.timestamp("us", tz="UTC"), "timestamptz"),
    # Text in PostgreSQL's spelling (nan, inf, -inf for the specials), in the opaque
    # extension type ADBC gives it, with the type modifier in the metadata.
    1700: (9, pa.opaque(pa.string(), "numeric", "PostgreSQL"), "numeric"),
}

#: A batch ends at this many rows or bytes of COPY data, whichever comes first: large
#: enough that Python's per-batch work is noise, small enough that fetching, masking
#: and sending overlap.
BATCH_ROWS: Final = 1 << 20
BATCH_BYTES: Final = 4 << 20

_METADATA_KEY: Final = b"POSTGRESQL:type"


def module() -> ModuleType | None:
    """The C extension, or None when it was not built (no libpq headers) or
    ``WARDEN_NO_NATIVE=1`` asks for the pure paths."""
    if os.environ.get("WARDEN_NO_NATIVE") == "1":
        return None
    try:
        from warden.gateway import _pgcopy
    except ImportError:
        return None
    return _pgcopy


def copy_text(sql: str) -> str | None:
    """The statement as the inside of ``COPY (...)``: without a trailing semicolon.
    None when it cannot be one (not a query that COPY wraps)."""
    if "\x00" in sql:
        return None  # C strings end at a NUL: never let libpq see less than was analysed
    text = sql.strip()
    while text.endswith(";"):
        text = text[:-1].rstrip()
    head = text.lstrip("(").split(None, 1)[0].upper() if text else ""
    return text if head in ("SELECT", "WITH", "VALUES", "TABLE") else None


def plan(columns: Sequence[tuple[str, int, int]]) -> tuple[tuple[int, ...], pa.Schema] | None:
    """The decoder's column kinds and the Arrow schema for a row description (name,
    type OID, type modifier), or None when a column's type is not one this reader
    decodes (ADBC reads it)."""
    kinds: list[int] = []
    fields: list[pa.Field] = []
    for name, oid, typmod in columns:
        known = TYPES.get(oid)
        if known is None:
            return None
        kind, arrow_type, typname = known
        kinds.append(kind)
        metadata = {_METADATA_KEY: typname.encode()}
        if isinstance(arrow_type, pa.BaseExtensionType):
            metadata = {b"ADBC:postgresql:typname": typname.encode(), **metadata, b"POSTGRESQL:typmod": str(typmod).encode()}
        fields.append(pa.field(name, arrow_type, metadata=metadata))
    if not kinds:
        return None
    return tuple(kinds), pa.schema(fields)


def record_batch(schema: pa.Schema, rows: int, columns: Sequence[tuple[Any, int, Any, Any]]) -> pa.RecordBatch:
    """One batch from the decoder's buffers (zero-copy: Arrow keeps the blocks alive)."""
    arrays = []
    for field, (validity, nulls, offsets, values) in zip(schema, columns, strict=True):
        buffers = [pa.py_buffer(validity) if validity is not None else None]
        if offsets is not None:
            buffers.append(pa.py_buffer(offsets))
        buffers.append(pa.py_buffer(values))
        if isinstance(field.type, pa.BaseExtensionType):
            storage = pa.Array.from_buffers(field.type.storage_type, rows, buffers, null_count=nulls)
            arrays.append(pa.ExtensionArray.from_storage(field.type, storage))
        else:
            arrays.append(pa.Array.from_buffers(field.type, rows, buffers, null_count=nulls))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


class UnsupportedShapes:
    """Statement texts whose results this reader cannot decode, so the next run goes
    straight to ADBC without describing them again (bounded; a stale entry only means
    ADBC reads it)."""

    def __init__(self, size: int = 1024) -> None:
        self._texts: OrderedDict[str, None] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def __contains__(self, text: str) -> bool:
        return text in self._texts

    def add(self, text: str) -> None:
        with self._lock:
            self._texts[text] = None
            while len(self._texts) > self._size:
                self._texts.popitem(last=False)
