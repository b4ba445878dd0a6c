"""One analytics run into the store: its findings and its plan, under one ``run_id``.

The one place analysis results are written (ARCHITECTURE.md: "one ``analyze`` run writes
findings and plan actions"; docs/store.md, "Analysis runs"). Whoever runs an analysis calls
:func:`run` (``accelmon report``, ``accelmon plan``, the daemon's scheduled job); renderers
(report files, PowerCLI/JSON plan, the exporter's gauges, mail) only read the
:class:`~accelmon.analytics.analyze.Analysis` or these tables — they never write them, and
nothing reads a report file back.

* ``findings``: :func:`findings_rows` (analytics/findings.py), one row per finding.
* ``plan_action``: :func:`plan_action_rows`, one row per plan step (analytics/actions.py), with
  its from/to, preconditions, vSphere API call and PowerCLI line; a ``power-off-host`` step
  carries the emptied host's power (``saves_watts``, NULL when unknown) and the GPUs freed there.

Order: ``plan_action`` first, then ``findings``. Readers find the latest run through
``findings`` (``latest_findings``), so once a run's findings are visible its plan is too.
Writing is idempotent per run and table: persisting the same run twice adds nothing.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from accelmon.analytics import actions
from accelmon.analytics import findings as findings_mod
from accelmon.analytics.analyze import Analysis, analyze
from accelmon.analytics.samples import data_range
from accelmon.analytics.window import resolve_window
from accelmon.store.writer import Store

PLAN_TABLE = "plan_action"
# steps whose subject is a host (by name); every other step's subject is a VM id <vcenter_uuid>/<vm_moref>
HOST_ACTIONS = frozenset({actions.SET_GRAPHICS_POLICY, actions.ENTER_MAINTENANCE, actions.POWER_OFF_HOST})
FINDINGS_TABLE = "findings"


@dataclass(frozen=True)
class Stored:
    run_id: str
    findings: int  # rows of the run in ``findings`` (written now or before)
    plan_actions: int  # rows of the run in ``plan_action``


def findings_rows(a: Analysis) -> list[dict[str, Any]]:
    """The run's ``findings`` rows (pure: the same rows whether written, rendered as CSV or both)."""
    return findings_mod.rows(run_id=a.run_id, generated_at=a.generated_at, window=a.window, gpus=a.gpus,
                             numa=a.numa, vmotion_flagged=a.vmotion["flagged"], plan=a.plan,
                             thresholds=a.thresholds, numa_unknown=a.numa_unknown) + idle_cost_rows(a)


def idle_cost_rows(a: Analysis) -> list[dict[str, Any]]:
    """One ``idle_cost`` finding per team with a known idle cost (analytics/cost.py, docs/cost.md):
    subject = team ("unowned" for VMs without one), value = idle cost over the window in ``evidence.currency``. The
    exporter's ``accelmon_idle_cost{team}`` reads these rows, never a report file."""
    c = a.cost or {}
    out = []
    for t in c.get("by_team") or []:
        if t.get("idle_cost") is None:
            continue
        team = t.get("team") or "unowned"
        out.append({
            "generated_at": a.generated_at, "run_id": a.run_id, "kind": "idle_cost", "subject": team,
            "vcenter_uuid": None, "window_start": a.window.start, "window_end": a.window.end,
            "value": float(t["idle_cost"]),
            "reason": f"{t.get('idle_gpu_hours') or 0:,.1f} idle GPU-hours of {t['gpus']} GPU(s) of team "
                      f"{team} cost {t['idle_cost']:,.2f} {c.get('currency') or ''}".rstrip(),
            "fix": "see the underutilized findings of these GPUs and the owner digest",
            "evidence_json": json.dumps({"currency": c.get("currency"), **{k: t.get(k) for k in (
                "gpus", "flagged_gpus", "idle_gpu_hours", "idle_energy_kwh", "idle_energy_cost", "unpriced_gpus")}}),
        })
    return out


