"""Effective utilization: time-weighted SM activity per GPU / MIG instance, and the hollow verdict.

Definition (ARCHITECTURE.md, "Effective utilization"): the time-weighted SM-active fraction
(NVML GPM on Hopper+, DCGM ``DCGM_FI_PROF_SM_ACTIVE``); **null where the hardware or a vGPU
guest cannot report it, never 0**. Same counter pattern as busy/idle: a reading f over a
period dt contributes dt·f active seconds.

The sources (docs/analytics.md, "Effective utilization"):

* NVML GPM (``nvmlGpmMetricsGet`` between two ``nvmlGpmSampleGet`` samples):
  ``NVML_GPM_METRIC_SM_UTIL`` "Percentage of SMs that were busy", ``NVML_GPM_METRIC_SM_OCCUPANCY``
  "Percentage of warps that were active vs theoretical maximum", ``NVML_GPM_METRIC_ANY_TENSOR_UTIL``,
  ``NVML_GPM_METRIC_DRAM_BW_UTIL`` (pynvml / nvml.h) — a metric *between two samples*, so the
  reading stored at sample k describes (t[k-1], t[k]];
* DCGM profiling fields ``DCGM_FI_PROF_SM_ACTIVE`` ("The ratio of cycles an SM has at least 1
  warp assigned … averaged over all SMs"), ``DCGM_FI_PROF_SM_OCCUPANCY``,
  ``DCGM_FI_PROF_PIPE_TENSOR_ACTIVE``, ``DCGM_FI_PROF_DRAM_ACTIVE`` (ratios 0–1, averaged over
  DCGM's update period, which ends at the scrape): again the period ending at the reading.

Per series (gpu_uuid, source), ordered by time, each interval (t[k-1], t[k]] is measured

* from **counters** where both ends carry ``sm_active_ms_total`` and the busy/idle counters:
  covered = min(increase(busy) + increase(idle), Δt) — exactly the covered time of
  :mod:`accelmon.analytics.samples` — and the SM-active fraction = increase(sm_active) /
  (increase(busy) + increase(idle)), ``increase`` treating a decrease as a reset to 0
  (Prometheus ``increase()``); a long interval is not a gap (the counters carry it);
* else from the **gauge** ``sm_active_percent`` of sample k over Δt; a gauge interval with
  Δt > 2 × the series' median gauge Δt is a gap, excluded (the rule of the held utilization).

Tensor and DRAM activity follow the same rule with their own counters/gauges; SM occupancy
has only a gauge and is weighted by the covered time of its intervals. Effective utilization
= Σ active ÷ Σ covered × 100 over the SM intervals; ``p95_sm_active_percent`` is the
time-weighted 95th percentile of the interval SM-active (1 % bins, as ``p95_util_percent``).

The framebuffer high-water mark used for right-sizing (:mod:`accelmon.analytics.rightsize`)
is the 99.9th percentile of ``fb_used_bytes`` samples, from a 64 MiB histogram (rounded *up*
to the bin's upper edge: a conservative peak that one outlier sample cannot set).
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import numpy as np
import polars as pl

from accelmon.analytics.db import frame
from accelmon.analytics.utilization import SOURCE_PRIORITY
from accelmon.store.writer import Store

METRICS = (("sm", "sm_active_percent", "sm_active_ms_total"),
           ("tensor", "tensor_active_percent", "tensor_active_ms_total"),
           ("dram", "dram_active_percent", "dram_active_ms_total"))
ACTIVITY_COLUMNS = ("sm_active_percent", "sm_occupancy_percent", "tensor_active_percent", "dram_active_percent",
                    "sm_active_ms_total", "tensor_active_ms_total", "dram_active_ms_total")
READ = ("ts", "gpu_uuid", "source", "busy_ms_total", "idle_ms_total", "fb_used_bytes", *ACTIVITY_COLUMNS)
FB_BIN_BYTES = 64 << 20
FB_QUANTILE = 0.999
GAP_FACTOR = 2.0

OUT_SCHEMA: dict[str, Any] = {
    "gpu": pl.String, "activity_series_source": pl.String, "activity_method": pl.String,
    "effective_util_percent": pl.Float64, "p95_sm_active_percent": pl.Float64,
    "sm_occupancy_percent": pl.Float64, "tensor_active_percent": pl.Float64, "dram_active_percent": pl.Float64,
    "activity_covered_hours": pl.Float64, "activity_gap_hours": pl.Float64,
}
FB_SCHEMA: dict[str, Any] = {"gpu": pl.String, "fb_hwm_bytes": pl.Int64, "fb_samples": pl.Int64}


def read(store: Store, start: dt.datetime, end: dt.datetime, con: Any = None,
         fb: bool = True) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(activity rows, framebuffer histogram) of gpu_sample in [start, end].

    Activity rows: only samples carrying any activity column (files written before the columns
    existed have none). The framebuffer histogram (gpu, source, bin, n) covers every sample.
    Both are computed by DuckDB over the store's view (day partitions pruned, streamed, in
    parallel): reading every sample into Python made the 60 M-sample report 6x slower and 4x
    larger (bench/report.py)."""
    con = con if con is not None else store.connect()
    where = "date BETWEEN ? AND ? AND ts >= ? AND ts <= ?"
    params = [start.date(), end.date(), start, end]
    hist = pl.DataFrame() if not fb else frame(con,
        f"""
        SELECT gpu_uuid, source, CAST(fb_used_bytes // {FB_BIN_BYTES} AS BIGINT) AS bin, count(*)::UINTEGER AS n
        FROM gpu_sample WHERE {where} AND fb_used_bytes IS NOT NULL GROUP BY ALL
        """, params)
    any_act = " OR ".join(f"{c} IS NOT NULL" for c in ACTIVITY_COLUMNS)
    cols = ", ".join(f"CAST({c} AS DOUBLE) AS {c}" for c in READ[3:])
    act = frame(con,
        f"SELECT gpu_uuid, source, epoch_ms(ts) AS t_ms, {cols} FROM gpu_sample WHERE {where} AND ({any_act})",
        params)
    if not act.height:
        act = pl.DataFrame(schema={"gpu_uuid": pl.String, "source": pl.String, "t_ms": pl.Int64,
                                   **{c: pl.Float64 for c in READ[3:]}})
    if not hist.height:
        hist = pl.DataFrame(schema={"gpu_uuid": pl.String, "source": pl.String, "bin": pl.Int64, "n": pl.UInt32})
    return act, hist


