"""The vectorised content detectors against the per-candidate reference.

``_scan_values`` (numpy row flags, numpy card/SSN masking, numpy IBAN mod-97) must mask
exactly what ``_reference_scan_values`` (the implementation it replaced: RE2 candidates,
Python ``re`` per candidate row) masks: the same output values and the same rows per
detector. Property tests over text built from the pieces the detectors look at: digits,
separators, hex, letters, non-ASCII, and real or nearly-real cards, IBANs, SSNs, phones,
e-mail addresses and secrets; with nulls, sliced arrays, string and large_string.
"""

from __future__ import annotations

from typing import Any
from unittest import mock

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from warden.masking import detectors as det
from warden.masking.detectors import (
    _DETECTORS,
    DETECTORS,
    _card_masker,
    _flag_rows,
    _mask_cards,
    _mask_ssns,
    _reference_scan_values,
    _scan_values,
    luhn_ok,
)


def luhn_complete(prefix: str) -> str:
    for d in "0123456789":
        if luhn_ok(prefix + d):
            return prefix + d
    raise AssertionError  # pragma: no cover


CARDS = [
    "4111111111111111",
    "4111 1111 1111 1111",
    "4111-1111-1111-1111",
    "5500 0000 0000 0004",
    "378282246310005",
    luhn_complete("622126000000000000"),  # 19 digits
    luhn_complete("401288888888"),  # 13 digits
    "4111111111111112",  # Luhn-invalid
    "0000 0000 0000 0000",  # valid Luhn, one repeated digit
    "1111111111111",
]
IBANS = [
    "GB82WEST12345698765432",
    "GB82 WEST 1234 5698 7654 32",
    "DE89370400440532013000",
    "DE89 3704 0044 0532 0130 00",
    "NO9386011117947",
    "GB82WEST12345698765433",  # bad check digits
    "XX82WEST12345698765432",  # no such country
    "GB82WEST1234569876543",  # too short
    "GB82WEST123456987654321",  # too long: a GB IBAN and a glued digit
]
SSNS = [
    "123-45-6789",
    "000-12-3456",
    "666-12-3456",
    "900-12-3456",
    "123-00-6789",
    "123-45-0000",
    "078-05-1120",
]
PHONES = [
    "+44 20 7946 0958",
    "+14155552671",
    "(555) 123-4567",
    "555-123-4567",
    "555.123.4567",
    "1-800-555-1234",
    "+1 (234) 567 89",
    "+1 2",
    "2024-01-15",
]
EMAILS = ["alice@example.com", "a.b+c@mail.example.co.uk", "x@y", "@handle", "bob@localhost"]
SECRETS = [
    "AKIAIOSFODNN7EXAMPLE",
    "ASIA0123456789ABCDEF",
    "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8",
    "github_pat_" + "a" * 40,
    "sk-proj-abcdefghijklmnop0123456789",
    "sk_live_" + "0123456789abcdef",
    "xoxb-123456789012-abcdefghijkl",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c",
    "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----",
    "-----BEGIN PRIVATE KEY-----",
    "risk-assessment",
]
KNOWN = CARDS + IBANS + SSNS + PHONES + EMAILS + SECRETS

PIECES = st.one_of(
    st.text(alphabet="0123456789", min_size=1, max_size=22),
    st.text(alphabet="0123456789 -", min_size=1, max_size=30),
    st.text(alphabet="0123456789 -.()+", min_size=1, max_size=20),
    st.text(alphabet="0123456789abcdef", min_size=1, max_size=40),
    st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ", min_size=1, max_size=34),
    st.text(alphabet="abcxyzAKIJSey_@.-+() \n", min_size=1, max_size=12),
    st.text(alphabet="é中٣５\u00a0\u2013\U0001f600", min_size=1, max_size=3),
    st.sampled_from(KNOWN),
    st.sampled_from(KNOWN).map(lambda s: s.replace(" ", "")),
)
TEXT = st.lists(
    st.tuples(
        PIECES, st.sampled_from(["", " ", "-", "--", ".", ",", "(", ")", "+", "é", "\n", "x", "7"])
    ),
    max_size=6,
).map(lambda parts: "".join(p + sep for p, sep in parts))
VALUES = st.lists(st.one_of(TEXT, st.none()), min_size=1, max_size=12)
SUBSETS = st.one_of(st.none(), st.lists(st.sampled_from(DETECTORS), unique=True, min_size=1))


def _array(values: list[str | None], large: bool, lead: int, tail: int) -> Any:
    """``values`` as an Arrow array whose offset is ``lead`` (a slice of a longer one)."""
    type_ = pa.large_string() if large else pa.string()
    padded = ["4111111111111111 pad"] * lead + values + ["x@y.com 555-123-4567"] * tail
    return pa.array(padded, type=type_).slice(lead, len(values))


def _chosen(names: list[str] | None) -> list[Any]:
    return det._chosen_detectors(names)


def _assert_same(a: Any, names: list[str] | None) -> None:
    chosen = _chosen(names)
    got, got_hits = _scan_values(a, chosen)
    want, want_hits = _reference_scan_values(a, chosen)
    assert got.type == a.type
    assert got.to_pylist() == want.to_pylist()
    assert sorted(got_hits) == sorted(want_hits)
    for name, mask in want_hits.items():
        assert pa.array(got_hits[name]).to_pylist() == pa.array(mask).to_pylist(), name


