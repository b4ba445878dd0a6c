"""The seeded simulator's GPU devices and the demo's simulated guests agree on PCI slots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from accelmon.collector.vcenter.source import VCenterSource
from accelmon.demo.estate import plan_agents
from accelmon.identity import PCI_SLOT, match_vm_rows
from accelmon.sim.nvml import SimNVML
from accelmon.sim.spec import parse_spec
from accelmon.sim.vcsim import Vcsim
from accelmon.store.writer import Store

from .conftest import vc_config


def _rows(store: Store, sql: str) -> list[dict[str, Any]]:
    con = store.connect()
    cur = con.execute(sql)
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


def test_simulated_guests_join_their_devices_by_slot(tmp_path: Path) -> None:
    """The demo's simulated agents (accelmon.demo.estate → simulated NVML) show each GPU at the guest
    address of its vCenter device's pciSlotNumber, so the one identity rule joins them by slot."""
    with Vcsim.start(clusters=2, hosts_per_cluster=2, vms=12, gpu_vm_ratio=1.0, seed=3) as sim:
        store = Store(tmp_path / "data")
        src = VCenterSource(vc_config(sim))
        try:
            src.collect_inventory(store)
        finally:
            src.close()
        manifest = sim.manifest
    devs: dict[str, list[dict[str, Any]]] = {}
    for r in _rows(store, "SELECT * FROM inv_vm_gpu"):
        devs.setdefault(r["vm_moref"], []).append(r)
    plans = [p for p in plan_agents(manifest) if p.vm is not None]
    assert plans and max(len(p.gpus) for p in plans) >= 2  # a multi-GPU VM is among them
    for p in plans:
        spec = parse_spec({**p.spec(), "gpu": [{**g, "trace": "constant:0"} for g in p.gpus]})
        nv = SimNVML(spec)
        nv.nvmlInit()
        try:
            rows = [{"gpu_uuid": nv.nvmlDeviceGetUUID(h), "pci_bus_id": str(nv.nvmlDeviceGetPciInfo(h).busId),
                     "virtualization_mode": g["mode"]}
                    for i, g in enumerate(p.gpus) for h in [nv.nvmlDeviceGetHandleByIndex(i)]]
        finally:
            nv.nvmlShutdown()
        m = match_vm_rows(devs[p.vm["moref"]], rows)
        for r, g in zip(rows, p.vm["gpus"], strict=True):
            assert (m[r["gpu_uuid"]].device_key, m[r["gpu_uuid"]].evidence) == (g["device_key"], PCI_SLOT), p.name
