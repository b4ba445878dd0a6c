"""Utilization traces that drive the simulated NVML (and the demo).

A trace answers two questions for any Unix time ``t``: how busy is the GPU (``util(t)``,
percent 0–100, what one driver sample would report for the period ending at ``t``) and how
much framebuffer is held (``mem_fraction(t)``, 0–1 of the board's memory, or an absolute
``mem_bytes(t)``).  Traces are pure functions of time (noise comes from a hash of the seed
and the time slot, not from a random stream), so any instant can be asked in any order,
which is what an accelerated or hand-stepped clock needs.

Generators:

* ``busy_training``  – 90–100 % with a checkpoint dip to ~0 % every 30 min, memory ~88 %.
* ``bursty_inference`` – request bursts: idle gaps between 20–85 % bursts, busier by day.
* ``idle_allocated`` – 0 % while a process holds ~70 % of the framebuffer (the waste the
  report looks for).
* ``trickle`` – busy ~95 % of the time, but the kernel keeps only ~4 % of the SMs active (a
  one-block / launch-bound loop): NVML utilization high, GPM SM activity low (a "hollow" GPU).
* ``matmul`` – dense GEMMs: busy ~97 %, SM activity ~90 %, tensor pipes ~78 %.
* ``constant:<pct>`` – a fixed utilization (tests).

A trace may also answer ``activity(t)``: (SM active, SM occupancy, tensor active, DRAM active),
percent 0–100, for the same 1/6 s slot as ``util(t)``; the simulated GPM
(:mod:`accelmon.sim.gpm`) reads it, and derives it from ``util`` for traces that do not.
* CSV in the ``accelmon import-trace`` format: header ``timestamp,gpu,util_percent`` and
  optional ``memory_used_bytes``; ``timestamp`` Unix seconds or ISO 8601.  Replayed as a
  step function, looped, starting at the simulation's start time.
"""

from __future__ import annotations

import bisect
import csv
import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from accelmon.errors import UserError

_MASK = (1 << 64) - 1


