"""Clocks for the simulation: real time, accelerated time, and a hand-driven clock for tests.

The simulated NVML and the agent both read time through a clock object, so a test (or the
demo) can run a day of GPU activity in seconds, and a unit test can step time exactly.
All clocks return Unix seconds (float), like :func:`time.time`.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    def time(self) -> float: ...


class RealClock:
    """Wall-clock time (what the real NVML driver uses for its sample timestamps)."""

    def time(self) -> float:
        return time.time()

    def __repr__(self) -> str:
        return "RealClock()"


class AcceleratedClock:
    """Starts at ``start`` (default: now) and runs ``speed`` times faster than real time."""

    def __init__(self, start: float | None = None, speed: float = 1.0) -> None:
        if speed <= 0:
            raise ValueError("speed must be > 0")
        self.start = time.time() if start is None else float(start)
        self.speed = float(speed)
        self._m0 = time.monotonic()

    def time(self) -> float:
        return self.start + (time.monotonic() - self._m0) * self.speed

    def __repr__(self) -> str:
        return f"AcceleratedClock(start={self.start:.3f}, speed={self.speed:g})"


class ManualClock:
    """Moves only when told to: ``advance(seconds)`` or ``set(t)``. Thread-safe."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._t = float(start)
        self._lock = threading.Lock()

    def time(self) -> float:
        with self._lock:
            return self._t

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError("a clock does not go backwards")
        with self._lock:
            self._t += seconds
            return self._t

    def set(self, t: float) -> None:
        with self._lock:
            self._t = float(t)

    def __repr__(self) -> str:
        return f"ManualClock({self._t:.3f})"
