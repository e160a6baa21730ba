"""Mask operators: the policy spelling, their strength order, and vectorised application.

Every operator is applied to a whole Arrow array at once (pyarrow.compute, or numpy over the
Arrow buffers for the hot paths). A Python loop per value appears only where no vectorised
primitive exists (``hash`` on small arrays and on nested types). ``hash`` and ``email`` run
in C over the Arrow buffers when the optional extension ``warden.masking._native`` is built
(setup.py); ``WARDEN_NO_NATIVE=1`` forces the pure paths, which give the same values.

Choices that the policy author can rely on (the tests pin each one):

``redact``
    Keeps the shape, hides the content: ASCII ``A-Z`` -> ``X``, ``a-z`` -> ``x``, ``0-9`` ->
    ``9``; every non-ASCII character -> ``x`` (one per code point, whatever its case);
    ASCII punctuation, whitespace and control characters are kept as the visible structure.
``first:N`` / ``last:N``
    Show the first/last N code points, every other code point becomes ``*`` (length kept).
    A value of N characters or fewer is starred entirely: an operator meant to show *part*
    of a value never shows all of it.
``email``
    ``local@domain`` -> ``****@domain`` (fixed four stars, so the local part's length is
    hidden too); anything that is not a single-``@`` address with a dotted domain is
    redacted as by ``redact``.
``year``
    date/timestamp -> 1 January of the same year, same type (time zones respected); strings
    that are ISO dates (``YYYY-MM-DD``, optionally with an ISO time) -> ``'YYYY-01-01'``;
    everything else -> null.
``hash``
    ``HMAC-SHA256(key, canonical bytes)`` as lowercase hex: strings hash their UTF-8 bytes,
    binaries their raw bytes, other scalars their pyarrow cast-to-string form, nested values
    their canonical JSON. Equal inputs give equal outputs, so joins and GROUP BY still work.
``constant:TEXT`` / ``null``
    Every non-null value becomes TEXT (a string column) / every value becomes null (same type).

Non-string inputs to ``redact``/``first``/``last``/``email`` are cast to string first (a
string column comes out: ``12345`` -> ``'99999'``). Booleans, binaries and nested values have
no shape worth keeping (``'true'``/``'false'`` differ in length, so the shape *is* the
value): they come out null, of their own type.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

try:
    from warden.masking import _native
except ImportError:  # installed without a C compiler: the pure paths below do all the work
    _native = None  # type: ignore[assignment]

__all__ = [
    "CLEAR",
    "KINDS",
    "PARTIAL_KINDS",
    "STRENGTH",
    "MaskOperator",
    "escalate_for_transform",
    "is_partial",
    "mask_array",
    "mask_supported",
    "parse_operator",
    "render_sql",
    "strongest",
]

KINDS: Final = (
    "clear",
    "redact",
    "null",
    "hash",
    "email",
    "year",
    "constant",
    "first",
    "last",
    "sql",
)
PARTIAL_KINDS: Final = frozenset({"first", "last", "email", "year"})

# Larger is stronger. first/last share a rank; between them a smaller N is stronger.
STRENGTH: Final[dict[str, int]] = {
    "null": 90,
    "constant": 80,
    "redact": 70,
    "hash": 60,
    "sql": 50,
    "first": 40,
    "last": 40,
    "email": 30,
    "year": 20,
    "clear": 0,
}

SQL_PLACEHOLDER: Final = "{col}"

_VALID_SPELLINGS = (
    "clear, redact, null, hash, email, year, constant:TEXT, first:N (or firstN), "
    "last:N (or lastN), sql:EXPR (EXPR uses {col} for the column)"
)


# --------------------------------------------------------------------------- the operator


@dataclass(frozen=True)
class MaskOperator:
    """One mask operator. ``arg`` is N for first/last, TEXT for constant, EXPR for sql."""

    kind: str
    arg: str | int | None = None

    def __post_init__(self) -> None:
        # Validate on construction too, so a hand-built operator cannot bypass the parser.
        _check(self.kind, self.arg)

    @property
    def spec(self) -> str:
        """The canonical policy spelling; ``parse_operator(op.spec) == op``."""
        if self.arg is None:
            return self.kind
        return f"{self.kind}:{self.arg}"

    def __str__(self) -> str:
        return self.spec


def _check(kind: str, arg: str | int | None) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown mask operator {kind!r}; valid operators: {_VALID_SPELLINGS}")
    if kind in ("first", "last"):
        if isinstance(arg, bool) or not isinstance(arg, int) or arg < 1:
            raise ValueError(f"{kind}:N needs a positive integer N, got {arg!r}")
    elif kind == "constant":
        if not isinstance(arg, str):
            raise ValueError(f"constant:TEXT needs a text, got {arg!r}")
    elif kind == "sql":
        if not isinstance(arg, str):
            raise ValueError(f"sql:EXPR needs an expression, got {arg!r}")
        _validate_sql(arg)
    elif arg is not None:
        raise ValueError(f"mask operator {kind!r} takes no argument, got {arg!r}")


CLEAR: Final = MaskOperator("clear")
_REDACT: Final = MaskOperator("redact")
_HASH: Final = MaskOperator("hash")


_FIRST_LAST_RE = re.compile(r"(first|last)(?::\s*|)(.*)", re.IGNORECASE | re.DOTALL)


def parse_operator(text: str) -> MaskOperator:
    """Parse the policy spelling of a mask operator.

    Kind names are case-insensitive; the TEXT of ``constant:TEXT`` and the EXPR of
    ``sql:EXPR`` are kept verbatim (everything after the first colon).
    """
    if not isinstance(text, str):
        raise ValueError(f"a mask operator is a string, got {type(text).__name__}")
    spelling = text.strip()
    if not spelling:
        raise ValueError(f"empty mask operator; valid operators: {_VALID_SPELLINGS}")
    head, colon, rest = spelling.partition(":")
    kind = head.strip().lower()
    if kind == "constant":
        if not colon:
            raise ValueError("constant needs a text: constant:TEXT")
        return MaskOperator("constant", rest)
    if kind == "sql":
        if not colon or not rest.strip():
            raise ValueError("sql needs an expression: sql:EXPR, with {col} for the column")
        return MaskOperator("sql", rest.strip())
    m = _FIRST_LAST_RE.fullmatch(spelling)
    if m is not None:
        which, digits = m.group(1).lower(), m.group(2).strip()
        if not digits.isascii() or not digits.isdigit():
            raise ValueError(
                f"{which} needs a character count: {which}:N or {which}N (e.g. {which}:4), "
                f"got {text!r}"
            )
        return MaskOperator(which, int(digits))
    if kind in KINDS and not colon:
        return MaskOperator(kind)
    if kind in KINDS:
        raise ValueError(f"mask operator {kind!r} takes no argument, got {text!r}")
    raise ValueError(f"unknown mask operator {text!r}; valid operators: {_VALID_SPELLINGS}")


# --------------------------------------------------------------------------- sql:EXPR

_SQL_SENTINEL = "warden_masked_column__"


def _validate_sql(expr: str) -> None:
    """A sql mask must be one scalar expression of {col} alone: no statement, no subquery,
    no other column (it would read data whose classification nobody checked)."""
    import sqlglot  # local: only policy loading pays for it
    from sqlglot import exp

    if SQL_PLACEHOLDER not in expr:
        raise ValueError(f"sql mask {expr!r} must use {SQL_PLACEHOLDER} for the masked column")
    if ";" in expr.replace("';'", ""):
        raise ValueError(f"sql mask {expr!r} must be a single expression (no ';')")
    source = "SELECT " + expr.replace(SQL_PLACEHOLDER, _SQL_SENTINEL)
    tree: Any = None
    errors: list[str] = []
    for dialect in (None, "postgres", "duckdb"):
        try:
            statements = sqlglot.parse(source, read=dialect)
        except sqlglot.errors.ParseError as e:
            errors.append(str(e).splitlines()[0])
            continue
        if len(statements) == 1 and statements[0] is not None:
            tree = statements[0]
            break
    if tree is None:
        detail = errors[0] if errors else "not a single expression"
        raise ValueError(f"sql mask {expr!r} does not parse: {detail}")
    if not isinstance(tree, exp.Select) or len(tree.expressions) != 1:
        raise ValueError(f"sql mask {expr!r} must be exactly one scalar expression")
    if any(tree.args.get(k) for k in ("from", "from_", "where", "group", "having", "joins")):
        raise ValueError(f"sql mask {expr!r} must be an expression, not a query")
    inner = tree.expressions[0]
    if isinstance(inner, exp.Alias):
        raise ValueError(f"sql mask {expr!r} must not carry an alias")
    if any(True for _ in inner.find_all(exp.Select, exp.Subquery, exp.Query)):
        raise ValueError(f"sql mask {expr!r} must not contain a subquery")
    others = sorted(
        c.sql().replace(_SQL_SENTINEL, SQL_PLACEHOLDER)
        for c in inner.find_all(exp.Column)
        if c.name != _SQL_SENTINEL or c.table
    )
    if others:
        raise ValueError(
            f"sql mask {expr!r} may only reference {SQL_PLACEHOLDER}, not {', '.join(others)}"
        )


def render_sql(op: MaskOperator, column_sql: str) -> str:
    """The SQL text of a ``sql:EXPR`` mask applied to ``column_sql`` (already quoted)."""
    if op.kind != "sql" or not isinstance(op.arg, str):
        raise ValueError(f"render_sql needs a sql:EXPR operator, got {op.spec!r}")
    return "(" + op.arg.replace(SQL_PLACEHOLDER, f"({column_sql})") + ")"


# --------------------------------------------------------------------------- combining


def is_partial(op: MaskOperator) -> bool:
    """True for operators that deliberately reveal part of the value."""
    return op.kind in PARTIAL_KINDS


def _rank(op: MaskOperator) -> tuple[int, int]:
    # Within first/last, fewer revealed characters is stronger.
    n = -op.arg if op.kind in ("first", "last") and isinstance(op.arg, int) else 0
    return (STRENGTH[op.kind], n)


def strongest(ops: Iterable[MaskOperator]) -> MaskOperator:
    """The operator to apply to a column fed by several classified sources.

    Order: null > constant > redact > hash > sql > first/last (smaller N stronger) > email >
    year > clear; no operators means ``clear``. One refinement of the plain order: first/last
    combined with a partial of another kind (``first`` with ``last``, or with ``email`` or
    ``year``) gives ``redact``, because each shows characters the other hides (``first:4`` of
    an address shows the local part that ``email`` hides; ``first:2`` and ``last:4`` show
    opposite ends), so neither one alone honours both sources. ``email`` with ``year`` keeps
    ``email``: each turns the other's values into a redaction or null, which leaks nothing.
    """
    ops = list(ops)
    if not ops:
        return CLEAR
    best = max(ops, key=_rank)
    if best.kind in ("first", "last") and any(is_partial(o) and o.kind != best.kind for o in ops):
        return _REDACT
    return best


def escalate_for_transform(op: MaskOperator) -> MaskOperator:
    """The operator for an output computed *from* a classified column (md5(ssn), upper(x)).

    A partial operator (and a ``sql`` mask, which is usually a partial written in SQL) on a
    transformed value leaks the source: the last 4 hex digits of md5(ssn) are 16 bits of a
    value with only ~10^9 candidates, so brute force recovers it. ``redact`` is not enough
    either: the letter/digit pattern of a 32-hex-digit digest alone is ~30 bits and all but
    identifies the SSN (tests/test_masking_operators.py shows this). So these escalate to
    ``hash``, whose keyed HMAC cannot be brute-forced without the gateway's key; the other
    operators already hide everything and stay as they are.
    """
    if is_partial(op) or op.kind == "sql":
        return _HASH
    return op


# --------------------------------------------------------------------------- application

ArrayLike = Any  # pa.Array | pa.ChunkedArray (pyarrow ships no type stubs)


def mask_array(values: ArrayLike, op: MaskOperator, *, key: bytes) -> ArrayLike:
    """Apply ``op`` to ``values``; same length, nulls stay null, ChunkedArray in -> out.

    ``key`` is the gateway's secret for ``hash`` (ignored by the other operators).
    ``sql`` masks are applied in the query by the gateway and raise ``ValueError`` here.
    """
    if not isinstance(key, bytes | bytearray):
        raise TypeError("key must be bytes")
    if op.kind == "sql":
        raise ValueError(
            f"{op.spec!r} is applied in the query by the gateway (render_sql); "
            "mask_array cannot apply it to fetched values"
        )
    if op.kind == "hash" and not key:
        raise ValueError("hash needs a non-empty key")
    if isinstance(values, pa.ChunkedArray):
        if op.kind == "hash":
            return _hash(values, bytes(key))
        chunks = [_mask_one(c, op, bytes(key)) for c in values.chunks]
        if not chunks:
            empty = _mask_one(pa.array([], type=values.type), op, bytes(key))
            return pa.chunked_array([], type=empty.type)
        return pa.chunked_array(chunks, type=chunks[0].type)
    if not isinstance(values, pa.Array):
        raise TypeError(f"mask_array needs a pyarrow Array or ChunkedArray, got {type(values)}")
    return _mask_one(values, op, bytes(key))


def _mask_one(a: Any, op: MaskOperator, key: bytes) -> Any:
    t = a.type
    kind = op.kind
    if kind == "clear":
        return a
    if kind == "null":
        return pa.nulls(len(a), type=t)
    if kind == "hash":
        return _hash(a, key)
    if isinstance(t, pa.BaseExtensionType):  # json, uuid, PostgreSQL's opaque types, ...
        return _mask_one(a.storage, op, key)
    if pa.types.is_dictionary(t):
        # Mask each distinct value once; the indices (and so the nulls) stay as they are.
        masked = _mask_one(a.dictionary, op, key)
        return pa.DictionaryArray.from_arrays(a.indices, masked)
    if kind == "constant":
        assert isinstance(op.arg, str)
        out_t = t if _is_text(t) and not pa.types.is_string_view(t) else pa.string()
        return pc.if_else(pc.is_valid(a), pa.scalar(op.arg, out_t), pa.scalar(None, out_t))
    if kind == "year":
        return _year(a)
    # redact / first / last / email work on text.
    if pa.types.is_string_view(t):
        return _mask_one(a.cast(pa.string()), op, key).cast(pa.string_view())
    if not _is_text(t):
        if _has_no_string_form(t):
            return pa.nulls(len(a), type=t)
        try:
            a = pc.cast(a, pa.string())
        except (pa.ArrowNotImplementedError, pa.ArrowInvalid):
            # No text form to keep the shape of: the whole value goes (never passes clear).
            return pa.nulls(len(a), type=t)
    if kind == "redact":
        return _redact(a)
    if kind in ("first", "last"):
        assert isinstance(op.arg, int)
        return _partial(a, op.arg, from_start=kind == "first")
    if kind == "email":
        return _email(a)
    raise AssertionError(f"unhandled operator {op.spec}")  # pragma: no cover


def mask_supported(op: MaskOperator, t: Any) -> bool:
    """Whether ``op`` applies to a column of Arrow type ``t`` (the gateway checks each
    masked column before the first row is sent). Nested values are masked as a whole
    (null, or the hash of their canonical JSON); a value with no text form keeps no shape.
    Answered by masking an all-null row of the type, so it is the same code path."""
    if op.kind == "sql":
        return True  # applied in the query; the result column is what the expression gives
    try:
        out = mask_array(pa.nulls(1, type=t), op, key=b"probe")
    except (pa.ArrowException, ValueError, TypeError, NotImplementedError):
        return False
    return len(out) == 1


def _is_text(t: Any) -> bool:
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t))


def _has_no_string_form(t: Any) -> bool:
    # Types whose cast-to-string shape would reveal the value, or that have no text form.
    return bool(
        pa.types.is_boolean(t)
        or pa.types.is_null(t)
        or pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
        or pa.types.is_fixed_size_binary(t)
        or pa.types.is_binary_view(t)
        or pa.types.is_nested(t)
        or pa.types.is_union(t)
        or pa.types.is_interval(t)
    )


# --------------------------------------------------------------------------- buffer helpers


def _use_native() -> bool:
    """Whether the C kernels of warden.masking._native run (``hash``, ``email``); the
    environment variable WARDEN_NO_NATIVE=1 forces the pure paths (the tests compare them)."""
    return _native is not None and os.environ.get("WARDEN_NO_NATIVE", "") in ("", "0")


def _validity_from_zero(a: Any) -> Any:
    """The validity bitmap of ``a`` starting at bit 0 (None when there are no nulls), for an
    output array built at offset 0 from the kernels' buffers."""
    if a.null_count == 0:
        return None
    if a.offset == 0:
        return a.buffers()[0]
    return pc.is_valid(a).buffers()[1]  # a sliced bitmap does not start at bit 0


