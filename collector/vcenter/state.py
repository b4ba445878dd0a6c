"""Cursors that must survive a restart: ``<data-dir>/state/vcenter-<uuid>.json``.

Written atomically (temp file, fsync, rename, fsync dir) *after* the rows they cover were
appended to the store, so a crash can only make the next poll read something again (which the
cursors then filter), never skip it.  In memory too, a cursor moves only once its rows are
stored (like a Kafka consumer committing offsets after processing): a poll works on a draft
(:meth:`VCenterState.events_draft`) and commits it after the append returned.  A state file
older than the store (a crash between the append and the save, or a save that failed on a full
disk) is reconciled with the store when loaded (``VCenterSource._reconcile``).
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

STATE_VERSION = 1
MAX_EMITTED_CHAINS = 20_000


@dataclass
class VCenterState:
    """Everything the vCenter source needs to resume without loss or double counting."""

    # perf: entity moref -> last stored sample time (Unix seconds), per table
    perf_vm: dict[str, float] = field(default_factory=dict)
    perf_host: dict[str, float] = field(default_factory=dict)
    # time of the newest sample stored for this vCenter (gap detection across restarts)
    perf_last_ts: float | None = None
    # events: highest event key processed; start events waiting for their end (by chain id)
    event_key: int | None = None
    event_time: float | None = None
    pending_starts: dict[str, dict[str, Any]] = field(default_factory=dict)
    # chain ids already written to the vmotion table (bounded, newest last)
    emitted_chains: list[int] = field(default_factory=list)
    # vmware.log cursors by VM moref
    logs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def events_draft(self) -> VCenterState:
        """A copy of the event cursors (key, time, pending starts, written chains) to advance
        while a poll is processed; :meth:`commit_events` takes them over once the rows are
        stored.  Until then this state still points before the unwritten migrations."""
        return VCenterState(
            event_key=self.event_key,
            event_time=self.event_time,
            pending_starts=copy.deepcopy(self.pending_starts),
            emitted_chains=list(self.emitted_chains),
        )

    def commit_events(self, draft: VCenterState, written_chains: list[int],
                      logs: dict[str, dict[str, Any]]) -> None:
        """Advance the event and vmware.log cursors to ``draft`` (the rows are durable now)."""
        self.event_key = draft.event_key
        self.event_time = draft.event_time
        self.pending_starts = draft.pending_starts
        self.logs.update(logs)
        for c in written_chains:
            self.mark_emitted(c)

    def mark_emitted(self, chain_id: int) -> None:
        self.emitted_chains.append(chain_id)
        if len(self.emitted_chains) > MAX_EMITTED_CHAINS:
            del self.emitted_chains[: len(self.emitted_chains) - MAX_EMITTED_CHAINS]

    def to_json(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "perf_vm": self.perf_vm,
            "perf_host": self.perf_host,
            "perf_last_ts": self.perf_last_ts,
            "event_key": self.event_key,
            "event_time": self.event_time,
            "pending_starts": self.pending_starts,
            "emitted_chains": self.emitted_chains,
            "logs": self.logs,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> VCenterState:
        return cls(
            perf_vm={str(k): float(v) for k, v in (d.get("perf_vm") or {}).items()},
            perf_host={str(k): float(v) for k, v in (d.get("perf_host") or {}).items()},
            perf_last_ts=d.get("perf_last_ts"),
            event_key=d.get("event_key"),
            event_time=d.get("event_time"),
            pending_starts=dict(d.get("pending_starts") or {}),
            emitted_chains=[int(x) for x in d.get("emitted_chains") or []],
            logs=dict(d.get("logs") or {}),
        )


def state_path(data_dir: str | os.PathLike[str], vcenter_uuid: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in vcenter_uuid)
    return Path(data_dir) / "state" / f"vcenter-{safe}.json"


def load_state(path: Path) -> VCenterState:
    """The saved state, or a fresh one when there is none or it is unreadable (then the
    store's own rows still prevent nothing worse than a re-read of the realtime window)."""
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return VCenterState()
    except (OSError, ValueError):
        bad = path.with_suffix(".corrupt")
        with contextlib.suppress(OSError):
            os.replace(path, bad)
        return VCenterState()
    if not isinstance(raw, dict):
        return VCenterState()
    return VCenterState.from_json(raw)


def save_state(path: Path, state: VCenterState) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps(state.to_json(), separators=(",", ":"), sort_keys=True).encode()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def reconcile(st: VCenterState, con: Any, vcenter_uuid: str, *, recent_since: float) -> None:
    """Make loaded cursors cover what the store already has (the store is the truth).

    ``con`` is a DuckDB connection with the store's views.  Without perf cursors (no state
    file), perf resumes from the store's newest sample per entity; with them, samples newer
    than ``recent_since`` (vCenter keeps one hour) move them on.  Migrations the store has are
    marked written, so an old state file (a crash after the append, a save that failed on a
    full disk) never makes a restart store one twice."""
    fresh = not st.perf_vm and not st.perf_host
    recent = "" if fresh else " AND ts >= ?"
    since = [] if fresh else [dt.datetime.fromtimestamp(recent_since, dt.UTC)]
    for tbl, col, dest in (("vm_power_sample", "vm_moref", st.perf_vm),
                           ("host_power_sample", "host_moref", st.perf_host)):
        q = f"SELECT {col}, epoch_ms(max(ts)) FROM {tbl} WHERE vcenter_uuid = ?{recent} GROUP BY 1"
        try:
            got = con.execute(q, [vcenter_uuid, *since]).fetchall()
        except Exception as e:  # noqa: BLE001 - no such table yet (a fresh data dir)
            log.debug("vCenter %s: no %s cursors from the store: %s", vcenter_uuid, tbl, e)
            continue
        for moref, ms in got:
            dest[moref] = max(dest.get(moref, 0.0), ms / 1000.0)
    allts = list(st.perf_vm.values()) + list(st.perf_host.values())
    if allts:
        st.perf_last_ts = max(st.perf_last_ts or 0.0, max(allts))
    try:
        chains = con.execute(
            "SELECT chain_id FROM vmotion WHERE vcenter_uuid = ? AND chain_id IS NOT NULL "
            "ORDER BY ended_at DESC LIMIT ?", [vcenter_uuid, MAX_EMITTED_CHAINS]).fetchall()
    except Exception as e:  # noqa: BLE001 - no vmotion rows yet
        log.debug("vCenter %s: no written migrations from the store: %s", vcenter_uuid, e)
        return
    known = set(st.emitted_chains)
    for (c,) in reversed(chains):
        if int(c) not in known:
            st.mark_emitted(int(c))
