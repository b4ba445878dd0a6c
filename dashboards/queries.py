"""PromQL building blocks shared by the dashboards.

Template variables (all multi-value, "All" expands to the list of current values, so a
cluster or host selection narrows ``$vm`` and through it every GPU/VM series):

* ``$vcenter``  - ``vcenter`` label (GPU, VM and host series carry it)
* ``$cluster``, ``$host`` - from ``accelmon_vm_placement_info`` (host and cluster are not labels
  of sample series, so a vMotion never ends a series; they narrow ``$vm``)
* ``$team``, ``$owner`` - from ``accelmon_vm_placement_info`` (docs/owners.md); "All" is ``.*`` so
  VMs nobody owns (``""``) stay in; they narrow ``$vm``
* ``$vm``       - ``vm_name``
* ``$gpu``      - ``gpu_uuid``

GPUs whose agent matched no vCenter VM have ``vm_name=""`` and are left out of the filtered
panels; the health dashboard counts them (``accelmon_agent_joined == 0``).
"""

from __future__ import annotations

PLACEMENT = "accelmon_vm_placement_info"
GPU_SEL = 'vcenter=~"$vcenter", vm_name=~"$vm", gpu_uuid=~"$gpu"'
VM_SEL = 'vcenter=~"$vcenter", vm_name=~"$vm"'
HOST_SEL = 'vcenter=~"$vcenter", host=~"$host"'
CLUSTER_SEL = 'vcenter=~"$vcenter", cluster=~"$cluster"'
OWNER_SEL = 'team=~"$team", owner=~"$owner"'

# A GPU "holds" its framebuffer above this (drivers and CUDA contexts keep a little).
ALLOCATED_BYTES = 268435456  # 256 MiB


def m(name: str, sel: str = GPU_SEL) -> str:
    return f"{name}{{{sel}}}"


def busy_share(window: str, sel: str = GPU_SEL) -> str:
    """Per GPU, utilization over the window: the share of time one or more kernels ran (NVML's
    definition; the counters integrate busy = dt·v/100, idle = dt − busy per reading), from the
    busy/idle second counters - the analytics' definition of utilization. GPUs whose source has no counters
    (dcgm-exporter, nvidia_gpu_exporter) fall back to the mean utilization gauge."""
    busy = f"rate({m('accelmon_gpu_busy_seconds_total', sel)}[{window}])"
    idle = f"rate({m('accelmon_gpu_idle_seconds_total', sel)}[{window}])"
    gauge = f"avg_over_time({m('accelmon_gpu_utilization_ratio', sel)}[{window}])"
    return f"({busy} / ({busy} + {idle}) or {gauge})"


def allocated(sel: str = GPU_SEL) -> str:
    return f"{m('accelmon_gpu_fb_used_bytes', sel)} > {ALLOCATED_BYTES}"


# GPU states over the last 5 minutes (exclusive; they add up to the GPUs seen in the last hour).
STATE_WINDOW = "5m"


def state_busy() -> str:
    return f"count({busy_share(STATE_WINDOW)} > 0)"


def state_idle() -> str:
    return f"count(({busy_share(STATE_WINDOW)} == 0) unless on(gpu_uuid) ({allocated()}))"


def state_allocated_idle() -> str:
    return f"count(({busy_share(STATE_WINDOW)} == 0) and on(gpu_uuid) ({allocated()}))"


def state_down() -> str:
    """GPUs that reported in the last hour but have no fresh sample now (agent or GPU down:
    the daemon stops exporting a GPU's series when its samples go stale)."""
    seen = f"last_over_time({m('accelmon_gpu_last_sample_timestamp_seconds')}[1h])"
    return f"count({seen} unless on(gpu_uuid) accelmon_gpu_last_sample_timestamp_seconds)"


def zero_if_none(expr: str) -> str:
    """Counts of nothing are 0, not "no data"."""
    return f"{expr} or vector(0)"


def sm_active_share(window: str, sel: str = GPU_SEL) -> str:
    """Per GPU, effective utilization over the window: the share of covered time the SMs were active
    (docs/analytics.md, "Effective utilization"): agent data integrate SM-active = Σ dt·f (NVML GPM
    SM_UTIL), so rate(SM-active) ÷ (rate(busy) + rate(idle)); sources without counters (dcgm-exporter's
    DCGM_FI_PROF_SM_ACTIVE, stored as the SM-active gauge) fall back to the gauge's mean. GPUs that
    cannot report SM activity have no series: no value, never 0."""
    sm = f"rate({m('accelmon_gpu_sm_active_seconds_total', sel)}[{window}])"
    busy = f"rate({m('accelmon_gpu_busy_seconds_total', sel)}[{window}])"
    idle = f"rate({m('accelmon_gpu_idle_seconds_total', sel)}[{window}])"
    gauge = f"avg_over_time({m('accelmon_gpu_sm_active_ratio', sel)}[{window}])"
    return f"({sm} / ({busy} + {idle}) or {gauge})"
