"""Exporter additions: data-dir free/size bytes, the consolidation plan gauges, vMotion counters
that continue across restarts and retention, the findings reload interval from config."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from accelmon.config import ExporterConfig, parse
from accelmon.daemon import housekeeping, vmotion_history
from accelmon.daemon.service import Daemon
from accelmon.daemon.state import STUN_BUCKETS, DaemonState
from accelmon.demo.prometheus import check_metrics, parse_samples
from accelmon.exporter.server import MetricsApp
from accelmon.store import Store

from .helpers import inventory_tables


def _metrics(st: DaemonState) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = MetricsApp(st, ExporterConfig(), process_metrics=False).render().decode()
    return {(n, tuple(sorted(lab.items()))): v for n, lab, v in parse_samples(text)}


def _one(m: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float | None:
    key = (name, tuple(sorted(labels.items())))
    return m.get(key)


def test_data_dir_free_and_size_bytes(tmp_path: Path) -> None:
    st = DaemonState()
    assert _one(_metrics(st), "accelmon_data_dir_free_bytes") is None  # no data dir: no value
    st.data_dir = str(tmp_path)
    m = _metrics(st)
    vfs = os.statvfs(tmp_path)
    size = _one(m, "accelmon_data_dir_size_bytes")
    free = _one(m, "accelmon_data_dir_free_bytes")
    assert size == vfs.f_blocks * vfs.f_frsize and size > 0
    assert free is not None and 0 <= free <= size
    assert abs(free - vfs.f_bavail * vfs.f_frsize) < 64 * 1024 * 1024  # other writers on this disk meanwhile
    st.data_dir = str(tmp_path / "gone")
    assert _one(_metrics(st), "accelmon_data_dir_free_bytes") is None


def _finding(run: str, at: dt.datetime, kind: str, subject: str, ev: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"generated_at": at, "run_id": run, "kind": kind, "subject": subject, "vcenter_uuid": "vc-1",
            "reason": "r", "evidence_json": json.dumps(ev or {})}


def _step(run: str, at: dt.datetime, n: int, action: str, subject: str, watts: float | None = None,
          frees: int | None = None) -> dict[str, Any]:
    return {"generated_at": at, "run_id": run, "step": n, "action": action, "subject": subject,
            "saves_watts": watts, "frees_gpus": frees}


def test_consolidation_plan_gauges_from_the_latest_run(tmp_path: Path) -> None:
    """The plan gauges come from the latest run's findings + plan_action rows in the store, never
    from a report file (a findings.json with other numbers for that run is ignored)."""
    store = Store(tmp_path / "d")
    reports = store.root / "reports"
    old = dt.datetime(2026, 1, 1, 6, 0, 0, tzinfo=dt.UTC)
    now = dt.datetime(2026, 1, 2, 6, 0, 0, 500_000, tzinfo=dt.UTC)
    store.append("findings", [_finding("r1", old, "consolidation_move", "vm-9", {"from_gpu": "h/9"})])
    store.append("plan_action", [_step("r1", old, 1, "power-off-host", "esx-9", 999.0, 1)])
    # run r2: three moves off two GPUs; two hosts emptied, one of unknown power holding one freed GPU
    store.append("plan_action", [
        _step("r2", now, 1, "set-host-graphics-policy", "esx-3"),
        _step("r2", now, 2, "vmotion", "vc-1/vm-1"),
        _step("r2", now, 3, "enter-maintenance", "esx-1"),
        _step("r2", now, 4, "power-off-host", "esx-1", 123.5, 1),
        _step("r2", now, 5, "enter-maintenance", "esx-2"),
        _step("r2", now, 6, "power-off-host", "esx-2", None, 1),
    ])
    store.append("findings", [
        _finding("r2", now, "underutilized", "GPU-1"),
        _finding("r2", now, "consolidation_move", "vm-1", {"from_gpu": "vc-1/host-1/0000:3b:00.0", "to_gpu": "x"}),
        _finding("r2", now, "consolidation_move", "vm-2", {"from_gpu": "vc-1/host-1/0000:3b:00.0", "to_gpu": "x"}),
        _finding("r2", now, "consolidation_move", "vm-3", {"from_gpu": "vc-1/host-2/0000:5e:00.0", "to_gpu": "y"}),
    ])
    run_dir = reports / now.strftime("%Y%m%dT%H%M%SZ")  # where the old code looked for the plan totals
    run_dir.mkdir(parents=True)
    (run_dir / "findings.json").write_text(json.dumps({"run_id": "r2", "consolidation": {
        "moves": [{}], "freed_gpus": ["a"], "freed_hosts": ["h"] * 5, "watts_saved": 7777.0}}))
    st = DaemonState()
    housekeeping.refresh_findings(store, st)
    m = _metrics(st)
    assert _one(m, "accelmon_consolidation_moves") == 3
    assert _one(m, "accelmon_consolidation_freed_gpus") == 2
    assert _one(m, "accelmon_consolidation_freed_hosts") == 2
    assert _one(m, "accelmon_consolidation_saved_power_watts") == 123.5  # the unknown host adds nothing
    assert _one(m, "accelmon_consolidation_unmeasured_freed_gpus") == 1
    assert _one(m, "accelmon_consolidation_plan_timestamp_seconds") == pytest.approx(now.timestamp(), abs=0.001)
    # a run with moves but no plan_action rows (stored by an older version): totals unknown, not 0
    later = now + dt.timedelta(hours=1)
    store.append("findings", [_finding("r3", later, "consolidation_move", "vm-1", {"from_gpu": "g"})])
    st2 = DaemonState()
    housekeeping.refresh_findings(store, st2)
    m = _metrics(st2)
    assert _one(m, "accelmon_consolidation_moves") == 1
    assert _one(m, "accelmon_consolidation_saved_power_watts") is None
    assert _one(m, "accelmon_consolidation_freed_hosts") is None
    # a plan that moves nothing is a plan: zeros, not absent
    store.append("findings", [_finding("r4", later + dt.timedelta(days=1), "underutilized", "GPU-1")])
    housekeeping.refresh_findings(store, st2)
    m = _metrics(st2)
    assert _one(m, "accelmon_consolidation_moves") == 0 and _one(m, "accelmon_consolidation_freed_gpus") == 0
    assert _one(m, "accelmon_consolidation_saved_power_watts") == 0 and _one(m, "accelmon_consolidation_freed_hosts") == 0
    assert check_metrics(MetricsApp(st, ExporterConfig()).render()) == (0, "")


def _vmotion(vm: str, day: dt.datetime, chain: int, stun: float | None, ok: bool = True) -> dict[str, Any]:
    return {"ended_at": day, "vcenter_uuid": "vc-1", "chain_id": chain, "vm_moref": vm, "cluster_name": "c1",
            "succeeded": ok, "stun_seconds": stun}


def _counters(st: DaemonState) -> tuple[Any, ...]:
    s = st.snapshot()
    m = s.migrations[("vc-1", "vm-1")]
    h = s.stun_hist[("vc-1", "c1")]
    return m.succeeded_total, m.failed_total, round(m.stun_seconds_total, 6), m.last_stun_seconds, h.n, tuple(h.counts)


def test_vmotion_counters_continue_across_restart_and_retention(tmp_path: Path) -> None:
    store = Store(tmp_path / "d")
    d0 = dt.datetime.now(dt.UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    rows = [_vmotion("vm-1", d0 - dt.timedelta(days=k), 100 + k, 0.3 * (k + 1)) for k in range(5)]
    rows.append(_vmotion("vm-1", d0 - dt.timedelta(days=3, hours=1), 200, None, ok=False))
    store.append("vmotion", rows)
    # the running daemon saw all of them (as the events source hands them over)
    live = DaemonState()
    live.apply({"vmotion": [dict(r, ended_at=r["ended_at"].timestamp()) for r in rows]})
    before = _counters(live)
    assert before[:2] == (5, 1) and before[3] == pytest.approx(0.3)  # latest vMotion's stun
    # restart: counters continue from the store, not from 0
    restarted = DaemonState()
    assert vmotion_history.load(store, restarted) == 6
    assert _counters(restarted) == before
    # retention (2 days) drops the two oldest days; the totals are carried first
    cfg = parse({"retention": {"samples": "2d"}}, "<test>", env={})
    dropped = housekeeping.retention(store, cfg, DaemonState(), now=d0.timestamp() + 3600)
    assert {p for t, p in dropped if t == "vmotion"} == {(d0 - dt.timedelta(days=k)).date().isoformat()
                                                         for k in (3, 4)}
    after = DaemonState()
    vmotion_history.load(store, after)
    assert _counters(after) == before  # no decrease: Prometheus sees no reset
    # retention again (nothing new to drop) and a crash between carry and drop: still exact
    vmotion_history.carry_before(store, (d0 - dt.timedelta(days=1)).date())  # carried, not dropped yet
    again = DaemonState()
    vmotion_history.load(store, again)
    assert _counters(again) == before
    # new migrations add on top; the histogram keeps its buckets
    st = DaemonState()
    vmotion_history.load(store, st)
    st.apply({"vmotion": [_vmotion("vm-1", d0 + dt.timedelta(minutes=5), 300, 12.0) | {"ended_at": d0.timestamp() + 300}]})
    c = _counters(st)
    assert c[0] == before[0] + 1 and c[3] == 12.0 and c[4] == before[4] + 1
    assert len(c[5]) == len(STUN_BUCKETS)


def test_daemon_start_loads_history_and_findings_interval(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = Store(tmp_path / "d")
    now = dt.datetime.now(dt.UTC)
    store.append("vmotion", [_vmotion("vm-1", now - dt.timedelta(hours=1), 1, 2.0)])
    for name, t in inventory_tables(2).items():
        store.append(name, t)
    cfg = parse({"report": {"enabled": False}, "agents": {"discovery": False}, "sources": {"vcenter": False},
                 "intervals": {"findings": "7m"}}, "<test>", env={})
    d = Daemon(cfg, store)
    d.prepare()
    d.start()
    try:
        job = d.scheduler.get_job("findings")
        assert job.trigger.interval.total_seconds() == 7 * 60
        s = d.state.snapshot()
        assert s.migrations[("vc-1", "vm-1")].succeeded_total == 1
        # the latest inventory too: joins and discovery work before vCenter answers
        assert sorted(v.vm_name for v in d.state.vms()) == ["gpu-vm-0", "gpu-vm-1"]
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING
                    and "no sources configured" not in r.getMessage()], caplog.text
        assert s.data_dir == str(store.root)
    finally:
        d.stop()
