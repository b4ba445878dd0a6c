"""Hourly per-GPU rollups (``gpu_rollup_hour``) with Spark, from the store's ``gpu_sample`` Parquet.

Rule (docs/store.md "Rollups", docs/spark.md): per series (gpu_uuid, source), the intervals of
analytics/samples.py (accelmon/spark/intervals.py: counters' ``increase()`` with resets handled like
Prometheus, else the held ``util_percent`` with the gap rule), **each interval assigned to the UTC
hour of its end sample**. So Σ over the hours of a window equals the raw window's figures:

* ``busy_s``, ``covered_s`` = Σ busy, Σ covered of the non-gap intervals; ``idle_s`` = covered − busy;
  NULL for an hour without any utilization interval (one lone sample), never 0;
* ``energy_j`` = Σ increase(energy counter), else held power × covered (gaps' counter increase
  included, as ``energy_joules``); NULL when nothing reported energy or power;
* ``sm_active_s``, ``tensor_active_s``, ``dram_active_s``, ``activity_covered_s`` = the activity
  intervals of analytics/activity.py; NULL without any activity reading in the hour;
* ``samples``, ``fb_used_max_bytes``, ``fb_total_bytes``, ``vm_bios_uuid`` (newest non-null): the
  samples whose time is in the hour.

Samples from ``lookback`` before the first hour are read so the first interval of each series ending in
it is complete; the held-gap median is that of the samples read.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import polars as pl
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from accelmon.spark.intervals import SERIES, activity_intervals, samples_in, util_intervals
from accelmon.spark.replace import replace_range
from accelmon.store.schema import table
from accelmon.store.writer import Store

HOUR_MS = 3_600_000
DEFAULT_LOOKBACK_S = 6 * 3600


def _hour(c: str = "t") -> Any:
    return (F.floor(F.col(c) / HOUR_MS) * HOUR_MS).cast("long")


def rollups(gpu_sample: DataFrame, start_ms: int, end_ms: int, lookback_s: float = DEFAULT_LOOKBACK_S) -> DataFrame:
    """Rows of ``gpu_rollup_hour`` for the hours in [start_ms, end_ms) (both multiples of an hour).
    ``hour_ms`` holds hour_start as epoch ms (see :func:`to_store_rows`)."""
    s = samples_in(gpu_sample, start_ms - int(lookback_s * 1000), end_ms - 1).cache()
    in_range = (F.col("t") >= start_ms) & (F.col("t") < end_ms)
    keys = [*SERIES, "hour_ms"]
    stats = s.where(in_range).withColumn("hour_ms", _hour()).groupBy(*keys).agg(
        F.count("*").cast("int").alias("samples"),
        F.max("fb_used_bytes").cast("long").alias("fb_used_max_bytes"),
        F.max("fb_total_bytes").cast("long").alias("fb_total_bytes"),
        F.max_by("vm_bios_uuid", F.when(F.col("vm_bios_uuid").isNotNull(), F.col("t"))).alias("vm_bios_uuid"),
        F.min("t").alias("first_ms"), F.max("t").alias("last_ms"),
    )
    iv = util_intervals(s).where(in_range).withColumn("hour_ms", _hour())
    ok = ~F.col("gap") & (F.col("bin") >= 0)
    u = iv.groupBy(*keys).agg(
        F.sum(F.when(ok, F.col("busy"))).alias("busy_ms"),
        F.sum(F.when(ok, F.col("cov"))).alias("cov_ms"),
        F.sum(F.when(~F.col("gap"), F.col("e_ctr") + F.col("e_pow")).otherwise(F.col("e_ctr"))).alias("e_mj"),
        F.max(F.col("e_known").cast("int")).alias("e_known"),
        # the columns the DuckDB rollup carries for the report's long-window path (accelmon/store/schema.py)
        F.sum(F.when(ok & (F.col("bin") == 0), F.col("cov"))).alias("zero_ms"),
        F.sum(F.when(~F.col("gap") & (F.col("bin") == 0), F.col("e_ctr") + F.col("e_pow"))).alias("idle_e_mj"),
        F.sum(F.when(~F.col("gap"), F.col("alloc") - F.col("alloc_busy"))).alias("alloc_idle_ms"),
        F.sum(F.when(F.col("gap"), F.col("dt"))).alias("gap_ms"),
        F.sum(F.when(F.col("gap"), F.col("e_ctr"))).alias("gap_e_mj"),
        F.count(F.when(~F.col("gap"), 1)).alias("intervals"),
        F.count(F.when(~F.col("gap") & F.col("held"), 1)).alias("held_intervals"),
        F.sum(F.when(~F.col("gap"), F.col("dt"))).alias("dt_ms"),
    )
    a = activity_intervals(s).where(in_range).withColumn("hour_ms", _hour()).groupBy(*keys).agg(
        F.sum("sm_act").alias("sm_ms"), F.sum("tensor_act").alias("tensor_ms"), F.sum("dram_act").alias("dram_ms"),
        F.sum("sm_cov").alias("act_cov_ms"))
    out = stats.join(u, keys, "left").join(a, keys, "left")
    return out.select(
        "hour_ms", "gpu_uuid", "source", "vm_bios_uuid",
        (F.col("busy_ms") / 1000.0).alias("busy_s"),
        ((F.col("cov_ms") - F.col("busy_ms")) / 1000.0).alias("idle_s"),
        (F.col("cov_ms") / 1000.0).alias("covered_s"),
        "samples", "fb_used_max_bytes", "fb_total_bytes",
        F.when(F.col("e_known") == 1, F.col("e_mj") / 1000.0).alias("energy_j"),
        (F.col("sm_ms") / 1000.0).alias("sm_active_s"),
        (F.col("tensor_ms") / 1000.0).alias("tensor_active_s"),
        (F.col("dram_ms") / 1000.0).alias("dram_active_s"),
        (F.col("act_cov_ms") / 1000.0).alias("activity_covered_s"),
        (F.coalesce(F.col("zero_ms"), F.lit(0.0)) / 1000.0).alias("idle_full_s"),
        F.when(F.col("e_known") == 1, F.coalesce(F.col("idle_e_mj"), F.lit(0.0)) / 1000.0).alias("idle_full_energy_j"),
        (F.coalesce(F.col("alloc_idle_ms"), F.lit(0.0)) / 1000.0).alias("alloc_idle_s"),
        (F.coalesce(F.col("gap_ms"), F.lit(0.0)) / 1000.0).alias("gap_s"),
        F.when(F.col("gap_e_mj") > 0, F.col("gap_e_mj") / 1000.0).alias("gap_energy_j"),
        F.coalesce(F.col("intervals"), F.lit(0)).cast("int").alias("intervals"),
        F.coalesce(F.col("held_intervals"), F.lit(0)).cast("int").alias("held_intervals"),
        (F.coalesce(F.col("dt_ms"), F.lit(0.0)) / 1000.0).alias("interval_s"),
        "first_ms", "last_ms",
    )


def to_store_rows(df: DataFrame) -> pl.DataFrame:
    """Collect rollup rows (per day: hundreds of thousands at most) in the store's column order."""
    p: pl.DataFrame = pl.from_arrow(df.toArrow())  # type: ignore[assignment]
    p = p.with_columns(
        *(pl.from_epoch(pl.col(c), time_unit="ms").dt.replace_time_zone("UTC").alias(n)
          for c, n in (("hour_ms", "hour_start"), ("first_ms", "first_ts"), ("last_ms", "last_ts"))))
    return p.select(table("gpu_rollup_hour").column_names)


def write_rollups(store: Store, gpu_sample: DataFrame, start: dt.datetime, end: dt.datetime,
                  lookback_s: float = DEFAULT_LOOKBACK_S) -> int:
    """Compute and store the hours in [start, end) (widened to whole hours), one UTC day at a time;
    re-running an hour replaces it (accelmon/spark/replace.py). Returns the rows written."""
    s_ms = int(start.timestamp() * 1000) // HOUR_MS * HOUR_MS
    e_ms = -(-int(end.timestamp() * 1000) // HOUR_MS) * HOUR_MS
    written = 0
    day_ms = 24 * HOUR_MS
    d = s_ms // day_ms * day_ms
    while d < e_ms:
        a, b = max(d, s_ms), min(d + day_ms, e_ms)
        rows = to_store_rows(rollups(gpu_sample, a, b, lookback_s))
        day = dt.datetime.fromtimestamp(d / 1000, dt.UTC).date().isoformat()
        replace_range(store, "gpu_rollup_hour", day, a, b, rows.to_arrow())
        written += rows.height
        d += day_ms
    return written
