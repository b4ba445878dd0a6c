"""Agent discovery, the agent ↔ VM join by BIOS UUID, and the GPU ↔ VM-device rule."""

from __future__ import annotations

from typing import Any

from accelmon.collector.discovery import (
    AgentRecord,
    VmRecord,
    agent_targets,
    join_agents,
    match_gpus,
    normalize_bios_uuid,
    swapped_bios_uuid,
)
from accelmon.config import AgentsConfig

BIOS = "4213a1b2-c3d4-e5f6-0718-293a4b5c6d7e"


def vm(moref: str, bios: str, devices: list[dict[str, Any]] | None = None, **kw: Any) -> VmRecord:
    return VmRecord(
        vcenter_uuid="vc-1", vcenter_name="vc01", vm_moref=moref, vm_name=f"name-{moref}",
        vm_instance_uuid=f"5000-{moref}", vm_bios_uuid=bios, devices=devices or [], **kw,
    )


def dev(key: int, backing: str = "passthrough", **kw: Any) -> dict[str, Any]:
    return {"device_key": key, "backing": backing, **kw}


def gpu(uuid: str, bus: str, mode: str | None = "passthrough", **kw: Any) -> dict[str, Any]:
    return {"gpu_uuid": uuid, "pci_bus_id": bus, "virtualization_mode": mode, **kw}


def test_bios_uuid_forms() -> None:
    assert normalize_bios_uuid("{4213A1B2-C3D4-E5F6-0718-293A4B5C6D7E}") == BIOS
    assert normalize_bios_uuid("4213a1b2c3d4e5f60718293a4b5c6d7e") == BIOS
    assert normalize_bios_uuid("VMware-42 13 a1 b2 c3 d4 e5 f6-07 18 29 3a 4b 5c 6d 7e") == BIOS
    assert normalize_bios_uuid(None) == ""
    sw = swapped_bios_uuid(BIOS)
    assert sw == "b2a11342-d4c3-f6e5-0718-293a4b5c6d7e"
    assert swapped_bios_uuid(sw) == BIOS


def test_targets_from_gpu_vms_guest_ips_plus_static() -> None:
    cfg = AgentsConfig(port=9835, static=["http://10.9.9.9:9835/metrics"])
    vms = [
        vm("vm-1", BIOS, [dev(13000)], guest_ips=["fe80::1", "10.0.0.5", "10.0.0.6"], power_state="poweredOn"),
        vm("vm-2", "x", [], guest_ips=["10.0.0.7"], power_state="poweredOn"),  # no GPU: not scraped
        vm("vm-3", "y", [dev(13000)], guest_ips=["10.0.0.8"], power_state="poweredOff"),
        vm("vm-4", "z", [dev(13000)], guest_ips=["2001:db8::4"], power_state="poweredOn"),
        vm("vm-5", "w", [dev(13000)], guest_ips=[], power_state="poweredOn"),  # no IP yet
    ]
    assert agent_targets(vms, cfg) == [
        "http://10.0.0.5:9835/metrics",
        "http://10.9.9.9:9835/metrics",
        "http://[2001:db8::4]:9835/metrics",
    ]
    assert agent_targets(vms, AgentsConfig(discovery=False, static=["http://a:1/metrics"])) == ["http://a:1/metrics"]


def test_join_is_by_bios_uuid_not_ip_and_unjoined_agents_are_kept() -> None:
    v1 = vm("vm-1", BIOS, [dev(13000, host_pci_id="0000:3b:00.0")], guest_ips=["10.0.0.1"])
    v2 = vm("vm-2", "4213ffff-0000-0000-0000-000000000002", [dev(13000)], guest_ips=["10.0.0.2"])
    # the agent found at vm-2's IP reports vm-1's UUID (IP reuse): it is vm-1
    a1 = AgentRecord("http://10.0.0.2:9835/metrics", BIOS, "g1", [gpu("GPU-a", "00000000:0b:00.0")])
    a2 = AgentRecord("http://10.0.0.3:9835/metrics", "4213eeee-0000-0000-0000-000000000009", "lost",
                     [gpu("GPU-b", "00000000:0b:00.0")])
    # SMBIOS < 2.6 guest: byte-swapped presentation still joins
    a3 = AgentRecord("http://10.0.0.4:9835/metrics", swapped_bios_uuid(v2.vm_bios_uuid), "g2",
                     [gpu("GPU-c", "00000000:13:00.0")])
    agent_vm, joins = join_agents([v1, v2], [a1, a2, a3], {})
    assert agent_vm[a1.url] is v1
    assert agent_vm[a2.url] is None  # unjoined, but present
    assert agent_vm[a3.url] is v2
    assert joins["GPU-a"].vm is v1 and joins["GPU-a"].device["host_pci_id"] == "0000:3b:00.0"
    assert joins["GPU-b"].vm is None and joins["GPU-b"].agent_url == a2.url
    assert joins["GPU-c"].vm is v2


