"""Store jobs the daemon schedules: flush, compaction (+gc), retention (+gc), findings refresh,
and the start-up load of the latest inventory so joins and discovery work before vCenter answers."""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any

import pyarrow as pa

from accelmon.config import Config
from accelmon.daemon.buffer import WriteBuffer
from accelmon.daemon.state import DaemonState
from accelmon.store.schema import TABLES
from accelmon.store.writer import Store

log = logging.getLogger("accelmon.daemon")


def _arrow(con: Any, sql: str) -> pa.Table:
    rel = con.sql(sql)
    fn = getattr(rel, "to_arrow_table", None) or rel.arrow
    return fn()  # type: ignore[no-any-return]


def flush(buffer: WriteBuffer, state: DaemonState) -> None:
    try:
        buffer.flush()
    finally:
        state.store.rows_buffered = buffer.rows_buffered
    state.store.last_flush_ts = time.time()


def compact(store: Store, state: DaemonState) -> None:
    results = store.compact()
    state.store.compactions_total += len(results)
    for r in results:
        log.debug("compacted %s %s: %d files -> 1 (%d rows)", r.table, r.partition, r.files_in, r.rows)
    state.store.generations_removed_total += store.gc()


def retention(store: Store, cfg: Config, state: DaemonState, now: float | None = None) -> list[tuple[str, str]]:
    """Drop whole day partitions older than the configured retention (samples/events/findings
    use ``retention.samples``, inventory ``retention.inventory``), then gc."""
    now = time.time() if now is None else now
    dropped: list[tuple[str, str]] = []
    for name, t in TABLES.items():
        keep = cfg.retention.inventory if t.kind == "inventory" else cfg.retention.samples
        cutoff = dt.datetime.fromtimestamp(now - keep, dt.UTC).date()
        for p in store.drop_partitions_before(name, cutoff):
            dropped.append((name, p))
    if dropped:
        log.info("retention: dropped %d partition(s) older than the configured retention", len(dropped))
    state.store.partitions_dropped_total += len(dropped)
    state.store.generations_removed_total += store.gc()
    return dropped


def refresh_findings(store: Store, state: DaemonState) -> int:
    con = store.connect(threads=1)
    try:
        rows = con.execute(
            "SELECT kind, subject, vcenter_uuid, value, reason, evidence_json FROM latest_findings"
        ).fetchall()
    finally:
        con.close()
    keys = ("kind", "subject", "vcenter_uuid", "value", "reason", "evidence_json")
    state.set_findings([dict(zip(keys, r, strict=True)) for r in rows])
    return len(rows)


_LATEST = {
    "inv_vcenter": "SELECT * EXCLUDE (date) FROM inv_vcenter "
    "QUALIFY snapshot_ts = max(snapshot_ts) OVER (PARTITION BY vcenter_uuid)",
    "inv_host": "SELECT * EXCLUDE (date) FROM inv_host "
    "QUALIFY snapshot_ts = max(snapshot_ts) OVER (PARTITION BY vcenter_uuid)",
    "inv_vm": "SELECT * EXCLUDE (date) FROM inv_vm "
    "QUALIFY snapshot_ts = max(snapshot_ts) OVER (PARTITION BY vcenter_uuid)",
    "inv_vm_gpu": "SELECT * EXCLUDE (date) FROM inv_vm_gpu "
    "QUALIFY snapshot_ts = max(snapshot_ts) OVER (PARTITION BY vcenter_uuid)",
    "agent_gpu": "SELECT * EXCLUDE (date) FROM agent_gpu QUALIFY ts = max(ts) OVER (PARTITION BY agent_url)",
}


def load_latest_inventory(store: Store, state: DaemonState) -> dict[str, int]:
    """Seed the state with the store's latest inventory snapshot and agent identities."""
    con = store.connect(threads=1)
    out: dict[str, int] = {}
    try:
        tables = {}
        for name, sql in _LATEST.items():
            t = _arrow(con, sql)
            if t.num_rows:
                tables[name] = t
                out[name] = t.num_rows
    finally:
        con.close()
    state.apply(tables)
    return out
