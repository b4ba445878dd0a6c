"""Builds the consolidation planner's inputs from the inventory and the utilization results.

Physical GPUs are the host PCI GPUs of the latest inventory (``host_gpus``), identified as
``<host name>/<pci sbdf>``; tenants are the VM GPU devices (``vm_gpu``), measured through
:func:`accelmon.analytics.identity.gpu_vm_map`. A physical GPU's idle power is measured only
where a passthrough guest's agent reports its power; vGPU-backed GPUs have none.
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


def build(con: Any, gpus: pl.DataFrame, gmap: pl.DataFrame, table: ProfileTable
          ) -> tuple[list[PGpu], list[Tenant], list[HostCap]]:
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
        SELECT vcenter_uuid, host_moref, node_id, len(cpu_ids) AS cpus FROM inv_numa_node
        QUALIFY snapshot_ts = max(snapshot_ts) OVER (PARTITION BY vcenter_uuid)
        """
    )
    ten = frame(con,
        """
        SELECT g.vcenter_uuid, g.vm_moref, g.vm_name, coalesce(g.host_name, g.host_moref) AS host, g.device_key,
               g.backing, lower(g.host_pci_id) AS pci, g.vgpu_profile, v.num_cpu, v.memory_bytes,
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
    node_cpus: dict[tuple[str, str], dict[int, int]] = {}
    for r in nodes.to_dicts():
        node_cpus.setdefault((r["vcenter_uuid"], r["host_moref"]), {})[int(r["node_id"])] = int(r["cpus"] or 0)
    caps = []
    for r in hosts.to_dicts():
        nc = node_cpus.get((r["vcenter_uuid"], r["host_moref"]))
        if not nc and r["cpu_cores"] and r["numa_node_count"]:
            per = int(r["cpu_cores"]) // max(int(r["numa_node_count"]), 1)
            nc = {i: per for i in range(int(r["numa_node_count"]))}
        caps.append(HostCap(r["host"], int(r["memory_bytes"] or 0), nc or {}))
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
        ))
    return pgpus, tenants, caps
