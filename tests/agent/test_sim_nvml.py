"""The simulated NVML checked against what pynvml (nvidia-ml-py) and the NVML docs say.

Signatures are compared with the installed pynvml; return types are pynvml's own structures;
errors are pynvml's own NVMLError subclasses; units: mW, mJ, bytes, KiB (NVLink), µs timestamps.
"""

from __future__ import annotations

import inspect
import re

import pynvml
import pytest

from accelmon.errors import UserError
from accelmon.sim.nvml import SimNVML, simulated_functions
from accelmon.sim.spec import parse_spec

from .conftest import sim_of


def test_every_simulated_function_has_pynvml_signature() -> None:
    names = simulated_functions()
    assert len(names) >= 55
    for name in names:
        real = getattr(pynvml, name)  # the function must exist in pynvml
        want = [(p.name, p.default) for p in inspect.signature(real).parameters.values()]
        got = [(p.name, p.default) for p in list(inspect.signature(getattr(SimNVML, name)).parameters.values())[1:]]
        assert got == want, name


def test_errors_are_the_real_pynvml_subclasses(clock) -> None:
    nv = sim_of("mixed", clock)
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        nv.nvmlDeviceGetCount()
    nv.nvmlInit()
    with pytest.raises(pynvml.NVMLError_FunctionNotFound):
        nv.nvmlDeviceGetSupportedClocksEventReasons(nv.nvmlDeviceGetHandleByIndex(0))
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        nv.nvmlDeviceGetHandleByIndex(99)
    vgpu = nv.nvmlDeviceGetHandleByIndex(3)
    with pytest.raises(pynvml.NVMLError) as ei:
        nv.nvmlDeviceGetPowerUsage(vgpu)
    assert type(ei.value) is pynvml.NVMLError_NotSupported
    assert ei.value.value == pynvml.NVML_ERROR_NOT_SUPPORTED
    # constants and structures fall through to pynvml itself
    assert nv.NVML_FI_DEV_PCIE_COUNT_TX_BYTES == pynvml.NVML_FI_DEV_PCIE_COUNT_TX_BYTES
    assert nv.NVMLError is pynvml.NVMLError


def test_library_missing_is_library_not_found(clock) -> None:
    nv = sim_of("single", clock, library_present=False)
    with pytest.raises(pynvml.NVMLError_LibraryNotFound):
        nv.nvmlInit()


def test_identity_types_and_formats(clock) -> None:
    nv = sim_of("mixed", clock)
    nv.nvmlInit()
    assert nv.nvmlDeviceGetCount() == 4
    h = nv.nvmlDeviceGetHandleByIndex(0)
    assert nv.nvmlDeviceGetName(h) == "NVIDIA A100-SXM4-40GB"
    uuid = nv.nvmlDeviceGetUUID(h)
    assert re.fullmatch(r"GPU-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", uuid)
    again = nv.nvmlDeviceGetHandleByUUID(uuid)
    assert again == h and again is not h  # same device, a fresh object per call like pynvml's pointers
    pci = nv.nvmlDeviceGetPciInfo(h)
    assert isinstance(pci, pynvml.nvmlPciInfo_t)
    assert re.fullmatch(r"[0-9A-F]{8}:[0-9A-F]{2}:[0-9A-F]{2}\.0", pci.busId)  # NVML_DEVICE_PCI_BUS_ID_FMT
    assert re.fullmatch(r"[0-9A-F]{4}:[0-9A-F]{2}:[0-9A-F]{2}\.0", pci.busIdLegacy)
    assert pci.pciDeviceId == 0x20B010DE
    assert nv.nvmlDeviceGetHandleByPciBusId(pci.busId) == h
    assert nv.nvmlDeviceGetVirtualizationMode(h) == pynvml.NVML_GPU_VIRTUALIZATION_MODE_PASSTHROUGH
    assert nv.nvmlDeviceGetVirtualizationMode(nv.nvmlDeviceGetHandleByIndex(3)) == pynvml.NVML_GPU_VIRTUALIZATION_MODE_VGPU
    assert isinstance(nv.nvmlSystemGetDriverVersion(), str)
    assert nv.nvmlDeviceGetMigMode(h) == [pynvml.NVML_DEVICE_MIG_DISABLE, pynvml.NVML_DEVICE_MIG_DISABLE]
    with pytest.raises(pynvml.NVMLError_NotSupported):
        nv.nvmlDeviceGetMigMode(nv.nvmlDeviceGetHandleByIndex(2))  # L4: no MIG


