"""vMotion counters that survive daemon restarts and retention.

``accelmon_vm_migrations_total``, ``…_migration_failures_total``, ``accelmon_vm_stun_seconds_total``
and the ``accelmon_vmotion_stun_seconds`` histogram count every migration the store recorded, not
only those seen since the daemon started: at start-up the daemon folds the store's ``vmotion``
table into its state, so a restart continues each counter where it was instead of resetting it.

Retention drops old ``vmotion`` partitions; a counter recomputed from what is left would then
*decrease* at the next restart, which Prometheus reads as a reset (and ``increase()`` as a jump).
So before the retention job drops ``vmotion`` partitions, their totals are added to a carry file
(``<data dir>/daemon/vmotion_counters.json``, written atomically) that records up to which day it
covers. Start-up = carry + the rows from that day on, so every crash point is consistent: rows
dropped after the carry was written are not in the store, rows not yet dropped are excluded by
the carry's day.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from pathlib import Path
from typing import Any

from accelmon.daemon.state import DaemonState, Histogram, VmMigrations
from accelmon.store.writer import Store

log = logging.getLogger("accelmon.daemon")

CARRY = Path("daemon") / "vmotion_counters.json"
_COLS = ("vcenter_uuid", "chain_id", "vm_moref", "cluster_name", "ended_at", "succeeded", "stun_seconds")


def _carry_path(store: Store) -> Path:
    return store.root / CARRY


def read_carry(store: Store) -> dict[str, Any]:
    """``{"before": "YYYY-MM-DD" | None, "vms": [...], "clusters": [...]}`` (empty when none)."""
    try:
        doc = json.loads(_carry_path(store).read_text())
    except FileNotFoundError:
        return {"before": None, "vms": [], "clusters": []}
    except (OSError, ValueError) as e:
        # a broken carry must not stop the daemon: counters restart lower, as after a reset
        log.warning("vMotion counters: cannot read %s (%s); counting from the store only", _carry_path(store), e)
        return {"before": None, "vms": [], "clusters": []}
    return doc if isinstance(doc, dict) else {"before": None, "vms": [], "clusters": []}


def _rows(store: Store, since: str | None, before: str | None) -> list[dict[str, Any]]:
    # by the partition day (UTC), exactly what retention drops; the days are ISO dates we wrote
    where = []
    if since:
        where.append(f"CAST(\"date\" AS VARCHAR) >= '{dt.date.fromisoformat(since).isoformat()}'")
    if before:
        where.append(f"CAST(\"date\" AS VARCHAR) < '{dt.date.fromisoformat(before).isoformat()}'")
    sql = (f"SELECT {', '.join(_COLS[:4])}, epoch_ms(ended_at) / 1000.0 AS ended_at, succeeded, stun_seconds "
           f"FROM vmotion {'WHERE ' + ' AND '.join(where) if where else ''} ORDER BY 5")
    con = store.connect(threads=1)
    try:
        rows = con.execute(sql).fetchall()
    finally:
        con.close()
    return [dict(zip(_COLS, r, strict=True)) for r in rows]


def load(store: Store, state: DaemonState) -> int:
    """Seed the vMotion counters from the carry file and the store. Returns migrations loaded."""
    carry = read_carry(store)
    state.add_vmotion_totals(
        {(v[0], v[1]): VmMigrations(int(v[2]), int(v[3]), float(v[4]), v[5]) for v in carry.get("vms", [])},
        {(c[0], c[1]): Histogram(tuple(c[2]), [int(x) for x in c[3]], float(c[4]), int(c[5]))
         for c in carry.get("clusters", [])},
    )
    rows = _rows(store, carry.get("before"), None)
    state.apply({"vmotion": rows})
    return len(rows) + sum(int(v[2]) + int(v[3]) for v in carry.get("vms", []))


def carry_before(store: Store, before: dt.date) -> None:
    """Add the totals of the ``vmotion`` rows older than ``before`` to the carry file (call it
    before dropping those partitions; calling it again for the same day adds nothing)."""
    carry = read_carry(store)
    old = carry.get("before")
    new = before.isoformat()
    if old is not None and old >= new:
        return
    rows = _rows(store, old, new)
    if not rows and old is not None:
        return
    tmp = DaemonState()
    tmp.add_vmotion_totals(
        {(v[0], v[1]): VmMigrations(int(v[2]), int(v[3]), float(v[4]), v[5]) for v in carry.get("vms", [])},
        {(c[0], c[1]): Histogram(tuple(c[2]), [int(x) for x in c[3]], float(c[4]), int(c[5]))
         for c in carry.get("clusters", [])},
    )
    tmp.apply({"vmotion": rows})
    snap = tmp.snapshot()
    doc = {
        "before": new,
        "vms": [[vc, vm, m.succeeded_total, m.failed_total, m.stun_seconds_total, m.last_stun_seconds]
                for (vc, vm), m in sorted(snap.migrations.items())],
        "clusters": [[vc, cl, list(h.buckets), h.counts, h.total, h.n] for (vc, cl), h in sorted(snap.stun_hist.items())],
    }
    path = _carry_path(store)
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".tmp")
    with open(part, "w", encoding="utf-8") as f:
        json.dump(doc, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(part, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
