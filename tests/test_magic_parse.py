"""The %%sql line: table-driven, pure."""

from __future__ import annotations

from typing import Any

import pytest

from warden.magic.parse import (
    CredentialsInCell,
    MagicSyntaxError,
    parse_magic,
    redact_credentials,
)

CELL_CASES: list[tuple[str, dict[str, Any]]] = [
    ("", {}),
    ("demo", {"connection": "demo"}),
    ("  demo  ", {"connection": "demo"}),
    ("df <<", {"target": "df"}),
    ("df<<", {"target": "df"}),
    ("demo df <<", {"connection": "demo", "target": "df"}),
    ("df << demo", {"connection": "demo", "target": "df"}),
    ("--no-raise", {"no_raise": True}),
    ("demo --format arrow", {"connection": "demo", "format": "arrow"}),
    ("--format polars", {"format": "polars"}),
    ("--format=pandas", {"format": "pandas"}),
    ("--wait 0", {"wait": 0.0}),
    ("--wait 2.5", {"wait": 2.5}),
    ("--limit 100", {"limit": 100}),
    ("--limit=0", {"limit": 0}),
    ("--approval apr_123", {"approval_id": "apr_123"}),
    ("--connection select", {"connection": "select"}),  # a connection named like a keyword
    ("--connection=my-db", {"connection": "my-db"}),
    ("-q", {"quiet": True}),
    ("-l", {"list_connections": True}),
    ("demo res << --no-raise --wait 0", {"connection": "demo", "target": "res", "no_raise": True, "wait": 0.0}),
    ("res = <<", {"target": "res"}),
    ("demo res=<<", {"connection": "demo", "target": "res"}),
]


@pytest.mark.parametrize(("line", "expected"), CELL_CASES)
def test_cell_lines(line: str, expected: dict[str, Any]) -> None:
    parsed = parse_magic(line, "SELECT 1")
    assert parsed.sql == "SELECT 1"
    for key in ("connection", "target", "no_raise", "format", "wait", "limit", "approval_id", "quiet", "list_connections"):
        default = {"no_raise": False, "quiet": False, "list_connections": False}.get(key)
        assert getattr(parsed, key) == expected.get(key, default), key


LINE_CASES: list[tuple[str, str | None, str | None, str]] = [
    # line, connection, target, sql
    ("SELECT 1", None, None, "SELECT 1"),
    ("select * from t", None, None, "select * from t"),
    ("demo SELECT 1", "demo", None, "SELECT 1"),
    ("df << SELECT 1", None, "df", "SELECT 1"),
    ("demo df << SELECT * FROM t WHERE a = :x", "demo", "df", "SELECT * FROM t WHERE a = :x"),
    ("WITH a AS (SELECT 1) SELECT * FROM a", None, None, "WITH a AS (SELECT 1) SELECT * FROM a"),
    ("SHOW TABLES", None, None, "SHOW TABLES"),
    ("demo", "demo", None, ""),
    ("--no-raise demo SELECT 'x -- y'", "demo", None, "SELECT 'x -- y'"),
    ("(SELECT 1) UNION (SELECT 2)", None, None, "(SELECT 1) UNION (SELECT 2)"),
]


@pytest.mark.parametrize(("line", "connection", "target", "sql"), LINE_CASES)
def test_line_magic(line: str, connection: str | None, target: str | None, sql: str) -> None:
    parsed = parse_magic(line)
    assert (parsed.connection, parsed.target, parsed.sql) == (connection, target, sql)


def test_switch_only() -> None:
    assert parse_magic("demo").switch_only
    assert parse_magic("demo", "").switch_only
    assert not parse_magic("demo SELECT 1").switch_only
    assert not parse_magic("", "SELECT 1").switch_only


