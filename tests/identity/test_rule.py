"""The one GPU ↔ VM-device rule (accelmon.identity): evidence order, ambiguity, MIG, slot decoding."""

from __future__ import annotations

import itertools

from accelmon.identity import (
    AMBIGUOUS,
    HOST_PCI_ID,
    ONLY_DEVICE,
    PCI_SLOT,
    UNMATCHED,
    VGPU_PROFILE,
    GuestGpu,
    VmGpuDevice,
    guest_bus_slot,
    match_vm_gpus,
    match_vm_rows,
    parse_bdf,
    slot_guest_address,
)

GIB = 1 << 30


def pt(key: int, host: str, slot: int | None = None) -> VmGpuDevice:
    return VmGpuDevice(key, "passthrough", host_pci_id=host, pci_slot_number=slot)


def vg(key: int, profile: str, fb_gib: int | None = None, slot: int | None = None) -> VmGpuDevice:
    return VmGpuDevice(key, "vgpu", vgpu_profile=profile, vgpu_fb_bytes=fb_gib * GIB if fb_gib else None,
                       pci_slot_number=slot)


def guest(uuid: str, bus: int | None, mode: str | None = "passthrough", **kw: object) -> GuestGpu:
    return GuestGpu(uuid, None if bus is None else f"00000000:{bus:02X}:00.0", virtualization_mode=mode, **kw)  # type: ignore[arg-type]


def test_slot_decoding_follows_kb_2047927() -> None:
    # FFF.BBBBB.DDDDD: BBBBB = 0 → bus 0; else device DDDDD behind function FFF of pciBridge<BBBBB-1>
    assert slot_guest_address(16) == (0, 16)  # primary bus, 00:10.0
    assert slot_guest_address(33) == (2, 1)  # pciBridge0 (legacy PCI): bus 2, device 1
    assert slot_guest_address(160) == (0x03, 0)  # pciBridge4 function 0
    assert slot_guest_address(192) == (0x0B, 0)
    assert slot_guest_address(224) == (0x13, 0)
    assert slot_guest_address(256) == (0x1B, 0)
    assert slot_guest_address(1216) == (0x0C, 0)  # the KB's example: 001.00110.00000 = pciBridge5, function 1
    assert slot_guest_address(7 << 10 | 8 << 5) == (0x22, 0)  # pciBridge7 function 7: the last root port
    for bad in (None, -1, 1 << 13, 3 << 5, 1 << 10 | 0):  # pciBridge2 (absent by default); function ≠ 0 on bus 0
        assert slot_guest_address(bad) is None
    for bus in range(0x03, 0x23):
        assert slot_guest_address(guest_bus_slot(bus)) == (bus, 0)
    assert parse_bdf("00000000:0B:00.0") == parse_bdf("0000:0b:00.0") == parse_bdf("0b:00.0") == (0, 0x0B, 0, 0)
    assert parse_bdf("PCI device 1") is None and parse_bdf(None) is None


def test_two_passthrough_gpus_in_reverse_guest_order_join_by_slot() -> None:
    # host order: 13000 = 0000:3b (lower host bus), 13001 = 0000:5e; the guest shows 13001 first
    devs = [pt(13000, "0000:3b:00.0", guest_bus_slot(0x13)), pt(13001, "0000:5e:00.0", guest_bus_slot(0x0B))]
    gpus = [guest("GPU-low", 0x0B), guest("GPU-high", 0x13)]
    for ds, gs in itertools.product(itertools.permutations(devs), itertools.permutations(gpus)):  # input order is no evidence
        m = match_vm_gpus(ds, gs)
        assert (m["GPU-low"].device_key, m["GPU-low"].evidence) == (13001, PCI_SLOT)
        assert (m["GPU-high"].device_key, m["GPU-high"].evidence) == (13000, PCI_SLOT)