def _increase(x: np.ndarray) -> np.ndarray:
    d = np.diff(x)
    return np.where(d < 0, x[1:], d)


def _series(t: np.ndarray, cols: dict[str, np.ndarray]) -> dict[str, float] | None:
    """Interval sums of one series (sorted by time). NaN marks a missing value."""
    if len(t) < 2:
        return None
    dtm = np.diff(t).astype(np.float64)
    ok = dtm > 0
    busy, idle = cols["busy_ms_total"], cols["idle_ms_total"]
    have_bi = ~np.isnan(busy[1:]) & ~np.isnan(busy[:-1]) & ~np.isnan(idle[1:]) & ~np.isnan(idle[:-1])
    tot = np.where(have_bi, _increase(np.nan_to_num(busy)) + _increase(np.nan_to_num(idle)), 0.0)
    out: dict[str, float] = {}
    sm_frac = None
    sm_cov = None
    gap_ms = 0.0
    methods: set[str] = set()
    for key, gauge, counter in METRICS:
        c = cols[counter]
        g = cols[gauge]
        ctr = ok & have_bi & (tot > 0) & ~np.isnan(c[1:]) & ~np.isnan(c[:-1])
        gv = ok & ~ctr & ~np.isnan(g[1:])
        if gv.any():
            med = float(np.median(dtm[gv]))
            gap = gv & (dtm > GAP_FACTOR * med)
            if key == "sm":
                gap_ms = float(dtm[gap].sum())
            gv &= ~gap
        with np.errstate(divide="ignore", invalid="ignore"):
            cfrac = np.clip(np.where(ctr, _increase(np.nan_to_num(c)) / np.where(tot > 0, tot, 1.0), 0.0), 0.0, 1.0)
        frac = np.where(ctr, cfrac, np.where(gv, np.clip(np.nan_to_num(g[1:]), 0.0, 100.0) / 100.0, 0.0))
        cov = np.where(ctr, np.minimum(tot, dtm), np.where(gv, dtm, 0.0))
        covered = float(cov.sum())
        out[f"{key}_cov_ms"] = covered
        out[f"{key}_active_ms"] = float((cov * frac).sum())
        if key == "sm":
            sm_frac, sm_cov = frac, cov
            if ctr.any():
                methods.add("counters")
            if gv.any():
                methods.add("gauges")
    occ = cols["sm_occupancy_percent"][1:]
    base = sm_cov if sm_cov is not None else dtm
    ov = ~np.isnan(occ) & (base > 0)
    out["occ_cov_ms"] = float(base[ov].sum())
    out["occ_ms"] = float((base[ov] * np.clip(occ[ov], 0, 100) / 100.0).sum())
    out["gap_ms"] = gap_ms
    out["p95"] = _p95(sm_frac, sm_cov) if sm_frac is not None and sm_cov is not None else math.nan
    out["method"] = "mixed" if len(methods) == 2 else (methods.pop() if methods else "none")  # type: ignore[assignment]
    return out


