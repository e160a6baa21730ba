"""Storage schema of the audit store, shared by the DuckDB and PostgreSQL backends.

Tables (both backends, same names and columns):

- ``audit_events``       one row per record, columns in :data:`warden.audit.record.FIELDS`
                         order. JSON fields are kept as canonical JSON *text* (not
                         ``jsonb``), so the stored bytes re-hash exactly; cast with
                         ``::jsonb`` / ``json(...)`` to query into them.
- ``audit_chains``       the head of every chain (last seq and hash); the writer locks
                         its row for the duration of each batch transaction.
- ``audit_checkpoints``  signed checkpoints (``mark``: '' periodic, ``open`` when a
                         writer started on the chain, ``close`` at a clean close).
- ``audit_keys``         public keys that signed checkpoints (convenience only: an
                         auditor should pass the key out of band).
- ``audit_meta``         ``schema_version``.
"""

from __future__ import annotations

from typing import Final

import pyarrow as pa

from warden.audit.record import FIELD_KINDS, FIELDS

SCHEMA_VERSION: Final = 1

_ARROW: Final[dict[str, pa.DataType]] = {
    "str": pa.string(),
    "int": pa.int64(),
    "float": pa.float64(),
    "time": pa.timestamp("us", tz="UTC"),
    "list": pa.list_(pa.string()),
    "json": pa.string(),
}
#: The Arrow schema of query results, Parquet exports and the DuckDB insert path.
ARROW_SCHEMA: Final = pa.schema([pa.field(name, _ARROW[kind], nullable=name not in ("event_id", "chain_id", "seq", "event_time", "prev_hash", "record_hash", "type")) for name, kind in FIELD_KINDS.items()])

_DUCKDB_TYPES: Final = {"str": "VARCHAR", "int": "BIGINT", "float": "DOUBLE", "time": "TIMESTAMPTZ", "list": "VARCHAR[]", "json": "VARCHAR"}
_PG_TYPES: Final = {"str": "text", "int": "bigint", "float": "double precision", "time": "timestamptz", "list": "text[]", "json": "text"}
_NOT_NULL: Final = frozenset({"event_id", "chain_id", "seq", "event_time", "prev_hash", "record_hash", "type"})


def q(name: str) -> str:
    """Quote an identifier (several field names, e.g. ``rows`` and ``groups``, are keywords)."""
    return '"' + name.replace('"', '""') + '"'


COLUMN_LIST: Final = ", ".join(q(f) for f in FIELDS)


def _columns(types: dict[str, str]) -> str:
    return ",\n  ".join(f"{q(name)} {types[kind]}{' NOT NULL' if name in _NOT_NULL else ''}" for name, kind in FIELD_KINDS.items())


def duckdb_ddl() -> list[str]:
    # No primary key on audit_events: DuckDB's ART index slows bulk appends and the
    # process-level file lock already makes the gateway the only writer. Rows arrive in
    # (chain_id, seq) order, so zone maps serve seq range scans.
    return [
        "CREATE TABLE IF NOT EXISTS audit_meta (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL)",
        f"CREATE TABLE IF NOT EXISTS audit_events (\n  {_columns(_DUCKDB_TYPES)}\n)",
        "CREATE TABLE IF NOT EXISTS audit_chains (chain_id VARCHAR PRIMARY KEY, last_seq BIGINT NOT NULL, last_hash VARCHAR NOT NULL, updated_at TIMESTAMPTZ)",
        "CREATE TABLE IF NOT EXISTS audit_checkpoints (chain_id VARCHAR NOT NULL, seq BIGINT NOT NULL, record_hash VARCHAR NOT NULL, checkpoint_time TIMESTAMPTZ NOT NULL, key_id VARCHAR NOT NULL, signature VARCHAR NOT NULL, mark VARCHAR NOT NULL DEFAULT '')",
        # Stores made before checkpoint marks (open/close) existed get the column.
        "ALTER TABLE audit_checkpoints ADD COLUMN IF NOT EXISTS mark VARCHAR DEFAULT ''",
        "CREATE TABLE IF NOT EXISTS audit_keys (key_id VARCHAR PRIMARY KEY, public_key VARCHAR NOT NULL, first_seen TIMESTAMPTZ)",
    ]


def postgres_ddl() -> list[str]:
    return [
        "CREATE TABLE IF NOT EXISTS audit_meta (key text PRIMARY KEY, value text NOT NULL)",
        f"CREATE TABLE IF NOT EXISTS audit_events (\n  {_columns(_PG_TYPES)},\n  PRIMARY KEY (chain_id, seq)\n)",
        "CREATE INDEX IF NOT EXISTS audit_events_time ON audit_events (event_time)",
        "CREATE TABLE IF NOT EXISTS audit_chains (chain_id text PRIMARY KEY, last_seq bigint NOT NULL, last_hash text NOT NULL, updated_at timestamptz)",
        "CREATE TABLE IF NOT EXISTS audit_checkpoints (chain_id text NOT NULL, seq bigint NOT NULL, record_hash text NOT NULL, checkpoint_time timestamptz NOT NULL, key_id text NOT NULL, signature text NOT NULL, mark text NOT NULL DEFAULT '')",
        "CREATE INDEX IF NOT EXISTS audit_checkpoints_chain ON audit_checkpoints (chain_id, seq)",
        "CREATE TABLE IF NOT EXISTS audit_keys (key_id text PRIMARY KEY, public_key text NOT NULL, first_seen timestamptz)",
        # Defence in depth: the table is append-only for everyone who cannot disable
        # triggers (only its owner or a superuser can). Verify still catches the rest.
        """CREATE OR REPLACE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'audit_events is append-only (% refused)', TG_OP USING ERRCODE = 'insufficient_privilege';
END $$""",
    ]


#: Run only when the column is missing (ALTER TABLE locks the table exclusively even
#: when it has nothing to do): stores made before checkpoint marks existed.
POSTGRES_MARK_COLUMN: Final = "ALTER TABLE audit_checkpoints ADD COLUMN mark text NOT NULL DEFAULT ''"

#: Created only when missing (a DROP/CREATE at every start would take an exclusive lock
#: on the table while other replicas are writing).
POSTGRES_TRIGGERS: Final = {
    "audit_events_append_only": "CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events FOR EACH ROW EXECUTE FUNCTION audit_events_append_only()",
    "audit_events_no_truncate": "CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only()",
}
