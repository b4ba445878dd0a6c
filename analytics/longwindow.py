"""A window's per-series figures from raw samples, or - for long windows - from hourly rollups.

docs/store.md, "Rollups": a window [S, E] longer than ``rollup_after`` is split at H0 = the first
hour boundary after S and Hr = the end of the rolled-up hours (≤ the last hour boundary ≤ E):

* raw samples in [S, H0) - the intervals that start and end there, exactly as the raw path counts;
* rollups of the hours [H0, Hr) - the intervals whose end sample lies in them (one straddling H0
  included, as the raw window includes it);
* raw samples for the intervals ending in [Hr, E] (24 h lookback, as the rollups').

Every figure of :func:`utilization.series_metrics` that is a sum adds up exactly; the quantiles are
at hour resolution (the p95 over the hours' utilization, the framebuffer quantiles over the hours'
maxima) and the heatmap has whole-hour cells.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from accelmon.analytics import rollup, utilization
from accelmon.analytics.activity import FB_BIN_BYTES
from accelmon.analytics.db import frame
from accelmon.analytics.samples import aggregate
from accelmon.analytics.window import Window
from accelmon.store.writer import Store

MS = dt.timedelta(milliseconds=1)
SUMS = ("samples", "intervals", "held_intervals", "counter_intervals", "cov_ms", "busy_ms", "idle_ms",
        "alloc_idle_ms", "zero_ms", "e_mj", "idle_e_mj", "dt_ms", "gap_ms", "gap_intervals", "gap_e_ctr_mj")


@dataclass
class WindowFigures:
    metrics: pl.DataFrame  # utilization.metrics_from_series
    heat: Callable[[pl.DataFrame], pl.DataFrame]  # gpus → heatmap rows
    fb_hist: pl.DataFrame | None  # None: the raw samples' framebuffer histogram
    stats: dict[str, Any] = field(default_factory=dict)


def figures(store: Store, con: Any, window: Window, *, rollup_after: float | None = None,
            threads: int | None = None) -> WindowFigures:
    """The window's figures; from rollups where the window is longer than ``rollup_after`` seconds."""
    if rollup_after is not None and window.seconds > rollup_after:
        h0 = rollup.floor_hour(window.start) + rollup.HOUR
        h1 = rollup.floor_hour(window.end)
        hr = rollup.rolled_through(store, h0, h1) if h0 < h1 else h0
        if hr > h0:
            return _split(store, con, window, h0, hr, threads)
    sa = aggregate(store, window.start, window.end, threads=threads)
    return WindowFigures(
        utilization.gpu_metrics(sa), lambda gpus: utilization.heatmap(sa, gpus), None,
        {"units": sa.units, "rows": sa.rows, "series": sa.series.height, "heat_cell_ms": sa.cell_ms,
         "overlapped_series": sa.overlapped_series, "rollup_hours": 0})


def _raw(store: Store, start: dt.datetime, end: dt.datetime, count_from: dt.datetime | None,
         threads: int | None) -> tuple[pl.DataFrame, int]:
    sa = aggregate(store, start, end, count_from=count_from, threads=threads)
    s = utilization.series_metrics(sa)
    return s.with_columns(hour_busy_ms=pl.col("busy_ms"), hour_cov_ms=pl.col("cov_ms")), sa.rows