class _Text:
    """The bytes and rebased offsets of a (large_)string array, at offset 0."""

    __slots__ = ("data", "n", "null_count", "offset_type", "offsets", "type", "validity")

    data: Any  # numpy uint8 view of the value bytes
    offsets: Any  # numpy int32/int64, starting at 0
    offset_type: Any

    def __init__(self, a: Any) -> None:
        self.type = a.type
        self.n = len(a)
        self.null_count = a.null_count
        large = pa.types.is_large_string(a.type)
        self.offset_type = np.int64 if large else np.int32
        validity, offsets_buf, data_buf = a.buffers()
        offs = np.frombuffer(offsets_buf, dtype=self.offset_type)[a.offset : a.offset + self.n + 1]
        start, end = int(offs[0]), int(offs[-1])
        self.offsets = offs - offs[0] if start else offs
        self.data = (
            np.frombuffer(data_buf, dtype=np.uint8)[start:end]
            if data_buf is not None
            else np.zeros(0, dtype=np.uint8)
        )
        if self.null_count == 0:
            self.validity = None
        elif a.offset == 0:
            self.validity = validity
        else:
            # A sliced bitmap does not start at bit 0; is_valid gives one that does.
            self.validity = pc.is_valid(a).buffers()[1]

    def is_ascii(self) -> bool:
        return bool(self.data.size == 0 or int(self.data.max()) < 0x80)

    def build(self, data: Any, offsets: Any | None = None) -> Any:
        offs = self.offsets if offsets is None else offsets
        return pa.Array.from_buffers(
            self.type,
            self.n,
            [
                self.validity,
                pa.py_buffer(np.ascontiguousarray(offs, self.offset_type)),
                pa.py_buffer(data),
            ],
            null_count=self.null_count,
        )


