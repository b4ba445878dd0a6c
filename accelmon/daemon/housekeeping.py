"""Store jobs the daemon schedules: flush, compaction (+gc), retention (+gc), findings refresh (from the
store's latest analytics run: findings + plan_action),
and the start-up load of the latest inventory so joins and discovery work before vCenter answers."""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from typing import Any

import pyarrow as pa

from accelmon.analytics import rollup as rollups
from accelmon.analytics.actions import POWER_OFF_HOST
from accelmon.config import Config
from accelmon.daemon import vmotion_history
from accelmon.daemon.buffer import WriteBuffer
from accelmon.daemon.state import DaemonState, PlanSummary
from accelmon.store import check
from accelmon.store.compaction import CompactionFailure
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


def compact(store: Store, state: DaemonState) -> list[CompactionFailure]:
    """Compact every table, then gc - always: a table whose compaction fails (logged once by
    ``Store.compact`` with its name, counted per table in ``compaction_errors_total``) stops
    neither the other tables nor the gc. A failure caused by an unreadable file quarantines it
    (store/check.py), so the next run compacts the rest of that partition."""
    failures: list[CompactionFailure] = []
    try:
        results = store.compact(failures=failures)
        state.store.compactions_total += len(results)
        for r in results:
            log.debug("compacted %s %s: %d files -> 1 (%d rows)", r.table, r.partition, r.files_in, r.rows)
        for f in failures:
            errors = state.store.compaction_errors_total
            errors[f.table] = errors.get(f.table, 0) + 1
        for name in dict.fromkeys(f.table for f in failures):  # one line per table and run
            failed = [f for f in failures if f.table == name]
            log.warning("compaction of %s failed for %d partition(s) (%s): %s", name, len(failed),
                        ", ".join(f.partition for f in failed), failed[0].error)
        _quarantine_failed(store, failures)
    finally:
        state.store.generations_removed_total += store.gc()
    return failures


def _quarantine_failed(store: Store, failures: list[CompactionFailure]) -> None:
    bad = {(f.table, f.partition) for f in failures if f.bad_file is not None}
    if not bad or not store.writable:
        return
    for b in check.find_bad_files(store, sorted({t for t, _ in bad})):
        if (b.table, b.partition) in bad:
            check.quarantine(store, b)


def retention(store: Store, cfg: Config, state: DaemonState, now: float | None = None) -> list[tuple[str, str]]:
    """Drop whole day partitions older than the configured retention (samples/events/findings
    use ``retention.samples``, inventory ``retention.inventory``), then gc."""
    now = time.time() if now is None else now
    dropped: list[tuple[str, str]] = []
    for name, t in TABLES.items():
        keep = {"inventory": cfg.retention.inventory, "rollup": cfg.retention.rollups}.get(t.kind, cfg.retention.samples)
        cutoff = dt.datetime.fromtimestamp(now - keep, dt.UTC).date()
        if name == "vmotion" and any(dt.date.fromisoformat(p) < cutoff for p in store.partitions(name)
                                     if p != "1970-01-01"):
            try:  # keep the vMotion counters' totals before their rows go
                vmotion_history.carry_before(store, cutoff)
            except Exception as e:  # noqa: BLE001 - keep the rows rather than lose the counts
                log.warning("retention: vmotion partitions kept: cannot record their counter totals: %s", e)
                continue
        for p in store.drop_partitions_before(name, cutoff):
            dropped.append((name, p))
    if dropped:
        log.info("retention: dropped %d partition(s) older than the configured retention", len(dropped))
    state.store.partitions_dropped_total += len(dropped)
    state.store.generations_removed_total += store.gc()
    return dropped


def rollup(store: Store, now: dt.datetime | None = None) -> dict[str, int]:
    """Hourly per-GPU rollups (docs/store.md, "Rollups"): the current day through the last complete
    hour, and every day never rolled up or whose raw files changed since (catch-up)."""
    done = rollups.run(store, now=now, force=False)
    if done:
        log.info("rollup: %d day(s) rolled up (%s), %d rows", len(done), ", ".join(sorted(done)[:5]),
                 sum(done.values()))
    return done


def refresh_findings(store: Store, state: DaemonState) -> int:
    """Re-read the latest analytics run from the store: ``latest_findings`` (the findings gauges) and
    that run's ``plan_action`` rows (the consolidation plan gauges). Reads the store only, never a
    report file (docs/daemon.md, "One direction")."""
    con = store.connect(threads=1)
    try:
        rows = con.execute(
            "SELECT kind, subject, vcenter_uuid, value, reason, evidence_json, run_id, "
            "epoch_ms(generated_at) AS generated_ms FROM latest_findings"
        ).fetchall()
        steps = con.execute(
            "SELECT action, saves_watts, frees_gpus FROM plan_action WHERE run_id = ? ORDER BY step",
            [str(rows[0][6])]).fetchall() if rows else []
    finally:
        con.close()
    keys = ("kind", "subject", "vcenter_uuid", "value", "reason", "evidence_json", "run_id", "generated_ms")
    found = [dict(zip(keys, r, strict=True)) for r in rows]
    plan_steps = [dict(zip(("action", "saves_watts", "frees_gpus"), r, strict=True)) for r in steps]
    state.set_findings(found, plan_summary(found, plan_steps))
    return len(found)


