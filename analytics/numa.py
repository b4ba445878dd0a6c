"""NUMA-misaligned GPU VMs, for the whole estate at once (any host, any PCI segment).

After Frank Denneman's GPU NUMA-locality guidance. A VM is misaligned when (rule names as
stored in the finding's evidence):

* ``affinity_excludes_gpu_node``: ``numa.nodeAffinity`` is set and excludes the host NUMA
  node of one of its GPUs → fix: set ``numa.nodeAffinity`` to the GPU's node;
* ``gpus_split_across_nodes``: its GPUs sit on different host nodes and the devices carry no
  vNUMA node (vSphere 8 device groups / ``VirtualDevice.numaNode``) → fix: use GPUs of one
  node, or align vNUMA to the devices;
* ``wider_than_node``: more vCPUs than the GPU's node has cores (or more memory than the
  node has) without vNUMA alignment to the device → fix: size to one node and pin it there,
  or align vNUMA to the device.

The GPU's node comes from the VM device row (``host_numa_node``), else from the host's PCI
device list matched by full SBDF (segment included), lower-case.
"""

from __future__ import annotations

from typing import Any

import polars as pl
from accelmon.analytics.db import frame


def parse_affinity(s: str | None) -> set[int] | None:
    """``"0"``, ``"0,1"``, ``"0-1"`` → {0, 1}; None/empty → None; garbage → ValueError."""
    if s is None or not str(s).strip():
        return None
    out: set[int] = set()
    for part in str(s).replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            a, b = part.split("-", 1)
            out.update(range(int(a), int(b) + 1))
        else:
            out.add(int(part))
    return out


def _fmt_nodes(nodes: set[int] | list[int]) -> str:
    return ",".join(str(n) for n in sorted(nodes))


