"""Plan steps: the vSphere actions a person takes to carry out a consolidation plan.

ARCHITECTURE.md: "A plan step is one vSphere action a person can take (vMotion, host graphics
policy, vGPU profile change, passthrough reassignment, NUMA affinity, host standby), with
preconditions and the API call. accelmon never executes it." The vocabulary is fixed
(:data:`VOCABULARY`); each step carries its preconditions, the vSphere API call, one PowerCLI
line, the measured evidence and the risk. docs/analytics.md, "Plan steps", documents them.

What a person can and cannot choose (vSphere API reference, ``HostGraphicsConfig``):
a vGPU VM's physical GPU is not picked by anyone — ESXi places the vGPU at power-on / vMotion
by the host's ``sharedPassthruAssignmentPolicy`` (``performance`` spreads vGPUs over GPUs,
``consolidation`` groups them on GPUs already in use). So a packing move onto a GPU becomes
"set the target host's policy to consolidation, then vMotion the VM there" (another host) or
"… then power-cycle the VM" (same host): the GPU the plan names is where the policy is expected
to put it, not something a step sets. A passthrough GPU is chosen by its host PCI address in the
VM's configuration (VM powered off).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from accelmon.analytics.profiles import _NAME_RE

VMOTION = "vmotion"
SET_GRAPHICS_POLICY = "set-host-graphics-policy"
CHANGE_VGPU_PROFILE = "change-vgpu-profile"
REASSIGN_PASSTHROUGH = "reassign-passthrough"
SET_NUMA_AFFINITY = "set-numa-affinity"
ENTER_MAINTENANCE = "enter-maintenance"
POWER_OFF_HOST = "power-off-host"

# action -> (vSphere API method, the PowerCLI cmdlet its line starts with)
VOCABULARY: dict[str, tuple[str, str]] = {
    VMOTION: ("VirtualMachine.RelocateVM_Task", "Move-VM"),
    SET_GRAPHICS_POLICY: ("HostGraphicsManager.UpdateGraphicsConfig", "$gm = Get-View"),
    CHANGE_VGPU_PROFILE: ("VirtualMachine.ReconfigVM_Task", "$vm = Get-VM"),
    REASSIGN_PASSTHROUGH: ("VirtualMachine.ReconfigVM_Task", "$vm = Get-VM"),
    SET_NUMA_AFFINITY: ("VirtualMachine.ReconfigVM_Task", "New-AdvancedSetting"),
    ENTER_MAINTENANCE: ("HostSystem.EnterMaintenanceMode_Task", "Set-VMHost"),
    POWER_OFF_HOST: ("HostSystem.PowerDownHostToStandBy_Task", "Suspend-VMHost"),
}
POWER_OFF = "VM powered off (Shutdown-VMGuest, or Stop-VM); power it on after the last step for it"
VGPU_DRIVER = "the guest has the NVIDIA vGPU guest driver and a vGPU licence (a passthrough guest runs the data-center driver)"

# PowerShell treats these as single quotes too (about_Quoting_Rules): each is doubled inside '…'
_PS_QUOTES = "'\u2018\u2019\u201a\u201b"
_WILDCARD = "*?[]`"  # the backtick is the escape character itself


def ps_literal(s: str) -> str:
    """A PowerShell single-quoted literal for ``s``: quotes doubled; control characters (which
    would end the line) become ``?``; no expansion happens inside single quotes."""
    out = []
    for c in s:
        if c in _PS_QUOTES:
            out.append(c + c)
        elif ord(c) < 32 or ord(c) == 127 or c in "\u2028\u2029\x85":
            out.append("?")
        else:
            out.append(c)
    return "'" + "".join(out) + "'"


def ps_name(s: str) -> str:
    """A literal for ``-Name`` (a wildcard pattern): ``* ? [ ]`` and the backtick escaped with a backtick, so the
    name matches only itself (a control character, made ``?``, matches any one character)."""
    return ps_literal("".join("`" + c if c in _WILDCARD else c for c in s))


def comment(s: str) -> str:
    """Text safe inside a one-line ``#`` comment (no line breaks, no block-comment end)."""
    return "".join("?" if ord(c) < 32 or c in "\u2028\u2029\x85\x7f" else c for c in s).replace("#>", "# >")


