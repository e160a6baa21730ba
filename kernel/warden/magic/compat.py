"""The JupySQL entry points on a shell where warden's magic is loaded.

* ``%load_ext sql`` / ``%reload_ext sql`` (the first cell of every JupySQL notebook) load
  warden's magic — which is there already — and say so. No ``sql`` package is shipped: a
  top-level ``sql`` module would shadow JupySQL's in every other kernel of the same
  environment. The shell's extension manager answers for the name instead, so it works
  whether or not JupySQL is installed, and JupySQL's module is never imported.
* ``%jupysql`` / ``%%jupysql`` are aliases of ``%sql`` / ``%%sql``.
* No other ``%sql`` replaces warden's: when anything registers magics named ``sql``,
  ``jupysql``, ``sqlcmd`` or ``sqlplot`` (JupySQL's ``load_ipython_extension``, another
  SQL extension), warden's are put back at once and a line says what happened. (Python
  code in the kernel could still edit the shell's tables directly; that would only cost
  the user warden's display — every query still goes through the gateway, which holds
  the only credentials.)
* ``%sql NAME`` where ``NAME`` is a Python variable holding an engine or a connection is
  refused at once, with the warden connections listed (:func:`engine_variable_message`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: the extension names that mean "JupySQL" in a notebook
JUPYSQL_EXTENSIONS = frozenset({"sql", "sql.magic"})
PROTECTED = ("sql", "jupysql", "sqlcmd", "sqlplot")

LOADED_NOTE = (
    "warden: %load_ext {name} — %sql and %%sql here are warden's, already loaded (JupySQL's are not used). "
    "Queries go through the warden gateway; name a connection of its policy (`%sql --connections` lists them) "
    "instead of a connection string."
)


def install(shell: Any, note: Callable[[str], None]) -> None:
    """Alias ``%jupysql``, answer ``%load_ext sql``, and keep warden's magics in place."""
    manager = shell.magics_manager
    for kind in ("line", "cell"):
        if "sql" in manager.magics[kind]:
            manager.register_alias("jupysql", "sql", kind)
    mine = {(kind, name): manager.magics[kind][name] for kind in ("line", "cell") for name in PROTECTED if name in manager.magics[kind]}
    _guard_extensions(shell, note)
    _guard_registration(shell, manager, mine, note)


def protect(shell: Any, kind: str, name: str) -> None:
    """Add a magic registered after :func:`install` (``%sqlcmd``) to the protected set."""
    guarded = getattr(shell.magics_manager, "_warden_protected", None)
    if isinstance(guarded, dict):
        guarded[(kind, name)] = shell.magics_manager.magics[kind][name]


def _guard_extensions(shell: Any, note: Callable[[str], None]) -> None:
    ext = getattr(shell, "extension_manager", None)
    if ext is None or getattr(ext, "_warden_guarded", False):
        return
    load, reload = ext.load_extension, ext.reload_extension

    def load_extension(module_str: str) -> Any:
        if module_str in JUPYSQL_EXTENSIONS:
            note(LOADED_NOTE.format(name=module_str))
            return None
        return load(module_str)

    def reload_extension(module_str: str) -> Any:
        if module_str in JUPYSQL_EXTENSIONS:
            note(LOADED_NOTE.format(name=module_str))
            return None
        return reload(module_str)

    ext.load_extension = load_extension
    ext.reload_extension = reload_extension
    ext._warden_guarded = True


def _guard_registration(shell: Any, manager: Any, mine: dict[tuple[str, str], Any], note: Callable[[str], None]) -> None:
    if getattr(manager, "_warden_protected", None) is not None:
        manager._warden_protected.update(mine)
        return
    manager._warden_protected = mine
    register, register_function = manager.register, manager.register_function

    def restore(source: str) -> None:
        replaced = []
        for (kind, name), fn in manager._warden_protected.items():
            if manager.magics[kind].get(name) is not fn:
                manager.magics[kind][name] = fn
                replaced.append(f"%{'%' if kind == 'cell' else ''}{name}")
        if replaced:
            note(f"warden: {source} tried to replace {', '.join(sorted(set(replaced)))}; warden's stay: on the warden kernel "
                 "every query goes through the warden gateway. Nothing else was changed.")  # fmt: skip

    def guarded_register(*magic_objects: Any) -> Any:
        out = register(*magic_objects)
        names = ", ".join(sorted({getattr(m, "__name__", None) or type(m).__name__ for m in magic_objects}))
        restore(names or "an extension")
        return out

    def guarded_register_function(func: Any, magic_kind: str = "line", magic_name: str | None = None) -> Any:
        out = register_function(func, magic_kind, magic_name)
        restore(getattr(func, "__name__", "a function"))
        return out

    manager.register = guarded_register
    manager.register_function = guarded_register_function
    shell.register_magics = guarded_register
    shell.register_magic_function = guarded_register_function


def engine_variable_message(name: str, value: Any, connections: list[str]) -> str | None:
    """The refusal for ``%sql NAME`` when ``NAME`` is a Python variable holding something
    that is not a connection name (an engine, a DB-API connection); else None."""
    if isinstance(value, str):
        return None
    kind = f"{type(value).__module__}.{type(value).__qualname__}"
    yours = ", ".join(connections) if connections else "none (`%warden whoami` shows why)"
    return (
        f"`{name}` is a Python variable holding a {kind}, not a warden connection: the warden gateway owns every "
        f"database connection, and the kernel never uses an engine or a driver. Your warden connections: {yours}. "
        f"Write `%sql NAME` with one of them."
    )
