"""The simulated library's core: construction, call plumbing (init refcount, lost GPUs, driver
reloads, injected faults), the fault-injection API the tests drive, and the init / system /
enumeration functions. Split out of :mod:`accelmon.sim.nvml` (pure move).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import pynvml
from pynvml import NVMLError

from accelmon.sim.clock import AcceleratedClock, Clock
from accelmon.sim.nvml_model import (
    MIG_HANDLE_OK,
    SimGpu,
    SimHandle,
    SimMig,
    _api,
    _Injection,
    bus_id,
    bus_id_legacy,
)
from accelmon.sim.spec import SimSpec, load_spec

_NO_INIT_NEEDED = {"nvmlInit", "nvmlInitWithFlags", "nvmlErrorString"}


class SimCore:
    """Plumbing shared by the API mixins. Attribute access falls through to ``pynvml`` for
    constants, structures and error classes; unknown ``nvml*`` functions raise FUNCTION_NOT_FOUND."""

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
            if want in (bus_id(g), bus_id_legacy(g)):
                return g.handle.fresh()
        raise NVMLError(pynvml.NVML_ERROR_NOT_FOUND)

    @_api
    def nvmlDeviceGetIndex(self, handle: SimHandle) -> int:
        return self._handle(handle).gpu.index

    @_api
    def nvmlDeviceGetMinorNumber(self, handle: SimHandle) -> int:
        return self._handle(handle).gpu.index


    # ------------------------------------------------------------------ processes
    def _pids(self, g: SimGpu, mig: SimMig | None) -> list[int]:
        now = self._now()
        if g.fb_used(now) < 0.02 * g.fb_bytes:
            return []
        if g.migs:
            migs = [mig] if mig is not None else g.migs
            return [1000 + 100 * g.index + m.gi_id for m in migs]
        return [1000 + 100 * g.index]