def _vm(name: str) -> str:
    return f"(Get-VM -Name {ps_name(name)})"


def _host(name: str) -> str:
    return f"(Get-VMHost -Name {ps_name(name)})"


def _reconfig(vm_name: str, body: str) -> str:
    return (f"$vm = Get-VM -Name {ps_name(vm_name)}; {body}; $vm.ExtensionData.ReconfigVM((New-Object "
            "VMware.Vim.VirtualMachineConfigSpec -Property @{DeviceChange = $dc}))")


def _dev(key: int) -> str:
    return f"$d = $vm.ExtensionData.Config.Hardware.Device | Where-Object {{ $_.Key -eq {int(key)} }}"


@dataclass
class Step:
    n: int
    action: str
    subject: str  # VM id (<vcenter>/<moref>) or host name
    subject_name: str  # VM or host name as in the inventory
    words: str
    preconditions: list[str]
    api: str
    powercli: str
    evidence: dict[str, Any] = field(default_factory=dict)
    risk: dict[str, Any] = field(default_factory=dict)
    target: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# ----------------------------------------------------------------------------- one builder per action
def vmotion(vm_id: str, vm: str, host: str, *, live: bool, vgpu: bool) -> dict[str, Any]:
    pre = ["the target host is connected and not in maintenance mode",
           "the VM's datastores and networks are reachable from the target host (else add a storage/network "
           "relocation to the spec)"]
    if vgpu:
        pre.append("the target host offers the VM's vGPU profile and has a GPU of that model with room for it")
        pre.append("vGPU vMotion enabled in vCenter (vgpu.hotmigrate.enabled) for a live migration")
    return {"action": VMOTION, "subject": vm_id, "subject_name": vm,
            "words": f"{'vMotion' if live else 'Cold-migrate (VM is off)'} {vm} to host {host}",
            "preconditions": pre,
            "api": (f"VirtualMachine.RelocateVM_Task(spec=VirtualMachineRelocateSpec(host=HostSystem '{host}', "
                    "pool=<root resource pool of the target host's cluster>))"),
            "powercli": f"Move-VM -VM {_vm(vm)} -Destination {_host(host)}",
            "target": {"host": host}}


def set_graphics_policy(host: str, policy: str, current: str | None, power_cycle: list[str]) -> dict[str, Any]:
    words = f"Set host {host}'s shared passthrough GPU assignment policy to {policy}"
    if power_cycle:
        words += ("; then power-cycle (power off, power on) " + ", ".join(power_cycle)
                  + " so ESXi places each vGPU again, grouped on GPUs already in use")
    return {"action": SET_GRAPHICS_POLICY, "subject": host, "subject_name": host, "words": words,
            "preconditions": [f"current policy: {current or 'unknown'} (no change needed if already {policy})",
                              "applies to vGPUs placed afterwards (power-on, vMotion in); running vGPUs stay "
                              "where they are"],
            "api": ("HostGraphicsManager.UpdateGraphicsConfig(config=HostGraphicsConfig("
                    f"hostDefaultGraphicsType=<unchanged>, sharedPassthruAssignmentPolicy='{policy}'))"),
            "powercli": (f"$gm = Get-View {_host(host)}.ExtensionData.ConfigManager.GraphicsManager; "
                         "$gm.UpdateGraphicsConfig((New-Object VMware.Vim.HostGraphicsConfig -Property "
                         "@{HostDefaultGraphicsType = $gm.GraphicsConfig.HostDefaultGraphicsType; "
                         f"SharedPassthruAssignmentPolicy = {ps_literal(policy)}}}))"),
            "target": {"policy": policy, "power_cycle": power_cycle}}


