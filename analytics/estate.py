"""Builds the consolidation planner's inputs from the inventory and the utilization results.

Physical GPUs are the host PCI GPUs of the latest inventory (``host_gpus``), identified as
``<host name>/<pci sbdf>``; tenants are the VM GPU devices (``vm_gpu``), measured through
:func:`accelmon.analytics.identity.gpu_vm_map`. A physical GPU's idle power is measured only
where a passthrough guest's agent reports its power; vGPU-backed GPUs have none.

Capacity is in one unit, **physical cores**: a NUMA node holds ``cpu_cores / numa_node_count``
cores of its host (``hosts``: ``hardware.cpuInfo.numCpuCores`` / ``numaInfo.numNodes``; the node
ids from ``inv_numa_node``, which lists logical CPUs — hyperthreads — and so is not used as a
capacity). A host without a core count has no known node capacity (nothing lands there). A VM's
vCPUs must fit the free cores of the target node (docs/analytics.md, "Consolidation plan").
"""

from __future__ import annotations

from typing import Any

import polars as pl
from accelmon.analytics.consolidation import HostCap, PGpu, Tenant
from accelmon.analytics.db import frame
from accelmon.analytics.profiles import ProfileTable, parse_profile_name


def _version_ok(api: str | None) -> bool:
    """vSphere 8.0 U1 (API 8.0.1) or later allows mixing C/Q/A series of one framebuffer size."""
    if not api:
        return False
    try:
        parts = [int(x) for x in api.split(".")[:3]]
    except ValueError:
        return False
    return tuple(parts + [0] * (3 - len(parts))) >= (8, 0, 1)


def vgpu_mode(host_mode: str | None) -> str:
    """The host's time-sliced vGPU placement mode: ``mixedSize`` only where vCenter says so.

    ``hosts.vgpu_mode`` holds the GPUs' ``vgpuMode`` values (comma-joined, e.g.
    ``multiInstanceGpu,sameSize``) or, from vCenters that do not report it, the shared
    passthrough assignment policy (``performance`` / ``consolidation``), which says nothing
    about sizes: both mean the default, ``sameSize``.
    """
    modes = {m.strip() for m in (host_mode or "").split(",")}
    return "mixedSize" if "mixedSize" in modes else "sameSize"


