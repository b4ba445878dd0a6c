"""Simulated NVML GPU Performance Monitoring (GPM): ``nvmlGpm*`` at the pynvml level.

Kept beside :mod:`accelmon.sim.nvml` (which only wires these functions into :class:`SimNVML`).

What a real driver does (NVML API reference, "GPM Functions"; nvidia-ml-py ``pynvml.py``):

* ``nvmlGpmQueryDeviceSupport(device)`` → ``c_nvmlGpmSupport_t`` whose ``isSupportedDevice`` is 1
  on "Hopper or newer fully supported devices".
* ``nvmlGpmSampleAlloc()`` → an opaque ``c_nvmlGpmSample_t`` (a pointer); ``nvmlGpmSampleGet(device,
  sample)`` / ``nvmlGpmMigSampleGet(device, gpuInstanceId, sample)`` read the GPU's (or one MIG GPU
  instance's) performance counters into it; ``nvmlGpmSampleFree(sample)``.
* ``nvmlGpmMetricsGet(metricsGet)`` "Calculate GPM metrics from two samples": the caller fills a
  ``c_nvmlGpmMetricsGet_t`` (``version = NVML_GPM_METRICS_GET_VERSION``, ``numMetrics``,
  ``sample1`` older, ``sample2`` newer, ``metrics[i].metricId``); NVML fills each
  ``metrics[i].nvmlReturn`` and ``.value``.  A utilization metric is a ratio of counter
  differences between the two samples, e.g. ``NVML_GPM_METRIC_SM_UTIL`` ("Percentage of SMs that
  were busy") = Δ(SM active cycles) / (Δ elapsed cycles × SM count) × 100 — i.e. the
  time-weighted mean over the interval between the samples.

What the simulation does (docs/nvml.md, "GPM"):

* Each GPU (and each MIG instance) keeps cumulative integrals ∫ activity dt of its activity trace
  (``trace.activity(t)`` → SM active, SM occupancy, tensor active, DRAM active, percent; traces
  without it derive it from ``util``: see :func:`default_activity`), integrated exactly on the
  traces' 1/6 s grid (midpoint of each piece).  A sample stores (time, integrals); a metric is
  Δintegral / Δt, so two samples over an interval whose trace is known give exactly its
  time-weighted mean.  ``NVML_GPM_METRIC_GRAPHICS_UTIL`` integrates ``util`` itself.
* Support: the model's ``gpm`` flag (H100, H200) unless the spec's ``gpm`` says otherwise; never in
  a vGPU guest; on a MIG device handle NOT_SUPPORTED (GPM is read through the parent and a GPU
  instance id).
* MIG: instance *k* runs its own copy of the GPU's trace (seed + 7919·gi_id); the whole-GPU metric
  is the slice-weighted sum Σ (slices_k / 7) · a_k (unallocated slices idle).
* Errors: unsupported device → ``nvmlGpmSampleGet`` NOT_SUPPORTED; a lost GPU → GPU_IS_LOST (also
  from ``nvmlGpmMetricsGet`` on its samples); two samples of different devices, of different
  driver loads, an empty or freed buffer, or sample2 not newer than sample1 → INVALID_ARGUMENT;
  a metric id it does not simulate → that metric's ``nvmlReturn`` NOT_SUPPORTED.
"""

from __future__ import annotations

import ctypes
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pynvml
from pynvml import NVMLError

from accelmon.sim.traces import Trace, make_trace

if TYPE_CHECKING:
    from accelmon.sim.nvml_model import SimGpu, SimHandle, SimState

