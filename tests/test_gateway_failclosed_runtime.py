"""Issue 7, the gateway's run-time half: fail closed on what the database actually returns.

A real gateway process over HTTP, a real PostgreSQL and a real DuckDB file, a real OIDC
issuer. Every case knows the raw classified values (read straight from the databases
here) and searches for them in everything that leaves the gateway: the HTTP response
(Arrow data and frames, error text included), the audit records of the cell (the
analyst's own ``/v1/me/events`` and the auditor's ``/v1/audit``).

* errors are data: casts that fail echo no value (client, audit, events);
* the result shape is checked before the first row: a stale view, a hand-made analysis
  that predicts fewer or other columns than the database returns;
* the second net scans json, xml, bytes, lists, structs and maps, and its findings reach
  the kernel's ``df.attrs["warden"]`` like lineage masks;
* whole-row (composite) values come back as JSON text or structs, masked by lineage,
  never a driver crash.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pyarrow as pa
import pytest
import yaml

from gateway_harness import (
    CUSTOMERS,
    POLICY,
    GatewayProcess,
    seed_duckdb,
    seed_postgres,
    seeded_gateway,
)
from oidc_issuer import OIDCIssuer
from pgserver import PostgresServer
from warden.gateway.client import GatewayClient
from warden.gateway.frames import chunk_stream, read_frames

# Unclassified columns that carry classified values anyway: the second net's work.
# (The SSN detector knows that no SSN starts with 9: those rows carry e-mail only.)
PG_DOCS = """
CREATE TABLE docs (id int, body jsonb, body_json json, x xml, raw bytea, tags text[], note text);
INSERT INTO docs SELECT id,
    jsonb_build_object('contact', email, 'n', id),
    json_build_object('ssn', CASE WHEN ssn NOT LIKE '9%' THEN ssn END)::json,
    xmlelement(name contact, email),
    convert_to('mail ' || email, 'UTF8'),
    ARRAY['x', email],
    'plain note ' || id
  FROM customers;
CREATE VIEW cust_view AS SELECT id, name FROM customers;
CREATE VIEW cust_view2 AS SELECT id, name FROM customers;
CREATE MATERIALIZED VIEW cust_mv AS SELECT id, email AS contact FROM customers;
"""
DK_DOCS = """
CREATE TABLE docs AS SELECT id,
    CAST(json_object('contact', email) AS JSON) AS body,
    CAST('mail ' || email AS BLOB) AS raw,
    ['x', email] AS tags,
    {'note': 'hi', 'who': email} AS info,
    MAP {'k': CASE WHEN ssn NOT LIKE '9%' THEN ssn ELSE 'none' END} AS m,
    'plain note ' || id AS note
  FROM customers;
