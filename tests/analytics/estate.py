"""A small generated vSphere GPU estate written straight into a Store (inventory, agents, samples,
vMotions, power). Used by the analytics and report tests; independent of the collectors."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np

from accelmon.identity import guest_bus_slot
from accelmon.store.writer import Store

GIB = 1 << 30
VC = "5d2b8a3e-1111-4c1e-9a6e-0c9f6c2d0001"
SNAP = dt.datetime(2025, 1, 8, tzinfo=dt.UTC)
T0 = dt.datetime(2025, 1, 6, tzinfo=dt.UTC)
DAYS = 2


@dataclass
class Vm:
    moref: str
    name: str
    host: str
    gpus: list[tuple[str, str, int, str | None]]  # (pci, backing, host node, vgpu profile)
    util: float | None  # mean utilization of its GPU(s); None = no agent
    num_cpu: int = 8
    affinity: str | None = None
    bios: str = ""
    gpu_uuids: list[str] = field(default_factory=list)
    guest_buses: list[int] = field(default_factory=list)  # guest PCI bus of device k (its pciSlotNumber decoded)


HOSTS = {
    "host-11": ("esx-a1.lab", "cluster-a"),
    "host-12": ("esx-a2.lab", "cluster-a"),
    "host-21": ("esx-b1.lab", "cluster-b"),
}
# host -> [(pci, node)]; esx-b1 has its GPUs on PCI segment 0001
HOST_GPUS = {
    "host-11": [("0000:3b:00.0", 0), ("0000:5e:00.0", 0), ("0000:86:00.0", 1), ("0000:af:00.0", 1)],
    "host-12": [("0000:3b:00.0", 0), ("0000:86:00.0", 1), ("0000:d8:00.0", 1)],
    "host-21": [("0001:3b:00.0", 0), ("0001:86:00.0", 1)],
}


def vms() -> list[Vm]:
    v = [
        # idle passthrough GPUs (candidates to convert and pack)
        Vm("vm-101", "train-idle-1", "host-11", [("0000:3b:00.0", "passthrough", 0, None)], 3.0, affinity="0"),
        Vm("vm-102", "train-idle-2", "host-12", [("0000:3b:00.0", "passthrough", 0, None)], 5.0),
        # time-sliced 10C vGPUs: two light ones on one GPU, one light one alone on another
        Vm("vm-201", "infer-a", "host-11", [("0000:5e:00.0", "vgpu", 0, "grid_a100-10c")], 6.0),
        Vm("vm-202", "infer-b", "host-11", [("0000:5e:00.0", "vgpu", 0, "grid_a100-10c")], 8.0),
        Vm("vm-203", "infer-c", "host-12", [("0000:86:00.0", "vgpu", 1, "grid_a100-10c")], 4.0),
        # busy
        Vm("vm-301", "busy-train", "host-21", [("0001:3b:00.0", "passthrough", 0, None)], 85.0),
        # NUMA cases
        Vm("vm-401", "numa-wrong-affinity", "host-11", [("0000:86:00.0", "passthrough", 1, None)], 40.0, affinity="0"),
        Vm("vm-402", "numa-split", "host-21", [("0001:86:00.0", "passthrough", 1, None)], 50.0, affinity="0,1"),
        Vm("vm-403", "numa-wide", "host-11", [("0000:af:00.0", "passthrough", 1, None)], 55.0, num_cpu=48),
        # agent reported only for the last ~10 hours: insufficient data, never flagged
        Vm("vm-501", "late-agent", "host-12", [("0000:d8:00.0", "passthrough", 1, None)], 2.0),
    ]
    # vm-402 also gets a GPU on node 0 of esx-b1 next to the busy VM's: split across nodes
    v[7].gpus.append(("0001:3b:00.0", "passthrough", 0, None))
    # ... and its guest shows the devices in the reverse of their key order (slot decides, not order)
    v[7].guest_buses = [0x14, 0x13]
    for i, x in enumerate(v):
        x.guest_buses = x.guest_buses or [0x13 + k for k in range(len(x.gpus))]
        x.bios = f"4221{i:04x}-aaaa-bbbb-cccc-{i:012x}"
        x.gpu_uuids = [f"GPU-{i:02d}{k}-0000-1111-2222-{i:012x}" for k in range(len(x.gpus))]
    return v


def write_inventory(st: Store) -> list[Vm]:
    vs = vms()
    snap = {"snapshot_ts": SNAP, "vcenter_uuid": VC}
    st.append("inv_vcenter", [{**snap, "url": "https://vc.lab/sdk", "name": "vc", "api_version": "8.0.2.0"}])
    st.append("inv_host", [
        {**snap, "host_moref": h, "host_name": n, "cluster_moref": "domain-c" + c[-1], "cluster_name": c,
         "connection_state": "connected", "power_state": "poweredOn", "cpu_cores": 64, "memory_bytes": 1024 * GIB,
         "numa_node_count": 2, "vgpu_mode": "sameSize"} for h, (n, c) in HOSTS.items()])
    st.append("inv_numa_node", [
        {**snap, "host_moref": h, "node_id": n, "cpu_ids": list(range(64 * n, 64 * n + 64)),
         "memory_bytes": 512 * GIB, "pci_ids": [p for p, nn in HOST_GPUS[h] if nn == n]}
        for h in HOSTS for n in (0, 1)])
    st.append("inv_host_pci", [
        {**snap, "host_moref": h, "pci_id": p, "vendor_id": 0x10DE, "device_id": 0x20F1, "vendor_name": "NVIDIA",
         "device_name": "NVIDIA A100-PCIE-40GB", "numa_node": n, "passthru_enabled": True, "fb_bytes": 40 * GIB}
        for h, gl in HOST_GPUS.items() for p, n in gl])
    st.append("inv_vm", [
        {**snap, "vm_moref": v.moref, "vm_instance_uuid": "5003" + v.bios[4:], "vm_bios_uuid": v.bios, "vm_name": v.name,
         "host_moref": v.host, "cluster_name": HOSTS[v.host][1], "power_state": "poweredOn", "num_cpu": v.num_cpu,
         "cores_per_socket": v.num_cpu, "memory_bytes": 64 * GIB, "numa_node_affinity": v.affinity}
        for v in vs])
    st.append("inv_vm_gpu", [
        {**snap, "vm_moref": v.moref, "device_key": 13000 + k, "backing": b, "host_pci_id": p, "vgpu_profile": prof,
         "vgpu_fb_bytes": 10 * GIB if prof else None, "host_numa_node": n,
         "pci_slot_number": guest_bus_slot(v.guest_buses[k])}
        for v in vs for k, (p, b, n, prof) in enumerate(v.gpus)])
    return vs


def write_agents_and_samples(st: Store, vs: list[Vm], step_s: int = 60, seed: int = 3) -> None:
    rng = np.random.default_rng(seed)
    agents, rows = [], []
    n = DAYS * 86400 // step_s
    t = np.array([T0 + dt.timedelta(seconds=step_s * i) for i in range(n)])
    for v in vs:
        if v.util is None:
            continue
        for k, (gu, (_p, b, _n, prof)) in enumerate(zip(v.gpu_uuids, v.gpus, strict=True)):
            agents.append({"ts": T0, "agent_url": f"http://{v.name}:9835/metrics", "vm_bios_uuid": v.bios,
                           "hostname": v.name, "gpu_uuid": gu, "gpu_index": k, "pci_bus_id": f"00000000:{v.guest_buses[k]:02X}:00.0",
                           "model_name": "NVIDIA A100-PCIE-40GB", "virtualization_mode": b if b == "passthrough" else "vgpu",
                           "vgpu_profile": prof, "mig_mode": False, "numa_node": -1,
                           "fb_total_bytes": (10 if prof else 40) * GIB})
            frac = np.clip(rng.normal(v.util, v.util / 4, n), 0, 100) / 100.0
            frac[rng.random(n) < 0.3] = 0.0  # idle minutes
            busy_inc = np.rint(frac * step_s * 1000).astype(np.int64)
            on = busy_inc > 0
            busy = np.cumsum(busy_inc)
            idle = np.cumsum(step_s * 1000 - busy_inc)
            pw = np.rint(45_000 + frac * 200_000).astype(np.int64)
            energy = np.cumsum(pw * step_s)
            if prof:
                fb = np.full(n, 3 * GIB)
            elif v.util < 15:  # light jobs: a few GiB, held while idle
                fb = np.where(on, 5 * GIB, 4 * GIB)
            else:
                fb = np.where(on, 20 * GIB, 2 * GIB)
            first = int(n * 0.8) if v.name == "late-agent" else 0
            for i in range(first, n):
                rows.append({"ts": t[i], "gpu_uuid": gu, "source": "agent", "vm_bios_uuid": v.bios,
                             "util_percent": int(round(100 * frac[i])), "busy_ms_total": int(busy[i]),
                             "idle_ms_total": int(idle[i]), "fb_used_bytes": int(fb[i]),
                             "fb_total_bytes": (10 if prof else 40) * GIB,
                             "power_milliwatts": None if prof else int(pw[i]),
                             "energy_millijoules_total": None if prof else int(energy[i])})
    st.append("agent_gpu", agents)
    st.append("gpu_sample", rows)


def write_vmotion_and_power(st: Store, vs: list[Vm], seed: int = 4) -> None:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(40):
        v = vs[i % len(vs)]
        vg = any(b == "vgpu" for _p, b, _n, _pr in v.gpus)
        fb = (10 * GIB * (1 + i % 4)) if vg else None
        stun = (0.5 + 0.45 * (fb / GIB) + rng.normal(0, 0.3)) if vg else abs(rng.normal(0.4, 0.1))
        end = T0 + dt.timedelta(hours=1 + i)
        failed = i == 7
        rows.append({"started_at": end - dt.timedelta(minutes=2), "ended_at": end, "vcenter_uuid": VC, "chain_id": i,
                     "vm_moref": v.moref, "vm_name": v.name, "cluster_name": HOSTS[v.host][1], "drs": i % 2 == 0,
                     "succeeded": not failed, "failure_reason": "maxSwitchoverTimeExceeded" if failed else None,
                     "stun_seconds": float(stun), "vgpu_attached": vg, "vgpu_fb_bytes": fb})
    st.append("vmotion", rows)
    prow, hrow = [], []
    for k in range(DAYS * 288):  # 5-minute rollups are enough for the tests
        ts = T0 + dt.timedelta(minutes=5 * (k + 1))
        for v in vs:
            w = 120.0 + (v.util or 0) * 2
            prow.append({"ts": ts, "vcenter_uuid": VC, "vm_moref": v.moref, "interval_seconds": 300,
                         "power_watts": w, "energy_joules": w * 300})
        for h in HOSTS:
            hrow.append({"ts": ts, "vcenter_uuid": VC, "host_moref": h, "interval_seconds": 300,
                         "power_watts": 900.0, "energy_joules": None})
    st.append("vm_power_sample", prow)
    st.append("host_power_sample", hrow)


def write_estate(st: Store) -> list[Vm]:
    vs = write_inventory(st)
    write_agents_and_samples(st, vs)
    write_vmotion_and_power(st, vs)
    return vs
