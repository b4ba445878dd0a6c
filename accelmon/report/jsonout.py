"""The findings JSON document (shape documented in docs/report.md)."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import polars as pl

from accelmon.analytics.analyze import Analysis
from accelmon.analytics.vmotion import as_json as vmotion_json

SCHEMA_VERSION = 1
GPU_FIELDS = [
    "gpu", "mean_util_percent", "p95_util_percent", "idle_ratio", "coverage_ratio", "underutilized", "status",
    "verdict_reason", "presence_start", "presence_end", "presence_seconds", "presence_source", "mig_mode",
    "source", "method", "samples", "step_seconds", "covered_hours", "gap_hours", "missing_hours", "busy_hours",
    "idle_hours",
    "allocated_idle_hours", "energy_joules", "idle_energy_joules", "energy_kwh", "idle_energy_kwh",
    "mean_power_watts", "idle_power_watts", "fb_max_bytes", "fb_total_bytes", "vm_bios_uuid", "vcenter_uuid",
    "vm_moref", "vm_name", "host_name", "cluster_name", "backing", "vgpu_profile", "first_sample", "last_sample",
    # effective utilization (analytics/activity.py) and right-sizing (analytics/rightsize.py)
    "effective_util_percent", "p95_sm_active_percent", "sm_occupancy_percent", "tensor_active_percent",
    "dram_active_percent", "activity_method", "activity_series_source", "activity_source", "activity_covered_hours",
    "hollow", "time_only", "rightsize",
]


def clean(v: Any) -> Any:
    if isinstance(v, float):
        return None if math.isnan(v) or math.isinf(v) else round(v, 6)
    if isinstance(v, dt.datetime):
        return v.isoformat()
    if isinstance(v, dict):
        return {k: clean(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [clean(x) for x in v]
    return v


def _rows(df: pl.DataFrame) -> list[dict[str, Any]]:
    return [clean(r) for r in df.to_dicts()] if df.height else []


def gpu_rows(gpus: pl.DataFrame) -> list[dict[str, Any]]:
    g = gpus.with_columns(
        first_sample=pl.from_epoch("first_ms", time_unit="ms").dt.replace_time_zone("UTC"),
        last_sample=pl.from_epoch("last_ms", time_unit="ms").dt.replace_time_zone("UTC"),
        **{f"presence_{e}": pl.from_epoch(f"presence_{e}_ms", time_unit="ms").dt.replace_time_zone("UTC")
           for e in ("start", "end") if f"presence_{e}_ms" in gpus.columns},
    )
    return _rows(g.select([c for c in GPU_FIELDS if c in g.columns]))


def summary(a: Analysis) -> dict[str, Any]:
    g = a.gpus
    n = g.height
    under = g.filter(pl.col("status") == "underutilized").height
    insuff = g.filter(pl.col("status") == "insufficient_data").height
    mig = g.filter(pl.col("status") == "mig_unreported").height
    judged = g.filter(pl.col("underutilized").is_not_null()).height
    hollow = g.filter(pl.col("status") == "hollow").height if "status" in g.columns else 0
    eff_h = (g["effective_util_percent"] * g["activity_covered_hours"]).sum() if "activity_covered_hours" in g.columns \
        else None
    act_h = g["activity_covered_hours"].sum() if "activity_covered_hours" in g.columns else None
    covered = float(g["covered_hours"].sum()) if n else 0.0
    return clean({
        "gpus": n,
        "underutilized": under,
        "insufficient_data": insuff,
        "mig_unreported": mig,
        "underutilized_share": under / judged if judged else None,
        "hollow": hollow,
        "time_only": int(g["time_only"].sum()) if "time_only" in g.columns and n else 0,
        # fleet effective utilization: Σ SM-active ÷ Σ covered over the GPUs that report it (NULL: none does)
        "effective_util_percent": float(eff_h) / float(act_h) if act_h else None,
        "rightsize_suggestions": len(a.plan.rightsize),
        # fleet mean, time-weighted like every utilization figure: Σ busy / Σ covered (NULL when nothing covered)
        "mean_util_percent": 100.0 * float(g["busy_hours"].sum()) / covered if covered > 0 else None,
        "idle_gpu_hours": float(g["idle_hours"].sum()) if n else 0.0,
        "allocated_idle_gpu_hours": float(g["allocated_idle_hours"].sum()) if n else 0.0,
        "idle_energy_kwh": float(g["idle_energy_kwh"].sum()) if n else 0.0,
        "energy_kwh": float(g["energy_kwh"].sum()) if n else 0.0,
        "numa_misaligned_vms": a.numa.height,
        "vmotion_migrations": a.vmotion["migrations"].height,
        "vmotion_flagged": a.vmotion["flagged"].height,
        "plan_moves": len(a.plan.moves),
        "plan_frees_gpus": len(a.plan.freed_gpus),
        "plan_frees_hosts": len(a.plan.freed_hosts),
        "plan_watts_saved": a.plan.watts_saved,
        "plan_kwh_month_saved": a.plan.kwh_month_saved,
        "plan_steps": len(a.plan.steps),
        "plan_unmeasured_emptied_hosts": a.plan.unmeasured_emptied_hosts,
        "plan_freed_capacity_gpus": a.plan.freed_capacity.get("gpus", 0),
    })


def build(a: Analysis) -> dict[str, Any]:
    p = a.power
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": a.run_id,
        "generated_at": a.generated_at.isoformat(),
        "window": {"start": a.window.start.isoformat(), "end": a.window.end.isoformat(),
                   "seconds": a.window.seconds, "label": a.window.label},
        "thresholds": a.thresholds,
        "summary": summary(a),
        "gpus": gpu_rows(a.gpus),
        "numa_misaligned": _rows(a.numa),
        "vmotion": clean(vmotion_json(a.vmotion)),
        "power": {
            "gpus": _rows(p["gpus"]),
            "vms": _rows(p["vms"]),
            "hosts": _rows(p["hosts"]),
            "gpu_energy_kwh": clean(float(p["gpus"]["energy_kwh"].sum()) if p["gpus"].height else 0.0),
            "gpu_idle_energy_kwh": clean(float(p["gpus"]["idle_energy_kwh"].sum()) if p["gpus"].height else 0.0),
        },
        "consolidation": clean(a.plan.to_dict()),
        "changes": clean(a.changes),
        # analytics/cost.py (docs/cost.md): currency, total, by_gpu, by_vm, by_owner, by_team, plan
        "cost": clean(a.cost),
        "stats": a.stats,
    }
