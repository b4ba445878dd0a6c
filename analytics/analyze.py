"""One analytics run over a window: every finding kind, as frames (no rendering, no writing)."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from accelmon.analytics import (
    actions,
    activity,
    consolidation,
    cost,
    estate,
    findings,
    identity,
    longwindow,
    numa,
    power,
    presence,
    profiles,
    rightsize,
    verdict,
    vmotion,
)
from accelmon.analytics.window import Window
from accelmon.store.writer import Store


@dataclass
class Analysis:
    run_id: str
    generated_at: dt.datetime
    window: Window
    thresholds: dict[str, float]
    gpus: pl.DataFrame  # utilization per GPU, with VM/host columns
    heat: pl.DataFrame
    numa: pl.DataFrame
    vmotion: dict[str, Any]
    power: dict[str, pl.DataFrame]
    plan: consolidation.Plan
    changes: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    numa_unknown: pl.DataFrame = field(default_factory=pl.DataFrame)  # GPU VMs whose NUMA alignment is unknown
    cost: dict[str, Any] = field(default_factory=dict)  # analytics/cost.py: idle cost per GPU/VM/owner/team, plan money


def analyze(store: Store, thresholds: Any, window: Window, *, threads: int | None = None,
            con: Any | None = None, now: dt.datetime | None = None, rollup_after: float | None = None,
            prices: Any | None = None) -> Analysis:
    """``thresholds``: :class:`accelmon.config.ThresholdsConfig` (or anything with its fields).
    ``rollup_after``: a window longer than this many seconds reads hourly rollups (docs/store.md).
    ``prices``: :class:`accelmon.config_cost.CostConfig` (None: no prices, every cost NULL)."""
    th = {k: float(getattr(thresholds, k)) for k in (
        "underutilized_percent", "min_coverage_ratio", "min_covered_duration", "window", "stun_limit_seconds",
        "target_util_percent")}
    for k, default in (("hollow_percent", th["underutilized_percent"]), ("fb_headroom", rightsize.FB_HEADROOM),
                       ("fb_full_percent", rightsize.FB_FULL_PERCENT), ("fb_tight_percent", rightsize.FB_TIGHT_PERCENT)):
        th[k] = float(getattr(thresholds, k, default))
    con = con or store.connect()
    wf = longwindow.figures(store, con, window, rollup_after=rollup_after, threads=threads)
    metrics = wf.metrics
    gmap = identity.gpu_vm_map(con, metrics.select("gpu", "vm_bios_uuid"))
    gpus = verdict.judge(
        metrics,
        verdict.UtilThresholds(th["underutilized_percent"], th["min_coverage_ratio"], th["min_covered_duration"]),
        presence.presence(con, metrics, gmap, window),
        presence.mig_modes(con),
    )
    info = gmap.select("gpu", "vcenter_uuid", "vm_moref", "vm_name", "host_name", "cluster_name", "backing",
                       "vgpu_profile", "host_pci_id").unique(subset=["gpu"], keep="first")
    gpus = gpus.join(info, on="gpu", how="left")
    act_rows, fb_hist = activity.read(store, window.start, window.end, con, fb=wf.fb_hist is None)
    if wf.fb_hist is not None:
        fb_hist = wf.fb_hist
    act = activity.gpu_activity(act_rows)
    gpus = activity.judge_hollow(gpus, act, activity.activity_sources(con),
                                 underutilized_percent=th["underutilized_percent"], hollow_percent=th["hollow_percent"])
    heat = wf.heat(gpus)
    table = profiles.load()
    pw = power.power(con, window, gpus)
    vm_res = vmotion.vmotion_stun(con, window, th["stun_limit_seconds"])
    baseline = getattr(thresholds, "host_baseline_watts", None)
    pg, ten, caps = estate.build(con, gpus, gmap, table, host_power=pw["hosts"],
                                 host_baseline_watts=None if baseline is None else float(baseline))
    the_plan = consolidation.plan(pg, ten, caps, table, target_util_percent=th["target_util_percent"],
                                  stun=actions.stun_history(vm_res),
                                  window={"start": window.start.isoformat(), "end": window.end.isoformat()})
    sugg = rightsize.suggest(ten, pg, table, activity.fb_high_water(fb_hist), activity.fb_high_water(fb_hist, 0.5),
                             act, headroom=th["fb_headroom"], full_percent=th["fb_full_percent"],
                             tight_percent=th["fb_tight_percent"])
    rightsize.add_to_plan(the_plan, sugg, ten, pg)
    gpus = rightsize.per_gpu(gpus, sugg)
    generated = now or dt.datetime.now(dt.UTC)
    alignment = numa.numa_alignment(con)

    return Analysis(
        run_id=f"{generated:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}",
        generated_at=generated,
        window=window,
        thresholds=th,
        gpus=gpus,
        heat=heat,
        numa=numa.numa_misaligned(con, alignment),
        numa_unknown=numa.numa_unknown(con, alignment),
        vmotion=vm_res,
        power=pw,
        plan=the_plan,
        changes=findings.changes(con, gpus, generated),
        stats=wf.stats,
        cost=cost.compute(gpus, gmap, cost.physical_gpus(con), cost.owners_at(con, window.end),
                          cost.power_reported(con, window.start, window.end), the_plan, cost.Prices.of(prices), table),
    )
