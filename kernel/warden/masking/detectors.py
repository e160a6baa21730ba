"""Content detectors: the second net under lineage.

String columns that lineage left unclassified are scanned for e-mail addresses, payment card
numbers (Luhn-checked), US SSNs, IBANs (mod-97-checked), phone numbers and secrets; only the
matched substrings are replaced, by a token naming the detector (``[email]``, ``[card]``,
``[ssn]``, ``[iban]``, ``[phone]``, ``[secret]``). A token rather than a shape-keeping
redaction because the reader should see *why* text vanished, and because a token has no
digits or ``@`` for a later detector to trip on.

How it stays fast: numpy over the Arrow data buffer (memchr for the rare bytes, shifted
boolean ANDs for the digit shapes) flags, per detector, a superset of the rows its candidate
pattern matches; nothing else is looked at. Each detector then runs on its flagged rows only.
Detectors whose pattern is exact are applied by RE2 (``replace_substring_regex``); card
(runs, windows, Luhn) and SSN are masked in numpy, exactly as their Python maskers would;
IBAN (whole-value mod-97 in numpy, else Python) and phone run Python's ``re`` over their RE2
candidate rows. ``_reference_scan_values`` is the earlier per-candidate implementation, kept
as the reference the vectorised one is tested against. Detectors run in the order of
``DETECTORS``: secrets before e-mail (a token may contain ``@``-free look-alikes of other
things), IBAN and card before SSN and phone (their digit runs would otherwise be half-eaten
by the looser patterns).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["DETECTORS", "Finding", "scan_and_mask", "scan_and_mask_values"]

DETECTORS: Final = ("secret", "email", "iban", "card", "ssn", "phone")


@dataclass(frozen=True)
class Finding:
    """Detector ``detector`` masked something in ``rows`` rows of ``column``."""

    column: str
    detector: str
    rows: int
    position: int | None = None  # the column's position in the result, when known


# --------------------------------------------------------------------------- validators


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum of a digit string (as payment card numbers carry)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card_number(digits: str) -> bool:
    # 0000000000000 passes Luhn but is no card; a run of one repeated digit never is.
    return 13 <= len(digits) <= 19 and len(set(digits)) > 1 and luhn_ok(digits)


# Length of the IBAN per country (the SWIFT registry); an unknown country is no IBAN.
IBAN_LENGTHS: Final[dict[str, int]] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22,
    "BH": 22, "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24,
    "DE": 22, "DJ": 27, "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18,
    "FK": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27,
    "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27,
    "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20,
    "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MN": 20, "MR": 27,
    "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23, "PK": 24, "PL": 28,
    "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24, "SC": 31,
    "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}  # fmt: skip


def iban_ok(iban: str) -> bool:
    """Country length and the ISO 13616 mod-97 check of a compact upper-case IBAN."""
    if IBAN_LENGTHS.get(iban[:2]) != len(iban) or not iban.isascii() or not iban.isalnum():
        return False
    moved = iban[4:] + iban[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


# --------------------------------------------------------------------------- detectors

_Masker = Callable[[str], tuple[str, bool]]


@dataclass(frozen=True)
class _Detector:
    name: str
    candidate: str  # RE2, a superset of what the detector masks
    vectorised: bool  # True: `candidate` is exact and RE2 replaces it directly
    masker: _Masker | None = None  # otherwise: Python masking of one candidate row
    # Optional vectorised first pass over the candidates: (rows it settled, rows it hit).
    prepass: Callable[[Any], tuple[Any, Any]] | None = None

    @property
    def token(self) -> str:
        return f"[{self.name}]"


def _sub_masker(
    pattern: re.Pattern[str], token: str, accept: Callable[[str], int | None]
) -> _Masker:
    """A row masker: each match of ``pattern`` whose ``accept`` gives the length of the
    sensitive prefix of the match is replaced (that prefix only) by ``token``."""

    def mask(text: str) -> tuple[str, bool]:
        hit = False

        def repl(m: re.Match[str]) -> str:
            nonlocal hit
            found = m.group(0)
            end = accept(found)
            if end is None:
                return found
            hit = True
            return token + found[end:]

        return pattern.sub(repl, text), hit

    return mask


def _whole(_: str) -> int:
    return len(_)


# secret: tokens whose shape alone says "credential"; all exact, so RE2 replaces them.
_SECRET = "|".join(
    [
        r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*",  # JWT
        r"\b(?:AKIA|ASIA|AIDA|AROA|AGPA|ANPA|ANVA|AIPA)[A-Z0-9]{16}\b",  # AWS key id
        r"\bgh[pousr]_[A-Za-z0-9]{30,255}\b",  # GitHub token
        r"\bgithub_pat_[A-Za-z0-9_]{40,255}\b",
        r"\bsk-[A-Za-z0-9_-]{20,}",  # OpenAI-style secret key
        r"\b[rs]k_(?:live|test)_[A-Za-z0-9]{16,}\b",  # Stripe
        r"\bxox[abposr]-[A-Za-z0-9-]{10,}",  # Slack
        # A PEM private key: the header and everything up to its footer (or the end).
        r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----(?:[\s\S]*?-----END (?:[A-Z0-9]+ )*"
        r"PRIVATE KEY-----|[\s\S]*)",
    ]
)

_EMAIL = r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"

# card: 13-19 digits, single spaces or dashes between them allowed.
_CARD_RUN = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,}(?![\d])", re.ASCII)
_SEP = re.compile(r"[ -]")


def _card_masker(text: str) -> tuple[str, bool]:
    """Mask each Luhn-valid card inside every digit run.

    A run may hold more than the card ("4111 1111 1111 1111 12/25" has an expiry glued on,
    "ref 12 4111..." a prefix): try the windows of whole separator-delimited groups with
    13-19 digits, longest first, and mask the first valid one.
    """
    hit = False
    out: list[str] = []
    last = 0
    for m in _CARD_RUN.finditer(text):
        out.append(text[last : m.start()])
        last = m.end()
        masked = _mask_card_run(m.group(0))
        hit = hit or masked is not None
        out.append(masked if masked is not None else m.group(0))
    out.append(text[last:])
    return "".join(out), hit


def _mask_card_run(run: str) -> str | None:
    digits = _SEP.sub("", run)
    if 13 <= len(digits) <= 19 and _card_number(digits):
        return "[card]"
    # Group boundaries: (start, end) of each separator-delimited digit group in `run`.
    groups = [(g.start(), g.end()) for g in re.finditer(r"\d+", run)]
    best: tuple[int, int, int] | None = None  # (digit count, start group, end group)
    for i in range(len(groups)):
        count = 0
        for j in range(i, len(groups)):
            count += groups[j][1] - groups[j][0]
            if count > 19:
                break
            if count >= 13 and (best is None or count > best[0]):
                piece = _SEP.sub("", run[groups[i][0] : groups[j][1]])
                if _card_number(piece):
                    best = (count, i, j)
    if best is None:
        return None
    start, end = groups[best[1]][0], groups[best[2]][1]
    return run[:start] + "[card]" + run[end:]


_WHOLE_CARD: Final = r"^\d(?:[ -]?\d){12,18}$"


def _card_prepass(rows: Any) -> tuple[Any, Any]:
    """Rows that are nothing but one card-shaped run (a card column lineage missed), with
    Luhn computed in numpy: valid ones are hits; invalid runs without separators have no
    shorter window to try, so they are settled too. The rest go to the Python masker."""
    n = len(rows)
    whole = pc.fill_null(pc.match_substring_regex(rows, _WHOLE_CARD), False)
    idx = np.flatnonzero(whole.to_numpy(zero_copy_only=False))
    settled = np.zeros(n, dtype=bool)
    hit = np.zeros(n, dtype=bool)
    if not idx.size:
        return settled, hit
    runs = pc.take(rows, pa.array(idx))
    digits = pc.replace_substring(pc.replace_substring(runs, " ", ""), "-", "")
    ok = _luhn_numpy(digits)
    separated = (pc.not_equal(pc.binary_length(runs), pc.binary_length(digits))).to_numpy(
        zero_copy_only=False
    )
    settled[idx] = ok | ~separated
    hit[idx] = ok
    return settled, hit


def _luhn_numpy(digits: Any) -> Any:
    """Luhn check (and 'not one repeated digit') of a string array of 13-19 ASCII digits."""
    offset_type = np.int64 if pa.types.is_large_string(digits.type) else np.int32
    offsets: Any = np.frombuffer(digits.buffers()[1], dtype=offset_type)[
        digits.offset : digits.offset + len(digits) + 1
    ]
    width = 19
    # Right-align every number in a (rows, 19) byte matrix: one 19-byte window per row
    # ending at the row's end (the buffer is padded in front so no window starts before it).
    padded = np.concatenate(
        (np.full(width, 48, dtype=np.uint8), np.frombuffer(digits.buffers()[2], dtype=np.uint8))
    )
    windows = np.ndarray(
        shape=(padded.size - width + 1,),
        dtype=np.dtype((np.void, width)),
        buffer=padded,
        strides=(1,),
    )
    mat = windows[offsets[1:]].view(np.uint8).reshape(-1, width)
    lengths = offsets[1:] - offsets[:-1]
    total = np.zeros(len(digits), dtype=np.int32)
    varied = np.zeros(len(digits), dtype=bool)
    last = mat[:, -1]
    for c in range(width):
        from_right = width - 1 - c
        d = mat[:, c].astype(np.int32) - 48
        if from_right % 2:  # every second digit from the right is doubled, digits summed
            d = d * 2
            d -= 9 * (d > 9)
        inside = lengths > from_right
        total += np.where(inside, d, 0)
        varied |= inside & (mat[:, c] != last)
    return (total % 10 == 0) & varied


# IBAN: country, check digits, 11-30 alphanumerics in optional groups of spaces.
_IBAN_RUN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b", re.ASCII)


def _iban_accept(found: str) -> int | None:
    # The run may continue past the IBAN ("GB82 WEST ... 32 REF9"): the country's length
    # says where it ends; return the index in `found` after its last character.
    length = IBAN_LENGTHS.get(found[:2])
    if length is None:
        return None
    taken = 0
    for i, ch in enumerate(found):
        if ch != " ":
            taken += 1
            if taken == length:
                end = i + 1
                compact = found[:end].replace(" ", "")
                if not iban_ok(compact):
                    return None
                # The IBAN must end at a group boundary, not inside a token.
                if end < len(found) and found[end] != " ":
                    return None
                return end
    return None


# SSN: ###-##-####, area not 000/666/9xx, group not 00, serial not 0000, not inside a
# longer dashed number.
_SSN_RUN = re.compile(
    r"(?<![\d-])(?<!\d-)(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?!-?\d)", re.ASCII
)

# phone: +international (8-15 digits, E.164) or North American with separators. A bare
# digit run (an id, an amount) and ISO dates (4-2-2) have neither shape.
_PHONE_RUN = re.compile(
    r"(?<![\w+])(?:"
    r"\+[1-9]\d{0,2}(?:[ .-]?\(?\d{1,4}\)?)(?:[ .-]?\d{2,4}){1,5}"
    r"|(?:1[ .-])?(?:\([2-9]\d{2}\) ?|[2-9]\d{2}[ .-])\d{3}[ .-]\d{4}"
    r")(?![\w-])",
    re.ASCII,
)


def _phone_accept(found: str) -> int | None:
    digits = sum(c.isdigit() for c in found)
    if found.startswith("+"):
        return len(found) if 8 <= digits <= 15 else None
    return len(found) if digits in (10, 11) else None


_DETECTORS: Final[dict[str, _Detector]] = {
    "secret": _Detector("secret", _SECRET, vectorised=True),
    "email": _Detector("email", _EMAIL, vectorised=True),
    "iban": _Detector(
        "iban",
        r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b",
        vectorised=False,
        masker=_sub_masker(_IBAN_RUN, "[iban]", _iban_accept),
    ),
    "card": _Detector(
        "card",
        r"\d(?:[ -]?\d){12}",
        vectorised=False,
        masker=_card_masker,
        prepass=_card_prepass,
    ),
    "ssn": _Detector(
        "ssn",
        r"\d{3}-\d{2}-\d{4}",
        vectorised=False,
        masker=_sub_masker(_SSN_RUN, "[ssn]", _whole),
    ),
    "phone": _Detector(
        "phone",
        # "+" and a digit: the international branch may put "(" or a separator next.
        r"\+[1-9]|\d{3}[ .-]\d{3}[ .-]\d{4}|\(\d{3}\) ?\d{3}[ .-]\d{4}",
        vectorised=False,
        masker=_sub_masker(_PHONE_RUN, "[phone]", _phone_accept),
    ),
}
assert tuple(_DETECTORS) == DETECTORS


# --------------------------------------------------------------------------- scanning


def scan_and_mask(
    table: pa.Table,
    columns: Sequence[str] | None = None,
    *,
    detectors: Sequence[str] | None = None,
) -> tuple[pa.Table, tuple[Finding, ...]]:
    """Mask what the detectors find in the string columns of ``table``.

    ``columns`` defaults to every string column (string, large_string, string_view and
    dictionaries of those); a named column of another type is left alone, since the
    detectors read text. Returns the masked table (same schema) and one ``Finding`` per
    column and detector that fired, with the number of rows it changed.
    """
    chosen = _chosen_detectors(detectors)
    names = list(table.column_names) if columns is None else list(columns)
    for name in names:
        if name not in table.column_names:
            raise ValueError(f"no column {name!r} in the result")
    findings: list[Finding] = []
    for name in names:
        i = table.column_names.index(name)
        col = table.column(i)
        if not _is_text_like(col.type):
            continue
        counts = dict.fromkeys(d.name for d in chosen)
        chunks = []
        for chunk in col.chunks:
            masked, hits = _scan_chunk(chunk, chosen)
            chunks.append(masked)
            for det, n in hits.items():
                counts[det] = (counts[det] or 0) + n
        fired = [Finding(name, det, n) for det, n in counts.items() if n]
        if fired:
            findings.extend(fired)
            table = table.set_column(
                i, table.schema.field(i), pa.chunked_array(chunks, type=col.type)
            )
    return table, tuple(findings)


def _chosen_detectors(detectors: Sequence[str] | None) -> list[_Detector]:
    if detectors is None:
        return list(_DETECTORS.values())
    unknown = [d for d in detectors if d not in _DETECTORS]
    if unknown:
        raise ValueError(f"unknown detector(s) {unknown}; known: {', '.join(DETECTORS)}")
    wanted = set(detectors)
    return [d for d in _DETECTORS.values() if d.name in wanted]  # always in DETECTORS order


def _is_text_like(t: Any) -> bool:
    if pa.types.is_dictionary(t):
        return _is_text_like(t.value_type)
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t))


def _scan_chunk(a: Any, chosen: list[_Detector]) -> tuple[Any, dict[str, int]]:
    if pa.types.is_dictionary(a.type):
        # Scan each distinct value once, then count the rows that point at a changed one.
        masked_dict, changed = _scan_values(a.dictionary, chosen)
        hits = {}
        for det, mask in changed.items():
            hits[det] = int(pc.sum(pc.fill_null(pc.take(mask, a.indices), False)).as_py() or 0)
        return pa.DictionaryArray.from_arrays(a.indices, masked_dict), hits
    if pa.types.is_string_view(a.type):
        masked, changed = _scan_values(a.cast(pa.large_string()), chosen)
        return masked.cast(a.type), _count(changed)
    masked, changed = _scan_values(a, chosen)
    return masked, _count(changed)


def _count(changed: dict[str, Any]) -> dict[str, int]:
    return {det: int(pc.sum(mask).as_py() or 0) for det, mask in changed.items()}


def _scan_values(a: Any, chosen: list[_Detector]) -> tuple[Any, dict[str, Any]]:
    """Masked values, and per detector a boolean array of the rows it changed."""
    if len(a) == 0 or not chosen:
        return a, {}
    combined = "|".join(f"(?:{d.candidate})" for d in chosen)
    if len(a) <= _SMALL and not _any_candidate(a, combined):
        # Small results (the common interactive query) skip Arrow's per-call RE2
        # compile of the combined pattern: a cached Python regex says "nothing here".
        return a, {}
    return _scan_vectorised(a, chosen)


def _reference_scan_values(a: Any, chosen: list[_Detector]) -> tuple[Any, dict[str, Any]]:
    """The per-candidate implementation the vectorised ``_scan_values`` replaced, kept as
    the reference it is tested (and benchmarked) against: one RE2 pass with every
    detector's candidate pattern, then per detector RE2 on its candidates and Python's
    ``re`` (with the whole-value card prepass) for the checksummed ones."""
    if len(a) == 0 or not chosen:
        return a, {}
    combined = "|".join(f"(?:{d.candidate})" for d in chosen)
    if len(a) <= _SMALL and not _any_candidate(a, combined):
        # Small results (the common interactive query) skip Arrow's per-call RE2
        # compile of the combined pattern: a cached Python regex says "nothing here".
        return a, {}
    any_hit = pc.fill_null(pc.match_substring_regex(a, combined), False)
    if not pc.any(any_hit).as_py():
        return a, {}
    sub = pc.filter(a, any_hit)
    changed_sub: dict[str, Any] = {}
    for det in chosen:
        cand = pc.fill_null(pc.match_substring_regex(sub, det.candidate), False)
        if not pc.any(cand).as_py():
            continue
        rows = pc.filter(sub, cand)
        if det.vectorised:
            masked_rows = pc.replace_substring_regex(rows, det.candidate, det.token)
            hit_rows = pa.array(np.ones(len(rows), dtype=bool))
        else:
            masked_rows, hit_rows = _python_masking(det, rows)
        if not pc.any(hit_rows).as_py():
            continue
        sub = pc.replace_with_mask(sub, cand, masked_rows)
        hit_sub = pc.replace_with_mask(_falses(len(sub)), cand, hit_rows)
        changed_sub[det.name] = hit_sub
    if not changed_sub:
        return a, {}
    out = pc.replace_with_mask(a, any_hit, sub)
    blank = _falses(len(a))
    return out, {det: pc.replace_with_mask(blank, any_hit, m) for det, m in changed_sub.items()}


_SMALL: Final = 256


@functools.lru_cache(maxsize=32)
def _compiled(pattern: str) -> re.Pattern[str] | None:
    try:
        # ASCII: \b, \w and \d as RE2 reads them (a Unicode \b would see no boundary
        # between "é" and "AKIA…", and a small result would miss what a large one masks).
        return re.compile(pattern, re.ASCII)
    except re.error:
        return None  # an RE2-only construct: let Arrow decide


def _any_candidate(a: Any, pattern: str) -> bool:
    rx = _compiled(pattern)
    if rx is None:
        return True
    return any(v is not None and rx.search(v) is not None for v in a.to_pylist())


def _python_masking(det: _Detector, rows: Any) -> tuple[Any, Any]:
    """Run the detector's Python masker over the candidate rows the prepass left open."""
    assert det.masker is not None
    settled = np.zeros(len(rows), dtype=bool)
    hit = np.zeros(len(rows), dtype=bool)
    if det.prepass is not None:
        settled, hit = det.prepass(rows)
    out = pc.if_else(pa.array(hit), pa.scalar(det.token, rows.type), rows)
    todo = np.flatnonzero(~settled)
    if todo.size:
        results = [det.masker(v) for v in pc.take(rows, pa.array(todo)).to_pylist()]
        hit[todo] = [r[1] for r in results]
        out = pc.replace_with_mask(
            out, pa.array(~settled), pa.array([r[0] for r in results], type=rows.type)
        )
    return out, pa.array(hit)


