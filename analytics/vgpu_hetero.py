"""Per-host heterogeneous time-sliced vGPU: may different profiles share one physical GPU?

The answer depends on each host's ESXi version and on its NVIDIA Virtual GPU Manager (the
ESXi VIB), not on the vCenter version; the rules live in ``vgpu_heterogeneity.csv`` with
their sources. Each capability is ``True`` (evidence says allowed), ``False`` (evidence says
not: ESXi below the minimum) or ``None`` (unknown: a version missing); the planner treats
``None`` as not allowed.

Evidence used for the vGPU manager:

* the host's GPUs already reporting ``vgpuMode = mixedSize`` (``config.graphicsInfo``): the
  manager put them in mixed-size mode, so it supports it (and mixed series, which mixed-size
  mode includes: User Guide 17.0, 2.1.4);
* otherwise a *lower bound*: the guest driver of a vGPU guest on the host (agent
  ``driver_version`` with ``virtualization_mode = vgpu``). That is the guest driver, not the
  manager, but vGPU Release Notes ("Compatibility Requirements for the NVIDIA vGPU Manager and
  Guest VM Driver") allow only a manager of the same release or a later branch, so the manager
  is at least that branch. A bound below the minimum proves nothing (unknown, not False).

vCenter exposes no property with the VIB version; without either piece of evidence the
manager is unknown.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

CSV_PATH = Path(__file__).with_name("vgpu_heterogeneity.csv")
# driver branch → NVIDIA vGPU software release, from the "NVIDIA vGPU Software Driver Versions"
# tables of the release notes (19.0: manager 580.65.05; 17.x / NVIDIA AI Enterprise 5.0: 550.54).
# Only verified branches are listed; a branch between two maps to the lower (a safe lower bound).
DRIVER_BRANCH_RELEASE: dict[int, tuple[int, int]] = {550: (17, 0), 580: (19, 0)}


@dataclass(frozen=True)
class HostVersions:
    host: str
    esxi_version: str | None  # config.product.version, "8.0.3"
    esxi_build: str | None = None  # config.product.build (kept for the evidence; the version decides)
    vgpu_manager_min: str | None = None  # a driver version the manager is known to be at or above
    vgpu_mode: str | None = None  # the host's reported GPU vgpuMode values (comma-joined)


@dataclass(frozen=True)
class Rule:
    capability: str
    min_esxi: tuple[int, ...]
    min_release: tuple[int, ...]


@lru_cache(maxsize=2)
def rules(path: str | None = None) -> dict[str, Rule]:
    with open(path or CSV_PATH, newline="") as f:
        lines = [ln for ln in f if not ln.startswith("#")]
    out = {}
    for r in csv.DictReader(lines):
        out[r["capability"]] = Rule(r["capability"], _ver(r["min_esxi_version"]) or (),
                                    _ver(r["min_vgpu_release"]) or ())
    return out


def _ver(s: str | None) -> tuple[int, ...] | None:
    """``"8.0.3"`` → ``(8, 0, 3)``; None for anything that is not dotted integers."""
    if not s:
        return None
    try:
        return tuple(int(x) for x in s.strip().split("."))
    except ValueError:
        return None


def _ge(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    n = max(len(a), len(b))
    return a + (0,) * (n - len(a)) >= b + (0,) * (n - len(b))


def release_floor(driver_version: str | None) -> tuple[int, ...] | None:
    """Lowest vGPU software release a driver version implies (``550.54.15`` → ``(17, 0)``)."""
    v = _ver(driver_version)
    if not v:
        return None
    known = [rel for br, rel in DRIVER_BRANCH_RELEASE.items() if br <= v[0]]
    return max(known) if known else None


def _decide(rule: Rule, esxi: tuple[int, ...] | None, release: tuple[int, ...] | None) -> tuple[bool | None, str]:
    want = f"ESXi >= {'.'.join(map(str, rule.min_esxi))} and vGPU >= {'.'.join(map(str, rule.min_release))}"
    if esxi is None:
        return None, f"{rule.capability}: ESXi version unknown (needs {want})"
    if not _ge(esxi, rule.min_esxi):
        return False, f"{rule.capability}: ESXi {'.'.join(map(str, esxi))} (needs {want})"
    if release is None or not _ge(release, rule.min_release):
        return None, f"{rule.capability}: vGPU manager release unknown (needs {want})"
    return True, f"{rule.capability}: ESXi {'.'.join(map(str, esxi))}, vGPU >= {'.'.join(map(str, release))}"


def heterogeneous_allowed(host: HostVersions) -> tuple[bool | None, bool | None, str]:
    """``(same_size_mixed_series, mixed_size, reason)`` for one host (None = unknown)."""
    rs = rules()
    modes = {m.strip() for m in (host.vgpu_mode or "").split(",")}
    if "mixedSize" in modes:
        return True, True, f"{host.host}: GPUs report vgpuMode mixedSize (the manager runs mixed-size mode)"
    esxi = _ver(host.esxi_version)
    release = release_floor(host.vgpu_manager_min)
    series, r1 = _decide(rs["same_size_mixed_series"], esxi, release)
    size, r2 = _decide(rs["mixed_size"], esxi, release)
    return series, size, f"{host.host}: {r1}; {r2}"