def plan_summary(rows: list[dict[str, Any]], steps: list[dict[str, Any]]) -> PlanSummary | None:
    """The consolidation plan of the latest run, from the store alone (analytics/persist.py):

    * moves and freed GPUs from its ``consolidation_move`` findings (the planner moves workloads
      only off GPUs it empties, so the moves' distinct source GPUs are the freed ones);
    * emptied hosts, saved watts and freed GPUs without a known host power from its
      ``plan_action`` rows: one ``power-off-host`` step per emptied host, ``saves_watts`` NULL
      where that host's power is unknown (ARCHITECTURE.md: "Savings = power of hosts the plan
      empties"; capacity freed elsewhere is not watts).

    A run with moves but no ``plan_action`` rows (stored before that table existed) leaves those
    three unknown (not exported), never 0."""
    if not rows:
        return None
    run_id = str(rows[0]["run_id"])
    generated = float(rows[0]["generated_ms"]) / 1000.0
    moves = [r for r in rows if r["kind"] == "consolidation_move"]
    sources: set[str] = set()
    for r in moves:
        try:
            src = json.loads(r.get("evidence_json") or "{}").get("from_gpu")
        except (ValueError, AttributeError):
            src = None
        sources.add(str(src) if src else f"{r.get('vcenter_uuid')}/{r['subject']}")
    teams, currency = _idle_cost(rows)
    if moves and not steps:
        return PlanSummary(generated_at=generated, run_id=run_id, moves=len(moves), freed_gpus=len(sources),
                           idle_cost_by_team=teams, currency=currency)
    off = [s for s in steps if s["action"] == POWER_OFF_HOST]
    return PlanSummary(
        generated_at=generated, run_id=run_id, moves=len(moves), freed_gpus=len(sources), freed_hosts=len(off),
        watts_saved=float(sum(s["saves_watts"] for s in off if s["saves_watts"] is not None)),
        unmeasured_freed_gpus=int(sum(s["frees_gpus"] or 0 for s in off if s["saves_watts"] is None)),
        idle_cost_by_team=teams, currency=currency,
    )


def _idle_cost(rows: list[dict[str, Any]]) -> tuple[tuple[tuple[str, float], ...] | None, str | None]:
    """Idle cost per team of the run: its ``idle_cost`` findings (analytics/persist.py; subject = team or
    "unowned"; value = cost in the evidence currency). None where the run priced nothing."""
    cost = [r for r in rows if r["kind"] == "idle_cost" and r["value"] is not None]
    if not cost:
        return None, None
    try:
        currency = json.loads(cost[0].get("evidence_json") or "{}").get("currency")
    except (ValueError, AttributeError):
        currency = None
    return tuple((str(r["subject"]), float(r["value"])) for r in cost), currency


_LATEST = {  # {shard}: the daemon's own shard (validated [a-z0-9_-]); other shards are other daemons'
    "inv_vcenter": "SELECT * EXCLUDE (date, shard) FROM inv_vcenter WHERE shard = '{shard}' "
    "QUALIFY snapshot_ts = max(snapshot_ts) OVER (PARTITION BY vcenter_uuid)",
    "inv_host": "SELECT * EXCLUDE (date, shard) FROM inv_host WHERE shard = '{shard}' "
    "QUALIFY snapshot_ts = max(snapshot_ts) OVER (PARTITION BY vcenter_uuid)",
    "inv_vm": "SELECT * EXCLUDE (date, shard) FROM inv_vm WHERE shard = '{shard}' "
    "QUALIFY snapshot_ts = max(snapshot_ts) OVER (PARTITION BY vcenter_uuid)",
    "inv_vm_gpu": "SELECT * EXCLUDE (date, shard) FROM inv_vm_gpu WHERE shard = '{shard}' "
    "QUALIFY snapshot_ts = max(snapshot_ts) OVER (PARTITION BY vcenter_uuid)",
    "agent_gpu": "SELECT * EXCLUDE (date, shard) FROM agent_gpu WHERE shard = '{shard}' "
    "QUALIFY ts = max(ts) OVER (PARTITION BY agent_url)",
}


def load_latest_inventory(store: Store, state: DaemonState) -> dict[str, int]:
    """Seed the state with the latest inventory snapshot and agent identities of this daemon's shard."""
    con = store.connect(threads=1)
    out: dict[str, int] = {}
    try:
        tables = {}
        for name, sql in _LATEST.items():
            t = _arrow(con, sql.format(shard=store.shard))
            if t.num_rows:
                tables[name] = t
                out[name] = t.num_rows
    finally:
        con.close()
    state.apply(tables)
    return out