def _falses(n: int) -> Any:
    return pa.array(np.zeros(n, dtype=bool))


# --------------------------------------------------------------------------- vectorised scan
#
# The same masking as ``_reference_scan_values``, found without a per-row RE2 pass over the
# whole column and without Python per card candidate:
#
# 1. ``_flag_rows``: per detector, a superset of the rows whose candidate pattern matches,
#    from numpy over the Arrow data buffer. A byte a detector needs ('@', '-', '_', '+',
#    '(', 'J', 'A') is first looked for with ``bytes.find`` (memchr) over the whole buffer;
#    only when present are its positions taken and their neighbours checked. The digit
#    shapes (card runs, NANP phones, IBAN starts) are shifted boolean ANDs over the buffer
#    in cache-sized chunks. A row flagged by no detector cannot match any candidate, so it
#    is never looked at again (the reference skips it too: its combined pattern fails).
# 2. Per detector, in ``DETECTORS`` order, over the flagged rows only: the detector's own
#    RE2 candidate pattern still gates every detector but card (on the current text, as in
#    the reference), then RE2 replaces (secret, e-mail) or the Python masker runs (SSN,
#    phone, IBAN), after whole-value prepasses in numpy (IBAN mod-97, SSN). Card is masked
#    entirely in numpy (``_mask_cards``): digit groups, runs, the windows of whole groups
#    with 13-19 digits, Luhn per window, longest then leftmost window per run.
# 3. Rows a detector changed get their flags recomputed for the detectors after it (a
#    token can change what a later candidate pattern sees), and the changed rows are
#    written back into the column.

