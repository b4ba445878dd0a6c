"""Regressions behind the demo's always-empty plan: NUMA capacity of multi-GPU VMs, what the
reason counts, why each underutilized GPU is (not) emptied, and the planner's inputs built
from the store (idle power, vGPU placement mode)."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from accelmon.analytics import estate, identity
from accelmon.analytics.consolidation import HostCap, PGpu, Tenant, plan
from accelmon.analytics.profiles import GIB, load
from accelmon.store.writer import Store
from tests.analytics.estate import VC, write_inventory

TABLE = load()


def _gpu(i: int, node: int, power: float | None = None) -> PGpu:
    return PGpu(f"h1/0000:{i:02x}:00.0", "h1", node, "a100-40", 40 * GIB, "sameSize", True, power)


def _t(vm: str, gpu: PGpu, prof: str | None, p95: float, under: bool | None = True, **kw) -> Tenant:
    return Tenant(vm=vm, vm_name=vm, device_key=13000 + kw.pop("k", 0), gpu_id=gpu.gpu_id,
                  kind="vgpu" if prof else "passthrough", profile=prof, p95_util_percent=p95,
                  underutilized=under, measured_gpu="GPU-" + vm, **kw)


def test_a_multi_gpu_vm_counts_its_vcpus_once_on_its_node() -> None:
    """A 2-GPU training VM with 32 vCPUs on node 0 leaves 32 of 64 cores: a light 16-vCPU VM
    fits next to it (it used to be counted twice, 64, and the node looked full)."""
    a, b, recv, donor = _gpu(1, 0), _gpu(2, 0), _gpu(3, 0), _gpu(4, 1, power=55.0)
    ts = [
        _t("train", a, None, 100, under=False, num_cpu=32, vm_gpu_count=2, k=0),
        _t("train", b, None, 100, under=False, num_cpu=32, vm_gpu_count=2, k=1),
        _t("light-1", recv, "10c", 15, num_cpu=8),
        _t("light-2", donor, "10c", 10, num_cpu=16),  # the lighter GPU is emptied first
    ]
    p = plan([a, b, recv, donor], ts, [HostCap("h1", 1 << 40, {0: 64, 1: 64})], TABLE)
    assert [(m.vm, m.to_gpu, m.to_numa_node) for m in p.moves] == [("light-2", recv.gpu_id, 0)]
    assert p.freed_gpus == [donor.gpu_id] and p.freed_capacity["gpus"] == 1
    assert p.watts_saved == 0.0  # h1 stays on (the training VM): the freed GPU is capacity, not watts
    # a node that really is too full still refuses it (32 + 8 + 16 > 48); the other way round fits
    p = plan([a, b, recv, donor], ts, [HostCap("h1", 1 << 40, {0: 48, 1: 64})], TABLE)
    assert [(m.vm, m.to_gpu, m.to_numa_node) for m in p.moves] == [("light-1", donor.gpu_id, 1)]
    c = next(c for c in p.candidates if c["gpu"] == donor.gpu_id)
    assert c["blocked_by"] == "light-2"
    assert c["receivers_rejected"] == {"NUMA node has too few free cores": 1,
                                       "passthrough GPU (whole, never receives)": 2}


def test_reason_counts_workloads_gpus_and_movable_gpus() -> None:
    """The reason used to call the movable GPUs "underutilized GPU(s)" (2 where 11 were underutilized)."""
    shared, alone, pt = _gpu(1, 0), _gpu(2, 0), _gpu(3, 1)
    ts = [
        _t("idle-vgpu", shared, "20c", 0),
        _t("busy-vgpu", shared, "20c", 90, under=False),  # keeps its GPU from being emptied
        _t("light-vgpu", alone, "10c", 10),
        _t("idle-pt", pt, None, 0, fb_hwm_bytes=30 * GIB),  # needs 40C: fits nowhere
    ]
    p = plan([shared, alone, pt], ts, [HostCap("h1", 1 << 40, {0: 64, 1: 64})], TABLE)
    assert not p.moves
    assert p.reason.startswith("3 underutilized GPU workload(s) on 3 physical GPU(s); 2 of those GPUs host only "
                               "movable underutilized workloads, but no receiving GPU")
    by = {c["gpu"]: c for c in p.candidates}
    assert by[shared.gpu_id]["not_movable"] == ["shares the GPU with a workload that is not underutilized"]
    assert by[shared.gpu_id]["vms"] == ["busy-vgpu", "idle-vgpu"] and by[shared.gpu_id]["p95_sum"] == 90
    assert by[alone.gpu_id]["movable"] and by[alone.gpu_id]["outcome"] == "kept: no receiving GPU for light-vgpu"
    assert by[alone.gpu_id]["receivers_rejected"] == {"p95 sum over target": 1,
                                                      "passthrough GPU (whole, never receives)": 1}
    assert by[pt.gpu_id]["receivers_rejected"] == {
        "no C-series profile holding fb high-water mark + 10 % fits there": 1, "p95 sum over target": 1}
    assert p.to_dict()["candidates"] == p.candidates

    # once something moves, the reason keeps the counts and says what the moves free
    ts2 = [_t("light-a", shared, "10c", 10), _t("light-b", alone, "10c", 12)]
    p = plan([shared, alone], ts2, [HostCap("h1", 1 << 40, {0: 64})], TABLE)
    assert p.reason == ("2 underutilized GPU workload(s) on 2 physical GPU(s); 2 of those GPUs host only movable "
                        "underutilized workloads; 1 move(s) free 1 GPU(s) and 0 host(s)")
    assert sorted(c["outcome"] for c in p.candidates) == ["freed", "receives moved workloads"]


def test_no_underutilized_workload_says_so() -> None:
    a = _gpu(1, 0)
    p = plan([a], [_t("busy", a, "10c", 90, under=False)], [HostCap("h1", 1 << 40, {0: 64})], TABLE)
    assert p.reason == "no underutilized GPU workload in the inventory" and p.candidates == []
    p = plan([a], [_t("multi", a, "10c", 1, vm_gpu_count=2)], [HostCap("h1", 1 << 40, {0: 64})], TABLE)
    assert p.reason.startswith("1 underutilized GPU workload(s) on 1 physical GPU(s); 0 of those GPUs")
    assert p.candidates[0]["not_movable"] == ["multi-GPU VM"]


def test_idle_power_is_measured_idle_power_only(tmp_path: Path) -> None:
    """A freed GPU saves its idle power. A GPU the agent never saw idle has no idle power: its mean
    power (a busy GPU's 300 W) used to stand in for it."""
    st = Store(tmp_path)
    vs = write_inventory(st)
    con = st.connect()
    by = {v.name: v for v in vs}
    busy, idle = by["busy-train"], by["train-idle-1"]
    gpus = pl.DataFrame({
        "gpu": [busy.gpu_uuids[0], idle.gpu_uuids[0]],
        "p95_util_percent": [100.0, 9.0], "mean_util_percent": [85.0, 3.0], "underutilized": [False, True],
        "fb_max_bytes": [20 * GIB, 5 * GIB], "idle_power_watts": [None, 41.5], "mean_power_watts": [300.0, 60.0],
    })
    gmap = pl.DataFrame({"gpu": gpus["gpu"], "vcenter_uuid": [VC, VC], "vm_moref": [busy.moref, idle.moref],
                         "device_key": [13000, 13000]}, schema_overrides={"device_key": pl.Int32})
    pgpus, tenants, caps = estate.build(con, gpus, gmap, TABLE)
    power = {g.gpu_id: g.idle_power_watts for g in pgpus}
    assert power["esx-b1.lab/0001:3b:00.0"] is None  # busy-train: never idle
    assert power["esx-a1.lab/0000:3b:00.0"] == 41.5  # train-idle-1
    assert {g.vgpu_mode for g in pgpus} == {"sameSize"}
    # capacity in physical cores: 64 cores / 2 nodes (inv_numa_node lists 64 logical CPUs per node,
    # which used to be taken as the node's capacity, doubling it on a hyperthreaded host)
    cap = {c.host: c for c in caps}["esx-a1.lab"]
    assert cap.node_cores == {0: 32, 1: 32}
    # host power: none stored here; no other powered-on GPU VM on a host outside the plan
    assert cap.power_watts is None and cap.other_vms == ()
    # the identity join gives the same mapping the analysis uses
    assert identity.gpu_vm_map(con).height == 0  # no agents written here: nothing joined


def test_vgpu_mode_from_the_host_column() -> None:
    assert estate.vgpu_mode(None) == "sameSize"
    assert estate.vgpu_mode("performance") == "sameSize"  # the assignment policy, not a size mode
    assert estate.vgpu_mode("multiInstanceGpu,sameSize") == "sameSize"
    assert estate.vgpu_mode("mixedSize") == "mixedSize"
    assert estate.vgpu_mode("multiInstanceGpu,mixedSize") == "mixedSize"
