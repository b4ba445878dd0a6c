"""Generated GPU traces with exactly known time-weighted means (test data, not fixtures of others' code)."""

from __future__ import annotations

import datetime as dt
import statistics
from dataclasses import dataclass

import numpy as np

T0 = dt.datetime(2025, 1, 6, tzinfo=dt.UTC)


@dataclass
class Trace:
    gpu: str
    t_ms: np.ndarray
    util: np.ndarray

    def rows(self, source: str = "import") -> list[dict]:
        return [
            {"ts": dt.datetime.fromtimestamp(t / 1000, dt.UTC), "gpu_uuid": self.gpu, "source": source,
             "util_percent": int(u)}
            for t, u in zip(self.t_ms.tolist(), self.util.tolist(), strict=True)
        ]


def held_trace(gpu: str, target: float, *, hours: float = 48, start_h: float = 0, seed: int = 0,
               gaps: int = 2, step_s: float = 10.0) -> Trace:
    """Irregular steps (10 s ± 3 s, some 20 s), `gaps` scrape gaps of 30-90 min, util around `target`."""
    rng = np.random.default_rng(seed)
    n = int(hours * 3600 / step_s)
    steps = step_s + rng.uniform(-3, 3, n)
    steps[rng.random(n) < 0.05] = 2 * step_s - 1  # occasional long-but-not-gap step (< 2x median)
    for g in rng.choice(n, gaps, replace=False):
        steps[g] = rng.uniform(1800, 5400)
    t = (T0.timestamp() + start_h * 3600) * 1000 + np.cumsum(np.rint(steps * 1000))
    u = np.clip(np.rint(rng.normal(target, max(target / 3, 1), n)), 0, 100)
    u[rng.random(n) < 0.2] = 0  # idle moments
    return Trace(gpu, t.astype(np.int64), u.astype(np.int64))


def reference_mean(tr: Trace) -> tuple[float, float]:
    """Naive definition: held util over (t[k-1], t[k]], intervals > 2x median step excluded.

    Returns (mean percent, covered seconds)."""
    dts = np.diff(tr.t_ms)
    med = statistics.median(dts.tolist())
    num = den = 0.0
    for k in range(1, len(tr.t_ms)):
        d = float(dts[k - 1])
        if d > 2 * med:
            continue
        num += tr.util[k - 1] * d
        den += d
    return num / den, den / 1000
