"""The store's writer interface: what sources and the daemon append through.

:class:`accelmon.store.writer.Store` implements it (durable append), and so does the daemon's
write buffer (accelmon/daemon/buffer.py), which batches rows and appends them to a Store. A
source is written against this Protocol, never against a concrete store.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

# Rows of one table: a pyarrow Table, a polars DataFrame, a mapping of column name -> values,
# or an iterable of row dicts; coerced to the table's schema by accelmon.store.rows.to_arrow
# (unknown columns are an error, missing nullable columns become NULL).
Rows = Any


@runtime_checkable
class StoreWriter(Protocol):
    """Append rows to a table of :mod:`accelmon.store.schema`."""

    def append(self, name: str, rows: Rows) -> int:
        """Append ``rows`` to table ``name``; returns the number of rows taken (0 for none).
        Raises ValueError when the rows do not fit the schema (nothing is written then)."""
        ...


@runtime_checkable
class RowSink(StoreWriter, Protocol):
    """A writer that also takes plain row dicts, converted when it flushes (the daemon's write
    buffer: one conversion per table and flush instead of one per poll)."""

    def append_rows(self, name: str, rows: list[dict[str, Any]]) -> int: ...
