"""The agent's /metrics: a prometheus_client custom collector over the latest poll snapshot.

Metric names follow Prometheus conventions (base units, ``_total`` counters, ``promtool check
metrics`` clean); GPU series carry dcgm-exporter's label names ``gpu``, ``UUID``, ``pci_bus_id``,
``Hostname`` (MIG instances add ``GPU_I_ID``, ``GPU_I_PROFILE``) so existing dashboards can join
on them.  The one exception is dcgm's ``modelName``: promtool rejects camelCase label names, so
the model is ``model_name`` here (it is descriptive, not a join key).  A value
that is unsupported, or whose read failed in the last poll, is left out — never exported as 0.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client.core import Metric
from prometheus_client.registry import Collector, CollectorRegistry

from accelmon import __version__, exposition

if TYPE_CHECKING:
    from accelmon.collector.agent.agent import Agent

# snapshot value key -> (metric name without _total, type, help)
GPU_VALUES: tuple[tuple[str, str, str, str], ...] = (
    ("busy_seconds", "accelmon_gpu_busy_seconds", "counter",
     "Busy time: sum of dt*v/100 over the driver's utilization readings (v = percent of the sample period "
     "a kernel ran, nvmlDeviceGetSamples); rate(busy)/(rate(busy)+rate(idle)) = utilization."),
    ("idle_seconds", "accelmon_gpu_idle_seconds", "counter",
     "Idle time: sum of dt*(1-v/100) over the driver's utilization readings (a ring that ran dry is idle)."),
    ("unobserved_seconds", "accelmon_gpu_unobserved_seconds", "counter",
     "Time no driver sample covered (the sample ring wrapped between polls, or the GPU was down)."),
    ("utilization", "accelmon_gpu_utilization_ratio", "gauge",
     "GPU utilization 0-1: mean of the driver samples since the previous poll."),
    ("mem_utilization", "accelmon_gpu_memory_utilization_ratio", "gauge",
     "Memory-controller utilization 0-1 (nvmlDeviceGetUtilizationRates)."),
    ("fb_used_bytes", "accelmon_gpu_fb_used_bytes", "gauge", "Framebuffer memory in use."),
    ("fb_total_bytes", "accelmon_gpu_fb_total_bytes", "gauge", "Framebuffer memory size."),
    ("pcie_tx_bytes", "accelmon_gpu_pcie_tx_bytes", "counter",
     "PCIe bytes transmitted (NVML_FI_DEV_PCIE_COUNT_TX_BYTES; see pcie_source on accelmon_gpu_info)."),
    ("pcie_rx_bytes", "accelmon_gpu_pcie_rx_bytes", "counter", "PCIe bytes received (NVML_FI_DEV_PCIE_COUNT_RX_BYTES)."),
    ("power_watts", "accelmon_gpu_power_watts", "gauge", "Board power draw (nvmlDeviceGetPowerUsage)."),
    ("energy_joules", "accelmon_gpu_energy_joules", "counter",
     "Energy since the driver loaded (nvmlDeviceGetTotalEnergyConsumption); restarts at 0 on a driver reload."),
    ("energy_resets", "accelmon_gpu_energy_resets", "counter",
     "Times the driver's energy counter went backwards (driver reloads) since the agent started."),
    ("sm_active_seconds", "accelmon_gpu_sm_active_seconds", "counter",
     "SM-active time: sum of dt*f over NVML GPM SM_UTIL readings (f = fraction of SMs busy between two samples); "
     "rate(sm_active)/(rate(busy)+rate(idle)) = effective utilization. Absent where GPM is not supported."),
    ("tensor_active_seconds", "accelmon_gpu_tensor_active_seconds", "counter",
     "Tensor-active time: sum of dt*f over NVML GPM ANY_TENSOR_UTIL readings. Absent where GPM is not supported."),
    ("dram_active_seconds", "accelmon_gpu_dram_active_seconds", "counter",
     "DRAM-active time: sum of dt*f over NVML GPM DRAM_BW_UTIL readings (bandwidth used / peak). "
     "Absent where GPM is not supported."),
    ("sm_occupancy", "accelmon_gpu_sm_occupancy_ratio", "gauge",
     "SM occupancy 0-1 (active warps / theoretical maximum), NVML GPM SM_OCCUPANCY over the last poll interval."),
)


def _rss_bytes() -> float:
    try:
        with open("/proc/self/statm") as f:
            return float(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, IndexError):
        return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


@dataclass(frozen=True)
class ProcessStats:
    """The agent process' own CPU time and resident memory, read at scrape time."""

    cpu_seconds: float
    resident_bytes: float


