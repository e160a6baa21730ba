"""From the gateway's Arrow results to what the analyst gets: pandas (default), Arrow
or polars, each carrying what was masked and why.

``df.attrs["warden"]`` (pandas) and the ``warden`` schema metadata (Arrow, JSON) hold::

    {"connection": "demo", "statement": 0, "kind": "select", "action": "mask",
     "masked": {"email": {"operator": "email", "classifications": ["pii.email"],
                          "rules": ["role:analyst/masks"], "position": 2}},
     "detectors": [...], "rule_ids": [...], "event_id": "...", "completion_event_id": "...",
     "query_id": "q_...", "approval_id": null, "rows": 200, "truncated": false,
     "cell_run_id": "..."}

``event_id`` is the gateway's decision record for the cell (``query.allowed`` /
``query.masked``), ``completion_event_id`` its ``query.executed`` record.
polars frames have no metadata slot: use pandas or Arrow when you need the mask info.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pyarrow as pa

from warden.gateway.client import CellResult, StatementResult

METADATA_KEY = b"warden"


def statement_info(
    cell: CellResult,
    st: StatementResult,
    meta: Mapping[str, Any],
    *,
    connection: str,
    cell_run_id: str = "",
) -> dict[str, Any]:
    masked: dict[str, dict[str, Any]] = {}
    for m in st.masks:
        name = str(m.get("column", ""))
        masked[name] = {
            "operator": m.get("operator"),
            "classifications": list(m.get("classifications", []) or []),
            "rules": list(m.get("rules", []) or []),
            "position": m.get("position"),
        }
    detectors = list(meta.get("detectors", []) or st.detectors or [])
    for d in detectors:
        # A column the second net masked is marked like a lineage mask, the detector(s)
        # being the reason; lineage-masked columns are never scanned, so none collide.
        name = str(d.get("column", ""))
        if not name:
            continue
        entry = masked.get(name)
        if entry is not None and "detectors" not in entry:
            continue  # a lineage mask of a column of the same name (another position): kept
        if entry is None:
            entry = masked[name] = {"operator": "", "classifications": [], "rules": [], "detector": "",
                                    "detectors": [], "rows": 0, "position": d.get("position")}  # fmt: skip
        if d.get("detector") not in entry["detectors"]:
            entry["detectors"].append(d.get("detector"))
        entry["rows"] += int(d.get("rows", 0) or 0)
        entry["detector"] = ", ".join(map(str, entry["detectors"]))
        entry["operator"] = "detector:" + ",".join(map(str, entry["detectors"]))
        entry["reason"] = f"content detector {entry['detector']} found values in {entry['rows']} row(s)"
    header, trailer = cell.header, cell.trailer
    return {
        "connection": connection,
        "statement": st.index,
        "kind": st.kind,
        "action": header.get("action"),
        "rule_ids": list(header.get("rule_ids", []) or []),
        "masked": masked,
        "detectors": detectors,
        "event_id": header.get("event_id", ""),
        "completion_event_id": trailer.get("event_id", ""),
        "query_id": header.get("query_id", ""),
        "approval_id": header.get("approval_id"),
        "rows": st.rows,
        "truncated": st.truncated,
        "cell_run_id": cell_run_id,
    }


def to_output(table: pa.Table, info: dict[str, Any], fmt: str) -> Any:
    if fmt == "arrow":
        meta = dict(table.schema.metadata or {})
        meta[METADATA_KEY] = json.dumps(info, default=str).encode()
        return table.replace_schema_metadata(meta)
    if fmt == "polars":
        import polars as pl

        return pl.from_arrow(table)
    df = table.to_pandas()
    df.attrs["warden"] = info
    return df


def info_of(obj: Any) -> dict[str, Any] | None:
    """The warden info of a result (pandas attrs or Arrow metadata), if it has one."""
    attrs = getattr(obj, "attrs", None)
    if isinstance(attrs, dict):
        found = attrs.get("warden")
        return found if isinstance(found, dict) else None
    schema = getattr(obj, "schema", None)
    meta = getattr(schema, "metadata", None)
    if isinstance(meta, dict) and METADATA_KEY in meta:
        try:
            loaded = json.loads(meta[METADATA_KEY])
        except ValueError:
            return None
        return loaded if isinstance(loaded, dict) else None
    return None
