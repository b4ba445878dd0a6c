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
from dataclasses import dataclass, field
from typing import Any

import polars as pl

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
    pieces = [p for p in (head, tail) if p is not None and p.height]
    cols = ["gpu_uuid", "source", *SUMS, "first_ms", "last_ms", "fb_max_bytes", "fb_total_bytes", "vm_bios_uuid"]
    parts = [roll.select(cols)] if roll.height else []
    parts += [p.select(cols) for p in pieces]
    if not parts:
        return WindowFigures(utilization.metrics_from_series(head.drop("hour_busy_ms", "hour_cov_ms")),
                             lambda gpus: _heat(con, window, h0, hr, gpus), None, {"rollup_hours": 0})
    allp = pl.concat([p.with_columns(pl.col(c).cast(pl.Float64) for c in SUMS) for p in parts], how="vertical_relaxed")
    s = allp.group_by("gpu_uuid", "source").agg(
        *[pl.col(c).sum() for c in SUMS], pl.col("first_ms").min(), pl.col("last_ms").max(),
        pl.col("fb_max_bytes").max(), pl.col("fb_total_bytes").max(),
        pl.col("vm_bios_uuid").filter(pl.col("vm_bios_uuid").is_not_null()).sort_by(
            pl.col("last_ms").filter(pl.col("vm_bios_uuid").is_not_null())).last(),
    ).with_columns(pl.col(c).cast(pl.Int64) for c in ("samples", "intervals", "held_intervals", "counter_intervals",
                                                       "gap_intervals"))
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
    return WindowFigures(utilization.metrics_from_series(s), lambda gpus: _heat(con, window, h0, hr, gpus), fb, stats)


def _p95(bins: pl.DataFrame) -> pl.DataFrame:
    b = bins.group_by("gpu_uuid", "source", "bin").agg(pl.col("cov").sum()).sort("gpu_uuid", "source", "bin")
    k = ["gpu_uuid", "source"]
    b = b.with_columns(cum=pl.col("cov").cum_sum().over(k), tot=pl.col("cov").sum().over(k))
    return (b.filter((pl.col("tot") > 0) & (pl.col("cum") >= 0.95 * pl.col("tot"))).group_by(k)
            .agg(pl.col("bin").min().alias("b"))
            .select(*k, p95_util_percent=pl.when(pl.col("b") == 0).then(0).otherwise(pl.col("b") - 1)
                    .cast(pl.Float64)))


def _heat(con: Any, window: Window, h0: dt.datetime, hr: dt.datetime, gpus: pl.DataFrame) -> pl.DataFrame:
    """Heatmap of the chosen series from the rolled-up hours: whole-hour cells, at most ~168."""
    span = max(window.end_ms - window.start_ms, 1)
    cell = -(-max(rollup.HOUR_MS, -(-span // 168)) // rollup.HOUR_MS) * rollup.HOUR_MS
    h = frame(con, f"""
        SELECT gpu_uuid AS gpu, source, (epoch_ms(hour_start) - {window.start_ms}) // {cell} AS c,
               sum(busy_s) AS busy, sum(covered_s) AS cov
        FROM gpu_rollup_hour WHERE date BETWEEN ? AND ? AND hour_start >= ? AND hour_start < ? AND covered_s > 0
        GROUP BY ALL""", [h0.date(), (hr - MS).date(), h0, hr])
    if not h.height:
        return pl.DataFrame(schema={"gpu": pl.String, "cell_start_ms": pl.Int64, "util_percent": pl.Float64,
                                    "coverage": pl.Float64})
    h = h.join(gpus.select("gpu", "source"), on=["gpu", "source"], how="inner")
    return h.select("gpu", cell_start_ms=window.start_ms + pl.col("c").cast(pl.Int64) * cell,
                    util_percent=100.0 * pl.col("busy") / pl.col("cov"), coverage=pl.col("cov") * 1000.0 / cell)
