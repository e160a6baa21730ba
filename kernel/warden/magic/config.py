"""JupySQL's ``SqlMagic`` settings, accepted with JupySQL's meaning where it applies.

``%config SqlMagic.<name> = value`` works for every setting a JupySQL notebook sets.
Where a setting cannot apply to a gateway-backed kernel, setting it prints one line
saying why (never "not recognized"):

=========================  ===================================================
``displaylimit = None``    all rows shown (as 0), at most 10,000
``autolimit = None``       the gateway's limit (as 0)
``autopandas``             True: results are plain pandas DataFrames (no ResultSet methods)
``autopolars``             True: results are polars DataFrames (like ``--format polars``)
``column_local_vars``      True: each result column becomes a variable; the cell returns None
``polars_dataframe_kwargs`` passed to ``polars.DataFrame`` (``PolarsDataFrame()``, autopolars)
``named_parameters``       accepted; ``:name`` is always a bound parameter in warden
``autocommit``             accepted; the gateway commits (one decision per cell)
``displaycon``             accepted; the connection is named in each result's footer
``style``                  accepted; warden's own table (masks marked) is always used
``dsn_filename``           accepted; connections are the gateway policy's names
=========================  ===================================================
"""

from __future__ import annotations

from typing import Any

from traitlets import Bool, Dict, Enum, TraitError, Unicode, Union, observe, validate
from traitlets.config.configurable import Configurable

#: settings that are accepted but cannot change what warden does: the one-line why
NOTES = {
    "named_parameters": "warden always binds `:name` and `{{name}}` as parameters (never pasted into the SQL); this setting changes nothing",
    "autocommit": "the gateway runs each cell's statements and commits them; the kernel has no transaction to configure",
    "displaycon": "warden names the connection in each result's footer and in df.attrs['warden']['connection']",
    "style": "warden draws its own table (masked columns marked); prettytable styles are not used",
    "dsn_filename": "connections are names from the gateway's policy; a DSN file would hold credentials the kernel must not have",
}


class JupySQLSettings(Configurable):
    """The JupySQL settings (a base of :class:`warden.magic.magics.SqlMagic`)."""

    autopandas = Bool(False, help="True: results are plain pandas DataFrames (no ResultSet methods)").tag(config=True)
    autopolars = Bool(False, help="True: results are polars DataFrames").tag(config=True)
    column_local_vars = Bool(False, help="True: each column of the result becomes a variable of that name").tag(config=True)
    polars_dataframe_kwargs = Dict(default_value={}, help="keyword arguments for polars.DataFrame").tag(config=True)
    named_parameters = Union([Bool(), Enum(["warn", "enabled", "disabled"])], default_value="enabled",
                             help="accepted for JupySQL; warden always binds :name").tag(config=True)  # fmt: skip
    autocommit = Bool(True, help="accepted for JupySQL; the gateway commits").tag(config=True)
    displaycon = Bool(True, help="accepted for JupySQL; the footer names the connection").tag(config=True)
    style = Unicode("DEFAULT", help="accepted for JupySQL; warden's table is always used").tag(config=True)
    dsn_filename = Unicode("", help="accepted for JupySQL; connections come from the gateway's policy").tag(config=True)

    @validate("displaylimit", "autolimit")
    def _none_is_zero(self, proposal: Any) -> int:
        # JupySQL: None means "no limit", which is 0 here.
        value = proposal["value"]
        if value is None:
            return 0
        if int(value) < 0:
            raise TraitError(f"{proposal['trait'].name} cannot be negative ({value})")
        return int(value)

    @observe("autopandas", "autopolars")
    def _one_of_pandas_polars(self, change: Any) -> None:
        # As in JupySQL: turning one on turns the other off, and says so.
        if change["new"]:
            other = "autopolars" if change["name"] == "autopandas" else "autopandas"
            if getattr(self, other):
                setattr(self, other, False)
                self._config_note(f"warden: turned {other} off because {change['name']} is on")

    @observe(*NOTES)
    def _accepted_without_effect(self, change: Any) -> None:
        self._config_note(f"SqlMagic.{change['name']} accepted: {NOTES[change['name']]}")

    def _config_note(self, text: str) -> None:
        note = getattr(self, "_note", None)
        if callable(note):
            note(text)