def test_memory_power_energy_units(clock) -> None:
    nv = sim_of({"gpu": [{"model": "A100", "trace": "constant:100"}]}, clock)
    nv.nvmlInit()
    h = nv.nvmlDeviceGetHandleByIndex(0)
    mem = nv.nvmlDeviceGetMemoryInfo(h)
    assert isinstance(mem, pynvml.c_nvmlMemory_t)
    assert mem.total == 40960 * 2**20 and mem.used + mem.free == mem.total
    util = nv.nvmlDeviceGetUtilizationRates(h)
    assert isinstance(util, pynvml.c_nvmlUtilization_t) and util.gpu == 100
    mw = nv.nvmlDeviceGetPowerUsage(h)
    assert isinstance(mw, int) and 350_000 <= mw <= 420_000  # milliwatts at full load
    e0 = nv.nvmlDeviceGetTotalEnergyConsumption(h)
    clock.advance(10)
    e1 = nv.nvmlDeviceGetTotalEnergyConsumption(h)
    assert isinstance(e1, int)
    assert e1 - e0 == pytest.approx(mw * 10, rel=0.1)  # mJ = mW × s


def test_samples_ring_timestamps_and_not_found(clock) -> None:
    nv = sim_of({"gpu": [{"trace": "bursty_inference"}], "ring_size": 100}, clock)
    nv.nvmlInit()
    h = nv.nvmlDeviceGetHandleByIndex(0)
    vt, samples = nv.nvmlDeviceGetSamples(h, pynvml.NVML_GPU_UTILIZATION_SAMPLES, 0)
    assert vt == pynvml.NVML_VALUE_TYPE_UNSIGNED_INT
    assert len(samples) == 100 and all(isinstance(s, pynvml.c_nvmlSample_t) for s in samples)
    ts = [s.timeStamp for s in samples]
    assert ts == sorted(ts) and len(set(ts)) == 100
    assert {b - a for a, b in zip(ts, ts[1:], strict=False)} == {166667}  # 1/6 s in µs
    assert abs(ts[-1] / 1e6 - clock.time()) < 0.2  # µs of the CPU clock
    assert all(0 <= s.sampleValue.uiVal <= 100 for s in samples)
    with pytest.raises(pynvml.NVMLError_NotFound):  # nothing newer than the last one seen
        nv.nvmlDeviceGetSamples(h, pynvml.NVML_GPU_UTILIZATION_SAMPLES, ts[-1])
    clock.advance(1.0)
    _, new = nv.nvmlDeviceGetSamples(h, pynvml.NVML_GPU_UTILIZATION_SAMPLES, ts[-1])
    assert len(new) == 6 and new[0].timeStamp > ts[-1]
    clock.advance(60.0)  # longer than the ring holds: the oldest samples are gone
    _, late = nv.nvmlDeviceGetSamples(h, pynvml.NVML_GPU_UTILIZATION_SAMPLES, new[-1].timeStamp)
    assert len(late) == 100 and late[0].timeStamp - new[-1].timeStamp > 40e6  # 60 s minus the ~16.5 s the ring holds


