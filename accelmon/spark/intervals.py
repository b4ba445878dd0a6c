"""Sample intervals as Spark columns: the definitions of analytics/samples.py and analytics/activity.py.

A series is one (gpu_uuid, source); consecutive samples k-1, k form the interval (t[k-1], t[k]]
(docs/analytics.md, "Underutilized accelerators"). Utilization intervals:

* **counter** - both ends carry ``busy_ms_total`` and ``idle_ms_total``: ``increase(c) = c[k] - c[k-1]``,
  or ``c[k]`` after a decrease (a reset, like Prometheus ``increase()``); covered = min(Δbusy + Δidle, Δt);
  u = 100·Δbusy / (Δbusy + Δidle);
* **held** - else ``util_percent[k-1]`` held over Δt; a held interval whose Δt bucket
  ``dq = round(100·ln Δt_ms)`` exceeds the series' lower-median bucket by more than 69 (= ⌊100·ln 2⌋)
  is a **gap**, excluded;
* energy: increase(``energy_millijoules_total``) where both ends have it, else held
  ``power_milliwatts[k-1]`` × covered.

Activity intervals (analytics/activity.py) are formed between the samples that carry any activity
column: a **counter** interval where both ends carry the activity counter and the busy/idle counters
(fraction = increase(active) / (Δbusy + Δidle), clipped to [0, 1], covered = min(Δbusy + Δidle, Δt)),
else the **gauge** of sample k over Δt, a gap when Δt > 2 × the series' median gauge Δt.

Everything here is per row or per series (a window partitioned by series): it runs on the executors.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from accelmon.analytics.activity import ACTIVITY_COLUMNS, METRICS
from accelmon.analytics.samples import ALLOC_FB_BYTES
from accelmon.analytics.utilization import GAP_DQ, SOURCE_PRIORITY

SERIES = ("gpu_uuid", "source")
UTIL_COLUMNS = ("util_percent", "busy_ms_total", "idle_ms_total", "fb_used_bytes", "fb_total_bytes",
                "power_milliwatts", "energy_millijoules_total")


def _ensure(df: DataFrame, cols: tuple[str, ...]) -> DataFrame:
    """Columns missing from every file (an old store) read as NULL, never 0."""
    for c in cols:
        if c not in df.columns:
            df = df.withColumn(c, F.lit(None).cast("double"))
    return df


def samples_in(df: DataFrame, start_ms: int, end_ms: int) -> DataFrame:
    """gpu_sample rows with ``t`` (epoch ms) in [start_ms, end_ms], day partitions pruned."""
    d0 = dt.datetime.fromtimestamp(start_ms / 1000, dt.UTC).date()
    d1 = dt.datetime.fromtimestamp(end_ms / 1000, dt.UTC).date()
    df = _ensure(df, UTIL_COLUMNS + ACTIVITY_COLUMNS + ("vm_bios_uuid",))
    return (df.where(F.col("date").between(F.lit(d0), F.lit(d1)))
            .withColumn("t", F.unix_millis(F.col("ts")))
            .where(F.col("t").between(start_ms, end_ms)))


def _inc(c: str) -> Column:
    """Prometheus increase() of one step: the difference, or the new value after a decrease (a reset)."""
    prev = F.col(f"p_{c}")
    return F.when(F.col(c) < prev, F.col(c)).otherwise(F.col(c) - prev).cast("double")


def _with_prev(df: DataFrame, cols: tuple[str, ...]) -> DataFrame:
    w = Window.partitionBy(*SERIES).orderBy("t")
    out = df.withColumn("t0", F.lag("t").over(w))
    for c in cols:
        out = out.withColumn(f"p_{c}", F.lag(c).over(w))
    return out.withColumn("dt", (F.col("t") - F.col("t0")).cast("double"))


def util_intervals(s: DataFrame) -> DataFrame:
    """One row per interval that counts (counter, held, or energy-only), with ``gap`` decided.

    Columns: gpu_uuid, source, t (end), dt, held, gap, bin (-1 energy only, 0 idle, 1 + ⌊u⌋),
    cov, busy, alloc, alloc_busy, e_ctr, e_pow (ms / mJ)."""
    iv = _with_prev(s, ("util_percent", "busy_ms_total", "idle_ms_total", "fb_used_bytes", "power_milliwatts",
                        "energy_millijoules_total")).where(F.col("t0").isNotNull())
    nn = [F.col(c).isNotNull() for c in ("busy_ms_total", "idle_ms_total", "p_busy_ms_total", "p_idle_ms_total")]
    ctr = nn[0] & nn[1] & nn[2] & nn[3]
    held = ~ctr & F.col("p_util_percent").isNotNull()
    eok = F.col("energy_millijoules_total").isNotNull() & F.col("p_energy_millijoules_total").isNotNull()
    iv = iv.withColumn("ctr", ctr).withColumn("held", held).withColumn("eok", eok).where(
        F.col("ctr") | F.col("held") | F.col("eok"))
    db, di = _inc("busy_ms_total"), _inc("idle_ms_total")
    iv = iv.withColumn("db", F.when(F.col("ctr"), db)).withColumn("tot", F.when(F.col("ctr"), db + di))
    u0 = F.col("p_util_percent").cast("double")
    ui = F.when(F.col("ctr"), F.when(F.col("tot") > 0, 100.0 * F.col("db") / F.col("tot")).otherwise(0.0)).otherwise(
        F.coalesce(u0, F.lit(0.0)))
    cov = (F.when(F.col("ctr"), F.when(F.col("tot") > 0, F.least(F.col("tot"), F.col("dt"))).otherwise(0.0))
           .when(F.col("held"), F.col("dt")).otherwise(0.0))
    idle = F.when(F.col("ctr"), F.col("db") == 0).otherwise(u0 == 0)
    iv = iv.withColumn("ui", ui).withColumn("cov", cov)
    bin_ = (F.when(~F.col("ctr") & ~F.col("held"), F.lit(-1))
            .when(idle, F.lit(0)).otherwise(F.least(F.floor(F.col("ui")), F.lit(100)).cast("int") + 1))
    alloc = F.when(F.col("p_fb_used_bytes").isNotNull() & (F.col("p_fb_used_bytes") >= ALLOC_FB_BYTES),
                   F.col("cov")).otherwise(0.0)
    iv = (iv.withColumn("bin", bin_.cast("int"))
          .withColumn("busy", F.col("cov") * F.col("ui") / 100.0)
          .withColumn("alloc", alloc)
          .withColumn("alloc_busy", F.when(F.col("alloc") > 0, F.col("busy")).otherwise(0.0))
          .withColumn("e_ctr", F.when(F.col("eok"), _inc("energy_millijoules_total")).otherwise(0.0))
          .withColumn("e_pow", F.when(~F.col("eok") & F.col("p_power_milliwatts").isNotNull(),
                                      F.col("p_power_milliwatts") * F.col("cov") / 1000.0).otherwise(0.0))
          .withColumn("dq", F.when(F.col("held"), F.bround(100.0 * F.log(F.greatest(F.col("dt"), F.lit(1.0))), 0)
                                   .cast("int"))))
    # lower median Δt bucket of the held intervals, by interval count (analytics/utilization.py)
    h = iv.where(F.col("held")).groupBy(*SERIES, "dq").agg(F.count("*").alias("n"))
    wc = Window.partitionBy(*SERIES).orderBy("dq").rowsBetween(Window.unboundedPreceding, Window.currentRow)
    h = h.withColumn("cum", F.sum("n").over(wc)).withColumn("tot_n", F.sum("n").over(Window.partitionBy(*SERIES)))
    med = h.where(F.col("cum") * 2 >= F.col("tot_n")).groupBy(*SERIES).agg(F.min("dq").alias("med_dq"))
    iv = iv.join(med, list(SERIES), "left").withColumn(
        "gap", F.coalesce(F.col("held") & (F.col("dq") > F.col("med_dq") + GAP_DQ), F.lit(False)))
    e_known = F.col("eok") | F.col("p_power_milliwatts").isNotNull()
    return iv.select(*SERIES, "t", "dt", "held", "gap", "bin", "cov", "busy", "alloc", "alloc_busy", "e_ctr",
                     "e_pow", "med_dq", e_known.alias("e_known"))


def activity_intervals(s: DataFrame) -> DataFrame:
    """One row per activity interval (dt > 0) with, per metric key (sm, tensor, dram), ``{key}_cov`` and
    ``{key}_act`` (ms), ``sm_ctr``/``sm_gauge``/``sm_gap`` flags and ``occ_cov``/``occ_ms``."""
    any_act = None
    for c in ACTIVITY_COLUMNS:
        any_act = F.col(c).isNotNull() if any_act is None else any_act | F.col(c).isNotNull()
    cols = ("busy_ms_total", "idle_ms_total") + tuple(c for _k, _g, c in METRICS)
    iv = _with_prev(s.where(any_act), cols).where(F.col("t0").isNotNull() & (F.col("dt") > 0))
    have_bi = (F.col("busy_ms_total").isNotNull() & F.col("p_busy_ms_total").isNotNull()
               & F.col("idle_ms_total").isNotNull() & F.col("p_idle_ms_total").isNotNull())
    iv = iv.withColumn("tot", F.when(have_bi, _inc("busy_ms_total") + _inc("idle_ms_total")).otherwise(0.0))
    for key, gauge, counter in METRICS:
        ctr = (F.col("tot") > 0) & F.col(counter).isNotNull() & F.col(f"p_{counter}").isNotNull()
        iv = iv.withColumn(f"{key}_ctr", ctr).withColumn(f"{key}_g", ~ctr & F.col(gauge).isNotNull())
        # the median gauge Δt of the series (numpy's median: the mean of the two middle values)
        med = F.percentile(F.when(F.col(f"{key}_g"), F.col("dt")), F.lit(0.5)).over(Window.partitionBy(*SERIES))
        iv = iv.withColumn(f"{key}_gap", F.col(f"{key}_g") & (F.col("dt") > 2.0 * med))
        gv = F.col(f"{key}_g") & ~F.col(f"{key}_gap")
        frac = (F.when(F.col(f"{key}_ctr"), F.least(F.greatest(_inc(counter) / F.col("tot"), F.lit(0.0)), F.lit(1.0)))
                .when(gv, F.least(F.greatest(F.col(gauge).cast("double"), F.lit(0.0)), F.lit(100.0)) / 100.0)
                .otherwise(0.0))
        cov = F.when(F.col(f"{key}_ctr"), F.least(F.col("tot"), F.col("dt"))).when(gv, F.col("dt")).otherwise(0.0)
        iv = iv.withColumn(f"{key}_frac", frac).withColumn(f"{key}_cov", cov).withColumn(
            f"{key}_act", F.col(f"{key}_cov") * F.col(f"{key}_frac"))
        if key == "sm":
            iv = iv.withColumn("sm_gauge", gv)
    occ = F.col("sm_occupancy_percent")
    ov = occ.isNotNull() & (F.col("sm_cov") > 0)
    iv = iv.withColumn("occ_cov", F.when(ov, F.col("sm_cov")).otherwise(0.0)).withColumn(
        "occ_ms", F.when(ov, F.col("sm_cov") * F.least(F.greatest(occ.cast("double"), F.lit(0.0)), F.lit(100.0))
                         / 100.0).otherwise(0.0))
    return iv


def priority(col: str = "source") -> Column:
    """Source priority of analytics/utilization.py (lower wins a tie)."""
    expr: Any = F.lit(len(SOURCE_PRIORITY))
    for i, s in reversed(list(enumerate(SOURCE_PRIORITY))):
        expr = F.when(F.col(col) == s, F.lit(i)).otherwise(expr)
    return expr
