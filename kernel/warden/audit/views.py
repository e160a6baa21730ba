"""The auditor's views over the audit store: ``events``, ``queries``, ``objects``,
``approvals``, ``sessions``, ``cells`` and ``checkpoints``.

They are not created in the store (the store stays the gateway's append-only tables):
each auditor query gets the views it names as CTEs in front of it (``with_views``),
written in DuckDB SQL over ``audit_events`` (``VIEW_SQL``) and in PostgreSQL SQL for the
PostgreSQL store (``VIEW_SQL_PG``, same columns). ``VIEW_COLUMNS`` is what the analysis of an
auditor's query sees (a catalog of these views and nothing else) and what docs/audit.md
documents, column by column (a test checks both against the SQL).
"""

from __future__ import annotations

from typing import Final

import sqlglot
from sqlglot import exp

from warden.audit.record import FIELDS
from warden.sql.catalog import Catalog, Relation

#: The schema the views appear in (``audit.events`` or plain ``events``).
SCHEMA: Final = "audit"

# Decision records: one per query (submitted is the intent, executed/failed the outcome).
_DECISIONS: Final = "('query.allowed', 'query.masked', 'query.denied', 'query.held')"

_EVENTS = f"SELECT {', '.join(chr(34) + f + chr(34) for f in FIELDS)} FROM audit_events"

_QUERIES = f"""
SELECT d.event_id AS query_event_id, d.correlation_id, d.chain_id, d.seq, d.event_time,
       d.subject, d.session_id, d.notebook_path, d.cell_id, d.execution_count,
       d.connection, d.dialect, d.statement_kinds, d.sql, d.fingerprint, d.action,
       d.rule_ids, d.reasons, d.masks,
       CAST(json_extract_string(d.masks, '$[*].column') AS VARCHAR[]) AS masked_columns,
       list_distinct(flatten(CAST(json_extract(d.masks, '$[*].classifications') AS VARCHAR[][]))) AS masked_classifications,
       coalesce(d.approval_id, o.approval_id) AS approval_id,
       coalesce(d.approver, o.approver) AS approver,
       CASE WHEN d.type = 'query.denied' THEN 'denied'
            WHEN d.type = 'query.held' THEN 'held'
            WHEN o.type = 'query.executed' THEN 'success'
            WHEN o.type = 'query.failed' THEN 'failure'
            ELSE 'pending' END AS outcome,
       o.error, o."rows", o."bytes", o.duration_ms, o.event_time AS finished_at,
       o.event_id AS completion_event_id
FROM (SELECT * FROM audit_events WHERE type IN {_DECISIONS}) d
ASOF LEFT JOIN (SELECT * FROM audit_events WHERE type IN ('query.executed', 'query.failed')) o
  ON d.chain_id = o.chain_id AND d.correlation_id = o.correlation_id AND o.seq > d.seq
"""

_OBJECTS = f"""
WITH st AS (
  SELECT e.event_id, e.correlation_id, e.event_time, e.subject, e.session_id, e.connection, e.action,
         e.masks, unnest(CAST(e.objects AS JSON[])) AS o
  FROM audit_events e WHERE e.type IN {_DECISIONS}
), cols AS (
  SELECT st.*, unnest(json_keys(st.o -> 'columns')) AS col FROM st
)
SELECT event_id, correlation_id, event_time, subject, session_id, connection, action,
       CAST(o ->> 'statement' AS INTEGER) AS statement,
       regexp_replace(col, '\\.[^.]*$', '') AS relation,
       col AS column_name,
       CAST(o -> 'columns' -> col AS VARCHAR[]) AS usages,
       coalesce(CAST(o -> 'classified' -> col AS VARCHAR[]), CAST([] AS VARCHAR[])) AS classifications,
       list_has_any(coalesce(CAST(o -> 'classified' -> col AS VARCHAR[]), CAST([] AS VARCHAR[])),
                    list_distinct(flatten(coalesce(CAST(json_extract(masks, '$[*].classifications') AS VARCHAR[][]), [])))) AS masked
FROM cols
UNION ALL
SELECT event_id, correlation_id, event_time, subject, session_id, connection, action,
       CAST(o ->> 'statement' AS INTEGER), rel, NULL, CAST(['read'] AS VARCHAR[]), CAST([] AS VARCHAR[]), false
FROM (SELECT st.*, unnest(CAST(st.o -> 'reads' AS VARCHAR[])) AS rel FROM st)
"""

