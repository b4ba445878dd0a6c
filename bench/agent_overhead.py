"""What the guest agent costs on an 8-GPU VM, measured on the simulated NVML.

1. CPU per GPU per poll of the agent's NVML path (in process, 8 simulated A100s with 12
   NVLink links each, the clock stepped 1 s per poll so every poll reads fresh driver samples);
   again on 8 simulated H100s (18 links each) with GPM on: one GPM sample and one
   ``nvmlGpmMetricsGet`` per GPU per poll on top (``cpu_ms_per_gpu_poll_gpm``).
2. Baseline, same run and same simulated NVML: an nvidia-smi-style full query (nvmlInit, 35
   calls per GPU plus the PCIe/NVLink byte-counter fields, nvmlShutdown) - what nvidia-smi based exporters do on every scrape, minus the
   process start of nvidia-smi itself.
3. ``accelmon agent --simulate dgx-a100`` started as its own process (the CLI path a user
   runs): wall time of ``GET /metrics`` (median of 50) and the process's peak RSS.

The simulated NVML's own work is inside (1) and (2); a real driver spends its time in ioctls
instead.  Last line: ``cpu_ms_per_gpu_poll=<X> cpu_ms_per_gpu_poll_gpm=<G> scrape_ms=<S> rss_mb=<M>``
(targets X < 1, G < 1, S < 10, M < 60).
"""

from __future__ import annotations

import re
import statistics
import sys
import time
from pathlib import Path

import pynvml
import requests
from _agentproc import running_agent

from accelmon.collector.agent.agent import Agent
from accelmon.collector.agent.identity import VmIdentity
from accelmon.sim.clock import ManualClock
from accelmon.sim.nvml import SimNVML

GPUS = 8
POLLS = 300
REPO = Path(__file__).resolve().parents[1]


def agent_cpu_ms_per_gpu_poll(preset: str = "dgx-a100") -> tuple[float, float]:
    clock = ManualClock(time.time())
    sim = SimNVML(preset, clock=clock)
    agent = Agent(sim, clock=clock, sysfs_root=None, backend="simulated",
                  vm_identity=VmIdentity("bench", None, None, "unavailable"))
    agent.start()
    for _ in range(10):  # warm-up: probing, first samples
        clock.advance(1.0)
        agent.poll_once()
    cpu = wall = 0.0
    for _ in range(POLLS):
        clock.advance(1.0)
        c0, w0 = time.thread_time(), time.perf_counter()
        agent.poll_once()
        cpu += time.thread_time() - c0
        wall += time.perf_counter() - w0
    if preset == "h100x8":
        assert sim.calls["nvmlGpmMetricsGet"] >= POLLS * GPUS, "GPM was not polled"
    agent.close()
    return cpu / POLLS / GPUS * 1000, wall / POLLS / GPUS * 1000


def smi_style_query(nv: SimNVML) -> int:
    """Roughly what `nvidia-smi -q` / nvidia-smi --query-gpu=<everything> reads, per GPU."""
    calls = 0
    nv.nvmlInit()
    for i in range(nv.nvmlDeviceGetCount()):
        h = nv.nvmlDeviceGetHandleByIndex(i)
        queries = [
            (nv.nvmlDeviceGetName, ()), (nv.nvmlDeviceGetUUID, ()), (nv.nvmlDeviceGetSerial, ()),
            (nv.nvmlDeviceGetPciInfo, ()), (nv.nvmlDeviceGetMemoryInfo, ()), (nv.nvmlDeviceGetBAR1MemoryInfo, ()),
            (nv.nvmlDeviceGetUtilizationRates, ()), (nv.nvmlDeviceGetEncoderUtilization, ()),
            (nv.nvmlDeviceGetDecoderUtilization, ()), (nv.nvmlDeviceGetTemperature, (0,)),
            (nv.nvmlDeviceGetClockInfo, (0,)), (nv.nvmlDeviceGetClockInfo, (1,)), (nv.nvmlDeviceGetClockInfo, (2,)),
            (nv.nvmlDeviceGetMaxClockInfo, (0,)), (nv.nvmlDeviceGetMaxClockInfo, (1,)),
            (nv.nvmlDeviceGetMaxClockInfo, (2,)), (nv.nvmlDeviceGetPowerUsage, ()),
            (nv.nvmlDeviceGetPowerManagementLimit, ()), (nv.nvmlDeviceGetEnforcedPowerLimit, ()),
            (nv.nvmlDeviceGetTotalEnergyConsumption, ()), (nv.nvmlDeviceGetPerformanceState, ()),
            (nv.nvmlDeviceGetFanSpeed, ()), (nv.nvmlDeviceGetEccMode, ()), (nv.nvmlDeviceGetComputeMode, ()),
            (nv.nvmlDeviceGetPersistenceMode, ()), (nv.nvmlDeviceGetCurrPcieLinkGeneration, ()),
            (nv.nvmlDeviceGetCurrPcieLinkWidth, ()), (nv.nvmlDeviceGetPcieThroughput, (0,)),
            (nv.nvmlDeviceGetPcieThroughput, (1,)), (nv.nvmlDeviceGetComputeRunningProcesses, ()),
            (nv.nvmlDeviceGetVirtualizationMode, ()), (nv.nvmlDeviceGetMigMode, ()),
            (nv.nvmlDeviceGetCudaComputeCapability, ()), (nv.nvmlDeviceGetIndex, ()),
            (nv.nvmlDeviceGetMinorNumber, ()),
        ]
        for fn, args in queries:
            try:
                fn(h, *args)
            except pynvml.NVMLError:
                pass
            calls += 1
        # `nvidia-smi nvlink -gt d` and the PCIe byte counters: the same fields the agent reads
        fields = [nv.NVML_FI_DEV_PCIE_COUNT_TX_BYTES, nv.NVML_FI_DEV_PCIE_COUNT_RX_BYTES]
        for link in range(12):
            fields += [(nv.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX, link), (nv.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX, link)]
        for f in nv.nvmlDeviceGetFieldValues(h, fields):
            _ = (f.nvmlReturn, f.valueType, f.value.ullVal)
        calls += 1
    nv.nvmlShutdown()
    return calls


