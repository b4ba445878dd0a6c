"""accelmon_idle_cost{team,currency}: the latest run's idle cost per team, from that run's
``idle_cost`` findings in the store (analytics/persist.py) - never from a report file."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from types import SimpleNamespace

from accelmon.analytics.persist import idle_cost_rows
from accelmon.analytics.window import Window
from accelmon.daemon import housekeeping
from accelmon.daemon.state import DaemonState
from accelmon.store import Store

from .test_exporter_additions import _finding, _metrics, _one


def test_idle_cost_per_team_from_the_latest_run(tmp_path: Path) -> None:
    store = Store(tmp_path / "d")
    t1 = dt.datetime(2026, 1, 1, 6, 0, 0, tzinfo=dt.UTC)
    store.append("findings", [_finding("r1", t1, "underutilized", "GPU-1")])
    st = DaemonState()
    housekeeping.refresh_findings(store, st)
    assert not any(k[0] == "accelmon_idle_cost" for k in _metrics(st))  # nothing priced: unknown, not 0

    # the analysis step's rows for a run whose cost section priced two teams and not a third
    t2 = t1 + dt.timedelta(days=1)
    a = SimpleNamespace(run_id="r2", generated_at=t2, window=Window(t2 - dt.timedelta(days=7), t2), cost={
        "currency": "EUR", "by_team": [{"team": "ml", "idle_cost": 20.0, "gpus": 2, "idle_gpu_hours": 10.0},
                                       {"team": "unowned", "idle_cost": 7.5, "gpus": 1, "idle_gpu_hours": 5.0},
                                       {"team": "unpriced", "idle_cost": None, "gpus": 1, "idle_gpu_hours": 3.0}]})
    rows = idle_cost_rows(a)  # type: ignore[arg-type]
    assert {r["subject"]: r["value"] for r in rows} == {"ml": 20.0, "unowned": 7.5}  # NULL cost: no row
    store.append("findings", [_finding("r2", t2, "underutilized", "GPU-1")] + rows)
    housekeeping.refresh_findings(store, st)
    m = _metrics(st)
    assert _one(m, "accelmon_idle_cost", team="ml", currency="EUR") == 20.0
    assert _one(m, "accelmon_idle_cost", team="unowned", currency="EUR") == 7.5
    assert not any(k[0] == "accelmon_idle_cost" and ("team", "unpriced") in k[1] for k in m)  # NULL: no series
