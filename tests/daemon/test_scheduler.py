"""APScheduler wiring: single-flight per source, a slow vCenter never stalls agent scrapes,
housekeeping jobs (flush, compaction, retention)."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

from accelmon.collector.registry import SourceJob
from accelmon.config import parse
from accelmon.daemon import housekeeping
from accelmon.daemon.service import Daemon
from accelmon.store import Store

from .helpers import CounterSource


def _daemon(tmp_path: Path, **cfg: object) -> Daemon:
    c = parse({"agents": {"discovery": False}, "intervals": {"flush": "1s"}, "report": {"enabled": False}, **cfg},
              "test.toml", env={})
    return Daemon(c, Store(tmp_path / "data"))


def test_slow_source_is_single_flight_and_does_not_stall_others(tmp_path: Path) -> None:
    d = _daemon(tmp_path)
    slow = CounterSource("https://vc.lab/sdk", [])
    slow.delay_s = 1.5  # a vCenter poll far slower than its 0.2 s interval
    fast = [CounterSource(f"http://10.0.0.{i}:9835/metrics", [f"GPU-{i}"]) for i in range(3)]
    d._register(d._runner("vcenter", slow.target, SourceJob("vcenter.perf", 0.2, slow.collect), slow))
    for s in fast:
        d._register(d._runner("agent", s.target, SourceJob("agent", 0.2, s.collect), s))
    d.start()
    try:
        time.sleep(3.2)
    finally:
        d.stop()
    assert slow.max_active == 1  # never two overlapping polls of one source
    assert 2 <= slow.polls <= 3  # coalesced: not one run per missed 0.2 s tick
    for s in fast:
        assert s.max_active == 1
        assert s.polls >= 8, s.polls  # agents kept their pace while vCenter was busy
    n = d.store.connect().execute("SELECT count(*) FROM gpu_sample").fetchone()[0]
    assert n == sum(s.polls for s in fast)  # every buffered row flushed on stop


def test_retention_and_compaction_jobs(tmp_path: Path) -> None:
    d = _daemon(tmp_path, retention={"samples": "30d", "inventory": "400d"})
    store = d.store
    now = time.time()
    for days_ago in (40, 31, 29, 1):
        ts = dt.datetime.fromtimestamp(now - days_ago * 86400, dt.UTC)
        for k in range(3):  # three small files per partition
            store.append("gpu_sample", [{"ts": ts + dt.timedelta(seconds=k), "gpu_uuid": "GPU-1", "source": "agent"}])
    store.append("inv_vm", [{"snapshot_ts": dt.datetime.fromtimestamp(now - 40 * 86400, dt.UTC),
                             "vcenter_uuid": "vc", "vm_moref": "vm-1"}])
    dropped = housekeeping.retention(store, d.cfg, d.state, now=now)
    assert sorted(t for t, _ in dropped) == ["gpu_sample", "gpu_sample"]  # 40 and 31 days; inventory kept
    con = store.connect()
    assert con.execute("SELECT count(*) FROM gpu_sample").fetchone()[0] == 6
    assert con.execute("SELECT count(*) FROM inv_vm").fetchone()[0] == 1
    housekeeping.compact(store, d.state)
    assert d.state.store.compactions_total == 2
    assert all(len(store.files("gpu_sample", p)) == 1 for p in store.partitions("gpu_sample") if p != "1970-01-01")
    assert store.connect().execute("SELECT count(*) FROM gpu_sample").fetchone()[0] == 6


def test_discovery_adds_and_removes_agent_jobs_with_the_inventory(tmp_path: Path) -> None:
    from .helpers import inventory_tables

    d = _daemon(tmp_path, agents={"discovery": True, "port": 9999, "static": ["http://10.9.9.9:9999/metrics"]})
    d.state.apply(inventory_tables(3))
    assert d.sync_agents() == (4, 0)
    assert sorted(d._agent_runners) == ["http://10.1.0.1:9999/metrics", "http://10.1.0.2:9999/metrics",
                                        "http://10.1.0.3:9999/metrics", "http://10.9.9.9:9999/metrics"]
    time.sleep(0.01)
    d.state.apply(inventory_tables(2))  # vm-2 deleted in vCenter
    assert d.sync_agents() == (0, 1)
    assert "http://10.1.0.3:9999/metrics" not in d._agent_runners
    assert "http://10.9.9.9:9999/metrics" in d._agent_runners  # static targets stay
    assert d.state.source_health("agent", "http://10.1.0.3:9999/metrics") is None
    for r in d._agent_runners.values():
        r.close()
