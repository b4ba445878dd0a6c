"""The one join from GPU samples to VMs, hosts and VM GPU devices.

Rule (docs/analytics.md, "Joining GPUs to VMs"):

1. A GPU id belongs to the VM whose BIOS UUID the agent reported with it: the newest
   ``agent_gpu`` row of that GPU, else the ``vm_bios_uuid`` carried by its samples.
2. BIOS UUIDs are compared lower-case; the SMBIOS byte-swapped form (first three groups
   little-endian, as some guests print it) also matches.
3. Inside the VM, GPUs are matched to the VM's GPU devices (``vm_gpu``) by order: the
   agent's GPUs sorted by guest PCI bus id (then GPU UUID) ↔ the devices sorted by device
   key. Extra GPUs or devices stay unmatched (device columns null).

``gpu_vm_map`` is the only place this rule lives.
"""

from __future__ import annotations

from typing import Any

import polars as pl
from accelmon.analytics.db import frame

VM_COLUMNS = [
    "vcenter_uuid", "vm_moref", "vm_name", "vm_instance_uuid", "host_moref", "host_name", "cluster_name",
    "device_key", "backing", "host_pci_id", "vgpu_profile", "vgpu_fb_bytes", "host_numa_node",
    "numa_node_affinity", "num_cpu",
]


def swap_bios(u: str) -> str:
    """SMBIOS 2.6 byte order ↔ RFC 4122 order (first three groups byte-reversed)."""
    p = u.split("-")
    if len(p) != 5 or [len(x) for x in p] != [8, 4, 4, 4, 12]:
        return u

    def rev(h: str) -> str:
        return "".join(reversed([h[i:i + 2] for i in range(0, len(h), 2)]))

    return "-".join([rev(p[0]), rev(p[1]), rev(p[2]), p[3], p[4]])


def _norm(s: pl.Expr) -> pl.Expr:
    return s.str.strip_chars().str.to_lowercase()


def gpu_vm_map(con: Any, sample_bios: pl.DataFrame | None = None) -> pl.DataFrame:
    """gpu → VM/host/device. ``sample_bios``: columns gpu, vm_bios_uuid (from the samples)."""
    agent = frame(con,
        """
        SELECT gpu_uuid AS gpu, vm_bios_uuid, pci_bus_id, model_name, virtualization_mode,
               vgpu_profile AS agent_vgpu_profile, fb_total_bytes AS agent_fb_total_bytes
        FROM agent_gpu
        QUALIFY row_number() OVER (PARTITION BY gpu_uuid ORDER BY ts DESC) = 1
        """
    )
    if sample_bios is not None and sample_bios.height:
        extra = sample_bios.filter(pl.col("vm_bios_uuid").is_not_null()).join(agent.select("gpu"), on="gpu", how="anti")
        agent = pl.concat([agent, extra.select("gpu", "vm_bios_uuid")], how="diagonal_relaxed")
    vm_gpu = frame(con, "SELECT * FROM vm_gpu")
    if agent.height == 0:
        return pl.DataFrame(schema={"gpu": pl.String, **{c: vm_gpu.schema.get(c, pl.String) for c in VM_COLUMNS}})
    agent = agent.with_columns(bios=_norm(pl.col("vm_bios_uuid")))
    vms = vm_gpu.select("vcenter_uuid", "vm_moref", "vm_bios_uuid").unique().with_columns(
        bios=_norm(pl.col("vm_bios_uuid"))).drop("vm_bios_uuid")
    swapped = vms.with_columns(pl.col("bios").map_elements(swap_bios, return_dtype=pl.String))
    keys = pl.concat([vms, swapped]).unique(subset=["bios"], keep="first", maintain_order=True)
    a = (
        agent.join(keys, on="bios", how="left")
        .with_columns(_pci=pl.col("pci_bus_id").fill_null("").str.to_lowercase())
        .sort("vcenter_uuid", "vm_moref", "_pci", "gpu", nulls_last=True)
        .with_columns(rank=pl.int_range(pl.len()).over("vcenter_uuid", "vm_moref"))
        .drop("_pci")
    )
    d = vm_gpu.sort("vcenter_uuid", "vm_moref", "device_key").with_columns(
        rank=pl.int_range(pl.len()).over("vcenter_uuid", "vm_moref"))
    d = d.select(*[c for c in VM_COLUMNS if c in d.columns], "rank")
    out = a.join(d, on=["vcenter_uuid", "vm_moref", "rank"], how="left")
    # VM-level columns also for GPUs without a matching device
    vm_level = vm_gpu.select("vcenter_uuid", "vm_moref", "vm_name", "host_moref", "host_name", "cluster_name",
                             "numa_node_affinity", "num_cpu").unique(subset=["vcenter_uuid", "vm_moref"], keep="first")
    out = out.join(vm_level, on=["vcenter_uuid", "vm_moref"], how="left", suffix="_vm")
    for c in ("vm_name", "host_moref", "host_name", "cluster_name", "numa_node_affinity", "num_cpu"):
        if c + "_vm" in out.columns:
            out = out.with_columns(pl.coalesce(c, c + "_vm").alias(c)).drop(c + "_vm")
    return out.select("gpu", *[c for c in VM_COLUMNS if c in out.columns], "model_name", "virtualization_mode")
