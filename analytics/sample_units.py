"""Reading ``gpu_sample`` for the interval aggregation: the units (Parquet row groups) of a window,
one unit's columns as numpy arrays keyed by series id, and the store's sample time range.

Split from :mod:`accelmon.analytics.samples` (which documents the method)."""

from __future__ import annotations

import datetime as dt
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from accelmon.store.writer import EPOCH_PARTITION, Store

COLUMNS = (
    "ts",
    "gpu_uuid",
    "source",
    "vm_bios_uuid",
    "util_percent",
    "busy_ms_total",
    "idle_ms_total",
    "fb_used_bytes",
    "fb_total_bytes",
    "power_milliwatts",
    "energy_millijoules_total",
)
# framebuffer at or above this counts as "allocated" (a context holds memory); below it is
# what the driver reserves on an idle GPU


class Ids:
    """(gpu_uuid, source) → series id, shared by the worker threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.ids: dict[tuple[str, str], int] = {}
        self.bios_ids: dict[str, int] = {}

    def get(self, keys: list[tuple[str, str]]) -> np.ndarray:
        with self._lock:
            return np.array([self.ids.setdefault(k, len(self.ids)) for k in keys], dtype=np.int64)

    def bios(self, values: list[str | None]) -> np.ndarray:
        with self._lock:
            return np.array([-1 if v is None else self.bios_ids.setdefault(v, len(self.bios_ids)) for v in values],
                            dtype=np.int64)

    def bios_names(self) -> list[str]:
        return [k for k, _ in sorted(self.bios_ids.items(), key=lambda kv: kv[1])]

    def frame(self) -> pl.DataFrame:
        items = sorted(self.ids.items(), key=lambda kv: kv[1])
        return pl.DataFrame(
            {"sid": [v for _, v in items], "gpu_uuid": [k[0] for k, _ in items], "source": [k[1] for k, _ in items]},
            schema={"sid": pl.Int64, "gpu_uuid": pl.String, "source": pl.String},
        )


@dataclass
class Unit:
    path: Path
    row_group: int | None  # None: the arrays are given (fallback / stitch units)
    arrays: dict[str, np.ndarray] | None = None


@dataclass
class Arrays:
    sid: np.ndarray
    t: np.ndarray
    vals: dict[str, np.ndarray]  # filled with 0 where null
    valid: dict[str, np.ndarray]
    bios: np.ndarray  # per row: interned vm_bios_uuid id, -1 for null


VALUE_COLS = ("util_percent", "busy_ms_total", "idle_ms_total", "fb_used_bytes", "fb_total_bytes",
               "power_milliwatts", "energy_millijoules_total")


def list_units(store: Store, start_ms: int, end_ms: int, shard: str | None = None) -> list[Unit]:
    """Row groups of gpu_sample whose ts range meets [start, end] (Parquet statistics); of every
    shard, or of ``shard`` only (a shard's own rollups, docs/store.md)."""
    d0 = dt.datetime.fromtimestamp(start_ms / 1000, dt.UTC).date()
    d1 = dt.datetime.fromtimestamp(end_ms / 1000, dt.UTC).date()
    units: list[Unit] = []
    parts = store.partitions("gpu_sample") if shard is None else store.own_partitions("gpu_sample", shard)
    for part in parts:
        if part == EPOCH_PARTITION or not d0 <= dt.date.fromisoformat(part) <= d1:
            continue
        files = store.files("gpu_sample", part) if shard is None else store.own_files("gpu_sample", part, shard)
        for f in files:
            try:
                md = pq.ParquetFile(f).metadata
            except (OSError, pa.ArrowInvalid):
                continue  # vanished (compaction) or unreadable; a later run sees the new generation
            ts_i = md.schema.to_arrow_schema().get_field_index("ts")
            for rg in range(md.num_row_groups):
                g = md.row_group(rg)
                if g.num_rows == 0:
                    continue
                st = g.column(ts_i).statistics
                if st is not None and st.has_min_max:
                    lo, hi = _ms(st.min), _ms(st.max)
                    if hi < start_ms or lo > end_ms:
                        continue
                units.append(Unit(f, rg))
    return units


def _ms(v: Any) -> int:
    if isinstance(v, dt.datetime):
        if v.tzinfo is None:
            v = v.replace(tzinfo=dt.UTC)
        return int(v.timestamp() * 1000)
    return int(v)


def read_unit(u: Unit, ids: Ids, start_ms: int, end_ms: int) -> Arrays | None:
    pf = pq.ParquetFile(u.path, read_dictionary=["gpu_uuid", "source", "vm_bios_uuid"])
    names = set(pf.schema_arrow.names)
    cols = [c for c in COLUMNS if c in names]
    assert u.row_group is not None
    tb = pf.read_row_group(u.row_group, columns=cols, use_threads=False)  # we parallelise across units
    t = tb.column("ts").cast(pa.timestamp("ms", tz="UTC")).cast(pa.int64()).to_numpy()
    mask = (t >= start_ms) & (t <= end_ms)
    if not mask.any():
        return None
    if not mask.all():
        tb = tb.filter(pa.array(mask))
        t = t[mask]
    tb = tb.combine_chunks()
    g = _dict(tb.column("gpu_uuid"))
    s = _dict(tb.column("source"))
    gd, sd = g.dictionary.to_pylist(), s.dictionary.to_pylist()
    table = ids.get([(a, b) for a in gd for b in sd])
    sid = table[g.indices.to_numpy().astype(np.int64) * len(sd) + s.indices.to_numpy().astype(np.int64)]
    vals: dict[str, np.ndarray] = {}
    valid: dict[str, np.ndarray] = {}
    n = len(t)
    for c in VALUE_COLS:
        if c not in tb.column_names:
            vals[c] = np.zeros(n, np.int64)
            valid[c] = np.zeros(n, bool)
            continue
        col = tb.column(c)
        if col.null_count:
            valid[c] = col.is_valid().to_numpy(zero_copy_only=False)
            col = pc.fill_null(col, 0)
        else:
            valid[c] = np.ones(n, bool)
        # util_percent is a FLOAT gauge (a 7.5 % reading is 7.5, not 7); the rest are integer counters/gauges
        vals[c] = col.to_numpy().astype(np.float64 if c == "util_percent" else np.int64, copy=False)
    bios = np.full(n, -1, np.int64)
    if "vm_bios_uuid" in tb.column_names:
        bc = _dict(tb.column("vm_bios_uuid"))
        if len(bc.dictionary):
            gmap = ids.bios(bc.dictionary.to_pylist())
            bidx = pc.fill_null(bc.indices, -1).to_numpy().astype(np.int64)
            bios = np.where(bidx >= 0, gmap[np.maximum(bidx, 0)], -1)
    return Arrays(sid, t, vals, valid, bios)


def _dict(col: pa.ChunkedArray) -> pa.DictionaryArray:
    arr = col.chunk(0) if col.num_chunks == 1 else pa.concat_arrays(col.chunks)
    if not isinstance(arr, pa.DictionaryArray):
        arr = pc.dictionary_encode(arr)
    return arr


def sort_unit(a: Arrays) -> Arrays:
    """Sort by (sid, t) unless it already is (the common, compacted case: O(n) check)."""
    sid, t = a.sid, a.t
    if len(sid) > 1:
        ds = np.diff(sid)
        same = ds == 0
        starts = sid[np.concatenate(([True], ~same))]
        if not np.any(same & (np.diff(t) < 0)) and len(np.unique(starts)) == len(starts):
            return a
    order = np.lexsort((t, sid))
    return Arrays(
        sid[order], t[order],
        {k: v[order] for k, v in a.vals.items()},
        {k: v[order] for k, v in a.valid.items()},
        a.bios[order],
    )


def gather(units: list[Unit], ids: Ids, bad: set[int], start_ms: int, end_ms: int) -> Arrays | None:
    """All rows of the series whose units overlap, as one unit (the rare, slow path)."""
    parts: list[Arrays] = []
    badarr = np.fromiter(bad, np.int64)
    for u in units:
        a = read_unit(u, ids, start_ms, end_ms)
        if a is None:
            continue
        m = np.isin(a.sid, badarr)
        if m.any():
            parts.append(Arrays(a.sid[m], a.t[m], {k: v[m] for k, v in a.vals.items()},
                                 {k: v[m] for k, v in a.valid.items()},
                                 a.bios[m]))
    if not parts:
        return None
    return Arrays(
        np.concatenate([p.sid for p in parts]), np.concatenate([p.t for p in parts]),
        {k: np.concatenate([p.vals[k] for p in parts]) for k in VALUE_COLS},
        {k: np.concatenate([p.valid[k] for p in parts]) for k in VALUE_COLS},
        np.concatenate([p.bios for p in parts]),
    )


def data_range(store: Store) -> tuple[dt.datetime | None, dt.datetime | None]:
    """Oldest and newest gpu_sample timestamps, from Parquet statistics (no data scan)."""
    lo: int | None = None
    hi: int | None = None
    for part in store.partitions("gpu_sample"):
        if part == EPOCH_PARTITION:
            continue
        for f in store.files("gpu_sample", part):
            try:
                md = pq.ParquetFile(f).metadata
            except (OSError, pa.ArrowInvalid):
                continue
            i = md.schema.to_arrow_schema().get_field_index("ts")
            for rg in range(md.num_row_groups):
                st = md.row_group(rg).column(i).statistics
                if md.row_group(rg).num_rows == 0 or st is None or not st.has_min_max:
                    continue
                a, b = _ms(st.min), _ms(st.max)
                lo = a if lo is None else min(lo, a)
                hi = b if hi is None else max(hi, b)
    def conv(x: int | None) -> dt.datetime | None:
        return (None if x is None else dt.datetime.fromtimestamp(x / 1000, dt.UTC))
    return conv(lo), conv(hi)
