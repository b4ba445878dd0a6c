from __future__ import annotations

import datetime as dt

import pytest

from accelmon.analytics.identity import gpu_vm_map, swap_bios
from accelmon.analytics.numa import parse_affinity
from accelmon.analytics.vmotion import vmotion_stun
from accelmon.analytics.window import Window
from accelmon.store.writer import Store
from tests.analytics.estate import SNAP, VC, write_inventory


def test_bios_swap_roundtrip():
    u = "4221abcd-1234-5678-9abc-def012345678"
    assert swap_bios(u) == "cdab2142-3412-7856-9abc-def012345678"
    assert swap_bios(swap_bios(u)) == u


def test_agent_gpus_match_devices_by_slot_and_swapped_bios(tmp_path):
    st = Store(tmp_path)
    vs = write_inventory(st)
    split = next(v for v in vs if v.name == "numa-split")  # two devices: keys 13000, 13001
    assert split.guest_buses == [0x14, 0x13]  # the guest shows device 13000 *behind* 13001
    agents = [
        # BIOS UUID upper-case and byte-swapped; GPU-first sits at the lower guest bus, but on
        # the slot of device 13001: the slot decides, not sorted order
        {"ts": SNAP, "vm_bios_uuid": swap_bios(split.bios).upper(), "gpu_uuid": "GPU-second",
         "pci_bus_id": "00000000:14:00.0", "virtualization_mode": "passthrough"},
        {"ts": SNAP, "vm_bios_uuid": swap_bios(split.bios).upper(), "gpu_uuid": "GPU-first",
         "pci_bus_id": "00000000:13:00.0", "virtualization_mode": "passthrough"},
        {"ts": SNAP, "vm_bios_uuid": "ffffffff-0000-0000-0000-000000000000", "gpu_uuid": "GPU-orphan"},
    ]
    st.append("agent_gpu", agents)
    m = {r["gpu"]: r for r in gpu_vm_map(st.connect()).to_dicts()}
    assert m["GPU-first"]["vm_moref"] == split.moref and m["GPU-first"]["device_key"] == 13001
    assert m["GPU-second"]["device_key"] == 13000
    assert m["GPU-second"]["host_pci_id"] == split.gpus[0][0]
    assert m["GPU-first"]["match_evidence"] == m["GPU-second"]["match_evidence"] == "pci_slot"
    assert m["GPU-orphan"]["vm_moref"] is None and m["GPU-orphan"]["match_evidence"] is None


def test_affinity_parsing():
    assert parse_affinity("0") == {0} and parse_affinity("0, 1") == {0, 1} and parse_affinity("0-2") == {0, 1, 2}
    assert parse_affinity(None) is None and parse_affinity(" ") is None
    with pytest.raises(ValueError):
        parse_affinity("node1")


def test_vmotion_flags_and_fit(tmp_path):
    st = Store(tmp_path)
    t = dt.datetime(2025, 1, 6, tzinfo=dt.UTC)
    rows = []
    for i, (fb_gib, stun) in enumerate([(8, 2.0), (16, 4.0), (24, 6.0), (48, 12.5), (None, 0.3)]):
        rows.append({"ended_at": t + dt.timedelta(hours=i), "vcenter_uuid": VC, "vm_moref": f"vm-{i}",
                     "vm_name": f"v{i}", "cluster_name": "c", "succeeded": True, "stun_seconds": stun,
                     "vgpu_attached": fb_gib is not None, "vgpu_fb_bytes": fb_gib and fb_gib << 30})
    rows.append({"ended_at": t + dt.timedelta(hours=9), "vcenter_uuid": VC, "vm_moref": "vm-9", "vm_name": "v9",
                 "succeeded": False, "failure_reason": "maxSwitchoverTimeExceeded", "vgpu_attached": True,
                 "vgpu_fb_bytes": 8 << 30})
    rows.append({"ended_at": t - dt.timedelta(days=3), "vcenter_uuid": VC, "vm_moref": "vm-old",
                 "stun_seconds": 99.0, "vgpu_attached": True, "vgpu_fb_bytes": 8 << 30})  # outside the window
    keys = {k for r in rows for k in r}  # Store.append infers columns from the first dict only
    st.append("vmotion", [{k: r.get(k) for k in sorted(keys)} for r in rows])
    r = vmotion_stun(st.connect(), Window(t, t + dt.timedelta(days=1)), 10.0)
    assert r["migrations"].height == 6
    assert set(r["flagged"]["vm_moref"].to_list()) == {"vm-3", "vm-9"}
    assert r["fit"]["slope_s_per_gib"] == pytest.approx(0.26, abs=0.02)
    risky = {x["vm_moref"]: x for x in r["risky"]}
    assert set(risky) == {"vm-3", "vm-9"} and "switchover" in risky["vm-9"]["reason"]