_APPROVALS = """
SELECT r.approval_id, r.subject AS requester, r.event_time AS requested_at, r.connection, r.sql,
       r.rule_ids, r.reasons AS request_reasons,
       CASE WHEN d.type = 'approval.granted' THEN 'granted' WHEN d.type = 'approval.rejected' THEN 'rejected'
            WHEN d.type = 'approval.expired' THEN 'expired' ELSE 'pending' END AS decision,
       d.approver, d.event_time AS decided_at, d.reasons AS decision_reasons,
       date_diff('millisecond', r.event_time, d.event_time) / 1000.0 AS seconds_to_decide,
       u.event_time AS used_at, u.correlation_id AS used_by
FROM (SELECT * FROM audit_events WHERE type = 'approval.requested') r
LEFT JOIN (SELECT approval_id, arg_min(type, seq) AS type, arg_min(approver, seq) AS approver,
                  min(event_time) AS event_time, arg_min(reasons, seq) AS reasons
           FROM audit_events WHERE type IN ('approval.granted', 'approval.rejected', 'approval.expired')
           GROUP BY approval_id) d ON d.approval_id = r.approval_id
LEFT JOIN (SELECT approval_id, min(event_time) AS event_time, arg_min(correlation_id, event_time) AS correlation_id
           FROM audit_events WHERE type IN ('query.allowed', 'query.masked') AND approval_id IS NOT NULL
           GROUP BY approval_id) u ON u.approval_id = r.approval_id
"""

_SESSIONS = f"""
SELECT session_id, arg_min(subject, event_time) AS subject, arg_min(kernel_id, event_time) AS kernel_id,
       max(notebook_path) AS notebook_path, arg_min(mode, event_time) AS mode,
       min(event_time) AS started_at, max(event_time) FILTER (WHERE type = 'session.end') AS ended_at,
       max(event_time) AS last_event_at,
       count(*) FILTER (WHERE type = 'cell.execute') AS cells,
       count(*) FILTER (WHERE type IN {_DECISIONS}) AS queries,
       count(*) FILTER (WHERE type = 'query.denied') AS denied,
       count(*) FILTER (WHERE type = 'query.held') AS held,
       count(*) FILTER (WHERE type = 'query.failed') AS failed
FROM audit_events WHERE session_id IS NOT NULL AND session_id <> ''
GROUP BY session_id
"""

_CELLS = f"""
SELECT c.event_id, c.session_id, c.subject, c.notebook_path, c.cell_id, c.execution_count,
       c.event_time, c.status, c.error, c.duration_ms, c.sql AS source, c.fingerprint AS source_sha256,
       c.correlation_id AS cell_run_id, coalesce(q.queries, 0) AS queries
FROM (SELECT * FROM audit_events WHERE type = 'cell.execute') c
LEFT JOIN (SELECT chain_id, correlation_id, count(*) AS queries FROM audit_events
           WHERE type IN {_DECISIONS} GROUP BY chain_id, correlation_id) q
  ON q.correlation_id = c.correlation_id AND q.chain_id = c.chain_id AND c.correlation_id <> ''
"""

_CHECKPOINTS = """
SELECT c.chain_id, c.seq, c.record_hash, c.checkpoint_time, c.mark, c.key_id, c.signature, k.public_key
FROM audit_checkpoints c LEFT JOIN audit_keys k ON k.key_id = c.key_id
"""

#: View name -> DuckDB SQL over ``audit_events``.
VIEW_SQL: Final[dict[str, str]] = {
    "events": _EVENTS,
    "queries": _QUERIES,
    "objects": _OBJECTS,
    "approvals": _APPROVALS,
    "sessions": _SESSIONS,
    "cells": _CELLS,
    "checkpoints": _CHECKPOINTS,
}

