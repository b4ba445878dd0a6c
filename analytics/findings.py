"""Analysis results → rows of the ``findings`` table (one batch per run), and what changed."""

from __future__ import annotations

import datetime as dt
import json
import math
from typing import Any

import polars as pl

from accelmon.analytics.consolidation import Plan
from accelmon.analytics.db import frame
from accelmon.analytics.window import Window


def _j(v: Any) -> Any:
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return None
    if isinstance(v, dt.datetime):
        return v.isoformat()
    return v


def evidence(d: dict[str, Any]) -> str:
    return json.dumps({k: _j(v) for k, v in d.items()}, sort_keys=True, default=str)


EVIDENCE_FIELDS = ("mean_util_percent", "p95_util_percent", "idle_ratio", "coverage_ratio", "covered_hours",
                   "gap_hours", "missing_hours", "presence_seconds", "presence_source", "samples", "method", "source",
                   "allocated_idle_hours", "idle_energy_joules", "mig_mode", "vm_name", "host_name",
                   "effective_util_percent", "p95_sm_active_percent", "activity_method", "activity_covered_hours")


def _iso(ms: int | None) -> str | None:
    return None if ms is None else dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat()


def gpu_evidence(r: dict[str, Any]) -> dict[str, Any]:
    """The numbers behind a GPU verdict: utilization, coverage and the presence span it is measured against."""
    return {**{k: r.get(k) for k in EVIDENCE_FIELDS},
            "presence_start": _iso(r.get("presence_start_ms")), "presence_end": _iso(r.get("presence_end_ms"))}


def rows(
    *,
    run_id: str,
    generated_at: dt.datetime,
    window: Window,
    gpus: pl.DataFrame,
    numa: pl.DataFrame,
    vmotion_flagged: pl.DataFrame,
    plan: Plan,
    thresholds: dict[str, float],
    numa_unknown: pl.DataFrame | None = None,
) -> list[dict[str, Any]]:
    base = {"generated_at": generated_at, "run_id": run_id, "window_start": window.start, "window_end": window.end}
    out: list[dict[str, Any]] = []
    for r in gpus.filter(pl.col("status") != "ok").to_dicts():
        if r["status"] == "underutilized":
            fix = "consolidate onto a shared GPU (see the plan) or release the GPU"
            value = r["mean_util_percent"]
        elif r["status"] == "hollow":  # analytics/activity.py: busy on time, SMs mostly empty
            fix = "busy but mostly empty: consider a MIG slice or a smaller vGPU profile (see the plan's rightsize)"
            value = r["effective_util_percent"]
        elif r["status"] == "mig_unreported":
            fix = ("read per-instance activity from DCGM profiling metrics (DCGM_FI_PROF_GR_ENGINE_ACTIVE) "
                   "or judge the MIG instances' own ids")
            value = None
        else:
            fix = "check that the agent/exporter for this GPU is scraped"
            value = r["coverage_ratio"]
        out.append({**base, "kind": r["status"], "subject": r["gpu"], "vcenter_uuid": r.get("vcenter_uuid"),
                    "value": value, "reason": r["verdict_reason"], "fix": fix,
                    "evidence_json": evidence(gpu_evidence(r))})
    # NUMA (analytics/numa.py): proven misaligned, or unknown for want of host-side evidence; the
    # evidence JSON carries the verdict, its rule and basis (which host facts it rests on)
    for kind, frame_ in (("numa_misaligned", numa), ("numa_unknown", numa_unknown)):
        for r in (frame_.to_dicts() if frame_ is not None else []):
            out.append({**base, "kind": kind, "subject": r["vm_moref"], "vcenter_uuid": r["vcenter_uuid"],
                        "value": None, "reason": f"{r.get('vm_name') or r['vm_moref']}: {r['reason']}",
                        "fix": r["fix"], "evidence_json": evidence(r)})
    if vmotion_flagged.height:
        for r in vmotion_flagged.to_dicts():
            why = ("switchover time limit exceeded" if r["switchover_failed"] else
                   f"stun {r['stun_seconds']:.1f} s > {thresholds['stun_limit_seconds']:g} s")
            out.append({**base, "kind": "vmotion_stun", "subject": r["vm_moref"], "vcenter_uuid": r["vcenter_uuid"],
                        "value": r["stun_seconds"], "reason": f"{r.get('vm_name') or r['vm_moref']}: {why}",
                        "fix": "migrate in a maintenance window or use a smaller vGPU profile",
                        "evidence_json": evidence({k: r.get(k) for k in (
                            "ended_at", "stun_seconds", "succeeded", "failure_reason", "vgpu_attached",
                            "vgpu_fb_bytes", "cluster_name")})})
    for m in plan.moves:
        out.append({**base, "kind": "consolidation_move", "subject": m.vm.split("/", 1)[-1],
                    "vcenter_uuid": m.vm.split("/", 1)[0], "value": m.evidence.get("p95_util_percent"),
                    "reason": f"{m.vm_name}: p95 {m.evidence.get('p95_util_percent') or 0:.0f} % — GPU "
                              f"{m.from_gpu} can be freed", "fix": m.fix,
                    "evidence_json": evidence({**m.evidence, "from_gpu": m.from_gpu, "to_gpu": m.to_gpu,
                                               "to_profile": m.to_profile, "converted": m.converted})})
    return out


def changes(con: Any, gpus: pl.DataFrame, before: dt.datetime) -> dict[str, Any]:
    """Compare with the newest earlier run in the findings table."""
    prev = con.execute(
        """
        SELECT run_id, max(generated_at) AS last_at FROM findings WHERE generated_at < ?
        GROUP BY run_id ORDER BY last_at DESC LIMIT 1
        """,
        [before],
    ).fetchall()
    if not prev:
        return {"previous_run": None}
    run_id, at = prev[0]
    p = frame(con, "SELECT kind, subject FROM findings WHERE run_id = ?", [run_id])
    was = set(p.filter(pl.col("kind") == "underutilized")["subject"].to_list())
    now = set(gpus.filter(pl.col("status") == "underutilized")["gpu"].to_list())
    numa_was = set(p.filter(pl.col("kind") == "numa_misaligned")["subject"].to_list())
    return {
        "previous_run": run_id,
        "previous_generated_at": at.isoformat() if hasattr(at, "isoformat") else str(at),
        "newly_underutilized": sorted(now - was),
        "no_longer_underutilized": sorted(was - now),
        "underutilized_before": len(was),
        "underutilized_now": len(now),
        "numa_misaligned_before": len(numa_was),
    }
