"""The agent's polling side: enumerate GPUs, poll them on a schedule, keep a snapshot.

The HTTP side only ever reads :attr:`Agent.snapshot` (an immutable object replaced after each
poll), so a scrape never waits for NVML, however slow or stuck the driver is.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from pynvml import NVMLError

from accelmon.collector.agent import gpm, nvmlerr
from accelmon.collector.agent.gpu import Carry, GpuDown, GpuIdentity, GpuPoller, GpuSnapshot, read_identity
from accelmon.collector.agent.identity import VmIdentity, read_vm_identity

log = logging.getLogger("accelmon.agent")

# Xids initialised to 0 per GPU so that increase() sees their first occurrence (others appear
# when first seen): 13 graphics engine exception, 31 MMU fault, 43 GPU stopped processing,
# 45 preemptive cleanup, 48 double-bit ECC, 61/62 internal micro-controller, 63/64 ECC page
# retirement / row remapping, 74 NVLink error, 79 fallen off the bus, 92 high single-bit ECC
# rate, 94/95 contained / uncontained ECC error, 119/120 GSP error.
XID_INITIAL = (13, 31, 43, 45, 48, 61, 62, 63, 64, 74, 79, 92, 94, 95, 119, 120)
MAX_BACKOFF_S = 60.0
MAX_EVENTS_PER_POLL = 256


def handle_key(h: Any) -> Any:
    """The device a handle addresses, comparable across calls.

    A real pynvml handle is a ``c_nvmlDevice_t`` pointer and every call (``nvmlEventSetWait``'s
    ``data.device`` included) returns a *new* Python object for it, so ``id(handle)`` never
    matches; the pointer's address does.  Anything else (the simulation's handles) compares by
    value."""
    try:
        return ("ptr", ctypes.cast(h, ctypes.c_void_p).value)
    except (ctypes.ArgumentError, TypeError):
        return h


@dataclass
class Slot:
    """One NVML device index: its poller while up, its state while down."""

    index: int
    uuid: str | None = None
    identity: GpuIdentity | None = None
    poller: GpuPoller | None = None
    children: list[GpuPoller] = field(default_factory=list)  # MIG instances
    carry: Carry = field(default_factory=Carry)
    child_carry: dict[str, Carry] = field(default_factory=dict)
    down_code: int | None = None
    down_since: float = 0.0
    next_try: float = 0.0
    backoff: float = 0.0
    reinit_logged: bool = False
    xid: str = "unknown"  # ok | unsupported | no_permission | unknown


@dataclass(frozen=True)
class AgentSnapshot:
    at: float  # agent clock (Unix seconds) of the poll
    mono: float  # time.monotonic() of the poll, for the age at scrape time
    gpus: tuple[GpuSnapshot, ...]
    xid: dict[str, dict[int, int]]
    xid_status: dict[str, str]
    polls: int
    poll_seconds: float
    poll_cpu_seconds_total: float
    vm: VmIdentity
    driver_version: str
    nvml_version: str
    backend: str


class Agent:
    def __init__(
        self,
        nv: Any,
        *,
        clock: Any = None,
        poll_interval: float = 1.0,
        per_process: bool = False,
        hostname: str | None = None,
        dmi_dir: str = "/sys/class/dmi/id",
        sysfs_root: str | None = "/sys",
        backend: str = "nvml",
        count_history: bool = False,
        vm_identity: VmIdentity | None = None,
    ) -> None:
        self.nv = nv
        self.clock = clock
        self.poll_interval = float(poll_interval)
        # the poll interval on the agent's clock (a simulated clock may run `speed` times real time):
        # what the GPU pollers compare clock differences with (gaps, fallbacks)
        self.clock_interval = self.poll_interval * float(getattr(clock, "speed", 1.0) or 1.0)
        self.per_process = per_process
        self.sysfs_root = sysfs_root
        self.backend = backend
        self.count_history = count_history
        self.vm = vm_identity or read_vm_identity(dmi_dir, hostname)
        if self.vm.problem:
            log.warning("VM identity unavailable: %s; the daemon cannot join this agent to its VM", self.vm.problem)
        self.slots: list[Slot] = []
        self.driver_version = ""
        self.nvml_version = ""
        self._events: Any = None
        self._events_dirty = True
        self._xid: dict[str, dict[int, int]] = {}
        self._polls = 0
        self._poll_cpu = 0.0
        self._started_at = 0.0
        self._lock = threading.Lock()  # one poll at a time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.snapshot: AgentSnapshot | None = None

    def now(self) -> float:
        return self.clock.time() if self.clock is not None else time.time()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """nvmlInit and enumerate. NVMLError from nvmlInit propagates (the caller words it)."""
        nv = self.nv
        nv.nvmlInit()
        self._started_at = self.now()
        self.driver_version = self._sys("nvmlSystemGetDriverVersion")
        self.nvml_version = self._sys("nvmlSystemGetNVMLVersion")
        count = nv.nvmlDeviceGetCount()
        if count == 0:
            log.warning("NVML sees no GPU in this machine")
        for i in range(count):
            slot = Slot(i)
            self.slots.append(slot)
            self._bring_up(slot, self._started_at, first=True)
        self._setup_events()
        log.info("NVML %s, driver %s: %d GPU(s): %s", self.nvml_version, self.driver_version, count,
                 ", ".join(f"{s.index}={s.identity.name if s.identity else '?'}" for s in self.slots))

    def _sys(self, fname: str) -> str:
        try:
            return str(getattr(self.nv, fname)())
        except NVMLError:
            return ""

    def close(self) -> None:
        self.stop()
        try:
            if self._events is not None:
                self.nv.nvmlEventSetFree(self._events)
        except NVMLError:
            pass
        try:
            self.nv.nvmlShutdown()
        except NVMLError:
            pass

    # ------------------------------------------------------------------ bring-up / down
    def _bring_up(self, slot: Slot, now: float, first: bool = False) -> bool:
        nv = self.nv
        try:
            if not first and slot.down_code in nvmlerr.REINIT_LIBRARY:
                nv.nvmlInit()
            h = nv.nvmlDeviceGetHandleByUUID(slot.uuid) if slot.uuid else nv.nvmlDeviceGetHandleByIndex(slot.index)
            ident = read_identity(nv, h, slot.index, self.vm.hostname, self.sysfs_root)
            poller = GpuPoller(nv, h, ident, poll_interval=self.clock_interval, per_process=self.per_process,
                               carry=slot.carry)
            poller.probe_nvlink()
            children = []
            if ident.mig_mode:
                children = self._mig_children(slot, h, ident)
            gpm_ok, why = gpm.query_support(nv, h)
            for p in (poller, *children):
                if gpm_ok:
                    p.use_gpm(h, p.id.gi_id, now)  # a MIG instance: through the parent handle
                else:
                    gpm.log_unsupported(p._tag, why, p.carry.activity)
                ring = p.carry.ring
                if ring.last_ts == 0 and not self.count_history:
                    p.prime(now)  # count from now on, after the ring's newest sample (driver clock)
                elif not first:
                    ring.mark_down(now)  # what the ring lost while the GPU was down is unobserved
        except (NVMLError, GpuDown) as e:
            code = e.code if isinstance(e, GpuDown) else nvmlerr.code_of(e)
            self._mark_down(slot, code, now, str(e))
            return False
        was_down = slot.down_code is not None
        slot.uuid, slot.identity, slot.poller, slot.children = ident.uuid, ident, poller, children
        if was_down:
            log.info("GPU %d (%s) is back after %.0f s", slot.index, ident.uuid, now - slot.down_since)
        slot.down_code, slot.backoff, slot.reinit_logged = None, 0.0, False
        if slot.xid != "unsupported":
            slot.xid = "unknown"  # (re-)register Xid events on the new handle
        self._events_dirty = True
        return True

    def _mig_children(self, slot: Slot, h: Any, parent: GpuIdentity) -> list[GpuPoller]:
        nv = self.nv
        out = []
        try:
            n = nv.nvmlDeviceGetMaxMigDeviceCount(h)
        except NVMLError as e:
            if nvmlerr.code_of(e) in nvmlerr.DOWN:
                raise
            return out
        for i in range(n):
            try:
                mh = nv.nvmlDeviceGetMigDeviceHandleByIndex(h, i)
            except NVMLError as e:
                c = nvmlerr.code_of(e)
                if c in nvmlerr.DOWN:
                    raise
                continue  # NOT_FOUND: no instance in that slot
            ident = read_identity(nv, mh, slot.index, self.vm.hostname, None, parent=parent)
            carry = slot.child_carry.setdefault(ident.uuid, Carry())
            out.append(GpuPoller(nv, mh, ident, poll_interval=self.clock_interval, per_process=self.per_process,
                                 carry=carry))
        return out

    def _mark_down(self, slot: Slot, code: int, now: float, why: str) -> None:
        if slot.down_code is None:
            slot.down_since = now
            hint = ""
            if code == self.nv.NVML_ERROR_LIB_RM_VERSION_MISMATCH:
                hint = " (the driver was reloaded or upgraded; if this persists, restart the agent)"
            log.error("GPU %d (%s) is down: %s%s; other GPUs keep serving; retrying with backoff",
                      slot.index, slot.uuid or "?", why, hint)
        slot.down_code = code
        for p in (slot.poller, *slot.children):
            if p is not None:
                p.close()  # free GPM sample buffers (best effort)
        slot.poller = None
        slot.children = []
        slot.backoff = min(MAX_BACKOFF_S, max(1.0, slot.backoff * 2))
        slot.next_try = now + slot.backoff

    # ------------------------------------------------------------------ Xid events
    def _setup_events(self) -> None:
        """(Re-)register Xid events for GPUs that are up and not registered yet."""
        nv = self.nv
        self._events_dirty = False
        if self._events is None:
            try:
                self._events = nv.nvmlEventSetCreate()
            except NVMLError as e:
                c = nvmlerr.code_of(e)
                if c in nvmlerr.UNSUPPORTED:
                    log.info("Xid events unavailable here (%s); no Xid counters", nvmlerr.name_of(c))
                    for s in self.slots:
                        s.xid = "unsupported"
                else:
                    self._events_dirty = True  # the driver is away: try again later
                return
        for s in self.slots:
            if s.poller is None or s.xid != "unknown":
                continue
            try:
                supported = nv.nvmlDeviceGetSupportedEventTypes(s.poller.h)
                if not supported & nv.nvmlEventTypeXidCriticalError:
                    s.xid = "unsupported"
                    continue
                nv.nvmlDeviceRegisterEvents(s.poller.h, nv.nvmlEventTypeXidCriticalError, self._events)
            except NVMLError as e:
                c = nvmlerr.code_of(e)
                if c in nvmlerr.UNSUPPORTED:
                    s.xid = "unsupported"
                elif c == nvmlerr.NO_PERMISSION:
                    log.warning("GPU %d: Xid events: NO_PERMISSION; Xid counters not exported", s.index)
                    s.xid = "no_permission"
                else:
                    self._events_dirty = True  # try again next poll
                continue
            s.xid = "ok"
            counts = self._xid.setdefault(s.uuid or "", {})
            for x in XID_INITIAL:
                counts.setdefault(x, 0)

    def _drain_events(self) -> None:
        nv = self.nv
        if self._events is None:
            return
        by_device = {}  # keyed by the device a handle addresses, never by id() of the Python object
        for s in self.slots:
            if s.poller is not None:
                by_device[handle_key(s.poller.h)] = s.uuid
        for _ in range(MAX_EVENTS_PER_POLL):
            try:
                ev = nv.nvmlEventSetWait(self._events, 0)
            except NVMLError as e:
                if nvmlerr.code_of(e) != nv.NVML_ERROR_TIMEOUT:
                    # the set is unusable (driver reload?): build a new one and re-register
                    self._events = None
                    for s in self.slots:
                        if s.xid == "ok":
                            s.xid = "unknown"
                    self._events_dirty = True
                return
            if not int(ev.eventType) & nv.nvmlEventTypeXidCriticalError:
                continue
            uuid = by_device.get(handle_key(ev.device))
            if uuid is None:  # not a GPU this agent polls (yet): ask the driver
                try:
                    uuid = nv.nvmlDeviceGetUUID(ev.device)
                except NVMLError:
                    continue
            xid = int(ev.eventData)
            counts = self._xid.setdefault(uuid, {})
            counts[xid] = counts.get(xid, 0) + 1
            log.warning("GPU %s: Xid %d", uuid, xid)

    # ------------------------------------------------------------------ polling
    def poll_once(self) -> AgentSnapshot:
        with self._lock:
            t0, c0 = time.perf_counter(), time.thread_time()
            now = self.now()
            gpus: list[GpuSnapshot] = []
            for slot in self.slots:
                if slot.poller is None and now >= slot.next_try:
                    if not slot.reinit_logged:
                        log.info("GPU %d: trying to re-initialise", slot.index)
                        slot.reinit_logged = True
                    self._bring_up(slot, now)
                if slot.poller is None:
                    gpus.append(self._down_snapshot(slot))
                    continue
                try:
                    gpus.append(slot.poller.poll(now))
                    for ch in slot.children:
                        gpus.append(ch.poll(now))
                except GpuDown as e:
                    self._mark_down(slot, e.code, now, str(e))
                    self._events_dirty = True
                    gpus = [g for g in gpus if g.identity.parent_uuid != slot.uuid and g.identity.uuid != slot.uuid]
                    gpus.append(self._down_snapshot(slot))
            if self._events_dirty:
                self._setup_events()
            self._drain_events()
            self._polls += 1
            self._poll_cpu += time.thread_time() - c0
            snap = AgentSnapshot(
                at=now,
                mono=time.monotonic(),
                gpus=tuple(gpus),
                xid={u: dict(c) for u, c in self._xid.items()},
                xid_status={s.uuid or str(s.index): s.xid for s in self.slots},
                polls=self._polls,
                poll_seconds=time.perf_counter() - t0,
                poll_cpu_seconds_total=self._poll_cpu,
                vm=self.vm,
                driver_version=self.driver_version,
                nvml_version=self.nvml_version,
                backend=self.backend,
            )
            self.snapshot = snap
            return snap

    def _down_snapshot(self, slot: Slot) -> GpuSnapshot:
        ident = slot.identity or GpuIdentity(slot.index, slot.uuid or "", "", "", self.vm.hostname)
        return GpuSnapshot(identity=ident, up=False)

    def start_polling(self) -> None:
        """Poll in a background thread every poll_interval seconds (real time)."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="accelmon-agent-poll", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        last_err = ""
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                self.poll_once()
                last_err = ""
            except Exception as e:  # never let the poll thread die
                msg = f"{type(e).__name__}: {e}"
                if msg != last_err:
                    log.exception("poll failed: %s", msg)
                    last_err = msg
            self._stop.wait(max(0.0, self.poll_interval - (time.monotonic() - t0)))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def healthy(self) -> bool:
        snap = self.snapshot
        if snap is None:
            return False
        return time.monotonic() - snap.mono < max(3 * self.poll_interval, 10.0)
