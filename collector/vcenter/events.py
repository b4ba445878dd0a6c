"""vMotion events: read from the last seen key, paired by ``chainId``, one row per migration.

* start: ``VmBeingHotMigratedEvent`` / ``VmBeingMigratedEvent`` (``host`` = source,
  ``destHost``), ``VmEmigratingEvent`` (source side)
* end: ``VmMigratedEvent`` / ``DrsVmMigratedEvent`` (``sourceHost``, ``host`` = destination),
  ``VmFailedMigrateEvent`` (``host`` = source, ``destHost``, ``reason``)

An ``EventHistoryCollector`` is created per poll with a type filter (and a time filter from
the last seen event on), rewound and read page by page, then destroyed.  Events with a key
at or below the cursor are skipped; chains already written are remembered in the state file,
so a migration is stored once across polls and restarts.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pyVmomi import vim

from accelmon.collector.vcenter.session import VCenterSession
from accelmon.collector.vcenter.state import VCenterState

START_TYPES = ("VmBeingHotMigratedEvent", "VmBeingMigratedEvent", "VmEmigratingEvent")
END_OK_TYPES = ("VmMigratedEvent", "DrsVmMigratedEvent")
END_FAIL_TYPES = ("VmFailedMigrateEvent",)
EVENT_TYPES = START_TYPES + END_OK_TYPES + END_FAIL_TYPES
PAGE = 1000
TIME_OVERLAP = dt.timedelta(minutes=10)  # re-read a little before the last event (clock skew, late commits)
PENDING_MAX_AGE = 86400.0
FIRST_LOOKBACK = dt.timedelta(days=7)  # first poll: migrations of the last week


def read_events(session: VCenterSession, state: VCenterState) -> list[Any]:
    """New migration events (key > cursor), oldest first."""
    em = session.content.eventManager

    def run() -> list[Any]:
        spec = vim.event.EventFilterSpec(eventTypeId=list(EVENT_TYPES), maxCount=PAGE)
        if state.event_time is not None:
            begin = dt.datetime.fromtimestamp(state.event_time, dt.UTC) - TIME_OVERLAP
        else:
            begin = dt.datetime.now(dt.UTC) - FIRST_LOOKBACK
        spec.time = vim.event.EventFilterSpec.ByTime(beginTime=begin)
        collector = em.CreateCollectorForEvents(spec)
        try:
            collector.RewindCollector()
            out: list[Any] = []
            seen: set[int] = set()
            while True:
                page = collector.ReadNextEvents(PAGE)
                if not page:
                    break
                fresh = [e for e in page if e.key not in seen]
                if not fresh:
                    break
                for e in fresh:
                    seen.add(e.key)
                out.extend(fresh)
                if len(page) < PAGE:
                    break
            return out
        finally:
            with contextlib.suppress(Exception):  # it dies with the session anyway
                collector.DestroyCollector()

    events = session.call(run)
    last = state.event_key if state.event_key is not None else -1
    return sorted((e for e in events if e.key > last), key=lambda e: e.key)


def _ref(arg: Any, attr: str) -> str | None:
    if arg is None:
        return None
    obj = getattr(arg, attr, None)
    return obj._moId if obj is not None else None


def _ts(t: dt.datetime | None) -> float | None:
    if t is None:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return t.timestamp()


@dataclass
class Migration:
    chain_id: int
    vm_moref: str
    vm_name: str | None
    started_at: float | None
    ended_at: float
    src_host_moref: str | None
    src_host_name: str | None
    dst_host_moref: str | None
    dst_host_name: str | None
    cluster_name: str | None
    datacenter_name: str | None
    drs: bool
    succeeded: bool
    failure_reason: str | None


def _event_type(e: Any) -> str:
    return type(e).__name__.rsplit(".", 1)[-1]


_MSG_KEY_RE = re.compile(r"\[msg\.[\w.]*?\.(\w+)\]")


def _fault_name(e: Any) -> str | None:
    """``maxSwitchoverTimeExceeded`` from ``[msg.checkpoint.migration.maxSwitchoverTimeExceeded] …``,
    else the fault's type name (``GenericVmConfigFault``)."""
    r = getattr(e, "reason", None)
    if r is None:
        return None
    f = getattr(r, "fault", None)
    for text in (getattr(r, "localizedMessage", None), getattr(f, "reason", None), getattr(f, "msg", None)):
        m = _MSG_KEY_RE.search(str(text or ""))
        if m is not None:
            return m.group(1)
    if f is not None:
        return type(f).__name__.rsplit(".", 1)[-1]
    return " ".join(str(getattr(r, "localizedMessage", "") or "").split())[:200] or None


def pair(events: Iterable[Any], state: VCenterState, now: float) -> list[Migration]:
    """Fold events into finished migrations; updates the state's pending starts and cursors.

    Does not mark chains emitted: the caller does once the rows are stored."""
    done = set(state.emitted_chains)
    out: list[Migration] = []
    for e in events:
        kind = _event_type(e)
        chain = int(getattr(e, "chainId", 0) or e.key)
        created = _ts(e.createdTime) or now
        state.event_key = max(state.event_key or -1, int(e.key))
        state.event_time = max(state.event_time or 0.0, created)
        if chain in done:
            continue
        vm = getattr(e, "vm", None)
        vm_moref = _ref(vm, "vm")
        if vm_moref is None:
            continue
        host = getattr(e, "host", None)
        if kind in START_TYPES:
            p = state.pending_starts.setdefault(str(chain), {"t": created, "vm": vm_moref})
            p["t"] = min(p["t"], created)
            if kind != "VmEmigratingEvent" or "src" not in p:
                p["src"] = _ref(host, "host")
                p["src_name"] = getattr(host, "name", None)
            dest = getattr(e, "destHost", None)
            if dest is not None:
                p["dst"] = _ref(dest, "host")
                p["dst_name"] = getattr(dest, "name", None)
            continue
        start = state.pending_starts.pop(str(chain), {})
        cr = getattr(e, "computeResource", None)
        dc = getattr(e, "datacenter", None)
        if kind in END_FAIL_TYPES:
            dest = getattr(e, "destHost", None)
            src_ref, src_name = _ref(host, "host"), getattr(host, "name", None)
            dst_ref = _ref(dest, "host") or start.get("dst")
            dst_name = getattr(dest, "name", None) or start.get("dst_name")
            ok, reason = False, _fault_name(e)
        else:
            srch = getattr(e, "sourceHost", None)
            src_ref = _ref(srch, "host") or start.get("src")
            src_name = getattr(srch, "name", None) or start.get("src_name")
            dst_ref, dst_name = _ref(host, "host"), getattr(host, "name", None)
            ok, reason = True, None
        out.append(
            Migration(
                chain_id=chain,
                vm_moref=vm_moref,
                vm_name=getattr(vm, "name", None),
                started_at=start.get("t"),
                ended_at=created,
                src_host_moref=src_ref,
                src_host_name=src_name,
                dst_host_moref=dst_ref,
                dst_host_name=dst_name,
                cluster_name=getattr(cr, "name", None) if cr is not None else None,
                datacenter_name=getattr(dc, "name", None) if dc is not None else None,
                drs=kind == "DrsVmMigratedEvent",
                succeeded=ok,
                failure_reason=reason,
            )
        )
        done.add(chain)
    # starts whose end never came (event lost, vCenter restarted) are dropped after a day
    for k in [k for k, v in state.pending_starts.items() if now - float(v.get("t", now)) > PENDING_MAX_AGE]:
        del state.pending_starts[k]
    return out
