"""Taints persist (issue 8 §6): a column that received classified data through the
gateway (CTAS, INSERT ... SELECT) stays classified after a gateway restart and on every
replica of one PostgreSQL state store. Real gateway processes, a real OIDC issuer, a
real PostgreSQL; the copies are approved by a human approver, as policy requires."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway_harness import CUSTOMERS, POLICY, GatewayProcess, seed_duckdb, seed_postgres
from oidc_issuer import OIDCIssuer
from pgserver import PostgresServer
from warden.gateway.client import GatewayClient, Held

EMAILS = {email for _, _, email, _, _ in CUSTOMERS}


@pytest.fixture(scope="module")
def issuer() -> Iterator[OIDCIssuer]:
    with OIDCIssuer(audience="warden") as iss:
        yield iss


def gateway(work: Path, name: str, issuer: OIDCIssuer, env: dict[str, str], **extra: Any) -> GatewayProcess:
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "data.duckdb").exists():
        seed_duckdb(work / "data.duckdb")
    (work / "policy.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(POLICY))))
    config = {
        "gateway_id": name, "mode": "shared", "policy": "policy.yaml", "state_dir": "state",
        "auth": {"mode": "oidc", "issuer": issuer.issuer, "audience": "warden", "attribute_claims": ["region"]},
        **extra,
    }  # fmt: skip
    return GatewayProcess(work, {**os.environ, **env}, config).start()


def as_user(gw: GatewayProcess, issuer: OIDCIssuer, sub: str, *groups: str) -> GatewayClient:
    return GatewayClient(gw.url, token=issuer.issue(sub=sub, groups=list(groups), region="emea"))


def copy_approved(gw: GatewayProcess, issuer: OIDCIssuer, connection: str, sql: str, approver: GatewayProcess | None = None) -> None:
    """Run a copy of classified data as eve (an engineer): held, approved by bob, re-run."""
    with as_user(gw, issuer, "eve", "eng") as eve:
        with pytest.raises(Held) as held:
            eve.run(connection, sql)
        approval = str(held.value.approval["id"])
        with as_user(approver or gw, issuer, "bob", "owners") as bob:
            bob.decide(approval, approve=True, reason="copy for the report")
        result = eve.run(connection, sql, approval_id=approval)
    assert result.trailer["status"] == "ok", result.trailer


def read_column(gw: GatewayProcess, issuer: OIDCIssuer, connection: str, sql: str) -> tuple[list[Any], list[dict[str, Any]]]:
    with as_user(gw, issuer, "ana", "analysts") as ana:
        st = ana.run(connection, sql).last
    assert st is not None and st.table is not None
    return st.table.column(0).to_pylist(), st.masks


def assert_masked(values: list[Any], masks: list[dict[str, Any]]) -> None:
    assert values and not EMAILS & set(values), values
    assert all(str(v).startswith("****@") for v in values)
    assert masks and "pii.email" in masks[0]["classifications"]


def test_taints_survive_a_restart(issuer: OIDCIssuer, tmp_path: Path) -> None:
    gw = gateway(tmp_path / "gw", "gw-taint", issuer, {})
    try:
        copy_approved(gw, issuer, "dk", "CREATE TABLE copied AS SELECT id, email AS contact FROM customers")
        with as_user(gw, issuer, "eve", "eng") as eve:
            eve.run("dk", "CREATE TABLE sink (id INTEGER, reach VARCHAR)")  # nothing classified: not held
        copy_approved(gw, issuer, "dk", "INSERT INTO sink SELECT id, email FROM customers")
        gw.stop()
        gw.start()  # a new process: nothing of the first one's memory
        for sql in ("SELECT contact FROM copied ORDER BY id", "SELECT reach FROM sink ORDER BY id"):
            assert_masked(*read_column(gw, issuer, "dk", sql))
    finally:
        gw.stop()


def test_taints_are_shared_by_replicas_on_one_postgres_store(issuer: OIDCIssuer, postgres: PostgresServer, tmp_path: Path) -> None:
    data = postgres.create_database(prefix="taintdata")
    seed_postgres(data)
    store = postgres.create_database(prefix="taintstore")
    secret = tmp_path / "shared.key"  # replicas share the secret (hash masks agree)
    secret.write_bytes(secrets.token_bytes(32))
    secret.chmod(0o600)
    env = {"WARDEN_TEST_PG_DSN": data, "WARDEN_STATE_DSN": store}
    extra = {"secret_file": str(secret), "audit": {"store_env": "WARDEN_STATE_DSN"}}
    a = gateway(tmp_path / "a", "gw-a", issuer, env, **extra)
    b = gateway(tmp_path / "b", "gw-b", issuer, env, **extra)
    try:
        # b is up (and has read the taint table) before the copy is made on a.
        values, _ = read_column(b, issuer, "pg", "SELECT name FROM customers ORDER BY id")
        assert values[0] == "Ada Lovelace"
        copy_approved(a, issuer, "pg", "CREATE TABLE replica_copy AS SELECT id, email AS contact FROM customers", approver=b)
        assert_masked(*read_column(b, issuer, "pg", "SELECT contact FROM replica_copy ORDER BY id"))
        # and a replica started afterwards knows it too
        c = gateway(tmp_path / "c", "gw-c", issuer, env, **extra)
        try:
            assert_masked(*read_column(c, issuer, "pg", "SELECT contact FROM replica_copy ORDER BY id"))
        finally:
            c.stop()
    finally:
        a.stop()
        b.stop()