_CHUNK: Final = 1 << 18
_PAD: Final = 32  # bytes of context either side of a chunk (a card run spans <= 25)


def _text_buffers(a: Any) -> tuple[Any, Any]:
    """The data bytes of string array ``a`` (uint8, from its first value's start) and its
    offsets relative to them (int64, ``len(a) + 1``)."""
    bufs = a.buffers()
    otype = np.int64 if pa.types.is_large_string(a.type) else np.int32
    offs = np.frombuffer(bufs[1], dtype=otype)[a.offset : a.offset + len(a) + 1].astype(np.int64)
    base, end = int(offs[0]), int(offs[-1])
    if bufs[2] is None or end <= base:
        return np.zeros(0, dtype=np.uint8), offs - base
    return np.frombuffer(bufs[2], dtype=np.uint8)[base:end], offs - base


def _valid(a: Any) -> Any:
    if not a.null_count:
        return None
    return a.is_valid().to_numpy(zero_copy_only=False)


def _is_digit(x: Any) -> Any:
    return (x - 48) < 10  # uint8 arithmetic wraps: below '0' becomes >= 208


def _flag_rows(a: Any, names: Sequence[str]) -> dict[str, Any]:
    """Per detector in ``names``, a boolean numpy array: True for every row whose text
    the detector's candidate pattern might match (a superset; never a row it matches
    left out). Null rows are False."""
    n = len(a)
    flags = {name: np.zeros(n, dtype=bool) for name in names}
    x, offs = _text_buffers(a)
    size = len(x)
    if not size:
        return flags
    want = set(names)
    found: dict[str, list[Any]] = {name: [] for name in names}
    secret, email, iban, card, ssn = (k in want for k in ("secret", "email", "iban", "card", "ssn"))
    phone = "phone" in want
    starts = offs[:-1]
    width = min(_CHUNK, size)
    # The chunk with its context, in a bytearray so that memchr (bytearray.find) can say
    # which bytes the chunk holds: a test needing a byte that is not there is skipped.
    raw = bytearray(width + 2 * _PAD)
    buf = np.frombuffer(raw, dtype=np.uint8)
    for s in range(0, size, _CHUNK):
        e = min(s + _CHUNK, size)
        lo, hi = max(0, s - _PAD), min(size, e + _PAD)
        core = e - s
        y = buf[: core + 2 * _PAD]
        y[: _PAD - (s - lo)] = 0
        y[_PAD - (s - lo) : _PAD + (hi - s)] = x[lo:hi]
        buf[_PAD + (hi - s) :] = 0
        has = {ch: raw.find(ch) >= 0 for ch in b"@-_+( .AJ"}
        dash = has[45] and (secret or ssn)
        nanp = phone and (has[32] or has[45] or has[46])
        card_seps = card and (has[32] or has[45])
        d = _is_digit(y)
        body = slice(_PAD, _PAD + core)
        def local(ch: int, body: slice = body, y: Any = y, core: int = core) -> Any:
            # Indices into y of byte ch in the chunk's core (context bytes stay addressable):
            # memchr while it is rare, numpy once it is not.
            needle = bytes((ch,))
            hits: list[int] = []
            i = raw.find(needle, _PAD, _PAD + core)
            while i >= 0:
                if len(hits) == 64:
                    return np.flatnonzero(y[body] == ch) + _PAD
                hits.append(i)
                i = raw.find(needle, i + 1, _PAD + core)
            return np.array(hits, dtype=np.int64)

        def sh(m: Any, k: int, core: int = core) -> Any:  # m[i + k] for the core's i
            return m[_PAD + k : _PAD + k + core]

        def in_core(p: Any, core: int = core) -> Any:
            return p[(p >= _PAD) & (p < _PAD + core)]

        base = s - _PAD  # y index -> buffer position
        if email and has[64]:
            found["email"].append(local(64) + base)
        if dash:
            p = local(45)
            if secret:  # sk-, xox?-, -----BEGIN
                keep = (y[p - 1] == 107) | (y[p - 2] == 120) | (y[p + 1] == 66)
                found["secret"].append(p[keep] + base)
            if ssn:  # \d{3}-\d{2}-\d{4}
                keep = d[p - 1] & d[p + 1] & d[p + 2] & (y[p + 3] == 45)
                found["ssn"].append(p[keep] + base)
        if secret and has[95]:  # gh?_, github_pat_, [rs]k_
            p = local(95)
            keep = (y[p - 1] == 98) | (y[p - 1] == 107) | (y[p - 2] == 104)
            found["secret"].append(p[keep] + base)
        if secret and has[74]:  # eyJ
            p = local(74)
            found["secret"].append(p[(y[p - 1] == 121) & (y[p - 2] == 101)] + base)
        if secret and has[65]:  # AKIA ASIA AIDA AROA AGPA ANPA ANVA AIPA
            p = local(65)
            second = y[p + 1]
            keep = (second == 75) | (second == 83) | (second == 73) | (second == 82)
            keep |= (second == 71) | (second == 78)
            found["secret"].append(p[keep] + base)
        if phone and has[43]:  # \+[1-9]
            p = local(43)
            keep = (y[p + 1] - 49) < 9
            found["phone"].append(p[keep] + base)
        if phone and has[40]:  # \(\d{3}\)
            p = local(40)
            keep = d[p + 1] & d[p + 2] & d[p + 3] & (y[p + 4] == 41)
            found["phone"].append(p[keep] + base)
        if not (iban or nanp or card):
            continue
        if np.count_nonzero(d) * 8 < len(y):
            # Few digits: the digit shapes from the digits' positions.
            digits = np.flatnonzero(d)
            p = digits[(digits >= _PAD - 1) & (digits < _PAD + core + 2)]
            if iban:  # [A-Z]{2}\d{2}: from its first digit, letters at -2 and -1
                keep = d[p + 1] & ((y[p - 1] - 65) < 26) & ((y[p - 2] - 65) < 26)
                found["iban"].append(in_core(p[keep] - 2) + base)
            if nanp:  # \d[ .-]\d{3}[ .-]: the first separator
                q = p + 1
                c1, c5 = y[q], y[q + 4]
                keep = (c1 == 32) | (c1 == 45) | (c1 == 46)
                keep &= (c5 == 32) | (c5 == 45) | (c5 == 46)
                keep &= d[q + 1] & d[q + 2] & d[q + 3]
                found["phone"].append(in_core(q[keep]) + base)
            if card:  # 13 chained digits lie within 25 bytes: >= 13 digits there
                p = digits
                many = p[12:] - p[:-12] < 25  # the 13th digit from p is within 25 bytes
                found["card"].append(in_core(p[:-12][many]) + base)
            continue
        chain = d
        if nanp or card_seps:
            sep = (y == 32) | (y == 45)
            if card_seps:
                # A space or dash between two digits chains them (the card pattern's
                # `[ -]?`): chain = digit or such a separator.
                chain = d.copy()
                chain[1:-1] |= sep[1:-1] & d[:-2] & d[2:]
            if nanp:  # \d{3}[ .-]\d{3}[ .-]\d{4}
                sep |= y == 46
                hit = sh(d, -1) & sh(sep, 0) & sh(d, 1) & sh(d, 2) & sh(d, 3) & sh(sep, 4)
                found["phone"].append(np.flatnonzero(hit) + s)
        if iban:
            up = (y - 65) < 26
            if up[body].any():  # [A-Z]{2}\d{2}
                hit = sh(up, 0) & sh(up, 1) & sh(d, 2) & sh(d, 3)
                found["iban"].append(np.flatnonzero(hit) + s)
        if card:
            # 13 chain bytes in a row (13 chained digits are at least that long); one
            # position per stretch: its first window, and each row start inside one.
            r = chain[:-1] & chain[1:]
            r = r[:-2] & r[2:]
            r = r[:-4] & r[4:]
            r = r[:-5] & r[5:]  # r[i]: chain[i .. i+12] all set
            win = r[body]
            found["card"].append(np.flatnonzero(np.greater(win, sh(chain, -1))) + s)
            i0, i1 = np.searchsorted(starts, [s, e])
            row_starts = starts[i0:i1]
            found["card"].append(row_starts[win[row_starts - s]])
    valid = _valid(a)
    for name in names:
        pos = np.concatenate(found[name]) if found[name] else np.zeros(0, dtype=np.int64)
        if pos.size:
            flags[name][np.searchsorted(offs, pos, side="right") - 1] = True
            if valid is not None:
                flags[name] &= valid
    return flags


