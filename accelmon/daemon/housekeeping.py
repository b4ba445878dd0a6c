"""Store jobs the daemon schedules: flush, compaction (+gc), retention (+gc), findings refresh,
and the start-up load of the latest inventory so joins and discovery work before vCenter answers."""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

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
        keep = cfg.retention.inventory if t.kind == "inventory" else cfg.retention.samples
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


def reports_dir(store: Store, cfg: Config) -> Path:
    """Where the daily report writes its run directories (as accelmon.report.cli.reports_root,
    without importing the report stack into the daemon)."""
    return Path(cfg.report.out_dir) if cfg.report.out_dir else store.root / "reports"


def refresh_findings(store: Store, state: DaemonState, reports: Path | None = None) -> int:
    """Re-read ``latest_findings`` (the findings gauges) and the latest consolidation plan; the
    plan's report JSON is looked for under ``reports`` and the data dir."""
    con = store.connect(threads=1)
    try:
        rows = con.execute(
            "SELECT kind, subject, vcenter_uuid, value, reason, evidence_json, run_id, "
            "epoch_ms(generated_at) AS generated_ms FROM latest_findings"
        ).fetchall()
    finally:
        con.close()
    keys = ("kind", "subject", "vcenter_uuid", "value", "reason", "evidence_json", "run_id", "generated_ms")
    found = [dict(zip(keys, r, strict=True)) for r in rows]
    roots = [p for p in dict.fromkeys([reports, store.root]) if p is not None]
    state.set_findings(found, plan_summary(found, roots, state.plan))
    return len(found)


def plan_summary(rows: list[dict[str, Any]], reports: list[Path],
                 previous: PlanSummary | None = None) -> PlanSummary | None:
    """The consolidation plan of the latest run: moves and freed GPUs from its
    ``consolidation_move`` findings (the planner moves workloads only off GPUs it empties, so
    the moves' distinct source GPUs are the freed ones); freed hosts, saved watts and freed
    GPUs without a measured idle power from that run's report JSON (``consolidation``; see
    :func:`_report_plan`) when one with the same ``run_id`` is found — otherwise those stay
    unknown (not exported), never guessed."""
    if not rows:
        return None
    run_id = str(rows[0]["run_id"])
    generated = float(rows[0]["generated_ms"]) / 1000.0
    if previous is not None and previous.run_id == run_id and previous.watts_saved is not None:
        return previous  # the report JSON of this run was read already
    moves = [r for r in rows if r["kind"] == "consolidation_move"]
    sources: set[str] = set()
    for r in moves:
        try:
            src = json.loads(r.get("evidence_json") or "{}").get("from_gpu")
        except (ValueError, AttributeError):
            src = None
        sources.add(str(src) if src else f"{r.get('vcenter_uuid')}/{r['subject']}")
    plan = PlanSummary(generated_at=generated, run_id=run_id, moves=len(moves), freed_gpus=len(sources))
    doc = _report_plan(reports, generated, run_id) if reports else None
    if doc is None:
        return plan
    cost = doc.pop("_cost", None) or {}
    teams = tuple((str(t["team"]), float(t["idle_cost"])) for t in cost.get("by_team") or []
                  if isinstance(t, dict) and t.get("idle_cost") is not None) if cost else None
    try:
        return PlanSummary(
            generated_at=generated, run_id=run_id, moves=len(doc["moves"]), freed_gpus=len(doc["freed_gpus"]),
            freed_hosts=len(doc["freed_hosts"]), watts_saved=float(doc["watts_saved"]),
            unmeasured_freed_gpus=int(doc.get("unmeasured_freed_gpus") or 0),
            idle_cost_by_team=teams, currency=cost.get("currency"),
        )
    except (KeyError, TypeError, ValueError):
        log.warning("report JSON of analytics run %s: unexpected consolidation section; using the findings only",
                    run_id)
        return plan


_RUN_ID_RE = re.compile(r'"run_id"\s*:\s*"([^"]*)"')


def _report_plan(roots: list[Path], generated: float, run_id: str) -> dict[str, Any] | None:
    """The ``consolidation`` section of the report JSON of run ``run_id``: first where the daily
    report names it (``<reports>/<UTC time of the run>/findings.json``; the stored time has ms
    precision, so that second and the one before), then any ``*/findings.json`` one level below
    the given roots (``accelmon report --out <data dir>/<name>``, as the demo does), recognised by
    the ``run_id`` at the top of the file (read in full only on a match)."""
    named = [roots[0] / dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y%m%dT%H%M%SZ") / "findings.json"
             for t in (generated, generated - 0.001)] if roots else []
    others: list[Path] = []
    for root in roots:
        try:
            others += sorted(root.glob("*/findings.json"))[-100:]
        except OSError:
            continue
    for path in dict.fromkeys([*named, *others]):
        try:
            with open(path, encoding="utf-8") as f:
                m = _RUN_ID_RE.search(f.read(4096))
                if m is None or m.group(1) != run_id:
                    continue
                f.seek(0)
                doc = json.load(f)
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and doc.get("run_id") == run_id and isinstance(doc.get("consolidation"), dict):
            # the run's idle cost per team rides along (accelmon_idle_cost; analytics/cost.py)
            return {**doc["consolidation"], "_cost": doc.get("cost")}
    return None


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
