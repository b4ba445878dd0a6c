"""NUMA alignment judged from host-side evidence (analytics/numa.py, docs/analytics.md "NUMA").

Each test writes a one-host inventory into a real Store and reads the verdict back through the
DuckDB catalog, as ``accelmon report`` does."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from accelmon.analytics import findings
from accelmon.analytics.consolidation import Plan
from accelmon.analytics.numa import fmt_ids, numa_alignment, numa_misaligned, numa_unknown
from accelmon.analytics.window import Window
from accelmon.store.writer import Store
from tests.analytics.estate import GIB, SNAP, VC

HOST = "host-7"
GPU0, GPU1 = "0000:3b:00.0", "0000:86:00.0"  # on host node 0 and 1


def write_host(st: Store, *, nodes: int = 2, cores_per_node: int = 16, threads_per_core: int = 2,
               node_mem: int = 256 * GIB, gpu_nodes: dict[str, int | None] | None = None,
               numa_lists_pci: bool = True, host_pci: dict[str, int | None] | None = None) -> None:
    """A host with ``nodes`` NUMA nodes of ``cores_per_node`` physical cores (× threads) each."""
    gpu_nodes = {GPU0: 0, GPU1: 1} if gpu_nodes is None else gpu_nodes
    snap = {"snapshot_ts": SNAP, "vcenter_uuid": VC}
    lcpus = cores_per_node * threads_per_core
    st.append("inv_host", [{**snap, "host_moref": HOST, "host_name": "esx-7.lab", "cluster_name": "c",
                            "connection_state": "connected", "power_state": "poweredOn",
                            "cpu_cores": nodes * cores_per_node, "memory_bytes": nodes * node_mem,
                            "numa_node_count": nodes}])
    st.append("inv_numa_node", [
        {**snap, "host_moref": HOST, "node_id": n, "cpu_ids": list(range(n * lcpus, (n + 1) * lcpus)),
         "memory_bytes": node_mem,
         "pci_ids": [p for p, nn in gpu_nodes.items() if nn == n] if numa_lists_pci else []}
        for n in range(nodes)])
    st.append("inv_host_pci", [
        {**snap, "host_moref": HOST, "pci_id": p, "vendor_id": 0x10DE, "device_id": 0x20F1, "numa_node": n}
        for p, n in (gpu_nodes if host_pci is None else host_pci).items()])


def write_vm(st: Store, name: str, gpus: list[tuple[str | None, int | None, int | None]], *, num_cpu: int = 8,
             memory_bytes: int = 64 * GIB, affinity: str | None = None, cpu_affinity: list[int] | None = None,
             backing: str = "passthrough") -> str:
    """``gpus``: (host PCI id, inv_vm_gpu.host_numa_node, VirtualDevice.numaNode)."""
    moref = f"vm-{name}"
    snap = {"snapshot_ts": SNAP, "vcenter_uuid": VC}
    st.append("inv_vm", [{**snap, "vm_moref": moref, "vm_name": name, "host_moref": HOST, "cluster_name": "c",
                          "power_state": "poweredOn", "num_cpu": num_cpu, "cores_per_socket": num_cpu,
                          "memory_bytes": memory_bytes, "numa_node_affinity": affinity,
                          "cpu_affinity_set": cpu_affinity}])
    st.append("inv_vm_gpu", [{**snap, "vm_moref": moref, "device_key": 13000 + k, "backing": backing,
                              "host_pci_id": pci, "host_numa_node": hn, "device_numa_node": dn}
                             for k, (pci, hn, dn) in enumerate(gpus)])
    return moref


def verdicts(st: Store) -> dict[str, dict[str, Any]]:
    return {r["vm_name"]: r for r in numa_alignment(st.connect()).to_dicts()}


def test_device_numa_node_without_host_affinity_is_unknown_not_aligned(tmp_path):
    """VirtualDevice.numaNode is the node the *guest* sees; it says nothing about where the host runs the VM."""
    st = Store(tmp_path)
    write_host(st)
    write_vm(st, "guest-side-only", [(GPU1, 1, 0)])
    write_vm(st, "guest-side-matches", [(GPU1, 1, 1)])
    for r in verdicts(st).values():
        assert r["verdict"] == "unknown" and r["rule"] == "no_host_affinity"
        assert "no affinity set" in r["reason"] and "alignment unknown" in r["reason"]
        assert "vNUMA" in r["reason"]  # says why the device numaNode did not count
        assert r["fix"].startswith("set-numa-affinity: VM") and "-Name numa.nodeAffinity -Value 1" in r["fix"]
        assert r["basis"] == "gpu_host_node,no_affinity"


def test_affinity_to_the_gpu_host_node_is_aligned(tmp_path):
    st = Store(tmp_path)
    write_host(st)
    write_vm(st, "pinned", [(GPU1, 1, None)], affinity="1")
    (r,) = verdicts(st).values()
    assert (r["verdict"], r["rule"]) == ("aligned", "affinity_matches_gpu_node")
    assert r["reason"] == "host PCI node 1 of the GPU vs numa.nodeAffinity 1"
    assert r["fix"] is None and "numa.nodeAffinity" in r["basis"]


def test_affinity_excluding_the_gpu_node_is_misaligned(tmp_path):
    st = Store(tmp_path)
    write_host(st)
    write_vm(st, "wrong", [(GPU1, 1, 1)], affinity="0")  # a matching device numaNode changes nothing
    (r,) = verdicts(st).values()
    assert (r["verdict"], r["rule"]) == ("misaligned", "affinity_excludes_gpu_node")
    assert "host PCI node 1 of the GPU vs numa.nodeAffinity 0" in r["reason"]
    # the setting exists: the PowerCLI line changes it rather than creating a second one
    assert "Get-AdvancedSetting -Name numa.nodeAffinity | Set-AdvancedSetting -Value 1" in r["fix"]
    assert numa_misaligned(st.connect())["vm_name"].to_list() == ["wrong"]


def test_affinity_covering_both_nodes_is_unknown(tmp_path):
    st = Store(tmp_path)
    write_host(st)
    write_vm(st, "both", [(GPU0, 0, None)], affinity="0,1")
    (r,) = verdicts(st).values()
    assert (r["verdict"], r["rule"]) == ("unknown", "affinity_allows_other_nodes")


def test_cpu_affinity_on_the_other_nodes_cpus_is_misaligned(tmp_path):
    """config.cpuAffinity.affinitySet lists host logical CPUs; HostNumaNode.cpuID maps them to nodes."""
    st = Store(tmp_path)
    write_host(st)  # node 0: CPUs 0-31, node 1: CPUs 32-63
    write_vm(st, "cpu-pinned-away", [(GPU1, 1, None)], cpu_affinity=list(range(0, 8)))
    write_vm(st, "cpu-pinned-near", [(GPU1, 1, None)], cpu_affinity=list(range(32, 48)))
    write_vm(st, "cpu-pinned-near-node-away", [(GPU1, 1, None)], affinity="0", cpu_affinity=list(range(32, 48)))
    v = verdicts(st)
    away = v["cpu-pinned-away"]
    assert (away["verdict"], away["rule"]) == ("misaligned", "cpu_affinity_excludes_gpu_node")
    assert away["cpu_affinity_nodes"] == "0" and "CPU affinity 0-7 (host node 0)" in away["reason"]
    assert "clear its CPU scheduling affinity" in away["fix"]
    near = v["cpu-pinned-near"]
    assert (near["verdict"], near["rule"], near["basis"]) == (
        "aligned", "affinity_matches_gpu_node", "gpu_host_node,cpuAffinity,cores_per_node")
    assert v["cpu-pinned-near-node-away"]["verdict"] == "misaligned"  # either constraint excluding the GPU's node


def test_cpu_affinity_the_host_topology_cannot_place_is_unknown(tmp_path):
    st = Store(tmp_path)
    write_host(st)  # 64 logical CPUs
    write_vm(st, "cpu-pinned-nowhere", [(GPU1, 1, None)], cpu_affinity=[60, 61, 200])
    (r,) = verdicts(st).values()
    assert (r["verdict"], r["rule"], r["cpu_affinity_nodes"]) == ("unknown", "cpu_affinity_unmapped", None)


def test_wider_than_a_node_counts_physical_cores_not_threads(tmp_path):
    """2 nodes × 16 cores × 2 threads: 32 logical CPUs per node, but a 24-vCPU VM does not fit 16 cores."""
    st = Store(tmp_path)
    write_host(st, nodes=2, cores_per_node=16, threads_per_core=2)
    write_vm(st, "wide", [(GPU0, 0, None)], num_cpu=24, affinity="0")
    write_vm(st, "fits", [(GPU0, 0, None)], num_cpu=16, affinity="0")
    write_vm(st, "wide-memory", [(GPU0, 0, None)], num_cpu=8, memory_bytes=384 * GIB, affinity="0")
    v = verdicts(st)
    w = v["wide"]
    assert (w["verdict"], w["rule"]) == ("misaligned", "wider_than_node")
    assert w["cores_per_node"] == 16 and "24 vCPUs > 16 physical cores per node" in w["reason"]
    assert v["fits"]["verdict"] == "aligned" and v["fits"]["cores_per_node"] == 16
    assert (v["wide-memory"]["rule"], v["wide-memory"]["node_memory_bytes"]) == ("wider_than_node", 256 * GIB)


def test_wide_vm_with_vnuma_aligned_to_the_device_needs_host_affinity(tmp_path):
    st = Store(tmp_path)
    write_host(st)
    write_vm(st, "wide-vnuma-pinned", [(GPU0, 0, 0)], num_cpu=24, affinity="0,1")
    write_vm(st, "wide-vnuma-free", [(GPU0, 0, 0)], num_cpu=24)
    v = verdicts(st)
    assert (v["wide-vnuma-pinned"]["verdict"], v["wide-vnuma-pinned"]["rule"]) == ("aligned", "vnuma_aligned_to_device")
    assert v["wide-vnuma-free"]["verdict"] == "misaligned"  # device numaNode alone never aligns


def test_missing_host_pci_node_is_unknown(tmp_path):
    st = Store(tmp_path)
    write_host(st, gpu_nodes={GPU0: None}, numa_lists_pci=False)
    write_vm(st, "no-topology", [(GPU0, None, 0)], affinity="0")
    write_vm(st, "vgpu-off", [(None, None, None)], backing="vgpu")
    v = verdicts(st)
    for name in ("no-topology", "vgpu-off"):
        assert (v[name]["verdict"], v[name]["rule"]) == ("unknown", "gpu_host_node_unknown"), name
    assert "host PCI node of the GPU unknown" in v["no-topology"]["reason"]


def test_gpu_host_node_from_the_host_topology_when_the_device_row_lacks_it(tmp_path):
    """Evidence order: inv_vm_gpu.host_numa_node, then inv_host_pci.numa_node, then inv_numa_node.pci_ids."""
    st = Store(tmp_path)
    write_host(st, gpu_nodes={GPU1: 1})
    write_vm(st, "from-host-pci", [(GPU1.upper(), None, None)], affinity="1")
    (r,) = verdicts(st).values()
    assert (r["verdict"], r["gpu_nodes"], r["gpu_node_source"]) == ("aligned", "1", "inv_host_pci.numa_node")
    st2 = Store(tmp_path / "b")
    write_host(st2, gpu_nodes={GPU0: 0, GPU1: 1}, host_pci={GPU1: 1})  # GPU0 only in HostNumaNode.pciId
    write_vm(st2, "from-numa-node", [(GPU0, None, None)], affinity="0")
    (r2,) = verdicts(st2).values()
    assert (r2["verdict"], r2["gpu_node_source"]) == ("aligned", "inv_numa_node.pci_ids")


def test_gpus_on_two_nodes(tmp_path):
    st = Store(tmp_path)
    write_host(st)
    write_vm(st, "split", [(GPU0, 0, None), (GPU1, 1, None)], affinity="0,1")
    write_vm(st, "split-same-vnode", [(GPU0, 0, 0), (GPU1, 1, 0)], affinity="0,1")
    write_vm(st, "vnuma-aligned", [(GPU0, 0, 0), (GPU1, 1, 1)], affinity="0,1")
    write_vm(st, "vnuma-aligned-unpinned", [(GPU0, 0, 0), (GPU1, 1, 1)])
    v = verdicts(st)
    assert v["split"]["rule"] == v["split-same-vnode"]["rule"] == "gpus_split_across_nodes"
    assert v["split"]["verdict"] == "misaligned"
    assert (v["vnuma-aligned"]["verdict"], v["vnuma-aligned"]["rule"]) == ("aligned", "vnuma_aligned_to_devices")
    assert v["vnuma-aligned-unpinned"]["verdict"] == "unknown"


def test_single_node_host_is_aligned(tmp_path):
    st = Store(tmp_path)
    write_host(st, nodes=1, gpu_nodes={GPU0: 0})
    write_vm(st, "one-node", [(GPU0, 0, None)])
    (r,) = verdicts(st).values()
    assert (r["verdict"], r["rule"]) == ("aligned", "single_node_host")


def test_unparseable_affinity_is_unknown(tmp_path):
    st = Store(tmp_path)
    write_host(st)
    write_vm(st, "garbage", [(GPU0, 0, None)], affinity="node0")
    (r,) = verdicts(st).values()
    assert (r["verdict"], r["rule"]) == ("unknown", "affinity_unparseable") and "node0" in r["reason"]


def test_findings_carry_the_verdict_and_its_basis(tmp_path):
    st = Store(tmp_path)
    write_host(st)
    write_vm(st, "wrong", [(GPU1, 1, None)], affinity="0")
    write_vm(st, "unpinned", [(GPU1, 1, 1)])
    write_vm(st, "pinned", [(GPU1, 1, None)], affinity="1")
    con = st.connect()
    t = dt.datetime(2025, 1, 6, tzinfo=dt.UTC)
    out = findings.rows(run_id="r", generated_at=t, window=Window(t, t + dt.timedelta(days=1)),
                        gpus=_no_gpus(), numa=numa_misaligned(con), numa_unknown=numa_unknown(con),
                        vmotion_flagged=_no_gpus(), plan=Plan(), thresholds={"underutilized_percent": 10.0})
    by = {f["subject"]: f for f in out}
    assert set(by) == {"vm-wrong", "vm-unpinned"}  # an aligned VM is no finding
    assert by["vm-wrong"]["kind"] == "numa_misaligned" and by["vm-unpinned"]["kind"] == "numa_unknown"
    ev = json.loads(by["vm-unpinned"]["evidence_json"])
    assert (ev["verdict"], ev["rule"], ev["basis"], ev["device_numa_nodes"]) == (
        "unknown", "no_host_affinity", "gpu_host_node,no_affinity", "1")
    assert by["vm-wrong"]["reason"].startswith("wrong: host PCI node 1 of the GPU vs numa.nodeAffinity 0")
    st.append("findings", out)  # the rows fit the findings table


def _no_gpus() -> Any:
    import polars as pl
    return pl.DataFrame(schema={"status": pl.String})


@pytest.mark.parametrize(("ids", "text"), [([0], "0"), ([0, 1], "0,1"), ([0, 1, 2, 5], "0-2,5"), ([], "")])
def test_fmt_ids(ids, text):
    assert fmt_ids(ids) == text