def _splice(a: Any, starts: Any, ends: Any, token: bytes) -> Any:
    """String array ``a`` with the byte spans ``[starts, ends)`` (sorted, disjoint, each
    inside one value, positions in ``_text_buffers(a)`` terms) replaced by ``token``."""
    x, offs = _text_buffers(a)
    k = len(starts)
    rows = np.searchsorted(offs, starts, side="right") - 1
    # Built from raw buffers below: refuse spans that would make the offsets lie.
    if k and not (
        (ends >= starts).all()
        and (starts[1:] >= ends[:-1]).all()
        and (ends <= offs[rows + 1]).all()
    ):
        raise RuntimeError("content detectors: a masked span crosses a value boundary")
    delta = len(token) - (ends - starts)
    row_delta = np.bincount(rows, weights=delta, minlength=len(a)).astype(np.int64)
    new_offs = offs.copy()
    new_offs[1:] += np.cumsum(row_delta)
    # Segments in output order: kept bytes before span 0, token, kept bytes, token, ...
    seg_src = np.empty(2 * k + 1, dtype=np.int64)
    seg_len = np.empty(2 * k + 1, dtype=np.int64)
    seg_src[0::2] = np.concatenate(([0], ends))
    seg_len[0::2] = np.concatenate((starts, [len(x)])) - seg_src[0::2]
    seg_src[1::2] = len(x)
    seg_len[1::2] = len(token)
    out_len = int(seg_len.sum())
    seg_out = np.cumsum(seg_len) - seg_len
    index = np.repeat(seg_src - seg_out, seg_len) + np.arange(out_len, dtype=np.int64)
    src = np.concatenate((x, np.frombuffer(token, dtype=np.uint8)))
    data = src[index]
    large = pa.types.is_large_string(a.type)
    if not large and out_len >= 2**31:
        raise OverflowError("masked strings exceed the 32-bit offsets of pa.string()")
    offsets = new_offs.astype(np.int64 if large else np.int32)
    validity = None
    if a.null_count:
        validity = pa.array(_valid(a)).buffers()[1]  # bit-packed, offset 0
    return pa.Array.from_buffers(
        a.type, len(a), [validity, pa.py_buffer(offsets), pa.py_buffer(data)], a.null_count
    )


