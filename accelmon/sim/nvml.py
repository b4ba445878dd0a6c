"""A simulated NVML at the pynvml function level, for CI machines without a GPU.

:class:`SimNVML` has the same function names, argument names and order, return types and
units as ``pynvml`` (nvidia-ml-py), and raises the *real* ``pynvml.NVMLError`` subclasses,
so code written against it runs unchanged against the real library::

    nv = SimNVML(load_spec("dgx-a100"))   # or: import pynvml as nv
    nv.nvmlInit()
    h = nv.nvmlDeviceGetHandleByIndex(0)
    nv.nvmlDeviceGetPowerUsage(h)          # int, milliwatts
    nv.NVML_FI_DEV_PCIE_COUNT_TX_BYTES     # constants, structs and error classes come from pynvml

Return objects are pynvml's own ctypes structures (``c_nvmlMemory_t``, ``nvmlPciInfo_t``,
``c_nvmlSample_t``, ``c_nvmlFieldValue_t`` arrays, ``c_nvmlUtilization_t``, …).  Any
``nvml*`` function not simulated raises ``NVMLError_FunctionNotFound``, which is what an older
driver does for a function it lacks.

Time comes from an injected clock (:mod:`accelmon.sim.clock`), so utilization driven by a
trace (:mod:`accelmon.sim.traces`) can run accelerated or be stepped by a test.

Fault injection (used by the agent's tests): :meth:`SimNVML.lose_gpu`,
:meth:`SimNVML.driver_unload` / :meth:`SimNVML.driver_load` (a driver reload: energy and
byte counters restart at 0), :meth:`SimNVML.inject` (any error code on any function, e.g.
``NO_PERMISSION``, optionally after a delay), :meth:`SimNVML.inject_field`, :meth:`SimNVML.xid`.
``NOT_FOUND`` for "no new samples" is simply what ``nvmlDeviceGetSamples`` does.

Where this simulation may differ from a real driver is listed in ``docs/nvml.md``.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pynvml
from pynvml import NVMLError

from accelmon.sim.clock import AcceleratedClock, Clock
from accelmon.sim.gpm import SimGpm
from accelmon.sim.ring import driver_now_us, last_period_util, ring_samples
from accelmon.sim.spec import GpuSpec, SimSpec, guest_gpu_bus, load_spec, mig_profile_mib
from accelmon.sim.traces import Trace, make_trace, noise

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

    def __init__(self, sim: SimNVML, index: int, spec: GpuSpec) -> None:
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
    def wrapper(self: SimNVML, *args: Any, **kwargs: Any) -> Any:
        handle = args[0] if args and isinstance(args[0], SimHandle) else None
        delay = self._enter(name, handle)
        if delay:
            time.sleep(delay)
        with self._lock:
            return fn(self, *args, **kwargs)

    wrapper.__sim_api__ = True  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]


_NO_INIT_NEEDED = {"nvmlInit", "nvmlInitWithFlags", "nvmlErrorString"}


class SimNVML:
    """The simulated library. Attribute access falls through to ``pynvml`` for constants,
    structures and error classes; unknown ``nvml*`` functions raise FUNCTION_NOT_FOUND."""

    def __init__(
        self,
        spec: SimSpec | str,
        *,
        clock: Clock | None = None,
        library_present: bool = True,
        uptime_s: float = 3600.0,
    ) -> None:
        if isinstance(spec, str):
            spec = load_spec(spec)
        self.spec = spec
        self.clock: Clock = clock or AcceleratedClock(speed=spec.speed)
        self.start = self.clock.time()
        self.driver_load_t = self.start - uptime_s
        self.library_present = library_present
        self.period_us = max(1, round(spec.sample_period_s * 1e6))
        ring = spec.ring_size
        if ring is None:  # ~16 s of samples at 1/6 s; scaled up when time runs accelerated
            ring = int(100 * max(1.0, spec.speed))
        self.ring_size = ring
        self._lock = threading.RLock()
        self._refcount = 0
        self._driver_down: int | None = None
        self._injections: dict[str, list[_Injection]] = {}
        self._field_faults: dict[tuple[int, int | None, int | None], int] = {}
        self.calls: Counter[str] = Counter()
        self.calls_by_gpu: Counter[tuple[str, int]] = Counter()
        self.gpus = [SimGpu(self, i, g) for i, g in enumerate(spec.gpus)]
        self.gpm = SimGpm(self)  # GPU Performance Monitoring (accelmon/sim/gpm.py)

    # ------------------------------------------------------------------ plumbing
    def __getattr__(self, name: str) -> Any:
        if name.startswith("nvml") and callable(getattr(pynvml, name, None)):

            def not_found(*args: Any, **kwargs: Any) -> Any:
                raise NVMLError(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)

            not_found.__name__ = name
            return not_found
        try:
            return getattr(pynvml, name)
        except AttributeError:
            raise AttributeError(f"{type(self).__name__} has no attribute {name!r}") from None

    def _enter(self, name: str, handle: SimHandle | None) -> float:
        with self._lock:
            self.calls[name] += 1
            if handle is not None:
                self.calls_by_gpu[(name, handle.gpu.index)] += 1
            if not self.library_present:
                raise NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
            if name not in _NO_INIT_NEEDED and self._refcount == 0:
                raise NVMLError(pynvml.NVML_ERROR_UNINITIALIZED)
            if self._driver_down is not None and name != "nvmlErrorString":
                raise NVMLError(self._driver_down)
            if handle is not None and handle.gpu.lost:
                raise NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
            delay = 0.0
            idx = handle.gpu.index if handle is not None else None
            for inj in self._injections.get(name, []):
                if inj.index is None or inj.index == idx:
                    if inj.times is not None:
                        inj.times -= 1
                        if inj.times <= 0:
                            self._injections[name].remove(inj)
                    if inj.code == pynvml.NVML_SUCCESS:
                        delay = inj.delay_s
                        break
                    if inj.delay_s:
                        time.sleep(inj.delay_s)
                    raise NVMLError(inj.code)
            if handle is not None:
                g = handle.gpu
                if handle.mig is not None and name not in MIG_HANDLE_OK:
                    raise NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
                if handle.mig is None and g.is_unsupported(name):
                    raise NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
            return delay

    @staticmethod
    def _handle(h: Any) -> SimHandle:
        if not isinstance(h, SimHandle):
            raise NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return h

    def _now(self) -> float:
        return self.clock.time()

    # ------------------------------------------------------------------ fault injection
    def inject(
        self, func: str, code: int, *, index: int | None = None, times: int | None = None, delay_s: float = 0.0
    ) -> None:
        """Make ``func`` raise ``code`` (for GPU ``index`` or all), ``times`` times or until cleared.

        ``code = NVML_SUCCESS`` with ``delay_s`` makes the call slow instead (a hung driver)."""
        with self._lock:
            self._injections.setdefault(func, []).append(_Injection(code, index, times, delay_s))

    def inject_field(self, field_id: int, code: int, *, index: int | None = None, scope: int | None = None) -> None:
        """Make one field (optionally one scope, e.g. one NVLink link) of ``nvmlDeviceGetFieldValues``
        return ``code`` in its ``nvmlReturn``."""
        with self._lock:
            self._field_faults[(field_id, index, scope)] = code

    def clear_faults(self) -> None:
        with self._lock:
            self._injections.clear()
            self._field_faults.clear()
            for g in self.gpus:
                g.lost = False

    def lose_gpu(self, index: int) -> None:
        """The GPU fell off the bus: every call on it raises GPU_IS_LOST."""
        with self._lock:
            self.gpus[index].lost = True

    def recover_gpu(self, index: int) -> None:
        with self._lock:
            self.gpus[index].lost = False

    def driver_unload(self, code: int = pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH) -> None:
        """Start a driver reload: every call raises ``code`` (LIB_RM_VERSION_MISMATCH, DRIVER_NOT_LOADED)."""
        with self._lock:
            self._driver_down = code

    def driver_load(self) -> None:
        """Finish a driver reload: energy, PCIe and NVLink counters and the sample ring restart."""
        with self._lock:
            self._driver_down = None
            now = self._now()
            self.driver_load_t = now
            for g in self.gpus:
                g.reset_counters(now)
                g.xids.clear()

    def xid(self, index: int, xid: int) -> None:
        """The driver reports Xid ``xid`` on GPU ``index``."""
        with self._lock:
            self.gpus[index].xids.append(xid)

    # ------------------------------------------------------------------ init / system
    @_api
    def nvmlInit(self) -> None:
        self._refcount += 1
        return None

    @_api
    def nvmlInitWithFlags(self, flags: int) -> None:
        self._refcount += 1
        return None

    @_api
    def nvmlShutdown(self) -> None:
        if self._refcount > 0:
            self._refcount -= 1
        return None

    @_api
    def nvmlErrorString(self, result: int) -> str:
        s = NVMLError._errcode_to_string.get(result)
        return s if s is not None else ("Success" if result == 0 else "Unknown Error")

    @_api
    def nvmlSystemGetDriverVersion(self) -> str:
        return self.spec.driver_version

    @_api
    def nvmlSystemGetNVMLVersion(self) -> str:
        return self.spec.nvml_version

    @_api
    def nvmlSystemGetCudaDriverVersion(self) -> int:
        return self.spec.cuda_driver_version

    @_api
    def nvmlSystemGetCudaDriverVersion_v2(self) -> int:
        return self.spec.cuda_driver_version

    @_api
    def nvmlSystemGetProcessName(self, pid: int) -> str:
        for g in self.gpus:
            if pid in self._pids(g, None):
                return "python3"
        raise NVMLError(pynvml.NVML_ERROR_NOT_FOUND)

    # ------------------------------------------------------------------ enumeration
    @_api
    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    @_api
    def nvmlDeviceGetHandleByIndex(self, index: int) -> SimHandle:
        if not isinstance(index, int) or not 0 <= index < len(self.gpus):
            raise NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        g = self.gpus[index]
        if g.lost:
            raise NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        return g.handle.fresh()

    @_api
    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> SimHandle:
        for g in self.gpus:
            if g.uuid == uuid:
                if g.lost:
                    raise NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
                return g.handle.fresh()
            for m in g.migs:
                if m.uuid == uuid and m.handle is not None:
                    return m.handle.fresh()
        raise NVMLError(pynvml.NVML_ERROR_NOT_FOUND)

    @_api
    def nvmlDeviceGetHandleByPciBusId(self, pciBusId: str) -> SimHandle:
        want = pciBusId.upper()
        for g in self.gpus:
            if want in (_bus_id(g), _bus_id_legacy(g)):
                return g.handle.fresh()
        raise NVMLError(pynvml.NVML_ERROR_NOT_FOUND)

    @_api
    def nvmlDeviceGetIndex(self, handle: SimHandle) -> int:
        return self._handle(handle).gpu.index

    @_api
    def nvmlDeviceGetMinorNumber(self, handle: SimHandle) -> int:
        return self._handle(handle).gpu.index

    # ------------------------------------------------------------------ identity
    @_api
    def nvmlDeviceGetUUID(self, handle: SimHandle) -> str:
        h = self._handle(handle)
        return h.mig.uuid if h.mig is not None else h.gpu.uuid

    @_api
    def nvmlDeviceGetName(self, handle: SimHandle) -> str:
        h = self._handle(handle)
        if h.mig is not None:
            return f"{h.gpu.name} MIG {h.mig.profile}"
        return h.gpu.name

    @_api
    def nvmlDeviceGetBrand(self, handle: SimHandle) -> int:
        h = self._handle(handle)
        return pynvml.NVML_BRAND_NVIDIA_VCS if h.gpu.mode == "vgpu" else pynvml.NVML_BRAND_TESLA

    @_api
    def nvmlDeviceGetSerial(self, handle: SimHandle) -> str:
        return self._handle(handle).gpu.serial

    @_api
    def nvmlDeviceGetPciInfo_v3(self, handle: SimHandle) -> pynvml.nvmlPciInfo_t:
        g = self._handle(handle).gpu
        info = pynvml.nvmlPciInfo_t()
        info.busIdLegacy = _bus_id_legacy(g).encode()
        info.domain = 0
        info.bus = g.bus
        info.device = 0
        info.pciDeviceId = g.model.pci_device_id
        info.pciSubSystemId = 0x145F10DE
        info.busId = _bus_id(g).encode()
        return info

    def nvmlDeviceGetPciInfo(self, handle: SimHandle) -> pynvml.nvmlPciInfo_t:
        return self.nvmlDeviceGetPciInfo_v3(handle)

    @_api
    def nvmlDeviceGetVirtualizationMode(self, handle: SimHandle) -> int:
        mode = self._handle(handle).gpu.mode
        return {
            "none": pynvml.NVML_GPU_VIRTUALIZATION_MODE_NONE,
            "passthrough": pynvml.NVML_GPU_VIRTUALIZATION_MODE_PASSTHROUGH,
            "vgpu": pynvml.NVML_GPU_VIRTUALIZATION_MODE_VGPU,
        }[mode]

    @_api
    def nvmlDeviceGetNumaNodeId(self, handle: SimHandle) -> int:
        return self._handle(handle).gpu.spec.numa_node

    @_api
    def nvmlDeviceGetMemoryAffinity(self, handle: SimHandle, nodeSetSize: int, scope: int) -> Any:
        g = self._handle(handle).gpu
        arr = (ctypes.c_ulonglong * nodeSetSize)()
        node = g.spec.numa_node
        if node // 64 < nodeSetSize:
            arr[node // 64] = 1 << (node % 64)
        return arr

    @_api
    def nvmlDeviceGetCudaComputeCapability(self, handle: SimHandle) -> tuple[int, int]:
        return self._handle(handle).gpu.model.cc

    # ------------------------------------------------------------------ MIG
    @_api
    def nvmlDeviceGetMigMode(self, device: SimHandle) -> list[int]:
        g = self._handle(device).gpu
        if not g.model.mig_capable:
            raise NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        m = pynvml.NVML_DEVICE_MIG_ENABLE if g.migs else pynvml.NVML_DEVICE_MIG_DISABLE
        return [m, m]

    @_api
    def nvmlDeviceGetMaxMigDeviceCount(self, device: SimHandle) -> int:
        g = self._handle(device).gpu
        if not g.model.mig_capable:
            raise NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return 7

    @_api
    def nvmlDeviceGetMigDeviceHandleByIndex(self, device: SimHandle, index: int) -> SimHandle:
        g = self._handle(device).gpu
        if not g.migs:
            raise NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if not 0 <= index < 7:
            raise NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if index >= len(g.migs):
            raise NVMLError(pynvml.NVML_ERROR_NOT_FOUND)
        h = g.migs[index].handle
        assert h is not None
        return h.fresh()

    @_api
    def nvmlDeviceIsMigDeviceHandle(self, device: SimHandle) -> ctypes.c_uint:
        # pynvml returns the c_uint object itself here, not its .value
        return ctypes.c_uint(1 if self._handle(device).mig is not None else 0)

    @_api
    def nvmlDeviceGetGpuInstanceId(self, device: SimHandle) -> int:
        h = self._handle(device)
        if h.mig is None:
            raise NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return h.mig.gi_id

    @_api
    def nvmlDeviceGetComputeInstanceId(self, device: SimHandle) -> int:
        h = self._handle(device)
        if h.mig is None:
            raise NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return h.mig.ci_id

    @_api
    def nvmlDeviceGetDeviceHandleFromMigDeviceHandle(self, migDevice: SimHandle) -> SimHandle:
        h = self._handle(migDevice)
        if h.mig is None:
            raise NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return h.gpu.handle.fresh()

    # ------------------------------------------------------------------ memory / utilization
    @_api
    def nvmlDeviceGetMemoryInfo(self, handle: SimHandle, version: int | None = None) -> Any:
        h = self._handle(handle)
        g = h.gpu
        now = self._now()
        if h.mig is not None:
            total = h.mig.fb_bytes
            used = int(total * min(1.0, g.fb_used(now) / max(1, g.fb_bytes)))
        elif g.migs:
            total = g.fb_bytes
            used = sum(int(m.fb_bytes * g.fb_used(now) / g.fb_bytes) for m in g.migs)
        else:
            total, used = g.fb_bytes, g.fb_used(now)
        if version:
            mem = pynvml.c_nvmlMemory_v2_t()
            mem.version = version
            mem.total, mem.reserved, mem.free, mem.used = total, 0, total - used, used
            return mem
        mem = pynvml.c_nvmlMemory_t()
        mem.total, mem.free, mem.used = total, total - used, used
        return mem

    @_api
    def nvmlDeviceGetBAR1MemoryInfo(self, handle: SimHandle) -> Any:
        bar = pynvml.c_nvmlBAR1Memory_t()
        bar.bar1Total = 64 * 2**30
        bar.bar1Used = 2 * 2**20
        bar.bar1Free = bar.bar1Total - bar.bar1Used
        return bar

    @_api
    def nvmlDeviceGetUtilizationRates(self, handle: SimHandle) -> Any:
        g = self._handle(handle).gpu
        u = last_period_util(self, g)  # the past sample period, as NVML documents it
        util = pynvml.c_nvmlUtilization_t()
        util.gpu = int(round(u))
        util.memory = int(round(u * 0.55))
        return util

    @_api
    def nvmlDeviceGetSamples(self, device: SimHandle, sampling_type: int, timeStamp: int) -> tuple[int, list[Any]]:
        g = self._handle(device).gpu
        if sampling_type != pynvml.NVML_GPU_UTILIZATION_SAMPLES:
            raise NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return (pynvml.NVML_VALUE_TYPE_UNSIGNED_INT, ring_samples(self, g, timeStamp))

    @_api
    def nvmlDeviceGetEncoderUtilization(self, handle: SimHandle) -> list[int]:
        return [0, 167000]

    @_api
    def nvmlDeviceGetDecoderUtilization(self, handle: SimHandle) -> list[int]:
        return [0, 167000]

    # ------------------------------------------------------------------ power / energy
    @_api
    def nvmlDeviceGetPowerUsage(self, handle: SimHandle) -> int:
        g = self._handle(handle).gpu
        if g.vgpu_zero("nvmlDeviceGetPowerUsage"):
            return 0
        return g.power_mw(self._now())

    @_api
    def nvmlDeviceGetTotalEnergyConsumption(self, handle: SimHandle) -> int:
        g = self._handle(handle).gpu
        if g.vgpu_zero("nvmlDeviceGetTotalEnergyConsumption"):
            return 0
        g.advance(self._now())
        return int(g.energy_mj)

    @_api
    def nvmlDeviceGetPowerManagementLimit(self, handle: SimHandle) -> int:
        g = self._handle(handle).gpu
        return 0 if g.vgpu_zero("nvmlDeviceGetPowerManagementLimit") else int(g.model.max_w * 1000)

    @_api
    def nvmlDeviceGetEnforcedPowerLimit(self, handle: SimHandle) -> int:
        g = self._handle(handle).gpu
        return 0 if g.vgpu_zero("nvmlDeviceGetEnforcedPowerLimit") else int(g.model.max_w * 1000)

    @_api
    def nvmlDeviceGetTemperature(self, handle: SimHandle, sensor: int) -> int:
        g = self._handle(handle).gpu
        if g.vgpu_zero("nvmlDeviceGetTemperature"):
            return 0
        return int(30 + 45 * g.util_at(self._now()) / 100)

    @_api
    def nvmlDeviceGetClockInfo(self, handle: SimHandle, type: int) -> int:
        g = self._handle(handle).gpu
        return 0 if g.vgpu_zero("nvmlDeviceGetClockInfo") else (1410 if g.util_at(self._now()) > 0 else 210)

    @_api
    def nvmlDeviceGetMaxClockInfo(self, handle: SimHandle, type: int) -> int:
        return 1410

    @_api
    def nvmlDeviceGetPerformanceState(self, handle: SimHandle) -> int:
        g = self._handle(handle).gpu
        return 0 if g.util_at(self._now()) > 0 else 8

    @_api
    def nvmlDeviceGetFanSpeed(self, handle: SimHandle) -> int:
        raise NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)  # passively cooled data-center boards

    @_api
    def nvmlDeviceGetEccMode(self, handle: SimHandle) -> list[int]:
        return [pynvml.NVML_FEATURE_ENABLED, pynvml.NVML_FEATURE_ENABLED]

    @_api
    def nvmlDeviceGetComputeMode(self, handle: SimHandle) -> int:
        return pynvml.NVML_COMPUTEMODE_DEFAULT

    @_api
    def nvmlDeviceGetPersistenceMode(self, handle: SimHandle) -> int:
        return pynvml.NVML_FEATURE_ENABLED

    # ------------------------------------------------------------------ PCIe / NVLink
    @_api
    def nvmlDeviceGetPcieThroughput(self, device: SimHandle, counter: int) -> int:
        g = self._handle(device).gpu
        if g.vgpu_zero("nvmlDeviceGetPcieThroughput"):
            return 0
        u = g.util_at(self._now()) / 100.0
        rate = g.model.pcie_bytes_per_s * ((0.02 + 0.6 * u) if counter == pynvml.NVML_PCIE_UTIL_TX_BYTES else (0.03 + 0.9 * u))
        return int(rate / 1000)  # KB/s

    @_api
    def nvmlDeviceGetCurrPcieLinkGeneration(self, handle: SimHandle) -> int:
        return 4

    @_api
    def nvmlDeviceGetCurrPcieLinkWidth(self, handle: SimHandle) -> int:
        return 16

    @_api
    def nvmlDeviceGetFieldValues(self, handle: SimHandle, fieldIds: list[Any]) -> Any:
        g = self._handle(handle).gpu
        now = self._now()
        g.advance(now)
        values = (pynvml.c_nvmlFieldValue_t * len(fieldIds))()
        ts = int(now * 1e6)
        put = ctypes.Structure.__setattr__  # pynvml's Python-level __setattr__ is slow; same effect
        for i, fid in enumerate(fieldIds):
            try:
                f, scope = fid
            except TypeError:
                f, scope = fid, 0
            v = values[i]
            put(v, "fieldId", f)
            put(v, "scopeId", scope)
            put(v, "timestamp", ts)
            rc, vtype, attr, val = self._field(g, int(f), int(scope), now)
            put(v, "nvmlReturn", rc)
            if rc == pynvml.NVML_SUCCESS:
                put(v, "valueType", vtype)
                setattr(v.value, attr, val)
        return values

    def _field(self, g: SimGpu, fid: int, scope: int, now: float) -> tuple[int, int, str, int]:
        """(nvmlReturn, valueType, union member, value) of one field."""
        ff = self._field_faults
        if ff:
            for key in ((fid, g.index, scope), (fid, None, scope), (fid, g.index, None), (fid, None, None)):
                if key in ff:
                    return ff[key], 0, "", 0
        if g.field_unsupported(fid):
            return pynvml.NVML_ERROR_NOT_SUPPORTED, 0, "", 0
        zero = (g.mode == "vgpu" and g.spec.vgpu_reports_zero and fid in VGPU_UNSUPPORTED_FIELDS
                and not (g.spec.vgpu_pcie_fields and fid in _PCIE_FIELDS))
        ull, ui = pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG, pynvml.NVML_VALUE_TYPE_UNSIGNED_INT
        ok = pynvml.NVML_SUCCESS
        links = g.nvlinks
        if fid == pynvml.NVML_FI_DEV_PCIE_COUNT_TX_BYTES:
            return ok, ull, "ullVal", 0 if zero else int(g.pcie_tx)
        if fid == pynvml.NVML_FI_DEV_PCIE_COUNT_RX_BYTES:
            return ok, ull, "ullVal", 0 if zero else int(g.pcie_rx)
        if fid == pynvml.NVML_FI_DEV_NVLINK_LINK_COUNT:
            if links == 0 and not zero:
                return pynvml.NVML_ERROR_NOT_SUPPORTED, 0, "", 0
            return ok, ui, "uiVal", links
        if fid in _NVLINK_THROUGHPUT:
            if zero:
                return ok, ull, "ullVal", 0
            if links == 0:
                return pynvml.NVML_ERROR_NOT_SUPPORTED, 0, "", 0
            if scope >= links:
                return pynvml.NVML_ERROR_INVALID_ARGUMENT, 0, "", 0
            tx = fid in (pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX, pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_RAW_TX)
            kib = g.nvl_tx[scope] if tx else g.nvl_rx[scope]
            if fid in (pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_RAW_TX, pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_RAW_RX):
                kib *= 1.06  # protocol overhead
            return ok, ull, "ullVal", int(kib)  # KiB, as pynvml documents
        if fid == pynvml.NVML_FI_DEV_POWER_INSTANT:
            return ok, ui, "uiVal", 0 if zero else g.power_mw(now)
        return pynvml.NVML_ERROR_NOT_SUPPORTED, 0, "", 0

    # ------------------------------------------------------------------ processes
    def _pids(self, g: SimGpu, mig: SimMig | None) -> list[int]:
        now = self._now()
        if g.fb_used(now) < 0.02 * g.fb_bytes:
            return []
        if g.migs:
            migs = [mig] if mig is not None else g.migs
            return [1000 + 100 * g.index + m.gi_id for m in migs]
        return [1000 + 100 * g.index]

    @_api
    def nvmlDeviceGetComputeRunningProcesses(self, handle: SimHandle) -> list[Any]:
        h = self._handle(handle)
        g = h.gpu
        now = self._now()
        out = []
        for pid in self._pids(g, h.mig):
            if g.migs:
                m = next(mm for mm in g.migs if 1000 + 100 * g.index + mm.gi_id == pid)
                used = int(m.fb_bytes * g.fb_used(now) / g.fb_bytes)
                gi, ci = m.gi_id, m.ci_id
            else:
                used, gi, ci = g.fb_used(now), NA_ID, NA_ID
            out.append(
                pynvml.nvmlFriendlyObject(
                    {"pid": pid, "usedGpuMemory": used, "gpuInstanceId": gi, "computeInstanceId": ci}
                )
            )
        return out

    @_api
    def nvmlDeviceGetProcessUtilization(self, handle: SimHandle, timeStamp: int) -> list[Any]:
        g = self._handle(handle).gpu
        pids = self._pids(g, None)
        if not pids:
            # pynvml raises NVMLError with the driver's return code; with no processes the
            # size query returns NVML_SUCCESS, so the caller sees NVMLError(0)
            raise NVMLError(pynvml.NVML_SUCCESS)
        p = self.period_us
        newest = (driver_now_us(self) // p) * p
        if newest <= timeStamp:
            raise NVMLError(pynvml.NVML_ERROR_NOT_FOUND)
        u = g.util_at(newest / 1e6 - self.spec.sample_clock_offset_s)
        out = []
        for pid in pids:
            s = pynvml.c_nvmlProcessUtilizationSample_t()
            s.pid, s.timeStamp = pid, newest
            s.smUtil, s.memUtil, s.encUtil, s.decUtil = int(round(u)), int(round(u * 0.55)), 0, 0
            out.append(s)
        return out

    # ------------------------------------------------------------------ GPM (accelmon/sim/gpm.py)
    @_api
    def nvmlGpmQueryDeviceSupport(self, device: SimHandle) -> Any:
        return self.gpm.query_support(self._handle(device))

    @_api
    def nvmlGpmSampleAlloc(self) -> Any:
        return self.gpm.alloc()

    @_api
    def nvmlGpmSampleFree(self, gpmSample: Any) -> None:
        return self.gpm.free(gpmSample)

    @_api
    def nvmlGpmSampleGet(self, device: SimHandle, gpmSample: Any) -> Any:
        return self.gpm.sample_get(self._handle(device), None, gpmSample)

    @_api
    def nvmlGpmMigSampleGet(self, device: SimHandle, gpuInstanceId: int, gpmSample: Any) -> Any:
        return self.gpm.sample_get(self._handle(device), int(gpuInstanceId), gpmSample)

    @_api
    def nvmlGpmMetricsGet(self, metricsGet: Any) -> Any:
        return self.gpm.metrics_get(metricsGet)

    # ------------------------------------------------------------------ events (Xid)
    @_api
    def nvmlEventSetCreate(self) -> SimEventSet:
        return SimEventSet()

    @_api
    def nvmlDeviceGetSupportedEventTypes(self, handle: SimHandle) -> int:
        g = self._handle(handle).gpu
        if g.mode == "vgpu":
            return XID_EVENTS
        return (
            pynvml.nvmlEventTypeSingleBitEccError
            | pynvml.nvmlEventTypeDoubleBitEccError
            | pynvml.nvmlEventTypePState
            | pynvml.nvmlEventTypeXidCriticalError
            | pynvml.nvmlEventTypeClock
        )

    @_api
    def nvmlDeviceRegisterEvents(self, handle: SimHandle, eventTypes: int, eventSet: SimEventSet) -> None:
        g = self._handle(handle).gpu
        if not isinstance(eventSet, SimEventSet) or eventSet.freed:
            raise NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        eventSet.gpus[g.index] = eventSet.gpus.get(g.index, 0) | int(eventTypes)
        return None

    @_api
    def nvmlEventSetWait_v2(self, eventSet: SimEventSet, timeoutms: int) -> Any:
        if not isinstance(eventSet, SimEventSet) or eventSet.freed:
            raise NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        for idx, mask in eventSet.gpus.items():
            g = self.gpus[idx]
            if mask & XID_EVENTS and g.xids and not g.lost:
                xid = g.xids.popleft()
                return pynvml.nvmlFriendlyObject(
                    {
                        "device": g.handle.fresh(),  # real: a new c_nvmlDevice_t per event
                        "eventType": XID_EVENTS,
                        "eventData": xid,
                        "gpuInstanceId": NA_ID,
                        "computeInstanceId": NA_ID,
                    }
                )
        raise NVMLError(pynvml.NVML_ERROR_TIMEOUT)  # returned at once: the simulation does not block

    def nvmlEventSetWait(self, eventSet: SimEventSet, timeoutms: int) -> Any:
        return self.nvmlEventSetWait_v2(eventSet, timeoutms)

    @_api
    def nvmlEventSetFree(self, eventSet: SimEventSet) -> None:
        if isinstance(eventSet, SimEventSet):
            eventSet.freed = True
        return None


def _bus_id(g: SimGpu) -> str:
    return pynvml.NVML_DEVICE_PCI_BUS_ID_FMT % (0, g.bus, 0)


def _bus_id_legacy(g: SimGpu) -> str:
    return pynvml.NVML_DEVICE_PCI_BUS_ID_LEGACY_FMT % (0, g.bus, 0)


def simulated_functions() -> list[str]:
    """Names of the pynvml functions this module simulates."""
    out = []
    for name in dir(SimNVML):
        if name.startswith("nvml") and callable(getattr(SimNVML, name)):
            out.append(name)
    return sorted(out)