def numa_misaligned(con: Any) -> pl.DataFrame:
    """One row per misaligned VM: who, where, rule, reason, fix and evidence."""
    dev = frame(con,
        """
        WITH d AS (
            SELECT vcenter_uuid, vm_moref, device_key, device_numa_node FROM inv_vm_gpu
            QUALIFY snapshot_ts = max(snapshot_ts) OVER (PARTITION BY vcenter_uuid)
        )
        SELECT g.vcenter_uuid, g.vm_moref, g.vm_name, g.host_moref, g.host_name, g.cluster_name, g.device_key,
               g.backing, lower(g.host_pci_id) AS pci, coalesce(g.host_numa_node, p.numa_node) AS node,
               d.device_numa_node, g.numa_node_affinity, g.num_cpu, v.memory_bytes, v.vnuma_nodes, v.power_state,
               h.cpu_cores, h.numa_node_count, h.memory_bytes AS host_memory_bytes
        FROM vm_gpu g
        JOIN vms v USING (vcenter_uuid, vm_moref)
        LEFT JOIN d ON d.vcenter_uuid = g.vcenter_uuid AND d.vm_moref = g.vm_moref AND d.device_key = g.device_key
        LEFT JOIN host_gpus p ON p.vcenter_uuid = g.vcenter_uuid AND p.host_moref = g.host_moref
             AND lower(p.pci_id) = lower(g.host_pci_id)
        LEFT JOIN hosts h ON h.vcenter_uuid = g.vcenter_uuid AND h.host_moref = g.host_moref
        ORDER BY g.vcenter_uuid, g.vm_moref, g.device_key
        """
    )
    nodes = frame(con,
        """
        SELECT vcenter_uuid, host_moref, node_id, len(cpu_ids) AS cpus, memory_bytes
        FROM inv_numa_node
        QUALIFY snapshot_ts = max(snapshot_ts) OVER (PARTITION BY vcenter_uuid)
        """
    )
    node_info = {(r["vcenter_uuid"], r["host_moref"], r["node_id"]): r for r in nodes.to_dicts()}
    rows: list[dict[str, Any]] = []
    for (vc, vm), g in dev.group_by(["vcenter_uuid", "vm_moref"], maintain_order=True):
        recs = g.to_dicts()
        r0 = recs[0]
        gpu_nodes = {int(r["node"]) for r in recs if r["node"] is not None}
        aligned = all(r["device_numa_node"] is not None for r in recs)
        base = {
            "vcenter_uuid": vc, "vm_moref": vm, "vm_name": r0["vm_name"], "host_moref": r0["host_moref"],
            "host_name": r0["host_name"], "cluster_name": r0["cluster_name"], "power_state": r0["power_state"],
            "gpus": ", ".join(f"{r['pci'] or '?'} (node {r['node'] if r['node'] is not None else '?'})" for r in recs),
            "gpu_nodes": _fmt_nodes(gpu_nodes), "numa_node_affinity": r0["numa_node_affinity"],
            "num_cpu": r0["num_cpu"],
        }
        try:
            aff = parse_affinity(r0["numa_node_affinity"])
        except ValueError:
            rows.append({**base, "rule": "affinity_unparseable",
                         "reason": f'numa.nodeAffinity = "{r0["numa_node_affinity"]}" is not a node list',
                         "fix": f'set numa.nodeAffinity = "{_fmt_nodes(gpu_nodes) or "<GPU node>"}"'})
            continue
        if not gpu_nodes:
            continue
        if aff is not None and gpu_nodes - aff:
            off = gpu_nodes - aff
            want = _fmt_nodes(gpu_nodes)
            rows.append({**base, "rule": "affinity_excludes_gpu_node",
                         "reason": f'numa.nodeAffinity = "{_fmt_nodes(aff)}" but its GPU(s) sit on host NUMA node '
                                   f'{_fmt_nodes(off)}: every GPU transfer crosses the interconnect',
                         "fix": f'set numa.nodeAffinity = "{want}"' if len(gpu_nodes) == 1 else
                                f'use GPUs of one node, then set numa.nodeAffinity to it (now "{want}")'})
            continue
        if len(gpu_nodes) > 1 and not aligned:
            rows.append({**base, "rule": "gpus_split_across_nodes",
                         "reason": f"its {len(recs)} GPUs sit on host NUMA nodes {_fmt_nodes(gpu_nodes)} "
                                   "and vNUMA is not aligned to the devices",
                         "fix": "assign GPUs of a single NUMA node (e.g. node "
                                f"{min(gpu_nodes)}) and set numa.nodeAffinity to it, or on vSphere 8 enable vNUMA "
                                "with a device group per node (VirtualDevice.numaNode = host node of each GPU)"})
            continue
        if len(gpu_nodes) == 1 and not aligned:
            n = next(iter(gpu_nodes))
            info = node_info.get((vc, r0["host_moref"], n))
            cores = None
            if r0["cpu_cores"] and r0["numa_node_count"]:
                cores = int(r0["cpu_cores"]) // max(int(r0["numa_node_count"]), 1)
            elif info is not None and info["cpus"]:
                cores = int(info["cpus"])
            node_mem = info["memory_bytes"] if info is not None else None
            if node_mem is None and r0["host_memory_bytes"] and r0["numa_node_count"]:
                node_mem = int(r0["host_memory_bytes"]) // max(int(r0["numa_node_count"]), 1)
            wide_cpu = cores is not None and r0["num_cpu"] is not None and int(r0["num_cpu"]) > cores
            wide_mem = node_mem is not None and r0["memory_bytes"] is not None and int(r0["memory_bytes"]) > node_mem
            if wide_cpu or wide_mem:
                what = (f"{r0['num_cpu']} vCPUs on nodes of {cores} cores" if wide_cpu else
                        f"{int(r0['memory_bytes']) >> 30} GiB memory on nodes of {int(node_mem or 0) >> 30} GiB")
                rows.append({**base, "rule": "wider_than_node",
                             "reason": f"{what}: the VM spans nodes while its GPU hangs off node {n}, and vNUMA is "
                                       "not aligned to the device",
                             "fix": f'size the VM to one node ({cores} vCPUs) and set numa.nodeAffinity = "{n}", or '
                                    "on vSphere 8 align vNUMA to the device (device group, VirtualDevice.numaNode)"})
    schema = {k: pl.String for k in ("vcenter_uuid", "vm_moref", "vm_name", "host_moref", "host_name",
                                     "cluster_name", "power_state", "gpus", "gpu_nodes", "numa_node_affinity",
                                     "rule", "reason", "fix")}
    schema["num_cpu"] = pl.Int64
    return pl.DataFrame(rows, schema=schema) if rows else pl.DataFrame(schema=schema)
