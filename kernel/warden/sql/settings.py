"""Session settings a cell may change (``SET name = value``), per dialect.

Unknown means denied: a setting can change what a query reads (``search_path``,
which analysis follows), who runs it (``role``), what the engine may reach
(DuckDB's ``enable_external_access``, ``allowed_directories``) or hold values
across statements (DuckDB ``SET VARIABLE``). Only settings that change how a
result is computed or shown, never what is read, are listed.
"""

from __future__ import annotations

SAFE_SETTINGS: dict[str, frozenset[str]] = {
    "postgres": frozenset(
        {
            "search_path", "timezone", "time zone", "datestyle", "intervalstyle",
            "statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout",
            "work_mem", "maintenance_work_mem", "temp_buffers", "application_name",
            "client_encoding", "extra_float_digits", "bytea_output", "client_min_messages",
            "default_transaction_isolation", "transaction_isolation", "random_page_cost",
            "seq_page_cost", "cpu_tuple_cost", "effective_cache_size", "jit",
            "max_parallel_workers_per_gather", "enable_seqscan", "enable_indexscan",
            "enable_bitmapscan", "enable_hashjoin", "enable_mergejoin", "enable_nestloop",
            "enable_sort", "enable_hashagg", "enable_material", "enable_partitionwise_join",
            "enable_partitionwise_aggregate", "geqo", "from_collapse_limit",
            "join_collapse_limit", "standard_conforming_strings", "xmloption",
            "default_text_search_config", "lc_monetary", "lc_numeric", "lc_time",
        }
    ),
    "duckdb": frozenset(
        {
            "search_path", "schema", "timezone", "calendar", "threads", "worker_threads",
            "memory_limit", "max_memory", "default_order", "default_null_order",
            "preserve_insertion_order", "enable_progress_bar", "enable_progress_bar_print",
            "progress_bar_time", "errors_as_json", "default_collation", "integer_division",
            "order_by_non_integer_literal", "max_expression_depth", "ieee_floating_point_ops",
            "late_materialization_max_rows", "enable_object_cache", "explain_output",
        }
    ),
}  # fmt: skip


def setting_allowed(dialect: str, name: str) -> bool:
    return name.strip().strip('"').lower() in SAFE_SETTINGS.get(dialect, frozenset())


__all__ = ["SAFE_SETTINGS", "setting_allowed"]
