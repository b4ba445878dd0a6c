"""A week of demo history, generated in accelerated simulated time.

The live demo agents only know the present. So the report has a week to analyse, this module
replays the same traces the agents run (same spec files, so the same GPU UUIDs, models and
workloads) over the past ``days`` and writes what an agent would have produced through the
store's normal append path: one ``gpu_sample`` row per GPU per minute (``source =
"simulation"``) with busy/idle millisecond counters integrated from six trace readings per
minute (busy = dt·v/100 per reading, NVML's definition), SM/tensor/DRAM activity counters for
GPUs with GPM (the simulated GPM's model), framebuffer, power and energy and PCIe counters (passthrough only: a vGPU guest has
none), plus the vCenter side: per-VM and per-host power at 5-minute intervals from a simple
model (a base load plus the GPUs' board power). It is a demo: the numbers come from the
simulation, not from any GPU, and the demo says so.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from accelmon.demo.estate import AgentPlan
from accelmon.sim.gpm import activity_at
from accelmon.sim.nvml import SimNVML
from accelmon.store.schema import TS
from accelmon.store.writer import Store

STEP_S = 60.0
POWER_STEP_S = 300
# six readings per minute, exactly 10 s apart (continuing into the next minute): whatever the
# phase between the trace's 10 s steps and this grid, every trace step is read exactly once.
# (Uneven offsets read some steps twice and skip others, so a workload's p95 - and the plan -
# changed with the moment the demo started.)
_OFFSETS = np.arange(6) * 10.0 + 4.7


@dataclass
class BackfillResult:
    gpus: int
    gpu_rows: int
    vm_power_rows: int
    host_power_rows: int
    start: float
    end: float


def _ts(seconds: np.ndarray) -> pa.Array:
    return pa.array(np.round(seconds * 1000).astype(np.int64), type=pa.int64()).cast(TS)


def _gpu_rows(gpu: Any, bios_uuid: str, start: float, end: float,
              tick: Callable[[], None] | None = None) -> tuple[pa.Table, np.ndarray]:
    """Rows of one simulated GPU over [start, end) and its power (W) per minute."""
    n = int((end - start) // STEP_S)
    ends = start + STEP_S * (np.arange(n) + 1)
    trace = gpu.trace
    util = np.empty((n, len(_OFFSETS)))
    # SM active, occupancy, tensor, DRAM (percent) where the GPU has GPM (Hopper+, not a vGPU guest):
    # the simulated GPM's own model (accelmon.sim.gpm.activity_at), read at the same instants
    gpm = gpu.spec.gpm_supported and gpu.mode != "vgpu"
    act = np.empty((n, len(_OFFSETS), 4)) if gpm else None
    day = int(86400 // STEP_S)
    for i in range(n):
        t0 = ends[i] - STEP_S
        if act is not None:
            for j, o in enumerate(_OFFSETS):
                u, *a = activity_at(trace, t0 + o)
                util[i, j] = u
                act[i, j] = a
        else:
            util[i] = [trace.util(t0 + o) for o in _OFFSETS]
        if tick is not None and (i + 1) % day == 0:
            tick()
    # NVML: a reading v is the share of its period in which a kernel ran, so busy = dt·v/100
    # (docs/agent.md); each reading stands for 10 s of the minute
    util_mean = util.mean(axis=1)
    busy_frac = util_mean / 100.0
    fb_total = int(gpu.fb_bytes)
    fb_used = np.empty(n, dtype=np.int64)
    for i in range(n):
        b = trace.mem_bytes(ends[i])
        fb_used[i] = min(fb_total, int(b) if b is not None else int(trace.mem_fraction(ends[i]) * fb_total))
    busy_ms = np.cumsum(np.round(busy_frac * STEP_S * 1000)).astype(np.int64)
    idle_ms = np.cumsum(np.round((1 - busy_frac) * STEP_S * 1000)).astype(np.int64)
    m = gpu.model
    power_w = m.idle_w + (m.max_w - m.idle_w) * np.power(util_mean / 100.0, 0.9)
    cols: dict[str, Any] = {
        "ts": _ts(ends),
        "gpu_uuid": pa.array([gpu.uuid] * n, pa.string()),
        "source": pa.array(["simulation"] * n, pa.string()),
        "vm_bios_uuid": pa.array([bios_uuid] * n, pa.string()),
        "util_percent": pa.array(util_mean.astype(np.float32)),
        "mem_util_percent": pa.array((util_mean * 0.55).astype(np.float32)),
        "busy_ms_total": pa.array(busy_ms),
        "idle_ms_total": pa.array(idle_ms),
        "fb_used_bytes": pa.array(fb_used),
        "fb_total_bytes": pa.array(np.full(n, fb_total, dtype=np.int64)),
    }
    if act is not None:  # the agent's GPM counters: Σ dt·fraction, ms (and occupancy as a gauge)
        means = act.mean(axis=1) / 100.0
        for k, col in ((0, "sm_active_ms_total"), (2, "tensor_active_ms_total"), (3, "dram_active_ms_total")):
            cols[col] = pa.array(np.cumsum(np.round(means[:, k] * STEP_S * 1000)).astype(np.int64))
        cols["sm_occupancy_percent"] = pa.array((means[:, 1] * 100.0).astype(np.float32))
    if gpu.mode != "vgpu":  # a vGPU guest reads no power, energy or PCIe counters
        moved = util_mean / 100.0 * m.pcie_bytes_per_s * STEP_S
        cols["pcie_tx_bytes_total"] = pa.array(np.cumsum(moved * 0.4).astype(np.int64))
        cols["pcie_rx_bytes_total"] = pa.array(np.cumsum(moved).astype(np.int64))
        cols["power_milliwatts"] = pa.array(np.round(power_w * 1000).astype(np.int32))
        cols["energy_millijoules_total"] = pa.array(np.cumsum(np.round(power_w * 1000 * STEP_S)).astype(np.int64))
    return pa.table(cols), power_w


def _per_interval(power_w: np.ndarray) -> np.ndarray:
    """Minute powers -> mean power per 5-minute interval."""
    k = int(POWER_STEP_S // STEP_S)
    n = len(power_w) // k
    return power_w[: n * k].reshape(n, k).mean(axis=1)


def backfill(store: Store, plans: list[AgentPlan], manifest: dict[str, Any], *, start: float, end: float,
             progress: Callable[[int, int], None] | None = None) -> BackfillResult:
    """Write simulated history for [start, end) (start aligned to 5 minutes)."""
    start = math.floor(start / POWER_STEP_S) * POWER_STEP_S
    days = max(1, int(round((end - start) / 86400)))
    sims = [(p, SimNVML(str(p.spec_path))) for p in plans]
    total = sum(len(s.gpus) for _, s in sims) * days
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    tables = []
    vm_gpu_power: dict[str, np.ndarray] = {}
    host_gpu_power: dict[str, np.ndarray] = {}
    for plan, sim in sims:
        for gpu in sim.gpus:
            t, power_w = _gpu_rows(gpu, plan.vm_bios_uuid, start, end, tick)
            tables.append(t)
            if plan.vm is None:
                continue
            p5 = _per_interval(power_w)
            vm_gpu_power[plan.vm["moref"]] = vm_gpu_power.get(plan.vm["moref"], 0) + p5
            host_gpu_power[plan.vm["host"]] = host_gpu_power.get(plan.vm["host"], 0) + p5
        sim.nvmlShutdown() if getattr(sim, "_refcount", 0) else None
    gpu_rows = sum(store.append("gpu_sample", t) for t in tables)

    vc = manifest["vcenter"]["instance_uuid"]
    n5 = int((end - start) // POWER_STEP_S)
    ends5 = start + POWER_STEP_S * (np.arange(n5) + 1)
    vm_rows = []
    for plan, _ in sims:
        vm = plan.vm
        if vm is None:
            continue
        gpu_w = vm_gpu_power.get(vm["moref"], np.zeros(n5))[:n5]
        watts = 30.0 + 1.2 * vm["num_cpu"] + gpu_w
        vm_rows.append(pa.table({
            "ts": _ts(ends5), "vcenter_uuid": [vc] * n5, "vm_moref": [vm["moref"]] * n5,
            "vm_instance_uuid": [vm["instance_uuid"]] * n5,
            "interval_seconds": pa.array(np.full(n5, POWER_STEP_S, dtype=np.int32)),
            "power_watts": watts, "energy_joules": watts * POWER_STEP_S,
        }))
    vm_power_rows = sum(store.append("vm_power_sample", t) for t in vm_rows)
    host_rows = []
    for h in manifest["hosts"]:
        watts = float(h.get("base_power_w") or 400.0) + host_gpu_power.get(h["moref"], np.zeros(n5))[:n5]
        watts = np.broadcast_to(watts, (n5,)).astype(float)
        host_rows.append(pa.table({
            "ts": _ts(ends5), "vcenter_uuid": [vc] * n5, "host_moref": [h["moref"]] * n5,
            "interval_seconds": pa.array(np.full(n5, POWER_STEP_S, dtype=np.int32)),
            "power_watts": watts, "energy_joules": watts * POWER_STEP_S,
        }))
    host_power_rows = sum(store.append("host_power_sample", t) for t in host_rows)
    return BackfillResult(gpus=sum(len(s.gpus) for _, s in sims), gpu_rows=gpu_rows, vm_power_rows=vm_power_rows,
                          host_power_rows=host_power_rows, start=start, end=end)