def _redact_tables() -> tuple[bytes, bytes]:
    table = bytearray(range(256))
    for c in range(ord("a"), ord("z") + 1):
        table[c] = ord("x")
    for c in range(ord("A"), ord("Z") + 1):
        table[c] = ord("X")
    for c in range(ord("0"), ord("9") + 1):
        table[c] = ord("9")
    # A UTF-8 lead byte (or a stray invalid byte) stands for one character: 'x'.
    for c in range(0xC0, 0x100):
        table[c] = ord("x")
    # Continuation bytes are dropped, so one code point becomes one 'x'.
    return bytes(table), bytes(range(0x80, 0xC0))


_REDACT_TABLE, _CONTINUATION = _redact_tables()


_TRANSLATE_STEP = 1 << 18  # pieces that stay in L2 cache: 2x faster than one big pass


def _redact(a: Any) -> Any:
    # bytes.translate is a C table lookup per byte; no per-value work at all.
    text = _Text(a)
    if text.is_ascii():
        src = memoryview(text.data)
        out = np.empty(text.data.size, dtype=np.uint8)
        for i in range(0, text.data.size, _TRANSLATE_STEP):
            piece = bytes(src[i : i + _TRANSLATE_STEP]).translate(_REDACT_TABLE)
            out[i : i + len(piece)] = np.frombuffer(piece, dtype=np.uint8)
        return text.build(out)
    out_bytes = text.data.tobytes().translate(_REDACT_TABLE, _CONTINUATION)
    cont = (text.data & 0xC0) == 0x80
    dropped = np.concatenate(([0], np.cumsum(cont, dtype=np.int64)))
    return text.build(out_bytes, text.offsets - dropped[text.offsets])


