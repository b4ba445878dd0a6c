"""What the agent's GPU poller keeps and returns: sub-collector names, errors, a GPU's identity,
what survives a re-initialisation (:class:`Carry`), per-sub-collector status and one poll's
snapshot; plus the field-value helpers. Split out of :mod:`accelmon.collector.agent.gpu` (pure move).
"""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass, field
from typing import Any

from accelmon.collector.agent import nvmlerr
from accelmon.collector.agent.gpm import ActivityCarry
from accelmon.collector.agent.integrate import GaugeIntegrator, RingIntegrator

SUBS = ("utilization", "memory", "pcie", "nvlink", "power", "energy", "processes", "activity")
VIRT_MODES = {0: "none", 1: "passthrough", 2: "vgpu", 3: "host_vgpu", 4: "host_vsga"}
VGPU_ABSENT = ("nvlink", "power", "energy")  # a vGPU guest reads these as N/A or 0: never exported
WHOLE_GPU = ("pcie", "nvlink", "power", "energy")  # not per MIG instance
NO_PERMISSION_RETRY_S = 300.0
MAX_PROCESSES = 32
_VALUE_ATTR = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal", 6: "usVal"}


class GpuDown(Exception):
    def __init__(self, code: int, where: str) -> None:
        super().__init__(f"{where}: {nvmlerr.name_of(code)}")
        self.code = code
        self.where = where


class _Unsupported(Exception):
    pass


class _NoPermission(Exception):
    pass


class _Failed(Exception):
    def __init__(self, code: int, where: str) -> None:
        super().__init__(f"{where}: {nvmlerr.name_of(code)}")
        self.code = code


@dataclass(frozen=True)
class GpuIdentity:
    index: int
    uuid: str
    name: str
    pci_bus_id: str
    hostname: str
    serial: str | None = None
    virtualization_mode: str = "unknown"
    vgpu_profile: str | None = None
    mig_mode: bool | None = None
    numa_node: int = -1
    fb_total_bytes: int | None = None
    parent_uuid: str | None = None  # MIG instance: the GPU it is carved from
    gi_id: int | None = None
    gi_profile: str | None = None

    @functools.cached_property
    def labels(self) -> dict[str, str]:
        """dcgm-exporter's label names (``model_name`` instead of dcgm's camelCase ``modelName``, which
        promtool rejects), so existing dashboards can join on ``UUID``/``gpu``/``Hostname``."""
        out = {
            "gpu": str(self.index),
            "UUID": self.uuid,
            "pci_bus_id": self.pci_bus_id,
            "model_name": self.name,
            "Hostname": self.hostname,
        }
        if self.gi_id is not None:
            out["GPU_I_ID"] = str(self.gi_id)
            out["GPU_I_PROFILE"] = self.gi_profile or ""
        return out


@dataclass
class Carry:
    """What survives a re-initialisation of the GPU (so counters stay continuous)."""

    ring: RingIntegrator = field(default_factory=RingIntegrator)
    gauge: GaugeIntegrator = field(default_factory=GaugeIntegrator)
    energy_last_mj: int | None = None
    energy_resets: int = 0
    pcie_est_tx: float = 0.0
    pcie_est_rx: float = 0.0
    pcie_est_t: float = 0.0
    proc_last_ts: int = 0
    util_gauge: float | None = None
    activity: ActivityCarry = field(default_factory=ActivityCarry)  # GPM totals (collector/agent/gpm.py)


@dataclass
class SubState:
    status: str = "unknown"  # ok | unsupported | no_permission | failed | unknown
    reason: str = ""
    retry_at: float = 0.0
    duration_s: float = 0.0
    permission_logged: bool = False


@dataclass(frozen=True)
class GpuSnapshot:
    identity: GpuIdentity
    up: bool
    values: dict[str, float] = field(default_factory=dict)
    nvlink: dict[int, tuple[float, float]] = field(default_factory=dict)
    processes: tuple[tuple[int, str, int | None, float | None], ...] = ()
    subs: dict[str, tuple[str, float]] = field(default_factory=dict)  # name -> (status, duration_s)
    util_source: str = ""
    pcie_source: str = ""
    activity_source: str = ""  # gpm | none ("" while down)



_sget = ctypes.Structure.__getattribute__  # skips pynvml's slow Python-level __getattribute__ (same values)


def _value(v: Any, value_type: int) -> float:
    return float(getattr(v, _VALUE_ATTR.get(int(value_type), "ullVal")))


def _field(f: Any) -> tuple[int, float]:
    """(nvmlReturn, value) of one c_nvmlFieldValue_t."""
    rc = int(_sget(f, "nvmlReturn"))
    if rc != 0:
        return rc, 0.0
    return 0, _value(_sget(f, "value"), _sget(f, "valueType"))