CREDENTIAL_CASES = [
    ("postgresql://u:pw@h/db", None),
    ("postgresql+psycopg://analyst:s3cret@db.example.com:5432/sales", None),
    ("demo", "SELECT * FROM postgres_scan('postgresql://u:hunter2@h/db', 'public', 't')"),
    ("", "ATTACH 'postgres://bob:pw@host/x' AS x (TYPE postgres)"),
    ("host=db user=bob password=secret", None),
    ("mysql://root:@localhost/x", None),  # an empty password is still a credential slot
]


@pytest.mark.parametrize(("line", "cell"), CREDENTIAL_CASES)
def test_credentials_are_refused_with_a_pointer_to_the_gateway(line: str, cell: str | None) -> None:
    with pytest.raises(CredentialsInCell) as info:
        parse_magic(line, cell)
    message = str(info.value)
    assert "gateway" in message and "dsn_env" in message
    assert "hunter2" not in message and "s3cret" not in message


@pytest.mark.parametrize("line", ["postgresql://h/db", "duckdb:///tmp/x.duckdb", "sqlite://", "--connection postgresql://h/db"])
def test_connection_strings_without_passwords_are_refused_too(line: str) -> None:
    with pytest.raises(CredentialsInCell, match="connection name"):
        parse_magic(line, "SELECT 1")


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("--alias x", "policy"),
        ("--bogus", "unknown option"),
        ("--format csv", "pandas, arrow, polars"),
        ("--wait soon", "seconds"),
        ("--wait -1", "0 or more"),
        ("--limit many", "number of rows"),
        ("--limit", "needs a value"),
        ("a << b <<", "two assignment targets"),
        ("-c select", "--creator"),
        ("--interact x", "widgets"),
        ("-S bad-name", "snippet name"),
        ("-q=1", "no value"),
    ],
)
def test_bad_lines_say_how_to_write_them(line: str, fragment: str) -> None:
    with pytest.raises(MagicSyntaxError, match=fragment):
        parse_magic(line, "SELECT 1")


def test_redact_credentials() -> None:
    text = "conn = 'postgresql://bob:hunter2@db/x'; other = 'https://example.com/a:b'"
    out = redact_credentials(text)
    assert "hunter2" not in out and "postgresql://bob:***@db/x" in out and "https://example.com/a:b" in out


JUPYSQL_FLAGS: list[tuple[str, dict[str, Any]]] = [
    ("--save big --no-execute", {"save": "big", "no_execute": True}),
    ("-S big -N", {"save": "big", "no_execute": True}),
    ("--with a -w b", {"with_": ("a", "b")}),
    ("-f q.sql", {"file": "q.sql"}),
    ("--file=dir/q.sql demo", {"file": "dir/q.sql", "connection": "demo"}),
    ("demo -p", {"persist": True, "connection": "demo"}),
    ("-P -n", {"persist_replace": True, "no_index": True}),
    ("--append", {"append": True}),
]


@pytest.mark.parametrize(("line", "expected"), JUPYSQL_FLAGS)
def test_jupysql_short_flags_mean_what_they_mean_in_jupysql(line: str, expected: dict[str, Any]) -> None:
    parsed = parse_magic(line, "SELECT 1")
    for key, value in expected.items():
        assert getattr(parsed, key) == value, key


def test_target_alone_on_the_first_body_line() -> None:
    parsed = parse_magic("demo", "\nrows <<\nSELECT 1")
    assert (parsed.connection, parsed.target, parsed.sql.strip()) == ("demo", "rows", "SELECT 1")
    assert parse_magic("", "rows = <<\nSELECT 1").target == "rows"
    # `<<` inside the SQL is not a target
    assert parse_magic("", "SELECT 1 << 2").target is None
    with pytest.raises(MagicSyntaxError, match="two assignment targets"):
        parse_magic("a <<", "b <<\nSELECT 1")


def test_sql_starting_on_the_cell_line_continues_in_the_body() -> None:
    parsed = parse_magic("demo SELECT *", "FROM t\nWHERE a = 1")
    assert (parsed.connection, parsed.sql) == ("demo", "SELECT *\nFROM t\nWHERE a = 1")
    assert parse_magic("SELECT 1", "").sql == "SELECT 1"