_STAR: Final = ord("*")
_NUMPY_MAX_N = 64  # longer windows: the pyarrow path is as fast


def _windows(buf: Any, width: int) -> Any:
    """Every ``width``-byte window of ``buf`` as one element (stride 1, overlapping), so a
    single fancy-index moves a whole head or tail per row instead of one byte per pass."""
    return np.ndarray(
        shape=(buf.size - width + 1,), dtype=np.dtype((np.void, width)), buffer=buf, strides=(1,)
    )


def _partial(a: Any, n: int, *, from_start: bool) -> Any:
    text = _Text(a)
    if n <= _NUMPY_MAX_N and text.is_ascii():
        # ASCII: bytes are characters, so the stars are laid over the buffer directly.
        out = np.full(text.data.size, _STAR, dtype=np.uint8)
        starts, ends = text.offsets[:-1], text.offsets[1:]
        long_enough = (ends - starts) > n
        if long_enough.any():
            base = starts[long_enough] if from_start else ends[long_enough] - n
            _windows(out, n)[base] = _windows(text.data, n)[base]
        return text.build(out)
    length = pc.utf8_length(a)
    rest = pc.subtract(length, n)
    shown = pc.utf8_slice_codeunits(a, 0, n) if from_start else pc.utf8_slice_codeunits(a, -n)
    # binary_repeat needs non-negative counts; the short rows are replaced below anyway.
    stars = pc.binary_repeat(pa.scalar("*", a.type), pc.max_element_wise(rest, 0))
    parts = (shown, stars) if from_start else (stars, shown)
    joined = pc.binary_join_element_wise(*parts, pa.scalar("", a.type))
    all_stars = pc.binary_repeat(pa.scalar("*", a.type), length)
    return pc.if_else(pc.greater(length, n), joined, all_stars)


