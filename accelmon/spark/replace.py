"""Replace a time range of a table's day partitions (re-running an hour replaces it; nothing else changes).

The store's own mechanism (docs/store.md, "Compaction"; ``Store.replace_partition``): the partition's
remaining rows plus the new ones are written into a **new generation** of this shard's partition and
the partition symlink is swapped with ``rename(2)``. A reader sees the old generation or the new one,
never both and never neither; a crash before the swap leaves the old one. Runs on the driver (the
process that owns the store root and its shard), with the rows the executors computed.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from accelmon.store.rows import to_arrow
from accelmon.store.schema import table
from accelmon.store.writer import Store


def replace_range(store: Store, name: str, day: str, start_ms: int, end_ms: int, new: pa.Table) -> int:
    """Rows of ``name``/``date=day`` (this shard) whose partition time is in [start_ms, end_ms) are
    replaced by ``new`` (rows of that day). Returns the rows the partition holds afterwards."""
    t = table(name)
    keep: list[pa.Table] = []
    for f in store.own_files(t.name, day):
        data = to_arrow(t, pq.read_table(f))
        ms = pc.cast(pc.cast(data.column(t.partition_ts), pa.timestamp("ms", tz="UTC")), pa.int64())
        inside = pc.and_(pc.greater_equal(ms, start_ms), pc.less(ms, end_ms))
        keep.append(data.filter(pc.invert(inside)))
    data = pa.concat_tables([*keep, to_arrow(t, new)], promote_options="permissive").combine_chunks()
    store.replace_partition(t.name, day, data)
    return data.num_rows
