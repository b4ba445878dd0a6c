"""``VCenterSource``: the vCenter source behind the :class:`accelmon.collector.base.Source` interface.

Three jobs share one session (see :meth:`VCenterSource.jobs`), serialized per vCenter:

* ``vcenter.inventory`` (``inventory_interval``): inventory deltas; a full snapshot of the
  inv_* tables is written only when something changed (and on the first poll)
* ``vcenter.perf`` (``perf_interval``): power/energy of every GPU VM and host
* ``vcenter.events`` (``events_interval``): vMotions, joined with the stun time from vmware.log

With the inventory, the owners of the GPU VMs (:mod:`owners`): tags read in bulk through the
tagging REST API (:mod:`tagging`), custom attributes from the inventory's own answers; a
``vm_owner`` row is written for a VM when its owner data changed.

``collect`` runs all three (``accelmon run --once``, tests, benchmark).  Cursors live in
``<data-dir>/state/vcenter-<uuid>.json``.  A poll's rows and the cursor moves that cover them
travel together as :class:`Pending` steps: each step's ``commit`` runs only after its table's
append returned (the daemon's write-through sink: fsync + rename), then the state file is saved.
A failed append leaves every cursor where it was, so the next poll reads the same data again.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyVmomi import vim

from accelmon.collector.base import CollectResult, SourceJob
from accelmon.collector.vcenter import events as ev
from accelmon.collector.vcenter import perf, stunlog
from accelmon.collector.vcenter.inventory import Inventory, PollStats
from accelmon.collector.vcenter.owners import OwnerTracker
from accelmon.collector.vcenter.session import VCenterSession, insecure_transport
from accelmon.collector.vcenter.state import VCenterState, load_state, reconcile, save_state, state_path
from accelmon.collector.vcenter.tagging import TaggingClient
from accelmon.config import VCenterConfig
from accelmon.owners_config import OwnersConfig
from accelmon.store.schema import table
from accelmon.store.sink import StoreWriter
from accelmon.store.writer import to_arrow

log = logging.getLogger(__name__)

UTC = dt.UTC


def _dt(t: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(t, UTC)


def _noop() -> None:
    return None


@dataclass(frozen=True)
class Pending:
    """Rows of one table, and the cursor move to make once they are stored (not before)."""

    table: str
    rows: list[dict[str, Any]]
    commit: Callable[[], None] = _noop


class VCenterSource:
    """One vCenter. ``name = "vcenter"``; ``target`` is the SDK URL (no credentials)."""

    name = "vcenter"

    def __init__(self, cfg: VCenterConfig, *, data_dir: str | Path | None = None,
                 owners: OwnersConfig | None = None) -> None:
        self.cfg = cfg
        self.target = cfg.url
        self.session = VCenterSession(cfg)
        self.inventory = Inventory(self.session)
        oc = owners if owners is not None else OwnersConfig()
        self.owners: OwnerTracker | None = OwnerTracker(oc) if oc.enabled else None
        self.tagging: TaggingClient | None = (
            TaggingClient(self.session, oc.categories().values(), oc.tag_cache_ttl) if oc.enabled else None)
        self._data_dir = Path(data_dir) if data_dir is not None else None
        self._state: VCenterState | None = None
        self._state_file: Path | None = None
        self._counters: dict[str, int] | None = None
        self._lock = threading.RLock()
        self._inventory_polled = False
        # counters for the exporter (monotonic)
        self.log_lines_total = 0
        self.log_garbage_lines_total = 0
        self.last_inventory: PollStats | None = None
        why = insecure_transport(cfg)
        if why is not None:
            log.warning("vCenter %s (%s): insecure connection: %s", cfg.display_name, cfg.url, why)

    # ------------------------------------------------------------------ Source API
    def jobs(self, interval_s: float) -> list[SourceJob]:
        """Three schedules at the vCenter's own intervals (``interval_s`` is its perf interval)."""
        return [
            SourceJob("vcenter.inventory", self.cfg.inventory_interval, self.collect_inventory),
            SourceJob("vcenter.perf", self.cfg.perf_interval, self.collect_perf),
            SourceJob("vcenter.events", self.cfg.events_interval, self.collect_events),
        ]

    def collect(self, store: StoreWriter) -> CollectResult:
        res = CollectResult()
        with self._lock:
            self._inventory_and_perf(store, res)
            self._events(store, res)
        return res

    def poll_inventory_and_perf(self, store: StoreWriter) -> CollectResult:
        """Inventory and power in one go (what the benchmark calls a poll)."""
        res = CollectResult()
        with self._lock:
            self._inventory_and_perf(store, res)
        return res

    def _inventory_and_perf(self, store: StoreWriter, res: CollectResult) -> None:
        if not self._inventory_polled:
            self._inventory(store, res)
            self._perf(store, res)
            return
        # steady state: the inventory delta (a server round trip that mostly waits) runs
        # while the power samples of the entities known so far are read
        plan = self._perf_plan()
        with ThreadPoolExecutor(1, thread_name_prefix="vcenter-inventory") as ex:
            fut = ex.submit(self.inventory.poll)
            try:
                self._perf(store, res, plan)
            finally:
                st = fut.result()
        self._inventory(store, res, st)

    def collect_inventory(self, store: StoreWriter) -> CollectResult:
        res = CollectResult()
        with self._lock:
            self._inventory(store, res)
        return res

    def collect_perf(self, store: StoreWriter) -> CollectResult:
        res = CollectResult()
        with self._lock:
            if not self._inventory_polled:
                self._inventory(store, res)
            self._perf(store, res)
        return res

    def collect_events(self, store: StoreWriter) -> CollectResult:
        res = CollectResult()
        with self._lock:
            if not self._inventory_polled:
                self._inventory(store, res)
            self._events(store, res)
        return res

    def close(self) -> None:
        with self._lock:
            self.inventory.stop_listening(wait=False)
            if self.tagging is not None:
                self.tagging.close()
            self.session.close()

    @property
    def relogins_total(self) -> int:
        """Logins after the first one (expired or terminated sessions)."""
        return max(0, self.session.generation - 1)

    # ------------------------------------------------------------------ plumbing
    @property
    def vcenter_uuid(self) -> str:
        return self.inventory.vcenter_uuid or ""

    def _write(self, store: Any, res: CollectResult, name: str, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        data = to_arrow(table(name), rows)
        n = store.append(name, data)
        res.add(name, int(n) if isinstance(n, int) else data.num_rows)
        res.tables[name] = data

    def _append_then_commit(self, store: Any, res: CollectResult, steps: Sequence[Pending]) -> None:
        """Append each step's rows, then make its cursor move; save the state file at the end.

        A failed append raises before its commit (and the later steps'), so those cursors stay
        behind the rows that are not stored.  The steps already stored keep their moves (in
        memory, and in the state file when it can be written), so nothing is stored twice."""
        try:
            for step in steps:
                self._write(store, res, step.table, step.rows)
                step.commit()
        except BaseException:
            with contextlib.suppress(OSError):  # the disk may be full: the store reconciles at load
                self._save()
            raise
        self._save()

    def _state_for(self, store: Any) -> VCenterState:
        if self._state is not None:
            return self._state
        root = self._data_dir or getattr(store, "root", None)
        if root is not None and self.vcenter_uuid:
            self._state_file = state_path(root, self.vcenter_uuid)
            self._state = load_state(self._state_file)
        else:
            self._state = VCenterState()
        self._reconcile(store, self._state)
        return self._state

    def _reconcile(self, store: Any, st: VCenterState) -> None:
        connect = getattr(store, "connect", None)
        if connect is None:
            return
        try:
            con = connect()
        except Exception as e:  # noqa: BLE001 - a fresh data dir, or a store being compacted
            log.debug("vCenter %s: no cursors from the store: %s", self.target, e)
            return
        try:
            reconcile(st, con, self.vcenter_uuid, recent_since=time.time() - 2 * perf.REALTIME_WINDOW)
        finally:
            con.close()

    def _save(self) -> None:
        if self._state is not None and self._state_file is not None:
            save_state(self._state_file, self._state)

    # ------------------------------------------------------------------ inventory
    def _inventory(self, store: StoreWriter, res: CollectResult, polled: PollStats | None = None) -> None:
        st = polled if polled is not None else self.inventory.poll()
        self.last_inventory = st
        self._inventory_polled = True
        with self.inventory.lock:
            rows = self.inventory.snapshot_if_changed(dt.datetime.now(UTC), self.cfg.url, self.cfg.name)
        self.inventory.listen()  # from now on changes are pushed to us (long-poll thread)
        try:
            for name in ("inv_vcenter", "inv_host", "inv_numa_node", "inv_host_pci", "inv_vm", "inv_vm_gpu"):
                self._write(store, res, name, rows.get(name, []))
        except BaseException:
            self.inventory.forget_snapshot()
            raise
        self._owners(store, res)

    # ------------------------------------------------------------------ owners
    def _owners(self, store: Any, res: CollectResult) -> None:
        """vm_owner rows for the GPU VMs whose owner data changed (docs/owners.md).  When the
        tags cannot be read, nothing is written this cycle (a half-resolved owner would look
        like a change); the error is reported and the next cycle tries again."""
        if self.owners is None:
            return
        tracker = self.owners
        try:
            tags = self.tagging.attached() if self.tagging is not None else {}
        except Exception as e:  # noqa: BLE001 - tags are optional for the rest of the poll
            res.errors.append(f"vCenter {self.cfg.display_name}: tags not read: {e}")
            return
        with self.inventory.lock:
            rows = tracker.rows(self.inventory.model, tags, self.vcenter_uuid, dt.datetime.now(UTC))
        self._append_then_commit(store, res, [Pending("vm_owner", rows, lambda: tracker.committed(rows))])

    # ------------------------------------------------------------------ perf
    def _perf_plan(self) -> tuple[list[tuple[str, str]], dict[str, str | None]]:
        """Entities to read (powered-on GPU VMs, connected hosts) and the VMs' instance UUIDs."""
        with self.inventory.lock:
            m = self.inventory.model
            vms = [v for v in m.gpu_vm_morefs() if m._p(v).get("runtime.powerState") == "poweredOn"]
            hosts = [h for h in m.host_morefs() if m._p(h).get("runtime.connectionState") in (None, "connected")]
            inst = {v: m._p(v).get("config.instanceUuid") for v in vms}
        return [(v, "VirtualMachine") for v in vms] + [(h, "HostSystem") for h in hosts], inst

    def _perf(self, store: StoreWriter, res: CollectResult,
              plan: tuple[list[tuple[str, str]], dict[str, str | None]] | None = None) -> None:
        state = self._state_for(store)
        if self._counters is None:
            self._counters = perf.fetch_counter_ids(self.session)
            missing = {perf.POWER, perf.ENERGY} - set(self._counters)
            if missing:
                res.errors.append(f"perf counter(s) not offered by this vCenter: {', '.join(sorted(missing))}")
        entities, inst = plan if plan is not None else self._perf_plan()
        now = time.time()
        cursors = {**state.perf_host, **state.perf_vm}
        poll = perf.query_power(self.session, entities, cursors, self._counters, now)
        uuid = self.vcenter_uuid
        vm_rows, host_rows = [], []
        for s in poll.samples:
            row = {"ts": _dt(s.ts), "vcenter_uuid": uuid, "interval_seconds": s.interval,
                   "power_watts": s.power_watts, "energy_joules": s.energy_joules}
            if s.kind == "VirtualMachine":
                vm_rows.append({**row, "vm_moref": s.moref, "vm_instance_uuid": inst.get(s.moref)})
            else:
                host_rows.append({**row, "host_moref": s.moref})
        gap = perf.lost_stretch(state.perf_last_ts, now)
        gap_rows = []
        if gap is not None:
            gap_rows.append({
                "gap_start": _dt(gap[0]), "gap_end": _dt(gap[1]), "source": self.name, "target": self.target,
                "reason": "no perf poll for longer than vCenter's 1 h realtime window: "
                          "power/energy samples in between are lost",
            })

        def gap_recorded() -> None:  # everything before the gap's end is now stored or recorded lost
            if gap is not None:
                state.perf_last_ts = max(state.perf_last_ts or 0.0, gap[1])

        def advance(kind: str) -> Callable[[], None]:
            def commit() -> None:
                d = state.perf_vm if kind == "VirtualMachine" else state.perf_host
                for s in poll.samples:
                    if s.kind == kind and s.ts > d.get(s.moref, 0.0):
                        d[s.moref] = s.ts
            return commit

        def covered() -> None:
            if poll.samples:
                state.perf_last_ts = max(state.perf_last_ts or 0.0, max(s.ts for s in poll.samples))
            elif state.perf_last_ts is None or gap is not None:
                state.perf_last_ts = now - perf.REALTIME_INTERVAL

        self._append_then_commit(store, res, [
            Pending("collection_gap", gap_rows, gap_recorded),
            Pending("vm_power_sample", vm_rows, advance("VirtualMachine")),
            Pending("host_power_sample", host_rows, advance("HostSystem")),
            Pending("collection_gap", [], covered),
        ])

    # ------------------------------------------------------------------ events
    def _events(self, store: StoreWriter, res: CollectResult) -> None:
        state = self._state_for(store)
        events = ev.read_events(self.session, state)
        now = time.time()
        draft = state.events_draft()  # cursors move here; the state takes them once rows are stored
        migrations = ev.pair(events, draft, now)
        rows = []
        parsed: dict[str, list[stunlog.StunRecord]] = {}
        logs: dict[str, dict[str, Any]] = {}  # new vmware.log cursors, committed with the rows
        seen = stunlog.LogStats()
        for mig in migrations:
            with self.inventory.lock:
                m = self.inventory.model
                facts = (m.vm_vgpu_fb(mig.vm_moref), m.cluster_of(mig.dst_host_moref)[1],
                         m._p(mig.vm_moref).get("config.instanceUuid"))
            (vgpu, fb), cl_name, inst_uuid = facts
            stun = None
            # every migrated VM's log is read, from where the last stored read stopped
            if mig.vm_moref not in parsed:
                parsed[mig.vm_moref] = self._read_log(mig.vm_moref, mig.datacenter_name, state, res, logs, seen)
            stun = stunlog.match_stun(
                parsed[mig.vm_moref],
                _dt(mig.started_at) if mig.started_at else None,
                _dt(mig.ended_at),
            )
            reason = mig.failure_reason
            if stun is not None and stun.failure_reason:
                reason = stun.failure_reason
            rows.append({
                "started_at": _dt(mig.started_at) if mig.started_at else None,
                "ended_at": _dt(mig.ended_at),
                "vcenter_uuid": self.vcenter_uuid,
                "chain_id": mig.chain_id,
                "vm_moref": mig.vm_moref,
                "vm_instance_uuid": inst_uuid,
                "vm_name": mig.vm_name,
                "cluster_name": mig.cluster_name or cl_name,
                "src_host_moref": mig.src_host_moref,
                "dst_host_moref": mig.dst_host_moref,
                "src_host_name": mig.src_host_name,
                "dst_host_name": mig.dst_host_name,
                "drs": mig.drs,
                "succeeded": mig.succeeded and not (stun is not None and stun.failure_reason),
                "failure_reason": reason,
                "stun_seconds": stun.stun_seconds if stun is not None else None,
                "vgpu_attached": vgpu or bool(stun is not None and stun.vgpu),
                "vgpu_fb_bytes": fb,
            })
        chains = [mig.chain_id for mig in migrations]

        def commit() -> None:
            state.commit_events(draft, chains, logs)
            self.log_lines_total += seen.lines
            self.log_garbage_lines_total += seen.garbage_lines

        self._append_then_commit(store, res, [Pending("vmotion", rows, commit)])

    def _read_log(self, vm: str, dc_name: str | None, state: VCenterState, res: CollectResult,
                  logs: dict[str, dict[str, Any]], stats: stunlog.LogStats) -> list[stunlog.StunRecord]:
        """The stun records of ``vm``'s vmware.log after its stored cursor; the moved cursor goes
        to ``logs`` and the line counts to ``stats``, both committed with the vmotion rows (a
        failed write reads, and counts, the same bytes again)."""
        with self.inventory.lock:
            dc, logdir = self.inventory.model.vm_dc_and_logdir(vm)
        if logdir is None:  # not a GPU VM: the inventory did not keep it; ask for this one property
            try:
                logdir = self.session.call(
                    lambda: vim.VirtualMachine(vm, self.session.stub).config.files.logDirectory
                )
            except Exception as e:  # noqa: BLE001 - gone since, or no permission: no stun time
                res.errors.append(f"{vm}: log directory unknown: {e}")
                return []
        url = stunlog.log_url(logdir or "", dc_name or dc or "")
        if url is None:
            return []
        cur_raw = state.logs.get(vm)
        cur = stunlog.LogCursor.from_json(cur_raw) if cur_raw and cur_raw.get("url") == url else stunlog.LogCursor(url)
        try:
            chunks, new_cur = stunlog.fetch_new(self.session.http_get, cur)
        except Exception as e:  # noqa: BLE001 - a log we cannot read only costs the stun time
            res.errors.append(f"{vm}: vmware.log not readable: {e}")
            return []
        p = stunlog.parse_chunks(chunks)
        if p.stats.garbage_lines:
            res.errors.append(f"{vm}: vmware.log: skipped {p.stats.garbage_lines} unparseable line(s)")
        logs[vm] = new_cur.to_json()
        stats.add(p.stats)
        return p.records