# One '@', a non-empty local part without spaces, a domain of dotted non-empty labels.
# (RE2's \s is ASCII tab, LF, FF, CR and space; _native.c's email_mask tests the same set.)
_EMAIL_RE: Final = r"^[^@\s]+@[^@\s.]+(?:\.[^@\s.]+)+$"


def _email(a: Any) -> Any:
    if len(a) and _use_native():
        try:
            return _email_native(a)
        except OverflowError:  # over 2 GiB of output in a (32-bit offset) string array
            pass
    return _email_pure(a)


def _email_native(a: Any) -> Any:
    validity, offsets, data = a.buffers()
    width = 8 if pa.types.is_large_string(a.type) else 4
    out_offsets, out_data = _native.email_mask(
        offsets, data, validity if a.null_count else None, a.offset, len(a), width
    )
    return pa.Array.from_buffers(
        a.type,
        len(a),
        [_validity_from_zero(a), pa.py_buffer(out_offsets), pa.py_buffer(out_data)],
        null_count=a.null_count,
    )


def _email_pure(a: Any) -> Any:
    valid = pc.fill_null(pc.match_substring_regex(a, _EMAIL_RE), False)
    n_valid = pc.sum(valid).as_py() or 0
    if n_valid == 0:
        return _redact(a)
    if n_valid == len(a) - a.null_count:
        return _email_domain(a)
    return pc.replace_with_mask(_redact(a), valid, _email_domain(pc.filter(a, valid)))


