"""The seeded vcsim, read back over verified TLS with pyvmomi and compared with its manifest."""

from __future__ import annotations

import base64
import datetime as dt
import ssl
import urllib.error
import urllib.request
from collections import defaultdict
from typing import Any

import pytest
from pyVim.connect import Disconnect, SmartConnect
from pyVmomi import vim, vmodl

from accelmon.sim.vcsim import Vcsim

GPU_CLASS = 0x0302
NVIDIA = 0x10DE


@pytest.fixture(scope="module")
def si(vcsim: Vcsim):
    conn = SmartConnect(host=vcsim.host, port=vcsim.port, user=vcsim.user, pwd=vcsim.password,
                        sslContext=vcsim.ssl_context())
    yield conn
    Disconnect(conn)


@pytest.fixture(scope="module")
def content(si):
    return si.RetrieveContent()


def _view(content, kind) -> list[Any]:
    return list(content.viewManager.CreateContainerView(content.rootFolder, [kind], True).view)


def _by_name(content, kind) -> dict[str, Any]:
    return {o.name: o for o in _view(content, kind)}


def test_tls_login_with_ca_and_api_version(vcsim: Vcsim, content) -> None:
    assert vcsim.url.startswith("https://127.0.0.1:")
    assert content.about.apiVersion == "7.0.3.0"
    assert content.about.instanceUuid == vcsim.manifest["vcenter"]["instance_uuid"]
    # the certificate is not trusted without the CA file
    with pytest.raises(ssl.SSLError):
        SmartConnect(host=vcsim.host, port=vcsim.port, user=vcsim.user, pwd=vcsim.password,
                     sslContext=ssl.create_default_context())
    with pytest.raises(vim.fault.InvalidLogin):
        SmartConnect(host=vcsim.host, port=vcsim.port, user=vcsim.user, pwd="wrong",
                     sslContext=vcsim.ssl_context())


def test_hosts_numa_pci_and_graphics_match_manifest(vcsim: Vcsim, content) -> None:
    hosts = _by_name(content, vim.HostSystem)
    assert len(hosts) == 6
    segments = set()
    for mh in vcsim.manifest["hosts"]:
        h = hosts[mh["name"]]
        assert h._moId == mh["moref"]
        numa = h.hardware.numaInfo
        assert numa.numNodes == 2
        node_of = {pci: n.typeId for n in numa.numaNode for pci in n.pciId}
        gpus = {d.id: d for d in h.hardware.pciDevice if d.classId == GPU_CLASS and d.vendorId == NVIDIA}
        assert sorted(gpus) == sorted(g["pci_id"] for g in mh["gpus"])
        for g in mh["gpus"]:
            assert node_of[g["pci_id"]] == g["numa_node"]
            assert gpus[g["pci_id"]].deviceId & 0xFFFF == g["device_id"]
            segments.add(g["pci_id"][:4])
        graphics = {gi.pciId: gi for gi in h.config.graphicsInfo}
        for g in mh["gpus"]:
            gi = graphics[g["pci_id"]]
            assert sorted(v._moId for v in gi.vm) == sorted(g["vms"])
            assert gi.graphicsType == g["graphics_type"]
        passthru = {p.id: p for p in h.config.pciPassthruInfo}
        for g in mh["gpus"]:
            assert passthru[g["pci_id"]].passthruEnabled == (g["mode"] == "passthrough")
    assert len(segments) >= 3, segments  # not only segment 0000
    models = {mh["gpu_model"] for mh in vcsim.manifest["hosts"]}
    assert {"A100-SXM4-40GB", "H100-PCIe-80GB"} <= models


def _devices(vm) -> list[Any]:
    return [d for d in vm.config.hardware.device if isinstance(d, vim.vm.device.VirtualPCIPassthrough)]


