"""vMotion stun: distributions per VM and cluster, vGPU vs not, risky VMs.

* Migrations are those that *ended* in the window (``vmotion.ended_at``).
* ``over_limit``: stun_seconds > ``stun_limit_seconds``; ``switchover_failed``: not succeeded and
  the failure reason mentions the switchover time limit (``maxSwitchoverTime…``).
* Stun vs framebuffer: least-squares line stun_seconds = a + b · vGPU framebuffer GiB over the
  vGPU migrations with a stun time (needs ≥ 2 distinct framebuffer sizes). A vGPU VM is
  *risky to migrate* when its worst observed stun exceeded the limit, a switchover failed, or
  the line predicts a stun over the limit for its current framebuffer.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import polars as pl

from accelmon.analytics.db import frame
from accelmon.analytics.window import Window

GIB = float(1 << 30)


def _dist(df: pl.DataFrame, by: list[str]) -> pl.DataFrame:
    s = pl.col("stun_seconds")
    return (
        df.group_by(by)
        .agg(
            migrations=pl.len(),
            with_stun=s.is_not_null().sum(),
            p50_stun_seconds=s.quantile(0.5, "linear"),
            p95_stun_seconds=s.quantile(0.95, "linear"),
            max_stun_seconds=s.max(),
            over_limit=pl.col("over_limit").sum(),
            switchover_failed=pl.col("switchover_failed").sum(),
            failed=(~pl.col("succeeded").fill_null(True)).sum(),
        )
        .sort(by)
    )


def vmotion_stun(con: Any, window: Window, stun_limit_seconds: float) -> dict[str, Any]:
    mig = frame(con,
        """
        SELECT * EXCLUDE (date) FROM vmotion WHERE ended_at >= ? AND ended_at <= ? ORDER BY ended_at, vm_moref
        """,
        [window.start, window.end],
    )
    mig = mig.with_columns(
        vgpu=pl.col("vgpu_attached").fill_null(False),
        over_limit=(pl.col("stun_seconds") > stun_limit_seconds).fill_null(False),
        switchover_failed=(~pl.col("succeeded").fill_null(True))
        & pl.col("failure_reason").fill_null("").str.to_lowercase().str.contains("switchover"),
        vgpu_fb_gib=pl.col("vgpu_fb_bytes") / GIB,
    )
    fit = _fit(mig.filter(pl.col("vgpu") & pl.col("stun_seconds").is_not_null() & pl.col("vgpu_fb_gib").is_not_null()))
    cur_fb = frame(con,
        "SELECT vcenter_uuid, vm_moref, sum(vgpu_fb_bytes)::BIGINT AS fb FROM vm_gpu WHERE backing = 'vgpu' GROUP BY ALL"
    )
    per_vm = _dist(mig, ["vcenter_uuid", "vm_moref"]) if mig.height else pl.DataFrame()
    risky: list[dict[str, Any]] = []
    if mig.height:
        names = mig.group_by("vcenter_uuid", "vm_moref").agg(
            pl.col("vm_name").drop_nulls().last(), pl.col("cluster_name").drop_nulls().last(),
            pl.col("vgpu").any(), pl.col("vgpu_fb_bytes").max().alias("fb_seen"))
        per_vm = per_vm.join(names, on=["vcenter_uuid", "vm_moref"], how="left").join(
            cur_fb, on=["vcenter_uuid", "vm_moref"], how="left")
        for r in per_vm.filter(pl.col("vgpu")).to_dicts():
            fb = r["fb"] if r["fb"] is not None else r["fb_seen"]
            pred = None if fit is None or fb is None else fit["intercept"] + fit["slope_s_per_gib"] * fb / GIB
            why = []
            if r["max_stun_seconds"] is not None and r["max_stun_seconds"] > stun_limit_seconds:
                why.append(f"worst stun {r['max_stun_seconds']:.1f} s > {stun_limit_seconds:g} s")
            if r["switchover_failed"]:
                why.append(f"{r['switchover_failed']} migration(s) failed on the switchover limit")
            if pred is not None and pred > stun_limit_seconds:
                why.append(f"predicted stun {pred:.1f} s for {fb / GIB:.0f} GiB vGPU framebuffer")
            if why:
                risky.append({**{k: r[k] for k in ("vcenter_uuid", "vm_moref", "vm_name", "cluster_name")},
                              "max_stun_seconds": r["max_stun_seconds"], "predicted_stun_seconds": pred,
                              "vgpu_fb_bytes": fb, "reason": "; ".join(why),
                              "fix": "migrate in a maintenance window, or raise the switchover time limit / use a "
                                     "smaller vGPU profile; prefer suspend-resume for this VM"})
    over = mig.filter(pl.col("over_limit") | pl.col("switchover_failed"))
    return {
        "window": window,
        "stun_limit_seconds": stun_limit_seconds,
        "migrations": mig,
        "per_vm": per_vm,
        "per_cluster": _dist(mig, ["cluster_name"]) if mig.height else pl.DataFrame(),
        "by_vgpu": _dist(mig, ["vgpu"]) if mig.height else pl.DataFrame(),
        "flagged": over,
        "fit": fit,
        "risky": risky,
    }


def _fit(v: pl.DataFrame) -> dict[str, float] | None:
    if v.height < 2 or v["vgpu_fb_gib"].n_unique() < 2:
        return None
    x, y = v["vgpu_fb_gib"].to_numpy(), v["stun_seconds"].to_numpy()
    xm, ym = x.mean(), y.mean()
    b = float(((x - xm) * (y - ym)).sum() / ((x - xm) ** 2).sum())
    a = float(ym - b * xm)
    r = float(((x - xm) * (y - ym)).sum() / ((((x - xm) ** 2).sum() * ((y - ym) ** 2).sum()) ** 0.5 or 1.0))
    return {"intercept": a, "slope_s_per_gib": b, "r": r, "n": float(v.height)}


def as_json(res: dict[str, Any]) -> dict[str, Any]:
    def rows(df: pl.DataFrame) -> list[dict[str, Any]]:
        return [_clean(r) for r in df.to_dicts()] if df.height else []

    flagged = res["flagged"].select(
        "ended_at", "vcenter_uuid", "vm_moref", "vm_name", "cluster_name", "stun_seconds", "succeeded",
        "failure_reason", "vgpu", "vgpu_fb_bytes", "over_limit", "switchover_failed",
    ) if res["flagged"].height else pl.DataFrame()
    return {
        "stun_limit_seconds": res["stun_limit_seconds"],
        "migrations": res["migrations"].height,
        "by_vgpu": rows(res["by_vgpu"]),
        "per_cluster": rows(res["per_cluster"]),
        "per_vm": rows(res["per_vm"]),
        "flagged": rows(flagged),
        "stun_vs_framebuffer": res["fit"],
        "risky_vms": [_clean(r) for r in res["risky"]],
    }


def _clean(r: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, dt.datetime) else v) for k, v in r.items()}