def _email_domain(a: Any) -> Any:
    # Only called on valid addresses: exactly one '@', so element 1 is the domain.
    domain = pc.list_element(pc.split_pattern(a, "@", max_splits=1), 1)
    return pc.binary_join_element_wise(pa.scalar("****@", a.type), domain, pa.scalar("", a.type))


_ISO_DATE_RE: Final = (
    r"^\d{4}-\d{2}-\d{2}"
    r"(?:[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d{1,9})?)?(?:Z|[+-]\d{2}(?::?\d{2})?)?)?$"
)


def _year(a: Any) -> Any:
    t = a.type
    if pa.types.is_date(t) or pa.types.is_timestamp(t):
        return pc.floor_temporal(a, unit="year")
    if pa.types.is_string_view(t):
        return _year(a.cast(pa.string())).cast(pa.string_view())
    if not _is_text(t):
        return pa.nulls(len(a), type=t)
    return _year_text(a)


_DAYS_IN_MONTH: Final = np.array([0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])
# Byte bounds of YYYY-MM-DD, column by column.
_DATE_LO: Final = np.frombuffer(b"0000-00-00", dtype=np.uint8)
_DATE_HI: Final = np.frombuffer(b"9999-99-99", dtype=np.uint8)


def _year_text(a: Any) -> Any:
    """'YYYY-MM-DD[time]' -> 'YYYY-01-01', anything else -> null.

    The date is checked in numpy on the first ten bytes of every row (strptime would accept
    2024-02-30 and strftime runs at ~1 M/s); only rows longer than a date go through RE2
    to check that what follows is an ISO time.
    """
    text = _Text(a)
    n = text.n
    starts = text.offsets[:-1]
    lengths = text.offsets[1:] - starts
    maybe = lengths >= 10
    if text.validity is not None:
        maybe &= pc.is_valid(a).to_numpy(zero_copy_only=False)
    rows = np.flatnonzero(maybe)
    heads = np.zeros((0, 10), dtype=np.uint8)
    if rows.size:
        # A fresh (rows, 10) copy of each row's first ten bytes.
        heads = _windows(text.data, 10)[starts[rows]].view(np.uint8).reshape(-1, 10)
        good = np.ones(rows.size, dtype=bool)
        for c in range(10):  # column by column: 2x faster than a (rows, 10) reduction
            good &= (heads[:, c] >= _DATE_LO[c]) & (heads[:, c] <= _DATE_HI[c])

        def num(*cols: int) -> Any:
            value = np.zeros(rows.size, dtype=np.int32)
            for c in cols:
                value = value * 10 + heads[:, c] - 48
            return value

        year, month, day = num(0, 1, 2, 3), num(5, 6), num(8, 9)
        month_ok = (month >= 1) & (month <= 12)
        good &= month_ok & (day >= 1) & (day <= _DAYS_IN_MONTH[np.where(month_ok, month, 0)])
        # 29 February needs a leap year; checked on those few rows only.
        feb29 = np.flatnonzero((month == 2) & (day == 29))
        y = year[feb29]
        good[feb29] &= (y % 4 == 0) & ((y % 100 != 0) | (y % 400 == 0))
        longer = good & (lengths[rows] > 10)
        if longer.any():
            tails = pc.match_substring_regex(pc.take(a, pa.array(rows[longer])), _ISO_DATE_RE)
            good[longer] = pc.fill_null(tails, False).to_numpy(zero_copy_only=False)
        if not good.all():
            rows, heads = rows[good], heads[good]
    heads[:, 4:] = np.frombuffer(b"-01-01", dtype=np.uint8)
    if rows.size == n:
        validity = None
        offsets = np.arange(0, 10 * n + 1, 10, dtype=text.offset_type)
    else:
        valid = np.zeros(n, dtype=bool)
        valid[rows] = True
        validity = pa.py_buffer(np.packbits(valid, bitorder="little"))
        offsets = np.zeros(n + 1, dtype=text.offset_type)
        np.cumsum(valid * 10, out=offsets[1:])
    return pa.Array.from_buffers(
        a.type,
        n,
        [validity, pa.py_buffer(offsets), pa.py_buffer(heads)],
        null_count=n - rows.size,
    )


