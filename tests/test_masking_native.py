"""warden.masking._native: the C kernels of ``hash`` and ``email`` give exactly what the pure
paths give.

hmac_sha256_hex is compared with Python's hmac (both SHA-256 implementations: the x86 SHA
instructions and the portable code), email_mask with operators._email_pure on hostile
inputs. Each value is tested in small arrays (the kernels' scalar code near the end of the
data buffer) and inside padded ones (the 16-byte-at-a-time code, which needs bytes to read
past a value).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from warden.masking import mask_array, parse_operator
from warden.masking import operators as ops

native = pytest.importorskip(
    "warden.masking._native", reason="the optional C extension was not built"
)

KEY = b"test-key-0123456789abcdef0123456"
SETTINGS = settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
PORTABLE = pytest.mark.parametrize(
    "portable", [False, True], ids=["sha-ni-if-available", "portable"]
)
BINARY_TYPES = [pa.binary(), pa.large_binary()]
TEXT_TYPES = [pa.string(), pa.large_string()]
PAD = "#" * 200  # a long last value: every value before it has bytes to read past its end


def expected_hmac(values: list[Any], key: bytes) -> list[str | None]:
    return [
        None
        if v is None
        else hmac.new(key, v.encode() if isinstance(v, str) else v, hashlib.sha256).hexdigest()
        for v in values
    ]


def native_hmac(a: Any, key: bytes, **kwargs: Any) -> list[str | None]:
    """The kernel called directly on the buffers of ``a`` (which may be sliced)."""
    validity, offsets, data = a.buffers()
    large = pa.types.is_large_string(a.type) or pa.types.is_large_binary(a.type)
    out_offsets, out_data = native.hmac_sha256_hex(
        key,
        offsets,
        data,
        validity if a.null_count else None,
        a.offset,
        len(a),
        8 if large else 4,
        **kwargs,
    )
    out = pa.Array.from_buffers(
        pa.string(),
        len(a),
        [ops._validity_from_zero(a), pa.py_buffer(out_offsets), pa.py_buffer(out_data)],
        null_count=a.null_count,
    )
    out.validate(full=True)
    result: list[str | None] = out.to_pylist()
    return result


def sliced(values: list[Any], type_: Any, start: int, pad: Any) -> Any:
    """``values`` as an array of ``type_`` whose offset is ``start`` (with ``start`` rows
    of ``pad`` before it and one after it, inside the same buffers)."""
    whole = pa.array([pad] * start + values + [pad], type=type_)
    return whole.slice(start, len(values))


# --------------------------------------------------------------------------- hmac


def test_sha_ni_detection_is_a_bool() -> None:
    assert isinstance(native.sha_ni_available(), bool)


@PORTABLE
@SETTINGS
@given(
    values=st.lists(st.none() | st.binary(min_size=0, max_size=300), max_size=40),
    key=st.binary(min_size=1, max_size=100),
    type_=st.sampled_from(BINARY_TYPES),
    start=st.integers(0, 9),
    threads=st.sampled_from([0, 1, 2, 3]),
)
def test_hmac_binary_equals_python(
    portable: bool, values: list[bytes | None], key: bytes, type_: Any, start: int, threads: int
) -> None:
    a = sliced(values, type_, start, b"pad")
    assert native_hmac(a, key, portable=portable, threads=threads) == expected_hmac(values, key)


@PORTABLE
@SETTINGS
@given(
    values=st.lists(st.none() | st.text(max_size=120), max_size=40),
    key=st.binary(min_size=1, max_size=100),
    type_=st.sampled_from(TEXT_TYPES),
    start=st.integers(0, 9),
)
def test_hmac_text_equals_python(
    portable: bool, values: list[str | None], key: bytes, type_: Any, start: int
) -> None:
    a = sliced(values, type_, start, "pad")
    assert native_hmac(a, key, portable=portable) == expected_hmac(values, key)


@PORTABLE
@pytest.mark.parametrize("key_len", [1, 31, 32, 55, 56, 63, 64, 65, 100, 200])
def test_hmac_every_length_and_block_boundary(portable: bool, key_len: int) -> None:
    # 0..300 bytes: one, two, three... compressions; 55/56 and 119/120 are where the
    # padding spills into one more block. Keys over 64 bytes are hashed first (RFC 2104).
    key = bytes((7 * i + key_len) % 256 for i in range(key_len))
    values: list[bytes | None] = [bytes((i * 31 + j) % 256 for j in range(i)) for i in range(301)]
    values[5] = values[77] = None
    for type_ in BINARY_TYPES:
        a = pa.array(values, type=type_)
        want = expected_hmac(values, key)
        assert native_hmac(a, key, portable=portable) == want
        assert native_hmac(a[3:], key, portable=portable) == want[3:]


@PORTABLE
def test_hmac_split_over_threads(portable: bool) -> None:
    # Enough rows for the automatic split; every split point (an odd count of short values
    # before it, a pending pair) must give the same digests as one thread.
    rows = 40_000 if not portable else 12_000
    values: list[str | None] = [f"user{i}@example.com" * (1 + i % 5) for i in range(rows)]
    for i in range(0, rows, 7):
        values[i] = None
    a = pa.array(values)
    want = expected_hmac(values, KEY)
    for threads in (0, 2, 3, 16):
        assert native_hmac(a, KEY, portable=portable, threads=threads) == want


def test_hmac_all_nulls_and_empty() -> None:
    for type_ in [*BINARY_TYPES, *TEXT_TYPES]:
        assert native_hmac(pa.nulls(5, type=type_), KEY) == [None] * 5
        assert native_hmac(pa.array([""], type=type_), KEY) == expected_hmac([b""], KEY)
        assert native_hmac(pa.array([], type=type_), KEY) == []


def test_hmac_rejects_bad_buffers() -> None:
    a = pa.array(["abc", "de"])
    _, offsets, data = a.buffers()
    with pytest.raises(ValueError, match="key"):
        native.hmac_sha256_hex(b"", offsets, data, None, 0, 2, 4)
    with pytest.raises(ValueError, match="offset_width"):
        native.hmac_sha256_hex(KEY, offsets, data, None, 0, 2, 2)
    with pytest.raises(ValueError, match="shorter"):
        native.hmac_sha256_hex(KEY, offsets, data, None, 0, 3, 4)
    with pytest.raises(ValueError, match="outside"):
        native.hmac_sha256_hex(KEY, offsets, b"ab", None, 0, 2, 4)
    with pytest.raises(ValueError, match="outside"):
        native.email_mask(offsets, b"ab", None, 0, 2, 4)
    with pytest.raises(ValueError, match="shorter"):
        native.email_mask(offsets, data, b"", 0, 2, 4)


# --------------------------------------------------------------------------- hash via mask_array


@pytest.mark.parametrize("rows", [3, 5000, 60_000])
def test_mask_array_hash_native_equals_pure(rows: int, monkeypatch: pytest.MonkeyPatch) -> None:
    values: list[str | None] = [f"v{i % 997}-é" for i in range(rows)]
    values[1] = None
    a = pa.array(values)
    op = parse_operator("hash")
    assert ops._use_native()
    got = mask_array(a, op, key=KEY)
    chunked = mask_array(pa.chunked_array([a[:2], a[2:]]), op, key=KEY)
    monkeypatch.setenv("WARDEN_NO_NATIVE", "1")
    assert not ops._use_native()
    pure = mask_array(a, op, key=KEY)
    assert got.type == pure.type == pa.string()
    assert got.to_pylist() == pure.to_pylist() == expected_hmac(values, KEY)
    assert isinstance(chunked, pa.ChunkedArray)
    assert chunked.to_pylist() == got.to_pylist()


def test_native_hash_slices_huge_arrays(monkeypatch: pytest.MonkeyPatch) -> None:
    # Past _NATIVE_HASH_ROWS rows the digests go into several chunks (int32 offsets).
    monkeypatch.setattr(ops, "_NATIVE_HASH_ROWS", 4)
    values = [f"x{i}" for i in range(10)]
    out = ops._hmac_hex(pa.array(values), KEY)
    assert isinstance(out, pa.ChunkedArray) and out.num_chunks == 3
    assert out.to_pylist() == expected_hmac(values, KEY)


# --------------------------------------------------------------------------- email

HOSTILE: list[str | None] = [
    "",
    "@",
    "a@b",
    "a@@b.c",
    "a@b..c",
    "a@b.c",
    "a@b.c.",
    "a@.b.c",
    ".@b.c",
    "a.@b.c",
    "a..b@c.d",
    "@b.c",
    "a@",
    "a@b.c@",
    "a@b.c@d.e",
    " a@b.c",
    "a@b.c ",
    "a b@c.d",
    "a@b c.d",
    "a\t@b.c",
    "a@b.c\n",
    "a@b\r.c",
    "a@b.\x0cc",
    "a\x0bb@c.d",  # \v is not a space to RE2
    "a\x00b@c.d",
    "a\x1f@b.c",
    "a\x7f@b.c",
    "José@exámple.es",
    "ñ@ü.x",
    "a\u00a0b@c.d",  # no-break space: not \s either
    "a@b\u2003.c",
    "😀@😀.😀",
    "x" * 63 + "@b.c",
    "x@" + "b." * 30 + "c",
    "x" * 60 + "@b.c",
    "x" * 58 + "@b.cd",
    "x" * 61 + "@b.c",
    "a@" + "b" * 61 + ".c",
    "a@" + "b" * 62 + ".",
    "y" * 70 + "@example.com",
    "Über 12 € and 3 ünïcödé words",
    "ABCdef0123456789" * 5,
    "MiXeD.Case+tag@Sub.Example.ORG",
    None,
    "not an email",
    "two@@x.com",
    "\u00e9\u0301@x.y",
]


def native_email(a: Any) -> Any:
    out = ops._email_native(a)
    out.validate(full=True)
    return out


@pytest.mark.parametrize("type_", TEXT_TYPES)
@pytest.mark.parametrize("padded", [False, True], ids=["scalar", "simd"])
def test_email_hostile_inputs(type_: Any, padded: bool) -> None:
    pad = PAD if padded else "p"
    for start in (0, 1, 5):
        a = sliced(HOSTILE, type_, start, pad)
        got = native_email(a)
        assert got.type == type_
        assert got.to_pylist() == ops._email_pure(a).to_pylist()
        for value in HOSTILE:  # each alone too: nothing to read past it
            one = pa.array([value], type=type_)
            assert native_email(one).to_pylist() == ops._email_pure(one).to_pylist(), value


def test_email_known_answers() -> None:
    a = pa.array(["a@b.c", "a@b", None, "José@exámple.es", "a\x0bb@c.d", "Ab 9é"])
    assert native_email(a).to_pylist() == [
        "****@b.c",
        "x@x",
        None,
        "****@exámple.es",
        "****@c.d",
        "Xx 9x",
    ]


EMAIL_CHARS = ["a", "b", "Z", "7", ".", "@", "-", "_", "+", " ", "\t", "\n", "\r", "\x0b"]
EMAIL_CHARS += ["\x0c", "\x00", "\x1f", "\x7f", "é", "€", "😀", "\u00a0", "\u2028", "\x85"]
EMAIL_ALPHABET = st.sampled_from(EMAIL_CHARS)
PART = st.text(alphabet=EMAIL_ALPHABET, max_size=25) | st.text(
    alphabet=st.sampled_from(["a", "b", "7"]), min_size=1, max_size=25
)
ADDRESS = st.builds(
    lambda local, labels: local + "@" + ".".join(labels), PART, st.lists(PART, max_size=4)
)


@SETTINGS
@given(
    values=st.lists(st.none() | ADDRESS | st.text(max_size=80), max_size=30),
    type_=st.sampled_from(TEXT_TYPES),
    start=st.integers(0, 5),
    padded=st.booleans(),
)
def test_email_native_equals_pure(
    values: list[str | None], type_: Any, start: int, padded: bool
) -> None:
    a = sliced(values, type_, start, PAD if padded else "p")
    assert native_email(a).to_pylist() == ops._email_pure(a).to_pylist()


def test_mask_array_email_native_equals_pure(monkeypatch: pytest.MonkeyPatch) -> None:
    values = [*HOSTILE, *(f"user{i}@mail{i % 7}.example.org" for i in range(2000))]
    op = parse_operator("email")
    for a in (
        pa.array(values),
        pa.array(values, pa.large_string()),
        pc.dictionary_encode(pa.array(values)),
    ):
        monkeypatch.delenv("WARDEN_NO_NATIVE", raising=False)
        got = mask_array(a, op, key=KEY).to_pylist()
        monkeypatch.setenv("WARDEN_NO_NATIVE", "1")
        assert got == mask_array(a, op, key=KEY).to_pylist()