def test_gpu_vms_match_manifest(vcsim: Vcsim, content) -> None:
    vms = _by_name(content, vim.VirtualMachine)
    gpu_vms = [v for v in vcsim.manifest["vms"] if v["gpus"]]
    assert len(gpu_vms) == 7
    kinds = defaultdict(int)
    backing_type = {
        "passthrough": vim.vm.device.VirtualPCIPassthrough.DeviceBackingInfo,
        "dynamic": vim.vm.device.VirtualPCIPassthrough.DynamicBackingInfo,
        "vgpu": vim.vm.device.VirtualPCIPassthrough.VmiopBackingInfo,
    }
    for mv in gpu_vms:
        vm = vms[mv["name"]]
        assert vm.config is not None, f"{mv['name']}: config dropped by pyvmomi"
        assert vm.config.uuid == mv["bios_uuid"] and vm.config.instanceUuid == mv["instance_uuid"]
        assert vm.runtime.host._moId == mv["host"]
        devs = _devices(vm)
        assert len(devs) == len(mv["gpus"])
        for d, g in zip(devs, mv["gpus"], strict=True):
            kinds[g["kind"]] += 1
            assert isinstance(d.backing, backing_type[g["kind"]])
            if g["kind"] == "passthrough":
                assert d.backing.id == g["host_pci_id"] and d.backing.vendorId == NVIDIA
            elif g["kind"] == "dynamic":
                assert d.backing.allowedDevice[0].vendorId == NVIDIA
                assert d.backing.assignedId == g["host_pci_id"]
            else:
                assert d.backing.vgpu == g["vgpu_profile"]
                assert d.backing.migrateSupported is True
        affinity = {o.key: o.value for o in vm.config.extraConfig}.get("numa.nodeAffinity")
        assert affinity == mv["numa_node_affinity"]
        if mv["power_state"] == "poweredOn":
            assert vm.guest.ipAddress == mv["ip"]
    assert kinds["passthrough"] and kinds["dynamic"] and kinds["vgpu"] >= 3
    profiles = {g["vgpu_profile"] for v in gpu_vms for g in v["gpus"] if g["kind"] == "vgpu"}
    assert {"grid_a100-40c", "grid_a100-4-20c", "grid_h100-20c"} <= profiles


def test_numa_misalignment_is_derivable_from_the_api(vcsim: Vcsim, content) -> None:
    """The manifest's verdicts agree with what a collector can compute from pyvmomi alone."""
    vms = _by_name(content, vim.VirtualMachine)
    hosts = {h._moId: h for h in _view(content, vim.HostSystem)}
    statuses = defaultdict(list)
    for mv in vcsim.manifest["vms"]:
        if not mv["gpus"] or mv["power_state"] != "poweredOn":
            continue
        vm = vms[mv["name"]]
        host = hosts[vm.runtime.host._moId]
        node_of = {pci: n.typeId for n in host.hardware.numaInfo.numaNode for pci in n.pciId}
        gpu_nodes = set()
        for d in _devices(vm):
            if isinstance(d.backing, vim.vm.device.VirtualPCIPassthrough.DeviceBackingInfo):
                gpu_nodes.add(node_of[d.backing.id])
            elif isinstance(d.backing, vim.vm.device.VirtualPCIPassthrough.DynamicBackingInfo):
                gpu_nodes.add(node_of[d.backing.assignedId])
            else:  # vGPU: the physical GPU is the graphicsInfo entry listing this VM
                gpu_nodes |= {node_of[g.pciId] for g in host.config.graphicsInfo if vm in g.vm}
        assert sorted(gpu_nodes) == mv["numa"]["gpu_nodes"]
        aff = {o.key: o.value for o in vm.config.extraConfig}.get("numa.nodeAffinity")
        cpu_nodes = {int(x) for x in aff.split(",")} if aff else None
        derived = ("unpinned" if cpu_nodes is None else "aligned" if cpu_nodes == gpu_nodes
                   else "misaligned" if not cpu_nodes & gpu_nodes else "partial")
        assert derived == mv["numa"]["status"], mv["name"]
        statuses[derived].append(mv["name"])
    assert statuses["misaligned"] and statuses["aligned"] and statuses["unpinned"]
    mis = next(v for v in vcsim.manifest["vms"] if v["name"] == statuses["misaligned"][0])
    assert "numa.nodeAffinity=" in mis["numa"]["reason"]


def _counter_ids(content) -> dict[str, int]:
    return {f"{c.groupInfo.key}.{c.nameInfo.key}.{c.rollupType}": c.key for c in content.perfManager.perfCounter}