def _p95(frac: np.ndarray, cov: np.ndarray) -> float:
    """Time-weighted 95th percentile, 1 % bins (the lowest bin whose cumulative time reaches 95 %)."""
    m = cov > 0
    if not m.any():
        return math.nan
    b = np.minimum(np.floor(frac[m] * 100.0), 100).astype(np.int64)
    w = np.bincount(b, cov[m], minlength=101)
    cum = np.cumsum(w)
    return float(np.searchsorted(cum, 0.95 * cum[-1] - 1e-9 * cum[-1]))


def gpu_activity(act: pl.DataFrame) -> pl.DataFrame:
    """One row per GPU id with activity data (:data:`OUT_SCHEMA`); a GPU without any is absent
    (its figures are NULL after the join, never 0)."""
    rows: list[dict[str, Any]] = []
    if act.height:
        act = act.sort("gpu_uuid", "source", "t_ms")
        for (gpu, src), part in act.group_by(["gpu_uuid", "source"], maintain_order=True):
            cols = {c: part[c].cast(pl.Float64).fill_null(math.nan).to_numpy() for c in READ[3:]}
            figures = _series(part["t_ms"].to_numpy(), cols)
            if figures is not None:
                rows.append({"gpu": gpu, "source": src, **figures})
    if not rows:
        return pl.DataFrame(schema=OUT_SCHEMA)
    prio = {s: i for i, s in enumerate(SOURCE_PRIORITY)}
    rows.sort(key=lambda r: (r["gpu"], -r["sm_cov_ms"], prio.get(r["source"], len(prio))))
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for r in rows:
        if r["gpu"] in seen:
            continue
        seen.add(r["gpu"])

        def pct(num: str, den: str, r: dict[str, Any] = r) -> float | None:
            return 100.0 * r[num] / r[den] if r[den] > 0 else None

        sm = pct("sm_active_ms", "sm_cov_ms")
        out.append({
            "gpu": r["gpu"], "activity_series_source": r["source"], "activity_method": r["method"],
            "effective_util_percent": sm,
            "p95_sm_active_percent": None if sm is None or math.isnan(r["p95"]) else r["p95"],
            "sm_occupancy_percent": pct("occ_ms", "occ_cov_ms"),
            "tensor_active_percent": pct("tensor_active_ms", "tensor_cov_ms"),
            "dram_active_percent": pct("dram_active_ms", "dram_cov_ms"),
            "activity_covered_hours": r["sm_cov_ms"] / 3.6e6 if r["sm_cov_ms"] > 0 else None,
            "activity_gap_hours": r["gap_ms"] / 3.6e6,
        })
    return pl.DataFrame(out, schema=OUT_SCHEMA)


