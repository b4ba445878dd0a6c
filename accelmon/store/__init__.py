"""The store: append-only hive-partitioned Parquet + a DuckDB catalog of views."""

from accelmon.store.schema import TABLES, Table, table
from accelmon.store.writer import Store, StoreError

__all__ = ["TABLES", "Store", "StoreError", "Table", "table"]
