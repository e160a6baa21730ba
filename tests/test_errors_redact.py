"""Errors are data: the redaction of database error text (table-driven, pure)."""

from __future__ import annotations

import pytest

from warden.gateway.errors_redact import redact_db_error
from warden.gateway.execute import parse_record

# (database text, SQLSTATE, expected redacted text, raw values that must be gone)
CASES: list[tuple[str, str | None, str, tuple[str, ...]]] = [
    (
        'invalid input syntax for type integer: "first1.last7@example.org"',
        "22P02",
        'invalid input syntax for type integer: "<redacted>" [SQLSTATE 22P02]',
        ("first1.last7@example.org",),
    ),
    (
        'date/time field value out of range: "123-45-6789"\nHINT:  Perhaps you need a different "datestyle" setting.',
        "22008",
        'date/time field value out of range: "<redacted>" (details withheld: they may quote data) [SQLSTATE 22008]',
        ("123-45-6789", "datestyle"),
    ),
    (
        "Conversion Error: Could not convert string 'ada@analytical.example' to INT32 when casting from source column email\n\n"
        "LINE 1: SELECT email::int FROM customers\n               ^",
        None,
        "Conversion Error: Could not convert string '<redacted>' to INT32 when casting from source column email "
        "(details withheld: they may quote data)",
        ("ada@analytical.example", "LINE"),
    ),
    (
        'duplicate key value violates unique constraint "customers_email"\nDETAIL:  Key (email)=(ada@analytical.example) already exists.',
        "23505",
        'duplicate key value violates unique constraint "customers_email" (details withheld: they may quote data) [SQLSTATE 23505]',
        ("ada@analytical.example",),
    ),
    ('column "emial" does not exist', "42703", 'column "emial" does not exist [SQLSTATE 42703]', ()),
    ('relation "public.secret" does not exist', None, 'relation "public.secret" does not exist', ()),
    # An identifier word before a value-shaped name does not make it an identifier.
    ('column "ada@x.org" does not exist', None, 'column "<redacted>" does not exist', ("ada@x.org",)),
    ("operator does not exist: text = integer", None, "operator does not exist: <redacted>", ()),
    (
        "Invalid Input Error: Malformed JSON at byte 0 of input: unexpected character.  Input: ada@analytical.example",
        None,
        "Invalid Input Error: Malformed JSON at byte <n> of input: <redacted>",
        ("ada@analytical.example",),
    ),
    (
        "Out of Range Error: Overflow in multiplication of INT32 (123456789 * 1000)!",
        None,
        "Out of Range Error: Overflow in multiplication of INT32 (<n> * <n>)!",
        ("123456789",),
    ),
    ('value "12345678901" is out of range for type integer', None, 'value "<redacted>" is out of range for type integer', ("12345678901",)),
    ("it''s a 'quoted ''value'' here' end", None, "it'<redacted>'s a '<redacted>' end", ("value",)),
    # Unquoted values the rules do not know: the content detectors catch them.
    ("failed near ada@analytical.example now", None, "failed near [email] now", ("ada@analytical.example",)),
    ("", "XX000", "the database reported an error [SQLSTATE XX000]", ()),
    ("boom", "not a state", "boom", ()),
]


@pytest.mark.parametrize(("text", "sqlstate", "expected", "gone"), CASES)
def test_redact_db_error(text: str, sqlstate: str | None, expected: str, gone: tuple[str, ...]) -> None:
    out = redact_db_error(text, sqlstate=sqlstate)
    assert out == expected
    for value in gone:
        assert value not in out


@pytest.mark.parametrize(
    ("text", "fields"),
    [
        ('(1,"Ada Lovelace",ada@analytical.example,123-45-6789,emea)', ["1", "Ada Lovelace", "ada@analytical.example", "123-45-6789", "emea"]),
        ("(1,,x)", ["1", None, "x"]),
        ('(1,"")', ["1", ""]),
        ("()", [None]),
        ('("a ""b"", c","\\\\x")', ['a "b", c', "\\x"]),
        ('(1,"(2,x)")', ["1", "(2,x)"]),
        ("(,)", [None, None]),
    ],
)
def test_parse_record(text: str, fields: list[str | None]) -> None:
    assert parse_record(text) == fields


def test_parse_record_refuses_what_is_not_a_record() -> None:
    with pytest.raises(ValueError):
        parse_record("1,2")


# Property: whatever the value a database echoes, in whichever of its messages, it does not
# survive redaction. (Values without quote characters: a quote inside a quoted value ends
# the quote early, and then at most the characters after it may remain.)
TEMPLATES = [
    'invalid input syntax for type integer: "{v}"',
    'invalid input syntax for type uuid: "{v}"',
    'date/time field value out of range: "{v}"\nHINT:  Perhaps you need a different "datestyle" setting.',
    'value "{v}" is out of range for type integer',
    'duplicate key value violates unique constraint "customers_email"\nDETAIL:  Key (email)=({v}) already exists.',
    'new row for relation "t" violates check constraint "c"\nDETAIL:  Failing row contains (1, {v}).',
    'invalid input value for enum mood: "{v}"',
    'malformed array literal: "{v}"',
    'invalid input syntax for type json\nDETAIL:  Token "{v}" is invalid.\nCONTEXT:  JSON data, line 1: {v}',
    "Conversion Error: Could not convert string '{v}' to INT32 when casting from source column email",
    'Invalid Input Error: Could not parse string "{v}" according to format specifier "%Y"',
    "Conversion Error: Malformed JSON at byte 0 of input: unexpected character.  Input: {v}",
    'Conversion Error: invalid date field format: "{v}", expected format is (YYYY-MM-DD)',
    "Binder Error: No function matches the given name and argument types '{v}'",
]


def test_no_echoed_value_survives() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    alphabet = st.characters(blacklist_characters="'\"\n\r", blacklist_categories=("Cs", "Cc"))
    values = st.one_of(
        st.emails(),
        st.from_regex(r"\A[1-8]\d{2}-\d{2}-\d{4}\Z"),
        st.from_regex(r"\A\d{4,19}\Z"),
        st.text(alphabet=alphabet, min_size=4, max_size=40).filter(lambda v: v.strip() == v and any(c.isalnum() for c in v)),
    )

    @settings(max_examples=400, deadline=None, derandomize=True)
    @given(template=st.sampled_from(TEMPLATES), value=values)
    def check(template: str, value: str) -> None:
        out = redact_db_error(template.format(v=value), sqlstate="22P02")
        rest = out.replace("<redacted>", "\x00").replace("<n>", "\x00")
        rest = rest.replace(" (details withheld: they may quote data)", "\x00").replace(" [SQLSTATE 22P02]", "\x00")
        if value in template.replace("{v}", "\x00"):
            return  # the value is a word of the message itself
        assert value not in rest, (template, value, out)

    check()
