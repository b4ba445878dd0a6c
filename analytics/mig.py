"""Valid MIG GPU-instance combinations, from the placement table ``mig_placements.csv``.

NVIDIA MIG User Guide, "Concepts" / "Partitioning": a GPU has 8 memory slices and 7 SM
(compute) slices; a GPU instance profile may only be created at one of its allowed start
memory slots, occupying ``size`` consecutive memory slots, and "creation of new GPU instance
will fail if there is overlap with the already occupied memory slices" (NVML,
``nvmlDeviceGetGpuInstancePossiblePlacements_v2``).  So a set of GPU instances can coexist
on one GPU iff there is an assignment of start slots, one allowed start per instance, with
no two instances' memory slots overlapping (and no profile above its "Number of Instances
Available").  That is an exact placement search, not a sum: on A100 40GB 4g.20gb + 3g.20gb
(slots 0-3 and 4-7) is valid, 4g.20gb + 4g.20gb is not (4g.20gb may only start at 0).

The search assumes the instances may be (re)placed freely: the inventory does not record
where an existing instance sits, so a fragmented GPU can refuse a set this module accepts.

Unknown model or profile: ``valid_mig_combination``/``can_add`` return False (the planner
never co-locates what it cannot check); :func:`check` returns the reason in words.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

CSV_PATH = Path(__file__).with_name("mig_placements.csv")
MEMORY_SLOTS = 8  # "a GPU memory slice is roughly one eighth of the total GPU memory"
COMPUTE_SLICES = 7  # "a GPU SM slice is roughly one seventh of the total number of SMs"
_VGPU_MIG_RE = re.compile(r"^(\d)-(\d+)c$")


@dataclass(frozen=True)
class MigProfile:
    model: str  # table model key, as in vgpu_profiles.csv ("a100-40")
    name: str  # "3g.20gb"
    profile_id: int  # nvidia-smi mig -lgip profile ID
    compute_slices: int
    memory_slices: int  # placement size
    max_instances: int
    starts: tuple[int, ...]


@lru_cache(maxsize=4)
def load(path: str | None = None) -> dict[str, dict[str, MigProfile]]:
    """model → profile name → :class:`MigProfile`."""
    with open(path or CSV_PATH, newline="") as f:
        lines = [ln for ln in f if not ln.startswith("#")]
    out: dict[str, dict[str, MigProfile]] = {}
    for r in csv.DictReader(lines):
        p = MigProfile(
            model=r["gpu_model"], name=r["profile"], profile_id=int(r["profile_id"]),
            compute_slices=int(r["compute_slices"]), memory_slices=int(r["memory_slices"]),
            max_instances=int(r["max_instances"]), starts=tuple(int(s) for s in r["starts"].split()),
        )
        out.setdefault(p.model, {})[p.name] = p
    return out


def vgpu_to_mig(vgpu_profile: str) -> str | None:
    """MIG-backed vGPU type → its GPU instance profile: ``4-20c`` (A100-4-20C) → ``4g.20gb``.

    NVIDIA vGPU software names MIG-backed types ``<GPU>-<compute slices>-<framebuffer GB>C``
    after the GPU instance profile ``<compute slices>g.<memory GB>gb`` that backs them.
    """
    m = _VGPU_MIG_RE.match(vgpu_profile.strip().lower())
    return f"{m.group(1)}g.{m.group(2)}gb" if m else None


def placement(model: str, profiles: list[str]) -> list[tuple[str, int]] | None:
    """One non-overlapping placement ``[(profile, start), …]`` of ``profiles``, or None.

    Raises ``KeyError`` for an unknown model or profile (callers wanting a bool use
    :func:`check`).
    """
    table = load()[model]
    ps = [table[n] for n in profiles]
    counts: dict[str, int] = {}
    for p in ps:
        counts[p.name] = counts.get(p.name, 0) + 1
        if counts[p.name] > p.max_instances:
            return None
    if sum(p.compute_slices for p in ps) > COMPUTE_SLICES or sum(p.memory_slices for p in ps) > MEMORY_SLOTS:
        return None
    # largest first: fewest choices first keeps the search tiny (at most 7 instances, 8 slots)
    order = sorted(range(len(ps)), key=lambda i: (-ps[i].memory_slices, len(ps[i].starts), ps[i].name))
    chosen: dict[int, int] = {}

    def place(k: int, used: int) -> bool:
        if k == len(order):
            return True
        p = ps[order[k]]
        for s in p.starts:
            bits = ((1 << p.memory_slices) - 1) << s
            if s + p.memory_slices <= MEMORY_SLOTS and not used & bits:
                chosen[order[k]] = s
                if place(k + 1, used | bits):
                    return True
        return False

    if not place(0, 0):
        return None
    return [(ps[i].name, chosen[i]) for i in range(len(ps))]


def check(model: str | None, profiles: list[str]) -> tuple[bool, str]:
    """Can these GPU instances coexist on one GPU of ``model``? ``(ok, reason)``."""
    table = load()
    if model is None or model not in table:
        return False, f"no MIG placement data for GPU model {model!r}"
    unknown = sorted({n for n in profiles if n not in table[model]})
    if unknown:
        return False, f"unknown MIG profile(s) {', '.join(unknown)} on {model}"
    got = placement(model, profiles)
    if got is None:
        return False, f"no non-overlapping placement of {' + '.join(profiles)} on {model}"
    return True, "placement " + ", ".join(f"{n}@{s}" for n, s in got)


def valid_mig_combination(model: str | None, profiles: list[str]) -> bool:
    """True iff the GPU instances ``profiles`` fit one GPU of ``model`` (False when unknown)."""
    return check(model, profiles)[0]


def can_add(model: str | None, existing: list[str], new: str) -> bool:
    """Can GPU instance ``new`` join a GPU already holding ``existing``?"""
    return check(model, [*existing, new])[0]