def change_vgpu_profile(vm_id: str, vm: str, device_key: int, from_profile: str | None, to_profile: str
                        ) -> dict[str, Any]:
    """``from_profile`` None: a passthrough device replaced by a vGPU device (same ReconfigVM_Task)."""
    vg = f"VirtualPCIPassthroughVmiopBackingInfo(vgpu='{to_profile}')"
    if from_profile is None:
        api = (f"VirtualMachine.ReconfigVM_Task(spec=VirtualMachineConfigSpec(deviceChange=[remove "
               f"VirtualPCIPassthrough key={device_key}, add VirtualPCIPassthrough(backing={vg})]))")
        body = (_dev(device_key) + "; $new = New-Object VMware.Vim.VirtualPCIPassthrough -Property @{Key = -1; "
                "Backing = (New-Object VMware.Vim.VirtualPCIPassthroughVmiopBackingInfo -Property @{Vgpu = "
                f"{ps_literal(to_profile)}}})}}; $dc = @((New-Object VMware.Vim.VirtualDeviceConfigSpec -Property "
                "@{Operation = 'remove'; Device = $d}), (New-Object VMware.Vim.VirtualDeviceConfigSpec -Property "
                "@{Operation = 'add'; Device = $new}))")
        words = f"Convert {vm}'s passthrough GPU (device {device_key}) to vGPU profile {to_profile}"
        pre = [POWER_OFF, VGPU_DRIVER, "the host the VM is registered on offers the profile (else migrate it first)"]
    else:
        api = (f"VirtualMachine.ReconfigVM_Task(spec=VirtualMachineConfigSpec(deviceChange=[edit "
               f"VirtualPCIPassthrough key={device_key}: backing={vg}]))")
        body = (_dev(device_key) + f"; $d.Backing.Vgpu = {ps_literal(to_profile)}; $dc = @((New-Object "
                "VMware.Vim.VirtualDeviceConfigSpec -Property @{Operation = 'edit'; Device = $d}))")
        words = f"Change {vm}'s vGPU profile from {from_profile} to {to_profile}"
        pre = [POWER_OFF, "the host offers the profile"]
    return {"action": CHANGE_VGPU_PROFILE, "subject": vm_id, "subject_name": vm, "words": words,
            "preconditions": pre, "api": api, "powercli": _reconfig(vm, body),
            "target": {"device_key": device_key, "from_profile": from_profile or "passthrough",
                       "to_profile": to_profile}}


def reassign_passthrough(vm_id: str, vm: str, device_key: int, pci: str) -> dict[str, Any]:
    body = (_dev(device_key) + f"; $d.Backing.Id = {ps_literal(pci)}; $dc = @((New-Object "
            "VMware.Vim.VirtualDeviceConfigSpec -Property @{Operation = 'edit'; Device = $d}))")
    return {"action": REASSIGN_PASSTHROUGH, "subject": vm_id, "subject_name": vm,
            "words": f"Point {vm}'s passthrough device {device_key} at host PCI address {pci}",
            "preconditions": [POWER_OFF, f"{pci} is enabled for passthrough on the VM's host and free",
                              "same GPU model (vendor and device id) as the device it replaces"],
            "api": (f"VirtualMachine.ReconfigVM_Task(spec=VirtualMachineConfigSpec(deviceChange=[edit "
                    f"VirtualPCIPassthrough key={device_key}: backing=VirtualPCIPassthroughDeviceBackingInfo("
                    f"id='{pci}')]))"),
            "powercli": _reconfig(vm, body), "target": {"device_key": device_key, "pci": pci}}


def set_numa_affinity(vm_id: str, vm: str, node: int, current: str | None) -> dict[str, Any]:
    return {"action": SET_NUMA_AFFINITY, "subject": vm_id, "subject_name": vm,
            "words": f'Set {vm}\'s numa.nodeAffinity to "{node}" (its GPU\'s NUMA node; now '
                     f'{repr(current) if current else "unset"})',
            "preconditions": [POWER_OFF, "the VM runs on the host whose node this is (after its migration step)"],
            "api": ("VirtualMachine.ReconfigVM_Task(spec=VirtualMachineConfigSpec(extraConfig=["
                    f"OptionValue(key='numa.nodeAffinity', value='{node}')]))"),
            "powercli": (f"New-AdvancedSetting -Entity {_vm(vm)} -Name 'numa.nodeAffinity' -Value "
                         f"{ps_literal(str(node))} -Force -Confirm:$false"),
            "target": {"numa_node": node}}


