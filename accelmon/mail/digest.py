"""Which owners get a digest: GPUs flagged underutilized on N consecutive days (``mail.digest_after_days``).

Read from the ``findings`` history, by UTC day: a day's verdict is its **last** analytics run that
day (``max(generated_at)`` of the run); a GPU is flagged on that day when that run holds an
``underutilized`` finding for it. A GPU's streak is the number of consecutive calendar days,
ending at the newest day with a run, on which it was flagged; a day without any run breaks
the streak (no evidence is not evidence of idleness). An owner gets a digest when at least one
of their GPUs has a streak ≥ N; the digest lists only those GPUs — an owner without one gets
no mail (never an empty digest).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from accelmon.analytics.cost import UNOWNED


def day_runs(con: Any) -> dict[dt.date, str]:
    """UTC day → run_id of the last run that day."""
    rows = con.execute("SELECT run_id, max(generated_at) FROM findings GROUP BY run_id").fetchall()
    best: dict[dt.date, tuple[dt.datetime, str]] = {}
    for run_id, at in rows:
        at = at if at.tzinfo else at.replace(tzinfo=dt.UTC)
        day = at.astimezone(dt.UTC).date()
        if day not in best or (at, run_id) > best[day]:
            best[day] = (at, run_id)
    return {d: r for d, (_, r) in best.items()}


def flagged_by_day(con: Any) -> tuple[dict[dt.date, set[str]], list[dict[str, Any]]]:
    """(day → GPUs flagged in that day's last run, the newest run's findings rows)."""
    runs = day_runs(con)
    if not runs:
        return {}, []
    ids = list(runs.values())
    marks = ",".join("?" * len(ids))
    rows = con.execute(f"SELECT run_id, subject FROM findings WHERE kind = 'underutilized' AND run_id IN ({marks})",
                       ids).fetchall()
    by_run: dict[str, set[str]] = {}
    for run_id, subject in rows:
        by_run.setdefault(run_id, set()).add(subject)
    newest = runs[max(runs)]
    cur = con.execute("SELECT kind, subject, vcenter_uuid, value, reason, fix FROM findings WHERE run_id = ?",
                      [newest]).fetchall()
    latest = [dict(zip(("kind", "subject", "vcenter_uuid", "value", "reason", "fix"), r, strict=True)) for r in cur]
    return {d: by_run.get(r, set()) for d, r in runs.items()}, latest


def streaks(flagged: dict[dt.date, set[str]]) -> dict[str, int]:
    """GPU → consecutive days flagged, ending at the newest day (module doc)."""
    if not flagged:
        return {}
    day = max(flagged)
    out: dict[str, int] = {g: 0 for g in flagged[day]}
    alive = set(flagged[day])
    while alive and day in flagged:
        alive &= flagged[day]
        for g in alive:
            out[g] += 1
        day -= dt.timedelta(days=1)
    return {g: n for g, n in out.items() if n > 0}


@dataclass
class Digest:
    owner: str
    email: str
    team: str | None
    gpus: list[dict[str, Any]] = field(default_factory=list)  # cost by_gpu rows + days_flagged + actions

    @property
    def idle_cost(self) -> float | None:
        known = [g["idle_cost"] for g in self.gpus if g.get("idle_cost") is not None]
        return float(sum(known)) if known else None


def digests(cost: dict[str, Any], streak: dict[str, int], latest: list[dict[str, Any]], after_days: int
            ) -> tuple[list[Digest], list[dict[str, Any]]]:
    """(one digest per owner e-mail with GPUs flagged ≥ ``after_days`` days, GPUs that qualify but have nobody
    to tell). Suggested actions: the newest run's finding fix for the GPU and its VM's consolidation move."""
    fixes: dict[str, list[str]] = {}
    for f in latest:
        if f["fix"] and f["kind"] in ("underutilized", "consolidation_move"):
            fixes.setdefault(f["subject"], []).append(f["fix"])
    out: dict[str, Digest] = {}
    nobody = []
    for g in cost.get("by_gpu", []):
        days = streak.get(g["gpu"], 0)
        if days < after_days:
            continue
        row = {**g, "days_flagged": days,
               "actions": list(dict.fromkeys(fixes.get(g["gpu"], []) + fixes.get(g.get("vm_moref") or "", [])))}
        if not g.get("email") or g.get("owner") == UNOWNED:
            nobody.append(row)
            continue
        d = out.setdefault(g["email"], Digest(owner=g["owner"], email=g["email"], team=g.get("team")))
        d.gpus.append(row)
    return [out[k] for k in sorted(out)], nobody
