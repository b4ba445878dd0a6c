"""Underutilized accelerators: per-GPU time-weighted utilization over a window.

Input: :class:`accelmon.analytics.samples.SeriesAggregates` (interval sums per series).
Output: one row per GPU (or MIG instance / vGPU, whatever id the samples carry). The exact
definitions are in docs/analytics.md; in short (ARCHITECTURE.md, "Utilization": a sample with
value v over dt contributes busy = dt·v/100 and idle = dt − busy):

* covered time: counter intervals count min(Δbusy + Δidle, Δt); held intervals count Δt
  unless Δt > 2 × the series' median step (a *gap*, reported as missing coverage);
* ``mean_util_percent`` = busy time / covered time × 100;
* ``p95_util_percent``: time-weighted 95th percentile of interval utilization (1 % bins);
* ``idle_ratio`` = idle time / covered time, idle = covered − busy (so = 1 − mean/100);
* ``allocated_idle_hours``: idle time (covered − busy) of intervals while framebuffer ≥ 1 GiB was held;
* energy: energy-counter increase, else held power × covered time; idle energy and idle power
  are those of the *fully idle* intervals (no kernel at all: Δbusy = 0 or a held 0 %);
* the verdict (coverage against the GPU's presence, minimum covered time, MIG) is
  :func:`accelmon.analytics.verdict.judge`.

When several sources wrote the same GPU id, the series with the most covered time is used.
"""

from __future__ import annotations

import polars as pl

from accelmon.analytics.samples import SeriesAggregates
from accelmon.analytics.verdict import UtilThresholds, judge

__all__ = ["UtilThresholds", "gpu_metrics", "gpu_utilization", "heatmap", "median_dq", "metrics_from_series",
           "series_metrics"]

GAP_DQ = 69  # Δt > 2 × median  ⇔  dq − median_dq > 100·ln 2 = 69.3
SOURCE_PRIORITY = ["agent", "dcgm", "nvidia_gpu_exporter", "prometheus", "import", "simulation"]


def median_dq(held: pl.DataFrame) -> pl.DataFrame:
    """Per series: the median Δt bucket of its held intervals (lower median, by interval count)."""
    h = held.group_by("sid", "dq").agg(pl.col("n").sum()).sort("sid", "dq")
    h = h.with_columns(cum=pl.col("n").cum_sum().over("sid"), tot=pl.col("n").sum().over("sid"))
    return h.filter(pl.col("cum") * 2 >= pl.col("tot")).group_by("sid").agg(med_dq=pl.col("dq").min())


def _p95(rows: pl.DataFrame) -> pl.DataFrame:
    b = rows.filter(pl.col("bin") >= 0).group_by("sid", "bin").agg(pl.col("cov_ms").sum()).sort("sid", "bin")
    b = b.with_columns(cum=pl.col("cov_ms").cum_sum().over("sid"), tot=pl.col("cov_ms").sum().over("sid"))
    return (
        b.filter((pl.col("tot") > 0) & (pl.col("cum") >= 0.95 * pl.col("tot")))
        .group_by("sid")
        .agg(pl.col("bin").min().alias("p95_bin"))
        .select("sid", p95_util_percent=pl.when(pl.col("p95_bin") == 0).then(0).otherwise(pl.col("p95_bin") - 1)
                .cast(pl.Float64))
    )


def series_metrics(sa: SeriesAggregates) -> pl.DataFrame:
    """Per-series metrics (all sources), before choosing one series per GPU."""
    agg = sa.agg
    med = median_dq(agg.filter(pl.col("held")))
    rows = agg.join(med, on="sid", how="left").with_columns(
        gap=pl.col("held") & (pl.col("dq") > pl.col("med_dq") + GAP_DQ)
    )
    good = rows.filter(~pl.col("gap"))
    idle = pl.col("bin") == 0
    m = good.group_by("sid").agg(
        intervals=pl.col("n").sum(),
        held_intervals=pl.col("n").filter(pl.col("held")).sum(),
        counter_intervals=pl.col("n").filter(~pl.col("held") & (pl.col("bin") >= 0)).sum(),
        cov_ms=pl.col("cov_ms").sum(),
        busy_ms=pl.col("busy_ms").sum(),
        # idle = covered − busy (the definition), not "intervals at exactly 0 %"
        idle_ms=(pl.col("cov_ms") - pl.col("busy_ms")).sum(),
        alloc_idle_ms=(pl.col("alloc_ms") - pl.col("alloc_busy_ms")).sum(),
        zero_ms=pl.col("cov_ms").filter(idle).sum(),
        e_mj=(pl.col("e_ctr_mj") + pl.col("e_pow_mj")).sum(),
        idle_e_mj=(pl.col("e_ctr_mj") + pl.col("e_pow_mj")).filter(idle).sum(),
        dt_ms=pl.col("dt_ms").sum(),
    )
    gaps = rows.filter(pl.col("gap")).group_by("sid").agg(
        gap_ms=pl.col("dt_ms").sum(), gap_intervals=pl.col("n").sum(), gap_e_ctr_mj=pl.col("e_ctr_mj").sum()
    )
    p95 = _p95(good)
    out = (
        sa.series.join(sa.stats, on="sid", how="inner")
        .join(m, on="sid", how="left")
        .join(gaps, on="sid", how="left")
        .join(p95, on="sid", how="left")
        .join(med, on="sid", how="left")
        .with_columns(pl.col(c).fill_null(0) for c in
                      ("intervals", "held_intervals", "counter_intervals", "cov_ms", "busy_ms", "idle_ms",
                       "alloc_idle_ms", "zero_ms", "e_mj", "idle_e_mj", "dt_ms", "gap_ms", "gap_intervals", "gap_e_ctr_mj"))
    )
    return out


