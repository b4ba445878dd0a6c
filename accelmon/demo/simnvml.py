"""The simulated NVML as an agent :class:`~accelmon.collector.agent.main.Backend`
(``accelmon agent --simulate``, the demo's agents, tests).

The agent (product code) never imports the simulator; the demo side builds the backend and
hands it in (import-linter contract ``simulator-is-test-support`` in pyproject.toml)."""

from __future__ import annotations

import socket

from accelmon.collector.agent.identity import VmIdentity, normalize_uuid, read_vm_identity, swap_uuid_bytes
from accelmon.collector.agent.main import Backend
from accelmon.errors import UserError
from accelmon.sim.nvml import SimNVML
from accelmon.sim.spec import SimSpec


def _vm_identity(spec: SimSpec) -> VmIdentity | None:
    """A simulation spec may set the VM identity (the demo joins simulated agents to vcsim VMs)."""
    raw = spec.vm_bios_uuid
    host = spec.hostname
    uuid = normalize_uuid(raw)
    if raw is not None and uuid is None:
        raise UserError(f"simulation spec: vm_bios_uuid: not a UUID: {raw!r}")
    if uuid is not None:
        return VmIdentity(host or socket.gethostname(), uuid, swap_uuid_bytes(uuid), "simulated")
    return read_vm_identity(hostname=host) if host else None


def simulated_backend(spec: str) -> Backend:
    """``spec``: a preset name or a simulation spec file (raises UserError naming it when bad)."""
    sim = SimNVML(spec)
    return Backend(sim, name=f"simulated:{sim.spec.name}", clock=sim.clock, sysfs_root=None,
                   vm_identity=_vm_identity(sim.spec))
