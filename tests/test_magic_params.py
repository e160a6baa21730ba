"""Bound parameters: {{var}} and :var become $n; nothing is ever substituted as text."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from typing import Any

import pytest

from warden.magic.params import ParameterError, bind, to_scalar

NS: dict[str, Any] = {
    "x": "x' OR '1'='1",
    "y": 5,
    "name": "Ada",
    "region": "emea",
    "since": dt.date(2026, 1, 2),
}

CASES: list[tuple[str, str, tuple[Any, ...]]] = [
    # sql, expected sql, expected params
    ("SELECT 1", "SELECT 1", ()),
    ("SELECT * FROM t WHERE a = :x", "SELECT * FROM t WHERE a = $1", (NS["x"],)),
    ("SELECT * FROM t WHERE a = {{x}}", "SELECT * FROM t WHERE a = $1", (NS["x"],)),
    ("SELECT * FROM t WHERE a = {{ x }}", "SELECT * FROM t WHERE a = $1", (NS["x"],)),
    ("SELECT :y, {{y}}, :name", "SELECT $1, $1, $2", (5, "Ada")),
    ("WHERE a=:x AND b=:y", "WHERE a=$1 AND b=$2", (NS["x"], 5)),
    ("WHERE a IN (:x,:y)", "WHERE a IN ($1,$2)", (NS["x"], 5)),
    ("SELECT '{{name}}'", "SELECT $1", ("Ada",)),  # the JupySQL habit: still bound
    # casts, slices, times, named arguments stay
    ("SELECT a::int, b :: text FROM t", "SELECT a::int, b :: text FROM t", ()),
    ("SELECT :y::int", "SELECT $1::int", (5,)),
    ("SELECT arr[1:y] FROM t", "SELECT arr[1:y] FROM t", ()),
    ("SELECT f(a := 1)", "SELECT f(a := 1)", ()),
    ("SELECT {'k': 1}", "SELECT {'k': 1}", ()),
    # strings, identifiers and comments are never touched
    ("SELECT ':x', ':y -- x'", "SELECT ':x', ':y -- x'", ()),
    ("SELECT 'it''s :x'", "SELECT 'it''s :x'", ()),
    ("SELECT E'it\\'s :x', :y", "SELECT E'it\\'s :x', $1", (5,)),
    ('SELECT ":x" FROM t', 'SELECT ":x" FROM t', ()),
    ("SELECT `:x` FROM t", "SELECT `:x` FROM t", ()),
    ("SELECT 1 -- :x {{y}}\n, :y", "SELECT 1 -- :x {{y}}\n, $1", (5,)),
    ("SELECT /* :x /* nested :y */ still :x */ :y", "SELECT /* :x /* nested :y */ still :x */ $1", (5,)),
    ("SELECT $$ :x {{y}} $$, :y", "SELECT $$ :x {{y}} $$, $1", (5,)),
    ("SELECT $tag$ :x $inner$ $tag$, :y", "SELECT $tag$ :x $inner$ $tag$, $1", (5,)),
    ("SELECT '12:30'::time, :y", "SELECT '12:30'::time, $1", (5,)),
    ("SELECT a$b:y", "SELECT a$b:y", ()),  # no placeholder after an identifier character
    ("SELECT * FROM t WHERE d >= :since", "SELECT * FROM t WHERE d >= $1", ("2026-01-02",)),
]


@pytest.mark.parametrize(("sql", "expected", "params"), CASES)
def test_bind(sql: str, expected: str, params: tuple[Any, ...]) -> None:
    bound = bind(sql, NS.__getitem__)
    assert bound.sql == expected
    assert bound.params == params


def test_template_inside_a_longer_literal_is_an_error_not_a_substitution() -> None:
    with pytest.raises(ParameterError, match=r"'%' \|\| \{\{ x \}\} \|\| '%'"):
        bind("SELECT * FROM t WHERE a LIKE '%{{ x }}%'", NS.__getitem__)


def test_hostile_values_travel_as_values() -> None:
    hostile = ["'; DROP TABLE customers; --", "$1", "{{y}}", ":y", "$$ $$", "\\' OR 1=1", "a\x00b"]
    for value in hostile:
        bound = bind("SELECT * FROM t WHERE a = :v", {"v": value}.__getitem__)
        assert bound.sql == "SELECT * FROM t WHERE a = $1"
        assert bound.params == (value,)


@pytest.mark.parametrize(
    ("sql", "fragment"),
    [
        ("SELECT :nope", "'nope' is not defined"),
        ("SELECT {{nope}}", "'nope' is not defined"),
        ("SELECT {{ y + 1 }}", "expressions are not evaluated"),
        ("SELECT {{ y", "unclosed"),
        ("SELECT $1, :y", r"mixes \$n placeholders"),
        ("SELECT {{y.__class__}}", "private attributes"),
        ("SELECT {{y.nope}}", "no attribute"),
    ],
)
def test_binding_errors(sql: str, fragment: str) -> None:
    with pytest.raises(ParameterError, match=fragment):
        bind(sql, NS.__getitem__)


def test_dotted_names_read_attributes() -> None:
    class Box:
        limit = 3

    bound = bind("SELECT {{box.limit}}", {"box": Box()}.__getitem__)
    assert bound.params == (3,) and bound.names == ("box.limit",)


SCALARS: list[tuple[Any, Any]] = [
    (None, None),
    (True, True),
    (7, 7),
    (1.5, 1.5),
    ("s", "s"),
    (dt.datetime(2026, 1, 2, 3, 4, 5), "2026-01-02T03:04:05"),
    (dt.time(12, 30), "12:30:00"),
    (decimal.Decimal("10.50"), "10.50"),
    (uuid.UUID(int=1), "00000000-0000-0000-0000-000000000001"),
]


@pytest.mark.parametrize(("value", "expected"), SCALARS)
def test_scalars(value: Any, expected: Any) -> None:
    assert to_scalar("v", value) == expected


def test_numpy_and_pandas_values() -> None:
    np = pytest.importorskip("numpy")
    pd = pytest.importorskip("pandas")
    assert to_scalar("v", np.int64(3)) == 3 and type(to_scalar("v", np.int64(3))) is int
    assert to_scalar("v", np.float32(0.5)) == 0.5
    assert to_scalar("v", np.bool_(True)) is True
    assert to_scalar("v", pd.Timestamp("2026-01-02")) == "2026-01-02T00:00:00"
    assert to_scalar("v", pd.NA) is None and to_scalar("v", pd.NaT) is None


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ([1, 2], "one placeholder binds one value"),
        ({"a": 1}, "one placeholder binds one value"),
        (float("nan"), "NaN"),
        (float("inf"), "NaN and infinity"),
        (b"raw", "bytes"),
        (object(), "object"),
        (dt.timedelta(seconds=3), "timedelta"),
    ],
)
def test_unbindable_values(value: Any, fragment: str) -> None:
    with pytest.raises(ParameterError, match=fragment):
        to_scalar("v", value)
