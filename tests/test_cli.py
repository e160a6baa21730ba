"""The warden command: explain and policy check, offline and against a live PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg

from engine_fixtures import FIXTURES

WARDEN = [sys.executable, "-m", "warden.cli"]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*WARDEN, *args], capture_output=True, text=True, timeout=120, env=env)


def test_policy_check_ok() -> None:
    res = run("policy", "check", str(FIXTURES / "policy.yaml"))
    assert res.returncode == 0, res.stderr
    assert "ok" in res.stdout


def test_policy_check_reports_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    text = (FIXTURES / "policy.yaml").read_text().replace("statements: [select]", "statements: [selct]", 1)
    bad.write_text(text)
    res = run("policy", "check", str(bad))
    assert res.returncode == 2
    line = next(i for i, t in enumerate(text.splitlines(), 1) if "selct" in t)
    assert f"{bad}:{line}:" in res.stderr
    assert "unknown statement kind 'selct'" in res.stderr


def _catalog_file(tmp_path: Path) -> Path:
    raw = (FIXTURES / "catalog.yaml").read_text().replace("SCHEMA.", "public.")
    path = tmp_path / "catalog.yaml"
    path.write_text(raw)
    return path


def test_explain_offline_json(tmp_path: Path) -> None:
    res = run(
        "explain", "--policy", str(FIXTURES / "policy.yaml"), "--user", "ana", "--groups", "analysts",
        "--connection", "pg", "--catalog", str(_catalog_file(tmp_path)), "--json",
        "SELECT c.email AS e, c.name FROM customers c",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["action"] == "mask"
    outs = {o["name"]: o for o in data["statements"][0]["outputs"]}
    assert outs["e"]["mask"] is not None and outs["e"]["classifications"] == ["pii.email"]
    assert outs["e"]["sources"] == ["public.customers.email"]
    assert outs["name"]["mask"] is None
    assert "role:analyst/masks/pii.email" in outs["e"]["mask_rules"]


def test_explain_deny_exits_1_and_text_names_rule(tmp_path: Path) -> None:
    res = run(
        "explain", "--policy", str(FIXTURES / "policy.yaml"), "--user", "ana", "--groups", "analysts",
        "--connection", "pg", "--catalog", str(_catalog_file(tmp_path)),
        "SELECT * FROM secret.keys WHERE k = 'hunter2-secret'",
    )  # fmt: skip
    assert res.returncode == 1
    assert "DENY" in res.stdout and "role:analyst/deny_tables[0]" in res.stdout


def test_explain_unknown_connection_is_an_error(tmp_path: Path) -> None:
    res = run(
        "explain", "--policy", str(FIXTURES / "policy.yaml"), "--user", "ana",
        "--connection", "nope", "--catalog", str(_catalog_file(tmp_path)), "SELECT 1",
    )  # fmt: skip
    assert res.returncode == 2
    assert "connection 'nope'" in res.stderr


def test_explain_against_live_postgres(pg_dsn: str, tmp_path: Path) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as con:
        con.execute("CREATE TABLE customers (id int, name text, email text, ssn text)")
        con.execute("CREATE VIEW contacts AS SELECT id AS who, email AS reach FROM customers")
        con.execute("CREATE VIEW contacts2 AS SELECT reach AS r FROM contacts")
        con.execute('CREATE TABLE "Audit" ("Email" text)')
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        (FIXTURES / "policy.yaml").read_text()
    )
    env = {**os.environ, "WARDEN_TEST_PG_DSN": pg_dsn}
    res = run(
        "explain", "--policy", str(policy), "--user", "ana", "--groups", "analysts",
        "--connection", "pg", "--json", "SELECT r AS x FROM contacts2; SELECT \"Email\" FROM \"Audit\"",
        env=env,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr + res.stdout
    data = json.loads(res.stdout)
    first = data["statements"][0]
    assert first["outputs"][0]["sources"] == ["public.customers.email"]
    assert first["outputs"][0]["mask"] is not None
    assert set(first["reads"]) == {"public.contacts2", "public.contacts", "public.customers"}
    assert data["statements"][1]["outputs"][0]["sources"] == ['public.Audit.Email']
    # the DSN (with its password) never appears in output
    password = psycopg.conninfo.conninfo_to_dict(pg_dsn).get("password")
    assert password and password not in res.stdout + res.stderr


def test_explain_live_database_unreachable(tmp_path: Path) -> None:
    env = {**os.environ, "WARDEN_TEST_PG_DSN": "postgresql://u:sup3rs3cretpw@127.0.0.1:1/db?connect_timeout=2"}
    res = run(
        "explain", "--policy", str(FIXTURES / "policy.yaml"), "--user", "ana",
        "--connection", "pg", "SELECT 1", env=env,
    )  # fmt: skip
    assert res.returncode == 2
    assert "sup3rs3cretpw" not in res.stderr + res.stdout
