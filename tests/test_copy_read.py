"""The C COPY decoder (``warden.gateway._pgcopy`` via ``copy_read``) against ADBC.

A plain read whose columns all have a type the decoder knows goes through it; any
other result goes through ADBC. Both must give the same Arrow schema (field metadata
included) and values, for every type, NULLs and edge values, across batch boundaries;
errors, timeouts, cancels and lost connections must end the same way, and a pooled
connection must never carry a half-read COPY into the next statement. Real PostgreSQL.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import psycopg
import pyarrow as pa
import pytest

from arrow_results import read_table
from warden.gateway import copy_read
from warden.gateway.execute import Cancelled, ExecutionError, Limits, PostgresExecutor, Session

pgcopy = copy_read.module()
pytestmark = pytest.mark.skipif(pgcopy is None, reason="warden.gateway._pgcopy was not built (libpq-dev missing)")

LIMITS = Limits(statement_timeout_ms=10_000)

# Expressions of every decoded type, NULLs and edge values included.
DECODED = [
    "true", "false", "NULL::bool", "(-32768)::int2", "32767::int2", "(-2147483648)::int4", "2147483647::int4",
    "(-9223372036854775808)::int8", "9223372036854775807::int8", "1.5::float4", "'NaN'::float4", "'-Infinity'::float4",
    "'-0'::float8", "'Infinity'::float8", "'NaN'::float8", "2.2250738585072014e-308::float8", "''::text", "'t'::text",
    "'café ☕ \U0001f600'::text", "repeat('x', 100000)", "'v'::varchar(3)", "'c'::char(3)", "'a'::name", "'\\x00ff00'::bytea",
    "''::bytea", "'2024-01-02'::date", "'0001-01-01'::date", "'4713-01-01 BC'::date", "'infinity'::date", "'-infinity'::date",
    "'2024-01-02 03:04:05.123456'::timestamp", "'infinity'::timestamp", "'-infinity'::timestamp", "'1999-12-31 23:59:59.999999'::timestamp",
    "'2024-01-02 03:04:05+02'::timestamptz", "'-infinity'::timestamptz", "NULL", "NULL::text", "NULL::date", "NULL::int8",
    "1.5::numeric", "1.50::numeric(10,2)", "0::numeric", "0.00::numeric(10,2)", "(-1.5)::numeric", "'NaN'::numeric",
    "'Infinity'::numeric", "'-Infinity'::numeric", "1e-20::numeric", "1e100::numeric", "(-0.0001)::numeric", "NULL::numeric",
    "'123456789012345678901234567890.123'::numeric", "20000.0002::numeric", "0.00010000::numeric", "1000000.000000::numeric",
]  # fmt: skip

# Types the decoder leaves to ADBC.
NOT_DECODED = [
    "'1 day'::interval", "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid", "'{\"a\": 1}'::jsonb",
    "ARRAY[1, 2]", "'12:34:56'::time", "'10.0.0.1'::inet", "'1'::oid", "'x'::\"char\"", "'[1,3)'::int4range", "'1'::money",
]  # fmt: skip


_table = read_table


@pytest.fixture
def pair(pg_dsn: str) -> Iterator[tuple[PostgresExecutor, PostgresExecutor]]:
    """(the executor with the decoder, one without it: every read through ADBC)."""
    native, adbc = PostgresExecutor(pg_dsn, pool_size=1, result_connections=2), PostgresExecutor(pg_dsn, pool_size=1, result_connections=2)
    adbc._copy_module = None
    try:
        yield native, adbc
    finally:
        native.close()
        adbc.close()


def _both(pair: tuple[PostgresExecutor, PostgresExecutor], sql: str, session: Session | None = None) -> tuple[pa.Table, pa.Table]:
    native, adbc = pair
    session = session or Session()
    stop = threading.Event()
    got = _table(native.run(sql, (), LIMITS, stop, returns_rows=True, retry_safe=True, session=session))
    want = _table(adbc.run(sql, (), LIMITS, stop, returns_rows=True, retry_safe=True, session=session))
    return got, want


def _bits(column: pa.ChunkedArray) -> pa.Array:
    """A column with floats as their bit patterns (NaN equals NaN, -0 differs from 0)."""
    array = column.combine_chunks()
    if pa.types.is_float32(array.type):
        return array.view(pa.int32())
    if pa.types.is_float64(array.type):
        return array.view(pa.int64())
    return array


def _same(got: pa.Table, want: pa.Table, what: str) -> None:
    assert got.schema.equals(want.schema, check_metadata=True), (what, got.schema, want.schema)
    assert got.num_rows == want.num_rows, what
    for name, a, b in zip(got.column_names, got.columns, want.columns, strict=True):
        assert _bits(a).equals(_bits(b)), (what, name, a.slice(0, 3), b.slice(0, 3))


@pytest.mark.parametrize("expr", DECODED)
def test_each_decoded_type_reads_exactly_as_adbc_reads_it(pair: tuple[PostgresExecutor, PostgresExecutor], expr: str) -> None:
    got, want = _both(pair, f"SELECT {expr} AS v, {expr} AS w FROM generate_series(1, 3) g")
    _same(got, want, expr)
    assert got.num_rows == 3
    native, _ = pair
    assert len(native._copy) == 1, "the decoder did not read it"


@pytest.mark.parametrize("expr", NOT_DECODED)
def test_other_types_go_through_adbc_unchanged(pair: tuple[PostgresExecutor, PostgresExecutor], expr: str) -> None:
    sql = f"SELECT 1 AS n, {expr} AS v"
    got, want = _both(pair, sql)
    _same(got, want, expr)
    native, _ = pair
    assert sql in native._copy_unsupported
    assert len(native._copy) == 1 and native._copy[0].ok, "the described connection was not handed back idle"
    # Known now: the next run goes straight to ADBC, with the same result.
    got2, _ = _both(pair, sql)
    _same(got2, want, expr)


def test_many_rows_with_nulls_across_batch_boundaries(pair: tuple[PostgresExecutor, PostgresExecutor], monkeypatch: pytest.MonkeyPatch) -> None:
    sql = (
        "SELECT g AS id, CASE WHEN g % 3 = 0 THEN NULL ELSE 'user' || g || '@example.com' END AS email, "
        "CASE WHEN g % 7 = 0 THEN NULL ELSE g % 2 = 0 END AS flag, CASE WHEN g % 5 = 0 THEN NULL ELSE g::float8 / 3 END AS x, "
        "CASE WHEN g % 11 = 0 THEN NULL ELSE date '2000-01-01' + g END AS d, "
        "CASE WHEN g % 13 = 0 THEN NULL ELSE timestamptz '2000-01-01 00:00:00+00' + g * interval '1 second' END AS ts, "
        "CASE WHEN g % 17 = 0 THEN NULL ELSE decode(md5(g::text), 'hex') END AS raw, (g % 32000)::int2 AS small "
        "FROM generate_series(1, 50003) g"
    )
    for rows, size in ((1000, 1 << 30), (999, 1 << 30), (1 << 20, 4096), (7, 1 << 30)):
        monkeypatch.setattr(copy_read, "BATCH_ROWS", rows)
        monkeypatch.setattr(copy_read, "BATCH_BYTES", size)
        native, adbc = pair
        stop = threading.Event()
        result = native.run(sql + " ORDER BY g", (), LIMITS, stop, returns_rows=True, retry_safe=True)
        batches = list(result.batches)
        assert result.close is not None
        result.close()
        got = pa.Table.from_batches(batches, schema=result.schema)
        want = _table(adbc.run(sql + " ORDER BY g", (), LIMITS, stop, returns_rows=True, retry_safe=True))
        assert len(batches) > 5, "the batch limits did not apply"
        _same(got, want, f"batches of {rows} rows / {size} bytes")
        for b in batches:
            b.validate(full=True)
    assert got.column("email").null_count == 50003 // 3


def test_numerics_of_every_scale_and_weight_read_as_adbc_reads_them(pair: tuple[PostgresExecutor, PostgresExecutor]) -> None:
    # Text from base-10000 digits: weights below and above zero, scales across digit
    # groups, trailing zeros kept by the scale, signs, and specials among them.
    sql = (
        "SELECT round(((random() - 0.5) * 10 ^ (g % 60 - 30))::numeric, g % 23) AS a, "
        "(g::numeric / 7)::numeric(40, 13) AS b, (g % 10000)::numeric * power(10::numeric, g % 9) AS c, "
        "CASE g % 97 WHEN 0 THEN 'NaN'::numeric WHEN 1 THEN 'Infinity' WHEN 2 THEN '-Infinity' WHEN 3 THEN NULL "
        "ELSE (-g)::numeric / power(10::numeric, g % 17) END AS d "
        "FROM generate_series(1, 20000) g, (SELECT setseed(0.42)) s ORDER BY g"
    )
    native, adbc = pair
    stop = threading.Event()
    # Seeded per statement: both executors see the same random numbers.
    got = _table(native.run(sql, (), LIMITS, stop, returns_rows=True, retry_safe=True))
    want = _table(adbc.run(sql, (), LIMITS, stop, returns_rows=True, retry_safe=True))
    _same(got, want, "numerics")
    assert all(f.metadata[b"POSTGRESQL:type"] == b"numeric" for f in got.schema), got.schema
    assert len(native._copy) == 1, "the decoder did not read it"
    texts = got.column("d").combine_chunks().storage.to_pylist()
    assert {"nan", "inf", "-inf", None} <= set(texts)


def test_empty_results_and_statement_texts_copy_wraps(pair: tuple[PostgresExecutor, PostgresExecutor]) -> None:
    native, _ = pair
    # ADBC's own COPY fails on a trailing line comment (it comments out the closing
    # parenthesis) and on a trailing semicolon; the decoder's does not.
    for sql in ("SELECT 1 AS v -- a trailing line comment )", "SELECT 1 AS v /* ) */ ;  "):
        got = _table(native.run(sql, (), LIMITS, threading.Event(), returns_rows=True, retry_safe=True))
        assert got.column("v").to_pylist() == [1], sql
    for sql in (
        "SELECT 1 AS v WHERE false",
        "VALUES (1, 'a'), (2, 'b')",
        "WITH t AS (SELECT 2 AS v) SELECT v FROM t",
        "(SELECT 3 AS v)",
        "SELECT ')' AS v, $$ ) $$ AS w",
    ):
        got, want = _both(pair, sql)
        _same(got, want, sql)
    assert not native._copy_unsupported._texts


def test_session_settings_apply_to_decoded_reads(pair: tuple[PostgresExecutor, PostgresExecutor], pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as con:
        con.execute("CREATE SCHEMA other")
        con.execute("CREATE TABLE other.t AS SELECT 'in other' AS v")
        con.execute("CREATE TABLE public.t AS SELECT 'in public' AS v")
    in_other = Session(("other",), (("timezone", "Asia/Tokyo"),))
    got, want = _both(pair, "SELECT v, timestamptz '2024-01-01 00:00:00+00' AS ts FROM t", session=in_other)
    _same(got, want, "search_path")
    assert got.column("v").to_pylist() == ["in other"]
    got, _ = _both(pair, "SELECT v FROM t")
    assert got.column("v").to_pylist() == ["in public"], "a session setting survived on the pooled connection"


def test_errors_timeouts_and_cancels_end_the_statement_and_free_the_connection(pair: tuple[PostgresExecutor, PostgresExecutor]) -> None:
    native, _ = pair
    stop = threading.Event()
    # An error after rows were sent (division by zero at row 5000).
    with pytest.raises(ExecutionError) as err:
        _table(native.run("SELECT 1 / (g - 5000) AS v FROM generate_series(1, 10000) g", (), LIMITS, stop, returns_rows=True, retry_safe=True))
    assert "division by zero" in str(err.value) and err.value.sqlstate == "22012"
    # An error before any row: a syntax error, a missing table.
    with pytest.raises(ExecutionError) as err:
        _table(native.run("SELECT nope FROM missing_table", (), LIMITS, stop, returns_rows=True, retry_safe=True))
    assert "missing_table" in str(err.value) and err.value.sqlstate == "42P01"
    # The statement timeout.
    with pytest.raises(ExecutionError) as err:
        _table(native.run("SELECT pg_sleep(5)::text AS v", (), Limits(statement_timeout_ms=200), stop, returns_rows=True, retry_safe=True))
    assert err.value.code == "timeout"
    # A cancel from another thread while the read waits for rows.
    timer = threading.Timer(0.3, stop.set)
    timer.start()
    started = time.monotonic()
    with pytest.raises(Cancelled):
        _table(native.run("SELECT g AS v FROM generate_series(1, 3) g, pg_sleep(5)", (), LIMITS, stop, returns_rows=True, retry_safe=True))
    assert time.monotonic() - started < 4.5
    timer.join()
    stop.clear()
    # After all of that, the pool's connection reads normally.
    got = _table(native.run("SELECT 42 AS v", (), LIMITS, stop, returns_rows=True, retry_safe=True))
    assert got.column("v").to_pylist() == [42]


def test_a_half_read_result_never_reaches_the_next_statement(pair: tuple[PostgresExecutor, PostgresExecutor], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(copy_read, "BATCH_ROWS", 100)
    native, _ = pair
    stop = threading.Event()
    result = native.run("SELECT g AS v FROM generate_series(1, 100000) g", (), LIMITS, stop, returns_rows=True, retry_safe=True)
    first = next(iter(result.batches))
    assert first.num_rows == 100
    assert result.close is not None
    result.close()  # stopped early, as max_rows does
    assert native._copy == [], "a connection in the middle of a COPY went back to the pool"
    got = _table(native.run("SELECT 'next' AS v", (), LIMITS, stop, returns_rows=True, retry_safe=True))
    assert got.column("v").to_pylist() == ["next"]


def test_a_lost_connection_is_replaced(pair: tuple[PostgresExecutor, PostgresExecutor], pg_dsn: str) -> None:
    native, _ = pair
    stop = threading.Event()
    _table(native.run("SELECT 1 AS v", (), LIMITS, stop, returns_rows=True, retry_safe=True))
    (con,) = native._copy
    pid = _table(native.run("SELECT pg_backend_pid() AS pid", (), LIMITS, stop, returns_rows=True, retry_safe=True)).column(0)[0].as_py()
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        deadline = time.monotonic() + 10
        while admin.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()[0]:  # type: ignore[index]
            assert time.monotonic() < deadline, "the backend did not end"
            time.sleep(0.01)
    got = _table(native.run("SELECT 'again' AS v", (), LIMITS, stop, returns_rows=True, retry_safe=True))
    assert got.column("v").to_pylist() == ["again"]
    assert native._copy and native._copy[0] is not con


def test_the_decoder_refuses_rows_that_do_not_match_its_kinds(pg_dsn: str) -> None:
    assert pgcopy is not None
    con = pgcopy.CopyConnection(pg_dsn)
    try:
        assert con.describe("SELECT 1::int4 AS a, 'x'::text AS b, 1.5::numeric(10, 2) AS c") == [("a", 23, -1), ("b", 25, -1), ("c", 1700, 655366)]
        # Told int8 for an int4 column: a width error, never a read past the field.
        con.start("SELECT 1::int4 AS a, 'x'::text AS b")
        with pytest.raises(pgcopy.PgError, match="width"):
            con.read((3, 6), 100, 1 << 20)
        con.close()
        con = pgcopy.CopyConnection(pg_dsn)
        # Told one column for two: a count error.
        con.start("SELECT 1::int4 AS a, 'x'::text AS b")
        with pytest.raises(pgcopy.PgError, match="number of columns"):
            con.read((2,), 100, 1 << 20)
        con.close()
        con = pgcopy.CopyConnection(pg_dsn)
        # Told fixed-width kinds for a long text: bounded by the field's own length.
        con.start("SELECT repeat('y', 1000) AS a")
        with pytest.raises(pgcopy.PgError, match="width"):
            con.read((3,), 100, 1 << 20)
        # Never read on after a failed read (the next message would be a later row).
        assert not con.ok
        with pytest.raises(pgcopy.PgError, match="earlier read"):
            con.read((6,), 100, 1 << 20)
        con.close()
        for bad in ((), (10,), (-1,)):
            con = pgcopy.CopyConnection(pg_dsn)
            con.start("SELECT 1::int4 AS a")
            with pytest.raises(ValueError):
                con.read(bad, 100, 1 << 20)
            con.close()
        con = pgcopy.CopyConnection(pg_dsn)
        # A NUL would end the C string early: libpq would run less than was analysed.
        with pytest.raises(ValueError, match="NUL"):
            con.describe("SELECT 1 AS a\x00; DROP TABLE x")
        with pytest.raises(TypeError):
            con.start(5)  # type: ignore[arg-type]
        assert con.describe("SELECT 1 AS a") == [("a", 23, -1)]
    finally:
        con.close()
    with pytest.raises(pgcopy.PgError):
        con.read((2,), 1, 1)
    with pytest.raises(pgcopy.PgError):
        pgcopy.CopyConnection("postgresql://nobody@127.0.0.1:1/none?connect_timeout=5")


def test_closing_while_another_thread_reads_waits_for_that_read(pg_dsn: str) -> None:
    # The service's own shape: a reader thread (prefetch) blocked for rows while the
    # consumer stops early and closes. The close is left to the reader, which the
    # close cancels; libpq's connection is never freed under a running call.
    assert pgcopy is not None
    con = pgcopy.CopyConnection(pg_dsn)
    # Large first rows (so the COPY starts streaming), then a row that sleeps.
    con.start("SELECT repeat('x', 100000) || CASE WHEN g = 5 THEN pg_sleep(30)::text ELSE '' END AS v FROM generate_series(1, 10) g")
    outcome: list[BaseException | object] = []

    def read() -> None:
        try:
            outcome.append(con.read((6,), 100, 1 << 30))
        except BaseException as exc:
            outcome.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        deadline = time.monotonic() + 20
        # The server sleeping inside the statement: the reader is waiting in read().
        while not admin.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep' AND datname = current_database()").fetchone()[0]:  # type: ignore[index]
            assert time.monotonic() < deadline, "the statement never reached its slow row"
            time.sleep(0.01)
    assert reader.is_alive()
    started = time.monotonic()
    con.close()  # another thread is inside read(): deferred, and the statement cancelled
    # Still in the reader's hands, or closed by it already: never run on.
    with pytest.raises(pgcopy.PgError, match=r"in use|closed"):
        con.describe("SELECT 1")
    reader.join(20)
    assert not reader.is_alive() and time.monotonic() - started < 15, "the cancel did not end the read"
    assert isinstance(outcome[0], pgcopy.PgError) and "cancel" in str(outcome[0]).lower(), outcome
    with pytest.raises(pgcopy.PgError, match="closed"):
        con.describe("SELECT 1")  # closed by the reader on its way out


def test_both_kinds_of_result_connection_share_one_budget(pg_dsn: str) -> None:
    ex = PostgresExecutor(pg_dsn, pool_size=1, result_connections=2)
    stop = threading.Event()
    try:
        for i in range(6):
            # Decoded (int, text) and ADBC (numeric) reads in turn, two at once each.
            sql = f"SELECT {i} AS v, 'x' AS w" if i % 2 else f"SELECT {i}::numeric AS v"
            first = ex.run(sql + " FROM generate_series(1, 2)", (), LIMITS, stop, returns_rows=True, retry_safe=True)
            second = ex.run(sql + " FROM generate_series(1, 3)", (), LIMITS, stop, returns_rows=True, retry_safe=True)
            assert (_table(first).num_rows, _table(second).num_rows) == (2, 3)
            assert len(ex._adbc) + len(ex._copy) <= 2
            with psycopg.connect(pg_dsn, autocommit=True) as admin:
                row = admin.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()").fetchone()
                assert row is not None
                # Two result connections at most, the statement pool's one and this one.
                assert row[0] <= 4, row
        assert ex._copy or ex._adbc
    finally:
        ex.close()


def test_errors_on_the_decoder_path_never_quote_the_data(pair: tuple[PostgresExecutor, PostgresExecutor], pg_dsn: str) -> None:
    # PostgreSQL's own text quotes values (invalid input, the statement echo); the
    # decoder's errors go through the same redaction as ADBC's, before and during rows.
    with psycopg.connect(pg_dsn, autocommit=True) as con:
        con.execute("CREATE TABLE s (id int, secret text)")
        con.execute("INSERT INTO s SELECT g, 'n' || g FROM generate_series(1, 5000) g")
        con.execute("INSERT INTO s VALUES (5001, 'tok-9f8e7d')")
    native, _ = pair
    stop = threading.Event()
    for sql in (
        "SELECT 'secret-value'::int AS v",
        "SELECT CASE WHEN id > 5000 THEN secret::int END AS v FROM s ORDER BY id",
        "SELECT (secret || '}')::jsonb::text AS v FROM s WHERE id = 5001",
        "SELECT nosuchcol FROM s WHERE secret = 'secret-value'",
    ):
        with pytest.raises(ExecutionError) as err:
            _table(native.run(sql, (), LIMITS, stop, returns_rows=True, retry_safe=True))
        text = str(err.value)
        assert "secret-value" not in text and "tok-9f8e7d" not in text, (sql, text)
        assert err.value.sqlstate, (sql, text)
    got = _table(native.run("SELECT count(*)::int4 AS n FROM s", (), LIMITS, stop, returns_rows=True, retry_safe=True))
    assert got.column("n").to_pylist() == [5001]


def test_a_stopped_watcher_never_cancels_afterwards() -> None:
    # The watchdog's cancel of a finished statement must not land on the connection's
    # next statement: stop() waits for a cancel in flight, and none starts after it.
    from warden.gateway.execute import _Watcher

    calls: list[str] = []
    entered, release = threading.Event(), threading.Event()

    def slow_cancel() -> None:
        entered.set()
        release.wait(10)
        calls.append("cancel")

    fired = threading.Event()
    watcher = _Watcher(fired, slow_cancel)
    fired.set()
    checker = threading.Thread(target=watcher.check, args=(time.monotonic(),))
    checker.start()
    assert entered.wait(10)
    stopper = threading.Thread(target=watcher.stop)
    stopper.start()
    stopper.join(0.2)
    assert stopper.is_alive(), "stop() returned while the cancel was still running"
    release.set()
    stopper.join(10)
    checker.join(10)
    assert not stopper.is_alive() and calls == ["cancel"]
    late = threading.Event()
    stopped = _Watcher(late, lambda: calls.append("late"))
    stopped.stop()
    late.set()
    stopped.check(time.monotonic())
    assert calls == ["cancel"]


def test_no_column_type_can_change_between_the_description_and_the_copy(pg_dsn: str) -> None:
    # Same-width types (int4 -> float4) would otherwise be read as the old type: the
    # description's locks hold until the COPY has ended, so the ALTER waits.
    assert pgcopy is not None
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute("CREATE TABLE t (v int4)")
        admin.execute("INSERT INTO t VALUES (1), (2)")
        con = pgcopy.CopyConnection(pg_dsn)
        try:
            assert con.describe("SELECT v FROM t") == [("v", 23, -1)]
            admin.execute("SET lock_timeout = '200ms'")
            with pytest.raises(psycopg.errors.LockNotAvailable):
                admin.execute("ALTER TABLE t ALTER v TYPE float4 USING v::float4")
            con.start("SELECT v FROM t")
            got = con.read((2,), 100, 1 << 20)
            assert got is not None and got[0] == 2
            assert con.read((2,), 100, 1 << 20) is None
            assert con.ok, "the transaction did not end with the COPY"
            admin.execute("ALTER TABLE t ALTER v TYPE float4 USING v::float4")  # free now
            assert con.describe("SELECT v FROM t") == [("v", 700, -1)]
            con.execute("ROLLBACK")
            assert con.ok
        finally:
            con.close()
