"""One GPU (or MIG instance) as the agent sees it: identity, support probing, one poll.

Each sub-collector (utilization, memory, pcie, nvlink, power, energy, processes) keeps a
status: ``ok``, ``unsupported`` (NOT_SUPPORTED / FUNCTION_NOT_FOUND, or not available in a
vGPU guest: cached, never called again), ``no_permission`` (logged once, retried every few
minutes), ``failed`` (this poll; its series are left out so a failure never looks like an
idle GPU).  GPU_IS_LOST and driver-reload errors raise :class:`GpuDown` to the agent, which
reports the GPU down and re-initialises it with backoff.
"""

from __future__ import annotations

from typing import Any

from pynvml import NVMLError

from accelmon.collector.agent.gpm import GpmReader
from accelmon.collector.agent.gpu_base import log
from accelmon.collector.agent.gpu_identity import read_identity
from accelmon.collector.agent.gpu_links import LinkPoller
from accelmon.collector.agent.gpu_types import (
    _VALUE_ATTR,
    MAX_PROCESSES,
    NO_PERMISSION_RETRY_S,
    SUBS,
    VGPU_ABSENT,
    VIRT_MODES,
    WHOLE_GPU,
    Carry,
    GpuDown,
    GpuIdentity,
    GpuSnapshot,
    SubState,
    _Failed,
    _NoPermission,
    _Unsupported,
)

__all__ = [
    "MAX_PROCESSES",
    "NO_PERMISSION_RETRY_S",
    "SUBS",
    "VGPU_ABSENT",
    "VIRT_MODES",
    "WHOLE_GPU",
    "Carry",
    "GpuDown",
    "GpuIdentity",
    "GpuPoller",
    "GpuSnapshot",
    "SubState",
    "read_identity",
]


class GpuPoller(LinkPoller):
    """Polls one device handle; keeps support status and counters between polls.

    Layers: :class:`~accelmon.collector.agent.gpu_base.PollerBase` (status bookkeeping),
    :class:`~accelmon.collector.agent.gpu_links.LinkPoller` (PCIe / NVLink fields), this class
    (utilization, memory, power, energy, processes, GPM activity, one poll)."""

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