def gpu_utilization(sa: SeriesAggregates, th: UtilThresholds, presence: pl.DataFrame | None = None,
                    mig: pl.DataFrame | None = None) -> pl.DataFrame:
    """One row per GPU id with its verdict, sorted by mean utilization (idle first), unjudged last.

    ``presence`` (:mod:`accelmon.analytics.presence`): per GPU; None = first to last sample."""
    return judge(gpu_metrics(sa), th, presence, mig)


def gpu_metrics(sa: SeriesAggregates) -> pl.DataFrame:
    """One row per GPU id: the time-weighted figures, no verdict (see :func:`gpu_utilization`)."""
    return metrics_from_series(series_metrics(sa))


def metrics_from_series(s: pl.DataFrame) -> pl.DataFrame:
    """Per-series sums (:func:`series_metrics`' columns, keyed by gpu_uuid, source) → one row per GPU:
    the series with the most covered time, and its figures (also used by the rollup path)."""
    prio = {src: i for i, src in enumerate(SOURCE_PRIORITY)}
    s = s.with_columns(prio=pl.col("source").replace_strict(prio, default=len(prio), return_dtype=pl.Int32))
    s = s.sort(["gpu_uuid", "cov_ms", "prio"], descending=[False, True, False]).group_by(
        "gpu_uuid", maintain_order=True).agg(pl.all().first(), pl.col("source").n_unique().alias("sources"))
    cov_s = pl.col("cov_ms") / 1000.0
    med_step = (pl.col("med_dq").cast(pl.Float64) / 100.0).exp() / 1000.0
    mean_step = pl.when(pl.col("intervals") > 0).then(pl.col("dt_ms") / pl.col("intervals") / 1000.0)
    out = s.select(
        gpu=pl.col("gpu_uuid"),
        source=pl.col("source"),
        sources=pl.col("sources"),
        vm_bios_uuid=pl.col("vm_bios_uuid"),
        method=pl.when((pl.col("counter_intervals") > 0) & (pl.col("held_intervals") > 0)).then(pl.lit("mixed"))
        .when(pl.col("counter_intervals") > 0).then(pl.lit("counters"))
        .when(pl.col("held_intervals") > 0).then(pl.lit("held_samples")).otherwise(pl.lit("none")),
        samples=pl.col("samples"),
        step_seconds=pl.when(pl.col("med_dq").is_not_null()).then(med_step).otherwise(mean_step),
        mean_util_percent=pl.when(pl.col("cov_ms") > 0).then(100.0 * pl.col("busy_ms") / pl.col("cov_ms")),
        p95_util_percent=pl.col("p95_util_percent"),
        idle_ratio=pl.when(pl.col("cov_ms") > 0).then(pl.col("idle_ms") / pl.col("cov_ms")),
        covered_hours=cov_s / 3600.0,
        gap_hours=pl.col("gap_ms") / 3.6e6,
        # nothing measured (e.g. MIG without utilization) is NULL, not 0 hours
        busy_hours=pl.when(pl.col("cov_ms") > 0).then(pl.col("busy_ms") / 3.6e6),
        idle_hours=pl.when(pl.col("cov_ms") > 0).then(pl.col("idle_ms") / 3.6e6),
        allocated_idle_hours=pl.when(pl.col("cov_ms") > 0).then(pl.col("alloc_idle_ms") / 3.6e6),
        energy_joules=(pl.col("e_mj") + pl.col("gap_e_ctr_mj")) / 1000.0,
        idle_energy_joules=pl.col("idle_e_mj") / 1000.0,
        # power drawn while no kernel ran at all (fully idle intervals)
        idle_power_watts=pl.when(pl.col("zero_ms") > 0).then(pl.col("idle_e_mj") / pl.col("zero_ms")),
        mean_power_watts=pl.when(pl.col("cov_ms") > 0).then(pl.col("e_mj") / pl.col("cov_ms")),
        fb_max_bytes=pl.when(pl.col("fb_max_bytes") >= 0).then(pl.col("fb_max_bytes")),
        fb_total_bytes=pl.when(pl.col("fb_total_bytes") > 0).then(pl.col("fb_total_bytes")),
        first_ms=pl.col("first_ms"),
        last_ms=pl.col("last_ms"),
    ).with_columns(
        energy_kwh=pl.col("energy_joules") / 3.6e6,
        idle_energy_kwh=pl.col("idle_energy_joules") / 3.6e6,
    )
    return out


def heatmap(sa: SeriesAggregates, gpus: pl.DataFrame) -> pl.DataFrame:
    """GPU × cell (≥ 1 h) mean utilization of the chosen series: gpu, cell_start_ms, util_percent."""
    chosen = gpus.select("gpu", "source").join(
        sa.series.rename({"gpu_uuid": "gpu"}), on=["gpu", "source"], how="inner")
    h = sa.heat.join(chosen, on="sid", how="inner").filter(pl.col("cov_ms") > 0)
    return h.select(
        "gpu",
        cell_start_ms=sa.window_start_ms + pl.col("cell").cast(pl.Int64) * sa.cell_ms,
        util_percent=100.0 * pl.col("busy_ms") / pl.col("cov_ms"),
        coverage=pl.col("cov_ms") / sa.cell_ms,
    )