def _host_vcenters(a: Analysis) -> dict[str, str]:
    """Host name → vCenter UUID, from the moves (a host step names the host only)."""
    out: dict[str, str] = {}
    for m in a.plan.moves:
        vc = m.vm.split("/", 1)[0]
        out.setdefault(m.from_host, vc)
        out.setdefault(m.to_host, vc)
    return out


def plan_action_rows(a: Analysis) -> list[dict[str, Any]]:
    """The run's ``plan_action`` rows: one per :class:`~accelmon.analytics.actions.Step`, in order."""
    p = a.plan
    moves = {m.vm: m for m in p.moves}
    host_vc = _host_vcenters(a)
    freed = set(p.freed_gpus)
    emptied = {e["host"]: e for e in p.emptied_hosts}
    base = {"generated_at": a.generated_at, "run_id": a.run_id, "window_start": a.window.start,
            "window_end": a.window.end}
    out: list[dict[str, Any]] = []
    for s in p.steps:
        is_vm = s.action not in HOST_ACTIONS
        m = moves.get(s.subject) if is_vm else None
        tgt, ev = s.target, s.evidence
        vc, moref = (s.subject.split("/", 1) if is_vm else (host_vc.get(s.subject), None))
        row = {
            **base, "step": s.n, "action": s.action, "subject": s.subject, "subject_name": s.subject_name,
            "vcenter_uuid": vc, "vm_moref": moref,
            "from_host": m.from_host if m is not None else None,
            "to_host": tgt.get("host") if is_vm else s.subject,
            "from_gpu": ev.get("from_gpu"), "to_gpu": ev.get("planned_gpu"),
            "from_profile": tgt.get("from_profile"), "to_profile": tgt.get("to_profile"),
            "numa_node": tgt.get("numa_node"),
            "words": s.words, "preconditions_json": json.dumps(list(s.preconditions)), "api": s.api,
            "powercli": s.powercli, "saves_watts": None, "power_source": None, "frees_gpus": None,
            "evidence_json": findings_mod.evidence(ev), "risk_json": findings_mod.evidence(s.risk),
        }
        if s.action == actions.POWER_OFF_HOST and s.subject in emptied:
            e = emptied[s.subject]
            # ARCHITECTURE.md: "Savings = power of hosts the plan empties" - unknown power stays NULL
            row.update(saves_watts=e["watts"], power_source=e["power_source"],
                       frees_gpus=sum(1 for g in e["gpus"] if g in freed))
        out.append(row)
    return out


def _stored(store: Store, table: str, run_id: str) -> int:
    con = store.connect(threads=1)
    try:
        return int(con.execute(f"SELECT count(*) FROM {table} WHERE run_id = ?", [run_id]).fetchone()[0])
    finally:
        con.close()


def persist(store: Store, a: Analysis) -> Stored:
    """Write the run's plan steps, then its findings (module doc); a table that already holds
    rows of this run is left as it is."""
    counts: dict[str, int] = {}
    for table, rows in ((PLAN_TABLE, plan_action_rows(a)), (FINDINGS_TABLE, findings_rows(a))):
        have = _stored(store, table, a.run_id) if rows else 0
        counts[table] = have or store.append(table, rows)
    return Stored(a.run_id, counts[FINDINGS_TABLE], counts[PLAN_TABLE])


def run(store: Store, thresholds: Any, *, since: str | None = None, from_: dt.datetime | None = None,
        to: dt.datetime | None = None, now: dt.datetime | None = None, con: Any | None = None,
        threads: int | None = None, rollup_after: float | None = None, prices: Any | None = None) -> Analysis:
    """Resolve the window (analytics/window.py), analyse it and persist the run: the analysis step of
    every verb and job that analyses. ``rollup_after``: windows longer than this (s) read the hourly
    rollups (docs/store.md, "Rollups"). ``prices``: the ``[cost]`` config (docs/cost.md)."""
    first, last = data_range(store)
    window = resolve_window(since=since, from_=from_, to=to, default_seconds=float(thresholds.window),
                            data_first=first, data_last=last, now=now)
    a = analyze(store, thresholds, window, con=con, now=now, threads=threads, rollup_after=rollup_after,
                prices=prices)
    persist(store, a)
    return a
