"""warden.masking.detectors: the second net. Table-driven: add a row per new case."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from warden.masking import DETECTORS, Finding, scan_and_mask
from warden.masking.detectors import iban_ok, luhn_ok


def luhn_complete(prefix: str) -> str:
    """``prefix`` plus the check digit that makes it Luhn-valid."""
    for d in "0123456789":
        if luhn_ok(prefix + d):
            return prefix + d
    raise AssertionError  # pragma: no cover


CARD_19 = luhn_complete("622126000000000000")
JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4ifQ."
    "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)
GHP = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"
PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAu1SU1L\n-----END RSA PRIVATE KEY-----"

# (detector, input text, expected output). Expected == input means: must not fire.
CASES: list[tuple[str, str, str]] = [
    # email
    ("email", "alice@example.com", "[email]"),
    ("email", "mail alice.smith+tag@mail.example.co.uk now", "mail [email] now"),
    ("email", "a@b.io, c@d.io", "[email], [email]"),
    ("email", "not an email: alice@localhost", "not an email: alice@localhost"),
    ("email", "@handle and a@b", "@handle and a@b"),
    # card: Luhn-valid 13-19 digits with optional spaces/dashes
    ("card", "4111111111111111", "[card]"),
    ("card", "paid 4111 1111 1111 1111 ok", "paid [card] ok"),
    ("card", "4111-1111-1111-1111", "[card]"),
    ("card", "amex 378282246310005.", "amex [card]."),
    ("card", "card 5500 0000 0000 0004 exp 12/25", "card [card] exp 12/25"),
    ("card", "4111 1111 1111 1111 12/25", "[card] 12/25"),  # expiry glued on the digit run
    ("card", "ref 12 4111 1111 1111 1111", "ref 12 [card]"),
    ("card", f"long {CARD_19}", "long [card]"),
    ("card", "4111111111111112", "4111111111111112"),  # Luhn-invalid: not masked
    ("card", "4111 1111 1111 1112", "4111 1111 1111 1112"),
    ("card", "0000 0000 0000 0000", "0000 0000 0000 0000"),  # Luhn-valid, but no card
    ("card", "order 12345678901234567890123", "order 12345678901234567890123"),  # too long
    ("card", "id 123456789012", "id 123456789012"),  # too short
    # ssn
    ("ssn", "123-45-6789", "[ssn]"),
    ("ssn", "ssn:123-45-6789, ok", "ssn:[ssn], ok"),
    ("ssn", "000-12-3456", "000-12-3456"),
    ("ssn", "666-12-3456", "666-12-3456"),
    ("ssn", "900-12-3456", "900-12-3456"),
    ("ssn", "123-00-6789", "123-00-6789"),
    ("ssn", "123-45-0000", "123-45-0000"),
    ("ssn", "part 2024-123-45-6789", "part 2024-123-45-6789"),  # inside a longer number
    ("ssn", "123-45-67890", "123-45-67890"),
    ("ssn", "123456789", "123456789"),  # undashed nine digits: too ambiguous
    # iban: country length and mod-97
    ("iban", "GB82WEST12345698765432", "[iban]"),
    ("iban", "pay GB82 WEST 1234 5698 7654 32 today", "pay [iban] today"),
    ("iban", "DE89370400440532013000", "[iban]"),
    ("iban", "GB82WEST12345698765432 REF", "[iban] REF"),
    ("iban", "GB82WEST12345698765433", "GB82WEST12345698765433"),  # bad check digits
    ("iban", "XX82WEST12345698765432", "XX82WEST12345698765432"),  # no such country
    ("iban", "GB82WEST1234569876543", "GB82WEST1234569876543"),  # too short for GB
    # phone
    ("phone", "+44 20 7946 0958", "[phone]"),
    ("phone", "call +14155552671 now", "call [phone] now"),
    ("phone", "(555) 123-4567", "[phone]"),
    ("phone", "555-123-4567", "[phone]"),
    ("phone", "tel 555.123.4567.", "tel [phone]."),
    ("phone", "1-800-555-1234", "[phone]"),
    ("phone", "5551234567", "5551234567"),  # a bare integer
    ("phone", "2024-01-15", "2024-01-15"),  # a date
    ("phone", "2024-01-15 10:30:00", "2024-01-15 10:30:00"),
    ("phone", "192.168.100.200", "192.168.100.200"),
    ("phone", "total 1234567890123", "total 1234567890123"),
    ("phone", "v1.2.3 and 3.14159", "v1.2.3 and 3.14159"),
    ("phone", "+1 2", "+1 2"),  # too few digits
    # secret
    ("secret", f"Authorization: Bearer {JWT}", "Authorization: Bearer [secret]"),
    ("secret", "AKIAIOSFODNN7EXAMPLE", "[secret]"),
    ("secret", "key=AKIAIOSFODNN7EXAMPLE;", "key=[secret];"),
    ("secret", f"token {GHP}", "token [secret]"),
    ("secret", "OPENAI_API_KEY=sk-proj-abcdefghijklmnop0123456789", "OPENAI_API_KEY=[secret]"),
    ("secret", "xoxb-123456789012-abcdefghijkl", "[secret]"),
    ("secret", f"{PEM}\ntrailer", "[secret]\ntrailer"),
    ("secret", "-----BEGIN PRIVATE KEY-----\nMIIEv", "[secret]"),
    ("secret", "-----BEGIN PUBLIC KEY-----", "-----BEGIN PUBLIC KEY-----"),
    ("secret", "AKIA is a prefix", "AKIA is a prefix"),
    ("secret", "risk-assessment done", "risk-assessment done"),
    ("secret", "eyJ alone", "eyJ alone"),
]


@pytest.mark.parametrize(("detector", "text", "expected"), CASES)
def test_detector(detector: str, text: str, expected: str) -> None:
    table = pa.table({"c": [text]})
    out, findings = scan_and_mask(table, detectors=[detector])
    assert out.column("c").to_pylist() == [expected]
    fired = expected != text
    assert findings == ((Finding("c", detector, 1),) if fired else ())


@pytest.mark.parametrize(("detector", "text", "expected"), CASES)
def test_all_detectors_together(detector: str, text: str, expected: str) -> None:
    """With every detector on, a positive is still masked by its own detector, and a
    negative of one detector is not masked as anything."""
    out, findings = scan_and_mask(pa.table({"c": [text]}))
    if expected != text:
        assert out.column("c").to_pylist() == [expected]
        assert [f.detector for f in findings] == [detector]
    else:
        assert out.column("c").to_pylist() == [text]
        assert findings == ()


def test_leak_search_for_raw_values() -> None:
    """Search the whole masked output for each raw sensitive value itself."""
    raws = [
        "alice.smith@example.com",
        "4111 1111 1111 1111",
        "4111111111111111",
        "123-45-6789",
        "GB82WEST12345698765432",
        "+44 20 7946 0958",
        "AKIAIOSFODNN7EXAMPLE",
        JWT,
        GHP,
    ]
    rows = [f"row {i}: note about {r} in text" for i, r in enumerate(raws)]
    rows += [" / ".join(raws), None, ""]
    out, _ = scan_and_mask(pa.table({"notes": rows}))
    dump = "\n".join(v for v in out.column("notes").to_pylist() if v is not None)
    for raw in raws:
        assert raw not in dump
        assert raw.replace(" ", "") not in dump.replace(" ", "")


def test_findings_count_rows_per_detector() -> None:
    table = pa.table(
        {
            "a": ["x@y.com and z@w.org", "nothing", None, "4111111111111111", "q@r.io"],
            "b": ["123-45-6789", "clean", "clean", "clean", "clean"],
            "n": [1, 2, 3, 4, 5],
        }
    )
    out, findings = scan_and_mask(table)
    assert findings == (
        Finding("a", "email", 2),
        Finding("a", "card", 1),
        Finding("b", "ssn", 1),
    )
    assert out.column("a").to_pylist() == [
        "[email] and [email]", "nothing", None, "[card]", "[email]",
    ]  # fmt: skip
    assert out.schema == table.schema
    assert out.column("n") == table.column("n")


def test_columns_and_detectors_arguments() -> None:
    table = pa.table({"a": ["x@y.com"], "b": ["x@y.com"], "n": [4111111111111111]})
    out, findings = scan_and_mask(table, ["b", "n"])
    assert out.column("a").to_pylist() == ["x@y.com"]  # not asked for
    assert out.column("b").to_pylist() == ["[email]"]
    assert out.column("n").to_pylist() == [4111111111111111]  # not text: left alone
    assert findings == (Finding("b", "email", 1),)
    out, findings = scan_and_mask(table, detectors=["card"])
    assert findings == ()
    with pytest.raises(ValueError, match="unknown detector"):
        scan_and_mask(table, detectors=["dna"])
    with pytest.raises(ValueError, match="no column"):
        scan_and_mask(table, ["missing"])


def test_string_types_and_chunks() -> None:
    values = ["call 555-123-4567", None, "fine", "x@y.com"]
    expected = ["call [phone]", None, "fine", "[email]"]
    for type_ in (pa.string(), pa.large_string(), pa.string_view()):
        col = pa.chunked_array([values[:2], values[2:]], type=type_)
        out, findings = scan_and_mask(pa.table({"c": col}))
        assert out.column("c").type == type_
        assert out.column("c").to_pylist() == expected
        assert {f.detector: f.rows for f in findings} == {"email": 1, "phone": 1}
    enc = pc.dictionary_encode(pa.array(values + values))
    out, findings = scan_and_mask(pa.table({"c": enc}))
    assert out.column("c").to_pylist() == expected + expected
    assert {f.detector: f.rows for f in findings} == {"email": 2, "phone": 2}


def test_no_candidates_returns_the_same_table() -> None:
    table = pa.table({"c": ["alpha", "beta", None]})
    out, findings = scan_and_mask(table)
    assert findings == () and out.equals(table)
    empty = pa.table({"c": pa.array([], pa.string())})
    assert scan_and_mask(empty) == (empty, ())


def test_many_rows_mixed() -> None:
    # The candidate filter and scatter-back keep every row in place.
    n = 5000
    rows = [f"row {i}" if i % 7 else f"row {i} mail u{i}@example.com" for i in range(n)]
    out, findings = scan_and_mask(pa.table({"c": rows}))
    got = out.column("c").to_pylist()
    assert got == [r if i % 7 else f"row {i} mail [email]" for i, r in enumerate(rows)]
    assert findings == (Finding("c", "email", len(range(0, n, 7))),)


def test_card_column_fast_path_agrees_with_python() -> None:
    """Whole-value cards are Luhn-checked in numpy; the rest go through Python. Both must
    give what the Python masker alone gives."""
    from warden.masking.detectors import _card_masker

    kinds = [
        "4111 1111 1111 1111",  # valid, separated
        "5500000000000004",  # valid, plain
        CARD_19,  # valid, 19 digits
        "4111 1111 1111 1112",  # invalid, separated: windows tried in Python
        "41111111111111112",  # invalid, plain: settled in numpy
        "4111 1111 1111 1111 1",  # invalid as a whole, valid window
        "1111111111111",  # one repeated digit
        "378282246310005",  # amex
    ]
    rows = [kinds[i % len(kinds)] for i in range(400)]
    for type_ in (pa.string(), pa.large_string()):
        out, findings = scan_and_mask(pa.table({"c": pa.array(rows, type_)}), detectors=["card"])
        expected = [_card_masker(r) for r in rows]
        assert out.column("c").to_pylist() == [e[0] for e in expected]
        assert findings == (Finding("c", "card", sum(e[1] for e in expected)),)


def test_validators() -> None:
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert iban_ok("GB82WEST12345698765432") and not iban_ok("GB82WEST12345698765433")
    assert not iban_ok("GB82WEST1234569876543")
    assert DETECTORS == ("secret", "email", "iban", "card", "ssn", "phone")


# A result's size must not change what the second net masks: one row is checked by a
# Python pre-check, hundreds by the numpy/RE2 path. Both must agree on every shape the
# detectors mask (and each masked value must be gone from the output).
SIZE_INDEPENDENT = [
    # (value, the part that must be gone, token)
    ("+1 (234) 567 89", "(234) 567 89", "[phone]"),  # "+", one digit, "(": the phone candidate must see it
    ("call +44 (20) 7946 0958 today", "7946 0958", "[phone]"),
    ("éAKIAIOSFODNN7EXAMPLE", "AKIAIOSFODNN7EXAMPLE", "[secret]"),  # RE2's \b is ASCII: "é" is a boundary
    ("ünïcödéghp_" + "a" * 36, "ghp_" + "a" * 36, "[secret]"),
    ("ßsk_live_" + "b" * 24, "sk_live_" + "b" * 24, "[secret]"),
]


@pytest.mark.parametrize(("value", "raw", "token"), SIZE_INDEPENDENT)
@pytest.mark.parametrize("rows", [1, 3, 300])
def test_what_is_masked_does_not_depend_on_the_result_size(value: str, raw: str, token: str, rows: int) -> None:
    table, findings = scan_and_mask(pa.table({"c": [value] * rows}))
    out = table.column("c").to_pylist()
    assert all(token in v and raw not in v for v in out), out[:2]
    assert sum(f.rows for f in findings) == rows
