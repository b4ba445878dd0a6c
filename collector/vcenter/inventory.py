"""Inventory: one PropertyCollector filter over a ContainerView; later polls fetch only changes.

First poll: ``WaitForUpdatesEx(version="")`` on a private PropertyCollector whose filter
covers every Datacenter, Folder, (Cluster)ComputeResource, HostSystem and VirtualMachine
(one traversal, no per-object round trips).  Later polls: ``WaitForUpdatesEx(version,
maxWaitSeconds=0)`` returns only what changed since.  The answers are read with
:mod:`rawxml`: only hosts, clusters and VMs with a ``VirtualPCIPassthrough`` device (or
known GPU VMs) are parsed, which is what makes a 10,000-VM vCenter cheap to poll.

GPU ↔ NUMA rule (``host_numa_node``): the host NUMA node of a GPU is the
``HostNumaNode.typeId`` whose ``pciId`` list contains the GPU's PCI id (SBDF, lower case,
any segment); when the node lists only an upstream bridge or root port, the GPU's
``parentBridge`` chain (``hardware.pciDevice``) is followed up to a listed id.  A VM device's
physical GPU is the passthrough backing ``id``, the dynamic backing ``assignedId``, or for a
vGPU the host ``config.graphicsInfo[]`` entry that lists the VM (when exactly one does per
vGPU device).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import re
import threading
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any

from pyVmomi import vim, vmodl

from accelmon.collector.vcenter import rawxml as rx
from accelmon.collector.vcenter.session import VCenterSession
from accelmon.collector.vcenter.vgpu import GIB, fb_bytes

log = logging.getLogger(__name__)

HOST_PROPS = (
    "name",
    "parent",
    "runtime.connectionState",
    "runtime.powerState",
    "hardware.cpuInfo.numCpuCores",
    "hardware.memorySize",
    "hardware.numaInfo",
    "hardware.pciDevice",
    "config.graphicsInfo",
    "config.graphicsConfig",
    "config.pciPassthruInfo",
    "config.product.version",
    "config.product.build",
)
VM_PROPS = (
    "name",
    "runtime.host",
    "runtime.powerState",
    "config.template",
    "config.instanceUuid",
    "config.uuid",
    "config.hardware.numCPU",
    "config.hardware.numCoresPerSocket",
    "config.hardware.memoryMB",
    "config.hardware.device",
    "config.extraConfig",
    "config.cpuAffinity",
    "config.files.logDirectory",
    "guest.net",
    "guest.ipAddress",
    "guest.hostName",
)
CR_PROPS = ("name", "parent", "environmentBrowser")
TYPES_PROPS: dict[str, tuple[str, ...]] = {
    "Datacenter": ("name",),
    "Folder": ("name", "parent"),
    "ComputeResource": CR_PROPS,
    "ClusterComputeResource": CR_PROPS,
    "HostSystem": HOST_PROPS,
    "VirtualMachine": VM_PROPS,
}
LISTEN_WAIT_S = 10  # long-poll length; below the session's HTTP timeout
EXTRA_KEYS = re.compile(r"^(numa\.|cpuid\.coresPerSocket$|sched\.)")

_SBDF_RE = re.compile(r"^(?:([0-9a-fA-F]{1,8}):)?([0-9a-fA-F]{1,2}):([0-9a-fA-F]{1,2})\.([0-7])$")


def norm_pci(pci_id: str | None) -> str | None:
    """``3B:00.0`` / ``0000:3b:00.0`` / ``10000:3b:00.0`` → lower-case SBDF (segment kept)."""
    if not pci_id:
        return None
    m = _SBDF_RE.match(pci_id.strip())
    if m is None:
        return pci_id.strip().lower()
    seg, bus, dev, fn = m.groups()
    return f"{int(seg or '0', 16):04x}:{int(bus, 16):02x}:{int(dev, 16):02x}.{fn}"


def _u16(v: int | None) -> int | None:
    return None if v is None else v & 0xFFFF


# ------------------------------------------------------------------ property value extractors
def _ref(val: ET.Element | None) -> str | None:
    return rx.text(val) or None


def _int(val: ET.Element | None) -> int | None:
    t = rx.text(val)
    try:
        return int(t) if t else None
    except ValueError:
        return None


def _bool(val: ET.Element | None) -> bool | None:
    t = rx.text(val)
    return None if t in (None, "") else t == "true"


def _numa(val: ET.Element | None) -> dict[str, Any] | None:
    if val is None:
        return None
    nodes = []
    for n in rx.children(val, "numaNode"):
        nodes.append(
            {
                "id": rx.child_int(n, "typeId"),
                "cpus": [int(c.text or 0) for c in rx.children(n, "cpuID")],
                "mem": rx.child_int(n, "memoryRangeLength"),
                "pci": [norm_pci(p.text) for p in rx.children(n, "pciId") if p.text],
            }
        )
    return {"num": rx.child_int(val, "numNodes"), "nodes": nodes}


def _pci_devices(val: ET.Element | None) -> list[dict[str, Any]]:
    out = []
    for d in rx.items(val):
        out.append(
            {
                "id": norm_pci(rx.child_text(d, "id")),
                "class": _u16(rx.child_int(d, "classId")),
                "vendor": _u16(rx.child_int(d, "vendorId")),
                "device": _u16(rx.child_int(d, "deviceId")),
                "vendor_name": rx.child_text(d, "vendorName"),
                "device_name": rx.child_text(d, "deviceName"),
                "parent": norm_pci(rx.child_text(d, "parentBridge")),
            }
        )
    return out


def _passthru(val: ET.Element | None) -> dict[str, bool]:
    out: dict[str, bool] = {}
    for p in rx.items(val):
        pid = norm_pci(rx.child_text(p, "id"))
        if pid:
            out[pid] = rx.child_text(p, "passthruEnabled") == "true"
    return out


def _graphics(val: ET.Element | None) -> list[dict[str, Any]]:
    out = []
    for g in rx.items(val):
        out.append(
            {
                "pci": norm_pci(rx.child_text(g, "pciId")),
                "type": rx.child_text(g, "graphicsType"),
                "vgpu_mode": rx.child_text(g, "vgpuMode"),
                "mem_kb": rx.child_int(g, "memorySizeInKB"),
                "vms": [(v.text or "").strip() for v in rx.children(g, "vm")],
            }
        )
    return out


def _graphics_config(val: ET.Element | None) -> str | None:
    return rx.child_text(val, "sharedPassthruAssignmentPolicy") if val is not None else None


def _devices(val: ET.Element | None) -> list[dict[str, Any]]:
    """The VM's VirtualPCIPassthrough devices (others are not kept)."""
    out = []
    for d in rx.items(val):
        if rx.xsi_type(d) != "VirtualPCIPassthrough":
            continue
        b = d.find(rx.q("backing"))
        bt = rx.xsi_type(b)
        dev: dict[str, Any] = {
            "key": rx.child_int(d, "key"),
            "numa_node": rx.child_int(d, "numaNode"),
            "slot": rx.child_int(d.find(rx.q("slotInfo")), "pciSlotNumber"),  # VirtualDevicePciBusSlotInfo
            "backing": "other",
            "pci": None,
            "profile": None,
            "migrate": None,
            "migrate_mb": None,
        }
        if bt == "VirtualPCIPassthroughVmiopBackingInfo":
            dev["backing"] = "vgpu"
            dev["profile"] = rx.child_text(b, "vgpu")
            dev["migrate"] = _bool(b.find(rx.q("migrateSupported"))) if b is not None else None
            dev["migrate_mb"] = rx.child_int(b, "vgpuMigrateDataSizeMB")
        elif bt == "VirtualPCIPassthroughDeviceBackingInfo":
            dev["backing"] = "passthrough"
            dev["pci"] = norm_pci(rx.child_text(b, "id"))
        elif bt == "VirtualPCIPassthroughDynamicBackingInfo":
            dev["backing"] = "dynamic"
            dev["pci"] = norm_pci(rx.child_text(b, "assignedId"))
        out.append(dev)
    return out


