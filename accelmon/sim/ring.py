"""The simulated driver's utilization sample ring (``nvmlDeviceGetSamples``).

Kept beside :mod:`accelmon.sim.nvml` so that file stays about the function-level API.

* Samples sit on a fixed grid of ``sample_period_s``; the sample at the end of period *k* has the
  trace's value there as an integer percent (NVML: "Percent of time over the past sample period
  during which one or more kernels was executing on the GPU").
* The ring keeps the last ``ring_size`` samples taken since the driver loaded.
* ``sample_clock_offset_s`` (spec): sample timestamps are the host clock plus this offset, in µs —
  a real driver stamps them with its own clock (often CLOCK_BOOTTIME, not the Unix epoch), so a
  consumer may compare them only with each other.
* ``ring_runs_dry`` (per GPU): the driver takes no sample while the GPU is idle (0 %), as real
  drivers do, so an idle GPU's ring holds nothing new and the call raises ``NOT_FOUND``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pynvml
from pynvml import NVMLError

if TYPE_CHECKING:
    from accelmon.sim.nvml_model import SimGpu, SimState


def driver_now_us(sim: SimState) -> int:
    """The driver's sample clock now (µs): host clock + ``sample_clock_offset_s``."""
    return int((sim.clock.time() + sim.spec.sample_clock_offset_s) * 1e6)


def ring_samples(sim: SimState, g: SimGpu, last_seen_us: int) -> list[Any]:
    """``c_nvmlSample_t`` list newer than ``last_seen_us``; raises NOT_FOUND when there is none."""
    p = sim.period_us
    off = sim.spec.sample_clock_offset_s
    k_now = driver_now_us(sim) // p
    k_min = max(k_now - sim.ring_size + 1, -(-int((sim.driver_load_t + off) * 1e6) // p))
    k_from = max(k_min, int(last_seen_us) // p + 1)
    dry = g.spec.ring_runs_dry
    out = []
    for k in range(k_from, k_now + 1):
        v = int(round(g.util_at(k * p / 1e6 - off)))
        if dry and v == 0:
            continue  # the driver took no sample while the GPU was idle
        s = pynvml.c_nvmlSample_t()
        s.timeStamp = k * p
        s.sampleValue.uiVal = v
        out.append(s)
    if dry and out:  # the ring holds ring_size samples *taken*: older ones have been overwritten
        out = out[-sim.ring_size:]
    if not out:
        raise NVMLError(pynvml.NVML_ERROR_NOT_FOUND)
    return out


def last_period_util(sim: SimState, g: SimGpu) -> float:
    """``nvmlDeviceGetUtilizationRates().gpu``: NVML's "percent of time over the past sample period",
    i.e. the value of the newest sample period on the driver's grid (the ring's newest sample)."""
    p = sim.period_us
    k_now = driver_now_us(sim) // p
    return float(g.util_at(k_now * p / 1e6 - sim.spec.sample_clock_offset_s))
