"""SM / tensor / DRAM activity from NVML GPU Performance Monitoring (GPM, Hopper and newer).

Definition (/work/shared/ARCHITECTURE.md "Effective utilization", docs/agent.md): NVML's
utilization only says that *some* kernel ran; GPM says how much of the GPU it kept busy.
``nvmlGpmMetricsGet`` "Calculate[s] GPM metrics from two samples" (NVML API reference, GPM
Functions); ``NVML_GPM_METRIC_SM_UTIL`` is the "Percentage of SMs that were busy" over the
interval between the two samples (Δ SM-active cycles / Δ elapsed cycles), likewise
``ANY_TENSOR_UTIL`` (time the SMs did any tensor operation), ``DRAM_BW_UTIL`` (DRAM bandwidth
used vs the theoretical maximum) and ``SM_OCCUPANCY`` (active warps vs the theoretical maximum).

Same counter pattern as busy/idle: a reading ``f`` (fraction) over the interval ``dt`` between the
two samples contributes ``dt·f`` active seconds, so ``rate(sm_active) / rate(busy + idle)`` is the
time-weighted SM-active fraction.  One new sample per poll, paired with the previous one (two
buffers, swapped); ``dt`` is the agent clock between the two ``nvmlGpmSampleGet`` calls.  GPM's
counters are cumulative in the GPU, so a failed read keeps the older sample and the next pair
spans both intervals: a missed poll loses resolution, never information.  After the GPU was
down the pair starts afresh (the outage is not credited).  The totals live in the poller's
:class:`ActivityCarry`, which survives re-initialisation, so the counters never go back while
the agent runs (an agent restart starts them at 0, which ``increase()`` handles).

Where GPM is not supported (pre-Hopper boards, a vGPU guest, NOT_SUPPORTED at any point) the GPU
has ``activity_source="none"`` and no activity series at all — never zeros.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pynvml
from pynvml import NVMLError

from accelmon.collector.agent import nvmlerr

log = logging.getLogger("accelmon.agent")

# snapshot key -> GPM metric id (counters: Σ dt·value/100 seconds)
COUNTERS: tuple[tuple[str, int], ...] = (
    ("sm_active_seconds", pynvml.NVML_GPM_METRIC_SM_UTIL),
    ("tensor_active_seconds", pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL),
    ("dram_active_seconds", pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL),
)
OCCUPANCY = ("sm_occupancy", pynvml.NVML_GPM_METRIC_SM_OCCUPANCY)  # gauge 0-1 over the last interval
_IDS = [mid for _, mid in COUNTERS] + [OCCUPANCY[1]]


@dataclass
class ActivityCarry:
    """What survives re-initialising the GPU: the active-seconds totals, the log-once flag."""

    totals: dict[str, float] = field(default_factory=dict)
    occupancy: float | None = None
    unsupported_logged: bool = False


def query_support(nv: Any, device: Any) -> tuple[bool, str]:
    """(supported, reason) from ``nvmlGpmQueryDeviceSupport``; GPU_IS_LOST & co. propagate (NVMLError)."""
    try:
        sup = nv.nvmlGpmQueryDeviceSupport(device)
    except NVMLError as e:
        c = nvmlerr.code_of(e)
        if c in nvmlerr.DOWN:
            raise
        return False, f"nvmlGpmQueryDeviceSupport: {nvmlerr.name_of(c)}"
    if not int(sup.isSupportedDevice):
        return False, "nvmlGpmQueryDeviceSupport: isSupportedDevice = 0 (GPM needs Hopper or newer, not in a vGPU guest)"
    return True, ""


def log_unsupported(tag: str, reason: str, carry: ActivityCarry) -> None:
    if not carry.unsupported_logged:
        log.info("%s: SM/tensor/DRAM activity not available (%s); activity_source=none, no activity series",
                 tag, reason)
        carry.unsupported_logged = True


class GpmReader:
    """GPM for one GPU (``gi_id`` None) or one MIG GPU instance of ``device`` (the parent handle)."""

    def __init__(self, device: Any, gi_id: int | None, carry: ActivityCarry, tag: str) -> None:
        self.device = device
        self.gi_id = gi_id
        self.carry = carry
        self.tag = tag
        self.bufs: list[Any] = []
        self.cur = 0  # the buffer the next sample goes into; the other holds the previous sample
        self.prev_t: float | None = None
        self.dead_metrics: set[int] = set()  # metric ids whose nvmlReturn said NOT_SUPPORTED

    def read(self, call: Callable[..., Any], now: float) -> dict[str, float]:
        """Take one sample; with a previous one, integrate the pair. ``call`` is the poller's NVML
        call wrapper (it classifies errors: unsupported, no permission, failed, GPU down)."""
        if not self.bufs:
            self.bufs = [call("nvmlGpmSampleAlloc"), call("nvmlGpmSampleAlloc")]
        new = self.bufs[self.cur]
        if self.gi_id is None:
            call("nvmlGpmSampleGet", self.device, new)
        else:
            call("nvmlGpmMigSampleGet", self.device, self.gi_id, new)
        c = self.carry
        if self.prev_t is not None and now > self.prev_t:
            mg = pynvml.c_nvmlGpmMetricsGet_t()
            mg.version = pynvml.NVML_GPM_METRICS_GET_VERSION
            ids = [i for i in _IDS if i not in self.dead_metrics]
            mg.numMetrics = len(ids)
            mg.sample1 = self.bufs[1 - self.cur]  # older
            mg.sample2 = new  # newer
            for k, mid in enumerate(ids):
                mg.metrics[k].metricId = mid
            call("nvmlGpmMetricsGet", mg)  # raises: the older sample is kept, the next pair spans both
            dt = now - self.prev_t
            for k, mid in enumerate(ids):
                m = mg.metrics[k]
                rc = int(m.nvmlReturn)
                if rc in nvmlerr.UNSUPPORTED:
                    self.dead_metrics.add(mid)
                    log.info("%s: GPM metric %d not supported (%s); its series is left out", self.tag, mid,
                             nvmlerr.name_of(rc))
                    continue
                if rc != 0:
                    continue  # this interval of this metric is lost (left out, never 0)
                frac = min(100.0, max(0.0, float(m.value))) / 100.0
                if mid == OCCUPANCY[1]:
                    c.occupancy = frac
                else:
                    key = next(k2 for k2, i in COUNTERS if i == mid)
                    c.totals[key] = c.totals.get(key, 0.0) + dt * frac
        self.prev_t = now
        self.cur = 1 - self.cur
        out: dict[str, float] = {}
        for key, mid in COUNTERS:
            if mid not in self.dead_metrics:
                out[key] = c.totals.setdefault(key, 0.0)
        if c.occupancy is not None and OCCUPANCY[1] not in self.dead_metrics:
            out[OCCUPANCY[0]] = c.occupancy
        return out

    def close(self, nv: Any) -> None:
        """Free the sample buffers (best effort: the driver may be gone)."""
        for b in self.bufs:
            try:
                nv.nvmlGpmSampleFree(b)
            except NVMLError:
                pass
        self.bufs = []
