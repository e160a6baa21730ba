"""The data the gateway and kernel benchmarks share: a wide 8-column table and a small one."""

from __future__ import annotations

import psycopg

BIG_SQL = "SELECT id, email, h, amount, ts, bucket, region, flag FROM big"


def seed(dsn: str, rows: int) -> None:
    """``big``: ``rows`` rows x 8 columns (text, numbers, time, bool); ``small``: 1000 rows."""
    with psycopg.connect(dsn, autocommit=True) as con:
        con.execute(
            "CREATE TABLE big AS SELECT g AS id, 'user' || g || '@example.com' AS email, md5(g::text) AS h, "
            "(g * 1.5)::float8 AS amount, now() AS ts, (g % 100) AS bucket, 'region' || (g % 5) AS region, "
            f"g % 2 = 0 AS flag FROM generate_series(1, {rows}) g"
        )
        con.execute("CREATE TABLE small (id int PRIMARY KEY, name text)")
        con.execute("INSERT INTO small SELECT g, 'n' || g FROM generate_series(1, 1000) g")
        # VACUUM too: autovacuum would otherwise visit the fresh million rows (and first
        # reads set their hint bits) in the middle of a measurement.
        con.execute("VACUUM ANALYZE")
