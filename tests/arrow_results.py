"""Reading an executor's StatementResult into one Arrow table, for the tests."""

from __future__ import annotations

from typing import Any

import pyarrow as pa


def read_table(result: Any) -> pa.Table:
    """All of ``result``'s batches as a table (its close() runs either way)."""
    try:
        batches = list(result.batches)
    finally:
        if result.close is not None:
            result.close()
    assert result.schema is not None
    return pa.Table.from_batches(batches, schema=result.schema)