def build(con: Any, gpus: pl.DataFrame, gmap: pl.DataFrame, table: ProfileTable, *,
          host_power: pl.DataFrame | None = None, host_baseline_watts: float | None = None,
          ) -> tuple[list[PGpu], list[Tenant], list[HostCap]]:
    """``host_power``: :func:`accelmon.analytics.power.power`'s ``hosts`` frame (measured mean
    watts per host over the window); ``host_baseline_watts``: ``thresholds.host_baseline_watts``."""
    hg = frame(con,
        """
        SELECT p.vcenter_uuid, p.host_moref, coalesce(h.host_name, p.host_moref) AS host, lower(p.pci_id) AS pci,
               p.device_name, p.numa_node, p.fb_bytes, h.vgpu_mode, v.api_version
        FROM host_gpus p
        LEFT JOIN hosts h USING (vcenter_uuid, host_moref)
        LEFT JOIN (SELECT * FROM inv_vcenter QUALIFY snapshot_ts = max(snapshot_ts) OVER (PARTITION BY vcenter_uuid)) v
             USING (vcenter_uuid)
        WHERE p.vendor_id = 4318 OR p.fb_bytes IS NOT NULL
        ORDER BY host, pci
        """
    )
    hosts = frame(con,
        """
        SELECT h.vcenter_uuid, h.host_moref, coalesce(h.host_name, h.host_moref) AS host, h.memory_bytes,
               h.cpu_cores, h.numa_node_count, h.vgpu_mode
        FROM hosts h
        """
    )
    nodes = frame(con,
        """
        SELECT vcenter_uuid, host_moref, node_id FROM inv_numa_node
        QUALIFY snapshot_ts = max(snapshot_ts) OVER (PARTITION BY vcenter_uuid)
        """
    )
    ten = frame(con,
        """
        SELECT g.vcenter_uuid, g.vm_moref, g.vm_name, coalesce(g.host_name, g.host_moref) AS host, g.device_key,
               g.backing, lower(g.host_pci_id) AS pci, g.vgpu_profile, v.num_cpu, v.memory_bytes,
               v.numa_node_affinity, v.power_state,
               count(*) OVER (PARTITION BY g.vcenter_uuid, g.vm_moref) AS vm_gpu_count
        FROM vm_gpu g JOIN vms v USING (vcenter_uuid, vm_moref)
        ORDER BY g.vcenter_uuid, g.vm_moref, g.device_key
        """
    )
    util = gpus.select("gpu", "p95_util_percent", "mean_util_percent", "underutilized", "fb_max_bytes",
                       "idle_power_watts")
    dev = gmap.filter(pl.col("device_key").is_not_null()).select("gpu", "vcenter_uuid", "vm_moref", "device_key")
    dev = dev.join(util, on="gpu", how="inner")
    meas = {(r["vcenter_uuid"], r["vm_moref"], r["device_key"]): r for r in dev.to_dicts()}
    node_ids: dict[tuple[str, str], set[int]] = {}
    for r in nodes.to_dicts():
        node_ids.setdefault((r["vcenter_uuid"], r["host_moref"]), set()).add(int(r["node_id"]))
    # powered-on inventory VMs per host that are not planned GPU tenants (a vGPU whose physical GPU
    # is unknown, a VM whose GPU rows are gone): they keep the host on
    tenant_vms = {(r["vcenter_uuid"], r["vm_moref"]) for r in ten.to_dicts() if r["pci"]}
    others: dict[tuple[str, str], set[str]] = {}
    for r in frame(con, "SELECT vcenter_uuid, vm_moref, vm_name, host_moref, power_state FROM vms").to_dicts():
        if r["power_state"] == "poweredOn" and (r["vcenter_uuid"], r["vm_moref"]) not in tenant_vms:
            others.setdefault((r["vcenter_uuid"], r["host_moref"]), set()).add(r["vm_name"] or r["vm_moref"])
    watts: dict[tuple[str, str], float] = {}
    if host_power is not None and host_power.height:
        for r in host_power.to_dicts():
            if r.get("mean_watts") is not None:
                watts[(r["vcenter_uuid"], r["host_moref"])] = float(r["mean_watts"])
    caps = []
    for r in hosts.to_dicts():
        key = (r["vcenter_uuid"], r["host_moref"])
        ids = sorted(node_ids.get(key) or range(int(r["numa_node_count"] or 0)))
        n_nodes = int(r["numa_node_count"] or 0) or len(ids)
        nc: dict[int, int] = {}
        if r["cpu_cores"] and n_nodes:
            per = int(r["cpu_cores"]) // n_nodes
            nc = {i: per for i in ids}
        caps.append(HostCap(r["host"], int(r["memory_bytes"] or 0), nc, power_watts=watts.get(key),
                            baseline_watts=host_baseline_watts, other_vms=tuple(sorted(others.get(key, ()))),
                            graphics_policy=assignment_policy(r["vgpu_mode"])))
    # idle power of a physical GPU: measured by the agent of the passthrough VM on it, in its
    # idle intervals only (a GPU that was never idle has no idle measurement: its mean power
    # would overstate what freeing it saves)
    pt_power: dict[tuple[str, str], float] = {}
    for r in ten.filter(pl.col("backing") != "vgpu").to_dicts():
        m = meas.get((r["vcenter_uuid"], r["vm_moref"], r["device_key"]))
        if m is not None and r["pci"] and m["idle_power_watts"] is not None:
            pt_power[(r["host"], r["pci"])] = float(m["idle_power_watts"])
    pgpus = []
    for r in hg.to_dicts():
        model = table.model_for(r["device_name"], r["fb_bytes"])
        fb = r["fb_bytes"] or next((m.fb_total_bytes for m in table.models if m.key == model), 0)
        pgpus.append(PGpu(
            gpu_id=f"{r['host']}/{r['pci']}", host=r["host"],
            numa_node=None if r["numa_node"] is None or r["numa_node"] < 0 else int(r["numa_node"]),
            model=model, fb_total_bytes=int(fb), vgpu_mode=vgpu_mode(r["vgpu_mode"]),
            mixed_series_ok=_version_ok(r["api_version"]), idle_power_watts=pt_power.get((r["host"], r["pci"])),
        ))
    tenants = []
    for r in ten.to_dicts():
        if not r["pci"]:
            continue  # vGPU whose physical GPU is unknown: cannot be planned
        m = meas.get((r["vcenter_uuid"], r["vm_moref"], r["device_key"]), {})
        tenants.append(Tenant(
            vm=f"{r['vcenter_uuid']}/{r['vm_moref']}", vm_name=r["vm_name"] or r["vm_moref"],
            device_key=int(r["device_key"]), gpu_id=f"{r['host']}/{r['pci']}",
            kind="vgpu" if r["backing"] == "vgpu" else "passthrough",
            profile=parse_profile_name(r["vgpu_profile"]),
            p95_util_percent=m.get("p95_util_percent"), mean_util_percent=m.get("mean_util_percent"),
            underutilized=m.get("underutilized"), fb_hwm_bytes=m.get("fb_max_bytes"),
            num_cpu=int(r["num_cpu"] or 1), memory_bytes=int(r["memory_bytes"] or 0),
            vm_gpu_count=int(r["vm_gpu_count"]), measured_gpu=m.get("gpu"),
            numa_affinity=r["numa_node_affinity"], power_state=r["power_state"], vgpu_profile_full=r["vgpu_profile"],
        ))
    return pgpus, tenants, caps


def assignment_policy(host_mode: str | None) -> str | None:
    """``sharedPassthruAssignmentPolicy`` (performance | consolidation) where ``hosts.vgpu_mode``
    holds it (vCenters that do not report ``vgpuMode``), else None = unknown."""
    modes = {m.strip() for m in (host_mode or "").split(",")}
    for p in ("consolidation", "performance"):
        if p in modes:
            return p
    return None