# --------------------------------------------------------------------------- hash


def _pads(key: bytes) -> tuple[bytes, bytes]:
    # RFC 2104: keys longer than the block are hashed first, shorter ones zero-padded.
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    key = key.ljust(64, b"\0")
    return bytes(b ^ 0x36 for b in key), bytes(b ^ 0x5C for b in key)


def _canonical(a: Any) -> Any:
    """An array of the bytes to hash: string or binary, same length and nulls."""
    if isinstance(a, pa.ChunkedArray):
        chunks = [_canonical(c) for c in a.chunks]
        if not chunks:
            return pa.chunked_array([], type=pa.string())
        return pa.chunked_array(chunks)
    t = a.type
    if isinstance(t, pa.BaseExtensionType):
        return _canonical(a.storage)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return a
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return a
    if pa.types.is_string_view(t):
        return a.cast(pa.large_string())
    if pa.types.is_binary_view(t) or pa.types.is_fixed_size_binary(t):
        return a.cast(pa.large_binary())
    if pa.types.is_null(t):
        return pa.nulls(len(a), type=pa.string())
    if pa.types.is_dictionary(t):
        return _canonical(a.cast(t.value_type))
    if pa.types.is_nested(t) or pa.types.is_union(t) or pa.types.is_interval(t):
        # Rare; no vectorised serialisation of nested values exists, so canonical JSON.
        return pa.array(
            [
                None
                if v is None
                else json.dumps(
                    v, sort_keys=True, default=str, separators=(",", ":"), ensure_ascii=False
                )
                for v in a.to_pylist()
            ],
            type=pa.string(),
        )
    return pc.cast(a, pa.string())


def _hash(values: Any, key: bytes) -> Any:
    if pa.types.is_dictionary(values.type) and isinstance(values, pa.Array):
        # Hash each distinct value once.
        return pa.DictionaryArray.from_arrays(values.indices, _hash(values.dictionary, key))
    data = _canonical(values)
    chunked = isinstance(data, pa.ChunkedArray)
    if len(data) >= _DEDUP_MIN_ROWS and _mostly_repeated(data):
        flat = data.combine_chunks() if chunked else data
        enc = pc.dictionary_encode(flat)
        out = pc.take(_hmac_hex(enc.dictionary, key), enc.indices)
        return pa.chunked_array([out]) if chunked else out
    out = _hmac_hex(data, key)
    if chunked and not isinstance(out, pa.ChunkedArray):
        return pa.chunked_array([out])
    if not chunked and isinstance(out, pa.ChunkedArray):
        return out.combine_chunks() if out.num_chunks != 1 else out.chunk(0)
    return out


_DEDUP_MIN_ROWS = 50_000
_DEDUP_SAMPLE = 8192


def _mostly_repeated(data: Any) -> bool:
    """Estimate from a sample whether fewer than half the rows are distinct.

    Drawing s rows (with replacement) from D equally frequent values shows on average
    D * (1 - exp(-s/D)) distinct ones; invert that for D. Deduplicating costs about a
    dictionary_encode and pays for itself once half the HMACs can be skipped.
    """
    n = len(data)
    rng = np.random.default_rng(0x5EED)
    idx = pa.array(rng.integers(0, n, _DEDUP_SAMPLE))
    seen = len(pc.unique(pc.take(data, idx)))
    if seen >= _DEDUP_SAMPLE:
        return False
    lo, hi = float(seen), 1e15
    for _ in range(100):
        mid = math.sqrt(lo * hi)
        if mid * -math.expm1(-_DEDUP_SAMPLE / mid) < seen:
            lo = mid
        else:
            hi = mid
        if hi / lo < 1.01:
            break
    return lo < 0.5 * n


