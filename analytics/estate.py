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
from accelmon.analytics.vgpu_hetero import HostVersions, heterogeneous_allowed, release_floor


def host_versions(hosts: pl.DataFrame, guest_drivers: dict[str, list[str]]) -> dict[str, HostVersions]:
    """host name → :class:`HostVersions` from the ``hosts`` view and the host's vGPU guests' drivers.

    ``esxi_version``/``esxi_build`` may be absent from stores written before they were
    collected (NULL: unknown). The vGPU manager floor is the highest guest driver of a vGPU
    guest on the host (a lower bound, see :mod:`accelmon.analytics.vgpu_hetero`).
    """
    out = {}
    for r in hosts.to_dicts():
        drivers = guest_drivers.get(r["host"], [])
        floor = max(drivers, key=lambda d: release_floor(d) or (), default=None)
        out[r["host"]] = HostVersions(
            host=r["host"], esxi_version=r.get("esxi_version"), esxi_build=r.get("esxi_build"),
            vgpu_manager_min=floor, vgpu_mode=r.get("vgpu_mode"),
        )
    return out


def vgpu_mode(host_mode: str | None, mixed_size: bool | None = True) -> str:
    """The host's time-sliced vGPU placement mode: ``mixedSize`` only where vCenter says so
    and the host's versions allow it (``mixed_size`` from :func:`heterogeneous_allowed`).

    ``hosts.vgpu_mode`` holds the GPUs' ``vgpuMode`` values (comma-joined, e.g.
    ``multiInstanceGpu,sameSize``) or, from vCenters that do not report it, the shared
    passthrough assignment policy (``performance`` / ``consolidation``), which says nothing
    about sizes: both mean the default, ``sameSize``.
    """
    modes = {m.strip() for m in (host_mode or "").split(",")}
    return "mixedSize" if "mixedSize" in modes and mixed_size is True else "sameSize"


def build(con: Any, gpus: pl.DataFrame, gmap: pl.DataFrame, table: ProfileTable, *,
          host_power: pl.DataFrame | None = None, host_baseline_watts: float | None = None,
          ) -> tuple[list[PGpu], list[Tenant], list[HostCap]]:
    """``host_power``: :func:`accelmon.analytics.power.power`'s ``hosts`` frame (measured mean
    watts per host over the window); ``host_baseline_watts``: ``thresholds.host_baseline_watts``."""
    hg = frame(con,
        """
        SELECT p.vcenter_uuid, p.host_moref, coalesce(h.host_name, p.host_moref) AS host, lower(p.pci_id) AS pci,
               p.device_name, p.numa_node, p.fb_bytes, h.vgpu_mode
        FROM host_gpus p
        LEFT JOIN hosts h USING (vcenter_uuid, host_moref)
        WHERE p.vendor_id = 4318 OR p.fb_bytes IS NOT NULL
        ORDER BY host, pci
        """
    )
    hosts = frame(con, "SELECT *, coalesce(host_name, host_moref) AS host FROM hosts")
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
    # vGPU guests' drivers per host: a floor for the host's vGPU manager (vgpu_hetero)
    drv = frame(con,
        """
        SELECT gpu_uuid AS gpu, driver_version FROM agent_gpu WHERE virtualization_mode = 'vgpu'
        QUALIFY row_number() OVER (PARTITION BY gpu_uuid ORDER BY ts DESC) = 1
        """
    )
    vm_host = {(r["vcenter_uuid"], r["vm_moref"]): r["host"] for r in ten.to_dicts()}
    guest_drivers: dict[str, list[str]] = {}
    drv_of = {r["gpu"]: r["driver_version"] for r in drv.to_dicts() if r["driver_version"]}
    for r in gmap.to_dicts():
        h = vm_host.get((r.get("vcenter_uuid"), r.get("vm_moref")))
        if h is not None and r["gpu"] in drv_of:
            guest_drivers.setdefault(h, []).append(drv_of[r["gpu"]])
    versions = host_versions(hosts, guest_drivers)
    hetero = {h: heterogeneous_allowed(v) for h, v in versions.items()}
    pgpus = []
    for r in hg.to_dicts():
        series_ok, size_ok, _why = hetero.get(r["host"], (None, None, ""))
        model = table.model_for(r["device_name"], r["fb_bytes"])
        fb = r["fb_bytes"] or next((m.fb_total_bytes for m in table.models if m.key == model), 0)
        pgpus.append(PGpu(
            gpu_id=f"{r['host']}/{r['pci']}", host=r["host"],
            numa_node=None if r["numa_node"] is None or r["numa_node"] < 0 else int(r["numa_node"]),
            model=model, fb_total_bytes=int(fb), vgpu_mode=vgpu_mode(r["vgpu_mode"], size_ok),
            mixed_series_ok=series_ok is True, idle_power_watts=pt_power.get((r["host"], r["pci"])),
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
