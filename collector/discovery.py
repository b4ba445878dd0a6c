"""Agent discovery and the agent ↔ VM ↔ GPU-device join.

Discovery
---------
Targets = one URL per powered-on vCenter VM that has a GPU device and a guest IP
(``<scheme>://<ip>:<agents.port>/metrics``), plus ``agents.static``. The guest IP only
*finds* the agent; it is never used to decide which VM the agent is.

Join (agent → VM)
-----------------
By the SMBIOS system UUID the agent reports (``/sys/class/dmi/id/product_uuid``), which is
the VM's BIOS UUID in vCenter (``config.uuid``). Compared lower-case without braces; when
it does not match, the byte-swapped form is tried (SMBIOS < 2.6 guests show the first three
fields little-endian). Not by IP (NAT, DHCP churn, clones) and not by PCI address (a
passthrough GPU sits at a *virtual* PCI address in the guest). An agent whose UUID matches no
VM is kept and flagged unjoined.

Match (agent GPU → VM GPU device), per VM
-----------------------------------------
:func:`accelmon.identity.match_vm_gpus`, the one rule the exporter and the analytics use too
(docs/analytics.md, "Joining GPUs to VMs"): host PCI id of the passthrough backing, then the
device's ``slotInfo.pciSlotNumber`` ↔ the guest PCI address, then vGPU profile/framebuffer,
then the only device left; ``ambiguous`` (no device) where nothing tells two devices apart.
Each join carries the evidence used. An unmatched GPU stays joined to the VM with no device.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from accelmon.config import AgentsConfig
from accelmon.identity import UNMATCHED, match_vm_rows


def normalize_bios_uuid(u: str | None) -> str:
    """``{4213ABCD-…}`` / ``4213abcd…`` (32 hex) → ``4213abcd-…`` lower case; '' if absent."""
    if not u:
        return ""
    s = u.strip().strip("{}").lower()
    if s.startswith("vmware-"):  # serial number form: "VMware-42 13 ab cd ... -..."
        s = s[len("vmware-") :].replace(" ", "").replace("-", "")
    h = s.replace("-", "")
    if len(h) == 32 and all(c in "0123456789abcdef" for c in h):
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
    return s


def swapped_bios_uuid(u: str) -> str:
    """The same UUID with the first three fields byte-swapped (SMBIOS < 2.6 presentation)."""
    n = normalize_bios_uuid(u)
    parts = n.split("-")
    if len(parts) != 5:
        return n

    def sw(p: str) -> str:
        return "".join(reversed([p[i : i + 2] for i in range(0, len(p), 2)]))

    return "-".join([sw(parts[0]), sw(parts[1]), sw(parts[2]), parts[3], parts[4]])


@dataclass
class VmRecord:
    vcenter_uuid: str
    vcenter_name: str
    vm_moref: str
    vm_name: str
    vm_instance_uuid: str
    vm_bios_uuid: str
    host_moref: str = ""
    host_name: str = ""
    cluster_name: str = ""
    guest_ips: list[str] = field(default_factory=list)
    power_state: str = ""
    devices: list[dict[str, Any]] = field(default_factory=list)  # inv_vm_gpu rows, by device_key


@dataclass
class AgentRecord:
    url: str
    vm_bios_uuid: str
    hostname: str | None
    gpus: list[dict[str, Any]]  # agent_gpu rows of the agent's latest report


@dataclass
class GpuJoin:
    gpu_uuid: str
    agent_url: str | None
    vm: VmRecord | None
    device: dict[str, Any] | None  # inv_vm_gpu row
    evidence: str = UNMATCHED  # how the device was matched (accelmon.identity.EVIDENCE)


def _pick_ip(ips: Iterable[str]) -> str | None:
    v4: list[str] = []
    v6: list[str] = []
    for s in ips:
        try:
            ip = ipaddress.ip_address(s.split("%")[0])
        except ValueError:
            continue
        if ip.is_link_local or ip.is_unspecified or ip.is_multicast:
            continue
        (v4 if ip.version == 4 else v6).append(str(ip))
    if v4:
        return v4[0]
    return f"[{v6[0]}]" if v6 else None


def agent_targets(vms: Iterable[VmRecord], cfg: AgentsConfig) -> list[str]:
    """Agent URLs to scrape: discovered (GPU VMs' guest IPs) + static, deduplicated, sorted."""
    out = set(cfg.static)
    if cfg.discovery:
        for vm in vms:
            if vm.power_state and vm.power_state != "poweredOn":
                continue
            if not vm.devices:
                continue
            ip = _pick_ip(vm.guest_ips)
            if ip:
                out.add(f"{cfg.scheme}://{ip}:{cfg.port}/metrics")
    return sorted(out)


def match_gpus(vm: VmRecord, gpus: list[dict[str, Any]]) -> dict[str, tuple[dict[str, Any] | None, str]]:
    """Agent GPU uuid → (the VM's device row or None, the evidence), by the one rule."""
    by_key = {int(d["device_key"]): d for d in vm.devices}
    return {u: (by_key.get(m.device_key) if m.device_key is not None else None, m.evidence)
            for u, m in match_vm_rows(vm.devices, gpus).items()}


def join_agents(
    vms: list[VmRecord], agents: list[AgentRecord], gpu_bios: dict[str, str]
) -> tuple[dict[str, VmRecord | None], dict[str, GpuJoin]]:
    """(agent url → VM or None when unjoined, gpu uuid → join) for every known agent and GPU.

    ``gpu_bios`` maps GPU uuid → BIOS UUID for GPUs seen only in samples (dcgm exporters with a
    configured ``vm_bios_uuid``)."""
    by_bios: dict[str, VmRecord] = {}
    for vm in vms:
        if vm.vm_bios_uuid:
            by_bios.setdefault(vm.vm_bios_uuid, vm)

    def find(bios: str) -> VmRecord | None:
        if not bios:
            return None
        return by_bios.get(bios) or by_bios.get(swapped_bios_uuid(bios))

    agent_vm: dict[str, VmRecord | None] = {}
    joins: dict[str, GpuJoin] = {}
    for a in agents:
        vm = find(a.vm_bios_uuid)
        agent_vm[a.url] = vm
        devices = match_gpus(vm, a.gpus) if vm else {}
        for g in a.gpus:
            dev, evidence = devices.get(g["gpu_uuid"], (None, UNMATCHED))
            joins[g["gpu_uuid"]] = GpuJoin(g["gpu_uuid"], a.url, vm, dev, evidence)
    for uuid, bios in gpu_bios.items():
        if uuid not in joins:
            joins[uuid] = GpuJoin(uuid, None, find(bios), None)
    return agent_vm, joins
