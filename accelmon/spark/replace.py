"""Replace a time range of a table's day partitions (re-running an hour replaces it; nothing else changes).

The store's own mechanism (docs/store.md, "Compaction"): the partition's remaining rows plus the new
ones are written, sorted by the table's key, into a **new generation directory**, and the partition
symlink is swapped with ``rename(2)`` under the append lock taken exclusively. A reader sees the old
generation or the new one, never both and never neither; a crash before the swap leaves the old one.
Runs on the driver (the process that owns the store root), with the rows the executors computed.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
import uuid

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from accelmon.store.fsutil import fsync_dir
from accelmon.store.schema import table
from accelmon.store.sortkeys import sort_indices
from accelmon.store.writer import _GEN_RE, Store, to_arrow, write_parquet


def replace_range(store: Store, name: str, day: str, start_ms: int, end_ms: int, new: pa.Table) -> int:
    """Rows of ``name``/``date=day`` whose partition time is in [start_ms, end_ms) are replaced by ``new``
    (rows of that day). Returns the rows the partition holds afterwards."""
    t = table(name)
    new = to_arrow(t, new)
    with store._flock(t.name, "compact", fcntl.LOCK_EX):
        old = store._current_gen(t.name, day, create=False)
        keep: list[pa.Table] = []
        if old is not None and old.is_dir():
            for f in sorted(old.glob("*.parquet")):
                data = to_arrow(t, pq.read_table(f))
                ms = pc.cast(pc.cast(data.column(t.partition_ts), pa.timestamp("ms", tz="UTC")), pa.int64())
                inside = pc.and_(pc.greater_equal(ms, start_ms), pc.less(ms, end_ms))
                keep.append(data.filter(pc.invert(inside)))
        data = pa.concat_tables([*keep, new], promote_options="permissive").combine_chunks()
        keys = [c for c in t.sort_by if c in data.column_names]
        if keys and data.num_rows:
            data = data.take(sort_indices(data, keys))
        gen_root = store._gen_root(t.name) / f"date={day}"
        gen_root.mkdir(parents=True, exist_ok=True)
        m = _GEN_RE.match(old.name) if old is not None else None
        n = int(m.group(1)) + 1 if m else 1
        new_gen = gen_root / f"g{n:06d}"
        while new_gen.exists():
            n += 1
            new_gen = gen_root / f"g{n:06d}"
        new_gen.mkdir()
        out = new_gen / f"compact-{time.time_ns() // 1_000_000:013d}-{uuid.uuid4().hex[:8]}.parquet"
        tmp = new_gen / f".tmp-{out.name}"
        try:
            with open(tmp, "wb") as fh:
                write_parquet(t, data, fh)
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException:
            shutil.rmtree(new_gen, ignore_errors=True)
            raise
        os.rename(tmp, out)
        fsync_dir(new_gen)
        link = store.root / "tables" / t.name / f"date={day}"
        link.parent.mkdir(parents=True, exist_ok=True)
        with store._flock(t.name, "append", fcntl.LOCK_EX):
            store._swap_link(link, new_gen)
        if old is not None and old.is_dir():
            (old / ".retired").write_text(str(time.time()))
    return data.num_rows
