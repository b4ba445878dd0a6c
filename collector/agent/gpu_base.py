"""The GPU poller's sub-collector bookkeeping: support status per sub-collector (ok, unsupported,
no_permission, failed), NVML calls mapped onto those outcomes, logging on state changes.
Split out of :mod:`accelmon.collector.agent.gpu` (pure move); see that module's docstring.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from pynvml import NVMLError

from accelmon.collector.agent import nvmlerr
from accelmon.collector.agent.gpm import GpmReader
from accelmon.collector.agent.gpu_types import (
    NO_PERMISSION_RETRY_S,
    SUBS,
    VGPU_ABSENT,
    WHOLE_GPU,
    Carry,
    GpuDown,
    GpuIdentity,
    SubState,
    _Failed,
    _NoPermission,
    _Unsupported,
)

log = logging.getLogger("accelmon.agent")


class PollerBase:
    """One device handle's sub-collector status; :class:`~accelmon.collector.agent.gpu.GpuPoller` polls."""

    def __init__(
        self,
        nv: Any,
        handle: Any,
        identity: GpuIdentity,
        *,
        poll_interval: float,
        per_process: bool = False,
        carry: Carry | None = None,
    ) -> None:
        self.nv = nv
        self.h = handle
        self.id = identity
        self.poll_interval = poll_interval
        self.per_process = per_process
        self.carry = carry or Carry()
        self.subs = {s: SubState() for s in SUBS}
        self.unsupported_fns: set[str] = set()
        self.samples_ok = True
        self.pcie_mode = "fields"  # fields | throughput
        self.nvlinks: list[int] | None = None  # None until probed
        self.proc_names: dict[int, str] = {}
        self._tag = f"GPU {identity.index} ({identity.uuid})"
        if not per_process:
            self._set_unsupported("processes", "per-process metrics are off (agent.per_process)", quiet=True)
        self.vgpu_guest = identity.virtualization_mode == "vgpu"
        if self.vgpu_guest:
            for s in VGPU_ABSENT:
                self._set_unsupported(s, "not available inside a vGPU guest", quiet=True)
            log.info("%s: vGPU guest: power, energy and NVLink are not readable in a guest, not exported; "
                     "PCIe byte counters only if they read non-zero", self._tag)
        self.gpm: GpmReader | None = None  # set by use_gpm where GPM is supported
        self._set_unsupported("activity", "GPM not supported", quiet=True)
        if identity.gi_id is not None:
            for s in WHOLE_GPU:
                self._set_unsupported(s, "whole-GPU quantity (see the parent GPU)", quiet=True)

    # ------------------------------------------------------------------ helpers
    def _set_unsupported(self, sub: str, reason: str, quiet: bool = False) -> None:
        st = self.subs[sub]
        if st.status != "unsupported" and not quiet:
            log.info("%s: %s not supported (%s); not polled again", self._tag, sub, reason)
        st.status, st.reason = "unsupported", reason

    def _nv(self, fname: str, *args: Any) -> Any:
        if fname in self.unsupported_fns:
            raise _Unsupported(fname)
        try:
            return getattr(self.nv, fname)(*args)
        except NVMLError as e:
            c = nvmlerr.code_of(e)
            if c in nvmlerr.DOWN:
                raise GpuDown(c, fname) from None
            if c in nvmlerr.UNSUPPORTED:
                self.unsupported_fns.add(fname)
                raise _Unsupported(f"{fname}: {nvmlerr.name_of(c)}") from None
            if c == nvmlerr.NO_PERMISSION:
                raise _NoPermission(fname) from None
            raise _Failed(c, fname) from None

    def _note(self, sub: str, status: str, reason: str, now: float) -> None:
        """Record a sub-collector's outcome; log only when its state changes (permissions: once)."""
        st = self.subs[sub]
        prev = st.status
        if status == "unsupported":
            self._set_unsupported(sub, reason)
            return
        if status == "no_permission":
            st.retry_at = now + NO_PERMISSION_RETRY_S
            if not st.permission_logged:
                log.warning("%s: %s: NVML says NO_PERMISSION (%s); run the agent with the rights to read it. "
                            "Reported once; retried every %d s", self._tag, sub, reason, NO_PERMISSION_RETRY_S)
                st.permission_logged = True
        elif status == "failed" and prev != "failed":
            log.warning("%s: %s read failed: %s (series left out until it works again)", self._tag, sub, reason)
        elif status == "ok" and prev in ("failed", "no_permission"):
            log.info("%s: %s works again", self._tag, sub)
        st.status, st.reason = status, reason

    def _skip(self, sub: str, now: float) -> bool:
        st = self.subs[sub]
        return st.status == "unsupported" or (st.status == "no_permission" and now < st.retry_at)

    def _run(self, sub: str, now: float, fn: Any, out: dict[str, float]) -> None:
        if self._skip(sub, now):
            return
        t0 = time.perf_counter()
        vals = None
        try:
            vals = fn(now)
        except _Unsupported as e:
            self._note(sub, "unsupported", str(e), now)
        except _NoPermission as e:
            self._note(sub, "no_permission", str(e), now)
        except _Failed as e:
            self._note(sub, "failed", str(e), now)
        else:
            self._note(sub, "ok", "", now)
        self.subs[sub].duration_s = time.perf_counter() - t0
        if vals:
            out.update(vals)
