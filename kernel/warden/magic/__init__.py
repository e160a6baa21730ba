"""The ``%%sql`` / ``%sql`` magics and ``%warden`` helpers (see :mod:`warden.magic.magics`).

The warden kernel loads them itself; in another IPython kernel, ``%load_ext warden.magic``
(that gives the magics, but cell-level audit events come only with the warden kernel).
Once loaded, ``%load_ext sql`` (JupySQL's first cell) keeps warden's magic and says so
(:mod:`warden.magic.compat`).
"""

from __future__ import annotations

from typing import Any

__all__ = ["load_ipython_extension"]


def load_ipython_extension(shell: Any, session: Any = None) -> Any:
    from warden.errors import WardenError
    from warden.magic import formatters
    from warden.magic.complete import CatalogCache, make_matcher
    from warden.magic.magics import active, register, short_error_handler
    from warden.magic.parse import MagicSyntaxError, parse_magic

    magic = register(shell, session)
    formatters.register(shell)
    cache = CatalogCache(lambda name: magic.session.client().catalog(name))

    def connection_of(line: str) -> str | None:
        try:
            parsed = parse_magic(line.replace("%%sql", "", 1).replace("%sql", "", 1), None)
        except MagicSyntaxError:
            parsed = None
        if parsed is not None and parsed.connection:
            return parsed.connection
        try:
            return magic._pick_connection(parse_magic(""), magic.session) if magic.session.connected else None
        except WardenError:
            return None

    def connections() -> list[str]:
        return (magic.session.known_connections() or []) if magic.session.connected else []

    completer = getattr(shell, "Completer", None)
    if completer is not None and hasattr(completer, "custom_matchers"):
        completer.custom_matchers.append(make_matcher(connection_of, cache.names, connections))
    shell.set_custom_exc((WardenError,), short_error_handler(active))
    # %sqlcmd, %sqlplot, %sqlrender; then %load_ext sql, %jupysql, no other %sql replaces warden's
    from warden.magic import compat, sqlcmd

    sqlcmd.register(shell, magic)

    compat.install(shell, magic._note)
    return magic