# The same views for the PostgreSQL store (JSON fields are text there too).
_PG_QUERIES = f"""
SELECT d.event_id AS query_event_id, d.correlation_id, d.chain_id, d.seq, d.event_time,
       d.subject, d.session_id, d.notebook_path, d.cell_id, d.execution_count,
       d.connection, d.dialect, d.statement_kinds, d.sql, d.fingerprint, d.action,
       d.rule_ids, d.reasons, d.masks,
       ARRAY(SELECT m ->> 'column' FROM jsonb_array_elements(coalesce(d.masks, '[]')::jsonb) m) AS masked_columns,
       ARRAY(SELECT DISTINCT c FROM jsonb_array_elements(coalesce(d.masks, '[]')::jsonb) m,
             jsonb_array_elements_text(coalesce(m -> 'classifications', '[]'::jsonb)) c) AS masked_classifications,
       coalesce(d.approval_id, o.approval_id) AS approval_id,
       coalesce(d.approver, o.approver) AS approver,
       CASE WHEN d.type = 'query.denied' THEN 'denied'
            WHEN d.type = 'query.held' THEN 'held'
            WHEN o.type = 'query.executed' THEN 'success'
            WHEN o.type = 'query.failed' THEN 'failure'
            ELSE 'pending' END AS outcome,
       o.error, o."rows", o."bytes", o.duration_ms, o.event_time AS finished_at,
       o.event_id AS completion_event_id
FROM audit_events d
LEFT JOIN LATERAL (SELECT * FROM audit_events x WHERE x.chain_id = d.chain_id AND x.correlation_id = d.correlation_id
                   AND x.seq > d.seq AND x.type IN ('query.executed', 'query.failed') ORDER BY x.seq LIMIT 1) o ON true
WHERE d.type IN {_DECISIONS}
"""

_PG_OBJECTS = f"""
WITH st AS (
  SELECT e.event_id, e.correlation_id, e.event_time, e.subject, e.session_id, e.connection, e.action,
         ARRAY(SELECT DISTINCT c FROM jsonb_array_elements(coalesce(e.masks, '[]')::jsonb) m,
               jsonb_array_elements_text(coalesce(m -> 'classifications', '[]'::jsonb)) c) AS masked_classes,
         o.value AS o
  FROM audit_events e, jsonb_array_elements(coalesce(e.objects, '[]')::jsonb) o WHERE e.type IN {_DECISIONS}
), cols AS (
  SELECT st.*, c.key AS col, c.value AS uses,
         ARRAY(SELECT jsonb_array_elements_text(coalesce(st.o -> 'classified' -> c.key, '[]'::jsonb))) AS classes
  FROM st, jsonb_each(coalesce(st.o -> 'columns', '{{}}'::jsonb)) c
)
SELECT event_id, correlation_id, event_time, subject, session_id, connection, action,
       (o ->> 'statement')::integer AS statement,
       regexp_replace(col, '\\.[^.]*$', '') AS relation,
       col AS column_name,
       ARRAY(SELECT jsonb_array_elements_text(uses)) AS usages,
       classes AS classifications,
       classes && masked_classes AS masked
FROM cols
UNION ALL
SELECT st.event_id, st.correlation_id, st.event_time, st.subject, st.session_id, st.connection, st.action,
       (st.o ->> 'statement')::integer, r.value, NULL, ARRAY['read'], ARRAY[]::text[], false
FROM st, jsonb_array_elements_text(coalesce(st.o -> 'reads', '[]'::jsonb)) r
"""

_PG_APPROVALS = """
SELECT r.approval_id, r.subject AS requester, r.event_time AS requested_at, r.connection, r.sql,
       r.rule_ids, r.reasons AS request_reasons,
       CASE WHEN d.type = 'approval.granted' THEN 'granted' WHEN d.type = 'approval.rejected' THEN 'rejected'
            WHEN d.type = 'approval.expired' THEN 'expired' ELSE 'pending' END AS decision,
       d.approver, d.event_time AS decided_at, d.reasons AS decision_reasons,
       extract(epoch FROM d.event_time - r.event_time)::double precision AS seconds_to_decide,
       u.event_time AS used_at, u.correlation_id AS used_by
FROM audit_events r
LEFT JOIN LATERAL (SELECT * FROM audit_events x WHERE x.approval_id = r.approval_id
                   AND x.type IN ('approval.granted', 'approval.rejected', 'approval.expired') ORDER BY x.seq LIMIT 1) d ON true
LEFT JOIN LATERAL (SELECT * FROM audit_events x WHERE x.approval_id = r.approval_id
                   AND x.type IN ('query.allowed', 'query.masked') ORDER BY x.event_time LIMIT 1) u ON true
WHERE r.type = 'approval.requested'
"""