def enter_maintenance(host: str) -> dict[str, Any]:
    return {"action": ENTER_MAINTENANCE, "subject": host, "subject_name": host,
            "words": f"Put host {host} into maintenance mode",
            "preconditions": ["every GPU VM the plan moves off it has moved",
                              "its other VMs (not recorded by accelmon) are evacuated: DRS in fully automated "
                              "mode does it, else migrate or power them off"],
            "api": "HostSystem.EnterMaintenanceMode_Task(timeout=0, evacuatePoweredOffVms=true)",
            "powercli": f"Set-VMHost -VMHost {_host(host)} -State Maintenance", "target": {}}


def power_off_host(host: str) -> dict[str, Any]:
    return {"action": POWER_OFF_HOST, "subject": host, "subject_name": host,
            "words": f"Put host {host} into standby (powered down, woken by vCenter/DPM when needed)",
            "preconditions": ["the host is in maintenance mode",
                              "IPMI/iLO or Wake-on-LAN is configured for the host, so it can leave standby"],
            "api": "HostSystem.PowerDownHostToStandBy_Task(timeoutSec=0, evacuatePoweredOffVms=true)",
            "powercli": f"Suspend-VMHost -VMHost {_host(host)}", "target": {}}


# ----------------------------------------------------------------------------- stun history
@dataclass(frozen=True)
class StunHistory:
    per_vm: dict[str, dict[str, Any]] = field(default_factory=dict)  # "<vcenter>/<moref>" -> figures
    vgpu_p95_seconds: float | None = None
    vgpu_migrations: int = 0
    limit_seconds: float | None = None
    fit: dict[str, float] | None = None


def stun_history(res: dict[str, Any] | None) -> StunHistory:
    """From :func:`accelmon.analytics.vmotion.vmotion_stun`'s result (measured, in the window)."""
    if not res:
        return StunHistory()
    per_vm: dict[str, dict[str, Any]] = {}
    pv = res.get("per_vm")
    if pv is not None and pv.height:
        for r in pv.to_dicts():
            per_vm[f"{r['vcenter_uuid']}/{r['vm_moref']}"] = {
                "migrations": r["migrations"], "p95_stun_seconds": r["p95_stun_seconds"],
                "max_stun_seconds": r["max_stun_seconds"]}
    p95, n = None, 0
    by = res.get("by_vgpu")
    if by is not None and by.height:
        for r in by.to_dicts():
            if r["vgpu"]:
                p95, n = r["p95_stun_seconds"], int(r["migrations"])
    return StunHistory(per_vm, p95, n, res.get("stun_limit_seconds"), res.get("fit"))


def _stun_risk(stun: StunHistory, vm_id: str, fb_bytes: int | None) -> dict[str, Any]:
    own = stun.per_vm.get(vm_id)
    risk: dict[str, Any] = {"stun_limit_seconds": stun.limit_seconds}
    if own and own["p95_stun_seconds"] is not None:
        risk.update(stun_p95_seconds=own["p95_stun_seconds"], stun_max_seconds=own["max_stun_seconds"],
                    stun_basis=f"this VM's {own['migrations']} measured migration(s)")
    elif stun.vgpu_p95_seconds is not None:
        risk.update(stun_p95_seconds=stun.vgpu_p95_seconds,
                    stun_basis=f"all {stun.vgpu_migrations} measured vGPU migration(s) in the window")
    else:
        risk.update(stun_p95_seconds=None, stun_basis="no vGPU migration measured in the window: unknown")
    if stun.fit and fb_bytes:
        risk["stun_predicted_seconds"] = round(stun.fit["intercept"] + stun.fit["slope_s_per_gib"] * fb_bytes
                                               / float(1 << 30), 3)
    return risk


