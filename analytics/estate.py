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


def build(con: Any, gpus: pl.DataFrame, gmap: pl.DataFrame, table: ProfileTable
          ) -> tuple[list[PGpu], list[Tenant], list[HostCap]]:
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
               h.cpu_cores, h.numa_node_count
        FROM hosts h
        """
    )
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
        ))
    return pgpus, tenants, caps