def test_field_values_pcie_and_nvlink(clock) -> None:
    nv = sim_of("mixed", clock)
    nv.nvmlInit()
    a100, l4, vgpu = (nv.nvmlDeviceGetHandleByIndex(i) for i in (0, 2, 3))
    ids = [
        pynvml.NVML_FI_DEV_PCIE_COUNT_TX_BYTES,
        pynvml.NVML_FI_DEV_PCIE_COUNT_RX_BYTES,
        pynvml.NVML_FI_DEV_NVLINK_LINK_COUNT,
        (pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX, 0),
        (pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX, 11),
        (pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX, 12),  # only links 0..11 exist
        pynvml.NVML_FI_DEV_RETIRED_PENDING,
    ]
    v = nv.nvmlDeviceGetFieldValues(a100, ids)
    assert all(isinstance(x, pynvml.c_nvmlFieldValue_t) for x in v)
    assert [x.nvmlReturn for x in v] == [0, 0, 0, 0, 0, pynvml.NVML_ERROR_INVALID_ARGUMENT, pynvml.NVML_ERROR_NOT_SUPPORTED]
    assert v[0].valueType == pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG
    assert v[2].value.uiVal == 12 and v[3].scopeId == 0 and v[4].scopeId == 11
    tx0, nvl0 = v[0].value.ullVal, v[3].value.ullVal
    clock.advance(5)
    v2 = nv.nvmlDeviceGetFieldValues(a100, ids)
    assert v2[0].value.ullVal > tx0 and v2[3].value.ullVal > nvl0  # counters only grow
    assert v2[0].timestamp == int(clock.time() * 1e6)
    l4v = nv.nvmlDeviceGetFieldValues(l4, ids[:4])
    assert [x.nvmlReturn for x in l4v] == [0, 0, pynvml.NVML_ERROR_NOT_SUPPORTED, pynvml.NVML_ERROR_NOT_SUPPORTED]
    gv = nv.nvmlDeviceGetFieldValues(vgpu, ids[:2])
    assert [x.nvmlReturn for x in gv] == [pynvml.NVML_ERROR_NOT_SUPPORTED] * 2
    nv.inject_field(pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX, pynvml.NVML_ERROR_INVALID_ARGUMENT, index=0, scope=3)
    v3 = nv.nvmlDeviceGetFieldValues(a100, [(pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX, s) for s in (2, 3)])
    assert [x.nvmlReturn for x in v3] == [0, pynvml.NVML_ERROR_INVALID_ARGUMENT]


def test_vgpu_guest_reads(clock) -> None:
    nv = sim_of({"gpu": [{"mode": "vgpu", "vgpu_profile": "A100-4C"}, {"mode": "vgpu", "vgpu_reports_zero": True}]}, clock)
    nv.nvmlInit()
    h, z = nv.nvmlDeviceGetHandleByIndex(0), nv.nvmlDeviceGetHandleByIndex(1)
    assert nv.nvmlDeviceGetName(h) == "GRID A100-4C"
    assert nv.nvmlDeviceGetMemoryInfo(h).total == 4 * 2**30
    for fn in (nv.nvmlDeviceGetPowerUsage, nv.nvmlDeviceGetTotalEnergyConsumption, nv.nvmlDeviceGetSerial):
        with pytest.raises(pynvml.NVMLError_NotSupported):
            fn(h)
    assert nv.nvmlDeviceGetPowerUsage(z) == 0  # "reads N/A or zero"
    assert nv.nvmlDeviceGetUtilizationRates(h).gpu >= 0


def test_mig_handles(clock) -> None:
    nv = sim_of("mig", clock)
    nv.nvmlInit()
    h = nv.nvmlDeviceGetHandleByIndex(0)
    assert nv.nvmlDeviceGetMigMode(h) == [pynvml.NVML_DEVICE_MIG_ENABLE] * 2
    assert nv.nvmlDeviceGetMaxMigDeviceCount(h) == 7
    m0 = nv.nvmlDeviceGetMigDeviceHandleByIndex(h, 0)
    with pytest.raises(pynvml.NVMLError_NotFound):
        nv.nvmlDeviceGetMigDeviceHandleByIndex(h, 2)
    assert nv.nvmlDeviceIsMigDeviceHandle(m0)  # a c_uint, as pynvml returns it
    assert not nv.nvmlDeviceIsMigDeviceHandle(h)
    assert nv.nvmlDeviceGetUUID(m0).startswith("MIG-")
    assert nv.nvmlDeviceGetName(m0).endswith("MIG 3g.20gb")
    assert nv.nvmlDeviceGetGpuInstanceId(m0) == 1
    assert nv.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(m0) == h
    assert nv.nvmlDeviceGetMemoryInfo(m0).total < nv.nvmlDeviceGetMemoryInfo(h).total
    with pytest.raises(pynvml.NVMLError_NotSupported):  # no whole-GPU utilization in MIG mode
        nv.nvmlDeviceGetSamples(h, pynvml.NVML_GPU_UTILIZATION_SAMPLES, 0)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        nv.nvmlDeviceGetPowerUsage(m0)
    assert nv.nvmlDeviceGetPowerUsage(h) > 0


