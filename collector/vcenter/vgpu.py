"""NVIDIA vGPU profile names → board, MIG slices, framebuffer, series.

vSphere shows a vGPU as ``VirtualPCIPassthroughVmiopBackingInfo.vgpu``, a profile (vGPU type)
name of the form ``grid_<board>-[<slices>-]<fbGB><series>``:

* ``grid_a100x-40c``  board a100x, 40 GB, series C (compute)
* ``grid_a100-4-20c`` MIG-backed: 4 compute slices (4g.20gb), 20 GB
* ``grid_m60-0b``     a 512 MiB profile (the label is ``0``)
* ``nvidia_h100xm-80c`` newer releases use the ``nvidia_`` prefix

Series: A (virtual apps), B (virtual PC), C (compute), Q (workstation); MIG media
extension profiles end in ``me`` (``grid_a100-1-5me``, ``grid_h100-1-10cme``).

The GB number is a rounded label (an "80 GB" board exposes 80 GiB minus ECC/reserved
memory), so :func:`fb_bytes` is what the label says; the collector prefers
``VirtualMachineVgpuProfileInfo.fbSizeInGib`` from ``ConfigTarget.vgpuProfileInfo`` when the
API offers it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

GIB = 1 << 30

_PROFILE_RE = re.compile(
    r"^(?P<prefix>grid|nvidia)_(?P<board>[a-z0-9]+)-(?:(?P<slices>\d+)-)?(?P<fb>\d+)(?P<series>cme|me|[abcq])$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class VgpuProfile:
    name: str
    board: str
    slices: int | None  # MIG compute slices (``4`` in ``grid_a100-4-20c``); None = time-sliced
    fb_label_gb: int  # the number in the name
    series: str  # a | b | c | q | me | cme (lower case)

    @property
    def fb_bytes(self) -> int:
        """Framebuffer the label stands for: N GiB, with ``0`` meaning 512 MiB."""
        return GIB // 2 if self.fb_label_gb == 0 else self.fb_label_gb * GIB

    @property
    def mig_backed(self) -> bool:
        return self.slices is not None


def parse_profile(name: str | None) -> VgpuProfile | None:
    """Parse a vGPU profile name; ``None`` when it is not one (never raises)."""
    if not name:
        return None
    m = _PROFILE_RE.match(name.strip())
    if m is None:
        return None
    slices = m.group("slices")
    return VgpuProfile(
        name=name.strip(),
        board=m.group("board").lower(),
        slices=int(slices) if slices is not None else None,
        fb_label_gb=int(m.group("fb")),
        series=m.group("series").lower(),
    )


def fb_bytes(name: str | None, fb_size_gib: dict[str, int] | None = None) -> int | None:
    """Framebuffer of a profile in bytes: the API's ``fbSizeInGib`` when known, else the label."""
    if not name:
        return None
    if fb_size_gib and name in fb_size_gib and fb_size_gib[name] > 0:
        return int(fb_size_gib[name]) * GIB
    p = parse_profile(name)
    return p.fb_bytes if p else None