def _windows(buf: Any, width: int, ends: Any) -> Any:
    """The ``width`` bytes of ``buf`` before each index in ``ends``, a (len(ends), width)
    matrix (``buf`` must start with ``width`` bytes of padding)."""
    if ends.size and (int(ends.min()) < width or int(ends.max()) > buf.size):
        raise IndexError("content detectors: a window outside its buffer")
    view = np.ndarray(
        shape=(buf.size - width + 1,), dtype=np.dtype((np.void, width)), buffer=buf, strides=(1,)
    )
    return view[ends - width].view(np.uint8).reshape(-1, width)


def _mask_cards(a: Any) -> tuple[Any, Any]:
    """``_card_masker`` over every value of ``a`` (no nulls), vectorised: the masked array
    and a boolean numpy array of the values it changed.

    ``_CARD_RUN`` is ``(?<![\\d-])\\d(?:[ -]?\\d){12,}(?![\\d])``: its matches are the
    maximal chains of digit groups joined by one space or dash, from the first group that
    is preceded by neither a digit nor a dash (the chain's first group unless a dash comes
    before it, else the first group after a space) to the chain's end, with >= 13 digits.
    In each such run ``_mask_card_run`` masks the window of whole groups with 13-19 digits
    that is a card number, the one with the most digits, leftmost among those.
    """
    n = len(a)
    hit = np.zeros(n, dtype=bool)
    x, offs = _text_buffers(a)
    size = len(x)
    if not size:
        return a, hit
    d = _is_digit(x)
    row_start = np.zeros(size + 1, dtype=bool)
    row_start[offs] = True
    # Digit groups [gs, ge): maximal digit runs, split where a value ends.
    joined = d[:-1] & d[1:] & ~row_start[1:-1]  # bytes i and i + 1: one digit run
    gs = np.flatnonzero(d[1:] > joined) + 1
    ge = np.flatnonzero(d[:-1] > joined) + 1
    if d[0]:
        gs = np.concatenate(([0], gs))
    if d[-1]:
        ge = np.append(ge, size)
    g = len(gs)
    if not g:
        return a, hit
    link = np.zeros(g, dtype=bool)  # link[k]: group k and k + 1 are one chain
    if g > 1:
        gap = ge[:-1]
        sep = x[np.minimum(gap, size - 1)]
        link[:-1] = (gs[1:] == gap + 1) & ((sep == 32) | (sep == 45))
        link[:-1] &= ~row_start[gap] & ~row_start[gs[1:]]
    first = np.ones(g, dtype=bool)
    first[1:] = ~link[:-1]
    heads = np.flatnonzero(first)  # the first group of each chain
    tails = np.append(heads[1:] - 1, g - 1)  # and its last
    cum = np.zeros(g + 1, dtype=np.int64)
    np.cumsum(ge - gs, out=cum[1:])
    # Where the regex starts in a chain: its first group unless a dash is before it, then
    # the first later group after a space (a dash or digit before a group fails the
    # look-behind).
    hs = gs[heads]
    dashed = ~row_start[hs] & (x[np.maximum(hs - 1, 0)] == 45)
    eff = heads.copy()
    if dashed.any():
        spaced = np.zeros(g, dtype=bool)
        spaced[1:] = link[:-1] & (x[np.maximum(gs[1:] - 1, 0)] == 32)
        chain = np.cumsum(first) - 1
        after_space = np.flatnonzero(spaced)
        owner = chain[after_space]
        lead = np.ones(after_space.size, dtype=bool)
        lead[1:] = owner[1:] != owner[:-1]
        first_space = np.full(heads.size, g, dtype=np.int64)
        first_space[owner[lead]] = after_space[lead]
        eff = np.where(dashed, first_space, heads)
    # Runs with >= 13 digits, and in each the groups a 13-digit window can start at.
    has_start = eff < g
    eff_c = np.minimum(eff, g - 1)
    run_end = cum[tails + 1]
    ok = has_start & (run_end - cum[eff_c] >= 13)
    runs = np.flatnonzero(ok)
    if not runs.size:
        return a, hit
    lo = eff_c[runs]
    hi = np.searchsorted(cum, run_end[runs] - 13, side="right") - 1  # last start group
    per = hi - lo + 1
    run_of = np.repeat(runs, per)
    wi = np.repeat(lo - (np.cumsum(per) - per), per) + np.arange(int(per.sum()))
    # Windows [wi .. wj] of whole groups with 13-19 digits, within the run.
    base = cum[wi]
    jlo = np.searchsorted(cum, base + 13) - 1
    jhi = np.minimum(np.searchsorted(cum, base + 19, side="right") - 2, tails[run_of])
    per = np.maximum(jhi - jlo + 1, 0)
    total_w = int(per.sum())
    if not total_w:
        return a, hit
    run_of = np.repeat(run_of, per)
    wi = np.repeat(wi, per)
    wj = np.repeat(jlo - (np.cumsum(per) - per), per) + np.arange(total_w)
    wc = cum[wj + 1] - cum[wi]
    # Luhn (and "not one repeated digit") per window, right-aligned in 19 columns over
    # the digits alone, a column at a time.
    digits = np.concatenate((np.zeros(19, dtype=np.uint8), x[d]))
    digits[19:] -= 48
    cols = np.ascontiguousarray(_windows(digits, 19, cum[wj + 1] + 19).T)
    total = np.zeros(total_w, dtype=np.uint8)  # at most 19 * 9
    varied = np.zeros(total_w, dtype=bool)
    last_digit = cols[18]
    wc8 = wc.astype(np.uint8)
    for c in range(19):
        from_right = 18 - c
        col = cols[c]
        if from_right % 2:  # every second digit from the right doubled, its digits summed
            col = col * np.uint8(2) - np.uint8(9) * (col > 4).view(np.uint8)
        if from_right >= 13:  # the shortest window has 13 digits
            inside = wc8 > from_right
            total += col * inside.view(np.uint8)
            varied |= inside & (cols[c] != last_digit)
        else:
            total += col
            varied |= cols[c] != last_digit
    good = (total % 10 == 0) & varied
    if not good.any():
        return a, hit
    wi, wj, wc, run_of = wi[good], wj[good], wc[good], run_of[good]
    # Per run: most digits, then the leftmost start group (score = wc * (g + 1) + g - wi).
    score = wc * (g + 1) + (g - wi)
    best = np.full(heads.size, -1, dtype=np.int64)
    np.maximum.at(best, run_of, score)
    chosen = score == best[run_of]  # one window per run: (wi, wc) fixes wj
    starts, ends = gs[wi[chosen]], ge[wj[chosen]]
    rows = np.searchsorted(offs, starts, side="right") - 1
    hit[rows] = True
    # A span is inside its value: it is the whole value when both its ends are value ends.
    if row_start[starts].all() and row_start[ends].all():  # a card column: every masked value is one card and nothing else
        return pc.if_else(pa.array(hit), pa.scalar("[card]", a.type), a), hit
    return _splice(a, starts, ends, b"[card]"), hit


