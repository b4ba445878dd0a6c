"""Simulated NVML functions about one device: identity, MIG, memory and utilization, power,
energy, clocks and modes. Split out of :mod:`accelmon.sim.nvml` (pure move).
"""

from __future__ import annotations

import ctypes
from typing import Any

import pynvml
from pynvml import NVMLError

from accelmon.sim.nvml_core import SimCore
from accelmon.sim.nvml_model import SimHandle, _api, bus_id, bus_id_legacy
from accelmon.sim.ring import last_period_util, ring_samples


class DeviceApi(SimCore):
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
        info.busIdLegacy = bus_id_legacy(g).encode()
        info.domain = 0
        info.bus = g.bus
        info.device = 0
        info.pciDeviceId = g.model.pci_device_id
        info.pciSubSystemId = 0x145F10DE
        info.busId = bus_id(g).encode()
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

