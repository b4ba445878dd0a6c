"""The inventory model: what the inventory knows (every host/cluster/folder/pool, GPU VMs only),
updated from PropertyCollector answers, and the inv_* rows built from it."""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from typing import Any

from accelmon.collector.vcenter import rawxml as rx
from accelmon.collector.vcenter.inv_props import extract
from accelmon.collector.vcenter.vgpu import fb_bytes


@dataclass
class Model:
    """What the inventory knows: every host/cluster/folder, and the GPU VMs only."""

    objs: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)  # moref -> (type, props)
    gpu_vms: set[str] = field(default_factory=set)
    vm_count: int = 0  # VMs seen in the last full pass (GPU or not)
    profile_fb_gib: dict[str, int] = field(default_factory=dict)  # from ConfigTarget.vgpuProfileInfo
    dirty: bool = True  # changed since the rows were last built

    def keep(self, typ: str, moref: str, marker: bool) -> bool:
        if typ != "VirtualMachine":
            return True
        return marker or moref in self.gpu_vms

    def apply(self, updates: list[rx.ObjUpdate]) -> list[str]:
        """Apply updates; returns VMs that just gained a GPU through a *modify* (need a full read)."""
        need_full: list[str] = []
        for u in updates:
            if u.type != "VirtualMachine" or u.moref in self.gpu_vms or u.changes:
                self.dirty = True
            if u.kind == "leave":
                self.objs.pop(u.moref, None)
                self.gpu_vms.discard(u.moref)
                continue
            _, props = self.objs.get(u.moref, (u.type, {}))
            if u.kind == "enter":
                props = {}
            for name, op, val in u.changes:
                props[name] = None if op in ("remove", "indirectRemove") else extract(name, val)
            if u.type == "VirtualMachine":
                devs = props.get("config.hardware.device") or []
                if not devs:
                    self.objs.pop(u.moref, None)
                    self.gpu_vms.discard(u.moref)
                    continue
                if u.kind == "modify" and u.moref not in self.gpu_vms:
                    need_full.append(u.moref)
                self.gpu_vms.add(u.moref)
            self.objs[u.moref] = (u.type, props)
        return need_full

    # ---------------------------------------------------------- derived facts
    def _p(self, moref: str | None) -> dict[str, Any]:
        if moref is None or moref not in self.objs:
            return {}
        return self.objs[moref][1]

    def datacenter_of(self, moref: str | None) -> str | None:
        seen = 0
        while moref and seen < 64:
            typ, props = self.objs.get(moref, ("", {}))
            if typ == "Datacenter":
                return props.get("name")
            moref = props.get("parent")
            seen += 1
        return None

    def cluster_of(self, host: str | None) -> tuple[str | None, str | None]:
        parent = self._p(host).get("parent")
        if parent and self.objs.get(parent, ("",))[0] == "ClusterComputeResource":
            return parent, self._p(parent).get("name")
        return None, None

    def host_gpu_numa(self, host: str | None) -> dict[str, int]:
        """PCI id → NUMA node for every PCI device of the host (rule in the module doc)."""
        hp = self._p(host)
        numa = hp.get("hardware.numaInfo") or {}
        direct: dict[str, int] = {}
        for n in numa.get("nodes", []):
            for pid in n["pci"]:
                if pid and n["id"] is not None:
                    direct[pid] = n["id"]
        parent = {d["id"]: d["parent"] for d in hp.get("hardware.pciDevice") or [] if d["id"]}
        out: dict[str, int] = {}
        for pid in set(parent) | set(direct):
            cur, hops = pid, 0
            while cur is not None and cur not in direct and hops < 16:
                cur = parent.get(cur)
                hops += 1
            if cur is not None and cur in direct:
                out[pid] = direct[cur]
        return out

    def vm_dc_and_logdir(self, vm: str) -> tuple[str | None, str | None]:
        p = self._p(vm)
        return self.datacenter_of(p.get("runtime.host")), p.get("config.files.logDirectory")

    def vm_vgpu_fb(self, vm: str) -> tuple[bool, int | None]:
        devs = self._p(vm).get("config.hardware.device") or []
        vg = [d for d in devs if d["backing"] == "vgpu"]
        if not vg:
            return False, None
        fbs = [fb_bytes(d["profile"], self.profile_fb_gib) for d in vg]
        return True, sum(f for f in fbs if f) or None

    # ---------------------------------------------------------- rows
    def rows(self, vcenter_uuid: str, snap: dt.datetime) -> dict[str, list[dict[str, Any]]]:
        hosts = sorted(m for m, (t, _) in self.objs.items() if t == "HostSystem")
        inv_host, inv_numa, inv_pci, inv_vm, inv_gpu = [], [], [], [], []
        base = {"snapshot_ts": snap, "vcenter_uuid": vcenter_uuid}
        numa_by_host: dict[str, dict[str, int]] = {}
        for h in hosts:
            p = self._p(h)
            cl, cl_name = self.cluster_of(h)
            numa = p.get("hardware.numaInfo") or {}
            modes = sorted({g["vgpu_mode"] for g in p.get("config.graphicsInfo") or [] if g.get("vgpu_mode")})
            inv_host.append(
                {
                    **base,
                    "host_moref": h,
                    "host_name": p.get("name"),
                    "cluster_moref": cl,
                    "cluster_name": cl_name,
                    "connection_state": p.get("runtime.connectionState"),
                    "power_state": p.get("runtime.powerState"),
                    "cpu_cores": p.get("hardware.cpuInfo.numCpuCores"),
                    "memory_bytes": p.get("hardware.memorySize"),
                    "numa_node_count": numa.get("num"),
                    "vgpu_mode": ",".join(modes) if modes else p.get("config.graphicsConfig"),
                    "esxi_version": p.get("config.product.version"),
                    "esxi_build": p.get("config.product.build"),
                }
            )
            for n in numa.get("nodes", []):
                if n["id"] is None:
                    continue
                inv_numa.append(
                    {**base, "host_moref": h, "node_id": n["id"], "cpu_ids": n["cpus"],
                     "memory_bytes": n["mem"], "pci_ids": [x for x in n["pci"] if x]}
                )
            node_of = numa_by_host[h] = self.host_gpu_numa(h)
            passthru = p.get("config.pciPassthruInfo") or {}
            gmem = {g["pci"]: g["mem_kb"] for g in p.get("config.graphicsInfo") or [] if g["pci"]}
            for d in p.get("hardware.pciDevice") or []:
                cls = (d["class"] or 0) >> 8
                if not d["id"] or cls not in (0x03, 0x12):  # display / processing accelerators
                    continue
                kb = gmem.get(d["id"])
                inv_pci.append(
                    {
                        **base,
                        "host_moref": h,
                        "pci_id": d["id"],
                        "vendor_id": d["vendor"],
                        "device_id": d["device"],
                        "vendor_name": d["vendor_name"],
                        "device_name": d["device_name"],
                        "numa_node": node_of.get(d["id"]),
                        "passthru_enabled": passthru.get(d["id"]),
                        "fb_bytes": kb * 1024 if kb else None,
                    }
                )
        for v in sorted(self.gpu_vms):
            p = self._p(v)
            if not p or p.get("config.template"):
                continue
            host = p.get("runtime.host")
            _, cl_name = self.cluster_of(host)
            extra = p.get("config.extraConfig") or {}
            ncpu = p.get("config.hardware.numCPU")
            vnuma = None
            per_node = extra.get("numa.vcpu.maxPerVirtualNode")
            if per_node and per_node.isdigit() and int(per_node) > 0 and ncpu:
                vnuma = math.ceil(ncpu / int(per_node))
            mem_mb = p.get("config.hardware.memoryMB")
            ips = list(p.get("guest.net") or [])
            if not ips and p.get("guest.ipAddress"):
                ips = [p["guest.ipAddress"]]
            inv_vm.append(
                {
                    **base,
                    "vm_moref": v,
                    "vm_instance_uuid": p.get("config.instanceUuid"),
                    "vm_bios_uuid": (p.get("config.uuid") or "").lower() or None,
                    "vm_name": p.get("name"),
                    "host_moref": host,
                    "cluster_name": cl_name,
                    "power_state": p.get("runtime.powerState"),
                    "num_cpu": ncpu,
                    "cores_per_socket": p.get("config.hardware.numCoresPerSocket"),
                    "memory_bytes": mem_mb * (1 << 20) if mem_mb is not None else None,
                    "numa_node_affinity": extra.get("numa.nodeAffinity") or None,
                    "cpu_affinity_set": p.get("config.cpuAffinity"),
                    "vnuma_nodes": vnuma,
                    "guest_ips": ips,
                    "guest_hostname": p.get("guest.hostName") or None,
                }
            )
            node_of = numa_by_host.get(host or "", {})
            vgpu_pci = self._vgpu_pci(v, host)
            for d in p.get("config.hardware.device") or []:
                pci = d["pci"] or vgpu_pci.get(d["key"])
                fb = fb_bytes(d["profile"], self.profile_fb_gib) if d["profile"] else None
                inv_gpu.append(
                    {
                        **base,
                        "vm_moref": v,
                        "device_key": d["key"],
                        "backing": d["backing"],
                        "host_pci_id": pci,
                        "pci_slot_number": d["slot"],
                        "vgpu_profile": d["profile"],
                        "vgpu_fb_bytes": fb,
                        "host_numa_node": node_of.get(pci) if pci else None,
                        "device_numa_node": d["numa_node"],
                        "migrate_supported": d["migrate"],
                        "vgpu_migrate_data_bytes": d["migrate_mb"] << 20 if d["migrate_mb"] else None,
                    }
                )
        return {
            "inv_host": inv_host,
            "inv_numa_node": inv_numa,
            "inv_host_pci": inv_pci,
            "inv_vm": inv_vm,
            "inv_vm_gpu": inv_gpu,
        }

    def _vgpu_pci(self, vm: str, host: str | None) -> dict[int, str]:
        """vGPU device key → physical GPU, when the host's graphicsInfo says so unambiguously."""
        devs = [d for d in self._p(vm).get("config.hardware.device") or [] if d["backing"] == "vgpu"]
        if not devs or host is None:
            return {}
        pcis = sorted(g["pci"] for g in self._p(host).get("config.graphicsInfo") or [] if vm in g["vms"] and g["pci"])
        if len(pcis) == 1 and len(devs) == 1:
            return {devs[0]["key"]: pcis[0]}
        return {}

    def gpu_vm_morefs(self) -> list[str]:
        return sorted(v for v in self.gpu_vms if not self._p(v).get("config.template"))

    def host_morefs(self) -> list[str]:
        return sorted(m for m, (t, _) in self.objs.items() if t == "HostSystem")


def _strip_ts(rows: dict[str, list[dict[str, Any]]]) -> dict[str, list[tuple[Any, ...]]]:
    return {k: [tuple((c, repr(x)) for c, x in r.items() if c != "snapshot_ts") for r in v] for k, v in rows.items()}

