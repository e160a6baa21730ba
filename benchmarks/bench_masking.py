"""Throughput of warden.masking on a 1M-row string column, against a plain Python loop.

Run: python benchmarks/bench_masking.py [--rows N] [--runs R]

Every operator is timed on the same Arrow column (median of R runs, after one warm-up);
the Python loop doing the same thing per value (over an already-built list, so the
Arrow-to-Python conversion is not charged to it) is timed on a 100k slice and scaled.
The goals: >= 20 M values/s for redact and the partial operators, >= 5 M values/s for hash.
``hash`` and ``email`` run in C when warden.masking._native is built; their "(pure)" rows
time the same operator with WARDEN_NO_NATIVE=1 (the Arrow/DuckDB paths that a machine
without the extension takes).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import hmac
import os
import random
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kernel"))

from warden.masking import mask_array, operators, parse_operator, scan_and_mask
from warden.masking.detectors import (
    _IBAN_RUN,
    _PHONE_RUN,
    _SSN_RUN,
    _card_masker,
    _iban_accept,
    _phone_accept,
    _sub_masker,
    _whole,
)

KEY = b"benchmark-key-0123456789abcdef!!"
FIRST = ["anna", "bob", "carla", "dmitri", "eve", "farah", "gus", "hiro", "ines", "jon"]
LAST = ["smith", "garcia", "nguyen", "muller", "rossi", "kowalski", "tanaka", "okafor"]
DOMAINS = ["example.com", "corp.example.org", "mail.test", "uni.example.ac.uk"]


def luhn_complete(prefix: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(prefix)):
        d = int(ch)
        if i % 2 == 0:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return prefix + str((10 - total % 10) % 10)


def make_emails(n: int, rng: random.Random) -> list[str]:
    return [f"{rng.choice(FIRST)}.{rng.choice(LAST)}{i}@{rng.choice(DOMAINS)}" for i in range(n)]


def make_cards(n: int, rng: random.Random) -> list[str]:
    out = []
    for _ in range(n):
        num = luhn_complete(rng.choice("45") + f"{rng.randrange(10**14):014d}")
        out.append(" ".join(num[i : i + 4] for i in range(0, len(num), 4)))
    return out


def make_dates(n: int, rng: random.Random) -> list[str]:
    base = dt.date(1950, 1, 1)
    return [(base + dt.timedelta(days=rng.randrange(27000))).isoformat() for _ in range(n)]


def make_text(n: int, rng: random.Random, emails: list[str], cards: list[str]) -> list[str]:
    """Free text: ~5% carry an e-mail, card, SSN, phone or token; the rest are clean."""
    words = [
        "order",
        "shipped",
        "on",
        "time",
        "customer",
        "asked",
        "for",
        "refund",
        "item",
        "42",
        "backordered",
    ]
    out = []
    for i in range(n):
        text = " ".join(rng.choices(words, k=8))
        r = rng.random()
        if r < 0.01:
            text += f" contact {emails[i]}"
        elif r < 0.02:
            text += f" paid with {cards[i]}"
        elif r < 0.03:
            text += f" ssn {rng.randrange(100, 899):03d}-{rng.randrange(1, 99):02d}-1234"
        elif r < 0.04:
            text += f" call (555) {rng.randrange(100, 999)}-{rng.randrange(1000, 9999)}"
        elif r < 0.05:
            text += " key AKIAIOSFODNN7EXAMPLE"
        out.append(text)
    return out


@contextlib.contextmanager
def pure_paths(pure: bool) -> Iterator[None]:
    """WARDEN_NO_NATIVE=1 inside (when ``pure``): the native kernels stand aside."""
    old = os.environ.get("WARDEN_NO_NATIVE")
    if pure:
        os.environ["WARDEN_NO_NATIVE"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("WARDEN_NO_NATIVE", None)
        else:
            os.environ["WARDEN_NO_NATIVE"] = old


def median_time(fn: Callable[[], Any], runs: int) -> float:
    fn()  # warm-up: imports, DuckDB start, regex compilation
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# --- the plain Python loops, one per operator ---------------------------------------

_REDACT = str.maketrans(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
    "x" * 26 + "X" * 26 + "9" * 10,
)
_EMAIL = re.compile(r"[^@\s]+@([^@\s.]+(?:\.[^@\s.]+)+)")


def py_redact(vals: list[str]) -> list[str]:
    return [v.translate(_REDACT) for v in vals]


def py_first(vals: list[str], n: int = 4) -> list[str]:
    return [v[:n] + "*" * (len(v) - n) if len(v) > n else "*" * len(v) for v in vals]


def py_last(vals: list[str], n: int = 4) -> list[str]:
    return ["*" * (len(v) - n) + v[-n:] if len(v) > n else "*" * len(v) for v in vals]


def py_email(vals: list[str]) -> list[str]:
    out = []
    for v in vals:
        m = _EMAIL.fullmatch(v)
        out.append("****@" + m.group(1) if m else v.translate(_REDACT))
    return out


def py_year(vals: list[str]) -> list[str | None]:
    out: list[str | None] = []
    for v in vals:
        try:
            out.append(f"{dt.date.fromisoformat(v[:10]).year:04d}-01-01")
        except ValueError:
            out.append(None)
    return out


def py_constant(vals: list[str]) -> list[str | None]:
    return ["[redacted]" if v is not None else None for v in vals]


def py_null(vals: list[str]) -> list[None]:
    return [None for _ in vals]


def py_hash(vals: list[str]) -> list[str]:
    return [hmac.new(KEY, v.encode(), hashlib.sha256).hexdigest() for v in vals]


_PY_DETECT = [
    _card_masker,
    _sub_masker(_IBAN_RUN, "[iban]", _iban_accept),
    _sub_masker(_SSN_RUN, "[ssn]", _whole),
    _sub_masker(_PHONE_RUN, "[phone]", _phone_accept),
]
_PY_EMAIL_ANY = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_PY_AKIA = re.compile(r"\bAKIA[A-Z0-9]{16}\b")


def py_detect(vals: list[str]) -> list[str]:
    out = []
    for v in vals:
        v = _PY_AKIA.sub("[secret]", v)
        v = _PY_EMAIL_ANY.sub("[email]", v)
        for masker in _PY_DETECT:
            v = masker(v)[0]
        out.append(v)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    n, runs = args.rows, args.runs
    rng = random.Random(20240601)
    emails = make_emails(n, rng)
    cards = make_cards(n, rng)
    dates = make_dates(n, rng)
    text = make_text(n, rng, emails, cards)
    # A fact table's view of customers: n rows over n/20 distinct addresses.
    repeated = [emails[rng.randrange(max(1, n // 20))] for _ in range(n)]
    columns = {
        "emails": pa.array(emails),
        "cards": pa.array(cards),
        "dates": pa.array(dates),
        "text": pa.array(text),
        "repeated emails": pa.array(repeated),
    }
    lists = {"emails": emails, "cards": cards, "dates": dates, "text": text}
    lists["repeated emails"] = repeated
    slice_n = min(n, 100_000)

    cases: list[tuple[str, str, str, Callable[[list[str]], Any], float | None]] = [
        ("redact", "emails", "redact", py_redact, 20.0),
        ("redact", "cards", "redact", py_redact, 20.0),
        ("first:4", "emails", "first:4", py_first, 20.0),
        ("last:4", "cards", "last:4", py_last, 20.0),
        ("email", "emails", "email", py_email, 20.0),
        ("email (pure)", "emails", "email", py_email, None),
        ("year", "dates", "year", py_year, 20.0),
        ("constant:[redacted]", "emails", "constant:[redacted]", py_constant, None),
        ("null", "emails", "null", py_null, None),
        ("hash", "emails", "hash", py_hash, 5.0),
        ("hash (pure)", "emails", "hash", py_hash, None),
        ("hash", "repeated emails", "hash", py_hash, 5.0),
        ("hash (pure)", "repeated emails", "hash", py_hash, None),
    ]
    native = operators._use_native()
    rows = []
    for label, col_name, spec, py_fn, goal in cases:
        pure = label.endswith("(pure)")
        if pure and not native:
            continue  # no extension built: the plain rows already time the pure paths
        op = parse_operator(spec)
        col = columns[col_name]
        with pure_paths(pure):
            t = median_time(lambda col=col, op=op: mask_array(col, op, key=KEY), runs)
        vals = lists[col_name][:slice_n]
        t_py = median_time(lambda vals=vals, py_fn=py_fn: py_fn(vals), max(1, runs // 2))
        rows.append((label, col_name, n / t / 1e6, slice_n / t_py / 1e6, goal))

    table = pa.table({"text": columns["text"]})
    t = median_time(lambda: scan_and_mask(table), max(1, runs // 2))
    t_py = median_time(lambda: py_detect(text[:slice_n]), 1)
    rows.append(("detectors (all 6)", "text, 5% hits", n / t / 1e6, slice_n / t_py / 1e6, None))
    card_table = pa.table({"cards": columns["cards"]})
    t = median_time(lambda: scan_and_mask(card_table), 1)
    t_py = median_time(lambda: py_detect(cards[:slice_n]), 1)
    rows.append(("detectors (all 6)", "cards, 100% hits", n / t / 1e6, slice_n / t_py / 1e6, None))

    print(f"warden.masking throughput: {n:,} rows, median of {runs} runs")
    if native:
        from warden.masking import _native

        ni = _native.sha_ni_available()
        print(f"hash and email in C (warden.masking._native, SHA-NI: {'yes' if ni else 'no'})\n")
    else:
        print("warden.masking._native not built (or WARDEN_NO_NATIVE=1): pure paths only\n")
    head = (
        f"{'operator':<20} {'column':<17} {'M values/s':>10} {'Python M/s':>10} "
        f"{'ratio':>7}  {'goal':<10}"
    )
    print(head)
    print("-" * len(head))
    for label, col_name, mps, py_mps, goal in rows:
        verdict = "" if goal is None else f">={goal:g} M/s {'met' if mps >= goal else 'NOT met'}"
        print(
            f"{label:<20} {col_name:<17} {mps:>10.2f} {py_mps:>10.2f} "
            f"{mps / py_mps:>6.1f}x  {verdict}"
        )


if __name__ == "__main__":
    main()
