"""A GPU's (or MIG instance's) identity as the guest sees it, read once per (re)initialisation.
Split out of :mod:`accelmon.collector.agent.gpu` (pure move).
"""

from __future__ import annotations

from typing import Any

from pynvml import NVMLError

from accelmon.collector.agent import nvmlerr
from accelmon.collector.agent.gpu_types import VIRT_MODES, GpuDown, GpuIdentity
from accelmon.collector.agent.identity import pci_numa_node


def _opt(nv: Any, fname: str, *args: Any) -> Any:
    """Optional identity field: None when unsupported/not permitted; GpuDown when the GPU is gone."""
    try:
        return getattr(nv, fname)(*args)
    except NVMLError as e:
        c = nvmlerr.code_of(e)
        if c in nvmlerr.DOWN:
            raise GpuDown(c, fname) from None
        return None


def read_identity(
    nv: Any, handle: Any, index: int, hostname: str, sysfs_root: str | None, parent: GpuIdentity | None = None
) -> GpuIdentity:
    """Identity of a GPU (or, with ``parent``, of a MIG instance). Raises GpuDown."""
    try:
        uuid = nv.nvmlDeviceGetUUID(handle)
    except NVMLError as e:
        raise GpuDown(nvmlerr.code_of(e), "nvmlDeviceGetUUID") from None
    name = _opt(nv, "nvmlDeviceGetName", handle) or "unknown"
    mem = _opt(nv, "nvmlDeviceGetMemoryInfo", handle)
    fb_total = int(mem.total) if mem is not None else None
    if parent is not None:
        gi = _opt(nv, "nvmlDeviceGetGpuInstanceId", handle)
        profile = name.split(" MIG ", 1)[1] if " MIG " in name else None
        return GpuIdentity(
            index=parent.index,
            uuid=uuid,
            name=name,
            pci_bus_id=parent.pci_bus_id,
            hostname=hostname,
            virtualization_mode=parent.virtualization_mode,
            mig_mode=True,
            numa_node=parent.numa_node,
            fb_total_bytes=fb_total,
            parent_uuid=parent.uuid,
            gi_id=gi,
            gi_profile=profile,
        )
    pci = _opt(nv, "nvmlDeviceGetPciInfo", handle)
    bus = str(pci.busId) if pci is not None else ""
    serial = _opt(nv, "nvmlDeviceGetSerial", handle)
    vm = _opt(nv, "nvmlDeviceGetVirtualizationMode", handle)
    virt = VIRT_MODES.get(int(vm), str(vm)) if vm is not None else "unknown"
    profile = None
    if virt == "vgpu":
        profile = name
        for prefix in ("GRID ", "NVIDIA "):
            if profile.startswith(prefix):
                profile = profile[len(prefix) :]
    mig = _opt(nv, "nvmlDeviceGetMigMode", handle)
    mig_mode = bool(mig[0]) if mig is not None else None
    numa = pci_numa_node(bus, sysfs_root) if (sysfs_root and bus) else None
    if numa is None:
        numa = _opt(nv, "nvmlDeviceGetNumaNodeId", handle)
    if numa is None:
        aff = _opt(nv, "nvmlDeviceGetMemoryAffinity", handle, 1, 0)  # NVML_AFFINITY_SCOPE_NODE
        if aff is not None and int(aff[0]):
            numa = (int(aff[0]) & -int(aff[0])).bit_length() - 1
    return GpuIdentity(
        index=index,
        uuid=uuid,
        name=name,
        pci_bus_id=bus,
        hostname=hostname,
        serial=serial or None,
        virtualization_mode=virt,
        vgpu_profile=profile,
        mig_mode=mig_mode,
        numa_node=-1 if numa is None else int(numa),
        fb_total_bytes=fb_total,
    )