CREATE VIEW cust_view AS SELECT id, name FROM customers;
"""


@pytest.fixture(scope="module")
def issuer() -> Iterator[OIDCIssuer]:
    with OIDCIssuer(audience="warden") as iss:
        yield iss


@dataclasses.dataclass
class Env:
    gw: GatewayProcess
    issuer: OIDCIssuer
    pg_dsn: str
    dk_path: Path
    raw: dict[str, list[str]]  # connection -> every raw classified value

    def token(self, sub: str, groups: list[str], **claims: Any) -> str:
        return self.issuer.issue(sub=sub, groups=groups, **claims)


@pytest.fixture(scope="module")
def env(postgres: PostgresServer, issuer: OIDCIssuer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    pg_sql = PG_DOCS + "CREATE UNIQUE INDEX customers_email ON customers (email);"
    limits = {"statement_timeout_ms": 20000, "max_rows": 1000000}
    work = tmp_path_factory.mktemp("failclosed")
    with seeded_gateway(postgres, issuer.issuer, work, gateway_id="gw-failclosed", pg_sql=pg_sql, dk_sql=DK_DOCS, limits=limits) as seeded:
        yield Env(seeded.gw, issuer, seeded.pg_dsn, seeded.dk_path, seeded.raw)


# --------------------------------------------------------------------------- helpers


@dataclasses.dataclass
class Run:
    status: int
    body: bytes  # the whole HTTP response: frames, Arrow IPC, error text
    frames: list[tuple[bytes, bytes]]
    session: str

    def json_frames(self, kind: bytes) -> list[dict[str, Any]]:
        return [json.loads(p) for k, p in self.frames if k == kind]

    @property
    def error(self) -> dict[str, Any] | None:
        xs = self.json_frames(b"X")
        return xs[0] if xs else None

    @property
    def tables(self) -> list[pa.Table]:
        out, ipc = [], bytearray()
        for k, p in self.frames:
            if k == b"S":
                ipc = bytearray()
            elif k == b"A":
                ipc += p
            elif k == b"E" and ipc:
                out.append(pa.ipc.open_stream(bytes(ipc)).read_all())
        return out


def post(
    env: Env, conn: str, sql: str, *, who: tuple[str, list[str]] = ("ana", ["analysts"]), approve: bool = False,
    params: list[Any] | None = None, max_rows: int | None = None,
) -> Run:  # fmt: skip
    """Run a cell over HTTP. ``approve``: a held cell is approved by an owner and re-run."""
    session = "s-" + uuid.uuid4().hex[:12]
    token = env.token(who[0], who[1], region="emea")
    body: dict[str, Any] = {"connection": conn, "sql": sql, "params": params or [], "context": {"session_id": session, "cell_id": "c1"}}
    if max_rows is not None:
        body["max_rows"] = max_rows
    resp = httpx.post(env.gw.url + "/v1/cells", json=body, headers={"authorization": f"Bearer {token}"}, timeout=60)
    if approve and resp.status_code == 202:
        approval = resp.json()["approval"]["id"]
        with GatewayClient(env.gw.url, token=env.token("bob", ["owners"])) as bob:
            bob.decide(approval, approve=True, reason="test of error redaction")
        body["approval_id"] = approval
        resp = httpx.post(env.gw.url + "/v1/cells", json=body, headers={"authorization": f"Bearer {token}"}, timeout=60)
    frames = list(read_frames(chunk_stream(iter([resp.content])))) if resp.status_code == 200 else []
    return Run(resp.status_code, resp.content, frames, session)


def events(env: Env, run: Run, who: tuple[str, list[str]] = ("ana", ["analysts"]), *, want: str = "query.") -> list[dict[str, Any]]:
    """The cell's audit records as the analyst reads them back (``/v1/me/events``), once
    its completion record is stored (it is queued, not awaited): waited for, with a deadline."""
    token = env.token(who[0], who[1], region="emea")
    deadline = time.monotonic() + 15
    while True:
        got = httpx.get(env.gw.url + "/v1/me/events", params={"session_id": run.session, "limit": "100"},
                        headers={"authorization": f"Bearer {token}"}, timeout=10)  # fmt: skip
        assert got.status_code == 200, got.text
        evs: list[dict[str, Any]] = got.json()["events"]
        done = [e for e in evs if e["type"] in ("query.executed", "query.failed", "query.denied")]
        if done or time.monotonic() > deadline:
            assert done, f"no completion record for session {run.session}: {[e['type'] for e in evs]}"
            return evs
        time.sleep(0.05)


def audit_text(env: Env, run: Run) -> str:
    """The auditor's view of the same cell's records, as text to search."""
    token = env.token("aud", ["audit"])
    got = httpx.get(env.gw.url + "/v1/audit", params={"session_id": run.session, "limit": "100"},
                    headers={"authorization": f"Bearer {token}"}, timeout=10)  # fmt: skip
    assert got.status_code == 200, got.text
    return got.text


def assert_no_raw(env: Env, conn: str, run: Run, evs: list[dict[str, Any]]) -> None:
    """No raw classified value anywhere: response bytes, decoded tables, the audit records."""
    evs_text = json.dumps(evs)
    audit = audit_text(env, run)
    tables = json.dumps([t.to_pylist() for t in run.tables], default=str)
    for value in env.raw[conn]:
        assert value.encode() not in run.body, f"{value!r} in the HTTP response"
        assert value not in tables, f"{value!r} in the Arrow data"
        assert value not in evs_text, f"{value!r} in /v1/me/events"
        assert value not in audit, f"{value!r} in /v1/audit"


ANA = ("ana", ["analysts"])
EVE = ("eve", ["eng"])


def completion(evs: list[dict[str, Any]]) -> dict[str, Any]:
    done = [e for e in evs if e["type"] in ("query.executed", "query.failed")]
    assert len(done) == 1, [e["type"] for e in evs]
    return done[0]


# --------------------------------------------------------------------------- (6) errors are data

# (connection, who, SQL, a phrase of the database's sentence that must survive redaction)
ERROR_ECHO = [
    ("pg", ANA, "SELECT email::int FROM customers", "invalid input syntax for type integer"),
    ("pg", ANA, "SELECT ssn::date FROM customers", "date/time field value out of range"),
    ("pg", ANA, "SELECT to_date(ssn, 'YYYY-MM-DD') FROM customers", "date/time field value out of range"),
    ("pg", ANA, "SELECT email::json FROM customers", "invalid input syntax for type json"),
    ("pg", ANA, "SELECT ssn::numeric FROM customers", "invalid input syntax for type numeric"),
    ("pg", EVE, "SELECT email::uuid FROM customers", "invalid input syntax for type uuid"),
    # The psycopg path (writes): the UPDATE fails in the cast; a unique violation's DETAIL
    # quotes the duplicate key.
    ("pg", EVE, "UPDATE customers SET region = (email::int)::text WHERE id = 1", "invalid input syntax for type integer"),
    ("pg", EVE, "INSERT INTO customers (id, email) SELECT id + 100, email FROM customers", "duplicate key value violates unique constraint"),
    ("dk", ANA, "SELECT email::int FROM customers", "Could not convert string"),
    ("dk", ANA, "SELECT ssn::date FROM customers", "Conversion Error"),
    ("dk", ANA, "SELECT strptime(ssn, '%Y') FROM customers", "Could not parse string"),
    ("dk", ANA, "SELECT CAST(email AS JSON) FROM customers", "Malformed JSON"),
    ("dk", EVE, "SELECT email::DECIMAL(10, 2) FROM customers", "Conversion Error"),
]


@pytest.mark.parametrize(("conn", "who", "sql", "phrase"), ERROR_ECHO, ids=[f"{c[0]}:{c[2][:40]}" for c in ERROR_ECHO])
def test_database_errors_echo_no_value(env: Env, conn: str, who: tuple[str, list[str]], sql: str, phrase: str) -> None:
    run = post(env, conn, sql, who=who, approve=True)  # writes of classified values are held
    assert run.status == 200, run.body[:500]
    err = run.error
    assert err is not None, "the statement was expected to fail in the database"
    assert err["code"] == "execution-failed" and phrase in err["message"], err
    evs = events(env, run, who)
    done = completion(evs)
    assert done["status"] in ("failed", "failure") and phrase in done["error"] and done["error"] == err["message"]
    assert_no_raw(env, conn, run, evs)


def test_sqlstate_is_kept_where_the_driver_gives_it(env: Env) -> None:
    # The psycopg path carries the SQLSTATE; the value in the message does not survive.
    run = post(env, "pg", "INSERT INTO customers (id, email) SELECT id + 100, email FROM customers", who=EVE, approve=True)
    err = run.error
    assert err is not None and err["sqlstate"] == "23505" and "[SQLSTATE 23505]" in err["message"]
    assert "customers_email" in err["message"]  # an identifier, not a value: kept
    assert "details withheld" in err["message"]  # the DETAIL line quoted the key
    assert_no_raw(env, "pg", run, events(env, run, EVE))


# --------------------------------------------------------------------------- (8) the second net


@pytest.mark.parametrize(
    ("conn", "expected"),
    [
        ("pg", {"body": "email", "body_json": "ssn", "x": "email", "raw": "email", "tags": "email"}),
        ("dk", {"body": "email", "raw": "email", "tags": "email", "info": "email", "m": "ssn"}),
    ],
)
def test_detectors_scan_json_xml_bytes_lists_structs_maps(env: Env, conn: str, expected: dict[str, str]) -> None:
    run = post(env, conn, "SELECT * FROM docs ORDER BY id")
    assert run.status == 200 and run.error is None, run.body[:500]
    (end,) = run.json_frames(b"E")
    found = {(d["column"], d["detector"]) for d in end["detectors"]}
    assert found == set(expected.items())
    assert all(d["rows"] >= 1 and isinstance(d["position"], int) for d in end["detectors"])
    assert "value" not in json.dumps(end["detectors"])  # counts and names, never a value
    (table,) = run.tables
    rows = table.to_pylist()
    assert [r["note"] for r in rows] == ["plain note 1", "plain note 2", "plain note 3"]  # clear text is untouched
    text = json.dumps(rows, default=str)
    assert "[email]" in text  # strings, json and bytes keep their type and show the token
    for col in ("tags",) + (("info",) if conn == "dk" else ()):
        assert all(r[col] is None for r in rows)  # nested: the whole value of a row with a hit
    evs = events(env, run)
    # The completion record lists them with the masks, marked as the detectors' work.
    masks = completion(evs)["masks"]
    masks = json.loads(masks) if isinstance(masks, str) else masks
    recorded = {(m["column"], m["detector"]) for m in masks if m.get("source") == "detector"}
    assert recorded == set(expected.items())
    assert_no_raw(env, conn, run, evs)


def test_detector_findings_reach_the_dataframe_and_the_display(env: Env) -> None:
    from warden.kernel.client import CellStream, KernelGatewayClient
    from warden.kernel.connect import Endpoint, StaticToken
    from warden.magic.display import render_table_html, render_table_text, table_rows
    from warden.magic.results import statement_info, to_output

    client = KernelGatewayClient(Endpoint(env.gw.url, None, "remote"), StaticToken(env.token("ana", ["analysts"], region="emea")))
    try:
        stream = CellStream(client, {"connection": "pg", "sql": "SELECT id, email, body, note FROM docs JOIN customers USING (id) ORDER BY id",
                                     "params": [], "context": {"session_id": "s-kernel"}})  # fmt: skip
        stream.start()
        assert stream.wait(30)
        result = stream.result()
    finally:
        client.close()
    (st,) = result.statements
    assert st.table is not None
    info = statement_info(result, st, stream.statement_meta.get(st.index, {}), connection="pg")
    df = to_output(st.table, info, "pandas")
    attrs = df.attrs["warden"]
    assert [(d["column"], d["detector"]) for d in attrs["detectors"]] == [("body", "email")]
    # The detector-masked column is marked exactly like the lineage-masked one.
    assert set(attrs["masked"]) == {"email", "body"}
    body = attrs["masked"]["body"]
    assert body["detector"] == "email" and body["operator"] == "detector:email" and body["position"] == 2
    assert "content detector email" in body["reason"] and body["rows"] == 3
    cols, rows = table_rows(st.table, 10)
    html = render_table_html(cols, rows, total_rows=len(rows), info=attrs)
    assert html.count('class="warden-masked"') == 2 and "detector email" in html
    assert "body*" in render_table_text(cols, rows, total_rows=len(rows), info=attrs) or "*body" in render_table_text(cols, rows, total_rows=len(rows), info=attrs)
    assert "ada@analytical.example" not in df.to_string()


# --------------------------------------------------------------------------- (10) whole rows


@pytest.mark.parametrize(
    ("conn", "who", "sql"),
    [
        ("pg", ANA, "SELECT c FROM customers c ORDER BY id"),
        ("pg", EVE, "SELECT c FROM customers c ORDER BY id"),
        ("pg", ANA, "SELECT ROW(id, email) FROM customers ORDER BY id"),
        ("pg", ANA, "SELECT id, ROW(name, ssn) AS r FROM customers ORDER BY id"),
        ("pg", ANA, "SELECT array_agg(c) FROM customers c"),
        ("dk", ANA, "SELECT c FROM customers c ORDER BY id"),
        ("dk", EVE, "SELECT c FROM customers c ORDER BY id"),
        ("dk", ANA, "SELECT {'a': email, 'b': id} AS s FROM customers ORDER BY id"),
        ("dk", ANA, "SELECT [email, ssn] AS l FROM customers ORDER BY id"),
    ],
)
def test_whole_row_values_are_masked_not_crashed(env: Env, conn: str, who: tuple[str, list[str]], sql: str) -> None:
    run = post(env, conn, sql, who=who)
    assert run.status in (200, 403), run.body[:500]
    if run.status == 200:
        err = run.error
        # A clear refusal is acceptable; a driver crash (an internal error) is not.
        assert err is None or err["code"] not in ("internal", "execution-failed"), err
        if err is None:
            assert run.tables and run.tables[0].num_rows >= 1
    evs = events(env, run, who)
    assert_no_raw(env, conn, run, evs)


def test_unclassified_composites_come_back_as_json(env: Env) -> None:
    run = post(env, "pg", "SELECT ROW(id, name) AS r, c.id FROM customers c ORDER BY c.id", who=EVE)
    assert run.error is None, run.error
    (table,) = run.tables
    assert table.schema.field("r").type == pa.string() and table.schema.field("id").type == pa.int32()
    first = json.loads(table.column("r")[0].as_py())
    assert first == {"f1": "1", "f2": "Ada Lovelace"}  # an anonymous record: f1, f2, ...
    run = post(env, "pg", "SELECT o FROM orders o ORDER BY id LIMIT 2", who=EVE)
    assert run.error is None, run.error
    (table,) = run.tables
    # A table's row type: its column names, each field PostgreSQL's text of it.
    assert json.loads(table.column("o")[0].as_py()) == {"id": "1", "customer_id": "2", "amount": "11.00", "region": "emea"}


def test_composite_fallback_binds_parameters_and_honours_row_limits(env: Env) -> None:
    run = post(env, "pg", "SELECT ROW(id, name) AS r FROM customers WHERE id >= $1 ORDER BY id", who=EVE, params=[2], max_rows=1)
    assert run.error is None, run.error
    (table,) = run.tables
    assert table.to_pylist() == [{"r": '{"f1": "2", "f2": "Grace Hopper"}'}]
    (end,) = run.json_frames(b"E")
    assert end["truncated"] is True and end["rows"] == 1
    # The pooled connection the truncated read left is usable by the next cell.
    again = post(env, "pg", "SELECT ROW(id, name) AS r FROM customers WHERE id = $1", who=EVE, params=[3])
    assert again.error is None and again.tables[0].num_rows == 1


def test_composite_returned_by_a_write(env: Env) -> None:
    # A write runs once, through psycopg, and its composite comes back as JSON text too.
    run = post(env, "pg", "UPDATE orders o SET amount = amount WHERE id = 1 RETURNING ROW(id, amount) AS r, o AS whole, id, id",
               who=EVE, approve=True)  # fmt: skip
    assert run.error is None, run.error
    (table,) = run.tables
    assert table.column_names == ["r", "whole", "id", "id"]  # by position: names may repeat
    row = table.to_pylist()[0]
    assert json.loads(table.column(0)[0].as_py()) == {"f1": "1", "f2": "11.00"}
    assert json.loads(table.column(1)[0].as_py()) == {"id": "1", "customer_id": "2", "amount": "11.00", "region": "emea"}
    assert row["id"] == 1
    # A data-modifying CTE is a write: it runs once (not through ADBC, which would have to
    # run it again to re-read a composite), and its composite comes back the same way.
    sql = "WITH u AS (UPDATE orders o SET amount = amount + 1 WHERE id = 2 RETURNING ROW(id, amount) AS r) SELECT r FROM u"
    with psycopg.connect(env.pg_dsn, autocommit=True) as con:
        before = con.execute("SELECT amount FROM orders WHERE id = 2").fetchone()
    run = post(env, "pg", sql, who=EVE, approve=True)
    with psycopg.connect(env.pg_dsn, autocommit=True) as con:
        after = con.execute("SELECT amount FROM orders WHERE id = 2").fetchone()
    assert before is not None and after is not None
    if run.status == 200 and run.error is None:
        assert after[0] == before[0] + 1  # once
        assert json.loads(run.tables[0].column(0)[0].as_py()) == {"f1": "2", "f2": str(after[0])}
    else:  # refused by the policy or the gateway: then it did not run at all
        assert after[0] == before[0], run.error
    assert_no_raw(env, "pg", run, events(env, run, EVE))


# --------------------------------------------------------------------------- (4) result shape


def _outputs(*spec: tuple[str, bool]) -> tuple[Any, ...]:
    from warden.sql.model import ColumnRef, OutputColumn

    return tuple(OutputColumn(name, frozenset({ColumnRef("public", "t", name)}), transformed) for name, transformed in spec)


@dataclasses.dataclass(frozen=True)
class _Mask:
    operator: Any


SHAPES: list[tuple[str, str, tuple[tuple[str, bool], ...], list[tuple[str, Any]], str | None]] = [
    # (dialect, kind, analysis outputs (name, transformed), result fields, expected error code)
    ("postgres", "select", (("id", False), ("email", False)), [("id", pa.int32()), ("email", pa.string())], None),
    ("postgres", "select", (("k", False),), [("k", pa.string()), ("value", pa.string())], "result-shape-mismatch"),
    ("postgres", "select", (("id", False), ("email", False), ("x", False)), [("id", pa.int32()), ("email", pa.string())], "result-shape-mismatch"),
    ("postgres", "select", (("id", False), ("name", False)), [("id", pa.int32()), ("email", pa.string())], "result-shape-mismatch"),
    ("postgres", "select", (("Id", False),), [("id", pa.int32())], "result-shape-mismatch"),  # PostgreSQL: exact
    ("duckdb", "select", (("id", False),), [("Id", pa.int32())], None),  # DuckDB: case-insensitive
    ("postgres", "select", (("_col_0", True),), [("?column?", pa.int32())], None),  # synthetic alias
    ("duckdb", "select", (("email", True),), [("CAST(email AS INTEGER)", pa.int32())], None),  # engine's name for an expression
    ("postgres", "select", (), [("x", pa.int32())], "result-shape-mismatch"),  # rows nobody predicted
    ("postgres", "show", (), [("search_path", pa.string())], None),  # settings, not table data
    ("postgres", "select", (("id", False),), [], "result-shape-mismatch"),
]


@pytest.mark.parametrize(("dialect", "kind", "outputs", "fields", "code"), SHAPES)
def test_check_result_shape(dialect: str, kind: str, outputs: tuple[tuple[str, bool], ...], fields: list[tuple[str, Any]], code: str | None) -> None:
    from warden.gateway.shape import ShapeMismatchError, check_result_shape
    from warden.sql.model import StatementAnalysis

    st = StatementAnalysis(index=2, kind=kind, sql="...", outputs=_outputs(*outputs))
    schema = pa.schema(fields)
    if code is None:
        check_result_shape(st, schema, dialect)
        return
    with pytest.raises(ShapeMismatchError) as info:
        check_result_shape(st, schema, dialect)
    assert info.value.code == code
    message = str(info.value)
    assert "fail-closed/result-shape" in message and "statement 3" in message and "Nothing of this statement was sent" in message


def test_check_result_shape_masks_every_type_or_refuses() -> None:
    from warden.gateway.shape import check_result_shape
    from warden.masking.operators import mask_array, parse_operator
    from warden.sql.model import StatementAnalysis

    types = [pa.struct([("a", pa.string())]), pa.list_(pa.string()), pa.map_(pa.string(), pa.string()), pa.month_day_nano_interval(),
             pa.uuid(), pa.json_(), pa.opaque(pa.binary(), "xml", "PostgreSQL"), pa.binary(), pa.decimal128(10, 2), pa.time64("us")]  # fmt: skip
    for t in types:
        st = StatementAnalysis(index=0, kind="select", sql="...", outputs=_outputs(("c", True)))
        for op in ("redact", "email", "last:4", "year", "hash", "null", "constant:x"):
            check_result_shape(st, pa.schema([("c", t)]), "postgres", {0: _Mask(parse_operator(op))})
            # ... and the mask really applies: no crash, and nothing of a value passes clear.
            out = mask_array(pa.nulls(1, type=t), parse_operator(op), key=b"k")
            assert len(out) == 1
    value = pa.array([{"a": "ada@analytical.example"}])
    for op in ("redact", "email", "last:4", "year"):
        assert mask_array(value, parse_operator(op), key=b"k").to_pylist() == [None]  # whole value


def test_stale_view_behind_the_catalog_is_stopped(env: Env) -> None:
    # The gateway's catalog knows cust_view as (id, name); the database now has a third
    # column (CREATE OR REPLACE VIEW may append) and cust_view2 a different second one.
    for sql in ("SELECT * FROM cust_view", "SELECT * FROM cust_view2"):
        warm = post(env, "pg", sql)  # the catalog is loaded and cached now
        assert warm.error is None and warm.tables[0].column_names == ["id", "name"], warm.error
    with psycopg.connect(env.pg_dsn, autocommit=True) as con:
        con.execute("CREATE OR REPLACE VIEW cust_view AS SELECT id, name, email FROM customers")
        con.execute("DROP VIEW cust_view2")
        con.execute("CREATE VIEW cust_view2 AS SELECT id, email FROM customers")
    for sql, what in (("SELECT * FROM cust_view", " 3 column(s) but the analysis accounted for 2"), ("SELECT * FROM cust_view2", "is named 'email'")):
        run = post(env, "pg", sql + "; SELECT 1 AS later")
        err = run.error
        assert err is not None and err["code"] == "result-shape-mismatch" and what in err["message"], err
        assert not run.json_frames(b"S") and not run.json_frames(b"E") and not run.tables  # nothing of it, nothing after
        evs = events(env, run)
        done = completion(evs)
        assert done["status"] in ("failed", "failure") and "fail-closed/result-shape" in done["error"]
        assert_no_raw(env, "pg", run, evs)


def test_table_function_wider_than_its_alias_list(env: Env) -> None:
    # jsonb_each returns (key, value); the alias list names one. Either the analysis knows
    # the real width (and masks the value by lineage) or the run-time check stops it.
    sql = "SELECT j.* FROM customers c, jsonb_each(jsonb_build_object('e', c.email, 's', c.ssn)) AS j(k)"
    run = post(env, "pg", sql)
    assert run.status in (200, 403), run.body[:300]
    if run.status == 200:
        err = run.error
        assert err is None or err["code"] == "result-shape-mismatch", err
        if err is None:
            assert run.tables[0].num_columns == 2
    assert_no_raw(env, "pg", run, events(env, run))


# The in-process pipeline (real DuckDB file, real audit store): what analysis predicts is
# replaced by hand, or the database is changed behind the gateway's catalog cache.


@pytest.fixture
def inproc(tmp_path: Path) -> Iterator[Any]:
    from warden.gateway.config import config_from_mapping
    from warden.gateway.server import build

    seed_duckdb(tmp_path / "data.duckdb")
    policy = json.loads(json.dumps(POLICY))
    del policy["connections"]["pg"]
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(policy))
    built = build(config_from_mapping({"policy": "policy.yaml", "mode": "shared", "state_dir": "state",
                                       "auth": {"mode": "oidc", "issuer": "http://127.0.0.1:9", "audience": "warden"}}, base=tmp_path))  # fmt: skip
    try:
        yield built
    finally:
        built.close()


def _frames(chunks: Any) -> list[tuple[bytes, dict[str, Any] | bytes]]:
    out: list[tuple[bytes, dict[str, Any] | bytes]] = []
    for kind, payload in read_frames(chunk_stream(iter(list(chunks)))):
        out.append((kind, payload if kind == b"A" else json.loads(payload)))
    return out


def _last_failed(built: Any) -> dict[str, Any]:
    built.flush()
    rows: list[dict[str, Any]] = built.store.query(types="query.failed", limit=1).to_pylist()
    assert rows, "no query.failed record"
    return rows[0]


def _duck(built: Any, sql: str) -> list[Any]:
    con = built.gateway.executor("dk")._db.cursor()
    try:
        return list(con.execute(sql).fetchall())
    finally:
        con.close()


@pytest.mark.parametrize(
    ("before", "after", "what"),
    [
        ("SELECT id, name FROM customers", "SELECT id, name, email FROM customers", "returned 3 column(s)"),
        # Same width, columns swapped: the mask for email would land on id, email go clear.
        ("SELECT id, email FROM customers", "SELECT email, id FROM customers", "is named 'email'"),
    ],
)
def test_duckdb_view_replaced_behind_the_catalog(inproc: Any, before: str, after: str, what: str) -> None:
    from warden.gateway.service import CellRequest
    from warden.policy.engine import Identity

    ana = Identity("ana", frozenset({"analysts"}), {"region": "emea"})
    _duck(inproc, f"CREATE VIEW v AS {before}")
    ok = _frames(inproc.gateway.run_cell(ana, CellRequest("dk", "SELECT * FROM v")).frames)
    assert not [f for f in ok if f[0] == b"X"]  # the catalog (with v as it was) is cached now
    _duck(inproc, f"CREATE OR REPLACE VIEW v AS {after}")
    out = inproc.gateway.run_cell(ana, CellRequest("dk", "SELECT * FROM v"))
    frames = _frames(out.frames)
    kinds = [k for k, _ in frames]
    assert kinds == [b"C", b"X", b"T"], kinds  # nothing of the statement was framed
    err = frames[1][1]
    assert isinstance(err, dict) and err["code"] == "result-shape-mismatch" and what in err["message"]
    rec = _last_failed(inproc)
    assert rec["status"] == "failure" and "fail-closed/result-shape" in rec["error"]
    raw = [v for row in _duck(inproc, "SELECT email, ssn FROM customers") for v in row]
    text = json.dumps([f[1] for f in frames if isinstance(f[1], dict)]) + json.dumps(rec, default=str)
    assert not any(v in text for v in raw)


@pytest.mark.parametrize(
    ("keep", "what"),
    [
        (lambda outs: outs[:2], "returned 3 column(s) but the analysis accounted for 2"),  # narrower than the result
        (lambda outs: (outs[1], outs[0], outs[2]), "column 1 of the result is named 'id'"),  # shifted
    ],
)
def test_analysis_that_disagrees_with_the_result_stops_the_cell(inproc: Any, keep: Any, what: str) -> None:
    """A hand-made analysis that predicts fewer or other columns than the database returns
    (what a wrong sqlglot expansion would give): the statement is stopped before its first
    row, the audit record says so, and the statement after it never runs."""
    from warden.gateway.service import CellRequest
    from warden.policy.engine import Identity, decide
    from warden.sql.analyze import analyze_cell

    eve = Identity("eve", frozenset({"eng"}))
    gw = inproc.gateway
    sql = "SELECT id, email, ssn FROM customers; CREATE TABLE ran_after AS SELECT 1 AS x"
    catalog = gw.catalog("dk")
    real = analyze_cell(sql, catalog)
    first = dataclasses.replace(real.statements[0], outputs=tuple(keep(real.statements[0].outputs)))
    analysis = dataclasses.replace(real, statements=(first, *real.statements[1:]))
    decision = decide(gw.policy, eve, analysis, "dk", taints={})
    assert decision.action in ("allow", "mask"), decision
    req = CellRequest("dk", sql, context={"session_id": "s-hand"})
    base = gw.base_event(eve, req.context)
    frames = _frames(gw._execute(eve, req, analysis, decision, base, "q_hand", {"action": decision.action}, gw._limits(eve, req), time.monotonic(), catalog))
    kinds = [k for k, _ in frames]
    assert kinds == [b"C", b"X", b"T"], kinds
    err = frames[1][1]
    assert isinstance(err, dict) and err["code"] == "result-shape-mismatch" and what in err["message"], err
    assert _duck(inproc, "SELECT count(*) FROM information_schema.tables WHERE table_name = 'ran_after'") == [(0,)]
    rec = _last_failed(inproc)
    assert rec["status"] == "failure" and what in rec["error"] and rec["rows"] == 0
    raw = [v for row in _duck(inproc, "SELECT email, ssn FROM customers") for v in row]
    assert not any(v in json.dumps(rec, default=str) + json.dumps(frames, default=str) for v in raw)


@pytest.fixture
def pg_inproc(postgres: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from warden.gateway.config import config_from_mapping
    from warden.gateway.server import build

    dsn = postgres.create_database(prefix="origins")
    seed_postgres(dsn)
    monkeypatch.setenv("WARDEN_TEST_PG_DSN", dsn)
    seed_duckdb(tmp_path / "data.duckdb")
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(POLICY))
    built = build(config_from_mapping({"policy": "policy.yaml", "mode": "shared", "state_dir": "state",
                                       "auth": {"mode": "oidc", "issuer": "http://127.0.0.1:9", "audience": "warden"}}, base=tmp_path))  # fmt: skip
    try:
        yield built
    finally:
        built.close()


def test_postgres_row_description_cross_checks_the_lineage(pg_inproc: Any) -> None:
    """Same width, same names, but the analysis traced the columns to the wrong sources
    (what a search_path or join mix-up in the analysis would give): the row description's
    table OID and attribute number disagree, and the statement stops before it runs."""
    from warden.gateway.service import CellRequest
    from warden.policy.engine import Identity, decide
    from warden.sql.analyze import analyze_cell

    ana = Identity("ana", frozenset({"analysts"}), {"region": "emea"})
    gw = pg_inproc.gateway
    sql = "SELECT name AS a, email AS b FROM customers ORDER BY id"
    catalog = gw.catalog("pg")
    real = analyze_cell(sql, catalog)

    def run(analysis: Any) -> list[tuple[bytes, Any]]:
        decision = decide(gw.policy, ana, analysis, "pg", taints={})
        req = CellRequest("pg", sql, context={"session_id": "s-origin"})
        base = gw.base_event(ana, req.context)
        return _frames(gw._execute(ana, req, analysis, decision, base, "q_origin", {}, gw._limits(ana, req), time.monotonic(), catalog))

    control = run(real)  # the true lineage: b (email) masked, a (name) clear
    kinds = [k for k, _ in control]
    assert kinds[:2] == [b"C", b"S"] and kinds[-2:] == [b"E", b"T"] and set(kinds[2:-2]) == {b"A"}, kinds
    ipc = b"".join(p for k, p in control if k == b"A")
    rows = pa.ipc.open_stream(ipc).read_all().to_pylist()
    assert rows[0] == {"a": "Ada Lovelace", "b": "****@analytical.example"}

    a, b = real.statements[0].outputs
    swapped = (dataclasses.replace(a, sources=b.sources), dataclasses.replace(b, sources=a.sources))
    wrong = dataclasses.replace(real, statements=(dataclasses.replace(real.statements[0], outputs=swapped),))
    frames = run(wrong)
    assert [k for k, _ in frames] == [b"C", b"X", b"T"]
    err = frames[1][1]
    assert err["code"] == "result-origin-mismatch" and "public.customers.name" in err["message"], err
    raw = [v for _, _, email, ssn, _ in CUSTOMERS for v in (email, ssn)]
    assert not any(v in json.dumps(frames, default=str) for v in raw)


@pytest.mark.parametrize(
    ("origins", "ok"),
    [
        (None, True),  # the engine cannot tell: no check
        ([("public", "t", "id"), None], True),
        ([("public", "t", "email"), None], False),  # output 1 is traced to t.id
        ([("public", "t", "id")], False),  # width differs
        ([None, ("public", "t", "email")], True),
        ([None, ("other", "t", "email")], False),  # another schema's table of that name
    ],
)
def test_check_origins(origins: Any, ok: bool) -> None:
    from warden.gateway.shape import ShapeMismatchError, check_origins
    from warden.sql.model import StatementAnalysis

    st = StatementAnalysis(index=0, kind="select", sql="...", outputs=_outputs(("id", False), ("email", True)))
    if ok:
        check_origins(st, origins)
    else:
        with pytest.raises(ShapeMismatchError):
            check_origins(st, origins)


# Ordinary reads must pass the run-time checks untouched (no false alarms): masked
# columns masked, the rest clear.
PLAIN = [
    ("pg", "SELECT id, email FROM customers ORDER BY id", {"email": "****@analytical.example"}),
    ("pg", "SELECT c.id, o.id, c.email FROM customers c JOIN orders o ON o.customer_id = c.id ORDER BY o.id LIMIT 1", {"email": "****@cobol.example"}),
    ("pg", "WITH w AS (SELECT id, email AS e FROM customers) SELECT e FROM w ORDER BY id", {"e": "****@analytical.example"}),
    ("pg", "SELECT x.e FROM (SELECT id, email AS e FROM customers) x ORDER BY x.id", {"e": "****@analytical.example"}),
    ("pg", "SELECT contact FROM cust_mv ORDER BY id", {"contact": "****@analytical.example"}),
    ("pg", "SELECT reach FROM contacts ORDER BY who", {"reach": "****@analytical.example"}),
    ("pg", "SELECT email::text AS e, upper(name) FROM customers ORDER BY id", {}),
    ("pg", "SELECT id, amount FROM orders ORDER BY id LIMIT 1", {"id": 1}),
    ("dk", "SELECT id, email FROM customers ORDER BY id", {"email": "****@analytical.example"}),
    ("dk", "SELECT ID, Email FROM customers ORDER BY id", {"email": "****@analytical.example"}),
    ("dk", "SELECT c.id, o.id, c.email FROM customers c JOIN orders o ON o.customer_id = c.id ORDER BY o.id LIMIT 1", {"email": "****@cobol.example"}),
    ("dk", "SELECT email::VARCHAR, upper(name) FROM customers ORDER BY id", {}),
]


@pytest.mark.parametrize(("conn", "sql", "first"), PLAIN, ids=[f"{c}:{s[:40]}" for c, s, _ in PLAIN])
def test_ordinary_reads_pass_the_checks(env: Env, conn: str, sql: str, first: dict[str, Any]) -> None:
    run = post(env, conn, sql)
    assert run.status == 200 and run.error is None, (run.body[:300], run.error)
    (table,) = run.tables
    row = table.to_pylist()[0]
    for key, value in first.items():
        assert row[key.lower()] == value if key.lower() in row else row[key] == value, row
    assert_no_raw(env, conn, run, events(env, run))
