"""Safe queries run: the fail-closed checks must not deny or abort ordinary work.

Analyst queries over unclassified columns (and masked ones), in many shapes, through
a real gateway on real PostgreSQL and DuckDB databases built from the fixture
catalog. Each must be allowed or masked by the policy and must run to the end: no
result-shape abort (engine column names differ from sqlglot's), no unknown
function, no unresolved projection.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest

from gateway_harness import GatewayProcess
from oidc_issuer import OIDCIssuer
from test_decisions_gateway import gateway  # noqa: F401 - the fixture
from warden.gateway.frames import chunk_stream, read_frames

BOTH = [
    "SELECT id, region FROM orders",
    "SELECT o.id, o.amount, c.name FROM orders o JOIN customers c ON c.id = o.customer_id",
    "SELECT region, count(*) FROM orders GROUP BY region",
    "SELECT region, count(*), sum(amount), avg(amount), min(amount), max(amount) FROM orders GROUP BY 1 ORDER BY 2 DESC",
    "SELECT customer_id, sum(amount) AS total FROM orders GROUP BY customer_id HAVING sum(amount) > 0",
    "SELECT id, amount, row_number() OVER (PARTITION BY region ORDER BY amount DESC) FROM orders",
    "SELECT id, lag(amount) OVER (ORDER BY id), lead(amount, 1) OVER (ORDER BY id) FROM orders",
    "SELECT upper(name), lower(name), length(name), trim(name), substr(name, 1, 2) FROM customers",
    "SELECT name || '!' , coalesce(notes, 'none'), nullif(region, '') FROM customers",
    "SELECT CASE WHEN amount > 15 THEN 'big' ELSE 'small' END, CAST(amount AS integer), amount + 1 FROM orders",
    "SELECT round(amount, 1), floor(amount), ceil(amount), abs(amount), amount * 2 FROM orders",
    "SELECT greatest(amount, 0), least(amount, 100), mod(id, 3) FROM orders",
    "SELECT id FROM orders WHERE amount BETWEEN 1 AND 100 AND region IN ('emea', 'apac') AND id IS NOT NULL",
    "SELECT c.name, o.amount FROM customers c LEFT JOIN orders o ON o.customer_id = c.id",
    "SELECT name FROM customers WHERE name LIKE 'A%' OR name LIKE '%a%'",
    "SELECT DISTINCT region FROM orders",
    "SELECT count(DISTINCT customer_id) FROM orders",
    "WITH t AS (SELECT customer_id, sum(amount) AS s FROM orders GROUP BY 1) SELECT avg(s) FROM t",
    "SELECT id FROM customers WHERE id IN (SELECT customer_id FROM orders WHERE amount > 1)",
    "SELECT id FROM customers c WHERE EXISTS (SELECT 1 FROM orders o WHERE o.customer_id = c.id)",
    "SELECT region FROM orders UNION SELECT region FROM customers",
    "SELECT region FROM orders UNION ALL SELECT region FROM customers ORDER BY 1",
    "SELECT string_agg(name, ', ') FROM customers",
    "SELECT id, amount, sum(amount) OVER (ORDER BY id ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) FROM orders",
    "SELECT * FROM orders",
    "SELECT o.* FROM orders o",
    "SELECT * FROM orders o JOIN payments p ON p.order_id = o.id",
    "SELECT count(*) FROM orders",
    "SELECT count(1) FROM customers",
    "SELECT (SELECT count(*) FROM orders) AS n",
    "SELECT 1",
    "SELECT 1 AS one, 'x' AS two",
    "SELECT id + 1 FROM orders",
    "SELECT amount::text FROM orders",
    "SELECT CAST(id AS varchar) FROM orders",
    "SELECT id AS \"Order Id\" FROM orders",
    "SELECT * FROM (SELECT id, amount FROM orders) t",
    "SELECT t.id FROM (SELECT id FROM orders) AS t(id)",
    "SELECT * FROM (VALUES (1, 'a'), (2, 'b')) AS v(n, s)",
    "SELECT * FROM customers",
    "SELECT email FROM customers",
    "SELECT id, email, ssn FROM customers ORDER BY id",
    "SELECT * FROM v_contacts",
    "SELECT who FROM v_who",
    "SELECT * FROM v_orders",
    "SELECT id, amount FROM orders ORDER BY amount DESC LIMIT 2 OFFSET 1",
    "SELECT max(amount) - min(amount) FROM orders",
    "SELECT region, count(*) FILTER (WHERE amount > 15) FROM orders GROUP BY region",
    "SELECT date_trunc('day', now())",
    "SELECT current_date",
    "SELECT extract(year FROM now())",
    "SELECT id, rank() OVER (ORDER BY amount), dense_rank() OVER (ORDER BY amount) FROM orders",
    "SELECT a.id, b.id FROM orders a CROSS JOIN orders b WHERE a.id < b.id",
    "SELECT * FROM generate_series(1, 3) AS g(n)",
    "SELECT n FROM generate_series(1, 3) AS g(n)",
    "SELECT split_part(name, ' ', 1), left(name, 1), right(name, 2), replace(name, 'a', 'b') FROM customers",
    "SELECT md5(name) FROM customers",
    "SELECT region, array_agg(id) FROM orders GROUP BY region",
    "SELECT stddev(amount), variance(amount) FROM orders",
    "SELECT bool_and(amount > 0), bool_or(amount > 100) FROM orders",
    "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 5) SELECT n FROM r",
    "SELECT id FROM orders WHERE amount > (SELECT avg(amount) FROM orders)",
    "SELECT id, amount FROM orders o WHERE amount = (SELECT max(amount) FROM orders o2 WHERE o2.region = o.region)",
    "SELECT name, email FROM customers WHERE id = 1",
    "SELECT c.id, count(o.id) FROM customers c LEFT JOIN orders o ON o.customer_id = c.id GROUP BY c.id",
]
POSTGRES = [
    "SELECT to_char(now(), 'YYYY-MM-DD')",
    "SELECT id::text || '-' || region FROM orders",
    "SELECT jsonb_build_object('id', id, 'region', region) FROM orders",
    "SELECT row_to_json(o) FROM orders o",
    "SELECT * FROM unnest(ARRAY[1, 2, 3]) AS u(x)",
    "SELECT k, v FROM jsonb_each_text('{\"a\": \"1\"}'::jsonb) AS j(k, v)",
    "SELECT * FROM jsonb_each('{\"a\": 1}'::jsonb)",
    "SELECT id FROM orders WHERE id = ANY(ARRAY[1, 2])",
    "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY amount) FROM orders",
    "SELECT DISTINCT ON (region) region, id FROM orders ORDER BY region, id",
    "SELECT region, grouping(region), count(*) FROM orders GROUP BY ROLLUP (region)",
    "SELECT * FROM orders TABLESAMPLE SYSTEM (100)",
    "SELECT id FROM orders FETCH FIRST 2 ROWS ONLY",
    "SELECT age(now(), now())",
    "SELECT regexp_replace(name, '[aeiou]', '', 'g') FROM customers",
    "SELECT position('a' IN name), substring(name FROM 1 FOR 2) FROM customers",
    "TABLE orders",
]
DUCKDB = [
    "FROM orders",
    "FROM orders SELECT id",
    "SELECT * EXCLUDE (amount) FROM orders",
    "SELECT * REPLACE (amount * 2 AS amount) FROM orders",
    "SELECT region, count(*) FROM orders GROUP BY ALL",
    "SELECT id FROM orders ORDER BY ALL",
    "SELECT strftime(now(), '%Y')",
    "SELECT list_value(1, 2)",
    "SELECT [1, 2, 3]",
    "SELECT {'a': 1}",
    "SELECT median(amount), quantile_cont(amount, 0.5) FROM orders",
    "SELECT * FROM range(3)",
    "SELECT * FROM range(3) r(i)",
    "SELECT unnest([1, 2])",
    "SELECT arg_max(id, amount) FROM orders",
    "SELECT id FROM orders QUALIFY row_number() OVER (PARTITION BY region ORDER BY id) = 1",
    "SELECT * FROM orders USING SAMPLE 100 PERCENT (bernoulli)",
    "SELECT epoch(now()), year(now())",
    "SELECT ifnull(notes, '') FROM customers",
]

CASES = [("postgres", q) for q in BOTH + POSTGRES] + [("duckdb", q) for q in BOTH + DUCKDB]


@pytest.mark.parametrize(("dialect", "sql"), CASES, ids=[f"{d}:{q[:60]}" for d, q in CASES])
def test_safe_query_runs(gateway: tuple[GatewayProcess, OIDCIssuer], dialect: str, sql: str) -> None:  # noqa: F811
    gw, issuer = gateway
    token = issuer.issue(sub="eng1", groups=["eng"], region="emea")
    body: dict[str, Any] = {
        "connection": "pg" if dialect == "postgres" else "dk",
        "sql": sql,
        "context": {"session_id": "s-" + uuid.uuid4().hex[:10], "cell_id": "c1"},
    }
    resp = httpx.post(gw.url + "/v1/cells", json=body, headers={"authorization": f"Bearer {token}"}, timeout=60)
    assert resp.status_code == 200, resp.text[:600]
    frames = list(read_frames(chunk_stream(iter([resp.content]))))
    errors = [json.loads(p) for k, p in frames if k == b"X"]
    assert not errors, errors
    assert any(k == b"T" for k, _ in frames)
