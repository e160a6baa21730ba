"""The decision fixture table, run through a real gateway on real databases.

``tests/fixtures/decisions.yaml`` is decided in-process by ``test_decisions.py``
against a catalog file. Here the same cases run as HTTP cells through a real
gateway process whose catalogs come from a real PostgreSQL and a real DuckDB file
built from ``tests/fixtures/catalog.yaml`` (same tables, views and user-defined
functions, filled with fake PII). Each case must get the same decision (allow and
mask → 200, hold → 202, deny → 403, with the same masked columns), and no raw
classified value may appear in anything the gateway sends back, unless the user is
the policy's clear reader.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import httpx
import psycopg
import pytest
import yaml

from engine_fixtures import FIXTURES, decision_cases
from gateway_harness import GatewayProcess, oidc_gateway_config
from oidc_issuer import OIDCIssuer
from pgserver import PostgresServer
from warden.gateway.frames import chunk_stream, read_frames

_INT = {"id", "customer_id", "order_id", "score"}
ROWS = {
    "customers": [
        (1, "Ada", "ada.l@example.org", "123-45-6789", "+44 20 7946 0018", "emea", "likes math"),
        (2, "Grace", "grace.h@example.org", "234-56-7890", "+1 202 555 0143", "amer", "navy"),
    ],
    "orders": [(1, 1, 10, "emea"), (2, 2, 20, "amer"), (3, 1, 30, "emea")],
    "payments": [(1, 1, "4111111111111111"), (2, 2, "5500005555555559")],
    "keys": [(1, "sk-live-never-leak-0001")],
    "leads": [(1, "lead.person@example.net", 5)],
    "Mixed": [("mixed.case@example.com", 1)],
}
RAW = [
    "ada.l@example.org", "grace.h@example.org", "123-45-6789", "234-56-7890", "+44 20 7946 0018",
    "+1 202 555 0143", "4111111111111111", "5500005555555559", "sk-live-never-leak-0001",
    "lead.person@example.net", "mixed.case@example.com",
]  # fmt: skip

FUNCTIONS = {
    "postgres": [
        "CREATE FUNCTION {s}.ssn_of(i int) RETURNS text LANGUAGE sql AS 'SELECT ssn FROM {s}.customers WHERE id = i'",
        "CREATE FUNCTION {s}.orders_total(i int) RETURNS numeric LANGUAGE sql AS 'SELECT sum(amount) FROM {s}.orders'",
        "CREATE FUNCTION {s}.shout(t text) RETURNS text LANGUAGE sql AS 'SELECT upper(t)'",
    ],
    "duckdb": [
        "CREATE MACRO ssn_of(i) AS (SELECT max(ssn) FROM customers)",
        "CREATE MACRO orders_total(i) AS (SELECT sum(amount) FROM orders)",
        "CREATE MACRO shout(t) AS upper(t)",
    ],
}


def _catalog(schema: str) -> dict[str, Any]:
    raw = (FIXTURES / "catalog.yaml").read_text().replace("SCHEMA.", f"{schema}.")
    data: dict[str, Any] = yaml.safe_load(raw)
    return data["tables"]


def _ddl(dialect: str, schema: str) -> list[str]:
    def q(name: str) -> str:
        return f'"{name}"'

    out: list[str] = []
    tables = _catalog(schema)
    for s in sorted({k.split(".")[0] for k in tables}):
        if s not in ("public", "main"):
            out.append(f"CREATE SCHEMA {s}")
    for key, spec in tables.items():
        if isinstance(spec, dict) and spec.get("parent"):
            # An inheritance child (PostgreSQL): the parent's rows policy must follow it.
            s, name = key.split(".")
            if dialect == "postgres":
                out.append(f"CREATE TABLE {s}.{q(name)} () INHERITS ({spec['parent']})")
            continue
        if isinstance(spec, dict):
            continue
        s, name = key.split(".")
        cols = ", ".join(f"{q(c)} {'integer' if c in _INT or c == 'Id' else 'numeric' if c == 'amount' else 'text'}" for c in spec)
        out.append(f"CREATE TABLE {s}.{q(name)} ({cols})")
        for row in ROWS.get(name, []):
            values = ", ".join(str(v) if isinstance(v, int) else "'" + v + "'" for v in row)
            out.append(f"INSERT INTO {s}.{q(name)} VALUES ({values})")
    out.extend(f.format(s=schema) for f in FUNCTIONS[dialect])
    views = {k: v for k, v in tables.items() if isinstance(v, dict) and v.get("definition")}
    done: set[str] = set()
    while len(done) < len(views):  # views in dependency order (bounded by their number)
        progressed = False
        for key, spec in views.items():
            deps = [d for d in views if d != key and d.split(".")[1] in spec["definition"] and d not in done]
            if key in done or deps:
                continue
            s, name = key.split(".")
            cols = ", ".join(spec["columns"])
            out.append(f"CREATE VIEW {s}.{name} ({cols}) AS {spec['definition']}")
            done.add(key)
            progressed = True
        assert progressed, "a view cycle in catalog.yaml"
    return out


@pytest.fixture(scope="module")
def gateway(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProcess, OIDCIssuer]]:
    work: Path = tmp_path_factory.mktemp("decisions-gw")
    dsn = postgres.create_database(prefix="decisions")
    with psycopg.connect(dsn, autocommit=True) as con:
        for stmt in _ddl("postgres", "public"):
            con.execute(stmt)
    db = duckdb.connect(str(work / "test.duckdb"))
    for stmt in _ddl("duckdb", "main"):
        db.execute(stmt)
    db.close()
    (work / "policy.yaml").write_text((FIXTURES / "policy.yaml").read_text())
    with OIDCIssuer(audience="warden") as issuer:
        config = oidc_gateway_config(issuer.issuer, "gw-decisions")
        gw = GatewayProcess(work, {**os.environ, "WARDEN_TEST_PG_DSN": dsn}, config).start()
        try:
            yield gw, issuer
        finally:
            gw.stop()


CASES = decision_cases()
_STATUS = {"allow": 200, "mask": 200, "hold": 202, "deny": 403}


@pytest.mark.parametrize(("dialect", "case"), CASES, ids=[f"{d}:{c['name']}" for d, c in CASES])
def test_fixture_through_a_real_gateway(gateway: tuple[GatewayProcess, OIDCIssuer], dialect: str, case: dict[str, Any]) -> None:
    gw, issuer = gateway
    user = case.get("user", "ana")
    attrs = case.get("attributes", {"region": "emea"})
    token = issuer.issue(sub=user, groups=case.get("groups", ["analysts"]), **attrs)
    body = {
        "connection": "pg" if dialect == "postgres" else "dk",
        "sql": case["sql"],
        "context": {"session_id": "s-" + uuid.uuid4().hex[:10], "cell_id": "c1"},
    }
    resp = httpx.post(gw.url + "/v1/cells", json=body, headers={"authorization": f"Bearer {token}"}, timeout=60)
    assert resp.status_code == _STATUS[case["action"]], resp.text[:600]
    if resp.status_code == 200 and "masks" in case:
        frames = list(read_frames(chunk_stream(iter([resp.content]))))
        decided = json.loads(next(p for k, p in frames if k == b"C"))
        assert decided["action"] == case["action"], decided
        errors = [json.loads(p) for k, p in frames if k == b"X"]
        assert not errors, errors
        masked = {m["column"] for k, p in frames if k == b"S" for m in json.loads(p)["masks"]}
        assert masked == set(case["masks"]), (masked, case["masks"])
    if user != "dpo":
        for value in RAW:
            assert value.encode() not in resp.content, f"{value!r} in the response to {case['sql']!r}"
