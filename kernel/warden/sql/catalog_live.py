"""Load a ``Catalog`` from a live database.

``load_postgres_catalog`` reads ``pg_class``/``pg_attribute`` in one query (plus one
for the search path); ``load_duckdb_catalog`` reads ``duckdb_columns()`` and
``duckdb_views()``. Both return names exactly as the database spells them (the
``Catalog`` itself lower-cases DuckDB names, since DuckDB resolves identifiers
case-insensitively).

Errors (unreachable server, bad DSN, a failing catalog query) raise ``CatalogError``
whose message never contains the password, or any other secret from the DSN.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

from warden.errors import CatalogError
from warden.sql.catalog import Catalog, Relation

if TYPE_CHECKING:
    import psycopg

__all__ = ["CatalogCache", "load_catalog", "load_duckdb_catalog", "load_postgres_catalog"]

#: Seconds to wait for a PostgreSQL server when the DSN does not say (libpq waits forever).
DEFAULT_CONNECT_TIMEOUT = 10

_PG_EXCLUDED = ("pg_catalog", "information_schema")

# relkind: r table, p partitioned table, f foreign table, v view, m materialized view.
# A relation is listed when the role holds any privilege on it or on one of its
# columns, or is a member of its owner -- the rule information_schema.tables uses.
# Its columns are all of them (attnum > 0, not dropped), in ordinal order.
_PG_RELATIONS_SQL = """
SELECT n.nspname::text,
       c.relname::text,
       c.relkind::text,
       ARRAY(SELECT a.attname::text
               FROM pg_catalog.pg_attribute a
              WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
              ORDER BY a.attnum) AS columns,
       CASE WHEN c.relkind IN ('v', 'm') THEN pg_catalog.pg_get_viewdef(c.oid, true) END,
       (SELECT pn.nspname::text || '.' || pc.relname::text
          FROM pg_catalog.pg_inherits i
          JOIN pg_catalog.pg_class pc ON pc.oid = i.inhparent
          JOIN pg_catalog.pg_namespace pn ON pn.oid = pc.relnamespace
         WHERE i.inhrelid = c.oid
         ORDER BY i.inhseqno LIMIT 1) AS parent
  FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p', 'f', 'v', 'm')
   AND {schema_filter}
   AND (pg_catalog.pg_has_role(c.relowner, 'USAGE')
        OR pg_catalog.has_table_privilege(c.oid,
             'SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER')
        OR pg_catalog.has_any_column_privilege(c.oid, 'SELECT, INSERT, UPDATE, REFERENCES'))
 ORDER BY 1, 2
"""

# User-defined functions (outside the engine's schemas, not owned by an extension).
# Analysis treats a call of one of these names as opaque, even when a built-in has
# the same name (see warden.sql.functions). An extension's functions are the admin's
# code, not a user's: they are not in this list, and those the allow table does not
# list stay unknown (denied) all the same.
_PG_USER_FUNCTIONS_SQL = """
SELECT DISTINCT n.nspname::text, p.proname::text
  FROM pg_catalog.pg_proc p
  JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                    WHERE d.classid = 'pg_catalog.pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e')
