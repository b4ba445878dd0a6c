"""The join from GPU samples to VMs, hosts and VM GPU devices.

Rule (docs/analytics.md, "Joining GPUs to VMs"):

1. A GPU id belongs to the VM whose BIOS UUID the agent reported with it: the newest
   ``agent_gpu`` row of that GPU, else the ``vm_bios_uuid`` carried by its samples.
2. BIOS UUIDs are compared lower-case; the SMBIOS byte-swapped form (first three groups
   little-endian, as some guests print it) also matches.
3. Inside the VM, GPUs are matched to the VM's GPU devices by the one rule in
   :func:`accelmon.identity.match_vm_gpus` (called once per VM; the collector's discovery and
   the exporter use the same function): host PCI id, PCI slot, vGPU profile, only device left;
   "ambiguous" GPUs get no device. ``match_evidence`` says which.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from accelmon.analytics.db import frame
from accelmon.identity import match_vm_rows

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


def _slot_numbers(con: Any) -> pl.DataFrame:
    """Latest ``pci_slot_number`` per device; an empty frame for stores written before the column."""
    cols = {r[0] for r in con.sql("DESCRIBE inv_vm_gpu").fetchall()}
    if "pci_slot_number" not in cols:
        return pl.DataFrame(schema={"vcenter_uuid": pl.String, "vm_moref": pl.String, "device_key": pl.Int32,
                                    "pci_slot_number": pl.Int32})
    return frame(con,
        """
        SELECT vcenter_uuid, vm_moref, device_key, pci_slot_number FROM inv_vm_gpu
        QUALIFY snapshot_ts = max(snapshot_ts) OVER (PARTITION BY vcenter_uuid)
        """
    )


def _match(agent: pl.DataFrame, devices: pl.DataFrame) -> pl.DataFrame:
    """(gpu, vcenter_uuid, vm_moref) rows → gpu, device_key, match_evidence by the one rule, per VM."""
    devs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for d in devices.to_dicts():
        devs.setdefault((d["vcenter_uuid"], d["vm_moref"]), []).append(d)
    gpus: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for g in agent.filter(pl.col("vm_moref").is_not_null()).to_dicts():
        gpus.setdefault((g["vcenter_uuid"], g["vm_moref"]), []).append({**g, "gpu_uuid": g["gpu"],
                                                                         "vgpu_profile": g.get("agent_vgpu_profile"),
                                                                         "fb_total_bytes": g.get("agent_fb_total_bytes")})
    rows = []
    for vm, gs in gpus.items():
        for u, m in match_vm_rows(devs.get(vm, []), gs).items():
            rows.append({"gpu": u, "device_key": m.device_key, "match_evidence": m.evidence})
    return pl.DataFrame(rows, schema={"gpu": pl.String, "device_key": pl.Int32, "match_evidence": pl.String})


def gpu_vm_map(con: Any, sample_bios: pl.DataFrame | None = None) -> pl.DataFrame:
    """gpu → VM/host/device (+ ``match_evidence``). ``sample_bios``: columns gpu, vm_bios_uuid (from the samples)."""
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
        return pl.DataFrame(schema={"gpu": pl.String, **{c: vm_gpu.schema.get(c, pl.String) for c in VM_COLUMNS},
                                    "model_name": pl.String, "virtualization_mode": pl.String,
                                    "match_evidence": pl.String})
    agent = agent.with_columns(bios=_norm(pl.col("vm_bios_uuid")))
    vms = vm_gpu.select("vcenter_uuid", "vm_moref", "vm_bios_uuid").unique().with_columns(
        bios=_norm(pl.col("vm_bios_uuid"))).drop("vm_bios_uuid")
    swapped = vms.with_columns(pl.col("bios").map_elements(swap_bios, return_dtype=pl.String))
    keys = pl.concat([vms, swapped]).unique(subset=["bios"], keep="first", maintain_order=True)
    a = agent.join(keys, on="bios", how="left")
    d = vm_gpu.join(_slot_numbers(con), on=["vcenter_uuid", "vm_moref", "device_key"], how="left")
    matched = _match(a, d)
    out = a.join(matched, on="gpu", how="left")
    dcols = d.select(*[c for c in VM_COLUMNS if c in d.columns])
    out = out.join(dcols, on=["vcenter_uuid", "vm_moref", "device_key"], how="left")
    # VM-level columns also for GPUs without a matching device
    vm_level = vm_gpu.select("vcenter_uuid", "vm_moref", "vm_name", "vm_instance_uuid", "host_moref", "host_name",
                             "cluster_name", "numa_node_affinity", "num_cpu").unique(
        subset=["vcenter_uuid", "vm_moref"], keep="first")
    out = out.join(vm_level, on=["vcenter_uuid", "vm_moref"], how="left", suffix="_vm")
    for c in ("vm_name", "vm_instance_uuid", "host_moref", "host_name", "cluster_name", "numa_node_affinity",
              "num_cpu"):
        if c + "_vm" in out.columns:
            out = out.with_columns(pl.coalesce(c, c + "_vm").alias(c)).drop(c + "_vm")
    out = out.sort("vcenter_uuid", "vm_moref", "gpu", nulls_last=True)
    return out.select("gpu", *[c for c in VM_COLUMNS if c in out.columns], "model_name", "virtualization_mode",
                      "match_evidence")