def _mix(x: int) -> int:
    """splitmix64 finaliser: a fast, well-spread 64-bit hash."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def noise(seed: int, slot: int) -> float:
    """Deterministic uniform noise in [0, 1) for (seed, slot)."""
    return _mix((seed * 0x100000001B3) ^ (slot & _MASK)) / 2.0**64


class Trace(Protocol):
    name: str

    def util(self, t: float) -> float: ...

    def mem_fraction(self, t: float) -> float: ...

    def mem_bytes(self, t: float) -> int | None: ...


@dataclass
class BusyTraining:
    """A training job: near-saturated, with periodic checkpoint dips."""

    seed: int = 0
    level: float = 96.0
    checkpoint_every_s: float = 1800.0
    checkpoint_s: float = 60.0
    memory: float = 0.88
    name: str = "busy_training"

    def util(self, t: float) -> float:
        phase = (t + noise(self.seed, 1) * self.checkpoint_every_s) % self.checkpoint_every_s
        slot = math.floor(t * 6)
        if phase < self.checkpoint_s:  # writing a checkpoint: the GPU waits on I/O
            return 0.0 if noise(self.seed, slot) < 0.9 else 3.0
        return max(0.0, min(100.0, round(self.level + (noise(self.seed, slot) - 0.6) * 12)))

    def mem_fraction(self, t: float) -> float:
        return self.memory + noise(self.seed, math.floor(t / 300)) * 0.02

    def mem_bytes(self, t: float) -> int | None:
        return None


@dataclass
class BurstyInference:
    """An inference server: bursts of requests separated by idle gaps, busier by day."""

    seed: int = 0
    window_s: float = 10.0
    peak: float = 85.0
    memory: float = 0.45
    name: str = "bursty_inference"
    base_busy: float = 0.15  # chance that a window holds a burst, at the quietest hour
    day_busy: float = 0.45  # added at the busiest hour (a sine over the day)

    def busy_probability(self, t: float) -> float:
        day = (t % 86400.0) / 86400.0
        return min(1.0, self.base_busy + self.day_busy * (1 + math.sin(2 * math.pi * (day - 0.3))) / 2)

    def util(self, t: float) -> float:
        w = math.floor(t / self.window_s)
        if noise(self.seed, w) >= self.busy_probability(w * self.window_s):
            return 0.0
        # a burst fills part of the window
        frac = 0.3 + 0.7 * noise(self.seed + 1, w)
        if (t / self.window_s - w) > frac:
            return 0.0
        slot = math.floor(t * 6)
        return float(round(20 + (self.peak - 20) * noise(self.seed + 2, slot)))

    def mem_fraction(self, t: float) -> float:
        return self.memory

    def mem_bytes(self, t: float) -> int | None:
        return None


@dataclass
class IdleAllocated:
    """A process holds the framebuffer but runs no kernels."""

    seed: int = 0
    memory: float = 0.7
    name: str = "idle_allocated"

    def util(self, t: float) -> float:
        return 0.0

    def mem_fraction(self, t: float) -> float:
        return self.memory

    def mem_bytes(self, t: float) -> int | None:
        return None


@dataclass
class Trickle:
    """Time-busy but hollow: a kernel is resident ~95 % of the time on ~4 % of the SMs.

    The simulator's assumption for a one-block spin / launch-bound loop: NVML utilization
    (share of time a kernel ran) reads ~95 % while GPM SM activity reads ~4 %."""

    seed: int = 0
    busy: float = 95.0
    sm_active: float = 4.0
    memory: float = 0.3
    name: str = "trickle"

    def util(self, t: float) -> float:
        return max(0.0, min(100.0, round(self.busy + (noise(self.seed, math.floor(t * 6)) - 0.5) * 4)))

    def activity(self, t: float) -> tuple[float, float, float, float]:
        sm = max(0.0, self.sm_active + (noise(self.seed + 3, math.floor(t * 6)) - 0.5) * 2)
        return sm, sm * 0.5, 0.0, sm * 0.3

    def mem_fraction(self, t: float) -> float:
        return self.memory

    def mem_bytes(self, t: float) -> int | None:
        return None


@dataclass
class Matmul:
    """Dense matrix multiplies: busy ~97 %, SMs ~90 % active, tensor pipes ~78 %, DRAM ~55 %."""

    seed: int = 0
    level: float = 97.0
    memory: float = 0.8
    name: str = "matmul"

    def util(self, t: float) -> float:
        return max(0.0, min(100.0, round(self.level + (noise(self.seed, math.floor(t * 6)) - 0.5) * 4)))

    def activity(self, t: float) -> tuple[float, float, float, float]:
        u = self.util(t)
        return 0.93 * u, 0.45 * u, 0.80 * u, 0.55 * u

    def mem_fraction(self, t: float) -> float:
        return self.memory

    def mem_bytes(self, t: float) -> int | None:
        return None


@dataclass
class Constant:
    percent: float
    memory: float = 0.5
    name: str = "constant"

    def util(self, t: float) -> float:
        return self.percent

    def mem_fraction(self, t: float) -> float:
        return self.memory

    def mem_bytes(self, t: float) -> int | None:
        return None


@dataclass
class CsvTrace:
    """One GPU's rows of an import-trace CSV, replayed as a looped step function."""

    gpu: str
    times: list[float]
    utils: list[float]
    mems: list[int | None]
    anchor: float | None = None  # sim time at which the trace's first row plays
    name: str = field(default="csv")

    def __post_init__(self) -> None:
        steps = [b - a for a, b in zip(self.times, self.times[1:], strict=False) if b > a]
        step = sorted(steps)[len(steps) // 2] if steps else 1.0
        self.span = (self.times[-1] - self.times[0]) + step

    def _index(self, t: float) -> int:
        first = self.times[0]
        anchor = first if self.anchor is None else self.anchor
        tt = first + ((t - anchor) % self.span)
        return max(0, bisect.bisect_right(self.times, tt) - 1)

    def util(self, t: float) -> float:
        return self.utils[self._index(t)]

    def mem_fraction(self, t: float) -> float:
        return 0.5

    def mem_bytes(self, t: float) -> int | None:
        return self.mems[self._index(t)]


def _parse_ts(s: str) -> float | None:
    s = s.strip()
    try:
        return float(s)
    except ValueError:
        pass
    try:
        t = dt.datetime.fromisoformat(s)
    except ValueError:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return t.timestamp()


def load_csv_traces(path: str | Path) -> dict[str, CsvTrace]:
    """Read an import-trace CSV into one :class:`CsvTrace` per ``gpu`` id.

    Problems raise :class:`UserError` naming file, line and column (first problem only).
    """
    name = str(path)
    try:
        f = open(path, newline="")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        raise UserError(f"{name}: file not found") from None
    except OSError as e:
        raise UserError(f"{name}: cannot read: {e.strerror}") from None
    rows: dict[str, list[tuple[float, float, int | None]]] = {}
    with f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        for need in ("timestamp", "gpu", "util_percent"):
            if need not in header:
                raise UserError(f"{name}:1: {need}: missing column (header must have timestamp,gpu,util_percent)")
        ix = {h: i for i, h in enumerate(header)}
        mi = ix.get("memory_used_bytes")
        for lineno, rec in enumerate(reader, start=2):
            if not rec or all(not c.strip() for c in rec):
                continue
            if len(rec) != len(header):
                raise UserError(f"{name}:{lineno}: expected {len(header)} columns, found {len(rec)}")
            ts = _parse_ts(rec[ix["timestamp"]])
            if ts is None:
                raise UserError(f"{name}:{lineno}: timestamp: not Unix seconds or ISO 8601: {rec[ix['timestamp']]!r}")
            try:
                u = float(rec[ix["util_percent"]])
            except ValueError:
                raise UserError(f"{name}:{lineno}: util_percent: not a number: {rec[ix['util_percent']]!r}") from None
            if not 0.0 <= u <= 100.0:
                raise UserError(f"{name}:{lineno}: util_percent: must be 0–100, got {u:g}")
            mem: int | None = None
            if mi is not None and rec[mi].strip():
                try:
                    mem = int(float(rec[mi]))
                except ValueError:
                    raise UserError(f"{name}:{lineno}: memory_used_bytes: not a number: {rec[mi]!r}") from None
                if mem < 0:
                    raise UserError(f"{name}:{lineno}: memory_used_bytes: must be >= 0")
            gpu = rec[ix["gpu"]].strip()
            if not gpu:
                raise UserError(f"{name}:{lineno}: gpu: empty id")
            rows.setdefault(gpu, []).append((ts, u, mem))
    if not rows:
        raise UserError(f"{name}: no rows")
    out = {}
    for gpu, rs in rows.items():
        rs.sort(key=lambda r: r[0])
        out[gpu] = CsvTrace(gpu, [r[0] for r in rs], [r[1] for r in rs], [r[2] for r in rs])
    return out


GENERATORS = {
    "busy_training": BusyTraining, "bursty_inference": BurstyInference, "idle_allocated": IdleAllocated,
    "trickle": Trickle, "matmul": Matmul,
}


def make_trace(spec: Any, seed: int = 0, *, base_dir: Path | None = None, anchor: float | None = None) -> Trace:
    """Build a trace from a spec: a generator name, ``"constant:<pct>"``, ``"csv:<path>#<gpu>"``,
    or a table ``{csv = "path", gpu = "id"}`` / ``{generator = "bursty_inference", seed = 3}``."""
    if isinstance(spec, Mapping):
        if "csv" in spec:
            return _csv_trace(str(spec["csv"]), spec.get("gpu"), base_dir, anchor)
        gen = spec.get("generator")
        if gen not in GENERATORS:
            raise UserError(f"trace: unknown generator {gen!r}; known: {', '.join(GENERATORS)}")
        kw = {k: v for k, v in spec.items() if k != "generator"}
        kw.setdefault("seed", seed)
        try:
            return GENERATORS[gen](**kw)  # type: ignore[no-any-return]
        except TypeError as e:
            raise UserError(f"trace: {gen}: {e}") from None
    if not isinstance(spec, str):
        raise UserError(f"trace: expected a name or a table, got {spec!r}")
    if spec.startswith("constant:"):
        try:
            return Constant(float(spec.split(":", 1)[1]))
        except ValueError:
            raise UserError(f"trace: {spec!r}: expected constant:<percent>") from None
    if spec.startswith("csv:"):
        p, _, gpu = spec[4:].partition("#")
        return _csv_trace(p, gpu or None, base_dir, anchor)
    if spec not in GENERATORS:
        raise UserError(f"trace: unknown trace {spec!r}; known: {', '.join(GENERATORS)}, constant:<pct>, csv:<path>#<gpu>")
    return GENERATORS[spec](seed=seed)  # type: ignore[no-any-return]


def _csv_trace(path: str, gpu: str | None, base_dir: Path | None, anchor: float | None) -> CsvTrace:
    p = Path(path)
    if not p.is_absolute() and base_dir is not None:
        p = base_dir / p
    traces = load_csv_traces(p)
    if gpu is None:
        if len(traces) != 1:
            raise UserError(f"{p}: has {len(traces)} gpu ids; say which one (gpu = ...)")
        t = next(iter(traces.values()))
    else:
        if gpu not in traces:
            raise UserError(f"{p}: gpu: no rows for {gpu!r}; ids: {', '.join(sorted(traces)[:10])}")
        t = traces[gpu]
    t.anchor = anchor
    return t


def time_weighted_mean(trace: Trace, start: float, end: float, step: float = 1.0 / 60.0) -> float:
    """Mean utilization percent of ``trace`` over [start, end], weighted by time (midpoint rule).

    What any source measuring that GPU must report for the window (NVML's definition: the share
    of time a kernel ran); the generators change value at most every 1/6 s, so a 1/60 s step is exact
    to well under 0.1 pp."""
    n = max(1, round((end - start) / step))
    h = (end - start) / n
    return sum(trace.util(start + (i + 0.5) * h) for i in range(n)) / n
