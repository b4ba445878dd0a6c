"""Heterogeneous time-sliced vGPU decided per host (ESXi version, vGPU manager), not per vCenter."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl

from accelmon.analytics import estate
from accelmon.analytics.consolidation import HostCap, PGpu, Tenant, plan, profile_allowed
from accelmon.analytics.profiles import GIB, load
from accelmon.analytics.vgpu_hetero import HostVersions, heterogeneous_allowed, release_floor
from accelmon.store.writer import Store

TABLE = load()
VC = "5d2b8a3e-2222-4c1e-9a6e-0c9f6c2d0002"
SNAP = dt.datetime(2025, 1, 8, tzinfo=dt.UTC)


def test_rules_by_version() -> None:
    new = heterogeneous_allowed(HostVersions("new", "8.0.3", "24022510", "550.54.15"))
    old = heterogeneous_allowed(HostVersions("old", "7.0.3", "21930508", "550.54.15"))
    u2 = heterogeneous_allowed(HostVersions("u2", "8.0.2", None, "580.65.06"))
    assert new[:2] == (True, True) and old[:2] == (False, False) and u2[:2] == (True, False)
    assert "7.0.3" in old[2] and "needs ESXi >= 8.0.2" in old[2]


def test_unknown_evidence_is_unknown_not_allowed() -> None:
    assert heterogeneous_allowed(HostVersions("h", None, None, "550.54.15"))[:2] == (None, None)
    # ESXi new enough, manager unknown: unknown (the guest driver is only a lower bound)
    assert heterogeneous_allowed(HostVersions("h", "8.0.3"))[:2] == (None, None)
    # a guest driver of an older branch bounds the manager from below only: proves nothing
    assert heterogeneous_allowed(HostVersions("h", "8.0.3", None, "535.54.03"))[:2] == (None, None)
    assert release_floor("garbage") is None and release_floor("570.1") == (17, 0)
    # the host already running mixed-size mode is direct evidence
    assert heterogeneous_allowed(HostVersions("h", None, vgpu_mode="mixedSize"))[:2] == (True, True)


def _store(tmp_path: Path) -> tuple[Store, list[str]]:
    """One vCenter (API 8.0.3) with an ESXi 8.0.3 host and an ESXi 7.0.3 host, each with two L40S GPUs
    carrying one 8c guest and one 8q guest (guest driver R550)."""
    st = Store(tmp_path)
    snap = {"snapshot_ts": SNAP, "vcenter_uuid": VC}
    hosts = {"host-1": ("esx-new", "8.0.3"), "host-2": ("esx-old", "7.0.3")}
    st.append("inv_vcenter", [{**snap, "url": "https://vc/sdk", "name": "vc", "api_version": "8.0.3.0"}])
    st.append("inv_host", [{**snap, "host_moref": h, "host_name": n, "connection_state": "connected",
                            "power_state": "poweredOn", "cpu_cores": 64, "memory_bytes": 1024 * GIB,
                            "numa_node_count": 1, "vgpu_mode": "sameSize", "esxi_version": v}
                           for h, (n, v) in hosts.items()])
    st.append("inv_numa_node", [{**snap, "host_moref": h, "node_id": 0, "cpu_ids": list(range(64)),
                                 "memory_bytes": 1024 * GIB, "pci_ids": ["0000:3b:00.0", "0000:5e:00.0"]}
                                for h in hosts])
    st.append("inv_host_pci", [{**snap, "host_moref": h, "pci_id": p, "vendor_id": 0x10DE, "device_id": 0x20F1,
                                "device_name": "NVIDIA L40S", "numa_node": 0, "fb_bytes": 48 * GIB}
                               for h in hosts for p in ("0000:3b:00.0", "0000:5e:00.0")])
    vms, gpus, agents, uuids = [], [], [], []
    for i, (h, pci, prof) in enumerate([(h, p, prof) for h in hosts
                                        for p, prof in (("0000:3b:00.0", "grid_l40s-8c"),
                                                        ("0000:5e:00.0", "grid_l40s-8q"))]):
        moref, bios, uuid = f"vm-{i}", f"4221{i:04x}-aaaa-bbbb-cccc-{i:012x}", f"GPU-{i:04d}"
        uuids.append(uuid)
        vms.append({**snap, "vm_moref": moref, "vm_bios_uuid": bios, "vm_name": moref, "host_moref": h,
                    "power_state": "poweredOn", "num_cpu": 4, "memory_bytes": 16 * GIB})
        gpus.append({**snap, "vm_moref": moref, "device_key": 13000, "backing": "vgpu", "host_pci_id": pci,
                     "vgpu_profile": prof, "vgpu_fb_bytes": 8 * GIB, "host_numa_node": 0})
        agents.append({"ts": SNAP, "vm_bios_uuid": bios, "gpu_uuid": uuid, "driver_version": "550.54.15",
                       "virtualization_mode": "vgpu", "vgpu_profile": prof})
    st.append("inv_vm", vms)
    st.append("inv_vm_gpu", gpus)
    st.append("agent_gpu", agents)
    return st, uuids


def test_two_hosts_of_one_vcenter_get_their_own_answer(tmp_path: Path) -> None:
    """The vCenter says API 8.0.3 for both; only the 8.0.3 host may mix 8c and 8q on one GPU
    (the old rule read the vCenter version and let the 7.0 host mix too)."""
    st, uuids = _store(tmp_path)
    con = st.connect()
    gpus = pl.DataFrame({"gpu": uuids, "p95_util_percent": [5.0, 6.0, 5.0, 6.0], "mean_util_percent": [1.0] * 4,
                         "underutilized": [True] * 4, "fb_max_bytes": [GIB] * 4, "idle_power_watts": [40.0] * 4})
    gmap = pl.DataFrame({"gpu": uuids, "vcenter_uuid": [VC] * 4, "vm_moref": [f"vm-{i}" for i in range(4)],
                         "device_key": [13000] * 4}, schema_overrides={"device_key": pl.Int32})
    pgpus, tenants, caps = estate.build(con, gpus, gmap, TABLE)
    ok = {g.host: g.mixed_series_ok for g in pgpus}
    assert ok == {"esx-new": True, "esx-old": False}
    p = plan(pgpus, tenants, caps, TABLE)
    assert {m.to_host for m in p.moves} <= {"esx-new"}
    assert p.moves  # the 8.0.3 host's GPUs receive; none on the 7.0.3 host does
    for g, ts in p.placement.items():
        if {q.name for _, q in ts if q} >= {"8c", "8q"}:
            assert g.startswith("esx-new/")


def test_planner_never_mixes_where_not_allowed() -> None:
    """Same-size 8c + 8q on a host whose answer is False or unknown: refused; mixed sizes likewise."""
    g = TABLE.get
    gpu = PGpu("h/0000:3b:00.0", "h", 0, "l40s", 48 * GIB, "sameSize", False)
    assert not profile_allowed(gpu, [g("l40s", "8c")], g("l40s", "8q"))
    assert profile_allowed(gpu, [g("l40s", "8c")], g("l40s", "8c"))
    assert profile_allowed(PGpu("h/x", "h", 0, "l40s", 48 * GIB, "sameSize", True), [g("l40s", "8c")],
                           g("l40s", "8q"))
    l40 = PGpu("h/0000:3b:00.0", "h", 0, "l40s", 48 * GIB, "mixedSize", False)
    assert not profile_allowed(l40, [g("l40s", "8c")], g("l40s", "12q"))  # series differ, not allowed
    assert profile_allowed(l40, [g("l40s", "8c")], g("l40s", "12c"))
    assert not profile_allowed(PGpu("h/x", "h", 0, "l40s", 48 * GIB, "sameSize", True), [g("l40s", "8c")],
                               g("l40s", "12c"))
    ts = [Tenant("vm-1", "a", 13000, "h/0000:3b:00.0", "vgpu", "8c", 5.0, underutilized=True),
          Tenant("vm-2", "b", 13000, "h/0000:5e:00.0", "vgpu", "8q", 5.0, underutilized=True)]
    gs = [PGpu(t.gpu_id, "h", 0, "l40s", 48 * GIB, "sameSize", False, 40.0) for t in ts]
    assert plan(gs, ts, [HostCap("h", 1 << 40, {0: 64})], TABLE).moves == []
