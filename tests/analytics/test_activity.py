"""Effective utilization (SM activity) and the hollow verdict, on synthetic stores.

Definitions: ARCHITECTURE.md "Effective utilization" and docs/analytics.md. Every expected
number below is computed from the generated readings by the definition (Σ dt·f ÷ Σ dt), not
taken from the code under test."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from accelmon.analytics import activity
from accelmon.analytics.samples import aggregate
from accelmon.analytics.utilization import UtilThresholds, gpu_utilization
from accelmon.store.writer import Store
from tests.analytics.synth import T0

STEP_MS = 10_000
N = 3 * 360  # 3 h of 10 s polls: enough covered time to be judged
TH = UtilThresholds(15.0, 0.5)


def _agent_rows(gpu: str, busy_frac: np.ndarray, sm_frac: np.ndarray | None, *, counters: bool = True,
                gauges: bool = False, source: str = "agent", tensor: np.ndarray | None = None,
                step_ms: np.ndarray | None = None) -> list[dict]:
    """Agent-like samples: busy/idle counters integrate busy_frac[k] over (t[k-1], t[k]]; SM
    activity as counters (Σ dt·f) and/or as the gauge of the period ending at the sample."""
    n = len(busy_frac)
    steps = np.full(n, STEP_MS) if step_ms is None else step_ms
    t = int(T0.timestamp() * 1000) + np.cumsum(steps)
    busy = idle = sm = ten = 0
    rows = []
    for k in range(n):
        d = int(steps[k])
        if k:  # sample 0 starts the counters
            b = int(round(d * busy_frac[k]))
            busy += b
            idle += d - b
            if sm_frac is not None:
                sm += int(round(d * sm_frac[k]))
            if tensor is not None:
                ten += int(round(d * tensor[k]))
        r = {"ts": dt.datetime.fromtimestamp(t[k] / 1000, dt.UTC), "gpu_uuid": gpu, "source": source,
             "util_percent": float(100 * busy_frac[k]), "busy_ms_total": busy, "idle_ms_total": idle}
        if sm_frac is not None and counters:
            r["sm_active_ms_total"] = sm
        if sm_frac is not None and gauges:
            r["sm_active_percent"] = float(100 * sm_frac[k])
            r["sm_occupancy_percent"] = float(50 * sm_frac[k])
        if tensor is not None:
            r["tensor_active_ms_total"] = ten
        rows.append(r)
    return rows


def _expected(frac: np.ndarray, steps: np.ndarray | None = None) -> float:
    d = np.full(len(frac), STEP_MS, float) if steps is None else steps.astype(float)
    return float(100 * (d[1:] * frac[1:]).sum() / d[1:].sum())


def _judge(st: Store, con_sources=None, hollow: float = 15.0):
    end = T0 + dt.timedelta(hours=8)
    g = gpu_utilization(aggregate(st, T0, end, threads=1), TH)
    rows, _ = activity.read(st, T0, end)
    act = activity.gpu_activity(rows)
    src = con_sources if con_sources is not None else activity.activity_sources(None)
    out = activity.judge_hollow(g, act, src, underutilized_percent=15.0, hollow_percent=hollow)
    return {r["gpu"]: r for r in out.to_dicts()}


def test_trickle_matmul_and_idle_gpus(tmp_path):
    """A trickle kernel keeps the GPU 'busy' 95 % of the time on 4 % of its SMs: hollow, not
    underutilized. A matmul-like GPU (busy and SMs high): neither. An idle GPU: underutilized, not hollow."""
    rng = np.random.default_rng(1)
    st = Store(tmp_path)
    trickle_sm = np.clip(rng.normal(0.04, 0.01, N), 0, 1)
    mat_sm = np.clip(rng.normal(0.85, 0.05, N), 0, 1)
    idle_sm = np.clip(rng.normal(0.01, 0.005, N), 0, 1)
    st.append("gpu_sample", _agent_rows("GPU-trickle", np.full(N, 0.95), trickle_sm))
    st.append("gpu_sample", _agent_rows("GPU-matmul", np.full(N, 0.97), mat_sm))
    st.append("gpu_sample", _agent_rows("GPU-idle", np.full(N, 0.03), idle_sm))
    got = _judge(st)
    t, m, i = got["GPU-trickle"], got["GPU-matmul"], got["GPU-idle"]
    assert t["effective_util_percent"] == pytest.approx(_expected(trickle_sm), abs=0.01)
    assert t["mean_util_percent"] > 90
    assert t["status"] == "hollow" and t["hollow"] is True and t["underutilized"] is False
    assert "hollow" in t["verdict_reason"]
    assert m["status"] == "ok" and m["hollow"] is False and m["underutilized"] is False
    assert m["effective_util_percent"] == pytest.approx(_expected(mat_sm), abs=0.01)
    assert i["status"] == "underutilized" and i["hollow"] is False and i["underutilized"] is True
    for r in (t, m, i):
        assert r["activity_method"] == "counters" and r["time_only"] is False


def test_counters_and_gauges_give_the_same_effective_mean(tmp_path):
    """The same readings stored as Σ dt·f counters (agent) or as per-period gauges (DCGM) give the
    same time-weighted mean (±0.1 pp), with irregular steps; occupancy is time-weighted too."""
    rng = np.random.default_rng(7)
    steps = rng.integers(5_000, 15_000, N)  # < 2 × median: no gaps
    frac = rng.uniform(0, 1, N) ** 3
    st = Store(tmp_path)
    st.append("gpu_sample", _agent_rows("GPU-ctr", np.full(N, 0.9), frac, step_ms=steps))
    st.append("gpu_sample", _agent_rows("GPU-gauge", np.full(N, 0.9), frac, counters=False, gauges=True,
                                        step_ms=steps, source="dcgm"))
    got = _judge(st)
    c, g = got["GPU-ctr"], got["GPU-gauge"]
    assert c["activity_method"] == "counters" and g["activity_method"] == "gauges"
    assert c["effective_util_percent"] == pytest.approx(g["effective_util_percent"], abs=0.1)
    assert g["effective_util_percent"] == pytest.approx(_expected(frac, steps), abs=0.01)
    assert g["sm_occupancy_percent"] == pytest.approx(_expected(frac / 2, steps), abs=0.01)
    assert c["sm_occupancy_percent"] is None  # no occupancy reading: NULL, not 0


def test_counter_reset_and_gauge_gap(tmp_path):
    """An agent restart (counters back to 0) loses nothing but the interval of the restart; a
    gauge series' 2 h scrape gap holding 100 % is excluded, not spread over the gap."""
    rng = np.random.default_rng(3)
    frac = rng.uniform(0.05, 0.15, N)
    rows = _agent_rows("GPU-reset", np.full(N, 0.8), frac)
    half = N // 2
    b0, i0, s0 = (rows[half - 1][k] for k in ("busy_ms_total", "idle_ms_total", "sm_active_ms_total"))
    for r in rows[half:]:
        r["busy_ms_total"] -= b0
        r["idle_ms_total"] -= i0
        r["sm_active_ms_total"] -= s0
    st = Store(tmp_path)
    st.append("gpu_sample", rows)
    steps = np.full(N, STEP_MS)
    steps[half] = 2 * 3600 * 1000
    gauge = frac.copy()
    gauge[half] = 1.0  # the reading after the gap
    st.append("gpu_sample", _agent_rows("GPU-gap", np.full(N, 0.8), gauge, counters=False, gauges=True,
                                        step_ms=steps, source="dcgm"))
    got = _judge(st)
    assert got["GPU-reset"]["effective_util_percent"] == pytest.approx(_expected(frac), abs=0.05)
    keep = np.ones(N, bool)
    keep[half] = False
    expect = float(100 * frac[1:][keep[1:]].mean())
    g = got["GPU-gap"]
    assert g["effective_util_percent"] == pytest.approx(expect, abs=0.01)
    assert g["activity_gap_hours"] == pytest.approx(2.0)


