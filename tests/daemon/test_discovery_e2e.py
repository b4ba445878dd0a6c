"""Discovery end to end over loopback: vcsim with guest IPs on 127.x (``guest_ip_prefix``), a
real agent (simulated NVML, the agent's HTTP server) listening on each GPU VM's own guest IP at
the configured agent port, and the daemon with discovery on and no static targets: vCenter
inventory → agent URLs → scrape → join by the SMBIOS/BIOS UUID → GPU ↔ VM device."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from accelmon.collector.agent.agent import Agent
from accelmon.collector.agent.identity import VmIdentity, swap_uuid_bytes
from accelmon.collector.agent.server import AgentHTTPServer
from accelmon.config import parse
from accelmon.daemon.service import Daemon
from accelmon.demo.prometheus import free_port
from accelmon.sim.nvml import SimNVML
from accelmon.sim.spec import parse_spec
from accelmon.sim.vcsim import Vcsim
from accelmon.store import Store


@pytest.fixture(scope="module")
def loopback_vcsim() -> Iterator[Vcsim]:
    sim = Vcsim.start(vms=16, gpu_vm_ratio=0.5, seed=3, guest_ip_prefix="127.")
    yield sim
    sim.stop()


def _gpus(vm: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"model": "A100-SXM4-40GB", "mode": "vgpu", "vgpu_profile": "A100-4C", "trace": "idle_allocated"}
            if g["kind"] == "vgpu" else {"model": "A100-SXM4-40GB", "trace": "idle_allocated"} for g in vm["gpus"]]


def _agent(vm: dict[str, Any], port: int, seed: int) -> AgentHTTPServer:
    sim = SimNVML(parse_spec({"seed": seed, "gpu": _gpus(vm)}, "e2e"))
    u = vm["bios_uuid"]
    a = Agent(sim, clock=sim.clock, poll_interval=1.0, sysfs_root=None, backend="simulated",
              vm_identity=VmIdentity(vm["name"], u, swap_uuid_bytes(u), "simulated"))
    a.start()
    a.poll_once()
    srv = AgentHTTPServer(a, f"{vm['ip']}:{port}")
    srv.serve_in_thread()
    return srv


def test_discovery_scrape_and_bios_uuid_join_over_loopback(loopback_vcsim: Vcsim, tmp_path: Path) -> None:
    sim = loopback_vcsim
    gpu_vms = [v for v in sim.manifest["vms"] if v["gpus"] and v["power_state"] == "poweredOn" and v.get("ip")]
    assert len(gpu_vms) >= 3 and all(v["ip"].startswith("127.") for v in gpu_vms)
    served, silent = gpu_vms[:-1], gpu_vms[-1]  # the last GPU VM runs no agent
    port = free_port()
    servers = [_agent(v, port, seed=i + 1) for i, v in enumerate(served)]
    (tmp_path / "pw").write_text(sim.password)
    cfg = parse({
        "vcenter": [{"name": "vc-e2e", "url": sim.url, "user": sim.user, "password_file": str(tmp_path / "pw"),
                     "ca_bundle": str(sim.ca_file)}],
        "agents": {"discovery": True, "port": port, "timeout": "3s"},
        "report": {"enabled": False},
    }, "<test>", env={})
    d = Daemon(cfg, Store(tmp_path / "data"))
    try:
        d.prepare()
        assert d.run_once() == 1  # every poll ran; the VM without an agent failed alone
        snap = d.state.snapshot()
    finally:
        d.stop(grace_s=0.5, flush_s=5)
        for s in servers:
            s.shutdown()
            s.server_close()
    # discovery: one URL per powered-on GPU VM with a guest IP, at the configured port; nothing else
    want = {f"http://{v['ip']}:{port}/metrics" for v in gpu_vms}
    assert set(d._agent_runners) == want
    health = {h.target: h for h in snap.sources if h.kind == "agent"}
    silent_url = f"http://{silent['ip']}:{port}/metrics"
    assert health[silent_url].success is False and "cannot connect" in health[silent_url].last_error
    assert all(health[u].success for u in want - {silent_url})
    # the join: each agent to the VM whose BIOS UUID it reports, each GPU to one of that VM's devices
    for v in served:
        url = f"http://{v['ip']}:{port}/metrics"
        vm = snap.agent_joined[url]
        assert vm is not None and vm.vm_instance_uuid == v["instance_uuid"] and vm.vm_name == v["name"]
        gpus = [g["gpu_uuid"] for g in snap.agents[url].gpus]
        assert len(gpus) == len(v["gpus"])
        keys = {g["device_key"] for g in v["gpus"]}
        for g in gpus:
            j = snap.joins[g]
            assert j.vm is vm and j.device is not None and j.device["device_key"] in keys
            dev = next(x for x in v["gpus"] if x["device_key"] == j.device["device_key"])
            if dev["kind"] != "vgpu":
                assert j.device["host_pci_id"] == dev["host_pci_id"]
        assert {snap.joins[g].device["device_key"] for g in gpus} == keys  # each device used once
    rows = d.state.store.rows_written_total
    assert rows.get("agent_gpu", 0) == sum(len(v["gpus"]) for v in served)
