"""An auditor's question over 1M audit records, through the gateway, beside the same
query run directly in DuckDB on an exported (Parquet) copy.

Run: python benchmarks/bench_audit_query.py [--records 1000000] [--repeat 5]

"Every read of a pii.* column in the last 30 days, by user": the auditor's SQL over the
``objects`` view, sent as ``%%sql audit`` would send it (POST /v1/cells, connection
``audit``) to a real gateway process that holds the store open; timed from the request
to the last Arrow frame, so it includes the analysis, the ``audit.read`` record (durable
before the query runs), the view expansion, DuckDB and the framing. The peer is the
same SQL with the view expanded, run by DuckDB in this process over a Parquet copy of
``audit_events`` (the Arrow schema ``warden audit export --format parquet`` writes);
a third line runs it on the store file itself (after the gateway stopped), which is
what the gateway's own cost is measured against.
Goal: <= 1 s through the gateway.

The records are generated in SQL (15-20 s for 1M on the 2-vCPU VM, not minutes of appends): four per
query (intent, decision, completion, cell), over 90 days, 200 users, objects drawn from
a few shapes of which some read pii.* columns. Their hash fields are placeholders: the
query reads none of them, and ``warden audit verify`` would reject this store (appending
1M real records takes ~1-2 minutes: docs/audit.md §8). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "kernel"))

from gateway_harness import GatewayProcess  # noqa: E402
from oidc_issuer import OIDCIssuer  # noqa: E402
from warden.audit.views import with_views  # noqa: E402
from warden.gateway.client import GatewayClient  # noqa: E402

QUESTION = """
SELECT subject, column_name, count(*) AS reads, min(event_time) AS first_read, max(event_time) AS last_read
FROM objects
WHERE event_time >= now() - INTERVAL 30 DAY
  AND len(list_filter(classifications, c -> c LIKE 'pii.%')) > 0
