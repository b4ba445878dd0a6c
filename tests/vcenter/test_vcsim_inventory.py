"""Inventory against the running seeded simulator, compared with its ground-truth manifest."""

from __future__ import annotations

import time
from typing import Any

from pyVim.task import WaitForTask

from accelmon.collector.vcenter.session import VCenterSession
from accelmon.collector.vcenter.source import VCenterSource
from accelmon.sim.vcsim import Vcsim
from accelmon.store.writer import Store

from .conftest import vc_config


def _rows(store: Store, sql: str) -> list[dict[str, Any]]:
    con = store.connect()
    cur = con.execute(sql)
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


def test_inventory_matches_manifest(estate: Vcsim, source: VCenterSource, store: Store) -> None:
    res = source.collect_inventory(store)
    m = estate.manifest
    assert res.rows["inv_vcenter"] == 1
    (vc,) = _rows(store, "SELECT * FROM inv_vcenter")
    assert vc["vcenter_uuid"] == m["vcenter"]["instance_uuid"] and vc["api_version"] == "7.0.3.0"
    assert "password" not in str(vc) and estate.password not in str(vc)

    gpu_vms = {v["moref"]: v for v in m["vms"] if v["gpus"]}
    vms = {r["vm_moref"]: r for r in _rows(store, "SELECT * FROM inv_vm")}
    assert set(vms) == set(gpu_vms)  # GPU VMs only, every one of them
    for moref, want in gpu_vms.items():
        got = vms[moref]
        assert got["vm_name"] == want["name"]
        assert got["vm_bios_uuid"] == want["bios_uuid"].lower()
        assert got["vm_instance_uuid"] == want["instance_uuid"]
        assert got["host_moref"] == want["host"] and got["cluster_name"] == want["cluster"]
        assert got["power_state"] == want["power_state"]
        assert got["num_cpu"] == want["num_cpu"] and got["memory_bytes"] == want["memory_mb"] << 20
        assert got["numa_node_affinity"] == want["numa_node_affinity"]
        assert got["cpu_affinity_set"] == want["cpu_affinity_set"]  # config.cpuAffinity.affinitySet; NULL unset
        if want.get("ip"):
            assert want["ip"] in got["guest_ips"]

    devs = {(r["vm_moref"], r["device_key"]): r for r in _rows(store, "SELECT * FROM inv_vm_gpu")}
    want_devs = {(v, g["device_key"]): g for v, vm in gpu_vms.items() for g in vm["gpus"]}
    assert set(devs) == set(want_devs)
    kinds = set()
    for k, g in want_devs.items():
        got = devs[k]
        kinds.add(g["kind"])
        assert got["backing"] == g["kind"]
        assert got["host_pci_id"] == g["host_pci_id"]
        assert got["host_numa_node"] == g["numa_node"]
        assert got["pci_slot_number"] is not None and got["pci_slot_number"] == g["pci_slot_number"]
        if g["kind"] == "vgpu":
            assert got["vgpu_profile"] == g["vgpu_profile"]
            assert got["vgpu_fb_bytes"] == g["fb_gib"] << 30
    assert kinds == {"passthrough", "vgpu", "dynamic"}

    assert any(v["cpu_affinity_set"] for v in gpu_vms.values())  # the seeded CPU scheduling affinity is read

    # the deliberately misaligned VM: vCPUs pinned to node 0, its GPU on node 1
    mis = [v for v in gpu_vms.values() if v["numa"]["status"] == "misaligned"]
    assert mis
    for v in mis:
        aff = {int(x) for x in vms[v["moref"]]["numa_node_affinity"].split(",")}
        gpu_nodes = {devs[(v["moref"], g["device_key"])]["host_numa_node"] for g in v["gpus"]}
        assert aff.isdisjoint(gpu_nodes)