def _whole_iban(rows: Any) -> tuple[Any, Any]:
    """Candidate rows that are one IBAN-shaped run and nothing else, settled in numpy:
    ``_IBAN_RUN`` matches the whole value, and ``_iban_accept`` masks it whole when its
    non-space characters are exactly the country's length and pass mod-97, and leaves it
    when they are fewer or the country is unknown. Longer ones are left to Python."""
    n = len(rows)
    settled = np.zeros(n, dtype=bool)
    hit = np.zeros(n, dtype=bool)
    whole = pc.fill_null(pc.match_substring_regex(rows, r"^[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}$"), False)
    idx = np.flatnonzero(whole.to_numpy(zero_copy_only=False))
    if not idx.size:
        return settled, hit
    compact = pc.replace_substring(pc.take(rows, pa.array(idx)), " ", "")
    x, offs = _text_buffers(compact)
    length = np.diff(offs)
    width = 34
    padded = np.concatenate((np.zeros(width, dtype=np.uint8), x, np.zeros(width, dtype=np.uint8)))
    mat = _windows(padded, width, offs[:-1] + 2 * width)  # each value, zero-padded
    country = (mat[:, 0].astype(np.int64) - 65) * 26 + (mat[:, 1].astype(np.int64) - 65)
    expected = _IBAN_TABLE[country]
    # ISO 13616: the first four characters moved to the end, letters as 10..35, mod 97.
    rem = np.zeros(len(idx), dtype=np.int64)
    for t in range(width):
        src = np.where(t < length - 4, t + 4, t - (length - 4))
        ch = mat[np.arange(len(idx)), np.clip(src, 0, width - 1)].astype(np.int64)
        letter = ch >= 65
        value = np.where(letter, ch - 55, ch - 48)
        step = np.where(letter, (rem * 100 + value) % 97, (rem * 10 + value) % 97)
        rem = np.where(t < length, step, rem)
    ok = (expected == length) & (rem == 1)
    done = (expected == 0) | (length <= expected)
    settled[idx] = done
    hit[idx] = done & ok
    return settled, hit


_IBAN_TABLE: Final = np.zeros(26 * 26, dtype=np.int64)
for _cc, _len in IBAN_LENGTHS.items():
    _IBAN_TABLE[(ord(_cc[0]) - 65) * 26 + ord(_cc[1]) - 65] = _len


def _mask_ssns(rows: Any) -> tuple[Any, Any]:
    """``_SSN_RUN`` over every value of ``rows`` (no nulls), vectorised.

    Its matches are fixed ``ddd-dd-dddd`` windows: not after a digit or dash, area not
    000, 666 or 9xx, group not 00, serial not 0000, and not followed by a digit or by a
    dash and a digit (all within the value). Two such windows cannot overlap (inside one,
    every byte is a digit or dash), so every window that qualifies is a match.
    """
    n = len(rows)
    hit = np.zeros(n, dtype=bool)
    x, offs = _text_buffers(rows)
    size = len(x)
    if size < 11:
        return rows, hit
    pad = np.concatenate((np.zeros(1, dtype=np.uint8), x, np.zeros(13, dtype=np.uint8)))
    p = np.flatnonzero(x == 45) - 3  # the first dash is at p + 3
    p = p[p >= 0]
    if not p.size:
        return rows, hit
    mat = _windows(pad, 14, p + 14)  # pad[p .. p+13] = x[p-1 .. p+12]

    def digit(c: int) -> Any:
        return (mat[:, c] - 48) < 10

    ok = digit(1) & digit(2) & digit(3) & (mat[:, 4] == 45) & digit(5) & digit(6)
    ok &= (mat[:, 7] == 45) & digit(8) & digit(9) & digit(10) & digit(11)
    row = np.searchsorted(offs, p, side="right") - 1
    row_end = offs[row + 1]
    ok &= p + 11 <= row_end
    area, group, serial = mat[:, 1:4], mat[:, 5:7], mat[:, 8:12]
    ok &= ~((area == 48).all(axis=1) | (area == 54).all(axis=1) | (area[:, 0] == 57))
    ok &= ~((group == 48).all(axis=1) | (serial == 48).all(axis=1))
    before = np.where(p > offs[row], mat[:, 0], 0)
    ok &= ~(((before - 48) < 10) | (before == 45))
    after = np.where(p + 11 < row_end, mat[:, 12], 0)
    after2 = np.where(p + 12 < row_end, mat[:, 13], 0)
    ok &= ~(((after - 48) < 10) | ((after == 45) & ((after2 - 48) < 10)))
    p = p[ok]
    if not p.size:
        return rows, hit
    hit[row[ok]] = True
    return _splice(rows, p, p + 11, b"[ssn]"), hit


