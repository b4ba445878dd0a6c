"""The verdict per GPU: coverage against presence, the minimum covered time, MIG, then the threshold.

Definition (ARCHITECTURE.md, "Coverage"): coverage = observed time / the GPU's presence in the
window; a GPU is judged only with coverage ≥ ``min_coverage_ratio`` and covered time ≥
``min_covered_duration``. Presence: :mod:`accelmon.analytics.presence`. Status, in this order:

1. ``mig_unreported`` — MIG is enabled and no sample carried a utilization. NVML documents
   that with MIG enabled utilization is not reported (NVML API reference,
   ``nvmlDeviceGetUtilizationRates``: "On MIG-enabled GPUs, querying device utilization rates
   is not currently supported."), so the absence is
   the driver's, not a collection problem: reason "MIG: utilization not reported by the driver".
2. ``insufficient_data`` — coverage unknown or < ``min_coverage_ratio``, or covered time <
   ``min_covered_duration``: neither flagged nor cleared.
3. ``underutilized`` — time-weighted mean < ``underutilized_percent``; else ``ok``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import polars as pl

from accelmon.analytics.presence import sample_span

MIG_REASON = "MIG: utilization not reported by the driver"
JUDGED = ("underutilized", "ok")


@dataclass(frozen=True)
class UtilThresholds:
    underutilized_percent: float = 15.0
    min_coverage_ratio: float = 0.5
    min_covered_seconds: float = 3600.0


def judge(m: pl.DataFrame, th: UtilThresholds, presence: pl.DataFrame | None = None,
          mig: pl.DataFrame | None = None) -> pl.DataFrame:
    """``m``: :func:`accelmon.analytics.utilization.gpu_metrics`; ``presence``: gpu, presence_start_ms,
    presence_end_ms, presence_seconds, presence_source (None: first to last sample); ``mig``: gpu,
    mig_mode (None: unknown). Adds coverage_ratio, missing_hours, mig_mode, underutilized, status,
    verdict_reason; sorted idle first, unjudged last."""
    pres = presence if presence is not None else sample_span(m)
    g = m.join(pres.select("gpu", "presence_start_ms", "presence_end_ms", "presence_seconds", "presence_source"),
               on="gpu", how="left")
    if mig is not None and mig.height:
        g = g.join(mig.select("gpu", pl.col("mig_mode").cast(pl.Boolean)), on="gpu", how="left")
    else:
        g = g.with_columns(mig_mode=pl.lit(None, dtype=pl.Boolean))
    cov_s = pl.col("covered_hours") * 3600.0
    g = g.with_columns(
        coverage_ratio=pl.when(pl.col("presence_seconds") > 0)
        .then(pl.min_horizontal(cov_s / pl.col("presence_seconds"), pl.lit(1.0))),
        missing_hours=pl.when(pl.col("presence_seconds").is_not_null())
        .then(pl.max_horizontal(pl.col("presence_seconds") - cov_s, pl.lit(0.0)) / 3600.0),
    )
    mean = pl.col("mean_util_percent")
    mig_unreported = pl.col("mig_mode").fill_null(False) & mean.is_null()
    enough = (pl.col("coverage_ratio").fill_null(-1.0) >= th.min_coverage_ratio) & (
        cov_s >= th.min_covered_seconds) & mean.is_not_null()
    g = g.with_columns(
        status=pl.when(mig_unreported).then(pl.lit("mig_unreported"))
        .when(~enough).then(pl.lit("insufficient_data"))
        .when(mean < th.underutilized_percent).then(pl.lit("underutilized")).otherwise(pl.lit("ok")),
    ).with_columns(
        underutilized=pl.when(pl.col("status").is_in(JUDGED)).then(mean < th.underutilized_percent),
    )
    g = g.with_columns(verdict_reason=pl.Series(
        [reason(r, th) for r in g.select(
            "status", "mean_util_percent", "p95_util_percent", "idle_ratio", "coverage_ratio", "covered_hours",
            "presence_seconds", "presence_start_ms", "presence_end_ms").to_dicts()], dtype=pl.String))
    return g.sort([pl.col("underutilized").is_null(), "mean_util_percent", "gpu"], nulls_last=True)


def _t(ms: Any) -> str:
    return "?" if ms is None else f"{dt.datetime.fromtimestamp(ms / 1000, dt.UTC):%Y-%m-%d %H:%M}"


def reason(r: dict[str, Any], th: UtilThresholds) -> str:
    """The verdict in words (also the finding's reason)."""
    st = r["status"]
    if st == "mig_unreported":
        return MIG_REASON
    pres_h = (r["presence_seconds"] or 0.0) / 3600.0
    present = f"present {pres_h:.1f} h ({_t(r['presence_start_ms'])} – {_t(r['presence_end_ms'])} UTC)"
    cov = r["coverage_ratio"]
    covered = r["covered_hours"] or 0.0
    if st == "insufficient_data":
        if r["mean_util_percent"] is None:
            why = "no utilization samples"
        elif cov is None:
            why = "no presence in the window"
        elif cov < th.min_coverage_ratio:
            why = f"coverage {100 * cov:.0f} % < {100 * th.min_coverage_ratio:.0f} % of its presence"
        else:
            why = f"covered {covered:.2f} h < minimum {th.min_covered_seconds / 3600:g} h"
        return f"insufficient data: {why}; {present}, {covered:.1f} h covered: not enough samples to judge"
    rel = "<" if st == "underutilized" else "≥"
    return (f"mean utilization {r['mean_util_percent']:.1f} % {rel} {th.underutilized_percent:g} % over "
            f"{covered:.1f} h covered of {present} (coverage {100 * (cov or 0):.0f} %), "
            f"p95 {r['p95_util_percent'] or 0:.0f} %, idle {100 * (r['idle_ratio'] or 0):.0f} % of the time")