"""

_PG_DEFAULT_SCHEMA_FILTER = (
    "n.nspname <> ALL (%(excluded)s::text[])"
    r" AND n.nspname NOT LIKE 'pg\_toast%%'"
    r" AND n.nspname NOT LIKE 'pg\_temp%%'"
)


# --------------------------------------------------------------------------- secrets


_SECRET_KEYS = r"(?:password|passwd|pwd|token|motherduck_token|secret|sslpassword|api_key)"
_KV_SECRET = re.compile(rf"(?i)\b({_SECRET_KEYS}\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&;]+)")
_URI_USERINFO = re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://[^:/?#@\s]*:)([^@/\s]*)(@)")


def _secrets_in(target: str) -> list[str]:
    """Secret values found in a DSN/conninfo/path string (raw and URL-decoded)."""
    from urllib.parse import unquote

    found: list[str] = []
    for m in _KV_SECRET.finditer(target):
        val = m.group(2)
        if len(val) >= 2 and val[0] == val[-1] == "'":
            val = val[1:-1].replace("\\'", "'").replace("\\\\", "\\")
        found.append(val)
    found += [m.group(2) for m in _URI_USERINFO.finditer(target)]
    out: list[str] = []
    for val in found:
        for v in (val, unquote(val)):
            if v and v not in out:
                out.append(v)
    return sorted(out, key=len, reverse=True)


def _redact(text: str, target: str | None = None, extra: Sequence[str] = ()) -> str:
    """``text`` with every secret of ``target`` (and of ``text`` itself) replaced by ***."""
    secrets = [*extra, *(_secrets_in(target) if target else [])]
    for val in sorted(set(secrets), key=len, reverse=True):
        # A very short secret would mangle the whole message; the patterns below
        # still catch it in key=value and URI form.
        if len(val) >= 4:
            text = text.replace(val, "***")
    text = _KV_SECRET.sub(r"\1***", text)
    return _URI_USERINFO.sub(r"\1***\3", text)


# --------------------------------------------------------------------------- PostgreSQL


def _pg_target_description(params: dict[str, Any]) -> str:
    host = params.get("host") or params.get("hostaddr") or os.environ.get("PGHOST") or "localhost"
    port = params.get("port") or os.environ.get("PGPORT") or "5432"
    parts = [f"host={host}", f"port={port}"]
    for key in ("dbname", "user"):
        if params.get(key):
            parts.append(f"{key}={params[key]}")
    return " ".join(parts)


def _pg_connect(dsn: str) -> psycopg.Connection[Any]:
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(dsn)
    except psycopg.Error as exc:
        raise CatalogError(
            f"invalid PostgreSQL connection string: {_redact(str(exc), dsn)}"
        ) from None
    secrets = [str(params["password"])] if params.get("password") else []
    where = _redact(_pg_target_description(params), dsn, secrets)
    kwargs: dict[str, Any] = {"autocommit": True}
    if "connect_timeout" not in params and "PGCONNECT_TIMEOUT" not in os.environ:
        kwargs["connect_timeout"] = DEFAULT_CONNECT_TIMEOUT
    try:
        return psycopg.connect(dsn, **kwargs)
    except psycopg.Error as exc:
        reason = _redact(str(exc).strip(), dsn, secrets)
        # ``from None``: the original exception (and its traceback) stays out of logs.
        raise CatalogError(f"cannot connect to PostgreSQL ({where}): {reason}") from None


def _clean_viewdef(text: str | None) -> str | None:
    if text is None:
        return None
    text = text.strip()
    while text.endswith(";"):
        text = text[:-1].rstrip()
    return text or None


def load_postgres_catalog(
    conn: psycopg.Connection[Any] | str,
    *,
    schemas: Sequence[str] | None = None,
) -> Catalog:
    """The catalog of a PostgreSQL database as the connected role sees it.

    ``conn`` is an open psycopg 3 connection (left open, its transaction state
    untouched: the reads run in their own transaction or savepoint) or a DSN /
    conninfo string (connected to and closed here).

    Lists every table, partitioned table, foreign table, view and materialized view
    in ``schemas`` (default: all but ``pg_catalog``, ``information_schema``,
    ``pg_toast*`` and ``pg_temp*``) on which the role holds some privilege. Views
    and materialized views are ``kind="view"`` with ``pg_get_viewdef(oid, true)``
    as their definition (trailing ``;`` removed). The search path is
    ``current_schemas(false)``, which resolves ``"$user"`` and drops schemas that
    do not exist; it may be empty.
    """
    import psycopg
    from psycopg.rows import tuple_row

    owned = isinstance(conn, str)
    dsn = conn if isinstance(conn, str) else None
    connection = _pg_connect(conn) if isinstance(conn, str) else conn

    params: dict[str, Any] = {}
    if schemas is None:
        schema_filter = _PG_DEFAULT_SCHEMA_FILTER
        params["excluded"] = list(_PG_EXCLUDED)
    else:
        schema_filter = "n.nspname = ANY (%(schemas)s::text[])"
        params["schemas"] = [str(s) for s in schemas]
    query = _PG_RELATIONS_SQL.format(schema_filter=schema_filter)

    rows: list[tuple[Any, ...]] = []
    functions: list[tuple[Any, ...]] = []
    path_row: tuple[Any, ...] | None = None
    try:
        for attempt in range(3):
            try:
                with connection.transaction(), connection.cursor(row_factory=tuple_row) as cur:
                    cur.execute("SELECT pg_catalog.current_schemas(false)::text[]")
                    path_row = cur.fetchone()
                    cur.execute(query, params)
                    rows = cur.fetchall()
                    cur.execute(_PG_USER_FUNCTIONS_SQL)
                    functions = cur.fetchall()
                break
            except (psycopg.errors.InternalError_, psycopg.errors.UndefinedTable):
                # A relation dropped while we read ("cache lookup failed"): read again.
                if attempt == 2:
                    raise
    except psycopg.Error as exc:
        raise CatalogError(
            f"cannot read the PostgreSQL catalog: {_redact(str(exc).strip(), dsn)}"
        ) from None
    finally:
        if owned:
            connection.close()

    relations = [
        Relation(
            schema=schema,
            name=name,
            columns=tuple(columns or ()),
            kind="view" if relkind in ("v", "m") else "table",
            definition=_clean_viewdef(viewdef) if relkind in ("v", "m") else None,
            parent=parent,
        )
        for schema, name, relkind, columns, viewdef, parent in rows
    ]
    search_path = tuple(path_row[0] or ()) if path_row else ()
    # Catalog.build replaces an empty path by ("public",); keep the server's answer exact.
    user_functions = [(str(schema), str(name)) for schema, name in functions]
    return Catalog.build("postgres", relations, user_functions=user_functions).with_search_path(search_path)


# --------------------------------------------------------------------------- DuckDB

_DUCKDB_RELATIONS_SQL = """
WITH rels AS (
    SELECT schema_name, table_name AS name, NULL::VARCHAR AS sql
      FROM duckdb_tables()
     WHERE database_name = current_database() AND NOT internal AND NOT temporary
    UNION ALL
    SELECT schema_name, view_name AS name, sql
      FROM duckdb_views()
     WHERE database_name = current_database() AND NOT internal AND NOT temporary
), cols AS (
    SELECT schema_name, table_name AS name,
           list(column_name ORDER BY column_index) AS columns
      FROM duckdb_columns()
     WHERE database_name = current_database() AND NOT internal
     GROUP BY ALL
)
SELECT r.schema_name, r.name, coalesce(c.columns, []::VARCHAR[]), r.sql
  FROM rels r LEFT JOIN cols c USING (schema_name, name)
 ORDER BY 1, 2
