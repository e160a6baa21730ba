"""The line magic sees the raw text: IPython never pastes Python values into SQL.

IPython expands ``{var}`` and ``$var`` in a magic's line unless the magic opts out;
a ``%sql`` line would then run SQL with the value pasted in. Real kernel, real
gateway, real PostgreSQL: a hostile value must stay text, and ``{{var}}`` must bind.
"""

from __future__ import annotations

from test_kernel import Kernel, analyst, gateway, issuer, kernelspec, pg_data  # noqa: F401 - fixtures

EVIL = "nobody' OR '1'='1"


def _count(k: Kernel, code: str) -> int:
    reply, outputs = k.run(f"evil = {EVIL!r}\nwho = 'Ada Lovelace'\n{code}\nprint(int(r['n'].iloc[0]))")
    assert reply["status"] == "ok", reply
    text = "".join(c.get("text", "") for t, c in outputs if t == "stream")
    return int(text.strip().splitlines()[-1])


def test_braces_in_a_line_magic_are_not_expanded(analyst: Kernel) -> None:  # noqa: F811 - the imported fixture
    # Pasted, the value would turn the filter into OR '1'='1' and count both rows.
    assert _count(analyst, "r = %sql pg SELECT count(*) AS n FROM customers WHERE name = '{evil}'") == 0


def test_dollar_names_in_a_line_magic_are_not_expanded(analyst: Kernel) -> None:  # noqa: F811 - the imported fixture
    assert _count(analyst, "r = %sql pg SELECT count(*) AS n FROM customers WHERE name = '$evil'") == 0


def test_double_braces_in_a_line_magic_bind(analyst: Kernel) -> None:  # noqa: F811 - the imported fixture
    assert _count(analyst, "r = %sql pg SELECT count(*) AS n FROM customers WHERE name = {{evil}}") == 0
    assert _count(analyst, "r = %sql pg SELECT count(*) AS n FROM customers WHERE name = {{who}}") == 1


def test_cell_magic_line_is_not_expanded(analyst: Kernel) -> None:  # noqa: F811 - the imported fixture
    # The cell's first line holds the connection and options: no expansion there either.
    code = "%%sql pg r <<\nSELECT count(*) AS n FROM customers WHERE name = {{evil}}"
    reply, _ = analyst.run("evil = " + repr(EVIL) + "\nwho = 'x'")
    assert reply["status"] == "ok"
    reply, outputs = analyst.run(code)
    assert reply["status"] == "ok", reply
    reply, outputs = analyst.run("print(int(r['n'].iloc[0]))")
    text = "".join(c.get("text", "") for t, c in outputs if t == "stream")
    assert text.strip() == "0"
