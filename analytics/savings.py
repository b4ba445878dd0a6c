"""What a consolidation plan saves: the power of hosts it empties, and the GPUs it frees elsewhere.

ARCHITECTURE.md, "Savings = power of hosts the plan empties. GPUs freed in hosts that stay on
are capacity, not watts." An idle GPU in a running host keeps drawing its idle power; only a
host that goes to standby (``HostSystem.PowerDownHostToStandBy_Task``) stops drawing it.

* A host is **emptied** when it held GPU workloads before the plan, holds none after, and no
  other powered-on VM known to the inventory runs there. The inventory records GPU VMs only
  (``inv_vm``): VMs without a GPU on that host are unknown to accelmon — entering maintenance
  mode evacuates them (DRS) or they keep the host on; every emptied host says so.
* An emptied host saves its **measured** mean power over the window (``host_power_sample``,
  vCenter ``power.power.average``) where stored; else, where ``thresholds.host_baseline_watts``
  is configured and every GPU of the host has a measured idle power, baseline + Σ GPU idle
  power; else its power is unknown (``unmeasured_emptied_hosts``), never guessed.
* A host whose GPU workloads all leave but where other powered-on VMs remain is
  **emptied of GPU work, kept on** (``hosts_kept_on``): it saves nothing unless those VMs move too.
* Every freed GPU not in an emptied host is **freed capacity**: GPUs, GPU-hours/month
  (GPUs × 730 h), framebuffer bytes — never watts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

HOURS_PER_MONTH = 730.0
NON_GPU_VMS = "unknown (the inventory records GPU VMs only): maintenance mode evacuates them, or they keep the host on"


def empty_capacity() -> dict[str, Any]:
    return {"gpus": 0, "gpu_ids": [], "gpu_hours_month": 0.0, "fb_bytes": 0}


@dataclass
class Savings:
    emptied: list[dict[str, Any]] = field(default_factory=list)
    kept_on: list[dict[str, Any]] = field(default_factory=list)
    capacity: dict[str, Any] = field(default_factory=empty_capacity)
    watts: float = 0.0
    unmeasured_hosts: int = 0
    unmeasured_gpus: int = 0


def host_power(host: Any, gpus: list[Any]) -> tuple[float | None, str]:
    """(watts, how known) of an emptied host; (None, "unknown") when it cannot be known."""
    if host is not None and host.power_watts is not None:
        return float(host.power_watts), "measured host power (host_power_sample mean over the window)"
    base = None if host is None else host.baseline_watts
    idle = [g.idle_power_watts for g in gpus]
    if base is not None and all(w is not None for w in idle):
        return float(base) + float(sum(idle)), "host baseline + measured GPU idle power"
    if base is None:
        return None, "unknown: no host power sample and no thresholds.host_baseline_watts"
    return None, "unknown: no host power sample and not every GPU has a measured idle power"


def assess(gmap: dict[str, Any], hosts: dict[str, Any], tenants: list[Any],
           placement: dict[str, list[Any]], freed_gpus: list[str]) -> Savings:
    """Emptied hosts (with their power), hosts kept on, freed capacity (see module doc)."""
    out = Savings()
    by_host: dict[str, list[Any]] = {}
    for g in gmap.values():
        by_host.setdefault(g.host, []).append(g)
    before = sorted({gmap[t.gpu_id].host for t in tenants if t.gpu_id in gmap})
    freed = set(freed_gpus)
    emptied: set[str] = set()
    for h in before:
        hg = sorted(by_host[h], key=lambda g: g.gpu_id)
        if any(placement.get(g.gpu_id) for g in hg):
            continue
        cap = hosts.get(h)
        others = None if cap is None else cap.other_vms
        gone = sorted({t.vm_name for t in tenants if t.gpu_id in gmap and gmap[t.gpu_id].host == h})
        if others is None or others:
            out.kept_on.append({
                "host": h, "gpu_vms_moved": gone,
                "other_vms": None if others is None else sorted(others),
                "reason": ("emptied of GPU work; whether other VMs run there is unknown: the host saves "
                           "nothing unless none do" if others is None else
                           "emptied of GPU work, host stays on unless those VMs move too: "
                           + ", ".join(sorted(others)))})
            continue
        emptied.add(h)
        watts, how = host_power(cap, hg)
        n_freed = sum(1 for g in hg if g.gpu_id in freed)
        if watts is None:
            out.unmeasured_hosts += 1
            out.unmeasured_gpus += n_freed
        else:
            out.watts += watts
        out.emptied.append({
            "host": h, "watts": watts, "power_source": how, "gpus": [g.gpu_id for g in hg],
            "gpu_vms_moved": gone, "non_gpu_vms": NON_GPU_VMS,
            "measured_host_watts": None if cap is None else cap.power_watts,
            "gpu_idle_watts": [g.idle_power_watts for g in hg],
        })
    cap_gpus = sorted(g for g in freed if gmap[g].host not in emptied)
    out.capacity = {
        "gpus": len(cap_gpus), "gpu_ids": cap_gpus, "gpu_hours_month": len(cap_gpus) * HOURS_PER_MONTH,
        "fb_bytes": int(sum(gmap[g].fb_total_bytes for g in cap_gpus)),
    }
    return out