def process_stats() -> ProcessStats:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ProcessStats(ru.ru_utime + ru.ru_stime, _rss_bytes())


class AgentCollector(Collector):
    """Reads ``agent.snapshot`` at scrape time; never calls NVML.

    ``process`` (the process' CPU and memory), ``monotonic`` (the poll age) and ``started`` are
    injectable so a test renders a fixed snapshot to fixed text (tests/golden)."""

    def __init__(
        self,
        agent: Agent,
        *,
        process: Callable[[], ProcessStats] = process_stats,
        monotonic: Callable[[], float] = time.monotonic,
        started: float | None = None,
    ) -> None:
        self.agent = agent
        self.process = process
        self.monotonic = monotonic
        self.started = time.time() if started is None else started

    def collect(self) -> Iterator[Metric]:
        agent = self.agent
        snap = agent.snapshot
        yield from self._agent_metrics()
        if snap is None:
            return
        up = Metric("accelmon_gpu_up", "1 if the GPU answered the last poll, 0 if it is down (lost, driver reload).",
                    "gauge")
        info = Metric("accelmon_gpu", "GPU identity and placement as this guest sees it; value 1.", "info")
        fams = {k: Metric(n, h, t) for k, n, t, h in GPU_VALUES}
        names = {k: n + ("_total" if t == "counter" else "") for k, n, t, _ in GPU_VALUES}
        nvl_tx = Metric("accelmon_gpu_nvlink_tx_bytes", "NVLink data bytes transmitted, per link "
                        "(NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX, KiB x 1024).", "counter")
        nvl_rx = Metric("accelmon_gpu_nvlink_rx_bytes", "NVLink data bytes received, per link.", "counter")
        p_mem = Metric("accelmon_gpu_process_fb_used_bytes", "Framebuffer memory used by a process (opt-in).", "gauge")
        p_sm = Metric("accelmon_gpu_process_sm_utilization_ratio", "SM utilization 0-1 of a process (opt-in).", "gauge")
        ok = Metric("accelmon_agent_collector_success",
                    "1 if the sub-collector's last read worked, 0 if it failed (its series are then left out).", "gauge")
        sup = Metric("accelmon_agent_collector_supported",
                     "1 if the sub-collector is supported on this GPU, 0 if it was found unsupported (never polled again).",
                     "gauge")
        dur = Metric("accelmon_agent_collector_duration_seconds", "Time the sub-collector's NVML calls took in the last poll.",
                     "gauge")
        labels_by_uuid: dict[str, dict[str, str]] = {}
        for g in snap.gpus:
            ident = g.identity
            lab = ident.labels
            labels_by_uuid[ident.uuid] = lab
            up.add_sample("accelmon_gpu_up", lab, 1.0 if g.up else 0.0)
            info.add_sample("accelmon_gpu_info", {
                **lab,
                "serial": ident.serial or "",
                "driver_version": snap.driver_version,
                "virtualization_mode": ident.virtualization_mode,
                "vgpu_profile": ident.vgpu_profile or "",
                "mig_mode": "" if ident.mig_mode is None else ("enabled" if ident.mig_mode else "disabled"),
                "numa_node": str(ident.numa_node),
                "parent_UUID": ident.parent_uuid or "",
                "util_source": g.util_source,
                "pcie_source": g.pcie_source,
                "activity_source": g.activity_source,
            }, 1.0)
            if not g.up:
                continue
            for k, v in g.values.items():
                fam = fams.get(k)
                if fam is not None:
                    fam.add_sample(names[k], lab, v)
            for link, (tx, rx) in sorted(g.nvlink.items()):
                ll = {**lab, "link": str(link)}
                nvl_tx.add_sample("accelmon_gpu_nvlink_tx_bytes_total", ll, tx)
                nvl_rx.add_sample("accelmon_gpu_nvlink_rx_bytes_total", ll, rx)
            for pid, pname, used, sm in g.processes:
                pl = {**lab, "pid": str(pid), "process_name": pname}
                if used is not None:
                    p_mem.add_sample("accelmon_gpu_process_fb_used_bytes", pl, float(used))
                if sm is not None:
                    p_sm.add_sample("accelmon_gpu_process_sm_utilization_ratio", pl, sm / 100.0)
            short = {"gpu": lab["gpu"], "UUID": lab["UUID"]}
            for name, (status, seconds) in g.subs.items():
                cl = {**short, "collector": name}
                sup.add_sample("accelmon_agent_collector_supported", cl, 0.0 if status == "unsupported" else 1.0)
                if status in ("ok", "failed", "no_permission"):
                    ok.add_sample("accelmon_agent_collector_success", cl, 1.0 if status == "ok" else 0.0)
                    dur.add_sample("accelmon_agent_collector_duration_seconds", cl, seconds)
        xid = Metric("accelmon_gpu_xid_errors", "Xid errors the driver reported, per Xid code (counter from 0).",
                     "counter")
        for uuid, counts in snap.xid.items():
            lab = labels_by_uuid.get(uuid)
            if lab is None:
                continue
            for code, n in sorted(counts.items()):
                xid.add_sample("accelmon_gpu_xid_errors_total", {**lab, "xid": str(code)}, float(n))
        for uuid, status in snap.xid_status.items():
            lab = labels_by_uuid.get(uuid)
            if lab is None or status == "unknown":
                continue
            cl = {"gpu": lab["gpu"], "UUID": uuid, "collector": "xid"}
            sup.add_sample("accelmon_agent_collector_supported", cl, 0.0 if status == "unsupported" else 1.0)
            if status != "unsupported":
                ok.add_sample("accelmon_agent_collector_success", cl, 1.0 if status == "ok" else 0.0)
        yield up
        yield info
        yield from fams.values()
        yield nvl_tx
        yield nvl_rx
        yield xid
        yield p_mem
        yield p_sm
        yield ok
        yield sup
        yield dur

    def _agent_metrics(self) -> Iterator[Metric]:
        agent = self.agent
        snap = agent.snapshot
        vm = agent.vm
        m = Metric("accelmon_agent", "The agent and the VM it runs in (SMBIOS UUID = vCenter VM config.uuid); value 1.",
                   "info")
        m.add_sample("accelmon_agent_info", {
            "version": __version__,
            "Hostname": vm.hostname,
            "vm_bios_uuid": vm.bios_uuid or "",
            "vm_bios_uuid_swapped": vm.bios_uuid_swapped or "",
            "vm_bios_uuid_source": vm.source,
            "driver_version": agent.driver_version,
            "nvml_version": agent.nvml_version,
            "backend": agent.backend,
        }, 1.0)
        yield m
        ps = self.process()
        m = Metric("accelmon_agent_cpu_seconds", "CPU time (user + system) the agent process used.", "counter")
        m.add_sample("accelmon_agent_cpu_seconds_total", {}, ps.cpu_seconds)
        yield m
        m = Metric("accelmon_agent_resident_memory_bytes", "Resident memory of the agent process.", "gauge")
        m.add_sample("accelmon_agent_resident_memory_bytes", {}, ps.resident_bytes)
        yield m
        m = Metric("accelmon_agent_start_time_seconds", "When the agent process started (Unix time).", "gauge")
        m.add_sample("accelmon_agent_start_time_seconds", {}, self.started)
        yield m
        if snap is None:
            return
        m = Metric("accelmon_agent_polls", "NVML polls done.", "counter")
        m.add_sample("accelmon_agent_polls_total", {}, float(snap.polls))
        yield m
        m = Metric("accelmon_agent_poll_cpu_seconds", "CPU time the poll thread spent polling NVML.", "counter")
        m.add_sample("accelmon_agent_poll_cpu_seconds_total", {}, snap.poll_cpu_seconds_total)
        yield m
        m = Metric("accelmon_agent_poll_duration_seconds", "Wall time of the last poll of all GPUs.", "gauge")
        m.add_sample("accelmon_agent_poll_duration_seconds", {}, snap.poll_seconds)
        yield m
        m = Metric("accelmon_agent_last_poll_timestamp_seconds", "Agent clock at the last poll (Unix time).", "gauge")
        m.add_sample("accelmon_agent_last_poll_timestamp_seconds", {}, snap.at)
        yield m
        m = Metric("accelmon_agent_poll_age_seconds",
                   "Seconds since the last poll, at scrape time (values were measured this long ago).", "gauge")
        m.add_sample("accelmon_agent_poll_age_seconds", {}, max(0.0, self.monotonic() - snap.mono))
        yield m


def make_registry(agent: Agent, **kw: Any) -> CollectorRegistry:
    """A registry with the agent's collector (``kw``: :class:`AgentCollector`'s injectables)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(AgentCollector(agent, **kw))
    return reg


def render(registry: CollectorRegistry) -> bytes:
    """The registry's text format 0.0.4, by accelmon's one writer (:mod:`accelmon.exposition`,
    shared with the daemon's exporter: the bytes ``prometheus_client.generate_latest`` writes)."""
    return exposition.render(registry.collect())


def render_reference(registry: CollectorRegistry) -> bytes:
    """prometheus_client's own renderer (tests compare :func:`render` with it)."""
    return exposition.reference(registry.collect())
