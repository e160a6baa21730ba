"""Analysis speed: parse + qualify + lineage + decision, against sqlglot's bare parse.

    python benchmarks/bench_analysis.py

Prints a table of medians (ms) with the ratio to sqlglot.parse in the same run, and
the goals from the engine issue: new query <= 5 ms median, 200-line report <= 50 ms,
the same query again (cached by fingerprint) <= 0.2 ms.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import sqlglot

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from engine_fixtures import fixture_catalog, fixture_policy
from warden.policy.engine import Identity, decide
from warden.sql.analyze import AnalysisCache, analyze_cell

CORPUS = [
    "SELECT id, name, email FROM customers WHERE region = 'emea' ORDER BY name LIMIT 100",
    "SELECT c.id, c.name, o.amount FROM customers c JOIN orders o ON o.customer_id = c.id WHERE o.amount > 100",
    "SELECT region, count(*) AS n, sum(amount) AS total FROM orders GROUP BY region HAVING sum(amount) > 10",
    "WITH big AS (SELECT customer_id, sum(amount) AS total FROM orders GROUP BY customer_id) "
    "SELECT c.name, b.total, rank() OVER (ORDER BY b.total DESC) AS r FROM big b JOIN customers c ON c.id = b.customer_id",
    "SELECT p.card_number, o.amount FROM payments p JOIN orders o ON o.id = p.order_id WHERE o.region = 'amer'",
    "SELECT who FROM v_who",
    "SELECT lower(email) AS e, coalesce(phone, 'n/a') AS p FROM customers",
    "SELECT name FROM customers UNION SELECT email FROM sales.leads",
    "SELECT id, (SELECT max(amount) FROM orders o WHERE o.customer_id = c.id) AS top FROM customers c",
    "SELECT c.* FROM customers c WHERE c.id IN (SELECT customer_id FROM orders WHERE amount > 5)",
    "SELECT date_trunc('month', now()) AS m, count(*) FROM orders GROUP BY 1",
    "SELECT id, lag(amount) OVER (PARTITION BY customer_id ORDER BY id) AS prev FROM orders",
]


def report_query(lines: int = 200) -> str:
    """A reporting query of about ``lines`` lines: CTEs, joins, CASE and windows."""
    parts = ["WITH"]
    ctes = []
    for i in range(12):
        ctes.append(
            f"  step{i} AS (\n"
            f"    SELECT\n"
            f"      o.customer_id,\n"
            f"      o.region,\n"
            f"      sum(o.amount) AS total_{i},\n"
            f"      count(*) AS n_{i},\n"
            f"      avg(o.amount) AS avg_{i},\n"
            f"      max(o.amount) AS max_{i},\n"
            f"      CASE WHEN sum(o.amount) > {i * 100} THEN 'high' ELSE 'low' END AS band_{i},\n"
            f"      row_number() OVER (PARTITION BY o.region ORDER BY sum(o.amount) DESC) AS rn_{i}\n"
            f"    FROM orders o\n"
            f"    JOIN customers c ON c.id = o.customer_id\n"
            f"    WHERE o.amount > {i}\n"
            f"    GROUP BY o.customer_id, o.region\n"
            f"  )"
        )
    parts.append(",\n".join(ctes))
    select = ["SELECT", "  c.id,", "  c.name,", "  c.email,"]
    for i in range(12):
        select.append(f"  s{i}.total_{i}, s{i}.band_{i},")
    select.append("  c.region")
    select.append("FROM customers c")
    for i in range(12):
        select.append(f"LEFT JOIN step{i} s{i} ON s{i}.customer_id = c.id AND s{i}.rn_{i} <= 10")
    select.append("WHERE c.region IN ('emea', 'amer')")
    select.append("ORDER BY c.id")
    return "\n".join(parts + select)


def median_ms(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def main() -> None:
    catalog = fixture_catalog("postgres")
    policy = fixture_policy()
    who = Identity("ana", frozenset({"analysts"}), {"region": "emea"})
    report = report_query()
    print(f"report query: {report.count(chr(10)) + 1} lines")

    def full(sql: str, cache: AnalysisCache | None) -> None:
        decide(policy, who, analyze_cell(sql, catalog, cache=cache), "pg")

    rows = []
    parse_new = statistics.median(median_ms(lambda q=q: sqlglot.parse(q, dialect="postgres"), 30) for q in CORPUS)
    new = statistics.median(median_ms(lambda q=q: full(q, None), 30) for q in CORPUS)
    warm = AnalysisCache()
    for q in CORPUS:
        full(q, warm)
    cached = statistics.median(median_ms(lambda q=q: full(q, warm), 200) for q in CORPUS)
    rows.append(("corpus: sqlglot.parse (peer floor)", parse_new, 1.0, "", ""))
    rows.append(("corpus: new query, analysis + decision", new, new / parse_new, "<= 5 ms", new <= 5))
    rows.append(("corpus: same query again (cached)", cached, cached / parse_new, "<= 0.2 ms", cached <= 0.2))
    # Other literals, same shape: the fingerprint cache still hits.
    shifted = [q.replace("'emea'", "'apac'").replace("100", "250") for q in CORPUS]
    again = statistics.median(median_ms(lambda q=q: full(q, warm), 200) for q in shifted)
    rows.append(("corpus: same shape, other literals", again, again / parse_new, "<= 0.2 ms", again <= 0.2))

    parse_report = median_ms(lambda: sqlglot.parse(report, dialect="postgres"), 10)
    new_report = median_ms(lambda: full(report, None), 10)
    rows.append(("report: sqlglot.parse (peer floor)", parse_report, 1.0, "", ""))
    rows.append(("report: new query, analysis + decision", new_report, new_report / parse_report, "<= 50 ms", new_report <= 50))
    cache = AnalysisCache()
    full(report, cache)
    cached_report = median_ms(lambda: full(report, cache), 50)
    rows.append(("report: same query again (cached)", cached_report, cached_report / parse_report, "", ""))

    print(f"\n{'measure':<44} {'median ms':>10} {'x parse':>8}  {'goal':<10} met")
    print("-" * 82)
    for name, ms, ratio, goal, met in rows:
        flag = "" if met == "" else ("yes" if met else "NO")
        print(f"{name:<44} {ms:>10.3f} {ratio:>8.2f}  {goal:<10} {flag}")


if __name__ == "__main__":
    main()