def test_hosts_numa_and_gpus(estate: Vcsim, source: VCenterSource, store: Store) -> None:
    source.collect_inventory(store)
    m = estate.manifest
    hosts = {r["host_moref"]: r for r in _rows(store, "SELECT * FROM inv_host")}
    assert set(hosts) == {h["moref"] for h in m["hosts"]}
    # HostSystem config.product as vcsim advertises it (main.go): the per-host heterogeneous-vGPU evidence
    assert {(r["esxi_version"], r["esxi_build"]) for r in hosts.values()} == {("7.0.3", "21930508")}
    numa = _rows(store, "SELECT * FROM inv_numa_node")
    pci = {(r["host_moref"], r["pci_id"]): r for r in _rows(store, "SELECT * FROM inv_host_pci")}
    segments = set()
    for h in m["hosts"]:
        assert hosts[h["moref"]]["numa_node_count"] == 2
        for n in h["numa_nodes"]:
            (row,) = [r for r in numa if r["host_moref"] == h["moref"] and r["node_id"] == n["node"]]
            assert sorted(row["pci_ids"]) == sorted(n["pci_ids"])
            assert len(row["cpu_ids"]) == n["cpu_count"]
        for g in h["gpus"]:
            got = pci[(h["moref"], g["pci_id"])]
            segments.add(g["pci_id"].split(":")[0])
            assert got["numa_node"] == g["numa_node"]
            assert (got["vendor_id"], got["device_id"]) == (0x10DE, g["device_id"])
            assert got["fb_bytes"] in (None, g["memory_mib"] << 20)
    assert len(segments) > 1  # not only segment 0000


def test_steady_poll_reads_only_changes(estate: Vcsim, source: VCenterSource, store: Store) -> None:
    source.collect_inventory(store)
    full = source.last_inventory
    assert full is not None and full.full and full.skipped > 0  # non-GPU VMs not parsed
    res = source.collect_inventory(store)
    steady = source.last_inventory
    assert steady is not None and not steady.full
    assert not any(t.startswith("inv_") for t in res.rows)  # nothing changed: no snapshot
    assert steady.bytes * 100 < full.bytes

    # a GPU VM powered off through the API shows up in the next delta and a new snapshot
    gpu_vm = next(v for v in estate.manifest["vms"] if v["gpus"] and v["power_state"] == "poweredOn")
    admin = VCenterSession(vc_config(estate))
    admin.connect()
    try:
        from pyVmomi import vim

        vm = vim.VirtualMachine(gpu_vm["moref"], admin.stub)
        WaitForTask(vm.PowerOffVM_Task())
        deadline = time.monotonic() + 10  # pushed to the listener within the server's 250 ms tick
        while True:
            res = source.collect_inventory(store)
            if res.rows.get("inv_vm") or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert res.rows.get("inv_vm") and not source.last_inventory.full
        states = _rows(store, f"SELECT power_state FROM inv_vm WHERE vm_moref = '{gpu_vm['moref']}' "
                              "ORDER BY snapshot_ts DESC LIMIT 1")
        assert states[0]["power_state"] == "poweredOff"
        WaitForTask(vm.PowerOnVM_Task())
    finally:
        admin.close()


def test_vsphere8_fields(tmp_path: Any) -> None:
    """With a vSphere 8 API the device's virtual NUMA node (VirtualDevice.numaNode) is read."""
    with Vcsim.start(clusters=1, hosts_per_cluster=2, vms=20, seed=5, api_version="8.0.2.0") as sim:
        src = VCenterSource(vc_config(sim))
        store = Store(tmp_path / "d8")
        try:
            src.collect_inventory(store)
        finally:
            src.close()
        rows = _rows(store, "SELECT vm_moref, device_key, device_numa_node, migrate_supported, backing, "
                            "vgpu_fb_bytes, vgpu_migrate_data_bytes FROM inv_vm_gpu")
        want = {(v["moref"], g["device_key"]) for v in sim.manifest["vms"] for g in v["gpus"]}
        assert {(r["vm_moref"], r["device_key"]) for r in rows} == want
        assert all(r["device_numa_node"] is not None for r in rows)
        vg = [r for r in rows if r["backing"] == "vgpu"]
        assert vg and all(r["vgpu_migrate_data_bytes"] > r["vgpu_fb_bytes"] for r in vg)
        (vc,) = _rows(store, "SELECT api_version FROM inv_vcenter")
        assert vc["api_version"].startswith("8.")