# ----------------------------------------------------------------------------- the plan's steps
def _full_profile(name: str, gpu: Any, placed: list[Any]) -> str:
    """The vSphere vGPU type for table profile ``name`` on ``gpu``: the prefix of a profile already
    there (``grid_a100-10c`` → ``grid_a100-``), else ``grid_<family>-`` (check it on the host)."""
    for t, _ in placed:
        full = str(getattr(t, "vgpu_profile_full", None) or "").strip().lower()
        m = _NAME_RE.search(full)
        if m:
            return full[: m.start()] + "-" + name
    return f"grid_{(gpu.model or 'gpu').split('-')[0]}-{name}"


def steps_for(plan: Any, gmap: dict[str, Any], hosts: dict[str, Any], tenants: dict[str, Any], *,
              stun: StunHistory | None = None) -> list[Step]:
    """The plan's moves and emptied hosts as ordered vSphere steps (module doc)."""
    stun = stun or StunHistory()
    raw: list[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]] = []  # (action, evidence, risk)
    win = plan.window
    by_host: dict[str, list[Any]] = {}
    for m in plan.moves:
        by_host.setdefault(m.to_host, []).append(m)
    # 1. each receiving host groups vGPUs before anything lands there
    for h in sorted(by_host):
        same = sorted({m.vm_name for m in by_host[h] if m.from_host == h and not m.converted})
        cap = hosts.get(h)
        a = set_graphics_policy(h, "consolidation", None if cap is None else cap.graphics_policy, same)
        raw.append((a, {"window": win, "vms_in": sorted({m.vm_name for m in by_host[h]}),
                        "planned_gpus": sorted({m.to_gpu for m in by_host[h]})},
                    {"power_off": bool(same), "note": "the landing GPU is chosen by ESXi, not by a person"}))
    # 2. per moved VM
    for m in plan.moves:
        t = tenants.get(m.vm)
        ev = {"window": win, "mean_util_percent": m.evidence.get("mean_util_percent"),
              "p95_util_percent": m.evidence.get("p95_util_percent"), "fb_peak_bytes": m.evidence.get("fb_hwm_bytes"),
              "measured_gpu": m.evidence.get("measured_gpu"), "from_gpu": m.from_gpu, "planned_gpu": m.to_gpu,
              "planned_gpu_p95_sum_after": m.evidence.get("target_gpu_p95_sum_after")}
        off = m.converted
        if m.converted:
            full = _full_profile(m.to_profile, gmap[m.to_gpu], plan.placement.get(m.to_gpu, []))
            raw.append((change_vgpu_profile(m.vm, m.vm_name, m.device_key, None, full), ev,
                        {"power_off": True, "note": "guest driver changes from passthrough to vGPU"}))
        if m.to_host != m.from_host:
            live = not off
            fb = None
            if not m.converted and t is not None:
                p = next((p for x, p in plan.placement.get(m.to_gpu, []) if x is t), None)
                fb = p.fb_bytes if p is not None else None
            risk = {"power_off": off, **(_stun_risk(stun, m.vm, fb) if live else {"stun": "none: VM is off"})}
            raw.append((vmotion(m.vm, m.vm_name, m.to_host, live=live, vgpu=True), ev, risk))
        cur = None if t is None else t.numa_affinity
        if cur is None or cur.strip() != str(m.to_numa_node):
            raw.append((set_numa_affinity(m.vm, m.vm_name, m.to_numa_node, cur), ev, {"power_off": True}))
    # 3. emptied hosts go to standby
    for e in plan.emptied_hosts:
        ev = {"window": win, **{k: e[k] for k in ("watts", "power_source", "gpus", "gpu_vms_moved", "non_gpu_vms")}}
        raw.append((enter_maintenance(e["host"]), ev, {"power_off": False}))
        raw.append((power_off_host(e["host"]), ev, {"power_off": False, "saves_watts": e["watts"]}))
    steps = [Step(n=i + 1, evidence=ev, risk=risk, **a) for i, (a, ev, risk) in enumerate(raw)]
    for m in plan.moves:
        mine = [s for s in steps if s.subject == m.vm or (s.action == SET_GRAPHICS_POLICY and
                                                          s.subject == m.to_host)]
        m.steps = [s.n for s in mine]
        m.fix = "; ".join(f"{s.n}. {s.words}" for s in mine)
    return steps