# Below this many rows a Python loop over hashlib beats DuckDB's per-query overhead.
_DUCKDB_MIN_ROWS = 4096

_duck_lock = threading.Lock()
_duck_db: Any = None


def _duck() -> Any:
    global _duck_db
    with _duck_lock:
        if _duck_db is None:
            import duckdb

            _duck_db = duckdb.connect(":memory:")
        # One cursor per call: a DuckDB connection must not be shared across threads.
        return _duck_db.cursor()


def _hmac_hex(data: Any, key: bytes) -> Any:
    """HMAC-SHA256 hex of each value of a string/binary array (nulls stay null)."""
    if _use_native():
        return _hmac_hex_native(data, key)
    return _hmac_hex_pure(data, key)


# 64-byte digests: the output of this many rows stays below 2 GiB (int32 string offsets).
_NATIVE_HASH_ROWS = 1 << 24


def _hmac_hex_native(data: Any, key: bytes) -> Any:
    if isinstance(data, pa.ChunkedArray) or len(data) > _NATIVE_HASH_ROWS:
        chunks = data.chunks if isinstance(data, pa.ChunkedArray) else [data]
        return pa.chunked_array(
            [
                _hmac_hex_native_one(c.slice(i, _NATIVE_HASH_ROWS), key)
                for c in chunks
                for i in range(0, len(c), _NATIVE_HASH_ROWS)
            ],
            type=pa.string(),
        )
    return _hmac_hex_native_one(data, key)


def _hmac_hex_native_one(a: Any, key: bytes) -> Any:
    if len(a) == 0:
        return pa.array([], type=pa.string())
    validity, offsets, data = a.buffers()
    large = pa.types.is_large_string(a.type) or pa.types.is_large_binary(a.type)
    out_offsets, out_data = _native.hmac_sha256_hex(
        key, offsets, data, validity if a.null_count else None, a.offset, len(a), 8 if large else 4
    )
    return pa.Array.from_buffers(
        pa.string(),
        len(a),
        [_validity_from_zero(a), pa.py_buffer(out_offsets), pa.py_buffer(out_data)],
        null_count=a.null_count,
    )


def _hmac_hex_pure(data: Any, key: bytes) -> Any:
    if len(data) < _DUCKDB_MIN_ROWS:
        return _hmac_hex_python(data, key)
    return _hmac_hex_duckdb(data, key)


def _hmac_hex_python(data: Any, key: bytes) -> Any:
    ipad, opad = _pads(key)
    inner0, outer0 = hashlib.sha256(ipad), hashlib.sha256(opad)
    to_bytes: Callable[[Any], bytes] = (
        (lambda v: v.encode("utf-8")) if _is_text(data.type) else bytes
    )
    out: list[str | None] = []
    for v in data.to_pylist():
        if v is None:
            out.append(None)
            continue
        inner = inner0.copy()
        inner.update(to_bytes(v))
        outer = outer0.copy()
        outer.update(inner.digest())
        out.append(outer.hexdigest())
    arr = pa.array(out, type=pa.string())
    return pa.chunked_array([arr]) if isinstance(data, pa.ChunkedArray) else arr


def _hmac_hex_duckdb(data: Any, key: bytes) -> Any:
    # HMAC = H((K^opad) || H((K^ipad) || m)), both hashes by DuckDB's sha256 over BLOBs, in
    # parallel over the Arrow data. encode() takes a VARCHAR's UTF-8 bytes verbatim (a cast
    # to BLOB would interpret '\x..' escapes). The pads travel as parameters, not SQL text.
    ipad, opad = _pads(key)
    value = "encode(v)" if _is_text(data.type) else "v"
    cur = _duck()
    try:
        cur.register("warden_mask_input", pa.table({"v": data}))
        result = cur.sql(
            f"SELECT sha256($1 || unhex(sha256($2 || {value}))) AS h FROM warden_mask_input",
            params=[opad, ipad],
        ).to_arrow_table()
    finally:
        cur.close()
    col = result.column("h")
    if col.type != pa.string():
        col = col.cast(pa.string())
    return col