def test_power_query_perf(vcsim: Vcsim, content) -> None:
    pm = content.perfManager
    ids = _counter_ids(content)
    power, energy = ids["power.power.average"], ids["power.energy.summation"]
    mvs = {v["name"]: v for v in vcsim.manifest["vms"]}
    vms = _by_name(content, vim.VirtualMachine)
    gpu_vm = vms[next(n for n, v in mvs.items() if v["workload"] == "training" and v["power_state"] == "poweredOn")]
    off_vm = vms[next(n for n, v in mvs.items() if v["power_state"] == "poweredOff")]
    host = gpu_vm.runtime.host
    metric = [vim.PerformanceManager.MetricId(counterId=c, instance="") for c in (power, energy)]
    now = dt.datetime.now(dt.UTC)
    specs = [vim.PerformanceManager.QuerySpec(entity=e, metricId=metric, intervalId=20,
                                              startTime=now - dt.timedelta(minutes=10))
             for e in (gpu_vm, host, off_vm)]
    res = {r.entity._moId: r for r in pm.QueryPerf(specs)}
    r = res[gpu_vm._moId]
    times = [s.timestamp for s in r.sampleInfo]
    assert 29 <= len(times) <= 30
    assert all(b - a == dt.timedelta(seconds=20) for a, b in zip(times, times[1:], strict=False))
    watts, joules = list(r.value[0].value), list(r.value[1].value)
    assert len(set(watts)) > 5 and min(watts) > 50  # time-varying, a busy GPU VM
    assert all(abs(j - 20 * w) <= 20 for w, j in zip(watts, joules, strict=True))
    hr = res[host._moId]
    assert [s.timestamp for s in hr.sampleInfo] == times
    assert min(hr.value[0].value) > max(watts)  # the host includes its VMs
    assert not res[off_vm._moId].sampleInfo  # powered off: no samples
    # same window again: identical (deterministic); maxSample keeps the latest samples only
    again = pm.QueryPerf(specs[:1])[0]
    assert list(again.value[0].value)[:25] == watts[:25]
    one = pm.QueryPerf([vim.PerformanceManager.QuerySpec(entity=gpu_vm, metricId=metric[:1], intervalId=20,
                                                         maxSample=1)])[0]
    assert len(one.sampleInfo) == 1 and one.sampleInfo[0].timestamp >= times[-1]
    # realtime keeps one hour: 180 samples at most; csv format works too
    old = pm.QueryPerf([vim.PerformanceManager.QuerySpec(entity=gpu_vm, metricId=metric, intervalId=20, format="csv",
                                                         startTime=now - dt.timedelta(hours=3))])[0]
    assert len(old.sampleInfoCSV.split(",")) == 2 * 180
    assert len(old.value[0].value.split(",")) == 180


def test_vmotion_events_paired_by_chain(vcsim: Vcsim, content) -> None:
    types_ = ["VmBeingHotMigratedEvent", "VmEmigratingEvent", "VmMigratedEvent", "DrsVmMigratedEvent",
              "VmFailedMigrateEvent"]
    # vcsim quirk: ReadNextEvents only reads the collector's latest page (maxCount, default 10)
    coll = content.eventManager.CreateCollectorForEvents(vim.event.EventFilterSpec(eventTypeId=types_, maxCount=1000))
    events = []
    while page := coll.ReadNextEvents(50):
        events += page
    coll.DestroyCollector()
    chains = defaultdict(list)
    for e in sorted(events, key=lambda e: e.key):
        chains[e.chainId].append(e)
    migs = vcsim.manifest["vmotions"]
    assert len(migs) >= 6 and len(chains) == len(migs)
    results = defaultdict(int)
    for m in migs:
        chain = chains[m["chain_id"]]
        assert [e.key for e in chain] == m["event_keys"]
        start, end = chain[0], chain[-1]
        assert isinstance(start, vim.event.VmBeingHotMigratedEvent)
        assert start.host.host._moId == m["source_host"] and start.destHost.host._moId == m["dest_host"]
        assert start.vm.vm._moId == m["vm"]
        assert start.createdTime < end.createdTime
        if m["result"] == "failed":
            assert isinstance(end, vim.event.VmFailedMigrateEvent)
            assert "maximum switchover time" in end.reason.msg
        elif m["initiator"] == "drs":
            assert isinstance(end, vim.event.DrsVmMigratedEvent)
            assert end.computeResource.name and end.datacenter.name
            task = next(t for t in content.taskManager.recentTask if t._moId == m["drs_task"])
            assert task.info.descriptionId == "Drm.ExecuteVMotionLRO" and task.info.entity._moId == m["vm"]
            assert task.info.state == "success" and task.info.eventChainId == m["chain_id"]
        else:
            assert type(end) is vim.event.VmMigratedEvent
        if m["result"] == "success":
            assert end.sourceHost.host._moId == m["source_host"] and end.host.host._moId == m["dest_host"]
        results[(m["result"], m["initiator"], m["vgpu"])] += 1
    assert results[("failed", "user", True)] == 1
    assert results[("success", "drs", True)] and results[("success", "user", True)]
    assert results[("success", "drs", False)] or results[("success", "user", False)]
    keys = sorted(events, key=lambda e: e.key)
    assert all(a.createdTime <= b.createdTime for a, b in zip(keys, keys[1:], strict=False))


def _get(vcsim: Vcsim, url: str, cookie: str | None) -> bytes:
    req = urllib.request.Request(url, headers={"Cookie": cookie} if cookie else {})
    with urllib.request.urlopen(req, context=vcsim.ssl_context(), timeout=10) as r:
        return r.read()