_WHOLE: Final[dict[str, Callable[[Any], tuple[Any, Any]]]] = {"iban": _whole_iban}


def _mask_rows(det: _Detector, rows: Any) -> tuple[Any, Any]:
    """The detector over candidate rows (no nulls): masked rows and a numpy hit mask."""
    if det.vectorised:
        return pc.replace_substring_regex(rows, det.candidate, det.token), np.ones(len(rows), dtype=bool)
    assert det.masker is not None
    settled = np.zeros(len(rows), dtype=bool)
    hit = np.zeros(len(rows), dtype=bool)
    if det.name in _WHOLE:
        settled, hit = _WHOLE[det.name](rows)
    out = pc.if_else(pa.array(hit), pa.scalar(det.token, rows.type), rows)
    todo = np.flatnonzero(~settled)
    if todo.size:
        results = [det.masker(v) for v in pc.take(rows, pa.array(todo)).to_pylist()]
        hit[todo] = [r[1] for r in results]
        out = pc.replace_with_mask(out, pa.array(~settled), pa.array([r[0] for r in results], type=rows.type))
    return out, hit


_NUMPY: Final[dict[str, Callable[[Any], tuple[Any, Any]]]] = {
    "card": _mask_cards,
    "ssn": _mask_ssns,
}


def _put_rows(a: Any, where: Any, values: Any) -> Any:
    """``a`` with the rows at the sorted positions ``where`` replaced by ``values`` (no
    nulls among them)."""
    k = len(where)
    if k == len(a):
        return values
    if k > 4096 or k * 64 > len(a):
        mask = np.zeros(len(a), dtype=bool)
        mask[where] = True
        return pc.replace_with_mask(a, pa.array(mask), values)
    # A few rows of a large column: copy the untouched stretches between them as they are.
    x, offs = _text_buffers(a)
    vx, voffs = _text_buffers(values)
    lengths = np.diff(offs)
    lengths[where] = np.diff(voffs)
    new_offs = np.zeros(len(a) + 1, dtype=np.int64)
    np.cumsum(lengths, out=new_offs[1:])
    large = pa.types.is_large_string(a.type)
    if not large and new_offs[-1] >= 2**31:
        mask = np.zeros(len(a), dtype=bool)
        mask[where] = True
        return pc.replace_with_mask(a, pa.array(mask), values)
    pieces = []
    prev = 0
    for i, (start, end) in enumerate(zip(offs[where].tolist(), offs[where + 1].tolist(), strict=True)):
        pieces.append(x[prev:start])
        pieces.append(vx[voffs[i] : voffs[i + 1]])
        prev = end
    pieces.append(x[prev:])
    data = np.concatenate(pieces)
    validity = pa.array(_valid(a)).buffers()[1] if a.null_count else None
    offsets = new_offs.astype(np.int64 if large else np.int32)
    return pa.Array.from_buffers(
        a.type, len(a), [validity, pa.py_buffer(offsets), pa.py_buffer(data)], a.null_count
    )


def _scan_vectorised(a: Any, chosen: list[_Detector]) -> tuple[Any, dict[str, Any]]:
    n = len(a)
    names = [d.name for d in chosen]
    flags = _flag_rows(a, names)
    union = np.zeros(n, dtype=bool)
    for f in flags.values():
        union |= f
    keep = np.flatnonzero(union)
    if not keep.size:
        return a, {}
    whole = keep.size == n
    sub = a if whole else pc.take(a, pa.array(keep))
    sub_flags = {name: f if whole else f[keep] for name, f in flags.items()}
    hits: dict[str, Any] = {}
    for i, det in enumerate(chosen):
        rows = np.flatnonzero(sub_flags[det.name])
        if not rows.size:
            continue
        cur = sub if rows.size == len(sub) else pc.take(sub, pa.array(rows))
        if det.name in _NUMPY:  # masked in numpy, exactly as its Python masker would
            masked, hit = _NUMPY[det.name](cur)
        else:
            cand = pc.fill_null(pc.match_substring_regex(cur, det.candidate), False)
            ci = np.flatnonzero(cand.to_numpy(zero_copy_only=False))
            if not ci.size:
                continue
            crow = cur if ci.size == len(cur) else pc.take(cur, pa.array(ci))
            masked_c, hit_c = _mask_rows(det, crow)
            hit = np.zeros(len(rows), dtype=bool)
            hit[ci] = hit_c
            masked = masked_c if ci.size == len(cur) else _put_rows(cur, ci, masked_c)
        if not hit.any():
            continue
        changed = rows[hit]
        values = pc.filter(masked, pa.array(hit))
        sub = _put_rows(sub, changed, values)
        mark = np.zeros(len(sub), dtype=bool)
        mark[changed] = True
        hits[det.name] = mark
        later = names[i + 1 :]
        if later:  # a token changes what the later detectors' patterns see
            refreshed = _flag_rows(values, later)
            for name in later:
                sub_flags[name][changed] = refreshed[name]
    if not hits:
        return a, {}
    changed_any = np.zeros(len(sub), dtype=bool)
    for m in hits.values():
        changed_any |= m
    at = np.flatnonzero(changed_any)
    out = _put_rows(a, keep[at], pc.take(sub, pa.array(at)) if at.size != len(sub) else sub)
    result = {}
    for name, m in hits.items():
        full = np.zeros(n, dtype=bool)
        full[keep[m]] = True
        result[name] = pa.array(full)
    return out, result


# --------------------------------------------------------------------------- every rendering


