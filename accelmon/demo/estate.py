"""From the seeded vCenter simulator's manifest to the simulated GPU agents of the demo.

Each powered-on GPU VM of the estate gets one simulated agent whose SMBIOS UUID is the VM's
BIOS UUID (so the daemon joins it to the VM exactly as it would a real guest), one simulated
GPU per VM GPU device (model from the host, passthrough or vGPU profile from the device), and
a utilization trace picked from the VM's workload:

=============  ===========================================================
workload       trace
=============  ===========================================================
training       ``busy_training``: 90-100 % with checkpoint dips
inference      ``bursty_inference`` (bursts in most windows): request bursts, busier by day,
               mean ≈ 24 %
light          a notebook: two or three short sessions a day, idle (often
               with the kernel still holding memory) the rest; a one-day CSV
               trace in the ``import-trace`` format, looped
serving        a low-traffic model endpoint: the model (7.5 GiB) stays loaded,
               a request now and then keeps the GPU busy for one 10-second
               step in a minute at most (more by day); a one-day CSV trace at
               10 s steps, looped: mean ≈ 5 %, p95 ≈ 17 % - a consolidation
               candidate
batch          ``busy_training`` (a batch job)
idle           ``idle_allocated``: memory held, no kernels (the waste)
=============  ===========================================================

Plus one agent on a machine vCenter does not know (a lab workstation): the daemon stores
and shows it, flagged unjoined.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# vcsim host GPU model -> simulated NVML model key (accelmon.sim.spec.MODELS)
_MODELS = {"A100": "A100-SXM4-40GB", "H100": "H100", "L4": "L4", "T4": "T4"}

UNJOINED_BIOS_UUID = "4c4c4544-0042-3510-8052-b7c04f4e3232"  # a Dell-style SMBIOS UUID, not in vCenter
UNJOINED_HOSTNAME = "ws-lab-07"


NOTEBOOK = "notebook"  # placeholder trace for the light workload, replaced by a CSV in write_specs
SERVING = "serving"  # placeholder trace for the serving workload, replaced by a CSV in write_specs
SERVING_FB_BYTES = int(7.5 * 2**30)  # a small model, loaded all the time


def _trace(workload: str) -> Any:
    if workload == "training" or workload == "batch":
        return "busy_training"
    if workload == "inference":
        # a production endpoint: bursts in most 10 s windows, busier by day; a week's mean near 24 %,
        # well clear of the 15 % threshold so the verdict never depends on when the demo starts
        return {"generator": "bursty_inference", "base_busy": 0.5, "day_busy": 0.4}
    if workload == "light":
        return NOTEBOOK
    if workload == "serving":
        return SERVING
    return "idle_allocated"


def write_notebook_csv(path: Path, seed: int, fb_bytes_held: int = 6 * 2**30) -> None:
    """One day of a data scientist's notebook at 1-minute steps: a few 30-75 minute sessions
    with bursty kernels; memory stays held for a while after each session (the kernel is left
    running), then freed."""
    rng = np.random.default_rng(seed)
    util = np.zeros(1440)
    held = np.zeros(1440, dtype=bool)
    for start in rng.choice(np.arange(8 * 60, 18 * 60), size=int(rng.integers(2, 4)), replace=False):
        length = int(rng.integers(30, 76))
        sl = slice(start, min(1440, start + length))
        active = rng.random(length)[: sl.stop - sl.start] < 0.6
        util[sl] = np.where(active, rng.integers(5, 70, sl.stop - sl.start), 0)
        held[sl.start: min(1440, sl.stop + int(rng.integers(60, 240)))] = True
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["timestamp", "gpu", "util_percent", "memory_used_bytes"])
        for minute in range(1440):
            w.writerow([minute * 60, "notebook", int(util[minute]), fb_bytes_held if held[minute] else 0])


def write_serving_csv(path: Path, seed: int, fb_bytes_held: int = SERVING_FB_BYTES) -> None:
    """One day of a low-traffic inference endpoint at 10-second steps (the agent's and the
    backfill's resolution): a request keeps the GPU busy for the first step of a minute, with a
    chance of 50 % by day (08-20 h) and 15 % at night; the model's memory stays held.

    Always the first step: any 60 s window then holds at most one request whatever its phase
    against the trace, so the busy-time p95 is one step (16.7 %) in every run. With requests at
    random steps, two could share a window often enough (about 6 % by day) to lift the p95 to
    two steps depending on when the demo started, and the plan changed from run to run."""
    rng = np.random.default_rng(seed)
    steps = 8640
    util = np.zeros(steps)
    for minute in range(1440):
        p = 0.5 if 8 * 60 <= minute < 20 * 60 else 0.15
        if rng.random() < p:
            util[minute * 6] = int(rng.integers(20, 80))
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["timestamp", "gpu", "util_percent", "memory_used_bytes"])
        for i in range(steps):
            w.writerow([i * 10, "serving", int(util[i]), fb_bytes_held])


def sim_model(host_gpu_model: str) -> str:
    for prefix, key in _MODELS.items():
        if host_gpu_model.upper().startswith(prefix):
            return key
    return "A100-SXM4-40GB"


def sim_vgpu_profile(profile: str) -> str:
    """vCenter's ``grid_a100-4-20c`` -> the guest-visible type name ``A100-4-20C``."""
    return profile.removeprefix("grid_").upper()


@dataclass
class AgentPlan:
    """One simulated agent: its VM identity and the simulation spec it runs."""

    name: str  # guest hostname (= VM name for joined agents)
    vm_bios_uuid: str
    workload: str
    gpus: list[dict[str, Any]]
    seed: int
    vm: dict[str, Any] | None = None  # the manifest's VM, None for the unjoined workstation
    numa: str = ""  # the manifest's NUMA status of the VM
    spec_path: Path | None = field(default=None, repr=False)

    def spec(self) -> dict[str, Any]:
        return {"vm_bios_uuid": self.vm_bios_uuid, "hostname": self.name, "seed": self.seed, "gpu": self.gpus}


def plan_agents(manifest: dict[str, Any]) -> list[AgentPlan]:
    hosts = {h["moref"]: h for h in manifest["hosts"]}
    plans: list[AgentPlan] = []
    for i, vm in enumerate(manifest["vms"]):
        if not vm.get("gpus") or vm.get("power_state") != "poweredOn":
            continue
        model = sim_model(hosts.get(vm["host"], {}).get("gpu_model", ""))
        seed = 100 + i
        gpus = []
        for g in vm["gpus"]:
            gpu: dict[str, Any] = {"model": model, "trace": _trace(vm.get("workload", "idle")), "numa_node": 0}
            if model == "H100" and "PCIE" in hosts.get(vm["host"], {}).get("gpu_model", "").upper():
                gpu["nvlink"] = 0  # a PCIe card without an NVLink bridge
            if g["kind"] == "vgpu":
                gpu["mode"] = "vgpu"
                gpu["vgpu_profile"] = sim_vgpu_profile(g.get("vgpu_profile") or "")
            else:  # passthrough and dynamic DirectPath: the guest sees the whole GPU
                gpu["mode"] = "passthrough"
            gpus.append(gpu)
        plans.append(AgentPlan(name=vm["name"], vm_bios_uuid=vm["bios_uuid"], workload=vm.get("workload", ""),
                               gpus=gpus, seed=seed, vm=vm, numa=vm.get("numa", {}).get("status", "")))
    plans.append(AgentPlan(
        name=UNJOINED_HOSTNAME, vm_bios_uuid=UNJOINED_BIOS_UUID, workload="inference", seed=99,
        # a lab workstation's occasional experiments: a week's mean near 6 %, clearly under the threshold
        gpus=[{"model": "L4", "mode": "passthrough", "numa_node": 0,
               "trace": {"generator": "bursty_inference", "base_busy": 0.05, "day_busy": 0.15}}],
    ))
    return plans


def write_specs(plans: list[AgentPlan], directory: Path) -> None:
    """One JSON simulation spec per agent (``accelmon agent --simulate <file>`` reads it too)."""
    directory.mkdir(parents=True, exist_ok=True)
    for p in plans:
        for i, g in enumerate(p.gpus):
            if g["trace"] == NOTEBOOK:
                trace_csv = directory / f"{p.name}-gpu{i}.csv"
                write_notebook_csv(trace_csv, p.seed * 10 + i)
                g["trace"] = f"csv:{trace_csv}#notebook"
            elif g["trace"] == SERVING:
                trace_csv = directory / f"{p.name}-gpu{i}.csv"
                write_serving_csv(trace_csv, p.seed * 10 + i)
                g["trace"] = f"csv:{trace_csv}#serving"
        p.spec_path = directory / f"{p.name}.json"
        p.spec_path.write_text(json.dumps(p.spec(), indent=1) + "\n")
