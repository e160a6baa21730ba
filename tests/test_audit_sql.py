"""``%%sql audit``: auditors query the live log through a running gateway (real process,
real OIDC issuer, DuckDB store). Views, audit.read records, and every escape denied."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from audit_seed import SESSION, SeededLog, seed, start_gateway
from oidc_issuer import OIDCIssuer
from pgserver import PostgresServer
from warden.audit.views import VIEW_COLUMNS, VIEW_SQL
from warden.gateway.client import Denied, GatewayClient, GatewayError, QueryFailed

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeededLog]:
    with OIDCIssuer(audience="warden") as issuer:
        gw = start_gateway(tmp_path_factory.mktemp("auditsql"), issuer)
        try:
            yield seed(gw, issuer)
        finally:
            gw.stop()


def auditor(log: SeededLog) -> GatewayClient:
    return GatewayClient(log.gateway.url, token=log.auditor_token())


def rows(client: GatewayClient, sql: str) -> list[dict[str, object]]:
    result = client.run("audit", sql)
    assert result.last is not None and result.last.table is not None
    return result.last.table.to_pylist()


@pytest.mark.parametrize("view", sorted(VIEW_SQL))
def test_every_view_runs_with_its_documented_columns(seeded: SeededLog, view: str) -> None:
    with auditor(seeded) as c:
        result = c.run("audit", f"SELECT * FROM {view}")
    assert result.last is not None and result.last.table is not None
    assert tuple(result.last.table.column_names) == VIEW_COLUMNS[view]
    assert result.last.table.num_rows > 0


def test_queries_objects_approvals_sessions_cells_tell_the_story(seeded: SeededLog) -> None:
    with auditor(seeded) as c:
        email = rows(c, "SELECT subject, action, masked FROM objects WHERE column_name = 'main.customers.email' AND list_contains(classifications, 'pii.email')")
        outcomes = {r["outcome"] for r in rows(c, f"SELECT outcome FROM queries WHERE session_id = '{SESSION}'")}
        approvals = {r["decision"]: r for r in rows(c, "SELECT * FROM approvals")}
        session = rows(c, f"SELECT * FROM sessions WHERE session_id = '{SESSION}'")
        cells = rows(c, f"SELECT execution_count, queries, source FROM cells WHERE session_id = '{SESSION}' ORDER BY execution_count")
    assert {"subject": "ana", "action": "mask", "masked": True} in email
    assert {"success", "denied", "failure"} <= outcomes
    assert approvals["granted"]["approver"] == "olga" and approvals["granted"]["used_at"] is not None
    assert approvals["rejected"]["requester"] == "eve" and approvals["rejected"]["seconds_to_decide"] >= 0
    assert session[0]["cells"] == 6 and session[0]["denied"] == 1 and session[0]["ended_at"] is not None
    assert [r["execution_count"] for r in cells] == [1, 2, 3, 4, 5, 6]
    assert cells[0]["queries"] == 0 and cells[1]["queries"] == 1 and cells[1]["source"].startswith("%%sql dk")


def test_each_query_is_recorded_as_audit_read_with_its_sql(seeded: SeededLog) -> None:
    marker = "SELECT count(*) AS n FROM events WHERE type <> 'audit-read-marker-7'"
    with auditor(seeded) as c:
        c.run("audit", marker)
        found = rows(c, "SELECT subject, sql, action, connection FROM events WHERE type = 'audit.read' AND sql LIKE '%audit-read-marker-7%'")
    assert {"subject": "aud", "sql": marker, "action": "allow", "connection": "audit"} in found


def test_analysts_may_not_read_the_log_and_the_attempt_is_recorded(seeded: SeededLog) -> None:
    with seeded.client("ana", ["analysts"], region="emea") as c, pytest.raises(Denied) as denied:
        c.run("audit", "SELECT * FROM events -- analyst-try")
    assert denied.value.rule_ids == ["audit/not-auditor"]
    with auditor(seeded) as c:
        found = rows(c, "SELECT subject, action FROM events WHERE type = 'audit.read' AND subject = 'ana' AND sql LIKE '%analyst-try%'")
    assert found == [{"subject": "ana", "action": "deny"}]


ESCAPES = [
    ("DELETE FROM events", "audit/read-only"),
    ("INSERT INTO events (event_id) VALUES ('x')", "audit/"),
    ("UPDATE events SET subject = 'x'", "audit/"),
    ("DROP TABLE audit_events", "audit/"),
    ("CREATE TABLE t AS SELECT * FROM events", "audit/"),
    ("SELECT * FROM audit_events", "audit/"),
    ("SELECT * FROM main.audit_events", "audit/"),
    ("SELECT * FROM audit_checkpoints", "audit/"),
    ("SELECT * FROM information_schema.tables", "audit/"),
    ("SELECT * FROM duckdb_tables()", "audit/"),
    ("SELECT * FROM read_csv('/etc/passwd')", "audit/"),
    ("SELECT * FROM '/etc/passwd'", "audit/"),
    ("SELECT * FROM read_parquet('x.parquet')", "audit/"),
    ("ATTACH '/tmp/other.duckdb' AS other", "audit/"),
    ("COPY (SELECT * FROM events) TO '/tmp/out.csv'", "audit/"),
    ("PRAGMA database_list", "audit/"),
    ("SET threads = 1", "audit/"),
    ("INSTALL httpfs", "audit/"),
    ("LOAD httpfs", "audit/"),
    ("SELECT getenv('HOME')", "audit/"),
    ("SELECT current_setting('threads')", "audit/"),
    ("SELECT query('SELECT 1')", "audit/"),
    ("SELECT * FROM events; DELETE FROM events", "audit/read-only"),
    ("SELECT * FROM other.events", "audit/"),
]


@pytest.mark.parametrize(("sql", "rule"), ESCAPES)
def test_writes_and_escapes_are_denied_and_recorded(seeded: SeededLog, sql: str, rule: str) -> None:
    with auditor(seeded) as c:
        before = rows(c, "SELECT count(*) AS n FROM events WHERE type <> 'audit.read'")[0]["n"]
        with pytest.raises(Denied) as denied:
            c.run("audit", sql)
        assert denied.value.rule_ids and all(r.startswith("audit/") for r in denied.value.rule_ids)
        assert any(r.startswith(rule) for r in denied.value.rule_ids)
        after = rows(c, "SELECT count(*) AS n FROM events WHERE type <> 'audit.read'")[0]["n"]
        recorded = rows(c, "SELECT action FROM events WHERE type = 'audit.read' AND sql = $1".replace("$1", "'" + sql.replace("'", "''") + "'"))
    assert after == before  # nothing but audit.read records was written
    assert recorded and all(r["action"] == "deny" for r in recorded)


def test_whoami_lists_the_audit_connection_for_auditors_only(seeded: SeededLog) -> None:
    with auditor(seeded) as c:
        me = c.whoami()
    with seeded.client("ana", ["analysts"]) as c:
        ana = c.whoami()
    assert me["auditor"] is True and "audit" in me["connections"]
    assert ana["auditor"] is False and "audit" not in ana["connections"]


def test_every_view_column_is_documented() -> None:
    doc = (ROOT / "docs" / "audit.md").read_text()
    section = doc[doc.index("## 9. Querying the live log"):]
    for view, columns in VIEW_COLUMNS.items():
        m = re.search(rf"^### `{view}`\n(.*?)(?=^### |^## |\Z)", section, re.M | re.S)
        assert m, f"docs/audit.md has no section for the view {view}"
        documented = set(re.findall(r"^\| `([a-z0-9_]+)` \|", m.group(1), re.M))
        assert documented == set(columns), (view, set(columns) ^ documented)


# -- the PostgreSQL store: the same views in a read-only transaction ---------------------------


@pytest.fixture(scope="module")
def pg_seeded(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeededLog]:
    with OIDCIssuer(audience="warden") as issuer:
        gw = start_gateway(tmp_path_factory.mktemp("auditsqlpg"), issuer, audit_dsn=postgres.create_database(prefix="auditpg"))
        try:
            yield seed(gw, issuer)
        finally:
            gw.stop()


@pytest.mark.parametrize("view", sorted(VIEW_SQL))
def test_postgres_store_serves_every_view(pg_seeded: SeededLog, view: str) -> None:
    with auditor(pg_seeded) as c:
        result = c.run("audit", f"SELECT * FROM {view}")
    assert result.last is not None and result.last.table is not None
    assert tuple(result.last.table.column_names) == VIEW_COLUMNS[view]
    assert result.last.table.num_rows > 0


def test_postgres_store_answers_like_duckdb(pg_seeded: SeededLog) -> None:
    with auditor(pg_seeded) as c:
        email = rows(c, "SELECT subject, action, masked FROM objects WHERE column_name = 'main.customers.email' AND list_contains(classifications, 'pii.email')")
        approvals = {r["decision"]: r for r in rows(c, "SELECT decision, approver, requester FROM approvals")}
        mine = rows(c, "SELECT count(*) AS n FROM queries WHERE subject = 'ana' AND outcome = 'denied'")
        reads = rows(c, "SELECT subject, sql FROM events WHERE type = 'audit.read' AND sql LIKE '%outcome = ''denied''%'")
        with pytest.raises(Denied):
            c.run("audit", "DELETE FROM events")
        with pytest.raises(Denied):
            c.run("audit", "SELECT * FROM audit_events")
    assert {"subject": "ana", "action": "mask", "masked": True} in email
    assert approvals["granted"]["approver"] == "olga" and approvals["rejected"]["requester"] == "eve"
    assert mine == [{"n": 1}]
    assert reads and reads[0]["subject"] == "aud"


def test_results_are_cut_at_max_rows_without_reading_everything(seeded: SeededLog) -> None:
    with auditor(seeded) as c:
        result = c.run("audit", "SELECT e.seq, r.n FROM events e, range(1000000) r(n)", max_rows=1000)
    assert result.last is not None and result.last.table is not None
    assert result.last.rows == 1000 and result.last.truncated is True


def test_a_long_auditor_query_is_interrupted_at_the_statement_timeout(tmp_path: Path) -> None:
    with OIDCIssuer(audience="warden") as issuer:
        gw = start_gateway(tmp_path, issuer, limits={"statement_timeout_ms": 500})
        try:
            with GatewayClient(gw.url, token=issuer.issue(sub="aud", groups=["audit"])) as c:
                started = time.monotonic()
                with pytest.raises(QueryFailed) as failed:
                    c.run("audit", "SELECT sum(a.n * b.n) AS s FROM range(200000) a(n), range(200000) b(n)")
                elapsed = time.monotonic() - started
                assert failed.value.code == "timeout" and elapsed < 20
                assert rows(c, "SELECT count(*) AS n FROM events")[0]["n"] > 0  # the store still serves
        finally:
            gw.stop()


def test_an_auditor_cannot_write_into_another_users_session(seeded: SeededLog) -> None:
    with auditor(seeded) as c:
        with pytest.raises(GatewayError) as refused:
            c.run("audit", "SELECT count(*) AS n FROM events", context={"session_id": SESSION})
        assert refused.value.code == "session/not-yours"
        reads = rows(c, f"SELECT count(*) AS n FROM events WHERE session_id = '{SESSION}' AND type = 'audit.read'")
    assert reads == [{"n": 0}]


def test_the_policy_auditors_section_decides_not_a_role_name(tmp_path: Path) -> None:
    with OIDCIssuer(audience="warden") as issuer:
        gw = start_gateway(tmp_path, issuer, auditors={"groups": ["compliance"], "users": ["svc-siem"]})
        try:
            def try_read(sub: str, groups: list[str]) -> str:
                with GatewayClient(gw.url, token=issuer.issue(sub=sub, groups=groups)) as c:
                    try:
                        c.run("audit", "SELECT count(*) AS n FROM events")
                    except Denied as denied:
                        return ",".join(denied.rule_ids)
                    return "ok"

            assert try_read("carol", ["compliance"]) == "ok"
            assert try_read("svc-siem", []) == "ok"
            assert try_read("aud", ["audit"]) == "audit/not-auditor"  # the role 'auditor' alone no longer reads the log
        finally:
            gw.stop()
