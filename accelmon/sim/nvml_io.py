"""Simulated NVML functions about traffic and activity: PCIe / NVLink throughput and field
values, processes, and Xid events. Split out of :mod:`accelmon.sim.nvml` (pure move).
"""

from __future__ import annotations

import ctypes
from typing import Any

import pynvml
from pynvml import NVMLError

from accelmon.sim.nvml_core import SimCore
from accelmon.sim.nvml_model import (
    _NVLINK_THROUGHPUT,
    _PCIE_FIELDS,
    NA_ID,
    VGPU_UNSUPPORTED_FIELDS,
    XID_EVENTS,
    SimEventSet,
    SimGpu,
    SimHandle,
    _api,
)
from accelmon.sim.ring import driver_now_us


class IoApi(SimCore):
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