def scan_and_mask_values(
    table: pa.Table,
    positions: Sequence[int],
    *,
    detectors: Sequence[str] | None = None,
) -> tuple[pa.Table, tuple[Finding, ...]]:
    """The second net over every textual rendering, by column position.

    ``scan_and_mask`` reads string columns only. A result can carry the same text as JSON
    or XML (strings or Arrow extension types over strings or bytes), as bytes, or inside
    lists, structs and maps. Here:

    * strings and extension types over strings (json, jsonb): matched substrings are
      replaced, the type is kept;
    * bytes (bytea, BLOB, xml): scanned as UTF-8 (invalid bytes replaced); a row with a
      hit gets its masked text back as bytes (a fixed-size binary: null);
    * lists, structs, maps (and unions): every string or byte leaf is scanned; a row with a
      hit anywhere inside is masked as a whole (null), since a part of a composite value
      cannot be masked without changing its type.

    Columns are addressed by position (a result may repeat a name). Numbers, dates and
    booleans are not text and are left alone. Each ``Finding`` carries the column's
    position; ``rows`` counts the rows the detector changed.
    """
    chosen = _chosen_detectors(detectors)
    findings: list[Finding] = []
    for i in positions:
        col = table.column(i)
        name = table.schema.field(i).name
        kind = _rendering(col.type)
        if kind is None or not chosen:
            continue
        counts: dict[str, int] = {}
        chunks = []
        for chunk in col.chunks:
            masked, hits = _scan_rendering(chunk, kind, chosen)
            chunks.append(masked)
            for det, n in hits.items():
                counts[det] = counts.get(det, 0) + n
        fired = [Finding(name, d.name, counts[d.name], i) for d in chosen if counts.get(d.name)]
        if fired:
            findings.extend(fired)
            table = table.set_column(i, table.schema.field(i), pa.chunked_array(chunks, type=col.type))
    return table, tuple(findings)


def _storage_type(t: Any) -> Any:
    return t.storage_type if isinstance(t, pa.BaseExtensionType) else t


def _is_binary_like(t: Any) -> bool:
    return bool(
        pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
        or pa.types.is_binary_view(t)
        or pa.types.is_fixed_size_binary(t)
    )


def _rendering(t: Any) -> str | None:
    """How a column of type ``t`` carries text: "text", "bytes", "nested" or None."""
    s = _storage_type(t)
    if _is_text_like(s):  # dictionaries of strings too: each distinct value scanned once
        return "text"
    if _is_binary_like(s):
        return "bytes"
    if pa.types.is_dictionary(s) or pa.types.is_nested(s) or pa.types.is_union(s):
        return "nested" if _has_text_leaf(s) else None
    return None


def _has_text_leaf(t: Any) -> bool:
    s = _storage_type(t)
    if pa.types.is_dictionary(s):
        return _has_text_leaf(s.value_type)
    if _is_text_like(s) or _is_binary_like(s):
        return True
    return any(_has_text_leaf(s.field(k).type) for k in range(s.num_fields)) if s.num_fields else False


def _as_text(a: Any) -> Any:
    """A large_string array with the text of string or byte values (invalid UTF-8 replaced)."""
    if isinstance(a.type, pa.BaseExtensionType):
        a = a.storage
    if pa.types.is_dictionary(a.type):
        a = a.dictionary_decode()
    if _is_text_like(a.type):
        return a.cast(pa.large_string())
    try:
        return a.cast(pa.large_binary()).cast(pa.large_string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return pa.array(
            [None if v is None else bytes(v).decode("utf-8", "replace") for v in a.to_pylist()],
            type=pa.large_string(),
        )


def _scan_rendering(a: Any, kind: str, chosen: list[_Detector]) -> tuple[Any, dict[str, int]]:
    if kind == "text":
        storage = a.storage if isinstance(a.type, pa.BaseExtensionType) else a
        masked, hits = _scan_chunk(storage, chosen)
        if isinstance(a.type, pa.BaseExtensionType):
            masked = pa.ExtensionArray.from_storage(a.type, masked)
        return masked, hits
    if kind == "bytes":
        masked_text, changed = _scan_values(_as_text(a), chosen)
        if not changed:
            return a, {}
        rows = _any_rows(changed, len(a))
        storage = a.storage if isinstance(a.type, pa.BaseExtensionType) else a
        if pa.types.is_fixed_size_binary(storage.type):
            replacement = pa.nulls(len(a), type=storage.type)
        else:
            replacement = masked_text.cast(pa.large_binary()).cast(storage.type)
        out = pc.if_else(rows, replacement, storage)
        if isinstance(a.type, pa.BaseExtensionType):
            out = pa.ExtensionArray.from_storage(a.type, out)
        return out, _count(changed)
    # nested: scan each text leaf, map leaf hits back to rows, null the rows hit.
    per_det: dict[str, Any] = {}
    for leaf, rows_of in _leaves(a, pa.array(np.arange(len(a), dtype=np.int64))):
        if len(leaf) == 0:
            continue
        _, changed = _scan_values(_as_text(leaf), chosen)
        for det, mask in changed.items():
            hit = np.zeros(len(a), dtype=bool)
            hit[pc.filter(rows_of, mask).to_numpy(zero_copy_only=False)] = True
            per_det[det] = hit if det not in per_det else per_det[det] | hit
    if not per_det:
        return a, {}
    rows_hit = np.zeros(len(a), dtype=bool)
    for hit in per_det.values():
        rows_hit |= hit
    if pa.types.is_union(_storage_type(a.type)):
        # A union has no validity bitmap to null one row with: refuse rather than pass it.
        raise ValueError("a union-typed column holds text a content detector recognises; it cannot be masked in place")
    keep = pa.array(~rows_hit)
    out = pc.if_else(keep, a, pa.nulls(len(a), type=a.type))
    return out, {det: int(hit.sum()) for det, hit in per_det.items()}


def _any_rows(changed: dict[str, Any], n: int) -> Any:
    rows = _falses(n)
    for mask in changed.values():
        rows = pc.or_(rows, mask)
    return rows


def _leaves(a: Any, rows: Any) -> Any:
    """(leaf array, the top-level row of each leaf value) for every string or byte leaf."""
    if isinstance(a.type, pa.BaseExtensionType):
        a = a.storage
    t = a.type
    if pa.types.is_dictionary(t):
        yield from _leaves(a.dictionary_decode(), rows)
    elif _is_text_like(t) or _is_binary_like(t):
        yield a, rows
    elif pa.types.is_struct(t):
        for child in a.flatten():
            yield from _leaves(child, rows)
    elif pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_map(t):
        # The child values each row spans, by the offsets (a null row spans none or junk
        # that is scanned too: a hit there nulls a row that is null already).
        offsets = a.offsets.to_numpy(zero_copy_only=False).astype(np.int64)
        values = a.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0]))
        parents = np.repeat(np.arange(len(a), dtype=np.int64), np.diff(offsets))
        if pa.types.is_map(t):
            values = a.keys.slice(int(offsets[0]), int(offsets[-1] - offsets[0]))
            yield from _leaves(values, pc.take(rows, pa.array(parents)))
            values = a.items.slice(int(offsets[0]), int(offsets[-1] - offsets[0]))
        yield from _leaves(values, pc.take(rows, pa.array(parents)))
    elif pa.types.is_fixed_size_list(t):
        size = t.list_size
        values = a.values.slice(a.offset * size, len(a) * size)
        parents = np.repeat(np.arange(len(a), dtype=np.int64), size)
        yield from _leaves(values, pc.take(rows, pa.array(parents)))
    else:
        # Anything else nested (list views, unions): its JSON text, one per row.
        text = pa.array([None if v is None else json.dumps(v, default=str) for v in a.to_pylist()], type=pa.large_string())
        yield text, rows
