"""Opening an audit store by URL: the one module that knows every store class.

Apart from ``store.py`` (the shared machinery the concrete stores build on) so that
``store.py`` never imports its own subclasses: dependencies flow one way,
``stores`` -> ``duckdb_store`` / ``postgres_store`` -> ``store``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from warden.audit.errors import AuditConfigError
from warden.audit.store import AuditStore, redact_url


def open_store(url: str | Path, **options: Any) -> AuditStore:
    """Open (creating if needed) the audit store at ``url``.

    - ``duckdb:///abs/path/audit.duckdb``, ``duckdb://relative/audit.duckdb`` or a plain
      path ending in ``.duckdb``: an embedded DuckDB file (one writing process).
    - ``postgresql://user:pass@host:port/db`` (or ``postgres://``): shared by replicas.

    Options (all keyword): ``chain_id`` (default: host name), ``signing_key`` (an
    Ed25519PrivateKey, a PEM private key, or a secret of >= 16 bytes to derive one from),
    ``checkpoint_every`` (events, default 1000), ``checkpoint_interval`` (seconds,
    default 60), ``checkpoint_file`` (JSONL copy of every checkpoint), ``max_batch``
    (events per transaction, default 5000), ``append_timeout`` (seconds, default 30),
    ``read_only`` (no writer; for auditors and ``verify``).
    Raises AuditUnavailable if the store cannot be opened, AuditConfigError for a bad URL.
    """
    text = str(url)
    if text.startswith("duckdb://"):
        from warden.audit.duckdb_store import DuckDBStore

        return DuckDBStore(text[len("duckdb://") :], **options)
    if text.startswith(("postgresql://", "postgres://")):
        from warden.audit.postgres_store import PostgresStore

        return PostgresStore(text, **options)
    if isinstance(url, Path) or text.endswith((".duckdb", ".db")):
        from warden.audit.duckdb_store import DuckDBStore

        return DuckDBStore(text, **options)
    raise AuditConfigError(f"unsupported audit store URL {redact_url(text)!r}: use duckdb:///path/audit.duckdb or postgresql://...")