def _split(store: Store, con: Any, window: Window, h0: dt.datetime, hr: dt.datetime,
           threads: int | None) -> WindowFigures:
    head, n_head = _raw(store, window.start, h0 - MS, None, threads)
    tail, n_tail = _raw(store, hr - rollup.LOOKBACK, window.end, hr, threads) if hr <= window.end else (None, 0)
    roll, bins, fb, cells = _scan(store, con, window, h0, hr)
    pieces = [p for p in (head, tail) if p is not None and p.height]
    cols = ["gpu_uuid", "source", *SUMS, "first_ms", "last_ms", "fb_max_bytes", "fb_total_bytes", "vm_bios_uuid"]
    parts = [roll.select(cols)] if roll.height else []
    parts += [p.select(cols) for p in pieces]
    if not parts:
        return WindowFigures(utilization.metrics_from_series(head.drop("hour_busy_ms", "hour_cov_ms")),
                             lambda gpus: _heat(window, cells, gpus), None, {"rollup_hours": 0})
    if pieces:  # raw samples at the edges: add their per-series sums to the rollups'
        allp = pl.concat([p.with_columns(pl.col(c).cast(pl.Float64) for c in SUMS) for p in parts],
                         how="vertical_relaxed")
        s = allp.group_by("gpu_uuid", "source").agg(
            *[pl.col(c).sum() for c in SUMS], pl.col("first_ms").min(), pl.col("last_ms").max(),
            pl.col("fb_max_bytes").max(), pl.col("fb_total_bytes").max(),
            pl.col("vm_bios_uuid").filter(pl.col("vm_bios_uuid").is_not_null()).sort_by(
                pl.col("last_ms").filter(pl.col("vm_bios_uuid").is_not_null())).last(),
        )
    else:
        s = roll.select(cols).with_columns(pl.col(c).cast(pl.Float64) for c in SUMS)
    s = s.with_columns(pl.col(c).cast(pl.Int64) for c in ("samples", "intervals", "held_intervals",
                                                          "counter_intervals", "gap_intervals"))
    edge_bins = [p.filter(pl.col("hour_cov_ms") > 0).select(
        "gpu_uuid", "source",
        bin=pl.when(pl.col("hour_busy_ms") == 0).then(0).otherwise(
            (100.0 * pl.col("hour_busy_ms") / pl.col("hour_cov_ms")).floor().clip(0, 100).cast(pl.Int32) + 1),
        cov=pl.col("hour_cov_ms") / 1000.0) for p in pieces]
    allbins = pl.concat([bins.with_columns(pl.col("bin").cast(pl.Int32)), *edge_bins], how="vertical_relaxed")
    s = s.join(_p95(allbins), on=["gpu_uuid", "source"], how="left").with_columns(
        med_dq=pl.lit(None, dtype=pl.Int32))
    stats = {"units": 0, "rows": n_head + n_tail + int(roll["samples"].sum() if roll.height else 0),
             "series": s.height, "heat_cell_ms": rollup.HOUR_MS, "overlapped_series": 0,
             "rollup_hours": int(roll["hours"].sum()) if roll.height else 0,
             "rollup_span": [h0.isoformat(), hr.isoformat()]}
    return WindowFigures(utilization.metrics_from_series(s), lambda gpus: _heat(window, cells, gpus), fb, stats)


