"""Right-sizing: the smallest vGPU profile or MIG instance that holds what a VM really used.

Rules (docs/analytics.md, "Right-sizing"):

* **framebuffer high-water mark** (hwm) = p99.9 of the VM's ``fb_used_bytes`` samples over the
  window (:func:`accelmon.analytics.activity.fb_high_water`); the need = hwm × ``fb_headroom``
  (default 1.2);
* a **time-sliced vGPU** VM: the smallest profile of the *same series* (C, Q, A, B) on the same GPU
  model (analytics/vgpu_profiles.csv) whose framebuffer ≥ the need and whose framebuffer keeps the
  NVIDIA vGPU sizing rules of thumb (framebuffer used not above ``fb_full_percent`` (90 %) often,
  not sustained above ``fb_tight_percent`` (70 %)): p99.9 ≤ 90 % and the median ≤ 70 % of it.
  Smaller than the current profile: a downsize (a ``change-vgpu-profile`` plan step); larger:
  the current profile is tight (an upsize, also a step);
* a **passthrough** (full-GPU) VM on a MIG-capable model (analytics/mig_placements.csv): the
  smallest GPU instance profile whose memory (the GB in its name, read as 10^9 bytes - below
  what ``nvidia-smi mig -lgip`` reports, so conservative) ≥ the need and whose compute fraction
  (compute slices / 7) ≥ the p95 SM activity, with a valid placement (:func:`mig.check`). MIG is
  not a vSphere action: it is a recommendation in words (nvidia-smi on the host, then a
  MIG-backed vGPU profile for the VM), not a plan step.

A VM that the consolidation plan moves gets no right-size step (the plan's packing assumed its
current profile); a VM without framebuffer samples gets nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from accelmon.analytics import actions, mig
from accelmon.analytics.consolidation import PGpu, Plan, Tenant
from accelmon.analytics.profiles import _NAME_RE, GIB, ProfileTable

FB_HEADROOM = 1.2
FB_FULL_PERCENT = 90.0
FB_TIGHT_PERCENT = 70.0
_MIG_GB = re.compile(r"\.(\d+)gb$")


@dataclass
class RightSize:
    vm: str
    vm_name: str
    device_key: int
    gpu: str | None  # the measured GPU id (uuid) the evidence comes from
    kind: str  # vgpu | mig
    from_profile: str
    to_profile: str
    direction: str  # down | up
    reason: str
    fb_hwm_bytes: int
    evidence: dict[str, Any] = field(default_factory=dict)
    words: str = ""  # MIG: the steps in words

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def summary(self) -> dict[str, Any]:
        """The report's per-GPU ``rightsize`` object."""
        return {"from": self.from_profile, "to": self.to_profile, "reason": self.reason,
                "fb_hwm_bytes": self.fb_hwm_bytes}


def mig_memory_bytes(name: str) -> int | None:
    m = _MIG_GB.search(name.replace("+me", ""))
    return int(m.group(1)) * 10**9 if m else None


def _gib(b: float) -> str:
    return f"{b / GIB:.1f} GiB"


