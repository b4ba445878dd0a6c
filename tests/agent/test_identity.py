"""The VM's SMBIOS identity (byte order!) and guest-side GPU placement."""

from __future__ import annotations

from pathlib import Path

import pytest

from accelmon.collector.agent.identity import (
    normalize_uuid,
    pci_numa_node,
    read_vm_identity,
    swap_uuid_bytes,
    sysfs_bus_id,
    uuid_from_vmware_serial,
)

CONFIG_UUID = "42023081-331b-58e1-2730-ca560789e551"  # vCenter config.uuid
SWAPPED = "81300242-1b33-e158-2730-ca560789e551"  # the same 16 bytes read with the first three fields little-endian
SERIAL = "VMware-42 02 30 81 33 1b 58 e1-27 30 ca 56 07 89 e5 51"


def test_byte_swap_mapping() -> None:
    assert swap_uuid_bytes(CONFIG_UUID) == SWAPPED
    assert swap_uuid_bytes(SWAPPED) == CONFIG_UUID  # an involution
    assert swap_uuid_bytes(SWAPPED.upper()) == CONFIG_UUID
    with pytest.raises(ValueError):
        swap_uuid_bytes("not-a-uuid")


def test_normalize() -> None:
    assert normalize_uuid("{4202 3081-331B-58E1-2730-CA560789E551}") == CONFIG_UUID
    assert normalize_uuid("00000000-0000-0000-0000-000000000000") is None  # "not present" per SMBIOS
    assert normalize_uuid("FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF") is None
    assert normalize_uuid("") is None


def test_vmware_serial_gives_config_uuid_exactly() -> None:
    assert uuid_from_vmware_serial(SERIAL) == CONFIG_UUID
    assert uuid_from_vmware_serial("Dell 8XYZ123") is None


def _dmi(tmp_path: Path, **files: str) -> Path:
    d = tmp_path / "dmi"
    d.mkdir()
    for name, text in files.items():
        (d / name).write_text(text + "\n")
    return d


def test_serial_wins_over_product_uuid(tmp_path: Path) -> None:
    d = _dmi(tmp_path, product_serial=SERIAL, product_uuid=SWAPPED.upper())
    vm = read_vm_identity(d, hostname="gpu-vm")
    assert (vm.bios_uuid, vm.bios_uuid_swapped, vm.source, vm.hostname) == (CONFIG_UUID, SWAPPED, "product_serial", "gpu-vm")


def test_product_uuid_reported_with_its_swapped_form(tmp_path: Path) -> None:
    # older virtual hardware: the guest shows the byte-swapped form; the daemon matches either
    d = _dmi(tmp_path, product_uuid=SWAPPED.upper(), product_serial="To Be Filled By O.E.M.")
    vm = read_vm_identity(d, hostname="h")
    assert vm.source == "product_uuid"
    assert vm.bios_uuid == SWAPPED and vm.bios_uuid_swapped == CONFIG_UUID


def test_unreadable_identity_is_reported_not_invented(tmp_path: Path) -> None:
    d = _dmi(tmp_path)
    (d / "product_uuid").mkdir()  # reading fails
    vm = read_vm_identity(d, hostname="h")
    assert vm.bios_uuid is None and vm.source == "unavailable" and "product_uuid" in (vm.problem or "")
    (d / "product_uuid").rmdir()
    (d / "product_uuid").write_text("0" * 32)  # all zero: "not present" per SMBIOS
    assert read_vm_identity(d, hostname="h").bios_uuid is None


def test_guest_numa_node_from_sysfs(tmp_path: Path) -> None:
    assert sysfs_bus_id("00000000:0B:00.0") == "0000:0b:00.0"
    dev = tmp_path / "bus" / "pci" / "devices" / "0000:0b:00.0"
    dev.mkdir(parents=True)
    (dev / "numa_node").write_text("1\n")
    assert pci_numa_node("00000000:0B:00.0", tmp_path) == 1
    assert pci_numa_node("00000000:13:00.0", tmp_path) is None
