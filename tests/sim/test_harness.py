"""The vcsim harness itself: build errors, lifecycle, determinism, sizes, vSphere 8 fields."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pyVim.connect import Disconnect, SmartConnect
from pyVmomi import vim

from accelmon.errors import UserError
from accelmon.sim.vcsim import Vcsim, _build, build


def test_build_is_cached(vcsim: Vcsim) -> None:
    t = time.monotonic()
    path = build()
    assert path.is_file() and os.access(path, os.X_OK)
    assert time.monotonic() - t < 1.0
    assert path.parent.name == _build.source_hash()


def test_build_without_go_names_the_apt_packages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACCELMON_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))  # no `go` here
    with pytest.raises(UserError) as e:
        build()
    msg = str(e.value)
    assert "\n" not in msg and "golang-go" in msg and "golang-github-vmware-govmomi-dev" in msg


def test_build_without_govmomi_names_the_apt_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACCELMON_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("ACCELMON_GOPATH", str(tmp_path / "nowhere"))
    with pytest.raises(UserError) as e:
        build()
    assert "govmomi sources not found" in str(e.value) and "golang-github-vmware-govmomi-dev" in str(e.value)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_stop_kills_and_cleans_up(vcsim_factory) -> None:
    port = _free_port()
    sim = vcsim_factory(vms=12, clusters=1, hosts_per_cluster=2, port=port, tls=False)
    assert sim.url == f"http://127.0.0.1:{port}/sdk"
    datastores = list(sim.run_dir.glob("govcsim-*"))
    assert len(datastores) == 1 and any(datastores[0].iterdir())
    assert sim.rss_bytes() > 0
    sim.stop()
    assert not sim.alive and not sim.run_dir.exists()
    with pytest.raises(OSError):
        os.kill(sim.pid, 0)
    sim.stop()  # idempotent


def test_sigterm_removes_datastore_folders(vcsim_factory) -> None:
    """The Go program traps SIGTERM and removes its govcsim-* folders itself."""
    sim = vcsim_factory(vms=8, clusters=1, hosts_per_cluster=2)
    ds = next(sim.run_dir.glob("govcsim-*"))
    os.kill(sim.pid, signal.SIGTERM)
    sim._proc.wait(timeout=10)
    assert sim._proc.returncode == 0 and not ds.exists()


def test_simulator_dies_with_its_parent(tmp_path: Path) -> None:
    """A crashed test process leaves no simulator behind (PR_SET_PDEATHSIG)."""
    code = ("import sys; from accelmon.sim.vcsim import Vcsim; s = Vcsim.start(vms=4, clusters=1, "
            "hosts_per_cluster=1); print(s.pid, s.run_dir, flush=True); sys.stdin.read()")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True)
    pid_s, run_dir = p.stdout.readline().split()
    pid = int(pid_s)
    p.kill()
    p.wait()
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)
        pytest.fail("simulator outlived its parent")
    assert not Path(run_dir).exists()  # it removed its run dir too


def _stable(manifest: dict) -> list:
    return [(v["moref"], v["name"], v["host"], v["bios_uuid"], v["gpus"], v["numa"]) for v in manifest["vms"]]


def test_seed_is_deterministic(vcsim: Vcsim, vcsim_factory) -> None:
    same = vcsim_factory(seed=1)
    other = vcsim_factory(seed=2)
    assert _stable(same.manifest) == _stable(vcsim.manifest)
    assert [m["stun_us"] for m in same.manifest["vmotions"]] == [m["stun_us"] for m in vcsim.manifest["vmotions"]]
    assert _stable(other.manifest) != _stable(vcsim.manifest)
    assert other.manifest["vcenter"]["instance_uuid"] != vcsim.manifest["vcenter"]["instance_uuid"]


def test_sizes_and_gpu_ratio(vcsim_factory) -> None:
    sim = vcsim_factory(clusters=5, hosts_per_cluster=2, vms=400, gpu_vm_ratio=0.25, seed=7)
    s = sim.manifest["summary"]
    assert (s["clusters"], s["hosts"], s["vms"]) == (5, 10, 400)
    assert s["gpu_vms"] + s["gpu_vms_unplaced"] == 100 and s["gpu_vms_unplaced"] == 0
    assert {h["gpu_model"] for h in sim.manifest["hosts"]} == {
        "A100-SXM4-40GB", "H100-PCIe-80GB", "H100-SXM5-80GB", "A100-PCIe-80GB", "L40S"}
    modes = {g["vgpu_mode"] for h in sim.manifest["hosts"] for g in h["gpus"] if g["mode"] != "unassigned"}
    assert {"sameSize", "multiInstanceGpu", None} <= modes
    # vGPUs on one physical GPU never exceed its framebuffer (sameSize) or 7 MIG slices
    per_gpu: dict[str, list[dict]] = {}
    for v in sim.manifest["vms"]:
        for g in v["gpus"]:
            if g["host_pci_id"]:
                per_gpu.setdefault(f"{v['host']}/{g['host_pci_id']}", []).append(g)
    fb = {f"{h['moref']}/{g['pci_id']}": g["memory_mib"] // 1024 for h in sim.manifest["hosts"] for g in h["gpus"]}
    for key, devs in per_gpu.items():
        if devs[0]["kind"] == "vgpu":
            if devs[0]["mig_slices"]:
                assert sum(d["mig_slices"] for d in devs) <= 7
            else:
                assert len({d["vgpu_profile"] for d in devs}) == 1
                assert sum(d["fb_gib"] for d in devs) <= fb[key]
        else:
            assert len(devs) == 1


def test_api_8_adds_vsphere8_fields(vcsim_factory) -> None:
    sim = vcsim_factory(vms=20, clusters=1, hosts_per_cluster=2, api_version="8.0.3.0")
    si = SmartConnect(host=sim.host, port=sim.port, user=sim.user, pwd=sim.password, sslContext=sim.ssl_context())
    try:
        content = si.RetrieveContent()
        assert content.about.apiVersion == "8.0.3.0"
        view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
        seen = 0
        for vm in view.view:
            for d in vm.config.hardware.device:
                if isinstance(d, vim.vm.device.VirtualPCIPassthrough):
                    assert d.numaNode == 0
                    if isinstance(d.backing, vim.vm.device.VirtualPCIPassthrough.VmiopBackingInfo):
                        assert d.backing.vgpuMigrateDataSizeMB > 1024
                        seen += 1
        assert seen >= 1
    finally:
        Disconnect(si)


def test_standalone_entry_prints_url(tmp_path: Path) -> None:
    conn = tmp_path / "conn.json"
    p = subprocess.Popen([sys.executable, "-m", "accelmon.sim.vcsim", "--vms", "10", "--clusters", "1",
                          "--connection-file", str(conn)], stdout=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline()
        assert line.startswith("url=https://127.0.0.1:") and "vms=10" in line
        assert "password" not in line
        assert conn.stat().st_mode & 0o777 == 0o600
    finally:
        p.send_signal(signal.SIGINT)
        assert p.wait(timeout=20) == 0


def test_counter_key_offset(vcsim_factory) -> None:
    """Counter keys differ between installs: with an offset, lookups by name still work."""
    sim = vcsim_factory(vms=10, clusters=1, hosts_per_cluster=1, counter_key_offset=1000)
    assert sim.manifest["counters"]["power.power.average"]["key"] == 1157
    si = SmartConnect(host=sim.host, port=sim.port, user=sim.user, pwd=sim.password, sslContext=sim.ssl_context())
    try:
        pm = si.RetrieveContent().perfManager
        by_name = {f"{c.groupInfo.key}.{c.nameInfo.key}.{c.rollupType}": c.key for c in pm.perfCounter}
        power = by_name["power.power.average"]
        assert power == 1157
        assert pm.QueryPerfCounter([power])[0].nameInfo.key == "power"
        host = si.RetrieveContent().viewManager.CreateContainerView(
            si.RetrieveContent().rootFolder, [vim.HostSystem], True).view[0]
        assert power in {m.counterId for m in pm.QueryAvailablePerfMetric(host, intervalId=20)}
        res = pm.QueryPerf([vim.PerformanceManager.QuerySpec(
            entity=host, metricId=[vim.PerformanceManager.MetricId(counterId=power, instance="")], maxSample=3)])
        assert res[0].value[0].id.counterId == power and min(res[0].value[0].value) > 300
    finally:
        Disconnect(si)


def test_fifteen_gpu_vms_add_the_consolidation_scenario(vcsim: Vcsim, vcsim_factory) -> None:
    """From 15 GPU VMs on (the demo's estate) the seeding adds low-traffic endpoints spread one per
    time-sliced GPU and on whole passthrough GPUs; the first seven scripted VMs stay as they are."""
    sim = vcsim_factory(gpu_vm_ratio=0.25)
    gpu_vms = [v for v in sim.manifest["vms"] if v["gpus"]]
    assert len(gpu_vms) == 15
    small = [v for v in vcsim.manifest["vms"] if v["gpus"]]

    def shape(v: dict) -> tuple:
        return (v["name"].split("-")[1], v["power_state"], v["workload"], v["numa"]["status"],
                [(g["kind"], g["vgpu_profile"]) for g in v["gpus"]])

    assert [shape(v) for v in gpu_vms[:7]] == [shape(v) for v in small]
    on_gpu: dict[str, list[str]] = {}
    for v in gpu_vms:
        for g in v["gpus"]:
            if g["host_pci_id"]:
                on_gpu.setdefault(f"{v['host']}/{g['host_pci_id']}", []).append(v["name"])
    serve = [v for v in gpu_vms if v["workload"] == "serving"]
    assert [v["name"].split("-")[1] for v in serve] == ["serve"] * 6
    assert sorted(g["vgpu_profile"] or g["kind"] for v in serve for g in v["gpus"]) == [
        "grid_a100-10c", "grid_a100-10c", "grid_h100-20c", "grid_h100-20c", "passthrough", "passthrough"]
    for v in serve:  # each alone on its physical GPU
        (g,) = v["gpus"]
        assert on_gpu[f"{v['host']}/{g['host_pci_id']}"] == [v["name"]]
        assert v["num_cpu"] == (16 if g["kind"] == "passthrough" else 8)
    ten_c = [v for v in gpu_vms if any(g["vgpu_profile"] == "grid_a100-10c" for g in v["gpus"])]
    assert sorted(v["workload"] for v in ten_c) == ["idle", "inference", "serving", "serving"]
    assert all(len(on_gpu[f"{v['host']}/{v['gpus'][0]['host_pci_id']}"]) == 1 for v in ten_c)
