"""Inventory properties: what the PropertyCollector filter asks for, and how each value is read.

The answers are read with :mod:`rawxml` (ElementTree on cut-out chunks); ``EXTRACT`` maps a property
path to the function that turns its XML element into plain Python data kept in the model.
GPU ↔ NUMA and device backing rules: see :mod:`accelmon.collector.vcenter.inventory`.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Any

from accelmon.collector.vcenter import rawxml as rx

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
    # ownership (owners.py): folder and resource pool it sits in, custom attribute values
    "parent",
    "resourcePool",
    "customValue",
)
CR_PROPS = ("name", "parent", "environmentBrowser")
TYPES_PROPS: dict[str, tuple[str, ...]] = {
    "Datacenter": ("name",),
    "Folder": ("name", "parent"),
    "ComputeResource": CR_PROPS,
    "ClusterComputeResource": CR_PROPS,
    "HostSystem": HOST_PROPS,
    "ResourcePool": ("name", "parent"),
    "VirtualMachine": VM_PROPS,
}
# CustomFieldsManager.field (custom attribute definitions: key -> name), read by the same
# filter as the inventory (a second ObjectSpec), so it costs no extra call.
CFM_PROPS = ("field",)
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


def _custom_values(val: ET.Element | None) -> dict[int, str]:
    """ManagedEntity.customValue (CustomFieldStringValue[]): field key -> value; a key set twice
    keeps the last value."""
    out: dict[int, str] = {}
    for cv in rx.items(val):
        k = rx.child_int(cv, "key")
        if k is not None:
            out[k] = rx.child_text(cv, "value") or ""
    return out


def _field_defs(val: ET.Element | None) -> dict[int, dict[str, str | None]]:
    """CustomFieldsManager.field (CustomFieldDef[]): key -> name and managed object type."""
    out: dict[int, dict[str, str | None]] = {}
    for f in rx.items(val):
        k = rx.child_int(f, "key")
        if k is not None:
            out[k] = {"name": rx.child_text(f, "name"), "mo_type": rx.child_text(f, "managedObjectType")}
    return out


EXTRACT: dict[str, Any] = {
    "resourcePool": _ref,
    "customValue": _custom_values,
    "field": _field_defs,
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