def _extra(val: ET.Element | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for o in rx.items(val):
        k = rx.child_text(o, "key") or ""
        if EXTRA_KEYS.match(k):
            out[k] = rx.child_text(o, "value") or ""
    return out


def _affinity_set(val: ET.Element | None) -> list[int] | None:
    """VirtualMachineAffinityInfo.affinitySet: host logical CPUs the vCPUs may run on; unset/empty = none."""
    cpus = [int(c.text) for c in rx.children(val, "affinitySet") if (c.text or "").strip().isdigit()]
    return cpus or None


def _ips(val: ET.Element | None) -> list[str]:
    ips: list[str] = []
    for nic in rx.items(val):
        for ip in rx.children(nic, "ipAddress"):
            t = (ip.text or "").strip()
            if t and t not in ips:
                ips.append(t)
    return ips


EXTRACT: dict[str, Any] = {
    "parent": _ref,
    "runtime.host": _ref,
    "environmentBrowser": _ref,
    "hardware.cpuInfo.numCpuCores": _int,
    "hardware.memorySize": _int,
    "config.hardware.numCPU": _int,
    "config.hardware.numCoresPerSocket": _int,
    "config.hardware.memoryMB": _int,
    "config.template": _bool,
    "hardware.numaInfo": _numa,
    "hardware.pciDevice": _pci_devices,
    "config.pciPassthruInfo": _passthru,
    "config.graphicsInfo": _graphics,
    "config.graphicsConfig": _graphics_config,
    "config.hardware.device": _devices,
    "config.extraConfig": _extra,
    "config.cpuAffinity": _affinity_set,
    "guest.net": _ips,
}


def extract(name: str, val: ET.Element | None) -> Any:
    f = EXTRACT.get(name)
    if f is not None:
        return f(val)
    return rx.text(val)


# ------------------------------------------------------------------ the model
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


# ------------------------------------------------------------------ the collector
@dataclass
class PollStats:
    full: bool = False
    updates: int = 0
    skipped: int = 0
    bytes: int = 0
    calls: int = 0
    changed: bool = False


class Inventory:
    """Keeps a filter on the server and the model in memory; :meth:`poll` brings it up to date."""

    def __init__(self, session: VCenterSession) -> None:
        self.session = session
        self.model = Model()
        self._gen = -1
        self._pc: Any = None
        self._view: Any = None
        self._version: str | None = None
        self._last_rows: dict[str, list[tuple[Any, ...]]] | None = None
        self.vcenter_uuid: str | None = None
        self.about: Any = None
        # background long-poll (WaitForUpdatesEx with maxWaitSeconds): see listen()
        self.lock = threading.RLock()  # guards the model against the listener thread
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._pending = PollStats()
        self._listen_error: BaseException | None = None

    # -------------------------------------------------------------- server-side objects
    def _setup(self) -> None:
        s = self.session
        c = s.content
        self.about = c.about
        self.vcenter_uuid = c.about.instanceUuid or c.about.name
        self._view = c.viewManager.CreateContainerView(
            c.rootFolder,
            [vim.Datacenter, vim.Folder, vim.ComputeResource, vim.ClusterComputeResource, vim.HostSystem,
             vim.VirtualMachine],
            True,
        )
        ts = vmodl.query.PropertyCollector.TraversalSpec(
            name="view", type=vim.view.ContainerView, path="view", skip=False
        )
        spec = vmodl.query.PropertyCollector.FilterSpec(
            objectSet=[vmodl.query.PropertyCollector.ObjectSpec(obj=self._view, skip=True, selectSet=[ts])],
            propSet=[
                vmodl.query.PropertyCollector.PropertySpec(type=getattr(vim, t), pathSet=list(p))
                for t, p in TYPES_PROPS.items()
            ],
        )
        self._pc = c.propertyCollector.CreatePropertyCollector()
        self._pc.CreateFilter(spec, partialUpdates=False)
        self._spec = spec
        self._version = ""
        self._gen = s.generation

    def _wait(self, version: str) -> bytes:
        opts = vmodl.query.PropertyCollector.WaitOptions(maxWaitSeconds=0)
        return self.session.invoke_raw(self._pc, "WaitForUpdatesEx", version, opts)

    # -------------------------------------------------------------- polling
    def poll(self) -> PollStats:
        """Bring the model up to date.

        While the listener thread is healthy it has already applied every change the server
        pushed: nothing is asked, the changes it collected are reported.  Otherwise (first
        poll, listener stopped by an error or a re-login) the server is asked directly; an
        error is raised here, in the poller's thread."""
        with self.lock:
            if self._thread is not None and self._thread.is_alive() and self._listen_error is None:
                st, self._pending = self._pending, PollStats()
                return st
        self.stop_listening()
        err, self._listen_error = self._listen_error, None
        if err is not None:
            log.debug("vCenter %s: update listener stopped: %s", self.session.target, err)
        with self.lock:
            return self.session.call(self._poll)

    # -------------------------------------------------------------- background long-poll
    def listen(self) -> None:
        """Start a thread that waits on ``WaitForUpdatesEx`` (the vSphere way of being told
        about changes) and applies them as they come; :meth:`poll` then costs nothing."""
        if self._thread is not None and self._thread.is_alive():
            return
        if self._pc is None or not self._version:
            return
        self._stop = threading.Event()
        self._listen_error = None
        self._thread = threading.Thread(target=self._listen, name="vcenter-updates", daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        stop = self._stop
        wait = max(1, min(LISTEN_WAIT_S, int(self.session.timeout) - 5))
        opts = vmodl.query.PropertyCollector.WaitOptions(maxWaitSeconds=wait)
        gen = self._gen
        while not stop.is_set():
            try:
                if self.session.generation != gen:
                    raise RuntimeError("session changed")
                data = self.session.invoke_raw(self._pc, "WaitForUpdatesEx", self._version, opts)
                if stop.is_set():
                    return
                ans = rx.parse_answer(data, self.model.keep)
                with self.lock:
                    need_full = self.model.apply(ans.updates)
                    if need_full:
                        self._read_full(need_full, self._pending)
                    if ans.version:
                        self._version = ans.version
                    self._pending.calls += 1
                    self._pending.bytes += len(data)
                    self._pending.updates += len(ans.updates)
                    self._pending.skipped += ans.skipped
            except BaseException as e:  # noqa: BLE001 - handed to the next poll()
                if not stop.is_set():
                    self._listen_error = e
                return

    def stop_listening(self, wait: bool = True) -> None:
        """Stop the listener.  With ``wait=False`` (closing) the thread is only told to stop:
        its pending long-poll ends by itself (logging out ends it on vCenter) and it exits
        without touching anything."""
        t = self._thread
        if t is None:
            return
        self._stop.set()
        if wait:
            t.join(timeout=self.session.timeout + 1)
        self._thread = None

    def _poll(self) -> PollStats:
        st = PollStats()
        if self._gen != self.session.generation or self._pc is None:
            self._setup()
        if self._version == "":
            st.full = True
            self.model = Model(profile_fb_gib=self.model.profile_fb_gib)
        version = self._version or ""
        while True:
            try:
                data = self._wait(version)
            except (vmodl.fault.InvalidArgument, vmodl.query.InvalidCollectorVersion):
                if not version:
                    raise
                self._version = ""  # the server forgot our version: read everything again
                return self._poll()
            st.calls += 1
            st.bytes += len(data)
            ans = rx.parse_answer(data, self.model.keep)
            st.updates += len(ans.updates)
            st.skipped += ans.skipped
            need_full = self.model.apply(ans.updates)
            if need_full:
                self._read_full(need_full, st)
            if ans.version is not None:
                version = ans.version
            if not ans.truncated:
                break
        self._version = version
        self._pending = PollStats()
        if st.full:
            self.model.vm_count = st.updates + st.skipped
            self._vgpu_profiles()
        return st

    def _read_full(self, vms: list[str], st: PollStats) -> None:
        """All properties of VMs that gained a GPU device in a delta."""
        pcls = vmodl.query.PropertyCollector
        spec = pcls.FilterSpec(
            objectSet=[pcls.ObjectSpec(obj=vim.VirtualMachine(m, self.session.stub), skip=False) for m in vms],
            propSet=[pcls.PropertySpec(type=vim.VirtualMachine, pathSet=list(VM_PROPS))],
            reportMissingObjectsInResults=False,
        )
        data = self.session.invoke_raw(self.session.content.propertyCollector, "RetrievePropertiesEx",
                                       [spec], pcls.RetrieveOptions())
        st.calls += 1
        st.bytes += len(data)
        ans = rx.parse_answer(data, self.model.keep, chunk_tag=b"objects")
        for u in ans.updates:
            u.kind = "enter"
        self.model.apply(ans.updates)

    def _vgpu_profiles(self) -> None:
        """``ConfigTarget.vgpuProfileInfo[].fbSizeInGib`` per profile, where the API has it
        (vSphere 7.0.3+); one query per cluster environment browser, first poll only."""
        seen: set[str] = set()
        for _m, (t, p) in list(self.model.objs.items()):
            eb = p.get("environmentBrowser")
            if t not in ("ClusterComputeResource", "ComputeResource") or not eb or eb in seen:
                continue
            seen.add(eb)
            try:
                data = self.session.invoke_raw(vim.EnvironmentBrowser(eb, self.session.stub), "QueryConfigTarget")
            except Exception as e:  # noqa: BLE001 - optional refinement only
                log.debug("QueryConfigTarget(%s): %s", eb, e)
                continue
            for m in re.finditer(rb"<vgpuProfileInfo>(.*?)</vgpuProfileInfo>", data, re.S):
                el = ET.fromstring(b"<r xmlns='urn:vim25'>" + m.group(1) + b"</r>")
                name = rx.child_text(el, "profileName")
                size = rx.child_int(el, "fbSizeInGib")
                if name and size:
                    self.model.profile_fb_gib[name] = size
            if len(seen) >= 64:
                break

    # -------------------------------------------------------------- snapshots
    def snapshot_if_changed(self, now: dt.datetime, url: str, name: str | None) -> dict[str, list[dict[str, Any]]]:
        """All inventory rows when something differs from the last written snapshot, else {}."""
        if not self.model.dirty and self._last_rows is not None:
            return {}
        self.model.dirty = False
        rows = self.model.rows(self.vcenter_uuid or "", now)
        about = self.about
        rows["inv_vcenter"] = [
            {
                "snapshot_ts": now,
                "vcenter_uuid": self.vcenter_uuid,
                "url": url,
                "name": name,
                "api_version": getattr(about, "apiVersion", None),
                "full_name": getattr(about, "fullName", None),
            }
        ]
        key = _strip_ts(rows)
        if key == self._last_rows:
            return {}
        self._last_rows = key
        return rows

    def forget_snapshot(self) -> None:
        """Make the next snapshot be written (e.g. the last write failed)."""
        self._last_rows = None
        self.model.dirty = True


__all__ = ["GIB", "Inventory", "Model", "norm_pci"]
