"""A real gateway process for the tests: config, data, start, stop by pid."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import httpx
import psycopg
import yaml

from pgserver import free_port

ROOT = Path(__file__).resolve().parent.parent

POLICY: dict[str, Any] = {
    "version": 1,
    "connections": {
        "pg": {"dialect": "postgres", "dsn_env": "WARDEN_TEST_PG_DSN"},
        "dk": {"dialect": "duckdb", "path": "data.duckdb"},
    },
    "defaults": {"mask": "redact", "classified_in_predicates": "hold"},
    "classifications": {
        "pii.email": ["*.*.customers.email"],
        "pii.ssn": ["*.*.customers.ssn"],
    },
    "roles": {
        "analyst": {
            "members": {"groups": ["analysts"]},
            "statements": ["select"],
            "deny_tables": ["*.*.secrets"],
            "masks": {"pii.email": "email", "pii.ssn": "last4"},
            "row_filters": {"pg.public.orders": "region = :user.region", "dk.main.orders": "region = :user.region"},
            "hold": ["rows_estimate > 50000"],
            "limits": {"max_rows": 100000},
        },
        "engineer": {
            "members": {"groups": ["eng"]},
            "statements": ["select", "insert", "update", "delete", "ddl"],
            "masks": {"pii.email": "hash", "pii.ssn": "redact"},
            "hold": ["kind in (delete, update) and not where", "kind == drop"],
            "classified_in_predicates": "allow",
            "limits": {"statement_timeout_ms": 1500},
        },
        "auditor": {"members": {"groups": ["audit"]}, "statements": ["select"], "tables": ["*.*.orders"]},
    },
    "approvers": {"groups": ["owners"]},
}

CUSTOMERS = [
    (1, "Ada Lovelace", "ada@analytical.example", "123-45-6789", "emea"),
    (2, "Grace Hopper", "grace@cobol.example", "987-65-4321", "amer"),
    (3, "Alan Turing", "alan@bletchley.example", "555-12-3456", "emea"),
]


def seed_postgres(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as con:
        con.execute("CREATE TABLE customers (id int PRIMARY KEY, name text, email text, ssn text, region text)")
        con.execute("CREATE TABLE orders (id int, customer_id int, amount numeric(10,2), region text)")
        con.execute("CREATE TABLE secrets (id int, token text)")
        con.execute("CREATE TABLE big AS SELECT g AS id, 'v' || g AS v FROM generate_series(1, 200000) g")
        con.execute("ANALYZE big")
        with con.cursor() as cur:
            cur.executemany("INSERT INTO customers VALUES (%s, %s, %s, %s, %s)", CUSTOMERS)
            cur.executemany(
                "INSERT INTO orders VALUES (%s, %s, %s, %s)",
                [(i, 1 + i % 3, 10 + i, "emea" if i % 2 else "amer") for i in range(1, 21)],
            )
        con.execute("INSERT INTO secrets VALUES (1, 'tok-should-never-leak')")
        con.execute("CREATE VIEW contacts AS SELECT id AS who, email AS reach FROM customers")


def seed_duckdb(path: Path) -> None:
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE customers (id INTEGER, name VARCHAR, email VARCHAR, ssn VARCHAR, region VARCHAR)")
    con.executemany("INSERT INTO customers VALUES (?, ?, ?, ?, ?)", CUSTOMERS)
    con.execute("CREATE TABLE orders (id INTEGER, customer_id INTEGER, amount DOUBLE, region VARCHAR)")
    con.executemany("INSERT INTO orders VALUES (?, ?, ?, ?)", [(i, 1 + i % 3, 10.0 + i, "emea" if i % 2 else "amer") for i in range(1, 21)])
    con.close()


@dataclass
class GatewayProcess:
    workdir: Path
    env: dict[str, str]
    config: dict[str, Any]
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.workdir / "gateway.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> GatewayProcess:
        self.port = free_port()
        cfg = dict(self.config)
        cfg["listen"] = {"host": "127.0.0.1", "port": self.port}
        path = self.workdir / "gateway.yaml"
        path.write_text(yaml.safe_dump(cfg))
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "warden.cli", "gateway", "--config", str(path)],
                stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.workdir,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/v1/health", timeout=1).status_code == 200:
                    return self
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"gateway did not become healthy in {timeout}s:\n{self.log.read_text()[-3000:]}")

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (graceful: drain and flush), then SIGKILL; by pid only."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def oidc_gateway_config(issuer_url: str, gateway_id: str, **extra: Any) -> dict[str, Any]:
    """A shared-mode gateway config with OIDC identity (``region`` as a user attribute)."""
    return {
        "gateway_id": gateway_id,
        "mode": "shared",
        "policy": "policy.yaml",
        "state_dir": "state",
        "auth": {"mode": "oidc", "issuer": issuer_url, "audience": "warden", "attribute_claims": ["region"]},
        **extra,
    }


@dataclass
class SeededGateway:
    gw: GatewayProcess
    pg_dsn: str
    dk_path: Path
    raw: dict[str, list[str]]  # connection -> the raw classified values (email, ssn)


@contextlib.contextmanager
def seeded_gateway(
    postgres: Any,
    issuer_url: str,
    work: Path,
    *,
    gateway_id: str,
    pg_sql: str = "",
    dk_sql: str = "",
    policy: dict[str, Any] | None = None,
    **config: Any,
) -> Any:
    """A real gateway over freshly seeded PostgreSQL and DuckDB data (plus ``pg_sql`` and
    ``dk_sql``), stopped by pid when the block ends."""
    dsn = postgres.create_database(prefix=gateway_id.replace("-", "_")[:20])
    seed_postgres(dsn)
    with psycopg.connect(dsn, autocommit=True) as con:
        if pg_sql:
            con.execute(pg_sql)
        pg_raw = [v for row in con.execute("SELECT email, ssn FROM customers").fetchall() for v in row]
    dk = work / "data.duckdb"
    seed_duckdb(dk)
    db = duckdb.connect(str(dk))
    if dk_sql:
        db.execute(dk_sql)
    dk_raw = [v for row in db.execute("SELECT email, ssn FROM customers").fetchall() for v in row]
    db.close()
    (work / "policy.yaml").write_text(yaml.safe_dump(policy or POLICY))
    cfg = oidc_gateway_config(issuer_url, gateway_id, **config)
    gw = GatewayProcess(work, {**os.environ, "WARDEN_TEST_PG_DSN": dsn}, cfg).start()
    try:
        yield SeededGateway(gw, dsn, dk, {"pg": pg_raw, "dk": dk_raw})
    finally:
        gw.stop()
