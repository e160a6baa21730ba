"""warden.masking.operators: spelling, strength, and every operator over Arrow arrays.

The cases are tables: add a row to cover a new input.
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import hmac
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from warden.masking import (
    STRENGTH,
    MaskOperator,
    escalate_for_transform,
    is_partial,
    mask_array,
    parse_operator,
    render_sql,
    strongest,
)
from warden.masking import operators as ops_mod

KEY = b"test-key-0123456789abcdef0123456"
OTHER_KEY = b"another-key-entirely-different!!"


def op(spec: str) -> MaskOperator:
    return parse_operator(spec)


def hm(value: str | bytes, key: bytes = KEY) -> str:
    data = value.encode() if isinstance(value, str) else value
    return hmac.new(key, data, "sha256").hexdigest()


# --------------------------------------------------------------------------- parsing

PARSE_OK: list[tuple[str, MaskOperator, str]] = [
    # (spelling, operator, canonical spec)
    ("clear", MaskOperator("clear"), "clear"),
    ("redact", MaskOperator("redact"), "redact"),
    ("  REDACT ", MaskOperator("redact"), "redact"),
    ("null", MaskOperator("null"), "null"),
    ("hash", MaskOperator("hash"), "hash"),
    ("Hash", MaskOperator("hash"), "hash"),
    ("email", MaskOperator("email"), "email"),
    ("year", MaskOperator("year"), "year"),
    ("constant:REDACTED", MaskOperator("constant", "REDACTED"), "constant:REDACTED"),
    ("constant:a:b c", MaskOperator("constant", "a:b c"), "constant:a:b c"),
    ("constant:", MaskOperator("constant", ""), "constant:"),
    ("first:4", MaskOperator("first", 4), "first:4"),
    ("first4", MaskOperator("first", 4), "first:4"),
    ("First:12", MaskOperator("first", 12), "first:12"),
    ("last:4", MaskOperator("last", 4), "last:4"),
    ("last4", MaskOperator("last", 4), "last:4"),
    ("LAST2", MaskOperator("last", 2), "last:2"),
    ("sql:left({col}, 1)", MaskOperator("sql", "left({col}, 1)"), "sql:left({col}, 1)"),
    (
        "sql: CASE WHEN {col} IS NULL THEN NULL ELSE '***' END",
        MaskOperator("sql", "CASE WHEN {col} IS NULL THEN NULL ELSE '***' END"),
        "sql:CASE WHEN {col} IS NULL THEN NULL ELSE '***' END",
    ),
    ("sql:'XXX-XX-' || right({col}, 4)", MaskOperator("sql", "'XXX-XX-' || right({col}, 4)"), None),
    ("sql:{col}::text", MaskOperator("sql", "{col}::text"), None),
]


@pytest.mark.parametrize(("text", "expected", "spec"), PARSE_OK)
def test_parse_operator(text: str, expected: MaskOperator, spec: str | None) -> None:
    parsed = parse_operator(text)
    assert parsed == expected
    if spec is not None:
        assert parsed.spec == spec
    assert parse_operator(parsed.spec) == parsed  # the spec round-trips


PARSE_BAD: list[tuple[str, str]] = [
    # (spelling, a fragment of the error message)
    ("", "empty mask operator"),
    ("   ", "empty mask operator"),
    ("mask", "valid operators"),
    ("shuffle", "valid operators"),
    ("redact:3", "takes no argument"),
    ("hash:sha1", "takes no argument"),
    ("null:x", "takes no argument"),
    ("first", "character count"),
    ("first:", "character count"),
    ("first:x", "character count"),
    ("first:-1", "character count"),
    ("last:0", "positive integer"),
    ("last:4.5", "character count"),
    ("first:٣", "character count"),  # a non-ASCII digit is no count
    ("firstname", "character count"),
    ("constant", "constant:TEXT"),
    ("sql", "sql:EXPR"),
    ("sql:", "sql:EXPR"),
    ("sql:upper(name)", "{col}"),
    ("sql:{col} || other_col", "may only reference"),
    ("sql:(SELECT max(x) FROM t) || {col}", "subquery"),
    ("sql:{col}; DROP TABLE users", "single expression"),
    ("sql:{col} FROM users", "not a query"),
    ("sql:{col} AS x", "alias"),
    ("sql:{col} +", "does not parse"),
    ("sql:t.{col}", "not t.{col}"),
]


@pytest.mark.parametrize(("text", "message"), PARSE_BAD)
def test_parse_operator_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("{", r"\{").replace("(", r"\(")):
        parse_operator(text)


def test_unknown_operator_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError) as err:
        parse_operator("scramble")
    for name in ("clear", "redact", "null", "hash", "email", "year", "constant:TEXT", "first:N",
                 "last:N", "sql:EXPR"):  # fmt: skip
        assert name in str(err.value)


@pytest.mark.parametrize(
    ("kind", "arg"),
    [
        ("bogus", None),
        ("first", 0),
        ("first", "4"),
        ("first", True),
        ("redact", 1),
        ("constant", None),
        ("sql", "upper(x)"),
    ],
)
def test_operator_validates_on_construction(kind: str, arg: Any) -> None:
    with pytest.raises(ValueError):
        MaskOperator(kind, arg)


def test_render_sql() -> None:
    assert render_sql(op("sql:left({col}, 1) || '***'"), '"t"."name"') == (
        """(left(("t"."name"), 1) || '***')"""
    )
    with pytest.raises(ValueError):
        render_sql(op("redact"), "x")


# --------------------------------------------------------------------------- strength

STRONGEST: list[tuple[list[str], str]] = [
    # (operators of the sources, the one applied)
    ([], "clear"),
    (["clear"], "clear"),
    (["clear", "year"], "year"),
    (["year", "email"], "email"),
    (["email", "last:4"], "redact"),  # first/last show what email hides: see strongest()
    (["year", "first:4"], "redact"),
    (["first:2", "last:4"], "redact"),
    (["last:4", "last:2"], "last:2"),
    (["first:6", "first:3", "clear"], "first:3"),
    (["last:4", "sql:left({col}, 1)"], "sql:left({col}, 1)"),
    (["sql:left({col}, 1)", "hash"], "hash"),
    (["hash", "redact"], "redact"),
    (["redact", "constant:x"], "constant:x"),
    (["constant:x", "null"], "null"),
    (["null", "clear", "email", "hash", "first:1"], "null"),
    (["email", "email"], "email"),
]


@pytest.mark.parametrize(("specs", "expected"), STRONGEST)
def test_strongest(specs: list[str], expected: str) -> None:
    ops = [op(s) for s in specs]
    assert strongest(ops) == op(expected)
    assert strongest(reversed(ops)) == op(expected)  # order of sources does not matter


def test_strength_table_order() -> None:
    order = ["null", "constant", "redact", "hash", "sql", "first", "email", "year", "clear"]
    ranks = [STRENGTH[k] for k in order]
    assert ranks == sorted(ranks, reverse=True) and len(set(ranks)) == len(ranks)
    assert STRENGTH["first"] == STRENGTH["last"]
    assert set(STRENGTH) == set(ops_mod.KINDS)


@pytest.mark.parametrize(
    ("spec", "partial", "escalated"),
    [
        ("clear", False, "clear"),
        ("redact", False, "redact"),
        ("null", False, "null"),
        ("hash", False, "hash"),
        ("constant:x", False, "constant:x"),
        ("sql:left({col}, 1)", False, "hash"),
        ("first:4", True, "hash"),
        ("last:4", True, "hash"),
        ("email", True, "hash"),
        ("year", True, "hash"),
    ],
)
def test_partial_and_escalation(spec: str, partial: bool, escalated: str) -> None:
    assert is_partial(op(spec)) is partial
    assert escalate_for_transform(op(spec)) == op(escalated)
    # escalation never weakens
    assert STRENGTH[escalate_for_transform(op(spec)).kind] >= STRENGTH[op(spec).kind]


def test_redact_of_a_digest_is_a_fingerprint() -> None:
    """Why a transformed partial escalates to hash, not redact: the digit/letter pattern
    that redact keeps of md5(ssn) almost identifies the SSN, and SSNs are few enough to
    enumerate. So redact would leak exactly what the escalation is meant to stop."""
    ssns = [f"{100 + i % 800:03d}-{1 + i % 98:02d}-{1000 + i:04d}" for i in range(3000)]
    digests = pa.array([hashlib.md5(s.encode()).hexdigest() for s in ssns])
    patterns = mask_array(digests, op("redact"), key=KEY).to_pylist()
    assert len(set(patterns)) > 0.99 * len(ssns)
    hashed = mask_array(digests, escalate_for_transform(op("last:4")), key=KEY).to_pylist()
    assert hashed == [hm(d) for d in digests.to_pylist()]


# --------------------------------------------------------------------------- mask_array

UNI = "Ünïcødé 日本 😀"

# (values, arrow type or None to infer, operator, expected values)
MASK_CASES: list[tuple[list[Any], Any, str, list[Any]]] = [
    # clear
    (["a", None, ""], None, "clear", ["a", None, ""]),
    # null keeps the type
    (["a", None, ""], None, "null", [None, None, None]),
    ([1, 2], None, "null", [None, None]),
    # redact: case kept for ASCII letters, digits -> 9, punctuation/space kept
    (["Alice Smith", "555-12-3456", None, "", "a"], None, "redact",
     ["Xxxxx Xxxxx", "999-99-9999", None, "", "x"]),
    (["x@y.io", "Tab\there", "MiXeD9z!"], None, "redact", ["x@x.xx", "Xxx\txxxx", "XxXxX9x!"]),
    ([UNI, "é", "ÉCOLE"], None, "redact", ["xxxxxxx xx x", "x", "xXXXX"]),
    (["Bob", None], pa.large_string(), "redact", ["Xxx", None]),
    ([12345, -7, None], None, "redact", ["99999", "-9", None]),
    ([1.5, None], None, "redact", ["9.9", None]),
    ([decimal.Decimal("12.30")], None, "redact", ["99.99"]),
    ([dt.date(2024, 5, 6), None], None, "redact", ["9999-99-99", None]),
    ([True, False, None], None, "redact", [None, None, None]),  # shape would be the value
    ([b"secret", None], None, "redact", [None, None]),
    ([[1, 2]], None, "redact", [None]),
    # first / last: shown part, the rest starred; values of <= N characters fully starred
    (["4111111111111111", "abcde", "abcd", "ab", "", None], None, "last:4",
     ["************1111", "*bcde", "****", "**", "", None]),
    (["4111111111111111", "abcde", "abcd", "ab", "", None], None, "first:4",
     ["4111************", "abcd*", "****", "**", "", None]),
    ([UNI, "日本語テキスト", "😀😀😀"], None, "first:2",
     ["Ün**********", "日本*****", "😀😀*"]),
    ([UNI, "日本語テキスト", "😀😀😀"], None, "last:2", ["*" * 10 + " 😀", "*****スト", "*😀😀"]),
    (["abcdef", None], pa.large_string(), "last:3", ["***def", None]),
    ([1234567, None], None, "last:2", ["*****67", None]),
    ([dt.date(2024, 5, 6)], None, "first:4", ["2024******"]),
    ([True], None, "first:1", [None]),
    (["x" * 70], None, "first:65", ["x" * 65 + "*****"]),  # beyond the numpy window
    # email: keep the domain, fixed four stars; non-addresses redacted
    (["alice@example.com", "b@mail.example.org", None, ""], None, "email",
     ["****@example.com", "****@mail.example.org", None, ""]),
    (["not an email", "two@@x.com", "a@b", "a b@c.com", "@x.com", "a@.com", "a@x..com"],
     None, "email",
     ["xxx xx xxxxx", "xxx@@x.xxx", "x@x", "x x@x.xxx", "@x.xxx", "x@.xxx", "x@x..xxx"]),
    (["José@exámple.es"], None, "email", ["****@exámple.es"]),
    (["alice@example.com", "nope"], pa.large_string(), "email", ["****@example.com", "xxxx"]),
    ([42], None, "email", ["99"]),
    # year
    (["2024-05-06", "1999-12-31T23:59:59Z", "2024-02-29", "2023-02-29", "2024-13-01",
      "2024-00-10", "06/05/2024", "2024-05-06 garbage", "", None, "x" * 12],
     None, "year",
     ["2024-01-01", "1999-01-01", "2024-01-01", None, None, None, None, None, None, None,
      None]),
    (["2000-02-29", "1900-02-29", "2023-02-28", "2024-04-31", "2024-04-30", "0999-12-01"],
     None, "year",
     ["2000-01-01", None, "2023-01-01", None, "2024-01-01", "0999-01-01"]),
    ([dt.date(2024, 5, 6), None], None, "year", [dt.date(2024, 1, 1), None]),
    ([dt.datetime(2024, 5, 6, 13, 14)], pa.timestamp("us"), "year", [dt.datetime(2024, 1, 1)]),
    ([1, 2], None, "year", [None, None]),
    # constant
    (["a", None, "", "long value"], None, "constant:[redacted]",
     ["[redacted]", None, "[redacted]", "[redacted]"]),
    ([1, None], None, "constant:***", ["***", None]),
]  # fmt: skip


def _arr(values: list[Any], type_: Any) -> Any:
    return pa.array(values, type=type_) if type_ is not None else pa.array(values)


@pytest.mark.parametrize(("values", "type_", "spec", "expected"), MASK_CASES)
def test_mask_array(values: list[Any], type_: Any, spec: str, expected: list[Any]) -> None:
    arr = _arr(values, type_)
    out = mask_array(arr, op(spec), key=KEY)
    assert out.to_pylist() == expected
    assert len(out) == len(arr)
    # the same through a ChunkedArray of two chunks, a slice and a dictionary
    chunked = pa.chunked_array([arr.slice(0, 1), arr.slice(1)], type=arr.type)
    out_c = mask_array(chunked, op(spec), key=KEY)
    assert isinstance(out_c, pa.ChunkedArray) and out_c.to_pylist() == expected
    padded = pa.concat_arrays([_arr(values[:1], arr.type), arr]).slice(1)
    assert mask_array(padded, op(spec), key=KEY).to_pylist() == expected
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        enc = pc.dictionary_encode(arr)
        assert mask_array(enc, op(spec), key=KEY).to_pylist() == expected


def test_timestamp_year_respects_time_zone() -> None:
    ts = pa.array([dt.datetime(2024, 1, 1, 3, 0)], pa.timestamp("s", tz="UTC"))
    local = ts.cast(pa.timestamp("s", tz="America/New_York"))  # 2023-12-31 22:00 local
    out = mask_array(local, op("year"), key=KEY)
    assert out.type == local.type
    assert out.to_pylist()[0].year == 2023


def test_null_and_year_keep_type() -> None:
    for arr in (pa.array([dt.date(2020, 2, 2)]), pa.array([1], pa.int16())):
        assert mask_array(arr, op("null"), key=KEY).type == arr.type
        assert mask_array(arr, op("year"), key=KEY).type == arr.type


def test_empty_inputs() -> None:
    for spec in ("redact", "first:3", "last:3", "email", "year", "constant:x", "null", "hash"):
        out = mask_array(pa.array([], pa.string()), op(spec), key=KEY)
        assert len(out) == 0
        out_c = mask_array(pa.chunked_array([], pa.string()), op(spec), key=KEY)
        assert isinstance(out_c, pa.ChunkedArray) and len(out_c) == 0


def test_string_view_input() -> None:
    arr = pa.array(["Alice", None], pa.string_view())
    assert mask_array(arr, op("redact"), key=KEY).to_pylist() == ["Xxxxx", None]
    assert mask_array(arr, op("hash"), key=KEY).to_pylist() == [hm("Alice"), None]


def test_sql_is_not_applied_here() -> None:
    with pytest.raises(ValueError, match="gateway"):
        mask_array(pa.array(["a"]), op("sql:upper({col})"), key=KEY)


# --------------------------------------------------------------------------- hash

HASH_VALUES = ["alice@example.com", "", "é", UNI, "a\x00b", "x" * 200, "  spaced  ", "\\x41"]


@pytest.mark.parametrize("rows", [len(HASH_VALUES), 5000, 60_000])
def test_hash_equals_python_hmac(rows: int) -> None:
    # the three sizes take the three paths: Python loop, DuckDB, deduplicated DuckDB
    values: list[str | None] = [HASH_VALUES[i % len(HASH_VALUES)] for i in range(rows)]
    values[1] = None
    out = mask_array(pa.array(values), op("hash"), key=KEY)
    assert out.type == pa.string()
    expected = [None if v is None else hm(v) for v in values]
    assert out.to_pylist() == expected


def test_hash_unique_values_through_duckdb() -> None:
    values = [f"user{i}@example.com" for i in range(6000)]
    out = mask_array(pa.array(values), op("hash"), key=KEY).to_pylist()
    assert out == [hm(v) for v in values]
    assert len(set(out)) == len(values)


def test_hash_is_keyed_and_stable() -> None:
    arr = pa.array(["alice", "bob", "alice"])
    a1 = mask_array(arr, op("hash"), key=KEY).to_pylist()
    a2 = mask_array(arr, op("hash"), key=KEY).to_pylist()
    b = mask_array(arr, op("hash"), key=OTHER_KEY).to_pylist()
    assert a1 == a2  # stable: joins on the masked value work
    assert a1[0] == a1[2] != a1[1]
    assert set(a1).isdisjoint(b)  # keyed: another key, other outputs
    assert a1[0] != hashlib.sha256(b"alice").hexdigest()  # not a plain, guessable digest


def test_hash_long_key() -> None:
    key = b"k" * 100  # longer than the SHA-256 block: hashed first, as RFC 2104 says
    for rows in (3, 5000):
        values = [f"v{i}" for i in range(rows)]
        out = mask_array(pa.array(values), op("hash"), key=key).to_pylist()
        assert out == [hm(v, key) for v in values]


# (values, arrow type, the canonical text/bytes each is hashed as)
HASH_TYPES: list[tuple[list[Any], Any, list[Any]]] = [
    ([5, -1, None], pa.int64(), ["5", "-1", None]),
    ([1.5], pa.float64(), ["1.5"]),
    ([True, False], pa.bool_(), ["true", "false"]),
    ([dt.date(2024, 5, 6)], pa.date32(), ["2024-05-06"]),
    ([decimal.Decimal("1.20")], pa.decimal128(5, 2), ["1.20"]),
    ([b"\x00\xffraw"], pa.binary(), [b"\x00\xffraw"]),
    ([b"\x01\x02"], pa.binary(2), [b"\x01\x02"]),
    (["x", None], pa.large_string(), ["x", None]),
    ([[1, 2], None], pa.list_(pa.int64()), ["[1,2]", None]),
    ([{"b": 1, "a": "x"}], pa.struct([("b", pa.int64()), ("a", pa.string())]),
     ['{"a":"x","b":1}']),
    ([None, None], pa.null(), [None, None]),
]  # fmt: skip


@pytest.mark.parametrize(("values", "type_", "canonical"), HASH_TYPES)
def test_hash_any_type(values: list[Any], type_: Any, canonical: list[Any]) -> None:
    expected = [None if c is None else hm(c) for c in canonical]
    arr = pa.array(values, type=type_)
    assert mask_array(arr, op("hash"), key=KEY).to_pylist() == expected
    # and through DuckDB, on enough rows
    many = pa.chunked_array([arr] * 2100)
    assert mask_array(many, op("hash"), key=KEY).to_pylist() == expected * 2100


def test_hash_dictionary_array() -> None:
    arr = pc.dictionary_encode(pa.array(["a", "b", None, "a"]))
    out = mask_array(arr, op("hash"), key=KEY)
    assert out.to_pylist() == [hm("a"), hm("b"), None, hm("a")]


def test_hash_needs_a_key() -> None:
    with pytest.raises(ValueError, match="key"):
        mask_array(pa.array(["a"]), op("hash"), key=b"")
    with pytest.raises(TypeError):
        mask_array(pa.array(["a"]), op("hash"), key="text")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- leaks

SECRETS = ["4111111111111111", "alice.smith@example.com", "123-45-6789", "Jörg Müller",
           "GB82WEST12345698765432", "2024-05-06"]  # fmt: skip
FULL_HIDING = ["redact", "null", "hash", "constant:[redacted]"]


@pytest.mark.parametrize("spec", [*FULL_HIDING, "email", "year", "first:4", "last:4"])
def test_no_clear_value_survives(spec: str) -> None:
    arr = pa.array([*SECRETS, None])
    out = mask_array(arr, op(spec), key=KEY).to_pylist()
    for raw, masked in zip(SECRETS, out, strict=False):
        if masked is None:
            continue
        # the raw value itself never appears, anywhere in the output column
        assert all(raw not in m for m in out if m is not None), (spec, raw, out)
        if spec in FULL_HIDING:
            # nor does any 4-character run of it that carries letters or digits
            runs = {raw[i : i + 4] for i in range(len(raw) - 3)}
            visible = {r for r in runs if any(c.isalnum() and c not in "xX9" for c in r)}
            if spec == "hash":  # a run of hex digits may occur in a digest by chance
                visible = {r for r in visible if not set(r) <= set("0123456789abcdef")}
            assert not any(r in masked for r in visible), (spec, raw, masked)


@pytest.mark.parametrize("spec", ["redact", "first:2", "last:2", "email"])
def test_no_clear_number_survives(spec: str) -> None:
    arr = pa.array([4111111111111111, 5500000000000004])
    out = mask_array(arr, op(spec), key=KEY).to_pylist()
    assert all(str(v) not in m for v in arr.to_pylist() for m in out)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(st.none(), st.text(min_size=0, max_size=40)), max_size=20))
def test_property_full_hiding_never_contains_input(values: list[str | None]) -> None:
    """For inputs of 4+ characters, redact/hash/null/constant output never contains them.

    Degenerate cases, excluded with reason:
    - redact keeps the shape: an input made only of characters redact maps to themselves
      ('x', 'X', '9', punctuation, spaces: "xx-9") *is* its own shape;
    - hash output is 64 hex digits: an input of hex digits only can occur in it by chance;
    - constant: an input that is a substring of the constant text.
    """
    arr = pa.array(values, pa.string())
    const = "[redacted]"
    outs = {spec: mask_array(arr, op(spec), key=KEY).to_pylist() for spec in FULL_HIDING}
    for i, v in enumerate(values):
        for spec, out in outs.items():
            if v is None:
                assert out[i] is None
                continue
            if len(v) < 4 or out[i] is None:
                continue
            if spec == "redact":
                fixed = set("xX9") | {c for c in v if c.isascii() and not c.isalnum()}
                if set(v) <= fixed:
                    continue
                assert len(out[i]) == len(v)  # one character out per code point in
            if spec == "hash" and set(v) <= set("0123456789abcdef"):
                continue
            if spec.startswith("constant") and v in const:
                continue
            assert v not in out[i], (spec, v, out[i])
