"""Per-series interval aggregation over the ``gpu_sample`` Parquet files (the heavy part).

A *series* is one (gpu_uuid, source). Consecutive samples k-1, k of a series form the
*interval* (t[k-1], t[k]]. Each interval is measured one of two ways (docs/analytics.md):

* **counter** - both samples carry busy/idle counters: busy = increase(busy_ms_total),
  covered = min(increase(busy) + increase(idle), Δt). ``increase`` treats a decrease as a
  counter reset to 0 (Prometheus ``increase()``). Counters lose resolution, never
  information, so a long interval is still covered.
* **held** - otherwise the utilization of sample k-1 is held until sample k. Whether the
  interval is a *gap* (Δt > 2 × the series' median step) is decided afterwards, from the
  Δt histogram, in :mod:`accelmon.analytics.utilization`.

How it runs: every Parquet row group in the window is a *unit*, processed with numpy in a
thread pool. A unit is sorted by (series, t) if it is not already (compaction leaves files
sorted; time-major files are sorted per row group). Intervals that cross units (midnight,
row-group and file boundaries) are rebuilt from each unit's first and last row per series.
A series whose units overlap in time (e.g. two writers interleaving) is recomputed from all
its rows at once. No global sort of the samples happens, which is what makes 60 M samples
cheap (see bench/report.py); results are small sparse frames merged with polars.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
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
ALLOC_FB_BYTES = 1 << 30
NBINS = 102  # bin 0: idle (exactly 0 %); bin b>0: floor(util) = b-1, 0..100
LN_DQ = 100.0  # Δt histogram: dq = round(100 · ln(Δt ms)), ~1 % wide buckets

AGG_SCHEMA = {
    "sid": pl.Int64, "held": pl.Boolean, "dq": pl.Int32, "bin": pl.Int16, "n": pl.Int64,
    "dt_ms": pl.Float64, "cov_ms": pl.Float64, "busy_ms": pl.Float64, "alloc_ms": pl.Float64,
    "alloc_busy_ms": pl.Float64, "e_ctr_mj": pl.Float64, "e_pow_mj": pl.Float64,
}
STAT_SCHEMA = {
    "sid": pl.Int64, "samples": pl.Int64, "first_ms": pl.Int64, "last_ms": pl.Int64,
    "fb_max_bytes": pl.Int64, "fb_total_bytes": pl.Int64, "bios_id": pl.Int64,
}
HEAT_SCHEMA = {"sid": pl.Int64, "cell": pl.Int32, "cov_ms": pl.Float64, "busy_ms": pl.Float64}


@dataclass
class SeriesAggregates:
    """Result of :func:`aggregate`: sparse frames keyed by ``sid``; ``series`` maps sid → ids."""

    series: pl.DataFrame  # sid, gpu_uuid, source
    agg: pl.DataFrame  # AGG_SCHEMA, one row per (sid, held, dq, bin)
    stats: pl.DataFrame  # STAT_SCHEMA
    heat: pl.DataFrame  # HEAT_SCHEMA: coverage/busy per (sid, heatmap cell)
    cell_ms: int
    window_start_ms: int
    window_end_ms: int
    units: int = 0
    rows: int = 0
    overlapped_series: int = 0


class _Ids:
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
class _Unit:
    path: Path
    row_group: int | None  # None: the arrays are given (fallback / stitch units)
    arrays: dict[str, np.ndarray] | None = None


@dataclass
class _Arrays:
    sid: np.ndarray
    t: np.ndarray
    vals: dict[str, np.ndarray]  # filled with 0 where null
    valid: dict[str, np.ndarray]
    bios: np.ndarray  # per row: interned vm_bios_uuid id, -1 for null


_VALUE_COLS = ("util_percent", "busy_ms_total", "idle_ms_total", "fb_used_bytes", "fb_total_bytes",
               "power_milliwatts", "energy_millijoules_total")


def list_units(store: Store, start_ms: int, end_ms: int) -> list[_Unit]:
    """Row groups of gpu_sample whose ts range meets [start, end] (Parquet statistics)."""
    d0 = dt.datetime.fromtimestamp(start_ms / 1000, dt.UTC).date()
    d1 = dt.datetime.fromtimestamp(end_ms / 1000, dt.UTC).date()
    units: list[_Unit] = []
    for part in store.partitions("gpu_sample"):
        if part == EPOCH_PARTITION or not d0 <= dt.date.fromisoformat(part) <= d1:
            continue
        for f in store.files("gpu_sample", part):
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
                units.append(_Unit(f, rg))
    return units


def _ms(v: Any) -> int:
    if isinstance(v, dt.datetime):
        if v.tzinfo is None:
            v = v.replace(tzinfo=dt.UTC)
        return int(v.timestamp() * 1000)
    return int(v)


def _read_unit(u: _Unit, ids: _Ids, start_ms: int, end_ms: int) -> _Arrays | None:
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
    for c in _VALUE_COLS:
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
    return _Arrays(sid, t, vals, valid, bios)


def _dict(col: pa.ChunkedArray) -> pa.DictionaryArray:
    arr = col.chunk(0) if col.num_chunks == 1 else pa.concat_arrays(col.chunks)
    if not isinstance(arr, pa.DictionaryArray):
        arr = pc.dictionary_encode(arr)
    return arr


def _sort(a: _Arrays) -> _Arrays:
    """Sort by (sid, t) unless it already is (the common, compacted case: O(n) check)."""
    sid, t = a.sid, a.t
    if len(sid) > 1:
        ds = np.diff(sid)
        same = ds == 0
        starts = sid[np.concatenate(([True], ~same))]
        if not np.any(same & (np.diff(t) < 0)) and len(np.unique(starts)) == len(starts):
            return a
    order = np.lexsort((t, sid))
    return _Arrays(
        sid[order], t[order],
        {k: v[order] for k, v in a.vals.items()},
        {k: v[order] for k, v in a.valid.items()},
        a.bios[order],
    )


@dataclass
class _UnitResult:
    agg: pl.DataFrame
    stats: pl.DataFrame
    heat: pl.DataFrame
    bounds: dict[str, np.ndarray]  # first/last row of each series in the unit
    rows: int


def _increase(x: np.ndarray) -> np.ndarray:
    d = np.diff(x)
    return np.where(d < 0, x[1:], d)


def _intervals(a: _Arrays, same: np.ndarray, start_ms: int, cell_ms: int, ncells: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Aggregate the intervals ending at rows where ``same`` is True (row k continues row k-1)."""
    v, ok = a.vals, a.valid
    m = same[1:]
    if not m.any():
        return pl.DataFrame(schema=AGG_SCHEMA), pl.DataFrame(schema=HEAT_SCHEMA)
    sid = a.sid[1:]
    if all(ok[c].all() for c in ("busy_ms_total", "idle_ms_total", "energy_millijoules_total", "fb_used_bytes")):
        return _intervals_counters(a, m, sid, start_ms, cell_ms, ncells)
    dtm = np.diff(a.t).astype(np.float64)
    ctr = m & ok["busy_ms_total"][1:] & ok["busy_ms_total"][:-1] & ok["idle_ms_total"][1:] & ok["idle_ms_total"][:-1]
    held = m & ~ctr & ok["util_percent"][:-1]
    db = _increase(v["busy_ms_total"]).astype(np.float64)
    di = _increase(v["idle_ms_total"]).astype(np.float64)
    tot = db + di
    u0 = v["util_percent"][:-1].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        cu = np.where(tot > 0, 100.0 * db / tot, 0.0)
    ui = np.where(ctr, cu, u0)
    cov = np.where(ctr, np.where(tot > 0, np.minimum(tot, dtm), 0.0), np.where(held, dtm, 0.0))
    idle = np.where(ctr, db == 0, u0 == 0)
    b = np.where(idle, 0, np.minimum(np.floor(ui), 100).astype(np.int64) + 1)
    busy = cov * ui / 100.0
    alloc = np.where(ok["fb_used_bytes"][:-1] & (v["fb_used_bytes"][:-1] >= ALLOC_FB_BYTES), cov, 0.0)
    alloc_busy = np.where(alloc > 0, busy, 0.0)  # busy time of the allocated intervals
    eok = m & ok["energy_millijoules_total"][1:] & ok["energy_millijoules_total"][:-1]
    e_ctr = np.where(eok, _increase(v["energy_millijoules_total"]), 0).astype(np.float64)
    pok = m & ~eok & ok["power_milliwatts"][:-1]
    e_pow = np.where(pok, v["power_milliwatts"][:-1] * cov / 1000.0, 0.0)
    frames = []
    # counter intervals: dense bincount over (local series, bin)
    if ctr.any():
        idx = np.flatnonzero(ctr)
        frames.append(_sparse(sid[idx], np.zeros(len(idx), np.int64), b[idx], False, dtm[idx],
                              cov[idx], busy[idx], alloc[idx], alloc_busy[idx], e_ctr[idx], e_pow[idx]))
    if held.any():
        idx = np.flatnonzero(held)
        dq = np.rint(LN_DQ * np.log(np.maximum(dtm[idx], 1.0))).astype(np.int64)
        frames.append(_sparse(sid[idx], dq, b[idx], True, dtm[idx], cov[idx], busy[idx], alloc[idx],
                              alloc_busy[idx], e_ctr[idx], e_pow[idx]))
    # energy-counter intervals with neither busy/idle counters nor utilization still count
    rest = m & ~ctr & ~held & eok
    if rest.any():
        idx = np.flatnonzero(rest)
        z = np.zeros(len(idx))
        frames.append(_sparse(sid[idx], np.full(len(idx), -1, np.int64), np.full(len(idx), -1, np.int64),
                              False, dtm[idx], z, z, z, z, e_ctr[idx], z))
    agg = pl.concat(frames) if frames else pl.DataFrame(schema=AGG_SCHEMA)
    # heatmap: intervals no longer than a cell, by the cell their end falls in
    hm = (ctr | held) & (dtm <= cell_ms)
    heat = pl.DataFrame(schema=HEAT_SCHEMA)
    if hm.any():
        idx = np.flatnonzero(hm)
        cell = np.clip((a.t[1:][idx] - start_ms) // cell_ms, 0, ncells - 1)
        heat = _sparse_heat(sid[idx], cell, cov[idx], busy[idx], ncells)
    return agg, heat


def _intervals_counters(a: _Arrays, m: np.ndarray, sid: np.ndarray, start_ms: int, cell_ms: int,
                        ncells: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Fast path of :func:`_intervals` for units where every row has busy/idle/energy counters and
    framebuffer (the agent's normal case): the same definitions with fewer passes over memory."""
    v = a.vals
    dti = np.diff(a.t)
    db = _increase(v["busy_ms_total"])
    tot = db + _increase(v["idle_ms_total"])
    cov = np.minimum(tot, dti).astype(np.float64)
    cov[~m] = 0.0
    ui = np.divide(100.0 * db, tot, out=np.zeros(len(tot)), where=tot > 0)
    b = np.minimum(ui.astype(np.int64), 100) + 1
    b[db == 0] = 0
    b[~m] = -2  # not an interval (series boundary): dropped by _sparse
    busy = cov * ui / 100.0
    held_fb = v["fb_used_bytes"][:-1] >= ALLOC_FB_BYTES
    alloc = cov * held_fb
    alloc_busy = busy * held_fb
    e_ctr = _increase(v["energy_millijoules_total"]).astype(np.float64)
    e_pow = np.zeros(len(cov))
    agg = _sparse(sid, np.zeros(len(sid), np.int64), b, False, dti.astype(np.float64), cov, busy, alloc, alloc_busy,
                  e_ctr, e_pow)
    hm = m & (dti <= cell_ms)
    cell = np.clip((a.t[1:] - start_ms) // cell_ms, 0, ncells - 1)
    heat = _sparse_heat(sid, cell, np.where(hm, cov, 0.0), np.where(hm, busy, 0.0), ncells)
    return agg, heat


def _local(sid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct series and each row's index among them (O(n) when sorted, as units are)."""
    if len(sid) == 0:
        return sid, sid
    d = np.diff(sid)
    if (d >= 0).all():
        new = np.concatenate(([True], d != 0))
        return sid[new], np.cumsum(new) - 1
    uniq, inv = np.unique(sid, return_inverse=True)
    return uniq, inv


def _sparse(sid: np.ndarray, dq: np.ndarray, b: np.ndarray, held: bool, *w: np.ndarray) -> pl.DataFrame:
    uniq, loc = _local(sid)
    if held or (dq != 0).any():
        dqu, dqi = np.unique(dq, return_inverse=True)
    else:
        dqu, dqi = np.zeros(1, np.int64), np.zeros(len(dq), np.int64)
    bb = b + 2  # -2 (not an interval: dropped) → 0, -1 (energy only) → 1
    nb = NBINS + 2
    key = (loc * len(dqu) + dqi) * nb + bb
    size = len(uniq) * len(dqu) * nb
    if size > 4 * len(key) + 1024:  # sparse keys: compress
        ku, kinv = np.unique(key, return_inverse=True)
    else:
        ku, kinv = None, key
    nbin = len(ku) if ku is not None else size
    n = np.bincount(kinv, minlength=nbin)
    sums = [np.bincount(kinv, x, minlength=nbin) for x in w]
    nz = np.flatnonzero(n)
    k = ku[nz] if ku is not None else nz
    keep = (k % nb) != 0
    nz, k = nz[keep], k[keep]
    return pl.DataFrame(
        {
            "sid": uniq[k // (len(dqu) * nb)],
            "held": np.full(len(nz), held),
            "dq": dqu[(k // nb) % len(dqu)].astype(np.int32),
            "bin": ((k % nb) - 2).astype(np.int16),
            "n": n[nz].astype(np.int64),
            **{name: s[nz] for name, s in zip(list(AGG_SCHEMA)[5:], sums, strict=True)},
        },
        schema=AGG_SCHEMA,
    )


def _sparse_heat(sid: np.ndarray, cell: np.ndarray, cov: np.ndarray, busy: np.ndarray, ncells: int) -> pl.DataFrame:
    uniq, loc = _local(sid)
    key = loc * ncells + cell
    size = len(uniq) * ncells
    c = np.bincount(key, cov, minlength=size)
    bz = np.bincount(key, busy, minlength=size)
    nz = np.flatnonzero(c)
    return pl.DataFrame(
        {"sid": uniq[nz // ncells], "cell": (nz % ncells).astype(np.int32), "cov_ms": c[nz], "busy_ms": bz[nz]},
        schema=HEAT_SCHEMA,
    )


def _process(a: _Arrays, start_ms: int, cell_ms: int, ncells: int) -> _UnitResult:
    a = _sort(a)
    n = len(a.sid)
    same = np.zeros(n, bool)
    same[1:] = a.sid[1:] == a.sid[:-1]
    agg, heat = _intervals(a, same, start_ms, cell_ms, ncells)
    starts = np.flatnonzero(~same)
    ends = np.append(starts[1:] - 1, n - 1)
    fbv = np.where(a.valid["fb_used_bytes"], a.vals["fb_used_bytes"], -1)
    fbt = np.where(a.valid["fb_total_bytes"], a.vals["fb_total_bytes"], -1)
    last_valid = np.maximum.reduceat(np.where(a.bios >= 0, np.arange(n), -1), starts)
    bios = np.where(last_valid >= 0, a.bios[np.maximum(last_valid, 0)], -1)
    stats = pl.DataFrame(
        {
            "sid": a.sid[starts],
            "samples": (ends - starts + 1).astype(np.int64),
            "first_ms": a.t[starts],
            "last_ms": a.t[ends],
            "fb_max_bytes": np.maximum.reduceat(fbv, starts),
            "fb_total_bytes": np.maximum.reduceat(fbt, starts),
            "bios_id": bios,
        },
        schema=STAT_SCHEMA,
    )
    bounds: dict[str, np.ndarray] = {"sid": a.sid[starts], "first_t": a.t[starts], "last_t": a.t[ends]}
    for c in _VALUE_COLS:
        bounds["f_" + c], bounds["l_" + c] = a.vals[c][starts], a.vals[c][ends]
        bounds["fv_" + c], bounds["lv_" + c] = a.valid[c][starts], a.valid[c][ends]
    return _UnitResult(agg, stats, heat, bounds, n)


def _stitch(bounds: list[dict[str, np.ndarray]], start_ms: int, cell_ms: int, ncells: int) -> tuple[_UnitResult | None, set[int]]:
    """Intervals between units: last row of one unit → first row of the next, per series."""
    if not bounds:
        return None, set()
    cat = {k: np.concatenate([b[k] for b in bounds]) for k in bounds[0]}
    unit = np.concatenate([np.full(len(b["sid"]), i) for i, b in enumerate(bounds)])
    order = np.lexsort((cat["last_t"], cat["first_t"], cat["sid"]))
    cat = {k: v[order] for k, v in cat.items()}
    unit = unit[order]
    sid = cat["sid"]
    nxt = np.flatnonzero(sid[1:] == sid[:-1])  # pairs (nxt, nxt+1)
    overlap = cat["first_t"][nxt + 1] < cat["last_t"][nxt]
    bad = set(sid[nxt[overlap]].tolist())
    pairs = nxt[~overlap & ~np.isin(sid[nxt], list(bad))] if bad else nxt
    if len(pairs) == 0:
        return None, bad
    p, q = pairs, pairs + 1
    inter = np.empty(2 * len(p), np.int64)
    inter[0::2], inter[1::2] = p, q
    first = np.zeros(2 * len(p), bool)
    first[0::2] = True  # row 2i = last row of the earlier unit, row 2i+1 = first row of the later one
    t = np.where(first, cat["last_t"][inter], cat["first_t"][inter])
    vals = {c: np.where(first, cat["l_" + c][inter], cat["f_" + c][inter]) for c in _VALUE_COLS}
    valid = {c: np.where(first, cat["lv_" + c][inter], cat["fv_" + c][inter]) for c in _VALUE_COLS}
    a = _Arrays(sid[inter], t, vals, valid, np.full(len(inter), -1, np.int64))
    same = ~first  # row 2i+1 continues row 2i only
    agg, heat = _intervals(a, same, start_ms, cell_ms, ncells)
    return _UnitResult(agg, pl.DataFrame(schema=STAT_SCHEMA), heat, {}, 0), bad


def aggregate(
    store: Store,
    start: dt.datetime,
    end: dt.datetime,
    *,
    threads: int | None = None,
    heat_cells: int = 168,
) -> SeriesAggregates:
    """Aggregate every gpu_sample series in [start, end] (see module doc)."""
    start_ms, end_ms = int(start.timestamp() * 1000), int(end.timestamp() * 1000)
    span = max(end_ms - start_ms, 1)
    cell_ms = max(3_600_000, -(-span // heat_cells))
    ncells = max(1, -(-span // cell_ms))
    ids = _Ids()
    units = list_units(store, start_ms, end_ms)
    workers = threads or min(4, os.cpu_count() or 1)

    def work(u: _Unit) -> _UnitResult | None:
        try:
            a = _read_unit(u, ids, start_ms, end_ms)
        except FileNotFoundError:
            return None
        return None if a is None else _process(a, start_ms, cell_ms, ncells)

    with ThreadPoolExecutor(max(1, workers)) as ex:
        results = [r for r in ex.map(work, units) if r is not None]
    stitched, bad = _stitch([r.bounds for r in results], start_ms, cell_ms, ncells)
    if stitched is not None:
        results.append(stitched)
    if bad:
        results = [_drop(r, bad) for r in results]
        redo = _gather(units, ids, bad, start_ms, end_ms)
        if redo is not None:
            results.append(_process(redo, start_ms, cell_ms, ncells))
    agg = _concat([r.agg for r in results], AGG_SCHEMA).group_by("sid", "held", "dq", "bin").agg(
        pl.all().sum()
    )
    stats = _concat([r.stats for r in results], STAT_SCHEMA).group_by("sid").agg(
        pl.col("samples").sum(), pl.col("first_ms").min(), pl.col("last_ms").max(),
        pl.col("fb_max_bytes").max(), pl.col("fb_total_bytes").max(),
        pl.col("bios_id").filter(pl.col("bios_id") >= 0).sort_by(
            pl.col("last_ms").filter(pl.col("bios_id") >= 0)).last(),
    )
    names = ids.bios_names()
    stats = stats.with_columns(
        pl.col("bios_id").map_elements(lambda i: names[i], return_dtype=pl.String).alias("vm_bios_uuid")
    ).drop("bios_id")
    heat = _concat([r.heat for r in results], HEAT_SCHEMA).group_by("sid", "cell").agg(pl.all().sum())
    return SeriesAggregates(
        series=ids.frame(), agg=agg, stats=stats, heat=heat, cell_ms=cell_ms,
        window_start_ms=start_ms, window_end_ms=end_ms, units=len(units),
        rows=sum(r.rows for r in results), overlapped_series=len(bad),
    )


def _concat(frames: Iterable[pl.DataFrame], schema: dict[str, Any]) -> pl.DataFrame:
    fs = [f for f in frames if f.height]
    return pl.concat(fs) if fs else pl.DataFrame(schema=schema)


def _drop(r: _UnitResult, bad: set[int]) -> _UnitResult:
    keep = ~pl.col("sid").is_in(list(bad))
    return _UnitResult(r.agg.filter(keep), r.stats.filter(keep), r.heat.filter(keep), {}, r.rows)


def _gather(units: list[_Unit], ids: _Ids, bad: set[int], start_ms: int, end_ms: int) -> _Arrays | None:
    """All rows of the series whose units overlap, as one unit (the rare, slow path)."""
    parts: list[_Arrays] = []
    badarr = np.fromiter(bad, np.int64)
    for u in units:
        a = _read_unit(u, ids, start_ms, end_ms)
        if a is None:
            continue
        m = np.isin(a.sid, badarr)
        if m.any():
            parts.append(_Arrays(a.sid[m], a.t[m], {k: v[m] for k, v in a.vals.items()},
                                 {k: v[m] for k, v in a.valid.items()},
                                 a.bios[m]))
    if not parts:
        return None
    return _Arrays(
        np.concatenate([p.sid for p in parts]), np.concatenate([p.t for p in parts]),
        {k: np.concatenate([p.vals[k] for p in parts]) for k in _VALUE_COLS},
        {k: np.concatenate([p.valid[k] for p in parts]) for k in _VALUE_COLS},
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
    def conv(x):
        return (None if x is None else dt.datetime.fromtimestamp(x / 1000, dt.UTC))
    return conv(lo), conv(hi)