GRID_S = 1.0 / 6.0  # the traces change value at most on this grid
MAX_PIECES = 20000  # beyond this many grid pieces, integrate with coarser uniform steps
MIG_SLICES = 7  # compute slices of an A100/H100/H200
# index of each simulated metric in the integral vector: graphics(util), SM, occupancy, tensor, DRAM
_IDX = {
    pynvml.NVML_GPM_METRIC_GRAPHICS_UTIL: 0,
    pynvml.NVML_GPM_METRIC_SM_UTIL: 1,
    pynvml.NVML_GPM_METRIC_SM_OCCUPANCY: 2,
    pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL: 3,
    pynvml.NVML_GPM_METRIC_HMMA_TENSOR_UTIL: 3,  # the simulated tensor work is all half-precision MMA
    pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL: 4,
}
_INFO = {  # (shortName, longName, unit): kept alive at module level (c_char_p points into them)
    pynvml.NVML_GPM_METRIC_GRAPHICS_UTIL: (b"gr_util", b"graphics engine utilization", b"%"),
    pynvml.NVML_GPM_METRIC_SM_UTIL: (b"sm_util", b"SM utilization", b"%"),
    pynvml.NVML_GPM_METRIC_SM_OCCUPANCY: (b"sm_occupancy", b"SM occupancy", b"%"),
    pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL: (b"any_tensor_util", b"any tensor utilization", b"%"),
    pynvml.NVML_GPM_METRIC_HMMA_TENSOR_UTIL: (b"hmma_tensor_util", b"HMMA tensor utilization", b"%"),
    pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL: (b"dram_bw_util", b"DRAM bandwidth utilization", b"%"),
}


def default_activity(util: float) -> tuple[float, float, float, float]:
    """Activity of a trace that gives only utilization (the simulator's assumption for ordinary
    work): SM active 0.8·u, occupancy 0.4·u, tensor 0.5·u, DRAM 0.45·u (percent)."""
    return 0.8 * util, 0.4 * util, 0.5 * util, 0.45 * util


def activity_at(trace: Trace, t: float) -> tuple[float, float, float, float, float]:
    """(util, SM active, occupancy, tensor, DRAM) percent of ``trace`` at ``t``."""
    u = float(trace.util(t))
    fn = getattr(trace, "activity", None)
    a = fn(t) if fn is not None else default_activity(u)
    return (u, *(max(0.0, min(100.0, float(x))) for x in a))  # type: ignore[return-value]


def activity_mean(trace: Trace, start: float, end: float, step: float = 1.0 / 60.0) -> tuple[float, ...]:
    """Time-weighted mean (midpoint rule) of :func:`activity_at` over [start, end]: the reference
    a GPM metric over that interval must equal (tests)."""
    n = max(1, round((end - start) / step))
    h = (end - start) / n
    acc = [0.0] * 5
    for i in range(n):
        for j, v in enumerate(activity_at(trace, start + (i + 0.5) * h)):
            acc[j] += v
    return tuple(a / n for a in acc)


def integrate(trace: Trace, t0: float, t1: float) -> list[float]:
    """∫ activity dt over [t0, t1] (percent·s), exact for traces constant on the 1/6 s grid."""
    acc = [0.0] * 5
    if t1 <= t0:
        return acc
    k0, k1 = math.floor(t0 / GRID_S), math.floor(t1 / GRID_S)
    if k1 - k0 + 1 > MAX_PIECES:
        edges = [t0 + (t1 - t0) * i / MAX_PIECES for i in range(MAX_PIECES + 1)]
    else:
        edges = [t0, *(k * GRID_S for k in range(k0 + 1, k1 + 1)), t1]
    for a, b in zip(edges, edges[1:], strict=False):
        if b <= a:
            continue
        for j, v in enumerate(activity_at(trace, (a + b) / 2)):
            acc[j] += v * (b - a)
    return acc


@dataclass
class _Scope:
    """Cumulative activity integrals of one GPU or one MIG instance."""

    trace: Trace
    t: float
    acc: list[float] = field(default_factory=lambda: [0.0] * 5)

    def advance(self, now: float) -> None:
        if now > self.t:
            for j, v in enumerate(integrate(self.trace, self.t, now)):
                self.acc[j] += v
            self.t = now


@dataclass
class _Sample:
    gpu: int = -1  # -1: allocated, never filled
    gi_id: int | None = None
    load_t: float = 0.0  # driver load time when taken
    t: float = 0.0
    acc: tuple[float, ...] = ()


