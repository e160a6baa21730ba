"""Throughput of the content detectors (the second net), new path against the old one.

Run: python benchmarks/bench_detectors.py [--rows N] [--runs R]

Three 1M-row string columns, all six detectors on: md5 hex digests (32 hex characters,
many digit runs, ~0.2% Luhn-valid card look-alikes), free text with ~5% hits (the text
column of bench_masking.py) and cards (every row a card). ``new`` is ``_scan_values``
(numpy row flags, card/SSN masking and IBAN mod-97 in numpy); ``old`` is
``_reference_scan_values``, the per-candidate implementation it replaced (a combined RE2
pass, then RE2 and Python ``re`` per candidate row). Median of R runs after a warm-up; the
outputs of both paths are compared once per column.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sys
from pathlib import Path

import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kernel"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_masking import make_cards, make_emails, make_text, median_time
from warden.masking.detectors import _chosen_detectors, _reference_scan_values, _scan_values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-old", action="store_true", help="time the new path only")
    args = parser.parse_args()
    n = args.rows
    rng = random.Random(20240601)
    emails = make_emails(n, rng)
    cards = make_cards(n, rng)
    columns = {
        "md5 hex": pa.array([hashlib.md5(str(i).encode()).hexdigest() for i in range(n)]),
        "text, 5% hits": pa.array(make_text(n, rng, emails, cards)),
        "cards, 100% hits": pa.array(cards),
    }
    chosen = _chosen_detectors(None)
    print(f"content detectors (all 6): {n:,} rows, median of {args.runs} runs\n")
    head = f"{'column':<18} {'new ms':>8} {'new M rows/s':>13} {'old ms':>8} {'old M rows/s':>13} {'speed-up':>9}  same"
    print(head)
    print("-" * len(head))
    for label, col in columns.items():
        t_new = median_time(lambda col=col: _scan_values(col, chosen), args.runs)
        if args.no_old:
            print(f"{label:<18} {t_new * 1e3:>8.1f} {n / t_new / 1e6:>13.2f}")
            continue
        t_old = median_time(
            lambda col=col: _reference_scan_values(col, chosen), max(1, args.runs // 2)
        )
        new_out, new_hits = _scan_values(col, chosen)
        old_out, old_hits = _reference_scan_values(col, chosen)
        same = new_out.equals(old_out) and {k: v.to_pylist() for k, v in new_hits.items()} == {
            k: v.to_pylist() for k, v in old_hits.items()
        }
        print(
            f"{label:<18} {t_new * 1e3:>8.1f} {n / t_new / 1e6:>13.2f} {t_old * 1e3:>8.1f} "
            f"{n / t_old / 1e6:>13.2f} {t_old / t_new:>8.1f}x  {'yes' if same else 'NO'}"
        )


if __name__ == "__main__":
    main()