def suggest(tenants: list[Tenant], gpus: list[PGpu], table: ProfileTable, hwm: pl.DataFrame,
            median: pl.DataFrame, activity: pl.DataFrame, *, headroom: float = FB_HEADROOM,
            full_percent: float = FB_FULL_PERCENT, tight_percent: float = FB_TIGHT_PERCENT) -> list[RightSize]:
    """``hwm``/``median``: gpu, fb_hwm_bytes (p99.9 / p50); ``activity``: gpu, p95_sm_active_percent."""
    peak = {r["gpu"]: r["fb_hwm_bytes"] for r in hwm.to_dicts()}
    mid = {r["gpu"]: r["fb_hwm_bytes"] for r in median.to_dicts()}
    p95 = {r["gpu"]: r["p95_sm_active_percent"] for r in activity.to_dicts()} if activity.height else {}
    pg = {g.gpu_id: g for g in gpus}
    out: list[RightSize] = []
    for t in sorted(tenants, key=lambda t: (t.vm, t.device_key)):
        g = pg.get(t.gpu_id)
        if g is None or g.model is None or t.measured_gpu is None or t.vm_gpu_count != 1:
            continue
        h = peak.get(t.measured_gpu)
        if h is None:
            continue
        need = h * headroom
        med = mid.get(t.measured_gpu) or 0
        ev = {"fb_hwm_bytes": h, "fb_median_bytes": med, "fb_headroom": headroom, "need_bytes": int(need),
              "measured_gpu": t.measured_gpu}
        if t.kind == "vgpu":
            cur = table.get(g.model, t.profile) if t.profile else None
            if cur is None or cur.mode != "time_sliced":
                continue

            def fits(fb: int, h: int = h, med: int = med, need: float = need) -> bool:
                return (fb >= need and 100.0 * h <= full_percent * fb and 100.0 * med <= tight_percent * fb)

            cands = sorted((p for p in table.for_model(g.model) if p.series == cur.series
                            and p.mode == "time_sliced" and fits(p.fb_bytes)), key=lambda p: (p.fb_bytes, p.name))
            if not cands or cands[0].fb_bytes == cur.fb_bytes:
                continue
            to = cands[0]
            down = to.fb_bytes < cur.fb_bytes
            why = (f"framebuffer peak (p99.9) {_gib(h)} × {headroom:g} = {_gib(need)} fits {to.name} "
                   f"({_gib(to.fb_bytes)}) of the {cur.series} series; {cur.name} ({_gib(cur.fb_bytes)}) is "
                   + ("larger than needed" if down else
                      f"tight (peak > {full_percent:g} % or median > {tight_percent:g} % of it, or below the need)"))
            out.append(RightSize(t.vm, t.vm_name, t.device_key, t.measured_gpu, "vgpu", cur.name, to.name,
                                 "down" if down else "up", why, h,
                                 {**ev, "from_fb_bytes": cur.fb_bytes, "to_fb_bytes": to.fb_bytes}))
        elif t.kind == "passthrough" and g.model in mig.load():
            sm = p95.get(t.measured_gpu)
            if sm is None:
                continue  # no SM activity measured: cannot size the compute slices
            mig_cands: list[tuple[int, int, str, mig.MigProfile]] = []
            for mp in mig.load()[g.model].values():
                mem = mig_memory_bytes(mp.name)
                if "+me" in mp.name or mem is None or mem < need:
                    continue
                if 100.0 * mp.compute_slices / mig.COMPUTE_SLICES < sm:
                    continue
                if not mig.check(g.model, [mp.name])[0]:
                    continue
                mig_cands.append((mem, mp.compute_slices, mp.name, mp))
            if not mig_cands:
                continue
            mem, _, mig_name, mp = min(mig_cands)
            if mp.compute_slices >= mig.COMPUTE_SLICES:
                continue  # the whole GPU: nothing smaller fits
            vgpu = f"{mp.compute_slices}-{mem // 10**9}c"
            why = (f"passthrough GPU used at most {_gib(h)} framebuffer (p99.9; × {headroom:g} = {_gib(need)}) and "
                   f"p95 SM activity {sm:.0f} %: MIG {mig_name} ({mem / 1e9:.0f} GB, {mp.compute_slices}/7 of the SMs) "
                   "holds it")
            words = (f"On the host of {t.vm_name}: enable MIG on the GPU (nvidia-smi -i <gpu> -mig 1, with no VM "
                     f"using it), create the GPU instance (nvidia-smi mig -cgi {mp.profile_id} -C, profile {mig_name}); "
                     f"then give {t.vm_name} a MIG-backed vGPU of type {vgpu} (e.g. grid_{g.model.split('-')[0]}"
                     f"-{vgpu}) instead of the passthrough device (VM powered off, vGPU guest driver and licence); "
                     "the other slices stay free for other VMs")
            out.append(RightSize(t.vm, t.vm_name, t.device_key, t.measured_gpu, "mig", "passthrough", mig_name, "down",
                                 why, h, {**ev, "p95_sm_active_percent": sm, "mig_profile_id": mp.profile_id,
                                          "mig_memory_bytes": mem, "compute_slices": mp.compute_slices,
                                          "mig_vgpu_type": vgpu}, words))
    return out


def _full(t: Tenant, name: str, model: str) -> str:
    full = (t.vgpu_profile_full or "").strip().lower()
    m = _NAME_RE.search(full)
    return full[: m.start()] + "-" + name if m else f"grid_{model.split('-')[0]}-{name}"


def add_to_plan(plan: Plan, sugg: list[RightSize], tenants: list[Tenant], gpus: list[PGpu]) -> None:
    """Append a ``change-vgpu-profile`` step per vGPU suggestion (not for VMs the plan moves) and
    record every suggestion (MIG ones as recommendations in words) in ``plan.rightsize``."""
    moved = {m.vm for m in plan.moves}
    by_vm = {(t.vm, t.device_key): t for t in tenants}
    pg = {g.gpu_id: g for g in gpus}
    n = len(plan.steps)
    for s in sugg:
        d = s.to_dict()
        t = by_vm.get((s.vm, s.device_key))
        if s.kind == "vgpu" and t is not None and s.vm not in moved:
            model = pg[t.gpu_id].model or "gpu"
            a = actions.change_vgpu_profile(s.vm, s.vm_name, s.device_key, _full(t, s.from_profile, model),
                                            _full(t, s.to_profile, model))
            n += 1
            plan.steps.append(actions.Step(n=n, evidence={"window": plan.window, **s.evidence, "reason": s.reason},
                                           risk={"power_off": True, "note": "right-size: profile change only"},
                                           **a))
            d["step"] = n
        elif s.kind == "vgpu":
            d["step"] = None
            d["note"] = "the consolidation plan moves this VM; right-size after its moves"
        else:
            d["step"] = None
            d["note"] = "MIG is configured on the host (nvidia-smi), not a vSphere action: a recommendation"
        plan.rightsize.append(d)


RIGHTSIZE_DTYPE = pl.Struct({"from": pl.String, "to": pl.String, "reason": pl.String, "fb_hwm_bytes": pl.Int64})


def per_gpu(gpus: pl.DataFrame, sugg: list[RightSize]) -> pl.DataFrame:
    """Add the ``rightsize`` struct column ({from, to, reason, fb_hwm_bytes} or null) by measured GPU."""
    if not sugg:
        return gpus.with_columns(rightsize=pl.lit(None, dtype=RIGHTSIZE_DTYPE))
    rs = pl.DataFrame({"gpu": [s.gpu for s in sugg], "rightsize": [s.summary() for s in sugg]},
                      schema={"gpu": pl.String, "rightsize": RIGHTSIZE_DTYPE})
    return gpus.join(rs.unique(subset=["gpu"], keep="first"), on="gpu", how="left")