GROUP BY subject, column_name
ORDER BY reads DESC, subject, column_name
"""

# Objects of a decision record: (objects JSON, masks JSON, action).
_SHAPES = [
    ('[{"classified":{"main.customers.email":["pii.email"]},"columns":{"main.customers.email":["projected"],"main.customers.id":["predicate"]},'
     '"functions":[],"reads":["main.customers"],"statement":0,"writes":[]}]',
     '[{"classifications":["pii.email"],"column":"email","operator":"email","statement":0}]', "mask"),
    ('[{"classified":{},"columns":{"main.orders.amount":["projected"],"main.orders.id":["projected"]},"functions":[],"reads":["main.orders"],'
     '"statement":0,"writes":[]}]', "[]", "allow"),
    ('[{"classified":{"main.customers.ssn":["pii.ssn"]},"columns":{"main.customers.name":["projected"],"main.customers.ssn":["predicate"]},'
     '"functions":[],"reads":["main.customers"],"statement":0,"writes":[]}]', "[]", "allow"),
    ('[{"classified":{},"columns":{"main.orders.region":["group"],"main.orders.amount":["projected"]},"functions":[],"reads":["main.orders"],'
     '"statement":0,"writes":[]}]', "[]", "allow"),
    ('[{"classified":{"main.payments.card_number":["pci.pan"]},"columns":{"main.payments.card_number":["projected"]},"functions":[],'
     '"reads":["main.payments"],"statement":0,"writes":[]}]',
     '[{"classifications":["pci.pan"],"column":"card_number","operator":"last4","statement":0}]', "mask"),
    ('[{"classified":{"main.customers.email":["pii.email"],"main.customers.phone":["pii.phone"]},"columns":{"main.customers.email":["projected"],'
     '"main.customers.phone":["projected"],"main.orders.amount":["projected"],"main.orders.customer_id":["join"],"main.customers.id":["join"]},'
     '"functions":[],"reads":["main.customers","main.orders"],"statement":0,"writes":[]}]',
     '[{"classifications":["pii.email"],"column":"email","operator":"email","statement":0},'
     '{"classifications":["pii.phone"],"column":"phone","operator":"redact","statement":0}]', "mask"),
]  # fmt: skip


def generate(db: Path, records: int) -> float:
    """Fill the store's audit_events with ``records`` rows in SQL; returns seconds."""
    from warden.audit.stores import open_store

    open_store(f"duckdb://{db}", chain_id="bench", signing_key=b"b" * 32).close()  # the store's own schema
    t0 = time.perf_counter()
    con = duckdb.connect(str(db))
    shapes = " ".join(f"WHEN {i} THEN {v}" for i, v in enumerate(("'" + o.replace("'", "''") + "'") for o, _, _ in _SHAPES))
    masks = " ".join(f"WHEN {i} THEN '{m}'" for i, (_, m, _) in enumerate(_SHAPES))
    actions = " ".join(f"WHEN {i} THEN '{a}'" for i, (_, _, a) in enumerate(_SHAPES))
    n = len(_SHAPES)
    con.execute(f"""
        INSERT INTO audit_events (event_id, chain_id, seq, event_time, prev_hash, record_hash, type, subject, display_name,
                                  subject_kind, roles, groups, auth_method, client_ip, session_id, kernel_id, notebook_path,
                                  cell_id, execution_count, gateway_id, warden_version, mode, connection, dialect,
                                  statement_kinds, sql, fingerprint, objects, action, masks, status, "rows", duration_ms,
                                  correlation_id)
        SELECT uuid()::VARCHAR, 'bench', i, now() - to_microseconds(CAST(({records} - i) * (90 * 86400e6 / {records}) AS BIGINT)),
               sha256((i - 1)::VARCHAR), sha256(i::VARCHAR),
               CASE i % 4 WHEN 0 THEN 'cell.execute' WHEN 1 THEN 'query.submitted'
                          WHEN 2 THEN CASE WHEN q % {n} IN (0, 4, 5) THEN 'query.masked' ELSE 'query.allowed' END
                          ELSE 'query.executed' END,
               'user' || (q * 7919 % 200)::VARCHAR, 'User ' || (q * 7919 % 200)::VARCHAR, 'human', ['analyst'], ['analysts'], 'oidc',
               '10.0.0.' || (q % 250)::VARCHAR, 'sess-' || (q // 20)::VARCHAR, 'kern-' || (q // 20)::VARCHAR, 'work/nb.ipynb',
               'cell-' || (q % 20)::VARCHAR, q % 20, 'bench', '0.1.0', 'shared', 'dk', 'duckdb', ['select'],
               'SELECT ... FROM customers WHERE id = ?', 'fp' || (q % {n})::VARCHAR,
               CASE WHEN i % 4 IN (1, 2) THEN CASE q % {n} {shapes} END END,
               CASE WHEN i % 4 IN (1, 2) THEN CASE q % {n} {actions} END END,
               CASE WHEN i % 4 IN (1, 2) THEN CASE q % {n} {masks} END END,
               CASE i % 4 WHEN 1 THEN 'pending' ELSE 'success' END,
               CASE WHEN i % 4 = 3 THEN q % 1000 END, CASE WHEN i % 4 IN (0, 3) THEN 12.5 END,
               'run-' || q::VARCHAR
        FROM (SELECT i, (i - 1) // 4 AS q FROM range(1, {records} + 1) t(i))
    """)  # fmt: skip
    con.execute("UPDATE audit_chains SET last_seq = ?, last_hash = sha256(?::VARCHAR) WHERE chain_id = 'bench'", [records, records])
    con.execute("CHECKPOINT")
    con.close()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    with OIDCIssuer(audience="warden") as issuer, tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "state").mkdir(mode=0o700)
        db = work / "state" / "audit.duckdb"
        print(f"generating {args.records:,} audit records ...", flush=True)
        print(f"  {generate(db, args.records):.1f} s", flush=True)
        policy = {"version": 1, "connections": {"dk": {"dialect": "duckdb", "path": "data.duckdb"}}, "roles": {"auditor": {"members": {"groups": ["audit"]}, "statements": ["select"]}}}
        (work / "policy.yaml").write_text(yaml.safe_dump(policy))
        duckdb.connect(str(work / "data.duckdb")).close()  # the policy needs a connection; the question never uses it
        config = {"gateway_id": "bench", "mode": "shared", "policy": "policy.yaml", "state_dir": "state",
                  "audit": {"store": f"duckdb://{db}"},
                  "auth": {"mode": "oidc", "issuer": issuer.issuer, "audience": "warden"}}  # fmt: skip
        gw = GatewayProcess(work, dict(os.environ), config).start(timeout=120)
        try:
            token = issuer.issue(sub="auditor", groups=["audit"], expires_in=3600)
            with GatewayClient(gw.url, token=token, timeout=600) as client:
                times, rows = [], 0
                for _ in range(args.repeat):
                    t0 = time.perf_counter()
                    result = client.run("audit", QUESTION)
                    times.append(time.perf_counter() - t0)
                    rows = result.last.rows if result.last else 0
        finally:
            gw.stop()
        # The peer: DuckDB alone on a Parquet copy of the same table.
        parquet = work / "audit_events.parquet"
        con = duckdb.connect(str(db), read_only=True)
        con.execute(f"COPY audit_events TO '{parquet}' (FORMAT parquet, COMPRESSION zstd)")
        total = con.execute("SELECT count(*) FROM audit_events").fetchone()
        native = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            con.execute(with_views(QUESTION)).fetchall()
            native.append(time.perf_counter() - t0)
        con.close()
        peer_sql = with_views(QUESTION).replace("audit_events", f"read_parquet('{parquet}')")
        con = duckdb.connect()
        peer, peer_rows = [], 0
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            peer_rows = len(con.execute(peer_sql).fetchall())
            peer.append(time.perf_counter() - t0)
        con.close()
    g, p = statistics.median(times), statistics.median(peer)
    print(f"\n{total[0] if total else 0:,} records; question: every read of a pii.* column in the last 30 days, by user (median of {args.repeat})")
    n = statistics.median(native)
    print(f"{'path':<52} {'seconds':>8} {'rows':>6}")
    print(f"{'gateway: %%sql audit (POST /v1/cells, audit.read)':<52} {g:>8.3f} {rows:>6}")
    print(f"{'DuckDB directly on the Parquet export (peer)':<52} {p:>8.3f} {peer_rows:>6}")
    print(f"{'DuckDB directly on the store file':<52} {n:>8.3f} {peer_rows:>6}")
    print(f"ratio gateway / Parquet export: {g / p:.2f}x; gateway / store file: {g / n:.2f}x; goal <= 1 s: {'met' if g <= 1.0 else 'NOT met'}")


if __name__ == "__main__":
    main()