def test_several_passthrough_gpus_pair_by_slot_not_by_key_or_bus_order() -> None:
    # keys 13000 < 13001 < 13002, but the guest shows them in the reverse order: the slot decides
    v = vm("vm-1", BIOS, [dev(13002, host_pci_id="0000:b1:00.0", pci_slot_number=192),
                          dev(13000, host_pci_id="0000:3b:00.0", pci_slot_number=256),
                          dev(13001, host_pci_id="0000:5e:00.0", pci_slot_number=224)])
    gs = [gpu("GPU-z", "00000000:1b:00.0"), gpu("GPU-x", "00000000:0B:00.0"), gpu("GPU-y", "00000000:13:00.0")]
    m = match_gpus(v, gs)
    assert {u: (d or {}).get("host_pci_id") for u, (d, _) in m.items()} == {
        "GPU-x": "0000:b1:00.0", "GPU-y": "0000:5e:00.0", "GPU-z": "0000:3b:00.0"}
    assert {e for _, e in m.values()} == {"pci_slot"}


def test_identical_passthrough_gpus_without_slots_are_ambiguous_not_paired_by_order() -> None:
    v = vm("vm-1", BIOS, [dev(13000, host_pci_id="0000:3b:00.0"), dev(13001, host_pci_id="0000:5e:00.0")])
    m = match_gpus(v, [gpu("GPU-x", "00000000:0b:00.0"), gpu("GPU-y", "00000000:13:00.0")])
    assert m == {"GPU-x": (None, "ambiguous"), "GPU-y": (None, "ambiguous")}
    _, joins = join_agents([v], [AgentRecord("http://a", BIOS, "g", [gpu("GPU-x", "00000000:0b:00.0"),
                                                                     gpu("GPU-y", "00000000:13:00.0")])], {})
    assert joins["GPU-x"].vm is v and joins["GPU-x"].device is None and joins["GPU-x"].evidence == "ambiguous"


def test_vgpu_profile_match_mixed_backings_mig_and_leftovers() -> None:
    v = vm("vm-1", BIOS, [
        dev(13000, "vgpu", vgpu_profile="grid_a100-20c"),
        dev(13001, "vgpu", vgpu_profile="grid_a100-10c"),
        dev(13002, "passthrough", host_pci_id="0000:3b:00.0", pci_slot_number=256),
    ])
    gs = [
        gpu("GPU-v10", "00000000:0b:00.0", "vgpu", vgpu_profile="A100-10C"),
        gpu("GPU-v20", "00000000:13:00.0", "vgpu", vgpu_profile="GRID A100-20C"),
        gpu("GPU-p", "00000000:1b:00.0", "passthrough"),
        gpu("MIG-p1", "00000000:1b:00.0", "passthrough"),
        gpu("GPU-extra", "00000000:0c:00.0", "passthrough"),
    ]
    m = match_gpus(v, gs)
    assert m["GPU-v10"] == (v.devices[1], "vgpu_profile")
    assert m["GPU-v20"] == (v.devices[0], "vgpu_profile")
    assert m["GPU-p"] == (v.devices[2], "pci_slot")
    assert m["MIG-p1"] == (v.devices[2], "pci_slot")  # MIG instance follows its parent GPU
    assert m["GPU-extra"] == (None, "unmatched")  # more GPUs in the guest than devices: joined VM, no device


def test_unknown_mode_joins_by_profile_then_the_only_device_left() -> None:
    v = vm("vm-1", BIOS, [dev(13001, "dynamic"), dev(13000, "vgpu", vgpu_profile="grid_l4-24q")])
    m = match_gpus(v, [gpu("GPU-2", "00000000:13:00.0", None),
                       gpu("GPU-1", "00000000:0b:00.0", None, vgpu_profile="L4-24Q")])
    assert m["GPU-1"] == (v.devices[1], "vgpu_profile")
    assert m["GPU-2"] == (v.devices[0], "only_device")
