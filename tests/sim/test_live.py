"""Live changes on a running simulator: a vMotion now, seen through WaitForUpdatesEx, events
and an appended/rotated vmware.log; a paused or slow simulator."""

from __future__ import annotations

import socket
import time
import urllib.request

import pytest
from pyVim.connect import Disconnect, SmartConnect
from pyVmomi import vim, vmodl

from accelmon.sim.vcsim import Vcsim

PC = vmodl.query.PropertyCollector


def _connect(sim: Vcsim):
    return SmartConnect(host=sim.host, port=sim.port, user=sim.user, pwd=sim.password, sslContext=sim.ssl_context())


def _log(sim: Vcsim, si, vm_name: str, name: str) -> str:
    req = urllib.request.Request(sim.folder_url(vm_name, name), headers={"Cookie": si._stub.cookie})
    with urllib.request.urlopen(req, context=sim.ssl_context(), timeout=10) as r:
        return r.read().decode(errors="replace")


def _events(content, after_key: int) -> list:
    coll = content.eventManager.CreateCollectorForEvents(vim.event.EventFilterSpec(maxCount=1000))
    out = []
    while page := coll.ReadNextEvents(200):
        out += [e for e in page if e.key > after_key]
    coll.DestroyCollector()
    return sorted(out, key=lambda e: e.key)


def test_live_vmotion_is_visible_everywhere(vcsim_factory) -> None:
    sim = vcsim_factory(seed=3)
    mf = sim.manifest
    vm = next(v for v in mf["vms"] if v["power_state"] == "poweredOn" and v["gpus"]
              and all(g["kind"] == "vgpu" for g in v["gpus"]))
    last_key = max(k for m in mf["vmotions"] for k in m["event_keys"])
    si = _connect(sim)
    try:
        content = si.RetrieveContent()
        before = _log(sim, si, vm["name"], "vmware.log")
        view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
        pc = content.propertyCollector.CreatePropertyCollector()
        pc.CreateFilter(PC.FilterSpec(
            objectSet=[PC.ObjectSpec(obj=view, skip=True, selectSet=[
                PC.TraversalSpec(name="t", path="view", skip=False, type=vim.view.ContainerView)])],
            propSet=[PC.PropertySpec(type=vim.VirtualMachine, pathSet=["runtime.host"])]), True)
        opts = PC.WaitOptions(maxWaitSeconds=0)
        first = pc.WaitForUpdatesEx("", opts)
        assert sum(len(f.objectSet) for f in first.filterSet) == 60

        rec = sim.vmotion(vm["moref"], drs=True)

        assert rec["vm"] == vm["moref"] and rec["source_host"] == vm["host"] and rec["result"] == "success"
        delta = pc.WaitForUpdatesEx(first.version, PC.WaitOptions(maxWaitSeconds=5))
        changed = {o.obj._moId: o.changeSet for f in delta.filterSet for o in f.objectSet}
        assert list(changed) == [vm["moref"]]
        assert changed[vm["moref"]][0].val._moId == rec["dest_host"]
        # the manifest follows; the destination host's graphicsInfo lists the VM
        now = next(v for v in sim.manifest["vms"] if v["moref"] == vm["moref"])
        assert now["host"] == rec["dest_host"]
        dest = next(h for h in content.viewManager.CreateContainerView(
            content.rootFolder, [vim.HostSystem], True).view if h._moId == rec["dest_host"])
        assert any(vm["moref"] in [x._moId for x in g.vm] for g in dest.config.graphicsInfo)
        # new events, paired by chain, after everything seen before
        new = _events(content, last_key)
        chain = [e for e in new if e.chainId == rec["chain_id"]]
        assert [type(e).__name__ for e in chain] == [
            "vim.event.VmBeingHotMigratedEvent", "vim.event.VmEmigratingEvent", "vim.event.DrsVmMigratedEvent"]
        assert [e.key for e in chain] == rec["event_keys"]
        # vmware.log: the old one (plus the source side) was rotated, a fresh one holds the stun
        rotated = _log(sim, si, vm["name"], rec["source_log"])
        assert rec["source_log"].startswith("vmware-") and rotated.startswith(before)
        assert f"mid={rec['migration_id']:x}" in rotated[len(before):]
        fresh = _log(sim, si, vm["name"], "vmware.log")
        assert rec["dest_log"] == "vmware.log"
        assert f"Checkpoint_Unstun: vm stopped for {rec['stun_us']} us" in fresh

        # a failed attempt appends to the same vmware.log, no rotation, the VM stays
        rec2 = sim.vmotion(vm["moref"], fail=True)
        grown = _log(sim, si, vm["name"], "vmware.log")
        assert grown.startswith(fresh) and "maxSwitchoverTimeExceeded" in grown[len(fresh):]
        assert rec2["dest_log"] is None and rec2["source_host"] == rec["dest_host"]
        assert next(v for v in sim.manifest["vms"] if v["moref"] == vm["moref"])["host"] == rec["dest_host"]
    finally:
        Disconnect(si)


def test_live_vmotion_refuses_directpath_vm(vcsim_factory) -> None:
    sim = vcsim_factory(vms=20, clusters=1, hosts_per_cluster=2)
    pt = next(v for v in sim.manifest["vms"] if any(g["kind"] == "passthrough" for g in v["gpus"]))
    with pytest.raises(ValueError, match="DirectPath"):
        sim.vmotion(pt["moref"])


def test_pause_makes_it_unresponsive(vcsim_factory) -> None:
    sim = vcsim_factory(vms=4, clusters=1, hosts_per_cluster=1, tls=False)
    sim.pause()
    try:
        with socket.create_connection((sim.host, sim.port), timeout=2) as s:
            s.settimeout(1)
            s.sendall(b"GET /about HTTP/1.0\r\n\r\n")
            with pytest.raises(TimeoutError):
                s.recv(10)
    finally:
        sim.resume()
    with urllib.request.urlopen(f"http://{sim.host}:{sim.port}/about", timeout=5) as r:
        assert r.status == 200


def test_method_delay_slows_one_method(vcsim_factory) -> None:
    sim = vcsim_factory(vms=4, clusters=1, hosts_per_cluster=1, method_delay_ms={"CurrentTime": 700})
    si = _connect(sim)
    try:
        t = time.monotonic()
        si.CurrentTime()
        assert time.monotonic() - t >= 0.7
        t = time.monotonic()
        si.RetrieveContent()
        assert time.monotonic() - t < 0.5
    finally:
        Disconnect(si)
