"""Parsing the ``%%sql`` / ``%sql`` line: the syntax a JupySQL user knows.

    %%sql [NAME] [VAR <<] [options] [SQL]   SQL in the cell body (it may start on this line)
    %%sql [NAME] [options]                  with ``VAR <<`` alone on the body's first line
    %sql  [NAME] [VAR <<] [options] SQL     one line
    %sql  NAME                              switch the default connection

``VAR = <<`` is the same as ``VAR <<``. The short flags mean what they mean in JupySQL
(``-S`` save, ``-w`` with, ``-N`` no-execute, ``-f`` file, ``-l`` connections; ``-c``,
``-p``, ``-P``, ``-n``, ``-a``, ``-A``, ``-x``, ``-s`` are refused with the reason); warden's
own options have long names only (``--connection``, ``--format``, ``--limit``, ``--wait``).

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
_TARGET = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=\s*)?<<")
#: ``VAR <<`` (or ``VAR = <<``) alone on the first line of a cell body (JupySQL allows it)
_BODY_TARGET = re.compile(r"\A[ \t]*(?:\r?\n)*[ \t]*([A-Za-z_][A-Za-z0-9_]*)[ \t]*(?:=[ \t]*)?<<[ \t]*(?:\r?\n|\Z)")
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
    save: str | None = None  # -S/--save NAME: keep this query as a snippet
    with_: tuple[str, ...] = ()  # -w/--with NAME (repeatable): snippets to put in front as CTEs
    no_execute: bool = False  # -N/--no-execute: only save
    file: str | None = None  # -f/--file PATH: the SQL comes from this file (the kernel reads it)
    persist: bool = False  # -p/--persist VAR: write the DataFrame through the gateway
    persist_replace: bool = False  # -P/--persist-replace VAR
    append: bool = False  # --append VAR
    no_index: bool = False  # -n/--no-index (with the three above)

    @property
    def writes_frame(self) -> bool:
        return self.persist or self.persist_replace or self.append

    @property
    def switch_only(self) -> bool:
        """``%sql NAME`` alone: make NAME the default connection, run nothing."""
        return bool(self.connection) and not self.sql.strip() and not self.list_connections


_FLAGS = {
    "--no-raise": "no_raise", "--quiet": "quiet", "-q": "quiet", "--connections": "list_connections", "-l": "list_connections",
    "--no-execute": "no_execute", "-N": "no_execute",
    "--persist": "persist", "-p": "persist", "--persist-replace": "persist_replace", "-P": "persist_replace",
    "--append": "append", "--no-index": "no_index", "-n": "no_index",
}  # fmt: skip
_VALUED = {
    "--connection": "connection",
    "--format": "format",
    "--wait": "wait",
    "--limit": "limit",
    "--approval": "approval_id",
    "--save": "save", "-S": "save",
    "--with": "with_", "-w": "with_",
    "--file": "file", "-f": "file",
}  # fmt: skip
_GATEWAY_OWNS = "the gateway owns every database connection; name one of its connections (`%sql --connections` lists them)"
_UNSUPPORTED = {
    "--alias": "connection aliases come from the gateway's policy, not from the notebook",
    "-A": "connection aliases come from the gateway's policy, not from the notebook",
    "--creator": _GATEWAY_OWNS, "-c": "-c is JupySQL's --creator; " + _GATEWAY_OWNS + " (warden's option is --connection NAME)",
    "--close": _GATEWAY_OWNS, "-x": _GATEWAY_OWNS,
    "--section": _GATEWAY_OWNS, "-s": "-s is JupySQL's --section (a DSN file); " + _GATEWAY_OWNS,
    "--connection_arguments": _GATEWAY_OWNS, "--connection-arguments": _GATEWAY_OWNS, "-a": "-a is JupySQL's --connection_arguments; " + _GATEWAY_OWNS,
    "--interact": "interactive widgets are not supported: bind the widget's value with {{var}} and re-run the cell",
}  # fmt: skip
OPTIONS_HELP = (
    "options: NAME (connection), VAR << (assign), --connection NAME, --format pandas|arrow|polars, "
    "--limit ROWS, --wait SECONDS, --approval ID, --no-raise, -q/--quiet, -l/--connections, "
    "-S/--save NAME, -w/--with NAME, -N/--no-execute, -f/--file PATH, -p/--persist, -P/--persist-replace, "
    "--append, -n/--no-index"
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
                if _VALUED[name] == "with_":  # repeatable, as in JupySQL
                    values["with_"] = (*values.get("with_", ()), _convert(name, value))  # type: ignore[misc]
                else:
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
        if rest.startswith("-"):
            raise MagicSyntaxError(f"unknown option {rest.split()[0]!r}. {OPTIONS_HELP}")
        body = cell
        found = _BODY_TARGET.match(body) if not rest else None
        if found is not None:
            if "target" in values:
                raise MagicSyntaxError(f"two assignment targets: {values['target']} << and {found.group(1)} <<; write one")
            values["target"] = found.group(1)
            body = body[found.end() :]
        # SQL may start on the %%sql line and go on in the body (JupySQL allows it).
        sql = f"{rest}\n{body}" if rest and body.strip() else (rest or body)
    return MagicLine(sql=sql, **values)  # type: ignore[arg-type]


def _rest_starts_assignment(line: str, end: int) -> bool:
    # `%sql x = 1`? not ours: leave it for the SQL (it will fail there, clearly).
    return line[end:].lstrip().startswith("=")


def _convert(name: str, value: str) -> object:
    if name in ("--save", "-S", "--with", "-w"):
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
            raise MagicSyntaxError(f"{name} takes a snippet name (letters, digits, _), not {value!r}")
        return value
    if name == "--format":
        if value not in FORMATS:
            raise MagicSyntaxError(f"--format must be one of {', '.join(FORMATS)}, not {value!r}")
        return value
    if name == "--wait":
        try:
            seconds = float(value)
        except ValueError:
            raise MagicSyntaxError(f"--wait takes seconds, not {value!r}") from None
        if seconds < 0 or seconds != seconds:
            raise MagicSyntaxError("--wait must be 0 or more seconds")
        return seconds
    if name == "--limit":
        try:
            rows = int(value)
        except ValueError:
            raise MagicSyntaxError(f"--limit takes a number of rows, not {value!r}") from None
        if rows < 0:
            raise MagicSyntaxError("--limit must be 0 (no limit) or more rows")
        return rows
    if name == "--connection":
        if not _IDENT.fullmatch(value):
            raise CredentialsInCell(CONNECTION_STRING_MESSAGE) if "/" in value or ":" in value else MagicSyntaxError(
                f"{value!r} is not a connection name"
            )
        return value
    return value


def redact_credentials(text: str) -> str:
    """``scheme://user:***@`` for every URL with a password (for logs and audit copies)."""
    return _URL_WITH_PASSWORD.sub(lambda m: f"{m.group(1)}://{m.group(2)}:***@", text)