_PG_SESSIONS = f"""
SELECT session_id, (array_agg(subject ORDER BY event_time))[1] AS subject, (array_agg(kernel_id ORDER BY event_time))[1] AS kernel_id,
       max(notebook_path) AS notebook_path, (array_agg(mode ORDER BY event_time))[1] AS mode,
       min(event_time) AS started_at, max(event_time) FILTER (WHERE type = 'session.end') AS ended_at,
       max(event_time) AS last_event_at,
       count(*) FILTER (WHERE type = 'cell.execute') AS cells,
       count(*) FILTER (WHERE type IN {_DECISIONS}) AS queries,
       count(*) FILTER (WHERE type = 'query.denied') AS denied,
       count(*) FILTER (WHERE type = 'query.held') AS held,
       count(*) FILTER (WHERE type = 'query.failed') AS failed
FROM audit_events WHERE session_id IS NOT NULL AND session_id <> ''
GROUP BY session_id
"""

#: View name -> PostgreSQL SQL over ``audit_events`` (the PostgreSQL store).
VIEW_SQL_PG: Final[dict[str, str]] = {
    "events": _EVENTS,
    "queries": _PG_QUERIES,
    "objects": _PG_OBJECTS,
    "approvals": _PG_APPROVALS,
    "sessions": _PG_SESSIONS,
    "cells": _CELLS,
    "checkpoints": _CHECKPOINTS,
}

#: View name -> its columns, in order (what the analysis and the docs know).
VIEW_COLUMNS: Final[dict[str, tuple[str, ...]]] = {
    "events": FIELDS,
    "queries": (
        "query_event_id", "correlation_id", "chain_id", "seq", "event_time", "subject", "session_id",
        "notebook_path", "cell_id", "execution_count", "connection", "dialect", "statement_kinds", "sql",
        "fingerprint", "action", "rule_ids", "reasons", "masks", "masked_columns", "masked_classifications",
        "approval_id", "approver", "outcome", "error", "rows", "bytes", "duration_ms", "finished_at",
        "completion_event_id",
    ),
    "objects": (
        "event_id", "correlation_id", "event_time", "subject", "session_id", "connection", "action",
        "statement", "relation", "column_name", "usages", "classifications", "masked",
    ),
    "approvals": (
        "approval_id", "requester", "requested_at", "connection", "sql", "rule_ids", "request_reasons",
        "decision", "approver", "decided_at", "decision_reasons", "seconds_to_decide", "used_at", "used_by",
    ),
    "sessions": (
        "session_id", "subject", "kernel_id", "notebook_path", "mode", "started_at", "ended_at",
        "last_event_at", "cells", "queries", "denied", "held", "failed",
    ),
    "cells": (
        "event_id", "session_id", "subject", "notebook_path", "cell_id", "execution_count", "event_time",
        "status", "error", "duration_ms", "source", "source_sha256", "cell_run_id", "queries",
    ),
    "checkpoints": ("chain_id", "seq", "record_hash", "checkpoint_time", "mark", "key_id", "signature", "public_key"),
}  # fmt: skip


def views_catalog() -> Catalog:
    """The only relations an auditor's query may name: the views (schema ``audit``)."""
    rels = [Relation(SCHEMA, name, cols) for name, cols in VIEW_COLUMNS.items()]
    return Catalog.build("duckdb", rels, search_path=(SCHEMA,))


def with_views(statement: str, dialect: str = "duckdb") -> str:
    """The statement (DuckDB SQL) with the views it names defined in front of it as
    CTEs, in ``dialect`` (``postgres``: transpiled by sqlglot for the PostgreSQL store).

    ``audit.events`` and ``events`` both become the CTE ``events``; a CTE of the
    statement's own with a view's name shadows the view (as SQL scoping says)."""
    sources = VIEW_SQL_PG if dialect == "postgres" else VIEW_SQL
    tree = sqlglot.parse_one(statement, read="duckdb")
    own = {c.alias_or_name.lower() for c in tree.find_all(exp.CTE)}
    used: list[str] = []
    for table in tree.find_all(exp.Table):
        name = table.name.lower()
        if name in VIEW_SQL and name not in own and table.db.lower() in ("", SCHEMA) and not table.catalog:
            table.set("db", None)
            if name not in used:
                used.append(name)
    if not used:
        return tree.sql(dialect=dialect)
    views = [exp.CTE(this=sqlglot.parse_one(sources[name], read=dialect), alias=exp.TableAlias(this=exp.to_identifier(name, quoted=True))) for name in used]
    existing = tree.args.get("with_")
    if isinstance(existing, exp.With):
        # In front of the statement's own CTEs (they may name a view; WITH RECURSIVE
        # allows plain CTEs too).
        existing.set("expressions", [*views, *existing.expressions])
    else:
        tree.set("with_", exp.With(expressions=views))
    return tree.sql(dialect=dialect)
