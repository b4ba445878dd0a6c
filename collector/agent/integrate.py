"""Integrate the driver's utilization sample ring into busy/idle seconds counters.

``nvmlDeviceGetSamples(h, NVML_GPU_UTILIZATION_SAMPLES, last_seen)`` returns the samples the
driver took after ``last_seen`` (µs timestamps, CPU clock).  Each sample reports the
utilization of the sample period that *ends* at its timestamp, so the interval between two
consecutive samples is credited to busy (value > 0) or idle (value == 0).  Between polls the
ring keeps the last ~100 samples; if a poll comes too late (the ring wrapped), the uncovered
stretch is credited to ``unobserved`` instead of being guessed.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RingIntegrator:
    """Running totals in microseconds; ``last_ts`` is what to pass as ``lastSeenTimeStamp`` next."""

    last_ts: int = 0
    busy_us: int = 0
    idle_us: int = 0
    unobserved_us: int = 0
    util_weighted_us: float = 0.0  # Σ duration × utilization/100
    period_us: int = 0  # typical spacing of samples (learned)
    last_value: float | None = None

    def add(self, samples: list[tuple[int, float]]) -> tuple[float | None, int]:
        """Feed samples (timestamp µs, percent). Returns (mean utilization of what was credited, µs credited)."""
        samples = sorted(s for s in samples if s[0] > self.last_ts)
        if not samples:
            return None, 0
        diffs = [b[0] - a[0] for a, b in zip(samples, samples[1:], strict=False) if b[0] > a[0]]
        if diffs:
            diffs.sort()
            self.period_us = diffs[len(diffs) // 2]
        period = self.period_us or 1_000_000
        max_gap = 3 * period
        prev = self.last_ts
        credited = 0
        weighted = 0.0
        for ts, value in samples:
            if ts <= prev:
                continue
            if prev > 0:
                dt = ts - prev
                if dt > max_gap:  # the ring wrapped between polls: credit one period, the rest is unknown
                    self.unobserved_us += dt - period
                    dt = period
                if value > 0:
                    self.busy_us += dt
                else:
                    self.idle_us += dt
                w = dt * min(100.0, max(0.0, value)) / 100.0
                self.util_weighted_us += w
                weighted += w
                credited += dt
            prev = ts
            self.last_value = value
        self.last_ts = prev
        mean = (100.0 * weighted / credited) if credited else self.last_value
        return mean, credited


@dataclass
class GaugeIntegrator:
    """Fallback when samples are NOT_SUPPORTED: credit each poll interval by the current reading.

    Coarser than the ring (a 1 s poll sees one value per second), which is why the agent says
    which source it used (``util_source`` label on ``accelmon_gpu_info``).
    """

    last_t: float = 0.0
    busy_s: float = 0.0
    idle_s: float = 0.0
    unobserved_s: float = 0.0
    util_weighted_s: float = 0.0

    def add(self, t: float, percent: float, max_gap_s: float) -> None:
        if self.last_t > 0 and t > self.last_t:
            dt = t - self.last_t
            if dt > max_gap_s:
                self.unobserved_s += dt - max_gap_s
                dt = max_gap_s
            if percent > 0:
                self.busy_s += dt
            else:
                self.idle_s += dt
            self.util_weighted_s += dt * min(100.0, max(0.0, percent)) / 100.0
        self.last_t = max(self.last_t, t)
