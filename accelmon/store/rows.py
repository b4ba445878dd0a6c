"""Rows to typed Arrow tables and Parquet files, by the schema (the store's input side).

Any rows (pyarrow Table, polars DataFrame, mapping of columns, list of dicts) become a table of
exactly the schema's columns and types; a file is written with the encodings that keep time
series small.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from accelmon.store.schema import Table


def to_arrow(t: Table, rows: Any) -> pa.Table:
    """Coerce rows (pyarrow Table, polars DataFrame, mapping of columns, list of dicts) to the table schema.

    Missing nullable columns become nulls; unknown columns are an error (the schema is the contract).
    """
    schema = t.schema
    if isinstance(rows, pa.Table):
        data = rows
    elif hasattr(rows, "to_arrow"):  # polars DataFrame
        data = rows.to_arrow()
    elif isinstance(rows, Mapping):
        data = pa.table(dict(rows))
    else:
        rows = list(rows)
        if not rows:
            return schema.empty_table()
        keys = list(dict.fromkeys(k for r in rows for k in r))  # union: a key may appear in later rows only
        data = pa.table({k: _column(t, k, [r.get(k) for r in rows]) for k in keys})
    unknown = set(data.column_names) - set(schema.names)
    if unknown:
        raise ValueError(f"{t.name}: unknown column(s) {', '.join(sorted(unknown))}")
    cols = []
    fields = []
    n = data.num_rows
    for f in schema:
        if f.name in data.column_names:
            col = data.column(f.name)
            if pa.types.is_dictionary(col.type) and col.type.value_type == f.type:
                fields.append(pa.field(f.name, col.type, nullable=f.nullable))  # keep dictionary encoding
                cols.append(col)
                continue
            if col.type != f.type:
                col = _cast(col, f.type, t.name, f.name)
        else:
            if not f.nullable:
                raise ValueError(f"{t.name}: missing required column {f.name}")
            col = pa.nulls(n, f.type)
        cols.append(col)
        fields.append(f)
    out = pa.Table.from_arrays(cols, schema=pa.schema(fields))
    for f in schema:
        if not f.nullable and out.column(f.name).null_count:
            raise ValueError(f"{t.name}: column {f.name} must not be null")
    return out


def _column(t: Table, name: str, values: list[Any]) -> pa.Array:
    """Build a column from Python values, typed by the schema where the values allow it."""
    try:
        f = t.schema.field(name)
    except KeyError:
        return pa.array(values)
    if pa.types.is_timestamp(f.type) and any(isinstance(v, int | float) for v in values):
        return pa.array(values, type=pa.float64())  # Unix seconds: converted by _cast
    try:
        return pa.array(values, type=f.type)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
        return pa.array(values)  # e.g. Unix seconds for a timestamp: cast later


def _cast(col: pa.ChunkedArray, typ: pa.DataType, tname: str, cname: str) -> pa.ChunkedArray:
    if pa.types.is_timestamp(typ) and (pa.types.is_floating(col.type) or pa.types.is_integer(col.type)):
        # numbers are Unix seconds
        ms = pc.cast(pc.round(pc.multiply(pc.cast(col, pa.float64()), 1000.0)), pa.int64())
        return pc.cast(ms, pa.timestamp("ms")).cast(typ)
    if pa.types.is_timestamp(typ) and pa.types.is_timestamp(col.type):
        if col.type.tz is None:
            col = pc.assume_timezone(col, "UTC") if col.type.unit else col
        return pc.cast(col, typ, safe=False)
    try:
        return pc.cast(col, typ)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise ValueError(f"{tname}.{cname}: cannot store {col.type} as {typ}: {e}") from None


def write_parquet(t: Table, data: pa.Table, f: Any, *, level: int = 6) -> None:
    """Write with the encodings that make time series small: dictionaries for keys,
    DELTA_BINARY_PACKED for counters and timestamps, zstd on top."""
    delta = [c for c in (*t.delta_columns, t.partition_ts) if c in data.column_names]
    delta = [c for c in delta if pa.types.is_integer(data.schema.field(c).type)
             or pa.types.is_timestamp(data.schema.field(c).type)]
    dict_cols = [c for c in data.column_names if c not in delta]
    pq.write_table(
        data,
        f,
        compression="zstd",
        compression_level=level,
        use_dictionary=dict_cols,
        column_encoding={c: "DELTA_BINARY_PACKED" for c in delta},
        row_group_size=1 << 20,
        write_statistics=True,
        data_page_version="2.0",
    )
