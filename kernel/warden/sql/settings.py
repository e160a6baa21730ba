"""Session settings a cell may change (``SET name = value``), per dialect.

Unknown means denied: a setting can change what a query reads (``search_path``,
which analysis follows), who runs it (``role``), what the engine may reach
(DuckDB's ``enable_external_access``, ``allowed_directories``), the limits the
gateway sets for the role (``statement_timeout``, memory, threads), or hold values
across statements (DuckDB ``SET VARIABLE``). Only settings that change how a
result is computed or shown, never what is read, are listed.

A setting applies to the statements after it in the same cell, and only to them:
the gateway never runs a ``SET`` on a shared connection, it applies the cell's
settings around each of that cell's statements (see ``warden.gateway.execute``).
"""

from __future__ import annotations

SAFE_SETTINGS: dict[str, frozenset[str]] = {
    "postgres": frozenset(
        {
            "search_path", "timezone", "time zone", "datestyle", "intervalstyle",
            "application_name", "extra_float_digits", "bytea_output", "client_min_messages",
            "random_page_cost", "seq_page_cost", "cpu_tuple_cost", "effective_cache_size", "jit",
            "enable_seqscan", "enable_indexscan",
            "enable_bitmapscan", "enable_hashjoin", "enable_mergejoin", "enable_nestloop",
            "enable_sort", "enable_hashagg", "enable_material", "enable_partitionwise_join",
            "enable_partitionwise_aggregate", "geqo", "from_collapse_limit",
            "join_collapse_limit", "standard_conforming_strings", "xmloption",
            "default_text_search_config", "lc_monetary", "lc_numeric", "lc_time",
        }
    ),
    "duckdb": frozenset(
        {
            "search_path", "schema", "timezone", "calendar", "default_order",
            "default_null_order", "default_collation", "integer_division",
            "order_by_non_integer_literal", "ieee_floating_point_ops", "explain_output",
        }
    ),
}  # fmt: skip


def setting_allowed(dialect: str, name: str) -> bool:
    return normal_name(name) in SAFE_SETTINGS.get(dialect, frozenset())


def normal_name(name: str) -> str:
    return " ".join(name.strip().strip('"').lower().split())


__all__ = ["SAFE_SETTINGS", "normal_name", "setting_allowed"]
