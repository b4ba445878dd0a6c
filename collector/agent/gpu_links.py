"""PCIe byte counters and NVLink per-link counters of one GPU: one ``nvmlDeviceGetFieldValues``
call per poll, with the ``nvmlDeviceGetPcieThroughput`` estimate where the byte-counter fields
are not supported. Split out of :mod:`accelmon.collector.agent.gpu` (pure move).
"""

from __future__ import annotations

import time
from typing import Any

from accelmon.collector.agent import nvmlerr
from accelmon.collector.agent.gpu_base import PollerBase, log
from accelmon.collector.agent.gpu_types import _Failed, _field, _NoPermission, _Unsupported, _value


class LinkPoller(PollerBase):
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
