"""Golden /metrics: the agent's and the exporter's full text for fixed simulated inputs, compared
exactly with tests/golden/*.txt, and each passed through ``promtool check metrics``.

Inputs are fixed: the agent polls the simulated NVML preset ``mixed`` (A100 with NVLink, H100 with
GPM, L4, T4 vGPU) on a hand-stepped clock, and what it measures of itself (poll durations, CPU,
memory, the poll's age at scrape time) is set to fixed values; the exporter renders a daemon
state built from fixed rows at a fixed time, without process or data-dir metrics. No wall clock,
no port in the text.

A deliberate change to /metrics: ``UPDATE_GOLDEN=1 python -m pytest tests/golden`` rewrites the
files; review the diff like code.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
from pathlib import Path
from typing import Any

import pytest

from accelmon import exposition
from accelmon.collector.agent.agent import Agent
from accelmon.collector.agent.identity import VmIdentity, swap_uuid_bytes
from accelmon.collector.agent.metrics import ProcessStats, make_registry, render, render_reference
from accelmon.config import ExporterConfig
from accelmon.daemon.state import DaemonState, Snapshot
from accelmon.demo.prometheus import check_metrics
from accelmon.exporter.server import MetricsApp
from accelmon.sim.clock import ManualClock
from accelmon.sim.nvml import SimNVML
from accelmon.sim.spec import load_spec
from accelmon.store.schema import table
from accelmon.store.writer import to_arrow

HERE = Path(__file__).parent
T0 = 1_764_547_200.0  # 2025-12-01T00:00:00Z
VM_UUID = "42023081-331b-58e1-2730-ca560789e551"


def _compare(name: str, text: bytes) -> None:
    path = HERE / name
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.write_bytes(text)
    want = path.read_bytes()
    assert text.decode() == want.decode(), f"{name} differs (UPDATE_GOLDEN=1 rewrites it after a deliberate change)"


# ---------------------------------------------------------------------------------------- agent
def agent_registry() -> Any:
    clock = ManualClock(T0)
    sim = SimNVML(load_spec("mixed"), clock=clock)
    agent = Agent(sim, clock=clock, sysfs_root=None, backend="simulated", poll_interval=1.0,
                  vm_identity=VmIdentity("golden-vm", VM_UUID, swap_uuid_bytes(VM_UUID), "simulated"))
    agent.start()
    for _ in range(5):
        clock.advance(1.0)
        agent.poll_once()
    snap = agent.snapshot
    assert snap is not None
    # what the agent measures of its own work: fixed (the only inputs not driven by the clock)
    agent.snapshot = dataclasses.replace(
        snap, mono=1000.0, poll_seconds=0.004, poll_cpu_seconds_total=0.02,
        gpus=tuple(dataclasses.replace(g, subs={k: (st, 0.0005) for k, (st, _s) in g.subs.items()})
                   for g in snap.gpus))
    return make_registry(agent, process=lambda: ProcessStats(1.25, 52_428_800.0), monotonic=lambda: 1002.5,
                         started=T0 - 60.0)


@pytest.fixture(scope="module")
def agent_text() -> bytes:
    return render(agent_registry())


def test_agent_metrics_golden(agent_text: bytes) -> None:
    _compare("agent_metrics.txt", agent_text)


def test_agent_metrics_are_what_prometheus_client_writes(agent_text: bytes) -> None:
    assert agent_text == render_reference(agent_registry())


def test_agent_metrics_pass_promtool(agent_text: bytes) -> None:
    rc, out = check_metrics(agent_text)
    assert rc == 0 and out.strip() == "", out


# ---------------------------------------------------------------------------------------- exporter
NOW = dt.datetime.fromtimestamp(T0, dt.UTC)
VC = "vc-uuid-1"


def _bios(i: int) -> str:
    return f"4201{i:04x}-0000-0000-0000-{i:012x}"


def _t(name: str, rows: list[dict[str, Any]]) -> Any:
    return to_arrow(table(name), rows)


class _FixedState(DaemonState):
    """The daemon state seen at a fixed time (staleness is judged against it, not the wall clock)."""

    def snapshot(self, now: float | None = None) -> Snapshot:
        return super().snapshot(T0 + 30.0 if now is None else now)


def exporter_state() -> DaemonState:
    st = _FixedState()
    st.started = T0 - 3600.0
    vms, devs = [], []
    for i in range(3):
        vms.append({"snapshot_ts": NOW, "vcenter_uuid": VC, "vm_moref": f"vm-{i}", "vm_instance_uuid": f"5000-{i}",
                    "vm_bios_uuid": _bios(i), "vm_name": f"gpu-vm-{i}", "host_moref": f"host-{i % 2}",
                    "cluster_name": "gpu-cluster", "power_state": "poweredOn", "guest_ips": [f"10.1.0.{i + 1}"]})
        devs.append({"snapshot_ts": NOW, "vcenter_uuid": VC, "vm_moref": f"vm-{i}", "device_key": 13000,
                     "backing": "passthrough", "host_pci_id": f"0000:3b:00.{i}", "host_numa_node": i % 2})
    st.apply({
        "inv_vcenter": _t("inv_vcenter", [{"snapshot_ts": NOW, "vcenter_uuid": VC, "url": "https://vc01.lab/sdk",
                                           "name": "vc01"}]),
        "inv_host": _t("inv_host", [{"snapshot_ts": NOW, "vcenter_uuid": VC, "host_moref": f"host-{h}",
                                     "host_name": f"esx{h}.lab", "cluster_moref": "domain-c1",
                                     "cluster_name": "gpu-cluster"} for h in range(2)]),
        "inv_vm": _t("inv_vm", vms),
        "inv_vm_gpu": _t("inv_vm_gpu", devs),
    })
    agents = [{"ts": NOW, "agent_url": f"http://10.1.0.{i + 1}:9835/metrics", "vm_bios_uuid": _bios(i),
               "hostname": f"guest{i}", "gpu_uuid": f"GPU-{i}", "gpu_index": 0, "pci_bus_id": "00000000:0b:00.0",
               "model_name": "NVIDIA A100-SXM4-40GB", "virtualization_mode": "passthrough"} for i in range(3)]
    agents.append({"ts": NOW, "agent_url": "http://10.9.9.9:9835/metrics", "vm_bios_uuid": _bios(999),
                   "hostname": "stray", "gpu_uuid": "GPU-stray", "model_name": "NVIDIA L4"})
    st.apply({"agent_gpu": _t("agent_gpu", agents)})
    samples = [{"ts": NOW, "gpu_uuid": g, "source": "agent", "vm_bios_uuid": b, "util_percent": 10.0 + 30 * k,
                "busy_ms_total": 360_000 * (k + 1), "idle_ms_total": 3_240_000 - 360_000 * k,
                "fb_used_bytes": (k + 1) << 30, "fb_total_bytes": 40 << 30, "power_milliwatts": 90_000 + 50_000 * k,
                "energy_millijoules_total": 400_000_000 * (k + 1)}
               for k, (g, b) in enumerate([("GPU-0", _bios(0)), ("GPU-1", _bios(1)), ("GPU-2", _bios(2)),
                                           ("GPU-stray", _bios(999))])]
    st.apply({"gpu_sample": _t("gpu_sample", samples)})
    st.apply({"nvlink_sample": _t("nvlink_sample", [
        {"ts": NOW, "gpu_uuid": "GPU-0", "link": k, "tx_bytes_total": 10 * k, "rx_bytes_total": 20 * k}
        for k in range(2)])})
    st.apply({"vm_power_sample": _t("vm_power_sample", [
        {"ts": NOW - dt.timedelta(seconds=20 * k), "vcenter_uuid": VC, "vm_moref": "vm-0",
         "vm_instance_uuid": "5000-0", "interval_seconds": 20, "power_watts": 300.0, "energy_joules": 6000.0}
        for k in range(3)])})
    st.apply({"host_power_sample": _t("host_power_sample", [
        {"ts": NOW, "vcenter_uuid": VC, "host_moref": "host-0", "interval_seconds": 20,
         "power_watts": 900.0, "energy_joules": 18000.0}])})
    st.apply({"vmotion": _t("vmotion", [
        {"ended_at": NOW, "vcenter_uuid": VC, "chain_id": 7, "vm_moref": "vm-1", "cluster_name": "gpu-cluster",
         "succeeded": True, "stun_seconds": 2.1, "vgpu_attached": True},
        {"ended_at": NOW, "vcenter_uuid": VC, "chain_id": 8, "vm_moref": "vm-1", "cluster_name": "gpu-cluster",
         "succeeded": False, "stun_seconds": None}])})
    agent = st.register_source("agent", "http://10.1.0.1:9835/metrics", 10)
    agent.success, agent.last_duration_s, agent.last_success_ts, agent.polls_total = True, 0.012, T0, 360
    vc = st.register_source("vcenter", "https://vc01.lab/sdk", 60)
    vc.success, vc.last_duration_s, vc.polls_total, vc.errors_total = False, 1.5, 60, 2
    vc.error_kind = "unavailable"
    return st


@pytest.fixture(scope="module")
def exporter_text() -> bytes:
    return MetricsApp(exporter_state(), ExporterConfig(), process_metrics=False).render()


def test_exporter_metrics_golden(exporter_text: bytes) -> None:
    _compare("exporter_metrics.txt", exporter_text)


def test_exporter_metrics_are_what_prometheus_client_writes(exporter_text: bytes) -> None:
    app = MetricsApp(exporter_state(), ExporterConfig(), process_metrics=False)
    with app.provider.scrape():
        assert exporter_text == exposition.reference(app.families())


def test_exporter_metrics_pass_promtool(exporter_text: bytes) -> None:
    rc, out = check_metrics(exporter_text)
    assert rc == 0 and out.strip() == "", out


def test_golden_inputs_are_deterministic() -> None:
    """Two independent builds of each input render the same text (nothing reads the wall clock)."""
    assert render(agent_registry()) == render(agent_registry())
    a = MetricsApp(exporter_state(), ExporterConfig(), process_metrics=False).render()
    assert a == MetricsApp(exporter_state(), ExporterConfig(), process_metrics=False).render()
