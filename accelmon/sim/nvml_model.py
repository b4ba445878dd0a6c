"""The simulated devices behind :class:`~accelmon.sim.nvml.SimNVML`: handles, MIG instances,
event sets, one GPU's state and counters, what a vGPU guest / MIG handle cannot read, and the
``_api`` decorator that counts calls and applies injected faults.

Split out of :mod:`accelmon.sim.nvml` (pure move); the function-level API lives in
:mod:`accelmon.sim.nvml_core`, :mod:`accelmon.sim.nvml_device` and :mod:`accelmon.sim.nvml_io`.
"""

from __future__ import annotations

import functools
import hashlib
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import pynvml

from accelmon.sim.clock import Clock
from accelmon.sim.spec import GpuSpec, SimSpec, guest_gpu_bus, mig_profile_mib
from accelmon.sim.traces import Trace, make_trace, noise


class SimState(Protocol):
    """What the devices, the sample ring (:mod:`accelmon.sim.ring`) and GPM (:mod:`accelmon.sim.gpm`)
    read of the simulated library (implemented by :class:`~accelmon.sim.nvml_core.SimCore`)."""

    spec: SimSpec
    clock: Clock
    start: float
    driver_load_t: float
    period_us: int
    ring_size: int
    gpus: list[SimGpu]
    _lock: threading.RLock

    def _enter(self, name: str, handle: SimHandle | None) -> float: ...


F = TypeVar("F", bound=Callable[..., Any])

# what a vGPU guest cannot read (NVIDIA vGPU docs: only 3D/compute, memory-controller,
# encoder/decoder utilization and framebuffer usage are reported inside a guest)
VGPU_UNSUPPORTED = frozenset(
    {
        "nvmlDeviceGetPowerUsage",
        "nvmlDeviceGetTotalEnergyConsumption",
        "nvmlDeviceGetPowerManagementLimit",
        "nvmlDeviceGetEnforcedPowerLimit",
        "nvmlDeviceGetTemperature",
        "nvmlDeviceGetClockInfo",
        "nvmlDeviceGetMaxClockInfo",
        "nvmlDeviceGetFanSpeed",
        "nvmlDeviceGetPcieThroughput",
        "nvmlDeviceGetCurrPcieLinkGeneration",
        "nvmlDeviceGetCurrPcieLinkWidth",
        "nvmlDeviceGetSerial",
        "nvmlDeviceGetMemoryAffinity",
        "nvmlDeviceGetMigMode",
        "nvmlDeviceGetMaxMigDeviceCount",
    }
)
VGPU_UNSUPPORTED_FIELDS = frozenset(
    {
        pynvml.NVML_FI_DEV_PCIE_COUNT_TX_BYTES,
        pynvml.NVML_FI_DEV_PCIE_COUNT_RX_BYTES,
        pynvml.NVML_FI_DEV_NVLINK_LINK_COUNT,
        pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX,
        pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX,
        pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_RAW_TX,
        pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_RAW_RX,
        pynvml.NVML_FI_DEV_POWER_INSTANT,
    }
)
# what a MIG device handle answers; everything else is NOT_SUPPORTED on it
MIG_HANDLE_OK = frozenset(
    {
        "nvmlDeviceGetUUID",
        "nvmlDeviceGetName",
        "nvmlDeviceGetMemoryInfo",
        "nvmlDeviceGetGpuInstanceId",
        "nvmlDeviceGetComputeInstanceId",
        "nvmlDeviceIsMigDeviceHandle",
        "nvmlDeviceGetDeviceHandleFromMigDeviceHandle",
        "nvmlDeviceGetComputeRunningProcesses",
        "nvmlDeviceGetPciInfo",
        "nvmlDeviceGetPciInfo_v3",
        "nvmlDeviceGetBrand",
    }
)
# in MIG mode the parent GPU has no whole-GPU utilization
_PCIE_FIELDS = frozenset({pynvml.NVML_FI_DEV_PCIE_COUNT_TX_BYTES, pynvml.NVML_FI_DEV_PCIE_COUNT_RX_BYTES})
_NVLINK_THROUGHPUT = frozenset(
    {
        pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX,
        pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX,
        pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_RAW_TX,
        pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_RAW_RX,
    }
)
MIG_PARENT_UNSUPPORTED = frozenset(
    {"nvmlDeviceGetSamples", "nvmlDeviceGetUtilizationRates", "nvmlDeviceGetProcessUtilization"}
)
XID_EVENTS = pynvml.nvmlEventTypeXidCriticalError
NA_ID = 0xFFFFFFFF  # gpuInstanceId / computeInstanceId of a non-MIG process