@settings(max_examples=400, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    values=VALUES,
    large=st.booleans(),
    lead=st.integers(0, 3),
    tail=st.integers(0, 2),
    names=SUBSETS,
)
def test_same_masks_as_the_reference(
    values: list[str | None], large: bool, lead: int, tail: int, names: list[str] | None
) -> None:
    _assert_same(_array(values, large, lead, tail), names)


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(values=VALUES, large=st.booleans(), lead=st.integers(0, 3))
def test_same_masks_past_the_small_result_shortcut(
    values: list[str | None], large: bool, lead: int
) -> None:
    """More than ``_SMALL`` rows: no Python pre-check, the flags alone pick the rows."""
    repeated = (values * (det._SMALL // len(values) + 2))[: det._SMALL + 40]
    _assert_same(_array(repeated, large, lead, 1), None)


@pytest.mark.parametrize("chunk", [1, 5, 13, 64])
@settings(max_examples=80, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(values=VALUES, large=st.booleans(), lead=st.integers(0, 3))
def test_flags_cover_every_candidate_across_chunk_edges(
    chunk: int, values: list[str | None], large: bool, lead: int
) -> None:
    """Every row a detector's RE2 candidate pattern matches is flagged, wherever the
    buffer's chunks are cut (tiny chunks put every shape across a cut)."""
    a = _array(values, large, lead, 1)
    with mock.patch.object(det, "_CHUNK", chunk):
        flags = _flag_rows(a, DETECTORS)
        _assert_same(a, None)
    for name in DETECTORS:
        matched = pc.fill_null(pc.match_substring_regex(a, _DETECTORS[name].candidate), False)
        for i, m in enumerate(matched.to_pylist()):
            assert not m or flags[name][i], (name, a[i].as_py())


@settings(max_examples=300, deadline=None, derandomize=True)
@given(values=st.lists(TEXT, min_size=1, max_size=10), large=st.booleans())
def test_cards_masked_as_the_python_masker_does(values: list[str], large: bool) -> None:
    a = pa.array(values, type=pa.large_string() if large else pa.string())
    masked, hit = _mask_cards(a)
    expected = [_card_masker(v) for v in values]
    assert masked.to_pylist() == [e[0] for e in expected]
    assert hit.tolist() == [e[1] for e in expected]


@settings(max_examples=300, deadline=None, derandomize=True)
@given(values=st.lists(TEXT, min_size=1, max_size=10))
def test_ssns_masked_as_the_python_masker_does(values: list[str]) -> None:
    masker = _DETECTORS["ssn"].masker
    assert masker is not None
    masked, hit = _mask_ssns(pa.array(values))
    expected = [masker(v) for v in values]
    assert masked.to_pylist() == [e[0] for e in expected]
    assert hit.tolist() == [e[1] for e in expected]


@pytest.mark.parametrize(
    "text",
    [
        "-4111111111111111",  # a dash before: the look-behind fails, nothing masked
        "-4111 1111 1111 1111 1111",  # ... but the run after the first space is tried
        "a-4111 1111 1111 1111",
        "12 4111 1111 1111 1111",
        "4111 1111 1111 1111 12/25",
        "4111 1111 1111 1111 1",
        "1 -4111111111111111",
        "4111111111111111\n4111111111111111",
        "41111111111111114111111111111111",
        "4111111111111111-",
        "GB82 WEST 1234 5698 7654 32 1",
        "GB82WEST12345698765432 and DE89370400440532013000",
        "123-45-6789-1",
        "123-45-6789-x",
        "123-45-67891",
        "x123-45-6789",
        "+1 (234) 567 89 and (555) 123-4567",
    ],
)
@pytest.mark.parametrize("rows", [1, 300])
def test_edge_cases(text: str, rows: int) -> None:
    for large in (False, True):
        _assert_same(_array([text, None, text + " " + text] * rows, large, 2, 1), None)


@pytest.mark.parametrize("known", KNOWN)
def test_whole_values(known: str) -> None:
    """A column of nothing but the value (the numpy whole-value paths: card, IBAN, SSN)."""
    values = [known, known.replace(" ", ""), None, known.lower(), known + " ", " " + known]
    for large in (False, True):
        _assert_same(_array(values * 60, large, 1, 0), None)
        _assert_same(_array([known], large, 0, 0), None)


@pytest.mark.parametrize("known", KNOWN)
def test_in_long_text(known: str) -> None:
    """Inside long prose (few digits per byte: the row flags take their sparse path)."""
    filler = "the order shipped on time and the customer asked for a refund " * 8
    values = [filler + known + " " + filler, known + filler, filler + known, filler]
    _assert_same(pa.array(values * 80), None)


@pytest.mark.parametrize("known", KNOWN)
def test_split_across_adjacent_values(known: str) -> None:
    """A value's neighbours in the buffer are not part of it: a card, SSN, IBAN or phone
    cut in two across adjacent rows is two fragments, never one match."""
    values: list[str | None] = []
    for cut in range(1, len(known)):
        values += [known[:cut], known[cut:], None, ""]
    if values:
        for large in (False, True):
            _assert_same(_array(values, large, 1, 1), None)
            _assert_same(_array(values * (det._SMALL // len(values) + 1), large, 0, 0), None)


def test_hex_column_with_cards() -> None:
    """A hex-digest column: most rows hold a digit run, a few a Luhn-valid 13-19 one."""
    import hashlib

    values = [hashlib.md5(str(i).encode()).hexdigest() for i in range(20_000)]
    a = pa.array(values)
    _assert_same(a, None)
    masked, hits = _scan_values(a, _chosen(None))
    assert set(hits) == {"card"}
    assert sum(pa.array(hits["card"]).to_pylist()) == sum(_card_masker(v)[1] for v in values)
    assert masked.to_pylist() == [_card_masker(v)[0] for v in values]
