"""Discovery, the exporter and the analytics give the same GPU ↔ VM-device answer for the same input."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.registry import CollectorRegistry

from accelmon.analytics.identity import gpu_vm_map
from accelmon.collector.discovery import AgentRecord, VmRecord, join_agents, normalize_bios_uuid
from accelmon.daemon.state import DaemonState
from accelmon.exporter.collectors import GpuCollector
from accelmon.identity import guest_bus_slot
from accelmon.store.schema import table
from accelmon.store.writer import Store, to_arrow

GIB = 1 << 30
VC = "vc-uuid-1"


def _bios(i: int) -> str:
    return f"4213{i:04x}-aaaa-bbbb-cccc-{i:012x}"


def _bus(b: int) -> str:
    return f"00000000:{b:02X}:00.0"


# (vm, devices (key, backing, host pci, slot, profile, fb GiB), guest GPUs (uuid, bus, mode, profile, fb GiB))
ESTATE: list[tuple[str, list[tuple[Any, ...]], list[tuple[Any, ...]]]] = [
    # two passthrough GPUs, guest order the reverse of host order: joined by slot
    ("vm-rev", [(13000, "passthrough", "0000:3b:00.0", guest_bus_slot(0x13), None, None),
                (13001, "passthrough", "0000:5e:00.0", guest_bus_slot(0x0B), None, None)],
     [("GPU-rev-0b", 0x0B, "passthrough", None, 40), ("GPU-rev-13", 0x13, "passthrough", None, 40)]),
    # two identical vGPUs, nothing to tell them apart: ambiguous
    ("vm-twin", [(13000, "vgpu", "0000:3b:00.0", None, "grid_a100-10c", 10),
                 (13001, "vgpu", "0000:5e:00.0", None, "grid_a100-10c", 10)],
     [("GPU-twin-a", 0x0B, "vgpu", "A100-10C", 10), ("GPU-twin-b", 0x13, "vgpu", "A100-10C", 10)]),
    # two vGPU profiles: by profile
    ("vm-prof", [(13000, "vgpu", "0000:3b:00.0", None, "grid_a100-20c", 20),
                 (13001, "vgpu", "0000:5e:00.0", None, "grid_a100-10c", 10)],
     [("GPU-prof-10", 0x0B, "vgpu", "A100-10C", 10), ("GPU-prof-20", 0x13, "vgpu", "A100-20C", 20)]),
    # a MIG-mode GPU: instances inherit
    ("vm-mig", [(13000, "passthrough", "0000:86:00.0", guest_bus_slot(0x0B), None, None)],
     [("GPU-mig", 0x0B, "passthrough", None, 40), ("MIG-mig-1", 0x0B, "passthrough", None, 20),
      ("MIG-mig-2", 0x0B, "passthrough", None, 20)]),
    # one device without a slot, one GPU
    ("vm-one", [(13000, "dynamic", "0000:af:00.0", None, None, None)], [("GPU-one", 0x0B, "passthrough", None, 40)]),
]

EXPECTED = {
    "GPU-rev-0b": (13001, "pci_slot"), "GPU-rev-13": (13000, "pci_slot"),
    "GPU-twin-a": (None, "ambiguous"), "GPU-twin-b": (None, "ambiguous"),
    "GPU-prof-10": (13001, "vgpu_profile"), "GPU-prof-20": (13000, "vgpu_profile"),
    "GPU-mig": (13000, "pci_slot"), "MIG-mig-1": (13000, "pci_slot"), "MIG-mig-2": (13000, "pci_slot"),
    "GPU-one": (13000, "only_device"),
}


def _rows() -> dict[str, list[dict[str, Any]]]:
    # now, not at import: the exporter drops samples older than its staleness horizon (60 s)
    NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)  # noqa: N806
    snap = {"snapshot_ts": NOW, "vcenter_uuid": VC}
    vms, devs, agents, samples = [], [], [], []
    for i, (vm, ds, gs) in enumerate(ESTATE):
        vms.append({**snap, "vm_moref": vm, "vm_instance_uuid": f"5000-{i}", "vm_bios_uuid": _bios(i),
                    "vm_name": vm, "host_moref": "host-1", "cluster_name": "gpu", "power_state": "poweredOn"})
        for key, backing, host, slot, prof, fb in ds:
            devs.append({**snap, "vm_moref": vm, "device_key": key, "backing": backing, "host_pci_id": host,
                         "pci_slot_number": slot, "vgpu_profile": prof, "vgpu_fb_bytes": fb * GIB if fb else None,
                         "host_numa_node": 0})
        for k, (uuid, bus, mode, prof, fb) in enumerate(gs):
            agents.append({"ts": NOW, "agent_url": f"http://{vm}:9835/metrics", "vm_bios_uuid": _bios(i),
                           "hostname": vm, "gpu_uuid": uuid, "gpu_index": k, "pci_bus_id": _bus(bus),
                           "model_name": "NVIDIA A100", "virtualization_mode": mode, "vgpu_profile": prof,
                           "fb_total_bytes": fb * GIB})
            samples.append({"ts": NOW, "gpu_uuid": uuid, "source": "agent", "vm_bios_uuid": _bios(i),
                            "util_percent": 10.0, "busy_ms_total": 1000, "idle_ms_total": 9000})
    return {
        "inv_vcenter": [{**snap, "url": "https://vc01.lab/sdk", "name": "vc01"}],
        "inv_host": [{**snap, "host_moref": "host-1", "host_name": "esx1.lab", "cluster_name": "gpu"}],
        "inv_vm": vms, "inv_vm_gpu": devs, "agent_gpu": agents, "gpu_sample": samples,
    }


def _by_discovery(rows: dict[str, list[dict[str, Any]]]) -> dict[str, tuple[int | None, str]]:
    vms = [VmRecord(VC, "vc01", v["vm_moref"], v["vm_name"], v["vm_instance_uuid"],
                    normalize_bios_uuid(v["vm_bios_uuid"]),
                    devices=[d for d in rows["inv_vm_gpu"] if d["vm_moref"] == v["vm_moref"]])
           for v in rows["inv_vm"]]
    agents = [AgentRecord(url, normalize_bios_uuid(gs[0]["vm_bios_uuid"]), None, gs)
              for url in {a["agent_url"] for a in rows["agent_gpu"]}
              for gs in [[a for a in rows["agent_gpu"] if a["agent_url"] == url]]]
    _, joins = join_agents(vms, agents, {})
    return {u: ((j.device or {}).get("device_key"), j.evidence) for u, j in joins.items()}


_LINE = re.compile(r'^(accelmon_gpu_info|accelmon_gpu_placement_info)\{(.*)\} ')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def _by_exporter(rows: dict[str, list[dict[str, Any]]]) -> dict[str, tuple[int | None, str]]:
    st = DaemonState()
    st.apply({name: to_arrow(table(name), rs) for name, rs in rows.items()})
    reg = CollectorRegistry()
    reg.register(GpuCollector(st, st.snapshot))
    info: dict[str, str] = {}
    placed: dict[str, tuple[str, str]] = {}
    for line in generate_latest(reg).decode().splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        labels = dict(_LABEL.findall(m.group(2)))
        if m.group(1) == "accelmon_gpu_info":
            info[labels["gpu_uuid"]] = labels["match_evidence"]
        else:
            placed[labels["gpu_uuid"]] = (labels["vm_uuid"], labels["host_pci_id"])
    # the exporter names the matched device by its VM and host PCI id (distinct within each VM here)
    vm_uuid = {v["vm_moref"]: v["vm_instance_uuid"] for v in rows["inv_vm"]}
    key_of = {(vm_uuid[d["vm_moref"]], d["host_pci_id"]): d["device_key"] for d in rows["inv_vm_gpu"]}
    return {u: (key_of[placed[u]] if u in placed else None, ev) for u, ev in info.items()}


def _by_analytics(rows: dict[str, list[dict[str, Any]]], tmp: Path) -> dict[str, tuple[int | None, str]]:
    store = Store(tmp)
    for name, rs in rows.items():
        store.append(name, rs)
    m = gpu_vm_map(store.connect())
    return {r["gpu"]: (r["device_key"], r["match_evidence"]) for r in m.to_dicts()}


def test_discovery_exporter_and_analytics_agree(tmp_path: Path) -> None:
    rows = _rows()
    disc = _by_discovery(rows)
    assert disc == EXPECTED
    assert _by_analytics(rows, tmp_path / "data") == EXPECTED
    assert _by_exporter(rows) == EXPECTED