def _uuid(seed: int, *parts: object) -> str:
    h = hashlib.sha256(repr((seed,) + parts).encode()).hexdigest()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


class SimHandle:
    """Opaque device handle (the real one is a ``c_nvmlDevice_t`` pointer)."""

    __slots__ = ("gpu", "mig")

    def __init__(self, gpu: SimGpu, mig: SimMig | None = None) -> None:
        self.gpu = gpu
        self.mig = mig

    def __eq__(self, other: object) -> bool:  # like two c_nvmlDevice_t pointers with the same address
        return isinstance(other, SimHandle) and other.gpu is self.gpu and other.mig is self.mig

    def __hash__(self) -> int:
        return hash((id(self.gpu), id(self.mig)))

    def fresh(self) -> SimHandle:
        """A new handle object for the same device, as every real pynvml call returns."""
        return SimHandle(self.gpu, self.mig)

    def __repr__(self) -> str:
        return f"<SimHandle gpu={self.gpu.index}{'' if self.mig is None else f' mig={self.mig.gi_id}'}>"


@dataclass
class SimMig:
    gi_id: int
    ci_id: int
    profile: str
    uuid: str
    fb_bytes: int
    handle: SimHandle | None = None


class SimEventSet:
    """Opaque event set (the real one is a ``c_nvmlEventSet_t`` pointer)."""

    def __init__(self) -> None:
        self.gpus: dict[int, int] = {}  # gpu index -> registered event mask
        self.freed = False