def _heat_cell_ms(window: Window) -> int:
    """The heatmap's cell: whole hours, at most ~168 cells over the window."""
    span = max(window.end_ms - window.start_ms, 1)
    return int(-(-max(rollup.HOUR_MS, -(-span // 168)) // rollup.HOUR_MS) * rollup.HOUR_MS)


def _scan(store: Store, con: Any, window: Window, h0: dt.datetime,
          hr: dt.datetime) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """The rolled-up hours [h0, hr): (per-series sums, p95 bins, framebuffer bins, heatmap cells).

    One pass over the day partitions' Parquet files (:class:`_Pass`, numpy over the dictionary
    indices: no string hashing per row); the SQL of the ``gpu_rollup_hour`` view where a file is
    not in the form the pass reads (a missing or NULL column it cannot stand in for, unreadable)."""
    cell = _heat_cell_ms(window)
    try:
        return _Pass(window.start_ms, cell, _ms(h0), _ms(hr)).run(_files(store, h0, hr))
    except _NotFast:
        return _scan_sql(con, window, h0, hr, cell)


def _ms(t: dt.datetime) -> int:
    return int(t.timestamp() * 1000)


def _files(store: Store, h0: dt.datetime, hr: dt.datetime) -> list[Path]:
    """The visible files of the day partitions that hold [h0, hr), every shard (partition pruning)."""
    first, last = h0.date().isoformat(), (hr - MS).date().isoformat()
    return [f for s in store.shards(rollup.TABLE) for d in store.own_partitions(rollup.TABLE, s)
            if first <= d <= last for f in store.own_files(rollup.TABLE, d, s)]


class _NotFast(Exception):
    """A file the one-pass reader does not take: the window is read by SQL instead."""


_REQUIRED = ("hour_start", "gpu_uuid", "source", "samples", "first_ts", "last_ts", "intervals",
             "held_intervals", "covered_s", "busy_s", "idle_s", "alloc_idle_s", "idle_full_s", "interval_s",
             "gap_s")
_ZERO_IF_NULL = ("energy_j", "idle_full_energy_j", "gap_energy_j")  # coalesce(sum(x), 0)
_OPTIONAL = ("vm_bios_uuid", "fb_used_max_bytes", "fb_total_bytes", *_ZERO_IF_NULL)
# per-series sums: (output column, rollup column, factor)
_SUM_COLS = (("samples", "samples", 1), ("intervals", "intervals", 1), ("held_intervals", "held_intervals", 1),
             ("cov_ms", "covered_s", 1000), ("busy_ms", "busy_s", 1000), ("idle_ms", "idle_s", 1000),
             ("alloc_idle_ms", "alloc_idle_s", 1000), ("zero_ms", "idle_full_s", 1000),
             ("e_mj", "energy_j", 1000), ("idle_e_mj", "idle_full_energy_j", 1000), ("dt_ms", "interval_s", 1000),
             ("gap_ms", "gap_s", 1000), ("gap_e_ctr_mj", "gap_energy_j", 1000))
_I64_MIN = np.iinfo(np.int64).min
_I64_MAX = np.iinfo(np.int64).max


class _Names:
    """Strings → dense ids, across files; a file's dictionary is mapped once (cached while the next
    file's dictionary is the same)."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}
        self.names: list[str] = []
        self._last: tuple[pa.Array, np.ndarray] | None = None

    def map(self, dictionary: pa.Array) -> np.ndarray:
        if self._last is not None and self._last[0].equals(dictionary):
            return self._last[1]
        out = np.empty(len(dictionary), np.int64)
        for i, v in enumerate(dictionary.to_pylist()):
            j = self.ids.get(v)
            if j is None:
                j = self.ids[v] = len(self.names)
                self.names.append(v)
            out[i] = j
        self._last = (dictionary, out)
        return out


def _dict_indices(col: pa.ChunkedArray) -> tuple[pa.Array, np.ndarray]:
    a = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    if not pa.types.is_dictionary(a.type):
        a = a.dictionary_encode()
    idx = a.indices.fill_null(0) if a.null_count else a.indices
    return a.dictionary, idx.to_numpy(zero_copy_only=False)


class _Pass:
    """Per-series sums, utilization/framebuffer bins and heatmap cells of the rows with
    hour_start in [lo, hi), accumulated file by file in numpy arrays indexed by a dense series id."""

    def __init__(self, start_ms: int, cell_ms: int, lo: int, hi: int) -> None:
        self.start_ms, self.cell_ms, self.lo, self.hi = start_ms, cell_ms, lo, hi
        self.ncell = max(1, -(-(hi - start_ms) // cell_ms))
        self.gpus, self.srcs, self.vms = _Names(), _Names(), _Names()
        self.series: dict[tuple[int, int], int] = {}
        self.keys: list[tuple[int, int]] = []
        self.cap = 0
        self.sums: dict[str, np.ndarray] = {}
        self.arr: dict[str, np.ndarray] = {}
        self.nfb = 0
        self.fbins: dict[int, int] = {}  # framebuffer bin → column of fb_n/fb_rows
        self._buf: dict[str, list[tuple[np.ndarray, ...]]] = {"fb": [], "ubin": [], "heat": []}
        self._rows = 0
        self._lut_key: tuple[Any, ...] | None = None
        self._lut = np.empty(0, np.int64)

    def _grow(self, n: int, nfb: int) -> None:
        if n <= self.cap and nfb <= self.nfb:
            return
        cap = max(n, 2 * self.cap, 1024) if n > self.cap else self.cap
        nfb = max(nfb, self.nfb)
        init = {"first": _I64_MAX, "last": _I64_MIN, "fb_max": -1, "fb_total": -1, "vm_ts": _I64_MIN, "vm": -1}
        shapes: dict[str, tuple[int, ...]] = {
            **{k: (cap,) for k in (*(c for c, _, _ in _SUM_COLS), "hours")},
            **{k: (cap,) for k in init},
            "ubin": (cap, 102), "heat_busy": (cap, self.ncell), "heat_cov": (cap, self.ncell),
            "fb_n": (cap, nfb), "fb_rows": (cap, nfb)}
        for k, shape in shapes.items():
            dtype = np.int64 if k in init or k in ("hours", "fb_n", "fb_rows") else np.float64
            new = np.full(shape, init.get(k, 0), dtype)
            old = self.arr.get(k)
            if old is not None:
                new[tuple(slice(0, d) for d in old.shape)] = old
            self.arr[k] = new
        self.cap, self.nfb = cap, nfb

    def _sids(self, tb: pa.Table) -> np.ndarray:
        gd, gi = _dict_indices(tb.column("gpu_uuid"))
        sd, si = _dict_indices(tb.column("source"))
        gmap, smap = self.gpus.map(gd), self.srcs.map(sd)
        ns = max(len(sd), 1)
        combo = gi.astype(np.int64) * ns + si
        present = np.flatnonzero(np.bincount(combo, minlength=len(gd) * ns))
        key = (id(gmap), id(smap), ns, present.tobytes())
        if key != self._lut_key:
            lut = np.full(len(gd) * ns, -1, np.int64)
            for c in present.tolist():
                k = (int(gmap[c // ns]), int(smap[c % ns]))
                j = self.series.get(k)
                if j is None:
                    j = self.series[k] = len(self.keys)
                    self.keys.append(k)
                lut[c] = j
            self._lut_key, self._lut = key, lut
        sid: np.ndarray = self._lut[combo]
        return sid

    def add(self, tb: pa.Table) -> None:
        if any(tb.column(c).null_count for c in _REQUIRED):
            raise _NotFast("NULL in a required column")
        hs = _i64(tb.column("hour_start"))
        keep = (hs >= self.lo) & (hs < self.hi)
        if not keep.all():
            tb, hs = tb.filter(pa.array(keep)), hs[keep]
        if not tb.num_rows:
            return
        sid = self._sids(tb)
        fb = _i64(tb.column("fb_used_max_bytes"), -1) if "fb_used_max_bytes" in tb.column_names else None
        fbd = None  # framebuffer bin → its dense column (the bins present anywhere, few)
        if fb is not None:
            fbin = fb[fb >= 0] // FB_BIN_BYTES
            for b in np.flatnonzero(np.bincount(fbin)).tolist() if fbin.size else []:
                self.fbins.setdefault(b, len(self.fbins))
            lut = np.full(max(self.fbins, default=0) + 1, -1, np.int64)
            lut[list(self.fbins)] = list(self.fbins.values())
            fbd = np.where(fb >= 0, lut[np.maximum(fb, 0) // FB_BIN_BYTES], -1)
        self._grow(len(self.keys), len(self.fbins))
        n, a = len(self.keys), self.arr
        # a day file is sorted by series: each series' rows are one run, reduced in place (reduceat);
        # otherwise per row (bincount, ufunc.at)
        starts = np.flatnonzero(np.r_[True, sid[1:] != sid[:-1]])
        ss = sid[starts]
        runs = bool(np.bincount(ss, minlength=1).max() <= 1)

        def add_sum(out: str, v: np.ndarray) -> None:
            if runs:
                a[out][ss] += np.add.reduceat(v, starts)
            else:
                a[out][:n] += np.bincount(sid, weights=v, minlength=n)

        def fold(uf: np.ufunc, out: np.ndarray, v: np.ndarray) -> None:
            if runs:
                out[ss] = uf(out[ss], uf.reduceat(v, starts))
            else:
                uf.at(out, sid, v)

        for out, col, _ in _SUM_COLS:
            if col in tb.column_names:
                add_sum(out, _f64(tb.column(col)))
        if runs:
            a["hours"][ss] += np.diff(np.r_[starts, len(sid)])
        else:
            a["hours"][:n] += np.bincount(sid, minlength=n)
        fold(np.minimum, a["first"], _i64(tb.column("first_ts")))
        last = _i64(tb.column("last_ts"))
        fold(np.maximum, a["last"], last)
        if fb is not None:
            assert fbd is not None
            fold(np.maximum, a["fb_max"], fb)
            has = fbd >= 0
            smp = _i64(tb.column("samples"))
            self._buf["fb"].append((sid, fbd, smp) if has.all() else (sid[has], fbd[has], smp[has]))
        if "fb_total_bytes" in tb.column_names:
            fold(np.maximum, a["fb_total"], _i64(tb.column("fb_total_bytes"), -1))
        if "vm_bios_uuid" in tb.column_names and tb.column("vm_bios_uuid").null_count < tb.num_rows:
            vcol = tb.column("vm_bios_uuid").combine_chunks()
            valid = vcol.is_valid().to_numpy(zero_copy_only=False)
            vd, vi = _dict_indices(pa.chunked_array([vcol]))
            vglob = self.vms.map(vd)
            ts = np.full(n, _I64_MIN, np.int64)
            fold(np.maximum, ts, np.where(valid, last, _I64_MIN))
            best = valid & (last == ts[sid])
            vm = np.full(n, -1, np.int64)
            vm[sid[best]] = vglob[vi[best]]
            newer = ts > a["vm_ts"][:n]
            a["vm_ts"][:n][newer] = ts[newer]
            a["vm"][:n][newer] = vm[newer]
        cov, busy = _f64(tb.column("covered_s")), _f64(tb.column("busy_s"))
        pos = cov > 0
        ub = np.where(busy == 0, 0, np.minimum(np.floor(100 * busy / np.where(pos, cov, 1)), 100).astype(np.int64) + 1)
        c = (hs - self.start_ms) // self.cell_ms
        if c.min() < 0 or c.max() >= self.ncell:
            raise _NotFast("heat cell out of range")
        if not pos.all():
            sid, ub, c, busy, cov = sid[pos], ub[pos], c[pos], busy[pos], cov[pos]
        self._buf["ubin"].append((sid, ub, cov))
        self._buf["heat"].append((sid, c, busy, cov))
        self._rows += len(sid)
        if self._rows >= 4_000_000:
            self._flush()

    def _flush(self) -> None:
        """The buffered rows into the bins and cells (one bincount over several files' rows)."""
        n, a = len(self.keys), self.arr
        cat = np.concatenate
        if self._buf["fb"]:
            sid, col, w = (cat(x) for x in zip(*self._buf["fb"], strict=True))
            size = n * self.nfb
            k = sid * self.nfb + col
            a["fb_n"].reshape(-1)[:size] += np.bincount(k, weights=w, minlength=size).astype(np.int64)
            a["fb_rows"].reshape(-1)[:size] += np.bincount(k, minlength=size)
        if self._buf["ubin"]:
            sid, ub, cov = (cat(x) for x in zip(*self._buf["ubin"], strict=True))
            a["ubin"].reshape(-1)[:n * 102] += np.bincount(sid * 102 + ub, weights=cov, minlength=n * 102)
        if self._buf["heat"]:
            sid, c, busy, cov = (cat(x) for x in zip(*self._buf["heat"], strict=True))
            k, size = sid * self.ncell + c, n * self.ncell
            a["heat_busy"].reshape(-1)[:size] += np.bincount(k, weights=busy, minlength=size)
            a["heat_cov"].reshape(-1)[:size] += np.bincount(k, weights=cov, minlength=size)
        self._buf = {"fb": [], "ubin": [], "heat": []}
        self._rows = 0

    def run(self, files: list[Path]) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame, pl.DataFrame]:
        with ThreadPoolExecutor(1) as ex:  # the next file is read (pyarrow, without the GIL) meanwhile
            nxt = ex.submit(_read, files[0]) if files else None
            for i in range(len(files)):
                assert nxt is not None
                tb = nxt.result()
                nxt = ex.submit(_read, files[i + 1]) if i + 1 < len(files) else None
                self.add(tb)
        self._flush()
        n, a = len(self.keys), self.arr
        self._grow(n, 0)
        gi = np.array([k[0] for k in self.keys], np.int64)
        si = np.array([k[1] for k in self.keys], np.int64)
        gpu = pl.Series("gpu_uuid", self.gpus.names, pl.String)[gi] if n else pl.Series("gpu_uuid", [], pl.String)
        src = pl.Series("source", self.srcs.names, pl.String)[si] if n else pl.Series("source", [], pl.String)
        vmi = a["vm"][:n]
        vm = pl.Series("vm_bios_uuid", [self.vms.names[i] if i >= 0 else None for i in vmi.tolist()], pl.String)
        ints = ("samples", "intervals", "held_intervals")
        roll = pl.DataFrame([gpu, src, vm]).with_columns(
            *[pl.Series(o, a[o][:n] * f if o not in ints else a[o][:n], pl.Float64) for o, _, f in _SUM_COLS],
            first_ms=pl.Series(a["first"][:n]), last_ms=pl.Series(a["last"][:n]),
            fb_max_bytes=pl.Series(a["fb_max"][:n]), fb_total_bytes=pl.Series(a["fb_total"][:n]),
            hours=pl.Series(a["hours"][:n]),
        ).with_columns(
            pl.col(*ints).cast(pl.Int64), (pl.col("intervals") - pl.col("held_intervals")).alias("counter_intervals")
            .cast(pl.Int64), gap_intervals=pl.lit(0, pl.Int64),
            fb_max_bytes=pl.when(pl.col("fb_max_bytes") >= 0).then(pl.col("fb_max_bytes")),
            fb_total_bytes=pl.when(pl.col("fb_total_bytes") >= 0).then(pl.col("fb_total_bytes")))
        keys = pl.DataFrame([gpu, src]).with_row_index("sid")

        def cells(m: np.ndarray, name: str, extra: dict[str, np.ndarray]) -> pl.DataFrame:
            r, c = np.nonzero(m[:n])
            return keys[r].with_columns(pl.Series(name, c), **{k: pl.Series(v[:n][r, c]) for k, v in extra.items()})

        bins = cells(a["ubin"] > 0, "bin", {"cov": a["ubin"]}).select(
            "gpu_uuid", "source", pl.col("bin").cast(pl.Int32), "cov")
        fbin = np.zeros(max(self.nfb, 1), np.int64)
        fbin[list(self.fbins.values())] = list(self.fbins)
        fbh = cells(a["fb_rows"] > 0, "col", {"n": a["fb_n"]})
        fbh = fbh.select("gpu_uuid", "source", bin=pl.Series(fbin[fbh["col"].to_numpy()], dtype=pl.Int64),
                         n=pl.col("n").cast(pl.UInt32))
        heat = cells(a["heat_cov"] > 0, "c", {"busy": a["heat_busy"], "cov": a["heat_cov"]}).select(
            gpu="gpu_uuid", source="source", c=pl.col("c").cast(pl.Int64), busy="busy", cov="cov")
        return roll, bins, fbh, heat.with_columns(cell_ms=pl.lit(self.cell_ms, dtype=pl.Int64))


def _scan_sql(con: Any, window: Window, h0: dt.datetime, hr: dt.datetime,
              cell: int) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """:func:`_scan` by SQL over the ``gpu_rollup_hour`` view (the same figures; four scans)."""
    params = [h0.date(), (hr - MS).date(), h0, hr]
    where = "date BETWEEN ? AND ? AND hour_start >= ? AND hour_start < ?"
    roll = frame(con, f"""
        SELECT gpu_uuid, source, sum(samples)::BIGINT AS samples, epoch_ms(min(first_ts)) AS first_ms,
               epoch_ms(max(last_ts)) AS last_ms, max(fb_used_max_bytes) AS fb_max_bytes,
               max(fb_total_bytes) AS fb_total_bytes,
               arg_max(vm_bios_uuid, last_ts) FILTER (WHERE vm_bios_uuid IS NOT NULL) AS vm_bios_uuid,
               sum(intervals)::BIGINT AS intervals, sum(held_intervals)::BIGINT AS held_intervals,
               (sum(intervals) - sum(held_intervals))::BIGINT AS counter_intervals,
               sum(covered_s) * 1000 AS cov_ms, sum(busy_s) * 1000 AS busy_ms, sum(idle_s) * 1000 AS idle_ms,
               sum(alloc_idle_s) * 1000 AS alloc_idle_ms, sum(idle_full_s) * 1000 AS zero_ms,
               coalesce(sum(energy_j), 0) * 1000 AS e_mj, coalesce(sum(idle_full_energy_j), 0) * 1000 AS idle_e_mj,
               sum(interval_s) * 1000 AS dt_ms, sum(gap_s) * 1000 AS gap_ms, 0::BIGINT AS gap_intervals,
               coalesce(sum(gap_energy_j), 0) * 1000 AS gap_e_ctr_mj, count(*) AS hours
        FROM gpu_rollup_hour WHERE {where} GROUP BY ALL""", params)
    # p95 at hour resolution: the time-weighted distribution of the hours' utilization (1 % bins)
    bins = frame(con, f"""
        SELECT gpu_uuid, source, CASE WHEN busy_s = 0 THEN 0
               ELSE least(floor(100 * busy_s / covered_s), 100)::INTEGER + 1 END AS bin, sum(covered_s) AS cov
        FROM gpu_rollup_hour WHERE {where} AND covered_s > 0 GROUP BY ALL""", params)
    fb = frame(con, f"""
        SELECT gpu_uuid, source, (fb_used_max_bytes // {FB_BIN_BYTES})::BIGINT AS bin, sum(samples)::UINTEGER AS n
        FROM gpu_rollup_hour WHERE {where} AND fb_used_max_bytes IS NOT NULL GROUP BY ALL""", params)
    cells = frame(con, f"""
        SELECT gpu_uuid AS gpu, source, (epoch_ms(hour_start) - {window.start_ms}) // {cell} AS c,
               sum(busy_s) AS busy, sum(covered_s) AS cov
        FROM gpu_rollup_hour WHERE {where} AND covered_s > 0 GROUP BY ALL""", params)
    return roll, bins, fb, cells.with_columns(cell_ms=pl.lit(cell, dtype=pl.Int64))


def _read(path: Path) -> pa.Table:
    try:
        pf = pq.ParquetFile(path, read_dictionary=["gpu_uuid", "source", "vm_bios_uuid"])
        names = set(pf.schema_arrow.names)
        if not set(_REQUIRED) <= names:
            raise _NotFast(f"{path}: columns missing")
        tb = pf.read(columns=[c for c in (*_REQUIRED, *_OPTIONAL) if c in names])
        # one chunk per column (one per row group as read): contiguous numpy views, no copies later
        return tb.combine_chunks() if any(c.num_chunks > 1 for c in tb.columns) else tb
    except (OSError, pa.ArrowException) as e:
        raise _NotFast(str(e)) from None


def _i64(col: pa.ChunkedArray, null: int = 0) -> np.ndarray:
    a = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    if pa.types.is_timestamp(a.type):
        a = a.cast(pa.timestamp("ms", a.type.tz))
    a = a.cast(pa.int64())
    if a.null_count:
        a = a.fill_null(null)
    out: np.ndarray = a.to_numpy(zero_copy_only=False)
    return out


def _f64(col: pa.ChunkedArray) -> np.ndarray:
    a = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    if a.null_count:
        a = a.fill_null(0)
    out: np.ndarray = a.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    return out


def _p95(bins: pl.DataFrame) -> pl.DataFrame:
    b = bins.group_by("gpu_uuid", "source", "bin").agg(pl.col("cov").sum()).sort("gpu_uuid", "source", "bin")
    k = ["gpu_uuid", "source"]
    b = b.with_columns(cum=pl.col("cov").cum_sum().over(k), tot=pl.col("cov").sum().over(k))
    return (b.filter((pl.col("tot") > 0) & (pl.col("cum") >= 0.95 * pl.col("tot"))).group_by(k)
            .agg(pl.col("bin").min().alias("b"))
            .select(*k, p95_util_percent=pl.when(pl.col("b") == 0).then(0).otherwise(pl.col("b") - 1)
                    .cast(pl.Float64)))


def _heat(window: Window, cells: pl.DataFrame, gpus: pl.DataFrame) -> pl.DataFrame:
    """Heatmap of the chosen series from the rolled-up hours: whole-hour cells, at most ~168."""
    if not cells.height:
        return pl.DataFrame(schema={"gpu": pl.String, "cell_start_ms": pl.Int64, "util_percent": pl.Float64,
                                    "coverage": pl.Float64})
    h = cells.join(gpus.select("gpu", "source"), on=["gpu", "source"], how="inner")
    cell = pl.col("cell_ms")
    return h.select("gpu", cell_start_ms=window.start_ms + pl.col("c").cast(pl.Int64) * cell,
                    util_percent=100.0 * pl.col("busy") / pl.col("cov"), coverage=pl.col("cov") * 1000.0 / cell)
