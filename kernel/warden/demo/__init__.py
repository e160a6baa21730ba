"""The demo: a DuckDB database with fake PII, the demo policy, and a tour of decisions."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import duckdb
import pyarrow as pa

from warden.masking.operators import mask_array
from warden.policy.engine import Decision, Identity, decide
from warden.policy.model import load_policy
from warden.sql.analyze import analyze_cell
from warden.sql.catalog_live import load_duckdb_catalog

DEMO_KEY = b"warden-demo-key-not-secret"
_FIRST = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia", "Tim"]
_LAST = ["Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson", "Perlman", "Lee"]
_REGIONS = ["emea", "amer", "apac"]


def data_dir(explicit: str | None = None) -> Path:
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "warden"


def _luhn_complete(prefix: str) -> str:
    digits = [int(d) for d in prefix]
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return prefix + str((10 - total % 10) % 10)


def build_demo_database(path: Path, *, customers: int = 200, seed: int = 7) -> None:
    """Create (or replace) the demo DuckDB file with fake customers, orders and payments."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    if tmp.exists():
        tmp.unlink()
    con = duckdb.connect(str(tmp))
    try:
        con.execute(
            "CREATE TABLE customers (id INTEGER PRIMARY KEY, name VARCHAR, email VARCHAR, "
            "ssn VARCHAR, phone VARCHAR, birth_date DATE, region VARCHAR, notes VARCHAR)"
        )
        con.execute("CREATE TABLE orders (id INTEGER, customer_id INTEGER, amount DECIMAL(10,2), region VARCHAR, ordered_at TIMESTAMP)")
        con.execute("CREATE TABLE payments (id INTEGER, order_id INTEGER, card_number VARCHAR, status VARCHAR)")
        con.execute("CREATE SCHEMA secret")
        con.execute("CREATE TABLE secret.api_keys (id INTEGER, service VARCHAR, api_key VARCHAR)")
        rows = []
        for i in range(1, customers + 1):
            first, last = rng.choice(_FIRST), rng.choice(_LAST)
            ssn = f"{rng.randint(100, 665):03d}-{rng.randint(10, 99):02d}-{rng.randint(1000, 9999):04d}"
            phone = f"+1-555-{rng.randint(100, 999):03d}-{rng.randint(1000, 9999):04d}"
            # Some notes carry PII that no classification covers: the detectors catch it.
            note = rng.choice(["", "prefers email", f"call back on {phone}", f"alt contact {first.lower()}@example.org"])
            rows.append((i, f"{first} {last}", f"{first.lower()}.{last.lower()}{i}@example.com", ssn, phone,
                         f"19{rng.randint(50, 99)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
                         rng.choice(_REGIONS), note))
        con.executemany("INSERT INTO customers VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        orders, payments = [], []
        for j in range(1, customers * 5 + 1):
            cust = rows[rng.randrange(len(rows))]
            orders.append((j, cust[0], round(rng.uniform(5, 500), 2), cust[6], f"2026-{rng.randint(1, 11):02d}-{rng.randint(1, 28):02d} 12:00:00"))
            payments.append((j, j, _luhn_complete("4" + "".join(str(rng.randint(0, 9)) for _ in range(14))), rng.choice(["paid", "refunded"])))
        con.executemany("INSERT INTO orders VALUES (?, ?, ?, ?, ?)", orders)
        con.executemany("INSERT INTO payments VALUES (?, ?, ?, ?)", payments)
        con.execute("INSERT INTO secret.api_keys VALUES (1, 'billing', 'sk-demo-0000000000000000')")
        con.execute("CREATE VIEW customer_contacts AS SELECT id AS customer, email AS contact FROM customers")
    finally:
        con.close()
    tmp.replace(path)


def ensure_demo(directory: str | None = None) -> Path:
    """The demo folder with ``demo.duckdb`` and ``policy.yaml``, created when missing."""
    from warden.gateway.private import private_dir, tighten_tree

    # The demo database holds (fake) personal data and the policy says how it is
    # guarded: owner-only, like real state. The directory is 0700 before anything is
    # written into it; then every file is 0600 (also what an earlier version left 0644).
    d = private_dir(data_dir(directory))
    db = d / "demo.duckdb"
    if not db.exists():
        build_demo_database(db)
    policy = d / "policy.yaml"
    if not policy.exists():
        shutil.copy(Path(__file__).with_name("policy.yaml"), policy)
    tighten_tree(d)
    return d


TOUR: list[tuple[str, str, frozenset[str], dict[str, str]]] = [
    ("masked columns", "SELECT id, name, email, ssn, birth_date FROM customers ORDER BY id LIMIT 3", frozenset({"analysts"}), {"region": "emea"}),
    ("lineage through a view and a function", "SELECT upper(contact) AS c FROM customer_contacts LIMIT 2", frozenset({"analysts"}), {"region": "emea"}),
    ("row filter", "SELECT region, count(*) AS n FROM orders GROUP BY region", frozenset({"analysts"}), {"region": "emea"}),
    ("content detectors", "SELECT id, notes FROM customers WHERE notes <> '' ORDER BY id LIMIT 4", frozenset({"analysts"}), {"region": "emea"}),
    ("classified column in WHERE (held)", "SELECT id FROM customers WHERE ssn = '123-45-6789'", frozenset({"analysts"}), {"region": "emea"}),
    ("denied table", "SELECT * FROM secret.api_keys", frozenset({"analysts"}), {"region": "emea"}),
    ("DELETE without WHERE (held)", "DELETE FROM orders", frozenset({"eng"}), {}),
    ("file reader (denied, fail closed)", "SELECT * FROM read_csv('/etc/passwd')", frozenset({"eng"}), {}),
]


def in_use_message(path: Path | str, exc: BaseException) -> str | None:
    """What to do when a DuckDB file is locked by another process (the local gateway holds
    the demo database open for as long as it runs); None for any other error."""
    text = str(exc).lower()
    if "could not set lock" not in text and "conflicting lock" not in text:
        return None
    from warden.gateway.local import runtime_dir

    pid_file = runtime_dir() / "gateway.pid"
    who = "another process"
    stop = "stop that process"
    try:
        pid = int(pid_file.read_text().strip())
        who, stop = f"the local warden gateway (pid {pid})", f"stop it with `kill {pid}` (it drains and checkpoints; the next warden kernel starts it again)"
    except (OSError, ValueError):
        pass
    return f"{path} is open in {who}, and DuckDB lets one process hold a database file. Go through the gateway (a %%sql cell in the warden kernel), or {stop} and try again."


def run_demo(directory: str | None = None) -> int:
    import duckdb as _duckdb

    from warden.errors import WardenError

    d = ensure_demo(directory)
    try:
        catalog = load_duckdb_catalog(str(d / "demo.duckdb"))
    except (_duckdb.Error, WardenError) as exc:
        message = in_use_message(d / "demo.duckdb", exc)
        if message is None:
            raise
        # The local gateway holds the file: the tour goes through it instead.
        return _demo_through_gateway(d, message)
    return _run_demo(d, catalog)


def _demo_through_gateway(d: Path, message: str) -> int:
    from warden.errors import WardenError
    from warden.gateway.client import Denied, GatewayClient, GatewayError, Held
    from warden.gateway.local import runtime_dir

    run = runtime_dir()
    try:
        token = (run / "token").read_text().strip()
    except OSError:
        raise WardenError(message) from None
    print(f"warden demo — the demo database is in use by the local gateway, so the tour goes through it ({run / 'gateway.sock'})")
    print("as you (the local gateway's identity: group analysts, region emea); tour steps for other groups are skipped\n")
    import httpx

    with GatewayClient("http://warden", token=token, transport=httpx.HTTPTransport(uds=str(run / "gateway.sock"))) as client:
        for title, sql, groups, _attrs in TOUR:
            if "analysts" not in groups:
                print(f"== {title}\n   (as group {','.join(sorted(groups))}: skipped through the gateway)\n")
                continue
            print(f"== {title}\n   sql: {sql}")
            try:
                result = client.run("demo", sql, context={"notebook_path": "warden demo"})
            except Denied as exc:
                print(f"   decision: DENY — {'; '.join(str(r.get('message')) for r in exc.body.get('reasons', []))}\n")
                continue
            except Held as exc:
                print(f"   decision: HOLD — approval request {exc.approval.get('id')} (warden approvals list)\n")
                continue
            except GatewayError as exc:
                raise WardenError(f"the local gateway did not answer: {exc}. {message}") from None
            print(f"   decision: {str(result.header.get('action', '')).upper()}")
            for st in result.statements:
                for f in st.detectors:
                    print(f"   detector {f.get('detector')} masked {f.get('rows')} value(s) in {f.get('column')}")
                if st.table is not None:
                    print(_indent(st.table.to_pandas().to_string(index=False)))
            print()
    return 0


def _run_demo(d: Path, catalog: object) -> int:
    from warden.masking.detectors import scan_and_mask
    from warden.sql.catalog import Catalog

    assert isinstance(catalog, Catalog)
    policy = load_policy(d / "policy.yaml")
    print(f"warden demo — database and policy in {d}\n")
    con = duckdb.connect(str(d / "demo.duckdb"), read_only=True)
    try:
        for title, sql, groups, attrs in TOUR:
            who = Identity("demo-user", groups, attrs)
            analysis = analyze_cell(sql, catalog)
            decision = decide(policy, who, analysis, "demo")
            print(f"== {title}\n   groups={','.join(sorted(groups))}  sql: {sql}")
            print(f"   decision: {decision.action.upper()} — {decision.summary}")
            if decision.action in ("allow", "mask"):
                table = _execute(con, sql, decision, catalog)
                table, findings = scan_and_mask(table, _unmasked_strings(table, decision))
                for f in findings:
                    print(f"   detector {f.detector} masked {f.rows} value(s) in {f.column}")
                print(_indent(table.to_pandas().to_string(index=False)))
            print()
    finally:
        con.close()
    return 0


def _execute(con: duckdb.DuckDBPyConnection, sql: str, decision: Decision, catalog: object) -> pa.Table:
    from warden.sql.catalog import Catalog
    from warden.sql.rowfilter import apply_row_filters

    assert isinstance(catalog, Catalog)
    filters = {f.relation: f.predicate for f in decision.row_filters}
    if filters:
        sql = apply_row_filters(sql, filters, catalog)
    table: pa.Table = con.sql(sql).to_arrow_table()
    for m in decision.masks:
        col = table.column(m.position)
        table = table.set_column(m.position, table.field(m.position).name, mask_array(col, m.operator, key=DEMO_KEY))
    return table


def _unmasked_strings(table: pa.Table, decision: Decision) -> list[str]:
    masked = {m.position for m in decision.masks}
    return [
        f.name for i, f in enumerate(table.schema)
        if i not in masked and (pa.types.is_string(f.type) or pa.types.is_large_string(f.type))
    ]


def _indent(text: str) -> str:
    return "\n".join("   " + line for line in text.splitlines())
