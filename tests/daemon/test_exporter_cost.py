"""accelmon_idle_cost{team,currency}: the latest run's idle cost per team, from that run's report JSON."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from accelmon.daemon import housekeeping
from accelmon.daemon.state import DaemonState
from accelmon.store import Store

from .test_exporter_additions import _finding, _metrics, _one


def test_idle_cost_per_team_from_the_latest_run(tmp_path: Path) -> None:
    store = Store(tmp_path / "d")
    reports = tmp_path / "reports"
    now = dt.datetime(2026, 1, 2, 6, 0, 0, tzinfo=dt.UTC)
    store.append("findings", [_finding("r2", now, "underutilized", "GPU-1")])
    st = DaemonState()
    housekeeping.refresh_findings(store, st, reports)
    assert not any(k[0] == "accelmon_idle_cost" for k in _metrics(st))  # no report JSON: unknown, not 0
    run_dir = reports / now.strftime("%Y%m%dT%H%M%SZ")
    run_dir.mkdir(parents=True)
    plan = {"moves": [], "freed_gpus": [], "freed_hosts": [], "watts_saved": 0.0, "unmeasured_freed_gpus": 0}
    cost = {"currency": "EUR", "by_team": [{"team": "ml", "idle_cost": 20.0}, {"team": "unowned", "idle_cost": 7.5},
                                           {"team": "unpriced", "idle_cost": None}]}
    (run_dir / "findings.json").write_text(json.dumps({"run_id": "r2", "consolidation": plan, "cost": cost}))
    housekeeping.refresh_findings(store, st, reports)
    m = _metrics(st)
    assert _one(m, "accelmon_idle_cost", team="ml", currency="EUR") == 20.0
    assert _one(m, "accelmon_idle_cost", team="unowned", currency="EUR") == 7.5
    assert not any(k[0] == "accelmon_idle_cost" and ("team", "unpriced") in k[1] for k in m)  # NULL: no series
    assert _one(m, "accelmon_consolidation_saved_power_watts") == 0.0