def test_vmware_log_downloadable_with_stun_lines(vcsim: Vcsim, si) -> None:
    cookie = si._stub.cookie
    migs = vcsim.manifest["vmotions"]
    styles = set()
    for m in migs:
        files = {f["name"] for f in next(v for v in vcsim.manifest["vms"] if v["moref"] == m["vm"])["log_files"]}
        assert m["source_log"] in files
        log = _get(vcsim, vcsim.folder_url(m["vm_name"], m["dest_log"] or m["source_log"]), cookie).decode(
            errors="replace")
        assert f"Checkpoint_Unstun: vm stopped for {m['stun_us']} us" in log
        styles.add("old" if "| vmx| I125:" in log else "new")
        if m["result"] == "failed":
            assert "[msg.checkpoint.migration.maxSwitchoverTimeExceeded]" in log
        else:
            assert f"Migrate_Open: Restoring from <{m['source_ip']}> with migration id {m['migration_id']}" in log
            src = _get(vcsim, vcsim.folder_url(m["vm_name"], m["source_log"]), cookie).decode(errors="replace")
            assert f"mid={m['migration_id']:x}" in src
            assert "Migrate: VM starting stun, waiting 100 seconds for go/no-go message." in src
        if m["vgpu"] and m["result"] == "success":
            assert "vmiop_log: (0x0): Start restoring vGPU state" in log
    assert styles == {"old", "new"}
    # vGPU stun scales with the framebuffer (1 GB ~ 2 s, 8 GB ~ 12 s, 32 GB ~ 39 s)
    for m in migs:
        if m["vgpu"] and m["result"] == "success":
            expect = 12 + (m["fb_gib"] - 8) * 27 / 24 if m["fb_gib"] >= 8 else 2 + (m["fb_gib"] - 1) * 10 / 7
            assert abs(m["stun_us"] / 1e6 - expect) <= 0.1 * expect
    garbage = [f for v in vcsim.manifest["vms"] for f in v.get("log_files") or [] if f["garbage_lines"]]
    assert len(garbage) == 1
    with pytest.raises(urllib.error.HTTPError) as e:
        _get(vcsim, vcsim.folder_url("no-such-vm", "vmware.log"), cookie)
    assert e.value.code == 404


def test_folder_needs_a_session_or_basic_auth(vcsim: Vcsim, si) -> None:
    url = vcsim.folder_url(vcsim.manifest["vmotions"][0]["vm_name"])
    for cookie in (None, 'vmware_soap_session="not-a-session"'):
        with pytest.raises(urllib.error.HTTPError) as e:
            _get(vcsim, url, cookie)
        assert e.value.code == 401
    assert _get(vcsim, url, si._stub.cookie)
    token = base64.b64encode(f"{vcsim.user}:{vcsim.password}".encode()).decode()
    req = urllib.request.Request(url, headers={"Authorization": f"Basic {token}", "Range": "bytes=10-"})
    with urllib.request.urlopen(req, context=vcsim.ssl_context(), timeout=10) as r:
        assert r.status == 206  # ranged reads: fetch only the new bytes of a growing log


def test_property_collector_sees_dynamic_backing_vm(vcsim: Vcsim, si, content) -> None:
    """One RetrievePropertiesEx over a ContainerView returns config of every VM (none dropped)."""
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
    spec = vmodl.query.PropertyCollector.FilterSpec(
        objectSet=[vmodl.query.PropertyCollector.ObjectSpec(
            obj=view, skip=True, selectSet=[vmodl.query.PropertyCollector.TraversalSpec(
                name="v", path="view", skip=False, type=vim.view.ContainerView)])],
        propSet=[vmodl.query.PropertyCollector.PropertySpec(type=vim.VirtualMachine, pathSet=["name", "config.hardware.device"])])
    res = content.propertyCollector.RetrievePropertiesEx([spec], vmodl.query.PropertyCollector.RetrieveOptions())
    got = {}
    while True:
        for o in res.objects:
            props = {p.name: p.val for p in o.propSet}
            got[props["name"]] = props.get("config.hardware.device")
        if not res.token:
            break
        res = content.propertyCollector.ContinueRetrievePropertiesEx(res.token)
    assert len(got) == 60 and all(d is not None for d in got.values())
    dyn = [v["name"] for v in vcsim.manifest["vms"] if any(g["kind"] == "dynamic" for g in v["gpus"])]
    assert any(isinstance(d.backing, vim.vm.device.VirtualPCIPassthrough.DynamicBackingInfo) for d in got[dyn[0]])
