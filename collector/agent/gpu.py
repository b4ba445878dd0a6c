"""One GPU (or MIG instance) as the agent sees it: identity, support probing, one poll.

Each sub-collector (utilization, memory, pcie, nvlink, power, energy, processes) keeps a
status: ``ok``, ``unsupported`` (NOT_SUPPORTED / FUNCTION_NOT_FOUND, or not available in a
vGPU guest: cached, never called again), ``no_permission`` (logged once, retried every few
minutes), ``failed`` (this poll; its series are left out so a failure never looks like an
idle GPU).  GPU_IS_LOST and driver-reload errors raise :class:`GpuDown` to the agent, which
reports the GPU down and re-initialises it with backoff.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from pynvml import NVMLError

from accelmon.collector.agent import nvmlerr
from accelmon.collector.agent.gpm import ActivityCarry, GpmReader
from accelmon.collector.agent.identity import pci_numa_node
from accelmon.collector.agent.integrate import GaugeIntegrator, RingIntegrator

log = logging.getLogger("accelmon.agent")

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


def _opt(nv: Any, fname: str, *args: Any) -> Any:
    """Optional identity field: None when unsupported/not permitted; GpuDown when the GPU is gone."""
    try:
        return getattr(nv, fname)(*args)
    except NVMLError as e:
        c = nvmlerr.code_of(e)
        if c in nvmlerr.DOWN:
            raise GpuDown(c, fname) from None
        return None


def read_identity(
    nv: Any, handle: Any, index: int, hostname: str, sysfs_root: str | None, parent: GpuIdentity | None = None
) -> GpuIdentity:
    """Identity of a GPU (or, with ``parent``, of a MIG instance). Raises GpuDown."""
    try:
        uuid = nv.nvmlDeviceGetUUID(handle)
    except NVMLError as e:
        raise GpuDown(nvmlerr.code_of(e), "nvmlDeviceGetUUID") from None
    name = _opt(nv, "nvmlDeviceGetName", handle) or "unknown"
    mem = _opt(nv, "nvmlDeviceGetMemoryInfo", handle)
    fb_total = int(mem.total) if mem is not None else None
    if parent is not None:
        gi = _opt(nv, "nvmlDeviceGetGpuInstanceId", handle)
        profile = name.split(" MIG ", 1)[1] if " MIG " in name else None
        return GpuIdentity(
            index=parent.index,
            uuid=uuid,
            name=name,
            pci_bus_id=parent.pci_bus_id,
            hostname=hostname,
            virtualization_mode=parent.virtualization_mode,
            mig_mode=True,
            numa_node=parent.numa_node,
            fb_total_bytes=fb_total,
            parent_uuid=parent.uuid,
            gi_id=gi,
            gi_profile=profile,
        )
    pci = _opt(nv, "nvmlDeviceGetPciInfo", handle)
    bus = str(pci.busId) if pci is not None else ""
    serial = _opt(nv, "nvmlDeviceGetSerial", handle)
    vm = _opt(nv, "nvmlDeviceGetVirtualizationMode", handle)
    virt = VIRT_MODES.get(int(vm), str(vm)) if vm is not None else "unknown"
    profile = None
    if virt == "vgpu":
        profile = name
        for prefix in ("GRID ", "NVIDIA "):
            if profile.startswith(prefix):
                profile = profile[len(prefix) :]
    mig = _opt(nv, "nvmlDeviceGetMigMode", handle)
    mig_mode = bool(mig[0]) if mig is not None else None
    numa = pci_numa_node(bus, sysfs_root) if (sysfs_root and bus) else None
    if numa is None:
        numa = _opt(nv, "nvmlDeviceGetNumaNodeId", handle)
    if numa is None:
        aff = _opt(nv, "nvmlDeviceGetMemoryAffinity", handle, 1, 0)  # NVML_AFFINITY_SCOPE_NODE
        if aff is not None and int(aff[0]):
            numa = (int(aff[0]) & -int(aff[0])).bit_length() - 1
    return GpuIdentity(
        index=index,
        uuid=uuid,
        name=name,
        pci_bus_id=bus,
        hostname=hostname,
        serial=serial or None,
        virtualization_mode=virt,
        vgpu_profile=profile,
        mig_mode=mig_mode,
        numa_node=-1 if numa is None else int(numa),
        fb_total_bytes=fb_total,
    )


class GpuPoller:
    """Polls one device handle; keeps support status and counters between polls."""

    def __init__(
        self,
        nv: Any,
        handle: Any,
        identity: GpuIdentity,
        *,
        poll_interval: float,
        per_process: bool = False,
        carry: Carry | None = None,
    ) -> None:
        self.nv = nv
        self.h = handle
        self.id = identity
        self.poll_interval = poll_interval
        self.per_process = per_process
        self.carry = carry or Carry()
        self.subs = {s: SubState() for s in SUBS}
        self.unsupported_fns: set[str] = set()
        self.samples_ok = True
        self.pcie_mode = "fields"  # fields | throughput
        self.nvlinks: list[int] | None = None  # None until probed
        self.proc_names: dict[int, str] = {}
        self._tag = f"GPU {identity.index} ({identity.uuid})"
        if not per_process:
            self._set_unsupported("processes", "per-process metrics are off (agent.per_process)", quiet=True)
        self.vgpu_guest = identity.virtualization_mode == "vgpu"
        if self.vgpu_guest:
            for s in VGPU_ABSENT:
                self._set_unsupported(s, "not available inside a vGPU guest", quiet=True)
            log.info("%s: vGPU guest: power, energy and NVLink are not readable in a guest, not exported; "
                     "PCIe byte counters only if they read non-zero", self._tag)
        self.gpm: GpmReader | None = None  # set by use_gpm where GPM is supported
        self._set_unsupported("activity", "GPM not supported", quiet=True)
        if identity.gi_id is not None:
            for s in WHOLE_GPU:
                self._set_unsupported(s, "whole-GPU quantity (see the parent GPU)", quiet=True)

    # ------------------------------------------------------------------ helpers
    def _set_unsupported(self, sub: str, reason: str, quiet: bool = False) -> None:
        st = self.subs[sub]
        if st.status != "unsupported" and not quiet:
            log.info("%s: %s not supported (%s); not polled again", self._tag, sub, reason)
        st.status, st.reason = "unsupported", reason

    def _nv(self, fname: str, *args: Any) -> Any:
        if fname in self.unsupported_fns:
            raise _Unsupported(fname)
        try:
            return getattr(self.nv, fname)(*args)
        except NVMLError as e:
            c = nvmlerr.code_of(e)
            if c in nvmlerr.DOWN:
                raise GpuDown(c, fname) from None
            if c in nvmlerr.UNSUPPORTED:
                self.unsupported_fns.add(fname)
                raise _Unsupported(f"{fname}: {nvmlerr.name_of(c)}") from None
            if c == nvmlerr.NO_PERMISSION:
                raise _NoPermission(fname) from None
            raise _Failed(c, fname) from None

    def _note(self, sub: str, status: str, reason: str, now: float) -> None:
        """Record a sub-collector's outcome; log only when its state changes (permissions: once)."""
        st = self.subs[sub]
        prev = st.status
        if status == "unsupported":
            self._set_unsupported(sub, reason)
            return
        if status == "no_permission":
            st.retry_at = now + NO_PERMISSION_RETRY_S
            if not st.permission_logged:
                log.warning("%s: %s: NVML says NO_PERMISSION (%s); run the agent with the rights to read it. "
                            "Reported once; retried every %d s", self._tag, sub, reason, NO_PERMISSION_RETRY_S)
                st.permission_logged = True
        elif status == "failed" and prev != "failed":
            log.warning("%s: %s read failed: %s (series left out until it works again)", self._tag, sub, reason)
        elif status == "ok" and prev in ("failed", "no_permission"):
            log.info("%s: %s works again", self._tag, sub)
        st.status, st.reason = status, reason

    def _skip(self, sub: str, now: float) -> bool:
        st = self.subs[sub]
        return st.status == "unsupported" or (st.status == "no_permission" and now < st.retry_at)

    def _run(self, sub: str, now: float, fn: Any, out: dict[str, float]) -> None:
        if self._skip(sub, now):
            return
        t0 = time.perf_counter()
        vals = None
        try:
            vals = fn(now)
        except _Unsupported as e:
            self._note(sub, "unsupported", str(e), now)
        except _NoPermission as e:
            self._note(sub, "no_permission", str(e), now)
        except _Failed as e:
            self._note(sub, "failed", str(e), now)
        else:
            self._note(sub, "ok", "", now)
        self.subs[sub].duration_s = time.perf_counter() - t0
        if vals:
            out.update(vals)

    # ------------------------------------------------------------------ sub-collectors
    def _read_samples(self) -> list[tuple[int, float]]:
        vt, samples = self._nv("nvmlDeviceGetSamples", self.h, self.nv.NVML_GPU_UTILIZATION_SAMPLES,
                               self.carry.ring.last_ts)
        attr = _VALUE_ATTR.get(int(vt), "uiVal")
        return [(int(s.timeStamp), float(getattr(s.sampleValue, attr))) for s in samples]

    def prime(self, now: float) -> None:
        """Skip the history the driver's ring already holds: start after its newest sample.

        Timestamps stay in the driver's clock domain (never compared with the host clock)."""
        if not self.samples_ok or self._skip("utilization", now):
            return
        try:
            self.carry.ring.prime(self._read_samples(), now)
        except _Failed as e:
            if e.code != self.nv.NVML_ERROR_NOT_FOUND:  # NOT_FOUND: the ring is empty (idle GPU)
                return
            self.carry.ring.prime([], now)
        except (_Unsupported, _NoPermission):
            return

    def _utilization(self, now: float) -> dict[str, float]:
        c = self.carry
        out: dict[str, float] = {}
        empty = False
        if self.samples_ok:
            try:
                mean, _ = c.ring.add(self._read_samples(), now)
                if mean is not None:
                    c.util_gauge = mean
            except _Failed as e:
                if e.code != self.nv.NVML_ERROR_NOT_FOUND:
                    raise
                empty = True  # no new sample since last_ts: the ring ran dry (idle GPU), credited below
            except _Unsupported:
                self.samples_ok = False
                log.info("%s: driver utilization samples not supported; falling back to "
                         "nvmlDeviceGetUtilizationRates (one reading per poll)", self._tag)
        rates = None
        try:
            rates = self._nv("nvmlDeviceGetUtilizationRates", self.h)
        except _Unsupported:
            if not self.samples_ok:
                raise
        max_gap = max(3.0 * self.poll_interval, 5.0)
        if rates is not None:
            out["mem_utilization"] = float(rates.memory) / 100.0
            if not self.samples_ok:
                c.gauge.add(now, float(rates.gpu), max_gap)
                c.util_gauge = float(rates.gpu)
        if empty:  # observed, not unobserved: credited by the current reading (0 % when it cannot be read)
            pct = float(rates.gpu) if rates is not None else None
            c.ring.no_new_samples(now, pct, max_gap)
            c.util_gauge = pct if pct is not None else 0.0
        if self.samples_ok:
            r = c.ring
            out["busy_seconds"] = r.busy_us / 1e6
            out["idle_seconds"] = r.idle_us / 1e6
            out["unobserved_seconds"] = r.unobserved_us / 1e6
        else:
            g = c.gauge
            out["busy_seconds"], out["idle_seconds"], out["unobserved_seconds"] = g.busy_s, g.idle_s, g.unobserved_s
        if c.util_gauge is not None:
            out["utilization"] = c.util_gauge / 100.0
        return out

    def _memory(self, now: float) -> dict[str, float]:
        m = self._nv("nvmlDeviceGetMemoryInfo", self.h)
        return {"fb_used_bytes": float(m.used), "fb_total_bytes": float(m.total)}

    def _power(self, now: float) -> dict[str, float]:
        return {"power_watts": self._nv("nvmlDeviceGetPowerUsage", self.h) / 1000.0}

    def _energy(self, now: float) -> dict[str, float]:
        mj = int(self._nv("nvmlDeviceGetTotalEnergyConsumption", self.h))
        c = self.carry
        if c.energy_last_mj is not None and mj < c.energy_last_mj:
            c.energy_resets += 1
            log.info("%s: energy counter went back from %d to %d mJ (driver reload); counted as a reset",
                     self._tag, c.energy_last_mj, mj)
        c.energy_last_mj = mj
        return {"energy_joules": mj / 1000.0, "energy_resets": float(c.energy_resets)}

    def probe_nvlink(self) -> None:
        """Find the NVLink links once: link count, then every link until one is invalid."""
        nv = self.nv
        st = self.subs["nvlink"]
        if st.status == "unsupported" or self.nvlinks is not None:
            return
        try:
            res = self._nv("nvmlDeviceGetFieldValues", self.h, [nv.NVML_FI_DEV_NVLINK_LINK_COUNT])
        except _Unsupported as e:
            self._set_unsupported("nvlink", str(e))
            return
        except (_Failed, _NoPermission):
            return  # try again next poll
        f = res[0]
        if f.nvmlReturn != 0 or _value(f.value, f.valueType) <= 0:
            reason = "no NVLink links" if f.nvmlReturn == 0 else nvmlerr.name_of(int(f.nvmlReturn))
            self._set_unsupported("nvlink", reason, quiet=f.nvmlReturn == 0)
            return
        count = int(_value(f.value, f.valueType))
        ids = [(fid, link) for link in range(count)
               for fid in (nv.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX, nv.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX)]
        try:
            res = self._nv("nvmlDeviceGetFieldValues", self.h, ids)
        except (_Failed, _NoPermission, _Unsupported):
            return
        links = []
        for link in range(count):
            rcs = {int(res[2 * link].nvmlReturn), int(res[2 * link + 1].nvmlReturn)}
            if rcs & {nv.NVML_ERROR_INVALID_ARGUMENT, nv.NVML_ERROR_NOT_SUPPORTED}:
                break  # links stop here
            links.append(link)
        if not links:
            self._set_unsupported("nvlink", "no NVLink link answers the throughput fields")
            return
        self.nvlinks = links

    def _fields(self, now: float, out: dict[str, float], nvl: dict[int, tuple[float, float]]) -> None:
        """PCIe byte counters and NVLink per-link counters in one nvmlDeviceGetFieldValues call."""
        nv = self.nv
        if not self._skip("nvlink", now) and self.nvlinks is None:
            self.probe_nvlink()
        want_pcie = not self._skip("pcie", now) and self.pcie_mode == "fields"
        want_nvl = not self._skip("nvlink", now) and self.nvlinks is not None
        links = list(self.nvlinks or [])
        ids: list[Any] = []
        if want_pcie:
            ids += [nv.NVML_FI_DEV_PCIE_COUNT_TX_BYTES, nv.NVML_FI_DEV_PCIE_COUNT_RX_BYTES]
        if want_nvl:
            for link in links:
                ids += [(nv.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX, link), (nv.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX, link)]
        if ids:
            subs = (["pcie"] if want_pcie else []) + (["nvlink"] if want_nvl else [])
            t0 = time.perf_counter()
            res = None
            try:
                res = self._nv("nvmlDeviceGetFieldValues", self.h, ids)
            except _Unsupported as e:  # no field API at all (very old driver)
                if want_nvl:
                    self._note("nvlink", "unsupported", str(e), now)
                if want_pcie:
                    self.pcie_mode = "throughput"
            except _NoPermission as e:
                for s in subs:
                    self._note(s, "no_permission", str(e), now)
            except _Failed as e:
                for s in subs:
                    self._note(s, "failed", str(e), now)
            dur = (time.perf_counter() - t0) / len(subs)
            for s in subs:
                self.subs[s].duration_s = dur
            if res is not None and want_pcie:
                (rc_tx, tx), (rc_rx, rx) = _field(res[0]), _field(res[1])
                rcs = {rc_tx, rc_rx}
                if rcs == {0}:
                    if not (self.vgpu_guest and tx == 0 and rx == 0):  # a guest may read N/A as 0
                        out["pcie_tx_bytes"] = tx
                        out["pcie_rx_bytes"] = rx
                    self._note("pcie", "ok", "", now)
                elif rcs & nvmlerr.UNSUPPORTED:
                    self.pcie_mode = "throughput"
                    log.info("%s: PCIe byte-counter fields not supported; estimating from "
                             "nvmlDeviceGetPcieThroughput instead", self._tag)
                elif nvmlerr.NO_PERMISSION in rcs:
                    self._note("pcie", "no_permission", "PCIe byte-counter fields", now)
                else:
                    self._note("pcie", "failed", "PCIe fields: " + nvmlerr.name_of(max(rcs)), now)
            if res is not None and want_nvl:
                k = 2 if want_pcie else 0
                keep, bad = [], ""
                got: dict[int, tuple[float, float]] = {}
                for i, link in enumerate(links):
                    (rc_tx, tx), (rc_rx, rx) = _field(res[k + 2 * i]), _field(res[k + 2 * i + 1])
                    rcs = {rc_tx, rc_rx}
                    if rcs == {0}:
                        got[link] = (tx * 1024.0, rx * 1024.0)  # NVML counts these in KiB
                        keep.append(link)
                    elif rcs & {nv.NVML_ERROR_INVALID_ARGUMENT, nv.NVML_ERROR_NOT_SUPPORTED}:
                        log.info("%s: NVLink link %d stopped answering (%s); dropped", self._tag, link,
                                 nvmlerr.name_of(max(rcs)))
                    else:
                        keep.append(link)
                        bad = f"link {link}: {nvmlerr.name_of(max(rcs))}"
                self.nvlinks = keep
                if bad:
                    self._note("nvlink", "failed", bad, now)
                elif not keep:
                    self._note("nvlink", "unsupported", "no NVLink link answers any more", now)
                else:
                    nvl.update(got)
                    self._note("nvlink", "ok", "", now)
        if self.pcie_mode == "throughput":
            if self.vgpu_guest:  # the throughput call reads N/A or 0 in a guest: nothing to estimate from
                self._note("pcie", "unsupported", "PCIe counters not readable in this vGPU guest", now)
            else:
                self._run("pcie", now, self._pcie_throughput, out)

    def _pcie_throughput(self, now: float) -> dict[str, float]:
        nv, c = self.nv, self.carry
        tx = self._nv("nvmlDeviceGetPcieThroughput", self.h, nv.NVML_PCIE_UTIL_TX_BYTES)
        rx = self._nv("nvmlDeviceGetPcieThroughput", self.h, nv.NVML_PCIE_UTIL_RX_BYTES)
        if c.pcie_est_t > 0 and now > c.pcie_est_t:
            dt = min(now - c.pcie_est_t, 3.0 * self.poll_interval)
            c.pcie_est_tx += tx * 1000.0 * dt  # KB/s over the last 20 ms, held for the interval
            c.pcie_est_rx += rx * 1000.0 * dt
        c.pcie_est_t = now
        return {"pcie_tx_bytes": c.pcie_est_tx, "pcie_rx_bytes": c.pcie_est_rx}

    def _processes(self, now: float) -> dict[str, float]:
        nv, c = self.nv, self.carry
        procs = self._nv("nvmlDeviceGetComputeRunningProcesses", self.h)[:MAX_PROCESSES]
        utils: dict[int, float] = {}
        try:
            for s in self._nv("nvmlDeviceGetProcessUtilization", self.h, c.proc_last_ts):
                utils[int(s.pid)] = float(s.smUtil)
                c.proc_last_ts = max(c.proc_last_ts, int(s.timeStamp))
        except _Failed as e:
            if e.code not in (0, nv.NVML_ERROR_NOT_FOUND):  # 0: no processes; NOT_FOUND: nothing new
                raise
        except _Unsupported:
            pass
        rows = []
        for p in procs:
            pid = int(p.pid)
            if pid not in self.proc_names:
                try:
                    self.proc_names[pid] = str(nv.nvmlSystemGetProcessName(pid)).rsplit("/", 1)[-1]
                except NVMLError:
                    self.proc_names[pid] = ""
            used = p.usedGpuMemory
            rows.append((pid, self.proc_names[pid], None if used is None else int(used), utils.get(pid)))
        self._procs = tuple(rows)
        return {}

    def use_gpm(self, device: Any, gi_id: int | None, now: float) -> None:
        """GPM is supported: read activity through ``device`` (the parent GPU's handle for a MIG
        instance ``gi_id``) from now on; the first sample is taken now."""
        self.gpm = GpmReader(device, gi_id, self.carry.activity, self._tag)
        self.subs["activity"].status = "unknown"
        self._run("activity", now, self._activity, {})

    def _activity(self, now: float) -> dict[str, float]:
        assert self.gpm is not None
        return self.gpm.read(self._nv, now)

    def close(self) -> None:
        if self.gpm is not None:
            self.gpm.close(self.nv)

    # ------------------------------------------------------------------ one poll
    def poll(self, now: float) -> GpuSnapshot:
        """Read everything supported once. Raises GpuDown if the GPU or driver is gone."""
        out: dict[str, float] = {}
        nvl: dict[int, tuple[float, float]] = {}
        self._procs: tuple[tuple[int, str, int | None, float | None], ...] = ()
        self._run("utilization", now, self._utilization, out)
        self._run("memory", now, self._memory, out)
        if self.subs["pcie"].status != "unsupported" or self.subs["nvlink"].status != "unsupported":
            self._fields(now, out, nvl)
        self._run("power", now, self._power, out)
        self._run("energy", now, self._energy, out)
        self._run("processes", now, self._processes, out)
        self._run("activity", now, self._activity, out)
        if self.subs["processes"].status != "ok":
            self._procs = ()
        return GpuSnapshot(
            identity=self.id,
            up=True,
            values=out,
            nvlink=nvl,
            processes=self._procs,
            subs={k: (v.status, v.duration_s) for k, v in self.subs.items()},
            util_source=("samples" if self.samples_ok else "utilization_rates")
            if self.subs["utilization"].status != "unsupported" else "",
            pcie_source=("field_counters" if self.pcie_mode == "fields" else "throughput_estimate")
            if self.subs["pcie"].status != "unsupported" else "",
            activity_source="none" if self.subs["activity"].status == "unsupported" else "gpm",
        )
