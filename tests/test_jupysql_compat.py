"""JupySQL compatibility (issue 13): cells written as JupySQL's documentation writes them,
run in a real warden kernel (jupyter_client) against a real gateway (OIDC, real
PostgreSQL ``pg`` and DuckDB ``dk``). Each test checks the result, not only the status.

Sources of the examples: JupySQL's docs, api/magic-sql.md (result API, --save/--with,
--file, templated and programmatic queries), api/configuration.md (SqlMagic settings),
compose.md (snippets that use snippets), howto (``x <<``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import yaml

from gateway_harness import GatewayProcess, seed_duckdb
from oidc_issuer import OIDCIssuer
from test_kernel import Kernel, all_text, analyst, gateway, issuer, kernel_env, kernelspec, pg_data  # noqa: F401 - fixtures


def ok(k: Kernel, code: str) -> str:
    reply, outputs = k.run(code)
    assert reply["status"] == "ok", (reply, all_text(outputs))
    return all_text(outputs)


def fails(k: Kernel, code: str) -> str:
    reply, outputs = k.run(code)
    assert reply["status"] == "error", all_text(outputs)
    return all_text(outputs)


@pytest.fixture(scope="module")
def jk(analyst: Kernel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kernel]:  # noqa: F811 - the imported fixture
    where = tmp_path_factory.mktemp("jupysql")
    ok(analyst, f"import os; os.chdir({str(where)!r})")
    yield analyst


# -- 2. %load_ext sql, %jupysql, nothing replaces warden's %sql ------------------------------


def test_load_ext_sql_keeps_warden_and_says_so(jk: Kernel) -> None:
    text = ok(jk, "%load_ext sql")
    assert "warden's, already loaded" in text and "JupySQL's are not used" in text
    ok(jk, "%reload_ext sql")
    ok(jk, "n = %sql dk SELECT count(*) AS n FROM orders")
    assert jk.eval_json("int(n['n'][0])") == 20
    # JupySQL's alias
    ok(jk, "%%jupysql dk\nr_alias <<\nSELECT max(amount) AS m FROM orders")
    assert jk.eval_json("float(r_alias['m'][0])") == 30.0


def test_another_sql_magic_cannot_replace_wardens(jk: Kernel) -> None:
    code = (
        "from IPython.core.magic import Magics, magics_class, line_cell_magic\n"
        "@magics_class\nclass Other(Magics):\n"
        "    @line_cell_magic\n    def sql(self, line, cell=None):\n        return 'other'\n"
        "get_ipython().register_magics(Other)\n"
        "get_ipython().register_magic_function(lambda line: 'other', 'line', 'sql')\n"
    )
    text = ok(jk, code)
    assert "tried to replace" in text and "%sql" in text and "warden's stay" in text
    ok(jk, "one = %sql dk SELECT 1 AS one")
    assert jk.eval_json("[int(one['one'][0]), 'warden' in one.attrs]") == [1, True]


# -- 1. the result-set API ---------------------------------------------------------------------


def test_result_set_api(jk: Kernel) -> None:
    ok(jk, "result = %sql dk SELECT id, amount, region FROM orders ORDER BY id LIMIT 3")
    assert jk.eval_json("result[0]") == [1, 11.0, "emea"]
    assert jk.eval_json("result[-1]") == [3, 13.0, "emea"]
    assert jk.eval_json("result.dict()") == {"id": [1, 2, 3], "amount": [11.0, 12.0, 13.0], "region": ["emea", "amer", "emea"]}
    assert jk.eval_json("list(result.dicts())")[1] == {"id": 2, "amount": 12.0, "region": "amer"}
    assert jk.eval_json("result.csv()").splitlines() == ["id,amount,region", "1,11.0,emea", "2,12.0,amer", "3,13.0,emea"]
    # DataFrame(): a plain pandas DataFrame that still says what the gateway did
    assert jk.eval_json("[type(result.DataFrame()).__name__, result.DataFrame().attrs['warden']['connection'], "
                        "bool(result.DataFrame().attrs['warden']['event_id'])]") == ["DataFrame", "dk", True]  # fmt: skip
    assert jk.eval_json("[type(result.PolarsDataFrame()).__module__.split('.')[0], result.PolarsDataFrame().shape]") == ["polars", [3, 3]]
    # today's DataFrame behaviour stays: columns, pandas methods, attrs
    assert jk.eval_json("[result['amount'].sum(), result.shape, 'warden' in result.head(1).attrs]") == [36.0, [3, 3], True]


def test_csv_to_a_file(jk: Kernel) -> None:
    text = ok(jk, "result = %sql dk SELECT id FROM orders ORDER BY id LIMIT 2\nresult.csv(filename='my_data.csv')")
    assert "CSV results at my_data.csv" in text
    assert jk.eval_json("open('my_data.csv').read().splitlines()") == ["id", "1", "2"]


def test_result_set_of_masked_columns_stays_masked(jk: Kernel) -> None:
    ok(jk, "masked = %sql pg SELECT id, email FROM customers ORDER BY id")
    assert jk.eval_json("masked[0][1]") == "****@analytical.example"
    assert jk.eval_json("list(masked.DataFrame().attrs['warden']['masked'])") == ["email"]
    assert "ada@" not in jk.eval_json("masked.csv()")


# -- 3. composing queries -------------------------------------------------------------------------


def test_save_no_execute_then_with(jk: Kernel) -> None:
    text = ok(jk, "%%sql dk --save larger_than_20 --no-execute\nSELECT id, amount FROM orders WHERE amount > 20")
    assert "saved snippet larger_than_20" in text
    ok(jk, "%%sql dk --with larger_than_20\nr <<\nSELECT count(*) AS n FROM larger_than_20 WHERE amount < 25")
    assert jk.eval_json("int(r['n'][0])") == 4
    # short flags, and a snippet that uses a snippet, expanded without --with
    ok(jk, "%%sql dk -S top -N\nSELECT * FROM larger_than_20 WHERE amount >= 28")
    ok(jk, "top_rows = %sql dk SELECT id FROM top ORDER BY id")
    assert jk.eval_json("top_rows['id'].tolist()") == [18, 19, 20]
    # a cell with its own WITH gets the snippets added to its list
    ok(jk, "%%sql dk\nw <<\nWITH mine AS (SELECT id FROM top) SELECT count(*) AS n FROM mine")
    assert jk.eval_json("int(w['n'][0])") == 3


def test_the_gateway_decides_on_the_expanded_sql(jk: Kernel) -> None:
    # The snippet reads a table the policy denies: saving runs nothing, using it is denied.
    ok(jk, "%%sql pg --save tokens --no-execute\nSELECT token FROM secrets")
    text = fails(jk, "%sql pg SELECT count(*) FROM tokens")
    assert "Denied" in text and "secrets" in text
    assert "tok-should-never-leak" not in text


def test_the_gateway_records_the_expanded_sql(jk: Kernel, gateway: GatewayProcess, issuer: OIDCIssuer) -> None:  # noqa: F811 - the imported fixtures
    from warden.gateway.client import GatewayClient

    ok(jk, "%%sql dk --save recorded_snippet --no-execute\nSELECT id FROM orders WHERE amount > 29")
    ok(jk, "rec = %sql dk SELECT count(*) AS n FROM recorded_snippet")
    assert jk.eval_json("int(rec['n'][0])") == 1
    event_id = jk.eval_json("rec.attrs['warden']['event_id']")
    session_id = jk.eval_json("__import__('warden.kernel.session', fromlist=['x']).get_session().session_id")
    with GatewayClient(gateway.url, token=issuer.issue(sub="aud", groups=["audit"])) as auditor:
        events = auditor.audit(session_id=session_id, limit="500")
    decision = next(e for e in events if e.get("event_id") == event_id)
    assert "recorded_snippet AS (" in decision["sql"] and "orders" in decision["sql"]
    assert "orders" in str(decision["objects"])  # the snippet's table is recorded as read


def test_with_unknown_snippet_is_a_clear_error(jk: Kernel) -> None:
    text = fails(jk, "%%sql dk --with nothing_saved\nSELECT 1")
    assert "no snippet of that name" in text


# -- 5. cell syntax -----------------------------------------------------------------------------


def test_cell_syntax(jk: Kernel) -> None:
    ok(jk, "%%sql dk\nfirst <<\nSELECT min(id) AS m FROM orders")
    assert jk.eval_json("int(first['m'][0])") == 1
    ok(jk, "%%sql dk second = <<\nSELECT max(id) AS m FROM orders")
    assert jk.eval_json("int(second['m'][0])") == 20
    ok(jk, "%%sql dk third << SELECT count(*) AS n\nFROM orders\nWHERE region = 'emea'")
    assert jk.eval_json("int(third['n'][0])") == 10


def test_file(jk: Kernel) -> None:
    ok(jk, "from pathlib import Path\nPath('my-query.sql').write_text('SELECT id FROM orders\\nORDER BY id\\nLIMIT 3\\n')")
    ok(jk, "from_file = %sql dk --file my-query.sql")
    assert jk.eval_json("from_file['id'].tolist()") == [1, 2, 3]
    ok(jk, "%%sql dk -f my-query.sql\nshort <<")
    assert jk.eval_json("len(short)") == 3
    assert "no such file" in fails(jk, "%sql dk -f missing.sql")


def test_templates_names_and_values(jk: Kernel) -> None:
    ok(jk, "table = 'orders'\nregion = \"emea' OR '1'='1\"")
    # {{table}} after FROM is a name; {{region}} is a bound value (the hostile text stays text)
    ok(jk, "t = %sql dk SELECT count(*) AS n FROM {{table}} WHERE region = {{region}}")
    assert jk.eval_json("int(t['n'][0])") == 0
    ok(jk, "region = 'emea'\nt = %sql dk SELECT count(*) AS n FROM {{table}} WHERE region = {{region}}")
    assert jk.eval_json("int(t['n'][0])") == 10
    # programmatic SQL: the whole query is the variable (JupySQL's `%sql {{QUERY}}`)
    ok(jk, "QUERY = 'SELECT id FROM orders ORDER BY id LIMIT 2'\nq = %sql dk {{QUERY}}")
    assert jk.eval_json("q['id'].tolist()") == [1, 2]
    # a "name" that is not a name is never pasted
    ok(jk, "table = 'orders; DROP TABLE orders'")
    assert "must hold a table name" in fails(jk, "%sql dk SELECT * FROM {{table}}")


# -- 6. configuration ------------------------------------------------------------------------------


def test_jupysql_settings(jk: Kernel) -> None:
    text = ok(jk, "%config SqlMagic.displaylimit = None\n%config SqlMagic.autolimit = None")
    assert "not recognized" not in text
    assert jk.eval_json("[get_ipython().find_magic('sql').__self__.displaylimit, get_ipython().find_magic('sql').__self__.autolimit]") == [0, 0]
    ok(jk, "%config SqlMagic.displaylimit = 10")
    for setting in ("named_parameters = True", "autocommit = False", "displaycon = False", "style = 'PLAIN_COLUMNS'"):
        text = ok(jk, f"%config SqlMagic.{setting}")
        assert "accepted:" in text and "not recognized" not in text, setting
    ok(jk, "%config SqlMagic.autopandas = True\np = %sql dk SELECT 1 AS one")
    assert jk.eval_json("[type(p).__name__, hasattr(p, 'dicts'), 'warden' in p.attrs]") == ["DataFrame", False, True]
    text = ok(jk, "%config SqlMagic.autopolars = True\npl_res = %sql dk SELECT 1 AS one")
    assert "turned autopandas off" in text
    assert jk.eval_json("type(pl_res).__module__.split('.')[0]") == "polars"
    ok(jk, "%config SqlMagic.autopolars = False\n%config SqlMagic.polars_dataframe_kwargs = {'schema_overrides': {'id': __import__('polars').Float64}}")
    ok(jk, "r1 = %sql dk SELECT id FROM orders LIMIT 1")
    assert jk.eval_json("str(r1.PolarsDataFrame().dtypes[0])") == "Float64"
    ok(jk, "%config SqlMagic.column_local_vars = True\n%sql dk SELECT id AS col_id, amount AS col_amount FROM orders ORDER BY id LIMIT 2")
    assert jk.eval_json("[list(col_id), list(col_amount)]") == [[1, 2], [11.0, 12.0]]
    ok(jk, "%config SqlMagic.column_local_vars = False")


# -- 8. a Python engine is not a warden connection --------------------------------------------------


def test_engine_variable_is_refused_at_once(jk: Kernel) -> None:
    text = fails(jk, "import sqlite3\nengine = sqlite3.connect(':memory:')\n%sql engine")
    assert "`engine` is a Python variable holding a sqlite3.Connection" in text
    assert "dk" in text and "pg" in text


def test_jupysql_only_flags_are_refused_with_the_reason(jk: Kernel) -> None:
    assert "not a DataFrame" in fails(jk, "%sql dk --persist no_such_frame")
    assert "--creator" in fails(jk, "%sql -c func")



# -- 4. %sqlcmd and %sqlplot through the gateway --------------------------------------------------


def test_sqlcmd_tables_and_columns_show_only_what_the_user_may_read(jk: Kernel) -> None:
    ok(jk, "t = %sqlcmd tables --connection pg")
    names = jk.eval_json("sorted(t.data)")
    assert "customers" in names and "secrets" not in names
    ok(jk, "cols = %sqlcmd columns --connection pg -t customers")
    assert jk.eval_json("[r[0] for r in cols.rows]") == ["id", "name", "email", "ssn", "notes"]
    assert jk.eval_json("[r[2] for r in cols.rows]") == ["", "", "masked", "masked", ""]


def test_sqlcmd_profile_is_computed_in_sql(jk: Kernel) -> None:
    ok(jk, "prof = %sqlcmd profile --connection dk -t orders")
    assert jk.eval_json("[int(prof['amount']['count']), int(prof['amount']['unique']), float(prof['amount']['min']), "
                        "float(prof['amount']['max']), float(prof['amount']['mean'])]") == [20, 20, 11.0, 30.0, 20.5]  # fmt: skip
    assert jk.eval_json("int(prof['region']['unique'])") == 2
    assert jk.eval_json("prof.attrs['warden']['connection']") == "dk"


def test_sqlcmd_test_and_snippets(jk: Kernel) -> None:
    assert jk.eval_json("get_ipython().run_line_magic('sqlcmd', 'test --connection dk -t orders -c amount --greater 10')") is True
    text = fails(jk, "%sqlcmd test --connection dk -t orders -c amount --less-than 25")
    assert "6 row(s) break `amount < 25.0`" in text
    ok(jk, "%%sql dk --save cheap --no-execute\nSELECT * FROM orders WHERE amount < 15")
    ok(jk, "%%sql dk --save cheap_emea --no-execute\nSELECT * FROM cheap WHERE region = 'emea'")
    assert "cheap_emea" in jk.eval_json("get_ipython().run_line_magic('sqlcmd', 'snippets')")
    rendered = jk.eval_json("get_ipython().run_line_magic('sqlcmd', 'snippets cheap_emea')")
    assert rendered.startswith("WITH cheap AS (") and "amount < 15" in rendered
    assert jk.eval_json("get_ipython().run_line_magic('sqlrender', 'cheap_emea')") == rendered
    assert "used by cheap_emea" in fails(jk, "%sqlcmd snippets -d cheap")
    assert "explore is not supported" in fails(jk, "%sqlcmd explore --table orders")


def test_sqlplot_histogram_counts_come_from_sql(jk: Kernel) -> None:
    ok(jk, "ax = %sqlplot histogram --connection dk --table orders --column amount --bins 4")
    counts, edges = jk.eval_json("[list(map(int, ax.patches[0].get_data().values)), list(map(float, ax.patches[0].get_data().edges))]")
    assert counts == [5, 5, 5, 5] and edges == [11.0, 15.75, 20.5, 25.25, 30.0]
    # against the rows themselves (fetched through the gateway too)
    ok(jk, "import numpy as np\nraw = %sql dk SELECT amount FROM orders")
    assert jk.eval_json("np.histogram(raw['amount'], bins=4)[0].tolist()") == counts
    # with a snippet as the table (JupySQL's --with)
    ok(jk, "%%sql dk --save emea_orders --no-execute\nSELECT * FROM orders WHERE region = 'emea'")
    ok(jk, "ax2 = %sqlplot hist --connection dk --table emea_orders --column amount --bins 2 --with emea_orders")
    assert sum(jk.eval_json("list(map(int, ax2.patches[0].get_data().values))")) == 10


def test_sqlplot_boxplot_bar_pie(jk: Kernel) -> None:
    ok(jk, "box = %sqlplot boxplot --connection dk --table orders --column amount")
    median = jk.eval_json("float(box.lines[5].get_ydata()[0])")  # whisker, whisker, cap, cap, box, median
    assert median == 20.5
    ok(jk, "bar = %sqlplot bar --connection dk --table orders --column region")
    assert jk.eval_json("sorted(int(p.get_height()) for p in bar.patches)") == [10, 10]
    ok(jk, "pie = %sqlplot pie --connection dk --table orders --column region")
    assert jk.eval_json("[t.get_text() for t in pie.texts]") == ["amer", "emea"]


def test_sqlplot_over_a_denied_table_is_denied(jk: Kernel) -> None:
    text = fails(jk, "%sqlplot histogram --connection pg --table secrets --column id")
    assert "Denied" in text and "secrets" in text


# -- 7. SQL over the kernel's own DataFrames ------------------------------------------------------


def test_local_dataframes_run_in_the_kernel(jk: Kernel) -> None:
    ok(jk, "import pandas as pd\nmy_df = pd.DataFrame({'x': [1, 2, 3], 'y': ['a', 'b', 'c']})\nlo = 1")
    ok(jk, "loc = %sql local SELECT sum(x) AS s, string_agg(y, '') AS ys FROM my_df WHERE x > {{lo}}")
    assert jk.eval_json("[int(loc['s'][0]), loc['ys'][0], loc.attrs['warden']['connection'], loc.attrs['warden']['frames']]") == [
        5, "bc", "local", {"my_df": [3, 2]}]  # fmt: skip
    assert jk.eval_json("[e for e in get_ipython().kernel.warden.history if e['type'] == 'query.local'][-1]['frames']") == {"my_df": [3, 2]}
    # a frame warden masked stays masked, and says so
    ok(jk, "masked_src = %sql pg SELECT id, email FROM customers ORDER BY id\nm2 = %sql local SELECT email FROM masked_src")
    assert jk.eval_json("[m2['email'][0], list(m2.attrs['warden']['masked'])]") == ["****@analytical.example", ["email"]]
    # the embedded DuckDB reads no files and no other database
    text = fails(jk, "%sql local SELECT * FROM read_csv('/etc/passwd')")
    assert "no database was touched" in text and "root:" not in text
    # and back to the gateway's connections
    ok(jk, "back = %sql dk SELECT count(*) AS n FROM orders")
    assert jk.eval_json("back.attrs['warden']['connection']") == "dk"


# -- 7. --persist / --append: a write through the gateway, decided like an INSERT ---------------------


def test_persist_is_decided_like_an_insert(jk: Kernel) -> None:
    # the analyst role may only SELECT: the write is denied by the gateway, nothing is written
    text = fails(jk, "import pandas as pd\nmy_data = pd.DataFrame({'x': range(3), 'y': range(3)})\n%sql dk --persist my_data")
    assert "Denied" in text and "nothing ran" in text
    assert "my_data" not in jk.eval_json("sorted(get_ipython().run_line_magic('sqlcmd', 'tables --connection dk').data)")


@pytest.fixture(scope="module")
def writer(kernelspec: str, issuer: OIDCIssuer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kernel]:  # noqa: F811 - the imported fixture
    work = tmp_path_factory.mktemp("persistgw")
    seed_duckdb(work / "data.duckdb")
    policy = {"version": 1, "connections": {"dk": {"dialect": "duckdb", "path": "data.duckdb"}},
              "classifications": {"pii.email": ["*.*.customers.email"]},
              "roles": {"eng": {"members": {"groups": ["eng"]}, "statements": ["select", "insert", "ddl"], "masks": {"pii.email": "email"}}}}  # fmt: skip
    (work / "policy.yaml").write_text(yaml.safe_dump(policy))
    config = {"gateway_id": "gw-persist", "mode": "shared", "policy": "policy.yaml", "state_dir": "state",
              "auth": {"mode": "oidc", "issuer": issuer.issuer, "audience": "warden"}}  # fmt: skip
    gw = GatewayProcess(work, dict(os.environ), config).start()
    token = issuer.issue(sub="eve", groups=["eng"], expires_in=3600)
    k = Kernel(kernelspec, kernel_env(WARDEN_GATEWAY_URL=gw.url, WARDEN_TOKEN=token))
    try:
        yield k
    finally:
        k.stop()
        gw.stop()


def test_persist_replace_append_through_the_gateway(writer: Kernel) -> None:
    # JupySQL's examples (api/magic-sql.md: Create table, without index, Append to table)
    ok(writer, "import pandas as pd\nmy_data = pd.DataFrame({'x': range(3), 'y': range(3)})")
    text = ok(writer, "%sql dk --persist my_data")
    assert "wrote 3 rows into my_data on dk through the gateway" in text
    ok(writer, "back = %sql dk SELECT * FROM my_data ORDER BY x")
    assert writer.eval_json("[list(back.columns), back.dict()['x']]") == [["index", "x", "y"], [0, 1, 2]]
    ok(writer, "my_chars = pd.DataFrame({'char': ['a', 'b', 'c']})\n%sql dk --persist my_chars --no-index")
    ok(writer, "chars = %sql dk SELECT * FROM my_chars")
    assert writer.eval_json("[list(chars.columns), sorted(chars.dict()['char'])]") == [["char"], ["a", "b", "c"]]
    ok(writer, "my_data = pd.DataFrame({'x': range(3, 6), 'y': range(3, 6)})\n%sql dk --append my_data")
    ok(writer, "n = %sql dk SELECT count(*) AS n, max(x) AS top FROM my_data")
    assert writer.eval_json("[int(n['n'][0]), int(n['top'][0])]") == [6, 5]
    # persisting twice fails in the database; --persist-replace replaces
    assert "failed" in fails(writer, "%sql dk --persist my_chars --no-index")
    ok(writer, "my_chars = pd.DataFrame({'char': ['z']})\n%sql dk --persist-replace my_chars --no-index")
    ok(writer, "chars = %sql dk SELECT * FROM my_chars")
    assert writer.eval_json("chars.dict()") == {"char": ["z"]}
    # a frame with masked columns is written as the user saw it: masked
    ok(writer, "contacts = %sql dk SELECT id, email FROM customers ORDER BY id")
    text = ok(writer, "%sql dk --persist contacts --no-index")
    assert "email held masked values and were written masked" in text
    ok(writer, "copy = %sql dk SELECT email FROM contacts ORDER BY id")
    assert writer.eval_json("copy.dict()['email'][0]") == "****@analytical.example"
