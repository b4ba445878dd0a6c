"""NUMA alignment of GPU VMs, judged from what the *host* says (docs/analytics.md, "NUMA").

A VM is aligned when the host runs its vCPUs (and places its memory) on the host NUMA node its
GPU hangs off. The evidence, in the order it is used:

1. the GPU's **host** NUMA node: ``HostNumaNode.pciId`` / the host PCI topology
   (``inv_vm_gpu.host_numa_node``, else ``inv_host_pci.numa_node``, else ``inv_numa_node.pci_ids``);
2. where the host may run the VM: the ``numa.nodeAffinity`` advanced setting (NUMA nodes) and the
   CPU scheduling affinity ``config.cpuAffinity.affinitySet`` (host logical CPUs, mapped to nodes by
   ``HostNumaNode.cpuID``). "List of nodes (processors for CPU, NUMA nodes for memory) that may be
   used by the virtual machine" (vSphere API, ``VirtualMachineAffinityInfo.affinitySet``);
3. its size against one node: vCPUs vs **physical cores** per node (``HostCpuInfo.numCpuCores`` /
   ``HostNumaInfo.numNodes``; hyperthreads do not count, one unit everywhere) and memory vs the
   node's memory (``HostNumaNode.memoryRangeLength`` / ``memorySize``);
4. vSphere 8 ``VirtualDevice.numaNode``: the *virtual* node the guest sees the device on. It says
   vNUMA is aligned to the device, not where the host runs the VM, so it counts only together with
   a host-side affinity and never makes a VM "aligned" on its own.

Verdicts: ``aligned`` | ``misaligned`` | ``unknown`` (evidence missing). Without a host-side
affinity the NUMA scheduler may home the VM on any node (Frank Denneman, "PCIe Device NUMA Node
Locality", frankdenneman.nl 2020-01-10, and "Machine Learning Workload and GPGPU NUMA Node
Locality", 2020-01-30: the ESXi NUMA scheduler does not consider PCIe device locality), hence
``unknown`` and the suggested vSphere action ``set-numa-affinity``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import polars as pl

from accelmon.analytics.db import frame

ALIGNED, MISALIGNED, UNKNOWN = "aligned", "misaligned", "unknown"


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


def fmt_ids(ids: set[int] | list[int] | None) -> str:
    """{0, 1, 2, 5} → ``0-2,5`` (ranges of consecutive ids)."""
    xs = sorted(set(ids or ()))
    parts: list[str] = []
    i = 0
    while i < len(xs):
        j = i
        while j + 1 < len(xs) and xs[j + 1] == xs[j] + 1:
            j += 1
        parts.append(str(xs[i]) if j == i else f"{xs[i]}-{xs[j]}" if j > i + 1 else f"{xs[i]},{xs[j]}")
        i = j + 1
    return ",".join(parts)


@dataclass
class Gpu:
    pci: str | None
    backing: str | None
    host_node: int | None
    node_source: str | None  # which host fact gave host_node
    device_node: int | None  # VirtualDevice.numaNode (guest-side vNUMA node)


@dataclass
class VmFacts:
    name: str
    gpus: list[Gpu]
    host_nodes: int | None  # HostNumaInfo.numNodes
    node_affinity: str | None  # numa.nodeAffinity as configured
    cpu_affinity: list[int] | None  # config.cpuAffinity.affinitySet (logical CPUs)
    node_cpus: dict[int, set[int]] = field(default_factory=dict)  # node -> logical CPUs (HostNumaNode.cpuID)
    vcpus: int | None = None
    cores_per_node: int | None = None  # physical cores
    memory_bytes: int | None = None
    node_memory_bytes: int | None = None  # memory of the GPU's node


@dataclass
class Verdict:
    verdict: str
    rule: str
    reason: str  # what the verdict rests on, in words
    fix: str | None
    basis: list[str]  # the evidence it rests on: gpu_host_node, numa.nodeAffinity, cpuAffinity, cores_per_node, …
    facts: dict[str, Any]


def fix_action(vm: str, node: int | str, *, replace: bool, cpu_affinity: bool = False) -> str:
    """The vSphere action ``set-numa-affinity`` (VM → node): the ``numa.nodeAffinity`` advanced
    setting, applied while the VM is powered off (advanced settings are read at power-on)."""
    q = vm.replace("'", "''")
    ps = (f"Get-VM '{q}' | Get-AdvancedSetting -Name numa.nodeAffinity | Set-AdvancedSetting -Value {node} "
          "-Confirm:$false" if replace else f"Get-VM '{q}' | New-AdvancedSetting -Name numa.nodeAffinity -Value {node}")
    cpu = " and clear its CPU scheduling affinity (config.cpuAffinity) or limit it to that node's CPUs" \
        if cpu_affinity else ""
    return (f"set-numa-affinity: VM '{vm}' → node {node} (advanced setting numa.nodeAffinity = \"{node}\"{cpu}; "
            f"power the VM off first). PowerCLI: {ps}")


def judge(f: VmFacts) -> Verdict:
    """The rule of docs/analytics.md "NUMA", for one VM."""
    known = [g for g in f.gpus if g.host_node is not None]
    gnodes = {int(g.host_node) for g in known if g.host_node is not None}
    dev_nodes = sorted({g.device_node for g in f.gpus if g.device_node is not None})
    facts: dict[str, Any] = {
        "gpu_host_nodes": fmt_ids(gnodes), "gpu_node_source": ",".join(sorted({g.node_source for g in known
                                                                               if g.node_source})) or None,
        "device_numa_nodes": fmt_ids(dev_nodes) or None, "numa_node_affinity": f.node_affinity,
        "cpu_affinity_cpus": fmt_ids(f.cpu_affinity) or None, "cpu_affinity_nodes": None,
        "host_numa_nodes": f.host_nodes, "num_cpu": f.vcpus, "cores_per_node": f.cores_per_node,
        "memory_bytes": f.memory_bytes, "node_memory_bytes": f.node_memory_bytes,
    }
    guest_note = (f"; the device numaNode {fmt_ids(dev_nodes)} only tells where the guest sees the device (vNUMA), "
                  "not where the host runs the VM") if dev_nodes else ""
    one = next(iter(gnodes)) if len(gnodes) == 1 else None
    target = one if one is not None else (min(gnodes) if gnodes else "<GPU node>")

    def v(verdict: str, rule: str, reason: str, fix: str | None, *basis: str) -> Verdict:
        return Verdict(verdict, rule, reason, fix, ["gpu_host_node", *basis], facts)

    try:
        aff = parse_affinity(f.node_affinity)
    except ValueError:
        return v(UNKNOWN, "affinity_unparseable", f'numa.nodeAffinity = "{f.node_affinity}" is not a node list',
                 fix_action(f.name, target, replace=True), "numa.nodeAffinity")
    # the host nodes the CPU scheduling affinity allows (HostNumaNode.cpuID); None: not set or not mappable
    cpu_nodes: set[int] | None = None
    if f.cpu_affinity:
        pinned = set(f.cpu_affinity)
        mapped = {n for n, cpus in f.node_cpus.items() if cpus & pinned}
        if mapped and pinned <= set().union(*f.node_cpus.values()):
            cpu_nodes = mapped
            facts["cpu_affinity_nodes"] = fmt_ids(mapped)
    constraints: list[tuple[str, set[int]]] = []
    if aff is not None:
        constraints.append((f"numa.nodeAffinity {fmt_ids(aff)}", aff))
    if cpu_nodes is not None:
        constraints.append((f"CPU affinity {fmt_ids(f.cpu_affinity)} (host node {fmt_ids(cpu_nodes)})", cpu_nodes))
    replace = aff is not None

    if not f.gpus or not known:
        what = ("no physical GPU assigned (vGPU of a powered-off VM)" if not any(g.pci for g in f.gpus)
                else "the GPU's PCI id is in no host NUMA node's pciId list")
        return v(UNKNOWN, "gpu_host_node_unknown", f"host PCI node of the GPU unknown: {what}; alignment unknown",
                 "none until a physical GPU is assigned" if not any(g.pci for g in f.gpus) else
                 "collect the host's NUMA topology (hardware.numaInfo: HostNumaNode.pciId)")
    gpus_txt = f"host PCI node {fmt_ids(gnodes)} of the GPU{'s' if len(known) > 1 else ''}"
    # 1. a host-side constraint that excludes a GPU's node: proven misaligned
    for label, nodes in constraints:
        off = gnodes - nodes
        if off:
            rule = "affinity_excludes_gpu_node" if label.startswith("numa.") else "cpu_affinity_excludes_gpu_node"
            fix = (fix_action(f.name, one, replace=replace, cpu_affinity=cpu_nodes is not None) if one is not None else
                   f"use GPUs of one host node, then {fix_action(f.name, min(gnodes), replace=replace)}")
            return v(MISALIGNED, rule, f"{gpus_txt} vs {label}: every GPU transfer crosses the interconnect", fix,
                     "numa.nodeAffinity" if rule.startswith("affinity") else "cpuAffinity")
    if f.host_nodes == 1:
        return v(ALIGNED, "single_node_host", f"{gpus_txt}; the host has one NUMA node", None, "host_numa_nodes")
    if len(known) < len(f.gpus):
        return v(UNKNOWN, "gpu_host_node_unknown", f"{gpus_txt}, but another GPU's host PCI node is unknown",
                 "collect the host's NUMA topology (hardware.numaInfo: HostNumaNode.pciId)")
    # 2. GPUs on several host nodes: the VM must span them, with vNUMA aligned to the devices
    if len(gnodes) > 1:
        by_host: dict[int, set[int | None]] = {}
        for g in known:
            by_host.setdefault(int(g.host_node or 0), set()).add(g.device_node)
        vnodes = [next(iter(s)) for s in by_host.values() if len(s) == 1]
        vnuma_ok = len(vnodes) == len(by_host) and None not in vnodes and len(set(vnodes)) == len(vnodes)
        if not vnuma_ok:
            return v(MISALIGNED, "gpus_split_across_nodes",
                     f"{gpus_txt}: its GPUs sit on different host nodes and vNUMA is not aligned to the devices "
                     "(no distinct VirtualDevice.numaNode per host node)",
                     f"assign GPUs of a single host node, then {fix_action(f.name, min(gnodes), replace=replace)}; "
                     "or on vSphere 8 give each GPU the vNUMA node of its host node (device groups) and pin the VM "
                     f"to nodes {fmt_ids(gnodes)}", "device_numaNode")
        exact = [label for label, nodes in constraints if nodes == gnodes]
        if exact:
            return v(ALIGNED, "vnuma_aligned_to_devices",
                     f"{gpus_txt} vs {exact[0]}, each GPU on its own vNUMA node (device numaNode "
                     f"{fmt_ids(dev_nodes)})", None, "device_numaNode", *_kinds(exact))
        return v(UNKNOWN, "no_host_affinity",
                 f"{gpus_txt}: vNUMA is aligned to the devices, but no host affinity ties the VM to exactly those "
                 "nodes — alignment unknown", f"set-numa-affinity: numa.nodeAffinity = \"{fmt_ids(gnodes)}\" "
                 "(power the VM off first)", "device_numaNode", "no_affinity")
    # 3. one GPU node: the VM's size against that node (physical cores, memory)
    n = int(one if one is not None else 0)
    wide_cpu = f.cores_per_node is not None and f.vcpus is not None and f.vcpus > f.cores_per_node
    wide_mem = (f.node_memory_bytes is not None and f.memory_bytes is not None
                and f.memory_bytes > f.node_memory_bytes)
    pinned_to = [label for label, nodes in constraints if nodes == {n}]
    if wide_cpu or wide_mem:
        what = (f"{f.vcpus} vCPUs > {f.cores_per_node} physical cores per node" if wide_cpu else
                f"{(f.memory_bytes or 0) >> 30} GiB memory > {(f.node_memory_bytes or 0) >> 30} GiB per node")
        if dev_nodes and constraints:
            return v(ALIGNED, "vnuma_aligned_to_device",
                     f"{what}, but vNUMA is aligned to the device (device numaNode {fmt_ids(dev_nodes)}) and "
                     f"{constraints[0][0]} includes {gpus_txt}", None,
                     "cores_per_node" if wide_cpu else "node_memory", "device_numaNode", *_kinds(constraints[:1]))
        return v(MISALIGNED, "wider_than_node",
                 f"{what}: the VM cannot fit in {gpus_txt}, part of it runs on another node"
                 + (f" (even with {pinned_to[0]})" if pinned_to else ""),
                 f"size the VM to ≤ {f.cores_per_node} vCPUs and the node's memory, then "
                 f"{fix_action(f.name, n, replace=replace, cpu_affinity=cpu_nodes is not None)}; or on vSphere 8 "
                 "align vNUMA to the device (VirtualDevice.numaNode) and pin the VM",
                 "cores_per_node" if wide_cpu else "node_memory")
    size = "" if f.cores_per_node is not None else " (node size unknown: vCPUs not checked)"
    if pinned_to:
        return v(ALIGNED, "affinity_matches_gpu_node", f"{gpus_txt} vs {' and '.join(pinned_to)}{size}", None,
                 *_kinds(pinned_to), *(["cores_per_node"] if f.cores_per_node is not None else []))
    if constraints:
        return v(UNKNOWN, "affinity_allows_other_nodes",
                 f"{gpus_txt} vs {constraints[0][0]}: the scheduler may place it on another node too — alignment "
                 f"unknown{guest_note}", fix_action(f.name, n, replace=replace), *_kinds(constraints))
    if f.cpu_affinity:  # set, but HostNumaNode.cpuID does not tell which nodes its CPUs are on
        return v(UNKNOWN, "cpu_affinity_unmapped",
                 f"{gpus_txt} vs CPU affinity {fmt_ids(f.cpu_affinity)}: the host's NUMA nodes do not list those "
                 f"CPUs (HostNumaNode.cpuID) — alignment unknown{guest_note}", fix_action(f.name, n, replace=False))
    return v(UNKNOWN, "no_host_affinity",
             f"{gpus_txt}; no affinity set: the scheduler may place it on either node — alignment unknown, "
             f"recommend set-numa-affinity{guest_note}", fix_action(f.name, n, replace=False), "no_affinity")


def _kinds(labels: list[str] | list[tuple[str, set[int]]]) -> list[str]:
    out = []
    for x in labels:
        label = x[0] if isinstance(x, tuple) else x
        out.append("numa.nodeAffinity" if label.startswith("numa.") else "cpuAffinity")
    return out


def _latest(con: Any, sql: str) -> list[dict[str, Any]]:
    return frame(con, sql).to_dicts()


def numa_alignment(con: Any) -> pl.DataFrame:
    """One row per GPU VM: verdict (aligned | misaligned | unknown), rule, reason, fix and the facts."""
    devs = _latest(con, """
        SELECT vcenter_uuid, vm_moref, device_key, backing, lower(host_pci_id) AS pci, host_numa_node,
               device_numa_node FROM inv_vm_gpu
        QUALIFY snapshot_ts = max(snapshot_ts) OVER (PARTITION BY vcenter_uuid)
        ORDER BY vcenter_uuid, vm_moref, device_key""")
    vms = {(r["vcenter_uuid"], r["vm_moref"]): r for r in _latest(con, "SELECT * FROM vms")}
    hosts = {(r["vcenter_uuid"], r["host_moref"]): r for r in _latest(con, "SELECT * FROM hosts")}
    pci_node = {(r["vcenter_uuid"], r["host_moref"], r["pci"]): r["numa_node"] for r in _latest(
        con, "SELECT vcenter_uuid, host_moref, lower(pci_id) AS pci, numa_node FROM host_gpus")}
    nodes: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
    for r in _latest(con, """
            SELECT vcenter_uuid, host_moref, node_id, cpu_ids, memory_bytes, pci_ids FROM inv_numa_node
            QUALIFY snapshot_ts = max(snapshot_ts) OVER (PARTITION BY vcenter_uuid)"""):
        nodes.setdefault((r["vcenter_uuid"], r["host_moref"]), {})[int(r["node_id"])] = r
    by_vm: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for d in devs:
        by_vm.setdefault((d["vcenter_uuid"], d["vm_moref"]), []).append(d)
    rows: list[dict[str, Any]] = []
    for key, ds in by_vm.items():
        vm = vms.get(key)
        if vm is None:
            continue
        vc = key[0]
        h = hosts.get((vc, vm["host_moref"])) or {}
        hn = nodes.get((vc, vm["host_moref"]), {})
        gpus = []
        for d in ds:
            node, src = d["host_numa_node"], "inv_vm_gpu.host_numa_node" if d["host_numa_node"] is not None else None
            if node is None and d["pci"]:
                node = pci_node.get((vc, vm["host_moref"], d["pci"]))
                src = "inv_host_pci.numa_node" if node is not None else None
            if node is None and d["pci"]:
                node = next((n for n, r in hn.items() if d["pci"] in [str(p).lower() for p in r["pci_ids"] or []]),
                            None)
                src = "inv_numa_node.pci_ids" if node is not None else None
            gpus.append(Gpu(d["pci"], d["backing"], node, src, d["device_numa_node"]))
        count = h.get("numa_node_count") or (len(hn) or None)
        cores = int(h["cpu_cores"]) // int(count) if h.get("cpu_cores") and count else None
        gn = {g.host_node for g in gpus if g.host_node is not None}
        node_mem = None
        if len(gn) == 1:
            info = hn.get(int(next(iter(gn))))
            node_mem = info["memory_bytes"] if info else None
            if node_mem is None and h.get("memory_bytes") and count:
                node_mem = int(h["memory_bytes"]) // int(count)
        cpu_aff = vm.get("cpu_affinity_set")  # absent in stores written before the column existed
        facts = VmFacts(
            name=vm["vm_name"] or vm["vm_moref"], gpus=gpus, host_nodes=count, node_affinity=vm["numa_node_affinity"],
            cpu_affinity=[int(c) for c in cpu_aff] if cpu_aff else None,
            node_cpus={n: {int(c) for c in r["cpu_ids"] or []} for n, r in hn.items() if r["cpu_ids"]},
            vcpus=vm["num_cpu"], cores_per_node=cores, memory_bytes=vm["memory_bytes"], node_memory_bytes=node_mem)
        res = judge(facts)
        rows.append({
            "vcenter_uuid": vc, "vm_moref": key[1], "vm_name": vm["vm_name"], "host_moref": vm["host_moref"],
            "host_name": h.get("host_name"), "cluster_name": vm["cluster_name"], "power_state": vm["power_state"],
            "gpus": ", ".join(f"{g.pci or '?'} (node {'?' if g.host_node is None else g.host_node})" for g in gpus),
            "gpu_nodes": res.facts["gpu_host_nodes"], "verdict": res.verdict, "rule": res.rule,
            "reason": res.reason, "basis": ",".join(dict.fromkeys(res.basis)), "fix": res.fix,
            **{k: v for k, v in res.facts.items() if k not in ("gpu_host_nodes",)},
        })
    return pl.DataFrame(rows, schema=SCHEMA) if rows else pl.DataFrame(schema=SCHEMA)


SCHEMA: dict[str, Any] = {
    **{k: pl.String for k in ("vcenter_uuid", "vm_moref", "vm_name", "host_moref", "host_name", "cluster_name",
                              "power_state", "gpus", "gpu_nodes", "verdict", "rule", "reason", "basis", "fix",
                              "gpu_node_source", "device_numa_nodes", "numa_node_affinity", "cpu_affinity_cpus",
                              "cpu_affinity_nodes")},
    **{k: pl.Int64 for k in ("host_numa_nodes", "num_cpu", "cores_per_node", "memory_bytes", "node_memory_bytes")},
}


def numa_misaligned(con: Any, alignment: pl.DataFrame | None = None) -> pl.DataFrame:
    """The VMs proven misaligned (the report's NUMA table and ``numa_misaligned`` findings)."""
    a = numa_alignment(con) if alignment is None else alignment
    return a.filter(pl.col("verdict") == MISALIGNED)


def numa_unknown(con: Any, alignment: pl.DataFrame | None = None) -> pl.DataFrame:
    """The VMs whose alignment the host-side evidence cannot settle (``numa_unknown`` findings)."""
    a = numa_alignment(con) if alignment is None else alignment
    return a.filter(pl.col("verdict") == UNKNOWN)