class SimGpm:
    """GPM state of a :class:`SimNVML`: sample buffers and per-GPU / per-instance integrals."""

    def __init__(self, sim: SimState) -> None:
        self.sim = sim
        self._buffers: dict[int, tuple[Any, _Sample]] = {}  # address -> (keep-alive buffer, sample)
        self._scopes: dict[tuple[int, int | None], _Scope] = {}

    # ------------------------------------------------------------------ integrals
    def _scope(self, g: SimGpu, gi_id: int | None) -> _Scope:
        key = (g.index, gi_id)
        sc = self._scopes.get(key)
        if sc is None:
            if gi_id is None:
                trace = g.trace
            else:
                trace = make_trace(g.spec.trace, g.spec.seed + 7919 * gi_id, base_dir=self.sim.spec.base_dir,
                                   anchor=self.sim.start)
            sc = self._scopes[key] = _Scope(trace, self.sim.start)
        return sc

    def integrals(self, g: SimGpu, gi_id: int | None, now: float) -> tuple[float, ...]:
        if gi_id is None and g.migs:  # the whole GPU in MIG mode: slice-weighted sum of its instances
            out = [0.0] * 5
            for m in g.migs:
                w = _slices(m.profile) / MIG_SLICES
                for j, v in enumerate(self.integrals(g, m.gi_id, now)):
                    out[j] += w * v
            return tuple(out)
        sc = self._scope(g, gi_id)
        sc.advance(now)
        return tuple(sc.acc)

    # ------------------------------------------------------------------ pynvml functions
    def query_support(self, h: SimHandle) -> Any:
        if h.mig is not None:
            raise NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        sup = pynvml.c_nvmlGpmSupport_t()
        sup.version = pynvml.NVML_GPM_SUPPORT_VERSION
        sup.isSupportedDevice = 1 if h.gpu.spec.gpm_supported else 0
        return sup

    def alloc(self) -> Any:
        buf = ctypes.create_string_buffer(16)
        p = ctypes.cast(buf, pynvml.c_nvmlGpmSample_t)
        self._buffers[ctypes.addressof(buf)] = (buf, _Sample())
        return p

    def _lookup(self, sample: Any) -> _Sample:
        try:
            addr = ctypes.cast(sample, ctypes.c_void_p).value
        except (ctypes.ArgumentError, TypeError):
            raise NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT) from None
        hit = self._buffers.get(addr or 0)
        if hit is None:
            raise NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return hit[1]

    def free(self, sample: Any) -> None:
        self._lookup(sample)
        addr = ctypes.cast(sample, ctypes.c_void_p).value
        self._buffers.pop(addr or 0, None)

    def sample_get(self, h: SimHandle, gi_id: int | None, sample: Any) -> Any:
        g = h.gpu
        if h.mig is not None or not g.spec.gpm_supported:
            raise NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        if gi_id is not None and not any(m.gi_id == gi_id for m in g.migs):
            raise NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        s = self._lookup(sample)
        now = self.sim.clock.time()
        s.gpu, s.gi_id, s.load_t, s.t = g.index, gi_id, self.sim.driver_load_t, now
        s.acc = self.integrals(g, gi_id, now)
        return sample

    def metrics_get(self, mg: Any) -> Any:
        if int(mg.version) != pynvml.NVML_GPM_METRICS_GET_VERSION:
            raise NVMLError(pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
        n = int(mg.numMetrics)
        if not 0 < n <= pynvml.NVML_GPM_METRIC_MAX:
            raise NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        s1, s2 = self._lookup(mg.sample1), self._lookup(mg.sample2)
        if s1.gpu < 0 or s2.gpu < 0 or (s1.gpu, s1.gi_id, s1.load_t) != (s2.gpu, s2.gi_id, s2.load_t):
            raise NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if self.sim.gpus[s1.gpu].lost:
            raise NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        dt = s2.t - s1.t
        if dt <= 0:
            raise NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        put = ctypes.Structure.__setattr__  # pynvml's Python-level __setattr__ is slow; same effect
        for i in range(n):
            m = mg.metrics[i]
            mid = int(m.metricId)
            j = _IDX.get(mid)
            if j is None:
                put(m, "nvmlReturn", pynvml.NVML_ERROR_NOT_SUPPORTED)
                continue
            put(m, "nvmlReturn", pynvml.NVML_SUCCESS)
            put(m, "value", max(0.0, min(100.0, (s2.acc[j] - s1.acc[j]) / dt)))
            short, long, unit = _INFO[mid]
            info = m.metricInfo
            put(info, "shortName", short)
            put(info, "longName", long)
            put(info, "unit", unit)
        return mg


def _slices(profile: str) -> int:
    """'3g.40gb' → 3 compute slices."""
    try:
        return max(1, int(profile.lower().split("g.", 1)[0]))
    except ValueError:
        return 1