class SimGpu:
    """State of one simulated GPU: identity, counters, trace, faults."""

    def __init__(self, sim: SimState, index: int, spec: GpuSpec) -> None:
        self.sim = sim
        self.index = index
        self.spec = spec
        self.model = spec.model
        self.mode = spec.mode
        self.uuid = "GPU-" + _uuid(sim.spec.seed, "gpu", index)
        self.serial = str(1320000000000 + int(self.uuid[4:12], 16) % 9999999999)
        self.bus = guest_gpu_bus(index)  # guest (virtual) PCI bus of the device's pciSlotNumber
        self.trace: Trace = make_trace(spec.trace, spec.seed, base_dir=sim.spec.base_dir, anchor=sim.start)
        if self.mode == "vgpu":
            self.fb_bytes = _vgpu_fb_mib(spec.vgpu_profile or "") * 2**20
            self.name = f"GRID {spec.vgpu_profile}"
        else:
            self.fb_bytes = self.model.fb_mib * 2**20
            self.name = self.model.name
        self.handle = SimHandle(self)
        self.migs: list[SimMig] = []
        for i, prof in enumerate(spec.mig):
            m = SimMig(i + 1, 0, prof, "MIG-" + _uuid(sim.spec.seed, "mig", index, i), mig_profile_mib(prof) * 2**20)
            m.handle = SimHandle(self, m)
            self.migs.append(m)
        self.nvlinks = spec.nvlinks
        self.unsupported = set(spec.unsupported)
        self.unsupported_fields = {int(getattr(pynvml, n)) for n in self.unsupported if n.startswith("NVML_FI_")}
        self.lost = False
        self.xids: deque[int] = deque(maxlen=1024)
        self.reset_counters(sim.driver_load_t, warm=True)

    # ------------------------------------------------------------------ counters
    def reset_counters(self, t: float, warm: bool = False) -> None:
        up = max(0.0, self.sim.start - t) if warm else 0.0  # driver loaded before the sim started
        self.energy_mj = (self.model.idle_w * 1.6) * 1000.0 * up if self.mode != "vgpu" else 0.0
        self.pcie_tx = self.model.pcie_bytes_per_s * 0.1 * up
        self.pcie_rx = self.model.pcie_bytes_per_s * 0.2 * up
        n = self.nvlinks
        self.nvl_tx = [self.model.nvlink_kib_per_s * 0.1 * up] * n
        self.nvl_rx = [self.model.nvlink_kib_per_s * 0.1 * up] * n
        self.t_last = max(t, self.sim.start) if warm else t

    def util_at(self, t: float) -> float:
        return float(self.trace.util(t))

    def power_mw(self, t: float) -> int:
        u = self.util_at(t)
        m = self.model
        w = m.idle_w + (m.max_w - m.idle_w) * (u / 100.0) ** 0.9
        w *= 0.97 + 0.06 * noise(self.spec.seed + 7, math.floor(t))
        return int(w * 1000)

    def advance(self, now: float) -> None:
        """Integrate energy and byte counters up to ``now`` (lazily, when read)."""
        dt = now - self.t_last
        if dt <= 0:
            return
        steps = min(200, max(1, math.ceil(dt / 5.0)))
        h = dt / steps
        m = self.model
        for i in range(steps):
            t = self.t_last + (i + 1) * h
            u = self.util_at(t) / 100.0
            self.energy_mj += self.power_mw(t) * h  # mW × s = mJ
            self.pcie_tx += m.pcie_bytes_per_s * (0.02 + 0.6 * u) * h
            self.pcie_rx += m.pcie_bytes_per_s * (0.03 + 0.9 * u) * h
            for link in range(len(self.nvl_tx)):
                self.nvl_tx[link] += m.nvlink_kib_per_s * (0.01 + u) * h
                self.nvl_rx[link] += m.nvlink_kib_per_s * (0.01 + 0.95 * u) * h
        self.t_last = now

    def fb_used(self, t: float) -> int:
        b = self.trace.mem_bytes(t)
        if b is None:
            b = int(self.fb_bytes * self.trace.mem_fraction(t))
        return max(0, min(int(b), self.fb_bytes))

    def is_unsupported(self, name: str) -> bool:
        if name in self.unsupported:
            return True
        if self.mode == "vgpu" and name in VGPU_UNSUPPORTED and not self.spec.vgpu_reports_zero:
            return True
        return bool(self.migs) and name in MIG_PARENT_UNSUPPORTED

    def field_unsupported(self, fid: int) -> bool:
        if fid in self.unsupported_fields:
            return True
        if self.mode == "vgpu" and self.spec.vgpu_pcie_fields and fid in _PCIE_FIELDS:
            return False
        return self.mode == "vgpu" and fid in VGPU_UNSUPPORTED_FIELDS and not self.spec.vgpu_reports_zero

    def vgpu_zero(self, name: str) -> bool:
        return self.mode == "vgpu" and self.spec.vgpu_reports_zero and name in VGPU_UNSUPPORTED


def _vgpu_fb_mib(profile: str) -> int:
    """'A100-4C' → 4096, 'T4-8Q' → 8192 (the number before the series letter is GiB)."""
    tail = profile.rsplit("-", 1)[-1]
    digits = "".join(ch for ch in tail if ch.isdigit())
    return int(digits or "4") * 1024


@dataclass
class _Injection:
    code: int
    index: int | None
    times: int | None
    delay_s: float = 0.0


def _api(fn: F) -> F:
    """Mark a method as a simulated NVML function: count the call and apply global faults."""
    name = fn.__name__

    @functools.wraps(fn)
    def wrapper(self: SimState, *args: Any, **kwargs: Any) -> Any:
        handle = args[0] if args and isinstance(args[0], SimHandle) else None
        delay = self._enter(name, handle)
        if delay:
            time.sleep(delay)
        with self._lock:
            return fn(self, *args, **kwargs)

    wrapper.__sim_api__ = True  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]



def bus_id(g: SimGpu) -> str:
    return pynvml.NVML_DEVICE_PCI_BUS_ID_FMT % (0, g.bus, 0)


def bus_id_legacy(g: SimGpu) -> str:
    return pynvml.NVML_DEVICE_PCI_BUS_ID_LEGACY_FMT % (0, g.bus, 0)

