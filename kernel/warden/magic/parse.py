"""Parsing the ``%%sql`` / ``%sql`` line: the syntax a JupySQL user knows.

    %%sql [NAME] [VAR <<] [options]         SQL in the cell body
    %sql  [NAME] [VAR <<] [options] SQL     one line
    %sql  NAME                              switch the default connection

``NAME`` is a connection name from the gateway's policy, never a connection string:
credentials live in the gateway's configuration (the policy's ``dsn_env``/``dsn_file``).
A URL that carries a password is refused wherever it appears in the cell, so it never
reaches the gateway or the audit log.

Pure functions only; the magic calls :func:`parse_magic`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from warden.errors import WardenError

FORMATS = ("pandas", "arrow", "polars")

#: Words a statement can start with: the first word of a ``%sql`` line is a connection
#: name unless it is one of these (use ``-c NAME`` for a connection named like a keyword).
SQL_START_WORDS = frozenset(
    ["abort", "alter", "analyze", "attach", "begin", "call", "checkpoint", "close", "cluster", "comment", "commit", "copy", "create", "deallocate", "declare", "delete", "desc", "describe", "detach", "discard", "do", "drop", "end", "execute", "explain", "export", "fetch", "from", "grant", "import", "insert", "install", "listen", "load", "lock", "merge", "notify", "pivot", "pragma", "prepare", "refresh", "reindex", "release", "reset", "revoke", "rollback", "savepoint", "select", "set", "show", "start", "summarize", "table", "truncate", "unlisten", "unpivot", "update", "use", "vacuum", "values", "with"]
)

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")
_TARGET = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*<<")
_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.\-]*://")
#: scheme://user:password@ — a URL carrying a password (the password may be empty).
_URL_WITH_PASSWORD = re.compile(r"\b([A-Za-z][A-Za-z0-9+.\-]*)://([^\s/:@'\"]+):([^\s@'\"]*)@")
_CONNINFO_PASSWORD = re.compile(r"(?i)\bpassword\s*=")
#: a libpq key=value connection string: ``host=… user=… password=…``
_CONNINFO = re.compile(r"(?i)(?:^|\s)(?:host|hostaddr|dbname|user|port)=\S+.*\bpassword=\S")

CREDENTIALS_MESSAGE = (
    "connection strings with credentials do not belong in a notebook: the kernel holds no "
    "database credentials. They live in the warden gateway's configuration — the policy "
    "names each connection and the gateway reads its DSN from the environment variable its "
    "`dsn_env` names (or the file `dsn_file` names). Use the connection's name instead, "
    "e.g. `%%sql demo`; `%warden whoami` lists the connections you can use."
)
CONNECTION_STRING_MESSAGE = (
    "connection strings are not accepted: the warden gateway owns every database connection. "
    "Use a connection name from the gateway's policy, e.g. `%%sql demo`; `%warden whoami` "
    "lists them."
)


class MagicSyntaxError(WardenError):
    """The ``%%sql`` line could not be understood; the message says how to write it."""


class CredentialsInCell(MagicSyntaxError):
    """The cell carries a connection string or a password: refused before anything is sent."""


@dataclass(frozen=True)
class MagicLine:
    connection: str | None = None
    target: str | None = None
    sql: str = ""
    no_raise: bool = False
    format: str | None = None
    wait: float | None = None
    limit: int | None = None
    approval_id: str | None = None
    quiet: bool = False
    list_connections: bool = False

    @property
    def switch_only(self) -> bool:
        """``%sql NAME`` alone: make NAME the default connection, run nothing."""
        return bool(self.connection) and not self.sql.strip() and not self.list_connections


_FLAGS = {"--no-raise": "no_raise", "--quiet": "quiet", "-q": "quiet", "--connections": "list_connections", "-l": "list_connections"}
_VALUED = {
    "--connection": "connection", "-c": "connection",
    "--format": "format", "-f": "format",
    "--wait": "wait", "-w": "wait",
    "--limit": "limit", "-n": "limit",
    "--approval": "approval_id",
}  # fmt: skip
_UNSUPPORTED = {
    "--alias": "connection aliases come from the gateway's policy, not from the notebook",
    "-A": "connection aliases come from the gateway's policy, not from the notebook",
    "--creator": "the gateway owns every database connection",
    "--close": "the gateway owns every database connection",
    "-x": "the gateway owns every database connection",
    "--persist": "writing DataFrames into the database is not supported",
    "--persist-replace": "writing DataFrames into the database is not supported",
    "--append": "writing DataFrames into the database is not supported",
    "--file": "run SQL from the cell, where it is audited with the cell",
}
OPTIONS_HELP = (
    "options: NAME (connection), VAR << (assign), -c/--connection NAME, -f/--format "
    "pandas|arrow|polars, -n/--limit ROWS, -w/--wait SECONDS, --approval ID, --no-raise, "
    "-q/--quiet, -l/--connections"
)


def check_credentials(text: str) -> None:
    """Refuse text that carries a URL with a password (anywhere in the cell)."""
    if _URL_WITH_PASSWORD.search(text):
        raise CredentialsInCell(CREDENTIALS_MESSAGE)


def parse_magic(line: str, cell: str | None = None) -> MagicLine:
    """Parse a ``%sql`` line (``cell is None``) or a ``%%sql`` line and its body."""
    check_credentials(line)
    if _CONNINFO.search(line):
        raise CredentialsInCell(CREDENTIALS_MESSAGE)
    if cell is not None:
        check_credentials(cell)
    values: dict[str, object] = {}
    pos = 0
    n = len(line)
    while True:
        while pos < n and line[pos].isspace():
            pos += 1
        if pos >= n:
            break
        m = _TARGET.match(line, pos)
        if m:
            if "target" in values:
                raise MagicSyntaxError(f"two assignment targets in {line!r}; write one `VAR <<`")
            values["target"] = m.group(1)
            pos = m.end()
            continue
        end = pos
        while end < n and not line[end].isspace():
            end += 1
        token = line[pos:end]
        if _URL.search(token) or token.lower().startswith(("postgresql:", "postgres:", "duckdb:", "sqlite:", "mysql:")):
            raise CredentialsInCell(CONNECTION_STRING_MESSAGE)
        if _CONNINFO_PASSWORD.search(token):
            raise CredentialsInCell(CREDENTIALS_MESSAGE)
        if token.startswith("-") and token != "--":
            name, eq, inline = token.partition("=")
            if name in _UNSUPPORTED:
                raise MagicSyntaxError(f"{name} is not supported: {_UNSUPPORTED[name]}. {OPTIONS_HELP}")
            if name in _FLAGS:
                if eq:
                    raise MagicSyntaxError(f"{name} takes no value. {OPTIONS_HELP}")
                values[_FLAGS[name]] = True
                pos = end
                continue
            if name in _VALUED:
                if eq:
                    value, pos = inline, end
                else:
                    vstart = end
                    while vstart < n and line[vstart].isspace():
                        vstart += 1
                    vend = vstart
                    while vend < n and not line[vend].isspace():
                        vend += 1
                    value, pos = line[vstart:vend], vend
                if not value:
                    raise MagicSyntaxError(f"{name} needs a value. {OPTIONS_HELP}")
                values[_VALUED[name]] = _convert(name, value)
                continue
            raise MagicSyntaxError(f"unknown option {name}. {OPTIONS_HELP}")
        if (
            "connection" not in values
            and _IDENT.fullmatch(token)
            and token.lower() not in SQL_START_WORDS
            and (cell is not None or not _rest_starts_assignment(line, end))
        ):
            values["connection"] = token
            pos = end
            continue
        break
    rest = line[pos:].strip()
    if cell is None:
        sql = rest
    else:
        if rest:
            raise MagicSyntaxError(
                f"unexpected {rest.split()[0]!r} on the %%sql line; the SQL goes in the cell body. {OPTIONS_HELP}"
            )
        sql = cell
    return MagicLine(sql=sql, **values)  # type: ignore[arg-type]


def _rest_starts_assignment(line: str, end: int) -> bool:
    # `%sql x = 1`? not ours: leave it for the SQL (it will fail there, clearly).
    return line[end:].lstrip().startswith("=")


def _convert(name: str, value: str) -> object:
    if name in ("--format", "-f"):
        if value not in FORMATS:
            raise MagicSyntaxError(f"--format must be one of {', '.join(FORMATS)}, not {value!r}")
        return value
    if name in ("--wait", "-w"):
        try:
            seconds = float(value)
        except ValueError:
            raise MagicSyntaxError(f"--wait takes seconds, not {value!r}") from None
        if seconds < 0 or seconds != seconds:
            raise MagicSyntaxError("--wait must be 0 or more seconds")
        return seconds
    if name in ("--limit", "-n"):
        try:
            rows = int(value)
        except ValueError:
            raise MagicSyntaxError(f"--limit takes a number of rows, not {value!r}") from None
        if rows < 0:
            raise MagicSyntaxError("--limit must be 0 (no limit) or more rows")
        return rows
    if name in ("--connection", "-c"):
        if not _IDENT.fullmatch(value):
            raise CredentialsInCell(CONNECTION_STRING_MESSAGE) if "/" in value or ":" in value else MagicSyntaxError(
                f"{value!r} is not a connection name"
            )
        return value
    return value


def redact_credentials(text: str) -> str:
    """``scheme://user:***@`` for every URL with a password (for logs and audit copies)."""
    return _URL_WITH_PASSWORD.sub(lambda m: f"{m.group(1)}://{m.group(2)}:***@", text)