def test_processes_and_process_utilization(clock) -> None:
    nv = sim_of({"gpu": [{"trace": "constant:60"}, {"trace": {"generator": "idle_allocated", "memory": 0.0}}]}, clock)
    nv.nvmlInit()
    busy, empty = nv.nvmlDeviceGetHandleByIndex(0), nv.nvmlDeviceGetHandleByIndex(1)
    procs = nv.nvmlDeviceGetComputeRunningProcesses(busy)
    assert len(procs) == 1 and procs[0].usedGpuMemory > 0 and procs[0].gpuInstanceId == 0xFFFFFFFF
    assert nv.nvmlSystemGetProcessName(procs[0].pid) == "python3"
    samples = nv.nvmlDeviceGetProcessUtilization(busy, 0)
    assert isinstance(samples[0], pynvml.c_nvmlProcessUtilizationSample_t) and samples[0].smUtil == 60
    with pytest.raises(pynvml.NVMLError_NotFound):
        nv.nvmlDeviceGetProcessUtilization(busy, samples[0].timeStamp)
    assert nv.nvmlDeviceGetComputeRunningProcesses(empty) == []
    # no processes: pynvml raises NVMLError with code 0 (NVML_SUCCESS), the base class
    with pytest.raises(pynvml.NVMLError) as ei:
        nv.nvmlDeviceGetProcessUtilization(empty, 0)
    assert ei.value.value == 0 and type(ei.value) is pynvml.NVMLError


def test_xid_events(clock) -> None:
    nv = sim_of("mixed", clock)
    nv.nvmlInit()
    es = nv.nvmlEventSetCreate()
    h = nv.nvmlDeviceGetHandleByIndex(1)
    assert nv.nvmlDeviceGetSupportedEventTypes(h) & pynvml.nvmlEventTypeXidCriticalError
    nv.nvmlDeviceRegisterEvents(h, pynvml.nvmlEventTypeXidCriticalError, es)
    with pytest.raises(pynvml.NVMLError_Timeout):
        nv.nvmlEventSetWait(es, 0)
    nv.xid(1, 79)
    nv.xid(0, 13)  # not registered: not delivered
    ev = nv.nvmlEventSetWait(es, 0)
    assert ev.eventType == pynvml.nvmlEventTypeXidCriticalError and ev.eventData == 79
    assert nv.nvmlDeviceGetUUID(ev.device) == nv.nvmlDeviceGetUUID(h)
    with pytest.raises(pynvml.NVMLError_Timeout):
        nv.nvmlEventSetWait(es, 0)


def test_faults_gpu_lost_driver_reload_injection(clock) -> None:
    nv = sim_of("mixed", clock)
    nv.nvmlInit()
    h0, h1 = nv.nvmlDeviceGetHandleByIndex(0), nv.nvmlDeviceGetHandleByIndex(1)
    nv.lose_gpu(1)
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        nv.nvmlDeviceGetMemoryInfo(h1)
    assert nv.nvmlDeviceGetMemoryInfo(h0).total > 0  # the others keep working
    nv.recover_gpu(1)
    assert nv.nvmlDeviceGetMemoryInfo(h1).total > 0

    clock.advance(100)
    e_before = nv.nvmlDeviceGetTotalEnergyConsumption(h0)
    nv.driver_unload()
    with pytest.raises(pynvml.NVMLError_LibRmVersionMismatch):
        nv.nvmlDeviceGetTotalEnergyConsumption(h0)
    with pytest.raises(pynvml.NVMLError_LibRmVersionMismatch):
        nv.nvmlInit()
    clock.advance(30)
    nv.driver_load()
    clock.advance(2)
    e_after = nv.nvmlDeviceGetTotalEnergyConsumption(h0)
    assert e_after < e_before and e_after < 2 * 420_000  # restarted at 0 on load
    _, s = nv.nvmlDeviceGetSamples(h0, pynvml.NVML_GPU_UTILIZATION_SAMPLES, 0)
    assert len(s) <= 13  # the ring restarted at the load (2 s of samples)

    nv.inject("nvmlDeviceGetPowerUsage", pynvml.NVML_ERROR_NO_PERMISSION, index=0, times=1)
    with pytest.raises(pynvml.NVMLError_NoPermission):
        nv.nvmlDeviceGetPowerUsage(h0)
    assert nv.nvmlDeviceGetPowerUsage(h0) > 0  # only once
    assert nv.calls_by_gpu[("nvmlDeviceGetPowerUsage", 0)] == 2


