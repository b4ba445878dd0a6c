"""Who is this guest? The VM's SMBIOS identity and the guest-side placement of its GPUs.

The daemon joins an agent to its VM by the SMBIOS system UUID (vCenter shows it as the VM's
BIOS UUID, ``config.uuid``), never by PCI address: a passthrough GPU sits at a *virtual* PCI
address inside the guest.

Byte order
----------
SMBIOS stores the UUID as 16 bytes.  Since SMBIOS 2.6 the first three fields (time_low,
time_mid, time_hi_and_version) are little-endian ("wire format"); before 2.6 the spec did not
say.  Linux decodes ``/sys/class/dmi/id/product_uuid`` little-endian for SMBIOS ≥ 2.6 and
big-endian before, so depending on the SMBIOS version the virtual hardware presents, the guest
shows either vCenter's ``config.uuid`` or the same UUID with its first three groups
byte-swapped::

    vCenter config.uuid        42023081-331b-58e1-2730-ca560789e551
    guest, swapped form        81300242-1b33-e158-2730-ca560789e551

VMware also writes the raw bytes, in vCenter's order, into the system serial number
(``/sys/class/dmi/id/product_serial``: ``VMware-42 02 30 81 33 1b 58 e1-27 30 ca 56 07 89 e5 51``).
So: when the serial is readable and has the VMware form, it gives ``config.uuid`` exactly
(source ``product_serial``); otherwise the agent reports ``product_uuid`` as read and also the
byte-swapped form, and the daemon matches either against vCenter (source ``product_uuid``).
Both files are usually readable by root only; run the agent as root or grant read access
(see docs/agent.md), else the identity is reported as unavailable and the agent stays unjoined.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path

_HEX32 = re.compile(r"^[0-9a-f]{32}$")
_SERIAL = re.compile(r"^VMware-((?:[0-9a-fA-F]{2} ?){8})-((?:[0-9a-fA-F]{2} ?){8})$")


def normalize_uuid(u: str | None) -> str | None:
    """Canonical lower-case 8-4-4-4-12 form, or None for junk / all-zero / all-FF (not set)."""
    if not u:
        return None
    h = re.sub(r"[\s{}\-]", "", u.strip().lower())
    if not _HEX32.match(h) or h in ("0" * 32, "f" * 32):
        return None
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def swap_uuid_bytes(u: str) -> str:
    """Swap the byte order of the first three groups (SMBIOS < 2.6 vs ≥ 2.6 reading). An involution."""
    n = normalize_uuid(u)
    if n is None:
        raise ValueError(f"not a UUID: {u!r}")
    a, b, c, d, e = n.split("-")

    def rev(x: str) -> str:
        return "".join(reversed([x[i : i + 2] for i in range(0, len(x), 2)]))

    return f"{rev(a)}-{rev(b)}-{rev(c)}-{d}-{e}"


def uuid_from_vmware_serial(serial: str | None) -> str | None:
    """``VMware-42 02 30 81 33 1b 58 e1-27 30 ca 56 07 89 e5 51`` → ``42023081-331b-58e1-2730-ca560789e551``."""
    if not serial:
        return None
    m = _SERIAL.match(serial.strip())
    if not m:
        return None
    return normalize_uuid((m.group(1) + m.group(2)).replace(" ", ""))


@dataclass(frozen=True)
class VmIdentity:
    hostname: str
    bios_uuid: str | None  # best guess at vCenter's config.uuid
    bios_uuid_swapped: str | None  # the other byte order, for the daemon to try as well
    source: str  # product_serial | product_uuid | unavailable
    problem: str | None = None  # why it is unavailable (one line)


def _read(path: Path) -> tuple[str | None, str | None]:
    try:
        return path.read_text().strip(), None
    except PermissionError:
        return None, f"{path}: permission denied (readable by root only)"
    except OSError as e:
        return None, f"{path}: {e.strerror or e}"


def read_vm_identity(dmi_dir: str | os.PathLike[str] = "/sys/class/dmi/id", hostname: str | None = None) -> VmIdentity:
    d = Path(dmi_dir)
    host = hostname or socket.gethostname()
    serial, serr = _read(d / "product_serial")
    from_serial = uuid_from_vmware_serial(serial)
    if from_serial is not None:
        return VmIdentity(host, from_serial, swap_uuid_bytes(from_serial), "product_serial")
    raw, uerr = _read(d / "product_uuid")
    u = normalize_uuid(raw)
    if u is not None:
        return VmIdentity(host, u, swap_uuid_bytes(u), "product_uuid")
    problem = uerr or (f"{d / 'product_uuid'}: not a UUID: {raw!r}" if raw is not None else None) or serr
    return VmIdentity(host, None, None, "unavailable", problem)


def sysfs_bus_id(nvml_bus_id: str) -> str:
    """NVML ``00000000:0B:00.0`` → sysfs ``0000:0b:00.0`` (4-digit domain, lower case)."""
    s = nvml_bus_id.strip().lower()
    dom, _, rest = s.partition(":")
    if not rest:
        return s
    return f"{int(dom, 16):04x}:{rest}"


def pci_numa_node(nvml_bus_id: str, sysfs_root: str | os.PathLike[str] = "/sys") -> int | None:
    """The guest NUMA node of a PCI device from sysfs (``numa_node``; -1 means none/unknown)."""
    p = Path(sysfs_root) / "bus" / "pci" / "devices" / sysfs_bus_id(nvml_bus_id) / "numa_node"
    try:
        return int(p.read_text().strip())
    except (OSError, ValueError):
        return None