"""


def duckdb_view_query(create_sql: str) -> str | None:
    """The SELECT of a ``CREATE VIEW ... AS <query>`` statement, in DuckDB SQL.

    Parsed with sqlglot (dialect duckdb) and the ``Create`` node's ``.expression``
    is rendered back. When the view has a column list (``CREATE VIEW v (x, y) AS
    SELECT a, b ...``) the renames are applied to the query, so the returned SELECT
    outputs the view's own column names: projections are aliased positionally, or,
    for ``*`` and set operations, the query is wrapped as
    ``SELECT * FROM (<query>) AS _v(x, y)``. Returns None when the text is not a
    CREATE VIEW that sqlglot can parse.
    """
    try:
        statements = sqlglot.parse(create_sql, read="duckdb")
    except SqlglotError:
        return None
    stmts = [s for s in statements if s is not None]
    if len(stmts) != 1 or not isinstance(stmts[0], exp.Create):
        return None
    create = stmts[0]
    query = create.expression
    if not isinstance(query, exp.Query):
        return None
    target = create.this
    renames: list[str] = []
    if isinstance(target, exp.Schema):
        renames = [c.name for c in target.expressions if isinstance(c, exp.Identifier | exp.Column)]
    if renames:
        query = _rename_outputs(query, renames)
    sql: str = query.sql(dialect="duckdb")
    return sql


def _rename_outputs(query: exp.Query, names: list[str]) -> exp.Query:
    """``query`` with its first ``len(names)`` output columns renamed to ``names``."""
    if isinstance(query, exp.Select) and not any(p.is_star for p in query.expressions):
        projections = list(query.expressions)
        if len(names) <= len(projections):
            out = query.copy()
            out.set(
                "expressions",
                [
                    exp.alias_(p.unalias(), names[i], quoted=True) if i < len(names) else p
                    for i, p in enumerate(projections)
                ],
            )
            return out
    alias = exp.TableAlias(
        this=exp.to_identifier("_v"),
        columns=[exp.to_identifier(n, quoted=True) for n in names],
    )
    return exp.select("*").from_(exp.Subquery(this=query.copy(), alias=alias))


def _split_quoted(text: str, sep: str, *, unquote: bool = True) -> list[str]:
    """Split on ``sep`` outside double quotes; unquote each part (``""`` is a quote)."""
    parts: list[str] = []
    buf: list[str] = []
    quoted = False
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == '"':
            if quoted and text[i + 1 : i + 2] == '"':
                buf.append('"' if unquote else '""')
                i += 1
            else:
                quoted = not quoted
                if not unquote:
                    buf.append(ch)
        elif ch == sep and not quoted:
            parts.append("".join(buf).strip())
            buf = []
        elif quoted or not ch.isspace():
            buf.append(ch)
        i += 1
    parts.append("".join(buf).strip())
    return parts


def _duckdb_search_path(setting: str, database: str, current_schema: str) -> tuple[str, ...]:
    """Schemas of the default database named by DuckDB's ``search_path`` setting.

    Entries are ``schema`` or ``catalog.schema`` (quoted with ``"`` when needed);
    entries of other attached databases are dropped. Empty -> ``current_schema``.
    """
    path: list[str] = []
    for entry in _split_quoted(setting, ",", unquote=False):
        if not entry:
            continue
        parts = _split_quoted(entry, ".")
        if len(parts) == 1:
            path.append(parts[0])
        elif len(parts) == 2 and parts[0].lower() == database.lower():
            path.append(parts[1])
    return tuple(dict.fromkeys(path)) or (current_schema,)


def load_duckdb_catalog(conn: Any, *, read_only: bool = True) -> Catalog:
    """The catalog of the default database of a DuckDB connection.

    ``conn`` is a ``duckdb.DuckDBPyConnection`` (left open) or a database path
    (opened with ``read_only`` and closed here). Lists the tables and views of the
    current database (``current_database()``), skipping internal and temporary
    ones and other attached databases. View definitions are the SELECT of
    ``duckdb_views().sql`` (see ``duckdb_view_query``); a view whose text cannot
    be parsed keeps ``definition=None``, so analysis of it fails closed. The search
    path is DuckDB's ``search_path`` setting restricted to this database, or
    ``current_schema()`` (normally ``main``) when that is empty.
    """
    import duckdb

    target = os.fspath(conn) if isinstance(conn, str | os.PathLike) else None
    if target is not None:
        try:
            connection = duckdb.connect(target, read_only=read_only)
        except duckdb.Error as exc:
            raise CatalogError(
                f"cannot open DuckDB database {_redact(target, target)!s}: "
                f"{_redact(str(exc), target)}"
            ) from None
    else:
        connection = conn
    try:
        head = connection.execute(
            "SELECT current_database(), current_schema(), current_setting('search_path')"
        ).fetchone()
        rows = connection.execute(_DUCKDB_RELATIONS_SQL).fetchall()
        functions = connection.execute(
            "SELECT DISTINCT schema_name, function_name FROM duckdb_functions() WHERE NOT internal"
        ).fetchall()
    except duckdb.Error as exc:
        raise CatalogError(f"cannot read the DuckDB catalog: {_redact(str(exc), target)}") from None
    finally:
        if target is not None:
            connection.close()

    if head is None:
        raise CatalogError("cannot read the DuckDB catalog: no current database")
    database, current_schema, path_setting = (str(v) if v is not None else "" for v in head)
    relations = [
        Relation(
            schema=str(schema),
            name=str(name),
            columns=tuple(str(c) for c in columns),
            kind="table" if view_sql is None else "view",
            definition=None if view_sql is None else duckdb_view_query(str(view_sql)),
        )
        for schema, name, columns, view_sql in rows
    ]
    search_path = _duckdb_search_path(path_setting, database, current_schema or "main")
    user_functions = [(str(schema), str(name)) for schema, name in functions]
    return Catalog.build("duckdb", relations, search_path, user_functions)


# --------------------------------------------------------------------------- dispatch


def load_catalog(dialect: str, target: Any) -> Catalog:
    """Load the live catalog of ``target`` (a connection, DSN or path) for ``dialect``."""
    name = dialect.lower()
    if name in ("postgres", "postgresql"):
        return load_postgres_catalog(target)
    if name == "duckdb":
        return load_duckdb_catalog(target)
    raise CatalogError(f"unsupported dialect {dialect!r}; use one of postgres, duckdb")


class CatalogCache:
    """A catalog loaded on first use, kept for ``ttl`` seconds, refreshable on demand.

    ``get()`` is cheap while fresh; ``refresh()`` reloads now (after DDL, say). A
    failed reload keeps serving the previous catalog and re-raises, so callers
    can fail closed on that request without losing the last good state.
    """

    def __init__(self, loader: Any, *, ttl: float = 300.0) -> None:
        import threading

        self._loader = loader
        self._ttl = ttl
        self._catalog: Catalog | None = None
        self._loaded_at = 0.0
        self._lock = threading.Lock()

    def get(self) -> Catalog:
        import time

        with self._lock:
            if self._catalog is None or time.monotonic() - self._loaded_at > self._ttl:
                return self._reload_locked()
            return self._catalog

    def refresh(self) -> Catalog:
        with self._lock:
            return self._reload_locked()

    def _reload_locked(self) -> Catalog:
        import time

        catalog = self._loader()
        if not isinstance(catalog, Catalog):
            raise CatalogError("the catalog loader did not return a Catalog")
        self._catalog = catalog
        self._loaded_at = time.monotonic()
        return catalog