def test_mig_instances_have_their_own_figures(tmp_path):
    """Two MIG instances of one GPU (DCGM per-instance profiling gauges): each its own effective
    figure; no utilization is reported, so neither is judged hollow."""
    rng = np.random.default_rng(5)
    st = Store(tmp_path)
    fr = {"MIG-a": rng.uniform(0.6, 0.9, N), "MIG-b": rng.uniform(0.0, 0.05, N)}
    for gid, f in fr.items():
        rows = _agent_rows(gid, np.zeros(N), f, counters=False, gauges=True, source="dcgm")
        for r in rows:
            for k in ("util_percent", "busy_ms_total", "idle_ms_total"):
                r.pop(k)
        st.append("gpu_sample", rows)
    end = T0 + dt.timedelta(hours=4)
    rows_, _ = activity.read(st, T0, end)
    act = {r["gpu"]: r for r in activity.gpu_activity(rows_).to_dicts()}
    for gid, f in fr.items():
        assert act[gid]["effective_util_percent"] == pytest.approx(_expected(f), abs=0.01)
    got = _judge(st)
    for gid in fr:
        assert got[gid]["status"] == "insufficient_data" and got[gid]["hollow"] is None


def test_vgpu_guest_without_activity_is_time_only(tmp_path):
    """A time-sliced vGPU guest cannot read GPM: effective NULL (never 0), labelled time-only, never
    hollow however busy it is."""
    import polars as pl

    st = Store(tmp_path)
    st.append("gpu_sample", _agent_rows("GPU-vgpu", np.full(N, 0.95), None))
    st.append("gpu_sample", _agent_rows("GPU-trace", np.full(N, 0.95), None, source="import"))
    src = pl.DataFrame({"gpu": ["GPU-vgpu"], "activity_source": ["none"], "agent_virtualization_mode": ["vgpu"]})
    got = _judge(st, src)
    v = got["GPU-vgpu"]
    assert v["effective_util_percent"] is None and v["time_only"] is True
    assert v["hollow"] is False and v["status"] == "ok"
    # a trace nobody says anything about: no effective figure, but not claimed time-only either
    assert got["GPU-trace"]["effective_util_percent"] is None and got["GPU-trace"]["time_only"] is False


def test_fb_high_water_is_p999_rounded_up(tmp_path):
    """One outlier sample does not set the high-water mark; the mark is never below the true p99.9."""
    rng = np.random.default_rng(2)
    fb = rng.integers(1 << 30, 3 << 30, 5000)
    fb[17] = 30 << 30  # a single spike
    st = Store(tmp_path)
    st.append("gpu_sample", [
        {"ts": T0 + dt.timedelta(seconds=10 * i), "gpu_uuid": "GPU-fb", "source": "agent",
         "fb_used_bytes": int(v)} for i, v in enumerate(fb)])
    _, hist = activity.read(st, T0, T0 + dt.timedelta(days=1))
    h = activity.fb_high_water(hist).to_dicts()[0]
    true = float(np.quantile(fb, 0.999, method="inverted_cdf"))
    assert true <= h["fb_hwm_bytes"] < true + activity.FB_BIN_BYTES
    assert h["fb_hwm_bytes"] < 4 << 30 and h["fb_samples"] == 5000