def test_without_slots_identical_gpus_are_ambiguous_never_sorted() -> None:
    devs = [pt(13000, "0000:3b:00.0"), pt(13001, "0000:5e:00.0")]
    m = match_vm_gpus(devs, [guest("GPU-a", 0x0B), guest("GPU-b", 0x13)])
    for u in ("GPU-a", "GPU-b"):
        assert m[u].device_key is None and m[u].evidence == AMBIGUOUS and m[u].candidates == (13000, 13001)


def test_two_identical_vgpus_are_ambiguous() -> None:
    devs = [vg(13000, "grid_a100-10c", 10), vg(13001, "grid_a100-10c", 10)]
    gpus = [guest(f"GPU-{i}", 0x0B + 8 * i, "vgpu", vgpu_profile="A100-10C", fb_total_bytes=10 * GIB) for i in range(2)]
    m = match_vm_gpus(devs, gpus)
    assert {(x.device_key, x.evidence) for x in m.values()} == {(None, AMBIGUOUS)}
    # one of the two seen by the agent: still two devices it could be
    m = match_vm_gpus(devs, gpus[:1])
    assert (m["GPU-0"].device_key, m["GPU-0"].evidence) == (None, AMBIGUOUS)


def test_vgpu_by_profile_and_by_framebuffer() -> None:
    devs = [vg(13000, "grid_a100-20c", 20), vg(13001, "grid_a100-10c", 10)]
    m = match_vm_gpus(devs, [guest("GPU-10", 0x0B, "vgpu", vgpu_profile="GRID A100-10C"),
                             guest("GPU-20", 0x13, "vgpu", vgpu_profile="A100-20C")])
    assert (m["GPU-10"].device_key, m["GPU-10"].evidence) == (13001, VGPU_PROFILE)
    assert (m["GPU-20"].device_key, m["GPU-20"].evidence) == (13000, VGPU_PROFILE)
    # no profile name in the guest: the framebuffer size (within 10 %) tells them apart
    m = match_vm_gpus(devs, [guest("GPU-10", 0x0B, "vgpu", fb_total_bytes=int(9.8 * GIB)),
                             guest("GPU-20", 0x13, "vgpu", fb_total_bytes=20 * GIB)])
    assert (m["GPU-10"].device_key, m["GPU-20"].device_key) == (13001, 13000)
    assert m["GPU-10"].evidence == m["GPU-20"].evidence == VGPU_PROFILE
    # a profile that contradicts the only vGPU device is not forced onto it
    m = match_vm_gpus([vg(13000, "grid_a100-20c", 20)], [guest("GPU-x", 0x0B, "vgpu", vgpu_profile="A100-10C")])
    assert (m["GPU-x"].device_key, m["GPU-x"].evidence) == (None, UNMATCHED)
    # ... but its slot is positional evidence, which a profile name does not override
    m = match_vm_gpus([vg(13000, "grid_a100-20c", 20, slot=192)],
                      [guest("GPU-x", 0x0B, "vgpu", vgpu_profile="A100-10C")])
    assert (m["GPU-x"].device_key, m["GPU-x"].evidence) == (13000, PCI_SLOT)


def test_mig_instances_inherit_the_parent_device() -> None:
    devs = [pt(13000, "0000:3b:00.0", guest_bus_slot(0x13)), pt(13001, "0000:5e:00.0", guest_bus_slot(0x0B))]
    rows = [
        {"gpu_uuid": "GPU-p", "pci_bus_id": "00000000:13:00.0", "virtualization_mode": "passthrough"},
        {"gpu_uuid": "MIG-1", "pci_bus_id": "00000000:13:00.0", "virtualization_mode": "passthrough"},
        {"gpu_uuid": "MIG-2", "pci_bus_id": "00000000:13:00.0", "virtualization_mode": "passthrough"},
        {"gpu_uuid": "GPU-q", "pci_bus_id": "00000000:0B:00.0", "virtualization_mode": "passthrough"},
        {"gpu_uuid": "MIG-lost", "pci_bus_id": "00000000:77:00.0"},  # no parent GPU at that address
    ]
    dev_rows = [{"device_key": d.device_key, "backing": d.backing, "host_pci_id": d.host_pci_id,
                 "pci_slot_number": d.pci_slot_number} for d in devs]
    m = match_vm_rows(dev_rows, rows)
    assert m["GPU-p"].device_key == m["MIG-1"].device_key == m["MIG-2"].device_key == 13000
    assert m["MIG-1"].evidence == m["GPU-p"].evidence == PCI_SLOT
    assert m["GPU-q"].device_key == 13001
    assert (m["MIG-lost"].device_key, m["MIG-lost"].evidence) == (None, UNMATCHED)
    # an ambiguous parent makes ambiguous instances
    m = match_vm_rows([{**r, "pci_slot_number": None} for r in dev_rows], rows)
    assert {m[u].evidence for u in ("GPU-p", "MIG-1", "MIG-2")} == {AMBIGUOUS}


