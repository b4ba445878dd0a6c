from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from accelmon.analytics.samples import aggregate
from accelmon.analytics.utilization import UtilThresholds, gpu_utilization
from accelmon.store.writer import Store
from tests.analytics.synth import T0, held_trace, reference_mean


def _run(store: Store, start: dt.datetime, end: dt.datetime):
    return gpu_utilization(aggregate(store, start, end, threads=2), UtilThresholds(15.0, 0.5))


def test_held_means_match_reference_and_gaps_are_excluded(tmp_path):
    st = Store(tmp_path)
    traces = [held_trace(f"trace-{i}", m, seed=i) for i, m in enumerate([3, 9, 13, 17, 35, 80])]
    # gap trap: 5 % everywhere, but the sample before a 10 h gap says 100 %: holding it over the
    # gap would give ~20 % and clear the flag
    trap = held_trace("trace-trap", 5, seed=99, gaps=0)
    k = len(trap.t_ms) // 2
    trap.t_ms[k:] += 10 * 3600 * 1000
    trap.util[k - 1] = 100
    traces.append(trap)
    for tr in traces:
        st.append("gpu_sample", tr.rows())
    end = max(dt.datetime.fromtimestamp(tr.t_ms[-1] / 1000, dt.UTC) for tr in traces)
    res = _run(st, T0, end)
    got = {r["gpu"]: r for r in res.to_dicts()}
    for tr in traces:
        ref, cov_s = reference_mean(tr)
        r = got[tr.gpu]
        assert r["mean_util_percent"] == pytest.approx(ref, abs=1e-9), tr.gpu
        assert r["covered_hours"] * 3600 == pytest.approx(cov_s, rel=1e-12)
        assert r["underutilized"] is bool(ref < 15), tr.gpu
        assert r["method"] == "held_samples"
    assert got["trace-trap"]["gap_hours"] == pytest.approx(np.diff(trap.t_ms)[k - 1] / 3.6e6, rel=1e-12)
    assert got["trace-trap"]["mean_util_percent"] < 6


def test_coverage_is_against_the_sample_span_when_nothing_else_is_known(tmp_path):
    """Without inventory or agent reports, presence is first to last sample: a GPU that existed for the
    last 12 h of 48 is judged on those 12 h (its scrape gaps count against it), not against the window."""
    st = Store(tmp_path)
    full = held_trace("full", 40, hours=48, seed=1)
    late = held_trace("late", 2, hours=12, start_h=36, seed=2, gaps=1)
    for tr in (full, late):
        st.append("gpu_sample", tr.rows())
    res = {r["gpu"]: r for r in _run(st, T0, T0 + dt.timedelta(hours=60)).to_dicts()}
    for tr in (full, late):
        r = res[tr.gpu]
        span_s = (tr.t_ms[-1] - tr.t_ms[0]) / 1000
        assert r["presence_seconds"] == pytest.approx(span_s)
        assert r["coverage_ratio"] == pytest.approx(reference_mean(tr)[1] / span_s)
        assert r["missing_hours"] == pytest.approx((span_s - reference_mean(tr)[1]) / 3600)
    assert res["late"]["underutilized"] is True and res["full"]["underutilized"] is False
    # the same GPU with half its span in scrape gaps is not judged
    st2 = Store(tmp_path / "gappy")
    gappy = held_trace("gappy", 2, hours=12, seed=3, gaps=0)
    gappy.t_ms[len(gappy.t_ms) // 2:] += 14 * 3600 * 1000
    st2.append("gpu_sample", gappy.rows())
    r = _run(st2, T0, T0 + dt.timedelta(hours=30)).to_dicts()[0]
    assert r["coverage_ratio"] < 0.5 and r["status"] == "insufficient_data" and r["underutilized"] is None


def test_counters_preferred_resets_handled_and_energy(tmp_path):
    """busy/idle counters say 10 % while the util gauge says 50 %; the agent restarts midway."""
    st = Store(tmp_path)
    n = 2 * 8640
    t = T0.timestamp() * 1000 + np.arange(n) * 10_000
    busy_inc = np.full(n, 1000)  # 1 s of 10 s busy
    idle_inc = np.full(n, 9000)
    busy = np.cumsum(busy_inc) + 5_000_000
    idle = np.cumsum(idle_inc) + 7_000_000
    energy = np.cumsum(np.full(n, 100_000 * 10)) + 10**9  # 100 W → 1,000,000 mJ per 10 s
    r = n // 2
    busy[r:] -= busy[r - 1]
    idle[r:] -= idle[r - 1]
    energy[r:] -= energy[r - 1]
    rows = [
        {"ts": dt.datetime.fromtimestamp(t[i] / 1000, dt.UTC), "gpu_uuid": "GPU-ctr", "source": "agent",
         "util_percent": 50, "busy_ms_total": int(busy[i]), "idle_ms_total": int(idle[i]),
         "energy_millijoules_total": int(energy[i]), "fb_used_bytes": 8 << 30, "fb_total_bytes": 40 << 30,
         "vm_bios_uuid": "4221aaaa-0000-0000-0000-000000000001"}
        for i in range(n)
    ]
    # split over several appends (units) and out of order, as several flushes would
    st.append("gpu_sample", rows[n // 3:])
    st.append("gpu_sample", rows[: n // 3])
    res = _run(st, T0, T0 + dt.timedelta(days=2)).to_dicts()[0]
    assert res["method"] == "counters"
    assert res["mean_util_percent"] == pytest.approx(10.0, abs=1e-9)
    assert res["underutilized"] is True
    # idle = dt − busy (ARCHITECTURE.md): every interval did some work, yet 90 % of the time no kernel ran
    assert res["idle_ratio"] == pytest.approx(0.9, abs=1e-9)
    assert res["idle_hours"] == pytest.approx(0.9 * res["covered_hours"], rel=1e-9)
    assert res["allocated_idle_hours"] == pytest.approx(res["idle_hours"], rel=1e-9)  # 8 GiB held throughout
    assert res["idle_power_watts"] is None  # no interval without any kernel: no idle power measured
    assert res["coverage_ratio"] == pytest.approx(1.0, abs=1e-3)
    assert res["mean_power_watts"] == pytest.approx(100.0, rel=1e-9)
    assert res["energy_joules"] == pytest.approx(100.0 * (n - 1) * 10, rel=1e-9)
    assert res["vm_bios_uuid"] == "4221aaaa-0000-0000-0000-000000000001"
    assert res["fb_max_bytes"] == 8 << 30
