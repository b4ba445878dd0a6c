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
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import polars as pl

from accelmon.analytics.intervals import (
    AGG_SCHEMA,
    ALLOC_FB_BYTES,
    HEAT_SCHEMA,
    LN_DQ,
    NBINS,
    STAT_SCHEMA,
    Ctx,
    UnitResult,
    _process,
    _stitch,
)
from accelmon.analytics.sample_units import COLUMNS, Ids, Unit, data_range, gather, list_units, read_unit
from accelmon.store.writer import Store

__all__ = ["AGG_SCHEMA", "ALLOC_FB_BYTES", "COLUMNS", "HEAT_SCHEMA", "LN_DQ", "NBINS", "STAT_SCHEMA",
           "SeriesAggregates", "aggregate", "data_range", "list_units"]


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


def aggregate(
    store: Store,
    start: dt.datetime,
    end: dt.datetime,
    *,
    threads: int | None = None,
    heat_cells: int = 168,
    count_from: dt.datetime | None = None,
    bucket_ms: int | None = None,
    shard: str | None = None,
) -> SeriesAggregates:
    """Aggregate every gpu_sample series in [start, end] (see module doc).

    ``count_from``: samples from ``start`` are read, but only the intervals (and samples) whose end
    is at or after ``count_from`` are counted (a lookback, docs/store.md "Rollups"). ``bucket_ms``:
    ``agg`` and ``stats`` are per (series, bucket of the end sample) - column ``bucket``, the bucket
    starting at ``start + bucket * bucket_ms`` - instead of per series. ``shard``: read that shard's
    samples only (a shard's rollups; default: the union of all shards)."""
    start_ms, end_ms = int(start.timestamp() * 1000), int(end.timestamp() * 1000)
    span = max(end_ms - start_ms, 1)
    cell_ms = max(3_600_000, -(-span // heat_cells))
    ncells = max(1, -(-span // cell_ms))
    nbk = 1 if bucket_ms is None else span // bucket_ms + 1
    ctx = Ctx(start_ms, cell_ms, ncells, None if count_from is None else int(count_from.timestamp() * 1000),
              bucket_ms, nbk)
    ids = Ids()
    units = list_units(store, start_ms, end_ms, shard)
    workers = threads or min(4, os.cpu_count() or 1)

    def work(u: Unit) -> UnitResult | None:
        try:
            a = read_unit(u, ids, start_ms, end_ms)
        except FileNotFoundError:
            return None
        return None if a is None else _process(a, ctx)

    with ThreadPoolExecutor(max(1, workers)) as ex:
        results = [r for r in ex.map(work, units) if r is not None]
    stitched, bad = _stitch([r.bounds for r in results], ctx)
    if stitched is not None:
        results.append(stitched)
    if bad:
        results = [_drop(r, bad, nbk) for r in results]
        redo = gather(units, ids, bad, start_ms, end_ms)
        if redo is not None:
            results.append(_process(redo, ctx))
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
    if bucket_ms is not None:  # split the composite key (intervals.Ctx.key)
        agg, stats = (f.with_columns(bucket=(pl.col("sid") % nbk).cast(pl.Int32), sid=pl.col("sid") // nbk)
                      for f in (agg, stats))
    return SeriesAggregates(
        series=ids.frame(), agg=agg, stats=stats, heat=heat, cell_ms=cell_ms,
        window_start_ms=start_ms, window_end_ms=end_ms, units=len(units),
        rows=sum(r.rows for r in results), overlapped_series=len(bad),
    )


def _concat(frames: Iterable[pl.DataFrame], schema: dict[str, Any]) -> pl.DataFrame:
    fs = [f for f in frames if f.height]
    return pl.concat(fs) if fs else pl.DataFrame(schema=schema)


def _drop(r: UnitResult, bad: set[int], nbk: int) -> UnitResult:
    keep = ~(pl.col("sid") // nbk).is_in(list(bad))
    return UnitResult(r.agg.filter(keep), r.stats.filter(keep), r.heat.filter(~pl.col("sid").is_in(list(bad))), {},
                      r.rows)
