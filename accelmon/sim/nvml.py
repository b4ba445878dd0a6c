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

from typing import Any

from accelmon.sim.clock import Clock
from accelmon.sim.gpm import SimGpm
from accelmon.sim.nvml_core import SimCore
from accelmon.sim.nvml_device import DeviceApi
from accelmon.sim.nvml_io import IoApi
from accelmon.sim.nvml_model import (
    MIG_HANDLE_OK,
    MIG_PARENT_UNSUPPORTED,
    NA_ID,
    VGPU_UNSUPPORTED,
    VGPU_UNSUPPORTED_FIELDS,
    XID_EVENTS,
    SimEventSet,
    SimGpu,
    SimHandle,
    SimMig,
    SimState,
    _api,
)
from accelmon.sim.spec import SimSpec

__all__ = [
    "MIG_HANDLE_OK",
    "MIG_PARENT_UNSUPPORTED",
    "NA_ID",
    "VGPU_UNSUPPORTED",
    "VGPU_UNSUPPORTED_FIELDS",
    "XID_EVENTS",
    "SimCore",
    "SimEventSet",
    "SimGpu",
    "SimHandle",
    "SimMig",
    "SimNVML",
    "SimState",
    "simulated_functions",
]


class SimNVML(DeviceApi, IoApi):
    """The simulated library (the module docstring says how to use it)."""

    def __init__(
        self,
        spec: SimSpec | str,
        *,
        clock: Clock | None = None,
        library_present: bool = True,
        uptime_s: float = 3600.0,
    ) -> None:
        super().__init__(spec, clock=clock, library_present=library_present, uptime_s=uptime_s)
        self.gpm = SimGpm(self)  # GPU Performance Monitoring (accelmon/sim/gpm.py)

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



def simulated_functions() -> list[str]:
    """Names of the pynvml functions this module simulates."""
    out = []
    for name in dir(SimNVML):
        if name.startswith("nvml") and callable(getattr(SimNVML, name)):
            out.append(name)
    return sorted(out)