def fb_high_water(hist: pl.DataFrame, q: float = FB_QUANTILE) -> pl.DataFrame:
    """Per GPU id: the q-quantile of its fb_used_bytes samples, as the upper edge of its 64 MiB bin
    (the source with the most samples)."""
    if not hist.height:
        return pl.DataFrame(schema=FB_SCHEMA)
    h = hist.with_columns(pl.col("n").cast(pl.Int64))
    tot = h.group_by("gpu_uuid", "source").agg(tot=pl.col("n").sum())
    best = tot.sort(["gpu_uuid", "tot"], descending=[False, True]).group_by("gpu_uuid", maintain_order=True).first()
    h = h.join(best.select("gpu_uuid", "source", "tot"), on=["gpu_uuid", "source"], how="inner").sort(
        "gpu_uuid", "bin")
    h = h.with_columns(cum=pl.col("n").cum_sum().over("gpu_uuid"))
    return h.filter(pl.col("cum") >= q * pl.col("tot")).group_by("gpu_uuid").agg(
        pl.col("bin").min(), pl.col("tot").first()).select(
        gpu=pl.col("gpu_uuid"), fb_hwm_bytes=(pl.col("bin") + 1) * FB_BIN_BYTES, fb_samples=pl.col("tot"))


def activity_sources(con: Any) -> pl.DataFrame:
    """Newest ``agent_gpu.activity_source`` and ``virtualization_mode`` per GPU (empty when unknown)."""
    schema = {"gpu": pl.String, "activity_source": pl.String, "agent_virtualization_mode": pl.String}
    try:
        rows = con.execute(
            """
            SELECT gpu_uuid, activity_source, virtualization_mode FROM agent_gpu
            QUALIFY row_number() OVER (PARTITION BY gpu_uuid ORDER BY ts DESC) = 1
            """
        ).fetchall()
    except Exception:  # noqa: BLE001 - a catalog without the table/column: nothing known
        return pl.DataFrame(schema=schema)
    return pl.DataFrame([list(r) for r in rows], schema=schema, orient="row")


def judge_hollow(gpus: pl.DataFrame, act: pl.DataFrame, sources: pl.DataFrame, *, underutilized_percent: float,
                 hollow_percent: float) -> pl.DataFrame:
    """Join the activity figures and apply the hollow verdict (docs/analytics.md, "Hollow GPUs").

    * ``time_only``: no effective figure and the GPU is a vGPU guest (agent
      ``virtualization_mode`` vgpu, or inventory backing vgpu) or its agent says
      ``activity_source`` = none: only time utilization can exist for it;
    * ``hollow``: judged ``ok`` on time (mean ≥ ``underutilized_percent``) and effective
      utilization < ``hollow_percent``: status becomes ``hollow`` (never also underutilized).
    """
    g = gpus.join(act, on="gpu", how="left")
    if sources.height:
        g = g.join(sources, on="gpu", how="left")
    else:
        g = g.with_columns(activity_source=pl.lit(None, dtype=pl.String),
                           agent_virtualization_mode=pl.lit(None, dtype=pl.String))
    vgpu = (pl.col("agent_virtualization_mode") == "vgpu").fill_null(False)
    if "backing" in g.columns:
        vgpu = vgpu | (pl.col("backing") == "vgpu").fill_null(False)
    if "virtualization_mode" in g.columns:
        vgpu = vgpu | (pl.col("virtualization_mode") == "vgpu").fill_null(False)
    eff = pl.col("effective_util_percent")
    g = g.with_columns(
        time_only=eff.is_null() & (vgpu | (pl.col("activity_source") == "none").fill_null(False)),
    )
    hollow = (pl.col("status") == "ok") & eff.is_not_null() & (eff < hollow_percent)
    g = g.with_columns(hollow=pl.when(pl.col("status").is_in(["ok", "underutilized"])).then(hollow.fill_null(False)))
    g = g.with_columns(
        status=pl.when(hollow).then(pl.lit("hollow")).otherwise(pl.col("status")),
        verdict_reason=pl.when(hollow).then(pl.format(
            "hollow: busy {}% of the time (≥ {} %) but SMs active only {}% (< {} %): kernels run on a "
            "small part of the GPU", pl.col("mean_util_percent").round(1), pl.lit(f"{underutilized_percent:g}"),
            eff.round(1), pl.lit(f"{hollow_percent:g}"))).otherwise(pl.col("verdict_reason")),
    )
    return g
