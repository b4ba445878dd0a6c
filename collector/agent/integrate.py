"""Integrate the driver's utilization readings into busy/idle/unobserved seconds counters.

Definition (docs/agent.md, /work/shared/ARCHITECTURE.md "Utilization"): NVML documents
``nvmlUtilization_t.gpu`` and each ``NVML_GPU_UTILIZATION_SAMPLES`` value as "Percent of time over
the past sample period during which one or more kernels was executing on the GPU".  A reading
``v`` (percent) covering a period ``dt`` therefore contributes

    busy = dt * v / 100        idle = dt - busy

so ``rate(busy) / (rate(busy) + rate(idle))`` is the time-weighted mean of the readings, the
number nvidia-smi, DCGM ``DCGM_FI_DEV_GPU_UTIL`` and nvidia_gpu_exporter show.  Example: one
second of six samples reading 10 % is 0.1 s busy and 0.9 s idle (not 1 s busy).

``nvmlDeviceGetSamples(h, NVML_GPU_UTILIZATION_SAMPLES, last_seen)`` returns the samples the
driver took after ``last_seen``.  Their timestamps (µs) are in the *driver's* clock domain (often
CLOCK_BOOTTIME, not the Unix epoch), so they are only ever compared with each other and with the
previous poll's last sample timestamp, never with the host's wall clock.  Each sample covers the
sample period that *ends* at its timestamp.  Gaps between samples mean one of two things:

* the ring wrapped between polls (the call returned as many samples as the ring ever held and the
  time since the last read is well beyond what they cover, or the GPU was down): the gap is
  ``unobserved``, never guessed;
* the driver took no samples (the ring "runs dry" while the GPU is idle; the next call may raise
  ``NVML_ERROR_NOT_FOUND``): observed idle time.  On ``NOT_FOUND`` the poll interval (host clock,
  a duration only) is credited by the current ``nvmlDeviceGetUtilizationRates`` reading (0 on an
  idle GPU) and ``last_ts`` moves on by the same duration, so no stretch is credited twice.
"""

from __future__ import annotations

from dataclasses import dataclass


def split(dt: float, percent: float) -> tuple[float, float]:
    """(busy, idle) of a reading ``percent`` over ``dt``: busy = dt·v/100 (NVML's definition)."""
    busy = dt * min(100.0, max(0.0, percent)) / 100.0
    return busy, dt - busy


@dataclass
class RingIntegrator:
    """Running totals in microseconds (driver clock); ``last_ts`` is what to pass as ``lastSeenTimeStamp``.

    ``last_ts == 0`` means no reference sample yet (the first sample then only sets it)."""

    last_ts: int = 0
    busy_us: float = 0.0
    idle_us: float = 0.0
    unobserved_us: float = 0.0
    period_us: int = 0  # typical spacing of samples (learned)
    capacity: int = 0  # most samples one call returned: the ring's length as far as seen
    last_value: float | None = None
    last_poll_t: float = 0.0  # host time of the last read of the ring (for NOT_FOUND intervals)
    resync: bool = False  # the GPU was down: the next gap is unknown, not idle

    def prime(self, samples: list[tuple[int, float]], now: float) -> None:
        """Start after the newest sample the ring holds, without crediting history."""
        self.capacity = max(self.capacity, len(samples))
        if samples:
            self.last_ts = max(self.last_ts, max(s[0] for s in samples))
        self.last_poll_t = now

    def mark_down(self, now: float) -> None:
        """The GPU was down until ``now``: what the ring lost meanwhile is unobserved."""
        self.resync = True
        self.last_poll_t = self.last_poll_t or now

    def add(self, samples: list[tuple[int, float]], now: float = 0.0) -> tuple[float | None, float]:
        """Feed samples (timestamp µs, percent). Returns (mean utilization of what was credited, µs credited)."""
        host_dt = now - self.last_poll_t if (now and self.last_poll_t) else None  # a duration, host clock
        if now:
            self.last_poll_t = now
        count = len(samples)
        full = count >= self.capacity
        self.capacity = max(self.capacity, count)
        samples = sorted(s for s in samples if s[0] > self.last_ts)
        if not samples:
            return None, 0.0
        diffs = [b[0] - a[0] for a, b in zip(samples, samples[1:], strict=False) if b[0] > a[0]]
        if diffs:
            diffs.sort()
            self.period_us = diffs[len(diffs) // 2]
        period = self.period_us or 1_000_000
        if full and host_dt is not None:  # a wrap needs more time since the last read than the ring holds
            full = host_dt * 1e6 > 1.5 * count * period
        wrapped = self.resync or full
        prev = self.last_ts
        credited = 0.0
        busy_sum = 0.0
        first = True
        for ts, value in samples:
            if ts <= prev:
                continue
            if prev > 0:
                dt = float(ts - prev)
                if first and wrapped and dt > 3 * period:  # the ring wrapped between polls: the rest is unknown
                    self.unobserved_us += dt - period
                    dt = period
                elif dt > 1.5 * period:  # the driver took no samples meanwhile (idle): one period by this value
                    self.idle_us += dt - period
                    credited += dt - period
                    dt = period
                busy, idle = split(dt, value)
                self.busy_us += busy
                self.idle_us += idle
                busy_sum += busy
                credited += dt
            prev = ts
            first = False
            self.last_value = value
        self.last_ts = prev
        self.resync = False
        mean = (100.0 * busy_sum / credited) if credited else self.last_value
        return mean, credited

    def no_new_samples(self, now: float, percent: float | None, max_gap_s: float) -> None:
        """``NVML_ERROR_NOT_FOUND``: no sample since ``last_ts``; the driver's ring ran dry (idle GPU).

        The host-clock interval since the last read is observed time, credited by ``percent``
        (``nvmlDeviceGetUtilizationRates``; None: 0, the ring's own verdict).  Past ``max_gap_s``
        (a stalled agent) or right after an outage the time is unobserved."""
        if self.last_poll_t <= 0 or now <= self.last_poll_t:
            self.last_poll_t = max(self.last_poll_t, now)
            return
        dt = now - self.last_poll_t
        seen = 0.0 if self.resync else min(dt, max_gap_s)
        self.unobserved_us += (dt - seen) * 1e6
        busy, idle = split(seen * 1e6, percent or 0.0)
        self.busy_us += busy
        self.idle_us += idle
        if self.last_ts > 0:
            self.last_ts += int(dt * 1e6)
        self.last_poll_t = now
        self.resync = False
        if seen > 0:
            self.last_value = percent or 0.0


@dataclass
class GaugeIntegrator:
    """Fallback when samples are NOT_SUPPORTED: credit each poll interval by the current reading.

    Coarser than the ring (a 1 s poll sees one value per second), which is why the agent says
    which source it used (``util_source`` label on ``accelmon_gpu_info``).  Same definition:
    busy = dt·v/100.
    """

    last_t: float = 0.0
    busy_s: float = 0.0
    idle_s: float = 0.0
    unobserved_s: float = 0.0

    def add(self, t: float, percent: float, max_gap_s: float) -> None:
        if self.last_t > 0 and t > self.last_t:
            dt = t - self.last_t
            if dt > max_gap_s:
                self.unobserved_s += dt - max_gap_s
                dt = max_gap_s
            busy, idle = split(dt, percent)
            self.busy_s += busy
            self.idle_s += idle
        self.last_t = max(self.last_t, t)
