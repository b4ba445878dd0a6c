"""The one GPU ↔ VM-device rule: which of a VM's GPU devices (vCenter) is which GPU in the guest.

Pure functions over plain dataclasses, no I/O: the collector's discovery, the exporter (through
discovery's join) and the analytics all call :func:`match_vm_gpus`, one VM at a time. The
rule and its sources are in docs/analytics.md, "Joining GPUs to VMs". In short, evidence in
this order, each step only for what the steps before left unmatched:

1. ``host_pci_id``: a passthrough / dynamic DirectPath device's host PCI id equals the GPU's
   PCI bus id as the guest sees it (a guest that sees host addresses). A passthrough GPU
   normally sits at a *virtual* address in the guest, so this rarely fires; it is not taken
   where the device's PCI slot points at another GPU the guest shows (an address that only
   happens to look the same).
2. ``pci_slot``: the device's ``slotInfo.pciSlotNumber`` decoded to the guest bus/device
   (:func:`slot_guest_address`) equals the GPU's guest PCI bus id. Trusted for a VM only
   where the decoded addresses explain every slotted device or every GPU of the guest: a
   device whose slot points nowhere *and* a GPU no slot points at mean the guest's bus
   numbering is not the default layout this decoding assumes, and no slot evidence is used.
3. ``vgpu_profile``: vGPU devices ↔ vGPU guests by profile name (``grid_a100-4-20c`` ≡
   ``A100-4-20C``) and framebuffer size (within 10 %), where exactly one device and one GPU
   fit each other. (Steps 1-2 are positional and need only the class to agree - whole GPU ↔
   passthrough/dynamic, vGPU ↔ vGPU; from step 3 on, a profile or framebuffer that disagrees
   rules a device out.)
4. ``only_device``: what remains is one GPU and one device that do not contradict each other
   (same class, no conflicting profile): the VM has no other device it could be.
5. ``ambiguous``: a GPU that fits two or more remaining devices (identical devices, nothing to
   tell them apart) - never a guess, and never sorted order; ``unmatched``: no device fits.

MIG instances (``MIG-…`` UUIDs) inherit their parent GPU's device and evidence.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

HOST_PCI_ID = "host_pci_id"
PCI_SLOT = "pci_slot"
VGPU_PROFILE = "vgpu_profile"
ONLY_DEVICE = "only_device"
AMBIGUOUS = "ambiguous"
UNMATCHED = "unmatched"
EVIDENCE = (HOST_PCI_ID, PCI_SLOT, VGPU_PROFILE, ONLY_DEVICE, AMBIGUOUS, UNMATCHED)

FB_TOLERANCE = 0.10  # guest-visible framebuffer vs the profile's size


@dataclass(frozen=True)
class VmGpuDevice:
    """One GPU device of a VM as vCenter configures it (an ``inv_vm_gpu`` row)."""

    device_key: int
    backing: str  # passthrough | dynamic | vgpu
    host_pci_id: str | None = None
    pci_slot_number: int | None = None
    vgpu_profile: str | None = None
    vgpu_fb_bytes: int | None = None


@dataclass(frozen=True)
class GuestGpu:
    """One GPU as the agent in the guest sees it (an ``agent_gpu`` row), with its MIG instances."""

    gpu_uuid: str
    pci_bus_id: str | None = None
    model_name: str | None = None
    virtualization_mode: str | None = None
    vgpu_profile: str | None = None
    fb_total_bytes: int | None = None
    mig_uuids: tuple[str, ...] = ()


@dataclass(frozen=True)
class GpuMatch:
    gpu_uuid: str
    device_key: int | None
    evidence: str  # one of EVIDENCE
    candidates: tuple[int, ...] = field(default=())  # device keys an ambiguous GPU could be


# ------------------------------------------------------------------ PCI addresses
_BDF = re.compile(r"^(?:([0-9a-f]{1,8}):)?([0-9a-f]{1,2}):([0-9a-f]{1,2})\.([0-7])$")


def parse_bdf(s: str | None) -> tuple[int, int, int, int] | None:
    """``00000000:0B:00.0`` (NVML), ``0000:0b:00.0`` (sysfs, vCenter) or ``0b:00.0`` →
    (domain, bus, device, function); None when it is not a PCI address."""
    if not s:
        return None
    m = _BDF.match(s.strip().lower())
    if not m:
        return None
    return (int(m.group(1) or "0", 16), int(m.group(2), 16), int(m.group(3), 16), int(m.group(4)))


# VMware KB 2047927 (Broadcom 311606), "Mapping PCI slot numbers to guest-visible PCI bus
# topology": the persistent slot number is the bitmap FFF.BBBBB.DDDDD. BBBBB = 0: the device is
# on the primary bus at 0:DDDDD.0. Otherwise it sits at device DDDDD on the secondary bus of
# function FFF of bridge pciBridge<BBBBB-1>.
# The secondary bus *numbers* are assigned by the guest firmware's enumeration, not encoded in
# the slot. With the default virtual hardware layout (440BX AGP bridge 00:01.0 → bus 1,
# pciBridge0 at 00:11.0 → bus 2, pciBridge4..7 at 00:15..00:18 with 8 functions each, every
# function a PCIe root port with its own bus) that enumeration gives bus 3 + 8·(bridge−4) +
# function: slot 160 → 03:00.0, 192 → 0b:00.0, 224 → 13:00.0, 256 → 1b:00.0, 1216 → 0c:00.0
# (as Linux guests show: ens160 = 03:00.0, ens192 = 0b:00.0). That numbering is an assumption
# (a device with its own bridges, or another layout, shifts it); match_vm_gpus only trusts it
# where it explains the whole VM.
_BRIDGE_BUS0 = {0: 0x02}  # pciBridge0: legacy PCI bridge, one function
_PCIE_BRIDGES = range(4, 8)  # pciBridge4..7: 8 root-port functions each


def slot_guest_address(slot: int | None) -> tuple[int, int] | None:
    """(guest bus, device) of a device at persistent PCI slot ``slot`` (KB 2047927, default
    layout); None for slots the default layout does not place."""
    if slot is None or slot < 0 or slot >> 13:
        return None
    dev, b, fn = slot & 0x1F, (slot >> 5) & 0x1F, (slot >> 10) & 0x7
    if b == 0:
        return (0, dev) if fn == 0 else None
    bridge = b - 1
    if bridge in _BRIDGE_BUS0:
        return (_BRIDGE_BUS0[bridge], dev) if fn == 0 else None
    if bridge in _PCIE_BRIDGES:
        return (0x03 + 8 * (bridge - 4) + fn, dev)
    return None


def guest_bus_slot(bus: int, dev: int = 0) -> int | None:
    """The inverse of :func:`slot_guest_address` for the PCIe root ports (buses 0x03-0x22)."""
    if not 0x03 <= bus <= 0x22 or not 0 <= dev < 32:
        return None
    bridge, fn = 4 + (bus - 0x03) // 8, (bus - 0x03) % 8
    return (fn << 10) | ((bridge + 1) << 5) | dev


# ------------------------------------------------------------------ inputs from rows
def _int(v: Any) -> int | None:
    return None if v is None else int(v)


def device_from_row(r: Mapping[str, Any]) -> VmGpuDevice:
    """An ``inv_vm_gpu`` row (or the dict the vCenter collector makes of it)."""
    return VmGpuDevice(
        device_key=int(r["device_key"]),
        backing=str(r.get("backing") or ""),
        host_pci_id=r.get("host_pci_id"),
        pci_slot_number=_int(r.get("pci_slot_number")),
        vgpu_profile=r.get("vgpu_profile"),
        vgpu_fb_bytes=_int(r.get("vgpu_fb_bytes")),
    )


def is_mig_uuid(uuid: str) -> bool:
    return uuid.startswith("MIG-")


def guest_gpus_from_rows(rows: Iterable[Mapping[str, Any]]) -> tuple[list[GuestGpu], list[str]]:
    """``agent_gpu`` rows of one agent → (GPUs with their MIG instances, orphan MIG uuids).

    A MIG instance row carries its parent's guest PCI bus id (collector/agent/gpu.py); it joins
    the physical GPU at that address. One with no such GPU is returned as an orphan."""
    rows = list(rows)
    phys = [r for r in rows if not is_mig_uuid(str(r["gpu_uuid"]))]
    migs: dict[str, list[str]] = {}
    orphans: list[str] = []
    addr_of = {parse_bdf(r.get("pci_bus_id")): str(r["gpu_uuid"]) for r in phys}
    for r in rows:
        u = str(r["gpu_uuid"])
        if not is_mig_uuid(u):
            continue
        a = parse_bdf(r.get("pci_bus_id"))
        parent = addr_of.get(a) if a is not None else None
        if parent is None:
            orphans.append(u)
        else:
            migs.setdefault(parent, []).append(u)
    gpus = [
        GuestGpu(
            gpu_uuid=str(r["gpu_uuid"]),
            pci_bus_id=r.get("pci_bus_id"),
            model_name=r.get("model_name"),
            virtualization_mode=r.get("virtualization_mode"),
            vgpu_profile=r.get("vgpu_profile"),
            fb_total_bytes=_int(r.get("fb_total_bytes")),
            mig_uuids=tuple(migs.get(str(r["gpu_uuid"]), ())),
        )
        for r in phys
    ]
    return gpus, orphans


# ------------------------------------------------------------------ the rule
def _guest_is_vgpu(g: GuestGpu) -> bool | None:
    """True for a vGPU guest, False for a whole GPU, None when the agent did not say."""
    m = (g.virtualization_mode or "").strip().lower()
    if not m or m == "unknown":
        return None
    return m in ("vgpu", "vgpu_guest", "host_vgpu")


def profile_key(p: str | None) -> str | None:
    """vCenter's ``grid_a100-4-20c`` and the guest's ``A100-4-20C`` / ``GRID A100-4-20C`` → ``a100-4-20c``."""
    if not p:
        return None
    s = p.strip().lower()
    for prefix in ("grid_", "grid ", "nvidia_", "nvidia "):
        s = s.removeprefix(prefix)
    return s or None


def _fb_agrees(a: int | None, b: int | None) -> bool | None:
    if not a or not b:
        return None
    return abs(a - b) <= FB_TOLERANCE * max(a, b)


def _class_fits(g: GuestGpu, d: VmGpuDevice) -> bool:
    """A vGPU guest GPU ↔ a vGPU device, a whole GPU ↔ passthrough / dynamic; unknown mode ↔ either."""
    gv = _guest_is_vgpu(g)
    return gv is None or gv == (d.backing == "vgpu")


def _fits(g: GuestGpu, d: VmGpuDevice) -> bool:
    """Nothing known contradicts GPU ``g`` being device ``d``: class, vGPU profile, framebuffer."""
    if not _class_fits(g, d):
        return False
    if d.backing == "vgpu":
        gp, dp = profile_key(g.vgpu_profile), profile_key(d.vgpu_profile)
        if gp and dp and gp != dp:
            return False
        if _fb_agrees(g.fb_total_bytes, d.vgpu_fb_bytes) is False:
            return False
    return True


def _vgpu_evidence(g: GuestGpu, d: VmGpuDevice) -> bool:
    """Profile or framebuffer positively agree (not merely not contradict)."""
    if d.backing != "vgpu" or _guest_is_vgpu(g) is False:
        return False
    gp, dp = profile_key(g.vgpu_profile), profile_key(d.vgpu_profile)
    return bool(gp and dp and gp == dp) or bool(_fb_agrees(g.fb_total_bytes, d.vgpu_fb_bytes))


def _mutual_unique(gpus: dict[str, GuestGpu], devs: dict[int, VmGpuDevice], ok: Any) -> list[tuple[str, int]]:
    """Pairs (g, d) where d is the only remaining device ``ok`` for g and g the only GPU for d,
    repeated until nothing changes (a pair taken can make another unique)."""
    out: list[tuple[str, int]] = []
    gs, ds = dict(gpus), dict(devs)
    while True:
        cand = {u: [k for k, d in ds.items() if ok(g, d)] for u, g in gs.items()}
        back: dict[int, list[str]] = {}
        for u, ks in cand.items():
            for k in ks:
                back.setdefault(k, []).append(u)
        found = [(u, ks[0]) for u, ks in cand.items() if len(ks) == 1 and back[ks[0]] == [u]]
        if not found:
            return out
        for u, k in found:
            out.append((u, k))
            del gs[u], ds[k]


def match_vm_gpus(devices: Iterable[VmGpuDevice], gpus: Iterable[GuestGpu]) -> dict[str, GpuMatch]:
    """The rule (module docstring) for one VM: GPU uuid (MIG instances included) → match."""
    gpus = list(gpus)
    rem_d: dict[int, VmGpuDevice] = {d.device_key: d for d in devices}
    rem_g: dict[str, GuestGpu] = {g.gpu_uuid: g for g in gpus}
    out: dict[str, GpuMatch] = {}

    def take(u: str, k: int, evidence: str) -> None:
        out[u] = GpuMatch(u, k, evidence)
        del rem_g[u], rem_d[k]

    addr = {u: parse_bdf(g.pci_bus_id) for u, g in rem_g.items()}
    ga = {u: (a[1], a[2]) for u, a in addr.items() if a is not None and a[0] == 0 and a[3] == 0}

    def slot_gpu(d: VmGpuDevice) -> str | None:
        sa = slot_guest_address(d.pci_slot_number)
        hits = [u for u, a in ga.items() if a == sa] if sa is not None else []
        return hits[0] if len(hits) == 1 else None

    # 1. host PCI id of the passthrough backing = the address the guest shows
    for u, g in list(rem_g.items()):
        a = addr[u]
        hits = [d for d in rem_d.values()
                if d.backing != "vgpu" and a is not None and parse_bdf(d.host_pci_id) == a and _class_fits(g, d)]
        if len(hits) == 1:
            other = slot_gpu(hits[0])
            if other is None or other == u:
                take(u, hits[0].device_key, HOST_PCI_ID)

    # 2. slotInfo.pciSlotNumber decoded to the guest bus/device, trusted where it explains the VM
    slotted = {k: slot_guest_address(d.pci_slot_number) for k, d in rem_d.items()}
    slotted = {k: sa for k, sa in slotted.items() if sa is not None}
    pairs: list[tuple[str, int]] = []
    for k, sa in slotted.items():
        hits = [u for u in rem_g if ga.get(u) == sa]
        if len(hits) == 1 and _class_fits(rem_g[hits[0]], rem_d[k]):
            pairs.append((hits[0], k))
    hit_d = {k for _, k in pairs}
    hit_g = {u for u, _ in pairs}
    miss_d = [k for k in slotted if k not in hit_d]
    miss_g = [u for u in rem_g if u not in hit_g and u in ga
              and any(_class_fits(rem_g[u], rem_d[k]) for k in slotted)]
    if not (miss_d and miss_g) and len(hit_g) == len(pairs):
        for u, k in pairs:
            take(u, k, PCI_SLOT)

    # 3. vGPU profile + framebuffer size
    for u, k in _mutual_unique(rem_g, rem_d, lambda g, d: _fits(g, d) and _vgpu_evidence(g, d)):
        take(u, k, VGPU_PROFILE)

    # 4. one GPU, one device left that fit each other
    for u, k in _mutual_unique(rem_g, rem_d, _fits):
        take(u, k, ONLY_DEVICE)

    # 5. the rest: ambiguous between the devices that fit, or unmatched
    for u, g in rem_g.items():
        cands = tuple(sorted(k for k, d in rem_d.items() if _fits(g, d)))
        out[u] = GpuMatch(u, None, AMBIGUOUS if cands else UNMATCHED, cands)

    for g in gpus:
        m = out[g.gpu_uuid]
        for mu in g.mig_uuids:
            out[mu] = GpuMatch(mu, m.device_key, m.evidence, m.candidates)
    return out


def match_vm_rows(devices: Iterable[Mapping[str, Any]], agent_rows: Iterable[Mapping[str, Any]]) -> dict[str, GpuMatch]:
    """:func:`match_vm_gpus` over ``inv_vm_gpu`` rows and ``agent_gpu`` rows of one VM."""
    gpus, orphans = guest_gpus_from_rows(agent_rows)
    out = match_vm_gpus([device_from_row(d) for d in devices], gpus)
    for u in orphans:
        out[u] = GpuMatch(u, None, UNMATCHED)
    return out
