"""Power perf and vMotion events against the seeded simulator: resume, no double counting,
gaps, each migration once, stun times from vmware.log."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from accelmon.collector.vcenter.source import VCenterSource
from accelmon.collector.vcenter.state import state_path
from accelmon.sim.vcsim import Vcsim
from accelmon.store.writer import Store

from .conftest import vc_config


def test_power_resumes_without_double_counting(estate: Vcsim, source: VCenterSource, store: Store) -> None:
    r1 = source.collect_inventory(store)
    assert r1.rows.get("inv_vm")
    r1 = source.collect_perf(store)
    m = estate.manifest
    on_gpu_vms = {v["moref"] for v in m["vms"] if v["gpus"] and v["power_state"] == "poweredOn"}
    con = store.connect()
    vms = {r[0] for r in con.execute("SELECT DISTINCT vm_moref FROM vm_power_sample").fetchall()}
    hosts = {r[0] for r in con.execute("SELECT DISTINCT host_moref FROM host_power_sample").fetchall()}
    assert vms == on_gpu_vms and hosts == {h["moref"] for h in m["hosts"]}
    w = con.execute("SELECT min(power_watts), max(power_watts), min(energy_joules) FROM vm_power_sample").fetchone()
    assert w[0] > 0 and w[2] > 0
    # energy of an interval = average power × interval (joules), as the simulator models it
    bad = con.execute("SELECT count(*) FROM vm_power_sample "
                      "WHERE abs(energy_joules - power_watts * interval_seconds) > 0.05 * energy_joules + 20"
                      ).fetchone()[0]
    assert bad == 0

    time.sleep(21)  # one more realtime sample
    source.collect_perf(store)
    # a restart: a new source on the same data dir resumes from the saved cursors
    src2 = VCenterSource(vc_config(estate))
    try:
        src2.collect_perf(store)
    finally:
        src2.close()
    con = store.connect()
    dup = con.execute("SELECT count(*) FROM (SELECT vm_moref, ts FROM vm_power_sample "
                      "GROUP BY ALL HAVING count(*) > 1)").fetchone()[0]
    dup += con.execute("SELECT count(*) FROM (SELECT host_moref, ts FROM host_power_sample "
                       "GROUP BY ALL HAVING count(*) > 1)").fetchone()[0]
    assert dup == 0
    per = con.execute("SELECT count(*) FROM vm_power_sample GROUP BY vm_moref").fetchall()
    assert min(n for (n,) in per) >= 3  # first minute + the new sample(s)
    steps = con.execute("SELECT DISTINCT epoch(ts) - epoch(lag(ts) OVER (PARTITION BY vm_moref ORDER BY ts)) "
                        "FROM vm_power_sample QUALIFY 1 = 1").fetchall()
    assert {s for (s,) in steps if s is not None} == {20}  # contiguous 20 s intervals, no hole
    assert state_path(store.root, source.vcenter_uuid).is_file()


def test_gap_beyond_realtime_window_is_recorded(estate: Vcsim, source: VCenterSource, store: Store,
                                                tmp_path: Path) -> None:
    source.collect_perf(store)
    path = state_path(store.root, source.vcenter_uuid)
    st = json.loads(path.read_text())
    two_hours_ago = time.time() - 7200
    st["perf_last_ts"] = two_hours_ago
    st["perf_vm"] = {k: two_hours_ago for k in st["perf_vm"]}
    st["perf_host"] = {k: two_hours_ago for k in st["perf_host"]}
    # a data dir whose last perf poll was two hours ago: the cursors say so, and the store has
    # nothing newer (the store is reconciled with the state file when it is loaded)
    store = Store(tmp_path / "data-2h")
    path = state_path(store.root, source.vcenter_uuid)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(st))
    src2 = VCenterSource(vc_config(estate))
    try:
        res = src2.collect_perf(store)
    finally:
        src2.close()
    assert res.rows.get("collection_gap") == 1
    (g,) = store.connect().execute("SELECT epoch(gap_start), epoch(gap_end), source, target, reason "
                                   "FROM collection_gap").fetchall()
    assert g[0] == pytest.approx(two_hours_ago, abs=1)
    assert g[1] == pytest.approx(time.time() - 3600, abs=60)
    assert g[2] == "vcenter" and g[3] == estate.url and "1 h" in g[4]
    assert estate.password not in g[4]


def test_vmotions_stored_once_with_stun(estate: Vcsim, source: VCenterSource, store: Store) -> None:
    res = source.collect(store)
    want = {mv["chain_id"]: mv for mv in estate.manifest["vmotions"]}
    assert res.rows["vmotion"] == len(want) > 0
    con = store.connect()
    rows = con.execute("SELECT chain_id, vm_moref, src_host_moref, dst_host_moref, drs, succeeded, failure_reason, "
                       "stun_seconds, vgpu_attached, vgpu_fb_bytes, epoch(started_at), epoch(ended_at) "
                       "FROM vmotion").fetchall()
    got = {r[0]: r for r in rows}
    assert set(got) == set(want)
    for chain, mv in want.items():
        r = got[chain]
        assert r[1] == mv["vm"] and r[2] == mv["source_host"] and r[3] == mv["dest_host"]
        assert r[4] == (mv["initiator"] == "drs")
        assert r[5] == (mv["result"] == "success")
        if mv["result"] == "failed":
            assert r[6] == "maxSwitchoverTimeExceeded"
        assert r[7] == pytest.approx(mv["stun_us"] / 1e6)
        assert r[8] == mv["vgpu"]
        if mv["vgpu"]:
            assert r[9] == mv["fb_gib"] << 30
    # garbage lines in a log were skipped and counted
    want_garbage = sum(f["garbage_lines"] for v in estate.manifest["vms"] for f in v.get("log_files") or [])
    assert want_garbage > 0
    assert source.log_garbage_lines_total == want_garbage
    assert any("unparseable" in e for e in res.errors)

    # polling again, and after a restart, stores nothing twice
    assert "vmotion" not in source.collect_events(store).rows
    src2 = VCenterSource(vc_config(estate))
    try:
        assert "vmotion" not in src2.collect_events(store).rows
    finally:
        src2.close()
    assert store.connect().execute("SELECT count(*) FROM vmotion").fetchone()[0] == len(want)


def test_state_file_is_atomic_json(estate: Vcsim, source: VCenterSource, store: Store, tmp_path: Path) -> None:
    source.collect(store)
    path = state_path(store.root, source.vcenter_uuid)
    st = json.loads(path.read_text())
    assert st["version"] == 1 and st["event_key"] > 0 and st["emitted_chains"]
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp files left