def test_ring_runs_dry_on_an_idle_gpu(clock) -> None:
    """ring_runs_dry: the driver takes no sample while idle, so nothing new → NOT_FOUND."""
    nv = sim_of({"gpu": [{"trace": "constant:0", "ring_runs_dry": True}, {"trace": "constant:0"},
                         {"trace": "constant:25", "ring_runs_dry": True}]}, clock)
    nv.nvmlInit()
    dry, wet, busy = (nv.nvmlDeviceGetHandleByIndex(i) for i in range(3))
    with pytest.raises(pynvml.NVMLError_NotFound):
        nv.nvmlDeviceGetSamples(dry, pynvml.NVML_GPU_UTILIZATION_SAMPLES, 0)
    _, s = nv.nvmlDeviceGetSamples(wet, pynvml.NVML_GPU_UTILIZATION_SAMPLES, 0)
    assert s and all(x.sampleValue.uiVal == 0 for x in s)  # the default driver keeps sampling zeros
    _, s = nv.nvmlDeviceGetSamples(busy, pynvml.NVML_GPU_UTILIZATION_SAMPLES, 0)
    assert s and all(x.sampleValue.uiVal == 25 for x in s)
    assert nv.nvmlDeviceGetUtilizationRates(dry).gpu == 0


def test_sample_clock_offset_moves_timestamps_not_values(clock) -> None:
    nv = sim_of({"gpu": [{"trace": "constant:40"}], "sample_clock_offset_s": -1_699_990_000.0}, clock)
    nv.nvmlInit()
    h = nv.nvmlDeviceGetHandleByIndex(0)
    _, s = nv.nvmlDeviceGetSamples(h, pynvml.NVML_GPU_UTILIZATION_SAMPLES, 0)
    newest = max(x.timeStamp for x in s)
    assert abs(newest / 1e6 - (clock.time() - 1_699_990_000.0)) < 1  # a clock since "boot", not the epoch
    assert {x.sampleValue.uiVal for x in s} == {40}
    clock.advance(1.0)
    _, s = nv.nvmlDeviceGetSamples(h, pynvml.NVML_GPU_UTILIZATION_SAMPLES, newest)
    assert len(s) == 6 and min(x.timeStamp for x in s) > newest


def test_utilization_rates_report_the_past_sample_period(clock) -> None:
    """NVML: "Percent of time over the past sample period": the ring's newest sample, not a later instant."""
    nv = sim_of({"gpu": [{"trace": {"generator": "bursty_inference", "seed": 3, "window_s": 2.0}}]}, clock)
    nv.nvmlInit()
    h = nv.nvmlDeviceGetHandleByIndex(0)
    for _ in range(30):
        clock.advance(0.37)
        _, s = nv.nvmlDeviceGetSamples(h, pynvml.NVML_GPU_UTILIZATION_SAMPLES, 0)
        assert nv.nvmlDeviceGetUtilizationRates(h).gpu == max(s, key=lambda x: x.timeStamp).sampleValue.uiVal


@pytest.mark.parametrize("bad", [{"sample_clock_offset_s": "boot"}, {"gpu": [{"ring_runs_dry": "yes"}]}])
def test_bad_ring_options_are_one_clear_line(bad) -> None:
    raw = {"gpu": [{}], **bad}
    with pytest.raises(UserError) as ei:
        parse_spec(raw, "spec.toml")
    key = "sample_clock_offset_s" if "sample_clock_offset_s" in bad else "gpu[0].ring_runs_dry"
    assert key in str(ei.value) and "\n" not in str(ei.value)