def test_host_pci_id_where_the_guest_shows_host_addresses() -> None:
    devs = [pt(13000, "0000:3b:00.0"), pt(13001, "0000:5e:00.0")]
    m = match_vm_gpus(devs, [guest("GPU-5e", 0x5E), guest("GPU-3b", 0x3B)])
    assert (m["GPU-3b"].device_key, m["GPU-3b"].evidence) == (13000, HOST_PCI_ID)
    assert (m["GPU-5e"].device_key, m["GPU-5e"].evidence) == (13001, HOST_PCI_ID)


def test_a_host_address_that_only_looks_like_a_guest_one_yields_to_the_slot() -> None:
    # device 13000 sits on host bus 0x13 but in guest slot 0x0b; the guest GPU at 0x13 is device 13001
    devs = [pt(13000, "0000:13:00.0", guest_bus_slot(0x0B)), pt(13001, "0000:86:00.0", guest_bus_slot(0x13))]
    m = match_vm_gpus(devs, [guest("GPU-13", 0x13), guest("GPU-0b", 0x0B)])
    assert (m["GPU-13"].device_key, m["GPU-13"].evidence) == (13001, PCI_SLOT)
    assert (m["GPU-0b"].device_key, m["GPU-0b"].evidence) == (13000, PCI_SLOT)


def test_a_slot_layout_that_does_not_explain_the_vm_is_not_used() -> None:
    # the guest's buses are shifted by one bridge against the default layout: slot 192 → 0x0b
    # (nobody there), slot 224 → 0x13 (but that GPU is really the one in slot 192)
    devs = [pt(13000, "0000:3b:00.0", 192), pt(13001, "0000:5e:00.0", 224)]
    m = match_vm_gpus(devs, [guest("GPU-a", 0x13), guest("GPU-b", 0x1B)])
    assert {(x.device_key, x.evidence) for x in m.values()} == {(None, AMBIGUOUS)}


def test_only_device_left_and_class_separates() -> None:
    m = match_vm_gpus([pt(13000, "0000:3b:00.0")], [guest("GPU-1", 0x0B)])
    assert (m["GPU-1"].device_key, m["GPU-1"].evidence) == (13000, ONLY_DEVICE)
    # a whole GPU and a vGPU, no slots or profiles: the class tells them apart
    m = match_vm_gpus([pt(13000, "0000:3b:00.0"), vg(13001, "grid_l4-24q")],
                      [guest("GPU-v", 0x0B, "vgpu"), guest("GPU-p", 0x13, "passthrough")])
    assert (m["GPU-v"].device_key, m["GPU-p"].device_key) == (13001, 13000)
    # more GPUs than devices and nothing to choose: ambiguous, not first come first served
    m = match_vm_gpus([pt(13000, "0000:3b:00.0")], [guest("GPU-1", 0x0B), guest("GPU-2", 0x13)])
    assert {(x.device_key, x.evidence) for x in m.values()} == {(None, AMBIGUOUS)}
    # no device at all
    assert match_vm_gpus([], [guest("GPU-1", 0x0B)])["GPU-1"].evidence == UNMATCHED
