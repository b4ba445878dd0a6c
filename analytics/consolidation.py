"""Consolidation planner: pack underutilized GPU workloads onto fewer physical GPUs and hosts.

Pure and deterministic: :func:`plan` takes plain dataclasses and returns a :class:`Plan`.
Rules (docs/analytics.md, "Consolidation"):

* only workloads of GPUs whose tenants are *all* underutilized move, and only a whole GPU's
  tenants at once (a GPU is freed or left alone); multi-GPU VMs stay where they are;
* a receiving GPU already has tenants (moving onto an empty GPU frees nothing), is the same
  model as the source (utilization percentages stay comparable) and has a known NUMA node;
* time-sliced and MIG-backed vGPUs never share a GPU; a passthrough GPU is whole and never
  receives; a passthrough workload may move only by converting to the smallest time-sliced
  C-series profile that holds its measured framebuffer high-water mark + 10 %;
* time-sliced ``sameSize`` GPUs host one framebuffer size; before vSphere 8.0 U1 one profile
  (``mixed_series_ok`` False), from 8.0 U1 C/Q/A series of that size may mix; ``mixedSize``
  hosts allow different sizes up to each profile's ``max_mixed``; every profile's per-GPU
  maximum holds; the framebuffers of a GPU's vGPUs sum to at most its memory; MIG-backed
  profiles also obey 7 compute slices;
* the receiving GPU's summed tenant p95 utilization stays ≤ ``target_util_percent``;
* the VM lands NUMA-local: its vCPUs fit the free **physical cores** of the target GPU's node
  (one unit everywhere: cores, see :mod:`accelmon.analytics.estate`) and its memory fits the
  target host.

A :class:`Move` is a packing decision (device → GPU), not something a person does: the plan's
``steps`` (:mod:`accelmon.analytics.actions`) turn the moves into vSphere actions, and the
savings (:mod:`accelmon.analytics.savings`) count only hosts the plan empties.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from accelmon.analytics import actions, mig, savings
from accelmon.analytics.profiles import GIB, Profile, ProfileTable

HOURS_PER_MONTH = 730.0
FB_HEADROOM = 1.10
MIG_SLICES = 7


@dataclass(frozen=True)
class PGpu:
    gpu_id: str  # "<host_moref>/<pci sbdf>"
    host: str
    numa_node: int | None
    model: str | None  # profile-table model key
    fb_total_bytes: int
    vgpu_mode: str = "sameSize"  # host graphics mode: sameSize | mixedSize
    mixed_series_ok: bool = True  # vSphere >= 8.0 U1
    idle_power_watts: float | None = None
    uuid: str | None = None  # GPU UUID where known (passthrough agent data)


@dataclass(frozen=True)
class Tenant:
    vm: str  # VM moref (with vCenter) - unique
    vm_name: str
    device_key: int
    gpu_id: str  # current PGpu
    kind: str  # passthrough | vgpu
    profile: str | None  # table profile name for vGPUs ("10c", "1-5c")
    p95_util_percent: float | None  # of the current physical GPU
    mean_util_percent: float | None = None
    underutilized: bool | None = None
    fb_hwm_bytes: int | None = None
    num_cpu: int = 1
    memory_bytes: int = 0
    vm_gpu_count: int = 1
    measured_gpu: str | None = None  # the GPU id the utilization came from
    numa_affinity: str | None = None  # numa.nodeAffinity as configured now
    power_state: str | None = None  # runtime.powerState
    vgpu_profile_full: str | None = None  # the vSphere profile string ("grid_a100-10c")


@dataclass(frozen=True)
class HostCap:
    host: str
    memory_bytes: int
    node_cores: dict[int, int]  # physical cores per NUMA node (estate.py: cpu_cores / numa_node_count)
    power_watts: float | None = None  # measured mean host power over the window (host_power_sample)
    baseline_watts: float | None = None  # configured host baseline (thresholds.host_baseline_watts)
    other_vms: tuple[str, ...] | None = ()  # powered-on VMs there that are not GPU tenants; None = unknown
    graphics_policy: str | None = None  # sharedPassthruAssignmentPolicy where known


@dataclass
class Move:
    vm: str
    vm_name: str
    device_key: int
    from_gpu: str
    to_gpu: str
    from_host: str
    to_host: str
    to_numa_node: int
    from_profile: str | None
    to_profile: str
    converted: bool
    fix: str  # the plan steps for this VM, in words
    evidence: dict[str, Any]
    steps: list[int] = field(default_factory=list)  # Step.n of the steps that carry this move out


@dataclass
class Plan:
    moves: list[Move] = field(default_factory=list)  # packing decisions (device -> GPU), not steps
    steps: list[Any] = field(default_factory=list)  # actions.Step: what a person does, in order
    freed_gpus: list[str] = field(default_factory=list)
    freed_hosts: list[str] = field(default_factory=list)  # hosts the plan empties (savings.py)
    emptied_hosts: list[dict[str, Any]] = field(default_factory=list)  # per emptied host: power and how known
    hosts_kept_on: list[dict[str, Any]] = field(default_factory=list)  # GPU work gone, other VMs remain
    freed_capacity: dict[str, Any] = field(default_factory=savings.empty_capacity)  # freed GPUs in hosts that stay on
    watts_saved: float = 0.0  # Σ power of emptied hosts with a known power, nothing else
    kwh_month_saved: float = 0.0
    unmeasured_freed_gpus: int = 0  # freed GPUs in emptied hosts whose power is unknown
    unmeasured_emptied_hosts: int = 0
    reason: str = ""
    target_util_percent: float = 60.0
    window: dict[str, str] | None = None
    # every physical GPU with an underutilized tenant: movable or why not, and what became of it
    candidates: list[dict[str, Any]] = field(default_factory=list)
    # final placement: gpu_id -> [(tenant, profile)]
    placement: dict[str, list[tuple[Tenant, Profile | None]]] = field(default_factory=dict)
    # right-size suggestions (analytics/rightsize.py): vGPU ones also have a change-vgpu-profile step
    rightsize: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "window": self.window,
            "steps": [st.to_dict() for st in self.steps],
            "moves": [m.__dict__ for m in self.moves],
            "freed_gpus": self.freed_gpus,
            "freed_hosts": self.freed_hosts,
            "emptied_hosts": self.emptied_hosts,
            "hosts_kept_on": self.hosts_kept_on,
            "freed_capacity": self.freed_capacity,
            "watts_saved": round(self.watts_saved, 3),
            "kwh_month_saved": round(self.kwh_month_saved, 3),
            "unmeasured_freed_gpus": self.unmeasured_freed_gpus,
            "unmeasured_emptied_hosts": self.unmeasured_emptied_hosts,
            "target_util_percent": self.target_util_percent,
            "reason": self.reason,
            "candidates": self.candidates,
            "rightsize": self.rightsize,
        }


class _State:
    def __init__(self, gpus: dict[str, PGpu], hosts: dict[str, HostCap]) -> None:
        self.gpus = gpus
        self.hosts = hosts
        self.ten: dict[str, list[tuple[Tenant, Profile | None]]] = {g: [] for g in gpus}
        self.node_used: dict[tuple[str, int], float] = {}
        self.mem_used: dict[str, float] = {}

    def _account(self, t: Tenant, g: str, sign: int) -> None:
        # one device's share of its VM: a VM with n GPU devices is n tenants, its vCPUs and
        # memory count once in total (split over the nodes/hosts of its devices)
        n = max(t.vm_gpu_count, 1)
        gpu = self.gpus[g]
        if gpu.numa_node is not None:
            k = (gpu.host, gpu.numa_node)
            self.node_used[k] = self.node_used.get(k, 0.0) + sign * t.num_cpu / n
        self.mem_used[gpu.host] = self.mem_used.get(gpu.host, 0.0) + sign * t.memory_bytes / n

    def add(self, t: Tenant, p: Profile | None, g: str) -> None:
        self.ten[g].append((t, p))
        self._account(t, g, 1)

    def remove(self, t: Tenant, g: str) -> None:
        self.ten[g] = [(x, p) for x, p in self.ten[g] if x is not t]
        self._account(t, g, -1)

    def load(self, g: str) -> float:
        return sum(100.0 if t.p95_util_percent is None else t.p95_util_percent for t, _ in self.ten[g])


def profile_allowed(gpu: PGpu, existing: list[Profile | None], p: Profile) -> bool:
    """Can vGPU profile ``p`` join a GPU hosting ``existing`` (None = passthrough)?"""
    if p.model != gpu.model:
        return False
    if any(q is None for q in existing):  # passthrough: whole GPU
        return False
    qs = [q for q in existing if q is not None]
    if any(q.mode != p.mode for q in qs):  # time-sliced and MIG never share
        return False
    if sum(q.fb_bytes for q in qs) + p.fb_bytes > gpu.fb_total_bytes:
        return False
    same = sum(1 for q in qs if q.name == p.name) + 1
    if p.mode == "mig":
        # MIG User Guide, "Partitioning": GPU instances coexist only at non-overlapping placements
        # (start slots per profile), not wherever slices sum to 7: analytics/mig.py
        names = [mig.vgpu_to_mig(q.name) for q in [*qs, p]]
        if any(n is None for n in names):
            return False
        return same <= p.max_per_gpu and mig.valid_mig_combination(gpu.model, [n for n in names if n])
    if gpu.vgpu_mode == "mixedSize":
        # per-host evidence (analytics/vgpu_hetero.py): mixed series only where allowed
        if not gpu.mixed_series_ok and any(q.series != p.series for q in qs):
            return False
        return same <= p.max_mixed
    if any(q.fb_bytes != p.fb_bytes for q in qs):
        return False
    if not gpu.mixed_series_ok and any(q.name != p.name for q in qs):
        return False
    return len(qs) + 1 <= p.max_per_gpu


def _conversion(t: Tenant, gpu: PGpu, table: ProfileTable, existing: list[Profile | None]) -> Profile | None:
    """Smallest time-sliced C profile holding the measured framebuffer high-water mark + 10 %."""
    if t.fb_hwm_bytes is None or gpu.model is None:
        return None
    need = max(t.fb_hwm_bytes * FB_HEADROOM, 1.0 * GIB)
    cands = sorted(
        (p for p in table.for_model(gpu.model) if p.mode == "time_sliced" and p.series == "C" and p.fb_bytes >= need),
        key=lambda p: (p.fb_bytes, p.name),
    )
    for p in cands:
        if profile_allowed(gpu, existing, p):
            return p
    return None


# why a receiving GPU was rejected (Plan.candidates counts these per donor)
R_MODEL = "other GPU model"
R_NUMA = "NUMA node unknown"
R_EMPTY = "no tenants (moving there frees nothing)"
R_WHOLE = "passthrough GPU (whole, never receives)"
R_LOAD = "p95 sum over target"
R_HOST = "host capacity unknown"
R_CPUS = "NUMA node has too few free cores"
R_MEM = "host memory"
R_CONVERT = "no C-series profile holding fb high-water mark + 10 % fits there"
R_PROFILE = "vGPU profile rules (mode, size, count, framebuffer)"


def _check(st: _State, t: Tenant, src: PGpu, g: str, table: ProfileTable, target: float,
           cur: Profile | None) -> tuple[Profile | None, str]:
    """The profile ``t`` would have on GPU ``g``, or None and the first rule that forbids it."""
    gpu = st.gpus[g]
    if gpu.model is None or gpu.model != src.model:
        return None, R_MODEL
    if gpu.numa_node is None:
        return None, R_NUMA
    existing = [p for _, p in st.ten[g]]
    if not existing:
        return None, R_EMPTY
    if any(q is None for q in existing):
        return None, R_WHOLE
    if st.load(g) + (100.0 if t.p95_util_percent is None else t.p95_util_percent) > target:
        return None, R_LOAD
    host = st.hosts.get(gpu.host)
    if host is None:
        return None, R_HOST
    cpus = host.node_cores.get(gpu.numa_node)
    if cpus is None:
        return None, R_HOST
    moving_host = gpu.host != src.host
    node_same = gpu.host == src.host and gpu.numa_node == src.numa_node
    if not node_same and st.node_used.get((gpu.host, gpu.numa_node), 0) + t.num_cpu > cpus + 1e-9:
        return None, R_CPUS
    if moving_host and st.mem_used.get(gpu.host, 0) + t.memory_bytes > host.memory_bytes + 1e-3:
        return None, R_MEM
    if t.kind == "passthrough":
        q = _conversion(t, gpu, table, existing)
        return q, "" if q is not None else R_CONVERT
    if cur is None or not profile_allowed(gpu, existing, cur):
        return None, R_PROFILE
    return cur, ""


def _fits(st: _State, t: Tenant, src: PGpu, g: str, table: ProfileTable, target: float,
          cur: Profile | None) -> Profile | None:
    return _check(st, t, src, g, table, target, cur)[0]


def _not_movable(t: Tenant, cur: Profile | None) -> str:
    """Why a tenant keeps its GPU from being emptied ("" = it could move)."""
    if t.underutilized is None:
        return "not measured (no agent data joined)" if t.measured_gpu is None else "insufficient data"
    if t.underutilized is not True:
        return "shares the GPU with a workload that is not underutilized"
    if t.vm_gpu_count != 1:
        return "multi-GPU VM"
    if t.p95_util_percent is None:
        return "no p95 measurement"
    if t.kind != "passthrough" and cur is None:
        return "vGPU profile not in the table"
    return ""


def plan(
    gpus: list[PGpu],
    tenants: list[Tenant],
    hosts: list[HostCap],
    table: ProfileTable,
    *,
    target_util_percent: float = 60.0,
    stun: Any = None,
    window: dict[str, str] | None = None,
) -> Plan:
    """The consolidation plan (see module doc). Never raises for an infeasible estate."""
    gmap = {g.gpu_id: g for g in sorted(gpus, key=lambda g: g.gpu_id)}
    st = _State(gmap, {h.host: h for h in hosts})
    cur_profile: dict[int, Profile | None] = {}
    for t in sorted(tenants, key=lambda t: (t.gpu_id, t.vm, t.device_key)):
        if t.gpu_id not in gmap:
            continue
        model = gmap[t.gpu_id].model
        p = table.get(model, t.profile) if (t.kind == "vgpu" and model and t.profile) else None
        cur_profile[id(t)] = p
        st.add(t, p, t.gpu_id)
    out = Plan(target_util_percent=target_util_percent, window=window)
    if not tenants:
        out.reason = "no GPU workloads in the inventory"
        out.placement = st.ten
        return out

    # which GPUs could be emptied, and why the others cannot (Plan.candidates)
    blockers: dict[str, list[str]] = {}
    for g in gmap:
        ts = st.ten[g]
        if not ts or not any(t.underutilized is True for t, _ in ts):
            continue
        why = sorted({w for w in (_not_movable(t, cur_profile.get(id(t))) for t, _ in ts) if w})
        if gmap[g].model is None:
            why.append("GPU model not in the profile table")
        blockers[g] = why
    donors = sorted((g for g, why in blockers.items() if not why), key=lambda g: (st.load(g), g))
    n_under = sum(1 for t in tenants if t.underutilized is True and t.gpu_id in gmap)
    out.candidates = [
        {"gpu": g, "host": gmap[g].host, "vms": sorted({t.vm_name for t, _ in st.ten[g]}),
         "p95_sum": round(st.load(g), 3), "movable": not why, "not_movable": why,
         **({} if not why else {"outcome": "kept: " + "; ".join(why)})}
        for g, why in sorted(blockers.items())
    ]
    cand = {c["gpu"]: c for c in out.candidates}
    head = (f"{n_under} underutilized GPU workload(s) on {len(blockers)} physical GPU(s); "
            f"{len(donors)} of those GPUs host only movable underutilized workloads")
    if not donors:
        out.reason = (f"{head}: nothing to empty (a GPU is freed only when all its tenants are underutilized "
                      "single-GPU VMs with a measured p95)" if blockers else
                      "no underutilized GPU workload in the inventory")
        out.placement = st.ten
        return out
    received: set[str] = set()
    freed: list[str] = []
    moves: list[Move] = []
    for d in donors:
        if d in received or not st.ten[d]:
            cand[d]["outcome"] = "receives moved workloads"
            continue
        trial = copy.copy(st)
        trial.ten = {k: list(v) for k, v in st.ten.items()}
        trial.node_used = dict(st.node_used)
        trial.mem_used = dict(st.mem_used)
        pending: list[Move] = []
        ok = True
        for t, p in sorted(trial.ten[d], key=lambda x: (-(x[0].p95_util_percent or 0), x[0].vm, x[0].device_key)):
            order = sorted(
                (g for g in gmap if g != d and g not in freed and trial.ten[g]),
                key=lambda g: (-trial.load(g), g),
            )
            target_gpu = None
            rejected: dict[str, int] = {}
            for g in order:
                q, reason = _check(trial, t, gmap[d], g, table, target_util_percent, p)
                if q is not None:
                    target_gpu = (g, q)
                    break
                rejected[reason] = rejected.get(reason, 0) + 1
            if target_gpu is None:
                ok = False
                cand[d]["blocked_by"] = t.vm_name
                cand[d]["receivers_rejected"] = dict(sorted(rejected.items()))
                break
            g, q = target_gpu
            trial.remove(t, d)
            trial.add(t, q, g)
            tg = gmap[g]
            conv = t.kind == "passthrough"
            pending.append(Move(
                vm=t.vm, vm_name=t.vm_name, device_key=t.device_key, from_gpu=d, to_gpu=g,
                from_host=gmap[d].host, to_host=tg.host, to_numa_node=int(tg.numa_node or 0),
                from_profile=None if conv else (p.name if p else t.profile), to_profile=q.name, converted=conv,
                fix="",
                evidence={"p95_util_percent": t.p95_util_percent, "mean_util_percent": t.mean_util_percent,
                          "fb_hwm_bytes": t.fb_hwm_bytes, "measured_gpu": t.measured_gpu,
                          "target_gpu_p95_sum_after": round(trial.load(g), 3)},
            ))
        cand[d]["outcome"] = "freed" if ok else "kept: no receiving GPU for " + t.vm_name
        if ok:
            st = trial
            freed.append(d)
            moves += pending
            received.update(m.to_gpu for m in pending)
    out.moves = moves
    out.freed_gpus = sorted(freed)
    out.placement = st.ten
    sv = savings.assess(gmap, st.hosts, tenants, st.ten, out.freed_gpus)
    out.freed_hosts = [h["host"] for h in sv.emptied]
    out.emptied_hosts, out.hosts_kept_on, out.freed_capacity = sv.emptied, sv.kept_on, sv.capacity
    out.watts_saved, out.kwh_month_saved = sv.watts, sv.watts * HOURS_PER_MONTH / 1000.0
    out.unmeasured_freed_gpus, out.unmeasured_emptied_hosts = sv.unmeasured_gpus, sv.unmeasured_hosts
    out.steps = actions.steps_for(out, gmap, st.hosts, {t.vm: t for t in tenants}, stun=stun)
    if not moves:
        out.reason = (f"{head}, but no receiving GPU satisfies the rules (same model, profile/framebuffer, "
                      f"NUMA capacity, p95 sum ≤ {target_util_percent:g} %)")
    else:
        out.reason = (f"{head}; {len(moves)} move(s) free {len(freed)} GPU(s) and "
                      f"{len(out.freed_hosts)} host(s)")
    return out
