"""Small in-process sources for scheduler/runner tests (the fault and integration tests use
the real agent and vCenter sources)."""

from __future__ import annotations

import datetime as dt
import threading
import time
from typing import Any

from accelmon.collector.base import CollectResult
from accelmon.store.schema import table
from accelmon.store.writer import to_arrow

BIOS = "4213{:04x}-0000-4000-8000-{:012x}"


def bios(i: int) -> str:
    return BIOS.format(i, i)


class CounterSource:
    """Writes one gpu_sample row per GPU per poll with counters that grow with wall time.

    ``fail`` (an exception or None) makes the next polls raise; ``delay_s`` makes a poll slow."""

    name = "agent"

    def __init__(self, target: str, gpus: list[str], *, bios_uuid: str | None = None) -> None:
        self.target = target
        self.gpus = gpus
        self.bios = bios_uuid
        self.fail: BaseException | None = None
        self.delay_s = 0.0
        self.polls = 0
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()
        self.t0 = time.time()

    def collect(self, store: Any) -> CollectResult:
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            self.polls += 1
            if self.delay_s:
                time.sleep(self.delay_s)
            if self.fail is not None:
                raise self.fail
            now = time.time()
            busy = int((now - self.t0) * 600)  # 60 % busy
            rows = [
                {"ts": dt.datetime.fromtimestamp(now, dt.UTC), "gpu_uuid": g, "source": "agent",
                 "vm_bios_uuid": self.bios, "util_percent": 60.0, "busy_ms_total": busy,
                 "idle_ms_total": int((now - self.t0) * 1000) - busy, "fb_used_bytes": 1 << 30,
                 "fb_total_bytes": 40 << 30, "power_milliwatts": 200_000,
                 "energy_millijoules_total": int((now - self.t0) * 200_000)}
                for g in self.gpus
            ]
            t = to_arrow(table("gpu_sample"), rows)
            res = CollectResult()
            res.add("gpu_sample", store.append("gpu_sample", t))
            res.tables["gpu_sample"] = t
            return res
        finally:
            with self._lock:
                self.active -= 1

    def close(self) -> None:
        pass


def inventory_tables(n_vms: int, *, vc: str = "vc-uuid-1", host_of: Any = None) -> dict[str, Any]:
    now = dt.datetime.now(dt.UTC)
    vms, devs, hosts = [], [], []
    for h in range(2):
        hosts.append({"snapshot_ts": now, "vcenter_uuid": vc, "host_moref": f"host-{h}", "host_name": f"esx{h}.lab",
                      "cluster_moref": "domain-c1", "cluster_name": "gpu-cluster"})
    for i in range(n_vms):
        host = host_of(i) if host_of else f"host-{i % 2}"
        vms.append({"snapshot_ts": now, "vcenter_uuid": vc, "vm_moref": f"vm-{i}", "vm_instance_uuid": f"5000-{i}",
                    "vm_bios_uuid": bios(i), "vm_name": f"gpu-vm-{i}", "host_moref": host,
                    "cluster_name": "gpu-cluster", "power_state": "poweredOn", "guest_ips": [f"10.1.0.{i + 1}"]})
        devs.append({"snapshot_ts": now, "vcenter_uuid": vc, "vm_moref": f"vm-{i}", "device_key": 13000,
                     "backing": "passthrough", "host_pci_id": f"0000:3b:00.{i % 8}", "host_numa_node": i % 2})
    vcs = [{"snapshot_ts": now, "vcenter_uuid": vc, "url": "https://vc01.lab/sdk", "name": "vc01"}]
    return {
        "inv_vcenter": to_arrow(table("inv_vcenter"), vcs),
        "inv_host": to_arrow(table("inv_host"), hosts),
        "inv_vm": to_arrow(table("inv_vm"), vms),
        "inv_vm_gpu": to_arrow(table("inv_vm_gpu"), devs),
    }