def baseline_cpu_ms_per_gpu() -> tuple[float, int]:
    clock = ManualClock(time.time())
    sim = SimNVML("dgx-a100", clock=clock)
    for _ in range(5):
        smi_style_query(sim)
    cpu = 0.0
    calls = 0
    for _ in range(POLLS):
        clock.advance(1.0)
        c0 = time.thread_time()
        calls = smi_style_query(sim)
        cpu += time.thread_time() - c0
    return cpu / POLLS / GPUS * 1000, calls // GPUS


def served_agent() -> tuple[float, float, float]:
    """(median scrape ms, p90 scrape ms, peak RSS MB) of `accelmon agent --simulate dgx-a100`."""
    with running_agent("dgx-a100", "/tmp/accelmon-bench-agent") as (p, url):
        s = requests.Session()
        time.sleep(2.5)  # a few polls
        for _ in range(5):
            s.get(url, timeout=5)
        times = []
        for _ in range(50):
            t0 = time.perf_counter()
            r = s.get(url, timeout=5)
            times.append((time.perf_counter() - t0) * 1000)
            assert r.status_code == 200 and "accelmon_gpu_busy_seconds_total" in r.text
            time.sleep(0.02)
        size = len(r.content)
        status = Path(f"/proc/{p.pid}/status").read_text()
        hwm = int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024
        print(f"# /metrics body: {size} bytes, {r.text.count(chr(10))} lines", file=sys.stderr)
        times.sort()
        return statistics.median(times), times[int(len(times) * 0.9)], hwm


def main() -> None:
    cpu_ms, wall_ms = agent_cpu_ms_per_gpu_poll()
    gpm_ms, gpm_wall_ms = agent_cpu_ms_per_gpu_poll("h100x8")
    base_ms, calls = baseline_cpu_ms_per_gpu()
    scrape_ms, scrape_p90, rss = served_agent()
    print(f"agent: {cpu_ms:.3f} ms CPU ({wall_ms:.3f} ms wall) per GPU per poll, {GPUS} GPUs, {POLLS} polls")
    print(f"agent with GPM (8 H100s): {gpm_ms:.3f} ms CPU ({gpm_wall_ms:.3f} ms wall) per GPU per poll")
    print(f"baseline nvidia-smi-style full query: {base_ms:.3f} ms CPU per GPU ({calls} NVML calls per GPU, "
          f"+ nvmlInit/nvmlShutdown; nvidia-smi's own process start not included); "
          f"agent/baseline = {cpu_ms / base_ms:.2f}")
    print(f"scrape: median {scrape_ms:.2f} ms, p90 {scrape_p90:.2f} ms; agent process peak RSS {rss:.1f} MB")
    print(f"baseline_cpu_ms_per_gpu_query={base_ms:.3f}")
    print(f"cpu_ms_per_gpu_poll={cpu_ms:.3f} cpu_ms_per_gpu_poll_gpm={gpm_ms:.3f} scrape_ms={scrape_ms:.2f} rss_mb={rss:.1f}")


if __name__ == "__main__":
    main()
