"""A seeded audit log written by a real gateway process (DuckDB data and store, a real
OIDC issuer): an analyst's session with masked, held-then-approved, denied and failed
cells, an engineer's refused request, and the kernel's cell records. The auditor tests
and the auditor notebooks run against it."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from gateway_harness import POLICY, GatewayProcess, seed_duckdb
from oidc_issuer import OIDCIssuer
from warden.gateway.client import Denied, GatewayClient, Held, QueryFailed

SESSION = "sess-ana-0001"
NOTEBOOK = "work/customers.ipynb"

#: The analyst's cells, in order: (source, connection, sql or None for a Python cell).
CELLS: list[tuple[str, str | None, str | None]] = [
    ("import pandas as pd", None, None),
    ("%%sql dk\nSELECT name, email FROM customers", "dk", "SELECT name, email FROM customers"),
    ("%%sql dk\nSELECT id, amount FROM orders", "dk", "SELECT id, amount FROM orders"),
    ("%%sql dk\nSELECT name FROM customers WHERE ssn = '123-45-6789'", "dk", "SELECT name FROM customers WHERE ssn = '123-45-6789'"),
    ("%%sql dk\nDELETE FROM orders WHERE id = 1", "dk", "DELETE FROM orders WHERE id = 1"),
    ("%%sql dk\nSELECT CAST(name AS INTEGER) AS n FROM customers", "dk", "SELECT CAST(name AS INTEGER) AS n FROM customers"),
]


@dataclass
class SeededLog:
    gateway: GatewayProcess
    issuer: OIDCIssuer
    session_id: str = SESSION
    approvals: dict[str, str] = field(default_factory=dict)

    def token(self, sub: str, groups: list[str], **claims: Any) -> str:
        return self.issuer.issue(sub=sub, groups=groups, **claims)

    def auditor_token(self) -> str:
        return self.token("aud", ["audit"])

    def client(self, sub: str, groups: list[str], **claims: Any) -> GatewayClient:
        return GatewayClient(self.gateway.url, token=self.token(sub, groups, **claims))


def start_gateway(
    workdir: Path, issuer: OIDCIssuer, *, capture: str = "sample:3", audit_dsn: str | None = None, limits: dict[str, int] | None = None,
    auditors: dict[str, list[str]] | None = None,
) -> GatewayProcess:
    seed_duckdb(workdir / "data.duckdb")
    policy = yaml.safe_load(yaml.safe_dump(POLICY))
    del policy["connections"]["pg"]
    if auditors is not None:
        policy["auditors"] = auditors
    (workdir / "policy.yaml").write_text(yaml.safe_dump(policy))
    config = {
        "gateway_id": "gw-audit",
        "mode": "shared",
        "policy": "policy.yaml",
        "state_dir": "state",
        "capture": capture,
        "audit": {"checkpoint_file": "checkpoints.jsonl", "checkpoint_every": 10},
        "auth": {"mode": "oidc", "issuer": issuer.issuer, "audience": "warden", "attribute_claims": ["region"]},
    }
    if limits:
        config["limits"] = limits
    env = dict(os.environ)
    if audit_dsn:  # the PostgreSQL store (replicas) instead of the embedded DuckDB one
        config["audit"] = {"store_env": "WARDEN_AUDIT_DSN", "checkpoint_file": "checkpoints.jsonl", "checkpoint_every": 10}
        env["WARDEN_AUDIT_DSN"] = audit_dsn
    return GatewayProcess(workdir, env, config).start()


def seed(gw: GatewayProcess, issuer: OIDCIssuer) -> SeededLog:
    log = SeededLog(gw, issuer)
    ana_token = log.token("ana", ["analysts"], region="emea")
    http = httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {ana_token}"})
    ana = GatewayClient(gw.url, token=ana_token)
    olga = log.client("olga", ["owners"])
    base = {"session_id": SESSION, "kernel_id": "kern-1", "notebook_path": NOTEBOOK}
    assert http.post("/v1/events", json={"type": "session.start", "context": base}).status_code == 201
    for count, (source, connection, sql) in enumerate(CELLS, start=1):
        ctx = {**base, "cell_id": f"cell-{count}", "execution_count": count, "cell_run_id": f"run-{count}"}
        status = "ok"
        if connection is not None and sql is not None:
            try:
                ana.run(connection, sql, context=ctx)
            except Held as held:
                approval_id = held.approval["id"]
                olga.decide(approval_id, approve=True, reason="ticket 42: fraud check")
                log.approvals["granted"] = approval_id
                ana.run(connection, sql, context=ctx, approval_id=approval_id)
            except (Denied, QueryFailed):
                status = "error"
        event = {"type": "cell.execute", "context": ctx, "status": status, "source_redacted": source, "duration_ms": 12.5}
        assert http.post("/v1/events", json=event).status_code == 201
    assert http.post("/v1/events", json={"type": "session.end", "context": base}).status_code == 201
    # An engineer's unbounded delete is held and refused.
    eve = log.client("eve", ["eng"])
    try:
        eve.run("dk", "DELETE FROM orders", context={"session_id": "sess-eve-0001", "cell_run_id": "eve-1"})
    except Held as held:
        olga.decide(held.approval["id"], approve=False, reason="no WHERE clause")
        log.approvals["rejected"] = held.approval["id"]
    for c in (ana, olga, eve):
        c.close()
    http.close()
    return log
